"""The three RECAP stages on the cheap plants, as one resumable pipeline.

``python -m trc.train --config configs/recap_maze.yaml --stage demos|corrections|autonomous``
(or no ``--stage``: the three in order). Each stage, in the run folder ``<out>/<stage>/``:

1. collects episodes (``rollouts.npz``):

   * ``demos``: the scripted demonstrator (:mod:`trc.recap.envs`) on the demo episodes;
   * ``corrections``: the previous stage's policy (guided with ``training.beta``) on fresh
     episodes disjoint from the demos and the evaluation episodes, the expert taking over
     when the monitor fires (those frames are interventions);
   * ``autonomous``: the previous stage's policy on fresh episodes, no takeover;

2. retrains the value on the data of every stage so far (``value.pt``): RECAP's rewards
   (:mod:`trc.recap.value`), targets the two-hot normalised Monte-Carlo return (or the
   TD(lambda) return of the previous value with ``value_target: gae``);
3. relabels every frame: advantage (n-step or GAE), per-task threshold for a 30 % positive
   fraction, indicator (interventions positive) (:mod:`trc.recap.advantage`), and writes the
   stage's LeRobot v3 data set (``dataset/``, :mod:`trc.lerobot`) with the per-frame value,
   advantage and indicator and the per-episode stage and success;
4. retrains the advantage-conditioned policy on every stage's data, the indicator dropped
   (null token) ``indicator_dropout`` of the time (``policy.pt``; ``python -m trc.train`` also
   writes the model file ``model.pt``, read by :func:`trc.load`);
5. evaluates the policy, guided with ``training.beta``, on the held-out episodes (the same
   for every stage, never used for training) and writes ``metrics.json``: success with its 95 %
   Wilson interval, mean steps to success, ``advantage_mean``, ``value_loss``, and the
   calibration of the stage's value on those episodes (:func:`trc.recap.value.calibration`):
   ``value_auroc`` (AUROC of success from the value of the first frame), ``value_auroc_frames``
   (over every frame), ``value_steps_to_go_mae`` and ``value_steps_to_go_median_ae`` (steps to
   go read back from the value against the true ones, on the successful episodes), and the
   whole :class:`~trc.recap.value.ValueCalibration` as ``value_calibration``.

Training saves ``checkpoint.pt`` every ``checkpoint_every`` steps (weights, optimiser,
random-generator state): a stage killed, even with ``kill -9``, resumes where it stopped and
ends with the same weights as an uninterrupted run. A finished stage (``metrics.json``
present) is not rerun. Stages run in order; a stage whose predecessor has not finished is
refused.

Policy training modes (:func:`train_policy`, also used by ``benchmarks/recap.py``): ``recap``
(indicator-conditioned), ``bc`` (every frame, null token), ``filtered`` (frames of successful
episodes and interventions) and ``awr`` (weights ``exp(A / temperature)``, clipped; Peng et al.,
"Advantage-weighted regression", arXiv 1910.00177).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy import stats
from torch import nn

from dynamics.errors import CheckpointError, ConfigError, DatasetError, DimensionError

from .. import lerobot
from ..backends import map_ordered
from ..config import check_choice, check_int, check_real, check_seed, from_dict
from ..discrete import problem_from_dict
from ..io import atomic_path, atomic_torch_save, atomic_write_text
from ..models.config import TRCConfig
from ..models.discrete import DiscretePolicyConfig, RecursivePolicy
from ..models.trc import TinyRecursiveControl
from ..problem import Problem
from .advantage import label_advantages, lambda_returns
from .envs import ContinuousEpisodes, MazeEpisodes, Monitor, frames_of, run_episodes
from .guidance import INDICATOR_DROPOUT, NULL, drop_indicators, indicator_tokens
from .policies import (
    ConditionedMazePolicy,
    ConditionedTRC,
    ContinuousValueNet,
    MazeValueNet,
)
from .value import (
    calibration,
    discounted_returns,
    normalize_returns,
    recap_rewards,
    two_hot,
    value_loss,
)

__all__ = ["STAGES", "RecapProblem", "RecapGeneratorConfig", "RecapTrainConfig", "RecapRun", "wilson_interval",
           "mcnemar", "value_targets", "predict_values", "finished_stage", "trained", "run_stage", "load_state",
           "train_value", "train_policy",
           "evaluate", "evaluate_value", "predict_obs_values", "make_episodes", "make_policy", "make_value",
           "stage_training_data", "episode_sets", "frames_from_episodes", "Frames", "MODES"]

log = logging.getLogger("trc.recap")

STAGES = ("demos", "corrections", "autonomous")
MODES = ("recap", "bc", "filtered", "awr")
_PURPOSE = {"eval": 0, "demos": 1, "corrections": 2, "autonomous": 3, "train": 4}


# ---------------------------------------------------------------------------- configuration
@dataclass
class RecapProblem:
    """The ``problem:`` section of a RECAP configuration (``kind: recap``).

    Attributes
    ----------
    name : str
    plant : {"maze", "continuous"}
        Which cheap plant: a grid maze or a continuous regulation problem.
    base : dict
        The plant's own problem section: a maze problem (:class:`trc.discrete.MazeProblem`
        keys) or a continuous problem (:class:`trc.Problem` keys, e.g. ``task:
        double_integrator`` with a ``target_state`` box at rest).
    max_steps : int, optional
        Continuous: the episode's step budget (maze: ``base.max_steps``).
    tolerance : float, optional
        Continuous: success radius ``||x - x*||_2``; default the problem's ``tolerance``.
    c_fail : float, optional
        Failure cost in steps; default ``max_steps``.
    instruction : str
        The task text (``meta/tasks.parquet``).
    kind : "recap"
    """

    name: str
    plant: str
    base: dict = field(default_factory=dict)
    max_steps: Optional[int] = None
    tolerance: Optional[float] = None
    c_fail: Optional[float] = None
    instruction: str = "reach the goal"
    kind: str = "recap"

    def __post_init__(self):
        check_choice(self.plant, "problem.plant", ("maze", "continuous"))
        if self.kind != "recap":
            raise ConfigError(f"problem.kind must be 'recap', got {self.kind!r}")
        if not isinstance(self.base, dict):
            raise ConfigError(f"problem.base must be a mapping (the plant's problem section), got {self.base!r}")
        if self.plant == "maze":
            self.inner = problem_from_dict({"kind": "maze", "name": self.name, **self.base}, "problem.base")
            if self.max_steps not in (None, self.inner.max_steps):
                raise ConfigError(f"problem.max_steps: a maze's step budget is problem.base.max_steps "
                                  f"({self.inner.max_steps}), got {self.max_steps}")
            self.max_steps = self.inner.max_steps
        else:
            self.inner = from_dict(Problem, {"name": self.name, **self.base}, "problem.base")
            self.max_steps = check_int(30 if self.max_steps is None else self.max_steps, "problem.max_steps", 1)
            if self.tolerance is None:
                self.tolerance = float(self.inner.tolerance)
            check_real(self.tolerance, "problem.tolerance", 0.0, low_open=True)
        if self.c_fail is None:
            self.c_fail = float(self.max_steps)
        check_real(self.c_fail, "problem.c_fail", 0.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        return d


@dataclass
class RecapGeneratorConfig:
    """The ``generator:`` section: episodes of every stage and the scripted demonstrator.

    Attributes
    ----------
    seed : int
        Seed of every episode draw (``--seed`` overrides it and ``training.seed``).
    demo_episodes, correction_episodes, autonomous_episodes, eval_episodes : int
    epsilon : float
        Maze demonstrator: probability of the non-greedy move.
    habit : int, optional
        Maze demonstrator: its non-greedy move (0 up, 1 right, 2 down, 3 left); null: uniform.
    detune : float
        Continuous demonstrator: factor on ``R`` of its LQR.
    noise : float
        Continuous demonstrator: action noise, fraction of the control half range.
    patience : int
        Monitor: steps without progress before the expert takes over.
    budget : float
        Monitor: fraction of the step budget after which the expert takes over.
    episodes_per_task : int, optional
        Episodes of a stage per rollout task (``--backend``, ``--workers``: one Ray task or local
        process per task); null: one task. The split is part of the run (the demonstrator's noise
        is seeded per task), not of the backend: every backend gives the same arrays.
    """

    seed: int = 0
    demo_episodes: int = 400
    correction_episodes: int = 400
    autonomous_episodes: int = 400
    eval_episodes: int = 400
    epsilon: float = 0.5
    habit: Optional[int] = 0
    detune: float = 30.0
    noise: float = 0.3
    patience: int = 5
    budget: float = 0.6
    episodes_per_task: Optional[int] = None

    def __post_init__(self):
        check_seed(self.seed)
        if self.episodes_per_task is not None:
            check_int(self.episodes_per_task, "generator.episodes_per_task", 1)
        for key in ("demo_episodes", "correction_episodes", "autonomous_episodes", "eval_episodes", "patience"):
            check_int(getattr(self, key), f"generator.{key}", 1)
        check_real(self.epsilon, "generator.epsilon", 0.0, 1.0)
        if self.habit is not None:
            check_int(self.habit, "generator.habit (or null)", 0, 3)
        check_real(self.detune, "generator.detune", 0.0, low_open=True)
        check_real(self.noise, "generator.noise", 0.0)
        check_real(self.budget, "generator.budget", 0.0, 1.0, low_open=True)


@dataclass
class RecapTrainConfig:
    """The ``training:`` section.

    Attributes
    ----------
    seed : int
    batch_size : int
    lr : float
    value_steps, policy_steps : int
        Gradient steps per stage for the value and the policy.
    value_hidden : int
        Hidden width of the value network's MLP.
    gamma : float
        Discount of returns and advantages (1: undiscounted, as pi*0.6).
    value_target : {"mc", "gae"}
        Monte-Carlo return or TD(lambda) return of the previous stage's value.
    advantage : {"n_step", "gae"}
    n_step : int
    lam : float
        GAE / TD(lambda) lambda.
    positive_fraction : float
        Target fraction of positive frames per task (0.3).
    indicator_dropout : float
        Probability of the null token in training (0.3).
    beta : float
        Classifier-free guidance at inference (rollouts of later stages, evaluation).
    awr_temperature : float
        AWR weights ``exp(A / temperature)`` (A in normalised return units), clipped at ``awr_max_weight``.
    awr_max_weight : float
    finetune : bool
        Start each stage's networks from the previous stage's weights (else from scratch).
    checkpoint_every : int
        Gradient steps between checkpoints.
    threads : int
        ``torch.set_num_threads``.
    out : str, optional
        Run folder; default ``runs/<problem name>``.
    """

    seed: int = 0
    batch_size: int = 256
    lr: float = 2e-3
    value_steps: int = 400
    policy_steps: int = 600
    value_hidden: int = 256
    gamma: float = 1.0
    value_target: str = "mc"
    advantage: str = "n_step"
    n_step: int = 10
    lam: float = 0.95
    positive_fraction: float = 0.3
    indicator_dropout: float = INDICATOR_DROPOUT
    beta: float = 1.0
    awr_temperature: float = 0.05
    awr_max_weight: float = 20.0
    finetune: bool = True
    checkpoint_every: int = 100
    threads: int = 1
    out: Optional[str] = None

    def __post_init__(self):
        check_seed(self.seed, "training.seed")
        for key in ("batch_size", "value_steps", "policy_steps", "value_hidden", "n_step", "checkpoint_every",
                    "threads"):
            check_int(getattr(self, key), f"training.{key}", 1)
        check_real(self.lr, "training.lr", 0.0, low_open=True)
        check_real(self.gamma, "training.gamma", 0.0, 1.0, low_open=True)
        check_choice(self.value_target, "training.value_target", ("mc", "gae"))
        check_choice(self.advantage, "training.advantage", ("n_step", "gae"))
        check_real(self.lam, "training.lam", 0.0, 1.0)
        check_real(self.positive_fraction, "training.positive_fraction", 0.0, 1.0, low_open=True, high_open=True)
        check_real(self.indicator_dropout, "training.indicator_dropout", 0.0, 1.0)
        check_real(self.beta, "training.beta", 0.0)
        check_real(self.awr_temperature, "training.awr_temperature", 0.0, low_open=True)
        check_real(self.awr_max_weight, "training.awr_max_weight", 1.0)


def _seed(base: int, purpose: str, extra: int = 0) -> int:
    """An independent seed per purpose (episode draws of each stage, training) from one base seed."""
    return int(np.random.SeedSequence([base, _PURPOSE[purpose], extra]).generate_state(1, np.uint32)[0])


# ---------------------------------------------------------------------------- builders
def make_episodes(problem: RecapProblem, gen: RecapGeneratorConfig):
    """The plant's episode adapter (:mod:`trc.recap.envs`)."""
    if problem.plant == "maze":
        return MazeEpisodes(problem.inner, gen.epsilon, gen.habit)
    return ContinuousEpisodes(problem.inner, problem.max_steps, problem.tolerance, gen.detune, gen.noise)


