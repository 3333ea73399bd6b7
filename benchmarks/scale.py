"""Benchmark: data generation on the Ray backend next to the local backend, and an extrapolation to N nodes.

In one run, on this machine, for the Van der Pol configuration (``configs/van_der_pol.yaml``, the
nonlinear SQP solver) or the cart-pole (``--problem cartpole``), at the configuration's chunk size
(the default, 100 instances):

1. **Throughput** (instances/s) of the chunk tasks of :func:`trc.generators.pipeline.generate` with
   ``local`` 1 worker (this process), ``local`` 2 workers (spawned processes), ``ray`` 1 and 2
   workers (one Ray task per chunk, :class:`trc.backends.TaskPool`). Workers are started and warmed
   up (one chunk each) before the clock starts, so these are steady-state numbers; the rounds are
   interleaved (``--repeats``) and the best of each is kept, because other work on the machine
   only slows a round down. Every configuration's arrays are checked bitwise against ``local`` 1.
2. **End to end**: ``generate()`` with 2 workers on each backend, start-up of the workers (and of
   Ray) and the HDF5 file included.
3. **Ray's per-task overhead**: the round trip of an empty task (submit, run, ``ray.wait``, get),
   one at a time, and the driver's time per task when 1000 empty tasks are in flight.
4. **Overhead of ray against local** at the default chunk size, measured (ratio of the steady-state
   throughputs) and predicted (round trip / chunk time), against the goal of at most 5 %.
5. **Extrapolation** to N nodes of ``--cores-per-node`` cores, from the measured cost per instance
   and overheads; the assumptions are printed with the table.

Usage::

    python benchmarks/scale.py --out benchmarks/results/<date>-scale.md
    python benchmarks/scale.py --num-samples 200 --repeats 1          # quick check

The table is printed as markdown and written to ``--out`` (atomically) if given. Needs Ray
(``pip install "tiny-recursive-control[ray]"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from trc.backends import TaskPool, import_ray, ray_runtime
from trc.experiment import load_experiment
from trc.generators import pipeline
from trc.io import atomic_write_text
from trc.version import source_commit

ROOT = Path(__file__).resolve().parent.parent
PROBLEMS = ("van_der_pol", "cartpole")
GOAL_OVERHEAD = 0.05  # ray against local, at the default chunk size
NODES = (1, 2, 4, 8, 16)
BANDWIDTH = 125e6  # bytes/s between a worker node and the driver (1 Gbit/s), assumed
TARGET = 1_000_000  # trajectories of the "hours for" column


@dataclasses.dataclass
class Config:
    backend: str
    workers: int

    @property
    def label(self) -> str:
        return f"{self.backend}, {self.workers} worker{'s' if self.workers > 1 else ''}"


CONFIGS = (Config("local", 1), Config("local", 2), Config("ray", 1), Config("ray", 2))


def run_tasks(pool: TaskPool, tasks: list[dict]) -> tuple[float, dict]:
    """Seconds to solve ``tasks`` on ``pool`` (submit to last result) and the arrays by chunk."""
    t0 = time.perf_counter()
    index = {pool.submit(task): task["chunk"] for task in tasks}
    results = {index[i]: arrays for i, arrays in pool.as_completed()}
    return time.perf_counter() - t0, results


def same_arrays(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(
        np.array_equal(a[c][k], b[c][k]) for c in a for k in a[c] if k != "solve_time")


def empty_task_overhead() -> dict:
    """Round trip of one empty task at a time, and the driver's time per task with 1000 in flight."""
    pool = TaskPool(abs, backend="ray", workers=1)
    for _ in range(20):  # warm up
        pool.submit(0)
        list(pool.as_completed())
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        pool.submit(0)
        list(pool.as_completed())
    round_trip = (time.perf_counter() - t0) / n
    pool.close()
    pool = TaskPool(abs, backend="ray", workers=None)
    m = 1000
    t0 = time.perf_counter()
    for _ in range(m):
        pool.submit(0)
    list(pool.as_completed())
    per_task = (time.perf_counter() - t0) / m
    pool.close()
    return {"round_trip": round_trip, "per_task_in_flight": per_task}


def ray_daemon_cpu_seconds() -> float:
    """CPU seconds used so far by Ray's own processes on this machine (GCS, raylet, log monitor, dashboard
    agents: every process of the Ray installation that is not a worker, ``ray::...``)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and "site-packages/ray/" in cmd and not cmd.startswith("ray::"):
            times = proc.info["cpu_times"]
            total += times.user + times.system if times else 0.0
    return total


def part_write_seconds(arrays: dict) -> float:
    """Seconds the driver takes to write one chunk's part file (``np.savez``, as the pipeline does)."""
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        for i in range(10):
            with open(Path(folder) / f"{i}.npz", "wb") as fh:
                np.savez(fh, **arrays)
        return (time.perf_counter() - t0) / 10


