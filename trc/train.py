"""Command line: train a configuration's policy, evaluate it, write a report (``trc-train``).

Usage::

    python -m trc.train --config configs/double_integrator.yaml [--out runs/NAME] [--seed S]
                        [--resume | --overwrite] [--epochs E] [--quiet]
    torchrun --nproc_per_node=2 -m trc.train --config configs/double_integrator.yaml
    python -m trc.train --config configs/double_integrator.yaml --stage rl      # REINFORCE fine-tuning
    python -m trc.train --config configs/maze.yaml [--stage all|supervised|rl]
    python -m trc.train --config configs/libero_spatial.yaml [--data DIR] [--sweep]
    python -m trc.train --config configs/recap_maze.yaml --stage demos|corrections|autonomous   # RECAP
                        [--backend local|ray] [--address HOST:PORT] [--workers W]

The configuration's problem kind (:mod:`trc.kinds`) trains; options a kind does not use are
refused. Continuous problems: if the data set (``generator.out``, default
``datasets/<problem>.h5``) does not exist it is generated first. The run folder (default
``runs/<problem name>``) receives ``config.yaml`` (the full configuration with defaults filled
in), ``checkpoint.pt`` (after every epoch; ``--resume`` continues from it, even after
``kill -9``), ``metrics.csv``, ``metrics.jsonl``, the model file ``model.pt``
(:func:`trc.load`) and the test-split evaluation ``report.json``, ``report.md`` and
``figures/*.png``. Every input is validated before the run folder is touched.

Exit status (:mod:`trc.cli`): 0 success, 1 run-time failure (solver, data set, checkpoint),
2 bad usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from dynamics.errors import ConfigError

from .backends import check_backend
from .cli import add_backend, add_quiet, add_seed, option_defaults, positive_int, run
from .experiment import Experiment, experiment_from_dict, load_experiment
from .kinds.continuous import DEFAULT_RUNS_DIR, RunResult, run_training
from .recap.stages import STAGES as RECAP_STAGES

__all__ = ["main", "build_parser", "train", "RunResult", "DEFAULT_RUNS_DIR"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.train``."""
    p = argparse.ArgumentParser(
        prog="python -m trc.train",
        description="Train a policy on a configuration's data set (generated if missing), then evaluate it.",
        epilog="Example: python -m trc.train --config configs/double_integrator.yaml --out runs/di",
    )
    p.add_argument("--config", required=True, metavar="YAML",
                   help="configuration file (problem, generator, model, training, evaluation)")
    p.add_argument("--out", metavar="DIR", help=f"run folder (default: {DEFAULT_RUNS_DIR}/<problem name>)")
    add_seed(p, help="seed of weights, data order and every generator (overrides training.seed)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    mode.add_argument("--overwrite", action="store_true", help="start afresh even if the run folder has a checkpoint")
    p.add_argument("--epochs", type=positive_int, metavar="E", help="override training.epochs")
    p.add_argument("--workers", type=positive_int, metavar="W",
                   help="worker processes if the data set must be generated; RECAP: rollout processes (--backend "
                   "local) or most rollout tasks at once (--backend ray)")
    p.add_argument("--stage", choices=("all", "supervised", "rl", *RECAP_STAGES),
                   help="discrete: all (default), supervised or rl; continuous: rl fine-tunes --init (or "
                   "<out>/model.pt) with REINFORCE; RECAP problems (kind: recap): demos, corrections or "
                   "autonomous (default: the three in order)")
    p.add_argument("--init", metavar="MODEL", help="model file to start from (fine-tuning: continuous and discrete "
                   "runs, --stage rl)")
    rl = p.add_argument_group("REINFORCE fine-tuning of continuous models (--stage rl)")
    rl.add_argument("--rl-iterations", type=positive_int, default=100, help="policy-gradient steps")
    rl.add_argument("--rl-lr", type=float, default=1e-4, help="learning rate")
    rl.add_argument("--rl-sigma", type=float, default=0.05, help="exploration std (fraction of the control range)")
    rl.add_argument("--rl-batch", type=positive_int, default=64, help="episodes per step")
    recap = p.add_argument_group("RECAP rollouts (kind: recap; tasks of generator.episodes_per_task)")
    add_backend(recap, "one task per batch of a stage's episodes")
    libero = p.add_argument_group("LIBERO")
    libero.add_argument("--data", metavar="DIR", help="folder of *_demo.hdf5 files (overrides training.data)")
    libero.add_argument("--sweep", action="store_true", help="grid sweep over training.sweep; writes a ranked table")
    add_quiet(p)
    return p


def train(config, *, out: str | os.PathLike | None = None, seed: int | None = None, resume: bool = False,
          overwrite: bool = False, epochs: int | None = None, workers: int | None = None, progress: bool = True,
          evaluate: bool = True, verbose: bool = True) -> RunResult:
    """Train (and evaluate) the continuous experiment of a configuration file.

    Parameters
    ----------
    config : str, PathLike, dict or trc.experiment.Experiment
        A YAML file, its content as a mapping, or a parsed experiment.
    out : path-like, optional
        Run folder; default ``runs/<problem name>``.
    seed : int, optional
        Overrides ``training.seed``.
    resume : bool
        Continue from ``<out>/checkpoint.pt``.
    overwrite : bool
        Start afresh even if ``<out>`` holds a checkpoint.
    epochs : int, optional
        Overrides ``training.epochs``.
    workers : int, optional
        Worker processes of the data generation (when the data set is missing).
    progress : bool
        Show progress bars.
    evaluate : bool
        Evaluate on the configured split and write the report after training.
    verbose : bool
        Print the summary.

    Returns
    -------
    RunResult

    Raises
    ------
    ConfigError
        On an invalid configuration, a configuration of another kind than ``continuous``, a
        run folder that holds a checkpoint while neither ``resume`` nor ``overwrite`` is set, or
        a data set made for another problem.
    CheckpointError
        If ``resume`` meets a checkpoint of another run or an unreadable one.
    DatasetError, SolverError
        From loading or generating the data set.
    """
    if isinstance(config, Experiment):
        exp = config
    elif isinstance(config, dict):
        exp = experiment_from_dict(config)
    else:
        exp = load_experiment(config)
    if exp.kind != "continuous":
        raise ConfigError(f"{exp.source} is a {exp.kind} configuration; train it with `python -m trc.train --config`")
    return run_training(exp, out=out, seed=seed, resume=resume, overwrite=overwrite, epochs=epochs, workers=workers,
                        progress=progress, evaluate=evaluate, verbose=verbose)


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    experiment = load_experiment(args.config)
    kind = experiment.problem_kind
    if args.stage in RECAP_STAGES and args.stage not in getattr(kind, "stages", ()):
        raise ConfigError(f"--stage {args.stage}: {kind.name} problems have no RECAP stages (demos, corrections, "
                          f"autonomous); those are for configurations with problem.kind: recap")
    kind.check_options("train", args, option_defaults(parser, exclude=("config",)))
    check_backend(args.backend, args.address)
    summary = kind.train(experiment, args)
    if summary:
        print(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :mod:`trc.cli`)."""
    parser = build_parser()
    return run(parser, lambda args: _command(args, parser), argv,
               interrupted="rerun with --resume to continue from the last checkpoint")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
