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
    ``loss = -mean[(G_t - b(x_t)) log pi(a_t | x_t)] - beta H(pi(. | x_t))``, averaged over the
    H-cycles (deep supervision). The default baseline is the optimal value ``V*(x_t)`` known
    from the generator (a function of the state, so the gradient stays unbiased, and optimal
    episodes have zero advantage: fine-tuning cannot unlearn an optimal policy by noise);
    ``baseline: mean`` uses the batch mean of the return at each step instead. Rollouts run
    without gradient; log-probabilities are then recomputed in mini-batches from the stored
    states (and carried latents), or, for maze planners, read from one recursion per episode.

Evaluation (:func:`evaluate_policy`)
    Greedy batched rollouts through the same transition functions as the gymnasium
    environments (:mod:`dynamics.discrete_env`): success rate, steps, optimality gap
    ``steps / optimal - 1`` of solved instances, and the fraction solved within 5 % of optimal.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from dynamics.discrete_env import Rewards, maze_transition, sudoku_transition
from dynamics.errors import ConfigError

from ..config import check_int
from ..generators.discrete import generate_discrete
from ..models.discrete import PolicyOutput, count_parameters
from ..models.recursion import LatentState

__all__ = [
    "DiscreteTrainConfig", "Instances", "instances_from_dataset", "instances_from_problem", "optimal_action_mask",
    "dense_targets", "set_loss", "train_supervised", "train_reinforce", "evaluate_policy", "rollout",
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
    gamma : float
        Discount.
    entropy : float
        Entropy bonus ``beta``.
    baseline : {"optimal", "mean"}
        REINFORCE baseline: the optimal value ``V*(x)`` of the generator's solution
        (:func:`optimal_value`, state-dependent) or the batch mean of the return per step.
    normalize_advantage : bool
        Divide advantages by their standard deviation.
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
    gamma: float = 0.99
    entropy: float = 0.001
    baseline: str = "optimal"
    normalize_advantage: bool = False
    rl_minibatch: int = 1024
    eval_episodes: int = 500
    max_minutes: float = 20.0
    out: Optional[str] = None
    threads: Optional[int] = None

    def __post_init__(self):
        for key in ("batch_size", "rl_batch", "rl_minibatch", "eval_episodes"):
            check_int(getattr(self, key), f"training.{key}", 1)
        for key in ("seed", "supervised_batches", "rl_iterations"):
            check_int(getattr(self, key), f"training.{key}", 0)
        for key in ("lr", "rl_lr", "max_minutes", "grad_clip"):
            if not (isinstance(getattr(self, key), (int, float)) and getattr(self, key) > 0):
                raise ConfigError(f"training.{key} must be positive, got {getattr(self, key)!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"training.gamma must lie in (0, 1], got {self.gamma!r}")
        if self.entropy < 0 or self.dense_weight < 0 or self.weight_decay < 0:
            raise ConfigError("training.entropy, dense_weight and weight_decay must be non-negative")
        if self.baseline not in ("optimal", "mean"):
            raise ConfigError(f"training.baseline must be 'optimal' or 'mean', got {self.baseline!r}")
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
            on_mistake: str = "terminate", generator: torch.Generator | None = None, record: bool = False) -> dict:
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
        a = logits.argmax(-1) if greedy else torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
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


def train_reinforce(policy, problem, cfg: DiscreteTrainConfig, deadline: float | None = None,
                    history: list | None = None, instance_pool: Instances | None = None) -> list:
    """REINFORCE fine-tuning on fresh instances (see the module notes).

    Parameters
    ----------
    policy : RecursivePolicy or MLPPolicy
    problem : trc.discrete.MazeProblem or trc.discrete.SudokuProblem
    cfg : DiscreteTrainConfig
        ``rl_iterations``, ``rl_batch``, ``rl_lr``, ``gamma``, ``entropy``, ``rl_minibatch``.
    deadline : float, optional
    history : list, optional
        Appended with ``{"stage": "rl", "iteration", "mean_return", "success", "seconds"}``.
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
    t0 = time.monotonic()
    for it in range(cfg.rl_iterations):
        if deadline is not None and time.monotonic() > deadline:
            log.info("RL stage stopped by the time budget after %d iterations", it)
            break
        if instance_pool is not None:
            inst = instance_pool.subset(torch.randint(len(instance_pool), (cfg.rl_batch,), generator=gen))
            if cfg.augment:
                inst = _augment(plant, inst, gen)
        else:
            inst = instances_from_problem(problem, cfg.rl_batch, rng)
        policy.eval()
        ep = rollout(policy, inst, problem.max_steps, greedy=False, rewards=rewards, on_mistake=on_mistake,
                     generator=gen, record=True)
        T = ep["rewards"].shape[0]
        G = torch.zeros_like(ep["rewards"])
        running = torch.zeros(len(inst))
        for t in reversed(range(T)):
            running = ep["rewards"][t] + cfg.gamma * running * ep["alive"][t].float()
            G[t] = running
        alive = ep["alive"]
        X, P, A = torch.stack(ep["x"]), torch.stack(ep["prev"]), torch.stack(ep["actions"])  # (T, B, ...)
        if cfg.baseline == "optimal":
            baseline = optimal_value(plant, X, inst, rewards, cfg.gamma)
        else:
            count = alive.float().sum(1, keepdim=True).clamp(min=1)
            baseline = ((G * alive).sum(1, keepdim=True) / count).expand_as(G)
        adv = (G - baseline) * alive
        if cfg.normalize_advantage and alive.sum() > 1:
            adv = adv / (adv[alive].std() + 1e-6)
        carried = [s for s in ep["state"][1:]]
        Z_H = torch.stack([s.z_H for s in carried]) if carried and carried[0] is not None else None
        Z_L = torch.stack([s.z_L for s in carried]) if Z_H is not None and carried[0].z_L is not None else None
        t_idx, b_idx = alive.nonzero(as_tuple=True)
        total = len(t_idx)
        policy.train()
        opt.zero_grad(set_to_none=True)

        def pg_loss(cycles, ti, bi):
            loss = 0.0
            for logits in cycles:
                logp = torch.log_softmax(logits, -1)
                chosen = logp.gather(1, A[ti, bi][:, None])[:, 0]
                ent = -(logp.exp() * logp.clamp(min=-1e4)).sum(-1)
                loss = loss + (-(adv[ti, bi] * chosen) - cfg.entropy * ent).sum() / total
            return loss / len(cycles)

        if getattr(policy, "agent_independent", False):
            # one recursion per episode, read out at every visited cell
            token_logits, _ = policy.token_outputs(inst.x0)
            cycles = token_logits if cfg.deep_supervision else token_logits[-1:]
            for start in range(0, total, cfg.rl_minibatch):
                ti, bi = t_idx[start:start + cfg.rl_minibatch], b_idx[start:start + cfg.rl_minibatch]
                logits = [policy.action_logits(tl[bi], X[ti, bi]) for tl in cycles]
                pg_loss(logits, ti, bi).backward(retain_graph=start + cfg.rl_minibatch < total)
        else:
            groups = [t_idx == 0, t_idx > 0] if Z_H is not None else [torch.ones_like(t_idx, dtype=torch.bool)]
            for group in groups:
                gt, gb = t_idx[group], b_idx[group]
                for start in range(0, len(gt), cfg.rl_minibatch):
                    ti, bi = gt[start:start + cfg.rl_minibatch], gb[start:start + cfg.rl_minibatch]
                    state = None
                    if Z_H is not None and bool((ti > 0).all()):
                        state = LatentState(Z_H[ti - 1, bi], None if Z_L is None else Z_L[ti - 1, bi])
                    out = policy(X[ti, bi], P[ti, bi], state)
                    pg_loss(out.logits if cfg.deep_supervision else out.logits[-1:], ti, bi).backward()
        nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        history.append({"stage": "rl", "iteration": it, "mean_return": float(ep["returns"].mean()),
                        "success": float(ep["success"].float().mean()), "seconds": time.monotonic() - t0})
        if it % 10 == 0:
            log.info("RL iteration %d: return %.3f, success %.3f", it, history[-1]["mean_return"],
                     history[-1]["success"])
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
