"""Training: configuration validation, losses, schedule, EMA, resume, checkpoints, trc.load."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import trc
from dynamics.errors import CheckpointError, ConfigError
from trc.config import from_dict
from trc.data import load_dataset
from trc.generators.pipeline import generate
from trc.evaluation import split_data
from trc.experiment import experiment_from_dict
from trc.models import TinyRecursiveControl, TRCConfig
from trc.model_file import MODEL_FORMAT, read_model_file, weights_digest
from trc.training import (
    EvaluationConfig,
    LossConfig,
    TrainConfig,
    Trainer,
    TRCLoss,
    control_scale,
    cycle_weights,
)
from trc.training.trainer import build_optimizer, build_scheduler, ema_multi_avg_fn


def tiny_config(data_path, **training) -> dict:
    """A double-integrator experiment small enough to train in seconds."""
    return {
        "problem": {
            "name": "di_tiny",
            "plant": {"name": "double_integrator", "u_min": -10, "u_max": 10},
            "dt": 0.33,
            "horizon": 10,
            "Q": [10, 5],
            "R": [0.1],
            "Qf_scale": 20,
            "initial_state": {"low": [-1, -1], "high": [1, 1]},
            "target_state": {"low": [-1, -1], "high": [1, 1]},
            "tolerance": 0.1,
        },
        "generator": {"solver": "lqr", "num_samples": 256, "out": str(data_path), "seed": 0},
        "model": {"latent_dim": 32, "hidden_dim": 64, "H_cycles": 2, "L_cycles": 2},
        "training": {"epochs": 3, "batch_size": 64, "lr": 3e-3, "ema_decay": 0.99, "num_threads": 1,
                     "tensorboard": False, **training},
        "evaluation": {"latency_repeats": 5, "throughput_repeats": 1, "throughput_batch": 64},
    }


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """(config dict, TrajectoryData) of a 256-sample LQR data set, generated with the pipeline."""
    path = tmp_path_factory.mktemp("data") / "di_tiny.h5"
    cfg = tiny_config(path)
    exp = experiment_from_dict(cfg)
    generate(exp.problem, exp.generator, workers=1, progress=False)
    return cfg, load_dataset(path)


def make_model(data, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = TRCConfig(latent_dim=32, hidden_dim=64, H_cycles=2, L_cycles=2).replace(**overrides)
    return TinyRecursiveControl.from_problem(data.problem, cfg)


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "section, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": True}, "batch_size"),
        ({"betas": [0.9]}, "betas"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"device": "tpu"}, "device"),
        ({"monitor": "accuracy"}, "monitor"),
        ({"learning_rate": 1e-3}, "unknown key"),
        ({"loss": {"imitation": -1}}, "imitation"),
        ({"loss": {"imitation": 0, "cost": 0, "terminal": 0}}, "all 0"),
        ({"loss": {"cycle_weights": "exponential"}}, "cycle_weights"),
        ({"loss": {"cycle_weights": [1, -1]}}, "cycle_weights"),
        ({"loss": {"typo": 1}}, "unknown key"),
    ],
)
def test_bad_training_config_raises_config_error(section, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(TrainConfig, section, "training")


@pytest.mark.parametrize("section", [{"split": "dev"}, {"latency_repeats": 0}, {"plots": 3}])
def test_bad_evaluation_config_raises_config_error(section):
    with pytest.raises(ConfigError):
        from_dict(EvaluationConfig, section, "evaluation")


def test_train_config_round_trips_and_fills_defaults():
    cfg = TrainConfig.from_dict({"epochs": 7, "loss": {"cost": 0.5, "cycle_weights": [1, 2, 3]}})
    assert cfg.epochs == 7 and cfg.loss.cost == 0.5 and cfg.loss.imitation == LossConfig().imitation
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown training option"):
        cfg.replace(epoch=3)


def test_cycle_weights():
    assert cycle_weights("uniform", 2) == pytest.approx([1 / 3] * 3)
    assert cycle_weights("linear", 3) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert cycle_weights("last", 3) == [0.0, 0.0, 0.0, 1.0]
    assert cycle_weights([1, 1], 2) == pytest.approx([0, 0.5, 0.5])  # K entries: initial decode unsupervised
    with pytest.raises(ConfigError, match="H_cycles=3"):
        cycle_weights([1, 1], 3)


# ----------------------------------------------------------------------------- losses
def test_losses_vanish_at_the_optimum(tiny_data):
    """The optimal controls have zero imitation loss, zero cost ratio, and the optimal terminal error."""
    _, data = tiny_data
    problem = data.problem
    plant = problem.make_plant(torch.float64)
    split = split_data(data, "train")  # float64, as stored
    B, K = 16, 2
    u = split.controls[:B]
    x0, xt = split.initial_states[:B], split.target_states[:B]
    x_scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    cfg = LossConfig(imitation=1.0, cost=1.0, terminal=1.0, cycle_weights="uniform")
    loss_fn = TRCLoss(problem, plant, cfg, K, control_scale(plant).double(), x_scale, cost_floor=1e-12)
    output = {"all_controls": u.unsqueeze(0).repeat(K + 1, 1, 1, 1)}
    J = problem.cost_of(split.states[:B], u, xt)
    _, parts = loss_fn(output, x0, xt, u, J)
    assert parts["imitation"] == 0.0
    assert abs(parts["cost_ratio"]) < 1e-12
    expected_terminal = (((split.states[:B, -1] - xt) / x_scale) ** 2).sum(-1).mean()
    assert parts["terminal"] == pytest.approx(float(expected_terminal), rel=1e-9, abs=1e-12)


def test_imitation_and_cost_terms_match_references(tiny_data):
    _, data = tiny_data
    problem = data.problem
    plant = problem.make_plant(torch.float64)
    split = split_data(data, "train")
    B = 8
    u_opt, x0, xt = split.controls[:B], split.initial_states[:B], split.target_states[:B]
    u = u_opt + 0.3 * torch.sin(torch.arange(u_opt.numel(), dtype=torch.float64)).view_as(u_opt)
    J_opt = problem.cost_of(split.states[:B], u_opt, xt)
    cfg = LossConfig(imitation=2.0, cost=0.5, terminal=0.0, cycle_weights="last")
    loss_fn = TRCLoss(problem, plant, cfg, 1, control_scale(plant).double(), torch.ones(2, dtype=torch.float64),
                      cost_floor=1e-12, reuse_rollouts=False)
    loss, parts = loss_fn({"all_controls": torch.stack([u_opt, u])}, x0, xt, u_opt, J_opt)
    # Independent references: NumPy MSE in units of the half range (10), and the cost of the
    # exact discrete-time double integrator x+ = A x + B u.
    ref_im = float(np.mean(((u - u_opt).numpy() / 10.0) ** 2))
    dt = problem.dt
    A = np.array([[1, dt], [0, 1]])
    Bd = np.array([dt**2 / 2, dt])
    Q, R, Qf = problem.weights
    ratios = []
    for b in range(B):
        x, J = x0[b].numpy(), 0.0
        for k in range(problem.horizon):
            e = x - xt[b].numpy()
            J += dt * (e @ Q @ e + u[b, k].numpy() @ R @ u[b, k].numpy())
            x = A @ x + Bd * u[b, k, 0].item()
        e = x - xt[b].numpy()
        J += e @ Qf @ e
        ratios.append(J / J_opt[b].item() - 1)
    assert parts["imitation"] == pytest.approx(ref_im, rel=1e-9)
    assert parts["cost_ratio"] == pytest.approx(np.mean(ratios), rel=1e-7)
    assert float(loss) == pytest.approx(2.0 * ref_im + 0.5 * np.mean(ratios), rel=1e-7)


def test_cost_loss_gradient_matches_finite_differences(tiny_data):
    _, data = tiny_data
    problem = data.problem
    plant = problem.make_plant(torch.float64)
    split = split_data(data, "train")
    x0, xt, u_opt = split.initial_states[:2], split.target_states[:2], split.controls[:2]
    J_opt = problem.cost_of(split.states[:2], u_opt, xt)
    cfg = LossConfig(imitation=0.0, cost=1.0, terminal=1.0, cycle_weights="last")
    loss_fn = TRCLoss(problem, plant, cfg, 1, control_scale(plant).double(), torch.ones(2, dtype=torch.float64),
                      cost_floor=1e-12, reuse_rollouts=False)

    def f(u):
        return loss_fn({"all_controls": torch.stack([u_opt, u])}, x0, xt, u_opt, J_opt)[0]

    u = (u_opt + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(f, (u,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_halting_and_one_step_gradient_train(tiny_data):
    """ACT halting loss and TRM's last-cycle-only gradient go through the training loop."""
    cfg, data = tiny_data
    train_cfg = TrainConfig.from_dict({**cfg["training"], "epochs": 1, "loss": {"halting": 0.5}})
    model = make_model(data, act=True, gradient_last_cycle_only=True)
    result = Trainer(model, data, train_cfg, progress=False).fit()
    row = result.history[0]
    assert row["train_halting"] > 0 and math.isfinite(row["train_loss"])
    assert model.halting.from_latent.weight.abs().sum() > 0  # the halting head was trained


