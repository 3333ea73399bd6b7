"""The cheap RECAP plants: episodes, scripted experts and demonstrators, the intervention monitor.

=============  ======================================  =======================================
               maze (:class:`MazeEpisodes`)             continuous (:class:`ContinuousEpisodes`)
=============  ======================================  =======================================
observation    the maze plant state                     state ``x`` and target ``x*``
success        the agent on the goal                    ``||x - x*||_2 < tolerance``
expert         BFS: the first optimal move              infinite-horizon LQR of the problem's
               (:mod:`trc.generators.maze`)             ``Q, R`` on the exact ZOH model, clipped
demonstrator   epsilon-greedy BFS; the non-greedy       detuned LQR (``R`` times ``detune``)
               move is a fixed habit (``habit``) or     plus Gaussian action noise
               uniform over the open moves
progress       BFS distance of the agent to the goal    ``||x - x*||_2``
=============  ======================================  =======================================

The experts act on the current state, so they resume from wherever the policy left the
episode. :func:`run_episodes` steps a batch of episodes together; with a monitor, the expert
takes over an episode (for the rest of it) when it has made no progress for ``patience``
steps or has used more than ``budget`` (60 %) of its step budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dynamics.discrete_env import Rewards, maze_transition
from dynamics.errors import ConfigError, DatasetError

from ..generators.lqr import exact_discretization, infinite_horizon_gain
from ..training.discrete import instances_from_problem, optimal_action_mask

__all__ = ["MazeEpisodes", "ContinuousEpisodes", "Monitor", "run_episodes", "frames_of"]


def _keys(arrays) -> list[bytes]:
    rows = np.concatenate([np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in arrays], 1)
    return [r.tobytes() for r in rows]


class MazeEpisodes:
    """Maze episodes of a :class:`trc.discrete.MazeProblem` (see the module table).

    Parameters
    ----------
    problem : trc.discrete.MazeProblem
    epsilon : float
        Probability of the demonstrator's non-greedy move.
    habit : int or None
        The demonstrator's non-greedy move (0 up, 1 right, 2 down, 3 left; a blocked habit
        falls back to a uniform open move), or None for a uniform open move.
    """

    discrete = True

    def __init__(self, problem, epsilon: float = 0.3, habit: int | None = None):
        self.problem, self.plant = problem, problem.make_plant()
        self.max_steps = int(problem.max_steps)
        self.epsilon, self.habit = float(epsilon), habit
        self.obs_columns = ("observation.state",)
        self.action_dim = 1

    def sample(self, num: int, seed: int, exclude: set | None = None) -> dict:
        """``num`` mazes (BFS-solved), none of whose initial states is in ``exclude``.

        Raises
        ------
        DatasetError
            If the distribution does not hold ``num`` mazes outside ``exclude``.
        """
        exclude = exclude or set()
        draw, tries = num + len(exclude) // 4 + 8, 0
        while True:
            inst = instances_from_problem(self.problem, draw, seed + tries)
            keep = [i for i, k in enumerate(_keys([inst.x0])) if k not in exclude]
            if len(keep) >= num or tries >= 5:
                break
            draw, tries = draw * 2, tries + 1
        if len(keep) < num:
            raise DatasetError(f"the maze distribution gave {len(keep)} mazes outside the excluded ones; "
                               f"expected {num}")
        inst = inst.subset(keep[:num])
        return {"x0": inst.x0, "inst": inst}

    def keys(self, ctx) -> set:
        return set(_keys([ctx["x0"]]))

    def slice(self, ctx, start: int, stop: int) -> dict:
        """Episodes ``start:stop`` of ``ctx``."""
        return {"x0": ctx["x0"][start:stop], "inst": ctx["inst"].subset(list(range(start, stop)))}

    def initial(self, ctx) -> torch.Tensor:
        return ctx["x0"].clone()

    def step(self, x, a, ctx):
        x1, _, reached, _ = maze_transition(self.plant, x, a.long(), Rewards())
        return x1, reached

    def progress(self, x, ctx) -> torch.Tensor:
        hw = self.plant.height * self.plant.width
        agent = x[:, hw + 2:hw + 4].round().long()
        d = ctx["inst"].distances.reshape(x.shape[0], -1)
        return d.gather(1, (agent[:, 0] * self.plant.width + agent[:, 1])[:, None])[:, 0].float()

    def expert(self, x, ctx) -> torch.Tensor:
        best = optimal_action_mask(self.plant, x, ctx["inst"])
        return best.float().argmax(-1)  # ties: the lowest action index, as in the data set's paths

    def demo(self, x, ctx, gen: torch.Generator) -> torch.Tensor:
        legal = ~self.plant.blocked(x)
        uniform = torch.multinomial(legal.float(), 1, generator=gen)[:, 0]
        other = uniform
        if self.habit is not None:
            other = torch.where(legal[:, self.habit], torch.full_like(uniform, self.habit), uniform)
        explore = torch.rand(x.shape[0], generator=gen) < self.epsilon
        return torch.where(explore, other, self.expert(x, ctx))

    def observations(self, x, ctx) -> dict:
        return {"observation.state": x}

    def act(self, policy, obs: dict, beta: float) -> torch.Tensor:
        return policy.guided_logits(obs["observation.state"], beta).argmax(-1)


class ContinuousEpisodes:
    """Continuous regulation episodes of a :class:`trc.Problem` (see the module table).

    Parameters
    ----------
    problem : trc.Problem
        Its targets must be equilibria with zero control (e.g. double-integrator positions at
        rest): the experts are regulators.
    max_steps : int
        Step budget of an episode.
    tolerance : float
        Success radius ``||x - x*||_2``.
    detune : float
        Factor on ``R`` of the demonstrator's LQR (> 1: a slower controller).
    noise : float
        Standard deviation of the demonstrator's action noise, as a fraction of the control's
        half range.

    Raises
    ------
    ConfigError
        If the plant is not affine or the targets are not equilibria at zero control.
    """

    discrete = False

    def __init__(self, problem, max_steps: int, tolerance: float, detune: float = 30.0, noise: float = 0.3):
        self.problem, self.plant = problem, problem.make_plant()
        self.max_steps, self.tolerance = int(max_steps), float(tolerance)
        self.noise = float(noise)
        A, B, _ = exact_discretization(self.plant)
        Q, R, _ = problem.weights
        self.K = torch.as_tensor(infinite_horizon_gain(A, B, Q, R, problem.dt)[0], dtype=torch.float32)
        self.K_demo = torch.as_tensor(infinite_horizon_gain(A, B, Q, float(detune) * np.asarray(R), problem.dt)[0],
                                      dtype=torch.float32)
        self.u_min = self.plant.u_min.float().clone()
        self.u_max = self.plant.u_max.float().clone()
        if not (torch.isfinite(self.u_min).all() and torch.isfinite(self.u_max).all()):
            raise ConfigError("a continuous RECAP problem needs finite control bounds (u_min, u_max)")
        box = problem.target_state
        t = torch.as_tensor(np.stack((box.low, box.high)), dtype=torch.float32)
        drift = self.plant.f(t, torch.zeros(2, self.plant.control_dim))
        if not torch.allclose(drift, torch.zeros_like(drift), atol=1e-6):
            raise ConfigError("the targets of a continuous RECAP problem must be equilibria at zero control (e.g. "
                              f"target_state velocities 0); f(x*, 0) = {drift.tolist()} at the target box corners")
        self.obs_columns = ("observation.state", "observation.environment_state")
        self.action_dim = self.plant.control_dim

    def sample(self, num: int, seed: int, exclude: set | None = None) -> dict:
        x0, xt = self.problem.sample(num, seed)
        keys = _keys([x0, xt])
        keep = [i for i, k in enumerate(keys) if k not in (exclude or set())]
        if len(keep) < num:  # a collision of continuous samples: practically impossible
            raise DatasetError(f"{num - len(keep)} sampled episodes repeat excluded ones; change the seed")
        f = lambda a: torch.as_tensor(a, dtype=torch.float32)
        return {"x0": f(x0), "target": f(xt), "keys": keys}

    def keys(self, ctx) -> set:
        return set(ctx["keys"])

    def slice(self, ctx, start: int, stop: int) -> dict:
        """Episodes ``start:stop`` of ``ctx``."""
        return {"x0": ctx["x0"][start:stop], "target": ctx["target"][start:stop], "keys": ctx["keys"][start:stop]}

    def initial(self, ctx) -> torch.Tensor:
        return ctx["x0"].clone()

    def _clip(self, u):
        return torch.maximum(torch.minimum(u, self.u_max), self.u_min)

    def step(self, x, a, ctx):
        x1 = self.plant.step(x, a)
        return x1, self.progress(x1, ctx) < self.tolerance

    def progress(self, x, ctx) -> torch.Tensor:
        return (x - ctx["target"]).norm(dim=-1)

    def expert(self, x, ctx) -> torch.Tensor:
        return self._clip(-(x - ctx["target"]) @ self.K.T)

    def demo(self, x, ctx, gen: torch.Generator) -> torch.Tensor:
        u = -(x - ctx["target"]) @ self.K_demo.T
        half = (self.u_max - self.u_min) / 2
        return self._clip(u + self.noise * half * torch.randn(u.shape, generator=gen))

    def observations(self, x, ctx) -> dict:
        return {"observation.state": x, "observation.environment_state": ctx["target"]}

    def act(self, policy, obs: dict, beta: float) -> torch.Tensor:
        return policy.guided_action(obs["observation.state"], obs["observation.environment_state"], beta)


@dataclass
class Monitor:
    """When the expert takes over: no progress for ``patience`` steps, or more than ``budget`` of
    the step budget used.

    Attributes
    ----------
    patience : int
        Steps without a new best progress (by ``min_improvement``).
    budget : float
        Fraction of ``max_steps`` in ``(0, 1]``.
    min_improvement : float
        Decrease of the progress measure that counts as progress.
    """

    patience: int = 5
    budget: float = 0.6
    min_improvement: float = 1e-3


@torch.no_grad()
def run_episodes(env, ctx, controller, *, monitor: Monitor | None = None) -> dict:
    """Step a batch of episodes together until success or the step budget.

    Parameters
    ----------
    env : MazeEpisodes or ContinuousEpisodes
    ctx : dict
        From ``env.sample``.
    controller : callable
        ``controller(obs, t) -> actions`` (maze ``(batch,)`` int, continuous ``(batch, m)``).
    monitor : Monitor, optional
        Enables expert takeover.

    Returns
    -------
    dict
        ``obs`` (dict of ``(T, B, ...)``), ``actions`` ``(T, B, ...)``, ``intervention`` and
        ``alive`` bool ``(T, B)``, ``success`` bool ``(B,)``, ``lengths`` int ``(B,)``,
        ``intervened`` bool ``(B,)``.
    """
    x = env.initial(ctx)
    B = x.shape[0]
    done = torch.zeros(B, dtype=torch.bool)
    success = torch.zeros(B, dtype=torch.bool)
    takeover = torch.zeros(B, dtype=torch.bool)
    best = env.progress(x, ctx)
    since = torch.zeros(B, dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)
    rec = {"obs": [], "actions": [], "intervention": [], "alive": []}
    limit = math.ceil(monitor.budget * env.max_steps) if monitor is not None else None
    for t in range(env.max_steps):
        if done.all():
            break
        obs = env.observations(x, ctx)
        a = controller(obs, t)
        if monitor is not None:
            takeover |= ~done & ((since >= monitor.patience) | (t >= limit))
            expert = env.expert(x, ctx)
            a = torch.where(takeover.view(-1, *([1] * (a.ndim - 1))), expert.to(a.dtype), a)
        live = ~done
        rec["obs"].append(obs)
        rec["actions"].append(a)
        rec["intervention"].append(takeover & live)
        rec["alive"].append(live)
        x1, ok = env.step(x, a, ctx)
        x = torch.where(live[:, None], x1, x)
        success |= live & ok
        lengths += live.long()
        done |= ok
        prog = env.progress(x, ctx)
        improved = prog < best - (monitor.min_improvement if monitor is not None else 0.0)
        since = torch.where(improved, torch.zeros_like(since), since + 1)
        best = torch.minimum(best, prog)
    obs = {k: torch.stack([o[k] for o in rec["obs"]]) for k in env.obs_columns}
    return {"obs": obs, "actions": torch.stack(rec["actions"]), "intervention": torch.stack(rec["intervention"]),
            "alive": torch.stack(rec["alive"]), "success": success, "lengths": lengths,
            "intervened": torch.stack(rec["intervention"]).any(0)}


def frames_of(env, episodes: dict) -> dict:
    """Per-frame arrays of :func:`run_episodes` output, episodes contiguous (LeRobot order).

    Returns
    -------
    dict of str to ndarray
        ``episode_index``, ``frame_index``, ``task_index`` int64 ``(F,)``, ``action`` float32
        ``(F, a)``, the observation columns float32 ``(F, d)``, ``complementary_info.is_intervention``
        and ``next.done`` bool ``(F,)``.
    """
    alive = episodes["alive"].T  # (B, T), True on the frames of each episode, a prefix
    B = alive.shape[0]
    pick = lambda a: a.transpose(0, 1)[alive].numpy()
    out = {k: pick(v).astype(np.float32) for k, v in episodes["obs"].items()}
    act = pick(episodes["actions"]).astype(np.float32)
    out["action"] = act.reshape(len(act), env.action_dim)
    ep = np.repeat(np.arange(B), episodes["lengths"].numpy())
    out["episode_index"] = ep.astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(episodes["lengths"].numpy())[:-1]))
    out["frame_index"] = (np.arange(len(ep)) - starts[ep]).astype(np.int64)
    out["task_index"] = np.zeros(len(ep), dtype=np.int64)
    out["complementary_info.is_intervention"] = pick(episodes["intervention"]).astype(bool)
    done = np.zeros(len(ep), dtype=bool)
    done[np.cumsum(episodes["lengths"].numpy()) - 1] = True
    out["next.done"] = done
    return out
