"""Training and evaluation of discrete policies: supervised pre-training, then REINFORCE.

Supervised pre-training (:func:`train_supervised`)
    States along the optimal action sequences of the data set (shortest maze paths, sudoku
    placement orders): each batch takes every instance to a uniformly drawn step of its
    optimal sequence. The policy is trained to put its probability on the set ``O(x)`` of
    optimal actions (every action that starts *some* optimal solution: the moves one step
    closer to the goal; the solution digit of any empty cell),
    ``loss = -log sum_{a in O(x)} pi(a | x)``, plus, for the recursive policy, the same loss
    on every cell (the optimal moves of every open cell; the solution digit of every empty
    cell; ``dense_weight``). With deep supervision the loss is averaged over the logits of
    every H-cycle. A policy with ``carry_latent`` is instead trained on whole teacher-forced
    sequences with the latent carried and detached between steps, one optimiser step per step
    (TRM's deep supervision, arXiv 2510.04871, Alg. 3).

RL fine-tuning (:func:`train_reinforce`)
    REINFORCE (Williams, *Machine Learning* 8, 1992) with a baseline, an entropy bonus and
    discount ``gamma``, on fresh instances of the problem:
    ``loss = -mean[A_t log pi(a_t | x_t)] - beta H(pi(. | x_t))``, averaged over the H-cycles
    (deep supervision). The advantage ``A_t`` is ``G_t - V*(x_t)`` with the optimal value known
    from the generator (a function of the state, so the gradient stays unbiased, and optimal
    episodes have zero advantage), ``G_t`` minus the batch mean of the return at each step
    (``baseline: mean``), or the episode's return minus the mean return of the other episodes
    on the same instance (``baseline: group``, ``rl_group`` episodes per instance). Optional, to
    fine-tune a supervised policy without losing it: a KL penalty ``kl_coef KL(pi || pi_ref)``
    to the policy at the start of the stage, PPO's clipped ratio (``clip``, ``rl_epochs``), a
    learning-rate warm-up and a sampling temperature (:func:`policy_gradient_terms`). Rollouts
    run without gradient; log-probabilities are then recomputed in mini-batches from the stored
    states (and carried latents), or, for maze planners, read from one recursion per episode.

Evaluation (:func:`evaluate_policy`)
    Greedy batched rollouts through the same transition functions as the gymnasium
    environments (:mod:`dynamics.discrete_env`): success rate, steps, optimality gap
    ``steps / optimal - 1`` of solved instances, and the fraction solved within 5 % of optimal.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from dynamics.discrete_env import Rewards, maze_transition, sudoku_transition
from dynamics.errors import ConfigError, DimensionError

from ..config import check_int, check_real
from ..generators.discrete import generate_discrete
from ..models.discrete import PolicyOutput, count_parameters
from ..models.recursion import LatentState

__all__ = [
    "DiscreteTrainConfig", "Instances", "instances_from_dataset", "instances_from_problem", "optimal_action_mask",
    "dense_targets", "set_loss", "train_supervised", "train_reinforce", "evaluate_policy", "rollout",
    "policy_gradient_terms", "discounted_returns", "group_advantages", "optimal_value",
]

log = logging.getLogger("trc.training.discrete")


# ---------------------------------------------------------------------------- configuration
@dataclass
class DiscreteTrainConfig:
    """The ``training:`` section of a discrete configuration.

    Attributes
    ----------
    seed : int
    batch_size : int
        Instances per supervised batch.
    lr, weight_decay, grad_clip : float
        AdamW settings and gradient-norm clip.
    supervised_batches : int
        Batches of teacher-forced sequences (each gives one optimiser step per time step). The
        learning rate follows a cosine from ``lr`` to ``0.05 lr`` over these batches or over the
        time left before ``max_minutes``, whichever runs out first, so a run cut by its time
        budget still ends annealed (budgeted training, Li, Yumer & Ramanan, ICLR 2020); only a
        run that finishes its batches inside the budget is reproducible batch for batch.
    max_sequence : int, optional
        Cap on the steps per teacher-forced sequence (default: whole sequences).
    dense_weight : float
        Weight of the dense per-cell loss (recursive policy only).
    deep_supervision : bool
        Average the loss over the logits of every H-cycle (else the last only).
    augment : bool
        Random symmetries of the training instances (sudoku: digit relabelling, transposition,
        row/column permutations within bands and of bands; maze: flips, and transposition of
        square mazes).
    rl_iterations : int
        REINFORCE iterations (0: no RL stage).
    rl_batch : int
        Episodes per REINFORCE iteration.
    rl_lr : float
        AdamW learning rate of the RL stage.
    rl_warmup : int
        RL iterations of linear learning-rate warm-up from ``rl_lr / (rl_warmup + 1)`` to ``rl_lr``.
    rl_epochs : int
        Optimiser steps on each batch of episodes (PPO's epochs; 1: plain policy gradient).
    gamma : float
        Discount.
    entropy : float
        Entropy bonus ``beta``.
    baseline : {"optimal", "mean", "group"}
        REINFORCE baseline: the optimal value ``V*(x)`` of the generator's solution
        (:func:`optimal_value`, state-dependent), the batch mean of the return per step, or
        ``group``: every instance is played ``rl_group`` times and each episode's advantage
        (at every one of its steps) is its return minus the mean return of the other episodes
        on the same instance (:func:`group_advantages`; the leave-one-out baseline of Kool,
        van Hoof & Welling, ICLR 2019 workshop, "Buy 4 REINFORCE samples, get a baseline for
        free"). Instances the policy always or never solves then give no gradient, where the
        other baselines give every step of an unsolvable instance a large negative advantage.
    rl_group : int
        Episodes per instance in each batch (``rl_batch`` must be a multiple of it; at least 2
        with ``baseline: group``).
    normalize_advantage : bool
        Divide advantages by their standard deviation (not centred, so that optimal episodes
        keep a zero advantage under the optimal baseline).
    kl_coef : float
        Weight of the penalty ``KL(pi || pi_ref)`` to the policy at the start of the RL stage
        (the supervised policy), exact over the actions at every visited state
        (:func:`policy_gradient_terms`); 0: none.
    clip : float, optional
        PPO's clip ``eps`` in ``(0, 1)`` on the ratio to the policy that collected the episodes
        (Schulman et al., arXiv 1707.06347); null: no clipping.
    rl_max_ratio : float
        Truncation of the importance weight ``pi_c / pi_K,old`` (V-trace's ``rho_bar``, Espeholt
        et al., arXiv 1802.01561): with deep supervision the earlier H-cycles are trained on
        actions of the last one, and their weights have a heavy tail (up to 70 for the first of
        three cycles of the supervised maze policy), each such transition a spike in the
        gradient. At 1 (default) the last cycle's first epoch is untouched (its ratio is 1).
    rl_temperature : float
        Temperature of the policy trained and sampled by the RL stage, ``softmax(logits / T)``.
        Evaluation is greedy (the limit ``T -> 0``); ``T < 1`` brings the episodes RL learns
        from closer to the greedy ones.
    rl_minibatch : int
        Transitions per gradient mini-batch when recomputing log-probabilities.
    eval_episodes : int
        Test instances for the final evaluation.
    max_minutes : float
        Wall-clock budget of the whole run; stages stop early when it is spent.
    out : str, optional
        Run folder; default ``runs/<problem name>``.
    threads : int, optional
        ``torch.set_num_threads``; default: leave torch's setting.
    """

    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    supervised_batches: int = 200
    max_sequence: Optional[int] = None
    dense_weight: float = 1.0
    deep_supervision: bool = True
    augment: bool = True
    rl_iterations: int = 0
    rl_batch: int = 64
    rl_lr: float = 3e-4
    rl_warmup: int = 0
    rl_epochs: int = 1
    gamma: float = 0.99
    entropy: float = 0.001
    baseline: str = "optimal"
    normalize_advantage: bool = False
    rl_group: int = 1
    kl_coef: float = 0.0
    clip: Optional[float] = None
    rl_max_ratio: float = 1.0
    rl_temperature: float = 1.0
    rl_minibatch: int = 1024
    eval_episodes: int = 500
    max_minutes: float = 20.0
    out: Optional[str] = None
    threads: Optional[int] = None

    def __post_init__(self):
        for key in ("batch_size", "rl_batch", "rl_minibatch", "eval_episodes"):
            check_int(getattr(self, key), f"training.{key}", 1)
        for key in ("seed", "supervised_batches", "rl_iterations", "rl_warmup"):
            check_int(getattr(self, key), f"training.{key}", 0)
        check_int(self.rl_epochs, "training.rl_epochs", 1)
        check_real(self.kl_coef, "training.kl_coef", 0.0)
        check_real(self.rl_max_ratio, "training.rl_max_ratio", 1.0)
        check_real(self.rl_temperature, "training.rl_temperature", 0.0, low_open=True)
        if self.clip is not None:
            check_real(self.clip, "training.clip (or null)", 0.0, 1.0, low_open=True, high_open=True)
        for key in ("lr", "rl_lr", "max_minutes", "grad_clip"):
            if not (isinstance(getattr(self, key), (int, float)) and getattr(self, key) > 0):
                raise ConfigError(f"training.{key} must be positive, got {getattr(self, key)!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"training.gamma must lie in (0, 1], got {self.gamma!r}")
        if self.entropy < 0 or self.dense_weight < 0 or self.weight_decay < 0:
            raise ConfigError("training.entropy, dense_weight and weight_decay must be non-negative")
        if self.baseline not in ("optimal", "mean", "group"):
            raise ConfigError(f"training.baseline must be 'optimal', 'mean' or 'group', got {self.baseline!r}")
        check_int(self.rl_group, "training.rl_group", 2 if self.baseline == "group" else 1)
        if self.rl_batch % self.rl_group:
            raise ConfigError(f"training.rl_batch must be a multiple of training.rl_group = {self.rl_group}, "
                              f"got {self.rl_batch!r}")
        if self.max_sequence is not None:
            check_int(self.max_sequence, "training.max_sequence (or null)", 1)


# ---------------------------------------------------------------------------- instances
@dataclass
class Instances:
    """A batch of problem instances with their optimal solutions (torch tensors, CPU).

    Attributes
    ----------
    x0 : Tensor, shape ``(M, state_dim)``
        Initial plant states.
    actions : Tensor of int64, shape ``(M, L)``
        Optimal action sequences, padded with ``-1``.
    lengths : Tensor of int64, shape ``(M,)``
        Optimal number of steps.
    distances : Tensor of int64, shape ``(M, H, W)``, maze only
        BFS distance of every cell to the goal.
    solutions : Tensor, shape ``(M, n * n)``, sudoku only
    """

    x0: torch.Tensor
    actions: torch.Tensor
    lengths: torch.Tensor
    distances: Optional[torch.Tensor] = None
    solutions: Optional[torch.Tensor] = None

    def __len__(self):
        return int(self.x0.shape[0])

    def subset(self, idx) -> "Instances":
        idx = torch.as_tensor(idx, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Instances(self.x0[idx], self.actions[idx], self.lengths[idx], pick(self.distances), pick(self.solutions))


def instances_from_dataset(data, split: str) -> Instances:
    """The instances of split ``split`` of a :class:`~trc.generators.discrete.DiscreteDataset`."""
    arrays = data.split(split)
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Instances(
        x0=f(arrays["initial_states"]),
        actions=torch.as_tensor(arrays["controls"][..., 0], dtype=torch.long),
        lengths=torch.as_tensor(arrays["lengths"], dtype=torch.long),
        distances=torch.as_tensor(arrays["distances"], dtype=torch.long) if "distances" in arrays else None,
        solutions=f(arrays["target_states"]) if data.kind == "sudoku" else None,
    )


def instances_from_problem(problem, num: int, seed) -> Instances:
    """Fresh instances drawn from a problem and solved optimally (BFS / exact sudoku search)."""
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**31))
    data = generate_discrete(problem, num, seed, splits=(1.0, 0.0, 0.0))
    return instances_from_dataset(data, "train")


# ---------------------------------------------------------------------------- symmetries
def _augment(plant, inst: Instances, gen: torch.Generator) -> Instances:
    """A random symmetry of every instance (see :class:`DiscreteTrainConfig`)."""
    if plant.name == "sudoku":
        return _augment_sudoku(plant, inst, gen)
    return _augment_maze(plant, inst, gen)


def _augment_sudoku(plant, inst, gen):
    n, b = plant.size, plant.box
    B = len(inst)

    def perm_cells():
        bands = torch.stack([torch.randperm(b, generator=gen) for _ in range(B)])  # (B, b)
        inner = torch.stack([torch.stack([torch.randperm(b, generator=gen) for _ in range(b)]) for _ in range(B)])
        return (bands.unsqueeze(-1) * b + inner).reshape(B, n)  # new line i takes old line p[i]

    rows, cols = perm_cells(), perm_cells()
    digits = torch.stack([torch.randperm(n, generator=gen) for _ in range(B)]) + 1  # old digit d -> digits[d - 1]
    transpose = torch.rand(B, generator=gen) < 0.5
    ar = torch.arange(B)[:, None, None]

    def board(x):
        g = x.reshape(B, n, n).long()
        g = g[ar, rows[:, :, None], cols[:, None, :]]
        g = torch.where(transpose[:, None, None], g.transpose(1, 2), g)
        lut = torch.cat((torch.zeros(B, 1, dtype=torch.long), digits), 1)
        return lut.gather(1, g.reshape(B, -1)).to(x.dtype)

    # cell index map: new cell (i, j) holds old cell (rows[i], cols[j]) (before transposition)
    inv_r, inv_c = rows.argsort(1), cols.argsort(1)
    a = inst.actions.clamp(min=0)
    cell, d = a // n, a % n
    r, c = inv_r.gather(1, cell // n), inv_c.gather(1, cell % n)
    r, c = torch.where(transpose[:, None], c, r), torch.where(transpose[:, None], r, c)
    nd = digits.gather(1, d) - 1
    actions = torch.where(inst.actions >= 0, (r * n + c) * n + nd, inst.actions)
    return Instances(board(inst.x0), actions, inst.lengths, None, board(inst.solutions))


_FLIP_LR = torch.tensor([0, 3, 2, 1])
_FLIP_UD = torch.tensor([2, 1, 0, 3])
_TRANSPOSE = torch.tensor([3, 2, 1, 0])


def _augment_maze(plant, inst, gen):
    H, W = plant.height, plant.width
    walls, goal, agent = plant.unpack(inst.x0)
    dist, actions = inst.distances.clone(), inst.actions.clone()
    B = len(inst)
    for flip, perm, dim, size, coord in ((torch.rand(B, generator=gen) < 0.5, _FLIP_LR, 2, W, 1),
                                        (torch.rand(B, generator=gen) < 0.5, _FLIP_UD, 1, H, 0)):
        walls = torch.where(flip[:, None, None], walls.flip(dim), walls)
        dist = torch.where(flip[:, None, None], dist.flip(dim), dist)
        for p in (goal, agent):
            p[:, coord] = torch.where(flip, size - 1 - p[:, coord], p[:, coord])
        actions = torch.where(flip[:, None] & (actions >= 0), perm[actions.clamp(min=0)], actions)
    if H == W:
        tr = torch.rand(B, generator=gen) < 0.5
        walls = torch.where(tr[:, None, None], walls.transpose(1, 2), walls)
        dist = torch.where(tr[:, None, None], dist.transpose(1, 2), dist)
        goal = torch.where(tr[:, None], goal.flip(1), goal)
        agent = torch.where(tr[:, None], agent.flip(1), agent)
        actions = torch.where(tr[:, None] & (actions >= 0), _TRANSPOSE[actions.clamp(min=0)], actions)
    x0 = torch.cat((walls.reshape(B, -1).float(), goal.float(), agent.float()), 1)
    return Instances(x0, actions, inst.lengths, dist, None)


# ---------------------------------------------------------------------------- targets and losses
def _maze_optimal_cells(plant, distances: torch.Tensor) -> torch.Tensor:
    """Optimal moves of every cell, bool ``(B, H*W, 4)`` (see :func:`trc.generators.maze.optimal_actions`)."""
    d = distances
    pad = nn.functional.pad(d, (1, 1, 1, 1), value=-1)
    H, W = plant.height, plant.width
    up, right = pad[:, 0:H, 1:W + 1], pad[:, 1:H + 1, 2:W + 2]
    down, left = pad[:, 2:H + 2, 1:W + 1], pad[:, 1:H + 1, 0:W]
    neighbours = torch.stack((up, right, down, left), -1)
    ok = (d > 0).unsqueeze(-1) & (neighbours >= 0) & (neighbours == (d - 1).unsqueeze(-1))
    return ok.reshape(d.shape[0], H * W, 4)


def optimal_action_mask(plant, x: torch.Tensor, inst: Instances) -> torch.Tensor:
    """Optimal actions in states ``x``, bool ``(B, num_actions)``.

    Maze: the moves to a neighbour one step closer to the goal (BFS distances). Sudoku: the
    solution digit of every empty cell (any order of placements is optimal).
    """
    if plant.name == "maze":
        cells = _maze_optimal_cells(plant, inst.distances)
        hw = plant.height * plant.width
        agent = x[:, hw + 2:hw + 4].round().long()
        idx = (agent[:, 0] * plant.width + agent[:, 1]).view(-1, 1, 1).expand(-1, 1, 4)
        return cells.gather(1, idx)[:, 0]
    n = plant.size
    empty = x == 0
    sol = inst.solutions.round().long() - 1
    return (nn.functional.one_hot(sol.clamp(min=0), n).bool() & empty.unsqueeze(-1)).reshape(x.shape[0], -1)


def dense_targets(plant, x: torch.Tensor, inst: Instances):
    """Per-cell targets for the dense loss: ``(targets bool (B, T, k), cell mask bool (B, T))``."""
    if plant.name == "maze":
        t = _maze_optimal_cells(plant, inst.distances)
        return t, t.any(-1)
    n = plant.size
    t = nn.functional.one_hot(inst.solutions.round().long().clamp(min=1) - 1, n).bool()
    return t, x == 0


def set_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log sum_{a in targets} softmax(logits)_a`` per row; rows without a target give 0.

    Parameters
    ----------
    logits : Tensor, shape ``(..., A)``
    targets : Tensor of bool, shape ``(..., A)``

    Returns
    -------
    Tensor, shape ``(...)``
    """
    has = targets.any(-1)
    good = torch.logsumexp(logits.masked_fill(~targets, -1e9), -1)
    return torch.where(has, torch.logsumexp(logits, -1) - good, torch.zeros_like(good))


def optimal_value(plant, X: torch.Tensor, inst: Instances, rewards: Rewards, gamma: float) -> torch.Tensor:
    """Discounted return of the optimal policy from states ``X`` ``(T, B, state_dim)``, shape ``(T, B)``.

    With ``d`` optimal steps left (maze: BFS distance of the agent's cell; sudoku: empty
    cells), ``V*(x) = step * sum_{k<d} gamma^k + gamma^(d-1) * goal`` (0 at the goal). A
    function of the state only, so as a REINFORCE baseline it leaves the gradient unbiased
    (Sutton & Barto, 2nd ed., sec. 13.4), and an optimal episode has zero advantage.
    """
    T, B, _ = X.shape
    if plant.name == "maze":
        hw = plant.height * plant.width
        agent = X[..., hw + 2:hw + 4].round().long()
        flat = inst.distances.reshape(B, -1)
        d = flat.gather(1, (agent[..., 0] * plant.width + agent[..., 1]).T).T.float()
    else:
        d = (X == 0).sum(-1).float()
    geo = d if gamma == 1 else (1 - gamma ** d) / (1 - gamma)
    value = rewards.step * geo + rewards.goal * gamma ** (d - 1).clamp(min=0)
    return torch.where(d > 0, value, torch.zeros_like(value))


def _step(plant, x, a, inst: Instances, rewards: Rewards, on_mistake="terminate"):
    """Batched transition: ``(x_next, reward, success, failed)``."""
    if plant.name == "maze":
        x1, r, reached, _ = maze_transition(plant, x, a, rewards)
        return x1, r, reached, torch.zeros_like(reached)
    x1, r, solved, _, mistake = sudoku_transition(plant, x, a, inst.solutions, rewards, on_mistake)
    return x1, r, solved, mistake & (on_mistake == "terminate")


# ---------------------------------------------------------------------------- supervised
def _policy_loss(policy, out: PolicyOutput, x, inst, cfg: DiscreteTrainConfig, active):
    plant = policy.plant
    opt = optimal_action_mask(plant, x, inst)
    cycles = range(len(out.logits)) if cfg.deep_supervision else [len(out.logits) - 1]
    w = active.float() / active.float().sum().clamp(min=1)
    loss = 0.0
    dense = out.token_logits is not None and cfg.dense_weight > 0
    if dense:
        t, cells = dense_targets(plant, x, inst)
        cells = cells & active[:, None]
    for c in cycles:
        loss = loss + (set_loss(out.logits[c], opt) * w).sum()
        if dense:
            per = set_loss(out.token_logits[c], t)
            loss = loss + cfg.dense_weight * (per * cells).sum() / cells.sum().clamp(min=1)
    return loss / len(cycles)


@torch.no_grad()
def _states_along(plant, inst: Instances, t: torch.Tensor):
    """States after the first ``t[i]`` optimal actions of every instance, and the previous actions."""
    x = inst.x0.clone()
    prev = torch.full((len(inst),), -1, dtype=torch.long)
    for k in range(int(t.max()) if len(t) else 0):
        move = k < t
        a = inst.actions[:, k].clamp(min=0)
        x = torch.where(move[:, None], _step(plant, x, a, inst, Rewards())[0], x)
        prev = torch.where(move, a, prev)
    return x, prev


def _teacher_forced(policy, inst: Instances, cfg, opt) -> list:
    """Whole optimal sequences with the latent carried (detached) between steps; one optimiser step per step."""
    plant = policy.plant
    x, state = inst.x0, None
    prev = torch.full((len(inst),), -1, dtype=torch.long)
    steps = int(inst.lengths.max())
    if cfg.max_sequence is not None:
        steps = min(steps, cfg.max_sequence)
    losses = []
    for t in range(steps):
        active = inst.lengths > t
        out = policy(x, prev, state)
        loss = _policy_loss(policy, out, x, inst, cfg, active)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            a = inst.actions[:, t].clamp(min=0)
            x = torch.where(active[:, None], _step(plant, x, a, inst, Rewards())[0], x)
            prev = torch.where(active, a, prev)
            state = out.state.detach()
    return losses


def train_supervised(policy, train: Instances, cfg: DiscreteTrainConfig, deadline: float | None = None,
                     history: list | None = None) -> list:
    """Teacher-forced supervised training on optimal action sequences (see the module notes).

    Parameters
    ----------
    policy : RecursivePolicy or MLPPolicy
    train : Instances
    cfg : DiscreteTrainConfig
    deadline : float, optional
        ``time.monotonic()`` value at which to stop; the learning-rate cosine then ends there
        at the latest (see :class:`DiscreteTrainConfig`).
    history : list, optional
        Appended with ``{"stage": "supervised", "batch", "loss", "lr", "seconds"}`` records.

    Returns
    -------
    list of dict
        The history.
    """
    history = [] if history is None else history
    plant = policy.plant
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(cfg.supervised_batches, 1)
    t0 = time.monotonic()
    budget = None if deadline is None else max(deadline - t0, 1e-9)

    def progress(k: int) -> float:  # fraction of the planned batches or of the time budget
        done = k / total
        if budget is not None:
            done = max(done, (time.monotonic() - t0) / budget)
        return min(done, 1.0)

    # cosine decay over the planned batches or the time budget (stepped once per batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress(k))))
    carry = getattr(policy.config, "carry_latent", False) and policy.config.architecture == "trc"
    policy.train()
    for batch in range(cfg.supervised_batches):
        if deadline is not None and time.monotonic() > deadline:
            log.info("supervised stage stopped by the time budget after %d batches", batch)
            break
        idx = torch.randint(len(train), (min(cfg.batch_size, len(train)),), generator=gen)
        inst = train.subset(idx)
        lr = opt.param_groups[0]["lr"]
        if cfg.augment:
            inst = _augment(plant, inst, gen)
        if carry:
            losses = _teacher_forced(policy, inst, cfg, opt)
        else:
            # one state per instance, drawn uniformly along its optimal action sequence
            t = (torch.rand(len(inst), generator=gen) * inst.lengths).long()
            if getattr(policy, "agent_independent", False):
                t = torch.zeros_like(t)  # a maze planner's outputs do not depend on the agent's cell
            x, prev = _states_along(plant, inst, t)
            out = policy(x, prev)
            loss = _policy_loss(policy, out, x, inst, cfg, torch.ones(len(inst), dtype=torch.bool))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
            losses = [float(loss.detach())]
        sched.step()
        history.append({"stage": "supervised", "batch": batch, "loss": float(np.mean(losses)), "lr": lr,
                        "seconds": time.monotonic() - t0})
        if batch % 10 == 0:
            log.info("supervised batch %d: loss %.4f (%.0f s)", batch, history[-1]["loss"], history[-1]["seconds"])
    return history


# ---------------------------------------------------------------------------- rollouts and RL
@torch.no_grad()
def rollout(policy, inst: Instances, max_steps: int, *, greedy: bool = True, rewards: Rewards = Rewards(),
            on_mistake: str = "terminate", generator: torch.Generator | None = None, record: bool = False,
            temperature: float = 1.0) -> dict:
    """Batched episodes of a policy from ``inst.x0``.

    Parameters
    ----------
    policy : RecursivePolicy or MLPPolicy
    inst : Instances
    max_steps : int
        Truncation limit.
    greedy : bool
        Arg-max actions (evaluation) or samples (RL).
    rewards : Rewards
    on_mistake : str
        Sudoku only, see :func:`dynamics.discrete_env.sudoku_transition`.
    generator : torch.Generator, optional
        For sampling.
    temperature : float
        Samples from ``softmax(logits / temperature)`` (ignored when greedy).
    record : bool
        Keep the per-step states, latents, previous actions, actions and alive masks (RL).

    Returns
    -------
    dict
        ``success`` bool ``(B,)``, ``steps`` int ``(B,)``, ``returns`` ``(B,)``, ``rewards``
        ``(T, B)``, ``alive`` bool ``(T, B)``, and with ``record`` the lists ``x``, ``state``,
        ``prev``, ``actions``.
    """
    plant = policy.plant
    carry = getattr(policy.config, "carry_latent", False) and policy.config.architecture == "trc"
    B = len(inst)
    x, state = inst.x0.clone(), None
    prev = torch.full((B,), -1, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool)
    success = torch.zeros(B, dtype=torch.bool)
    steps = torch.zeros(B, dtype=torch.long)
    rec = {"x": [], "state": [], "prev": [], "actions": []}
    all_r, alive = [], []
    # agent-independent per-cell outputs (maze planner): one recursion per episode
    field = policy.token_outputs(x)[0][-1] if getattr(policy, "agent_independent", False) else None
    for _ in range(max_steps):
        if done.all():
            break
        if field is not None:
            out = PolicyOutput([policy.action_logits(field, x)], None, None)
        else:
            out = policy(x, prev, state if carry else None)
        logits = out.logits[-1]
        if greedy:
            a = logits.argmax(-1)
        else:
            a = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        if record:
            rec["x"].append(x)
            rec["state"].append(state if carry else None)
            rec["prev"].append(prev)
            rec["actions"].append(a)
        x1, r, ok, failed = _step(plant, x, a, inst, rewards, on_mistake)
        live = ~done
        all_r.append(torch.where(live, r, torch.zeros_like(r)))
        alive.append(live)
        steps += live.long()
        success |= live & ok
        done |= ok | failed
        x = torch.where(live[:, None], x1, x)
        prev = torch.where(live, a, prev)
        state = out.state
    R = torch.stack(all_r) if all_r else torch.zeros(0, B)
    result = {"success": success, "steps": steps, "returns": R.sum(0), "rewards": R,
              "alive": torch.stack(alive) if alive else torch.zeros(0, B, dtype=torch.bool)}
    if record:
        result.update(rec)
    return result


def _problem_rewards(problem) -> Rewards:
    return Rewards(**problem.rewards)


def policy_gradient_terms(logits: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
                          old_logp: torch.Tensor, ref_logp: torch.Tensor | None = None, *,
                          clip: float | None = None, temperature: float = 1.0, max_ratio: float | None = None):
    """Per-transition terms of the clipped policy-gradient loss with a KL penalty to a reference policy.

    With ``log pi = log_softmax(logits / temperature)`` and the ratio
    ``rho = pi(a | x) / pi_old(a | x)`` to the policy that collected the transitions, the
    surrogate is ``rho A`` (its gradient at ``rho = 1`` is REINFORCE's ``A grad log pi(a | x)``),
    or with ``clip = eps`` PPO's ``min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` (Schulman et al.,
    arXiv 1707.06347, eq. 7). The penalty is the exact KL divergence over the actions
    ``KL(pi || pi_ref) = sum_a pi(a | x) (log pi(a | x) - log pi_ref(a | x))`` (the KL-regularised
    objective of Jaques et al., arXiv 1611.02796, and of RL fine-tuning from a supervised
    policy, Ziegler et al., arXiv 1909.08593); masked actions (logits at ``-1e9``) have zero
    probability under both policies and add nothing.

    Parameters
    ----------
    logits : Tensor, shape ``(n, num_actions)``
        Current logits at the visited states.
    actions : Tensor of int64, shape ``(n,)``
        Actions taken.
    advantages : Tensor, shape ``(n,)``
    old_logp : Tensor, shape ``(n,)``
        ``log pi_old(a | x)`` of the actions taken, under the policy that collected them.
    ref_logp : Tensor, shape ``(n, num_actions)``, optional
        Log-probabilities of the reference policy; default: no KL term (returned as zeros).
    clip : float, optional
        PPO's ``eps`` in ``(0, 1)``; default: no clipping.
    temperature : float
        Temperature of the policy (``> 0``).
    max_ratio : float, optional
        Truncation ``rho_bar`` of the ratio, applied before the clip: a ratio above it counts as
        ``rho_bar`` and its gradient is ``rho_bar A grad log pi(a | x)`` (the truncated importance
        weight of V-trace, Espeholt et al., arXiv 1802.01561, eq. 4); default: none.

    Returns
    -------
    surrogate, entropy, kl : Tensor, each ``(n,)``
        The loss is ``-surrogate - beta * entropy + kl_coef * kl``, averaged over transitions.
    clipped : Tensor of bool, shape ``(n,)``
        Transitions whose ratio lies outside ``[1 - eps, 1 + eps]``.

    Raises
    ------
    DimensionError
        If the shapes do not match.
    """
    n = logits.shape[0]
    if logits.ndim != 2 or actions.shape != (n,) or advantages.shape != (n,) or old_logp.shape != (n,):
        raise DimensionError(
            f"policy_gradient_terms: logits {tuple(logits.shape)}, actions {tuple(actions.shape)}, advantages "
            f"{tuple(advantages.shape)}, old_logp {tuple(old_logp.shape)}; expected (n, A), (n,), (n,), (n,)")
    if ref_logp is not None and ref_logp.shape != logits.shape:
        raise DimensionError(f"policy_gradient_terms: ref_logp has shape {tuple(ref_logp.shape)}; expected "
                             f"{tuple(logits.shape)} like the logits")
    logp = torch.log_softmax(logits / temperature, -1)
    finite = logp.clamp(min=-1e4)
    p = logp.exp()
    chosen = logp.gather(1, actions[:, None])[:, 0]
    ratio = torch.exp(chosen - old_logp)
    if max_ratio is not None:
        ratio = torch.where(ratio.detach() > max_ratio, max_ratio * ratio / ratio.detach(), ratio)
    surrogate = ratio * advantages
    clipped = torch.zeros(n, dtype=torch.bool, device=logits.device)
    if clip is not None:
        surrogate = torch.minimum(surrogate, ratio.clamp(1 - clip, 1 + clip) * advantages)
        clipped = (ratio < 1 - clip) | (ratio > 1 + clip)
    entropy = -(p * finite).sum(-1)
    if ref_logp is None:
        kl = torch.zeros_like(entropy)
    else:
        kl = (p * (finite - ref_logp.clamp(min=-1e4))).sum(-1)
    return surrogate, entropy, kl, clipped


def discounted_returns(rewards: torch.Tensor, alive: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_k gamma^k r_{t+k}`` of every step of batched episodes.

    Parameters
    ----------
    rewards : Tensor, shape ``(T, B)``
        Rewards, zero after an episode ended.
    alive : Tensor of bool, shape ``(T, B)``
        Steps taken before the end of each episode.
    gamma : float

    Returns
    -------
    Tensor, shape ``(T, B)``
    """
    G = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0]) if len(rewards) else None
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * alive[t].float()
        G[t] = running
    return G


def group_advantages(returns: torch.Tensor, group: int) -> torch.Tensor:
    """Leave-one-out advantages ``R_i - mean_{j != i} R_j`` within consecutive groups of episodes.

    Parameters
    ----------
    returns : Tensor, shape ``(B,)``
        Episode returns, ``B = M * group`` with the ``group`` episodes of one instance adjacent.
    group : int
        Episodes per instance (``>= 2``).

    Returns
    -------
    Tensor, shape ``(B,)``
        Equal to ``group / (group - 1) * (R_i - mean of the group)`` (Kool, van Hoof & Welling,
        2019): an unbiased baseline, since it does not depend on episode ``i``.

    Raises
    ------
    DimensionError
        If ``B`` is not a multiple of ``group`` or ``group < 2``.
    """
    if returns.ndim != 1 or group < 2 or returns.shape[0] % group:
        raise DimensionError(f"group_advantages: returns of shape {tuple(returns.shape)} with group {group}; "
                             f"expected (M * group,) with group >= 2")
    R = returns.reshape(-1, group)
    return (group / (group - 1) * (R - R.mean(1, keepdim=True))).reshape(-1)


def _transition_chunks(t_idx: torch.Tensor, carried: bool, size: int) -> list:
    """Index chunks into the visited transitions; with a carried latent, first steps (no latent
    yet) and later steps are never mixed in one chunk."""
    groups = [t_idx == 0, t_idx > 0] if carried else [torch.ones_like(t_idx, dtype=torch.bool)]
    chunks = []
    for group in groups:
        sel = group.nonzero(as_tuple=True)[0]
        chunks += [sel[s:s + size] for s in range(0, len(sel), size)]
    return chunks


def _cycle_logits(net, field, steps, ti, bi) -> list:
    """Action logits of every trained H-cycle at the recorded transitions ``(ti, bi)``.

    ``steps`` is ``(X, P, Z_H, Z_L, deep_supervision)``: the stacked states ``(T, B, state_dim)``,
    previous actions ``(T, B)`` and carried latents (or None) of the episodes; ``field`` the
    per-cell logits of a maze planner (:func:`_planner_field`) or None.
    """
    X, P, Z_H, Z_L, deep = steps
    if field is not None:
        return [net.action_logits(tl[bi], X[ti, bi]) for tl in field]
    state = None
    if Z_H is not None and bool((ti > 0).all()):
        state = LatentState(Z_H[ti - 1, bi], None if Z_L is None else Z_L[ti - 1, bi])
    logits = net(X[ti, bi], P[ti, bi], state).logits
    return logits if deep else logits[-1:]


def _planner_field(net, x0: torch.Tensor, deep: bool) -> list:
    """Per-cell logits of a maze planner, one recursion per episode (its outputs ignore the current cell)."""
    token_logits, _ = net.token_outputs(x0)
    return token_logits if deep else token_logits[-1:]


def train_reinforce(policy, problem, cfg: DiscreteTrainConfig, deadline: float | None = None,
                    history: list | None = None, instance_pool: Instances | None = None) -> list:
    """Policy-gradient fine-tuning on fresh instances (see the module notes).

    Every iteration samples ``rl_batch`` episodes (``rl_group`` per instance) with the current
    policy (at ``rl_temperature``), computes the discounted returns and the advantages of
    ``baseline`` (see :class:`DiscreteTrainConfig`), then takes ``rl_epochs`` optimiser steps on
    the loss of :func:`policy_gradient_terms`
    (clipped with ``clip``, KL penalty ``kl_coef`` to the policy as it was when this stage
    started, entropy bonus ``entropy``), averaged over the visited transitions and the H-cycles.

    Deep supervision: the actions are sampled from the last H-cycle, so the ratio of every
    cycle ``c`` is ``pi_c(a | x) / pi_K,old(a | x)``, an importance weight that makes cycle
    ``c``'s term an off-policy gradient of its own return (the baseline then cancels for it as
    well). Without the weight, ``E_{a ~ pi_K}[(G - b) grad log pi_c(a)]`` keeps the term
    ``-b grad sum_a pi_K(a) log pi_c(a)``, which for the positive ``V*`` baseline pushes the
    earlier cycles, and through the shared weights the whole network, away from the acting
    policy. The weights are truncated at ``rl_max_ratio``. The KL penalty compares each cycle
    with the same cycle of the reference. With the
    defaults (one epoch, no clip, no KL, temperature 1) and one H-cycle (or
    ``deep_supervision: false``) this is REINFORCE with a baseline.

    Parameters
    ----------
    policy : RecursivePolicy or MLPPolicy
    problem : trc.discrete.MazeProblem or trc.discrete.SudokuProblem
    cfg : DiscreteTrainConfig
        ``rl_iterations``, ``rl_batch``, ``rl_group``, ``rl_lr``, ``rl_warmup``, ``rl_epochs``,
        ``gamma``, ``entropy``, ``baseline``, ``normalize_advantage``, ``kl_coef``, ``clip``,
        ``rl_max_ratio``, ``rl_temperature``, ``rl_minibatch``.
    deadline : float, optional
    history : list, optional
        Appended with ``{"stage": "rl", "iteration", "mean_return", "success", "kl",
        "clip_fraction", "lr", "seconds"}`` (``kl``: mean ``KL(pi || pi_ref)`` of the last
        H-cycle over the visited states before the update; ``clip_fraction`` over the last
        epoch).
    instance_pool : Instances, optional
        Draw episodes from this pool instead of generating fresh instances (faster for 9 x 9
        sudoku, whose generation takes ~0.1 s per puzzle).

    Returns
    -------
    list of dict
    """
    history = [] if history is None else history
    plant = policy.plant
    rewards = _problem_rewards(problem)
    on_mistake = getattr(problem, "on_mistake", "terminate")
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng([cfg.seed, 2])
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.rl_lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / (cfg.rl_warmup + 1)))
    reference = None
    if cfg.kl_coef > 0:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    planner = getattr(policy, "agent_independent", False)
    tau = cfg.rl_temperature
    t0 = time.monotonic()
    for it in range(cfg.rl_iterations):
        if deadline is not None and time.monotonic() > deadline:
            log.info("RL stage stopped by the time budget after %d iterations", it)
            break
        distinct = cfg.rl_batch // cfg.rl_group
        if instance_pool is not None:
            inst = instance_pool.subset(torch.randint(len(instance_pool), (distinct,), generator=gen))
            if cfg.augment:
                inst = _augment(plant, inst, gen)
        else:
            inst = instances_from_problem(problem, distinct, rng)
        if cfg.rl_group > 1:  # the episodes of one instance adjacent
            inst = inst.subset(torch.arange(distinct).repeat_interleave(cfg.rl_group))
        policy.eval()
        ep = rollout(policy, inst, problem.max_steps, greedy=False, rewards=rewards, on_mistake=on_mistake,
                     generator=gen, record=True, temperature=tau)
        alive = ep["alive"]
        G = discounted_returns(ep["rewards"], alive, cfg.gamma)
        X, P, A = torch.stack(ep["x"]), torch.stack(ep["prev"]), torch.stack(ep["actions"])  # (T, B, ...)
        if cfg.baseline == "optimal":
            adv = (G - optimal_value(plant, X, inst, rewards, cfg.gamma)) * alive
        elif cfg.baseline == "mean":
            count = alive.float().sum(1, keepdim=True).clamp(min=1)
            adv = (G - ((G * alive).sum(1, keepdim=True) / count).expand_as(G)) * alive
        else:
            adv = group_advantages(G[0], cfg.rl_group)[None, :] * alive
        if cfg.normalize_advantage and alive.sum() > 1:
            adv = adv / (adv[alive].std() + 1e-6)
        carried = [s for s in ep["state"][1:]]
        Z_H = torch.stack([s.z_H for s in carried]) if carried and carried[0] is not None else None
        Z_L = torch.stack([s.z_L for s in carried]) if Z_H is not None and carried[0].z_L is not None else None
        t_idx, b_idx = alive.nonzero(as_tuple=True)
        total = len(t_idx)
        chunks = _transition_chunks(t_idx, Z_H is not None and not planner, cfg.rl_minibatch)
        steps = (X, P, Z_H, Z_L, cfg.deep_supervision)

        def cycle_logits(net, field, sel, steps=steps, t_idx=t_idx, b_idx=b_idx):
            return _cycle_logits(net, field, steps, t_idx[sel], b_idx[sel])

        def field_of(net, x0=inst.x0):
            return _planner_field(net, x0, cfg.deep_supervision) if planner else None

        with torch.no_grad():  # the collecting and the reference policy at every visited transition
            field, ref_field = field_of(policy), None if reference is None else field_of(reference)
            old, ref = [], []
            for sel in chunks:
                a = A[t_idx[sel], b_idx[sel]][:, None]
                # the collecting policy is the last H-cycle: every cycle's ratio is taken against it
                last = cycle_logits(policy, field, sel)[-1]
                old.append(torch.log_softmax(last / tau, -1).gather(1, a)[:, 0])
                ref.append(None if reference is None else
                           [torch.log_softmax(lg / tau, -1) for lg in cycle_logits(reference, ref_field, sel)])
        kl_start = float("nan")
        policy.train()
        for epoch in range(cfg.rl_epochs):
            opt.zero_grad(set_to_none=True)
            field = field_of(policy)
            n_clipped, kl_sum = 0, 0.0
            for k, sel in enumerate(chunks):
                ti, bi = t_idx[sel], b_idx[sel]
                cycles = cycle_logits(policy, field, sel)
                loss = 0.0
                for c, lg in enumerate(cycles):
                    surrogate, ent, kl, clipped = policy_gradient_terms(
                        lg, A[ti, bi], adv[ti, bi], old[k], None if ref[k] is None else ref[k][c],
                        clip=cfg.clip, temperature=tau, max_ratio=cfg.rl_max_ratio)
                    loss = loss + (-surrogate - cfg.entropy * ent + cfg.kl_coef * kl).sum() / total
                n_clipped += int(clipped.sum())
                kl_sum += float(kl.detach().sum())
                (loss / len(cycles)).backward(retain_graph=field is not None and k + 1 < len(chunks))
            if epoch == 0:
                kl_start = kl_sum / max(total, 1)
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        history.append({"stage": "rl", "iteration": it, "mean_return": float(ep["returns"].mean()),
                        "success": float(ep["success"].float().mean()), "kl": kl_start,
                        "clip_fraction": n_clipped / max(total, 1), "lr": lr,
                        "seconds": time.monotonic() - t0})
        if it % 10 == 0:
            log.info("RL iteration %d: return %.3f, success %.3f, KL to reference %.4f", it,
                     history[-1]["mean_return"], history[-1]["success"], kl_start)
    policy.eval()
    return history


# ---------------------------------------------------------------------------- evaluation
def evaluate_policy(policy, problem, inst: Instances, *, batch_size: int = 256) -> dict:
    """Greedy evaluation on instances (see the module notes).

    Returns
    -------
    dict
        ``episodes``, ``success_rate``, ``mean_steps``, ``mean_optimal_steps``,
        ``optimality_gap`` (mean ``steps / optimal - 1`` over solved instances),
        ``within_5pct`` (fraction of all instances solved within 5 % of optimal),
        ``mean_return``, ``parameters``.
    """
    policy.eval()
    rewards = _problem_rewards(problem)
    on_mistake = getattr(problem, "on_mistake", "terminate")
    succ, steps, ret = [], [], []
    for start in range(0, len(inst), batch_size):
        part = inst.subset(torch.arange(start, min(start + batch_size, len(inst))))
        ep = rollout(policy, part, problem.max_steps, greedy=True, rewards=rewards, on_mistake=on_mistake)
        succ.append(ep["success"])
        steps.append(ep["steps"])
        ret.append(ep["returns"])
    success, steps, ret = torch.cat(succ), torch.cat(steps).float(), torch.cat(ret)
    opt = inst.lengths.float()
    gap = steps / opt - 1
    return {
        "episodes": len(inst),
        "success_rate": float(success.float().mean()),
        "mean_steps": float(steps.mean()),
        "mean_optimal_steps": float(opt.mean()),
        "optimality_gap": float(gap[success].mean()) if success.any() else float("nan"),
        "within_5pct": float((success & (gap <= 0.05 + 1e-9)).float().mean()),
        "mean_return": float(ret.mean()),
        "parameters": count_parameters(policy),
    }