@pytest.mark.parametrize("rollout_cycles", ["all", "last"])
def test_reused_model_rollouts_give_the_same_gradient(tiny_data, rollout_cycles):
    """Reusing the model's own rollouts (when they carry the gradient) equals rolling out again."""
    _, data = tiny_data
    detach = rollout_cycles == "last"  # the final rollout carries the gradient even with detached feedback
    model = make_model(data, detach_feedback=detach)
    batch = data.train[:8]
    cfg = LossConfig(imitation=0.0, cost=1.0, terminal=1.0, rollout_cycles=rollout_cycles)
    grads = []
    for reuse in (True, False):
        loss_fn = TRCLoss(data.problem, model.plant, cfg, 2, control_scale(model.plant), model.state_scale, 1e-3,
                          reuse_rollouts=not detach)
        out = model(batch["x0"], batch["target"], return_all_iterations=True)
        if not reuse:
            out = out._replace(all_states=None)
        loss, _ = loss_fn(out, batch["x0"], batch["target"], batch["controls"], batch["cost"])
        model.zero_grad()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6 * float(grads[1].abs().max()))


def test_halting_loss_needs_a_halting_head(tiny_data):
    cfg, data = tiny_data
    with pytest.raises(ConfigError, match="act"):
        Trainer(make_model(data), data, TrainConfig.from_dict({**cfg["training"], "loss": {"halting": 1.0}}))