def _model_config(problem: RecapProblem, model: dict):
    if problem.plant == "maze":
        return from_dict(DiscretePolicyConfig, model, "model")
    return TRCConfig.from_dict({"feedback": False, **model})


def make_policy(problem: RecapProblem, model: dict, seed: int) -> nn.Module:
    """The advantage-conditioned policy of the plant, initialised from ``seed``."""
    torch.manual_seed(seed)
    cfg = _model_config(problem, model)
    if problem.plant == "maze":
        policy = ConditionedMazePolicy(RecursivePolicy(problem.inner.make_plant(), cfg))
    else:
        policy = ConditionedTRC(TinyRecursiveControl.from_problem(problem.inner, cfg))
    policy.problem, policy.metadata, policy.model_config = problem, {}, dict(model)
    return policy


def make_value(problem: RecapProblem, model: dict, seed: int, value_hidden: int = 256) -> nn.Module:
    """The distributional value network of the plant, initialised from ``seed``."""
    torch.manual_seed(seed + 1)
    if problem.plant == "maze":
        return MazeValueNet(problem.inner.make_plant(), value_hidden)
    return ContinuousValueNet(problem.inner, value_hidden)


# ---------------------------------------------------------------------------- data
@dataclass
class Frames:
    """Training frames of one or more stages (numpy, episodes contiguous, global episode ids)."""

    obs: dict
    action: np.ndarray
    episode_index: np.ndarray
    task_index: np.ndarray
    intervention: np.ndarray
    rewards: np.ndarray
    success: np.ndarray  # per frame: the episode's success
    stage: np.ndarray  # per frame, index into STAGES

    def __len__(self):
        return len(self.action)

    @staticmethod
    def concat(parts: list) -> "Frames":
        offset, eps = 0, []
        for p in parts:
            eps.append(p.episode_index + offset)
            offset = int(eps[-1].max()) + 1 if len(p) else offset
        cat = lambda key: np.concatenate([getattr(p, key) for p in parts])
        return Frames({k: np.concatenate([p.obs[k] for p in parts]) for k in parts[0].obs}, cat("action"),
                      np.concatenate(eps), cat("task_index"), cat("intervention"), cat("rewards"), cat("success"),
                      cat("stage"))


