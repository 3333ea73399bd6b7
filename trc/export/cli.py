"""Command line of the export: ``python -m trc.export`` (console script ``trc-export``).

Exports a trained model (``model.pt``) to each requested format and prints the file sizes,
the agreement with PyTorch and the CPU latencies of the exported programs (median of
``--repeats`` calls, :func:`trc.evaluation.measure_latency`) next to the PyTorch model's::

    python -m trc.export --checkpoint runs/double_integrator/model.pt --format all --out exported/
    python -m trc.export --checkpoint runs/van_der_pol/model.pt --format aoti --batch 1 --out exported/
    python -m trc.export --checkpoint runs/van_der_pol/model.pt --format aoti --batch 1024 --processes 2

Exit status (:mod:`trc.cli`): 0 on success; 1 if the checkpoint cannot be loaded or a single
requested format fails its check against the model; 2 on bad usage or a single requested
format that cannot represent the model (with ``--format all`` such formats are skipped with a
message); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dynamics.errors import ConfigError, TRCError

from ..cli import add_seed, add_threads, exit_code, positive_int, run
from ..evaluation import measure_latency
from ..kinds import load
from ..models import TinyRecursiveControl
from .controller import load_controller
from .formats import FORMATS, _example_inputs, export_controller
from .parallel import parallel_latency

__all__ = ["build_parser", "main"]

PROG = "python -m trc.export"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.export``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a trained TRC model (model.pt) to TorchScript, ONNX, torch.export or AOTInductor; print "
        "the file sizes, the agreement with PyTorch and the CPU latencies (AOTInductor compiles for minutes on long "
        "horizons).",
    )
    p.add_argument("--checkpoint", required=True, help="model file written by python -m trc.train")
    p.add_argument("--format", default="all", choices=[*FORMATS, "all"], help="export format (default: all that apply)")
    p.add_argument("--out", default="exported", help="output folder (default: exported/)")
    p.add_argument("--no-feedback", action="store_true", help="export the plant-free network")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="compile the aoti program for this fixed batch size (faster; default: a free batch size; "
                   "the other formats always have a free one)")
    p.add_argument("--repeats", type=positive_int, default=50, help="timed calls per latency measurement")
    add_threads(p, default=1)
    p.add_argument("--processes", type=positive_int, default=1,
                   help="also time each program's large batch (the aoti program's fixed one, else 1024) in a "
                   "trc.export.ParallelController of this many processes, that batch in each (default 1: not)")
    add_seed(p, default=0,
             help="seed of the example (trace), verification and latency inputs: seed, seed + 1, seed + 2")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trc.export`` and ``trc-export``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status (0 success, 1 failure, 2 usage, 130 interrupted; :mod:`trc.cli`).
        Usage errors found by argparse exit 2 through ``SystemExit``.
    """
    return run(build_parser(), _export, argv)


def _export(args: argparse.Namespace) -> int:
    """Export, verify and time the model of ``args.checkpoint`` (threads already set by
    :func:`trc.cli.run`); returns the exit status."""
    model = load(args.checkpoint)
    if not isinstance(model, TinyRecursiveControl):
        raise ConfigError(f"{args.checkpoint} holds a {type(model).__name__} policy; the export takes a "
                          "continuous-control TinyRecursiveControl model")
    feedback = False if args.no_feedback else None
    formats = list(FORMATS) if args.format == "all" else [args.format]
    out = Path(args.out)
    rows = []
    for batch in (1, 1024):
        x0, xt = _example_inputs(model, batch, seed=args.seed + 2)
        with torch.no_grad():
            ms = measure_latency(lambda: model(x0, xt, plant=False if args.no_feedback else None), args.repeats)
        rows.append(("pytorch (eager)", batch, ms, None, None))
    status = 0
    for fmt in formats:
        path = out / f"{Path(args.checkpoint).parent.name or 'model'}{FORMATS[fmt]}"
        batch = args.batch if fmt == "aoti" else None
        try:
            result = export_controller(model, path, format=fmt, feedback=feedback, batch=batch, seed=args.seed)
        except TRCError as exc:
            print(f"{fmt}: not exported: {exc}", file=sys.stderr)
            status = exit_code(exc) if args.format != "all" else status
            continue
        ctrl = load_controller(path)
        for batch in (1, 1024) if ctrl.batch is None else (ctrl.batch,):
            x0, xt = (t.numpy() for t in _example_inputs(model, batch, seed=args.seed + 2))
            ms = measure_latency(lambda: ctrl(x0, xt), args.repeats)
            rows.append((f"{fmt} ({path})", batch, ms, result.size_bytes, result.max_abs_error))
        if args.processes > 1:
            rows.append(_parallel_row(model, path, fmt, ctrl.batch or 1024, args))
    print(f"{'program':<48} {'batch':>6} {'latency ms':>11} {'size KiB':>9} {'max |du|':>9}")
    for name, batch, ms, size, err in rows:
        size_s = "" if size is None else f"{size / 1024:.0f}"
        err_s = "" if err is None else f"{err:.1e}"
        print(f"{name:<48} {batch:>6} {ms:>11.3f} {size_s:>9} {err_s:>9}")
    return status


def _parallel_row(model, path: Path, fmt: str, batch: int, args: argparse.Namespace) -> tuple:
    """The CLI's row of ``path`` in a :class:`~trc.export.parallel.ParallelController` of
    ``args.processes`` processes, ``batch`` plans in each per call."""
    x0, xt = (t.numpy() for t in _example_inputs(model, batch * args.processes, seed=args.seed + 2))
    ms = parallel_latency(path, x0, xt, args.processes, args.repeats, threads=args.threads)
    return (f"{fmt}, {args.processes} processes ({batch} plans each)", batch * args.processes, ms, None, None)
