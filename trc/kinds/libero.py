"""The LIBERO arm: a Panda arm in MuJoCo scenes, scripted demonstrations, a recursive visuomotor policy.

=============  ===============================================================================
part           where
=============  ===============================================================================
problem        :class:`trc.generators.libero_storage.LiberoProblem` (``problem:`` with
               ``kind: libero``)
generator      :class:`trc.generators.libero_expert.LiberoGeneratorConfig`, the scripted expert
               (:func:`trc.generators.libero_expert.generate`)
data set       a folder of LIBERO-layout HDF5 files, one per task
               (:func:`trc.generators.libero_storage.load_demos`)
policy         :class:`trc.models.visuomotor.VisuomotorPolicy` (learned arm dynamics for the
               feedback: :class:`dynamics.learned_arm.LearnedArmDynamics`)
trainer        behaviour cloning (:func:`trc.training.bc.train_libero`, grid :func:`~trc.training.bc.sweep`)
evaluator      closed-loop episodes in simulation (:func:`trc.evaluation_libero.evaluate`)
=============  ===============================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from torch import nn

from dynamics.errors import CheckpointError, ConfigError

from ..config import from_dict
from ..evaluation_libero import evaluate as evaluate_episodes
from ..generators.libero_expert import LiberoGeneratorConfig, generate as generate_demos
from ..generators.libero_storage import LiberoProblem
from ..io import atomic_write_text
from ..models.visuomotor import VisuomotorConfig, policy_fields, policy_from_payload
from ..training.bc import BCConfig, sweep, train_libero
from .base import ProblemKind, register, save

__all__ = ["LiberoKind"]


class LiberoKind(ProblemKind):
    """LIBERO tasks (see the module documentation)."""

    name = "libero"
    problem_kinds = ("libero",)
    model_classes = ("VisuomotorPolicy",)
    options = {
        "generate": frozenset({"num_samples", "seed", "out", "workers", "force", "quiet", "backend", "address"}),
        "train": frozenset({"out", "seed", "epochs", "data", "sweep", "overwrite", "quiet"}),
        "evaluate": frozenset({"out", "episodes", "tasks", "workers", "videos", "action_steps", "max_steps", "render",
                               "seed", "threads", "quiet", "backend", "address"}),
    }

    def parse_problem(self, section):
        return from_dict(LiberoProblem, section, "problem")

    def parse_generator(self, section, problem):
        return from_dict(LiberoGeneratorConfig, section or {}, "generator")

    def problem_dict(self, problem) -> dict:
        return dataclasses.asdict(problem)

    def dataset_path(self, experiment) -> Path:
        return Path(experiment.generator.output)

    def generate(self, experiment, args: argparse.Namespace) -> str:
        gen = experiment.generator
        if args.num_samples is not None:  # demonstrations per task
            gen = dataclasses.replace(gen, demos_per_task=args.num_samples,
                                      max_attempts_per_task=max(gen.max_attempts_per_task, 2 * args.num_samples))
        if args.workers is not None:
            gen = dataclasses.replace(gen, workers=args.workers)
        out = Path(args.out or gen.output)
        seed = 0 if args.seed is None else args.seed
        t0 = time.time()
        report = generate_demos(experiment.problem, gen, output=out, seed=seed, resume=not args.force,
                                progress=not args.quiet, backend=getattr(args, "backend", "local"),
                                address=getattr(args, "address", None))
        summary = {"seed": seed, "wall_seconds": time.time() - t0, "tasks": {str(k): v for k, v in report.items()}}
        atomic_write_text(out / "generation.json", json.dumps(summary, indent=2, default=float))
        lines = [f"problem      {experiment.problem.name} (LIBERO {experiment.problem.suite})"]
        for task, info in sorted(report.items()):
            if info.get("skipped"):
                lines.append(f"  task {task}: already generated -> {info['file']}")
            else:
                lines.append(f"  task {task}: {info['successes']} of {info['attempts']} episodes succeeded "
                             f"({info['cpu_seconds']:.0f} CPU s) -> {info['file']}")
        lines.append(f"time         {time.time() - t0:.2f} s")
        return "\n".join(lines)

    def train(self, experiment, args: argparse.Namespace) -> str:
        model_cfg = experiment.parse("model", VisuomotorConfig)
        cfg = experiment.parse("training", BCConfig)
        out = Path(args.out or Path("runs") / experiment.problem.name)
        seed = 0 if args.seed is None else args.seed
        log = (lambda *a, **k: None) if args.quiet else print
        if args.sweep:
            rows = sweep(experiment.problem, model_cfg, cfg, out / "sweep", seed=seed, data_dir=args.data, log=log)
            return f"best: {rows[0]}"
        policy, metrics = train_libero(experiment.problem, model_cfg, cfg, out, seed=seed, epochs=args.epochs,
                                       data_dir=args.data, progress=not args.quiet, log=log)
        save(policy, out / "model.pt", metadata=policy.metadata)
        return f"model file: {out / 'model.pt'}  best validation loss {metrics['best_val_loss']:.4f}"

    def evaluate(self, model, checkpoint, args: argparse.Namespace) -> str:
        report = evaluate_episodes(checkpoint, episodes=args.episodes, tasks=args.tasks, out_dir=args.out,
                                   workers=args.workers, videos=args.videos, action_steps=args.action_steps,
                                   max_steps=args.max_steps, render=args.render, progress=not args.quiet,
                                   backend=args.backend, address=args.address)
        return Path(report["out_dir"], "report.md").read_text()

    def model_fields(self, model) -> dict:
        return policy_fields(model)

    def build_model(self, payload, source: str) -> nn.Module:
        try:
            problem = self.parse_problem(payload["problem"])
        except ConfigError as exc:
            raise CheckpointError(f"{source}: its problem is invalid: {exc}") from exc
        return policy_from_payload(payload, source, problem)


register(LiberoKind())
