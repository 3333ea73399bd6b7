"""Checks of optimal-control solutions, shared by every solver.

A solver computes controls; :func:`check_solution` re-simulates them through the problem's
float64 plant and judges the result: non-finite values, the solver's own status, the dynamics
residual between the solver's predicted states and the simulation, and control and state
bounds. Solver-specific checks (thrust magnitude, glide slope, terminal state) are added with
:meth:`CheckReport.fail`. :func:`assemble_solution` then computes the problem's cost and
builds the :class:`~trc.generators.Solution`, logging a summary of every failure: failed
instances are kept, flagged ``success = False`` with the reason in ``status``, and counted;
never silently passed as solutions.

Typical use inside a solver::

    report = check_solution(problem, x0, target, controls, states=predicted,
                            solver_status=status, solver_success=ok)
    report.fail(report.terminal_error(target) > 1.0, "terminal", "missed the target")
    return assemble_solution(problem, target, controls, report, iterations, solve_time,
                             solver_name="rocket")

Status strings are ``"<category>: <detail>"`` (several joined by ``"; "``); the category
(``non_finite``, ``solver``, ``dynamics``, ``control_bounds``, ``state_bounds`` or a solver's
own) is what :meth:`CheckReport.failure_counts` counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from dynamics.errors import DimensionError, NonFiniteError

from .base import Solution

__all__ = ["CheckReport", "Tolerances", "check_solution", "assemble_solution", "failure_counts"]

logger = logging.getLogger("trc.generators")


@dataclass(frozen=True)
class Tolerances:
    """Tolerances of :func:`check_solution` (all non-negative).

    A quantity passes when ``error <= atol + rtol * scale``.

    Attributes
    ----------
    dynamics_rtol, dynamics_atol : float
        Dynamics residual ``max_k |x_pred[k] - x_sim[k]|`` (state units), relative to the
        instance's largest simulated state magnitude (at least 1).
    bound_rtol, bound_atol : float
        Violation of a control or state bound (units of the bounded quantity), relative to
        ``max(1, |bound|)``.
    """

    dynamics_rtol: float = 1e-6
    dynamics_atol: float = 1e-9
    bound_rtol: float = 1e-6
    bound_atol: float = 1e-9

    def __post_init__(self):
        for key in ("dynamics_rtol", "dynamics_atol", "bound_rtol", "bound_atol"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"tolerance {key} must be a finite number >= 0, got {value!r}")


@dataclass
class CheckReport:
    """Outcome of :func:`check_solution` for a batch of ``B`` instances.

    Attributes
    ----------
    states : ndarray, shape ``(B, N + 1, n)``
        Trajectories re-simulated from the controls through the float64 plant (NaN rows where
        the controls were not finite).
    success : ndarray of bool, shape ``(B,)``
        True where every check passed.
    solver_status : ndarray of str, shape ``(B,)``
        The status reported by the solver.
    dynamics_residual : ndarray, shape ``(B,)``
        ``max_k max_i |x_pred - x_sim|`` in state units; NaN if no predicted states were given.
    control_violation, state_violation : ndarray, shape ``(B,)``
        Largest violation of a control or state bound (0 when inside the bounds).
    """

    states: np.ndarray
    success: np.ndarray
    solver_status: np.ndarray
    dynamics_residual: np.ndarray
    control_violation: np.ndarray
    state_violation: np.ndarray
    _failures: list = field(default_factory=list, repr=False)

    def fail(self, mask, category: str, detail="") -> None:
        """Mark the instances in ``mask`` (bool ``(B,)``) as failed for ``category``.

        Parameters
        ----------
        mask : array_like of bool, shape ``(B,)``
        category : str
            Short failure kind, counted by :meth:`failure_counts` (no ``":"`` or ``";"``).
        detail : str, sequence of str of length ``B``, or callable
            Human-readable detail: one for all, one per instance, or ``detail(idx)`` returning
            the details of the failed instances ``idx`` (int array), called only if any failed.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.success.shape:
            raise DimensionError(f"fail(): mask has shape {mask.shape}; expected {self.success.shape}")
        if not category or any(c in category for c in ":;"):
            raise ValueError(f"fail(): category must be a non-empty name without ':' or ';', got {category!r}")
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        if callable(detail):
            texts = np.asarray(detail(idx), dtype=object)
        elif isinstance(detail, str):
            texts = np.full(idx.size, detail, dtype=object)
        else:
            texts = np.asarray(detail, dtype=object)[idx]
        if texts.shape != idx.shape:
            raise DimensionError(f"fail(): {texts.shape[0]} details for {idx.size} failed instances")
        prefix = np.where(texts.astype(bool), f"{category}: ", category).astype(object)
        self._failures.append((category, idx, prefix + texts))
        self.success[idx] = False

    @property
    def status(self) -> np.ndarray:
        """Status strings, shape ``(B,)``: the solver status where every check passed, else
        the failure reasons ``"<category>: <detail>"`` joined by ``"; "`` in check order."""
        status = self.solver_status.astype(object)
        reasons = np.full(status.shape, None, dtype=object)
        for _, idx, texts in self._failures:
            first = np.array([r is None for r in reasons[idx]], dtype=bool)
            reasons[idx[first]] = texts[first]
            rest = idx[~first]
            reasons[rest] = reasons[rest] + "; " + texts[~first]
        failed = ~self.success
        status[failed] = reasons[failed]
        return status.astype(str)

    def failure_counts(self) -> dict[str, int]:
        """Number of failed instances per failure category (an instance may count twice)."""
        masks: dict[str, np.ndarray] = {}
        for category, idx, _ in self._failures:
            masks.setdefault(category, np.zeros(self.success.shape, dtype=bool))[idx] = True
        return {k: int(v.sum()) for k, v in sorted(masks.items())}

    def terminal_error(self, target, indices=None) -> np.ndarray:
        """``||x_N[indices] - target[indices]||_2`` of the simulated trajectories, shape ``(B,)``."""
        target = np.asarray(target, dtype=float)
        idx = slice(None) if indices is None else np.asarray(indices)
        return np.linalg.norm(self.states[:, -1, idx] - target[:, idx], axis=-1)


