"""Fuel-optimal powered descent by lossless convexification: an SOCP in cvxpy (solver ``rocket``).

The minimum-fuel landing problem of the ``rocket`` plant (:class:`dynamics.rocket.Rocket`)
has the non-convex thrust constraint ``0 < rho1 <= ||T|| <= rho2``. Açıkmeşe & Ploen [1]_
relax it with a slack ``Gamma >= ||T||`` (``rho1 <= Gamma <= rho2``), prove that the
relaxation is lossless (``||T|| = Gamma`` at the optimum), and change variables to

    u = T / m,    sigma = Gamma / m,    z = ln m,

so that the dynamics become linear, ``r'' = u + g``, ``z' = -alpha sigma``, and the thrust
bounds become ``rho1 e^{-z} <= sigma <= rho2 e^{-z}``. These are replaced by the Taylor
expansions about the reference ``z_ref(t) = ln(m0 - alpha rho2 t)`` (the least mass possible
at time ``t``):

    rho1 e^{-z_ref} [1 - (z - z_ref) + (z - z_ref)^2 / 2] <= sigma      (second-order cone)
    sigma <= rho2 e^{-z_ref} [1 - (z - z_ref)]                          (linear)

with ``z_ref(t) <= z(t) <= ln(m0 - alpha rho1 t)``. Both are conservative for
``z >= z_ref`` (``e^{-w} >= 1 - w`` and ``e^{-w} <= 1 - w + w^2/2`` for ``w >= 0``), so the
thrust of the SOCP solution meets the original bounds (here to about 1e-6 relative, because
the bounds are imposed at the interval's mid-point mass, see below). This is the relaxed,
change-of-variables problem of [1]_ with its Taylor bounds on ``sigma``, as restated in [2]_
(their minimum-fuel problem); the equation numbers of the papers are not quoted here.

Discretisation (fixed horizon ``N``, ``dt`` from the problem, time of flight ``N dt``):
``u_k`` and ``sigma_k`` are held constant on ``[t_k, t_{k+1})``, which makes the SOCP's
dynamics exact for ``(r, v, z)``::

    v_{k+1} = v_k + dt (u_k + g),   r_{k+1} = r_k + dt v_k + dt^2 / 2 (u_k + g),
    z_{k+1} = z_k - alpha dt sigma_k.

The thrust bounds are imposed at the interval's mid-point mass ``(z_k + z_{k+1}) / 2``.
The plant holds the thrust ``T_k`` (not ``u_k``) constant; the solver returns
``T_k = u_k * m_bar_k`` with ``m_bar_k = (m_k - m_{k+1}) / (z_k - z_{k+1})`` the mean mass of
the SOCP over the interval. With ``||u_k|| = sigma_k`` (lossless) this choice makes the
plant's mass and velocity at the nodes *exactly* those of the SOCP (``int T_k / m(t) dt =
u_k dt`` and ``alpha ||T_k|| dt = m_k - m_{k+1}``). The plant's position increment is
``dt^2 phi(eps_k) T_k / m_bar_k`` with ``eps_k = alpha sigma_k dt`` and
``phi(eps) = (1 - eps / (e^eps - 1)) / eps = 1/2 - eps/12 + O(eps^3)``
(:func:`position_weight`; integrate ``(dt - t) T_k / (m_k - alpha ||T_k|| t)``): the
acceleration rises as mass burns. With ``phi = 1/2`` (the first pass) the position is off by
about ``||u_k|| alpha sigma_k dt^3 / 12`` per step (0.19 m after 72 s with ``dt = 1.44`` s).

Refinement (``refine=True``, default). A second SOCP uses the first solution's
``sigma_k`` to fix the weights ``phi_k = phi(alpha sigma_k dt)`` (a parameter, so the problem
stays linear) and its mid-point masses as the Taylor expansion point ``z_ref``. The position
then matches the plant up to the change of ``sigma`` between the passes (0.8 mm in the
published example, 250 times smaller), and the thrust bounds are expanded about the actual
mass (exact to ``O(w^2)`` with ``w`` the change of ``z`` between passes), so the maximum
thrust arcs reach ``rho2`` instead of ``0.999 rho2``. This is one step of successive
convexification about an already optimal solution; it costs a second solve. The residual is
measured and checked in either case.

Constraints: initial state, landing at the target position and velocity (the target's mass
entry is ignored), final mass ``>= m_dry``, glide slope ``||(r - r_f)_xy|| tan(gamma) <=
(r - r_f)_z`` at every node (``gamma`` from ``problem.options["glide_slope"]`` in degrees,
default 4 as in the Mars example of [2]_). The objective is the fuel used, ``m0 (1 -
e^{-alpha dt sum sigma_k})``, minimised as ``dt sum_k sigma_k`` (equivalently, ``z_N``
maximised, as in [1]_).

References
----------
.. [1] B. Açıkmeşe and S. R. Ploen, "Convex programming approach to powered descent guidance
   for Mars landing", *J. Guidance, Control, and Dynamics* 30(5), 1353-1366, 2007.
.. [2] L. Blackmore, B. Açıkmeşe and D. P. Scharf, "Minimum-landing-error powered-descent
   guidance for Mars landing using convex optimization", *J. Guidance, Control, and
   Dynamics* 33(4), 1161-1171, 2010.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch

from dynamics.errors import ConfigError, DimensionError, NonFiniteError, SolverError
from dynamics.rocket import Rocket

from .base import Solution, Solver, register_solver
from .checks import Tolerances, _fmt, assemble_solution, check_solution
from .lqr import _check_instances, _reject_unknown, _tolerances

__all__ = ["RocketSolver", "RocketSOCPResult", "PROBLEM_OPTIONS", "position_weight"]

#: ``problem.options`` keys read by the solver, with their defaults.
PROBLEM_OPTIONS = {"glide_slope": 4.0}

#: Default settings of the SOCP backends.
BACKEND_SETTINGS = {
    "CLARABEL": {"tol_gap_abs": 1e-9, "tol_gap_rel": 1e-9, "tol_feas": 1e-9, "max_iter": 200},
    "ECOS": {"abstol": 1e-9, "reltol": 1e-9, "feastol": 1e-9, "max_iters": 200},
}
# SCS is not offered: a first-order method, it does not reach these tolerances on the landing SOCP
# (200,000 iterations end "optimal_inaccurate"; at eps 1e-5 it reports 415 kg of fuel for a 368.6 kg optimum).


@dataclass
class RocketSOCPResult:
    """The SOCP solution of one instance (all arrays float64).

    Attributes
    ----------
    status : str
        cvxpy status (``"optimal"``, ``"infeasible"``, ...).
    iterations : int
        Backend iterations.
    thrust : ndarray, shape ``(N, 3)``
        Thrust ``T_k`` for the plant in N (NaN if not solved).
    u : ndarray, shape ``(N, 3)``
        Thrust acceleration ``T / m`` in m/s^2.
    sigma : ndarray, shape ``(N,)``
        Slack ``Gamma / m`` in m/s^2; ``||u_k|| = sigma_k`` at a lossless optimum.
    states : ndarray, shape ``(N + 1, 7)``
        The SOCP's trajectory ``(r, v, e^z)``.
    fuel : float
        Propellant used according to the SOCP, kg.
    """

    status: str
    iterations: int
    thrust: np.ndarray
    u: np.ndarray
    sigma: np.ndarray
    states: np.ndarray
    fuel: float


def position_weight(eps) -> np.ndarray:
    """``phi(eps) = (1 - eps / (e^eps - 1)) / eps``, the exact weight of ``u_k dt^2`` in the
    position update under a constant thrust (see the module docstring); ``phi(0) = 1/2``.

    Parameters
    ----------
    eps : array_like
        Relative log-mass drop ``alpha sigma_k dt`` of each interval (>= 0).
    """
    eps = np.asarray(eps, dtype=float)
    small = eps < 1e-4
    e = np.where(small, 1.0, eps)
    exact = (1.0 - e / np.expm1(e)) / e
    return np.where(small, 0.5 - eps / 12.0 + eps**3 / 720.0, exact)


@register_solver("rocket")
class RocketSolver(Solver):
    """Fuel-optimal powered descent of the ``rocket`` plant (lossless convexification).

    Parameters
    ----------
    problem : trc.problem.Problem
        A problem on the ``rocket`` plant with ``cost == "fuel"``; ``horizon`` and ``dt`` set
        the time of flight ``N dt``; ``problem.options`` may set ``glide_slope`` (degrees
        above the horizontal, ``0 < gamma < 90``, default 4).
    backend : str
        cvxpy SOCP solver: ``"CLARABEL"``, ``"ECOS"`` or ``"SCS"``; default the first of
        these that is installed (interior-point solvers first: they reach 1e-9).
    solver_settings : dict, optional
        Backend settings overriding the defaults (tolerances 1e-9).
    thrust_rtol : float
        Relative tolerance of the checks ``rho1 <= ||T_k|| <= rho2`` (default 1e-5).
    lossless_rtol : float
        Relative tolerance of the check ``||u_k|| = sigma_k`` (default 1e-4).
    glide_tol : float
        Tolerance of the glide-slope check on simulated states, in metres of altitude
        (default 0.05 with ``refine``, 1.0 without).
    terminal_tol : float
        Tolerance on ``||r_N - r_f|| + ||v_N - v_f||`` of the simulated landing (m and m/s;
        default ``problem.tolerance``).
    refine : bool
        Solve a second, refined SOCP (default True; see the module docstring).
    warm_tol : float
        Largest change of the expansion point (mid-point log-mass, ``alpha dt sigma_k``) under
        which a warm-started solve stops after one SOCP (default 1e-5; see
        :meth:`solve_instance`).
    dynamics_rtol, dynamics_atol, bound_rtol, bound_atol : float
        Check tolerances (:class:`~trc.generators.checks.Tolerances`); the dynamics residual
        (mostly position, see the module docstring) defaults to ``1e-5`` relative to the
        largest state with ``refine`` (2 cm at 2 km) and ``3e-4`` without (0.6 m).

    Attributes
    ----------
    last_report : trc.generators.checks.CheckReport
        The checks of the last :meth:`solve` (dynamics residuals, bound violations per
        instance): diagnostics the :class:`~trc.generators.Solution` does not hold.

    Raises
    ------
    ConfigError
        If the plant is not a rocket, the cost is not ``"fuel"``, an option or
        ``problem.options`` key is unknown or out of range, or the backend is missing.

    Examples
    --------
    >>> solver = make_solver("rocket", problem)                       # doctest: +SKIP
    >>> sol = solver.solve(x0, target)                                 # doctest: +SKIP
    >>> fuel_kg = sol.costs                                            # doctest: +SKIP
    """

    def __init__(self, problem, **options):
        super().__init__(problem, **options)
        opts = dict(options)
        self.refine = bool(opts.pop("refine", True))
        opts.setdefault("dynamics_rtol", 1e-5 if self.refine else 3e-4)
        self.tolerances = _tolerances(opts)
        available = [b for b in BACKEND_SETTINGS if b in cp.installed_solvers()]
        backend = str(opts.pop("backend", available[0] if available else "CLARABEL")).upper()
        settings = opts.pop("solver_settings", None) or {}
        self.thrust_rtol = float(opts.pop("thrust_rtol", 1e-5))
        self.lossless_rtol = float(opts.pop("lossless_rtol", 1e-4))
        self.glide_tol = float(opts.pop("glide_tol", 0.05 if self.refine else 1.0))
        self.terminal_tol = float(opts.pop("terminal_tol", problem.tolerance))
        self.warm_tol = float(opts.pop("warm_tol", 1e-5))
        _reject_unknown(
            "rocket", opts,
            ("backend", "solver_settings", "refine", "thrust_rtol", "lossless_rtol", "glide_tol", "terminal_tol", "warm_tol",
             *Tolerances.__dataclass_fields__),
        )
        if backend not in BACKEND_SETTINGS or backend not in cp.installed_solvers():
            raise ConfigError(
                f"rocket: backend {backend!r} is not available; choose one of "
                f"{sorted(set(BACKEND_SETTINGS) & set(cp.installed_solvers()))}"
            )
        self.backend, self.settings = backend, {**BACKEND_SETTINGS[backend], **settings}
        if problem.cost != "fuel":
            raise ConfigError(
                f"rocket: problem {problem.name!r} has cost {problem.cost!r}; the rocket solver needs 'fuel'"
            )
        self.plant = problem.make_plant(torch.float64)
        if not isinstance(self.plant, Rocket):
            raise ConfigError(f"rocket: problem {problem.name!r} uses plant {self.plant.name!r}; expected 'rocket'")
        unknown = sorted(set(problem.options) - set(PROBLEM_OPTIONS))
        if unknown:
            raise ConfigError(f"rocket: unknown problem.options {unknown}; allowed: {sorted(PROBLEM_OPTIONS)}")
        self.glide_slope = float(problem.options.get("glide_slope", PROBLEM_OPTIONS["glide_slope"]))
        if not 0 < self.glide_slope < 90:
            raise ConfigError(
                f"rocket: problem.options.glide_slope must be in (0, 90) degrees, got {self.glide_slope!r}"
            )
        p = self.plant
        self.alpha, self.rho1, self.rho2 = p.alpha, p.rho1, p.rho2
        self.g = p.gravity.numpy().astype(float)
        self.m_dry = float(p.m_dry)
        self._build()

    # ------------------------------------------------------------------ the SOCP
    def _build(self) -> None:
        N, dt, a = self.problem.horizon, float(self.problem.dt), self.alpha
        self.params = {
            "r0": cp.Parameter(3, name="r0"), "v0": cp.Parameter(3, name="v0"), "z0": cp.Parameter(name="z0"),
            "rf": cp.Parameter(3, name="rf"), "vf": cp.Parameter(3, name="vf"),
            # Taylor reference at the interval mid-points and mass bounds at the nodes.
            "z_ref": cp.Parameter(N, name="z_ref"),
            "mu1": cp.Parameter(N, nonneg=True, name="mu1"), "mu2": cp.Parameter(N, nonneg=True, name="mu2"),
            "z_min": cp.Parameter(N, name="z_min"), "z_max": cp.Parameter(N, name="z_max"),
            # Position weight of u_k per step: 1/2 in the first pass, phi(alpha sigma_k dt) after.
            "phi": cp.Parameter((N, 3), nonneg=True, name="phi"),
        }
        P = self.params
        r, v = cp.Variable((N + 1, 3), name="r"), cp.Variable((N + 1, 3), name="v")
        z = cp.Variable(N + 1, name="z")
        u, sigma = cp.Variable((N, 3), name="u"), cp.Variable(N, name="sigma")
        w = cp.Variable(N, name="w")  # z_mid - z_ref (a variable keeps the problem DPP)
        acc = u + np.ones((N, 1)) @ self.g[None, :]
        z_mid = (z[:-1] + z[1:]) / 2
        cot = 1.0 / math.tan(math.radians(self.glide_slope))
        cons = [
            r[0] == P["r0"], v[0] == P["v0"], z[0] == P["z0"],
            v[1:] == v[:-1] + dt * acc,
            r[1:] == r[:-1] + dt * v[:-1] + dt**2 * (cp.multiply(P["phi"], u) + self.g / 2),
            z[1:] == z[:-1] - a * dt * sigma,
            cp.norm(u, 2, axis=1) <= sigma,                                        # relaxed ||T|| <= Gamma
            w == z_mid - P["z_ref"],
            cp.multiply(P["mu1"], 1 - w + cp.square(w) / 2) <= sigma,              # rho1 e^{-z} <= sigma
            sigma <= cp.multiply(P["mu2"], 1 - w),                                 # sigma <= rho2 e^{-z}
            z[1:] >= P["z_min"], z[1:] <= P["z_max"], z[N] >= math.log(self.m_dry),
            r[N] == P["rf"], v[N] == P["vf"],
            cp.norm(r[1:, :2] - np.ones((N, 1)) @ cp.reshape(P["rf"][:2], (1, 2), order="C"), 2, axis=1)
            <= cot * (r[1:, 2] - P["rf"][2]),                                      # glide slope
        ]
        self.vars = {"r": r, "v": v, "z": z, "u": u, "sigma": sigma}
        self.socp = cp.Problem(cp.Minimize(dt * cp.sum(sigma)), cons)
        if not self.socp.is_dpp():  # a bug here, not a user error
            raise SolverError("rocket: the parametrised SOCP is not DPP")

    def _set_parameters(self, x0: np.ndarray, target: np.ndarray) -> None:
        N, dt, a = self.problem.horizon, float(self.problem.dt), self.alpha
        m0 = float(x0[6])
        t_nodes = dt * np.arange(1, N + 1)
        t_mid = dt * (np.arange(N) + 0.5)
        floor = self.m_dry  # mass never falls below m_dry, so neither does the reference
        z_ref = np.log(np.maximum(m0 - a * self.rho2 * t_mid, floor))
        P = self.params
        P["r0"].value, P["v0"].value, P["z0"].value = x0[:3], x0[3:6], math.log(m0)
        P["rf"].value, P["vf"].value = target[:3], target[3:6]
        self._set_reference(z_ref)
        P["z_min"].value = np.log(np.maximum(m0 - a * self.rho2 * t_nodes, floor))
        P["z_max"].value = np.log(np.maximum(m0 - a * self.rho1 * t_nodes, floor))
        P["phi"].value = np.full((N, 3), 0.5)

    def _set_reference(self, z_ref: np.ndarray) -> None:
        """Expansion point ``z_ref`` (shape ``(N,)``) of the Taylor bounds on ``sigma``."""
        P = self.params
        P["z_ref"].value = z_ref
        P["mu1"].value = self.rho1 * np.exp(-z_ref)
        P["mu2"].value = self.rho2 * np.exp(-z_ref)

    def _plan_reference(self, x0: np.ndarray, thrust: np.ndarray) -> None:
        """Set the refined SOCP's parameters from a thrust plan ``(N, 3)`` instead of a first pass.

        The plan is simulated through the float64 plant; its mid-point log-masses become the
        Taylor expansion point ``z_ref`` and its ``sigma_k = ||T_k|| / m_k`` the position
        weights ``phi_k`` (module docstring, "Refinement").
        """
        with torch.no_grad():
            m = self.plant.rollout(torch.as_tensor(x0[None]), torch.as_tensor(thrust[None]))[0, :, 6].numpy()
        z = np.log(np.maximum(m, self.m_dry))
        z_mid = (z[:-1] + z[1:]) / 2
        sigma = np.linalg.norm(thrust, axis=1) * np.exp(-z_mid)
        eps = self.alpha * float(self.problem.dt) * sigma
        self.params["phi"].value = np.repeat(position_weight(eps)[:, None], 3, axis=1)
        self._set_reference(z_mid)
        self._reference_eps = eps

    def solve_instance(self, x0, target, initial_controls=None) -> RocketSOCPResult:
        """Solve the SOCP of one instance.

        Parameters
        ----------
        x0 : array_like, shape ``(7,)``
            Initial ``(r, v, m)`` in m, m/s, kg (``m_dry < m``).
        target : array_like, shape ``(7,)``
            Landing position and velocity (mass entry ignored).
        initial_controls : array_like, shape ``(N, 3)``, optional
            Warm start with ``refine=True``: a thrust plan (N) replaces the first SOCP as the
            point the refined SOCP is built about (:meth:`_plan_reference`). If the solution's
            own expansion point (mid-point log-masses and ``alpha dt sigma_k``) differs from
            the plan's by more than ``warm_tol``, the refined SOCP is solved once more about
            the solution, as in a cold solve; so a warm start takes one SOCP where the plan is
            accurate and two otherwise, and the returned solution is always built about a point
            at most one refinement away from itself. If the warm-started SOCP is not solved
            to optimality, the instance is solved again without the plan (``iterations`` then
            counts both). Ignored with ``refine=False``.

        Returns
        -------
        RocketSOCPResult
        """
        res = self._solve_passes(x0, target, initial_controls)
        if initial_controls is not None and self.refine and res.status != cp.OPTIMAL:
            cold = self._solve_passes(x0, target, None)
            cold.iterations += res.iterations
            return cold
        return res

    def _solve_passes(self, x0, target, initial_controls) -> RocketSOCPResult:
        """The SOCP pass(es) of :meth:`solve_instance`, without the cold retry."""
        N = self.problem.horizon
        x0, target = np.asarray(x0, dtype=float), np.asarray(target, dtype=float)
        nan = RocketSOCPResult("", 0, np.full((N, 3), np.nan), np.full((N, 3), np.nan), np.full(N, np.nan),
                               np.full((N + 1, 7), np.nan), math.nan)
        if not x0[6] > self.m_dry:
            nan.status = f"initial mass {x0[6]:g} kg not above m_dry={self.m_dry:g} kg"
            return nan
        self._set_parameters(x0, target)
        warm = initial_controls is not None and self.refine
        if warm:
            self._plan_reference(x0, np.asarray(initial_controls, dtype=float).reshape(N, 3))
        for refinement in range(1 + self.refine):
            if refinement and warm:
                z, sigma = self.vars["z"].value, np.maximum(self.vars["sigma"].value, 0.0)
                shift = max(np.abs((z[:-1] + z[1:]) / 2 - self.params["z_ref"].value).max(),
                            np.abs(self.alpha * float(self.problem.dt) * sigma - self._reference_eps).max())
                if shift <= self.warm_tol:
                    break  # the plan was already the solution's own expansion point
            if refinement:
                # Second pass: exact position weights and Taylor bounds about the first
                # solution's mass (see the module docstring, "Refinement").
                eps = self.alpha * float(self.problem.dt) * np.maximum(self.vars["sigma"].value, 0.0)
                self.params["phi"].value = np.repeat(position_weight(eps)[:, None], 3, axis=1)
                z = self.vars["z"].value
                self._set_reference((z[:-1] + z[1:]) / 2)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.socp.solve(solver=self.backend, warm_start=True, **self.settings)
            except cp.error.SolverError as exc:
                nan.status = f"solver_error ({exc})"
                return nan
            stats = self.socp.solver_stats
            nan.status = str(self.socp.status)
            nan.iterations += int((stats.num_iters if stats else 0) or 0)
            if self.socp.status != cp.OPTIMAL:
                return nan
        V = {k: np.asarray(var.value, dtype=float) for k, var in self.vars.items()}
        z = V["z"]
        dz = z[:-1] - z[1:]  # alpha dt sigma_k > 0
        m = np.exp(z)
        # Mean mass over the interval, m_k (1 - e^{-dz}) / dz, computed without cancellation.
        m_bar = np.where(dz > 1e-12, -m[:-1] * np.expm1(-dz) / np.maximum(dz, 1e-300), m[:-1])
        states = np.concatenate([V["r"], V["v"], m[:, None]], axis=1)
        return RocketSOCPResult(
            status=nan.status, iterations=nan.iterations, thrust=V["u"] * m_bar[:, None], u=V["u"],
            sigma=V["sigma"], states=states, fuel=float(m[0] - m[-1]),
        )

    # ------------------------------------------------------------------ batch
    def solve(self, x0, target, *, initial_controls=None) -> Solution:
        """Solve ``B`` instances (one SOCP each); see :meth:`Solver.solve`.

        Parameters
        ----------
        x0, target : ndarray, shape ``(B, 7)``
        initial_controls : ndarray, shape ``(B, N, 3)``, optional
            Thrust plans (N) that warm-start the refinement (see :meth:`solve_instance`);
            ``iterations`` counts the backend's iterations of every SOCP solved.

        Returns
        -------
        Solution
            Controls are thrust vectors in N; states re-simulated through the plant; costs the
            fuel used in kg (:func:`trc.cost.fuel_cost`). Beyond the common checks an instance
            fails on ``thrust`` (``||T_k||`` outside ``[rho1, rho2]``), ``lossless``
            (``||u_k|| < sigma_k``), ``glide_slope`` or ``terminal`` (landing missed).

        Raises
        ------
        DimensionError, NonFiniteError
            On malformed inputs.
        """
        x0, target = _check_instances(self.problem, x0, target)
        B, N = x0.shape[0], self.problem.horizon
        if initial_controls is not None:
            initial_controls = np.asarray(initial_controls, dtype=float)
            if initial_controls.shape != (B, N, 3):
                raise DimensionError(f"rocket: initial_controls has shape {initial_controls.shape}; expected {(B, N, 3)}")
            if not np.isfinite(initial_controls).all():
                raise NonFiniteError("rocket: initial_controls contains NaN or infinity")
        controls = np.empty((B, N, 3))
        predicted = np.empty((B, N + 1, 7))
        status = np.empty(B, dtype=object)
        ok = np.zeros(B, dtype=bool)
        iterations = np.zeros(B, dtype=np.int64)
        solve_time = np.zeros(B)
        gap = np.zeros(B)
        for i in range(B):
            t0 = time.perf_counter()
            res = self.solve_instance(x0[i], target[i], None if initial_controls is None else initial_controls[i])
            solve_time[i] = time.perf_counter() - t0
            controls[i], predicted[i], status[i], iterations[i] = res.thrust, res.states, res.status, res.iterations
            ok[i] = res.status == cp.OPTIMAL
            if ok[i]:
                gap[i] = np.max((res.sigma - np.linalg.norm(res.u, axis=1)) / res.sigma)
        report = check_solution(
            self.problem, x0, target, controls, predicted, solver_status=status, solver_success=ok,
            plant=self.plant, tolerances=self.tolerances,
        )
        finite = ok & np.isfinite(report.states).all(axis=(1, 2))
        report.fail(finite & (gap > self.lossless_rtol), "lossless",
                    lambda idx: _fmt("||u|| < sigma by %.3g (relative)", gap[idx]))
        thrust = np.linalg.norm(np.where(np.isfinite(controls), controls, 0.0), axis=-1)
        low = np.max(self.rho1 * (1 - self.thrust_rtol) - thrust, axis=1)
        high = np.max(thrust - self.rho2 * (1 + self.thrust_rtol), axis=1)
        report.fail(finite & ((low > 0) | (high > 0)), "thrust",
                    lambda idx: _fmt("||T|| outside [rho1, rho2] by %.3g N", np.maximum(low, high)[idx]))
        margin = self.glide_margin(report.states, target)
        report.fail(finite & (margin < -self.glide_tol), "glide_slope",
                    lambda idx: _fmt("below the glide slope by %.3g m", -margin[idx]))
        err = report.terminal_error(target, [0, 1, 2]) + report.terminal_error(target, [3, 4, 5])
        report.fail(finite & ~(err <= self.terminal_tol), "terminal",
                    lambda idx: _fmt("landing error %.3g (m + m/s)", err[idx]))
        self.last_report = report
        return assemble_solution(self.problem, target, controls, report, iterations, solve_time, solver_name="rocket")

    def glide_margin(self, states, target) -> np.ndarray:
        """Smallest glide-slope margin ``(r - r_f)_z - tan(gamma) ||(r - r_f)_xy||`` over the
        nodes ``k >= 1``, in metres of altitude; negative below the cone. Shape ``(B,)``.

        Parameters
        ----------
        states : ndarray, shape ``(B, N + 1, 7)``
        target : ndarray, shape ``(B, 7)``
        """
        d = np.asarray(states)[:, 1:, :3] - np.asarray(target)[:, None, :3]
        slope = math.tan(math.radians(self.glide_slope))
        return np.min(d[..., 2] - slope * np.linalg.norm(d[..., :2], axis=-1), axis=1)
