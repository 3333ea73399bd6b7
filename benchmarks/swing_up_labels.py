"""Benchmark: optimal swing-up labels from any initial angle, default SQP against multi-start.

The problem is the project's pendulum task (:mod:`dynamics.tasks`: target ``theta* = pi`` at
rest, ``Q = diag(10, 1)``, ``R = 0.1``, ``Qf = 20 Q``, tolerance 0.2 on ``||x_N - x*||_2``)
with a harder instance set: ``theta0 ~ U[-pi, pi]``, ``omega0 ~ U[-1, 1]`` rad/s, ``|u| <= 2``
N m, ``g = 10`` m/s^2, ``dt = 0.05`` s, ``N = 100``. On the same seeded instances, in one run:

1. the default ``"nonlinear"`` solver (Gauss-Newton SQP from the straight line);
2. the same solver with ``initial_guess="multistart"`` (``--starts`` starts: the straight line and
   energy-pumping guesses, :mod:`trc.generators.guesses`);
3. the independent reference :class:`trc.generators.ipopt.IpoptReference` (CasADi + IPOPT,
   exact Hessian) from the straight line, one instance at a time.

An instance is *solved* when the solver converged, every check of
:func:`trc.generators.checks.check_solution` passed (re-simulation, bounds, finiteness) and the
re-simulated final state is within the problem's tolerance of the target. For IPOPT the same
checks are applied to its controls and states. Goals: multi-start solves at least 99 %, at no
more than 5x the default solver's time per instance, and where multi-start and IPOPT both
solved an instance, the multi-start cost is not above IPOPT's by more than ``1e-6`` relative.

Usage::

    python benchmarks/swing_up_labels.py --out benchmarks/results/<date>-<commit>-swing-up-labels.md
    python benchmarks/swing_up_labels.py --instances 20          # quick check

The markdown is printed and, with ``--out``, written atomically (an existing file is replaced
only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trc.generators.checks import check_solution
from trc.generators.guesses import MAX_STARTS
from trc.generators.ipopt import IpoptReference
from trc.generators.nonlinear import DEFAULT_STARTS, NonlinearSolver
from trc.io import atomic_write_text
from trc.problem import Problem
from trc.version import source_commit

ROOT = Path(__file__).resolve().parent.parent

GOAL_SOLVED = 0.99  #: fraction of instances multi-start must solve
GOAL_TIME_RATIO = 5.0  #: largest multi-start time per instance over the default solver's
GOAL_COST_RTOL = 1e-6  #: largest relative excess of the multi-start cost over IPOPT's


def swing_up_problem() -> Problem:
    """The pendulum task from any angle: ``theta0 ~ U[-pi, pi]``, ``|omega0| <= 1``, ``|u| <= 2``, ``N = 100``."""
    return Problem(task="pendulum", name="pendulum_any_angle", plant={"u_max": 2.0, "g": 10.0}, horizon=100,
                   initial_state={"low": [-math.pi, -1.0], "high": [math.pi, 1.0]})


def solved_mask(success, final_states, target, tolerance: float) -> np.ndarray:
    """Solved instances: ``success`` and ``||x_N - x*||_2 <= tolerance``; ``(B,)`` bool.

    Parameters
    ----------
    success : array_like of bool, shape ``(B,)``
    final_states, target : array_like, shape ``(B, n)``
        Re-simulated final states and targets.
    tolerance : float
    """
    err = np.linalg.norm(np.asarray(final_states, float) - np.asarray(target, float), axis=1)
    return np.asarray(success, dtype=bool) & np.isfinite(err) & (err <= tolerance)


def cost_excess(J, J_ref, both) -> tuple[int, float]:
    """Instances (of ``both``) where ``J`` exceeds ``J_ref`` by more than ``GOAL_COST_RTOL``
    relative, and the largest relative excess ``(J - J_ref) / |J_ref|`` over ``both`` (NaN if none)."""
    J, J_ref, both = np.asarray(J, float), np.asarray(J_ref, float), np.asarray(both, dtype=bool)
    if not both.any():
        return 0, math.nan
    rel = (J[both] - J_ref[both]) / np.abs(J_ref[both])
    return int((rel > GOAL_COST_RTOL).sum()), float(rel.max())


def run_ipopt(problem, x0, target) -> dict:
    """IPOPT from the straight line on every instance; its costs, solved mask and seconds per instance."""
    ref = IpoptReference(problem)
    B, N = x0.shape[0], problem.horizon
    X = np.zeros((B, N + 1, x0.shape[1])); U = np.zeros((B, N, 1))
    J = np.full(B, np.nan); ok = np.zeros(B, dtype=bool); status = np.empty(B, dtype=object)
    t0 = time.perf_counter()
    for i in range(B):  # the reference solves one instance per call
        r = ref.solve(x0[i], target[i])
        X[i], U[i], J[i], ok[i], status[i] = r.states, r.controls, r.cost, r.success, r.status
    seconds = (time.perf_counter() - t0) / B
    report = check_solution(problem, x0, target, U, states=X, solver_status=status, solver_success=ok)
    converged_at_target = solved_mask(ok, X[:, -1], target, problem.tolerance)
    return {"J": J, "solved": solved_mask(report.success, report.states[:, -1], target, problem.tolerance),
            "converged_at_target": converged_at_target, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the instances (default 0)")
    parser.add_argument("--instances", type=int, default=200, help="number of instances (default 200)")
    parser.add_argument("--starts", type=int, default=DEFAULT_STARTS,
                        help=f"multi-start starts, 1..{MAX_STARTS} (default {DEFAULT_STARTS})")
    parser.add_argument("--out", type=Path, help="markdown file to write (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error(f"--instances must be positive, got {args.instances}")
    if not 1 <= args.starts <= MAX_STARTS:
        parser.error(f"--starts must be in [1, {MAX_STARTS}], got {args.starts}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.out is not None:
        if args.out.is_dir() or not args.out.parent.is_dir():
            parser.error(f"--out must be a file in an existing folder, got {args.out}")
        if args.out.exists() and not args.overwrite:
            parser.error(f"--out {args.out} exists; pass --overwrite to replace it")
    torch.set_num_threads(1)

    problem = swing_up_problem()
    x0, target = problem.sample(args.instances, args.seed)
    tol = problem.tolerance

    def timed(solver):
        t0, c0 = time.perf_counter(), time.process_time()
        sol = solver.solve(x0, target)
        return sol, (time.perf_counter() - t0) / args.instances, (time.process_time() - c0) / args.instances

    default, t_default, c_default = timed(NonlinearSolver(problem))
    print(f"default SQP: {t_default:.3f} s/instance", file=sys.stderr, flush=True)
    multi_solver = NonlinearSolver(problem, initial_guess="multistart", starts=args.starts)
    multi, t_multi, c_multi = timed(multi_solver)
    print(f"multi-start SQP: {t_multi:.3f} s/instance", file=sys.stderr, flush=True)
    ipopt = run_ipopt(problem, x0, target)
    print(f"IPOPT: {ipopt['seconds']:.3f} s/instance", file=sys.stderr, flush=True)

    s_default = solved_mask(default.success, default.states[:, -1], target, tol)
    s_multi = solved_mask(multi.success, multi.states[:, -1], target, tol)
    diag = multi_solver.diagnostics
    beats = diag["beats_first"]
    both = s_multi & ipopt["solved"]
    n_excess, worst = cost_excess(multi.costs, ipopt["J"], both)
    both_conv = s_multi & ipopt["converged_at_target"]
    n_excess_conv, worst_conv = cost_excess(multi.costs, ipopt["J"], both_conv)
    both_default = s_multi & s_default
    n_worse_default, _ = cost_excess(multi.costs, default.costs, both_default)
    ratio, ratio_wall = c_multi / c_default, t_multi / t_default
    wins = np.bincount(diag["start"][s_multi], minlength=len(diag["start_names"]))

    def verdict(ok):
        return "met" if ok else "NOT MET"

    out = io.StringIO()
    p = lambda *a: print(*a, file=out)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    B = args.instances
    p("# Swing-up labels from any initial angle: default SQP, multi-start SQP, IPOPT\n")
    p(f"Command: `python benchmarks/swing_up_labels.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    p(f"Date: {now}; commit {source_commit(ROOT)}; torch {torch.__version__}, "
      f"Python {platform.python_version()}, 1 torch thread; {os.cpu_count()} CPU cores shared with other jobs, load "
      f"average at the end {os.getloadavg()[0]:.1f}.\n")
    p(f"Problem: pendulum task with theta0 ~ U[-pi, pi], omega0 ~ U[-1, 1] rad/s, |u| <= 2 N m, g = 10 m/s^2, "
      f"dt = {problem.dt} s, N = {problem.horizon}, target (pi, 0), tolerance {tol}; {B} instances, seed {args.seed}. "
      "Solved: converged, every check of `check_solution` passed (re-simulation, bounds) and ||x_N - x*|| <= "
      "tolerance.\n")
    p("Times per instance: CPU seconds of this process (`time.process_time`, one thread; the goal is judged on "
      "these, as other jobs on the shared cores stretch wall-clock times unevenly) and wall-clock seconds.\n")
    p("| solver | solved | CPU s / instance | ratio to default | wall s / instance | ratio to default |")
    p("|---|---:|---:|---:|---:|---:|")
    p(f"| default SQP (straight line) | {s_default.mean():.1%} ({s_default.sum()}/{B}) | {c_default:.3f} | 1.00 | "
      f"{t_default:.3f} | 1.00 |")
    p(f"| multi-start SQP ({args.starts} starts) | {s_multi.mean():.1%} ({s_multi.sum()}/{B}) | {c_multi:.3f} | "
      f"{ratio:.2f} | {t_multi:.3f} | {ratio_wall:.2f} |")
    p(f"| IPOPT from the straight line (checks applied) | {ipopt['solved'].mean():.1%} ({ipopt['solved'].sum()}/{B}) | "
      f"| | {ipopt['seconds']:.3f} | {ipopt['seconds'] / t_default:.2f} |")
    p(f"| IPOPT converged and at the target (no re-simulation check) | {ipopt['converged_at_target'].mean():.1%} "
      f"({ipopt['converged_at_target'].sum()}/{B}) | | | | |\n")
    p("Multi-start details:\n")
    p(f"- the best start beats the first (straight-line) start on {beats.mean():.1%} of the instances "
      f"({beats.sum()}/{B}: the first failed or cost more than 1e-8 relative more);")
    p("- winning start of the solved instances: " + ", ".join(f"{n} {c}" for n, c in zip(diag["start_names"], wins))
      + ";")
    p(f"- instances that needed the rescue iterations: {int(diag['rescued'].sum())}; of those solved: "
      f"{int((diag['rescued'] & s_multi).sum())};")
    p(f"- where both solved, multi-start cost above the default solver's by more than 1e-6 relative: "
      f"{n_worse_default} of {both_default.sum()};")
    p(f"- where multi-start solved and IPOPT converged at the target (no check): cost above IPOPT's by more than "
      f"1e-6 relative on {n_excess_conv} of {both_conv.sum()} (largest relative difference {worst_conv:.2e}).\n")
    p("| goal | measured | verdict |")
    p("|---|---|---|")
    p(f"| multi-start solves >= {GOAL_SOLVED:.0%} | {s_multi.mean():.1%} | {verdict(s_multi.mean() >= GOAL_SOLVED)} |")
    p(f"| multi-start time <= {GOAL_TIME_RATIO:g}x default per instance (CPU) | {ratio:.2f}x (wall-clock "
      f"{ratio_wall:.2f}x) | {verdict(ratio <= GOAL_TIME_RATIO)} |")
    p(f"| multi-start cost <= IPOPT cost (1 + 1e-6) where both solved | {n_excess} of {both.sum()} above "
      f"(largest relative difference {worst:.2e}) | {verdict(n_excess == 0)} |")
    failed = np.flatnonzero(~s_multi)
    if failed.size:
        p("\nInstances multi-start did not solve (x0, status):\n")
        for i in failed:
            p(f"- ({x0[i, 0]:.4f}, {x0[i, 1]:.4f}): {multi.status[i]}")
    text = out.getvalue()
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
