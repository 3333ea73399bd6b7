"""Nonlinear optimal trajectories: SQP on a multiple-shooting transcription (solver ``"nonlinear"``).

The problem (TRC cost convention, :mod:`trc.cost`) is the discrete-time optimal-control problem
of the plant's zero-order-hold step ``F`` (its own integrator, e.g. RK4)::

    min  J = dt * sum_{k<N} [(x_k - x*)' Q (x_k - x*) + u_k' R u_k] + (x_N - x*)' Qf (x_N - x*)
    s.t. x_{k+1} = F(x_k, u_k)   (k = 0 .. N-1),  x_0 given,
         u_min <= u_k <= u_max,  x_min <= x_k <= x_max.

Method
------
*Direct multiple shooting* (Bock & Plitt 1984) keeps the states ``x_1 .. x_N`` as unknowns
beside the controls, so every shooting interval is linearised independently. That is what
makes the derivatives cheap here: the Jacobians ``A_k = dF/dx``, ``B_k = dF/du`` and the
Hessians of the Lagrangian ``sum_k lambda_{k+1}' F(x_k, u_k)`` at all ``N`` nodes of all
instances are ONE batched evaluation of the differentiable plant (``plant.step`` on a
``(batch * N, n)`` tensor) and ``n + (n + m)`` reverse sweeps of torch autograd, with no Python
loop over instances or time steps.

Each iteration solves the sparse, banded quadratic program (QP) of a *sequential quadratic
programming* (SQP) method (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 18.3)::

    min  1/2 d' H d + grad J' d
    s.t. dx_{k+1} = A_k dx_k + B_k du_k + (F(x_k, u_k) - x_{k+1}),  dx_0 = 0,
         bounds - z <= d <= bounds - z

with ``H`` the exact Hessian of the Lagrangian, made positive definite stage by stage by
projecting the eigenvalues of each ``(n + m) x (n + m)`` block onto ``[delta, inf)``
(the "project" regularisation of acados: Verschueren et al., *Math. Prog. Comp.* 14 (2022)
147). Near a strict local minimum where the blocks are convex this is Newton's method
(quadratic convergence); far from it, it is a convex model. The QPs are solved by OSQP
(Stellato et al., *Math. Prog. Comp.* 12 (2020) 637) with solution polishing, one solver
object per instance set up once: later iterations only update the numerical values of the
fixed sparsity pattern (no re-analysis) and warm-start from the previous primal-dual pair.
A QP that OSQP does not solve to tolerance is solved again by the interior-point solver
Clarabel (Goulart & Chen 2024). Steps are globalised by a backtracking line search on the
exact l1 merit function ``J + nu * sum_k ||x_{k+1} - F(x_k, u_k)||_1`` (Nocedal & Wright,
eq. 18.27), all trial step lengths of all instances evaluated in one batched plant call.

Why not SCP with a cvxpy problem, or scipy's SLSQP/trust-constr: SCP with a trust region
converges linearly at best and needs many iterations to reach tight KKT tolerances; SLSQP is
dense (cubic in ``N (n + m)``) and trust-constr is slow in Python. With exact Hessians the
SQP here needs about as many iterations as IPOPT, and each costs one batched torch sweep plus
one warm-started sparse QP per instance.

Optimality certificate
----------------------
An instance is *converged* when, at the current iterate ``z`` with the QP's multipliers,

* the stationarity residual of the NLP Lagrangian ``||grad_z L||_inf = ||H d||_inf`` is at most
  ``kkt_tol * max(1, ||grad J||_inf)``,
* the dynamics defect ``max_k ||x_{k+1} - F(x_k, u_k)||_inf`` is at most ``feas_tol``,

and bounds and complementarity hold by construction (the QP keeps them). This is the KKT
test of Nocedal & Wright, Thm. 12.1, to tolerance. Controls are then re-simulated through the
float64 plant by :func:`~trc.generators.checks.check_solution` (dynamics residual, bounds,
finiteness); an instance that did not converge or fails a check is reported with
``success = False`` and the reason in ``status``; it is never silently kept.

Initial guesses and warm starts
-------------------------------
Swing-up problems are non-convex with several local optima. The default initial guess is
deterministic and reproducible: states on the straight line from ``x0`` to the target
(``"interpolate"``), controls zero. Lifting the states onto that line fixes the direction
of the swing (angles are not wrapped: the cost penalises ``theta - theta*``, so the line from
the initial angle to the target angle is the natural homotopy path) and the IPOPT reference of
the tests starts from the same guess. ``initial_guess="neighbour"`` solves the instances in
order of nearest-neighbour chaining in the space of ``(x0, target)`` and warm-starts each
block of instances from the solution of its nearest already solved instance, shifted by the
difference of initial states; this cuts iterations on dense data sets but may switch between
local optima, so it is not the default. Callers can also pass their own guess
(``states_guess``, ``controls_guess``), e.g. a previous solution.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import scipy.sparse as sp
import torch

from dynamics.errors import ConfigError, DimensionError, NonFiniteError

from .base import Solution, Solver, register_solver
from .checks import assemble_solution, check_solution

__all__ = ["NonlinearSolver"]

logger = logging.getLogger("trc.generators")

_DEBUG = False
_INITIAL_GUESSES = ("interpolate", "neighbour")
_HESSIANS = ("exact", "gauss-newton")


# ============================================================================ derivatives
def _linearize(plant, x: torch.Tensor, u: torch.Tensor, lam: torch.Tensor | None):
    """Step, Jacobian and (optionally) the Hessian of ``lam' F`` at a batch of nodes.

    Parameters
    ----------
    plant : dynamics.Plant
        float64 plant.
    x : Tensor, shape ``(M, n)``
    u : Tensor, shape ``(M, m)``
    lam : Tensor, shape ``(M, n)``, optional
        Multipliers of the dynamics constraints.

    Returns
    -------
    F : Tensor, shape ``(M, n)``
    Jz : Tensor, shape ``(M, n, n + m)``
        ``[dF/dx, dF/du]``.
    H : Tensor, shape ``(M, n + m, n + m)`` or None
        ``d^2 (lam' F) / dz^2`` (symmetrised), None when ``lam`` is None.
    """
    n = x.shape[1]
    second = lam is not None
    with torch.enable_grad():
        z = torch.cat([x, u], dim=1).detach().requires_grad_(True)
        F = plant.step(z[:, :n], z[:, n:])
        # Nodes are independent, so the gradient of the sum over nodes of output i is row i of
        # every node's Jacobian: n reverse sweeps for all M nodes.
        rows = [
            torch.autograd.grad(F[:, i].sum(), z, retain_graph=True, create_graph=second)[0]
            for i in range(n)
        ]
        Jz = torch.stack(rows, dim=1)
        H = None
        if second:
            s = torch.einsum("mi,mij->mj", lam, Jz)  # gradient of lam' F at every node
            cols = [torch.autograd.grad(s[:, j].sum(), z, retain_graph=True)[0] for j in range(z.shape[1])]
            H = torch.stack(cols, dim=1)
            H = 0.5 * (H + H.transpose(1, 2))
    return F.detach(), Jz.detach(), H


def _project_psd(H: torch.Tensor, delta: float) -> torch.Tensor:
    """Symmetric matrices ``(..., k, k)`` with eigenvalues clipped to ``>= delta``."""
    w, V = torch.linalg.eigh(H)
    return (V * w.clamp_min(delta).unsqueeze(-2)) @ V.transpose(-1, -2)


# ============================================================================ QP pattern
class _QPLayout:
    """Sparsity pattern and index maps of the multiple-shooting QP of one instance.

    The unknown ``w`` is ordered by stage, ``[u_0 | x_1 u_1 | ... | x_{N-1} u_{N-1} | x_N]``, so
    the Hessian is block diagonal with one ``(n + m)`` block per stage. The constraints are in
    Clarabel's conic form ``A w + s = b``: ``N n`` dynamics rows (zero cone), then one row
    ``w_i + s = hi_i - z_i`` per finite upper bound and one row ``-w_i + s = z_i - lo_i`` per
    finite lower bound (non-negative cone). Matrix values are produced in batches as "source"
    vectors and gathered into CSC data arrays through fixed index maps (``P_src``, ``A_src``).
    """

    def __init__(self, N: int, n: int, m: int, x_lo, x_hi, u_lo, u_hi):
        self.N, self.n, self.m = N, n, m
        s = n + m
        self.nw = N * s
        # offsets of x_k (k = 1..N) and u_k (k = 0..N-1) in w
        self.x_off = np.array([m + (k - 1) * s for k in range(1, N + 1)])
        self.u_off = np.array([0] + [m + (k - 1) * s + n for k in range(1, N)])
        self.x_idx = self.x_off[:, None] + np.arange(n)  # (N, n): x_1..x_N
        self.u_idx = self.u_off[:, None] + np.arange(m)  # (N, m): u_0..u_{N-1}
        self.stage_idx = np.concatenate([self.x_idx[:-1], self.u_idx[1:]], axis=1)  # (N-1, s): x_k, u_k

        # ---- Hessian (upper triangle), sources: [H0_uu (m*m) | H_1..H_{N-1} ((N-1) s*s) | Hf (n*n)]
        rows, cols, src = [], [], []
        iu, ju = np.triu_indices(m)
        rows.append(self.u_idx[0][iu]); cols.append(self.u_idx[0][ju]); src.append(iu * m + ju)
        base = m * m
        iz, jz = np.triu_indices(s)
        for k in range(N - 1):
            rows.append(self.stage_idx[k][iz]); cols.append(self.stage_idx[k][jz])
            src.append(base + k * s * s + iz * s + jz)
        base += (N - 1) * s * s
        ix, jx = np.triu_indices(n)
        rows.append(self.x_idx[-1][ix]); cols.append(self.x_idx[-1][jx]); src.append(base + ix * n + jx)
        self.P_indices, self.P_indptr, self.P_src = _csc_pattern(
            np.concatenate(rows), np.concatenate(cols), np.concatenate(src), self.nw)

        # ---- constraints, sources: [ones (N n) | -A_1..-A_{N-1} | -B_0..-B_{N-1} | +1 (upper) | -1 (lower)]
        lo = np.full(self.nw, -np.inf)
        hi = np.full(self.nw, np.inf)
        lo[self.x_idx] = x_lo; hi[self.x_idx] = x_hi
        lo[self.u_idx] = u_lo; hi[self.u_idx] = u_hi
        self.w_lo, self.w_hi = lo, hi
        self.upper = np.flatnonzero(np.isfinite(hi))
        self.lower = np.flatnonzero(np.isfinite(lo))
        self.n_eq = N * n
        self.n_ineq = self.upper.size + self.lower.size
        self.n_con = self.n_eq + self.n_ineq
        rows, cols, src = [], [], []
        dyn_rows = np.arange(N * n).reshape(N, n)
        rows.append(dyn_rows.ravel()); cols.append(self.x_idx.ravel()); src.append(np.arange(N * n))
        base = N * n
        ia, ja = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        for k in range(1, N):  # -A_k couples row block k with x_k
            rows.append(dyn_rows[k][ia].ravel()); cols.append(self.x_idx[k - 1][ja].ravel())
            src.append(base + (k - 1) * n * n + (ia * n + ja).ravel())
        base += (N - 1) * n * n
        ib, jb = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
        for k in range(N):
            rows.append(dyn_rows[k][ib].ravel()); cols.append(self.u_idx[k][jb].ravel())
            src.append(base + k * n * m + (ib * m + jb).ravel())
        base += N * n * m
        nu_, nl_ = self.upper.size, self.lower.size
        rows.append(self.n_eq + np.arange(nu_)); cols.append(self.upper); src.append(base + np.arange(nu_))
        rows.append(self.n_eq + nu_ + np.arange(nl_)); cols.append(self.lower); src.append(base + nu_ + np.arange(nl_))
        self._A_fixed = np.concatenate([np.ones(nu_), -np.ones(nl_)])
        self.A_indices, self.A_indptr, self.A_src = _csc_pattern(
            np.concatenate(rows), np.concatenate(cols), np.concatenate(src), self.nw)

    # ---- batched value assembly (torch -> numpy)
    def hessian_values(self, H0_uu, H_stage, Hf) -> np.ndarray:
        """CSC data of ``P`` for a batch: ``H0_uu (B, m, m)``, ``H_stage (B, N-1, s, s)``, ``Hf (B, n, n)``."""
        B = H0_uu.shape[0]
        src = torch.cat([H0_uu.reshape(B, -1), H_stage.reshape(B, -1), Hf.reshape(B, -1)], dim=1)
        return src.cpu().numpy()[:, self.P_src]

    def constraint_values(self, A, Bu) -> np.ndarray:
        """CSC data of the constraint matrix: ``A (B, N, n, n)`` (``A[:, 0]`` unused), ``Bu (B, N, n, m)``."""
        Bsz = A.shape[0]
        dyn = torch.cat([-A[:, 1:].reshape(Bsz, -1), -Bu.reshape(Bsz, -1)], dim=1).cpu().numpy()
        src = np.concatenate(
            [np.ones((Bsz, self.N * self.n)), dyn, np.broadcast_to(self._A_fixed, (Bsz, self._A_fixed.size))], axis=1
        )
        return src[:, self.A_src]

    def rhs(self, defect: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``b (B, n_con)``: ``F(x_k, u_k) - x_{k+1}``, ``hi - w``, ``w - lo``."""
        return np.concatenate(
            [defect, self.w_hi[self.upper] - w[:, self.upper], w[:, self.lower] - self.w_lo[self.lower]], axis=1
        )

    def pack(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        """``w`` ``(B, nw)`` from states ``(B, N, n)`` (``x_1..x_N``) and controls ``(B, N, m)``."""
        w = np.empty((X.shape[0], self.nw))
        w[:, self.x_idx] = X
        w[:, self.u_idx] = U
        return w

    def unpack(self, w: np.ndarray):
        """Inverse of :meth:`pack`."""
        return w[:, self.x_idx], w[:, self.u_idx]

    def solve(self, Px, q, Ax, b, tol: float):
        """Solve a batch of QPs as ONE block-diagonal problem with Clarabel.

        The instances are independent, so the stacked problem's KKT system is block diagonal
        and the interior-point iterations cost the sum of the blocks, without a Python loop
        over instances. Returns the steps ``(B, nw)``, the multipliers ``(B, n_con)`` (Clarabel's
        ``z``: stationarity ``P d + q + A' z = 0``), and whether Clarabel solved the stack.
        """
        import clarabel

        B = Px.shape[0]
        P = _block_diag_csc(Px, self.P_indices, self.P_indptr, self.nw, self.nw)
        A = _block_diag_csc(Ax, self.A_indices, self.A_indptr, self.n_con, self.nw)
        cones = []
        for _ in range(B):
            cones.append(clarabel.ZeroConeT(self.n_eq))
            if self.n_ineq:
                cones.append(clarabel.NonnegativeConeT(self.n_ineq))
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = tol
        settings.tol_ktratio = 1e-8
        settings.max_iter = 200
        sol = clarabel.DefaultSolver(P, q.ravel(), A, b.ravel(), cones, settings).solve()
        ok = str(sol.status) == "Solved"
        if _DEBUG: print("clarabel", B, sol.iterations, "%.4f" % sol.solve_time, sol.status)
        return np.asarray(sol.x).reshape(B, self.nw), np.asarray(sol.z).reshape(B, self.n_con), ok, str(sol.status)


def _csc_pattern(rows, cols, src, ncols):
    """CSC ``indices``, ``indptr`` and the source index of every stored entry (sorted by column, row)."""
    order = np.lexsort((rows, cols))
    indptr = np.zeros(ncols + 1, dtype=np.int64)
    np.add.at(indptr, cols + 1, 1)
    return rows[order].astype(np.int64), np.cumsum(indptr), src[order]


def _block_diag_csc(data, indices, indptr, nrows, ncols):
    """``B`` copies of one CSC pattern with values ``data (B, nnz)`` as a block-diagonal matrix."""
    B, nnz = data.shape
    off = np.arange(B)[:, None]
    ind = (indices[None] + nrows * off).ravel()
    ptr = np.concatenate([(indptr[:-1][None] + nnz * off).ravel(), [B * nnz]])
    return sp.csc_matrix((data.ravel(), ind, ptr), shape=(B * nrows, B * ncols))


# ============================================================================ solver
@register_solver("nonlinear")
class NonlinearSolver(Solver):
    """Exact-Hessian SQP on a multiple-shooting transcription, with torch derivatives.

    See the module docstring for the method, the optimality test and the initial guesses.

    Parameters
    ----------
    problem : trc.problem.Problem
        A problem with ``cost: quadratic`` on any registered plant.
    max_iter : int
        Maximum SQP iterations per instance.
    kkt_tol : float
        Tolerance of the Lagrangian stationarity, relative to ``max(1, ||grad J||_inf)``.
    feas_tol : float
        Tolerance of the dynamics defect ``max_k ||x_{k+1} - F(x_k, u_k)||_inf`` (state units).
    hessian : {"exact", "gauss-newton"}
        ``exact``: Hessian of the Lagrangian with eigenvalue projection; ``gauss-newton``:
        the cost Hessian only (cheaper iterations, linear convergence).
    initial_guess : {"interpolate", "neighbour"}
        See the module docstring.
    qp_tol : float
        OSQP's absolute and relative tolerance (before polishing).
    batch_size : int
        Instances linearised together; larger batches amortise the torch overhead.
    device : str or torch.device, optional
        Device of the derivative computations (default CPU; QPs always run on the CPU).

    Raises
    ------
    ConfigError
        On an unknown option value or a non-quadratic cost.
    """

    def __init__(
        self,
        problem,
        *,
        max_iter: int = 200,
        kkt_tol: float = 1e-8,
        feas_tol: float = 1e-10,
        hessian: str = "exact",
        initial_guess: str = "interpolate",
        qp_tol: float = 1e-10,
        batch_size: int = 256,
        device=None,
    ):
        super().__init__(
            problem, max_iter=max_iter, kkt_tol=kkt_tol, feas_tol=feas_tol, hessian=hessian,
            initial_guess=initial_guess, qp_tol=qp_tol, batch_size=batch_size, device=device,
        )
        if problem.cost != "quadratic":
            raise ConfigError(f"solver 'nonlinear' needs cost 'quadratic', got {problem.cost!r}")
        if hessian not in _HESSIANS:
            raise ConfigError(f"hessian must be one of {_HESSIANS}, got {hessian!r}")
        if initial_guess not in _INITIAL_GUESSES:
            raise ConfigError(f"initial_guess must be one of {_INITIAL_GUESSES}, got {initial_guess!r}")
        for key, value in (("kkt_tol", kkt_tol), ("feas_tol", feas_tol), ("qp_tol", qp_tol)):
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise ConfigError(f"{key} must be a number in (0, 1), got {value!r}")
        for key, value in (("max_iter", max_iter), ("batch_size", batch_size)):
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        self.max_iter, self.kkt_tol, self.feas_tol = max_iter, float(kkt_tol), float(feas_tol)
        self.hessian, self.initial_guess, self.qp_tol = hessian, initial_guess, float(qp_tol)
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.plant = problem.make_plant(torch.float64).to(self.device)
        self._check_plant = problem.make_plant(torch.float64)
        n, m, N = self.plant.state_dim, self.plant.control_dim, problem.horizon
        self.n, self.m, self.N = n, m, N
        Q, R, Qf = problem.weights
        self._Q = torch.as_tensor(Q, dtype=torch.float64, device=self.device)
        self._R = torch.as_tensor(R, dtype=torch.float64, device=self.device)
        self._Qf = torch.as_tensor(Qf, dtype=torch.float64, device=self.device)
        bounds = [getattr(self.plant, k).double().cpu().numpy() for k in ("x_min", "x_max", "u_min", "u_max")]
        self._x_lo, self._x_hi, self._u_lo, self._u_hi = bounds
        self.layout = _QPLayout(N, n, m, *bounds)
        dt = float(problem.dt)
        # cost Hessian blocks (constant)
        self._C0 = 2 * dt * self._R
        self._Cs = torch.block_diag(2 * dt * self._Q, 2 * dt * self._R)
        self._Cf = 2 * self._Qf
        scale = float(torch.linalg.eigvalsh(self._Cs).min())
        #: smallest eigenvalue kept by the Hessian projection
        self.delta = max(1e-8, 1e-4 * scale)
        #: per-instance diagnostics of the last :meth:`solve` (KKT residuals, multipliers)
        self.diagnostics: dict = {}

    # ------------------------------------------------------------------ public
    def solve(self, x0, target, states_guess=None, controls_guess=None) -> Solution:
        """Solve ``B`` instances.

        Parameters
        ----------
        x0, target : array_like, shape ``(B, n)``
            Initial and target states.
        states_guess : array_like, shape ``(B, N + 1, n)``, optional
            Initial guess of the trajectories (its first state is replaced by ``x0``).
        controls_guess : array_like, shape ``(B, N, m)``, optional
            Initial guess of the controls (clipped to the bounds).

        Returns
        -------
        Solution
            Controls of the SQP, states re-simulated through the float64 plant, costs,
            ``success`` (converged and every check passed), ``status``, SQP iterations and
            wall-clock seconds per instance (a batch's time is shared equally by its instances).

        Raises
        ------
        DimensionError
            If an array has the wrong shape.
        NonFiniteError
            If ``x0``, ``target`` or a guess contains NaN or infinity.
        """
        n, m, N = self.n, self.m, self.N
        x0 = _batch(x0, (n,), "x0")
        B = x0.shape[0]
        target = _batch(target, (n,), "target", B)
        if states_guess is not None:
            states_guess = _batch(states_guess, (N + 1, n), "states_guess", B)
        if controls_guess is not None:
            controls_guess = _batch(controls_guess, (N, m), "controls_guess", B)
        X = np.empty((B, N + 1, n)); U = np.empty((B, N, m))
        iters = np.zeros(B, dtype=np.int64); times = np.zeros(B)
        ok = np.zeros(B, dtype=bool); status = np.empty(B, dtype=object)
        stat = np.full(B, np.nan); feas = np.full(B, np.nan)
        lam = np.zeros((B, N, n))

        order = np.arange(B)
        if self.initial_guess == "neighbour" and states_guess is None and controls_guess is None:
            order = _chain_order(np.concatenate([x0, target], axis=1))
        for start in range(0, B, self.batch_size):
            idx = order[start:start + self.batch_size]
            if states_guess is not None or controls_guess is not None:
                Xg = states_guess[idx] if states_guess is not None else _interpolate(x0[idx], target[idx], N)
                Ug = controls_guess[idx] if controls_guess is not None else np.zeros((idx.size, N, m))
            elif self.initial_guess == "neighbour" and start > 0:
                Xg, Ug = _neighbour_guess(x0[idx], target[idx], x0[order[:start]], target[order[:start]],
                                          X[order[:start]], U[order[:start]])
            else:
                Xg, Ug = _interpolate(x0[idx], target[idx], N), np.zeros((idx.size, N, m))
            t0 = time.perf_counter()
            out = self._sqp(x0[idx], target[idx], Xg, Ug)
            elapsed = time.perf_counter() - t0
            X[idx], U[idx] = out["X"], out["U"]
            iters[idx], ok[idx], status[idx] = out["iterations"], out["converged"], out["status"]
            stat[idx], feas[idx], lam[idx] = out["stationarity"], out["defect"], out["lam"]
            times[idx] = elapsed / idx.size

        report = check_solution(
            self.problem, x0, target, U, states=X, solver_status=status, solver_success=ok, plant=self._check_plant,
        )
        self.diagnostics = {"stationarity": stat, "defect": feas, "multipliers": lam, "predicted_states": X}
        return assemble_solution(self.problem, target, U, report, iters, times, solver_name=self.name)

    # ------------------------------------------------------------------ SQP
    def _cost_gradient(self, X, U, xt):
        """``J (B,)`` and its gradient w.r.t. ``x_1..x_N`` ``(B, N, n)`` and ``u`` ``(B, N, m)``."""
        dt = float(self.problem.dt)
        e = X - xt[:, None]
        Qe = e[:, :-1] @ self._Q
        Ru = U @ self._R
        Qfe = e[:, -1] @ self._Qf
        J = dt * ((Qe * e[:, :-1]).sum((1, 2)) + (Ru * U).sum((1, 2))) + (Qfe * e[:, -1]).sum(1)
        gx = torch.cat([2 * dt * Qe[:, 1:], 2 * Qfe[:, None]], dim=1)
        gu = 2 * dt * Ru
        return J, gx, gu

    def _merit(self, X, U, xt, nu):
        """l1 merit ``J + nu * sum |defects|`` of trajectories ``X (B, N+1, n)``; also the defects."""
        Bsz = X.shape[0]
        F = self.plant.step(X[:, :-1].reshape(-1, self.n), U.reshape(-1, self.m)).reshape(Bsz, self.N, self.n)
        c = X[:, 1:] - F
        J, _, _ = self._cost_gradient(X, U, xt)
        return J + nu * c.abs().sum((1, 2)), c

    def _sqp(self, x0, target, Xg, Ug):
        dev, f64 = self.device, torch.float64
        n, m, N, L = self.n, self.m, self.N, self.layout
        Bsz = x0.shape[0]
        X = torch.as_tensor(Xg, dtype=f64, device=dev).clone()
        X[:, 0] = torch.as_tensor(x0, dtype=f64, device=dev)
        U = torch.as_tensor(Ug, dtype=f64, device=dev).clone()
        U = torch.maximum(torch.minimum(U, torch.as_tensor(self._u_hi, device=dev)), torch.as_tensor(self._u_lo, device=dev))
        X[:, 1:] = torch.maximum(torch.minimum(X[:, 1:], torch.as_tensor(self._x_hi, device=dev)),
                                 torch.as_tensor(self._x_lo, device=dev))
        xt = torch.as_tensor(target, dtype=f64, device=dev)
        lam = torch.zeros(Bsz, N, n, dtype=f64, device=dev)
        nu = torch.zeros(Bsz, dtype=f64, device=dev)
        qps: list = [None] * Bsz
        warm: list = [None] * Bsz
        active = np.ones(Bsz, dtype=bool)
        converged = np.zeros(Bsz, dtype=bool)
        status = np.array(["max_iter"] * Bsz, dtype=object)
        iterations = np.zeros(Bsz, dtype=np.int64)
        stat_out = np.full(Bsz, np.inf); defect_out = np.full(Bsz, np.inf)
        alphas = torch.tensor([0.5**i for i in range(12)], dtype=f64, device=dev)
        Cs, C0, Cf = self._Cs, self._C0, self._Cf

        for it in range(self.max_iter):
            a = np.flatnonzero(active)
            if a.size == 0:
                break
            at = torch.as_tensor(a, device=dev)
            Xa, Ua, xta, lama = X[at], U[at], xt[at], lam[at]
            Ba = a.size
            use_lam = self.hessian == "exact" and it > 0
            F, Jz, Hl = _linearize(
                self.plant, Xa[:, :-1].reshape(-1, n), Ua.reshape(-1, m),
                lama.reshape(-1, n) if use_lam else None,
            )
            F = F.reshape(Ba, N, n)
            Jz = Jz.reshape(Ba, N, n, n + m)
            c = Xa[:, 1:] - F  # defects
            J, gx, gu = self._cost_gradient(Xa, Ua, xta)
            if use_lam:
                Hl = Hl.reshape(Ba, N, n + m, n + m)
                H_stage = _project_psd(Cs - Hl[:, 1:], self.delta)
                H0 = _project_psd(C0 - Hl[:, 0, n:, n:], self.delta)
            else:
                H_stage = Cs.expand(Ba, N - 1, n + m, n + m)
                H0 = C0.expand(Ba, m, m)
            Hf = Cf.expand(Ba, n, n)
            Px = L.hessian_values(H0, H_stage, Hf)
            Ax = L.constraint_values(Jz[..., :n], Jz[..., n:])
            wa = L.pack(Xa[:, 1:].cpu().numpy(), Ua.cpu().numpy())
            q = L.pack(gx.cpu().numpy(), gu.cpu().numpy())
            rhs = L.rhs((-c).reshape(Ba, -1).cpu().numpy(), wa)
            d, y, stack_ok, _ = L.solve(Px, q, Ax, rhs, self.qp_tol)
            qp_ok = np.full(Ba, stack_ok)
            if not stack_ok:  # find the culprit(s): solve the instances one by one
                for j in range(Ba):
                    d[j], y[j], qp_ok[j], _ = L.solve(Px[j:j + 1], q[j:j + 1], Ax[j:j + 1], rhs[j:j + 1], self.qp_tol)
            iterations[a] += 1
            dt_ = torch.as_tensor(d, device=dev)
            yt = torch.as_tensor(y, device=dev)
            lam_qp = yt[:, : N * n].reshape(Ba, N, n)

            # KKT test at the current iterate: grad L = -H d (QP stationarity).
            Hd = _block_matvec(L, H0, H_stage, Hf, dt_)
            g_inf = torch.cat([gx.reshape(Ba, -1), gu.reshape(Ba, -1)], 1).abs().amax(1)
            stat = (Hd.abs().amax(1) / g_inf.clamp_min(1.0)).cpu().numpy()
            defect = c.abs().amax((1, 2)).cpu().numpy()
            stat_out[a], defect_out[a] = stat, defect
            done = qp_ok & (stat <= self.kkt_tol) & (defect <= self.feas_tol)
            bad_qp = ~qp_ok
            # A QP failure ends the instance (status reported), unless it already converged.
            status[a[bad_qp]] = "qp_failed"
            converged[a[done]] = True
            status[a[done]] = "converged"
            lam[at[torch.as_tensor(done)]] = lam_qp[torch.as_tensor(done)]
            active[a[done | bad_qp]] = False
            go = np.flatnonzero(~done & qp_ok)
            if go.size == 0:
                continue
            g_ = torch.as_tensor(go, device=dev)
            # ---- line search on the l1 merit function, all trial steps in one batch
            nu_a = torch.maximum(nu[at[g_]], 1.1 * lam_qp[g_].abs().amax((1, 2)) + 1e-8)
            nu[at[g_]] = nu_a
            dX, dU = L.unpack(d[go])
            dX = torch.as_tensor(dX, device=dev); dU = torch.as_tensor(dU, device=dev)
            Xg_, Ug_ = Xa[g_], Ua[g_]
            phi0 = J[g_] + nu_a * c[g_].abs().sum((1, 2))
            slope = (gx[g_] * dX).sum((1, 2)) + (gu[g_] * dU).sum((1, 2)) - nu_a * c[g_].abs().sum((1, 2))
            Ng, Na = go.size, alphas.numel()
            Xt = Xg_[:, None].repeat(1, Na, 1, 1)
            Xt[:, :, 1:] = Xt[:, :, 1:] + alphas[None, :, None, None] * dX[:, None]
            Ut = Ug_[:, None] + alphas[None, :, None, None] * dU[:, None]
            phi, _ = self._merit(
                Xt.reshape(Ng * Na, N + 1, n), Ut.reshape(Ng * Na, N, m),
                xta[g_].repeat_interleave(Na, 0), nu_a.repeat_interleave(Na, 0),
            )
            phi = phi.reshape(Ng, Na)
            accept = phi <= phi0[:, None] + 1e-4 * alphas[None] * slope[:, None]
            # Near a solution the predicted decrease drops below the rounding error of the merit
            # function itself; the full (Newton) step is then taken.
            tiny = slope.abs() <= 1e3 * torch.finfo(f64).eps * (phi0.abs() + 1.0)
            accept[:, 0] |= tiny
            # first accepted alpha; if none, take the smallest (progress is still a descent
            # direction of the merit in exact arithmetic; rounding may block it near a solution)
            first = torch.where(accept.any(1), accept.float().argmax(1), torch.full_like(accept[:, 0], Na - 1, dtype=torch.long))
            alpha = alphas[first]
            if _DEBUG: print("it", it, "alpha", alpha.tolist()[:3], "stat", stat[go][:3], "defect", defect[go][:3], "J", J[g_][:3].tolist())
            X[at[g_], 1:] = Xg_[:, 1:] + alpha[:, None, None] * dX
            U[at[g_]] = Ug_ + alpha[:, None, None] * dU
            lam[at[g_]] = lama[g_] + alpha[:, None, None] * (lam_qp[g_] - lama[g_])
            # keep iterates exactly inside the bounds (rounding of the QP solution)
            U[at[g_]] = torch.maximum(torch.minimum(U[at[g_]], torch.as_tensor(self._u_hi, device=dev)),
                                      torch.as_tensor(self._u_lo, device=dev))
        status[active] = "max_iter"
        return {
            "X": X.cpu().numpy(), "U": U.cpu().numpy(), "iterations": iterations, "converged": converged,
            "status": status, "stationarity": stat_out, "defect": defect_out, "lam": lam.cpu().numpy(),
        }


def _block_matvec(L: _QPLayout, H0, H_stage, Hf, d):
    """``H d`` for the block-diagonal Hessian, ``d (B, nw)`` in the layout's ordering."""
    n, m, N = L.n, L.m, L.N
    Bsz = d.shape[0]
    out = torch.zeros_like(d)
    u0 = torch.as_tensor(L.u_idx[0], device=d.device)
    out[:, u0] = torch.einsum("bij,bj->bi", H0, d[:, u0])
    st = torch.as_tensor(np.concatenate([L.x_idx[:-1], L.u_idx[1:]], axis=1), device=d.device)  # (N-1, s)
    ds = d[:, st]  # (B, N-1, s)
    out[:, st] = torch.einsum("bkij,bkj->bki", H_stage, ds)
    xf = torch.as_tensor(L.x_idx[-1], device=d.device)
    out[:, xf] = torch.einsum("bij,bj->bi", Hf, d[:, xf])
    return out


# ============================================================================ guesses
def _interpolate(x0: np.ndarray, target: np.ndarray, N: int) -> np.ndarray:
    """Straight lines from ``x0`` to ``target``: ``(B, N + 1, n)``."""
    s = np.linspace(0.0, 1.0, N + 1)[None, :, None]
    return (1 - s) * x0[:, None] + s * target[:, None]


def _chain_order(points: np.ndarray) -> np.ndarray:
    """A greedy nearest-neighbour ordering of ``points (B, d)`` starting from the first one."""
    B = points.shape[0]
    order = [0]
    left = np.ones(B, dtype=bool); left[0] = False
    for _ in range(B - 1):
        dist = np.linalg.norm(points[left] - points[order[-1]], axis=1)
        nxt = np.flatnonzero(left)[int(np.argmin(dist))]
        order.append(nxt); left[nxt] = False
    return np.asarray(order)


def _neighbour_guess(x0, target, x0_done, target_done, X_done, U_done):
    """Guesses from the nearest solved instances, states shifted by the initial-state difference."""
    P = np.concatenate([x0, target], 1)
    D = np.concatenate([x0_done, target_done], 1)
    nearest = np.argmin(((P[:, None] - D[None]) ** 2).sum(-1), axis=1)
    N = X_done.shape[1] - 1
    s = np.linspace(1.0, 0.0, N + 1)[None, :, None]
    shift = (x0 - x0_done[nearest])[:, None] * s + (target - target_done[nearest])[:, None] * (1 - s)
    return X_done[nearest] + shift, U_done[nearest].copy()


def _batch(a, tail: tuple, what: str, batch: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 + len(tail) or a.shape[1:] != tail or (batch is not None and a.shape[0] != batch):
        expected = "(" + ", ".join([str(batch) if batch is not None else "B", *map(str, tail)]) + ")"
        raise DimensionError(f"{what} has shape {a.shape}; expected {expected}")
    if not np.isfinite(a).all():
        raise NonFiniteError(f"{what} contains NaN or infinity")
    return a