def failure_counts(status, success) -> dict[str, int]:
    """Count failure categories in ``status`` strings ``"<category>: <detail>; ..."``.

    Parameters
    ----------
    status : array_like of str, shape ``(B,)``
    success : array_like of bool, shape ``(B,)``

    Returns
    -------
    dict
        ``{category: number of failed instances with that category}``, sorted by name.
    """
    counts: dict[str, int] = {}
    for s, ok in zip(np.asarray(status), np.asarray(success, dtype=bool)):
        if ok:
            continue
        for category in {part.split(":", 1)[0].strip() for part in str(s).split(";")}:
            counts[category] = counts.get(category, 0) + 1
    return dict(sorted(counts.items()))


def _as_batch(a, shape_tail: tuple, what: str, batch: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail or (batch is not None and a.shape[0] != batch):
        expected = "(" + ", ".join([str(batch) if batch is not None else "B", *map(str, shape_tail)]) + ")"
        raise DimensionError(f"{what} has shape {a.shape}; expected {expected}")
    return a


def check_solution(
    problem,
    x0,
    target,
    controls,
    states=None,
    *,
    solver_status=None,
    solver_success=None,
    plant=None,
    tolerances: Tolerances | None = None,
) -> CheckReport:
    """Re-simulate and check a batch of solutions of ``problem``.

    Parameters
    ----------
    problem : trc.problem.Problem
        The problem solved (plant, horizon, bounds).
    x0, target : array_like, shape ``(B, n)``
        Initial and target states (``target`` is only validated here; the cost is computed by
        :func:`assemble_solution`).
    controls : array_like, shape ``(B, N, m)``
        The solver's controls; non-finite rows fail with category ``non_finite``.
    states : array_like, shape ``(B, N + 1, n)``, optional
        The solver's own predicted trajectories (e.g. from its discretisation). If given, the
        dynamics residual against the simulation is checked (category ``dynamics``).
    solver_status : array_like of str, shape ``(B,)``, optional
        The solver's status per instance (default ``"optimal"``); kept as the status of the
        instances that pass every check.
    solver_success : array_like of bool, shape ``(B,)``, optional
        Whether the solver reported an optimum (default all True); False fails with category
        ``solver``.
    plant : dynamics.Plant, optional
        The float64 plant to simulate with (default ``problem.make_plant(torch.float64)``);
        pass it to avoid rebuilding it on every call.
    tolerances : Tolerances, optional
        Default :class:`Tolerances()`.

    Returns
    -------
    CheckReport
        Simulated states, success mask, status strings and the measured residuals.

    Raises
    ------
    DimensionError
        If an array has the wrong shape (horizon and dimensions from ``problem``).
    NonFiniteError
        If ``x0`` or ``target`` contains NaN or infinity (bad input, not a solver failure).

    Notes
    -----
    Checks, in order: the solver status; finite controls and dynamics residual
    ``max |x_pred - x_sim| <= atol + rtol * max(1, max |x_sim|)`` (both where the solver
    succeeded); the simulation is finite; control bounds ``u_min - tol <= u <= u_max + tol``;
    state bounds on every simulated state, ``x0`` included. Bounds are the plant's
    ``u_min``/``u_max``/``x_min``/``x_max``.
    """
    tol = tolerances or Tolerances()
    plant = plant if plant is not None else problem.make_plant(torch.float64)
    n, m, N = plant.state_dim, plant.control_dim, problem.horizon
    x0 = _as_batch(x0, (n,), "x0")
    B = x0.shape[0]
    target = _as_batch(target, (n,), "target", B)
    controls = _as_batch(controls, (N, m), "controls", B)
    for a, what in ((x0, "x0"), (target, "target")):
        if not np.isfinite(a).all():
            rows = np.flatnonzero(~np.isfinite(a).all(1))[:10].tolist()
            raise NonFiniteError(f"{what} contains NaN or infinity in rows {rows}")
    predicted = None if states is None else _as_batch(states, (N + 1, n), "states", B)
    status = np.full(B, "optimal", dtype=object) if solver_status is None else np.asarray(solver_status).astype(object)
    ok_solver = np.ones(B, dtype=bool) if solver_success is None else np.asarray(solver_success, dtype=bool)
    if status.shape != (B,) or ok_solver.shape != (B,):
        raise DimensionError(
            f"solver_status {status.shape} and solver_success {ok_solver.shape} must have shape ({B},)"
        )

    report = CheckReport(
        states=np.full((B, N + 1, n), np.nan),
        success=np.ones(B, dtype=bool),
        solver_status=status,
        dynamics_residual=np.full(B, np.nan),
        control_violation=np.zeros(B),
        state_violation=np.zeros(B),
    )
    finite_u = np.isfinite(controls).all(axis=(1, 2))
    report.fail(~ok_solver, "solver", lambda idx: status[idx].astype(str))
    # A failed solver may return NaN controls; that is not a separate failure.
    report.fail(ok_solver & ~finite_u, "non_finite", "controls contain NaN or infinity")

    # Re-simulate the finite instances through the float64 plant (batched).
    idx = np.flatnonzero(finite_u)
    if idx.size:
        with torch.no_grad():
            sim = plant.rollout(torch.from_numpy(x0[idx]), torch.from_numpy(controls[idx])).numpy()
        report.states[idx] = sim
    finite_x = np.isfinite(report.states).all(axis=(1, 2))
    report.fail(finite_u & ~finite_x, "non_finite", "simulated states contain NaN or infinity")
    sim = report.states

    if predicted is not None:
        with np.errstate(invalid="ignore"):
            residual = np.abs(predicted - sim).max(axis=(1, 2))
            scale = np.maximum(1.0, np.abs(sim).max(axis=(1, 2)))
        residual = np.where(np.isfinite(predicted).all(axis=(1, 2)), residual, np.inf)
        report.dynamics_residual = residual
        bad = ok_solver & finite_x & ~(residual <= tol.dynamics_atol + tol.dynamics_rtol * scale)
        report.fail(bad, "dynamics",
                    lambda idx: _fmt("residual %.3g between predicted and simulated states", residual[idx]))

    def violation(values, lo, hi):
        """Largest violation per instance and whether it exceeds the tolerance."""
        lo, hi = lo.numpy().astype(np.float64), hi.numpy().astype(np.float64)
        worst = np.zeros(B)
        if B == 0:
            return worst, np.zeros(0, dtype=bool)
        excess = np.full(B, -np.inf)
        for bound, sign in ((lo, -1.0), (hi, 1.0)):
            cols = np.flatnonzero(np.isfinite(bound))
            if cols.size == 0:
                continue
            over = sign * (values[..., cols] - bound[cols])  # > 0 outside the bound
            over = over.reshape(B, -1, cols.size)
            allow = tol.bound_atol + tol.bound_rtol * np.maximum(1.0, np.abs(bound[cols]))
            worst = np.maximum(worst, over.max(axis=(1, 2)))
            excess = np.maximum(excess, (over - allow).max(axis=(1, 2)))
        return worst, excess > 0

    finite_controls = np.where(np.isfinite(controls), controls, 0.0)
    report.control_violation, bad_u = violation(finite_controls, plant.u_min, plant.u_max)
    report.fail(finite_u & bad_u, "control_bounds",
                lambda idx: _fmt("max violation %.3g of [u_min, u_max]", report.control_violation[idx]))
    report.state_violation, bad_x = violation(np.where(np.isfinite(sim), sim, 0.0), plant.x_min, plant.x_max)
    report.fail(finite_x & bad_x, "state_bounds",
                lambda idx: _fmt("max violation %.3g of [x_min, x_max]", report.state_violation[idx]))
    return report


def _fmt(template: str, values) -> np.ndarray:
    """``template % v`` for every value, as an object array."""
    return np.array([template % v for v in np.asarray(values).tolist()], dtype=object)


def assemble_solution(
    problem,
    target,
    controls,
    report: CheckReport,
    iterations,
    solve_time,
    *,
    solver_name: str = "solver",
) -> Solution:
    """Build the :class:`~trc.generators.Solution` of a checked batch and log its failures.

    Parameters
    ----------
    problem : trc.problem.Problem
    target : array_like, shape ``(B, n)``
    controls : array_like, shape ``(B, N, m)``
    report : CheckReport
        From :func:`check_solution` (plus any :meth:`CheckReport.fail` of the solver).
    iterations : array_like of int, shape ``(B,)``
    solve_time : array_like of float, shape ``(B,)``
        Wall-clock seconds per instance.
    solver_name : str
        Used in the log message.

    Returns
    -------
    Solution
        States are the re-simulated ones; costs ``problem.cost_of`` (NaN where the simulation
        is not finite).

    Notes
    -----
    Failures are logged as one warning on the ``trc.generators`` logger with their counts per
    category.
    """
    controls = np.asarray(controls, dtype=np.float64)
    B = controls.shape[0]
    costs = np.full(B, np.nan)
    ok = np.isfinite(report.states).all(axis=(1, 2)) & np.isfinite(controls).all(axis=(1, 2))
    if ok.any():
        with torch.no_grad():
            costs[ok] = problem.cost_of(
                torch.from_numpy(report.states[ok]),
                torch.from_numpy(controls[ok]),
                torch.from_numpy(np.asarray(target, dtype=np.float64)[ok]),
            ).numpy()
    failed = int((~report.success).sum())
    if failed:
        logger.warning(
            "%s on problem %r: %d of %d instances failed their checks: %s",
            solver_name, problem.name, failed, B, report.failure_counts(),
        )
    return Solution(
        states=report.states,
        controls=controls,
        costs=costs,
        success=report.success.copy(),
        status=report.status,
        iterations=np.asarray(iterations, dtype=np.int64).reshape(B),
        solve_time=np.asarray(solve_time, dtype=np.float64).reshape(B),
        dynamics_residual=np.asarray(report.dynamics_residual, dtype=np.float64).reshape(B),
    )