def _frames_from_rollouts(env, problem, roll: dict, stage: str) -> tuple[dict, Frames]:
    lengths, success = roll["lengths"], roll["success"]
    rewards = recap_rewards(lengths, success, problem.c_fail)
    cols = dict(roll["frames"])
    cols["next.reward"] = rewards
    ep_success = np.repeat(success, lengths)
    obs = {k: cols[k] for k in env.obs_columns}
    fr = Frames(obs, cols["action"], cols["episode_index"], cols["task_index"],
                cols["complementary_info.is_intervention"], rewards, ep_success,
                np.full(len(rewards), STAGES.index(stage)))
    return cols, fr


def _frames_from_dataset(env, ds, stage: str) -> Frames:
    f = ds.frames
    missing = [c for c in (*env.obs_columns, "action", "next.reward", "complementary_info.is_intervention")
               if c not in f]
    if missing:
        raise DatasetError(f"LeRobot data set {str(ds.root)!r} lacks the column(s) {missing}")
    succ = np.asarray(ds.episodes["success"], dtype=bool)
    ep = np.asarray(f["episode_index"], dtype=np.int64)
    ep_ids = np.asarray(ds.episodes["episode_index"], dtype=np.int64)
    lookup = dict(zip(ep_ids.tolist(), succ.tolist()))
    return Frames({k: np.asarray(f[k], dtype=np.float32) for k in env.obs_columns},
                  np.asarray(f["action"], dtype=np.float32).reshape(len(ep), -1), ep,
                  np.asarray(f["task_index"], dtype=np.int64),
                  np.asarray(f["complementary_info.is_intervention"], dtype=bool),
                  np.asarray(f["next.reward"], dtype=np.float64), np.array([lookup[e] for e in ep.tolist()]),
                  np.full(len(ep), STAGES.index(stage)))


