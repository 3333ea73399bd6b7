"""Command line: train a TRC model from a configuration file, evaluate it, write a report.

Usage::

    python -m trc.train --config configs/double_integrator.yaml [--out runs/NAME] [--seed S]
                        [--resume | --overwrite] [--epochs E] [--quiet]
    torchrun --nproc_per_node=2 -m trc.train --config configs/double_integrator.yaml

If the configuration's data set (``generator.out``, default ``datasets/<problem>.h5``) does
not exist it is generated first (:func:`trc.generators.pipeline.generate`, in this process).
The run folder (default ``runs/<problem name>``) receives ``config.yaml`` (the full
configuration with defaults filled in), ``checkpoint.pt`` (after every epoch; ``--resume``
continues from it, even after ``kill -9``), ``metrics.csv``, ``metrics.jsonl``, the exported
``model.pt`` (:func:`trc.load`), and the test-split evaluation ``report.json``, ``report.md``
and ``figures/*.png``. The report summary is printed at the end.

Exit status: 0 success, 1 run-time failure (solver, data set, checkpoint), 2 bad usage or
configuration.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["main", "build_parser", "train", "RunResult", "DEFAULT_RUNS_DIR"]

#: Parent folder of run folders when ``--out`` is not given.
DEFAULT_RUNS_DIR = "runs"


@dataclass
class RunResult:
    """What :func:`train` produced.

    Attributes
    ----------
    out_dir : pathlib.Path
        The run folder.
    model : torch.nn.Module
        The trained model (best EMA weights, eval mode).
    metrics : dict
        The report (test-split metrics and training summary); empty on ranks other than 0.
    train_result : trc.training.TrainResult
    """

    out_dir: Path
    model: object
    metrics: dict
    train_result: object


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.train``."""
    p = argparse.ArgumentParser(
        prog="python -m trc.train",
        description="Train a Tiny Recursive Control model on optimal trajectories, then evaluate it.",
        epilog="Example: python -m trc.train --config configs/double_integrator.yaml --out runs/di",
    )
    p.add_argument("--config", required=True, metavar="YAML",
                   help="configuration file (problem, generator, model, training, evaluation)")
    p.add_argument("--out", metavar="DIR", help=f"run folder (default: {DEFAULT_RUNS_DIR}/<problem name>)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="seed of weights, data order and every generator (overrides training.seed)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint.pt")
    mode.add_argument("--overwrite", action="store_true", help="start afresh even if the run folder has a checkpoint")
    p.add_argument("--epochs", type=int, metavar="E", help="override training.epochs")
    p.add_argument("--workers", type=int, metavar="W", help="worker processes if the data set must be generated")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config,
    *,
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    epochs: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    evaluate: bool = True,
    verbose: bool = True,
) -> RunResult:
    """Train (and evaluate) the experiment of a configuration file.

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
        On an invalid configuration, or a run folder that holds a checkpoint while neither
        ``resume`` nor ``overwrite`` is set, or a data set made for another problem.
    CheckpointError
        If ``resume`` meets a checkpoint of another run or an unreadable one.
    DatasetError, SolverError
        From loading or generating the data set.
    """
    import torch

    from dynamics.errors import ConfigError

    from .config import dump_yaml
    from .data import load_dataset
    from .experiment import Experiment, experiment_from_dict, load_experiment
    from .models import TinyRecursiveControl, TRCConfig
    from .training import EvaluationConfig, TrainConfig, Trainer
    from .training.checkpoint import save_model_file
    from .training.distributed import init_distributed, shutdown_distributed

    if isinstance(config, Experiment):
        exp = config
    elif isinstance(config, dict):
        exp = experiment_from_dict(config)
    else:
        exp = load_experiment(config)
    train_cfg = exp.parse("training", TrainConfig)
    changes = {}
    if seed is not None:
        changes["seed"] = seed
    if epochs is not None:
        changes["epochs"] = epochs
    if changes:
        train_cfg = train_cfg.replace(**changes)
    model_cfg = exp.parse("model", TRCConfig)
    eval_cfg = exp.parse("evaluation", EvaluationConfig)
    problem = exp.problem
    out_dir = Path(out) if out is not None else Path(DEFAULT_RUNS_DIR) / problem.name
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists() and not (resume or overwrite):
        raise ConfigError(
            f"run folder {str(out_dir)!r} already holds a checkpoint; pass --resume to continue it, "
            f"--overwrite to start afresh, or choose another --out"
        )

    ctx = init_distributed(train_cfg.device)
    try:
        if train_cfg.num_threads is not None:
            torch.set_num_threads(train_cfg.num_threads)
        if overwrite and ctx.is_main and ckpt.exists():
            ckpt.unlink()
        # ---- data (generated by rank 0 if missing)
        data_path = exp.dataset_path()
        if ctx.is_main and not data_path.exists():
            if exp.generator is None:
                raise ConfigError(
                    f"data set {str(data_path)!r} does not exist and the configuration has no 'generator' section"
                )
            from .generators.pipeline import generate

            if verbose:
                print(f"data set {data_path} not found: generating it ({exp.generator.num_samples} samples, "
                      f"solver {exp.generator.solver})", file=sys.stderr)
            report = generate(problem, exp.generator, workers=workers, progress=progress)
            if verbose:
                print(report.summary(), file=sys.stderr)
        ctx.barrier()
        data = load_dataset(data_path)
        if data.problem.to_dict() != problem.to_dict():
            raise ConfigError(
                f"data set {str(data_path)!r} was generated for another problem than {exp.source!r}; regenerate it "
                f"with `python -m trc.generate --config {exp.source} --force` or set generator.out"
            )

        # ---- model and full configuration
        _seed_everything(train_cfg.seed)
        model = TinyRecursiveControl.from_problem(problem, model_cfg)
        full = exp.to_dict()
        full["model"] = model.config.to_dict()
        full["training"] = train_cfg.to_dict()
        full["evaluation"] = eval_cfg.to_dict()
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(full, out_dir / "config.yaml")

        trainer = Trainer(model, data, train_cfg, out_dir=out_dir, ctx=ctx, resume=resume, run_config=full,
                          progress=progress)
        result = trainer.fit()
        metrics: dict = {}
        if ctx.is_main:
            model = result.model.cpu()
            summary = {
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                f"best_val_{train_cfg.monitor}": result.best_metric,
                "stop_reason": result.stop_reason,
                "train_seconds": result.train_seconds,
                "world_size": ctx.world_size,
                "seed": train_cfg.seed,
            }
            save_model_file(
                out_dir / "model.pt", state_dict=model.state_dict(), model_config=model.config.to_dict(),
                problem=problem.to_dict(), metadata={"dataset": str(data_path), "training": summary, "config": full},
            )
            if evaluate:
                extra = {**summary, "dataset": str(data_path), "checkpoint": str(out_dir / "model.pt")}
                metrics = evaluate_run(model, problem, data, eval_cfg, out_dir, history=result.history, extra=extra)
                if verbose:
                    from .report import summary_text

                    print(summary_text(metrics))
                    print(f"run folder: {out_dir}")
        ctx.barrier()
        return RunResult(out_dir=out_dir, model=result.model, metrics=metrics, train_result=result)
    finally:
        shutdown_distributed()


