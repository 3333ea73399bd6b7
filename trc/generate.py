"""Command line: generate a data set of optimal trajectories.

Usage::

    python -m trc.generate --config configs/double_integrator.yaml [--num-samples N] [--seed S]
                           [--out PATH] [--workers W] [--chunk-size C] [--solver NAME]
                           [--force] [--quiet]
    python -m trc.generate --plant double_integrator --solver lqr --num-samples 1000
    python -m trc.generate --list

An interrupted run (Ctrl-C, ``kill -9``, power loss) keeps its finished chunks in
``<out>.parts/``; rerunning the same command resumes from them. Rerunning a finished command
does nothing unless ``--force`` is given. The same seed gives the same arrays.
See :mod:`trc.generators.pipeline` for the design and ``datasets/README.md`` for the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.generate``."""
    parser = argparse.ArgumentParser(
        prog="python -m trc.generate",
        description="Generate optimal trajectories with a registered solver and store them in HDF5.",
        epilog="Example: python -m trc.generate --config configs/double_integrator.yaml --num-samples 1000",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="YAML", help="configuration file with 'problem' and 'generator' sections")
    source.add_argument("--plant", metavar="NAME", help="a registered plant: its standard configuration, or a default problem")
    source.add_argument("--list", action="store_true", help="list the registered plants and solvers, then exit")
    parser.add_argument("--solver", metavar="NAME", help="override the configured solver (its options are then dropped)")
    parser.add_argument("--num-samples", type=int, metavar="N", help="successful trajectories to store")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of the instances and splits")
    parser.add_argument("--out", metavar="PATH", help="output HDF5 file (default: generator.out or datasets/<problem>.h5)")
    parser.add_argument("--workers", type=int, metavar="W", help="worker processes (default: all cores; 1: in this process)")
    parser.add_argument("--chunk-size", type=int, metavar="C", help="instances per work unit")
    parser.add_argument("--force", action="store_true", help="regenerate even if the output already holds this data set")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log messages, only the summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 bad usage/config)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")

    import dynamics
    from dynamics.errors import ConfigError, TRCError, UnknownNameError

    from .experiment import default_experiment, load_experiment
    from .generators import solver_names
    from .generators.pipeline import generate

    if args.list:
        print("plants: ", ", ".join(dynamics.names()))
        print("solvers:", ", ".join(solver_names()))
        return 0
    try:
        if args.config:
            exp = load_experiment(args.config)
            if exp.generator is None and args.solver is None:
                raise ConfigError(f"{args.config} has no 'generator' section; add one or give --solver")
        else:
            exp = default_experiment(args.plant, args.solver)
        config = exp.generator
        overrides = {
            "num_samples": args.num_samples, "seed": args.seed, "chunk_size": args.chunk_size,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if args.solver is not None and (config is None or config.solver != args.solver):
            overrides.update(solver=args.solver, options={})
        if config is None:
            from .generators.config import GeneratorConfig

            config = GeneratorConfig(**overrides)
        elif overrides:
            try:
                config = dataclasses.replace(config, **overrides)
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc)) from exc
        report = generate(exp.problem, config, out=args.out, workers=args.workers, progress=not args.quiet,
                          force=args.force)
    except KeyboardInterrupt:
        print("\ninterrupted; finished chunks are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, UnknownNameError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TRCError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
