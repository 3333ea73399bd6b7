"""RECAP on LIBERO: the stages against each other, the guidance and the ablations, on the same held-out episodes.

    python -m trc.train --config configs/recap_libero.yaml            # the three stages (resumable)
    python benchmarks/recap_libero.py --config configs/recap_libero.yaml --out libero_recap.md \\
        [--betas 1.5,2.5] [--ablations]

Reads the finished stages of the run (``training.out`` or ``--run``): success on the held-out
init states with 95 % Wilson intervals, mean steps to success, per-task success, the value's
calibration, and McNemar's exact test of each stage against the previous one (paired episodes).
``--betas``: the last finished stage's policy guided with other betas. ``--ablations``: on the
frames and labels of the last finished stage, BC on all frames, filtered BC (successful episodes
and interventions) and AWR, each trained from the previous stage's policy (from scratch at the
demos stage) with the same steps, schedule and seed as RECAP (:func:`trc.recap.libero.train_policy`),
evaluated on the same episodes. Every evaluation keeps one file per episode in the stage folder,
so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from trc.experiment import load_experiment
from trc.io import atomic_torch_save, atomic_write_text
from trc.recap import libero as RL
from trc.recap.stages import STAGES, load_state, mcnemar

ABLATIONS = {"bc": "BC (all frames)", "filtered": "filtered BC", "awr": "AWR"}


def _finished(run) -> list[str]:
    return [s for s in STAGES if (run.stage_dir(s) / "metrics.json").is_file()]


def _row(name: str, stage: str, m: dict) -> dict:
    lo, hi = m["success_ci95"]
    return {"name": name, "stage": stage, "success": m["success_rate"], "lo": lo, "hi": hi,
            "steps": m["mean_steps_to_success"], "eval_success": m["eval_success"], "per_task": m["per_task"]}


def _with_beta(run, beta: float):
    return dataclasses.replace(run, training=dataclasses.replace(run.training, beta=float(beta)))


def beta_rows(run, stage: str, betas: list[float], workers: int) -> list[dict]:
    """The stage's policy guided with each of ``betas`` on the held-out episodes."""
    policy = RL.load_stage_policy(run, stage)
    rows = []
    for b in betas:
        policy.beta = b
        m, _ = RL.evaluate_policy(_with_beta(run, b), policy, policy.metadata["text_embeddings"],
                                  run.stage_dir(stage) / f"evaluation_beta{b:g}", workers=workers)
        rows.append(_row(f"RECAP beta={b:g}", stage, m))
    return rows


def ablation_rows(run, stage: str, workers: int) -> list[dict]:
    """BC, filtered BC and AWR on the stage's frames and labels (see the module notes)."""
    k = STAGES.index(stage)
    fr, labels, text, table = RL.stage_training_data(run, stage)
    rows = []
    for i, (mode, name) in enumerate(ABLATIONS.items()):
        folder = run.stage_dir(stage) / f"ablation_{mode}"
        path = folder / "policy.pt"
        policy = RL.make_policy(run.model, run.training, beta=0.0)  # the unconditioned (null-token) output
        if path.is_file():
            load_state(policy, path, f"{mode} policy weights")
        else:
            if k:
                load_state(policy, run.stage_dir(STAGES[k - 1]) / "policy.pt", "policy weights")
            else:
                policy.base.set_normalization(fr.actions[:, 0], fr.arm_state)
                if policy.base.arm is not None:
                    stage_policy = RL.load_stage_policy(run, stage)
                    policy.base.arm.load_state_dict(stage_policy.base.arm.state_dict())
            gen = torch.Generator().manual_seed(RL._seed(run.training.seed, "train", 20 + k))
            torch.manual_seed(run.training.seed + i)
            RL.train_policy(policy, fr, table, mode, labels.advantage, labels.indicator, run.training, gen,
                            folder / "checkpoint.pt", {**run.fingerprint(), "ablation": mode})
            atomic_torch_save(policy.state_dict(), path)
            (folder / "checkpoint.pt").unlink(missing_ok=True)
        m, _ = RL.evaluate_policy(_with_beta(run, 0.0), policy.eval(), text, folder / "evaluation", workers=workers)
        rows.append(_row(name, stage, m))
    return rows


