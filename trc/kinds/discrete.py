"""Discrete puzzles: grid mazes and sudoku as plants, solved by search, with recursive policies.

=============  ===============================================================================
part           where
=============  ===============================================================================
problem        :class:`trc.discrete.MazeProblem`, :class:`trc.discrete.SudokuProblem`
               (``problem:`` with ``kind: maze | sudoku``)
generator      :class:`trc.discrete.DiscreteGeneratorConfig`, BFS / exact sudoku search
               (:func:`trc.generators.discrete.generate_discrete`)
data set       one HDF5 file (:func:`trc.generators.discrete.read_discrete_dataset`)
policy         :class:`trc.models.discrete.RecursivePolicy` or the MLP baseline
               (:class:`trc.models.discrete.DiscretePolicyConfig`)
trainer        supervised pre-training, then REINFORCE (:mod:`trc.training.discrete`,
               :func:`run_discrete_training`)
evaluator      greedy rollouts (:func:`trc.training.discrete.evaluate_policy`)
=============  ===============================================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from dynamics.errors import CheckpointError, ConfigError, TRCError

from ..config import from_dict
from ..discrete import KINDS, DiscreteGeneratorConfig, problem_from_dict
from ..generators.discrete import (check_discrete_output, generate_discrete, read_discrete_dataset,
                                   write_discrete_dataset)
from ..io import atomic_write_text, output_lock
from ..models.discrete import DiscretePolicyConfig, make_discrete_policy
from ..training.discrete import (DiscreteTrainConfig, evaluate_policy, instances_from_dataset, train_reinforce,
                                 train_supervised)
from .base import ProblemKind, load, load_policy_weights, register, save

__all__ = ["DiscreteKind", "run_discrete_training", "evaluate_discrete"]

log = logging.getLogger("trc.kinds.discrete")


def _load_data(experiment, progress: bool):
    """The configuration's data set, generated and written first if it is missing.

    Raises
    ------
    ConfigError
        If the data set on disk was generated for another problem.
    """
    path = experiment.dataset_path()
    if path.is_file():
        data = read_discrete_dataset(path)
        if data.problem.to_dict() != experiment.problem.to_dict():
            raise ConfigError(f"data set {str(path)!r} was generated for another problem; regenerate it "
                              f"(python -m trc.generate --config {experiment.source} --force)")
        return data
    gen = experiment.generator
    log.info("data set %s missing: generating %d instances", path, gen.num_samples)
    with output_lock(path):
        check_discrete_output(path, experiment.problem, gen.num_samples, gen.seed, gen.splits)
        data = generate_discrete(experiment.problem, gen.num_samples, gen.seed, gen.splits, progress)
        write_discrete_dataset(path, data)
    return data


def run_discrete_training(experiment, *, stage: str = "all", seed: int | None = None, out: str | None = None,
                          model_overrides: dict | None = None, train_overrides: dict | None = None,
                          init: str | None = None, progress: bool = True) -> dict:
    """Supervised pre-training, RL fine-tuning and evaluation of one discrete configuration.

    Parameters
    ----------
    experiment : trc.experiment.Experiment
        A configuration of the ``discrete`` kind.
    stage : {"all", "supervised", "rl"}
        ``"rl"`` fine-tunes the policy in ``init`` (or ``<out>/model.pt``) with REINFORCE only.
    seed : int, optional
        Overrides ``training.seed``.
    out : str, optional
        Run folder (``model.pt``, ``metrics.json``, ``history.json``).
    model_overrides, train_overrides : dict, optional
        Keys replaced in the ``model`` / ``training`` sections (benchmarks).
    init : str, optional
        Model file to start from.

    Returns
    -------
    dict
        The metrics written to ``metrics.json``.

    Raises
    ------
    ConfigError
        On an unknown stage, invalid sections, or a data set of another problem.
    CheckpointError
        If ``init`` cannot be loaded.
    """
    if stage not in ("all", "supervised", "rl"):
        raise ConfigError(f"stage must be 'all', 'supervised' or 'rl', got {stage!r}")
    problem = experiment.problem
    tcfg = from_dict(DiscreteTrainConfig, {**experiment.section("training"), **(train_overrides or {})}, "training")
    if seed is not None:
        tcfg.seed = int(seed)
    mcfg = from_dict(DiscretePolicyConfig, {**experiment.section("model"), **(model_overrides or {})}, "model")
    run_dir = Path(out or tcfg.out or f"runs/{problem.name}")
    if init is not None or stage == "rl":
        policy = load(init or run_dir / "model.pt")
        if policy.problem.to_dict() != problem.to_dict():
            raise CheckpointError(f"model file {str(init or run_dir / 'model.pt')!r} was trained for another problem "
                                  f"than {experiment.source!r}")
    else:
        policy = make_discrete_policy(problem.make_plant(), mcfg)
        policy.problem = problem
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    start = time.monotonic()
    deadline = start + 60 * tcfg.max_minutes
    data = _load_data(experiment, progress)
    train = instances_from_dataset(data, "train")
    test = instances_from_dataset(data, "test")
    if len(test) > tcfg.eval_episodes:
        test = test.subset(torch.arange(tcfg.eval_episodes))
    run_dir.mkdir(parents=True, exist_ok=True)
    history: list = []
    if stage in ("all", "supervised"):
        train_supervised(policy, train, tcfg, deadline, history)
    after_supervised = evaluate_policy(policy, problem, test)
    log.info("after supervised: %s", after_supervised)
    if stage in ("all", "rl") and tcfg.rl_iterations > 0:
        pool = train if problem.kind == "sudoku" else None
        train_reinforce(policy, problem, tcfg, deadline, history, instance_pool=pool)
    metrics = evaluate_policy(policy, problem, test)
    metrics.update({
        "problem": problem.name, "kind": problem.kind, "architecture": policy.config.architecture,
        "H_cycles": policy.config.H_cycles, "stage": stage, "train_seconds": time.monotonic() - start,
        "after_supervised": after_supervised, "test_instances": len(test), "seed": tcfg.seed,
    })
    save(policy, run_dir / "model.pt", metadata={"metrics": metrics, "dataset": str(experiment.dataset_path())})
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(run_dir / "history.json", json.dumps(history))
    return metrics


def evaluate_discrete(policy: nn.Module, checkpoint: str, *, data: str | None = None, out: str | None = None,
                      split: str | None = None) -> dict:
    """Greedy evaluation of a discrete policy on a split of a data set; writes ``report.json`` and ``report.md``.

    Parameters
    ----------
    policy : torch.nn.Module
        A loaded discrete policy (:func:`trc.load`).
    checkpoint : str
        Its model file (the default report folder is ``<its folder>/evaluation``).
    data : str, optional
        Data set; default the one recorded in the model file.
    out : str, optional
        Report folder.
    split : {"train", "val", "test"}, optional
        Default ``test``.

    Returns
    -------
    dict
        The metrics of :func:`trc.training.discrete.evaluate_policy`, with the split and paths.

    Raises
    ------
    ConfigError
        If no data set is given or recorded.
    CheckpointError
        If the data set's problem is not the policy's.
    """
    data_path = data if data is not None else policy.metadata.get("dataset")
    if data_path is None:
        raise ConfigError(f"model file {checkpoint!r} does not record its data set; pass --data")
    dataset = read_discrete_dataset(data_path)
    if dataset.problem.to_dict() != policy.problem.to_dict():
        raise CheckpointError(f"model {checkpoint!r} was trained for problem {policy.problem.name!r}; data set "
                              f"{str(data_path)!r} holds {dataset.problem.name!r} instances of other settings")
    split = split or "test"
    metrics = {**evaluate_policy(policy, policy.problem, instances_from_dataset(dataset, split)),
               "split": split, "checkpoint": str(checkpoint), "dataset": str(data_path)}
    folder = Path(out) if out is not None else Path(checkpoint).resolve().parent / "evaluation"
    atomic_write_text(folder / "report.json", json.dumps(metrics, indent=2))
    rows = [f"# Evaluation of {checkpoint}", "", f"Greedy rollouts on the {split} split of {data_path}.", "",
            "| metric | value |", "|---|---:|"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                                               for k, v in metrics.items()]
    atomic_write_text(folder / "report.md", "\n".join(rows) + "\n")
    metrics["report"] = str(folder / "report.md")
    return metrics


class DiscreteKind(ProblemKind):
    """Grid mazes and sudoku (see the module documentation)."""

    name = "discrete"
    problem_kinds = KINDS
    model_classes = ("RecursivePolicy", "MLPPolicy")
    options = {
        "generate": frozenset({"num_samples", "seed", "out", "force", "quiet"}),
        "train": frozenset({"out", "seed", "stage", "init", "quiet"}),
        "evaluate": frozenset({"data", "out", "split", "seed", "threads"}),
    }

    def parse_problem(self, section):
        return problem_from_dict(section, "problem")

    def parse_generator(self, section, problem):
        return from_dict(DiscreteGeneratorConfig, section or {}, "generator")

    def dataset_path(self, experiment) -> Path:
        return experiment.generator.output_path(experiment.problem)

    def generate(self, experiment, args: argparse.Namespace) -> str:
        gen = experiment.generator
        num = gen.num_samples if args.num_samples is None else args.num_samples
        seed = gen.seed if args.seed is None else args.seed
        out = args.out or experiment.dataset_path()
        t0 = time.perf_counter()
        with output_lock(out):  # checked before the instances are generated, held until written
            check_discrete_output(out, experiment.problem, num, seed, gen.splits, force=args.force)
            data = generate_discrete(experiment.problem, num, seed, gen.splits, progress=not args.quiet)
            write_discrete_dataset(out, data, force=args.force)
        return (f"problem      {experiment.problem.name} ({experiment.problem.kind}, solver {data.solver})\n"
                f"samples      {data.num_samples} stored\n"
                f"time         {time.perf_counter() - t0:.2f} s\n"
                f"output       {out}")

    def train(self, experiment, args: argparse.Namespace) -> str:
        metrics = run_discrete_training(experiment, stage=args.stage or "all", seed=args.seed, out=args.out,
                                        init=args.init, progress=not args.quiet)
        return json.dumps({k: v for k, v in metrics.items() if k != "after_supervised"}, indent=2)

    def evaluate(self, model, checkpoint, args: argparse.Namespace) -> str:
        metrics = evaluate_discrete(model, str(checkpoint), data=args.data, out=args.out, split=args.split)
        return json.dumps(metrics, indent=2)

    def model_fields(self, model) -> dict:
        if model.problem is None:
            raise ConfigError("the policy has no problem (set policy.problem); a model file needs it")
        return {"model_class": type(model).__name__, "model_config": model.config.to_dict(),
                "problem": model.problem.to_dict()}

    def build_model(self, payload, source: str) -> nn.Module:
        try:
            problem = problem_from_dict(payload["problem"])
            policy = make_discrete_policy(problem.make_plant(), payload["model_config"])
        except TRCError as exc:
            raise CheckpointError(f"{source}: its problem or policy configuration is invalid: {exc}") from exc
        load_policy_weights(policy, payload, source)
        policy.problem = problem
        return policy


register(DiscreteKind())
