"""Certified mode: TRC proposes, the optimal solver certifies.

A trained TRC model plans in milliseconds but carries no optimality guarantee; the solvers of
:mod:`trc.generators` certify an optimum but are slower. :class:`CertifiedSolver` combines
them, instance by instance:

1. **Propose.** The model plans the controls of every instance of the batch (one forward pass).
2. **Check the plan** (:class:`PlanChecks`), re-simulated through the problem's float64 plant
   with :func:`trc.generators.checks.check_solution`: finite; control and state bounds; the
   dynamics residual between the model's own (float32) rollout and the float64 simulation;
   and the cost against a bound, by default the cost of doing nothing (``u = 0``), which is
   the cost of a feasible trajectory and hence an upper bound of the optimum whenever
   ``u = 0`` is admissible: a plan that does worse is not worth starting from.
3. **Certify.** Instances whose plan passed are solved by the solver *warm-started* from the
   plan; the others (and any warm-started solve that fails) by the solver from its own
   default ("cold") initial guess.

The output is always the solver's answer, with the solver's own checks and status: the
warm start changes how fast the solver gets there, not what it certifies. For convex problems
(``qp``, ``rocket``) that answer is the unique optimum either way; for the non-convex swing-ups
(``nonlinear``) a warm start may lead the SQP to another local optimum than the cold start,
which ``benchmarks/certified.py`` measures as the cost gap between the two.

How each solver uses the plan (see their docstrings): ``qp`` and ``rocket`` take
``initial_controls``; ``nonlinear`` starts its multiple-shooting SQP from the plan's controls
(``controls_guess``) and, as state guess (``states_guess``), the plan's simulated states
shifted linearly to end at the target where the plan reaches the target tolerance, else the
solver's own straight line from ``x0`` to the target. A plan that misses the target is a
dynamically consistent trajectory to the wrong place, which measured as a worse start for
multiple shooting than the straight line (pendulum swing-up: 26 SQP iterations against 10.5
cold; with the straight line and the plan's controls, 10.5), while the plan's controls never
hurt.

>>> certified = CertifiedSolver(model, make_solver("nonlinear", problem))     # doctest: +SKIP
>>> out = certified.solve(x0, target)                                         # doctest: +SKIP
>>> out.solution.costs, out.warm_started, out.solution.iterations             # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from dynamics.errors import ConfigError, DimensionError

from .evaluation import terminal_error
from .generators.base import Solution, Solver
from .generators.checks import Tolerances, check_solution
from .generators.nonlinear import straight_line_states

__all__ = ["PlanChecks", "PlanReport", "CertifiedResult", "CertifiedSolver", "check_plan", "warm_start_arguments"]


@dataclass
class PlanChecks:
    """Acceptance tests of a TRC plan before it warm-starts the solver.

    Attributes
    ----------
    dynamics_rtol : float
        Largest accepted difference between the model's own rollout of its plan and the
        float64 simulation, relative to ``max(1, max |x|)`` (state units). The float32 rollout
        differs by rounding only, unless the plant amplifies it (unstable or chaotic
        trajectories).
    bound_rtol : float
        Relative tolerance of the control and state bounds.
    max_cost : {"zero_control"} or float or array_like of shape ``(B,)`` or None
        Upper bound of the plan's cost ``J``. ``"zero_control"`` (default): the cost of the
        zero-control trajectory from the same initial state (skipped for ``fuel`` costs, where
        ``u = 0`` is not a landing). ``None``: no cost test.
    max_terminal_error : float, optional
        Upper bound of the simulated plan's terminal error (:func:`trc.evaluation.terminal_error`:
        ``||x_N - x*||_2``, or ``||r_N - r*|| + ||v_N - v*||`` for the rocket); default no
        test. The default cost test cannot tell a poor swing-up from a good one (doing nothing
        costs far more than either), so a terminal test of a few tolerances is the useful gate
        there: a plan that does not get near the target is a worse start than the solver's
        own guess.

    Raises
    ------
    ConfigError
        On a negative tolerance or an unknown ``max_cost`` keyword.
    """

    dynamics_rtol: float = 1e-3
    bound_rtol: float = 1e-6
    max_cost: object = "zero_control"
    max_terminal_error: float | None = None

    def __post_init__(self):
        for key in ("dynamics_rtol", "bound_rtol"):
            value = getattr(self, key)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"PlanChecks.{key} must be a finite number >= 0, got {value!r}")
        if isinstance(self.max_cost, str) and self.max_cost != "zero_control":
            raise ConfigError(f"PlanChecks.max_cost must be 'zero_control', a number, an array or None; got {self.max_cost!r}")
        if self.max_terminal_error is not None and not (
            isinstance(self.max_terminal_error, (int, float)) and self.max_terminal_error > 0
        ):
            raise ConfigError(f"PlanChecks.max_terminal_error must be positive, got {self.max_terminal_error!r}")


@dataclass
class PlanReport:
    """The checks of a batch of ``B`` TRC plans.

    Attributes
    ----------
    controls : ndarray, shape ``(B, N, m)``
        The plans (float64 copies of the model's float32 controls).
    states : ndarray, shape ``(B, N + 1, n)``
        The plans simulated through the float64 plant.
    costs : ndarray, shape ``(B,)``
        The problem's cost ``J`` of the simulated plans.
    cost_bound : ndarray, shape ``(B,)``
        The bound the costs were tested against (``inf`` without a cost test).
    terminal_error : ndarray, shape ``(B,)``
        :func:`trc.evaluation.terminal_error` of the simulated plans.
    ok : ndarray of bool, shape ``(B,)``
        True where every check passed.
    status : ndarray of str, shape ``(B,)``
        ``"ok"`` or the failed checks (``"<check>: <detail>; ..."``).
    seconds : float
        Wall-clock time of the model's forward pass for the whole batch.
    """

    controls: np.ndarray
    states: np.ndarray
    costs: np.ndarray
    cost_bound: np.ndarray
    terminal_error: np.ndarray
    ok: np.ndarray
    status: np.ndarray
    seconds: float


def check_plan(problem, model, x0, target, checks: PlanChecks | None = None, *, plant=None) -> PlanReport:
    """Plan ``B`` instances with ``model`` and check the plans (see :class:`PlanChecks`).

    Parameters
    ----------
    problem : trc.problem.Problem
    model : trc.models.TinyRecursiveControl
        Trained for ``problem`` (same sizes).
    x0, target : array_like, shape ``(B, n)``
    checks : PlanChecks, optional
    plant : dynamics.Plant, optional
        The float64 plant of the problem (built if not given).

    Returns
    -------
    PlanReport

    Raises
    ------
    DimensionError
        If the model's sizes differ from the problem's, or the inputs are malformed.
    """
    checks = checks or PlanChecks()
    if (model.state_dim, model.control_dim, model.horizon) != (problem.state_dim, problem.control_dim, problem.horizon):
        raise DimensionError(
            f"model has (state_dim, control_dim, horizon) = {(model.state_dim, model.control_dim, model.horizon)}; "
            f"problem {problem.name!r} has {(problem.state_dim, problem.control_dim, problem.horizon)}"
        )
    x0 = np.asarray(x0, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    plant = plant if plant is not None else problem.make_plant(torch.float64)
    ref = model.state_scale
    was_training = model.training
    model.eval()
    try:
        start = time.perf_counter()
        with torch.no_grad():
            out = model(torch.as_tensor(x0, dtype=ref.dtype, device=ref.device),
                        torch.as_tensor(target, dtype=ref.dtype, device=ref.device), return_all_iterations=True)
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    controls = out.controls.double().cpu().numpy()
    predicted = None if out.all_states is None else out.all_states[-1].double().cpu().numpy()
    tol = Tolerances(dynamics_rtol=checks.dynamics_rtol, dynamics_atol=0.0, bound_rtol=checks.bound_rtol, bound_atol=0.0)
    report = check_solution(problem, x0, target, controls, predicted, plant=plant, tolerances=tol,
                            solver_status=np.full(x0.shape[0], "ok"))
    B = x0.shape[0]
    finite = np.isfinite(report.states).all(axis=(1, 2))
    costs = np.full(B, np.nan)
    if finite.any():
        with torch.no_grad():
            costs[finite] = problem.cost_of(torch.from_numpy(report.states[finite]), torch.from_numpy(controls[finite]),
                                            torch.from_numpy(target[finite])).numpy()
    bound = _cost_bound(problem, plant, x0, target, checks.max_cost)
    report.fail(finite & ~(costs <= bound), "cost",
                lambda idx: np.char.mod("J=%.6g", costs[idx]).astype(object) + np.char.mod(" above the bound %.6g", bound[idx]).astype(object))
    err = terminal_error(problem, torch.from_numpy(report.states[:, -1]), torch.from_numpy(target)).numpy()
    err = np.where(np.isfinite(err), err, np.inf)
    if checks.max_terminal_error is not None:
        report.fail(finite & ~(err <= checks.max_terminal_error), "terminal",
                    lambda idx: np.char.mod("terminal error %.3g", err[idx]).astype(object))
    return PlanReport(controls=controls, states=report.states, costs=costs, cost_bound=bound, terminal_error=err,
                      ok=report.success.copy(),
                      status=report.status, seconds=seconds)


def _cost_bound(problem, plant, x0, target, max_cost) -> np.ndarray:
    B = x0.shape[0]
    if max_cost is None:
        return np.full(B, np.inf)
    if isinstance(max_cost, str):  # "zero_control"
        if problem.cost == "fuel":
            return np.full(B, np.inf)
        zero = torch.zeros(B, problem.horizon, problem.control_dim, dtype=torch.float64)
        zero = plant.clamp_controls(zero)  # u = 0, or the admissible control nearest to it
        with torch.no_grad():
            states = plant.rollout(torch.from_numpy(x0), zero)
            J = problem.cost_of(states, zero, torch.from_numpy(target)).numpy()
        return np.where(np.isfinite(J), J, np.inf)
    bound = np.broadcast_to(np.asarray(max_cost, dtype=np.float64), (B,)).copy()
    return bound


def warm_start_arguments(solver: Solver, controls: np.ndarray, states: np.ndarray) -> dict:
    """Keyword arguments that warm-start ``solver.solve`` from a plan.

    Parameters
    ----------
    solver : trc.generators.Solver
    controls : ndarray, shape ``(B, N, m)``
    states : ndarray, shape ``(B, N + 1, n)``
        State guesses (for ``nonlinear``), see :meth:`CertifiedSolver.state_guess`.

    Returns
    -------
    dict
        ``{"initial_controls": controls}`` for solvers taking it (``qp``, ``rocket``),
        ``{"controls_guess": controls, "states_guess": states}`` for ``nonlinear``.

    Raises
    ------
    ConfigError
        If ``solver.solve`` takes no initial guess.
    """
    params = inspect.signature(solver.solve).parameters
    if "initial_controls" in params:
        return {"initial_controls": controls}
    if "controls_guess" in params:
        kwargs = {"controls_guess": controls}
        if "states_guess" in params:
            kwargs["states_guess"] = states
        return kwargs
    raise ConfigError(f"solver {solver.name!r} cannot be warm-started: its solve() takes no initial guess")


@dataclass
class CertifiedResult:
    """The certified solutions of a batch of ``B`` instances.

    Attributes
    ----------
    solution : trc.generators.Solution
        The solver's solutions (its own checks, costs, status), whichever way they were
        reached; ``iterations`` and ``solve_time`` add up a failed warm start and its cold
        retry.
    plan : PlanReport
        The TRC plans and their checks.
    warm_started : ndarray of bool, shape ``(B,)``
        Instances the solver started from the TRC plan (the plan passed its checks).
    retried_cold : ndarray of bool, shape ``(B,)``
        Warm-started instances whose solve failed and were solved again from the cold guess.
    seconds : float
        Wall-clock time of the whole call: plans, checks and solves.
    """

    solution: Solution
    plan: PlanReport
    warm_started: np.ndarray
    retried_cold: np.ndarray
    seconds: float
    details: dict = field(default_factory=dict)


def _merge(parts: list[tuple[np.ndarray, Solution]], B: int) -> Solution:
    """One :class:`Solution` of ``B`` instances from solutions of index subsets."""
    template = next(sol for _, sol in parts)
    arrays = {}
    for key in ("states", "controls", "costs", "success", "status", "iterations", "solve_time"):
        ref = getattr(template, key)
        arrays[key] = np.empty((B,) + ref.shape[1:], dtype=object if key == "status" else ref.dtype)
    for idx, sol in parts:
        for key in arrays:
            arrays[key][idx] = getattr(sol, key)
    arrays["status"] = arrays["status"].astype(str)
    return Solution(**arrays)


class CertifiedSolver:
    """TRC proposes, the solver certifies: warm starts from checked TRC plans, cold fallback.

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        A model trained for ``solver.problem``.
    solver : trc.generators.Solver
        An optimal solver of the same problem that can be warm-started
        (:func:`warm_start_arguments`).
    checks : PlanChecks, optional
        Acceptance tests of the plans.
    retry_cold : bool
        Solve again from the cold guess any warm-started instance the solver fails on
        (default True).

    Raises
    ------
    ConfigError
        If the solver cannot be warm-started.
    DimensionError
        If the model's sizes differ from the problem's.
    """

    def __init__(self, model, solver: Solver, checks: PlanChecks | None = None, *, retry_cold: bool = True):
        self.model, self.solver, self.problem = model, solver, solver.problem
        self.checks = checks or PlanChecks()
        self.retry_cold = bool(retry_cold)
        p = self.problem
        if (model.state_dim, model.control_dim, model.horizon) != (p.state_dim, p.control_dim, p.horizon):
            raise DimensionError(
                f"model has (state_dim, control_dim, horizon) = {(model.state_dim, model.control_dim, model.horizon)}; "
                f"problem {p.name!r} has {(p.state_dim, p.control_dim, p.horizon)}"
            )
        warm_start_arguments(solver, np.zeros((0, p.horizon, p.control_dim)), np.zeros((0, p.horizon + 1, p.state_dim)))
        self.plant = p.make_plant(torch.float64)

    def state_guess(self, plan: PlanReport, x0: np.ndarray, target: np.ndarray) -> np.ndarray:
        """State guesses ``(B, N + 1, n)`` for a multiple-shooting solver (see the module doc).

        Where a plan reaches the target tolerance, its simulated states plus the linear
        correction ``(k / N) (x* - x_N)`` that makes them end at the target; elsewhere the
        straight line from ``x0`` to the target.
        """
        N = self.problem.horizon
        s = np.linspace(0.0, 1.0, N + 1)[None, :, None]
        shifted = plan.states + s * (target - plan.states[:, -1])[:, None]
        reached = plan.terminal_error < self.problem.tolerance
        return np.where(reached[:, None, None], shifted, straight_line_states(x0, target, N))

    def solve(self, x0, target) -> CertifiedResult:
        """Plan, check, and solve ``B`` instances.

        Parameters
        ----------
        x0, target : array_like, shape ``(B, n)``

        Returns
        -------
        CertifiedResult

        Raises
        ------
        DimensionError, NonFiniteError
            On malformed inputs.
        """
        start = time.perf_counter()
        x0 = np.asarray(x0, dtype=np.float64)
        target = np.asarray(target, dtype=np.float64)
        B = x0.shape[0] if x0.ndim else 0
        if B == 0:
            raise DimensionError(f"x0 has shape {x0.shape}; expected (B >= 1, state_dim={self.problem.state_dim})")
        plan = check_plan(self.problem, self.model, x0, target, self.checks, plant=self.plant)
        warm = np.flatnonzero(plan.ok)
        cold = np.flatnonzero(~plan.ok)
        parts = []
        retried = np.zeros(B, dtype=bool)
        if warm.size:
            kwargs = warm_start_arguments(self.solver, plan.controls[warm],
                                          self.state_guess(plan, x0, target)[warm])
            sol = self.solver.solve(x0[warm], target[warm], **kwargs)
            parts.append((warm, sol))
            failed = np.flatnonzero(~sol.success)
            if self.retry_cold and failed.size:
                again = self.solver.solve(x0[warm[failed]], target[warm[failed]])
                again.iterations = again.iterations + sol.iterations[failed]
                again.solve_time = again.solve_time + sol.solve_time[failed]
                parts.append((warm[failed], again))
                retried[warm[failed]] = True
        if cold.size:
            parts.append((cold, self.solver.solve(x0[cold], target[cold])))
        solution = _merge(parts, B)
        warm_started = np.zeros(B, dtype=bool)
        warm_started[warm] = True
        return CertifiedResult(solution=solution, plan=plan, warm_started=warm_started, retried_cold=retried,
                               seconds=time.perf_counter() - start)