def _obs_tensors(env, fr: Frames, idx=None) -> dict:
    sel = slice(None) if idx is None else idx
    return {k: torch.as_tensor(v[sel]) for k, v in fr.obs.items()}


# ---------------------------------------------------------------------------- networks on frames
def _value_logits(vnet, env, obs: dict) -> torch.Tensor:
    if env.discrete:
        return vnet(obs["observation.state"])
    return vnet(obs["observation.state"], obs["observation.environment_state"])


def predict_values(vnet, env, fr: Frames, batch: int = 4096) -> np.ndarray:
    """Expected normalised values ``(frames,)`` of every frame."""
    return predict_obs_values(vnet, env, fr.obs, batch)


@torch.no_grad()
def predict_obs_values(vnet, env, obs: dict, batch: int = 4096) -> np.ndarray:
    """Expected normalised values ``(frames,)`` float64 of per-frame observation columns.

    Parameters
    ----------
    obs : dict of str to ndarray
        ``env.obs_columns``, each ``(frames, d)``.
    """
    vnet.eval()
    n = len(next(iter(obs.values()))) if obs else 0
    out = []
    for s in range(0, n, batch):
        idx = np.arange(s, min(s + batch, n))
        logits = _value_logits(vnet, env, {k: torch.as_tensor(v[idx]) for k, v in obs.items()})
        out.append(vnet_value(vnet, logits))
    vnet.train()
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def vnet_value(vnet, logits):
    """Expected value of a value network's logits."""
    return vnet.head.value(logits)


def _policy_loss(policy, env, obs: dict, action: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor):
    w = weights / weights.sum().clamp(min=1e-12)
    if env.discrete:
        cycles = policy(obs["observation.state"], tokens)
        a = action[:, 0].long()
        ce = [nn.functional.cross_entropy(lg, a, reduction="none") for lg in cycles]
        return sum((c * w).sum() for c in ce) / len(ce)
    u = policy(obs["observation.state"], obs["observation.environment_state"], tokens)
    half = (policy.base.u_max - policy.base.u_min) / 2
    return ((((u - action) / half) ** 2).mean(-1) * w).sum()


