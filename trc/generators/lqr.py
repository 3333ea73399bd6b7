"""Linear-quadratic optimal control: finite-horizon tracking LQR (solver ``lqr``) and helpers.

The ``lqr`` solver solves the TRC tracking problem exactly for plants whose dynamics are
linear (or affine) in the state and the control::

    minimise   J = sum_{k<N} [(x_k - x*)' Qd (x_k - x*) + u_k' Rd u_k] + (x_N - x*)' Qf (x_N - x*)
    subject to x_{k+1} = A x_k + B u_k + c,     x_0 given,

with the per-step weights ``Qd = dt Q`` and ``Rd = dt R`` of the TRC cost convention
(:mod:`trc.cost`) and ``(A, B, c)`` the exact zero-order-hold discretisation of the plant
(:func:`exact_discretization`). Control and state bounds are ignored by the solver; the
checks (:mod:`trc.generators.checks`) report every instance whose solution violates them
(use the ``qp`` solver for bounded problems).

Riccati recursion with affine terms (Bertsekas, *Dynamic Programming and Optimal Control*,
vol. I, the linear-quadratic problem; Anderson & Moore, *Optimal Control: Linear Quadratic
Methods*, the regulator and tracking problems). With the value function
``V_k(x) = x' P_k x + 2 s_k' x + const``, ``P_N = Qf``, ``s_N = -Qf x*``::

    G_k   = Rd + B' P_{k+1} B
    K_k   = G_k^{-1} B' P_{k+1} A                      (feedback gain, shared by the batch)
    w_k   = P_{k+1} c + s_{k+1}
    k_k   = G_k^{-1} B' w_k                           (feed-forward, per instance)
    P_k   = Qd + A' P_{k+1} (A - B K_k)
    s_k   = -Qd x* + (A - B K_k)' w_k
    u_k   = -K_k x_k - k_k.

``P`` and ``K`` do not depend on the instance, so they are computed once per problem; the
affine terms are a few ``(B, n) @ (n, n)`` products per step, vectorised over the batch.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass

import control as ct
import numpy as np
import torch

from dynamics.errors import (
    ConfigError,
    DimensionError,
    NonFiniteError,
    UncontrollableError,
)

from .base import Solution, Solver, register_solver
from .checks import Tolerances, assemble_solution, check_solution

__all__ = [
    "LQRSolver",
    "FiniteHorizonLQR",
    "exact_discretization",
    "infinite_horizon_gain",
    "check_controllable",
]


# ---------------------------------------------------------------------- discretisation
def exact_discretization(plant, method: str = "zoh", *, linearity_rtol: float = 1e-9, seed: int = 0):
    """Discretisation ``x_{k+1} = A x_k + B u_k + c`` of an affine plant.

    ``method="zoh"`` (default) is the exact zero-order-hold discretisation of the continuous
    dynamics ``x' = Ac x + Bc u + cc``: the matrices come from :meth:`~dynamics.Plant.linearize`
    (autograd, float64) about the origin, ``cc = f(0, 0)``, and :func:`control.c2d` with
    ``method="zoh"`` on the augmented input ``(u, 1)`` gives ``[B, c]`` (Franklin, Powell &
    Workman, *Digital Control of Dynamic Systems*, 3rd ed., ch. 4).

    ``method="plant"`` linearises the plant's own one-step map :meth:`~dynamics.Plant.step`
    (its integrator, e.g. RK4 with ``substeps``), which is affine too for an affine plant:
    solutions are then exactly optimal for the simulator, whose integration error (``O(dt^5)``
    per step for RK4) is otherwise seen as a dynamics residual. Both agree to machine precision
    for the double integrator, which RK4 integrates exactly.

    A discrete plant is used as it is (both methods).

    Parameters
    ----------
    plant : dynamics.Plant
        The plant, with ``plant.dt`` the sample time in seconds.
    method : {"zoh", "plant"}
    linearity_rtol : float
        Relative tolerance of the affinity test (see Raises).
    seed : int
        Seed of the random test points.

    Returns
    -------
    A : ndarray, shape ``(n, n)``
    B : ndarray, shape ``(n, m)``
    c : ndarray, shape ``(n,)``
        Constant drift per step (zero for a linear plant).

    Raises
    ------
    ConfigError
        If ``method`` is unknown; if the plant is not affine in ``(x, u)``: its vector field
        (or difference map) at 64 random points differs from the linearisation by more than
        ``linearity_rtol`` relative to its magnitude; or if the plant cannot be linearised
        (e.g. a plant with discrete actions).
    """
    if method not in ("zoh", "plant"):
        raise ConfigError(f"discretization must be 'zoh' or 'plant', got {method!r}")
    n, m = plant.state_dim, plant.control_dim
    try:
        sys = plant.linearize(np.zeros(n), np.zeros(m))
    except NotImplementedError as exc:
        raise ConfigError(f"plant {plant.name!r} cannot be linearised ({exc})") from exc
    A, B = np.asarray(sys.A, dtype=float), np.asarray(sys.B, dtype=float)
    p64 = plant if plant.u_min.dtype == torch.float64 else _float64(plant)
    fun = p64.discrete_step if plant.discrete else p64.f

    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 10.0, 100.0]).repeat(22)[:64, None]
    xs = rng.standard_normal((64, n)) * scale
    us = rng.standard_normal((64, m)) * scale
    zero_x, zero_u = torch.zeros(1, n, dtype=torch.float64), torch.zeros(1, m, dtype=torch.float64)
    with torch.no_grad():
        c = fun(zero_x, zero_u)[0].numpy()
        fx = fun(torch.from_numpy(xs), torch.from_numpy(us)).numpy()
    affine = xs @ A.T + us @ B.T + c
    err = np.abs(fx - affine).max(axis=1)
    size = np.maximum(1.0, np.abs(fx).max(axis=1))
    worst = int(np.argmax(err / size))
    if not (err <= linearity_rtol * size).all():
        raise ConfigError(
            f"plant {plant.name!r} is not linear: its dynamics differ from the linearisation "
            f"about the origin by {err[worst]:.3g} at x={np.round(xs[worst], 3).tolist()}, "
            f"u={np.round(us[worst], 3).tolist()} (expected < {linearity_rtol:g} relative); "
            "use a solver for nonlinear plants"
        )
    if plant.discrete:
        return A, B, c
    if method == "plant":
        Ad, Bd = torch.autograd.functional.jacobian(lambda x, u: p64.step(x, u)[0], (zero_x, zero_u))
        with torch.no_grad():
            cd = p64.step(zero_x, zero_u)[0].numpy()
        return Ad.reshape(n, n).numpy(), Bd.reshape(n, m).numpy(), cd
    aug = ct.ss(A, np.hstack([B, c[:, None]]), np.eye(n), np.zeros((n, m + 1)))
    sysd = ct.c2d(aug, plant.dt, method="zoh")
    Bd = np.asarray(sysd.B, dtype=float)
    return np.asarray(sysd.A, dtype=float), Bd[:, :m].copy(), Bd[:, m].copy()


def _float64(plant):
    return copy.deepcopy(plant).double()


# ---------------------------------------------------------------------- infinite horizon
def _check_matrices(A, B, Q, R):
    A, B, Q, R = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (A, B, Q, R))
    n = A.shape[0]
    if A.shape != (n, n):
        raise DimensionError(f"A has shape {A.shape}; expected a square (n, n)")
    if B.ndim != 2 or B.shape[0] != n:
        raise DimensionError(f"B has shape {B.shape}; expected ({n}, m)")
    m = B.shape[1]
    if Q.shape != (n, n):
        raise DimensionError(f"Q has shape {Q.shape}; expected ({n}, {n})")
    if R.shape != (m, m):
        raise DimensionError(f"R has shape {R.shape}; expected ({m}, {m})")
    for a, what in ((A, "A"), (B, "B"), (Q, "Q"), (R, "R")):
        if not np.isfinite(a).all():
            raise NonFiniteError(f"{what} contains NaN or infinity: {a.tolist()}")
    return A, B, Q, R


def check_controllable(A, B, *, tol: float | None = None) -> int:
    """Rank of the controllability matrix of ``(A, B)``; raise if it is not full.

    Parameters
    ----------
    A : array_like, shape ``(n, n)``
    B : array_like, shape ``(n, m)``
    tol : float, optional
        Singular-value threshold of :func:`numpy.linalg.matrix_rank`.

    Returns
    -------
    int
        The rank, ``n``.

    Raises
    ------
    UncontrollableError
        If ``rank [B, AB, ..., A^(n-1) B] < n`` (:func:`control.ctrb`).
    """
    A, B = np.atleast_2d(np.asarray(A, dtype=float)), np.atleast_2d(np.asarray(B, dtype=float))
    n = A.shape[0]
    rank = int(np.linalg.matrix_rank(ct.ctrb(A, B), tol=tol))
    if rank < n:
        raise UncontrollableError(
            f"(A, B) is not controllable: the controllability matrix [B, AB, ..., A^{n - 1}B] "
            f"has rank {rank}; expected {n}"
        )
    return rank


def infinite_horizon_gain(A, B, Q, R, dt: float = 0.0):
    """Infinite-horizon LQR gain ``u = -K x`` with python-control.

    Parameters
    ----------
    A : array_like, shape ``(n, n)``
    B : array_like, shape ``(n, m)``
    Q : array_like, shape ``(n, n)``
        State weight, symmetric positive semi-definite.
    R : array_like, shape ``(m, m)``
        Control weight, symmetric positive definite.
    dt : float
        ``0`` (default): ``(A, B)`` is continuous-time and the cost is
        ``int (x' Q x + u' R u) dt`` (:func:`control.lqr`). ``dt > 0``: ``(A, B)`` is the
        discrete-time system sampled every ``dt`` seconds and the cost the TRC convention
        ``sum_k dt (x_k' Q x_k + u_k' R u_k)`` (:func:`control.dlqr` with weights ``dt Q``,
        ``dt R``; the gain does not depend on ``dt``, the cost matrix ``P`` scales with it).

    Returns
    -------
    K : ndarray, shape ``(m, n)``
        Optimal gain.
    P : ndarray, shape ``(n, n)``
        Solution of the algebraic Riccati equation; the optimal cost from ``x0`` is
        ``x0' P x0``.
    E : ndarray, shape ``(n,)``
        Closed-loop eigenvalues.

    Raises
    ------
    DimensionError
        If the shapes disagree.
    NonFiniteError
        If a matrix contains NaN or infinity.
    UncontrollableError
        If ``(A, B)`` is not controllable (rank named in the message).
    ValueError
        If ``dt`` is negative.
    """
    A, B, Q, R = _check_matrices(A, B, Q, R)
    if not dt >= 0:
        raise ValueError(f"dt must be >= 0 seconds (0 for continuous time), got {dt!r}")
    check_controllable(A, B)
    if dt == 0:
        K, P, E = ct.lqr(A, B, Q, R)
    else:
        K, P, E = ct.dlqr(A, B, dt * Q, dt * R)
    return np.asarray(K), np.asarray(P), np.asarray(E)


# ---------------------------------------------------------------------- finite horizon
@dataclass(frozen=True)
class FiniteHorizonLQR:
    """Time-varying LQR for ``x_{k+1} = A x_k + B u_k + c`` with a tracking cost.

    Build with :meth:`from_matrices` (runs the Riccati recursion once), then call
    :meth:`trajectories` on batches of ``(x0, target)``.

    Attributes
    ----------
    A, B, c : ndarray, shapes ``(n, n)``, ``(n, m)``, ``(n,)``
        Discrete-time dynamics.
    Q, R : ndarray, shapes ``(n, n)``, ``(m, m)``
        Per-step weights (``dt Q`` and ``dt R`` in the TRC convention).
    Qf : ndarray, shape ``(n, n)``
        Terminal weight.
    K : ndarray, shape ``(N, m, n)``
        Feedback gains ``K_k``.
    P : ndarray, shape ``(N + 1, n, n)``
        Cost-to-go matrices ``P_k`` (``P_N = Qf``).
    L : ndarray, shape ``(N, n, m)``
        ``B G_k^{-1}`` with ``G_k = R + B' P_{k+1} B``: maps ``w_k`` (row) to the
        feed-forward ``k_k = w_k L_k``.
    """

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    Qf: np.ndarray
    K: np.ndarray
    P: np.ndarray
    L: np.ndarray

    @property
    def horizon(self) -> int:
        """Number of steps ``N``."""
        return self.K.shape[0]

    @classmethod
    def from_matrices(cls, A, B, Q, R, Qf, horizon: int, c=None) -> "FiniteHorizonLQR":
        """Run the backward Riccati recursion (see the module docstring).

        Parameters
        ----------
        A : array_like, shape ``(n, n)``
        B : array_like, shape ``(n, m)``
        Q : array_like, shape ``(n, n)``
            Per-step state weight (symmetric PSD).
        R : array_like, shape ``(m, m)``
            Per-step control weight (symmetric positive definite).
        Qf : array_like, shape ``(n, n)``
            Terminal weight (symmetric PSD).
        horizon : int
            Number of steps ``N >= 1``.
        c : array_like, shape ``(n,)``, optional
            Constant drift; default zero.

        Raises
        ------
        DimensionError, NonFiniteError
            On inconsistent shapes or non-finite entries.
        ValueError
            If ``R`` is not positive definite or ``horizon < 1``.
        """
        A, B, Q, R = _check_matrices(A, B, Q, R)
        n, m = B.shape
        Qf = np.atleast_2d(np.asarray(Qf, dtype=float))
        if Qf.shape != (n, n):
            raise DimensionError(f"Qf has shape {Qf.shape}; expected ({n}, {n})")
        c = np.zeros(n) if c is None else np.asarray(c, dtype=float).reshape(-1)
        if c.shape != (n,):
            raise DimensionError(f"c has shape {c.shape}; expected ({n},)")
        if not (np.isfinite(Qf).all() and np.isfinite(c).all()):
            raise NonFiniteError("Qf or c contains NaN or infinity")
        if not (isinstance(horizon, (int, np.integer)) and horizon >= 1):
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        if np.linalg.eigvalsh((R + R.T) / 2).min() <= 0:
            raise ValueError(f"R must be positive definite, got {R.tolist()}")

        K = np.empty((horizon, m, n))
        L = np.empty((horizon, n, m))
        P = np.empty((horizon + 1, n, n))
        P[horizon] = Qf
        for k in range(horizon - 1, -1, -1):
            Pn = P[k + 1]
            G = R + B.T @ Pn @ B
            G = (G + G.T) / 2
            K[k] = np.linalg.solve(G, B.T @ Pn @ A)
            L[k] = np.linalg.solve(G, B.T).T  # B G^{-1} (G symmetric)
            Pk = Q + A.T @ Pn @ (A - B @ K[k])
            P[k] = (Pk + Pk.T) / 2
        return cls(A=A, B=B, c=c, Q=Q, R=R, Qf=Qf, K=K, P=P, L=L)

    def trajectories(self, x0, target) -> tuple[np.ndarray, np.ndarray]:
        """Optimal controls and predicted states of a batch.

        The optimal trajectory is affine in ``(x0, target)``; the affine map is computed once
        (by :meth:`recursive_trajectories` on the basis vectors) and applied as two matrix
        products, so a batch costs ``O(B N (n + m) n)`` flops with no loop in Python.

        Parameters
        ----------
        x0, target : ndarray, shape ``(batch, n)``

        Returns
        -------
        controls : ndarray, shape ``(batch, N, m)``
        states : ndarray, shape ``(batch, N + 1, n)``
            The discrete-time model's trajectories (``x0`` first).
        """
        N, (n, m) = self.horizon, self.B.shape
        Mu, Mx, u0, xc = self._affine_map
        z = np.concatenate([x0, target], axis=1)
        controls = (z @ Mu + u0).reshape(-1, N, m)
        states = (z @ Mx + xc).reshape(-1, N + 1, n)
        states[:, 0] = x0  # exact, not rounded through the map
        return controls, states

    @functools.cached_property
    def _affine_map(self):
        n = self.B.shape[0]
        basis = np.concatenate([np.zeros((1, 2 * n)), np.eye(2 * n)])
        u, x = self.recursive_trajectories(basis[:, :n], basis[:, n:])
        u, x = u.reshape(2 * n + 1, -1), x.reshape(2 * n + 1, -1)
        return u[1:] - u[0], x[1:] - x[0], u[0], x[0]

    def recursive_trajectories(self, x0, target) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`trajectories`, by the backward affine recursion and a forward rollout.

        The reference implementation of the module docstring's recursion (loops over the
        horizon, vectorised over the batch).
        """
        A, B, c, Q = self.A, self.B, self.c, self.Q
        N = self.horizon
        batch, n = x0.shape
        m = B.shape[1]
        # Backward pass of the affine term s_k (rows), feed-forward k_k = (P c + s) B G^{-1}.
        ff = np.empty((N, batch, m))
        s = -target @ self.Qf
        tQ = target @ Q
        for k in range(N - 1, -1, -1):
            w = s + c @ self.P[k + 1]
            ff[k] = w @ self.L[k]
            s = w @ (A - B @ self.K[k]) - tQ
        # Forward pass.
        controls = np.empty((batch, N, m))
        states = np.empty((batch, N + 1, n))
        x = states[:, 0] = x0
        for k in range(N):
            u = -(x @ self.K[k].T) - ff[k]
            controls[:, k] = u
            x = states[:, k + 1] = x @ A.T + u @ B.T + c
        return controls, states

    def cost(self, states, controls, target) -> np.ndarray:
        """Discrete cost ``sum_k [e_k' Q e_k + u_k' R u_k] + e_N' Qf e_N``, shape ``(batch,)``."""
        e = states - target[:, None]
        stage = np.einsum("bki,ij,bkj->b", e[:, :-1], self.Q, e[:, :-1])
        stage += np.einsum("bki,ij,bkj->b", controls, self.R, controls)
        return stage + np.einsum("bi,ij,bj->b", e[:, -1], self.Qf, e[:, -1])


