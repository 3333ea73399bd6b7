"""Shrinking horizon: the steps-to-go input of TRC (model.time_to_go), its training on the
suffixes of optimal trajectories (trc.data.suffix_split), its exported programs and its use in the
closed-loop harness; checked against the finite-horizon Riccati cost-to-go and IPOPT."""

from __future__ import annotations

import dataclasses
import math

import control as ct
import numpy as np
import pytest
import torch

from dynamics import tasks
from dynamics.errors import ConfigError, DatasetError, DimensionError
from trc import Problem
from trc import closed_loop as cl
from trc.data import load_dataset, suffix_split
from trc.experiment import experiment_from_dict
from trc.export import export_controller, load_controller
from trc.generators import make_solver
from trc.generators.ipopt import RocketReference
from trc.generators.pipeline import generate
from trc.generators.storage import read_dataset, write_dataset
from trc.models import TinyRecursiveControl, TRCConfig
from trc.training import TrainConfig, Trainer
from trc.training.dagger import DaggerConfig, run_dagger
from trc.training.losses import imitation_loss

DT, N = 0.2, 10
Q, R, QF = np.diag([2.0, 0.5]), np.array([[0.1]]), np.diag([20.0, 10.0])
TINY = {"mode": "single_latent", "latent_dim": 16, "hidden_dim": 32, "num_layers": 1, "H_cycles": 2,
        "L_cycles": 1, "feedback_channels": 8, "detach_feedback": True, "time_to_go": True}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lqr_data(tmp_path_factory):
    """Finite-horizon LQR trajectories of a double integrator to the origin (bounds inactive)."""
    path = tmp_path_factory.mktemp("data") / "di_lqr.h5"
    cfg = {
        "problem": {"name": "di_lqr", "plant": {"name": "double_integrator", "u_min": -1e3, "u_max": 1e3},
                    "dt": DT, "horizon": N, "Q": Q.tolist(), "R": R.tolist(), "Qf": QF.tolist(),
                    "initial_state": {"low": [-1, -1], "high": [1, 1]},
                    "target_state": {"low": [0, 0], "high": [0, 0]}, "tolerance": 0.1},
        "generator": {"solver": "lqr", "num_samples": 64, "out": str(path), "seed": 0},
        "training": {"epochs": 4, "batch_size": 64, "lr": 3e-3, "ema_decay": None, "num_threads": 1,
                     "tensorboard": False, "val_every": 4, "loss": {"imitation": 1.0, "cost": 0.0, "terminal": 0.0}},
    }
    exp = experiment_from_dict(cfg)
    generate(exp.problem, exp.generator, workers=1, progress=False)
    return cfg, load_dataset(path, dtype=torch.float64)


def rocket_model(**changes) -> TinyRecursiveControl:
    torch.manual_seed(0)
    return TinyRecursiveControl.from_problem(Problem(task="rocket"), {**TINY, **changes}).eval()


