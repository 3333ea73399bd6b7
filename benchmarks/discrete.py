"""Benchmark of the discrete plants: recursive policy (K = 1, 3, 5 cycles) vs an MLP of matched size.

For one configuration (``configs/maze.yaml``, ``maze15.yaml``, ``sudoku4.yaml``, ``sudoku9.yaml``)
every variant is trained with the same data, budget and seed (supervised pre-training on the
optimal solutions, then REINFORCE), evaluated greedily on the test split, and reported as a
table (success rate, steps, optimality gap, parameters, training time) with a figure of the
training curves (supervised loss, RL return) and, for mazes, of solved test mazes.

Usage::

    python benchmarks/discrete.py --config configs/maze.yaml [--variants trc-K3,trc-K1,trc-K5,mlp]
                                  [--minutes 20] [--out benchmarks/results] [--quick]

``--quick`` trains for a few batches only (a smoke test of the script, numbers meaningless).
Writes ``<out>/<problem>.md``, ``<out>/<problem>.json`` and ``<out>/<problem>.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

import trc
from trc.experiment import load_experiment
from trc.generators.discrete import read_discrete_dataset
from trc.io import atomic_path, atomic_write_text
from trc.kinds.discrete import run_discrete_training
from trc.training.discrete import instances_from_dataset, rollout

VARIANTS = {
    "trc-K1": {"architecture": "trc", "H_cycles": 1},
    "trc-K3": {"architecture": "trc", "H_cycles": 3},
    "trc-K5": {"architecture": "trc", "H_cycles": 5},
    "mlp": {"architecture": "mlp"},
}


def table(rows: list[dict]) -> str:
    head = "| variant | params | success | within 5 % of optimal | optimality gap | steps / optimal | " \
           "success after supervised | train min |\n|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        gap = "n/a" if not np.isfinite(r["optimality_gap"]) else f"{100 * r['optimality_gap']:.1f} %"
        lines.append(
            f"| {r['variant']} | {r['parameters']:,} | {100 * r['success_rate']:.1f} % | "
            f"{100 * r['within_5pct']:.1f} % | "
            f"{gap} | {r['mean_steps']:.1f} / {r['mean_optimal_steps']:.1f} | "
            f"{100 * r['after_supervised']['success_rate']:.1f} % | {r['train_seconds'] / 60:.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def figure(exp, rows, runs: dict, path: Path, n_mazes: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maze = exp.problem.kind == "maze"
    fig, axes = plt.subplots(1, 2 + (n_mazes if maze else 0), figsize=(5 * 2 + (2.4 * n_mazes if maze else 0), 3.6),
                             gridspec_kw={"width_ratios": [2, 2] + [1] * (n_mazes if maze else 0)})
    for name, run in runs.items():
        hist = json.loads((run / "history.json").read_text())
        sup = [h["loss"] for h in hist if h["stage"] == "supervised"]
        rl = [h["mean_return"] for h in hist if h["stage"] == "rl"]
        if sup:
            axes[0].plot(np.convolve(sup, np.ones(5) / 5, mode="valid") if len(sup) > 5 else sup, label=name)
        if rl:
            axes[1].plot(rl, label=name)
    axes[0].set(title="supervised loss (TRC: action + per-cell; MLP: action)", xlabel="batch", yscale="log")
    axes[1].set(title="REINFORCE: mean episode return", xlabel="iteration")
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    if maze:
        best = max(rows, key=lambda r: (r["success_rate"], -r["mean_steps"]))
        policy = trc.load(runs[best["variant"]] / "model.pt")
        problem = policy.problem
        test = instances_from_dataset(read_discrete_dataset(exp.dataset_path()), "test")
        test = test.subset(torch.argsort(test.lengths, descending=True)[:n_mazes])  # the longest test mazes
        plant = problem.make_plant()
        ep = rollout(policy, test, problem.max_steps, greedy=True, record=True)
        for k, ax in enumerate(axes[2:]):
            walls, goal, _ = plant.unpack(test.x0[k:k + 1])
            ax.imshow(walls[0].numpy(), cmap="Greys", vmin=0, vmax=1.5)
            cells = [plant.unpack(x[k:k + 1])[2][0].tolist() for x in ep["x"][: int(ep["steps"][k])]]
            cells.append(plant.unpack(test.x0[k:k + 1])[1][0].tolist() if ep["success"][k] else cells[-1])
            cells = np.array(cells)
            ax.plot(cells[:, 1], cells[:, 0], "-", color="tab:red", lw=2)
            ax.plot(*cells[0, ::-1], "o", color="tab:blue")
            ax.plot(goal[0, 1], goal[0, 0], "*", color="tab:green", ms=12)
            ok = "solved" if ep["success"][k] else "failed"
            ax.set_title(f"{ok}: {int(ep['steps'][k])} / {int(test.lengths[k])} steps", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[2].set_ylabel(f"{best['variant']} on the longest test mazes", fontsize=7)
    fig.suptitle(f"{exp.problem.name}: recursive policy vs MLP")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--variants", default="trc-K3,trc-K1,trc-K5,mlp")
    p.add_argument("--minutes", type=float, help="time budget per variant (default: training.max_minutes)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a few batches per variant (smoke test)")
    p.add_argument("--reuse", action="store_true", help="keep finished variants of a previous run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    exp = load_experiment(args.config)
    if exp.kind != "discrete":
        raise SystemExit(f"{args.config} is a {exp.kind} configuration; this benchmark takes maze and sudoku ones")
    out = Path(args.out)
    base = exp.section("model")
    rows, runs = [], {}
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
        model = {**base, **VARIANTS[name]}
        train = {"max_minutes": args.minutes} if args.minutes else {}
        if args.quick:
            train.update(supervised_batches=3, rl_iterations=1, eval_episodes=20, max_minutes=2)
        run = out / "runs" / f"{exp.problem.name}-{name}"
        runs[name] = run
        if args.reuse and (run / "metrics.json").is_file():
            metrics = json.loads((run / "metrics.json").read_text())
        else:
            metrics = run_discrete_training(exp, seed=args.seed, out=str(run), model_overrides=model,
                                            train_overrides=train)
        rows.append({"variant": name, **metrics})
        print(table(rows[-1:]), flush=True)
    text = f"# {exp.problem.name}\n\nConfiguration `{args.config}`, seed {args.seed}, " \
           f"{rows[0]['test_instances']} test instances, greedy policies.\n\n" + table(rows)
    atomic_write_text(out / f"{exp.problem.name}.md", text)
    atomic_write_text(out / f"{exp.problem.name}.json", json.dumps(rows, indent=2))
    figure(exp, rows, runs, out / f"{exp.problem.name}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
