"""Latency of TRC against the optimal solvers it replaces, on the standard problems, on the CPU.

For every standard problem (``configs/*.yaml``) and every model preset
(:mod:`trc.models.presets`) it measures, in one run:

* TRC's latency at batch 1 (one plan, what a controller needs every sample) and at batch
  1024 (plans per second, what data generation or sampling-based planning needs), median of
  ``--repeats`` calls after warm-up, with the trajectory-error feedback (the model as trained),
  and for the first preset also without it (the network alone: the plant rollouts of the
  feedback, torchdiffeq steps, dominate the latency);
* the time per instance of the problem's generator solver (``qp`` with cvxpy/Clarabel and
  cvxpy/OSQP, ``nonlinear`` Gauss-Newton SQP, ``rocket`` SOCP), each instance solved alone,
  and of CasADi/IPOPT on the nonlinear problems (``trc/generators/ipopt.py``, exact
  Hessians, ``tol = 1e-8``);

and prints them with the ratios solver time / TRC time, and the floating-point operations of
one plan (matrix products and convolutions), which bound the batched throughput on a given CPU:
the header gives the rate of a float32 matrix product of the network's sizes on this machine
(:func:`gemm_rate`), and each problem's last line the plans per second that the matrix
products of the first preset alone would allow at that rate (:func:`gemm_bound`).
Latency does not depend on the weights, so the models are untrained (an untrained and a
trained model of a preset run the same operations). Optionally the presets of
``--export-presets`` (default ``fast``) are also exported (:mod:`trc.export`) to ONNX
(``--onnx``, timed with onnxruntime) and compiled to C++ by AOTInductor (``--aoti``, the
feedback rollouts included; one program for batch 1 and one for the large batch). With
``--processes P`` the large-batch program runs in a :class:`trc.export.ParallelController`
of P processes (one per core, each its own copy of the program, ``--threads`` threads each):
each call plans P times the batch, one batch per process, as a data-parallel planner uses a
multi-core CPU, and the rate is that of the whole call (the transfers to and from the
processes included). The exported large-batch programs are timed over at least
``--throughput-seconds`` of calls (this machine's speed swings from one second to the next),
and their rate is printed with the 10-90 % range of the calls' rates.

The goals of the project: TRC at batch 1 at least 100 times faster than IPOPT on the
nonlinear problems, and at least 10^5 control sequences per second batched.

    python benchmarks/latency.py                        # everything (several minutes)
    python benchmarks/latency.py --problems van_der_pol --presets fast small --aoti --export-presets fast small
    python benchmarks/latency.py --problems van_der_pol --presets fast --aoti --processes 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trc.config import load_yaml
from trc.evaluation import call_times, measure_latency
from trc.export import FORMATS, export_controller, load_controller
from trc.export.parallel import parallel_call_times
from trc.generators import make_solver
from trc.generators.ipopt import IpoptReference
from trc.models import TinyRecursiveControl
from trc.models.presets import preset_config, preset_names
from trc.problem import Problem

PROBLEMS = ("double_integrator", "van_der_pol", "pendulum", "cartpole", "rocket")
NONLINEAR = ("van_der_pol", "pendulum", "cartpole")
ROOT = Path(__file__).resolve().parent.parent


def solver_times(name: str, problem: Problem, x0: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Median wall time (ms) per instance of each solver of ``problem``, instances solved one by one."""
    cfg = load_yaml(ROOT / "configs" / f"{name}.yaml")["generator"]
    solver = make_solver(cfg["solver"], problem, **cfg.get("options", {}))
    if cfg["solver"] == "qp":  # labels: what the column headers show
        solvers = {"QP-Clarabel": solver, "QP-OSQP": make_solver("qp", problem, backend="OSQP"),
                   "QP-only": make_solver("qp", problem, force_qp=True)}
    elif cfg["solver"] == "nonlinear":
        solvers = {"SQP": solver}
    else:
        solvers = {"SOCP": solver}
    out = {}
    for label, solver in solvers.items():
        solver.solve(x0[:1], target[:1])  # warm-up (canonicalisation, first factorisations)
        times = []
        for i in range(len(x0)):
            start = time.perf_counter()
            solver.solve(x0[i:i + 1], target[i:i + 1])
            times.append(time.perf_counter() - start)
        out[label] = 1e3 * statistics.median(times)
    if name in NONLINEAR:
        ipopt = IpoptReference(problem, tol=1e-8)
        ipopt.solve(x0[0], target[0])
        times = []
        for i in range(len(x0)):
            start = time.perf_counter()
            ipopt.solve(x0[i], target[i])
            times.append(time.perf_counter() - start)
        out["IPOPT"] = 1e3 * statistics.median(times)
    return out


