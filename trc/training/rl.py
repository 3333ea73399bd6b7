"""REINFORCE fine-tuning of a continuous TRC model (the optional ``--stage rl`` of ``trc.train``).

The deterministic controller ``mu(x0, x*)`` (a :class:`~trc.models.TinyRecursiveControl`, whose
output is the whole control sequence ``(batch, horizon, control_dim)``) becomes a Gaussian
policy ``u_k ~ N(mu_k, diag(sigma^2))`` with a learned state-independent ``log sigma`` per
control (Williams, *Machine Learning* 8, 1992; Sutton & Barto, *Reinforcement Learning*, 2nd
ed., sec. 13.3-13.7). Rewards are the negated stage costs of the TRC cost convention
(:mod:`trc.cost`)::

    r_k = -dt [(x_k - x*)' Q (x_k - x*) + u_k' R u_k]          k < N - 1
    r_{N-1} = (the same) - (x_N - x*)' Qf (x_N - x*)

returns ``G_k = sum_{j >= k} gamma^(j - k) r_j`` with a per-step batch-mean baseline, and

    loss = -mean_k,b[(G_k - b_k) / std * log N(u_k | mu_k, sigma)] - beta * H(sigma)

averaged over the controls of every H-cycle (deep supervision: ``TRCOutput.all_controls``).
Samples are clipped to the control bounds before the rollout; the log-probability is that of
the unclipped sample.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dynamics.errors import ConfigError

__all__ = ["ContinuousRLConfig", "stage_rewards", "reinforce_continuous"]

log = logging.getLogger("trc.training.rl")


@dataclass
class ContinuousRLConfig:
    """Settings of the continuous REINFORCE stage.

    Attributes
    ----------
    iterations : int
        Policy-gradient steps.
    batch_size : int
        Episodes (initial state, target) per step, drawn from the problem's distributions.
    lr : float
        AdamW learning rate (small: the stage fine-tunes a pre-trained model).
    sigma : float
        Initial exploration standard deviation, as a fraction of the control range
        ``u_max - u_min`` (or absolute for unbounded controls).
    gamma : float
        Discount.
    entropy : float
        Entropy bonus ``beta``.
    deep_supervision : bool
        Average the loss over the controls of every H-cycle (else the final controls only).
    seed : int
    max_minutes : float
        Wall-clock budget.
    """

    iterations: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    sigma: float = 0.05
    gamma: float = 1.0
    entropy: float = 1e-3
    deep_supervision: bool = True
    seed: int = 0
    max_minutes: float = 20.0

    def __post_init__(self):
        for key in ("iterations", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"rl.{key} must be a positive integer, got {getattr(self, key)!r}")
        if not (self.lr > 0 and self.sigma > 0 and 0 < self.gamma <= 1 and self.entropy >= 0 and self.max_minutes > 0):
            raise ConfigError("rl: need lr > 0, sigma > 0, 0 < gamma <= 1, entropy >= 0, max_minutes > 0")


def stage_rewards(problem, states: torch.Tensor, controls: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-step rewards ``(batch, horizon)``: negated stage costs, the terminal cost in the last step.

    ``-rewards.sum(1)`` equals the problem's cost ``J`` of :mod:`trc.cost` (quadratic cost).

    Raises
    ------
    ConfigError
        For a problem whose cost is not quadratic.
    """
    if problem.cost != "quadratic":
        raise ConfigError(
            f"REINFORCE fine-tuning needs a quadratic cost, problem {problem.name!r} has {problem.cost!r}"
        )
    Q, R, Qf = (torch.as_tensor(w, dtype=states.dtype) for w in problem.weights)
    e = states - target[:, None, :]
    stage = problem.dt * (torch.einsum("bki,ij,bkj->bk", e[:, :-1], Q, e[:, :-1])
                          + torch.einsum("bki,ij,bkj->bk", controls, R, controls))
    terminal = torch.einsum("bi,ij,bj->b", e[:, -1], Qf, e[:, -1])
    r = -stage
    r[:, -1] = r[:, -1] - terminal
    return r


def reinforce_continuous(model, problem, config: ContinuousRLConfig | None = None, history: list | None = None) -> list:
    """Fine-tune a continuous TRC model with REINFORCE (see the module notes).

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        Called as ``model(x0, target, plant=False, return_all_iterations=True)``.
    problem : trc.problem.Problem
        Plant, cost and the distributions of initial and target states.
    config : ContinuousRLConfig
    history : list, optional
        Appended with ``{"iteration", "mean_return", "mean_cost_greedy", "sigma"}`` per step.

    Returns
    -------
    list of dict
    """
    cfg = config or ContinuousRLConfig()
    history = [] if history is None else history
    plant = problem.make_plant(torch.float32)
    m = plant.control_dim
    lo, hi = plant.u_min.float(), plant.u_max.float()
    span = torch.where(torch.isfinite(hi - lo), hi - lo, torch.ones_like(lo))
    log_sigma = nn.Parameter(torch.log(cfg.sigma * span))
    opt = torch.optim.AdamW([*model.parameters(), log_sigma], lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng([cfg.seed, 3])
    gen = torch.Generator().manual_seed(cfg.seed)
    deadline = time.monotonic() + 60 * cfg.max_minutes
    for it in range(cfg.iterations):
        if time.monotonic() > deadline:
            log.info("continuous RL stopped by the time budget after %d iterations", it)
            break
        x0, target = (torch.as_tensor(a, dtype=torch.float32) for a in problem.sample(cfg.batch_size, rng))
        model.train()
        out = model(x0, target, plant=False, return_all_iterations=True)
        means = out.all_controls[1:] if cfg.deep_supervision else out.all_controls[-1:]  # (C, B, N, m)
        with torch.no_grad():
            sigma = log_sigma.exp()
            u = out.controls + sigma * torch.randn(out.controls.shape, generator=gen)
            u_applied = plant.clamp_controls(u)
            states = plant.rollout(x0, u_applied)
            r = stage_rewards(problem, states, u_applied, target)
            G = torch.zeros_like(r)
            running = torch.zeros(r.shape[0])
            for k in reversed(range(r.shape[1])):
                running = r[:, k] + cfg.gamma * running
                G[:, k] = running
            adv = G - G.mean(0, keepdim=True)
            adv = adv / (adv.std() + 1e-8)
        logp = -0.5 * (((u - means) / log_sigma.exp()) ** 2).sum(-1) - log_sigma.sum() - 0.5 * m * math.log(2 * math.pi)
        entropy = (log_sigma + 0.5 * math.log(2 * math.pi * math.e)).sum()
        loss = -(adv * logp).mean() - cfg.entropy * entropy
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([*model.parameters(), log_sigma], 1.0)
        opt.step()
        with torch.no_grad():
            greedy = plant.rollout(x0, out.controls.detach())
            J = -stage_rewards(problem, greedy, out.controls.detach(), target).sum(1)
        history.append({"iteration": it, "mean_return": float(r.sum(1).mean()), "mean_cost_greedy": float(J.mean()),
                        "sigma": log_sigma.detach().exp().tolist()})
        if it % 10 == 0:
            log.info("continuous RL %d: return %.4g, greedy cost %.4g", it, history[-1]["mean_return"],
                     history[-1]["mean_cost_greedy"])
    model.eval()
    return history
