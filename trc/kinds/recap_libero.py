"""RECAP on LIBERO: three stages of experience for the multi-task visuomotor policy.

=============  ===============================================================================
part           where
=============  ===============================================================================
problem        :class:`trc.recap.libero.RecapLiberoProblem` (``problem:`` with ``kind:
               recap_libero`` and the LIBERO problem under ``base:``)
generator      :class:`trc.recap.libero.RecapLiberoGenerator`: init states of each stage, the
               demonstrator's noise, the intervention monitor
data set       each stage's LeRobot v3 data set, ``<run>/<stage>/dataset``
policy         :class:`trc.recap.libero.ConditionedVisuomotor`
trainer        :func:`trc.recap.libero.run_libero_stage` (``--stage demos|corrections|autonomous``)
evaluator      the held-out init states in simulation (:func:`trc.recap.libero.evaluate_policy`)
=============  ===============================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from torch import nn

from dynamics.errors import CheckpointError, ConfigError, TRCError

from ..config import from_dict
from ..io import atomic_write_text
from ..recap.libero import (
    RecapLiberoGenerator,
    RecapLiberoProblem,
    RecapLiberoRun,
    RecapLiberoTraining,
    evaluate_policy,
    load_stage_policy,
    make_policy,
    run_libero_stage,
)
from .base import load_policy_weights, register, save
from .recap import RecapKind, _summary

__all__ = ["RecapLiberoKind"]


class RecapLiberoKind(RecapKind):
    """RECAP's three stages on LIBERO (see the module documentation)."""

    name = "recap_libero"
    problem_kinds = ("recap_libero",)
    model_classes = ("ConditionedVisuomotor",)
    options = {
        "generate": frozenset(),
        "train": frozenset({"out", "seed", "stage", "quiet", "backend", "address", "workers"}),
        "evaluate": frozenset({"out", "seed", "workers", "backend", "address", "quiet"}),
    }

    def parse_problem(self, section):
        return from_dict(RecapLiberoProblem, section, "problem")

    def parse_generator(self, section, problem):
        return from_dict(RecapLiberoGenerator, section or {}, "generator")

    run_stage = staticmethod(run_libero_stage)

    @staticmethod
    def _write_model_file(experiment, stage: str, args, metrics: dict) -> None:
        """``<run>/<stage>/model.pt`` (:func:`trc.load`) from the stage's ``policy.pt``, if not written yet."""
        run = RecapLiberoRun.from_experiment(experiment, out=args.out, seed=args.seed)
        path = run.stage_dir(stage) / "model.pt"
        if not path.is_file():
            policy = load_stage_policy(run, stage)
            save(policy, path, metadata={**policy.metadata, "metrics": _summary(metrics)})

    def evaluate(self, model: nn.Module, checkpoint: str, args: argparse.Namespace) -> str:
        """The held-out init states of the model's configuration, guided with its ``beta``."""
        meta = model.metadata
        seed = {} if args.seed is None else {"seed": args.seed}
        gen = RecapLiberoGenerator(**{**meta.get("generator", {}), **seed})
        run = RecapLiberoRun(model.problem, gen, RecapLiberoTraining(**meta["training"]), model.model_config,
                             Path(checkpoint).resolve().parent)
        folder = Path(args.out) if args.out else Path(checkpoint).resolve().parent / "evaluation_model"
        metrics, _ = evaluate_policy(run, model, meta["text_embeddings"], folder / "episodes", backend=args.backend,
                                     address=args.address, workers=args.workers)
        metrics["checkpoint"] = str(checkpoint)
        atomic_write_text(folder / "report.json", json.dumps(metrics, indent=2))
        return json.dumps(_summary(metrics), indent=2)

    def model_fields(self, model) -> dict:
        if getattr(model, "problem", None) is None:
            raise ConfigError("the policy has no problem (set policy.problem); a model file needs it")
        return {"model_class": type(model).__name__,
                "model_config": {"policy": dataclasses.asdict(model.config), "model": model.model_config},
                "problem": model.problem.to_dict()}

    def build_model(self, payload, source: str) -> nn.Module:
        try:
            problem = from_dict(RecapLiberoProblem, payload["problem"], "problem")
            meta = dict(payload.get("metadata") or {})
            training = RecapLiberoTraining(**meta["training"])
            policy = make_policy(payload["model_config"]["model"], training, meta.get("beta", training.beta))
        except (TRCError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: its problem or policy configuration is invalid: {exc!r}") from exc
        load_policy_weights(policy, payload, source)
        policy.problem, policy.metadata, policy.model_config = problem, meta, payload["model_config"]["model"]
        return policy.eval()


register(RecapLiberoKind())
