"""Benchmark of RECAP on the cheap plants: each stage against BC, filtered BC and AWR on the same data.

For each configuration (``configs/recap_maze.yaml``, ``configs/recap_double_integrator.yaml``):

1. the three RECAP stages (:func:`trc.recap.stages.run_stage`; resumable, a finished stage is
   reused) in ``<work>/<problem>/recap``;
2. on the same held-out episodes (never used for training or corrections), per stage:

   * RECAP, the stage's policy guided with ``beta`` in {1, 1.5, 2.5};
   * BC on all the stage's data (demos and, later, corrections and autonomous episodes; null
     token), filtered BC (frames of successful episodes plus interventions), AWR (``exp(A / T)``
     weights, ``A`` the stage's advantages, the ones RECAP's indicator thresholds) and AWR with
     its own estimator, "AWR (TD(lambda))" (``A = G^lambda - V``, the TD(lambda) return of the
     stage's value minus the value, ``training.lam``; Peng et al., arXiv 1910.00177, sec. 3), each
     trained like RECAP: the same steps, seed and schedule, fine-tuned from its own previous stage;
   * at the demos stage, BC on the mixed demos is the BC row; BC on optimal demos uses the
     expert (BFS / LQR) on the same demo episodes;

3. 95 % Wilson intervals, McNemar's exact test on the paired episodes (each RECAP stage against
   the previous one, RECAP against filtered BC and AWR, RECAP against BC on the mixed demos), and
   the goal "RECAP closes at least half the gap between BC on the mixed demos and BC on the
   optimal demos", shown met or not met.

Usage::

    python benchmarks/recap_pipeline.py [--configs configs/recap_maze.yaml,configs/recap_double_integrator.yaml]
                               [--work runs/bench_recap] [--seed 0] [--out FILE.md] [--quick]

``--quick`` shrinks every run (a smoke test of the script; numbers meaningless). The report is
printed and, with ``--out``, written (Markdown, and the same numbers as JSON beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from trc.experiment import experiment_from_dict
from trc.io import atomic_write_text
from trc.recap.advantage import gae_advantages
from trc.recap.envs import run_episodes
from trc.recap.stages import (
    mcnemar,
    STAGES,
    RecapRun,
    episode_sets,
    evaluate,
    frames_from_episodes,
    load_state,
    make_episodes,
    make_policy,
    make_value,
    predict_values,
    run_stage,
    stage_training_data,
    train_policy,
)

DEFAULT_CONFIGS = ("configs/recap_maze.yaml", "configs/recap_double_integrator.yaml")
BETAS = (1.0, 1.5, 2.5)
ABLATIONS = ("bc", "filtered", "awr", "awr_lambda")
NAMES = {"filtered": "filtered BC", "awr": "AWR", "awr_lambda": "AWR (TD(lambda))"}


def gap_closed(bc_mixed: float, bc_optimal: float, recap: float, higher_is_better: bool = True) -> float | None:
    """Fraction of the gap between BC on the mixed and on the optimal demos that RECAP closes
    (None when BC on the optimal demos is not better than on the mixed ones). With
    ``higher_is_better=False`` (mean steps to success) the signs are reversed."""
    sign = 1.0 if higher_is_better else -1.0
    gap = sign * (bc_optimal - bc_mixed)
    return None if gap <= 0 else sign * (recap - bc_mixed) / gap


def _quick(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    data["generator"].update(demo_episodes=24, correction_episodes=24, autonomous_episodes=24, eval_episodes=24)
    data["training"].update(value_steps=10, policy_steps=10, batch_size=16, checkpoint_every=5)
    return data


def _row(name, stage, m) -> dict:
    return {"method": name, "stage": stage, "success": m["success_rate"], "ci": m["success_ci95"],
            "steps": m["mean_steps_to_success"], "eval_success": m["eval_success"]}


def bench_config(path: str, work: Path, seed: int, quick: bool) -> dict:
    """Every row of one configuration (see the module notes)."""
    data = yaml.safe_load(Path(path).read_text())
    if quick:
        data = _quick(data)
    exp = experiment_from_dict(data, source=path)
    out = work / exp.problem.name
    t0 = time.monotonic()
    recap = {s: run_stage(exp, s, out=out / "recap", seed=seed) for s in STAGES}
    t_recap = sum(m["seconds"] for m in recap.values() if "seconds" in m)
    run = RecapRun.from_experiment(exp, out=out / "recap", seed=seed)
    env = make_episodes(run.problem, run.generator)
    episodes = episode_sets(run, env)
    cfg = run.training
    rows, prev = [], {}
    for k, stage in enumerate(STAGES):
        policy = make_policy(run.problem, run.model, 0)
        load_state(policy, run.stage_dir(stage) / "policy.pt", "policy weights")
        for beta in BETAS:
            rows.append(_row(f"RECAP beta={beta:g}", stage, evaluate(policy, env, episodes["eval"], beta)))
        fr, labels = stage_training_data(run, env, stage)
        vnet = make_value(run.problem, run.model, 0, cfg.value_hidden)
        load_state(vnet, run.stage_dir(stage) / "value.pt", "value weights")
        adv_lambda = gae_advantages(fr.rewards / (run.problem.max_steps + run.problem.c_fail),
                                    predict_values(vnet, env, fr), fr.episode_index, cfg.gamma, cfg.lam)
        for mode in ABLATIONS:
            pol = make_policy(run.problem, run.model, int(np.random.SeedSequence([seed, 99, k]).generate_state(1)[0]))
            if mode in prev and cfg.finetune:
                pol.load_state_dict(prev[mode])
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 7, k]).generate_state(1)[0]))
            adv = adv_lambda if mode == "awr_lambda" else labels.advantage
            train_policy(pol, env, fr, "awr" if mode == "awr_lambda" else mode, adv, labels.indicator, cfg, gen)
            prev[mode] = pol.state_dict()
            name = NAMES.get(mode, "BC (all data)" if k else "BC (mixed demos)")
            rows.append(_row(name, stage, evaluate(pol, env, episodes["eval"], 0.0)))
    # BC on optimal demos: the expert on the same demo episodes
    ctx = episodes["demos"]
    expert = run_episodes(env, ctx, lambda obs, t: env.expert(obs["observation.state"], ctx))
    fr_opt = frames_from_episodes(run, env, expert)
    pol = make_policy(run.problem, run.model, int(np.random.SeedSequence([seed, 99, 0]).generate_state(1)[0]))
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 7, 0]).generate_state(1)[0]))
    zeros = np.zeros(len(fr_opt))
    train_policy(pol, env, fr_opt, "bc", zeros, zeros.astype(bool), cfg, gen)
    rows.append(_row("BC (optimal demos)", "demos", evaluate(pol, env, episodes["eval"], 0.0)))
    return {"config": path, "problem": exp.problem.name, "plant": run.problem.plant, "rows": rows,
            "recap": {s: {k: v for k, v in m.items() if k != "eval_success"} for s, m in recap.items()},
            "recap_pipeline_seconds": t_recap, "seconds": time.monotonic() - t0,
            "expert_success": float(expert["success"].float().mean()),
            "expert_steps": float(expert["lengths"][expert["success"]].float().mean())}


def _find(rows, method, stage):
    return next(r for r in rows if r["method"] == method and r["stage"] == stage)


def report(results: list, seed: int, quick: bool) -> str:
    """The Markdown report of :func:`bench_config` results."""
    lines = [f"# RECAP on the cheap plants (seed {seed}{', --quick: numbers meaningless' if quick else ''})", ""]
    for res in results:
        rows = res["rows"]
        n = len(rows[0]["eval_success"])
        lines += [f"## {res['problem']} ({res['config']})", "",
                  f"Held-out episodes: {n}. Scripted expert on the demo episodes: "
                  f"{100 * res['expert_success']:.1f} % success, {res['expert_steps']:.2f} steps. RECAP pipeline "
                  f"(3 stages): {res['recap_pipeline_seconds']:.0f} s; whole benchmark of this plant: "
                  f"{res['seconds']:.0f} s.", "",
                  "| stage | method | success % | 95 % interval | mean steps to success |",
                  "|---|---|---:|---|---:|"]
        for r in rows:
            steps = "-" if r["steps"] is None else f"{r['steps']:.2f}"
            lines.append(f"| {r['stage']} | {r['method']} | {100 * r['success']:.1f} | "
                         f"{100 * r['ci'][0]:.1f}-{100 * r['ci'][1]:.1f} | {steps} |")
        lines += ["", "RECAP per stage (training): ", "",
                  "| stage | collected episodes | their success % | interventions % of frames | advantage_mean | "
                  "value_loss | positive % | value AUROC (held out, first frame) | value steps-to-go MAE |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        fmt = lambda v, spec: "-" if v is None else format(v, spec)
        for s, m in res["recap"].items():
            lines.append(f"| {s} | {m['collected_episodes']} | {100 * m['collected_success_rate']:.1f} | "
                         f"{100 * m['intervention_fraction']:.1f} | {m['advantage_mean']:.4f} | "
                         f"{m['value_loss']:.3f} | {100 * m['positive_fraction']:.1f} | "
                         f"{fmt(m.get('value_auroc'), '.3f')} | {fmt(m.get('value_steps_to_go_mae'), '.2f')} |")
        lines += ["", "McNemar's exact test (paired held-out episodes; `a only` / `b only`: episodes only one "
                  "solves):", "", "| a | b | a only | b only | p |", "|---|---|---:|---:|---:|"]
        pairs = [(("RECAP beta=1", STAGES[i + 1]), ("RECAP beta=1", STAGES[i])) for i in range(len(STAGES) - 1)]
        last = STAGES[-1]
        pairs += [(("RECAP beta=1", last), (m, last)) for m in ("filtered BC", "AWR", "AWR (TD(lambda))",
                                                                  "BC (all data)")]
        pairs += [(("RECAP beta=1", last), ("BC (mixed demos)", "demos"))]
        for (ma, sa), (mb, sb) in pairs:
            t = mcnemar(_find(rows, ma, sa)["eval_success"], _find(rows, mb, sb)["eval_success"])
            lines.append(f"| {ma} ({sa}) | {mb} ({sb}) | {t['a_only']} | {t['b_only']} | {t['p_value']:.3g} |")
        mixed_row, opt_row = _find(rows, "BC (mixed demos)", "demos"), _find(rows, "BC (optimal demos)", "demos")
        best = max((r for r in rows if r["method"].startswith("RECAP") and r["stage"] == last),
                   key=lambda r: (r["success"], -(r["steps"] or np.inf)))
        candidates = [_find(rows, "RECAP beta=1", last)] + ([best] if best["method"] != "RECAP beta=1" else [])
        for key, what, higher in (("success", "success", True), ("steps", "mean steps to success", False)):
            mixed, opt = mixed_row[key], opt_row[key]
            for r in candidates:
                if mixed is None or opt is None or r[key] is None:
                    verdict = "undefined (a method never succeeds)"
                else:
                    frac = gap_closed(mixed, opt, r[key], higher)
                    fmt = (lambda v: f"{100 * v:.1f} %") if key == "success" else (lambda v: f"{v:.2f}")
                    if frac is None:
                        verdict = (f"BC on the optimal demos ({fmt(opt)}) is not better than BC on the mixed demos "
                                   f"({fmt(mixed)}): no gap to close")
                    else:
                        verdict = (f"{fmt(r[key])} closes {100 * frac:.0f} % of the gap ({fmt(mixed)} -> {fmt(opt)}): "
                                   f"goal {'MET' if frac >= 0.5 else 'NOT MET'}")
                lines += ["", f"Goal on {what} (RECAP closes >= half the gap, after stage {last}), {r['method']}: "
                          f"{verdict}."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/recap_pipeline.py", description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated RECAP configurations")
    p.add_argument("--work", default="runs/bench_recap", help="folder of the runs (resumable)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run; the same seed gives the same arrays")
    p.add_argument("--out", help="write the Markdown report here (and its JSON beside it)")
    p.add_argument("--quick", action="store_true", help="tiny runs: a smoke test, numbers meaningless")
    p.add_argument("--from-json", metavar="J1,J2", help="only rebuild the report from JSON outputs of earlier runs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work) / ("quick" if args.quick else "full")
    if args.from_json:
        results = [r for j in args.from_json.split(",") for r in json.loads(Path(j).read_text())]
    else:
        results = [bench_config(c, work, args.seed, args.quick) for c in args.configs.split(",")]
    text = report(results, args.seed, args.quick)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