# ----------------------------------------------------------------------------- schedule and EMA
def test_warmup_cosine_schedule():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1e-2, warmup_fraction=0.1, min_lr_ratio=0.05)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4)  # warm-up starts at 1 % of lr
    assert lrs[10] == pytest.approx(1e-2)  # peak after 10 warm-up steps
    # cosine from the peak to lr * min_lr_ratio (Loshchilov & Hutter 2017, eq. 5)
    for step in (30, 55, 80):
        t = (step - 10) / 90
        expected = 5e-4 + 0.5 * (1e-2 - 5e-4) * (1 + math.cos(math.pi * t))
        assert lrs[step] == pytest.approx(expected, rel=1e-6)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # the bias is not decayed


def test_ema_update_follows_warmup_decay():
    from torch.optim.swa_utils import AveragedModel

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.9))
    ema.update_parameters(model)  # first update copies
    expected = 1.0
    for t in range(1, 30):
        with torch.no_grad():
            model.weight.fill_(float(t + 1))
        ema.update_parameters(model)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * (t + 1)
        assert float(ema.module.weight.detach()) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- training runs
def test_tiny_training_lowers_the_cost_gap(tiny_data, tmp_path):
    from trc.evaluation import evaluate_model

    cfg, data = tiny_data
    train_cfg = TrainConfig.from_dict({**cfg["training"], "epochs": 6, "batch_size": 32, "val_every": 1})
    model = make_model(data)
    before = evaluate_model(model, data.problem, split_data(data, "val"), timing=False).metrics["cost_gap_median"]
    result = Trainer(model, data, train_cfg, out_dir=tmp_path, progress=False).fit()
    gaps = [row["val_cost_gap_median"] for row in result.history]
    assert len(gaps) == 6 and result.stop_reason == "epochs"
    assert min(gaps[-2:]) < 0.1 * before, (before, gaps)
    assert min(gaps[-2:]) < gaps[0], gaps
    assert result.best_metric == min(gaps)
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and "val_cost_gap_median" in csv_lines[0]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tiny_data, tmp_path):
    cfg, data = tiny_data
    train_cfg = TrainConfig.from_dict({**cfg["training"], "epochs": 3, "seed": 7})
    full = Trainer(make_model(data, seed=1), data, train_cfg, out_dir=tmp_path / "full", progress=False).fit()

    def interrupt(trainer, row):
        if row["epoch"] == 2:
            raise _Interrupt  # like kill -9 right after the epoch-2 checkpoint

    with pytest.raises(_Interrupt):
        Trainer(make_model(data, seed=1), data, train_cfg, out_dir=tmp_path / "cut", progress=False,
                callbacks=[interrupt]).fit()
    # The resumed run starts from other random weights: everything must come from the checkpoint.
    resumed = Trainer(make_model(data, seed=99), data, train_cfg, out_dir=tmp_path / "cut", resume=True,
                      progress=False).fit()
    assert resumed.epochs_run == 3
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    drop = ("epoch_seconds", "train_seconds")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in full.history]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in resumed.history]


