"""Train and evaluate TRC on every standard problem and compare with the goals.

Usage (from the repository root)::

    python benchmarks/suite.py                         # all problems, full configurations
    python benchmarks/suite.py --problems double_integrator van_der_pol
    python benchmarks/suite.py --nproc 2               # each training under torchrun, 2 processes
    python benchmarks/suite.py --quick                 # tiny data and 2 epochs: checks the plumbing only

Each problem runs ``python -m trc.train --config configs/<problem>.yaml`` in its own process
(generating the data set first if it is missing), in ``<out>/<problem>/``; the suite then reads
that run's ``report.json``. It prints one table (success rate, median cost gap, training time,
batch-1 latency, each next to its goal) and writes it to ``<out>/suite.md`` together with
``<out>/suite.json``. Training time is the training loop's wall time (``train_seconds`` of the
report: data generation and the final evaluation excluded).

Goals (success rate, median cost gap ``J_TRC / J_opt - 1`` -- fuel for the rocket --, training
time on 2 CPU cores), and batch-1 inference at most 1 ms everywhere:

=================  =========  ========  ========
problem            success    gap       training
=================  =========  ========  ========
double_integrator  >= 99.5 %  <= 1 %    <= 5 min
van_der_pol        >= 95 %    <= 3 %    <= 30 min
pendulum           >= 95 %    <= 5 %    <= 30 min
cartpole           >= 95 %    <= 5 %    <= 30 min
rocket             >= 95 %    <= 3 %    <= 30 min
=================  =========  ========  ========
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trc.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Goal:
    """Targets of one problem: minimum success rate, maximum median gap and training minutes."""

    success: float
    gap: float
    minutes: float
    latency_ms: float = 1.0


#: The goals of the project, per standard problem.
GOALS = {
    "double_integrator": Goal(0.995, 0.01, 5),
    "van_der_pol": Goal(0.95, 0.03, 30),
    "pendulum": Goal(0.95, 0.05, 30),
    "cartpole": Goal(0.95, 0.05, 30),
    "rocket": Goal(0.95, 0.03, 30),
}

#: Settings of ``--quick``: a few hundred samples, a small model, two epochs.
QUICK = {
    "generator": {"num_samples": 96},
    "model": {"latent_dim": 16, "hidden_dim": 32, "H_cycles": 2, "L_cycles": 1},
    "training": {"epochs": 2, "batch_size": 32, "max_minutes": None, "early_stopping_patience": None},
    "evaluation": {"latency_repeats": 5, "throughput_repeats": 1, "throughput_batch": 64, "plot_samples": 2},
}


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run_problem(name: str, out: Path, *, nproc: int = 1, quick: bool = False, seed: int | None = None,
                python: str = sys.executable, log=sys.stderr) -> dict:
    """Train and evaluate one standard problem in a subprocess; return its report (plus ``wall_seconds``).

    Raises
    ------
    RuntimeError
        If the training process fails (its last output lines are in the message).
    """
    from trc.config import dump_yaml, load_yaml

    config = ROOT / "configs" / f"{name}.yaml"
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        data = _merge(load_yaml(config), QUICK)
        data["generator"]["out"] = str(out / "data" / f"{name}.h5")
        data["generator"]["chunk_size"] = min(int(data["generator"].get("chunk_size", 96)), 96)
        config = run_dir / "quick.yaml"
        dump_yaml(data, config)
    args = ["-m", "trc.train", "--config", str(config), "--out", str(run_dir), "--overwrite", "--quiet"]
    if seed is not None:
        args += ["--seed", str(seed)]
    if nproc > 1:
        cmd = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [python, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if nproc > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    print(f"[suite] {name}: {' '.join(cmd)}", file=log, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    atomic_write_text(run_dir / "suite.log", proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"training {name} failed with exit status {proc.returncode}:\n{tail}")
    report = json.loads((run_dir / "report.json").read_text())
    report["wall_seconds"] = wall
    return report


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def table(results: dict[str, dict | str]) -> str:
    """The markdown table of the results next to the goals (a string entry is an error)."""
    lines = [
        "| problem | success (goal) | median gap (goal) | training (goal) | latency batch 1 (goal) "
        "| p95 gap | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        g = GOALS.get(name)
        if isinstance(r, str):
            lines.append(f"| {name} | failed: {r.splitlines()[0][:80]} | | | | | |")
            continue
        s, gap, minutes, lat = r["success_rate"], r["cost_gap_median"], r["train_seconds"] / 60, r["latency_ms_batch1"]
        ok = (s >= g.success, gap <= g.gap, minutes <= g.minutes, lat <= g.latency_ms) if g else (None,) * 4
        gap_label = "fuel gap" if name == "rocket" else "gap"
        lines.append(
            f"| {name} | {100 * s:.2f} %{_mark(ok[0])} (≥ {100 * g.success:g} %) "
            f"| {100 * gap:.3f} %{_mark(ok[1])} ({gap_label} ≤ {100 * g.gap:g} %) "
            f"| {minutes:.1f} min{_mark(ok[2])} (≤ {g.minutes:g} min) "
            f"| {lat:.3f} ms{_mark(ok[3])} (≤ {g.latency_ms:g} ms) "
            f"| {100 * r['cost_gap_p95']:.2f} % | {r['num_parameters']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", nargs="+", default=list(GOALS), choices=list(GOALS), metavar="NAME",
                   help=f"problems to run (default: all of {list(GOALS)})")
    p.add_argument("--out", default="runs/suite", help="folder of the runs and of suite.md / suite.json")
    p.add_argument("--nproc", type=int, default=1, help="processes per training (torchrun, DDP)")
    p.add_argument("--seed", type=int, help="override training.seed")
    p.add_argument("--quick", action="store_true", help="tiny data and models, 2 epochs: checks the plumbing only")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict | str] = {}
    for name in args.problems:
        try:
            results[name] = run_problem(name, out, nproc=args.nproc, quick=args.quick, seed=args.seed)
        except (RuntimeError, OSError, ValueError) as exc:
            results[name] = str(exc)
            print(f"[suite] {name}: {exc}", file=sys.stderr)
        # rewrite after every problem, so a long suite leaves partial results behind
        md = table(results)
        header = "# TRC benchmark suite" + (" (quick plumbing check: NOT representative)" if args.quick else "")
        note = (f"\n\nnproc per training: {args.nproc}; machine: {os.cpu_count()} CPU(s); "
                f"run folder: `{out}`; date: {time.strftime('%Y-%m-%d %H:%M')}\n")
        atomic_write_text(out / "suite.md", f"{header}\n\n{md}{note}")
        atomic_write_text(out / "suite.json", json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\nwritten: {out / 'suite.md'}, {out / 'suite.json'}")
    return 0 if all(isinstance(r, dict) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
