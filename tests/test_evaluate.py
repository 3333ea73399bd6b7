"""Evaluation metrics (against an oracle controller), the report, and the trc.evaluate CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import trc

from dynamics.errors import CheckpointError
from trc.data import load_dataset
from trc.evaluate import main
from trc.kinds.continuous import evaluate_checkpoint
from trc.evaluation import REPORT_KEYS, evaluate_model, split_data
from trc.experiment import experiment_from_dict
from trc.generators import make_solver
from trc.generators.pipeline import generate
from trc.models import TinyRecursiveControl, TRCConfig, TRCOutput
from trc.report import summary_text, write_report

PROBLEM = {
    "name": "di_eval",
    "plant": {"name": "double_integrator", "u_min": -10, "u_max": 10},
    "dt": 0.33,
    "horizon": 10,
    "Q": [10, 5],
    "R": [0.1],
    "Qf_scale": 20,
    "initial_state": {"low": [-1, -1], "high": [1, 1]},
    "target_state": {"low": [-1, -1], "high": [1, 1]},
    "tolerance": 0.1,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "di_eval.h5"
    generator = {"solver": "lqr", "num_samples": 200, "out": str(path)}
    exp = experiment_from_dict({"problem": PROBLEM, "generator": generator})
    generate(exp.problem, exp.generator, workers=1, progress=False)
    return load_dataset(path)


class Oracle(nn.Module):
    """A 'model' whose controls are the LQR solver's, times ``scale``, for every cycle."""

    def __init__(self, problem, scale=1.0, cycles=2):
        super().__init__()
        self.solver = make_solver("lqr", problem)
        self.scale, self.cycles = scale, cycles
        self.weight = nn.Parameter(torch.zeros(3))  # 3 "parameters"

    def forward(self, current_state, target_state, plant=None, return_all_iterations=False):
        sol = self.solver.solve(current_state.double().numpy(), target_state.double().numpy())
        u = torch.as_tensor(sol.controls * self.scale, dtype=torch.float32)
        if not return_all_iterations:
            return u
        B = u.shape[0]
        # cycle 0 twice as far from the optimum as the final controls, then the optimum
        all_u = torch.stack([u * (1 + 0.2 * (self.cycles - k)) for k in range(self.cycles + 1)])
        return TRCOutput(u, all_u, None, None, None, torch.full((B,), self.cycles))


def test_oracle_controller_has_no_gap_and_full_success(data):
    split = split_data(data, "test")
    ev = evaluate_model(Oracle(data.problem), data.problem, split, latency_repeats=3, throughput_batch=16,
                        throughput_repeats=1, plot_samples=3)
    m = ev.metrics
    assert m["success_rate"] == 1.0 == m["optimal_success_rate"]
    # float32 controls of the oracle against the float64 optimum: a gap of float32 round-off only
    assert abs(m["cost_gap_median"]) < 1e-5 and abs(m["cost_gap_p95"]) < 1e-5
    assert m["constraint_violation_rate"] == 0.0
    assert m["num_parameters"] == 3 and m["num_samples"] == len(split)
    assert len(m["gap_per_cycle"]) == 3 and m["gap_per_cycle"][0] > m["gap_per_cycle"][1] > abs(m["gap_per_cycle"][2])
    assert m["latency_ms_batch1"] > 0 and m["throughput_per_s_batch1024"] > 0
    # the solver's own time per problem, from the data set
    assert m["solver_ms_per_problem"] == pytest.approx(1000 * float(split.solve_time.mean()))
    assert m["speedup_vs_solver"] == pytest.approx(m["solver_ms_per_problem"] / m["latency_ms_batch1"])
    assert ev.samples["trc_states"].shape == (3, 11, 2)


