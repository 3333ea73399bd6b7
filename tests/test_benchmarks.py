"""The benchmark scripts' own arithmetic and bookkeeping (their numbers are in benchmarks/results).

Timings are machine-dependent and not tested; what the scripts compute from them is: rates and
ratios from the measured times (checked with fake clocks and fake timings whose answer is known),
cost gaps and their counts (checked on hand-made solutions and, for the gaps of real solvers, on
problems where both solvers reach the same optimum).
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trc.certified import PlanChecks
from trc.experiment import load_experiment
from trc.generators import Solution
from trc.models import TinyRecursiveControl, TRCConfig
from trc.problem import Problem

ROOT = Path(__file__).resolve().parent.parent
TINY = TRCConfig(latent_dim=8, hidden_dim=16, num_layers=1, H_cycles=1, L_cycles=1, feedback_channels=4)


@pytest.fixture
def bench(monkeypatch):
    """Import a script of benchmarks/ as a module (on sys.path, so that spawned processes import it too)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module


def di_problem() -> Problem:
    return Problem(name="di", plant={"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}, dt=0.1, horizon=5,
                   initial_state={"low": [-1.0, -1.0], "high": [1.0, 1.0]},
                   target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]})


def tiny_model(problem: Problem) -> TinyRecursiveControl:
    torch.manual_seed(0)
    return TinyRecursiveControl.from_problem(problem, TINY).eval()


def solution(costs, success, iterations, solve_time=0.0) -> Solution:
    costs = np.asarray(costs, dtype=float)
    B = len(costs)
    return Solution(states=np.zeros((B, 2, 1)), controls=np.zeros((B, 1, 1)), costs=costs,
                    success=np.asarray(success, dtype=bool), status=np.full(B, "optimal"),
                    iterations=np.asarray(iterations), solve_time=np.full(B, solve_time))


# ----------------------------------------------------------------------------- latency.py
def test_gemm_rate_is_the_flops_of_the_product_over_its_median_time(bench, monkeypatch):
    """With a clock that advances 2 ms per reading, every timed product takes 2 ms: the rate must
    be ``2 rows size^2`` FLOP per 2 ms, in GFLOP/s."""
    latency = bench("latency")

    class Clock:
        now = 0.0

        def perf_counter(self):
            self.now += 2e-3
            return self.now

    monkeypatch.setattr(latency, "time", Clock())
    rate = latency.gemm_rate(rows=64, size=32, seconds=0.05)
    assert rate == pytest.approx(2 * 64 * 32 * 32 / 2e-3 / 1e9, rel=1e-9)
    assert latency.gemm_bound(1.18e6, 96.0, processes=2) == pytest.approx(2 * 96e9 / 1.18e6)
    assert latency.gemm_bound(1.18e6, 96.0) == pytest.approx(96e9 / 1.18e6)


@pytest.mark.parametrize("processes", [1, 2])
def test_exported_times_are_the_call_statistics_per_process(bench, monkeypatch, tmp_path, processes):
    """``exported_times`` turns the calls' times into its columns: ``b1`` the batch-1 latency,
    ``bN`` the median of the large-batch calls over ``processes``, ``bN_fast`` / ``bN_slow`` their
    10th / 90th percentiles over ``processes`` (fake exports and fake timings)."""
    latency = bench("latency")
    problem = di_problem()
    model = tiny_model(problem)
    calls = np.array([30.0, 10.0, 50.0, 20.0, 40.0, 70.0, 60.0])
    seen = {}

    def fake_export(model, path, format, batch):
        seen.setdefault("exports", []).append((Path(path).name, format, batch))

    def fake_load(path):
        return SimpleNamespace(path=path)

    def fake_parallel(path, x0, target, procs, repeats, threads=1, seconds=0.0):
        seen["parallel"] = (x0.shape, procs, seconds)
        return calls

    def fake_call_times(fn, repeats, warmup=5, seconds=0.0):
        seen["serial"] = seconds
        return calls

    monkeypatch.setattr(latency, "export_controller", fake_export)
    monkeypatch.setattr(latency, "load_controller", fake_load)
    monkeypatch.setattr(latency, "parallel_call_times", fake_parallel)
    monkeypatch.setattr(latency, "call_times", fake_call_times)
    monkeypatch.setattr(latency, "measure_latency", lambda fn, repeats: 1.25)
    times = latency.exported_times(model, problem, repeats=5, batch=16, folder=tmp_path, fmt="aoti",
                                   processes=processes, seconds=0.3, name="fast")
    assert times["b1"] == 1.25
    assert times["bN"] == pytest.approx(40.0 / processes)
    assert times["bN_fast"] == pytest.approx(np.percentile(calls, 10) / processes)
    assert times["bN_slow"] == pytest.approx(np.percentile(calls, 90) / processes)
    # AOTInductor: one program for batch 1 and one for the large batch, named after the preset
    assert [(fmt, b) for _, fmt, b in seen["exports"]] == [("aoti", 1), ("aoti", 16)]
    assert all(name.startswith("di_fast_") for name, _, _ in seen["exports"])
    if processes > 1:  # batch plans per process, all processes in one call
        assert seen["parallel"] == ((16 * processes, 2), processes, 0.3)
    else:
        assert seen["serial"] == 0.3