def _fit(model, loss_fn, n: int, steps: int, cfg: RecapTrainConfig, gen: torch.Generator, ckpt_path: Path | None,
         phase: str, fingerprint: dict) -> float:
    """Mini-batch AdamW on ``loss_fn(batch indices)``, checkpointed every ``cfg.checkpoint_every`` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.05 * cfg.lr)
    start, recent = 0, []
    if ckpt_path is not None and ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise CheckpointError(f"checkpoint {str(ckpt_path)!r} is unreadable: {exc}") from exc
        if ck.get("fingerprint") != fingerprint:
            raise CheckpointError(f"checkpoint {str(ckpt_path)!r} belongs to another run or configuration")
        if ck["phase"] == phase:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["generator"])
            start, recent = int(ck["step"]), list(ck["recent"])
            log.info("%s: resuming at step %d", phase, start)
    model.train()
    for step in range(start, steps):
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=gen)
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [float(loss.detach())])[-50:]
        if ckpt_path is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps):
            atomic_torch_save({"phase": phase, "step": step + 1, "model": model.state_dict(),
                               "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "generator": gen.get_state(), "recent": recent, "fingerprint": fingerprint}, ckpt_path)
    return float(np.mean(recent)) if recent else float("nan")


def value_targets(vnet_prev, env, fr: Frames, problem: RecapProblem, cfg: RecapTrainConfig) -> np.ndarray:
    """Normalised value targets ``(frames,)``: Monte-Carlo returns, or TD(lambda) returns of ``vnet_prev``."""
    scale = problem.max_steps + problem.c_fail
    if cfg.value_target == "gae" and vnet_prev is not None:
        v = predict_values(vnet_prev, env, fr)
        return np.clip(lambda_returns(fr.rewards / scale, v, fr.episode_index, cfg.gamma, cfg.lam), -1.0, 0.0)
    return normalize_returns(discounted_returns(fr.rewards, fr.episode_index, cfg.gamma), problem.max_steps,
                             problem.c_fail)


def train_value(vnet, env, fr: Frames, targets: np.ndarray, cfg: RecapTrainConfig, gen: torch.Generator,
                ckpt_path: Path | None = None, fingerprint: dict | None = None) -> float:
    """Cross-entropy training of the value on two-hot targets; returns the final mean loss."""
    y = two_hot(targets)
    obs = _obs_tensors(env, fr)

    def loss_fn(idx):
        return value_loss(_value_logits(vnet, env, {k: v[idx] for k, v in obs.items()}), y[idx])

    return _fit(vnet, loss_fn, len(fr), cfg.value_steps, cfg, gen, ckpt_path, "value", fingerprint or {})


def policy_data(mode: str, fr: Frames, advantage: np.ndarray, indicator: np.ndarray, cfg: RecapTrainConfig):
    """Frame subset, per-frame indicator tokens and weights of a training mode.

    Returns
    -------
    idx : ndarray of int64
        Frames used.
    tokens : Tensor of int64, shape ``(len(idx),)``
        Indicator tokens before dropout (``recap``) or the null token.
    weights : Tensor, shape ``(len(idx),)``

    Raises
    ------
    ConfigError
        On an unknown mode.
    """
    check_choice(mode, "policy training mode", MODES)
    idx = np.arange(len(fr))
    if mode == "filtered":
        idx = idx[fr.success | fr.intervention]
    weights = torch.ones(len(idx))
    if mode == "awr":
        weights = torch.as_tensor(np.minimum(np.exp(advantage / cfg.awr_temperature), cfg.awr_max_weight),
                                  dtype=torch.float32)
    tokens = indicator_tokens(indicator[idx]) if mode == "recap" else torch.full((len(idx),), NULL)
    return idx, tokens, weights


def train_policy(policy, env, fr: Frames, mode: str, advantage: np.ndarray, indicator: np.ndarray,
                 cfg: RecapTrainConfig, gen: torch.Generator, ckpt_path: Path | None = None,
                 fingerprint: dict | None = None) -> float:
    """Train the policy on frames in one of :data:`MODES`; returns the final mean loss.

    Raises
    ------
    ConfigError
        On an unknown mode.
    DatasetError
        If the mode selects no frame.
    """
    idx, tokens, weights = policy_data(mode, fr, advantage, indicator, cfg)
    if len(idx) == 0:
        raise DatasetError(f"policy training mode {mode!r} selects no frame of {len(fr)}")
    obs = {k: v[torch.as_tensor(idx)] for k, v in _obs_tensors(env, fr).items()}
    action = torch.as_tensor(fr.action[idx])
    dropout = cfg.indicator_dropout if mode == "recap" else 0.0

    def loss_fn(b):
        tok = drop_indicators(tokens[b], dropout, gen)
        return _policy_loss(policy, env, {k: v[b] for k, v in obs.items()}, action[b], tok, weights[b])

    return _fit(policy, loss_fn, len(idx), cfg.policy_steps, cfg, gen, ckpt_path, f"policy-{mode}", fingerprint or {})


# ---------------------------------------------------------------------------- evaluation
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson, JASA 22, 1927).

    Raises
    ------
    ConfigError
        If ``n < 1`` or ``successes`` is outside ``[0, n]``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ConfigError(f"wilson_interval needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(a, b) -> dict:
    """McNemar's exact test of paired successes.

    The two-sided binomial test of the discordant pairs (``a`` only against ``b`` only) with
    p = 1/2 (McNemar, Psychometrika 12, 1947, in its exact form; ``scipy.stats.binomtest``).

    Parameters
    ----------
    a, b : array_like of bool or {0, 1}, shape ``(episodes,)``
        Per-episode successes of two policies on the same episodes.

    Returns
    -------
    dict
        ``a_only``, ``b_only`` (episodes only one solves) and ``p_value`` (1.0 without a
        discordant pair).

    Raises
    ------
    DimensionError
        If ``a`` and ``b`` are not 1-D of the same length.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise DimensionError(f"paired outcomes must be 1-D of one length, got shapes {a.shape} and {b.shape}")
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if n10 + n01 == 0 else float(stats.binomtest(n10, n10 + n01, 0.5).pvalue)
    return {"a_only": n10, "b_only": n01, "p_value": p}


@torch.no_grad()
def _guided_episodes(policy, env, ctx, beta: float) -> dict:
    policy.eval()
    ep = run_episodes(env, ctx, lambda obs, t: env.act(policy, obs, beta))
    policy.train()
    return ep


def evaluate(policy, env, ctx, beta: float) -> dict:
    """Guided greedy episodes on ``ctx``: success rate, Wilson interval, steps, per-episode success.

    ``mean_steps_to_success`` is None when no episode succeeds.
    """
    return _episode_metrics(_guided_episodes(policy, env, ctx, beta), beta)


def _episode_metrics(ep: dict, beta: float) -> dict:
    succ, n = ep["success"].numpy(), len(ep["success"])
    k = int(succ.sum())
    lo, hi = wilson_interval(k, n)
    steps = ep["lengths"].numpy()
    return {"episodes": n, "successes": k, "success_rate": k / n, "success_ci95": [lo, hi],
            "mean_steps_to_success": float(steps[succ].mean()) if k else None,
            "mean_steps": float(steps.mean()), "beta": float(beta), "eval_success": succ.astype(int).tolist()}


def evaluate_value(vnet, env, problem: RecapProblem, episodes: dict, gamma: float = 1.0):
    """Calibration of a value network on rolled-out episodes (:func:`trc.recap.value.calibration`).

    Parameters
    ----------
    vnet : MazeValueNet or ContinuousValueNet
    env : MazeEpisodes or ContinuousEpisodes
    problem : RecapProblem
        Its ``max_steps`` and ``c_fail`` are the value's normalisation.
    episodes : dict
        :func:`trc.recap.envs.run_episodes` output (e.g. the held-out evaluation episodes).
    gamma : float
        The discount the value was trained with.

    Returns
    -------
    trc.recap.value.ValueCalibration

    Raises
    ------
    ConfigError, DimensionError
        From :func:`trc.recap.value.calibration` (e.g. no frame, a bad ``gamma``).
    """
    cols = frames_of(env, episodes)
    v = predict_obs_values(vnet, env, {k: cols[k] for k in env.obs_columns})
    return calibration(v, cols["episode_index"], episodes["success"].numpy(), problem.max_steps, problem.c_fail,
                       gamma)


