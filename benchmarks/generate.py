"""Benchmark: trajectory generation speed of TRC's solvers next to CasADi/IPOPT, same problems.

For every standard problem (``configs/*.yaml``) the same seeded instances are solved by

* the problem's TRC solver (``lqr``, ``qp``, ``nonlinear``, ``rocket``), in this process with
  one thread, in batches of the configuration's ``chunk_size`` (what one generation worker
  does), and
* the independent CasADi/IPOPT multiple-shooting reference of ``trc/generators/ipopt.py``
  (exact Hessians, ``tol`` = ``--ipopt-tol``), one instance at a time,

and the table prints trajectories per second of each, their success counts and the relative
cost difference ``(J_trc - J_ipopt) / |J_ipopt|`` on the instances both solved (negative: TRC
found a lower cost). Rows:

* ``lqr``: the double integrator of ``configs/double_integrator.yaml`` without control bounds
  (the problem LQR solves exactly), ``--lqr-samples`` trajectories (default 100 000), plus the
  end-to-end ``python -m trc.generate`` pipeline (all cores, HDF5 written) on the same count.
  Goal: 100 000 trajectories in under 10 s.
* ``qp``: the standard double integrator (``|u| <= 4``).
* ``nonlinear``: Van der Pol, pendulum swing-up, cart-pole swing-up.
  Goal: no slower than IPOPT at equal optimality (cost difference ~ 0).
* ``rocket``: fuel-optimal landing (no IPOPT model of the rocket: reference column n/a).

Usage::

    python benchmarks/generate.py                                  # full run
    python benchmarks/generate.py --samples 20 --ipopt-samples 5 --lqr-samples 2000 --no-end-to-end  # quick check
    python benchmarks/generate.py --problems van_der_pol,cartpole

Run it on an otherwise idle machine: timings are wall-clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trc.experiment import load_experiment
from trc.generators.ipopt import IpoptReference
from trc.generators.pipeline import generate, sample_instances, solve_batch

ROOT = Path(__file__).resolve().parent.parent

PROBLEMS = ("double_integrator", "van_der_pol", "pendulum", "cartpole", "rocket")
LQR_GOAL_SECONDS = 10.0
LQR_GOAL_COUNT = 100_000


@dataclasses.dataclass
class Row:
    problem: str
    solver: str
    count: int
    seconds: float
    successes: int
    ref_count: int = 0
    ref_seconds: float = math.nan
    ref_successes: int = 0
    cost_gap: tuple = (math.nan, math.nan)  # (median, max |.|) of the relative cost difference
    goal: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else math.nan

    @property
    def ref_rate(self) -> float:
        return self.ref_count / self.ref_seconds if self.ref_count else math.nan


def time_trc(problem, solver, x0, target, chunk: int):
    """Solve in chunks like one generation worker; return (seconds, result arrays)."""
    parts = []
    start = time.perf_counter()
    for i in range(0, len(x0), chunk):
        parts.append(solve_batch(solver, problem, x0[i:i + chunk], target[i:i + chunk]))
    seconds = time.perf_counter() - start
    return seconds, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def time_ipopt(problem, x0, target, tol: float):
    """Solve with the CasADi/IPOPT reference; return (seconds of the solves, costs, success)."""
    ref = IpoptReference(problem, tol=tol)
    results = [ref.solve(a, b) for a, b in zip(x0, target)]
    seconds = sum(r.solve_time for r in results)
    return seconds, np.array([r.cost for r in results]), np.array([r.success for r in results])


def cost_gap(ours, ok, ref_costs, ref_ok) -> tuple:
    both = ok[: len(ref_costs)] & ref_ok
    if not both.any():
        return (math.nan, math.nan)
    rel = (ours[: len(ref_costs)][both] - ref_costs[both]) / np.maximum(np.abs(ref_costs[both]), 1e-12)
    return (float(np.median(rel)), float(np.max(np.abs(rel))))


def bench_problem(name: str, args) -> list[Row]:
    exp = load_experiment(ROOT / "configs" / f"{name}.yaml")
    problem, config = exp.problem, exp.generator
    rows = []
    if name == "double_integrator":  # LQR on the unbounded problem, then the standard QP
        plant = {k: v for k, v in problem.plant.items() if k not in ("u_min", "u_max")}
        free = dataclasses.replace(problem, plant=plant, name="double_integrator_unbounded")
        lqr_config = dataclasses.replace(config, solver="lqr", options={}, chunk_size=args.lqr_chunk)
        rows.append(bench_solver(free, lqr_config, args.lqr_samples, args, "lqr"))
        if args.end_to_end:
            rows.append(bench_pipeline(free, lqr_config, args.lqr_samples, args))
    if problem.cost == "fuel":
        rows.append(bench_solver(problem, config, args.samples, args, None))
    else:
        rows.append(bench_solver(problem, config, args.samples, args, "ipopt"))
    return rows


def bench_solver(problem, config, count: int, args, reference) -> Row:
    solver = config.make_solver(problem)
    x0, target = sample_instances(problem, args.seed, 0, count)
    seconds, out = time_trc(problem, solver, x0, target, config.chunk_size)
    row = Row(problem.name, config.solver, count, seconds, int(out["success"].sum()))
    if config.solver == "lqr":
        row.goal = f"goal: {LQR_GOAL_COUNT} in < {LQR_GOAL_SECONDS:.0f} s ({LQR_GOAL_COUNT / LQR_GOAL_SECONDS:.0f}/s)"
    if reference is not None and args.ipopt_samples > 0:
        k = min(args.ipopt_samples, count)
        ref_seconds, ref_costs, ref_ok = time_ipopt(problem, x0[:k], target[:k], args.ipopt_tol)
        row.ref_count, row.ref_seconds, row.ref_successes = k, ref_seconds, int(ref_ok.sum())
        row.cost_gap = cost_gap(out["costs"], out["success"], ref_costs, ref_ok)
        if config.solver == "nonlinear":
            row.goal = "goal: >= IPOPT rate, cost gap ~ 0"
    return row


def bench_pipeline(problem, config, count: int, args) -> Row:
    """End to end: ``generate()`` with all cores, HDF5 written, worker start-up included."""
    config = dataclasses.replace(config, num_samples=count, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = generate(problem, config, out=Path(tmp) / "bench.h5", workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
    row = Row(problem.name, f"lqr pipeline {report.workers}w", count, seconds, report.num_samples)
    row.goal = f"goal: {LQR_GOAL_COUNT} in < {LQR_GOAL_SECONDS:.0f} s, end to end"
    return row


def fmt(x, spec):
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return f"{'n/a':>{width}}" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(rows: list[Row]) -> None:
    header = (f"{'problem':<28} {'solver':<18} {'n':>7} {'TRC traj/s':>11} {'ok':>7} "
              f"{'n ref':>6} {'IPOPT traj/s':>12} {'ok':>5} {'speed-up':>8} {'cost gap med':>12} {'max':>9}  goal")
    print(header)
    print("-" * len(header))
    for r in rows:
        speedup = r.rate / r.ref_rate if r.ref_count else math.nan
        print(f"{r.problem:<28} {r.solver:<18} {r.count:>7d} {fmt(r.rate, '11.1f')} {r.successes:>7d} "
              f"{r.ref_count:>6d} {fmt(r.ref_rate, '12.1f')} {r.ref_successes:>5d} {fmt(speedup, '7.1f') + ('' if math.isnan(speedup) else 'x'):>8} "
              f"{fmt(r.cost_gap[0], '12.2e')} {fmt(r.cost_gap[1], '9.2e')}  {r.goal}")
        if r.solver == "lqr":  # solver only: the rate extrapolates linearly
            projected = LQR_GOAL_COUNT / r.rate if r.rate > 0 else math.nan
            verdict = "meets" if projected < LQR_GOAL_SECONDS else "misses"
            print(f"{'':<28} -> {LQR_GOAL_COUNT} trajectories in {projected:.2f} s ({verdict} the goal of {LQR_GOAL_SECONDS:.0f} s)")
        elif r.solver.startswith("lqr pipeline"):  # start-up costs do not extrapolate: report as measured
            verdict = "" if r.count != LQR_GOAL_COUNT else (
                " (meets the goal)" if r.seconds < LQR_GOAL_SECONDS else " (misses the goal)")
            print(f"{'':<28} -> {r.count} trajectories generated and written in {r.seconds:.2f} s{verdict}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated standard problems")
    parser.add_argument("--samples", type=int, default=200, help="instances per problem for the TRC solver")
    parser.add_argument("--ipopt-samples", type=int, default=50, help="of which solved by IPOPT too (0: skip IPOPT)")
    parser.add_argument("--ipopt-tol", type=float, default=1e-8, help="IPOPT tol")
    parser.add_argument("--lqr-samples", type=int, default=LQR_GOAL_COUNT, help="LQR trajectories")
    parser.add_argument("--lqr-chunk", type=int, default=10_000, help="LQR batch size")
    parser.add_argument("--no-end-to-end", dest="end_to_end", action="store_false",
                        help="skip the end-to-end LQR generation run")
    parser.add_argument("--workers", type=int, default=None, help="workers of the end-to-end run (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a generation worker
    rows = []
    for name in args.problems.split(","):
        rows.extend(bench_problem(name.strip(), args))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