def rocket_states(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    x0, xt = Problem(task="rocket").sample(batch, 0)
    return torch.as_tensor(x0).float(), torch.as_tensor(xt).float()


# ----------------------------------------------------------------------------- suffixes
def test_suffix_costs_are_the_riccati_cost_to_go(lqr_data):
    """The suffix from step j of a finite-horizon LQR trajectory costs x_j' P_j x_j, P_j from the
    backward Riccati recursion of the ZOH discretisation (python-control), P_N = Qf."""
    _, data = lqr_data
    split = data.train
    sysd = ct.c2d(ct.ss([[0, 1], [0, 0]], [[0], [1]], np.eye(2), 0), DT, method="zoh")
    A, B = np.asarray(sysd.A), np.asarray(sysd.B)
    P = [None] * (N + 1)
    P[N] = QF
    for j in range(N - 1, -1, -1):
        Pn = P[j + 1]
        K = np.linalg.solve(R * DT + B.T @ Pn @ B, B.T @ Pn @ A)
        P[j] = Q * DT + A.T @ Pn @ (A - B @ K)
    suffixes = suffix_split(split, data.problem)
    assert len(suffixes) == len(split) * N
    X = split.states.numpy()
    expected = np.stack([np.einsum("bi,ij,bj->b", X[:, j], P[j], X[:, j]) for j in range(N)], 1).reshape(-1)
    np.testing.assert_allclose(suffixes.cost.numpy(), expected, rtol=1e-6)


def test_suffix_samples_start_at_each_step_and_pad_the_tail(lqr_data):
    _, data = lqr_data
    split = data.train
    s = suffix_split(split, data.problem)
    i, j = 3, 7
    row = i * N + j
    assert s.tensors["steps_to_go"][row] == N - j
    torch.testing.assert_close(s.x0[row], split.states[i, j])
    torch.testing.assert_close(s.controls[row, : N - j], split.controls[i, j:])
    torch.testing.assert_close(s.controls[row, N - j:], split.controls[i, -1].expand(j, -1))
    torch.testing.assert_close(s.states[row, : N - j + 1], split.states[i, j:])
    torch.testing.assert_close(s.states[row, N - j + 1:], split.states[i, -1].expand(j, -1))
    torch.testing.assert_close(s.target[row], split.target[i])


def test_a_suffix_of_the_rocket_optimum_is_the_optimum_for_the_time_left():
    """Bellman's principle, which suffix_split relies on, checked on the rocket: IPOPT on the
    original (non-convexified) landing from step 40 of the SOCP optimum, with the 10 steps left,
    burns what the SOCP's last 10 steps burn."""
    problem = Problem(task="rocket")
    x0, xt = problem.sample(1, 3)
    sol = make_solver("rocket", problem).solve(x0, xt)
    assert sol.success.all(), sol.status
    j = 40
    tail = Problem(**{**tasks.task("rocket"), "horizon": N})
    ref = RocketReference(tail).solve(sol.states[0, j], xt[0])
    assert ref.success, ref.status
    fuel_tail = sol.states[0, j, 6] - sol.states[0, -1, 6]
    assert ref.cost == pytest.approx(fuel_tail, rel=1e-4)


def test_suffixes_of_another_horizon_are_refused(lqr_data):
    _, data = lqr_data
    with pytest.raises(DimensionError, match="horizon"):
        suffix_split(data.train, Problem(**{**data.problem.to_dict(), "horizon": N + 1}))


def test_masked_imitation_averages_the_counted_steps_only():
    u, u_opt = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    k = torch.tensor([5, 2, 1])
    mask = torch.arange(5)[None] < k[:, None]
    got = imitation_loss(u, u_opt, torch.ones(2), mask=mask)
    expected = torch.stack([((u[b, : k[b]] - u_opt[b, : k[b]]) ** 2).mean() for b in range(3)])
    torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------- model
def test_steps_to_go_default_is_the_horizon_and_the_rollouts_hold_after_it():
    model = rocket_model()
    x0, xt = rocket_states(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x0, xt), model(x0, xt, steps_to_go=50))
        assert not torch.allclose(model(x0, xt, steps_to_go=10), model(x0, xt))  # the input is used
        out = model(x0, xt, steps_to_go=torch.tensor([50, 20, 3, 1]), return_all_iterations=True)
    for b, k in enumerate((50, 20, 3, 1)):
        X = out.all_states[:, b]
        torch.testing.assert_close(X[:, k:], X[:, k:k + 1].expand_as(X[:, k:]))
        assert (X[:, k] != X[:, k - 1]).any()


@pytest.mark.parametrize("steps_to_go, error", [(0, ConfigError), (51, ConfigError), (2.5, ConfigError),
                                                (torch.ones(3), DimensionError)])
def test_bad_steps_to_go_are_named(steps_to_go, error):
    model = rocket_model()
    x0, xt = rocket_states(4)
    with pytest.raises(error, match="steps_to_go"):
        model(x0, xt, steps_to_go=steps_to_go)


def test_a_fixed_horizon_model_takes_no_steps_to_go_and_time_to_go_excludes_the_terminal_stages():
    model = rocket_model(time_to_go=False)
    x0, xt = rocket_states(2)
    with pytest.raises(ConfigError, match="steps_to_go"):
        model(x0, xt, steps_to_go=5)
    with pytest.raises(ConfigError, match="time_to_go"):
        TRCConfig.from_dict({**TINY, "correction_steps": 5})


