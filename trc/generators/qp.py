"""Constrained linear-quadratic optimal control as a parametrised cvxpy QP (solver ``qp``).

For plants that are affine in ``(x, u)`` (see :func:`~trc.generators.lqr.exact_discretization`)
the TRC tracking problem with control and state bounds is the convex quadratic program::

    minimise   dt sum_{k<N} [(x_k - x*)' Q (x_k - x*) + u_k' R u_k] + (x_N - x*)' Qf (x_N - x*)
    subject to x_0 = x0,   x_{k+1} = A x_k + B u_k + c            (k = 0 .. N-1)
               u_min <= u_k <= u_max                               (k = 0 .. N-1)
               x_min <= x_k <= x_max                               (k = 1 .. N)

It is built once per problem with :class:`cvxpy.Parameter` s for ``x0`` and ``x*``; the
problem is DPP (Agrawal et al., "Differentiable convex optimization layers", NeurIPS 2019),
so cvxpy canonicalises it once and every later solve only refills the parameter values.

Fast path (default). Let ``U`` be the stacked controls, ``J(U)`` the cost after eliminating
the states, ``F`` the set of ``U`` meeting the bounds and ``U*`` the unconstrained minimiser
of ``J`` (the LQR solution, :class:`~trc.generators.lqr.FiniteHorizonLQR`). ``J`` is strictly
convex because ``R`` is positive definite, so it has exactly one minimiser over ``R^{N m}``
and at most one over the convex set ``F``. If ``U* in F``, then ``J(U*) <= J(U)`` for every
``U in F`` (since ``F`` is a subset of ``R^{N m}``), so ``U*`` is the unique constrained
optimum. The solver therefore computes the LQR solution of the whole batch (vectorised) and
solves the QP only for the instances whose LQR solution leaves the bounds; the result is
exact (to the QP tolerance) for every instance. ``force_qp=True`` solves the QP everywhere.
"""

from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np
import torch

from dynamics.errors import (
    ConfigError,
    DimensionError,
    InfeasibleError,
    NonFiniteError,
    SolverError,
    UncontrollableError,
)

from .base import Solution, Solver, register_solver
from .checks import Tolerances, assemble_solution, check_solution
from .lqr import (
    FiniteHorizonLQR,
    _check_instances,
    _reject_unknown,
    _tolerances,
    check_controllable,
    exact_discretization,
)

__all__ = ["QPSolver", "BACKEND_SETTINGS"]

#: Default settings of the supported backends. Clarabel's duality-gap tolerance is 1e-12
#: because an interior-point gap ``eps`` leaves the controls accurate only to about
#: ``sqrt(eps / lambda_min(dt R))`` (1e-9 gave 7e-7 errors, 1e-12 gives 1e-8, measured against
#: OSQP's polished active-set solution); it still converges in about 9 iterations.
BACKEND_SETTINGS = {
    "CLARABEL": {
        "tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12, "tol_ktratio": 1e-10, "max_iter": 200,
    },
    "OSQP": {
        "eps_abs": 1e-9, "eps_rel": 1e-9, "polish": True, "max_iter": 200_000,
        "eps_prim_inf": 1e-12, "eps_dual_inf": 1e-12,
    },
}


def _psd_factor(M: np.ndarray) -> np.ndarray:
    """``L`` with ``L' L = M`` for a symmetric PSD ``M`` (eigendecomposition; works if singular)."""
    w, V = np.linalg.eigh((M + M.T) / 2)
    keep = w > 1e-14 * max(1.0, float(np.abs(w).max()))
    return np.sqrt(w[keep])[:, None] * V[:, keep].T


def _bound_constraints(expr, lo: np.ndarray, hi: np.ndarray) -> list:
    """``lo <= expr <= hi`` column-wise on a ``(rows, dim)`` expression, finite bounds only."""
    cons = []
    for j in range(lo.size):
        if np.isfinite(lo[j]):
            cons.append(expr[:, j] >= lo[j])
        if np.isfinite(hi[j]):
            cons.append(expr[:, j] <= hi[j])
    return cons


