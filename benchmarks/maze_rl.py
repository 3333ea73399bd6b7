"""REINFORCE against RECAP on the 5 x 5 maze: the same starts, the same held-out episodes, one table.

Issue 22, goal "RL must improve, not degrade": on one maze distribution (the ``problem:`` of
``configs/maze.yaml``: 5 x 5 backtracker mazes with 30 % loops, 50-step budget) and one held-out set
of episodes, with one seed:

1. **Starts.** One policy network (the ``model:`` of ``configs/maze.yaml``: the recursive maze policy,
   H = 3 cycles), wrapped in RECAP's advantage-conditioned maze policy
   (:func:`trc.recap.stages.make_policy`; its indicator embedding starts at zero, so the wrapper
   computes exactly the wrapped network):

   * ``supervised``: trained on optimal BFS paths as ``python -m trc.train --config
     configs/maze.yaml`` trains it (:func:`trc.training.discrete.train_supervised` with the
     configuration's ``training:`` section: deep supervision over the H-cycles, the dense per-cell
     loss, random symmetries), on ``--sup-mazes`` BFS-solved mazes;
   * ``scratch``: the same network at its random initialisation.

2. **Methods, from each start**, each with the same number of environment episodes
   (``--episodes-supervised``, ``--episodes-scratch``):

   * ``REINFORCE``: :func:`trc.training.discrete.train_reinforce` with deep supervision and the
     settings fixed in ``benchmarks/results/2026-12-07-3c92e2d-reinforce.md``: from the supervised
     start the configuration's ``training:`` section (leave-one-out group baseline over 4 episodes
     per maze, KL 0.1 to the supervised policy, 10 warm-up iterations, ``rl_lr`` 1e-4, importance
     weights of the earlier cycles truncated at 1); from scratch the same with ``rl_lr`` 1e-3, no KL
     and no warm-up (the results file's from-scratch rows);
   * ``RECAP``: ``--recap-rounds`` rounds of autonomous experience from that start: the current
     policy (guided with ``training.beta``) collects episodes with :func:`trc.recap.envs.run_episodes`
     (sampling its actions, ``--collect sample``, as REINFORCE does; or greedy), the distributional
     value is retrained on every round's frames so far (:func:`trc.recap.stages.train_value`,
     Monte-Carlo targets), every frame is relabelled (n-step advantage, per-task threshold for 30 %
     positive frames, :func:`trc.recap.advantage.label_advantages`) and the advantage-conditioned
     policy is retrained on all frames (:func:`trc.recap.stages.train_policy`, mode ``recap``, the
     indicator dropped 30 % of the time). RECAP's settings are the ``training:`` section of
     ``configs/recap_maze.yaml`` (``--value-steps`` and ``--policy-steps`` override its steps per
     round).

3. **Held-out episodes**: ``--eval-episodes`` mazes (:func:`trc.recap.stages.episode_sets`, its
   ``"eval"`` set), the same for every row. No training maze is one of them or one of their 8
   flips and transpositions (the symmetries the supervised training draws), so neither the
   supervised data, nor REINFORCE's episodes (drawn from a pool, ``--pool`` mazes), nor RECAP's
   episodes (drawn from the same pool) ever hold a held-out maze.

4. **Report**: per row greedy success (:func:`trc.recap.stages.evaluate`, the policy guided with
   ``training.beta``) with its 95 % Wilson interval, mean steps to success (and the BFS optimum of the
   same episodes), environment episodes used and wall-clock seconds; McNemar's exact test (scipy's
   binomial test of the discordant pairs) of each method against its start and of REINFORCE against
   RECAP from the same start.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/maze_rl.py [--seed 0] [--out FILE.md [--overwrite]]
        [--starts supervised,scratch] [--eval-episodes 500] [--sup-mazes 4000] [--sup-batches 300]
        [--episodes-supervised 6400] [--episodes-scratch 19200] [--recap-rounds 8] [--pool 10000]
        [--rl-batch 64] [--value-steps N] [--policy-steps N] [--collect sample|greedy]

Runs with one torch thread; the same seed gives the same arrays. ``--out`` is written atomically
and an existing file is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from dynamics.errors import ConfigError
from trc.cli import run as run_cli
from trc.config import check_choice, check_int, check_seed, from_dict
from trc.experiment import experiment_from_dict
from trc.io import atomic_write_text, check_output_path
from trc.recap.advantage import label_advantages
from trc.recap.envs import run_episodes
from trc.recap.stages import (
    mcnemar,
    Frames,
    RecapRun,
    episode_sets,
    evaluate,
    frames_from_episodes,
    make_episodes,
    make_policy,
    make_value,
    predict_values,
    train_policy,
    train_value,
    value_targets,
)
from trc.training.discrete import DiscreteTrainConfig, train_reinforce, train_supervised

STARTS = ("supervised", "scratch")
COLLECT = ("sample", "greedy")
#: Overrides of ``configs/maze.yaml``'s ``training:`` for REINFORCE from scratch (the results file's
#: from-scratch rows: group baseline, lr 1e-3; no KL, its reference would be the random network).
SCRATCH_RL = {"rl_lr": 1e-3, "kl_coef": 0.0, "rl_warmup": 0}
_PURPOSE = {"supervised_mazes": 1, "pool": 2, "init": 3, "supervised": 4, "reinforce": 5, "recap": 6}


@dataclass
class BenchConfig:
    """Sizes of one benchmark run (command-line options of the same names).

    Attributes
    ----------
    seed : int
        Seed of everything (mazes, initial weights, training, sampling).
    starts : tuple of str
        Subset of ``("supervised", "scratch")``.
    eval_episodes : int
        Held-out mazes.
    sup_mazes : int
        BFS-solved mazes of the supervised start (``configs/maze.yaml``: 4000 training mazes).
    sup_batches : int, optional
        Supervised batches; default the configuration's ``supervised_batches``.
    episodes_supervised, episodes_scratch : int
        Environment episodes of each method from the supervised and the random start; multiples of
        ``rl_batch`` and of ``recap_rounds``.
    rl_batch : int
        REINFORCE episodes per iteration (a multiple of the configuration's ``rl_group``).
    recap_rounds : int
        RECAP rounds (collect, value, relabel, policy) per start.
    pool : int
        Training mazes REINFORCE and RECAP draw their episodes from (none held out).
    value_steps, policy_steps : int, optional
        RECAP gradient steps per round; default ``configs/recap_maze.yaml``'s.
    collect : {"sample", "greedy"}
        How RECAP's policy acts when it collects.
    maze_config, recap_config : str
        The two configuration files.
    """

    seed: int = 0
    starts: tuple = STARTS
    eval_episodes: int = 500
    sup_mazes: int = 4000
    sup_batches: int | None = None
    episodes_supervised: int = 6400
    episodes_scratch: int = 19200
    rl_batch: int = 64
    recap_rounds: int = 8
    pool: int = 10000
    value_steps: int | None = None
    policy_steps: int | None = None
    collect: str = "sample"
    maze_config: str = "configs/maze.yaml"
    recap_config: str = "configs/recap_maze.yaml"

    def __post_init__(self):
        check_seed(self.seed, "--seed")
        self.starts = tuple(self.starts)
        if not self.starts or len(set(self.starts)) != len(self.starts):
            raise ConfigError(f"--starts must name distinct starts of {list(STARTS)}, got {list(self.starts)}")
        for s in self.starts:
            check_choice(s, "--starts", STARTS)
        check_choice(self.collect, "--collect", COLLECT)
        for key in ("eval_episodes", "sup_mazes", "rl_batch", "recap_rounds", "pool"):
            check_int(getattr(self, key), f"--{key.replace('_', '-')}", 1)
        for key in ("sup_batches", "value_steps", "policy_steps"):
            if getattr(self, key) is not None:
                check_int(getattr(self, key), f"--{key.replace('_', '-')}", 1)
        for key in ("episodes_supervised", "episodes_scratch"):
            n = check_int(getattr(self, key), f"--{key.replace('_', '-')}", 1)
            for div, what in ((self.rl_batch, "--rl-batch"), (self.recap_rounds, "--recap-rounds")):
                if n % div:
                    raise ConfigError(f"--{key.replace('_', '-')} must be a multiple of {what} = {div} (whole "
                                      f"REINFORCE iterations, equal RECAP rounds), got {n}")


def _seed(base: int, purpose: str, *extra: int) -> int:
    return int(np.random.SeedSequence([base, _PURPOSE[purpose], *extra]).generate_state(1, np.uint32)[0])


def _read_yaml(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"configuration {path!r} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration {path!r} must be a mapping of sections, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------- statistics
# ---------------------------------------------------------------------------- mazes
def symmetric_states(plant, x0: torch.Tensor) -> torch.Tensor:
    """The 8 flips and transpositions of square maze states (4 flips if not square).

    Parameters
    ----------
    plant : dynamics.maze.Maze
    x0 : Tensor, shape ``(batch, state_dim)``

    Returns
    -------
    Tensor, shape ``(8 * batch, state_dim)`` (``4 * batch`` for a non-square maze)
        Every image of every state; the identity first.
    """
    walls, goal, agent = plant.unpack(x0)
    H, W = plant.height, plant.width
    out = []
    for transpose in ((False, True) if H == W else (False,)):
        for flip_ud in (False, True):
            for flip_lr in (False, True):
                w, g, a = walls, goal.clone(), agent.clone()
                if flip_lr:
                    w = w.flip(2)
                    g[:, 1], a[:, 1] = W - 1 - g[:, 1], W - 1 - a[:, 1]
                if flip_ud:
                    w = w.flip(1)
                    g[:, 0], a[:, 0] = H - 1 - g[:, 0], H - 1 - a[:, 0]
                if transpose:
                    w, g, a = w.transpose(1, 2), g.flip(1), a.flip(1)
                out.append(plant.pack(w, g, a))
    return torch.cat(out)


def _pool_draw(pool: dict, idx: np.ndarray) -> dict:
    """Episodes ``idx`` of a pool (a ``MazeEpisodes.sample`` dict)."""
    return {"x0": pool["x0"][torch.as_tensor(idx)], "inst": pool["inst"].subset(idx)}


@dataclass
class Setup:
    """Everything the rows share: the RECAP run (problem, model, RECAP settings), its episode adapter,
    the held-out episodes, the supervised mazes, the training pool and the maze ``training:``."""

    run: RecapRun
    env: object
    held_out: dict
    supervised_mazes: dict
    pool: dict
    maze_training: dict


def make_setup(cfg: BenchConfig) -> Setup:
    """Parse both configurations and draw the held-out, supervised and pool mazes (disjoint).

    Raises
    ------
    ConfigError
        On an unreadable or invalid configuration, or sizes the configurations reject.
    DatasetError
        If the maze distribution cannot give the mazes asked for outside the held-out ones.
    """
    maze, recap = _read_yaml(cfg.maze_config), _read_yaml(cfg.recap_config)
    for path, data, sections in ((cfg.maze_config, maze, ("problem", "model", "training")),
                                 (cfg.recap_config, recap, ("training",))):
        missing = [s for s in sections if not isinstance(data.get(s), dict)]
        if missing:
            raise ConfigError(f"configuration {path!r} lacks the section(s) {missing}")
    base = {k: v for k, v in maze["problem"].items() if k not in ("kind", "name")}
    if maze["problem"].get("kind", "maze") != "maze":
        raise ConfigError(f"{cfg.maze_config}: problem.kind must be 'maze', got {maze['problem'].get('kind')!r}")
    training = dict(recap["training"], out=None)
    for key in ("value_steps", "policy_steps"):
        if getattr(cfg, key) is not None:
            training[key] = getattr(cfg, key)
    data = {"problem": {"kind": "recap", "name": f"{maze['problem'].get('name', 'maze')}_rl", "plant": "maze",
                        "base": base},
            # only the held-out ("eval") set of the RECAP run's episode sets is used here
            "generator": {"seed": cfg.seed, "eval_episodes": cfg.eval_episodes, "demo_episodes": 1,
                          "correction_episodes": 1, "autonomous_episodes": 1},
            "model": maze["model"], "training": training}
    run = RecapRun.from_experiment(experiment_from_dict(data, source=f"{cfg.maze_config} + {cfg.recap_config}"),
                                   seed=cfg.seed)
    maze_training = dict(maze["training"])
    # validate the REINFORCE settings of both starts now, before any work
    for start in STARTS:
        _reinforce_config(maze_training, cfg, start, 1)
    env = make_episodes(run.problem, run.generator)
    held_out = episode_sets(run, env)["eval"]
    excluded = env.keys({"x0": symmetric_states(env.plant, held_out["x0"])})
    supervised = env.sample(cfg.sup_mazes, _seed(cfg.seed, "supervised_mazes"), exclude=excluded)
    pool = env.sample(cfg.pool, _seed(cfg.seed, "pool"), exclude=excluded)
    return Setup(run, env, held_out, supervised, pool, maze_training)


def _reinforce_config(maze_training: dict, cfg: BenchConfig, start: str, iterations: int) -> DiscreteTrainConfig:
    over = {"rl_iterations": iterations, "rl_batch": cfg.rl_batch, "seed": _seed(cfg.seed, "reinforce",
                                                                                 STARTS.index(start))}
    if start == "scratch":
        over.update(SCRATCH_RL)
    return from_dict(DiscreteTrainConfig, {**maze_training, **over}, f"{cfg.maze_config} training")


# ---------------------------------------------------------------------------- starts and methods
def make_start(setup: Setup, cfg: BenchConfig, start: str):
    """The start policy (a :class:`trc.recap.policies.ConditionedMazePolicy`) and its training seconds."""
    run = setup.run
    policy = make_policy(run.problem, run.model, _seed(cfg.seed, "init"))
    t0 = time.monotonic()
    if start == "supervised":
        over = {"seed": _seed(cfg.seed, "supervised"), "rl_iterations": 0}
        if cfg.sup_batches is not None:
            over["supervised_batches"] = cfg.sup_batches
        scfg = from_dict(DiscreteTrainConfig, {**setup.maze_training, **over}, f"{cfg.maze_config} training")
        train_supervised(policy.base, setup.supervised_mazes["inst"], scfg)
    policy.eval()
    return policy, time.monotonic() - t0


def run_reinforce(setup: Setup, cfg: BenchConfig, start: str, policy, episodes: int):
    """REINFORCE with deep supervision on a copy of ``policy``; returns it and its training record."""
    rcfg = _reinforce_config(setup.maze_training, cfg, start, episodes // cfg.rl_batch)
    learner = copy.deepcopy(policy)
    t0 = time.monotonic()
    history = train_reinforce(learner.base, setup.run.problem.inner, rcfg, instance_pool=setup.pool["inst"])
    seconds = time.monotonic() - t0
    learner.eval()
    batch = [h["success"] for h in history]
    return learner, {"episodes": len(history) * rcfg.rl_batch, "seconds": seconds,
                     "iterations": len(history), "rl_lr": rcfg.rl_lr, "kl_coef": rcfg.kl_coef,
                     "rl_warmup": rcfg.rl_warmup, "baseline": rcfg.baseline, "rl_group": rcfg.rl_group,
                     "batch_success_first": batch[0] if batch else None,
                     "batch_success_last": float(np.mean(batch[-5:])) if batch else None}


def _controller(env, policy, beta: float, collect: str, gen: torch.Generator):
    if collect == "greedy":
        return lambda obs, t: env.act(policy, obs, beta)

    def act(obs, t):
        logits = policy.guided_logits(obs["observation.state"], beta)
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]

    return act


def run_recap(setup: Setup, cfg: BenchConfig, start: str, policy, episodes: int):
    """RECAP's autonomous rounds from a copy of ``policy``; returns it and its training record."""
    run, env = setup.run, setup.env
    tcfg, problem = run.training, run.problem
    learner = copy.deepcopy(policy)
    k = STARTS.index(start)
    vnet = make_value(problem, run.model, _seed(cfg.seed, "recap", k, 0), tcfg.value_hidden)
    rng = np.random.default_rng(_seed(cfg.seed, "recap", k, 1))
    collect_gen = torch.Generator().manual_seed(_seed(cfg.seed, "recap", k, 2))
    per_round, parts, rounds = episodes // cfg.recap_rounds, [], []
    scale = problem.max_steps + problem.c_fail  # the value's normalisation (trc.recap.value)
    t0 = time.monotonic()
    for r in range(cfg.recap_rounds):
        ctx = _pool_draw(setup.pool, rng.choice(len(setup.pool["x0"]), per_round,
                                                replace=per_round > len(setup.pool["x0"])))
        learner.eval()
        ep = run_episodes(env, ctx, _controller(env, learner, tcfg.beta, cfg.collect, collect_gen))
        learner.train()
        parts.append(frames_from_episodes(run, env, ep, "autonomous"))
        fr = Frames.concat(parts)
        targets = value_targets(vnet if r else None, env, fr, problem, tcfg)
        vloss = train_value(vnet, env, fr, targets, tcfg,
                            torch.Generator().manual_seed(_seed(cfg.seed, "recap", k, 10 + r)))
        labels = label_advantages(fr.rewards / scale, predict_values(vnet, env, fr), fr.episode_index,
                                  fr.task_index, fr.intervention, method=tcfg.advantage, n=tcfg.n_step,
                                  gamma=tcfg.gamma, lam=tcfg.lam, positive_fraction=tcfg.positive_fraction)
        ploss = train_policy(learner, env, fr, "recap", labels.advantage, labels.indicator, tcfg,
                             torch.Generator().manual_seed(_seed(cfg.seed, "recap", k, 100 + r)))
        rounds.append({"round": r, "episodes": per_round, "collected_success": float(ep["success"].float().mean()),
                       "frames": len(fr), "value_loss": vloss, "policy_loss": ploss,
                       "advantage_mean": labels.advantage_mean, "positive_fraction": labels.positive_fraction,
                       "seconds": time.monotonic() - t0})
    learner.eval()
    return learner, {"episodes": per_round * cfg.recap_rounds, "seconds": time.monotonic() - t0, "rounds": rounds}


def _row(start: str, method: str, metrics: dict, optimal: np.ndarray, episodes, seconds: float) -> dict:
    succ = np.asarray(metrics["eval_success"], dtype=bool)
    return {"start": start, "method": method, "success": metrics["success_rate"], "ci": metrics["success_ci95"],
            "steps": metrics["mean_steps_to_success"],
            "optimal_steps": float(optimal[succ].mean()) if succ.any() else None,
            "episodes": episodes, "seconds": seconds, "eval_success": succ.astype(int).tolist()}


def benchmark(cfg: BenchConfig, setup: Setup | None = None) -> dict:
    """Every row and test of one run (see the module notes)."""
    torch.set_num_threads(1)
    t0 = time.monotonic()
    setup = setup or make_setup(cfg)
    beta = setup.run.training.beta
    optimal = setup.held_out["inst"].lengths.numpy().astype(float)
    rows, details = [], {}
    for start in cfg.starts:
        episodes = cfg.episodes_supervised if start == "supervised" else cfg.episodes_scratch
        policy, secs = make_start(setup, cfg, start)
        rows.append(_row(start, "start", evaluate(policy, setup.env, setup.held_out, beta), optimal, 0, secs))
        learner, info = run_reinforce(setup, cfg, start, policy, episodes)
        rows.append(_row(start, "REINFORCE", evaluate(learner, setup.env, setup.held_out, beta), optimal,
                         info["episodes"], info["seconds"]))
        details[f"{start}/REINFORCE"] = info
        learner, info = run_recap(setup, cfg, start, policy, episodes)
        rows.append(_row(start, "RECAP", evaluate(learner, setup.env, setup.held_out, beta), optimal,
                         info["episodes"], info["seconds"]))
        details[f"{start}/RECAP"] = info
    tests = []
    for start in cfg.starts:
        got = {r["method"]: r for r in rows if r["start"] == start}
        for a, b in (("REINFORCE", "start"), ("RECAP", "start"), ("REINFORCE", "RECAP")):
            tests.append({"start": start, "a": a, "b": b,
                          **mcnemar(got[a]["eval_success"], got[b]["eval_success"])})
    return {"config": asdict(cfg), "rows": rows, "tests": tests, "details": details,
            "held_out": len(optimal), "optimal_steps": float(optimal.mean()),
            "supervised_mazes": len(setup.supervised_mazes["x0"]), "pool": len(setup.pool["x0"]),
            "recap_training": asdict(setup.run.training), "beta": beta, "seconds": time.monotonic() - t0}


# ---------------------------------------------------------------------------- report
def report(res: dict) -> str:
    """The Markdown table and tests of :func:`benchmark` output."""
    c = res["config"]
    f = lambda v, fmt="{:.2f}": "-" if v is None else fmt.format(v)
    lines = [f"# REINFORCE against RECAP on the maze (seed {c['seed']})", "",
             (f"Held-out episodes: {res['held_out']} (BFS optimum {res['optimal_steps']:.2f} steps on average); "
             f"supervised start: {res['supervised_mazes']} BFS-solved mazes; REINFORCE and RECAP draw from a pool of "
             f"{res['pool']} mazes; RECAP: {c['recap_rounds']} rounds, collecting with `{c['collect']}`, evaluated "
             f"with beta = {res['beta']:g}. Whole run: {res['seconds']:.0f} s."), "",
             ("| start | method | success % | 95 % interval | mean steps to success | BFS steps of those | "
             "episodes | seconds |"), "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['start']} | {r['method']} | {100 * r['success']:.1f} | {100 * r['ci'][0]:.1f}-"
                     f"{100 * r['ci'][1]:.1f} | {f(r['steps'])} | {f(r['optimal_steps'])} | {r['episodes']} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", ("McNemar's exact test on the paired held-out episodes (`a only` / `b only`: episodes only one "
              "solves):"), "", "| start | a | b | a only | b only | p |", "|---|---|---|---:|---:|---:|"]
    for t in res["tests"]:
        lines.append(f"| {t['start']} | {t['a']} | {t['b']} | {t['a_only']} | {t['b_only']} | {t['p_value']:.3g} |")
    lines += ["", "Training:", ""]
    for key, info in res["details"].items():
        if "rounds" in info:
            per = ", ".join(f"{100 * r['collected_success']:.1f}" for r in info["rounds"])
            lines.append(f"- {key}: collected success per round {per} %; frames {info['rounds'][-1]['frames']}; "
                         f"positive fraction {info['rounds'][-1]['positive_fraction']:.2f}.")
        else:
            lines.append(f"- {key}: {info['iterations']} iterations of {c['rl_batch']} episodes, rl_lr "
                         f"{info['rl_lr']:g}, KL {info['kl_coef']:g}, warm-up {info['rl_warmup']}, baseline "
                         f"{info['baseline']} ({info['rl_group']} per maze); batch success first "
                         f"{f(info['batch_success_first'])}, last 5 {f(info['batch_success_last'])}.")
    lines.append("")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python benchmarks/maze_rl.py", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=d.seed, help="seed of everything; the same seed gives the same arrays")
    p.add_argument("--out", help="write the Markdown report here (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="also write the results as JSON beside --out (.json)")
    p.add_argument("--starts", default=",".join(d.starts), help="comma-separated subset of supervised,scratch")
    for key in ("eval_episodes", "sup_mazes", "sup_batches", "episodes_supervised", "episodes_scratch", "rl_batch",
                "recap_rounds", "pool", "value_steps", "policy_steps"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=getattr(d, key))
    p.add_argument("--collect", default=d.collect, help="how RECAP's policy acts when collecting: sample or greedy")
    p.add_argument("--maze-config", default=d.maze_config)
    p.add_argument("--recap-config", default=d.recap_config)
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    return p


def _outputs(args) -> list:
    """The files ``--out`` asks for, checked before any work.

    Raises
    ------
    ConfigError
        If a file exists and ``--overwrite`` is not given, or cannot be written.
    """
    if args.out is None:
        if args.json or args.overwrite:
            raise ConfigError("--json and --overwrite need --out")
        return []
    paths = [Path(args.out)] + ([Path(args.out).with_suffix(".json")] if args.json else [])
    if args.json and paths[1] == paths[0]:
        raise ConfigError(f"--out {args.out!r} ends in .json; with --json the report needs another suffix (.md)")
    for path in paths:
        check_output_path(path, what="--out")
        if path.exists() and not args.overwrite:
            raise ConfigError(f"--out: {str(path)!r} already exists; refusing to replace it (pass --overwrite, or "
                              f"choose another path)")
    return paths


def _command(args) -> int:
    cfg = BenchConfig(seed=args.seed, starts=tuple(s for s in args.starts.split(",") if s),
                      **{k: getattr(args, k) for k in ("eval_episodes", "sup_mazes", "sup_batches",
                                                       "episodes_supervised", "episodes_scratch", "rl_batch",
                                                       "recap_rounds", "pool", "value_steps", "policy_steps",
                                                       "collect", "maze_config", "recap_config")})
    outputs = _outputs(args)
    setup = make_setup(cfg)
    res = benchmark(cfg, setup)
    text = report(res)
    print(text)
    if outputs:
        atomic_write_text(outputs[0], text)
        if len(outputs) > 1:
            atomic_write_text(outputs[1], json.dumps(res, indent=1))
    return 0


def main(argv=None) -> int:
    torch.set_num_threads(1)
    return run_cli(_parser(), _command, argv)


if __name__ == "__main__":
    sys.exit(main())