def build_model(problem: Problem, preset: str) -> TinyRecursiveControl:
    """The untrained model of ``preset`` for ``problem`` (seed 0), in eval mode."""
    torch.manual_seed(0)
    return TinyRecursiveControl.from_problem(problem, preset_config(preset)).eval()


def trc_times(problem: Problem, preset: str, repeats: int, batch: int, feedback: bool = True) -> dict[str, float]:
    """TRC latency (ms) at batch 1 and ``batch``, and its parameter count.

    ``feedback=False`` runs the plant-free network (no rollouts inside the model).
    """
    model = build_model(problem, preset)
    x0, target = (torch.as_tensor(a, dtype=torch.float32) for a in problem.sample(batch, seed=1))
    plant = None if feedback else False
    with torch.no_grad():
        one = measure_latency(lambda: model(x0[:1], target[:1], plant=plant), repeats)
        many = measure_latency(lambda: model(x0, target, plant=plant), max(3, repeats // 5), warmup=1)
    out = {"b1": one, "bN": many, "params": model.get_parameter_count(), "model": model}
    if feedback:
        out["flops"] = flops_per_plan(model, problem)
    return out


def flops_per_plan(model, problem: Problem) -> float:
    """Floating-point operations of one plan at batch 1, with feedback (:class:`torch.utils.flop_counter.FlopCounterMode`:
    matrix products and convolutions, which bound the batched throughput)."""
    from torch.utils.flop_counter import FlopCounterMode

    x0, target = (torch.as_tensor(a, dtype=torch.float32) for a in problem.sample(1, seed=1))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x0, target)
    return float(counter.get_total_flops())


def gemm_rate(rows: int = 1024, size: int = 256, seconds: float = 0.5) -> float:
    """Float32 matrix-product rate of this process (GFLOP/s, torch's threads): the median of
    repeated ``(rows, size) @ (size, size)`` products, the sizes of the network's layers at
    batch ``rows`` (at 1024 x 256 x 256, 96-98 GFLOP/s on one core of the project's machine)."""
    a, b = torch.randn(rows, size), torch.randn(size, size)
    out = torch.empty(rows, size)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2.0 * rows * size * size / statistics.median(times) / 1e9


def gemm_bound(flops: float, gflops: float, processes: int = 1) -> float:
    """Plans per second if a plan's ``flops`` ran at ``gflops`` GFLOP/s in each of
    ``processes`` processes and took no other time: an upper bound of the batched rate."""
    return processes * gflops * 1e9 / flops


def exported_times(model, problem: Problem, repeats: int, batch: int, folder: Path, fmt: str,
                   large: bool = True, processes: int = 1, seconds: float = 0.0, name: str = "") -> dict[str, float]:
    """Latency (ms) of ``model`` exported in format ``fmt`` (with feedback), at batch 1 and
    (``large``) ``batch``; with ``processes > 1``, ``batch * processes`` plans per call run in
    that many processes (:class:`trc.export.ParallelController`, ``batch`` each) and ``bN`` is
    the call's time over ``processes`` (the time of ``batch`` plans at their joint rate). The
    large batch is timed over at least ``seconds`` seconds of calls; ``bN_fast`` and ``bN_slow``
    are the 10th and 90th percentiles of its calls (same units as ``bN``). ``name`` (the preset)
    starts the file names, so the programs of two presets do not overwrite each other.

    ``aoti``: one program compiled for batch 1 and one for ``batch`` (fixed batch sizes,
    :func:`trc.export.export_controller` ``batch=``), as a deployed controller and a batched
    planner would be built; ``onnx``: one program with a free batch size.
    """

    def export(size):
        path = folder / f"{problem.name}_{name or model.config.mode}_{model.config.H_cycles}x{model.config.L_cycles}" \
                        f"_{size or 'any'}{FORMATS[fmt]}"
        start = time.perf_counter()
        export_controller(model, path, format=fmt, batch=size)
        print(f"  ({fmt} export of {problem.name}, batch {size or 'free'}: {time.perf_counter() - start:.0f} s)",
              flush=True)
        return load_controller(path)

    x0, target = (a.astype(np.float32) for a in problem.sample(batch * processes, seed=1))
    one = export(1 if fmt == "aoti" else None)
    out = {"b1": measure_latency(lambda: one(x0[:1], target[:1]), repeats)}
    if large:
        many = export(batch) if fmt == "aoti" else one
        calls = max(3, repeats // 5)
        if processes > 1:  # batch * processes plans per call, batch per process; bN: the time of batch plans
            ms = parallel_call_times(many.path, x0, target, processes, calls, threads=torch.get_num_threads(),
                                     seconds=seconds) / processes
        else:
            ms = call_times(lambda: many(x0, target), calls, warmup=1, seconds=seconds)
        out["bN"], out["bN_fast"], out["bN_slow"] = np.median(ms), *np.percentile(ms, [10, 90])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    p.add_argument("--presets", nargs="+", default=preset_names(), choices=preset_names())
    p.add_argument("--instances", type=int, default=5, help="instances solved one by one per solver (median)")
    p.add_argument("--repeats", type=int, default=30, help="timed TRC calls at batch 1 (median)")
    p.add_argument("--batch", type=int, default=1024, help="large batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a fair single-core comparison)")
    p.add_argument("--onnx", action="store_true", help="also time the exported presets in ONNX (onnxruntime)")
    p.add_argument("--aoti", action="store_true",
                   help="also time the exported presets compiled by AOTInductor (trc.export format 'aoti'; minutes per "
                   "problem and preset)")
    p.add_argument("--export-presets", nargs="+", default=["fast"], choices=preset_names(),
                   help="presets timed with --onnx and --aoti (default: fast)")
    p.add_argument("--exported-batch-1-only", action="store_true",
                   help="time the exported programs at batch 1 only (no AOTInductor program for the large batch)")
    p.add_argument("--processes", type=int, default=1,
                   help="time the exported large-batch programs in a trc.export.ParallelController of this many "
                   "processes (one per core), the batch in each")
    p.add_argument("--throughput-seconds", type=float, default=5.0,
                   help="time the exported large-batch programs over at least this many seconds of calls (the "
                   "machine's speed swings from one second to the next; the rate's 10-90 %% range is printed too)")
    p.add_argument("--export-dir", type=Path, default=ROOT / "runs" / "benchmarks", help="folder of the exported files")
    args = p.parse_args(argv)
    if args.processes < 1:
        p.error("--processes must be at least 1")
    torch.set_num_threads(args.threads)

    gflops = gemm_rate()
    print(f"CPU latency, torch {torch.__version__}, {args.threads} thread(s); solver: median ms per instance "
          f"({args.instances} instances solved alone); TRC: median ms per call; float32 matrix products "
          f"(1024 x 256 x 256): {gflops:.0f} GFLOP/s per process; exported batched rates: median (10-90 % range) of "
          f"calls over at least {args.throughput_seconds:g} s")
    for name in args.problems:
        raw = load_yaml(ROOT / "configs" / f"{name}.yaml")
        problem = Problem.from_dict(raw["problem"])
        x0, target = problem.sample(args.instances, seed=0)
        solvers = solver_times(name, problem, x0, target)
        print(f"\n## {name} (N = {problem.horizon}, n = {problem.state_dim}, m = {problem.control_dim}); solvers, ms "
              "per instance: " + ", ".join(f"{label} {ms:.2f}" for label, ms in solvers.items()))
        exported_rate = f"; exported: {args.processes} processes, a batch each" if args.processes > 1 else ""
        print(f"| TRC | params | MFLOP per plan | batch 1 [ms] | seq/s at batch {args.batch}{exported_rate} | "
              + " | ".join(f"{label} / TRC" for label in solvers) + " |")
        print("|---|---|---|---|---|" + "---|" * len(solvers))

        def row(label, t, params):
            ratios = " | ".join(f"{ms / t['b1']:.2f}" for ms in solvers.values())
            flops = f"{t['flops'] / 1e6:.2f}" if "flops" in t else ""
            rate = f"{1e3 * args.batch / t['bN']:#.3g}" if "bN" in t else "–"
            if "bN_slow" in t:  # the 10-90 % range of the calls' rates
                rate += f" ({1e3 * args.batch / t['bN_slow']:#.3g}–{1e3 * args.batch / t['bN_fast']:#.3g})"
            print(f"| {label} | {params} | {flops} | {t['b1']:.3f} | {rate} | {ratios} |", flush=True)

        first, built = None, {}
        for preset in args.presets:
            t = built[preset] = trc_times(problem, preset, args.repeats, args.batch)
            first = first or t
            row(preset, t, t["params"])
        if first is not None:
            row(f"{args.presets[0]}, plant-free network", trc_times(problem, args.presets[0], args.repeats, args.batch, False),
                first["params"])
        for flag, fmt, label in ((args.onnx, "onnx", "ONNX (onnxruntime)"), (args.aoti, "aoti", "AOTInductor")):
            for preset in args.export_presets if flag else ():
                model = built[preset]["model"] if preset in built else build_model(problem, preset)
                row(f"{preset}, {label}", exported_times(model, problem, args.repeats, args.batch, args.export_dir, fmt,
                                                         not args.exported_batch_1_only, args.processes,
                                                         args.throughput_seconds, name=preset),
                    model.get_parameter_count())
        if first is not None:
            bound = gemm_bound(first["flops"], gflops, args.processes)
            print(f"  (matrix products alone, {first['flops'] / 1e6:.2f} MFLOP per plan at {gflops:.0f} GFLOP/s, "
                  f"bound {args.presets[0]}'s batched rate to {bound:.3g} seq/s in {args.processes} process(es))",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