@register_solver("qp")
class QPSolver(Solver):
    """Exact constrained LQ optimal control for affine plants: LQR fast path plus a cvxpy QP.

    Parameters
    ----------
    problem : trc.problem.Problem
        Quadratic-cost problem on an affine plant; bounds from the plant's ``u_min``,
        ``u_max``, ``x_min``, ``x_max``.
    backend : {"CLARABEL", "OSQP"}
        cvxpy solver of the QP (default Clarabel, an interior-point method run to a 1e-12
        duality gap; OSQP uses ``eps = 1e-9``, polishing and warm starts).
    discretization : {"zoh", "plant"}
        As for the ``lqr`` solver (:func:`~trc.generators.lqr.exact_discretization`).
    fallback : bool
        Re-solve with the other backend an instance the first one does not solve to
        ``optimal`` (e.g. ``optimal_inaccurate``); default True. The status then reads
        ``"optimal (OSQP fallback)"``.
    force_qp : bool
        Solve the QP for every instance, even where the LQR solution is feasible (default
        False; see the module docstring for why the fast path is exact).
    solver_settings : dict, optional
        Settings passed to the backend, overriding :data:`BACKEND_SETTINGS`.
    dynamics_rtol, dynamics_atol, bound_rtol, bound_atol : float
        Check tolerances (:class:`~trc.generators.checks.Tolerances`); bounds default to a
        relative ``1e-6`` to absorb the QP's ``1e-9``-accurate constraint satisfaction.

    Attributes
    ----------
    last_report : trc.generators.checks.CheckReport
        The checks of the last :meth:`solve` (dynamics residuals, bound violations per
        instance): diagnostics the :class:`~trc.generators.Solution` does not hold.

    Raises
    ------
    ConfigError
        If the cost is not quadratic, the plant is not affine, the backend is not installed,
        or an option is unknown.
    InfeasibleError
        If the bounds admit no trajectory from any initial state of the problem's
        ``initial_state`` box (checked once with a feasibility LP), or ``u_min > u_max``.
    UncontrollableError
        If the discretised ``(A, B)`` is not controllable (the check of the ``lqr`` solver,
        :func:`~trc.generators.lqr.check_controllable`). Such a plant cannot reach arbitrary
        targets: its optimal trajectories would end away from the target and yet pass every
        check (dynamics, bounds), so they would be stored as optimal training data.

    Notes
    -----
    One QP solve per instance that needs it (a loop over instances is unavoidable here);
    the problem is canonicalised once (DPP) and the backend's solver object is reused
    (``warm_start=True``: cached factorisation data for Clarabel, warm-started iterates for
    OSQP). Instances the QP cannot solve are reported with the backend's status
    (``"solver: infeasible"``, ...), never dropped.
    """

    def __init__(self, problem, **options):
        super().__init__(problem, **options)
        opts = dict(options)
        self.tolerances = _tolerances(opts)
        self.backend = str(opts.pop("backend", "CLARABEL")).upper()
        self.force_qp = bool(opts.pop("force_qp", False))
        self.fallback = bool(opts.pop("fallback", True))
        self.discretization = opts.pop("discretization", "zoh")
        settings = opts.pop("solver_settings", None) or {}
        _reject_unknown(
            "qp", opts,
            ("backend", "force_qp", "fallback", "discretization", "solver_settings", *Tolerances.__dataclass_fields__),
        )
        if self.backend not in BACKEND_SETTINGS:
            raise ConfigError(
                f"qp: backend {self.backend!r} is not supported; choose one of {sorted(BACKEND_SETTINGS)}"
            )
        if self.backend not in cp.installed_solvers():
            raise ConfigError(f"qp: backend {self.backend!r} is not installed; installed: {cp.installed_solvers()}")
        self.settings = {**BACKEND_SETTINGS[self.backend], **settings}
        if problem.cost != "quadratic":
            raise ConfigError(f"qp: problem {problem.name!r} has cost {problem.cost!r}; qp needs 'quadratic'")

        self.plant = problem.make_plant(torch.float64)
        A, B, c = exact_discretization(self.plant, self.discretization)
        try:
            check_controllable(A, B)
        except UncontrollableError as exc:
            raise UncontrollableError(f"qp: plant {self.plant.name!r}: {exc}") from None
        self.A, self.B, self.c = A, B, c
        self.u_min, self.u_max = (self.plant.u_min.numpy().astype(float), self.plant.u_max.numpy().astype(float))
        self.x_min, self.x_max = (self.plant.x_min.numpy().astype(float), self.plant.x_max.numpy().astype(float))
        for lo, hi, what in ((self.u_min, self.u_max, "u"), (self.x_min, self.x_max, "x")):
            if (lo > hi).any():
                raise InfeasibleError(
                    f"qp: {what}_min {lo.tolist()} exceeds {what}_max {hi.tolist()}: no feasible {what}"
                )
        Q, R, Qf = problem.weights
        dt = float(problem.dt)
        self.lqr = FiniteHorizonLQR.from_matrices(A, B, dt * Q, dt * R, Qf, problem.horizon, c=c)
        self._build(Q, R, Qf, dt)
        self._check_feasible()

    # ------------------------------------------------------------------ the QP
    def _constraints(self, X, U, x0) -> list:
        N = self.problem.horizon
        ones = np.ones((N, 1))
        cons = [X[0] == x0, X[1:] == X[:-1] @ self.A.T + U @ self.B.T + ones @ self.c[None, :]]
        cons += _bound_constraints(U, self.u_min, self.u_max)
        cons += _bound_constraints(X[1:], self.x_min, self.x_max)
        return cons

    def _build(self, Q, R, Qf, dt) -> None:
        N, n, m = self.problem.horizon, self.problem.state_dim, self.problem.control_dim
        self.x0_param = cp.Parameter(n, name="x0")
        self.target_param = cp.Parameter(n, name="target")
        self.X = cp.Variable((N + 1, n), name="x")
        self.U = cp.Variable((N, m), name="u")
        Lq, Lr, Lf = _psd_factor(Q), _psd_factor(R), _psd_factor(Qf)
        err = self.X - np.ones((N + 1, 1)) @ cp.reshape(self.target_param, (1, n), order="C")
        cost = dt * cp.sum_squares(self.U @ Lr.T)
        if Lq.size:
            cost += dt * cp.sum_squares(err[:N] @ Lq.T)
        if Lf.size:
            cost += cp.sum_squares(Lf @ err[N])
        self.qp = cp.Problem(cp.Minimize(cost), self._constraints(self.X, self.U, self.x0_param))
        if not self.qp.is_dpp():  # a bug here, not a user error
            raise SolverError("qp: the parametrised QP is not DPP; re-solves would re-canonicalise")

    def _check_feasible(self) -> None:
        """Raise InfeasibleError if no initial state of the problem's box admits a trajectory."""
        if not (np.isfinite(self.x_min).any() or np.isfinite(self.x_max).any()):
            return  # only control bounds: u = any value in [u_min, u_max] is feasible
        N, n, m = self.problem.horizon, self.problem.state_dim, self.problem.control_dim
        box = self.problem.initial_state
        X, U = cp.Variable((N + 1, n)), cp.Variable((N, m))
        x0 = cp.Variable(n)
        cons = self._constraints(X, U, x0)
        cons += [x0 >= np.asarray(box.low), x0 <= np.asarray(box.high)]
        cons += _bound_constraints(cp.reshape(x0, (1, n), order="C"), self.x_min, self.x_max)
        lp = cp.Problem(cp.Minimize(0), cons)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lp.solve(solver="CLARABEL" if "CLARABEL" in cp.installed_solvers() else self.backend)
        if lp.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
            raise InfeasibleError(
                f"qp: problem {self.problem.name!r} is infeasible: no initial state in the box "
                f"low={box.low}, high={box.high} admits {N} controls in [{self.u_min.tolist()}, "
                f"{self.u_max.tolist()}] keeping the states in [{self.x_min.tolist()}, {self.x_max.tolist()}]"
            )

    def _solve_one(self, x0: np.ndarray, target: np.ndarray):
        """Solve one instance: ``(U, X, status, iterations)``, ``U = X = None`` on failure."""
        self.x0_param.value = x0
        self.target_param.value = target
        result = self._solve_with(self.backend, self.settings)
        others = [b for b in BACKEND_SETTINGS if b != self.backend and b in cp.installed_solvers()]
        if result[0] is None and self.fallback and others and result[2] not in (cp.INFEASIBLE,):
            retry = self._solve_with(others[0], BACKEND_SETTINGS[others[0]])
            if retry[0] is not None:
                return retry[0], retry[1], f"optimal ({others[0]} fallback)", result[3] + retry[3]
        return result

    def _solve_with(self, backend: str, settings: dict):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # inaccurate solutions are reported via status
                self.qp.solve(solver=backend, warm_start=True, **settings)
        except cp.error.SolverError as exc:
            return None, None, f"solver_error ({exc})", 0
        status = self.qp.status
        iters = self.qp.solver_stats.num_iters if self.qp.solver_stats is not None else 0
        if status != cp.OPTIMAL or self.U.value is None:
            return None, None, str(status), int(iters or 0)
        return self.U.value.copy(), self.X.value.copy(), status, int(iters or 0)

    # ------------------------------------------------------------------ warm start
    def _condensed(self):
        """The QP with the states eliminated, built once: ``min U' H U + 2 g' U`` s.t. ``G U <= h0 + E x0``.

        ``x_k = A^k x0 + sum_{j<k} A^{k-1-j} (B u_j + c)`` stacks to ``X = Sx x0 + Su U + Sc``
        for ``X = (x_1 .. x_N)``; with ``Qbar = blkdiag(dt Q, ..., dt Q, Qf)`` and
        ``Rbar = blkdiag(dt R, ...)``, ``H = Su' Qbar Su + Rbar`` and the linear term is
        ``Su' Qbar (Sx x0 + Sc - (x*, ..., x*))``.
        """
        if getattr(self, "_condensed_qp", None) is None:
            N, n, m = self.problem.horizon, self.problem.state_dim, self.problem.control_dim
            A, B, c = self.A, self.B, self.c
            Sx, Su, Sc = np.zeros((N * n, n)), np.zeros((N * n, N * m)), np.zeros(N * n)
            Ak, xc = np.eye(n), np.zeros(n)
            for k in range(N):  # rows of x_{k+1}
                Ak, xc = A @ Ak, A @ xc + c
                Sx[k * n:(k + 1) * n] = Ak
                Sc[k * n:(k + 1) * n] = xc
                for j in range(k + 1):
                    Su[k * n:(k + 1) * n, j * m:(j + 1) * m] = np.linalg.matrix_power(A, k - j) @ B
            Q, R, Qf = self.problem.weights
            dt = float(self.problem.dt)
            Qbar = np.kron(np.eye(N), dt * Q)
            Qbar[-n:, -n:] = Qf
            H = Su.T @ Qbar @ Su + np.kron(np.eye(N), dt * R)
            # inequality rows G U <= h, h = h0 + E x0 (finite bounds only)
            u_lo, u_hi = np.tile(self.u_min, N), np.tile(self.u_max, N)
            x_lo, x_hi = np.tile(self.x_min, N), np.tile(self.x_max, N)
            I = np.eye(N * m)
            rows = [(I, u_hi, np.zeros((N * m, n)), np.isfinite(u_hi)), (-I, -u_lo, np.zeros((N * m, n)), np.isfinite(u_lo)),
                    (Su, x_hi - Sc, -Sx, np.isfinite(x_hi)), (-Su, Sc - x_lo, Sx, np.isfinite(x_lo))]
            G = np.concatenate([g[k] for g, _, _, k in rows])
            h0 = np.concatenate([h[k] for _, h, _, k in rows])
            E = np.concatenate([e[k] for _, _, e, k in rows])
            self._condensed_qp = (H, Su.T @ Qbar, Sx, Su, Sc, G, h0, E)
        return self._condensed_qp

    def solve_active_set(self, x0: np.ndarray, target: np.ndarray, guess: np.ndarray, *, max_rounds: int = 20,
                         active_rtol: float = 0.02, kkt_tol: float = 1e-9):
        """Solve one instance by the primal-dual active-set method from a guess of the controls.

        The inequality constraints ``G U <= h`` of the condensed QP (:meth:`_condensed`) that
        hold with a slack below ``active_rtol * max(1, |h_i|)`` at the guess form the first
        working set ``W``. Each round solves the equality-constrained QP with ``G_W U = h_W``
        (one dense KKT system) and updates ``W`` to the rows with a positive multiplier plus
        the violated ones, the primal-dual active-set strategy (Hintermüller, Ito & Kunisch,
        *SIAM J. Optim.* 13(3) 865, 2002; Nocedal & Wright, *Numerical Optimization*, 2nd ed.,
        sec. 16.5). It stops when ``W`` repeats; the point is accepted only if it satisfies
        every KKT condition (feasible to ``kkt_tol``, multipliers ``>= -kkt_tol``), which for
        this strictly convex QP makes it the unique optimum.

        Parameters
        ----------
        x0, target : ndarray, shape ``(n,)``
        guess : ndarray, shape ``(N, m)``
            Controls near the optimum, e.g. a TRC plan.
        max_rounds : int
            Rounds before giving up.
        active_rtol : float
            Relative slack under which a constraint is predicted active.
        kkt_tol : float
            Tolerance of the KKT test, relative to ``max(1, |h_i|)`` and ``max(1, max |multiplier|)``.

        Returns
        -------
        tuple
            ``(U (N, m), X (N + 1, n), "optimal (active set)", rounds)``, or
            ``(None, None, reason, rounds)`` if the method did not converge.
        """
        N, n, m = self.problem.horizon, self.problem.state_dim, self.problem.control_dim
        H, L, Sx, Su, Sc, G, h0, E = self._condensed()
        g = L @ (Sx @ x0 + Sc - np.tile(target, N))
        h = h0 + E @ x0
        scale = np.maximum(1.0, np.abs(h))
        working = h - G @ guess.reshape(-1) <= active_rtol * scale
        seen = set()
        for rounds in range(1, max_rounds + 1):
            Gw = G[working]
            k = Gw.shape[0]
            kkt = np.block([[2 * H, Gw.T], [Gw, np.zeros((k, k))]])
            try:
                sol = np.linalg.solve(kkt, np.concatenate([-2 * g, h[working]]))
            except np.linalg.LinAlgError:
                return None, None, "active set: singular KKT system", rounds
            U, lam = sol[:N * m], np.zeros(G.shape[0])
            lam[working] = sol[N * m:]
            slack = h - G @ U
            lam_tol = kkt_tol * max(1.0, np.abs(lam).max(initial=0.0))
            if (slack >= -kkt_tol * scale).all() and (lam >= -lam_tol).all():
                X = np.concatenate([x0[None], (Sx @ x0 + Su @ U + Sc).reshape(N, n)])
                return U.reshape(N, m), X, "optimal (active set)", rounds
            nxt = (working & (lam > 0)) | (~working & (slack < 0))
            key = nxt.tobytes()
            if key in seen or (nxt == working).all():
                return None, None, "active set: cycling", rounds
            seen.add(key)
            working = nxt
        return None, None, "active set: not converged", max_rounds

    # ------------------------------------------------------------------ solve
    def _feasible(self, controls: np.ndarray, states: np.ndarray) -> np.ndarray:
        """Instances whose trajectories satisfy every bound exactly, shape ``(B,)``."""
        ok = ((controls >= self.u_min) & (controls <= self.u_max)).all(axis=(1, 2))
        xs = states[:, 1:]
        return ok & ((xs >= self.x_min) & (xs <= self.x_max)).all(axis=(1, 2))

    def solve(self, x0, target, *, initial_controls=None) -> Solution:
        """Solve ``B`` instances; see :meth:`Solver.solve`.

        Parameters
        ----------
        x0, target : ndarray, shape ``(B, n)``
        initial_controls : ndarray, shape ``(B, N, m)``, optional
            Warm start (e.g. a TRC plan): instances that need the QP first try the primal-dual
            active-set method started from the constraints active or nearly active along
            these controls (:meth:`solve_active_set`); where it does not converge to a point
            satisfying every KKT condition, the QP backend solves the instance as without a
            warm start.

        Returns
        -------
        Solution
            ``status`` is ``"optimal"`` for QP solutions, ``"optimal (active set)"`` for
            warm-started ones, ``"optimal (unconstrained)"`` where the LQR solution is
            feasible and hence optimal; ``iterations`` the backend's iterations (1 on the fast
            path; active-set rounds, plus the backend's if it had to take over, when warm
            started); controls clipped to the bounds (a change of at most the QP tolerance,
            so the stored controls meet the bounds exactly).

        Raises
        ------
        DimensionError, NonFiniteError
            On malformed inputs.
        """
        x0, target = _check_instances(self.problem, x0, target)
        Bn, N, m = x0.shape[0], self.problem.horizon, self.problem.control_dim
        if initial_controls is not None:
            initial_controls = np.asarray(initial_controls, dtype=np.float64)
            if initial_controls.shape != (Bn, N, m):
                raise DimensionError(f"qp: initial_controls has shape {initial_controls.shape}; expected {(Bn, N, m)}")
            if not np.isfinite(initial_controls).all():
                raise NonFiniteError("qp: initial_controls contains NaN or infinity")
        t_start = time.perf_counter()
        controls, states = self.lqr.trajectories(x0, target)
        status = np.full(Bn, "optimal (unconstrained)", dtype=object)
        ok = np.ones(Bn, dtype=bool)
        iterations = np.ones(Bn, dtype=np.int64)
        solve_time = np.zeros(Bn)
        todo = np.arange(Bn) if self.force_qp else np.flatnonzero(~self._feasible(controls, states))
        t_fast = time.perf_counter() - t_start
        for i in todo:
            t0 = time.perf_counter()
            warm = None if initial_controls is None else self.solve_active_set(x0[i], target[i], initial_controls[i])
            if warm is not None and warm[0] is not None:
                u, x, st, it = warm
            else:
                u, x, st, it = self._solve_one(x0[i], target[i])
                it += 0 if warm is None else warm[3]
            solve_time[i] = time.perf_counter() - t0
            status[i], iterations[i] = st, it
            if u is None:
                ok[i] = False
                controls[i], states[i] = np.nan, np.nan
            else:
                controls[i], states[i] = np.clip(u, self.u_min, self.u_max), x
        fast = np.ones(Bn, dtype=bool)
        fast[todo] = False
        solve_time[fast] = t_fast / max(Bn, 1)
        solve_time[todo] += t_fast / max(Bn, 1)
        report = check_solution(
            self.problem, x0, target, controls, states, solver_status=status, solver_success=ok,
            plant=self.plant, tolerances=self.tolerances,
        )
        self.last_report = report
        return assemble_solution(self.problem, target, controls, report, iterations, solve_time, solver_name="qp")