# ---------------------------------------------------------------------------- the pipeline
@dataclass
class RecapRun:
    """A parsed RECAP experiment and its run folder.

    Attributes
    ----------
    problem : RecapProblem
    generator : RecapGeneratorConfig
    training : RecapTrainConfig
    model : dict
        The ``model:`` section (policy and value sizes).
    out : Path
    """

    problem: RecapProblem
    generator: RecapGeneratorConfig
    training: RecapTrainConfig
    model: dict
    out: Path

    @classmethod
    def from_experiment(cls, experiment, *, out=None, seed: int | None = None) -> "RecapRun":
        """Parse the ``training`` and ``model`` sections; ``seed`` overrides both seeds.

        Raises
        ------
        ConfigError
            On invalid sections.
        """
        gen = from_dict(RecapGeneratorConfig, asdict(experiment.generator), "generator")
        tcfg = from_dict(RecapTrainConfig, experiment.section("training"), "training")
        if seed is not None:
            gen.seed = tcfg.seed = check_seed(seed, "--seed")
        model = experiment.section("model")
        _model_config(experiment.problem, model)  # validate now, before any file is written
        folder = Path(out or tcfg.out or f"runs/{experiment.problem.name}")
        return cls(experiment.problem, gen, tcfg, model, folder)

    def fingerprint(self) -> dict:
        """Everything that determines the run's arrays (recorded in ``run.json`` and checkpoints)."""
        gen = {k: v for k, v in asdict(self.generator).items() if not (k == "episodes_per_task" and v is None)}
        return json.loads(json.dumps({"problem": self.problem.to_dict(), "generator": gen,
                                      "training": {k: v for k, v in asdict(self.training).items()
                                                   if k not in ("out", "threads", "checkpoint_every")},
                                      "model": self.model}))

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage


def _check_run_folder(run: RecapRun) -> None:
    path = run.out / "run.json"
    fp = run.fingerprint()
    if path.is_file():
        if json.loads(path.read_text()) != fp:
            raise ConfigError(f"run folder {str(run.out)!r} holds a RECAP run of another configuration or seed "
                              f"({path}); choose another --out")
    else:
        atomic_write_text(path, json.dumps(fp, indent=2))


def _episode_sets(run: RecapRun, env):
    """Held-out evaluation episodes, then each stage's episodes, disjoint from all earlier ones."""
    g = run.generator
    sets, used = {}, set()
    for stage, num in (("eval", g.eval_episodes), ("demos", g.demo_episodes),
                       ("corrections", g.correction_episodes), ("autonomous", g.autonomous_episodes)):
        sets[stage] = env.sample(num, _seed(g.seed, stage), exclude=used)
        used |= env.keys(sets[stage])
    return sets


def load_state(module: nn.Module, path: Path, what: str = "weights") -> None:
    """Load a state dict saved by a stage (``policy.pt``, ``value.pt``) into ``module``.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable or does not fit.
    """
    try:
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise CheckpointError(f"{what} {str(path)!r} cannot be loaded: {exc}") from exc


def finished_stage(run, stage: str) -> dict | None:
    """The metrics of ``stage`` (with ``"skipped": true``) if it has finished in ``run.out``, the run
    folder checked; else None, after checking that every earlier stage has finished.

    Parameters
    ----------
    run : RecapRun or trc.recap.libero.RecapLiberoRun
    stage : str
        One of :data:`STAGES`.

    Raises
    ------
    ConfigError
        If an earlier stage has not finished, or the run folder holds another configuration.
    """
    done = run.stage_dir(stage) / "metrics.json"
    if done.is_file():
        _check_run_folder(run)
        return {**json.loads(done.read_text()), "skipped": True}
    for earlier in STAGES[:STAGES.index(stage)]:
        if not (run.stage_dir(earlier) / "metrics.json").is_file():
            raise ConfigError(f"stage {stage!r} needs stage {earlier!r} finished first in {str(run.out)!r}; run "
                              f"--stage {earlier}")
    return None


def trained(module: nn.Module, path: Path, key: str, train) -> float:
    """Train ``module`` once: load it from ``path`` and its loss from ``path`` with suffix ``.json``
    (under ``key``) if a finished stage saved them, else run ``train()`` (returning the loss) and
    save both atomically.

    Raises
    ------
    CheckpointError
        If the saved weights cannot be loaded.
    """
    if path.is_file():
        load_state(module, path, key.split("_")[0] + " weights")
        return json.loads(path.with_suffix(".json").read_text())[key]
    loss = train()
    atomic_write_text(path.with_suffix(".json"), json.dumps({key: loss}))
    atomic_torch_save(module.state_dict(), path)
    return loss


#: What :func:`_rollout_part` runs in this process: ``(run, stage, ctx, policy weights or None)``.
_ROLLOUT: dict = {}


def _init_rollouts(run: "RecapRun", stage: str, ctx: dict, weights: dict | None) -> None:
    """Worker initialiser of :func:`_collect`: the stage's episodes and the acting policy, sent once."""
    _ROLLOUT["args"] = (run, stage, ctx, weights)