def test_metrics_match_an_independent_simulation(data):
    """Scaled optimal controls: success, terminal error and gap recomputed with NumPy."""
    problem = data.problem
    split = split_data(data, "test")
    scale = 1.3
    m = evaluate_model(Oracle(problem, scale=scale), problem, split, timing=False, plot_samples=0).metrics
    dt = problem.dt
    A, Bd = np.array([[1, dt], [0, 1]]), np.array([dt**2 / 2, dt])
    Q, R, Qf = problem.weights
    u_all = np.float32(split.controls.numpy() * scale).astype(float)
    errs, gaps = [], []
    for b in range(len(split)):
        x, xt, J = split.initial_states[b].numpy(), split.target_states[b].numpy(), 0.0
        for k in range(problem.horizon):
            e = x - xt
            J += dt * (e @ Q @ e + u_all[b, k] @ R @ u_all[b, k])
            x = A @ x + Bd * u_all[b, k, 0]
        J += (x - xt) @ Qf @ (x - xt)
        J_opt = float(problem.cost_of(split.states[b:b + 1], split.controls[b:b + 1], split.target_states[b:b + 1]))
        errs.append(np.linalg.norm(x - xt))
        gaps.append(J / J_opt - 1)
    errs, gaps = np.array(errs), np.array(gaps)
    assert m["terminal_error_mean"] == pytest.approx(errs.mean(), rel=1e-6)
    assert m["success_rate"] == pytest.approx(np.mean(errs < problem.tolerance))
    assert m["cost_gap_median"] == pytest.approx(np.median(gaps), rel=1e-6)
    assert m["cost_gap_p95"] == pytest.approx(np.quantile(gaps, 0.95), rel=1e-6)
    assert 0 < m["success_rate"] < 1  # the 30 % control error misses some targets


def test_constraint_violations_are_counted(data):
    m = evaluate_model(Oracle(data.problem, scale=50.0), data.problem, split_data(data, "test"), timing=False,
                       plot_samples=0).metrics
    u = split_data(data, "test").controls * 50.0
    expected = float(((u.abs() > 10).flatten(1).any(1)).double().mean())
    assert expected > 0.5
    assert m["constraint_violation_rate"] == pytest.approx(expected)


def test_report_files(data, tmp_path):
    problem = data.problem
    ev = evaluate_model(Oracle(problem), problem, split_data(data, "test"), latency_repeats=2, throughput_batch=8,
                        throughput_repeats=1, plot_samples=2)
    history = [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3, "val_cost_gap_median": 0.1 / e,
                "val_cost_gap_p95": 0.2 / e, "val_success_rate": 0.9} for e in range(1, 4)]
    files = write_report(tmp_path, ev.metrics, problem=problem, samples=ev.samples, history=history)
    for name in ("report.json", "report.md", "trajectories", "gap_per_cycle", "loss_curves"):
        assert files[name].is_file() and files[name].stat().st_size > 0
    assert files["trajectories"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(files["report.json"].read_text())
    assert set(REPORT_KEYS) <= set(report)
    md = files["report.md"].read_text()
    assert "success rate" in md and "figures/trajectories.png" in md
    assert "success rate" in summary_text(ev.metrics)


# ----------------------------------------------------------------------------- the CLI
FAST_EVAL = {"latency_repeats": 3, "throughput_batch": 32, "throughput_repeats": 1}


def _model_file(path, problem_dict, data_path=None):
    from trc.problem import Problem

    torch.manual_seed(0)
    problem = Problem.from_dict(problem_dict)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=16, hidden_dim=32, H_cycles=2, L_cycles=1))
    trc.save(model, path, metadata={"config": {"evaluation": FAST_EVAL},
                                    **({} if data_path is None else {"dataset": str(data_path)})})
    return path


