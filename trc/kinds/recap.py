"""RECAP on the cheap plants: three stages of experience with a value function and an
advantage-conditioned policy (Physical Intelligence, pi*0.6, arXiv 2511.14759).

=============  ===============================================================================
part           where
=============  ===============================================================================
problem        :class:`trc.recap.stages.RecapProblem` (``problem:`` with ``kind: recap``, ``plant:
               maze | continuous`` and the plant's own problem under ``base``)
generator      :class:`trc.recap.stages.RecapGeneratorConfig`: episodes of each stage, the scripted
               demonstrator, the intervention monitor
data set       one LeRobot v3 data set per stage, ``<run>/<stage>/dataset`` (:mod:`trc.lerobot`)
policy         :class:`trc.recap.policies.ConditionedMazePolicy` (the recursive maze policy) or
               :class:`trc.recap.policies.ConditionedTRC` (TinyRecursiveControl), conditioned on
               the advantage indicator, classifier-free guidance at inference
trainer        ``python -m trc.train --config C --stage demos|corrections|autonomous``
               (:func:`trc.recap.stages.run_stage`; no ``--stage``: the three in order)
evaluator      guided greedy episodes on held-out episodes (:func:`trc.recap.stages.evaluate`)
=============  ===============================================================================
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from dynamics.errors import CheckpointError, ConfigError, TRCError

from ..config import from_dict
from ..io import atomic_write_text
from ..recap.stages import (
    STAGES,
    RecapGeneratorConfig,
    RecapProblem,
    RecapRun,
    evaluate,
    load_state,
    make_episodes,
    make_policy,
    run_stage,
)
from .base import ProblemKind, load_policy_weights, register, save

__all__ = ["RecapKind"]


def _summary(metrics: dict) -> dict:
    """The metrics printed by ``trc-train`` (without the per-episode and per-task lists)."""
    return {k: v for k, v in metrics.items() if k not in ("eval_success", "value_calibration", "per_task")}


class RecapKind(ProblemKind):
    """RECAP pipelines of the maze and a continuous plant (see the module documentation)."""

    name = "recap"
    problem_kinds = ("recap",)
    model_classes = ("ConditionedMazePolicy", "ConditionedTRC")
    #: The ``--stage`` values of ``trc-train`` this kind runs.
    stages = STAGES
    options = {
        "generate": frozenset(),
        "train": frozenset({"out", "seed", "stage", "quiet", "backend", "address", "workers"}),
        "evaluate": frozenset({"out", "seed", "threads"}),
    }

    def parse_problem(self, section):
        return from_dict(RecapProblem, section, "problem")

    def parse_generator(self, section, problem):
        return from_dict(RecapGeneratorConfig, section or {}, "generator")

    def dataset_path(self, experiment) -> Path:
        out = experiment.section("training").get("out") or f"runs/{experiment.problem.name}"
        return Path(out) / "demos" / "dataset"

    def generate(self, experiment, args: argparse.Namespace) -> str:
        raise ConfigError(f"{experiment.source}: RECAP problems collect their data in their stages; run `python -m "
                          f"trc.train --config {experiment.source} --stage demos`")

    #: Runs one stage (:func:`trc.recap.stages.run_stage`; the LIBERO kind has its own).
    run_stage = staticmethod(run_stage)

    def train(self, experiment, args: argparse.Namespace) -> str:
        stage = args.stage
        if stage not in (None, "all", *STAGES):
            raise ConfigError(f"--stage {stage}: RECAP problems have the stages {', '.join(STAGES)} (or none: all "
                              "three in order)")
        selected = STAGES if stage in (None, "all") else (stage,)
        lines = []
        for s in selected:
            metrics = self.run_stage(experiment, s, out=args.out, seed=args.seed, backend=args.backend,
                                     address=args.address, workers=args.workers)
            self._write_model_file(experiment, s, args, metrics)
            if metrics.get("skipped"):
                lines.append(f"stage {s}: already finished, nothing to do")
            else:
                lines.append(f"stage {s}: " + json.dumps(_summary(metrics)))
        return "\n".join(lines)

    @staticmethod
    def _write_model_file(experiment, stage: str, args, metrics: dict) -> None:
        """``<run>/<stage>/model.pt`` (:func:`trc.load`) from the stage's ``policy.pt``, if not written yet."""
        run = RecapRun.from_experiment(experiment, out=args.out, seed=args.seed)
        path = run.stage_dir(stage) / "model.pt"
        if path.is_file():
            return
        policy = make_policy(run.problem, run.model, 0)
        load_state(policy, run.stage_dir(stage) / "policy.pt")
        save(policy, path, metadata={"beta": run.training.beta, "stage": stage, "metrics": _summary(metrics)})

    def evaluate(self, model: nn.Module, checkpoint: str, args: argparse.Namespace) -> str:
        problem = model.problem
        gen = RecapGeneratorConfig(seed=0 if args.seed is None else args.seed)
        env = make_episodes(problem, gen)
        ctx = env.sample(gen.eval_episodes, gen.seed)
        metrics = {**evaluate(model, env, ctx, float(model.metadata.get("beta", 1.0))), "checkpoint": str(checkpoint)}
        folder = Path(args.out) if args.out else Path(checkpoint).resolve().parent / "evaluation"
        atomic_write_text(folder / "report.json", json.dumps(metrics, indent=2))
        return json.dumps(_summary(metrics), indent=2)

    def model_fields(self, model) -> dict:
        if getattr(model, "problem", None) is None:
            raise ConfigError("the policy has no problem (set policy.problem); a model file needs it")
        return {"model_class": type(model).__name__, "model_config": dict(model.model_config),
                "problem": model.problem.to_dict()}

    def build_model(self, payload, source: str) -> nn.Module:
        try:
            problem = from_dict(RecapProblem, payload["problem"], "problem")
            policy = make_policy(problem, payload["model_config"], 0)
        except TRCError as exc:
            raise CheckpointError(f"{source}: its problem or policy configuration is invalid: {exc}") from exc
        load_policy_weights(policy, payload, source)
        return policy


register(RecapKind())
