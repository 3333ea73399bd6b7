"""Closed-loop evaluation: a controller in feedback with a simulated plant, against the baselines.

A controller is judged as a control engineer uses it: at every step it is given the *measured*
state, it plans, and the first control of its plan (or the first ``replan_every`` controls) is
applied to a plant simulated independently of the one it was trained with (receding horizon,
Rawlings, Mayne & Diehl, *Model Predictive Control*, 2nd ed., 2017, sec. 1.3). Problems with a
fixed final time (``cost == "fuel"``, the rocket's powered descent) re-plan with the time remaining
(shrinking horizon, as powered-descent guidance does: Açıkmeşe & Ploen 2007).

**Plant.** The vector fields of :mod:`trc.generators.ipopt` (written from the textbooks, not from
the torch plants of :mod:`dynamics`), evaluated by CasADi on the whole batch of episodes at once
and integrated over each sample interval, with the control held, by
:func:`scipy.integrate.solve_ivp` (``DOP853``, ``rtol`` 1e-9 by default). Each episode has its own
physical parameters (:data:`trc.generators.ipopt.PARAMETERS`), so parameter mismatch is exact.

**Perturbations** (:class:`Perturbation`, all drawn from the seed before any controller runs, so
every controller meets the same ones). Levels are fractions of the state scale ``s`` (half the
width of the union of the problem's initial- and target-state boxes, per state; a state whose boxes
are points, such as the rocket's mass, is not perturbed):

``param_scale``
    every physical parameter of the simulated plant scaled by a factor drawn from
    ``U[1 - param_scale, 1 + param_scale]`` per episode;
``process_noise``
    ``x_{k+1} += w_k``, ``w_k ~ N(0, diag(process_noise * s)^2)`` after every interval;
``measurement_noise``
    the controller sees ``x_k + v_k``, ``v_k ~ N(0, diag(measurement_noise * s)^2)``;
``impulse``
    at the middle step, ``x += impulse * s * sign`` with random signs per state.

**Targets** must be equilibria to be held: a target's rate states (units ending in ``/s``) are set
to zero, its holding control ``u_eq`` is the least-squares solution of ``f(x*, u) = 0`` on the
linearisation, and a target with ``||f(x*, u_eq)|| > 1e-6`` raises :class:`ConfigError`.

**Metrics per episode** (:class:`ClosedLoopResult`):

``success``
    reached and held: ``terminal_error(x_k) < problem.tolerance`` (:func:`trc.evaluation.terminal_error`)
    at every step of the last 10 % of the episode, and no state-constraint violation anywhere
    (plant boxes and the problem's own constraints, :func:`trc.evaluation.problem_violations`).
    Fixed final time: the landing rule at the final step, and no violation.
``cost_ratio``
    ``J`` of the first ``N`` steps plus the terminal term at ``x_N`` (:meth:`trc.Problem.cost_of`),
    divided by the open-loop optimum ``J*`` from the same initial state (nominal plant).
``steady_state_error``
    mean error over the last 10 % of the episode (fixed final time: the error at the final step).
``violation``
    a control outside its bounds or a state outside its box or the problem's constraints.
``ms_per_step``
    median wall time of one batch-1 control step (plan + pick the control).

Baselines (:func:`baselines`): the saturated infinite-horizon LQR at the target
(:class:`LQRController`, python-control ``dlqr`` on the zero-order-hold discretisation of
:meth:`dynamics.Plant.linearize`), nonlinear MPC with the problem's horizon, cost and bounds on
the nominal model (:class:`MPCController`, CasADi + IPOPT, warm-started from the previous step's
shifted solution) and the open-loop optimum (the denominator of ``cost_ratio``).

>>> import trc
>>> from trc import closed_loop as cl
>>> model = trc.load("runs/van_der_pol/model.pt")                             # doctest: +SKIP
>>> results = cl.compare(model.problem, [cl.TRCController(model)] + cl.baselines(model.problem),
...                      cl.ClosedLoopConfig(episodes=20, perturbation="perturbed"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import casadi as ca
import control as ct
import numpy as np
import torch
from scipy.integrate import solve_ivp

from dynamics.env import PlantEnv, problem_kwargs
from dynamics.errors import (
    ConfigError,
    DimensionError,
    NonFiniteError,
    UnknownNameError,
)

from .backends import check_backend, map_ordered
from .config import check_int, check_real, check_seed
from .evaluation import constraint_violations, terminal_error
from .generators import ipopt, make_solver
from .io import atomic_write_text

__all__ = ["Perturbation", "PERTURBATIONS", "ClosedLoopConfig", "ClosedLoopResult", "Controller", "TRCController",
           "ExportedTRCController", "LQRController", "PolicyController", "ClosedLoopEnv", "MPCController",
           "baselines", "hold_targets",
           "state_scale", "simulate", "target_error", "run", "compare", "optimal_costs", "default_solver",
           "fixed_final_time",
           "write_report", "summary_table"]

_HOLD_FRACTION = 0.1  # the last 10 % of an episode must stay within the tolerance
_EQUILIBRIUM_TOL = 1e-6
_MIN_SHRINKING_HORIZON = 3  # shrinking-horizon MPC stops re-planning below this many steps to go


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Perturbation:
    """Perturbations of a closed-loop run (levels relative to the state scale; see the module doc).

    Raises
    ------
    ConfigError
        If a level is negative, not finite, or ``param_scale >= 1``.
    """

    param_scale: float = 0.0
    process_noise: float = 0.0
    measurement_noise: float = 0.0
    impulse: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_real(getattr(self, f.name), f"perturbation.{f.name}", low=0.0)
        if self.param_scale >= 1:
            raise ConfigError(f"perturbation.param_scale must be < 1 (a factor 1 - scale > 0), got {self.param_scale}")


#: Named perturbation sets: ``perturbed`` is the issue's "±20 % parameter mismatch and the noise".
PERTURBATIONS: dict[str, Perturbation] = {
    "nominal": Perturbation(),
    "mismatch": Perturbation(param_scale=0.2),
    "noise": Perturbation(process_noise=0.002, measurement_noise=0.002),
    "perturbed": Perturbation(param_scale=0.2, process_noise=0.002, measurement_noise=0.002),
    "impulse": Perturbation(impulse=0.1),
}


@dataclass(frozen=True)
class ClosedLoopConfig:
    """Settings of a closed-loop run.

    Attributes
    ----------
    episodes : int
        Episodes (initial states) per controller.
    steps : int, optional
        Control steps per episode; default ``2 N`` (reach and hold), and ``N`` for a fixed final
        time (shrinking horizon).
    replan_every : int
        Controls of each plan applied before the next plan (1: re-plan at every step).
    perturbation : str or Perturbation
        A name of :data:`PERTURBATIONS` or the levels.
    seed : int
        Seed of the initial states and of every perturbation.
    rtol : float
        Relative tolerance of ``solve_ivp`` (at most 1e-8).
    timing_repeats : int
        Timed batch-1 control steps per controller (after 3 untimed ones).
    """

    episodes: int = 20
    steps: int | None = None
    replan_every: int = 1
    perturbation: str | Perturbation = "nominal"
    seed: int = 0
    rtol: float = 1e-9
    timing_repeats: int = 50

    def __post_init__(self):
        check_int(self.episodes, "closed_loop.episodes", low=1)
        if self.steps is not None:
            check_int(self.steps, "closed_loop.steps", low=1)
        check_int(self.replan_every, "closed_loop.replan_every", low=1)
        check_int(self.timing_repeats, "closed_loop.timing_repeats", low=1)
        check_seed(self.seed, "closed_loop.seed")
        check_real(self.rtol, "closed_loop.rtol", low=1e-14)
        if self.rtol > 1e-8:
            raise ConfigError(f"closed_loop.rtol must be <= 1e-8 (an accurate plant), got {self.rtol}")
        if isinstance(self.perturbation, str):
            if self.perturbation not in PERTURBATIONS:
                raise UnknownNameError(
                    f"unknown perturbation {self.perturbation!r}; choose one of {sorted(PERTURBATIONS)} "
                    f"or give a Perturbation")
        elif not isinstance(self.perturbation, Perturbation):
            raise ConfigError(f"closed_loop.perturbation must be a name or a Perturbation, got {self.perturbation!r}")

    @property
    def levels(self) -> Perturbation:
        """The perturbation levels."""
        p = self.perturbation
        return PERTURBATIONS[p] if isinstance(p, str) else p


def fixed_final_time(problem) -> bool:
    """True for problems whose horizon ends at a fixed time (the fuel-optimal landing): they are
    re-planned with the time remaining and judged at the final step."""
    return problem.cost == "fuel"


def state_scale(problem) -> np.ndarray:
    """Per-state scale ``s`` ``(n,)``: half the width of the union of the initial and target boxes."""
    lo = np.minimum(problem.initial_state.low, problem.target_state.low)
    hi = np.maximum(problem.initial_state.high, problem.target_state.high)
    return (np.asarray(hi, float) - np.asarray(lo, float)) / 2


# ----------------------------------------------------------------------------- the simulated plant
class _Simulator:
    """The CasADi vector field of the problem's plant with per-episode parameters, for solve_ivp."""

    def __init__(self, problem):
        plant = problem.make_plant(torch.float64)
        config = plant.config()
        config.update({key: getattr(plant, key).tolist() for key in plant.params})
        name = config["name"]
        if name not in ipopt.MODELS:
            raise ConfigError(f"no independent simulation model of plant {name!r}; have {sorted(ipopt.MODELS)}")
        self.n, self.m = ipopt.MODELS[name][0], ipopt.MODELS[name][1]
        self.param_names = ipopt.PARAMETERS[name]
        self.nominal = np.array([float(np.asarray(config.get(k, ipopt.DEFAULTS.get(k, 0.0))))
                                 for k in self.param_names])
        symbols = {k: ca.SX.sym(k) for k in self.param_names}
        x, u = ca.SX.sym("x", self.n), ca.SX.sym("u", self.m)
        p = ca.vertcat(*symbols.values()) if symbols else ca.SX(0, 1)
        f = ipopt.vector_field({**config, **symbols})
        self._f = ca.Function("f", [x, u, p], [f(x, u)])
        self._mapped: dict[int, ca.Function] = {}

    def field(self, B: int):
        if B not in self._mapped:
            self._mapped[B] = self._f.map(B)
        return self._mapped[B]

    def step(self, x: np.ndarray, u: np.ndarray, params: np.ndarray, dt: float, rtol: float,
             atol: np.ndarray) -> np.ndarray:
        """Integrate ``(B, n)`` states over ``dt`` with ``(B, m)`` controls held."""
        B, n = x.shape
        F = self.field(B)
        U, P = u.T, params.T

        def rhs(t, y):
            return np.asarray(F(y.reshape(B, n).T, U, P)).T.reshape(-1)

        sol = solve_ivp(rhs, (0.0, dt), x.reshape(-1), method="DOP853", rtol=rtol, atol=np.tile(atol, B))
        if not sol.success:
            raise NonFiniteError(f"the plant simulation failed: {sol.message}")
        return sol.y[:, -1].reshape(B, n)


