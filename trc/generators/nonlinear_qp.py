"""The quadratic subproblems of the ``"nonlinear"`` solver: layout, batched assembly, solvers.

One SQP iteration of :mod:`trc.generators.nonlinear` needs, for every instance ``b`` of a batch,
the solution of the sparse, banded QP (multiple shooting, Gauss-Newton Hessian ``H``)::

    min_d  1/2 d' H d + g' d
    s.t.   d_{x,k+1} = A_k d_{x,k} + B_k d_{u,k} + (F(x_k, u_k) - x_{k+1})     (k = 0 .. N-1, d_{x,0} = 0)
           lo - w <= d <= hi - w                                              (finite bounds only)

Two exact solvers are used, both on all instances at once (the instance blocks are stacked
into one block-diagonal sparse system, so there is no Python loop over instances):

1. **Active-set fast path.** With the active bounds predicted from the previous SQP iteration
   (they settle after a few iterations; this is the QP warm start), the QP reduces to an
   equality-constrained QP whose
   KKT system, ordered stage by stage so that it is banded, is solved for the whole batch by one
   banded LU factorisation (LAPACK ``gbsv`` through :func:`scipy.linalg.solve_banded`).
   The result is accepted for an instance only if it satisfies *all* KKT conditions of the QP
   (free variables inside their bounds, bound multipliers of the right sign), i.e. it *is* the
   QP's unique solution (Nocedal & Wright, *Numerical Optimization*, 2nd ed., sec. 16.5).
   Instances that fail the test get up to :attr:`QPLayout.active_set_rounds` primal-dual
   active-set updates (Hintermueller, Ito & Kunisch, *SIAM J. Optim.* 13 (2002) 865).
2. **Interior point.** The other instances are solved by Clarabel (Goulart & Chen,
   arXiv:2405.12762, 2024), a primal-dual interior-point solver, as one stacked conic problem.

Multipliers follow Clarabel's convention, stationarity ``H d + g + A' z = 0`` with ``A`` the
dynamics rows (coefficient ``+I`` on ``x_{k+1}``), then ``+e_i`` rows for upper bounds and
``-e_i`` rows for lower bounds (``z >= 0`` on both).
"""

from __future__ import annotations

import clarabel
import numpy as np
import scipy.sparse as sp
from scipy.linalg import solve_banded

__all__ = ["QPLayout", "QPResult"]


class QPResult:
    """Steps ``d (B, nw)``, multipliers ``z (B, n_con)``, ``ok (B,)`` and which path solved each."""

    def __init__(self, d, z, ok, fast):
        self.d, self.z, self.ok, self.fast = d, z, ok, fast