def _rollout_part(task: tuple[int, int, int]) -> dict:
    """Episodes ``start:stop`` of the stage (task ``index``): the demonstrator (its noise seeded per
    task) or the previous stage's guided policy, with the monitor's takeovers in the corrections.
    Runs with one torch thread (restored after), so a task gives the same arrays in any process."""
    run, stage, ctx, weights = _ROLLOUT["args"]
    index, start, stop = task
    g, cfg = run.generator, run.training
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = make_episodes(run.problem, g)
        part = env.slice(ctx, start, stop)
        if stage == "demos":
            gen = torch.Generator().manual_seed(_seed(g.seed, stage, 1 + index))
            ep = run_episodes(env, part, lambda obs, t: env.demo(obs["observation.state"], part, gen))
        else:
            policy = make_policy(run.problem, run.model, 0)
            policy.load_state_dict(weights)
            policy.eval()
            monitor = Monitor(g.patience, g.budget) if stage == "corrections" else None
            ep = run_episodes(env, part, lambda obs, t: env.act(policy, obs, cfg.beta), monitor=monitor)
        return {"frames": frames_of(env, ep), "lengths": ep["lengths"].numpy(), "success": ep["success"].numpy()}
    finally:
        torch.set_num_threads(threads)


def _collect(run: RecapRun, env, stage: str, episodes: dict, policy, *, backend: str = "local",
             address: str | None = None, workers: int | None = None) -> dict:
    """The stage's episodes in tasks of ``generator.episodes_per_task`` (:mod:`trc.backends`); the
    split does not depend on the backend, so neither do the arrays."""
    ctx = episodes[stage]
    B = len(ctx["x0"])
    size = run.generator.episodes_per_task or B
    tasks = [(i, start, min(start + size, B)) for i, start in enumerate(range(0, B, size))]
    ordered = map_ordered(_rollout_part, tasks, backend=backend, address=address, workers=workers,
                          initializer=_init_rollouts,
                          initargs=(run, stage, ctx, None if stage == "demos" else policy.state_dict()))
    frames = {k: np.concatenate([p["frames"][k] + (start if k == "episode_index" else 0)
                                 for p, (_, start, _) in zip(ordered, tasks)]) for k in ordered[0]["frames"]}
    return {"frames": frames, "lengths": np.concatenate([p["lengths"] for p in ordered]),
            "success": np.concatenate([p["success"] for p in ordered])}


def _save_rollouts(path: Path, roll: dict) -> None:
    arrays = {f"frames/{k}": v for k, v in roll["frames"].items()}
    arrays.update(lengths=roll["lengths"], success=roll["success"])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _load_rollouts(path: Path) -> dict:
    with np.load(path) as z:
        frames = {k[len("frames/"):]: z[k] for k in z.files if k.startswith("frames/")}
        return {"frames": frames, "lengths": z["lengths"], "success": z["success"]}


