"""RECAP on LIBERO (trc.recap.libero, problem kind ``recap_libero``).

The default tests use synthetic episodes (no simulator): configuration errors, the conditioned
policy and its guidance, frames and chunk labels, training modes, the LeRobot data set of a
stage, model files. The expert's takeover and the three stages in the real LIBERO scenes
(with kill -9 and resume) are ``slow`` and need LIBERO and its assets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import trc
from trc.experiment import experiment_from_dict
from dynamics.errors import CheckpointError, ConfigError, DatasetError
from trc import lerobot
from trc.kinds import for_problem_kind
from trc.models.visuomotor import CAMERAS, VisuomotorConfig, VisuomotorPolicy
from trc.recap import libero as RL
from trc.recap.guidance import NEGATIVE, NULL, POSITIVE
from trc.recap.stages import load_state
from trc.recap.value import recap_rewards
from tests.conftest import HAVE_LIBERO_ASSETS

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"encoder": "cnn", "image_size": 32, "channels": 4, "keypoints": 4, "latent_dim": 16, "hidden_dim": 32,
              "num_layers": 1, "mode": "two_level", "H_cycles": 2, "L_cycles": 1, "chunk": 3, "feedback": False,
              "halting": False}
TINY_TRAINING = {"batch_size": 8, "value_steps": 4, "policy_steps": 4, "value_hidden": 16, "checkpoint_every": 2,
                 "n_step": 3, "threads": 1, "arm_epochs": 1, "arm_hidden_dim": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _episode(T, task, init, success, rng, intervention_from=None, size=16):
    images = {cam: rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8) for cam in CAMERAS}
    proprio = np.concatenate([rng.normal(size=(T, 3)), rng.normal(scale=0.3, size=(T, 3)),
                              rng.uniform(0, 0.04, (T, 2))], 1)
    proprio[:, 0], proprio[:, 1] = np.arange(T) / T, float(success)  # the value can read its target here
    action = rng.uniform(-1, 1, (T, 7)).astype(np.float32)
    inter = np.zeros(T, dtype=bool)
    if intervention_from is not None:
        inter[intervention_from:] = True
    return {"images": images, "proprio": proprio, "action": action, "executed": action.copy(),
            "intervention": inter, "success": success, "length": T, "takeover": -1 if intervention_from is None
            else intervention_from, "cpu_seconds": 0.0, "task_index": task, "init_state": init, "kind": "demos"}


@pytest.fixture
def episodes():
    rng = np.random.default_rng(0)
    return [_episode(5, 0, 25, True, rng), _episode(7, 3, 26, False, rng, intervention_from=4),
            _episode(4, 3, 27, True, rng)]


def _training(**kw):
    return RL.RecapLiberoTraining(**{**TINY_TRAINING, **kw})


# ---------------------------------------------------------------------------- configuration
def test_problem_and_generator_validation():
    p = RL.RecapLiberoProblem(base={"suite": "libero_spatial", "tasks": [0, 3], "max_steps": 100})
    assert p.max_steps == 100 and p.c_fail == 100.0 and p.inner.task_list() == [0, 3]
    with pytest.raises(ConfigError, match="recap_libero"):
        RL.RecapLiberoProblem(kind="recap")
    with pytest.raises(ConfigError, match="problem.base"):
        RL.RecapLiberoProblem(base=[1])
    g = RL.RecapLiberoGenerator()
    assert g.init_states("eval") == list(range(20)) and g.init_states("corrections") == [20, 21, 22, 23, 24, 45, 46,
                                                                                        47, 48, 49]
    with pytest.raises(ConfigError, match=r"held-out evaluation init states \[18, 19\]"):
        RL.RecapLiberoGenerator(demo_init_states=[[18, 30]])
    for bad in ([[5, 5]], [[0, 51]], [[1.0, 3]], [], "0:20"):
        with pytest.raises(ConfigError, match="eval_init_states"):
            RL.RecapLiberoGenerator(eval_init_states=bad)
    with pytest.raises(ConfigError, match="budget"):
        RL.RecapLiberoGenerator(budget=0.0)
    with pytest.raises(ConfigError, match="training.advantage"):
        RL.RecapLiberoTraining(advantage="td")
    with pytest.raises(ConfigError, match="mse_weight"):
        RL.RecapLiberoTraining(mse_weight=0.0, l1_weight=0.0)


def test_action_steps_beyond_the_chunk_is_refused(tmp_path):
    exp = experiment_from_dict(_config_dict(generator={"action_steps": 9}), "x.yaml")
    run = RL.RecapLiberoRun.from_experiment(exp, out=tmp_path)
    with pytest.raises(ConfigError, match="action_steps must be in 1..3"):
        run.action_steps()


# ---------------------------------------------------------------------------- the policy and its guidance
def _inputs(B=4, S=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = {cam: torch.rand(B, 3, S, S, generator=g) for cam in CAMERAS}
    return imgs, torch.randn(B, 384, generator=g), torch.randn(B, 14, generator=g)


def test_conditioned_policy_starts_as_its_base_and_guidance_is_exact():
    torch.manual_seed(0)
    policy = RL.make_policy(TINY_MODEL, _training())
    args = _inputs()
    plain = VisuomotorPolicy.forward(policy.base, *args).actions
    for tok in (NULL, POSITIVE, NEGATIVE):  # zero-initialised indicator embedding
        torch.testing.assert_close(policy(*args, tok).actions, plain)
    with torch.no_grad():
        policy.indicator.embedding.weight.normal_()
    null, pos = policy(*args, NULL).actions, policy(*args, POSITIVE).actions
    assert not torch.allclose(null, pos)
    torch.testing.assert_close(policy.guided(*args, 0.0)[0], null)  # beta = 0: the unconditioned policy
    torch.testing.assert_close(policy.guided(*args, 1.0)[0], pos)
    torch.testing.assert_close(policy.guided(*args, 2.5)[0], null + 2.5 * (pos - null))
    per_sample = policy(*args, torch.tensor([NULL, POSITIVE, NULL, POSITIVE])).actions
    torch.testing.assert_close(per_sample[1::2], pos[1::2])
    torch.testing.assert_close(per_sample[0::2], null[0::2])


def test_act_takes_raw_images_and_clips():
    policy = RL.make_policy(TINY_MODEL, _training(), beta=1.5)
    raw = {cam: np.random.default_rng(1).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8) for cam in CAMERAS}
    with torch.no_grad():
        policy.base.action_std.fill_(50.0)  # huge actions: act clips them to [-1, 1]
    chunk, out = policy.act(raw, torch.zeros(2, 384), torch.zeros(2, 14))
    assert chunk.shape == (2, 3, 7) and chunk.abs().max() <= 1.0 and out.actions.shape == (2, 3, 7)
    with pytest.raises(ConfigError, match="wraps a VisuomotorPolicy"):
        RL.ConditionedVisuomotor(torch.nn.Linear(2, 2))


def test_value_net_shapes_and_frozen_recursion():
    vnet = RL.LiberoValueNet(VisuomotorConfig(**TINY_MODEL), hidden_dim=16)
    logits = vnet(*_inputs(B=3))
    assert logits.shape == (3, 201)
    assert not any(p.requires_grad for p in vnet.encoder.core.parameters())


# ---------------------------------------------------------------------------- frames and training
def test_frames_chunk_labels_rewards(episodes):
    fr = RL.build_frames(episodes, [0, 1, 1], chunk=3, image_size=8, c_fail=10.0)
    assert len(fr) == 16 and fr.images["agentview_rgb"].shape == (16, 3, 8, 8)
    assert fr.episode_index.tolist() == [0] * 5 + [1] * 7 + [2] * 4
    assert fr.task_index.tolist() == [0] * 5 + [3] * 11
    assert fr.stage.tolist() == [0] * 5 + [1] * 11
    # chunk of the last frame of episode 0 repeats its last action; the mask marks the real steps
    a0 = episodes[0]["action"]
    torch.testing.assert_close(fr.actions[4], torch.as_tensor(a0[[4, 4, 4]]))
    torch.testing.assert_close(fr.actions[2], torch.as_tensor(a0[[2, 3, 4]]))
    assert fr.mask[4].tolist() == [True, False, False] and fr.mask[2].tolist() == [True, True, True]
    np.testing.assert_array_equal(fr.rewards, recap_rewards([5, 7, 4], [True, False, True], 10.0))
    assert fr.intervention[5 + 4:12].all() and not fr.intervention[:9].any()
    assert fr.success.tolist() == [True] * 5 + [False] * 7 + [True] * 4
    with pytest.raises(DatasetError, match="no episodes"):
        RL.build_frames([], [], 3, 8, 10.0)
    bare = {k: v for k, v in episodes[0].items() if k != "images"}
    with pytest.raises(DatasetError, match="camera images"):
        RL.build_frames([bare], [0], 3, 8, 10.0)


@pytest.mark.parametrize("mode", ["recap", "bc", "filtered", "awr"])
def test_training_modes_lower_the_loss(episodes, mode):
    torch.manual_seed(0)
    cfg = _training(policy_steps=60, batch_size=16, lr=3e-3, brightness=0.0, contrast=0.0, crop_pad=0)
    fr = RL.build_frames(episodes, [0, 0, 0], chunk=3, image_size=32, c_fail=10.0)
    policy = RL.make_policy(TINY_MODEL, cfg)
    policy.base.set_normalization(fr.actions[:, 0], fr.arm_state)
    text = torch.randn(10, 384)
    adv = np.linspace(-1, 1, len(fr))
    ind = adv > 0.4
    first = RL.train_policy(policy, fr, text, mode, adv, ind, RL.RecapLiberoTraining(**{**TINY_TRAINING,
                            "policy_steps": 1}), torch.Generator().manual_seed(0), None, {})
    last = RL.train_policy(policy, fr, text, mode, adv, ind, cfg, torch.Generator().manual_seed(0), None, {})
    assert last < 0.7 * first


def test_filtered_mode_without_frames_is_a_named_error(episodes):
    eps = [dict(e, success=False, intervention=np.zeros(e["length"], bool)) for e in episodes]
    fr = RL.build_frames(eps, [0, 0, 0], 3, 32, 10.0)
    policy = RL.make_policy(TINY_MODEL, _training())
    with pytest.raises(DatasetError, match="selects no frame"):
        RL.train_policy(policy, fr, torch.zeros(10, 384), "filtered", np.zeros(len(fr)), np.zeros(len(fr), bool),
                        _training(), torch.Generator(), None, {})
    with pytest.raises(ConfigError, match="mode"):
        RL.train_policy(policy, fr, torch.zeros(10, 384), "ppo", np.zeros(len(fr)), np.zeros(len(fr), bool),
                        _training(), torch.Generator(), None, {})


def test_value_training_fits_returns(episodes):
    torch.manual_seed(0)
    cfg = _training(value_steps=60, batch_size=16, lr=3e-3, brightness=0.0, contrast=0.0, crop_pad=0)
    fr = RL.build_frames(episodes, [0, 0, 0], chunk=3, image_size=32, c_fail=10.0)
    vnet = RL.LiberoValueNet(VisuomotorConfig(**TINY_MODEL), 32)
    vnet.encoder.set_normalization(fr.actions[:, 0], fr.arm_state)
    text = torch.randn(10, 384)
    targets = RL._value_targets(fr, RL.RecapLiberoProblem(base={"max_steps": 10}), 1.0)
    np.testing.assert_allclose(targets[:5], [-0.2, -0.15, -0.1, -0.05, 0.0])  # 5 steps to success, 20 = 10 + c_fail
    before = np.abs(RL.predict_values(vnet, fr, text) - targets).mean()
    loss = RL.train_value(vnet, fr, text, targets, cfg, torch.Generator().manual_seed(0), None, {})
    after = np.abs(RL.predict_values(vnet, fr, text) - targets).mean()
    assert after < before and loss < 3.5  # cross-entropy of the uniform start: log(201) = 5.3


# ---------------------------------------------------------------------------- data set and model file
def _config_dict(**sections):
    d = {"problem": {"kind": "recap_libero", "name": "recap_libero_test",
                     "base": {"suite": "libero_spatial", "tasks": [0, 3], "max_steps": 10, "camera_size": 16}},
         "generator": {"eval_init_states": [[0, 1]], "demo_init_states": [[25, 27]],
                       "correction_init_states": [[20, 21]], "autonomous_init_states": [[21, 22]]},
         "model": dict(TINY_MODEL), "training": dict(TINY_TRAINING)}
    for k, v in sections.items():
        d[k] = {**d[k], **v}
    return d


def test_stage_dataset_is_lerobot_v3(tmp_path, episodes):
    exp = experiment_from_dict(_config_dict(), "x.yaml")
    run = RL.RecapLiberoRun.from_experiment(exp, out=tmp_path)
    fr = RL.build_frames(episodes, [1, 1, 1], 3, 16, run.problem.c_fail)
    v = np.linspace(-0.9, -0.1, len(fr))
    labels = RL.label_advantages(fr.rewards / 20, v, fr.episode_index, fr.task_index, fr.intervention, n=3)
    RL._write_stage_dataset(tmp_path / "ds", run, "corrections", episodes, v, labels)
    ds = lerobot.read_dataset(tmp_path / "ds")
    assert ds.info["codebase_version"] == "v3.0" and ds.num_episodes == 3 and ds.num_frames == 16
    assert ds.info["features"]["observation.images.agentview"]["dtype"] == "image"
    np.testing.assert_array_equal(ds.frames["observation.images.wrist"], np.concatenate(
        [e["images"]["eye_in_hand_rgb"] for e in episodes]))  # PNG: lossless
    assert ds.episodes["stage"].tolist() == ["corrections"] * 3
    assert ds.episodes["init_state"].tolist() == [25, 26, 27]
    assert ds.tasks[3] == "pick up the black bowl next to the ramekin and place it on the plate" or len(ds.tasks) == 10
    np.testing.assert_array_equal(ds.frames["complementary_info.is_intervention"], fr.intervention)
    np.testing.assert_allclose(ds.frames["complementary_info.value"], v, rtol=1e-6)
    assert ds.frames["complementary_info.indicator"][fr.intervention].all()


def test_model_file_round_trip(tmp_path):
    exp = experiment_from_dict(_config_dict(), "x.yaml")
    run = RL.RecapLiberoRun.from_experiment(exp, out=tmp_path)
    policy = RL.make_policy(run.model, run.training, beta=2.0)
    with torch.no_grad():
        policy.indicator.embedding.weight.normal_()
    policy.problem, policy.model_config = run.problem, run.model
    policy.metadata = {"beta": 2.0, "training": json.loads(json.dumps(RL.asdict(run.training))),
                       "text_embeddings": {"go": np.zeros(384, np.float32)}}
    trc.save(policy, tmp_path / "model.pt", metadata=policy.metadata)
    back = trc.load(tmp_path / "model.pt")
    assert isinstance(back, RL.ConditionedVisuomotor) and back.beta == 2.0
    args = _inputs()
    torch.testing.assert_close(back.guided(*args, 2.0)[0], policy.guided(*args, 2.0)[0])
    assert for_problem_kind("recap_libero").name == "recap_libero"


def test_stage_order_and_foreign_run_folder(tmp_path):
    exp = experiment_from_dict(_config_dict(), "x.yaml")
    with pytest.raises(ConfigError, match="needs stage 'demos' finished first"):
        RL.run_libero_stage(exp, "corrections", out=tmp_path)
    with pytest.raises(ConfigError, match="--stage must be one of"):
        RL.run_libero_stage(exp, "rl", out=tmp_path)
    other = experiment_from_dict(_config_dict(training={"lr": 0.5}), "x.yaml")
    (tmp_path / "run.json").write_text(json.dumps(RL.RecapLiberoRun.from_experiment(other, out=tmp_path)
                                                  .fingerprint()))
    with pytest.raises(ConfigError, match="another configuration"):
        RL.run_libero_stage(exp, "demos", out=tmp_path)


# ---------------------------------------------------------------------------- in LIBERO (slow)
libero = pytest.mark.skipif(not HAVE_LIBERO_ASSETS, reason="LIBERO assets not found (../shared/libero-assets)")


@pytest.mark.slow
@libero
@pytest.mark.usefixtures("libero_config")
@pytest.mark.parametrize("switch", [0, 60])
def test_expert_resumes_from_the_scene(switch):
    """The expert takes over at step ``switch`` of another expert's episode (at 60 it holds the bowl):
    it works out its phase and completes the task."""
    pytest.importorskip("robosuite")
    from dynamics.libero import LiberoSimulator
    from trc.generators.libero_expert import PickPlaceExpert

    sim = LiberoSimulator("libero_spatial", 0, camera_size=16, cameras=False)
    try:
        raw = sim.reset(25)
        first = PickPlaceExpert(sim, rng=np.random.default_rng(0))
        rest = sim.body_pose(first.obj)[0][2]
        ok, phase = False, None
        for t in range(220):
            if t == switch:
                second = PickPlaceExpert(sim, rng=np.random.default_rng(0))
                phase = second.resume(raw, rest)
            raw, ok = sim.step((first if t < switch else second).act(raw), render=False)
            if ok:
                break
        assert phase == ("backoff" if switch == 0 else "carry")
        assert ok
    finally:
        sim.close()


@pytest.mark.slow
@libero
@pytest.mark.usefixtures("libero_config")
def test_three_stages_in_libero_resume_after_kill(tmp_path):
    """The three stages on one task with a tiny policy; the demos stage is killed (kill -9) after its
    first episode file and rerun: it keeps that episode and ends with the weights of an uninterrupted
    run on the same episodes."""
    pytest.importorskip("robosuite")
    cfg = _config_dict(problem={"base": {"suite": "libero_spatial", "tasks": [0], "max_steps": 30,
                                         "camera_size": 16}},
                       generator={"demo_init_states": [[25, 28]], "patience": 5, "calibration_episodes": 1})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "trc.train", "--config", str(path), "--out", str(killed), "--stage", "demos",
           "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "demos" / "rollouts" / "task00_init25.npz"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not first.is_file():
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file() and not (killed / "demos" / "metrics.json").exists()
    mtime = first.stat().st_mtime_ns
    from trc.train import main as train_main

    assert train_main(["--config", str(path), "--out", str(killed), "--quiet"]) == 0
    assert first.stat().st_mtime_ns == mtime  # the finished episode was kept, not rerun
    # the same episodes (a reused simulator differs from a fresh one by rounding, which contacts amplify):
    # training from them gives the same weights
    straight = tmp_path / "straight"
    shutil.copytree(killed / "demos" / "rollouts", straight / "demos" / "rollouts")
    shutil.copy(killed / "run.json", straight / "run.json")
    assert train_main(["--config", str(path), "--out", str(straight), "--stage", "demos", "--quiet"]) == 0
    a, b = (torch.load(p / "demos" / "policy.pt") for p in (killed, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    m = json.loads((killed / "corrections" / "metrics.json").read_text())
    assert m["intervened_episodes"] == 1 and 0 < m["intervention_fraction"] < 1
    assert m["calibration_episodes"] == 1
    for stage in ("demos", "corrections", "autonomous"):
        assert lerobot.read_dataset(killed / stage / "dataset").episodes["stage"].tolist()[0] == stage
    model = trc.load(killed / "autonomous" / "model.pt")
    assert isinstance(model, RL.ConditionedVisuomotor)
    with pytest.raises(CheckpointError):
        load_state(model, killed / "demos" / "value.pt", "policy weights")
