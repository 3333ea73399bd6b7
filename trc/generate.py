"""Command line: generate a configuration's data set (``trc-generate`` or ``python -m trc.generate``).

Usage::

    python -m trc.generate --config configs/double_integrator.yaml [--num-samples N] [--seed S]
                           [--out PATH] [--workers W] [--chunk-size C] [--solver NAME]
                           [--backend local|ray] [--address HOST:PORT] [--force] [--quiet]
    python -m trc.generate --plant double_integrator --solver lqr --num-samples 1000
    python -m trc.generate --config configs/van_der_pol.yaml --backend ray --address 10.0.0.1:6379
    python -m trc.generate --list

The configuration's problem kind (:mod:`trc.kinds`: continuous, discrete, LIBERO) generates
the data; options a kind does not use are refused. ``--plant`` takes the standard
configuration ``configs/<plant>.yaml`` when the solver is not given or is the one of that file,
otherwise a generic problem for the plant (:func:`trc.experiment.default_experiment`).

Continuous data sets: an interrupted run (Ctrl-C, ``kill -9``, power loss) keeps its finished
chunks in ``<out>.parts/``; rerunning the same command resumes from them. Rerunning a
finished command does nothing unless ``--force`` is given; an existing ``--out`` that is not
this run's output is refused unless ``--force`` is given. The same seed gives the same arrays.
See :mod:`trc.generators.pipeline` for the design and ``datasets/README.md`` for the file.

Backends (:mod:`trc.backends`; continuous data sets and LIBERO demonstrations):
``--backend local`` (the default) solves in worker processes on this machine;
``--backend ray`` runs one Ray task per chunk (LIBERO: per episode) on the Ray cluster at
``--address`` (the head's ``host:port`` printed by ``ray start --head``, or ``auto`` for the
cluster started on this machine), or without ``--address`` on a private Ray started on this
machine. Both give the same arrays; a Ray task whose worker dies is run again by Ray.
``--backend ray`` needs the ``ray`` extra (``pip install "tiny-recursive-control[ray]"``); an
``--address`` that does not accept a connection within 30 s is refused (exit status 2).

Exit status (:mod:`trc.cli`): 0 success, 1 run-time failure, 2 bad usage or configuration,
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

import dynamics

from . import kinds
from .backends import check_backend
from .cli import add_backend, add_quiet, add_seed, option_defaults, positive_int, run
from .experiment import default_experiment, load_experiment
from .generators import solver_names

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.generate``."""
    parser = argparse.ArgumentParser(
        prog="python -m trc.generate",
        description="Generate the data set of a configuration: optimal trajectories (HDF5), solved puzzles or "
        "LIBERO demonstrations.",
        epilog="Example: python -m trc.generate --config configs/double_integrator.yaml --num-samples 1000",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="YAML", help="configuration file with 'problem' and 'generator' sections")
    source.add_argument("--plant", metavar="NAME",
                        help="a registered plant: its standard configuration, or a generic problem for --solver")
    source.add_argument("--list", action="store_true", help="list the registered plants, solvers and kinds, then exit")
    parser.add_argument("--solver", metavar="NAME",
                        help="a registered solver, overriding the configured one (its options are dropped)")
    parser.add_argument("--num-samples", type=positive_int, metavar="N",
                        help="successful trajectories to store (LIBERO: demonstrations per task)")
    add_seed(parser, help="seed of the instances and splits (default: the configuration's)")
    parser.add_argument("--out", metavar="PATH",
                        help="output file or folder (default: the configuration's, e.g. datasets/<problem>.h5)")
    parser.add_argument("--workers", type=positive_int, metavar="W",
                        help="worker processes (default: all cores; 1: in this process)")
    parser.add_argument("--chunk-size", type=positive_int, metavar="C", help="instances per work unit (resume granularity)")
    add_backend(parser)
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if the output already holds this data set, or replace another file")
    add_quiet(parser)
    return parser


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.list:
        print("plants: ", ", ".join(dynamics.names()))
        print("solvers:", ", ".join(solver_names()))
        print("kinds:  ", ", ".join(kinds.names()))
        return 0
    experiment = load_experiment(args.config) if args.config else default_experiment(args.plant, args.solver)
    kind = experiment.problem_kind
    kind.check_options("generate", args, option_defaults(parser, exclude=("config", "plant", "list")))
    check_backend(args.backend, args.address)
    print(kind.generate(experiment, args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :mod:`trc.cli`)."""
    parser = build_parser()
    return run(parser, lambda args: _command(args, parser), argv,
               interrupted="finished chunks are kept, rerun the same command to resume")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
