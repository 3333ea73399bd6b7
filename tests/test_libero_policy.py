"""The recursive visuomotor policy, behaviour cloning and the learned arm dynamics (no simulator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dynamics
import trc
from dynamics.errors import CheckpointError, ConfigError, DatasetError, DimensionError
from dynamics.learned_arm import LearnedArmDynamics, arm_states, fit, rollout_errors, rot6d_from_axis_angle
from trc.evaluation_libero import load_policy
from trc.generators.libero_storage import LiberoDemo, LiberoProblem
from trc.models.recursion import RecursionCore
from trc.models.visuomotor import CAMERAS, TEXT_DIM, VisuomotorConfig, VisuomotorPolicy
from trc.training.bc import BCConfig, augment, bc_loss, build_data, split_by_demo, train_bc

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models train faster on one thread than on two contended ones."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


TINY = dict(image_size=32, channels=8, keypoints=8, latent_dim=32, hidden_dim=64, chunk=4, H_cycles=2, L_cycles=1)


def synthetic_demo(lang: str, seed: int, T: int = 24) -> LiberoDemo:
    """A demonstration whose actions are a function of what the images show (a bright square)."""
    rng = np.random.default_rng(seed)
    pos = np.cumsum(rng.normal(0, 0.01, (T, 3)), 0)
    ori = np.tile([np.pi - 0.01, 0.0, 0.0], (T, 1)) + rng.normal(0, 0.01, (T, 3))
    grip = np.tile([0.02, -0.02], (T, 1))
    col = rng.integers(0, 96, T)
    img = np.zeros((T, 64, 64, 3), dtype=np.uint8)
    for t in range(T):
        img[t, 20:44, col[t] // 3 : col[t] // 3 + 16] = 255
    act = np.zeros((T, 7))
    act[:, 0] = col / 48.0 - 1.0  # x action encodes the square's column
    act[:, 6] = np.where(np.arange(T) < T // 2, -1.0, 1.0)
    return LiberoDemo(obs={"ee_pos": pos, "ee_ori": ori, "gripper_states": grip, "agentview_rgb": img,
                           "eye_in_hand_rgb": img.copy()}, actions=act, states=None, rewards=np.zeros(T),
                      dones=np.zeros(T), language=lang, task_name=lang, file="", key=f"demo_{seed}")


@pytest.fixture(scope="module")
def data():
    demos = [synthetic_demo(lang, seed) for seed, lang in enumerate(["a", "a", "a", "b", "b", "b"])]
    rng = np.random.default_rng(0)
    emb = {s: rng.normal(size=TEXT_DIM).astype(np.float32) for s in ("a", "b")}
    train, val = split_by_demo(demos, 0.34, seed=0)
    return build_data(train, 32, 4, emb), build_data(val, 32, 4, emb), emb


def make_policy(train, **overrides):
    cfg = VisuomotorConfig(**{**TINY, **overrides})
    arm = LearnedArmDynamics(hidden_dim=16, num_layers=1) if cfg.feedback else None
    policy = VisuomotorPolicy(cfg, arm)
    policy.set_normalization(train.actions[:, 0], train.arm_state)
    return policy


def batch(train, n=5):
    idx = torch.arange(n)
    imgs = {cam: train.images[cam][idx].float() / 255 for cam in CAMERAS}
    return imgs, train.text[idx], train.arm_state[idx]


def test_split_is_by_demonstration(data):
    demos = [synthetic_demo(lang, s, T=5) for s, lang in enumerate("aaaabbbc")]
    train, val = split_by_demo(demos, 0.25, seed=1)
    assert not {d.key for d in train} & {d.key for d in val}
    assert sorted(d.language for d in val) == ["a", "b"]  # "c" has a single demo: training only
    tr, va, _ = data
    assert len(tr) + len(va) == 6 * 24
    assert tr.mask[-1].tolist() == [True, False, False, False]  # past the end: padded and masked


@pytest.mark.parametrize("encoder", ["cnn", "resnet18"])
def test_policy_shapes_and_recursion_core(data, encoder):
    train, _, _ = data
    policy = make_policy(train, encoder=encoder)
    assert isinstance(policy.core, RecursionCore)  # the same recursion code as TRC
    out = policy(*batch(train))
    assert out.actions.shape == (5, 4, 7) and len(out.all_actions) == 3
    assert out.latent_norms.shape == (3, 5) and torch.isfinite(out.latent_norms).all()
    assert out.cycles.tolist() == [2] * 5 and out.halt_logits is None
    assert not any(p.requires_grad for p in policy.arm.parameters())  # the learned dynamics stay frozen
    out.actions.sum().backward()
    assert policy.feedback_encoder.proj.weight.grad is not None  # the feedback path is trained
    with pytest.raises(DimensionError, match="text"):
        policy(batch(train)[0], torch.zeros(5, 10), batch(train)[2])
    with pytest.raises(ConfigError, match="arm"):
        VisuomotorPolicy(VisuomotorConfig(**TINY))


def test_normalisation_round_trip_and_act(data):
    train, _, _ = data
    policy = make_policy(train)
    a = train.actions[:10, 0]
    torch.testing.assert_close(policy.denormalize_actions(policy.normalize_actions(a)), a)
    z = policy.normalize_actions(train.actions[:, 0])
    torch.testing.assert_close(z.mean(0), torch.zeros(7), atol=1e-5, rtol=0)
    raw = {cam: np.zeros((2, 128, 128, 3), dtype=np.uint8) for cam in CAMERAS}
    chunk, out = policy.act(raw, train.text[:2], train.arm_state[:2])
    assert chunk.shape == (2, 4, 7) and chunk.abs().max() <= 1.0


def test_halting_stops_refinement_at_inference(data):
    train, _, _ = data
    policy = make_policy(train, halting=True, H_cycles=3)
    with torch.no_grad():
        policy.halting.from_latent.bias.fill_(5.0)  # always halt
    policy.eval()
    out = policy(*batch(train))
    assert out.cycles.tolist() == [1] * 5 and len(out.all_actions) == 4
    torch.testing.assert_close(out.actions, out.all_actions[1])
    policy.train()
    assert policy(*batch(train)).halt_logits.shape == (3, 5)


def test_bc_loss_and_augmentation():
    pred, target = torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    d = (pred - target)[mask]
    expected = torch.stack([(0.7 * (pred - target)[i][mask[i]].pow(2) + 0.3 * (pred - target)[i][mask[i]].abs()).mean()
                            for i in range(3)]).mean()
    torch.testing.assert_close(bc_loss(pred, target, mask), expected)
    assert d.numel() == 7 * 7
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(4, 3, 16, 16)
    out = augment(img, 0.3, 0.3, 2, gen)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    shifted = augment(img, 0.0, 0.0, 2, torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(img, (2, 2, 2, 2), mode="replicate")
    crops = [padded[0, :, i : i + 16, j : j + 16] for i in range(5) for j in range(5)]
    assert any(torch.equal(shifted[0], c) for c in crops)  # a pure random crop of the padded image


def test_tiny_bc_run_lowers_the_loss_and_checkpoint_round_trip(data, tmp_path):
    train, val, emb = data
    torch.manual_seed(0)
    policy = make_policy(train)
    cfg = BCConfig(epochs=5, batch_size=16, lr=3e-3, patience=10, brightness=0.1, contrast=0.1, crop_pad=2)
    result = train_bc(policy, train, val, cfg, seed=0, progress=False)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result["best_val_loss"] == min(h["val_loss"] for h in result["history"])
    path = tmp_path / "model.pt"
    policy.problem = LiberoProblem(tasks=[0], max_steps=12, camera_size=32)
    policy.metadata = {"text_embeddings": emb, "metrics": {"best_val_loss": result["best_val_loss"]}}
    trc.save(policy, path, metadata=policy.metadata)
    clone = load_policy(path)
    imgs, text, arm = batch(train)
    with torch.no_grad():
        torch.testing.assert_close(clone(imgs, text, arm).actions, policy.eval()(imgs, text, arm).actions)
    np.testing.assert_array_equal(np.asarray(clone.metadata["text_embeddings"]["a"], dtype=np.float32), emb["a"])
    torch.testing.assert_close(clone.action_std, policy.action_std)
    assert clone.problem == policy.problem and clone.problem.worker_dict()["max_steps"] == 12
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "none.pt")
    torch.save({"kind": "other"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format"):
        load_policy(tmp_path / "other.pt")


def test_build_data_needs_embeddings():
    with pytest.raises(DatasetError, match="no embedding"):
        build_data([synthetic_demo("z", 0, T=3)], 32, 4, {})
    with pytest.raises(DatasetError, match="no demonstrations"):
        build_data([], 32, 4, {})


# ---------------------------------------------------------------------- learned arm dynamics
def test_arm_states_and_rotation_features():
    ori = np.array([[np.pi, 0, 0], [0, 0, 0.3]])
    r6 = rot6d_from_axis_angle(ori)
    np.testing.assert_allclose(r6[0], [1, 0, 0, 0, -1, 0], atol=1e-12)  # gripper down: diag(1, -1, -1)
    pos = np.array([[0.0, 0, 0], [0.01, 0, 0]])
    x = arm_states(pos, ori, np.zeros((2, 2)), dt=0.05)
    assert x.shape == (2, 14)
    np.testing.assert_allclose(x[:, 11:], [[0, 0, 0], [0.2, 0, 0]])


def synthetic_arm_trajectories(n: int, T: int, seed: int):
    """A known arm: the position follows a first-order lag toward 2.5 cm per unit action."""
    rng = np.random.default_rng(seed)
    trajs = []
    for _ in range(n):
        u = np.clip(rng.normal(0, 0.5, (T, 7)), -1, 1)
        pos = np.zeros((T, 3))
        vel = np.zeros(3)
        for t in range(1, T):
            vel = 0.5 * vel + 0.5 * 0.025 * u[t - 1, :3] / 0.05
            pos[t] = pos[t - 1] + vel * 0.05
        grip = np.stack([0.04 * (u[:, 6] < 0), -0.04 * (u[:, 6] < 0)], 1)
        grip = np.concatenate([grip[:1], grip[:-1]])
        x = arm_states(pos, np.tile([np.pi, 0, 0], (T, 1)), grip)
        trajs.append((x, u))
    return trajs


def test_learned_arm_fit_predicts_over_the_chunk():
    train, val = synthetic_arm_trajectories(12, 40, 0), synthetic_arm_trajectories(4, 40, 1)
    untrained = LearnedArmDynamics(hidden_dim=64, num_layers=2)
    model, metrics = fit(train, horizon=4, hidden_dim=64, num_layers=2, epochs=30, batch_size=32, lr=5e-3,
                         validation=val)
    errs = metrics["validation"]
    assert len(errs["position_mm"]) == 4
    assert errs["position_mm"][-1] < 0.6 * errs["baseline_position_mm"][-1], errs
    assert errs["position_mm"][-1] < rollout_errors(untrained, val, 4)["position_mm"][-1]
    assert not any(p.requires_grad for p in model.parameters())


def test_learned_arm_checkpoint_and_registry(tmp_path):
    plant = dynamics.make("learned_arm", hidden_dim=16, num_layers=1, seed=3)
    path = tmp_path / "arm.pt"
    plant.save(path)
    clone = dynamics.make("learned_arm", checkpoint=str(path))
    x = torch.randn(3, 14)
    u = torch.rand(3, 2, 7) * 2 - 1
    torch.testing.assert_close(clone.rollout(x, u), plant.rollout(x, u))
    assert clone.config()["checkpoint"] == str(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        dynamics.make("learned_arm", checkpoint=str(tmp_path / "none.pt"))
    torch.save({"kind": "nope"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a learned arm"):
        dynamics.make("learned_arm", checkpoint=str(tmp_path / "bad.pt"))


def test_learned_arm_checkpoint_dict_without_a_file(tmp_path):
    """The path-less API: a caller stores the dict in its own file and rebuilds the model from it."""
    plant = LearnedArmDynamics(hidden_dim=16, num_layers=2, seed=5)
    plant.x_mean.fill_(0.3)  # the normalisation travels with the weights
    d = plant.checkpoint_dict(metrics={"position_mm": [1.0]})
    assert d["kind"] == "learned_arm" and (d["hidden_dim"], d["num_layers"]) == (16, 2)
    assert d["metrics"]["position_mm"] == [1.0]
    clone = LearnedArmDynamics(checkpoint=d)
    assert clone.checkpoint is None and (clone.hidden_dim, clone.num_layers) == (16, 2)
    torch.testing.assert_close(clone.x_mean, plant.x_mean)
    x, u = torch.randn(4, 14), torch.rand(4, 3, 7) * 2 - 1
    torch.testing.assert_close(clone.rollout(x, u), plant.rollout(x, u))
    # save() writes the same dict; a file saved over an existing one is replaced whole
    path = tmp_path / "arm.pt"
    LearnedArmDynamics(hidden_dim=8, num_layers=1).save(path)
    plant.save(path)
    saved = torch.load(path, weights_only=True)
    assert saved.keys() == d.keys() and (saved["hidden_dim"], saved["num_layers"]) == (16, 2)
    torch.testing.assert_close(saved["state_dict"]["x_mean"], plant.x_mean)
    assert [p.name for p in tmp_path.iterdir()] == ["arm.pt"]  # no temporary file left behind
    with pytest.raises(CheckpointError, match="lacks"):
        LearnedArmDynamics(checkpoint={"kind": "learned_arm", "hidden_dim": 16})
    with pytest.raises(CheckpointError, match="does not match"):
        LearnedArmDynamics(checkpoint={**d, "state_dict": {"x_mean": torch.zeros(14)}})


def test_learned_arm_save_fails_cleanly(tmp_path):
    """A failed save leaves the previous file intact and no temporary file."""
    plant = LearnedArmDynamics(hidden_dim=8, num_layers=1)
    path = tmp_path / "arm.pt"
    plant.save(path)
    before = path.read_bytes()
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("refuses to be pickled")

    with pytest.raises(RuntimeError, match="refuses to be pickled"):
        plant.save(path, metrics={"bad": Unpicklable()})  # fails half-way through torch.save
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["arm.pt"]


def test_dynamics_never_imports_trc(tmp_path):
    """Building, saving and loading the learned arm (and importing the LIBERO plants) loads no ``trc`` module."""
    code = (
        "import sys, dynamics, dynamics.learned_arm as la, dynamics.libero, dynamics.libero_env\n"
        f"m = la.LearnedArmDynamics(hidden_dim=8, num_layers=1); m.save({str(tmp_path / 'arm.pt')!r})\n"
        f"la.LearnedArmDynamics(checkpoint={str(tmp_path / 'arm.pt')!r})\n"
        "print(sorted(k for k in sys.modules if k == 'trc' or k.startswith('trc.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