def test_resume_refuses_a_checkpoint_of_another_model(tiny_data, tmp_path):
    cfg, data = tiny_data
    train_cfg = TrainConfig.from_dict({**cfg["training"], "epochs": 1})
    run_cfg = {"problem": data.problem.to_dict(), "model": {"latent_dim": 32}}
    Trainer(make_model(data), data, train_cfg, out_dir=tmp_path, run_config=run_cfg, progress=False).fit()
    other = {"problem": data.problem.to_dict(), "model": {"latent_dim": 16}}
    with pytest.raises(CheckpointError, match="model"):
        Trainer(make_model(data, latent_dim=16), data, train_cfg, out_dir=tmp_path, run_config=other, resume=True,
                progress=False).fit()
    with pytest.raises(CheckpointError, match=r"training settings \['lr'\] differ"):
        Trainer(make_model(data), data, train_cfg.replace(lr=1e-4), out_dir=tmp_path, run_config=run_cfg,
                resume=True, progress=False).fit()
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        Trainer(make_model(data), data, train_cfg, out_dir=tmp_path, run_config=run_cfg, resume=True,
                progress=False).fit()


def test_train_entry_point_writes_the_run_folder(tiny_data, tmp_path, capsys):
    """``trc.train.train`` generates the missing data set, trains, exports, evaluates and reports."""
    import json

    import trc
    from trc.evaluation import REPORT_KEYS
    from trc.train import main

    cfg, _ = tiny_data
    cfg = copy.deepcopy(cfg)
    cfg["generator"]["out"] = str(tmp_path / "fresh.h5")  # missing: generated first
    cfg["training"]["epochs"] = 2
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["--config", str(tmp_path / "c.yaml"), "--out", str(out), "--quiet", "--seed", "3"]) == 0
    assert (tmp_path / "fresh.h5").is_file()
    for name in ("model.pt", "checkpoint.pt", "config.yaml", "report.json", "report.md", "metrics.csv",
                 "figures/trajectories.png", "figures/gap_per_cycle.png", "figures/loss_curves.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["seed"] == 3 and report["epochs_run"] == 2
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["training"]["seed"] == 3 and written["model"]["state_dim"] == 2  # defaults filled in
    assert "success rate" in capsys.readouterr().out
    # A second run into the same folder must be explicit.
    assert main(["--config", str(tmp_path / "c.yaml"), "--out", str(out), "--quiet"]) == 2
    # trc.load round trip: identical outputs, with and without the plant feedback.
    model = trc.load(out / "model.pt")
    assert not model.training and model.plant is not None and model.problem.name == "di_tiny"
    payload = read_model_file(out / "model.pt")
    reference = make_model(load_dataset(tmp_path / "fresh.h5"))
    reference.load_state_dict(payload["state_dict"])
    reference.eval()
    x0, xt = torch.randn(5, 2), torch.randn(5, 2)
    with torch.inference_mode():
        assert torch.equal(model(x0, xt), reference(x0, xt))
        assert torch.equal(model(x0, xt, plant=False), reference(x0, xt, plant=False))


# ----------------------------------------------------------------------------- model files
@pytest.fixture
def model_file(tiny_data, tmp_path):
    _, data = tiny_data
    model = make_model(data)
    path = tmp_path / "model.pt"
    trc.save(model, path)
    return path, model


def test_load_round_trip_gives_identical_outputs(model_file):
    import trc

    path, model = model_file
    loaded = trc.load(path)
    model.eval()
    x0, xt = torch.randn(4, 2), torch.randn(4, 2)
    with torch.inference_mode():
        assert torch.equal(loaded(x0, xt), model(x0, xt))
    assert loaded.config == model.config


def test_load_rejects_bad_files(model_file, tmp_path):
    import trc

    path, model = model_file
    good = torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        trc.load(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        trc.load(truncated)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        trc.load(text)

    def variant(name, **changes):  # a consistent file (its digest recomputed) with other contents
        p = tmp_path / f"{name}.pt"
        torch.save({**good, **changes, "sha256": weights_digest(changes.get("state_dict", good["state_dict"]))}, p)
        return p

    with pytest.raises(CheckpointError, match=f"expected {MODEL_FORMAT!r}"):
        trc.load(variant("format", format="something-else/3"))
    state = dict(good["state_dict"])
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        trc.load(variant("missing_key", state_dict=state))
    state = dict(good["state_dict"])
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    with pytest.raises(CheckpointError, match="weights do not fit"):
        trc.load(variant("shape", state_dict=state))
    with pytest.raises(CheckpointError, match="invalid"):
        trc.load(variant("bad_config", model_config={**good["model_config"], "latent_dim": -3}))
    bad = {k: v for k, v in good.items() if k != "problem"}
    p = tmp_path / "nokey.pt"
    torch.save(bad, p)
    with pytest.raises(CheckpointError, match="problem"):
        trc.load(p)


def test_load_detects_a_corrupted_weight_file(model_file, tmp_path):
    """A byte flipped inside the stored weights is caught by the SHA-256 recorded in the file."""
    path, model = model_file
    raw = bytearray(path.read_bytes())
    weight = next(v for v in model.state_dict().values() if v.numel() > 64).detach().cpu().contiguous()
    needle = weight.view(-1).view(torch.uint8).numpy().tobytes()[:32]
    at = raw.find(needle)
    assert at > 0, "the weights are stored uncompressed in the zip archive"
    raw[at + 5] ^= 0xFF
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        trc.load(corrupted)
    with pytest.raises(CheckpointError, match="cannot be read|corrupted"):  # not the weights: the archive's own checks
        corrupted.write_bytes(path.read_bytes()[:-30] + bytes(30))
        trc.load(corrupted)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(tiny_data, tmp_path):
    """A real ``kill -9`` of ``python -m trc.train`` after its first checkpoint, then ``--resume``."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    cfg, _ = tiny_data
    cfg = copy.deepcopy(cfg)
    cfg["training"].update(epochs=6, batch_size=16)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def cmd(out, *extra):
        return [sys.executable, "-m", "trc.train", "--config", str(tmp_path / "c.yaml"), "--out", str(out), "--quiet",
                *extra]

    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True, cwd=root)
    proc = subprocess.Popen(cmd(tmp_path / "cut"), env=env, cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= epoch < 6, "the run was not interrupted"
    subprocess.run(cmd(tmp_path / "cut", "--resume"), check=True, env=env, capture_output=True, cwd=root)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_init_fine_tunes_from_a_model_without_its_feedback_encoder(tiny_data, tmp_path):
    """``--init``: the configured model starts from the file's weights; the trajectory-error encoder of
    a model with feedback is left out when the configuration has none; other models are refused."""
    from trc.kinds.continuous import load_initial_weights, run_training

    cfg, data = tiny_data
    torch.manual_seed(0)
    start = TinyRecursiveControl.from_problem(data.problem, TRCConfig(latent_dim=32, hidden_dim=64, H_cycles=2,
                                                                      L_cycles=2, feedback=True))
    trc.save(start, tmp_path / "start.pt")
    plain = TinyRecursiveControl.from_problem(data.problem, TRCConfig(latent_dim=32, hidden_dim=64, H_cycles=2,
                                                                      L_cycles=2, feedback=False))
    load_initial_weights(plain, tmp_path / "start.pt")
    dropped = set(start.state_dict()) - set(plain.state_dict())
    assert dropped and all(k.startswith(("error_encoder.", "feedback_gain.")) for k in dropped)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, start.state_dict()[k]), k
    x0, xt = torch.randn(4, 2), torch.randn(4, 2)
    with torch.inference_mode():  # without feedback the network computes what the original does without the plant
        assert torch.equal(plain.eval()(x0, xt), start.eval()(x0, xt, plant=False))
    wider = TinyRecursiveControl.from_problem(data.problem, TRCConfig(latent_dim=32, hidden_dim=96))
    with pytest.raises(CheckpointError, match="has no weights of the configured model"):
        load_initial_weights(wider, tmp_path / "start.pt")
    other = copy.deepcopy(cfg)
    other["problem"]["horizon"] = 12
    with pytest.raises(CheckpointError, match="horizon: model 10 vs data 12"):
        load_initial_weights(TinyRecursiveControl.from_problem(experiment_from_dict(other).problem, TRCConfig()),
                             tmp_path / "start.pt")
    other["problem"]["horizon"] = 10
    other["problem"]["plant"]["u_max"] = 5
    with pytest.raises(CheckpointError, match="was trained on the plant"):
        load_initial_weights(TinyRecursiveControl.from_problem(experiment_from_dict(other).problem, TRCConfig()),
                             tmp_path / "start.pt")
    # through the training entry: 1 epoch from the file, recorded in config.yaml
    cfg = copy.deepcopy(cfg)
    cfg["model"]["feedback"] = False
    cfg["training"]["epochs"] = 1
    result = run_training(experiment_from_dict(cfg), out=tmp_path / "ft", init=tmp_path / "start.pt",
                          progress=False, evaluate=False, verbose=False)
    assert (tmp_path / "ft" / "config.yaml").read_text().count("start.pt") == 1
    assert result.train_result.epochs_run == 1
