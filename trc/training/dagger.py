"""Dataset aggregation (DAgger): train a TRC model for use as a receding-horizon controller.

Trained open loop, a TRC model sees only optimal trajectories from the sampled ``(x0, x*)``
pairs. Used as a feedback controller (re-plan from the measured state every step, apply the
first control ``u_0``), it visits states that the optimal trajectories never pass, the target
itself included, and settles with an offset there. DAgger (Ross, Gordon & Bagnell, *A Reduction
of Imitation Learning and Structured Prediction to No-Regret Online Learning*, AISTATS 2011,
Alg. 3.1) fixes the training distribution: every round

1. runs the current model in closed loop on ``episodes`` episodes, batched over the episodes
   (torch, float64): each episode on the problem's plant with its physical parameters scaled by
   factors drawn from ``U[param_scale]`` (one factor per episode and parameter), additive
   Gaussian process noise on the state after every step and measurement noise on the state the
   model sees; a fraction of the episodes starts near the target;
2. labels the visited states ``(x_k, x*)`` with the problem's optimal solver, in one batch
   (:func:`trc.generators.make_solver`); instances the solver fails on are dropped and counted;
3. adds the labels to the aggregated data set (the configuration's own data set, if any, plus
   the labels of every round so far) and fine-tunes the model on the union with the project's
   trainer and losses (:class:`trc.training.Trainer`, :class:`trc.training.TRCLoss`).

Problems with a fixed final time (the rocket's landing, :func:`trc.closed_loop.fixed_final_time`)
run ``N``-step episodes re-planned with the time left (shrinking horizon, a model with
``model.time_to_go``): the state visited at step ``k`` is labelled with the optimal plan for the
``N - k`` steps left (a solver per horizon), stored padded to ``N`` with its ``steps_to_go``, and an
episode succeeds when its final state is within the tolerance.

The labels are the *nominal* optimal plans from the visited states (the solver knows only the
nominal plant), as in DAgger's expert queries; the mismatch and the noise act on the states
the closed loop visits. The controller stays the network and its plant feedback: no stage is
added, so :func:`trc.save`, :func:`trc.load` and :mod:`trc.export` take the result unchanged.

Metrics of an episode of ``steps`` control steps (``2 N`` by default)
----------------------------------------------------------------------
* **success**: every state of the last 10 % of the episode (at least the final one) within
  ``problem.tolerance`` of the target (:func:`trc.evaluation.terminal_error`), no state bound
  or problem constraint violated, no divergence;
* **cost ratio**: the problem's cost of the first ``N`` closed-loop steps plus the terminal
  term at ``x_N`` (:meth:`trc.problem.Problem.cost_of`, the project's convention), divided by
  the open-loop optimum from the same ``x0``;
* **steady-state error**: the mean distance to the target over the last 10 %.

Each round logs these on its training episodes and on a fixed held-out set of initial states
(``eval_episodes``), once nominal (no mismatch, no noise) and once perturbed (the round's
mismatch and noise, the same draws every round), next to the saturated infinite-horizon LQR of
the linearisation at the target (python-control ``dlqr`` of the zero-order-hold
discretisation of ``plant.linearize(x*, 0)`` with the weights ``Q dt``, ``R dt``, clipped to
the bounds) on the same states and perturbations, plus solver calls and seconds.

Files of a run folder ``out``::

    out/dagger.json          the settings and every round's metrics (rewritten after each round)
    out/heldout.npz          held-out initial states, targets, perturbations and optimal costs
    out/round_0/metrics.json the given model's held-out metrics (and the LQR's)
    out/round_<k>/labels.h5  round k's labelled states (the HDF5 schema of the data sets)
    out/round_<k>/checkpoint.pt, metrics.csv, metrics.jsonl   the fine-tuning (resumable)
    out/round_<k>/model.pt   the model after round k
    out/round_<k>/metrics.json
    out/model.pt             the model after the last round

Every file is written atomically (:mod:`trc.io`). A rerun of the same command resumes: finished
rounds are read back, an interrupted fine-tuning continues from its checkpoint, and ``--rounds``
larger than before adds rounds. The same seed gives the same arrays.

Command line::

    python -m trc.training.dagger --config configs/van_der_pol_closed_loop.yaml \\
        --model runs/van_der_pol_fast/model.pt --rounds 3 --out runs/van_der_pol_closed_loop --seed 0
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import control as ct
import numpy as np
import torch

import dynamics
from dynamics.errors import CheckpointError, ConfigError, DimensionError, TRCError
from dynamics.registry import unknown_name

from ..cli import add_quiet, add_seed, positive_int, run
from ..closed_loop import fixed_final_time
from ..config import check_int, check_real, check_seed, is_real
from ..data import FIELDS, TrajectoryData, TrajectorySplit
from ..evaluation import problem_violations, terminal_error
from ..experiment import load_experiment
from ..generators import make_solver
from ..generators.base import Solution
from ..generators.lqr import infinite_horizon_gain
from ..generators.storage import SPLIT_NAMES, GeneratedDataset, read_dataset, write_dataset
from ..io import atomic_path, atomic_write_text, output_lock
from ..kinds.base import load as load_model
from ..kinds.base import save as save_model
from ..kinds.continuous import run_training
from ..models import TinyRecursiveControl
from ..problem import Problem
from .config import TrainConfig
from .trainer import Trainer

__all__ = [
    "DaggerConfig",
    "DaggerResult",
    "run_dagger",
    "perturbed_plant",
    "sample_parameter_scales",
    "closed_loop",
    "model_policy",
    "saturated_lqr_policy",
    "episode_metrics",
    "summarize",
    "main",
]

log = logging.getLogger("trc.training.dagger")

#: Fraction of an episode's final states that must lie within the tolerance (reach and hold).
HOLD_FRACTION = 0.1

#: Stream tags of the seeded random generators (``np.random.default_rng([seed, tag, round])``).
_TRAIN_STREAM, _EVAL_STREAM = 1, 2

Policy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------- configuration
@dataclass
class DaggerConfig:
    """Settings of :func:`run_dagger`.

    Attributes
    ----------
    rounds : int
        Aggregation rounds (>= 1); round 0 is the given model.
    episodes : int
        Closed-loop episodes per round, simulated as one batch.
    steps : int or None
        Control steps per episode; ``None``: ``2 N`` (reach, then hold for ``N`` steps).
        At least ``N``, so that the cost over the first ``N`` steps exists.
    param_scale : list of 2 float
        ``[low, high]``, ``0 < low <= high``: each perturbed physical parameter of the plant is
        multiplied by a factor drawn from ``U[low, high]`` per episode. ``[1, 1]``: nominal.
    params : list of str or None
        Names of the perturbed parameters (keys of ``plant.params``); ``None``: every scalar
        physical parameter of the plant.
    process_noise : float or list of float
        Standard deviation of the Gaussian noise added to the state after every step, in state
        units (one value, or one per state).
    measurement_noise : float or list of float
        Standard deviation of the Gaussian noise on the state the model sees, in state units.
    near_target_fraction : float
        Fraction of the training episodes (in ``[0, 1]``) that start near the target:
        ``x0 = x* + near_target_radius * h * U[-1, 1]^n``, ``h`` the half-range of the problem's
        initial-state box (1 where the box is a point).
    near_target_radius : float
        See ``near_target_fraction`` (> 0).
    labels_per_round : int or None
        States labelled per round: every episode's initial state plus a uniform random subset
        of the other visited states; ``None``: every visited state.
    epochs : int
        Fine-tuning epochs per round (over the aggregated data set).
    lr : float or None
        Peak learning rate of the fine-tuning; ``None``: the configuration's ``training.lr``.
    eval_episodes : int
        Held-out episodes of the per-round evaluation (nominal and perturbed, same states).
    val_fraction : float
        Fraction of each round's labels kept for validation (in ``[0, 0.5]``).
    solver_options : dict
        Keyword arguments of the solver, merged over the configuration's ``generator.options``.
    seed : int
        Seed of every random draw (episodes, perturbations, noise, label subsets, training).

    Raises
    ------
    ConfigError
        On a value of the wrong type or out of range, naming the field, the accepted range and
        the value received (e.g. a negative scale, ``rounds < 1``).
    """

    rounds: int = 3
    episodes: int = 64
    steps: Optional[int] = None
    param_scale: list = field(default_factory=lambda: [0.8, 1.2])
    params: Optional[list] = None
    process_noise: Any = 0.0
    measurement_noise: Any = 0.0
    near_target_fraction: float = 0.25
    near_target_radius: float = 0.1
    labels_per_round: Optional[int] = 4000
    epochs: int = 20
    lr: Optional[float] = None
    eval_episodes: int = 100
    val_fraction: float = 0.1
    solver_options: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        self.rounds = check_int(self.rounds, "dagger.rounds", 1)
        self.episodes = check_int(self.episodes, "dagger.episodes", 1)
        if self.steps is not None:
            self.steps = check_int(self.steps, "dagger.steps", 1)
        scale = self.param_scale
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(is_real(v) for v in scale)):
            raise ConfigError(f"dagger.param_scale must be a list [low, high] of two numbers, got {scale!r}")
        low, high = float(scale[0]), float(scale[1])
        if not 0 < low <= high:
            raise ConfigError(f"dagger.param_scale must satisfy 0 < low <= high (positive scale factors), "
                              f"got [{low}, {high}]")
        self.param_scale = [low, high]
        if self.params is not None:
            if not (isinstance(self.params, (list, tuple)) and all(isinstance(p, str) for p in self.params)):
                raise ConfigError(f"dagger.params must be a list of parameter names or null, got {self.params!r}")
            self.params = list(self.params)
        self.process_noise = _check_std(self.process_noise, "dagger.process_noise")
        self.measurement_noise = _check_std(self.measurement_noise, "dagger.measurement_noise")
        self.near_target_fraction = check_real(self.near_target_fraction, "dagger.near_target_fraction", 0.0, 1.0)
        self.near_target_radius = check_real(self.near_target_radius, "dagger.near_target_radius", 0.0,
                                             low_open=True)
        if self.labels_per_round is not None:
            self.labels_per_round = check_int(self.labels_per_round, "dagger.labels_per_round", 1)
        self.epochs = check_int(self.epochs, "dagger.epochs", 1)
        if self.lr is not None:
            self.lr = check_real(self.lr, "dagger.lr", 0.0, low_open=True)
        self.eval_episodes = check_int(self.eval_episodes, "dagger.eval_episodes", 1)
        self.val_fraction = check_real(self.val_fraction, "dagger.val_fraction", 0.0, 0.5)
        if not isinstance(self.solver_options, dict) or not all(isinstance(k, str) for k in self.solver_options):
            raise ConfigError(f"dagger.solver_options must be a mapping of named options, got {self.solver_options!r}")
        self.seed = check_seed(self.seed, "dagger.seed")

    def replace(self, **changes) -> "DaggerConfig":
        """A validated copy with ``changes`` applied (unknown names raise ConfigError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown DaggerConfig field(s) {unknown}; allowed: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def horizon_steps(self, problem) -> int:
        """Control steps per episode for ``problem`` (``2 N`` unless set; ``N`` with a fixed final time).

        Raises
        ------
        ConfigError
            If ``steps`` is shorter than the horizon ``N``, or is not ``N`` for a problem with a
            fixed final time.
        """
        if fixed_final_time(problem):
            if self.steps not in (None, problem.horizon):
                raise ConfigError(f"dagger.steps must be the horizon N={problem.horizon} for a problem with a fixed "
                                  f"final time, got {self.steps}")
            return problem.horizon
        steps = 2 * problem.horizon if self.steps is None else self.steps
        if steps < problem.horizon:
            raise ConfigError(f"dagger.steps must be at least the horizon N={problem.horizon} (the closed-loop "
                              f"cost covers the first N steps), got {steps}")
        return steps


def _check_std(value, where: str):
    """A noise standard deviation: a number >= 0 or a list of them."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{where} must be a number >= 0 or a non-empty list of them, got {value!r}")
        return [check_real(v, f"{where}[{i}]", 0.0) for i, v in enumerate(value)]
    return check_real(value, where, 0.0)


def _std_vector(value, n: int, where: str) -> torch.Tensor:
    """A noise standard deviation as a float64 tensor ``(n,)``.

    Raises
    ------
    DimensionError
        If a list has another length than ``n``.
    """
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise DimensionError(f"{where} has {t.numel()} entries; the plant has state_dim={n} (give 1 or {n})")
    return t


# ---------------------------------------------------------------------------- plant and perturbations
def perturbed_params(plant: dynamics.Plant, names: list | None) -> list[str]:
    """The names of the parameters to perturb, checked against ``plant.params``.

    Parameters
    ----------
    plant : dynamics.Plant
    names : list of str or None
        ``None``: every scalar physical parameter of the plant (possibly none, e.g. the double
        integrator's).

    Raises
    ------
    UnknownNameError
        If a name is not a physical parameter of the plant (the message lists them).
    ConfigError
        If a named parameter is not a scalar (array parameters cannot take one factor per
        episode in a batched simulation).
    """
    params = plant.params
    if names is None:
        return sorted(k for k, v in params.items() if np.ndim(v) == 0)
    for name in names:
        if name not in params:
            raise unknown_name(f"physical parameter of plant {plant.name!r}", name, params)
        if np.ndim(params[name]) != 0:
            raise ConfigError(f"plant parameter {name!r} of {plant.name!r} has shape {np.shape(params[name])}; only "
                              f"scalar parameters can be perturbed per episode")
    return list(names)


def sample_parameter_scales(names: list[str], num: int, low: float, high: float,
                            rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scale factors ``U[low, high]``, one per episode and parameter: ``{name: (num,)}``."""
    return {name: low + (high - low) * rng.random(num) for name in names}


def perturbed_plant(problem, scales: dict[str, np.ndarray] | None = None) -> dynamics.Plant:
    """The problem's plant in float64 with per-episode physical parameters.

    Parameters
    ----------
    problem : trc.Problem
    scales : dict of str to ndarray ``(E,)``, optional
        Factors of the named parameters; the plant then holds parameter tensors of shape
        ``(E,)``, which broadcast over a batch of ``E`` states (one system per episode). ``None``
        or empty: the nominal plant.

        Parameters whose factors are all 1 are left at their nominal scalar value, so that
        ``param_scale = [1, 1]`` gives the nominal plant for every plant, also for plants whose
        constructor takes scalar parameters only.

    Returns
    -------
    dynamics.Plant
        Built with :func:`dynamics.make` in float64, the problem's ``dt`` and bounds.

    Raises
    ------
    ConfigError
        If the plant does not accept one parameter value per episode (its constructor takes
        scalars only); the message names the plant and the way out (``param_scale = [1, 1]``).
    """
    plant = problem.make_plant(torch.float64)
    scales = {k: v for k, v in (scales or {}).items() if np.any(np.asarray(v, dtype=np.float64) != 1.0)}
    if not scales:
        return plant
    nominal = plant.params
    kwargs = {k: v for k, v in problem.plant.items() if k != "name"}
    kwargs["dt"] = float(problem.dt)
    for name, factor in scales.items():
        kwargs[name] = float(nominal[name]) * np.asarray(factor, dtype=np.float64)
    try:
        return dynamics.make(problem.plant["name"], dtype=torch.float64, **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"plant {problem.plant['name']!r} does not take one value of {sorted(scales)} per episode "
                          f"({exc}); run it without parameter mismatch (dagger.param_scale = [1, 1], "
                          f"--param-scale 1 1)") from exc


def _near_target_states(problem, target: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    lo, hi = np.asarray(problem.initial_state.low), np.asarray(problem.initial_state.high)
    half = np.where(hi > lo, (hi - lo) / 2, 1.0)
    return target + radius * half * rng.uniform(-1.0, 1.0, size=target.shape)


# ---------------------------------------------------------------------------- closed loop
def model_policy(model: TinyRecursiveControl, feedback: bool = True) -> Policy:
    """A receding-horizon policy of a TRC model: ``u = model(y, x*)[:, 0]``, in float64.

    Parameters
    ----------
    model : TinyRecursiveControl
        Copied; the copy runs in float64, eval mode, without gradients.
    feedback : bool
        Use the model's plant for its trajectory-error feedback (``False``: the network alone).

    Returns
    -------
    callable
        ``policy(y, target)`` with ``y``, ``target`` ``(E, state_dim)`` returning ``(E, control_dim)``;
        a model with ``time_to_go`` also takes ``steps_to_go`` (int).
    """
    net = copy.deepcopy(model).double().eval()
    plant = None if feedback else False

    def policy(y: torch.Tensor, target: torch.Tensor, steps_to_go: int | None = None) -> torch.Tensor:
        k = {} if steps_to_go is None else {"steps_to_go": steps_to_go}
        with torch.no_grad():
            return net(y, target, plant=plant, **k)[:, 0]

    return policy


def saturated_lqr_policy(problem, target: torch.Tensor) -> Policy:
    """Saturated infinite-horizon LQR at the targets: ``u = clip(-K (y - x*), u_min, u_max)``.

    ``K`` is the discrete-time LQR gain (python-control ``dlqr``, weights ``Q dt`` and ``R dt``;
    :func:`trc.generators.lqr.infinite_horizon_gain`) of the zero-order-hold discretisation
    (``control.c2d``) of the nominal plant's linearisation ``plant.linearize(x*, 0)``. One gain
    per distinct target (one in all for a linear plant).

    Parameters
    ----------
    problem : trc.Problem
    target : Tensor, shape ``(E, state_dim)``

    Returns
    -------
    callable
        ``policy(y, target)`` returning ``(E, control_dim)``, float64.

    Raises
    ------
    UncontrollableError
        If a linearisation is not controllable.
    """
    plant = problem.make_plant(torch.float64)
    _, R, _ = problem.weights
    Q = problem.weights[0]
    dt = float(problem.dt)
    targets = target.detach().cpu().double().numpy()
    linear = plant.linear_matrices() is not None
    unique, inverse = np.unique(targets, axis=0, return_inverse=True)
    if linear:
        unique, inverse = unique[:1], np.zeros(len(targets), dtype=np.int64)
    gains = []
    for xt in unique:  # one Riccati equation per distinct target (setup, not the simulation)
        sysd = ct.c2d(plant.linearize(xt, np.zeros(plant.control_dim)), dt, method="zoh")
        K, _, _ = infinite_horizon_gain(sysd.A, sysd.B, Q, R, dt=dt)
        gains.append(K)
    K = torch.as_tensor(np.stack(gains)[np.asarray(inverse).reshape(-1)], dtype=torch.float64)  # (E, m, n)
    lo, hi = plant.u_min, plant.u_max

    def policy(y: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        u = -torch.einsum("emn,en->em", K, y - xt)
        return torch.maximum(torch.minimum(u, hi), lo)

    return policy


def closed_loop(policy: Policy, plant: dynamics.Plant, x0: torch.Tensor, target: torch.Tensor, steps: int, *,
                process_noise=0.0, measurement_noise=0.0, generator: torch.Generator | None = None,
                shrinking: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simulate ``E`` receding-horizon episodes at once.

    ``y_k = x_k + v_k``, ``u_k = policy(y_k, x*)``, ``x_{k+1} = F(x_k, u_k) + w_k`` with ``F`` the
    plant's zero-order-hold step (its parameters may differ per episode, see
    :func:`perturbed_plant`), ``v_k ~ N(0, diag(measurement_noise^2))`` and
    ``w_k ~ N(0, diag(process_noise^2))``. An episode whose state stops being finite is frozen
    at its last finite state and flagged.

    Parameters
    ----------
    policy : callable
        ``policy(y, target)``: ``(E, n)``, ``(E, n)`` to ``(E, m)``.
    plant : dynamics.Plant
        Float64 plant simulating the episodes.
    x0, target : Tensor, shape ``(E, state_dim)``
    steps : int
        Control steps.
    process_noise, measurement_noise : float or sequence of float
        Standard deviations in state units (scalar or per state).
    generator : torch.Generator, optional
        Source of the noise (both noises are drawn every call, so the draws do not depend on
        the standard deviations).
    shrinking : bool
        Fixed final time after ``steps``: call ``policy(y, target, steps - k)`` at step ``k``.

    Returns
    -------
    states : Tensor, shape ``(E, steps + 1, state_dim)``
    controls : Tensor, shape ``(E, steps, control_dim)``
    diverged : Tensor of bool, shape ``(E,)``

    Raises
    ------
    DimensionError
        If a noise vector has the wrong length, or the shapes disagree.
    """
    x = torch.as_tensor(x0, dtype=torch.float64)
    xt = torch.as_tensor(target, dtype=torch.float64)
    if x.ndim != 2 or x.shape != xt.shape or x.shape[1] != plant.state_dim:
        raise DimensionError(f"x0 {tuple(x.shape)} and target {tuple(xt.shape)} must both be "
                             f"(episodes, state_dim={plant.state_dim})")
    E, n = x.shape
    sw = _std_vector(process_noise, n, "process_noise")
    sv = _std_vector(measurement_noise, n, "measurement_noise")
    w = torch.randn((steps, E, n), generator=generator, dtype=torch.float64) * sw
    v = torch.randn((steps, E, n), generator=generator, dtype=torch.float64) * sv
    diverged = torch.zeros(E, dtype=torch.bool)
    states, controls = [x], []
    for k in range(steps):  # time steps; the episodes are the batch
        u = (policy(x + v[k], xt, steps - k) if shrinking else policy(x + v[k], xt)).to(torch.float64)
        nxt = plant.step(x, u) + w[k]
        ok = torch.isfinite(nxt).all(dim=1)
        diverged = diverged | ~ok
        x = torch.where(ok[:, None], nxt, x)
        states.append(x)
        controls.append(u)
    return torch.stack(states, 1), torch.stack(controls, 1), diverged


def episode_metrics(problem, plant: dynamics.Plant, states: torch.Tensor, controls: torch.Tensor,
                    target: torch.Tensor, J_opt: torch.Tensor | None = None,
                    diverged: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Per-episode reach-and-hold success, steady-state error and cost ratio.

    Parameters
    ----------
    problem : trc.Problem
    plant : dynamics.Plant
        For the state bounds.
    states : Tensor, shape ``(E, steps + 1, n)``
    controls : Tensor, shape ``(E, steps, m)``
    target : Tensor, shape ``(E, n)``
    J_opt : Tensor, shape ``(E,)``, optional
        Open-loop optimal costs from the same initial states (NaN where unknown).
    diverged : Tensor of bool, shape ``(E,)``, optional

    Returns
    -------
    dict of str to ndarray ``(E,)``
        ``success`` (bool), ``steady_state_error`` (state units, mean over the last 10 %),
        ``final_error``, ``cost`` (first ``N`` steps plus the terminal term), ``cost_ratio``
        (NaN without ``J_opt``), ``violation`` (bool).
    """
    E, T1, n = states.shape
    N = problem.horizon
    # reach and hold over the last 10 %; with a fixed final time, the final state alone
    tail = 1 if fixed_final_time(problem) else max(1, math.ceil(HOLD_FRACTION * (T1 - 1)))
    end = states[:, -tail:]
    err = terminal_error(problem, end.reshape(-1, n), target.repeat_interleave(tail, 0)).view(E, tail)
    err = torch.nan_to_num(err, nan=math.inf)
    lo, hi = plant.x_min.to(states), plant.x_max.to(states)
    violation = ((states < lo) | (states > hi)).flatten(1).any(1)
    if T1 - 1 >= N:
        violation = violation | problem_violations(problem, plant, states[:, :N + 1], controls[:, :N], target)
        cost = problem.cost_of(states[:, :N + 1], controls[:, :N], target)
    else:
        cost = torch.full((E,), math.nan, dtype=torch.float64)
    bad = torch.zeros(E, dtype=torch.bool) if diverged is None else diverged
    success = (err < problem.tolerance).all(1) & ~violation & ~bad
    ratio = (cost / J_opt.to(cost)) if J_opt is not None else torch.full_like(cost, math.nan)
    return {
        "success": success.numpy(),
        "steady_state_error": err.mean(1).numpy(),
        "final_error": err[:, -1].numpy(),
        "cost": cost.detach().numpy(),
        "cost_ratio": ratio.detach().numpy(),
        "violation": violation.numpy(),
    }


def summarize(metrics: dict[str, np.ndarray]) -> dict[str, float]:
    """Rates, medians and 95th percentiles of :func:`episode_metrics` (NaN ignored)."""

    def q(a, p):
        a = np.asarray(a, dtype=float)
        a = a[~np.isnan(a)]
        return float(np.quantile(a, p)) if a.size else math.nan

    ratio = np.asarray(metrics["cost_ratio"], dtype=float)
    finite = ratio[np.isfinite(ratio)]
    return {
        "episodes": int(len(metrics["success"])),
        "success_rate": float(np.mean(metrics["success"])),
        "violation_rate": float(np.mean(metrics["violation"])),
        "steady_state_error_median": q(metrics["steady_state_error"], 0.5),
        "steady_state_error_p95": q(metrics["steady_state_error"], 0.95),
        "cost_ratio_median": q(ratio, 0.5),
        "cost_ratio_mean": float(finite.mean()) if finite.size else math.nan,
        "cost_ratio_p95": q(ratio, 0.95),
    }


# ---------------------------------------------------------------------------- labels and data
def _dataset(problem, solver_name: str, options: dict, seed: int, sol, x0: np.ndarray, target: np.ndarray,
             keep: np.ndarray, val_fraction: float, rng: np.random.Generator, attrs: dict,
             steps_to_go: np.ndarray | None = None) -> GeneratedDataset:
    """The solved instances of a batch as a data set (failures kept apart); splits train/val;
    ``steps_to_go`` ``(B,)`` for shrinking-horizon plans (padded to ``N``)."""
    idx = np.flatnonzero(keep)
    bad = np.flatnonzero(~keep)
    M = idx.size
    n_val = int(round(val_fraction * M))
    order = rng.permutation(M)
    splits = {"train": np.sort(order[n_val:]), "val": np.sort(order[:n_val]), "test": np.zeros(0, dtype=np.int64)}
    failures = {
        "initial_states": x0[bad], "target_states": target[bad], "status": np.asarray(sol.status)[bad].astype(str),
        "iterations": np.asarray(sol.iterations, dtype=np.int64)[bad],
        "solve_time": np.asarray(sol.solve_time, dtype=np.float64)[bad], "instance_index": bad.astype(np.int64),
    }
    return GeneratedDataset(
        problem=problem, solver=solver_name, solver_options=dict(options), seed=int(seed),
        states=np.asarray(sol.states, dtype=np.float64)[idx], controls=np.asarray(sol.controls, dtype=np.float64)[idx],
        initial_states=x0[idx], target_states=target[idx], costs=np.asarray(sol.costs, dtype=np.float64)[idx],
        status=np.asarray(sol.status)[idx].astype(str), iterations=np.asarray(sol.iterations, dtype=np.int64)[idx],
        solve_time=np.asarray(sol.solve_time, dtype=np.float64)[idx], instance_index=idx.astype(np.int64),
        splits=splits, failures=failures, attrs=attrs,
        steps_to_go=None if steps_to_go is None else np.asarray(steps_to_go, dtype=np.int64)[idx],
    )


def _solve_shrinking(problem, solver_name: str, options: dict, solvers: dict, x0: np.ndarray, target: np.ndarray,
                     steps_to_go: np.ndarray):
    """Solve each instance for its steps to go ``k`` with the solver of horizon ``k`` (``solvers``:
    horizon -> solver, built here when missing and kept for the next rounds); the plans padded to
    ``N`` with ``x_k`` and ``u_{k-1}``. Returns the solution and the usable mask."""
    B, N = len(x0), problem.horizon
    states = np.zeros((B, N + 1, problem.state_dim))
    controls = np.zeros((B, N, problem.control_dim))
    costs, solve_time = np.full(B, np.nan), np.zeros(B)
    iterations, status = np.zeros(B, dtype=np.int64), np.empty(B, dtype=object)
    keep = np.zeros(B, dtype=bool)
    for k in np.unique(steps_to_go):
        rows = np.flatnonzero(steps_to_go == k)
        k = int(k)
        if k not in solvers:
            solvers[k] = make_solver(solver_name, Problem(**{**problem.to_dict(), "horizon": k}), **options)
        sol, ok = _solve(solvers[k], x0[rows], target[rows])
        X, U = np.asarray(sol.states, float), np.asarray(sol.controls, float)
        states[rows] = np.concatenate([X, np.repeat(X[:, -1:], N - k, 1)], 1)
        controls[rows] = np.concatenate([U, np.repeat(U[:, -1:], N - k, 1)], 1)
        costs[rows], solve_time[rows] = sol.costs, sol.solve_time
        iterations[rows], status[rows], keep[rows] = sol.iterations, sol.status, ok
    states[~keep], controls[~keep] = 0.0, 0.0  # failed instances: no arrays (they may hold NaN)
    solution = Solution(states=states, controls=controls, costs=costs, success=keep, status=status.astype(str),
                        iterations=iterations, solve_time=solve_time)
    return solution, keep


def _solve(solver, x0: np.ndarray, target: np.ndarray):
    """Solve a batch; returns the solution and the mask of usable instances (success, finite)."""
    sol = solver.solve(x0, target)
    keep = np.asarray(sol.success, dtype=bool)
    keep &= np.isfinite(np.asarray(sol.costs)) & np.isfinite(np.asarray(sol.controls)).reshape(len(keep), -1).all(1)
    return sol, keep


def _training_data(problem, parts: list[GeneratedDataset], path: Path) -> TrajectoryData:
    """The union of data sets (same problem) as :class:`trc.data.TrajectoryData` (float32 tensors)."""
    arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in
              ("states", "controls", "initial_states", "target_states", "costs", "status", "iterations",
               "solve_time", "instance_index")}
    if any(p.steps_to_go is not None for p in parts):  # shrinking-horizon labels: N for full plans
        arrays["steps_to_go"] = np.concatenate([
            np.full(p.num_samples, problem.horizon, dtype=np.int64) if p.steps_to_go is None else p.steps_to_go
            for p in parts])
    offsets = np.cumsum([0] + [p.num_samples for p in parts])
    splits = {s: np.concatenate([np.asarray(p.splits[s], dtype=np.int64) + o for p, o in zip(parts, offsets)])
              for s in SPLIT_NAMES}
    raw = GeneratedDataset(problem=problem, solver=parts[-1].solver, solver_options=parts[-1].solver_options,
                           seed=parts[-1].seed, splits=splits, **arrays)
    tensors = {}
    for name, index in splits.items():
        fields = {key: torch.as_tensor(getattr(raw, array)[index]).to(torch.float32) for key, array in FIELDS.items()}
        if raw.steps_to_go is not None:
            fields["steps_to_go"] = torch.as_tensor(raw.steps_to_go[index]).to(torch.float32)
        tensors[name] = TrajectorySplit(name, fields)
    return TrajectoryData(path=path, problem=problem, attrs={"solver": raw.solver}, raw=raw, splits=tensors)


# ---------------------------------------------------------------------------- run
@dataclass
class DaggerResult:
    """What :func:`run_dagger` produced.

    Attributes
    ----------
    model : TinyRecursiveControl
        The model after the last round (float32, eval mode).
    rounds : list of dict
        The metrics of every round, round 0 (the given model) first.
    lqr : dict
        The saturated LQR's held-out metrics (``nominal``, ``perturbed``).
    out_dir : pathlib.Path
    """

    model: TinyRecursiveControl
    rounds: list
    lqr: dict
    out_dir: Path


def _fingerprint(problem, config: DaggerConfig, model: TinyRecursiveControl, train: dict, base: str | None) -> dict:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    settings = {k: v for k, v in config.to_dict().items() if k != "rounds"}
    return {"problem": problem.to_dict(), "dagger": settings, "training": train, "base_data": base,
            "initial_model_sha256": digest.hexdigest(), "model_config": model.config.to_dict()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r}: {exc}; remove it to redo that step") from exc


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _heldout(problem, config: DaggerConfig, names: list[str], solver, path: Path) -> dict:
    """Held-out initial states, perturbations, noise seed and optimal costs (computed once, cached)."""
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    rng = np.random.default_rng([config.seed, _EVAL_STREAM])
    E = config.eval_episodes
    x0, target = problem.sample(E, rng)
    scales = sample_parameter_scales(names, E, *config.param_scale, rng)
    t0 = time.perf_counter()
    sol, keep = _solve(solver, x0, target)
    data = {"x0": x0, "target": target, "J_opt": np.where(keep, np.asarray(sol.costs, dtype=float), np.nan),
            "solved": keep, "solve_seconds": np.float64(time.perf_counter() - t0),
            "noise_seed": np.int64(rng.integers(0, 2**62)),
            **{f"scale_{k}": v for k, v in scales.items()}}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **data)
    return data


def _evaluate(policy_of: Callable[[torch.Tensor], Policy], problem, config: DaggerConfig, held: dict,
              steps: int, names: list[str]) -> dict:
    """Held-out metrics of a policy, nominal and perturbed (same states, same draws every call)."""
    x0 = torch.as_tensor(held["x0"], dtype=torch.float64)
    target = torch.as_tensor(held["target"], dtype=torch.float64)
    J_opt = torch.as_tensor(held["J_opt"], dtype=torch.float64)
    out = {}
    nominal = perturbed_plant(problem)
    for mode in ("nominal", "perturbed"):
        if mode == "nominal":
            plant, sw, sv = nominal, 0.0, 0.0
        else:
            plant = perturbed_plant(problem, {k: held[f"scale_{k}"] for k in names})
            sw, sv = config.process_noise, config.measurement_noise
        gen = torch.Generator().manual_seed(int(held["noise_seed"]))
        t0 = time.perf_counter()
        X, U, div = closed_loop(policy_of(target), plant, x0, target, steps, process_noise=sw, measurement_noise=sv,
                                generator=gen, shrinking=fixed_final_time(problem))
        seconds = time.perf_counter() - t0
        m = summarize(episode_metrics(problem, nominal, X, U, target, J_opt, div))
        m["ms_per_step"] = 1e3 * seconds / steps
        out[mode] = m
    return out


def run_dagger(exp, model: TinyRecursiveControl | None, config: DaggerConfig, out, *, base_data: bool = True,
               progress: bool = False) -> DaggerResult:
    """Train ``model`` for closed-loop use by dataset aggregation (see the module documentation).

    Parameters
    ----------
    exp : trc.experiment.Experiment
        A continuous configuration: its problem, ``generator`` (solver and options of the labels),
        ``training`` (the fine-tuning settings; ``epochs``, ``seed`` and ``lr`` come from
        ``config``) and its data set (added to the aggregated data when it exists and
        ``base_data``).
    model : TinyRecursiveControl or None
        The round-0 model, built for ``exp.problem``; ``None`` trains one first with
        :func:`trc.kinds.continuous.run_training` into ``out/round_0``.
    config : DaggerConfig
    out : path-like
        Run folder (see the module documentation for its files).
    base_data : bool
        Aggregate onto the configuration's data set (if it exists).
    progress : bool
        Progress bars of the fine-tuning.

    Returns
    -------
    DaggerResult

    Raises
    ------
    ConfigError
        If the configuration is not continuous or has no ``generator`` section, ``out`` holds a
        run with other settings, another process writes ``out``, or a setting does not fit the
        problem (``steps < N``; see also :class:`DaggerConfig`).
    UnknownNameError
        If ``config.params`` names a parameter the plant does not have.
    DimensionError
        If a noise vector does not have ``state_dim`` entries.
    CheckpointError
        If ``model`` was built for another problem, or a file of ``out`` is unreadable.
    SolverError, DatasetError
        From the solver or the data sets.
    """
    if exp.kind != "continuous":
        raise ConfigError(f"{exp.source} is a {exp.kind} configuration; DAgger needs a continuous one")
    if exp.generator is None:
        raise ConfigError(f"{exp.source} has no 'generator' section; DAgger labels states with its solver")
    problem = exp.problem
    steps = config.horizon_steps(problem)
    nominal = problem.make_plant(torch.float64)
    names = perturbed_params(nominal, config.params)
    n = problem.state_dim
    _std_vector(config.process_noise, n, "dagger.process_noise")
    _std_vector(config.measurement_noise, n, "dagger.measurement_noise")
    train_cfg = exp.parse("training", TrainConfig)
    if model is not None and model.problem_dict != problem.to_dict():
        raise CheckpointError(f"the model was built for problem {model.problem_dict.get('name')!r}, not for the "
                              f"problem of {exp.source} ({problem.name!r}), or with other settings")
    options = {**exp.generator.options, **config.solver_options}
    solver = make_solver(exp.generator.solver, problem, **options)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run folder {str(out)!r} is an existing file, not a folder; choose another --out")
    data_path = exp.dataset_path()
    threads = torch.get_num_threads()
    if train_cfg.num_threads is not None:  # the closed loops and the labels too, not only the training
        torch.set_num_threads(train_cfg.num_threads)
    try:
        return _run(exp, model, config, out, train_cfg, solver, options, names, steps, data_path,
                    base_data and data_path.exists(), progress)
    finally:
        torch.set_num_threads(threads)


def _run(exp, model, config: DaggerConfig, out: Path, train_cfg: TrainConfig, solver, options: dict, names: list,
         steps: int, data_path: Path, use_base: bool, progress: bool) -> DaggerResult:
    """The body of :func:`run_dagger`, once its inputs are checked."""
    problem = exp.problem
    with output_lock(out / "dagger.json"):
        t_start = time.perf_counter()
        if model is None:
            model = run_training(exp, out=out / "round_0", seed=config.seed, resume=True, evaluate=False,
                                 progress=progress, verbose=False).model
        model = copy.deepcopy(model).float().eval()
        train_dict = train_cfg.to_dict()
        fingerprint = _fingerprint(problem, config, model, train_dict, str(data_path) if use_base else None)
        summary_path = out / "dagger.json"
        if summary_path.exists():
            saved = _read_json(summary_path).get("fingerprint")
            if saved != json.loads(json.dumps(fingerprint, default=_json_default)):
                raise ConfigError(f"run folder {str(out)!r} holds a DAgger run with other settings, model or problem; "
                                  f"choose another --out (nothing was changed)")
        out.mkdir(parents=True, exist_ok=True)
        rounds: list[dict] = []

        def write_summary(lqr: dict) -> None:
            _write_json(summary_path, {"fingerprint": fingerprint, "config": config.to_dict(), "steps": steps,
                                       "perturbed_params": names, "lqr": lqr, "rounds": rounds})

        write_summary({})
        # ---- held-out set, round 0 and the LQR baseline
        held = _heldout(problem, config, names, solver, out / "heldout.npz")
        r0 = out / "round_0" / "metrics.json"
        if r0.exists():
            first = _read_json(r0)
        else:
            t0 = time.perf_counter()
            first = {"round": 0, "heldout": _evaluate(lambda t: model_policy(model), problem, config, held, steps,
                                                      names)}
            try:
                lqr = _evaluate(lambda t: saturated_lqr_policy(problem, t), problem, config, held, steps, names)
            except TRCError as exc:  # e.g. an uncontrollable linearisation: no baseline
                lqr = {"error": str(exc)}
            first.update(lqr=lqr, solver_calls=int(len(held["x0"])), seconds=time.perf_counter() - t0,
                         heldout_solved=int(np.sum(held["solved"])))
            _write_json(r0, first)
        lqr = first.get("lqr", {})
        rounds.append(first)
        write_summary(lqr)
        _log_round(first, lqr)

        parts: list[GeneratedDataset] = [read_dataset(data_path)] if use_base else []
        tagged = {"problem": problem.to_dict()}
        for part in parts:
            if part.problem.to_dict() != tagged["problem"]:
                raise ConfigError(f"data set {str(data_path)!r} was generated for another problem than {exp.source!r}")
        current = model
        solvers = {problem.horizon: solver}  # the labels' solver per horizon (shrinking horizons: one per k)
        for k in range(1, config.rounds + 1):
            rd = out / f"round_{k}"
            if (rd / "metrics.json").exists() and (rd / "model.pt").exists():
                parts.append(read_dataset(rd / "labels.h5"))
                current = load_model(rd / "model.pt").float().eval()
                rounds.append(_read_json(rd / "metrics.json"))
                continue
            t_round = time.perf_counter()
            labels_path = rd / "labels.h5"
            if labels_path.exists():
                labels = read_dataset(labels_path)
            else:
                labels = _collect(current, problem, config, solvers, names, steps, k, options,
                                  exp.generator.solver)
                write_dataset(labels_path, labels)
            parts.append(labels)
            collect = labels.attrs.get("dagger") or {}
            # ---- fine-tune on the union
            t_train = time.perf_counter()
            data = _training_data(problem, parts, labels_path)
            cfg = train_cfg.replace(epochs=config.epochs, seed=config.seed + k,
                                    val_every=min(train_cfg.val_every, config.epochs),
                                    **({"lr": config.lr} if config.lr is not None else {}))
            run_config = {**exp.to_dict(), "training": cfg.to_dict(), "dagger": {**config.to_dict(), "round": k}}
            trainer = Trainer(copy.deepcopy(current).float().train(), data, cfg, out_dir=rd, resume=True,
                              run_config=run_config, progress=progress)
            result = trainer.fit()
            current = result.model.cpu().float().eval()
            train_seconds = time.perf_counter() - t_train
            t_eval = time.perf_counter()
            heldout = _evaluate(lambda t: model_policy(current), problem, config, held, steps, names)
            metrics = {
                "round": k, "train_episodes": collect.get("episodes"), "labels": collect.get("labels"),
                "dataset_size": {"train": len(data.train), "val": len(data.val)},
                "heldout": heldout, "solver_calls": collect.get("labels", {}).get("requested"),
                "seconds": {"collect": collect.get("seconds"), "train": train_seconds,
                            "evaluate": time.perf_counter() - t_eval, "round": time.perf_counter() - t_round},
                "training": {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                             "stop_reason": result.stop_reason},
            }
            save_model(current, rd / "model.pt", metadata={
                "dagger": {"round": k, "config": config.to_dict(), "heldout": heldout},
                "config": run_config, "dataset": str(data_path) if use_base else None})
            _write_json(rd / "metrics.json", metrics)
            rounds.append(metrics)
            write_summary(lqr)
            _log_round(metrics, lqr)
        save_model(current, out / "model.pt", metadata={
            "dagger": {"rounds": config.rounds, "config": config.to_dict(), "heldout": rounds[-1]["heldout"],
                       "lqr": lqr},
            "config": {**exp.to_dict(), "dagger": config.to_dict()},
            "dataset": str(data_path) if use_base else None})
        write_summary(lqr)
        log.info("DAgger finished in %.1f s: %s", time.perf_counter() - t_start, out / "model.pt")
    return DaggerResult(model=current, rounds=rounds, lqr=lqr, out_dir=out)


def _collect(model, problem, config: DaggerConfig, solvers: dict, names: list[str], steps: int, k: int, options: dict,
             solver_name: str) -> GeneratedDataset:
    """Round ``k``'s closed-loop episodes of ``model`` and the labels of the visited states
    (``solvers``: horizon -> solver, at least the problem's)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([config.seed, _TRAIN_STREAM, k])
    E = config.episodes
    x0, target = problem.sample(E, rng)
    near = rng.random(E) < config.near_target_fraction
    x0 = np.where(near[:, None], _near_target_states(problem, target, config.near_target_radius, rng), x0)
    scales = sample_parameter_scales(names, E, *config.param_scale, rng)
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    shrinking = fixed_final_time(problem)
    X, U, div = closed_loop(model_policy(model), perturbed_plant(problem, scales),
                            torch.as_tensor(x0), torch.as_tensor(target), steps,
                            process_noise=config.process_noise, measurement_noise=config.measurement_noise,
                            generator=gen, shrinking=shrinking)
    rollout_seconds = time.perf_counter() - t0
    # ---- which visited states to label: every x_0, and a random subset of the others
    visited = X[:, :steps].numpy()  # (E, steps, n): the states a control was computed from
    rest = np.arange(E * (steps - 1))  # the pairs (episode e, step k >= 1), flattened
    e_rest, k_rest = rest // max(steps - 1, 1), rest % max(steps - 1, 1) + 1
    if config.labels_per_round is not None:
        extra = min(max(config.labels_per_round - E, 0), rest.size)
        pick = np.sort(rng.choice(rest.size, size=extra, replace=False))
        e_rest, k_rest = e_rest[pick], k_rest[pick]
    e_all = np.concatenate([np.arange(E), e_rest])
    k_all = np.concatenate([np.zeros(E, dtype=np.int64), k_rest])
    xs, ts = visited[e_all, k_all], target[e_all]
    finite = np.isfinite(xs).all(1) & ~div.numpy()[e_all]
    t1 = time.perf_counter()
    steps_to_go = steps - k_all if shrinking else None
    if shrinking:  # the plan for the time left: one solver per horizon
        sol, keep = _solve_shrinking(problem, solver_name, options, solvers, xs, ts, steps_to_go)
    else:
        sol, keep = _solve(solvers[problem.horizon], xs, ts)
    keep &= finite
    solve_seconds = time.perf_counter() - t1
    # ---- training-episode metrics (the optimal cost from x_0 is the label of x_0)
    J0 = np.where(keep[:E], np.asarray(sol.costs, dtype=float)[:E], np.nan)
    train_m = summarize(episode_metrics(problem, perturbed_plant(problem), X, U, torch.as_tensor(target),
                                        torch.as_tensor(J0), div))
    info = {
        "round": k,
        "episodes": {**train_m, "near_target": int(near.sum()), "diverged": int(div.sum())},
        "labels": {"visited": int(E * steps), "requested": int(len(xs)), "solved": int(keep.sum()),
                   "failed": int((~keep).sum()), "solve_seconds": solve_seconds},
        "seconds": {"rollout": rollout_seconds, "solve": solve_seconds, "total": time.perf_counter() - t0},
    }
    return _dataset(problem, solver_name, options, config.seed, sol, xs, ts, keep, config.val_fraction, rng,
                    {"dagger": info}, steps_to_go)


def _log_round(metrics: dict, lqr: dict) -> None:
    h = metrics["heldout"]
    text = " | ".join(
        f"{mode}: success {h[mode]['success_rate']:.3f}, cost ratio {h[mode]['cost_ratio_median']:.4f}, "
        f"ss error {h[mode]['steady_state_error_median']:.2e}" for mode in ("nominal", "perturbed"))
    log.info("round %d: %s", metrics["round"], text)
    if metrics["round"] == 0 and "nominal" in lqr:
        log.info("LQR: " + " | ".join(
            f"{mode}: success {lqr[mode]['success_rate']:.3f}, cost ratio {lqr[mode]['cost_ratio_median']:.4f}"
            for mode in ("nominal", "perturbed")))


def report_table(rounds: list[dict], lqr: dict) -> str:
    """A Markdown table of the held-out metrics of every round and of the LQR."""
    head = ("| controller | nominal success | nominal cost ratio (median / mean) | nominal ss error | "
            "perturbed success | perturbed cost ratio (median) | perturbed ss error |")
    rows = [head, "|" + "---|" * 7]

    def row(name, h):
        a, b = h["nominal"], h["perturbed"]
        return (f"| {name} | {a['success_rate']:.3f} | {a['cost_ratio_median']:.4f} / {a['cost_ratio_mean']:.4f} | "
                f"{a['steady_state_error_median']:.2e} | {b['success_rate']:.3f} | {b['cost_ratio_median']:.4f} | "
                f"{b['steady_state_error_median']:.2e} |")

    for r in rounds:
        rows.append(row(f"TRC round {r['round']}", r["heldout"]))
    if "nominal" in lqr:
        rows.append(row("saturated LQR", lqr))
    return "\n".join(rows)


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.training.dagger``."""
    d = DaggerConfig()
    p = argparse.ArgumentParser(
        prog="python -m trc.training.dagger",
        description="Fine-tune a TRC model for receding-horizon control by dataset aggregation (DAgger).",
        epilog="Example: python -m trc.training.dagger --config configs/van_der_pol_closed_loop.yaml "
               "--model runs/van_der_pol_fast/model.pt --rounds 3 --out runs/van_der_pol_closed_loop --seed 0",
    )
    p.add_argument("--config", required=True, metavar="YAML", help="continuous configuration (problem, generator, "
                   "training)")
    p.add_argument("--model", metavar="MODEL", help="round-0 model file (default: train one into <out>/round_0)")
    p.add_argument("--rounds", type=positive_int, default=d.rounds, help=f"aggregation rounds (default {d.rounds})")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (a rerun resumes it)")
    add_seed(p, default=d.seed, help="seed of episodes, perturbations, noise, label subsets and training")
    p.add_argument("--episodes", type=positive_int, default=d.episodes, help="closed-loop episodes per round")
    p.add_argument("--steps", type=positive_int, help="control steps per episode (default 2N)")
    p.add_argument("--param-scale", type=float, nargs=2, default=d.param_scale, metavar=("LOW", "HIGH"),
                   help="range of the factors of the physical parameters (default 0.8 1.2)")
    p.add_argument("--params", nargs="+", metavar="NAME", help="perturbed parameters (default: every scalar one)")
    p.add_argument("--process-noise", type=float, nargs="+", default=[d.process_noise], metavar="STD",
                   help="process-noise std per step, state units (one value or one per state)")
    p.add_argument("--measurement-noise", type=float, nargs="+", default=[d.measurement_noise], metavar="STD",
                   help="measurement-noise std, state units (one value or one per state)")
    p.add_argument("--near-target-fraction", type=float, default=d.near_target_fraction,
                   help="fraction of training episodes starting near the target")
    p.add_argument("--near-target-radius", type=float, default=d.near_target_radius,
                   help="their distance, as a fraction of the initial box's half-range")
    p.add_argument("--labels-per-round", type=positive_int, default=d.labels_per_round,
                   help="visited states labelled per round")
    p.add_argument("--all-labels", action="store_true", help="label every visited state")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="fine-tuning epochs per round")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default: training.lr)")
    p.add_argument("--eval-episodes", type=positive_int, default=d.eval_episodes, help="held-out episodes")
    p.add_argument("--no-base-data", action="store_true", help="do not aggregate onto the configuration's data set")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    add_quiet(p)
    return p


