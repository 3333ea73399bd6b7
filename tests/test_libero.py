"""LIBERO as a plant and a Gymnasium environment (dynamics.libero, dynamics.libero_env).

Needs LIBERO (``pip install --no-deps libero==0.1.1`` and robosuite 1.4.0, see README) and its
assets (``../shared/libero-assets`` or ``$TRC_LIBERO_ASSETS``); skipped without them. The fast
tests build ONE task with its cameras and share it; full expert episodes are ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dynamics
from dynamics.errors import ConfigError, DimensionError, UnknownNameError

libero_spec = pytest.importorskip("robosuite", reason="LIBERO needs robosuite 1.4.0")
from dynamics import libero as L  # noqa: E402
from tests.conftest import HAVE_LIBERO_ASSETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.skipif(not HAVE_LIBERO_ASSETS, reason="LIBERO assets not found (../shared/libero-assets)"),
              pytest.mark.usefixtures("libero_config")]


@pytest.fixture(scope="module")
def sim():
    s = L.LiberoSimulator("libero_spatial", 0, camera_size=128)
    yield s
    s.close()


def test_config_is_written_and_import_never_prompts(tmp_path):
    """A fresh process with no LIBERO config and no terminal imports LIBERO without a question."""
    cfg = tmp_path / "cfg"
    code = ("import dynamics.libero as L; p = L.configure_libero(); "
            "from libero.libero import benchmark; print(p.config_file)")
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(cfg), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         env=env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Do you want" not in out.stdout
    text = (cfg / "config.yaml").read_text()
    for key in ("benchmark_root", "bddl_files", "init_states", "datasets", "assets"):
        assert f"{key}:" in text
    assert str(L.default_assets_path().resolve()) in text or os.environ.get(L.ASSETS_ENV, "") in text


def test_missing_assets_give_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"missing \['scenes', 'textures', 'stable_scanned_objects'\]"):
        L.configure_libero(assets=tmp_path, config_dir=tmp_path / "cfg")
    os.environ[L.ASSETS_ENV] = str(tmp_path / "nowhere")
    try:
        with pytest.raises(ConfigError, match="TRC_LIBERO_ASSETS"):
            L.configure_libero(config_dir=tmp_path / "cfg")
    finally:
        del os.environ[L.ASSETS_ENV]
    L.configure_libero()  # restore the default for the other tests


def test_suite_and_task_lookup():
    tasks = L.suite_tasks("libero_spatial")
    assert len(tasks) == 10 and all(t.bddl_file.is_file() and t.init_states_file.is_file() for t in tasks)
    assert tasks[0].language.startswith("pick up the black bowl")
    assert L.get_task("libero_spatial", tasks[3].name).index == 3
    with pytest.raises(UnknownNameError, match="libero_spatial"):
        L.get_task("libero_spacial", 0)
    with pytest.raises(UnknownNameError, match="0..9"):
        L.get_task("libero_spatial", 10)
    init = L.load_init_states(tasks[0])
    assert init.shape == (50, 92) and np.isfinite(init).all()


def test_reset_to_official_init_state_and_step(sim):
    raw = sim.reset(0, settle_steps=0)
    np.testing.assert_allclose(sim.get_state(), sim.init_states[0], atol=1e-12)
    assert raw["agentview_image"].shape == (128, 128, 3) and raw["agentview_image"].dtype == np.uint8
    assert raw["robot0_eye_in_hand_image"].shape == (128, 128, 3)
    x0 = sim.get_state()
    raw, success = sim.step(np.array([0.5, 0, 0, 0, 0, 0, -1.0]))
    x1 = sim.get_state()
    assert not success and sim.steps == 1
    assert x1[0] == pytest.approx(x0[0] + 0.05)  # MuJoCo time advanced by one control period
    assert raw["robot0_eef_pos"][0] > L.proprio_from_raw(sim.set_state(x0))["ee_pos"][0]  # moved along +x
    with pytest.raises(DimensionError, match=r"expected \(7,\)"):
        sim.step(np.zeros(6))
    with pytest.raises(UnknownNameError, match="0..49"):
        sim.reset(50)


def test_reset_renders_an_init_state_the_same_way_every_time(sim):
    """robosuite draws visual details at reset from NumPy's global generator: the reset seeds it
    (by init state, or ``seed``) and leaves the caller's generator as it was."""
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    first = sim.reset(3)["agentview_image"].copy()
    sim.reset(4)
    again = sim.reset(3)["agentview_image"]
    np.testing.assert_array_equal(first, again)
    assert np.random.random() == expected_next
    other = sim.reset(3, seed=1)["agentview_image"]
    assert (other != first).any()  # another draw of the visual details ...
    np.testing.assert_array_equal(sim.reset(3, seed=1)["agentview_image"], other)  # ... reproducible too