class QPLayout:
    """Sparsity pattern, index maps and solvers of the multiple-shooting QP of one problem.

    The unknown ``w`` is ordered by stage, ``[u_0 | x_1 u_1 | ... | x_{N-1} u_{N-1} | x_N]``, so
    ``H`` is block diagonal with one ``(n + m)`` block per stage. Matrix values are given as
    *source* vectors (the Hessian blocks; the Jacobians ``A_k``, ``B_k``) and gathered into the
    CSC data arrays of each solver through fixed index maps, so assembling a batch is a NumPy
    fancy-indexing operation.

    Parameters
    ----------
    N, n, m : int
        Horizon, state and control dimensions.
    x_lo, x_hi : ndarray, shape ``(n,)``
        State bounds (``-inf``/``inf`` where unbounded).
    u_lo, u_hi : ndarray, shape ``(m,)``
        Control bounds.
    """

    #: primal-dual active-set rounds before the interior-point fallback
    active_set_rounds = 4

    def __init__(self, N: int, n: int, m: int, x_lo, x_hi, u_lo, u_hi):
        self.N, self.n, self.m = N, n, m
        s = n + m
        self.nw = N * s
        x_off = np.array([m + (k - 1) * s for k in range(1, N + 1)])
        u_off = np.array([0] + [m + (k - 1) * s + n for k in range(1, N)])
        self.x_idx = x_off[:, None] + np.arange(n)  # (N, n): x_1 .. x_N
        self.u_idx = u_off[:, None] + np.arange(m)  # (N, m): u_0 .. u_{N-1}
        self.stage_idx = np.concatenate([self.x_idx[:-1], self.u_idx[1:]], axis=1)  # (N-1, s): x_k, u_k

        # ---- Hessian (upper triangle); sources [H0_uu (m m) | H_1 .. H_{N-1} ((N-1) s s) | Hf (n n)]
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
        self.P_nsrc = base + n * n
        P_rows, P_cols, P_src = map(np.concatenate, (rows, cols, src))
        self._P = _csc_pattern(P_rows, P_cols, P_src, self.nw)

        # ---- bounds
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

        # ---- constraints; sources [ones (N n) | -A_1 .. -A_{N-1} | -B_0 .. -B_{N-1} | +1 | -1]
        rows, cols, src = [], [], []
        dyn_rows = np.arange(N * n).reshape(N, n)
        rows.append(dyn_rows.ravel()); cols.append(self.x_idx.ravel()); src.append(np.arange(N * n))
        base = N * n
        ia, ja = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        for k in range(1, N):  # -A_k: row block k, columns x_k
            rows.append(dyn_rows[k][ia].ravel()); cols.append(self.x_idx[k - 1][ja].ravel())
            src.append(base + (k - 1) * n * n + (ia * n + ja).ravel())
        base += (N - 1) * n * n
        ib, jb = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
        for k in range(N):  # -B_k: row block k, columns u_k
            rows.append(dyn_rows[k][ib].ravel()); cols.append(self.u_idx[k][jb].ravel())
            src.append(base + k * n * m + (ib * m + jb).ravel())
        base += N * n * m
        n_eq_entries = sum(r.size for r in rows)
        nu_, nl_ = self.upper.size, self.lower.size
        rows.append(self.n_eq + np.arange(nu_)); cols.append(self.upper); src.append(base + np.arange(nu_))
        rows.append(self.n_eq + nu_ + np.arange(nl_)); cols.append(self.lower); src.append(base + nu_ + np.arange(nl_))
        self.A_nsrc = base + nu_ + nl_
        self._A_fixed = np.concatenate([np.ones(N * n), np.ones(nu_), -np.ones(nl_)])
        self._A_fixed_at = np.concatenate([np.arange(N * n), base + np.arange(nu_ + nl_)])
        A_rows, A_cols, A_src = map(np.concatenate, (rows, cols, src))
        self._A = _csc_pattern(A_rows, A_cols, A_src, self.nw)

        # ---- KKT matrix of the equality-constrained QP: [[H, Aeq'], [Aeq, 0]], sources [P | A]
        off = P_rows != P_cols
        Ae_rows, Ae_cols, Ae_src = A_rows[:n_eq_entries], A_cols[:n_eq_entries], A_src[:n_eq_entries] + self.P_nsrc
        K_rows = np.concatenate([P_rows, P_cols[off], Ae_cols, self.nw + Ae_rows])
        K_cols = np.concatenate([P_cols, P_rows[off], self.nw + Ae_rows, Ae_cols])
        K_src = np.concatenate([P_src, P_src[off], Ae_src, Ae_src])
        self.nK = self.nw + self.n_eq
        self._K = _csc_pattern(K_rows, K_cols, K_src, self.nK)
        Ki, _, _ = self._K
        self._K_col = np.repeat(np.arange(self.nK), np.diff(self._K[1]))
        self._K_top = Ki < self.nw  # entries in a variable's row
        self._K_diag = Ki == self._K_col
        # Banded ordering of the KKT system, stage by stage: u_0, lam_0, x_1, u_1, lam_1, ..., x_N.
        # Every entry couples unknowns of neighbouring stages, so the bandwidth is about 2n + m
        # and LAPACK's banded LU (gbsv) factorises a whole batch in O(B N (2n + m)^3).
        lam_idx = self.nw + np.arange(N * n).reshape(N, n)
        order = [self.u_idx[0], lam_idx[0]]
        for k in range(1, N):
            order += [self.x_idx[k - 1], self.u_idx[k], lam_idx[k]]
        order.append(self.x_idx[N - 1])
        self._band_perm = np.concatenate(order)  # new position -> KKT index
        inv = np.empty(self.nK, dtype=np.int64)
        inv[self._band_perm] = np.arange(self.nK)
        r, c = inv[Ki], inv[self._K_col]
        self._band_l, self._band_u = int((r - c).max()), int((c - r).max())
        self._band_row = self._band_u + r - c  # row of each entry in LAPACK's band storage
        self._band_col = c

    # ------------------------------------------------------------------ assembly
    def constraint_sources(self, A, Bu) -> np.ndarray:
        """Source vectors ``(B, A_nsrc)`` from ``A (B, N, n, n)`` (``A[:, 0]`` unused), ``Bu (B, N, n, m)``."""
        Bsz = A.shape[0]
        out = np.empty((Bsz, self.A_nsrc))
        out[:, self._A_fixed_at] = self._A_fixed
        dyn = np.concatenate([-A[:, 1:].reshape(Bsz, -1), -Bu.reshape(Bsz, -1)], axis=1)
        out[:, self.N * self.n: self.N * self.n + dyn.shape[1]] = dyn
        return out

    def rhs(self, defect: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Conic right-hand side ``b (B, n_con)``: ``F(x_k, u_k) - x_{k+1}``, ``hi - w``, ``w - lo``."""
        return np.concatenate(
            [defect, self.w_hi[self.upper] - w[:, self.upper], w[:, self.lower] - self.w_lo[self.lower]], axis=1
        )

    def pack(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        """``w (B, nw)`` from states ``x_1 .. x_N`` ``(B, N, n)`` and controls ``(B, N, m)``."""
        w = np.empty((X.shape[0], self.nw))
        w[:, self.x_idx] = X
        w[:, self.u_idx] = U
        return w

    def unpack(self, w: np.ndarray):
        """Inverse of :meth:`pack`: ``(X (B, N, n), U (B, N, m))``."""
        return w[:, self.x_idx], w[:, self.u_idx]

    # ------------------------------------------------------------------ solvers
    def solve(self, P_src, q, A_src, b, w, active, tol: float) -> QPResult:
        """Solve a batch of QPs: the active-set fast path where ``active`` is given, else Clarabel.

        Parameters
        ----------
        P_src : ndarray, shape ``(P_nsrc,)``
            Hessian sources (the same for every instance: the Gauss-Newton Hessian is constant).
        q : ndarray, shape ``(B, nw)``
        A_src : ndarray, shape ``(B, A_nsrc)``
        b : ndarray, shape ``(B, n_con)``
        w : ndarray, shape ``(B, nw)``
            Current iterate (for the bound values of active variables).
        active : ndarray of int8, shape ``(B, nw)``, or None
            Predicted active bounds: ``+1`` upper, ``-1`` lower, ``0`` free.
        tol : float
            Tolerance of Clarabel and of the KKT verification of the fast path.
        """
        B = q.shape[0]
        d = np.zeros((B, self.nw)); z = np.zeros((B, self.n_con))
        ok = np.zeros(B, dtype=bool); fast = np.zeros(B, dtype=bool)
        if active is not None:
            # primal-dual active-set rounds (Hintermueller, Ito & Kunisch, SIAM J. Optim. 13 (2002)
            # 865): fix the predicted bounds, solve, then free the bounds with a multiplier of the
            # wrong sign and fix the violated ones; a few rounds, then the interior point.
            active = active.copy()
            todo = np.arange(B)
            for _ in range(self.active_set_rounds):
                d_f, z_f, ok_f = self._solve_eqp(P_src, q[todo], A_src[todo], b[todo], w[todo], active[todo], tol)
                if d_f is None:
                    break
                good = todo[ok_f]
                d[good], z[good], ok[good], fast[good] = d_f[ok_f], z_f[ok_f], True, True
                bad = ~ok_f
                todo = todo[bad]
                if todo.size == 0:
                    break
                active[todo] = self._update_active(active[todo], d_f[bad], z_f[bad], w[todo], tol)
        rest = np.flatnonzero(~ok)
        if rest.size:
            d_c, z_c, ok_c = self._solve_clarabel(P_src, q[rest], A_src[rest], b[rest], tol)
            d[rest], z[rest], ok[rest] = d_c, z_c, ok_c
        return QPResult(d, z, ok, fast)

    def _update_active(self, active, d, z, w, tol):
        """One primal-dual active-set update: drop wrong-sign multipliers, add violated bounds."""
        active = active.copy()
        nu_ = self.upper.size
        up, lo = self.upper, self.lower
        z_up, z_lo = z[:, self.n_eq:self.n_eq + nu_], z[:, self.n_eq + nu_:]
        a_up = active[:, up]
        a_up[(a_up > 0) & (z_up < 0)] = 0
        a_up[(a_up == 0) & (d[:, up] > (self.w_hi - w)[:, up] + tol)] = 1
        active[:, up] = a_up
        a_lo = active[:, lo]
        a_lo[(a_lo < 0) & (z_lo < 0)] = 0
        a_lo[(a_lo == 0) & (d[:, lo] < (self.w_lo - w)[:, lo] - tol)] = -1
        active[:, lo] = a_lo
        return active

    def active_set(self, z: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Active bounds ``(B, nw)`` (``+1``/``-1``/``0``) of QP solutions: multiplier above slack."""
        nu_ = self.upper.size
        slack = b[:, self.n_eq:] - np.concatenate([d[:, self.upper], -d[:, self.lower]], axis=1)
        on = z[:, self.n_eq:] > np.maximum(slack, 0.0)
        act = np.zeros(d.shape, dtype=np.int8)
        rows = np.arange(d.shape[0])[:, None]
        act[rows, self.upper[None]] = np.where(on[:, :nu_], 1, 0)
        lower_on = np.where(on[:, nu_:], -1, 0).astype(np.int8)
        act[rows, self.lower[None]] = np.where(lower_on != 0, lower_on, act[rows, self.lower[None]])
        return act

    def _solve_eqp(self, P_src, q, A_src, b, w, active, tol):
        """Equality-constrained QPs with the bounds in ``active`` fixed, then the KKT check."""
        B = q.shape[0]
        src = np.concatenate([np.broadcast_to(P_src, (B, P_src.size)), A_src], axis=1)
        Ki, Kp, Ks = self._K
        data = src[:, Ks]
        fixed = (active != 0)[:, np.minimum(Ki, self.nw - 1)] & self._K_top[None]  # entries of a fixed variable's row
        data = np.where(fixed, np.where(self._K_diag[None], 1.0, 0.0), data)
        target = np.where(active > 0, self.w_hi - w, np.where(active < 0, self.w_lo - w, 0.0))
        rhs = np.concatenate([np.where(active != 0, target, -q), b[:, : self.n_eq]], axis=1)
        # banded LU of all instances at once (the stacked system is banded as well)
        nb = B * self.nK
        ab = np.zeros((self._band_l + self._band_u + 1, nb))
        cols = (self._band_col[None] + self.nK * np.arange(B)[:, None]).ravel()
        ab[np.broadcast_to(self._band_row, (B, self._band_row.size)).ravel(), cols] = data.ravel()
        try:
            sol_b = solve_banded((self._band_l, self._band_u), ab, rhs[:, self._band_perm].ravel(),
                                 overwrite_ab=True, check_finite=False)
        except np.linalg.LinAlgError:  # singular: leave every instance to the interior-point solver
            return None, None, np.zeros(B, dtype=bool)
        sol = np.empty((B, self.nK))
        sol[:, self._band_perm] = sol_b.reshape(B, self.nK)
        d, lam = sol[:, : self.nw], sol[:, self.nw:]
        # bound multipliers from stationarity: r = H d + q + Aeq' lam; upper: z = -r, lower: z = r
        K = _block_diag_csc(src[:, Ks], Ki, Kp, self.nK, self.nK)
        r = (K @ sol.ravel()).reshape(B, self.nK)[:, : self.nw] + q
        z_up = np.where(active[:, self.upper] > 0, -r[:, self.upper], 0.0)
        z_lo = np.where(active[:, self.lower] < 0, r[:, self.lower], 0.0)
        z = np.concatenate([lam, z_up, z_lo], axis=1)
        scale = 1.0 + np.abs(q).max(axis=1, keepdims=True)
        slack_ok = (d[:, self.upper] <= (self.w_hi - w)[:, self.upper] + tol).all(1) & (
            d[:, self.lower] >= (self.w_lo - w)[:, self.lower] - tol).all(1)
        sign_ok = (z[:, self.n_eq:] >= -tol * scale).all(1)
        finite = np.isfinite(sol).all(1)
        return d, z, finite & slack_ok & sign_ok

    def _solve_clarabel(self, P_src, q, A_src, b, tol):
        """The QPs as one block-diagonal conic problem for Clarabel (per instance if that fails)."""
        B = q.shape[0]
        Pi, Pp, Ps = self._P
        Ai, Ap, As = self._A
        P = _block_diag_csc(np.broadcast_to(P_src[Ps], (B, Ps.size)), Pi, Pp, self.nw, self.nw)
        A = _block_diag_csc(A_src[:, As], Ai, Ap, self.n_con, self.nw)
        cones = []
        for _ in range(B):
            cones.append(clarabel.ZeroConeT(self.n_eq))
            if self.n_ineq:
                cones.append(clarabel.NonnegativeConeT(self.n_ineq))
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = tol
        settings.tol_ktratio = 1e-8
        sol = clarabel.DefaultSolver(P, q.ravel(), A, b.ravel(), cones, settings).solve()
        if str(sol.status) == "Solved":
            return np.asarray(sol.x).reshape(B, self.nw), np.asarray(sol.z).reshape(B, self.n_con), np.ones(B, bool)
        if B == 1:
            return np.zeros((1, self.nw)), np.zeros((1, self.n_con)), np.zeros(1, bool)
        parts = [self._solve_clarabel(P_src, q[j:j + 1], A_src[j:j + 1], b[j:j + 1], tol) for j in range(B)]
        return tuple(np.concatenate(p) for p in zip(*parts))


def _csc_pattern(rows, cols, src, ncols):
    """CSC ``indices``, ``indptr`` and the source index of every entry (sorted by column, then row)."""
    order = np.lexsort((rows, cols))
    indptr = np.zeros(ncols + 1, dtype=np.int64)
    np.add.at(indptr, cols + 1, 1)
    return rows[order].astype(np.int64), np.cumsum(indptr), src[order]


def _block_diag_csc(data, indices, indptr, nrows, ncols):
    """``B`` copies of one CSC pattern with values ``data (B, nnz)`` as one block-diagonal matrix."""
    B, nnz = data.shape
    off = np.arange(B)[:, None]
    ind = (indices[None] + nrows * off).ravel()
    ptr = np.concatenate([(indptr[:-1][None] + nnz * off).ravel(), [B * nnz]])
    return sp.csc_matrix((np.ascontiguousarray(data).ravel(), ind, ptr), shape=(B * nrows, B * ncols))