def _one(values: list[float]):
    return values[0] if len(values) == 1 else list(values)


def _command(args: argparse.Namespace) -> int:
    exp = load_experiment(args.config)
    config = DaggerConfig(
        rounds=args.rounds, episodes=args.episodes, steps=args.steps, param_scale=list(args.param_scale),
        params=args.params, process_noise=_one(args.process_noise), measurement_noise=_one(args.measurement_noise),
        near_target_fraction=args.near_target_fraction, near_target_radius=args.near_target_radius,
        labels_per_round=None if args.all_labels else args.labels_per_round, epochs=args.epochs, lr=args.lr,
        eval_episodes=args.eval_episodes, seed=args.seed,
    )
    model = None
    if args.model is not None:
        model = load_model(args.model)
        if not isinstance(model, TinyRecursiveControl):
            raise CheckpointError(f"model file {args.model!r} holds a {type(model).__name__}, not a continuous TRC "
                                  f"model")
    result = run_dagger(exp, model, config, args.out, base_data=not args.no_base_data, progress=not args.quiet)
    print(report_table(result.rounds, result.lqr))
    print(f"model: {result.out_dir / 'model.pt'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :mod:`trc.cli`)."""
    parser = build_parser()
    return run(parser, _command, argv, interrupted="rerun the same command to resume")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
