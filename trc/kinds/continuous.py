"""Continuous optimal control: plants of :mod:`dynamics`, solver data, :class:`~trc.models.TinyRecursiveControl`.

=============  ===============================================================================
part           where
=============  ===============================================================================
problem        :class:`trc.problem.Problem` (``problem:``; no ``kind`` key, or ``kind: continuous``)
generator      :class:`trc.generators.GeneratorConfig`, the solver registry
               (:func:`trc.generators.register_solver`) and :func:`trc.generators.pipeline.generate`
data set       one HDF5 file (:func:`trc.data.load_dataset`, schema in ``datasets/README.md``)
policy         :class:`trc.models.TinyRecursiveControl` (:class:`trc.models.TRCConfig`, presets)
trainer        :class:`trc.training.Trainer` (:func:`run_training`); REINFORCE fine-tuning
               (:func:`trc.training.rl.reinforce_continuous`, ``--stage rl``)
evaluator      :func:`trc.evaluation.evaluate_model` and :func:`trc.report.write_report`
=============  ===============================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from dynamics.errors import CheckpointError, ConfigError, TRCError

from .. import closed_loop
from ..config import dump_yaml, from_dict
from ..data import load_dataset
from ..evaluation import evaluate_model, split_data
from ..export.controller import load_controller
from ..generators.config import DEFAULT_DATASET_DIR, GeneratorConfig
from ..generators.pipeline import generate as generate_dataset
from ..io import atomic_write_text
from ..model_file import save_model_file
from ..models import TinyRecursiveControl, TRCConfig
from ..problem import Problem
from ..report import summary_text, write_report
from ..training import EvaluationConfig, TrainConfig, Trainer
from ..training.distributed import init_distributed, shutdown_distributed
from ..training.rl import ContinuousRLConfig, reinforce_continuous, stage_rewards
from .base import ProblemKind, load, register

__all__ = ["ContinuousKind", "RunResult", "DEFAULT_RUNS_DIR", "run_training", "evaluate_run", "check_compatible",
           "evaluate_checkpoint", "fine_tune_rl"]

log = logging.getLogger("trc.kinds.continuous")

#: Parent folder of run folders when no output folder is given.
DEFAULT_RUNS_DIR = "runs"


@dataclass
class RunResult:
    """What :func:`run_training` produced.

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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_model(path: str | os.PathLike, model: TinyRecursiveControl, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``model`` (with the problem it was built for) as a model file (:mod:`trc.model_file`)."""
    save_model_file(path, kind=ContinuousKind.name, **ContinuousKind().model_fields(model), state_dict=model.state_dict(),
                    metadata=metadata)


def run_training(exp, *, out: str | os.PathLike | None = None, seed: int | None = None, resume: bool = False,
                 overwrite: bool = False, epochs: int | None = None, workers: int | None = None,
                 progress: bool = True, evaluate: bool = True, verbose: bool = True,
                 init: str | os.PathLike | None = None) -> RunResult:
    """Train (and evaluate) a continuous experiment; see :func:`trc.train.train`.

    With ``init`` (a model file of the same plant, horizon, ``dt`` and cost; the sampling boxes
    may differ) the configuration's model starts from its weights (fine-tuning): every weight of
    the configuration's model must be in it with the same shape; weights it has beyond them are
    left out, e.g. the trajectory-error encoder of a model with ``feedback: true`` fine-tuned as
    ``feedback: false``.

    Every input is validated before the run folder is touched: a refused ``resume`` leaves
    ``config.yaml`` as it was, and ``overwrite`` removes the old checkpoint only once the data
    set, the model and the configuration have passed.

    Raises
    ------
    ConfigError
        On an invalid configuration, or a run folder that holds a checkpoint while neither
        ``resume`` nor ``overwrite`` is set, or a data set made for another problem.
    CheckpointError
        If ``resume`` meets a checkpoint of another run or an unreadable one; if ``init`` is
        unreadable, of another problem, or lacks a weight of the configuration's model.
    DatasetError, SolverError
        From loading or generating the data set.
    """
    train_cfg = exp.parse("training", TrainConfig)
    changes = {k: v for k, v in {"seed": seed, "epochs": epochs}.items() if v is not None}
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
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"run folder {str(out_dir)!r} is an existing file, not a folder; choose another --out")

    ctx = init_distributed(train_cfg.device)
    try:
        if train_cfg.num_threads is not None:
            torch.set_num_threads(train_cfg.num_threads)
        # ---- data (generated by rank 0 if missing)
        data_path = exp.dataset_path()
        if ctx.is_main and not data_path.exists():
            if exp.generator is None:
                raise ConfigError(
                    f"data set {str(data_path)!r} does not exist and the configuration has no 'generator' section"
                )
            if verbose:
                print(f"data set {data_path} not found: generating it ({exp.generator.num_samples} samples, "
                      f"solver {exp.generator.solver})", file=sys.stderr)
            report = generate_dataset(problem, exp.generator, workers=workers, progress=progress)
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
        if init is not None:
            load_initial_weights(model, init)
        full = exp.to_dict()
        full["model"] = model.config.to_dict()
        full["training"] = train_cfg.to_dict()
        full["evaluation"] = eval_cfg.to_dict()
        if init is not None:
            full["init"] = str(init)
        trainer = Trainer(model, data, train_cfg, out_dir=out_dir, ctx=ctx, resume=resume, run_config=full,
                          progress=progress)
        trainer.check_resume()  # a refused resume writes nothing
        if ctx.is_main:
            if overwrite and ckpt.exists():
                ckpt.unlink()
            out_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(full, out_dir / "config.yaml")
        ctx.barrier()
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
            save_model(out_dir / "model.pt", model,
                       metadata={"dataset": str(data_path), "training": summary, "config": full})
            if evaluate:
                extra = {**summary, "dataset": str(data_path), "checkpoint": str(out_dir / "model.pt")}
                metrics = evaluate_run(model, problem, data, eval_cfg, out_dir, history=result.history, extra=extra)
                if verbose:
                    print(summary_text(metrics))
                    print(f"run folder: {out_dir}")
        ctx.barrier()
        return RunResult(out_dir=out_dir, model=result.model, metrics=metrics, train_result=result)
    finally:
        shutdown_distributed()


def load_initial_weights(model: TinyRecursiveControl, path: str | os.PathLike) -> None:
    """Start ``model`` from the weights of the model file ``path`` (see :func:`run_training`).

    Raises
    ------
    CheckpointError
        If the file cannot be loaded, was made for another plant (parameters included), horizon,
        ``dt`` or cost, or lacks a weight of ``model`` or has it with another shape.
    """
    start = load(path)
    if not isinstance(start, TinyRecursiveControl) or start.problem_dict is None:
        raise CheckpointError(f"--init {str(path)!r} is not a TinyRecursiveControl model of a continuous problem")
    check_compatible(start.problem, model.problem, str(path), f"problem {model.problem.name!r}")
    if start.problem.plant != model.problem.plant:
        raise CheckpointError(f"--init {str(path)!r} was trained on the plant {start.problem.plant}; this problem's "
                              f"plant is {model.problem.plant}")
    weights = start.state_dict()
    own = model.state_dict()
    missing = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
    if missing:
        raise CheckpointError(f"--init {str(path)!r} has no weights of the configured model's {missing[:5]} "
                              f"({len(missing)} of {len(own)}); its model configuration differs")
    model.load_state_dict({k: weights[k] for k in own})


def evaluate_run(model, problem, data, eval_cfg, out_dir, *, history=None, extra=None,
                 split: str | None = None) -> dict:
    """Evaluate ``model`` on a split of ``data`` and write the report into ``out_dir``.

    Returns
    -------
    dict
        The metrics written to ``report.json``.
    """
    split = split or eval_cfg.split
    ev = evaluate_model(
        model, problem, split_data(data, split), batch_size=eval_cfg.batch_size,
        latency_repeats=eval_cfg.latency_repeats, throughput_batch=eval_cfg.throughput_batch,
        throughput_repeats=eval_cfg.throughput_repeats, plot_samples=eval_cfg.plot_samples,
    )
    metrics = {**ev.metrics, "split": split, **(extra or {})}
    write_report(out_dir, metrics, problem=problem, samples=ev.samples, history=history)
    return metrics


def evaluate_closed_loop(model: TinyRecursiveControl, checkpoint, args: argparse.Namespace) -> str:
    """``python -m trc.evaluate --closed-loop``: the model, its exported program if given, the saturated
    LQR and MPC on the same episodes of every perturbation case (:mod:`trc.closed_loop`); writes
    ``closed_loop.json`` and ``closed_loop.md`` into ``--out`` (default ``<checkpoint folder>/evaluation``)
    and returns the tables."""
    problem = model.problem
    cases = args.perturbation or ["nominal", "perturbed", "impulse"]
    configs = {case: closed_loop.ClosedLoopConfig(
        episodes=args.episodes, steps=args.steps, replan_every=args.replan_every or 1, perturbation=case,
        seed=0 if args.seed is None else args.seed) for case in cases}  # validates every case before running
    controllers = [closed_loop.TRCController(model)]
    if args.exported:
        controllers.append(closed_loop.ExportedTRCController(load_controller(args.exported)))
    controllers += closed_loop.baselines(problem, mpc=not args.no_mpc)
    where = {"backend": args.backend, "address": args.address, "workers": args.workers}
    results = {case: closed_loop.compare(problem, controllers, config, progress=not args.quiet, **where)
               for case, config in configs.items()}
    out_dir = Path(args.out) if args.out else Path(checkpoint).resolve().parent / "evaluation"
    settings = {"checkpoint": str(checkpoint), "episodes": args.episodes, "steps": args.steps,
                "replan_every": args.replan_every or 1, "seed": 0 if args.seed is None else args.seed,
                "exported": args.exported, "mpc": not args.no_mpc,
                "episodes_per_task": closed_loop.EPISODES_PER_TASK}
    path = closed_loop.write_report(out_dir, results, problem=problem, config=settings)
    tables = "\n\n".join(closed_loop.summary_table(r, case) for case, r in results.items())
    return f"{tables}\nreport: {path}"


def check_compatible(model_problem, data_problem, checkpoint: str, data: str) -> None:
    """Refuse a model whose plant, dimensions, horizon, ``dt`` or cost differ from the data set's.

    Raises
    ------
    CheckpointError
        Naming every mismatching property with both values.
    """
    props = {
        "plant": lambda p: p.plant.get("name"),
        "state_dim": lambda p: p.state_dim,
        "control_dim": lambda p: p.control_dim,
        "horizon": lambda p: p.horizon,
        "dt": lambda p: float(p.dt),
        "cost": lambda p: p.cost,
    }
    wrong = [(k, f(model_problem), f(data_problem)) for k, f in props.items() if f(model_problem) != f(data_problem)]
    if wrong:
        detail = ", ".join(f"{k}: model {a!r} vs data {b!r}" for k, a, b in wrong)
        raise CheckpointError(f"model {checkpoint!r} does not match data set {data!r}: {detail}")


def evaluate_checkpoint(model: TinyRecursiveControl, checkpoint: str | os.PathLike, *,
                        data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                        split: str | None = None, latency_repeats: int | None = None) -> dict:
    """Evaluate a loaded model file on a data set and write its report.

    Without ``data`` the data set the model was trained on (recorded in the model file) is
    used. The report (``report.json``, ``report.md``, ``figures/``) goes to ``out`` (default
    ``<checkpoint folder>/evaluation``).

    Returns
    -------
    dict
        The metrics written to ``report.json``, and ``report``, the path of ``report.md``.

    Raises
    ------
    CheckpointError
        A model made for another plant or other dimensions than the data set.
    DatasetError
        Unreadable data set.
    ConfigError
        No ``data`` and the model file does not record its data set.
    """
    meta = model.metadata
    data_path = data if data is not None else meta.get("dataset")
    if data_path is None:
        raise ConfigError(f"model file {str(checkpoint)!r} does not record its data set; pass --data")
    dataset = load_dataset(data_path)
    check_compatible(model.problem, dataset.problem, str(checkpoint), str(data_path))
    eval_cfg = EvaluationConfig.from_dict(((meta.get("config") or {}).get("evaluation")) or {})
    if latency_repeats is not None:
        eval_cfg = EvaluationConfig.from_dict({**eval_cfg.to_dict(), "latency_repeats": latency_repeats})
    out_dir = Path(out) if out is not None else Path(checkpoint).resolve().parent / "evaluation"
    history = None
    metrics_file = Path(checkpoint).resolve().parent / "metrics.jsonl"
    if metrics_file.is_file():
        history = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    extra = {"checkpoint": str(checkpoint), "dataset": str(data_path), **(meta.get("training") or {})}
    metrics = evaluate_run(model, dataset.problem, dataset, eval_cfg, out_dir, history=history, extra=extra,
                           split=split)
    return {**metrics, "report": str(out_dir / "report.md")}


def fine_tune_rl(exp, model: TinyRecursiveControl, run: Path, config: ContinuousRLConfig) -> dict:
    """REINFORCE fine-tuning of a trained model; writes ``<run>/model_rl.pt`` and ``rl_metrics.json``.

    The greedy cost (mean over 256 fresh instances drawn with ``[config.seed, 99]``) is measured
    before and after.

    Returns
    -------
    dict
        ``greedy_cost_before``, ``greedy_cost_after``, ``iterations`` and the problem name.
    """
    problem = exp.problem
    x0, target = (torch.as_tensor(a, dtype=torch.float32) for a in problem.sample(256, [config.seed, 99]))
    plant = problem.make_plant()

    def greedy_cost() -> float:
        with torch.no_grad():
            u = model(x0, target)
            return float(-stage_rewards(problem, plant.rollout(x0, u), u, target).sum(1).mean())

    before = greedy_cost()
    history = reinforce_continuous(model, problem, config)
    after = greedy_cost()
    metrics = {"problem": problem.name, "stage": "rl", "greedy_cost_before": before, "greedy_cost_after": after,
               "iterations": len(history), "eval_instances": 256}
    save_model(run / "model_rl.pt", model, metadata={**model.metadata, "rl": metrics})
    atomic_write_text(run / "rl_metrics.json", json.dumps({**metrics, "history": history}, indent=2))
    return metrics


class ContinuousKind(ProblemKind):
    """Continuous optimal control (see the module documentation)."""

    name = "continuous"
    problem_kinds = (None, "continuous")
    model_classes = ("TinyRecursiveControl",)
    options = {
        "generate": frozenset({"num_samples", "seed", "out", "workers", "chunk_size", "solver", "force", "quiet",
                               "backend", "address"}),
        "train": frozenset({"out", "seed", "resume", "overwrite", "epochs", "workers", "quiet", "stage", "init",
                            "rl_iterations", "rl_lr", "rl_sigma", "rl_batch"}),
        "evaluate": frozenset({"data", "out", "split", "latency_repeats", "threads", "seed", "closed_loop",
                               "episodes", "perturbation", "replan_every", "steps", "exported", "no_mpc",
                               "workers", "backend", "address", "quiet"}),
    }

    def parse_problem(self, section):
        return from_dict(Problem, {k: v for k, v in section.items() if k != "kind"}, "problem")

    def parse_generator(self, section, problem):
        return None if section is None else from_dict(GeneratorConfig, section, "generator")

    def dataset_path(self, experiment) -> Path:
        if experiment.generator is not None:
            return experiment.generator.output_path(experiment.problem)
        return Path(DEFAULT_DATASET_DIR) / f"{experiment.problem.name}.h5"

    def generate(self, experiment, args: argparse.Namespace) -> str:
        log.info("problem %r from %s", experiment.problem.name, experiment.source)
        config = experiment.generator
        overrides = {"num_samples": args.num_samples, "seed": args.seed, "chunk_size": args.chunk_size}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if args.solver is not None and (config is None or config.solver != args.solver):
            overrides.update(solver=args.solver, options={})
        if config is None:
            if "solver" not in overrides:
                raise ConfigError(f"{experiment.source} has no 'generator' section; add one or give --solver")
            config = GeneratorConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)  # re-validated by __post_init__
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            report = generate_dataset(experiment.problem, config, out=args.out, workers=args.workers,
                                      progress=not args.quiet, force=args.force,
                                      backend=getattr(args, "backend", "local"),
                                      address=getattr(args, "address", None))
        return report.summary()

    def train(self, experiment, args: argparse.Namespace) -> str:
        if args.stage == "rl":
            run = Path(args.out or Path(DEFAULT_RUNS_DIR) / experiment.problem.name)
            model = load(args.init or run / "model.pt")
            cfg = ContinuousRLConfig(iterations=args.rl_iterations, lr=args.rl_lr, sigma=args.rl_sigma,
                                     batch_size=args.rl_batch, seed=0 if args.seed is None else args.seed)
            return json.dumps(fine_tune_rl(experiment, model, run, cfg), indent=2)
        if args.stage not in (None, "all"):
            raise ConfigError(f"--stage {args.stage} applies to discrete configurations; continuous models are "
                              f"trained by `python -m trc.train --config {experiment.source}` and fine-tuned with "
                              f"--stage rl")
        run_training(experiment, out=args.out, seed=args.seed, resume=args.resume, overwrite=args.overwrite,
                     epochs=args.epochs, workers=args.workers, progress=not args.quiet, verbose=True,
                     init=args.init)
        return ""  # run_training printed the summary (on the main process only)

    def evaluate(self, model, checkpoint, args: argparse.Namespace) -> str:
        loop_options = ("perturbation", "replan_every", "steps", "exported", "no_mpc", "workers", "address")
        if not args.closed_loop:
            given = [o for o in loop_options if getattr(args, o, None) not in (None, False)]
            given += ["backend"] if getattr(args, "backend", "local") != "local" else []
            if given or args.episodes != 20:
                flags = ", ".join("--" + o.replace("_", "-") for o in given or ["episodes"])
                raise ConfigError(f"{flags}: options of --closed-loop; add --closed-loop")
        else:
            return evaluate_closed_loop(model, checkpoint, args)
        metrics = evaluate_checkpoint(model, checkpoint, data=args.data, out=args.out, split=args.split,
                                      latency_repeats=args.latency_repeats)
        return f"{summary_text(metrics)}\nreport: {metrics['report']}"

    def model_fields(self, model) -> dict:
        if model.problem_dict is None:
            raise ConfigError("the model was not built for a problem (TinyRecursiveControl.from_problem); "
                              "a model file needs the problem")
        return {"model_class": type(model).__name__, "model_config": model.config.to_dict(),
                "problem": model.problem_dict}

    def build_model(self, payload, source: str) -> nn.Module:
        try:
            problem = Problem.from_dict(payload["problem"])
            model = TinyRecursiveControl.from_problem(problem, payload["model_config"])
        except TRCError as exc:
            raise CheckpointError(f"{source}: its problem or model configuration is invalid: {exc}") from exc
        try:
            model.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{source}: the weights do not fit the model it describes: {exc}") from exc
        return model


register(ContinuousKind())