def run_stage(experiment, stage: str, *, out=None, seed: int | None = None, backend: str = "local",
              address: str | None = None, workers: int | None = None) -> dict:
    """Run (or resume, or skip when finished) one RECAP stage; returns its metrics.

    Parameters
    ----------
    experiment : trc.experiment.Experiment
        A ``kind: recap`` configuration.
    stage : {"demos", "corrections", "autonomous"}
    out : path-like, optional
        Run folder; default ``training.out`` or ``runs/<problem name>``.
    seed : int, optional
        Overrides ``generator.seed`` and ``training.seed``.
    backend : {"local", "ray"}
        Where the rollout tasks run (:mod:`trc.backends`; see ``generator.episodes_per_task``).
    address : str, optional
        Ray cluster address (``ray`` only).
    workers : int, optional
        ``local``: processes (default 1: this process); ``ray``: most tasks at once.

    Returns
    -------
    dict
        The stage's ``metrics.json`` (with ``"skipped": true`` if it had finished before).

    Raises
    ------
    ConfigError
        On an unknown stage, a stage whose predecessor has not finished, or a run folder of
        another configuration.
    CheckpointError
        On an unreadable or foreign checkpoint.
    DatasetError
        On an unreadable data set of an earlier stage.
    """
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of {list(STAGES)} for RECAP problems, got {stage!r}")
    run = RecapRun.from_experiment(experiment, out=out, seed=seed)
    cfg, problem = run.training, run.problem
    folder = run.stage_dir(stage)
    done = folder / "metrics.json"
    finished = finished_stage(run, stage)
    if finished is not None:
        return finished
    k = STAGES.index(stage)
    env = make_episodes(problem, run.generator)  # validates the plant and the experts before anything is written
    _check_run_folder(run)
    torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    fp = {**run.fingerprint(), "stage": stage}
    episodes = _episode_sets(run, env)
    prev = run.stage_dir(STAGES[k - 1]) if k else None
    # the previous stage's policy collects; with finetune the networks continue from it
    policy = make_policy(problem, run.model, _seed(cfg.seed, "train", k))
    vnet = make_value(problem, run.model, _seed(cfg.seed, "train", k), cfg.value_hidden)
    actor, vprev = None, None
    if prev is not None:
        actor = make_policy(problem, run.model, 0)
        load_state(actor, prev / "policy.pt", "policy weights")
        vprev = make_value(problem, run.model, 0, cfg.value_hidden)
        load_state(vprev, prev / "value.pt", "value weights")
        if cfg.finetune:
            policy.load_state_dict(actor.state_dict())
            vnet.load_state_dict(vprev.state_dict())
    # 1. episodes
    roll_path = folder / "rollouts.npz"
    if roll_path.is_file():
        roll = _load_rollouts(roll_path)
    else:
        roll = _collect(run, env, stage, episodes, actor, backend=backend, address=address, workers=workers)
        _save_rollouts(roll_path, roll)
    cols, fr_new = _frames_from_rollouts(env, problem, roll, stage)
    parts = [_frames_from_dataset(env, lerobot.read_dataset(run.stage_dir(s) / "dataset"), s) for s in STAGES[:k]]
    fr = Frames.concat(parts + [fr_new])
    # 2. value
    ckpt = folder / "checkpoint.pt"
    value_path = folder / "value.pt"
    targets = value_targets(vprev, env, fr, problem, cfg)
    vloss = trained(vnet, value_path, "value_loss", lambda: train_value(
        vnet, env, fr, targets, cfg, torch.Generator().manual_seed(_seed(cfg.seed, "train", 10 + k)), ckpt, fp))
    # 3. labels and the stage's LeRobot data set
    v = predict_values(vnet, env, fr)
    scale = problem.max_steps + problem.c_fail
    labels = label_advantages(fr.rewards / scale, v, fr.episode_index, fr.task_index, fr.intervention,
                              method=cfg.advantage, n=cfg.n_step, gamma=cfg.gamma, lam=cfg.lam,
                              positive_fraction=cfg.positive_fraction)
    new = fr.stage == k
    cols.update({"complementary_info.value": v[new].astype(np.float32),
                 "complementary_info.advantage": labels.advantage[new].astype(np.float32),
                 "complementary_info.indicator": labels.indicator[new]})
    lerobot.write_dataset(folder / "dataset", cols, tasks=[problem.instruction], fps=1.0 / _dt(problem),
                          episodes={"stage": np.array([stage] * len(roll["lengths"])),
                                    "success": np.asarray(roll["success"], dtype=bool)},
                          robot_type=problem.plant, overwrite=True)
    # 4. policy
    ploss = trained(policy, folder / "policy.pt", "policy_loss", lambda: train_policy(
        policy, env, fr, "recap", labels.advantage, labels.indicator, cfg,
        torch.Generator().manual_seed(_seed(cfg.seed, "train", 20 + k)), ckpt, fp))
    # 5. evaluation: the guided policy, then the value's calibration on the same held-out episodes
    eval_ep = _guided_episodes(policy, env, episodes["eval"], cfg.beta)
    metrics = _episode_metrics(eval_ep, cfg.beta)
    calib = evaluate_value(vnet, env, problem, eval_ep, cfg.gamma)
    metrics.update({
        "stage": stage, "problem": problem.name, "plant": problem.plant, "value_loss": vloss, "policy_loss": ploss,
        "value_auroc": calib.auroc_first_frame, "value_auroc_frames": calib.auroc_frames,
        "value_steps_to_go_mae": calib.steps_to_go_mae, "value_steps_to_go_median_ae": calib.steps_to_go_median_ae,
        "value_calibration": calib.to_dict(),
        "advantage_mean": labels.advantage_mean, "positive_fraction": labels.positive_fraction,
        "thresholds": {str(t): e for t, e in labels.thresholds.items()},
        "collected_episodes": int(len(roll["lengths"])),
        "collected_success_rate": float(np.mean(roll["success"])),
        "intervention_fraction": float(np.mean(cols["complementary_info.is_intervention"])),
        "training_frames": int(len(fr)), "seconds": time.monotonic() - t0, "seed": run.generator.seed,
    })
    atomic_write_text(done, json.dumps(metrics, indent=2))
    if ckpt.is_file():
        ckpt.unlink()
    return metrics


def stage_training_data(run: RecapRun, env, stage: str):
    """The frames a finished stage trained on (its data set and every earlier one) and their labels
    under the stage's value, as the stage computed them.

    Returns
    -------
    frames : Frames
    labels : trc.recap.advantage.AdvantageLabels

    Raises
    ------
    ConfigError
        If the stage has not finished.
    """
    k = STAGES.index(stage)
    folder = run.stage_dir(stage)
    if not (folder / "metrics.json").is_file():
        raise ConfigError(f"stage {stage!r} of {str(run.out)!r} has not finished")
    fr = Frames.concat([_frames_from_dataset(env, lerobot.read_dataset(run.stage_dir(s) / "dataset"), s)
                        for s in STAGES[:k + 1]])
    vnet = make_value(run.problem, run.model, 0, run.training.value_hidden)
    load_state(vnet, folder / "value.pt", "value weights")
    cfg, problem = run.training, run.problem
    labels = label_advantages(fr.rewards / (problem.max_steps + problem.c_fail), predict_values(vnet, env, fr),
                              fr.episode_index, fr.task_index, fr.intervention, method=cfg.advantage, n=cfg.n_step,
                              gamma=cfg.gamma, lam=cfg.lam, positive_fraction=cfg.positive_fraction)
    return fr, labels


def episode_sets(run: RecapRun, env) -> dict:
    """The run's held-out evaluation episodes (``"eval"``) and each stage's episodes (disjoint)."""
    return _episode_sets(run, env)


def frames_from_episodes(run: RecapRun, env, episodes: dict, stage: str = "demos") -> Frames:
    """Training frames of :func:`trc.recap.envs.run_episodes` output (e.g. expert demonstrations)."""
    roll = {"frames": frames_of(env, episodes), "lengths": episodes["lengths"].numpy(),
            "success": episodes["success"].numpy()}
    return _frames_from_rollouts(env, run.problem, roll, stage)[1]


def _dt(problem: RecapProblem) -> float:
    return 1.0 if problem.plant == "maze" else float(problem.inner.dt)