def report(run, rows: list[dict], stage_metrics: dict) -> str:
    lines = [f"Run `{run.out}`: {len(rows[0]['eval_success'])} held-out episodes (init states "
             f"{run.generator.init_states('eval')[0]}-{run.generator.init_states('eval')[-1]} of tasks "
             f"{run.problem.inner.task_list()}), the same for every row.", "",
             "| stage | policy | success % | 95 % interval | mean steps to success |", "|---|---|---:|---|---:|"]
    for r in rows:
        steps = "-" if r["steps"] is None else f"{r['steps']:.1f}"
        lines.append(f"| {r['stage']} | {r['name']} | {100 * r['success']:.1f} | {100 * r['lo']:.1f}-"
                     f"{100 * r['hi']:.1f} | {steps} |")
    lines += ["", "Per stage (training):", "",
              "| stage | collected episodes | their success % | mean steps | intervened episodes | interventions % "
              "of frames | positive % | value AUROC (first frame) | steps-to-go MAE | stage hours |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for s, m in stage_metrics.items():
        lines.append(f"| {s} | {m['collected_episodes']} | {100 * m['collected_success_rate']:.1f} | "
                     f"{m['collected_mean_steps']:.1f} | {m['intervened_episodes']} | "
                     f"{100 * m['intervention_fraction']:.1f} | {100 * m['positive_fraction']:.1f} | "
                     f"{fmt(m['value_auroc'], '.3f')} | {fmt(m['value_steps_to_go_mae'], '.1f')} | "
                     f"{m['seconds'] / 3600:.2f} |")
    tasks = sorted(rows[0]["per_task"], key=int)
    lines += ["", "Per task (success %):", "", "| policy | " + " | ".join(tasks) + " |",
              "|---|" + "---:|" * len(tasks)]
    for r in rows:
        lines.append(f"| {r['name']} ({r['stage']}) | " + " | ".join(
            f"{100 * r['per_task'][t]['success_rate']:.0f}" for t in tasks) + " |")
    lines += ["", "McNemar's exact test (paired held-out episodes; `a only` / `b only`: episodes only one solves):",
              "", "| a | b | a only | b only | p |", "|---|---|---:|---:|---:|"]
    main = [r for r in rows if r["name"].startswith("RECAP") and r.get("main")]
    pairs = list(zip(main[1:], main[:-1]))
    last = main[-1]
    pairs += [(last, r) for r in rows if not r.get("main") and r["stage"] == last["stage"]]
    for a, b in pairs:
        t = mcnemar(a["eval_success"], b["eval_success"])
        lines.append(f"| {a['name']} ({a['stage']}) | {b['name']} ({b['stage']}) | {t['a_only']} | {t['b_only']} | "
                     f"{t['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--run", help="run folder (default: the configuration's training.out or runs/<name>)")
    ap.add_argument("--betas", default="", help="comma-separated guidance values for the last finished stage")
    ap.add_argument("--ablations", action="store_true", help="BC, filtered BC and AWR on the last stage's data")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None, help="overrides the configuration's seeds")
    ap.add_argument("--out", required=True, help="markdown report (refused if it exists, unless --overwrite)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; choose another --out or pass --overwrite", file=sys.stderr)
        return 2
    run = RL.RecapLiberoRun.from_experiment(load_experiment(args.config), out=args.run, seed=args.seed)
    stages = _finished(run)
    if not stages:
        print(f"error: no finished stage in {run.out}; run python -m trc.train --config {args.config}", file=sys.stderr)
        return 2
    t0 = time.time()
    workers = args.workers or run.generator.workers
    metrics = {s: json.loads((run.stage_dir(s) / "metrics.json").read_text()) for s in stages}
    rows = [{**_row(f"RECAP beta={run.training.beta:g}", s, m), "main": True} for s, m in metrics.items()]
    betas = [float(b) for b in args.betas.split(",") if b.strip()]
    if betas:
        rows += beta_rows(run, stages[-1], betas, workers)
    if args.ablations:
        rows += ablation_rows(run, stages[-1], workers)
    text = report(run, rows, metrics)
    atomic_write_text(out, f"Commands: `python benchmarks/recap_libero.py {' '.join(argv or sys.argv[1:])}`; "
                           f"{time.time() - t0:.0f} s.\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