def simulate(problem, x0, controls, *, params=None, rtol: float = 1e-9) -> np.ndarray:
    """Open-loop simulation of ``controls`` ``(B, T, m)`` from ``x0`` ``(B, n)``: states ``(B, T + 1, n)``.

    ``params`` ``(B, p)`` are the physical parameters of each episode (default nominal), in the order
    of :data:`trc.generators.ipopt.PARAMETERS`.
    """
    sim = _Simulator(problem)
    x0 = np.asarray(x0, float)
    controls = np.asarray(controls, float)
    B = x0.shape[0]
    params = np.tile(sim.nominal, (B, 1)) if params is None else np.asarray(params, float)
    atol = rtol * np.maximum(state_scale(problem), 1.0)
    out = [x0]
    for k in range(controls.shape[1]):
        out.append(sim.step(out[-1], controls[:, k], params, float(problem.dt), rtol, atol))
    return np.stack(out, axis=1)


# ----------------------------------------------------------------------------- targets
def hold_targets(problem, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets that can be held, and their holding controls.

    Rate states (units ending in ``/s``) of ``targets`` ``(B, n)`` are set to zero (a moving state
    cannot be held); ``u_eq`` ``(B, m)`` solves ``f(x*, 0) + B(x*) u = 0`` in least squares
    (``B`` from :meth:`dynamics.Plant.linearize`).

    Raises
    ------
    ConfigError
        If a target is not an equilibrium: ``||f(x*, u_eq)|| > 1e-6``.
    """
    plant = problem.make_plant(torch.float64)
    targets = np.array(targets, dtype=float)
    if fixed_final_time(problem):
        return targets, np.zeros((len(targets), plant.control_dim))
    rates = [i for i, unit in enumerate(plant.state_units) if unit.endswith("/s")]
    targets[:, rates] = 0.0
    u_eq = np.zeros((len(targets), plant.control_dim))
    unique, inverse = np.unique(targets, axis=0, return_inverse=True)
    for j, xt in enumerate(unique):  # one linearisation per distinct target (usually one)
        zero = np.zeros(plant.control_dim)
        Bmat = np.asarray(plant.linearize(xt, zero).B)
        f0 = plant.f(torch.as_tensor(xt)[None], torch.zeros(1, plant.control_dim, dtype=torch.float64))[0].numpy()
        u = -np.linalg.lstsq(Bmat, f0, rcond=None)[0]
        residual = plant.f(torch.as_tensor(xt)[None], torch.as_tensor(u)[None])[0].numpy()
        if np.linalg.norm(residual) > _EQUILIBRIUM_TOL:
            raise ConfigError(
                f"target {xt.tolist()} is not an equilibrium of {plant.name} (||f(x*, u_eq)|| = "
                f"{np.linalg.norm(residual):.3g}); a closed loop can only hold an equilibrium")
        u_eq[inverse.reshape(-1) == j] = u
    return targets, u_eq


# ----------------------------------------------------------------------------- controllers
class Controller:
    """A feedback controller for :func:`run`.

    Subclasses implement :meth:`plan`; :meth:`reset` is called with the episodes' initial states
    and targets before the first step.
    """

    name = "controller"
    #: Sample time the controller was designed for in seconds (None: any); :func:`run` refuses a
    #: problem with another ``dt``.
    dt: float | None = None

    def reset(self, x0: np.ndarray, target: np.ndarray) -> None:
        """Start new episodes from ``x0`` ``(B, n)`` towards ``target`` ``(B, n)``."""

    def plan(self, x: np.ndarray, target: np.ndarray, steps_to_go: int) -> np.ndarray:
        """Controls ``(B, H, m)`` from the measured states ``x`` ``(B, n)``; ``H >= 1``.

            ``steps_to_go`` is the number of steps left before a fixed final time (else the horizon).
        """
        raise NotImplementedError

    def batch1_ms(self, x: np.ndarray, target: np.ndarray, steps_to_go: int, repeats: int = 50) -> float:
        """Median wall time in ms of one batch-1 :meth:`plan` call."""
        x, target = x[:1], target[:1]
        self.reset(x, target)
        times = []
        for _ in range(repeats + 3):
            t0 = time.perf_counter()
            self.plan(x, target, steps_to_go)
            times.append(time.perf_counter() - t0)
        return 1000.0 * float(np.median(times[3:]))


class TRCController(Controller):
    """A trained TRC model as a receding-horizon controller (eager PyTorch).

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
    name : str

    Raises
    ------
    ConfigError
        From :meth:`plan`, on a fixed-final-time problem, if the model plans a fixed horizon
        ``N`` (no ``time_to_go`` input): it cannot re-plan with the time remaining.
    """

    def __init__(self, model, name: str = "trc"):
        self.model = model.eval()
        self.name = name
        self._ref = next(model.parameters())
        self.horizon = int(model.horizon) if hasattr(model, "horizon") else None
        self.time_to_go = bool(getattr(getattr(model, "config", None), "time_to_go", False))
        self.dt = getattr(model, "dt", None)

    def plan(self, x, target, steps_to_go):
        if self.horizon is not None and steps_to_go < self.horizon and not self.time_to_go:
            raise ConfigError(f"{self.name} plans a fixed horizon of {self.horizon} steps and has no time-to-go "
                              f"input; it cannot plan the remaining {steps_to_go}")
        k = {"steps_to_go": steps_to_go} if self.time_to_go else {}
        with torch.inference_mode():
            xt = torch.as_tensor(x, dtype=self._ref.dtype)
            tt = torch.as_tensor(target, dtype=self._ref.dtype)
            return self.model(xt, tt, **k).double().numpy()


class ExportedTRCController(Controller):
    """An exported TRC program as a receding-horizon controller.

    Parameters
    ----------
    program : trc.export.ExportedController
        A loaded program (:func:`trc.export.load_controller`): ``program(x, target)`` returns
        ``(B, horizon, control_dim)`` controls; a program compiled for batch 1 plans one state at a time.
    name : str
    """

    def __init__(self, program, name: str = "trc (exported)"):
        self.program = program
        self.name = name

    def plan(self, x, target, steps_to_go):
        N = getattr(self.program, "time_to_go_horizon", None)
        k = () if N is None else (steps_to_go,)
        if getattr(self.program, "batch", None) not in (None, x.shape[0]):
            return np.concatenate([self.program(x[i:i + 1], target[i:i + 1], *k)
                                   for i in range(x.shape[0])]).astype(float)
        return np.asarray(self.program(x, target, *k), dtype=float)


class LQRController(Controller):
    """Saturated infinite-horizon LQR at the target, ``u = clip(u_eq - K (x - x*))``.

    ``K`` from python-control ``dlqr`` of the zero-order-hold discretisation of
    :meth:`dynamics.Plant.linearize` at ``(x*, u_eq)`` with the weights ``Q dt`` and ``R dt``
    (the discrete form of the problem's running cost; Anderson & Moore, *Optimal Control:
    Linear Quadratic Methods*, 1990, ch. 2). One gain per distinct target.

    Raises
    ------
    ConfigError
        For a fuel-cost problem (there is no quadratic cost to regulate).
    UncontrollableError
        From python-control if the linearisation is not stabilisable.
    """

    name = "lqr"

    def __init__(self, problem):
        if problem.cost != "quadratic":
            raise ConfigError(f"an LQR needs a quadratic cost; problem {problem.name!r} has cost {problem.cost!r}")
        self.problem = problem
        self.plant = problem.make_plant(torch.float64)
        self.lo = self.plant.u_min.numpy().copy()  # not a view: the controller is pickled to workers
        self.hi = self.plant.u_max.numpy().copy()
        self._gains: dict[bytes, np.ndarray] = {}

    def _gain(self, xt: np.ndarray, u_eq: np.ndarray) -> np.ndarray:
        key = xt.tobytes()
        if key not in self._gains:
            Q, R, _ = self.problem.weights
            dt = float(self.problem.dt)
            sysd = ct.c2d(self.plant.linearize(xt, u_eq), dt, method="zoh")
            K, _, _ = ct.dlqr(sysd, Q * dt, R * dt)
            self._gains[key] = np.asarray(K)
        return self._gains[key]

    def reset(self, x0, target):
        self.targets, self.u_eq = hold_targets(self.problem, target)
        self.K = np.stack([self._gain(xt, u) for xt, u in zip(self.targets, self.u_eq)])  # (B, m, n)

    def plan(self, x, target, steps_to_go):
        if x.shape[0] != self.K.shape[0]:
            self.reset(x, target)
        u = self.u_eq - np.einsum("bmn,bn->bm", self.K, x - self.targets)
        return np.clip(u, self.lo, self.hi)[:, None, :]


class MPCController(Controller):
    """Nonlinear MPC: the problem's horizon, cost and bounds on the nominal model, re-solved by
    CasADi + IPOPT (:class:`trc.generators.ipopt.IpoptReference`; the rocket:
    :class:`~trc.generators.ipopt.RocketReference` with the time remaining) at every step,
    warm-started from the previous solution shifted by one step (Rawlings, Mayne & Diehl 2017,
    sec. 2.4). The first plan of an episode starts from ``warm_start`` (e.g. the open-loop optimum)
    if given. A failed solve keeps the previous plan, shifted (counted in ``failures``). With a
    fixed final time the last 2 steps fly the previous plan (too few controls are left to re-plan
    a landing).

    Parameters
    ----------
    problem : trc.Problem
    tol : float
        IPOPT tolerance.
    max_iter : int
    warm_start : tuple of ndarray, optional
        ``(states (B, N + 1, n), controls (B, N, m))`` for the first plan of each episode.
    """

    name = "mpc"

    def __init__(self, problem, tol: float = 1e-6, max_iter: int = 200, warm_start=None):
        self.problem = problem
        self.tol, self.max_iter = tol, max_iter
        self.warm_start = warm_start
        self._solvers: dict[int, object] = {}
        self.solve_ms: list[float] = []
        self.failures = 0

    def _solver(self, horizon: int):
        if horizon not in self._solvers:
            problem = dataclasses.replace(self.problem, horizon=horizon)
            if fixed_final_time(problem):
                self._solvers[horizon] = ipopt.RocketReference(problem, tol=self.tol, max_iter=self.max_iter)
            else:
                self._solvers[horizon] = ipopt.IpoptReference(problem, tol=self.tol, max_iter=self.max_iter,
                                                              options={"mu_strategy": "adaptive"})
        return self._solvers[horizon]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_solvers"] = {}  # CasADi solvers are rebuilt where the controller runs
        return state

    def reset(self, x0, target):
        B = x0.shape[0]
        self.solve_ms, self.failures = [], 0
        if self.warm_start is not None and len(self.warm_start[0]) == B:
            self._prev = [(s.copy(), u.copy()) for s, u in zip(*self.warm_start)]
        else:
            self._prev = [None] * B

    def plan(self, x, target, steps_to_go):
        if len(self._prev) != x.shape[0]:
            self._prev = [None] * x.shape[0]
        N = steps_to_go if fixed_final_time(self.problem) else self.problem.horizon
        if N < _MIN_SHRINKING_HORIZON and all(p is not None for p in self._prev):
            # the last intervals cannot meet the landing conditions with so few controls left:
            # fly the rest of the previous plan, as powered-descent guidance does near touchdown
            plans = [u[: N] for _, u in self._prev]
            self._prev = [(s[1:], u[1:]) for s, u in self._prev]
            return np.stack(plans)
        solver = self._solver(N)
        plans = []
        for i in range(x.shape[0]):  # IPOPT solves one instance at a time
            guess = self._prev[i]
            states_guess = controls_guess = None
            if guess is not None:
                s, u = guess
                states_guess = np.concatenate([s, np.repeat(s[-1:], N + 1 - len(s), 0)])[: N + 1] if len(s) < N + 1 \
                    else s[: N + 1]
                controls_guess = np.concatenate([u, np.repeat(u[-1:], N - len(u), 0)])[:N] if len(u) < N else u[:N]
                states_guess = states_guess.copy()
                states_guess[0] = x[i]
            t0 = time.perf_counter()
            res = solver.solve(x[i], target[i], states_guess, controls_guess)
            self.solve_ms.append(1000.0 * (time.perf_counter() - t0))
            if res.success or guess is None:
                states, controls = res.states, res.controls
                self.failures += int(not res.success)
            else:
                self.failures += 1
                states, controls = states_guess, controls_guess
            plans.append(controls)
            self._prev[i] = (np.concatenate([states[1:], states[-1:]]), np.concatenate([controls[1:], controls[-1:]]))
        return np.stack(plans)

    def batch1_ms(self, x, target, steps_to_go, repeats: int = 50) -> float:
        """Median of the warm-started solve times recorded during the run (else measured)."""
        if self.solve_ms:
            return float(np.median(self.solve_ms))
        return super().batch1_ms(x, target, steps_to_go, repeats=5)


class PolicyController(Controller):
    """A Gymnasium-style policy ``policy(observation) -> action`` of the TRC environments
    (observation ``concatenate(x, x*)``, e.g. :class:`trc.policy.RecedingHorizonPolicy` or a
    Stable-Baselines3 model's ``predict``) in the harness; it is called on the whole batch."""

    def __init__(self, policy, name: str = "policy", dt: float | None = None):
        self.policy, self.name, self.dt = policy, name, dt

    def plan(self, x, target, steps_to_go):
        action = self.policy(np.concatenate([x, target], axis=1).astype(np.float32))
        action = action[0] if isinstance(action, tuple) else action  # predict() returns (action, state)
        return np.asarray(action, dtype=float).reshape(x.shape[0], 1, -1)


class ClosedLoopEnv(PlantEnv):
    """The TRC Gymnasium environment of a problem, simulated as the harness simulates it.

    :class:`dynamics.env.PlantEnv` (same spaces, reward and termination) whose plant is the
    independent vector field integrated by ``solve_ivp``, with the :class:`Perturbation` of
    ``perturbation``: at every :meth:`reset` the physical parameters are drawn, then every step
    adds process noise, the observation carries measurement noise (``info["state"]`` is the true
    state), and the impulse comes at step ``horizon // 2``. All draws come from the
    environment's ``np_random`` (seeded by ``reset(seed=...)``).

    >>> env = ClosedLoopEnv.from_problem(problem, perturbation="perturbed")   # doctest: +SKIP
    >>> obs, info = env.reset(seed=0)                                          # doctest: +SKIP
    """

    def __init__(self, plant, *, problem=None, perturbation: str | Perturbation = "nominal", rtol: float = 1e-9,
                 **kwargs):
        super().__init__(plant, **kwargs)
        if problem is None:
            raise ConfigError("ClosedLoopEnv needs the problem (use ClosedLoopEnv.from_problem)")
        self.levels = ClosedLoopConfig(perturbation=perturbation, rtol=rtol).levels
        self.rtol = rtol
        self._sim = _Simulator(problem)
        self._scale = state_scale(problem)
        self._atol = rtol * np.maximum(self._scale, 1.0)
        self.params = self._sim.nominal.copy()

    @classmethod
    def from_problem(cls, problem, perturbation: str | Perturbation = "nominal", **overrides) -> "ClosedLoopEnv":
        """The environment of ``problem`` (:meth:`PlantEnv.from_problem`) with ``perturbation``."""
        return cls(problem.make_plant(torch.float64), problem=problem, perturbation=perturbation,
                   **{**problem_kwargs(problem), **overrides})

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        p = self.levels.param_scale
        self.params = self._sim.nominal * self.np_random.uniform(1 - p, 1 + p, size=self._sim.nominal.shape)
        return self._noisy(obs), info

    def simulate(self, x, u):
        x = self._sim.step(x, u, np.broadcast_to(self.params, (len(x), len(self.params))), self.dt, self.rtol,
                           self._atol)
        x = x + self.np_random.standard_normal(x.shape) * self.levels.process_noise * self._scale
        if self._k == self.horizon // 2:
            x = x + np.where(self.np_random.random(x.shape) < 0.5, -1.0, 1.0) * self.levels.impulse * self._scale
        return x

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return self._noisy(obs), reward, terminated, truncated, info

    def _noisy(self, obs):
        n = self.plant.state_dim
        noise = self.np_random.standard_normal(n) * self.levels.measurement_noise * self._scale
        obs = obs.copy()
        obs[:n] += noise.astype(obs.dtype)
        return obs


def baselines(problem, *, mpc: bool = True, warm_start=None) -> list[Controller]:
    """The practitioner's alternatives: the saturated LQR (quadratic costs) and nonlinear MPC."""
    out: list[Controller] = []
    if problem.cost == "quadratic":
        out.append(LQRController(problem))
    if mpc:
        out.append(MPCController(problem, warm_start=warm_start))
    return out


# ----------------------------------------------------------------------------- the run
@dataclass
class ClosedLoopResult:
    """Per-episode closed-loop results of one controller (arrays over ``B`` episodes).

    Attributes
    ----------
    name : str
    states : ndarray, shape ``(B, T + 1, n)``
        True plant states.
    controls : ndarray, shape ``(B, T, m)``
        Applied controls.
    success, violation : ndarray of bool, shape ``(B,)``
    cost : ndarray, shape ``(B,)``
        ``J`` of the first ``N`` steps with the terminal term at ``x_N``.
    cost_ratio : ndarray, shape ``(B,)``
        ``cost / J*`` (NaN without optimal costs).
    steady_state_error : ndarray, shape ``(B,)``
    ms_per_step : float
        Median batch-1 wall time of one control step.
    failures : int
        Steps where the controller's own solver failed (MPC).
    error : str, optional
        Why the controller could not run (then the arrays are empty).
    """

    name: str
    states: np.ndarray
    controls: np.ndarray
    success: np.ndarray
    violation: np.ndarray
    cost: np.ndarray
    cost_ratio: np.ndarray
    steady_state_error: np.ndarray
    ms_per_step: float
    failures: int = 0
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def failed(cls, name: str, error: str) -> "ClosedLoopResult":
        """The result of a controller that could not run: empty arrays and the reason."""
        empty = np.zeros(0)
        return cls(name, empty, empty, empty.astype(bool), empty.astype(bool), empty, empty, empty, math.nan,
                   error=error)

    @classmethod
    def concatenate(cls, parts: list["ClosedLoopResult"]) -> "ClosedLoopResult":
        """One result of the episodes of ``parts`` in order (failures and solver failures added;
        the first error, if any part has one)."""
        for part in parts:
            if part.error is not None:
                return cls.failed(part.name, part.error)
        first = parts[0]
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in dataclasses.fields(cls) if isinstance(getattr(first, f.name), np.ndarray)}
        extra = dict(first.extra)
        if "solver_failures" in extra:
            extra["solver_failures"] = sum(int(p.extra["solver_failures"]) for p in parts)
        return cls(name=first.name, ms_per_step=first.ms_per_step, failures=sum(p.failures for p in parts),
                   extra=extra, **arrays)

    def summary(self) -> dict:
        """Success rate, median and 95th-percentile cost ratio, mean steady-state error, violation
        rate, ms per step (JSON-serialisable)."""
        if self.error is not None:
            return {"name": self.name, "error": self.error}
        ratio = self.cost_ratio[np.isfinite(self.cost_ratio)]
        return {
            "name": self.name,
            "episodes": int(len(self.success)),
            "success_rate": float(self.success.mean()),
            "cost_ratio_median": float(np.median(ratio)) if ratio.size else math.nan,
            "cost_ratio_p95": float(np.quantile(ratio, 0.95)) if ratio.size else math.nan,
            "cost_ratio_mean": float(ratio.mean()) if ratio.size else math.nan,
            "steady_state_error_mean": float(self.steady_state_error.mean()),
            "violation_rate": float(self.violation.mean()),
            "ms_per_step": float(self.ms_per_step),
            "failures": int(self.failures),
            **self.extra,
        }


@dataclass
class _Episodes:
    x0: np.ndarray
    target: np.ndarray
    params: np.ndarray
    process: np.ndarray  # (T, B, n)
    measurement: np.ndarray  # (T, B, n)
    impulse: np.ndarray  # (B, n)
    impulse_step: int
    steps: int

    def slice(self, start: int, stop: int) -> "_Episodes":
        """Episodes ``start:stop`` with their own draws."""
        return _Episodes(self.x0[start:stop], self.target[start:stop], self.params[start:stop],
                         self.process[:, start:stop], self.measurement[:, start:stop], self.impulse[start:stop],
                         self.impulse_step, self.steps)


def _episodes(problem, config: ClosedLoopConfig, sim: _Simulator, x0=None, target=None) -> _Episodes:
    levels = config.levels
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5)]
    B = config.episodes
    if x0 is None:
        x0, tgt = problem.sample(B, streams[0])
        target = tgt if target is None else target
    x0 = np.asarray(x0, float)
    target = np.asarray(target, float)
    if x0.shape != target.shape or x0.ndim != 2 or x0.shape[1] != problem.state_dim:
        raise DimensionError(f"initial states {x0.shape} and targets {target.shape} must both be "
                             f"(episodes, {problem.state_dim})")
    B = x0.shape[0]
    target, _ = hold_targets(problem, target)
    s = state_scale(problem)
    steps = config.steps or (problem.horizon if fixed_final_time(problem) else 2 * problem.horizon)
    factors = streams[1].uniform(1 - levels.param_scale, 1 + levels.param_scale, size=(B, len(sim.nominal)))
    return _Episodes(
        x0=x0, target=target, params=sim.nominal * factors,
        process=streams[2].standard_normal((steps, B, problem.state_dim)) * levels.process_noise * s,
        measurement=streams[3].standard_normal((steps, B, problem.state_dim)) * levels.measurement_noise * s,
        impulse=np.where(streams[4].random((B, problem.state_dim)) < 0.5, -1.0, 1.0) * levels.impulse * s,
        impulse_step=steps // 2, steps=steps)


def target_error(problem, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The harness's distance to the target (:func:`trc.evaluation.terminal_error`, the measure of
    ``success``) of states ``x`` ``(..., n)`` against targets broadcast to them, e.g. trajectories
    ``(B, T + 1, n)`` and targets ``(B, 1, n)``: shape ``x.shape[:-1]``."""
    shape = x.shape[:-1]
    xt = np.array(np.broadcast_to(target, x.shape))
    return terminal_error(problem, torch.as_tensor(x.reshape(-1, x.shape[-1])),
                          torch.as_tensor(xt.reshape(-1, x.shape[-1]))).numpy().reshape(shape)


def _violations(problem, plant, states: np.ndarray, controls: np.ndarray, target: np.ndarray) -> np.ndarray:
    return constraint_violations(problem, plant, torch.as_tensor(states), torch.as_tensor(controls),
                                 torch.as_tensor(target)).numpy()


def run(problem, controller: Controller, config: ClosedLoopConfig | None = None, *, x0=None, target=None,
        J_opt: np.ndarray | None = None, timing: bool = True, episodes: "_Episodes | None" = None) -> ClosedLoopResult:
    """Run ``controller`` in closed loop on ``problem``'s plant (see the module documentation).

    Parameters
    ----------
    problem : trc.Problem
    controller : Controller
    config : ClosedLoopConfig, optional
    x0, target : ndarray, shape ``(B, n)``, optional
        Initial states and targets (default: ``config.episodes`` drawn from the problem with the seed).
    J_opt : ndarray, shape ``(B,)``, optional
        Open-loop optimal costs from ``x0`` (:func:`optimal_costs`); without them ``cost_ratio`` is NaN.
    timing : bool
        Measure the batch-1 time per step.
    episodes : optional
        The episodes (initial states, targets, parameters and perturbations) drawn already, e.g.
        a slice of a larger run's (then ``x0`` and ``target`` are ignored).

    Returns
    -------
    ClosedLoopResult

    Raises
    ------
    ConfigError
        If a target is not an equilibrium, or the controller cannot plan the problem.
    DimensionError
        If the controller's plan or the given states have the wrong shape.
    NonFiniteError
        If a measured state or a control is NaN or infinite.
    """
    config = config or ClosedLoopConfig()
    if controller.dt is not None and not math.isclose(controller.dt, float(problem.dt), rel_tol=1e-9):
        raise ConfigError(f"{controller.name} was made for dt = {controller.dt} s; the problem's dt is {problem.dt} s "
                          f"(a plan for another sample time is a plan for another system)")
    sim = _Simulator(problem)
    ep = episodes if episodes is not None else _episodes(problem, config, sim, x0, target)
    plant = problem.make_plant(torch.float64)
    B, m = ep.x0.shape[0], problem.control_dim
    N, dt = problem.horizon, float(problem.dt)
    atol = config.rtol * np.maximum(state_scale(problem), 1.0)
    shrinking = fixed_final_time(problem)
    lo, hi = plant.u_min.numpy(), plant.u_max.numpy()

    controller.reset(ep.x0, ep.target)
    x = ep.x0.copy()
    states, controls = [x], []
    plan, used = None, 0
    for k in range(ep.steps):
        steps_to_go = N - k if shrinking else N
        if plan is None or used >= min(config.replan_every, plan.shape[1]):
            y = x + ep.measurement[k]
            if not np.isfinite(y).all():
                raise NonFiniteError(f"measured state at step {k} is not finite")
            plan = np.asarray(controller.plan(y, ep.target, steps_to_go), dtype=float)
            if plan.ndim != 3 or plan.shape[0] != B or plan.shape[2] != m or plan.shape[1] < 1:
                raise DimensionError(f"{controller.name} planned controls of shape {plan.shape}; "
                                     f"expected ({B}, H, {m})")
            used = 0
        u = np.clip(plan[:, used], lo, hi)
        if not np.isfinite(u).all():
            raise NonFiniteError(f"{controller.name} gave a non-finite control at step {k}")
        used += 1
        x = sim.step(x, u, ep.params, dt, config.rtol, atol) + ep.process[k]
        if k + 1 == ep.impulse_step:
            x = x + ep.impulse
        states.append(x)
        controls.append(u)
    states, controls = np.stack(states, 1), np.stack(controls, 1)

    T = ep.steps
    hold = max(1, int(math.ceil(_HOLD_FRACTION * T)))
    err = target_error(problem, states, ep.target[:, None])
    violation = _violations(problem, plant, states, controls, ep.target)
    if shrinking:
        reached = err[:, -1] < problem.tolerance
    else:
        reached = (err[:, -hold:] < problem.tolerance).all(1)
    n_cost = min(N, T)
    cost = problem.cost_of(torch.as_tensor(states[:, : n_cost + 1]), torch.as_tensor(controls[:, :n_cost]),
                           torch.as_tensor(ep.target)).numpy()
    ratio = cost / np.asarray(J_opt, float) if J_opt is not None else np.full(B, math.nan)
    ms = controller.batch1_ms(ep.x0, ep.target, N, config.timing_repeats) if timing else math.nan
    return ClosedLoopResult(
        name=controller.name, states=states, controls=controls, success=reached & ~violation, violation=violation,
        cost=cost, cost_ratio=ratio, ms_per_step=ms,
        steady_state_error=err[:, -1] if shrinking else err[:, -hold:].mean(1),
        failures=int(getattr(controller, "failures", 0)))


def default_solver(problem) -> str:
    """The registered solver of the problem's open-loop optimum: ``rocket`` for the fuel cost,
    ``qp`` for a linear plant, ``nonlinear`` otherwise."""
    if problem.cost == "fuel":
        return "rocket"
    return "qp" if problem.make_plant(torch.float64).linear_matrices() is not None else "nonlinear"


def optimal_costs(problem, x0, target, *, solver: str | None = None, options: dict | None = None):
    """Open-loop optimal solutions from ``x0`` ``(B, n)`` to the held ``target`` (nominal plant).

    Returns
    -------
    J_opt : ndarray, shape ``(B,)``
        NaN where the solver failed.
    states : ndarray, shape ``(B, N + 1, n)``
    controls : ndarray, shape ``(B, N, m)``
    """
    target, _ = hold_targets(problem, np.asarray(target, float))
    sol = make_solver(solver or default_solver(problem), problem, **(options or {})).solve(
        np.asarray(x0, float), target)
    J = problem.cost_of(torch.as_tensor(sol.states), torch.as_tensor(sol.controls), torch.as_tensor(target)).numpy()
    return np.where(sol.success, J, math.nan), sol.states, sol.controls


#: Episodes per task of :func:`compare` (the split is the same whatever the backend, so the
#: arrays are too).
EPISODES_PER_TASK = 10

#: What :func:`_compare_part` runs in this process: ``(problem, controllers, config, solver, options)``.
_SHARED: dict = {}


def _init_compare(problem, controllers, config, solver, options) -> None:
    """Worker initialiser of :func:`compare`: the shared arguments, sent once per process."""
    _SHARED["args"] = (problem, controllers, config, solver, options)


def _compare_part(bounds: tuple[int, int]) -> dict:
    """Episodes ``start:stop`` of :func:`compare` (one task): the optimum and every controller.

    Runs with one torch thread (restored after), so that a task gives the same arrays in any
    process. Timing is left to the caller; MPC's solve times come back in ``"solve_ms"``.
    """
    problem, controllers, config, solver, options = _SHARED["args"]
    start, stop = bounds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sim = _Simulator(problem)
        ep = _episodes(problem, config, sim).slice(start, stop)
        J_opt, opt_states, opt_controls = optimal_costs(problem, ep.x0, ep.target, solver=solver, options=options)
        out: dict[str, ClosedLoopResult] = {}
        solve_ms: dict[str, list[float]] = {}
        for controller in controllers:
            if isinstance(controller, MPCController):
                given = controller.warm_start  # the caller's, for all episodes, or None: the optima
                controller = copy.copy(controller)
                controller.warm_start = ((opt_states, opt_controls) if given is None
                                         else (given[0][start:stop], given[1][start:stop]))
            try:
                out[controller.name] = run(problem, controller, config, episodes=ep, J_opt=J_opt, timing=False)
            except ConfigError as exc:
                out[controller.name] = ClosedLoopResult.failed(controller.name, str(exc))
            solve_ms[controller.name] = list(getattr(controller, "solve_ms", []))
        ok = np.isfinite(J_opt)
        x_opt = simulate(problem, ep.x0, opt_controls, rtol=config.rtol)
        err = target_error(problem, x_opt[:, -1], ep.target)
        violation = _violations(problem, problem.make_plant(torch.float64), x_opt, opt_controls, ep.target)
        out["optimum"] = ClosedLoopResult(
            name="optimum (open loop)", states=x_opt, controls=opt_controls,
            success=ok & (err < problem.tolerance) & ~violation,
            violation=violation, cost=J_opt, cost_ratio=np.where(ok, 1.0, math.nan), steady_state_error=err,
            ms_per_step=math.nan,
            extra={"solver": solver or default_solver(problem), "solver_failures": int((~ok).sum())})
        return {"results": out, "solve_ms": solve_ms}
    finally:
        torch.set_num_threads(threads)


def compare(problem, controllers: list[Controller], config: ClosedLoopConfig | None = None, *,
            solver: str | None = None, options: dict | None = None, progress: bool = False,
            backend: str = "local", address: str | None = None, workers: int | None = None,
            episodes_per_task: int = EPISODES_PER_TASK) -> dict[str, ClosedLoopResult]:
    """Run every controller on the same episodes and perturbations; costs against the optimum.

    The episodes are split into tasks of ``episodes_per_task`` (the open-loop optima and every
    controller on those episodes), run on a backend of :mod:`trc.backends`: in this process
    (``local``, one worker), in local worker processes, or as Ray tasks (``ray``). The split does
    not depend on the backend and every task runs with one torch thread, so the arrays are the
    same, bitwise, on every backend. The controllers are pickled to the workers once per process
    (an exported program is loaded again from its file there, so on a cluster its path must be
    readable on every node); the batch-1 time per step is measured here, after the episodes
    (MPC: the median of its solve times in the episodes).

    A controller that cannot plan the problem (:class:`ConfigError` from its first plan) gets a
    result with ``error`` set instead of stopping the comparison.

    Parameters
    ----------
    problem : trc.Problem
    controllers : list of Controller
    config : ClosedLoopConfig, optional
    solver : str, optional
        Registered solver of the open-loop optima (default :func:`default_solver`).
    options : dict, optional
        Options of that solver.
    progress : bool
        A progress bar of the finished tasks.
    backend : {"local", "ray"}
    address : str, optional
        Ray cluster address (``ray`` only; see :func:`trc.backends.ray_runtime`).
    workers : int, optional
        ``local``: processes (default 1: in this process); ``ray``: most tasks at once.
    episodes_per_task : int

    Returns
    -------
    dict of str to ClosedLoopResult
        By controller name, plus ``"optimum"`` (the open-loop optimal plans applied open loop to
        the nominal simulated plant: the lower bound of the cost).

    Raises
    ------
    ConfigError
        On a bad backend, address, ``workers`` or ``episodes_per_task``, or invalid episodes.
    SolverError
        If a worker process died (local), or a Ray task's worker died in every retry.
    """
    config = config or ClosedLoopConfig()
    check_int(episodes_per_task, "episodes_per_task", low=1)
    check_backend(backend, address)
    ep = _episodes(problem, config, _Simulator(problem))  # validates before any work
    B = ep.x0.shape[0]
    tasks = [(i, min(i + episodes_per_task, B)) for i in range(0, B, episodes_per_task)]
    ordered = map_ordered(_compare_part, tasks, backend=backend, address=address, workers=workers, progress=progress,
                          desc=f"closed loop ({problem.name})", initializer=_init_compare,
                          initargs=(problem, controllers, config, solver, options))
    out = {name: ClosedLoopResult.concatenate([p["results"][name] for p in ordered])
           for name in ordered[0]["results"]}
    N = problem.horizon
    for controller in controllers:
        result = out[controller.name]
        if result.error is not None:
            continue
        if isinstance(controller, MPCController):
            controller.solve_ms = [t for p in ordered for t in p["solve_ms"][controller.name]]
        result.ms_per_step = controller.batch1_ms(ep.x0, ep.target, N, config.timing_repeats)
    return out


def write_report(out_dir, results_by_case: dict[str, dict[str, ClosedLoopResult]], *, problem, config: dict) -> Path:
    """Write ``closed_loop.json`` (summaries per case and controller, the settings) and
    ``closed_loop.md`` (one table per case) into ``out_dir`` atomically; returns the markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {case: {name: r.summary() for name, r in results.items()} for case, results in results_by_case.items()}
    payload = {"problem": problem.name, "settings": config, "results": summary}
    atomic_write_text(out_dir / "closed_loop.json", json.dumps(payload, indent=2, default=str) + "\n")
    text = [f"# Closed loop: {problem.name}", "", "Settings: " + ", ".join(f"{k} = {v}" for k, v in config.items()), ""]
    for case, results in results_by_case.items():
        text += [summary_table(results, case), ""]
    atomic_write_text(out_dir / "closed_loop.md", "\n".join(text) + "\n")
    return out_dir / "closed_loop.md"


def summary_table(results: dict[str, ClosedLoopResult], title: str | None = None) -> str:
    """A markdown table of :meth:`ClosedLoopResult.summary` rows."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| controller | success | cost / optimum (median) | p95 | steady-state error | violations "
              "| ms per step |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results.values():
        s = r.summary()
        if "error" in s:
            lines.append(f"| {r.name} | cannot run: {s['error']} | | | | | |")
            continue
        lines.append(f"| {r.name} | {100 * s['success_rate']:.1f} % | {s['cost_ratio_median']:.4f} | "
                     f"{s['cost_ratio_p95']:.4f} | {s['steady_state_error_mean']:.3g} | "
                     f"{100 * s['violation_rate']:.1f} % | {s['ms_per_step']:.3g} |")
    return "\n".join(lines)