def test_training_on_suffixes_learns_the_shrinking_horizon_plan(lqr_data):
    """A time-to-go model trained on the LQR suffixes imitates each suffix's plan better than it
    did untrained (the masked imitation loss falls), and its training batches carry steps_to_go."""
    cfg, data = lqr_data
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(data.problem, {**TINY, "detach_feedback": False}).double()
    s = suffix_split(data.val, data.problem)
    k = s.tensors["steps_to_go"]
    mask = torch.arange(N)[None] < k[:, None]

    def error():
        with torch.no_grad():
            u = model.eval()(s.x0, s.target, steps_to_go=k)
        return float(imitation_loss(u, s.controls, torch.ones(1, dtype=u.dtype), mask=mask).mean())

    before = error()
    training = TrainConfig.from_dict({**cfg["training"], "monitor": "first_control_error"})
    trainer = Trainer(model, data, training, progress=False)
    assert len(trainer.loader.dataset) == len(data.train) * N
    result = trainer.fit()
    assert math.isfinite(result.history[-1]["train_loss"])
    assert error() < 0.5 * before
    # the monitored validation metric: RMS error of u_0 over every suffix of the validation plans
    with torch.no_grad():
        u0 = result.model.eval()(s.x0, s.target, steps_to_go=k)[:, 0]
    rms = float((((u0 - s.controls[:, 0]) / trainer.u_scale) ** 2).mean().sqrt())
    assert result.history[-1]["val_first_control_error"] == pytest.approx(rms, rel=1e-4)