def test_evaluate_cli_writes_report_with_all_keys(data, tmp_path, capsys):
    ckpt = _model_file(tmp_path / "model.pt", PROBLEM, data.path)
    out = tmp_path / "eval"
    assert main(["--checkpoint", str(ckpt), "--out", str(out), "--latency-repeats", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["split"] == "test" and report["num_samples"] == len(data.test)
    assert (out / "report.md").is_file() and (out / "figures" / "trajectories.png").is_file()
    assert "success rate" in capsys.readouterr().out
    # the default report folder is next to the checkpoint
    assert main(["--checkpoint", str(ckpt), "--data", str(data.path), "--split", "val", "--latency-repeats", "2"]) == 0
    assert json.loads((tmp_path / "evaluation" / "report.json").read_text())["split"] == "val"


@pytest.mark.parametrize(
    "change, match",
    [
        ({"horizon": 12}, "horizon: model 12 vs data 10"),
        ({"dt": 0.2}, "dt: model 0.2 vs data 0.33"),
        (
            {"plant": {"name": "van_der_pol"}, "Q": [1, 1], "R": [1]},
            "plant: model 'van_der_pol' vs data 'double_integrator'",
        ),
    ],
)
def test_evaluate_refuses_a_model_for_another_problem(data, tmp_path, capsys, change, match):
    ckpt = _model_file(tmp_path / "other.pt", {**PROBLEM, **change})
    with pytest.raises(CheckpointError, match=match):
        evaluate_checkpoint(trc.load(ckpt), ckpt, data=data.path, out=tmp_path / "x")
    assert main(["--checkpoint", str(ckpt), "--data", str(data.path), "--out", str(tmp_path / "x")]) == 1
    assert "does not match data set" in capsys.readouterr().err


def test_evaluate_cli_reports_unreadable_checkpoints(data, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["--checkpoint", str(bad), "--data", str(data.path)]) == 1
    assert "cannot be read" in capsys.readouterr().err
    no_data = _model_file(tmp_path / "nodata.pt", PROBLEM)
    assert main(["--checkpoint", str(no_data)]) == 2
    assert "pass --data" in capsys.readouterr().err


def test_call_times_take_repeats_calls_and_the_time_window(monkeypatch):
    """``call_times``: warm-up calls untimed, then ``repeats`` calls at least, and more until
    ``seconds`` have passed; each time is one call's, in ms (a fake clock: each call takes 2 ms)."""
    import trc.evaluation as evaluation

    clock = {"t": 0.0, "calls": 0}

    def fn():
        clock["t"] += 0.002
        clock["calls"] += 1

    monkeypatch.setattr(evaluation.time, "perf_counter", lambda: clock["t"])
    times = evaluation.call_times(fn, repeats=3, warmup=2)
    assert clock["calls"] == 5 and times.shape == (3,)
    np.testing.assert_allclose(times, 2.0)
    clock["calls"] = 0
    times = evaluation.call_times(fn, repeats=3, warmup=0, seconds=0.099)
    assert times.shape == (50,) and clock["calls"] == 50  # 0.1 s of 2 ms calls, the last ending after 0.099 s
    assert evaluation.measure_latency(fn, repeats=4, warmup=1) == pytest.approx(2.0)


def test_a_plan_that_reaches_the_target_through_a_forbidden_state_is_not_a_success():
    """Open-loop reports apply the rule of the closed-loop harness: a violated state constraint
    (the rocket's glide slope, a state box) is a failure even when x_N is on the target."""
    from trc import Problem
    from trc.evaluation import rollout_metrics

    problem = Problem(task="double_integrator", plant={"x_min": [-5.0, -0.5], "x_max": [5.0, 0.5]})
    solution = make_solver("qp", Problem(task="double_integrator")).solve(np.array([[0.0, 0.0], [0.0, 0.0]]),
                                                                          np.array([[3.0, 0.0], [0.2, 0.0]]))
    plant = problem.make_plant(torch.float64)
    r = rollout_metrics(problem, plant, torch.zeros(2, 2, dtype=torch.float64),
                        torch.tensor([[3.0, 0.0], [0.2, 0.0]], dtype=torch.float64),
                        torch.as_tensor(solution.controls), torch.as_tensor(solution.costs))
    assert (r["terminal_error"] < problem.tolerance).all()
    fast = (r["states"][..., 1].abs() > 0.5).any(1)
    assert fast.tolist() == [True, False]  # the long move needs more than 0.5 m/s
    assert r["violation"].tolist() == [True, False] and r["success"].tolist() == [False, True]