@pytest.mark.slow
def test_exported_times_in_several_processes(bench, tmp_path):
    """``--processes 2`` for real: the large batch runs in a ParallelController, one batch per
    process; the reported times are finite, positive and ordered as percentiles."""
    latency = bench("latency")
    problem = di_problem()
    times = latency.exported_times(tiny_model(problem), problem, repeats=5, batch=16, folder=tmp_path, fmt="onnx",
                                   processes=2, seconds=0.3)
    assert set(times) == {"b1", "bN", "bN_fast", "bN_slow"}
    assert all(np.isfinite(ms) and ms > 0 for ms in times.values())
    assert times["bN_fast"] <= times["bN"] <= times["bN_slow"]  # the 10th and 90th percentiles of the calls
    assert list(tmp_path.glob("*.onnx"))


# ----------------------------------------------------------------------------- certified.py
def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_certified_row_gap_and_counts_from_known_costs(bench):
    """The certified table's row: iterations, time per instance and solved share from the
    solution; the gap ``|J - J_cold| / |J_cold|`` (max and median) and the better / worse counts
    over the instances both solved, which add up with the ties to that number."""
    certified = bench("certified")
    cold = solution([10.0, 20.0, 30.0, 40.0, np.nan], [True, True, True, True, False], [5, 5, 5, 5, 5])
    warm = solution([10.0, 19.99, 30.003, 40.0 + 1e-8, 5.0], [True] * 5, [1, 2, 3, 4, 10])
    row = certified._row("certified", warm, seconds=0.5, count=5, cold=cold)
    cells = _cells(row)
    assert float(cells[1]) == pytest.approx(4.0)  # mean iterations
    assert float(cells[2]) == pytest.approx(3.0)  # median
    assert float(cells[3]) == pytest.approx(1e3 * 0.5 / 5)  # ms per instance
    assert cells[4] == "100%"
    rel = np.array([0.0, -0.01 / 20, 0.003 / 30, 1e-8 / 40])  # the four instances both solved
    gap = re.match(r"([\d.e+-]+) \(median ([\d.e+-]+)\)", cells[5])
    assert float(gap.group(1)) == pytest.approx(np.abs(rel).max(), rel=0.05)
    assert float(gap.group(2)) == pytest.approx(np.median(np.abs(rel)), rel=0.05)
    better, worse = map(int, re.search(r"(\d+) better / (\d+) worse", cells[6]).groups())
    assert (better, worse) == (1, 1)
    ties = int((np.abs(rel) <= 1e-6).sum())
    assert better + worse + ties == 4
    cold_row = _cells(certified._row("cold", cold, seconds=1.0, count=5))
    assert cold_row[4] == "80%"


def test_certified_benchmark_on_a_convex_problem_reports_no_gap(bench):
    """On the QP the certified answer is the cold optimum: the benchmark's own rows must say gap
    ~0 and 0 better / 0 worse, every instance solved, from untrained (poor) plans."""
    certified = bench("certified")
    problem = load_experiment(ROOT / "configs" / "double_integrator.yaml").problem
    model = tiny_model(problem)
    rows = certified.run("double_integrator", model, count=6, seed=3, checks=PlanChecks(max_cost=None))
    table = [r for r in rows if r.startswith("| ") and not r.startswith("| run")]
    labels = ["cold solver", "certified (TRC warm start)", "active set from u = 0 (no TRC)"]
    assert [_cells(r)[0] for r in table] == labels
    for r in table:
        assert _cells(r)[4] == "100%"
    for r in table[1:]:
        cells = _cells(r)
        assert float(cells[5].split()[0]) <= 1e-7
        assert re.search(r"0 better / 0 worse", cells[6])
    assert "100% warm" in _cells(table[1])[6]


