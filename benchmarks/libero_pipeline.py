"""Benchmark of the LIBERO pipeline: scripted expert, demonstrations, behaviour cloning, closed loop.

Stages (each can be run alone; every README number about LIBERO comes from here):

* ``expert``   -- the scripted expert's success rate per task, from official init states
  ``0 .. N-1``, physics only (no cameras), no exploration noise; goal: >= 90 % on every
  LIBERO-Spatial task.
* ``generate`` -- ``python -m trc.generate`` equivalent on the configuration (cameras on,
  exploration noise), with CPU time.
* ``train``    -- behaviour cloning (:func:`trc.training.bc.train_libero`), with CPU time and the
  learned arm dynamics' prediction error over the chunk horizon.
* ``evaluate`` -- closed-loop success in LIBERO from the official init states; goal: >= 60 %
  average success on LIBERO-Spatial.

Usage::

    python benchmarks/libero_pipeline.py --config configs/libero_spatial.yaml --stages expert --episodes 5
    python benchmarks/libero_pipeline.py --config configs/libero_spatial.yaml --stages generate,train,evaluate \\
        --demos 20 --episodes 20 [--tasks 0 1 2] [--workers 2]

Writes ``<out>/libero.json`` and ``<out>/libero.md`` (default ``benchmarks/results``), merging
with the stages already there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

import trc
from dynamics.libero import LiberoSimulator
from trc.config import load_yaml
from trc.evaluation_libero import evaluate
from trc.experiment import experiment_from_dict
from trc.generators.libero_expert import generate, run_episode
from trc.io import atomic_write_text
from trc.models.visuomotor import VisuomotorConfig
from trc.training.bc import BCConfig, train_libero


def expert_stage(problem, episodes: int, log=print) -> dict:
    """Expert success per task (no cameras, no noise), init states ``0 .. episodes - 1``."""
    per_task = {}
    for t in problem.task_list():
        sim = LiberoSimulator(problem.suite, t, cameras=False, assets=problem.assets)
        res = [run_episode(sim, i, max_steps=problem.max_steps, seed=i) for i in range(episodes)]
        sim.close()
        k = sum(r.success for r in res)
        per_task[t] = {"instruction": sim.language, "episodes": episodes, "successes": k,
                       "success_rate": k / episodes,
                       "mean_length": float(np.mean([len(r) for r in res if r.success])) if k else None,
                       "cpu_seconds": float(sum(r.cpu_seconds for r in res))}
        log(f"expert task {t}: {k}/{episodes}  ({sim.language})")
    return {"episodes_per_task": episodes, "per_task": per_task,
            "min_success_rate": min(v["success_rate"] for v in per_task.values()),
            "mean_success_rate": float(np.mean([v["success_rate"] for v in per_task.values()]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/libero_spatial.yaml")
    p.add_argument("--stages", default="expert", help="comma-separated: expert, generate, train, evaluate")
    p.add_argument("--tasks", type=int, nargs="*", default=None)
    p.add_argument("--episodes", type=int, default=5, help="episodes per task (expert, evaluate)")
    p.add_argument("--demos", type=int, default=None, help="demonstrations per task (generate)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default=None, help="demonstration folder (default generator.output)")
    p.add_argument("--run", default="runs/libero_benchmark", help="training run folder")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    config = load_yaml(args.config)
    if args.tasks is not None:
        config["problem"]["tasks"] = list(args.tasks)
    experiment = experiment_from_dict(config, source=args.config)
    problem, gen = experiment.problem, experiment.generator
    data = args.data or gen.output
    out = Path(args.out)
    path = out / "libero.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for stage in stages:
        t0, c0 = time.time(), time.process_time()
        if stage == "expert":
            res = expert_stage(problem, args.episodes)
        elif stage == "generate":
            g = dataclasses.replace(gen, workers=args.workers, output=data,
                                    demos_per_task=args.demos or gen.demos_per_task,
                                    max_attempts_per_task=max(gen.max_attempts_per_task, args.demos or 0))
            rep = generate(problem, g, seed=args.seed)
            res = {"demos_per_task": g.demos_per_task, "per_task": rep,
                   "cpu_seconds": float(sum(r.get("cpu_seconds", 0.0) for r in rep.values()))}
        elif stage == "train":
            policy, m = train_libero(problem, experiment.parse("model", VisuomotorConfig),
                                     experiment.parse("training", BCConfig), args.run, seed=args.seed,
                                     epochs=args.epochs, data_dir=data, progress=False)
            trc.save(policy, Path(args.run) / "model.pt", metadata=policy.metadata)
            res = {k: m[k] for k in ("train_frames", "val_frames", "parameters", "best_val_loss", "best_epoch",
                                     "train_cpu_seconds", "total_cpu_seconds")}
            res["checkpoint"] = str(Path(args.run) / "model.pt")
            res["arm_dynamics"] = m["arm_dynamics"].get("validation")
        elif stage == "evaluate":
            rep = evaluate(Path(args.run) / "model.pt", episodes=args.episodes, tasks=problem.task_list(),
                           workers=args.workers, progress=False)
            res = {k: rep[k] for k in ("success_rate", "average_task_success", "wilson95", "mean_length",
                                       "cpu_seconds", "per_task", "out_dir")}
        else:
            print(f"unknown stage {stage!r}", file=sys.stderr)
            return 2
        res["wall_seconds"] = time.time() - t0
        res["main_process_cpu_seconds"] = time.process_time() - c0
        res["tasks"] = problem.task_list()
        results[stage] = res
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(results, indent=2, default=float))
    atomic_write_text(out / "libero.md", _markdown(results))
    print(_markdown(results))
    return 0


def _markdown(results: dict) -> str:
    lines = ["# LIBERO benchmark", ""]
    if "expert" in results:
        e = results["expert"]
        lines += [f"## Scripted expert ({e['episodes_per_task']} episodes per task, no cameras, no noise)", "",
                  "| task | instruction | success | mean length | CPU s |", "|---:|---|---:|---:|---:|"]
        for t, v in e["per_task"].items():
            ml = f"{v['mean_length']:.0f}" if v["mean_length"] else "-"
            lines.append(f"| {t} | {v['instruction']} | {v['successes']}/{v['episodes']} | {ml} | {v['cpu_seconds']:.0f} |")
        lines += ["", f"Mean {100 * e['mean_success_rate']:.0f} %, minimum {100 * e['min_success_rate']:.0f} % (goal >= 90 % on every task).", ""]
    if "generate" in results:
        g = results["generate"]
        lines += [f"## Demonstrations ({g['demos_per_task']} per task, cameras on)", "",
                  "| task | attempts | successes | mean length | CPU s |", "|---:|---:|---:|---:|---:|"]
        for t, v in g["per_task"].items():
            if v.get("skipped"):
                continue
            lines.append(f"| {t} | {v['attempts']} | {v['successes']} | {v['mean_length']:.0f} | {v['cpu_seconds']:.0f} |")
        lines += ["", f"Generation CPU time {g['cpu_seconds']:.0f} s (wall {g['wall_seconds']:.0f} s).", ""]
    if "train" in results:
        t = results["train"]
        lines += ["## Behaviour cloning", "",
                  f"{t['train_frames']} training frames, {t['val_frames']} validation frames, {t['parameters']:,} parameters; "
                  f"best validation loss {t['best_val_loss']:.4f} at epoch {t['best_epoch']}; CPU time "
                  f"{t['train_cpu_seconds']:.0f} s (total {t['total_cpu_seconds']:.0f} s).", ""]
        a = t.get("arm_dynamics")
        if a:
            lines += [f"Learned arm dynamics, open-loop over {a['horizon']} steps on held-out demonstrations: position "
                      f"error {', '.join(f'{v:.1f}' for v in a['position_mm'])} mm (no-motion baseline "
                      f"{a['baseline_position_mm'][-1]:.1f} mm at step {a['horizon']}).", ""]
    if "evaluate" in results:
        e = results["evaluate"]
        lo, hi = e["wilson95"]
        lines += ["## Closed loop in LIBERO", "", "| task | success | mean length |", "|---:|---:|---:|"]
        for t, v in e["per_task"].items():
            lines.append(f"| {t} | {v['successes']}/{v['episodes']} | {v['mean_length']:.0f} |")
        lines += ["", f"Average success {100 * e['average_task_success']:.1f} % (95 % interval {100 * lo:.0f}-{100 * hi:.0f} %), "
                  f"CPU time {e['cpu_seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
