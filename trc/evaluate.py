"""Command line: evaluate a trained policy of any kind and write a report (``trc-evaluate``).

Usage::

    python -m trc.evaluate --checkpoint runs/NAME/model.pt [--data PATH] [--out DIR]
                           [--split test] [--latency-repeats R] [--threads T] [--seed S]
    python -m trc.evaluate --checkpoint runs/libero_spatial/model.pt --episodes 20 [--tasks 0 1]
    python -m trc.evaluate --checkpoint runs/NAME/model.pt --closed-loop [--episodes E]
                           [--backend local|ray] [--address HOST:PORT] [--workers W]

The model file records its problem kind (:mod:`trc.kinds`), whose evaluator runs:
continuous and discrete policies against the optimal solutions of a data set (without
``--data``, the one the policy was trained on); LIBERO policies closed loop in simulation from
the official init states. The report (``report.json``, ``report.md``, figures) goes to
``--out`` (default ``<checkpoint folder>/evaluation``) and its summary to stdout. A model made
for another plant or other dimensions than the data set is refused with
:class:`~dynamics.errors.CheckpointError`.

Closed-loop and LIBERO episodes run in this process, in ``--workers`` local processes, or on
a Ray cluster (``--backend ray``, ``--address``; :mod:`trc.backends`): one Ray task per batch of
closed-loop episodes (every case's arrays are the same on every backend) or per LIBERO episode.
On a cluster of several machines the model file (and an ``--exported`` program) must be at the
same path on every node, e.g. on a shared file system.

Exit status (:mod:`trc.cli`): 0 success, 1 unreadable or mismatched model file or data set,
2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import kinds
from .backends import check_backend
from .cli import add_backend, add_quiet, add_seed, add_threads, option_defaults, positive_int, run
from .closed_loop import PERTURBATIONS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.evaluate``."""
    p = argparse.ArgumentParser(
        prog="python -m trc.evaluate",
        description="Evaluate a trained policy: against the optimal solutions of a data set, or in closed loop "
        "(--closed-loop; LIBERO always).",
        epilog="Example: python -m trc.evaluate --checkpoint runs/double_integrator/model.pt",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="model file written by trc.train (model.pt)")
    p.add_argument("--data", metavar="PATH", help="data set (default: the one the model was trained on)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: <checkpoint folder>/evaluation)")
    p.add_argument("--split", choices=("train", "val", "test"), help="split to evaluate (default: evaluation.split, test)")
    p.add_argument("--latency-repeats", type=positive_int, metavar="R", help="timed batch-1 passes (default 200)")
    add_threads(p)
    add_seed(p, default=0, help="seed of torch's generator (evaluation is deterministic)")
    loop = p.add_argument_group("closed loop (continuous problems: trc.closed_loop; LIBERO: always)")
    loop.add_argument("--closed-loop", action="store_true",
                      help="run the model as a feedback controller against the saturated LQR, MPC and the optimum, "
                           "on a plant simulated by scipy solve_ivp; writes closed_loop.json and closed_loop.md")
    loop.add_argument("--episodes", type=positive_int, default=20,
                      help="episodes per perturbation case (LIBERO: per task) (default 20)")
    loop.add_argument("--perturbation", nargs="+", metavar="NAME",
                      help=f"cases, from {sorted(PERTURBATIONS)} (default: nominal perturbed impulse)")
    loop.add_argument("--replan-every", type=positive_int, metavar="K",
                      help="controls of each plan applied before re-planning (default 1)")
    loop.add_argument("--steps", type=positive_int, metavar="T",
                      help="control steps per episode (default 2 N; fixed final time: N)")
    loop.add_argument("--exported", metavar="PATH", help="also run this exported program of the model (trc.export)")
    loop.add_argument("--no-mpc", action="store_true", help="leave the MPC baseline out (the slowest part)")
    where = p.add_argument_group("where the episodes run (--closed-loop and LIBERO)")
    where.add_argument("--workers", type=positive_int, metavar="W",
                       help="local: parallel processes (default 1: this process); ray: most tasks at once")
    add_backend(where, "one task per batch of closed-loop episodes, or per LIBERO episode")
    libero = p.add_argument_group("LIBERO (closed-loop episodes)")
    libero.add_argument("--tasks", type=int, nargs="+", metavar="T", help="task indices (default: the problem's)")
    libero.add_argument("--videos", type=int, default=1, metavar="V", help="episodes recorded per task (default 1)")
    libero.add_argument("--action-steps", type=positive_int, metavar="K",
                        help="actions of each predicted chunk executed before re-planning (default: half the chunk)")
    libero.add_argument("--max-steps", type=positive_int, metavar="S", help="episode limit (default: the problem's)")
    libero.add_argument("--render", choices=("fast", "libero"), help="override the problem's render settings")
    add_quiet(p)
    return p


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    torch.manual_seed(args.seed)
    model = kinds.load(args.checkpoint)
    kind = kinds.for_model(model)
    kind.check_options("evaluate", args, option_defaults(parser, exclude=("checkpoint",)))
    check_backend(args.backend, args.address)
    print(kind.evaluate(model, args.checkpoint, args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :mod:`trc.cli`)."""
    parser = build_parser()
    return run(parser, lambda args: _command(args, parser), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