def test_steps_without_rendering_keep_the_physics_and_render_again():
    """Skipping the cameras for some steps changes nothing in the physics, and a camera
    switched back on samples a fresh image in that very step (not a stale or blank one)."""
    actions = [np.array([0.4, -0.3, 0.2, 0.0, 0.1, 0.0, (-1) ** k]) for k in range(6)]
    render = [True, False, False, True, False, True]
    runs = []
    for mask in ([True] * len(actions), render):
        s = L.LiberoSimulator("libero_spatial", 0, camera_size=32)  # fresh: same history in both runs
        raws = [s.reset(3)]
        raws += [s.step(a, render=r)[0] for a, r in zip(actions, mask)]
        runs.append((s.get_state(), raws))
        s.close()
    (state_all, all_raws), (state_skip, skip_raws) = runs
    np.testing.assert_array_equal(state_skip, state_all)
    def dist(a, b):
        return float(np.abs(a["robot0_eye_in_hand_image"].astype(float) - b["robot0_eye_in_hand_image"]).mean())

    for k, r in enumerate(render, start=1):
        if not r:
            assert "agentview_image" not in skip_raws[k] and "robot0_eef_pos" in skip_raws[k]
            continue
        for cam in ("agentview_image", "robot0_eye_in_hand_image"):
            assert skip_raws[k][cam].mean() > 20  # rendered, not the blank value of a restarted observable
        # Two simulator instances do not render bit-identical frames (a few /255 apart on
        # average), so compare: the frame is the one of this step, not of the step before.
        assert dist(skip_raws[k], all_raws[k]) < dist(skip_raws[k], all_raws[k - 1])


def test_closing_a_simulator_leaves_the_others_rendering(sim):
    """Closing one simulator (here by ``with``) frees its rendering resources under its own EGL
    context: another simulator's images stay the same. Before, they were freed under whichever
    context was current (the other simulator's, whose images then came out garbled: about
    85/255 off on average)."""
    ref = sim.reset(0, settle_steps=0)["agentview_image"].astype(float)
    with L.LiberoSimulator("libero_spatial", 1, camera_size=32) as other:
        assert other in L._OPEN_SIMULATORS
        other.reset(0, settle_steps=0)
    assert other._env is None and other not in L._OPEN_SIMULATORS
    other.close()  # a second close does nothing
    again = sim.reset(0, settle_steps=0)["agentview_image"].astype(float)
    assert np.abs(again - ref).mean() < 3.0 and again.mean() > 20  # the same image, up to rendering noise


def test_a_simulator_left_open_exits_without_egl_tracebacks(tmp_path):
    """A process that exits with a simulator still open prints no EGL traceback: the exit hook
    closes it before robosuite terminates EGL (robosuite's own ``__del__`` ran after, and printed
    ``Exception ignored in: MjRenderContext.__del__ ... EGLError``)."""
    code = ("import numpy as np, dynamics.libero as L\n"
            "sim = L.LiberoSimulator('libero_spatial', 0, camera_size=16)\n"
            "sim.step(np.zeros(7))\n"
            "print('OPEN', len(L._OPEN_SIMULATORS))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": "egl"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OPEN 1" in out.stdout  # still open when the interpreter starts to exit
    assert "Exception ignored" not in out.stderr and "EGLError" not in out.stderr, out.stderr[-3000:]


def test_gymnasium_env(sim):
    import gymnasium

    from dynamics.libero_env import ENV_ID, LiberoEnv

    assert ENV_ID in gymnasium.registry
    env = LiberoEnv(simulator=sim, max_steps=3)
    obs, info = env.reset(seed=1, options={"init_state": 2})
    assert env.observation_space.contains(obs), {k: getattr(v, "shape", v) for k, v in obs.items()}
    assert obs["instruction"] == L.get_task("libero_spatial", 0).language and info["init_state"] == 2
    for k in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample() * 0)
        assert env.observation_space.contains(obs) and reward == 0.0 and not terminated
    assert truncated and not info["is_success"]
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(7))
    env.close()
    assert sim._env is not None and not sim.success()  # a simulator given to the environment stays open
    with pytest.raises(ConfigError, match="max_steps"):
        LiberoEnv(simulator=sim, max_steps=0)