def end_to_end(problem, gen_config, backend: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        pipeline.generate(problem, gen_config, out=Path(folder) / "data.h5", workers=workers, backend=backend,
                          progress=False)
        return time.perf_counter() - t0


def extrapolate(per_instance: float, chunk: int, round_trip: float, driver_per_chunk: float,
                cores: int) -> list[dict]:
    """Instances/s on N nodes of ``cores`` cores: ``chunk / max((t_chunk + round_trip) / P, driver_per_chunk)``."""
    t_chunk = chunk * per_instance
    rows = []
    for nodes in NODES:
        P = nodes * cores
        rate = chunk / max((t_chunk + round_trip) / P, driver_per_chunk)
        rows.append({"nodes": nodes, "cores": P, "rate": rate, "efficiency": rate * per_instance / P,
                     "hours": TARGET / rate / 3600})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--problem", choices=PROBLEMS, default="van_der_pol")
    parser.add_argument("--num-samples", type=int, default=800, help="instances per measured round (default 800)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the instances (default 0)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds per configuration (best kept)")
    parser.add_argument("--cores-per-node", type=int, default=2, help="cores of a node in the extrapolation")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end generate() runs")
    parser.add_argument("--out", type=Path, help="markdown file to write (atomically)")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.repeats < 1 or args.cores_per_node < 1:
        parser.error("--num-samples, --repeats and --cores-per-node must be positive")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        parser.error(f"--out must be a file in an existing folder, got {args.out}")
    import_ray()
    torch.set_num_threads(1)

    experiment = load_experiment(ROOT / "configs" / f"{args.problem}.yaml")
    problem = experiment.problem
    gen = dataclasses.replace(experiment.generator, seed=args.seed, num_samples=args.num_samples)
    chunk = gen.chunk_size
    n_chunks = math.ceil(args.num_samples / chunk)
    tasks = pipeline.chunk_tasks(problem, gen, range(n_chunks))
    warm = pipeline.chunk_tasks(problem, gen, range(n_chunks, n_chunks + 2))  # other instances, same cost

    times: dict[str, list[float]] = {c.label: [] for c in CONFIGS}
    identical: dict[str, bool] = {}
    with ray_runtime(workers=2):
        pools = {}
        for config in CONFIGS:
            pools[config.label] = pipeline.chunk_pool(config.backend, config.workers)
            run_tasks(pools[config.label], warm[: config.workers])
        reference = None
        daemon_cpu, ray_seconds = 0.0, 0.0
        for _ in range(args.repeats):
            for config in CONFIGS:
                cpu0 = ray_daemon_cpu_seconds()
                seconds, results = run_tasks(pools[config.label], tasks)
                if config.backend == "ray" and config.workers == 2:
                    daemon_cpu += ray_daemon_cpu_seconds() - cpu0
                    ray_seconds += seconds
                times[config.label].append(seconds)
                reference = results if reference is None else reference
                identical[config.label] = identical.get(config.label, True) and same_arrays(reference, results)
                print(f"  {config.label:18s} {seconds:7.2f} s", file=sys.stderr, flush=True)
        for pool in pools.values():
            pool.close()
        overhead = empty_task_overhead()
        write = part_write_seconds(reference[0])
        chunk_bytes = sum(a.nbytes for a in reference[0].values())
    e2e = {}
    if not args.no_end_to_end:
        for backend in ("local", "ray"):
            e2e[backend] = end_to_end(problem, gen, backend, 2)
            print(f"  end to end {backend:5s} {e2e[backend]:7.2f} s", file=sys.stderr, flush=True)

    instances = n_chunks * chunk
    best = {label: min(values) for label, values in times.items()}
    rate = {label: instances / seconds for label, seconds in best.items()}
    per_instance = 1.0 / rate["local, 1 worker"]
    t_chunk = chunk * per_instance
    measured = {w: rate[f"local, {w} worker{'s' if w > 1 else ''}"] / rate[f"ray, {w} worker{'s' if w > 1 else ''}"] - 1
                for w in (1, 2)}
    predicted = overhead["round_trip"] / t_chunk
    share = daemon_cpu / ray_seconds  # cores busy with Ray's daemons during the ray, 2 workers rounds
    driver = overhead["per_task_in_flight"] + write + chunk_bytes / BANDWIDTH
    rows = extrapolate(per_instance, chunk, overhead["round_trip"], driver, args.cores_per_node)

    def verdict(x):
        return "met" if x <= GOAL_OVERHEAD else "not met"

    out = io.StringIO()
    p = lambda *a: print(*a, file=out)  # noqa: E731
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ray = import_ray()
    p(f"# Data generation on Ray against the local backend ({args.problem})\n")
    p(f"Command: `python benchmarks/scale.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    p(f"Date: {now}; commit {source_commit(ROOT)}; Ray {ray.__version__}, torch {torch.__version__}, Python "
      f"{platform.python_version()}; {os.cpu_count()} CPU cores; load average at the end "
      f"{os.getloadavg()[0]:.1f} (other jobs shared the cores: absolute numbers are pessimistic).\n")
    p(f"Problem `configs/{args.problem}.yaml`, solver `{gen.solver}`, chunk size {chunk} (the default), "
      f"{instances} instances ({n_chunks} chunks) per round, seed {args.seed}, best of {args.repeats} interleaved "
      "rounds, workers warm.\n")
    p("## Throughput\n")
    p("| backend | instances/s | s per round (best) | all rounds (s) | speed-up vs local 1 | "
      "arrays identical to local 1 |")
    p("|---|---:|---:|---|---:|---|")
    for config in CONFIGS:
        label = config.label
        rounds = ", ".join(f"{t:.1f}" for t in times[label])
        p(f"| {label} | {rate[label]:.1f} | {best[label]:.2f} | {rounds} | "
          f"{rate[label] / rate['local, 1 worker']:.2f} | {'yes' if identical[label] else 'NO'} |")
    if e2e:
        p(f"\nEnd to end, `generate()` of {args.num_samples} samples with 2 workers, start-up and HDF5 included: "
          f"local {e2e['local']:.1f} s, ray {e2e['ray']:.1f} s (ray starts a private Ray instance: "
          f"{e2e['ray'] - e2e['local']:+.1f} s).\n")
    p("## Ray's per-task overhead\n")
    p("| quantity | value |")
    p("|---|---:|")
    p(f"| empty task round trip (one at a time) | {1e3 * overhead['round_trip']:.2f} ms |")
    p(f"| driver time per empty task, 1000 in flight | {1e3 * overhead['per_task_in_flight']:.2f} ms |")
    p(f"| chunk compute time ({chunk} instances, 1 core) | {1e3 * t_chunk:.0f} ms |")
    p(f"| part file write by the driver | {1e3 * write:.2f} ms ({chunk_bytes / 1e3:.0f} kB) |")
    p(f"| CPU of Ray's own processes (GCS, raylet, agents) while 2 workers solve | {100 * share:.1f} % of "
      f"one core ({100 * share / os.cpu_count():.1f} % of the machine) |")
    p("\n## Overhead of ray against local (goal: at most 5 % at the default chunk size)\n")
    p("| measure | overhead | goal |")
    p("|---|---:|---|")
    for w in (1, 2):
        p(f"| measured, {w} worker{'s' if w > 1 else ''} (local rate / ray rate - 1) | {100 * measured[w]:+.1f} % | "
          f"{verdict(measured[w])} |")
    p(f"| predicted (round trip / chunk time) | {100 * predicted:.2f} % | {verdict(predicted)} |")
    structural = predicted + share / os.cpu_count()
    p(f"| predicted on a machine whose cores all solve (round trip + daemons' share of the cores) | "
      f"{100 * structural:.2f} % | {verdict(structural)} |")
    spread = max(max(v) / min(v) - 1 for v in times.values())
    p(f"\nThe rounds of one configuration differed by up to {100 * spread:.0f} % (other work on the machine), "
      "more than the overhead sought: the measured ratios carry that noise, either sign. The predicted one is "
      "the cost Ray adds to every chunk.\n")
    p(f"## Extrapolation to N nodes of {args.cores_per_node} cores\n")
    p(f"| nodes | cores | instances/s | efficiency | hours for {TARGET:,} trajectories |")
    p("|---:|---:|---:|---:|---:|")
    for row in rows:
        p(f"| {row['nodes']} | {row['cores']} | {row['rate']:.0f} | {100 * row['efficiency']:.0f} % | "
          f"{row['hours']:.2f} |")
    p("\nAssumptions: every core solves at the measured single-core cost "
      f"({1e3 * per_instance:.1f} ms per instance, `local, 1 worker`) and the cores of a node do not slow each "
      f"other down; every chunk costs one empty-task round trip ({1e3 * overhead['round_trip']:.2f} ms) on top; "
      "the driver handles the chunks one after the other, each costing its per-task time with many in flight, "
      f"the part file write and the transfer of the chunk's arrays at {BANDWIDTH * 8 / 1e9:.0f} Gbit/s "
      f"({1e3 * driver:.2f} ms per chunk), which caps the rate at {chunk / driver:.0f} instances/s; Ray's "
      "start-up and the final HDF5 assembly (seconds, once per run) are left out. Model: rate = chunk / "
      "max((chunk time + round trip) / cores, driver time per chunk).")
    text = out.getvalue()
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
