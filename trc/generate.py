"""Command line: generate a data set of optimal trajectories.

Usage::

    python -m trc.generate --config configs/double_integrator.yaml [--num-samples N] [--seed S]
                           [--out PATH] [--workers W] [--chunk-size C] [--solver NAME]
                           [--force] [--quiet]
    python -m trc.generate --plant double_integrator --solver lqr --num-samples 1000
    python -m trc.generate --list

``--plant`` uses the standard configuration ``configs/<plant>.yaml`` when the solver is not
given or is the one of that file, otherwise a generic problem for the plant (see
:func:`trc.experiment.default_experiment`). An interrupted run (Ctrl-C, ``kill -9``, power
loss) keeps its finished chunks in ``<out>.parts/``; rerunning the same command resumes from
them. Rerunning a finished command does nothing unless ``--force`` is given. The same seed
gives the same arrays. See :mod:`trc.generators.pipeline` for the design and
``datasets/README.md`` for the file.

Configurations whose ``problem`` has ``kind: maze | sudoku`` (:mod:`trc.discrete`) or
``kind: libero`` (:mod:`trc.generators.libero_storage`) are handed to their own generators.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

__all__ = ["main", "build_parser"]

log = logging.getLogger("trc.generate")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.generate``."""
    parser = argparse.ArgumentParser(
        prog="python -m trc.generate",
        description="Generate optimal trajectories with a registered solver and store them in HDF5.",
        epilog="Example: python -m trc.generate --config configs/double_integrator.yaml --num-samples 1000",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="YAML", help="configuration file with 'problem' and 'generator' sections")
    source.add_argument("--plant", metavar="NAME",
                        help="a registered plant: its standard configuration, or a generic problem for --solver")
    source.add_argument("--list", action="store_true", help="list the registered plants and solvers, then exit")
    parser.add_argument("--solver", metavar="NAME", help="a registered solver, overriding the configured one (its options are dropped)")
    parser.add_argument("--num-samples", type=int, metavar="N", help="successful trajectories to store")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of the instances and splits")
    parser.add_argument("--out", metavar="PATH", help="output HDF5 file (default: generator.out or datasets/<problem>.h5)")
    parser.add_argument("--workers", type=int, metavar="W", help="worker processes (default: all cores; 1: in this process)")
    parser.add_argument("--chunk-size", type=int, metavar="C", help="instances per work unit (resume granularity)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the output already holds this data set")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log messages, only the summary")
    return parser


def _continuous(args) -> str:
    """Generate a data set of a continuous problem; returns the summary."""
    from dynamics.errors import ConfigError

    from .experiment import default_experiment, load_experiment
    from .generators.config import GeneratorConfig
    from .generators.pipeline import generate

    exp = load_experiment(args.config) if args.config else default_experiment(args.plant, args.solver)
    log.info("problem %r from %s", exp.problem.name, exp.source)
    config = exp.generator
    overrides = {"num_samples": args.num_samples, "seed": args.seed, "chunk_size": args.chunk_size}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.solver is not None and (config is None or config.solver != args.solver):
        overrides.update(solver=args.solver, options={})
    if config is None:
        if "solver" not in overrides:
            raise ConfigError(f"{exp.source} has no 'generator' section; add one or give --solver")
        config = GeneratorConfig(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)  # re-validated by __post_init__
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # log lines above the progress bar, not through it
        report = generate(exp.problem, config, out=args.out, workers=args.workers, progress=not args.quiet,
                          force=args.force)
    return report.summary()


def _discrete(args) -> str:
    """Generate a maze or sudoku data set (:mod:`trc.generators.discrete`)."""
    from .discrete import load_discrete_experiment
    from .generators.discrete import generate_discrete, write_discrete_dataset

    for flag in ("solver", "workers", "chunk_size"):
        if getattr(args, flag) is not None:
            log.warning("--%s is ignored for discrete problems", flag.replace("_", "-"))
    exp = load_discrete_experiment(args.config)
    config = exp.generator
    num = config.num_samples if args.num_samples is None else args.num_samples
    seed = config.seed if args.seed is None else args.seed
    out = args.out or exp.dataset_path()
    t0 = time.perf_counter()
    data = generate_discrete(exp.problem, num, seed, config.splits, progress=not args.quiet)
    write_discrete_dataset(out, data)
    return (f"problem      {exp.problem.name} ({exp.problem.kind}, solver {data.solver})\n"
            f"samples      {data.num_samples} stored\n"
            f"time         {time.perf_counter() - t0:.2f} s\n"
            f"output       {out}")


def _libero(args, raw: dict) -> str:
    """Generate LIBERO demonstrations (:mod:`trc.generators.libero_expert`)."""
    from .config import from_dict
    from .generators.libero_expert import LiberoGeneratorConfig, generate
    from .generators.libero_storage import LiberoProblem

    for flag in ("solver", "num_samples", "chunk_size"):
        if getattr(args, flag) is not None:
            log.warning("--%s is ignored for LIBERO problems (set generator.demos_per_task)", flag.replace("_", "-"))
    problem = from_dict(LiberoProblem, raw.get("problem"), "problem")
    config = from_dict(LiberoGeneratorConfig, raw.get("generator"), "generator")
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    t0 = time.perf_counter()
    report = generate(problem, config, output=args.out, seed=args.seed or 0, resume=not args.force,
                      progress=not args.quiet)
    lines = [f"problem      {problem.name} (LIBERO {problem.suite})"]
    for task, info in report.items():
        lines.append(f"  task {task}: {info.get('successes')} of {info.get('attempts')} episodes succeeded -> {info.get('file')}")
    lines.append(f"time         {time.perf_counter() - t0:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 bad usage/config)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")

    import dynamics
    from dynamics.errors import ConfigError, TRCError, UnknownNameError

    from .config import load_yaml
    from .generators import solver_names

    if args.list:
        print("plants: ", ", ".join(dynamics.names()))
        print("solvers:", ", ".join(solver_names()))
        return 0
    try:
        raw = load_yaml(args.config) if args.config else {}
        kind = (raw.get("problem") or {}).get("kind") if isinstance(raw.get("problem"), dict) else None
        if kind in ("maze", "sudoku"):
            summary = _discrete(args)
        elif kind == "libero":
            summary = _libero(args, raw)
        else:
            summary = _continuous(args)
    except KeyboardInterrupt:
        print("\ninterrupted; finished chunks are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, UnknownNameError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TRCError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