# ----------------------------------------------------------------------------- generate.py
def test_generate_cost_gap_rates_and_speed_up(bench, capsys):
    """``cost_gap``: (median, max |.|) of ``(J - J_ref) / |J_ref|`` over the instances both solved;
    the printed speed-up is TRC's rate over IPOPT's, each ``count / seconds``."""
    generate = bench("generate")
    ours = np.array([1.0, 2.2, 3.0, np.nan, 5.0])
    ok = np.array([True, True, True, False, True])
    ref = np.array([1.0, 2.0, 3.3, 4.0])  # only the first four were given to IPOPT
    ref_ok = np.array([True, True, True, True])
    median, worst = generate.cost_gap(ours, ok, ref, ref_ok)
    rel = np.array([0.0, 0.1, -0.3 / 3.3])
    assert median == pytest.approx(np.median(rel)) and worst == pytest.approx(np.abs(rel).max())
    assert all(np.isnan(generate.cost_gap(ours, ~ok, ref, ref_ok)))

    row = generate.Row("van_der_pol", "nonlinear", count=200, seconds=4.0, successes=199, ref_count=50,
                       ref_seconds=10.0, ref_successes=48, cost_gap=(1e-9, 2e-9))
    assert row.rate == pytest.approx(50.0) and row.ref_rate == pytest.approx(5.0)
    lqr = generate.Row("di", "lqr", count=1000, seconds=0.02, successes=1000)
    generate.print_table([row, lqr])
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("van_der_pol"))
    assert re.search(r"\s10\.0x\s", line)
    projected = re.search(r"-> 100000 trajectories in ([\d.]+) s", out)
    assert float(projected.group(1)) == pytest.approx(100000 / (1000 / 0.02), abs=0.01)


def test_generate_benchmark_gap_between_two_solvers_of_one_problem_is_zero(bench):
    """The SQP generator and IPOPT solve the same Van der Pol problem to the same optimum: the
    benchmark's reported gap is zero to solver tolerance (both ways), and its counts are the
    instances solved."""
    generate = bench("generate")
    exp = load_experiment(ROOT / "configs" / "van_der_pol.yaml")
    args = argparse.Namespace(seed=0, ipopt_samples=2, ipopt_tol=1e-8)
    row = generate.bench_solver(exp.problem, exp.generator, 2, args, "ipopt")
    assert (row.count, row.successes, row.ref_count, row.ref_successes) == (2, 2, 2, 2)
    assert abs(row.cost_gap[0]) <= 1e-6 and row.cost_gap[1] <= 1e-6
    assert row.seconds > 0 and row.ref_seconds > 0


# ----------------------------------------------------------------------------- suite.py
def test_suite_table_marks_each_goal_met_or_missed(bench):
    """A result exactly at a goal meets it, just past it misses it; the numbers are the report's."""
    suite = bench("suite")
    goal = suite.GOALS["double_integrator"]
    report = {"success_rate": goal.success, "cost_gap_median": goal.gap * 1.01, "train_seconds": 60 * goal.minutes,
              "latency_ms_batch1": goal.latency_ms + 0.5, "cost_gap_p95": 0.02, "num_parameters": 12345}
    table = suite.table({"double_integrator": report, "rocket": "training rocket failed with exit status 1:\nboom"})
    lines = table.splitlines()
    cells = _cells(lines[2])
    assert cells[1].startswith(f"{100 * goal.success:.2f} % ✅")
    assert cells[2].startswith(f"{100 * goal.gap * 1.01:.3f} % ❌")
    assert cells[3].startswith(f"{goal.minutes:.1f} min ✅")
    assert cells[4].startswith(f"{goal.latency_ms + 0.5:.3f} ms ❌")
    assert cells[5] == "2.00 %" and cells[6] == "12,345"
    assert _cells(lines[3])[1] == "failed: training rocket failed with exit status 1:"