def test_plant_registry_entry(sim):
    plant = dynamics.make("libero", suite="libero_spatial", task=0)
    assert plant.state_dim == 92 and plant.control_dim == 7 and plant.discrete and not plant.differentiable
    assert plant.config() == {"name": "libero", "suite": "libero_spatial", "task": 0, "dt": 0.05}
    plant._sim = sim  # share the module's simulator instead of building a second one
    x0 = plant.initial_states()[:2].double()
    u = torch.zeros(2, 7, dtype=torch.float64)
    x1 = plant.step(x0, u)
    assert x1.shape == (2, 92)
    torch.testing.assert_close(x1[:, 0], x0[:, 0] + 0.05)
    sim.set_state(x0[1].numpy())
    sim.step(np.zeros(7))
    np.testing.assert_allclose(x1[1].numpy(), sim.get_state())  # same simulator, same result
    assert not plant.success(x0).any()
    with pytest.raises(NotImplementedError, match="learned_arm"):
        plant.linearize(x0[0].numpy(), np.zeros(7))
    with pytest.raises(DimensionError):
        plant.step(x0[:, :10], u)


@pytest.mark.slow
def test_expert_succeeds_on_one_task(sim):
    from trc.generators.libero_expert import run_episode

    ep = run_episode(sim, 0, max_steps=220)
    assert ep.success and len(ep) < 220 and ep.dones[-1] == 1 and ep.rewards.sum() == 1
    assert ep.obs["agentview_rgb"].shape == (len(ep), 128, 128, 3)
    assert np.abs(ep.actions).max() <= 1.0


@pytest.mark.slow
def test_closed_loop_evaluation_writes_report_video_and_figure(tmp_path):
    """A tiny untrained policy runs closed-loop for a few steps; the report, MP4 and figure exist."""
    import trc
    from dynamics.learned_arm import LearnedArmDynamics
    from trc.evaluation_libero import _WORKER, evaluate
    from trc.generators.libero_storage import LiberoProblem
    from trc.models.visuomotor import VisuomotorConfig, VisuomotorPolicy

    cfg = VisuomotorConfig(image_size=32, channels=8, keypoints=8, latent_dim=32, hidden_dim=64, chunk=4, H_cycles=2)
    policy = VisuomotorPolicy(cfg, LearnedArmDynamics(hidden_dim=16, num_layers=1))
    task = L.get_task("libero_spatial", 0)
    policy.problem = LiberoProblem(name="t", tasks=[0], max_steps=6, camera_size=128)
    trc.save(policy, tmp_path / "model.pt",
             metadata={"text_embeddings": {task.language: np.zeros(384, dtype=np.float32)}})
    rep = evaluate(tmp_path / "model.pt", episodes=1, out_dir=tmp_path / "eval", videos=1, progress=False)
    assert _WORKER == {}  # the simulator is closed and nothing is kept for the next evaluation
    assert rep["per_task"][0]["episodes"] == 1 and rep["mean_length"] == 6 and len(rep["latent_norms"]) == 3
    assert (tmp_path / "eval" / "report.md").is_file() and (tmp_path / "eval" / "figures" / "latent_norm.png").is_file()
    videos = list((tmp_path / "eval" / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000


@pytest.fixture(scope="module")
def far_sim():
    """Task 6 (bowl next to the cookie box), physics only: its bowl and plate lie far from the arm."""
    s = L.LiberoSimulator("libero_spatial", 6, cameras=False)
    yield s
    s.close()


def test_expert_grasps_from_a_side_within_reach(far_sim):
    """In task 6, init state 1, grasping the bowl from +y puts the release pose 0.77 m from the
    arm's base, where the elbow is fully extended and the controller stalls; the expert must
    pick a side within ``max_reach``."""
    from trc.generators.libero_expert import ExpertConfig, PickPlaceExpert

    far_sim.reset(1)
    expert = PickPlaceExpert(far_sim, ExpertConfig(), np.random.default_rng(0))
    obj, _ = far_sim.body_pose(expert.obj)
    tgt, _ = far_sim.body_pose(expert.target)
    order = expert._candidates(obj, tgt)
    assert sorted(order) == sorted(PickPlaceExpert.DIRECTIONS)
    assert expert._reach("+y", obj, tgt) > expert.config.max_reach
    assert expert._reach(order[0], obj, tgt) <= expert.config.max_reach
    assert order[0] == min(PickPlaceExpert.DIRECTIONS, key=lambda k: expert._reach(k, obj, tgt))


@pytest.mark.slow
@pytest.mark.parametrize("init_state", [1, 3, 4, 9])
def test_expert_succeeds_on_far_placements(far_sim, init_state):
    """The init states of task 6 where the expert failed before its reach-aware grasp choice."""
    from trc.generators.libero_expert import run_episode

    ep = run_episode(far_sim, init_state, max_steps=220)
    assert ep.success and len(ep) < 160