# ---------------------------------------------------------------------- the solver
def _tolerances(options: dict) -> Tolerances:
    keys = ("dynamics_rtol", "dynamics_atol", "bound_rtol", "bound_atol")
    return Tolerances(**{k: options.pop(k) for k in keys if k in options})


def _reject_unknown(solver: str, options: dict, allowed) -> None:
    if options:
        raise ConfigError(
            f"{solver}: unknown option(s) {sorted(options)}; allowed options: {sorted(allowed)}"
        )


def _check_instances(problem, x0, target):
    n = problem.state_dim
    x0 = np.asarray(x0, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if x0.ndim != 2 or x0.shape[1] != n:
        raise DimensionError(f"{problem.name}: x0 has shape {x0.shape}; expected (B, state_dim={n})")
    if target.shape != x0.shape:
        raise DimensionError(f"{problem.name}: target has shape {target.shape}; expected {x0.shape} like x0")
    for a, what in ((x0, "x0"), (target, "target")):
        if not np.isfinite(a).all():
            raise NonFiniteError(f"{problem.name}: {what} contains NaN or infinity")
    return x0, target


@register_solver("lqr")
class LQRSolver(Solver):
    """Exact finite-horizon tracking LQR for linear (or affine) plants, batched.

    Parameters
    ----------
    problem : trc.problem.Problem
        A problem with ``cost == "quadratic"`` on a plant that is affine in ``(x, u)``
        (``double_integrator``, ``linear``, ...).
    discretization : {"zoh", "plant"}
        ``"zoh"`` (default): exact zero-order-hold discretisation (:func:`control.c2d`);
        ``"plant"``: the plant integrator's own one-step map (see
        :func:`exact_discretization`).
    check_controllability : bool
        Raise :class:`~dynamics.errors.UncontrollableError` for an uncontrollable
        discretised ``(A, B)`` (default True): such a plant cannot reach arbitrary targets,
        so its data would be misleading; the finite-horizon problem itself is still well
        posed, so set False to solve it anyway.
    dynamics_rtol, dynamics_atol, bound_rtol, bound_atol : float
        Tolerances of the checks (:class:`~trc.generators.checks.Tolerances`). The dynamics
        residual compares the discretisation with the plant's integrator: RK4 is exact for the
        double integrator; for other continuous plants with ``"zoh"``, RK4's error can exceed
        the default ``1e-6`` (increase the plant's ``substeps`` or use ``"plant"``).

    Attributes
    ----------
    last_report : trc.generators.checks.CheckReport
        The checks of the last :meth:`solve` (dynamics residuals, bound violations per
        instance): diagnostics the :class:`~trc.generators.Solution` does not hold.

    Raises
    ------
    ConfigError
        If the cost is not quadratic, the plant is not affine, or an option is unknown.
    UncontrollableError
        If ``(A, B)`` is not controllable (see ``check_controllability``).

    Notes
    -----
    The solver ignores control and state bounds; an instance whose solution violates them
    fails the checks (``status`` starts with ``control_bounds`` or ``state_bounds``). The
    ``qp`` solver enforces them.

    Examples
    --------
    >>> from trc.generators import make_solver
    >>> solver = make_solver("lqr", problem)          # doctest: +SKIP
    >>> sol = solver.solve(x0, target)                 # doctest: +SKIP
    >>> sol.controls.shape                             # doctest: +SKIP
    (B, 15, 1)
    """

    def __init__(self, problem, **options):
        super().__init__(problem, **options)
        opts = dict(options)
        self.tolerances = _tolerances(opts)
        check_ctrb = bool(opts.pop("check_controllability", True))
        self.discretization = opts.pop("discretization", "zoh")
        _reject_unknown("lqr", opts, ("check_controllability", "discretization", *Tolerances.__dataclass_fields__))
        if problem.cost != "quadratic":
            raise ConfigError(f"lqr: problem {problem.name!r} has cost {problem.cost!r}; lqr needs 'quadratic'")
        self.plant = problem.make_plant(torch.float64)
        A, B, c = exact_discretization(self.plant, self.discretization)
        if check_ctrb:
            try:
                check_controllable(A, B)
            except UncontrollableError as exc:
                raise UncontrollableError(f"lqr: plant {self.plant.name!r}: {exc}") from None
        Q, R, Qf = problem.weights
        dt = float(problem.dt)
        self.lqr = FiniteHorizonLQR.from_matrices(A, B, dt * Q, dt * R, Qf, problem.horizon, c=c)

    def solve(self, x0, target) -> Solution:
        """Solve ``B`` instances at once; see :meth:`Solver.solve`.

        Parameters
        ----------
        x0, target : ndarray, shape ``(B, n)``

        Returns
        -------
        Solution
            ``iterations`` is 1; ``solve_time`` the batch time divided by ``B``.

        Raises
        ------
        DimensionError, NonFiniteError
            On malformed inputs.
        """
        x0, target = _check_instances(self.problem, x0, target)
        start = time.perf_counter()
        controls, predicted = self.lqr.trajectories(x0, target)
        report = check_solution(
            self.problem, x0, target, controls, predicted, plant=self.plant, tolerances=self.tolerances
        )
        B = x0.shape[0]
        elapsed = time.perf_counter() - start
        self.last_report = report
        return assemble_solution(
            self.problem, target, controls, report, np.ones(B, dtype=np.int64),
            np.full(B, elapsed / max(B, 1)), solver_name="lqr",
        )