def evaluate_run(model, problem, data, eval_cfg, out_dir, *, history=None, extra=None,
                 split: str | None = None) -> dict:
    """Evaluate ``model`` on a split of ``data`` and write the report into ``out_dir``.

    Returns
    -------
    dict
        The metrics written to ``report.json``.
    """
    from .evaluation import evaluate_model, split_data
    from .report import write_report

    split = split or eval_cfg.split
    ev = evaluate_model(
        model, problem, split_data(data, split), batch_size=eval_cfg.batch_size,
        latency_repeats=eval_cfg.latency_repeats, throughput_batch=eval_cfg.throughput_batch,
        throughput_repeats=eval_cfg.throughput_repeats, plot_samples=eval_cfg.plot_samples,
    )
    metrics = {**ev.metrics, "split": split, **(extra or {})}
    write_report(out_dir, metrics, problem=problem, samples=ev.samples, history=history)
    return metrics


def _problem_kind(argv: list[str] | None) -> str | None:
    """``problem.kind`` of the ``--config`` file of a command line (None if absent or unreadable)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config")
    known, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.config is None:
        return None
    from .config import load_yaml
    from dynamics.errors import ConfigError

    try:
        problem = load_yaml(known.config).get("problem")
    except ConfigError:
        return None
    return problem.get("kind") if isinstance(problem, dict) else None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 bad usage/config).

    Configurations of other problem kinds go to their own pipelines: ``kind: maze | sudoku`` to
    :func:`trc.discrete.train_main`, ``kind: libero`` to :func:`trc.training.bc.main`.
    """
    from .discrete import dispatch_train

    status = dispatch_train(argv)  # maze / sudoku configurations, and the REINFORCE stage --stage rl
    if status is not None:
        return status
    kind = _problem_kind(argv)
    if kind in ("maze", "sudoku"):
        from .discrete import train_main

        return train_main(argv)
    if kind == "libero":
        from .training.bc import main as bc_main

        return bc_main(argv)
    args = build_parser().parse_args(argv)
    from dynamics.errors import ConfigError, TRCError, UnknownNameError

    try:
        train(args.config, out=args.out, seed=args.seed, resume=args.resume, overwrite=args.overwrite,
              epochs=args.epochs, workers=args.workers, progress=not args.quiet)
    except (ConfigError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TRCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