# ----------------------------------------------------------------------------- export and closed loop
def test_exported_program_takes_the_steps_to_go(tmp_path):
    model = rocket_model()
    x0, xt = rocket_states(3)
    result = export_controller(model, tmp_path / "rocket.ts")
    program = load_controller(result.path)
    assert program.time_to_go_horizon == 50
    k = np.array([50.0, 12.0, 1.0])
    with torch.no_grad():
        expected = model(x0, xt, steps_to_go=torch.as_tensor(k)).numpy()
    np.testing.assert_allclose(program(x0.numpy(), xt.numpy(), k), expected, atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(program(x0.numpy(), xt.numpy()), program(x0.numpy(), xt.numpy(), 50), atol=1e-6)
    with pytest.raises(ConfigError, match="steps_to_go"):
        program(x0.numpy(), xt.numpy(), 0)
    fixed = load_controller(export_controller(rocket_model(time_to_go=False), tmp_path / "fixed.ts").path)
    assert fixed.time_to_go_horizon is None
    with pytest.raises(ConfigError, match="steps_to_go"):
        fixed(x0.numpy(), xt.numpy(), 5)


def test_the_harness_replans_a_time_to_go_model_with_the_time_left():
    """On the rocket (fixed final time) the harness passes N - k at step k; the model is called
    with it and the episode runs (a fixed-horizon model is refused: test_closed_loop)."""
    problem = Problem(task="rocket")
    model = rocket_model()
    seen = []
    forward = model.forward

    def spy(x, target, *args, steps_to_go=None, **kwargs):
        seen.append(int(torch.as_tensor(steps_to_go).reshape(-1)[0]))
        return forward(x, target, *args, steps_to_go=steps_to_go, **kwargs)

    model.forward = spy
    config = cl.ClosedLoopConfig(episodes=2, steps=3, timing_repeats=1)
    result = cl.run(problem, cl.TRCController(model), config, timing=False)
    assert seen == [50, 49, 48]
    assert result.states.shape == (2, 4, 7) and np.isfinite(result.states).all()


def test_suffixes_of_a_shrinking_plan_are_the_suffixes_of_the_whole_plan(lqr_data):
    """A padded plan of k < N steps (steps_to_go in the split) expands into its k suffixes only,
    and they equal the corresponding suffixes of the full plan it came from."""
    _, data = lqr_data
    once = suffix_split(data.train, data.problem)
    twice = suffix_split(once, data.problem)
    k = once.tensors["steps_to_go"].long()
    assert len(twice) == int(k.sum())
    i, j = 2, 4  # plan i's suffix from step j, then that plan's suffixes
    start = int(k[: i * N + j].sum())
    for r in range(N - j):
        for key in ("x0", "controls", "states", "cost", "steps_to_go"):
            torch.testing.assert_close(twice.tensors[key][start + r], once.tensors[key][i * N + j + r])


def test_steps_to_go_round_trips_through_the_data_set_file_and_bad_values_are_refused(lqr_data, tmp_path):
    _, data = lqr_data
    raw = dataclasses.replace(data.raw, steps_to_go=np.arange(data.raw.num_samples) % N + 1)
    write_dataset(tmp_path / "k.h5", raw)
    np.testing.assert_array_equal(read_dataset(tmp_path / "k.h5").steps_to_go, raw.steps_to_go)
    loaded = load_dataset(tmp_path / "k.h5")
    np.testing.assert_array_equal(loaded.train.tensors["steps_to_go"].numpy(), raw.steps_to_go[raw.splits["train"]])
    assert read_dataset(data.path).steps_to_go is None
    for bad in (np.zeros(raw.num_samples), np.full(raw.num_samples, N + 1)):
        with pytest.raises(DatasetError, match="steps_to_go"):
            write_dataset(tmp_path / "bad.h5", dataclasses.replace(data.raw, steps_to_go=bad))
    assert not (tmp_path / "bad.h5").exists()


ROCKET_DAGGER = {
    "problem": {"task": "rocket"},
    "generator": {"solver": "rocket", "num_samples": 10, "out": "unused.h5"},
    "model": TINY,
    "training": {"batch_size": 64, "lr": 1e-3, "num_threads": 1, "val_every": 1, "ema_decay": None,
                 "loss": {"imitation": 1.0, "cost": 0.0, "terminal": 0.0}},
}


def test_dagger_labels_each_visited_state_for_the_time_left(tmp_path):
    """On the rocket (fixed final time) DAgger runs N-step episodes re-planned with the time
    left and labels the state visited at step k with the optimal plan for the N - k steps left,
    padded to N; one such label is checked against IPOPT on the original landing problem."""
    exp = experiment_from_dict(ROCKET_DAGGER)
    config = DaggerConfig(rounds=1, episodes=2, epochs=1, eval_episodes=2, labels_per_round=None,
                          param_scale=[1.0, 1.0], process_noise=0.1, measurement_noise=0.1)
    with pytest.raises(ConfigError, match="fixed final time"):
        DaggerConfig(steps=60).horizon_steps(exp.problem)
    result = run_dagger(exp, rocket_model(), config, tmp_path / "run", base_data=False)
    labels = read_dataset(tmp_path / "run" / "round_1" / "labels.h5")
    k = labels.steps_to_go
    assert k is not None and labels.num_samples == result.rounds[1]["labels"]["solved"] > 0
    assert ((k >= 1) & (k <= 50)).all() and (k < 50).any()
    np.testing.assert_allclose(labels.states[:, 0], labels.initial_states, atol=1e-9)
    for row in range(labels.num_samples):  # padded after step k with x_k and u_{k-1}
        n = int(k[row])
        np.testing.assert_array_equal(labels.states[row, n:], np.repeat(labels.states[row, n:n + 1], 51 - n, 0))
        np.testing.assert_array_equal(labels.controls[row, n - 1:],
                                      np.repeat(labels.controls[row, n - 1:n], 51 - n, 0))
        assert labels.costs[row] == pytest.approx(labels.states[row, 0, 6] - labels.states[row, n, 6], rel=1e-9)
    row = int(np.argmin(k))
    tail = Problem(**{**tasks.task("rocket"), "horizon": int(k[row])})
    ref = RocketReference(tail).solve(labels.initial_states[row], labels.target_states[row])
    assert ref.success, ref.status
    assert labels.costs[row] == pytest.approx(ref.cost, rel=1e-4)
    for mode in ("nominal", "perturbed"):
        assert 0.0 <= result.rounds[1]["heldout"][mode]["success_rate"] <= 1.0
