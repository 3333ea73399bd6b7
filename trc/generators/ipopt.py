"""Independent reference solvers: CasADi models of the plants, IPOPT multiple shooting.

CasADi (a requirement of TRC; it bundles IPOPT) builds the models; the closed-loop harness
(:mod:`trc.closed_loop`) simulates and controls the plants with them.

The vector fields below are written from the equations in the cited textbooks, not from the
torch plants in :mod:`dynamics`; only the numerical parameter values (masses, lengths,
bounds, integrator) are read from the plant's :meth:`~dynamics.Plant.config`. The tests use
this module to check the nonlinear generator (:mod:`trc.generators.nonlinear`), the rocket SOCP
and the plants themselves; the benchmarks use it as the solver TRC's generator is compared with.
:class:`IpoptReference` takes the parameter values from the float64 plant's buffers, so that it
solves exactly the problem the plant simulates.

The optimal-control problem is the TRC convention (:mod:`trc.cost`)::

    min  dt * sum_{k<N} [(x_k - x*)' Q (x_k - x*) + u_k' R u_k] + (x_N - x*)' Qf (x_N - x*)
    s.t. x_{k+1} = F(x_k, u_k),  x_0 given,  u_min <= u_k <= u_max,  x_min <= x_k <= x_max

with ``F`` the zero-order-hold step of the plant's explicit Runge-Kutta scheme, transcribed
by direct multiple shooting (Bock & Plitt, *IFAC Proc.* 17 (1984) 1603) and solved by IPOPT
(Waechter & Biegler, *Math. Program.* 106 (2006) 25) with exact Hessians from CasADi's
algorithmic differentiation (Andersson et al., *Math. Prog. Comp.* 11 (2019) 1).

:class:`RocketReference` solves the fuel-optimal powered descent of the ``rocket`` plant in its
original, non-convex form (Açıkmeşe & Ploen, *J. Guid. Control Dyn.* 30 (2007) 1353): thrust
magnitude ``rho1 <= ||T|| <= rho2`` with ``rho1 > 0``, mass depletion ``m' = -alpha ||T||``,
glide slope, landing at the target, minimum propellant. With the thrust held on each interval
the equations of motion integrate in closed form (Tsiolkovsky), so the transcription is exact
in time and differs from the lossless convexification of :mod:`trc.generators.rocket` in every
step but the physics: no change of variables, no Taylor bounds, no relaxation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import casadi as ca
import numpy as np
import scipy.linalg
import torch

__all__ = ["MODELS", "PARAMETERS", "DEFAULTS", "G0", "vector_field", "discrete_step", "IpoptReference", "ReferenceResult", "RocketReference",
           "rocket_step"]


#: Standard gravity that turns a specific impulse (s) into an exhaust velocity (m/s).
G0 = 9.80665


# ----------------------------------------------------------------------------- models
def _van_der_pol(p):
    """Forced Van der Pol oscillator, ``x'' - mu (1 - x^2) x' + x = u``.

    B. van der Pol, *Phil. Mag.* 2 (1926) 978; Khalil, *Nonlinear Systems*, 3rd ed., eq. (1.14)
    with an additive input.
    """
    mu = p["mu"]

    def f(x, u):
        return ca.vertcat(x[1], mu * (1 - x[0] ** 2) * x[1] - x[0] + u[0])

    return f


def _double_integrator(p):
    """A mass pushed by a force, ``m x'' = u`` (``m`` = 1 unless given: the plant is the unit mass)."""
    mass = p.get("m", 1.0)

    def f(x, u):
        return ca.vertcat(x[1], u[0] / mass)

    return f


def _pendulum(p):
    """Torque-driven rigid pendulum, ``I theta'' = u - m g lc sin(theta) - b theta'``.

    Tedrake, *Underactuated Robotics*, ch. 2, eq. (2.1), for a rigid body with its centre of
    mass at ``lc`` from the pivot; ``theta = 0`` hangs down.
    """
    m, g, lc, inertia, b = p["m"], p["g"], p["lc"], p["I"], p["b"]

    def f(x, u):
        return ca.vertcat(x[1], (u[0] - m * g * lc * ca.sin(x[0]) - b * x[1]) / inertia)

    return f


def _cartpole(p):
    """Cart-pole with a uniform pole of half-length ``l``; ``theta = 0`` upright.

    Florian, "Correct equations for the dynamics of the cart-pole system" (2007), eqs. (23)
    and (24) without Coulomb friction, plus viscous friction ``b_c x'`` on the cart and
    ``b_p theta'`` at the hinge: the cart equation is solved for ``x''`` and substituted into
    the pole equation, which gives ``theta''`` first and then ``x''``.
    """
    mc, mp, l, g, bc, bp = p["m_c"], p["m_p"], p["l"], p["g"], p["b_c"], p["b_p"]
    total = mc + mp

    def f(x, u):
        s, c = ca.sin(x[2]), ca.cos(x[2])
        push = (u[0] + mp * l * x[3] ** 2 * s - bc * x[1]) / total
        theta_acc = (g * s - c * push - bp * x[3] / (mp * l)) / (l * (4.0 / 3.0 - mp * c**2 / total))
        x_acc = push - mp * l * theta_acc * c / total
        return ca.vertcat(x[1], x_acc, x[3], theta_acc)

    return f


def _rocket(p):
    """Powered descent with mass depletion, ``r' = v``, ``v' = T / m + (0, 0, -g)``,
    ``m' = -||T|| / (Isp g0)`` (Açıkmeşe & Ploen 2007, eqs. (1)-(2); ``z`` up)."""
    g, isp = p["g"], p["isp"]

    def f(x, u):
        thrust = ca.sqrt(ca.sumsqr(u) + 1e-12)
        return ca.vertcat(x[3], x[4], x[5], u[0] / x[6], u[1] / x[6], u[2] / x[6] - g, -thrust / (isp * G0))

    return f


#: ``MODELS[name] = (state_dim, control_dim, factory)``; ``factory(config)`` returns ``f(x, u)``.
MODELS = {
    "van_der_pol": (2, 1, _van_der_pol),
    "double_integrator": (2, 1, _double_integrator),
    "pendulum": (2, 1, _pendulum),
    "cartpole": (4, 1, _cartpole),
    "rocket": (7, 3, _rocket),
}

#: The physical parameters each model's vector field reads (scaled by parameter-mismatch studies,
#: :mod:`trc.closed_loop`); :data:`DEFAULTS` holds the values of those a plant's config lacks.
PARAMETERS = {
    "van_der_pol": ("mu",),
    "double_integrator": ("m",),
    "pendulum": ("m", "g", "lc", "I", "b"),
    "cartpole": ("m_c", "m_p", "l", "g", "b_c", "b_p"),
    "rocket": ("g", "isp"),
}
DEFAULTS = {"m": 1.0}


def vector_field(config: dict):
    """The CasADi vector field ``f(x, u)`` of a plant given by its ``config()`` dict."""
    name = config["name"]
    if name not in MODELS:
        raise KeyError(f"no CasADi reference model for plant {name!r}; have {sorted(MODELS)}")
    return MODELS[name][2](config)


# ----------------------------------------------------------------------------- integrators
def _rk_step(f, x, u, h, method):
    """One explicit Runge-Kutta step of length ``h`` with ``u`` held.

    ``rk4`` is Kutta's 3/8 rule (Hairer, Norsett & Wanner, *Solving ODEs I*, Table 1.2, right),
    the fourth-order scheme torchdiffeq calls ``rk4``; ``euler`` and ``midpoint`` as usual.
    """
    if method == "euler":
        return x + h * f(x, u)
    if method == "midpoint":
        return x + h * f(x + 0.5 * h * f(x, u), u)
    if method == "rk4":
        k1 = f(x, u)
        k2 = f(x + h * k1 / 3, u)
        k3 = f(x + h * (k2 - k1 / 3), u)
        k4 = f(x + h * (k1 - k2 + k3), u)
        return x + h * (k1 + 3 * (k2 + k3) + k4) / 8
    raise ValueError(f"the CasADi reference supports methods rk4, euler, midpoint; got {method!r}")


def discrete_step(config: dict) -> ca.Function:
    """The zero-order-hold step ``F(x, u)`` of a plant config as a CasADi function.

    ``method: exact`` (linear plants): ``F(x, u) = A_d x + B_d u`` with ``[[A_d, B_d], [0, I]] =
    expm([[A, B], [0, 0]] dt)`` (Van Loan, *IEEE Trans. Automat. Control* 23 (1978) 395), ``A`` and
    ``B`` the Jacobians of the vector field; a vector field that is not linear raises ValueError.
    """
    f = vector_field(config)
    n, m = _dims(config)
    x, u = ca.SX.sym("x", n), ca.SX.sym("u", m)
    if config.get("method") == "exact":
        rhs = f(x, u)
        jac = ca.Function("linearisation", [x, u], [ca.jacobian(rhs, x), ca.jacobian(rhs, u), rhs])
        A, B, f0 = (np.asarray(v, dtype=float) for v in jac(np.zeros(n), np.zeros(m)))
        if np.abs(f0).max() > 0 or ca.depends_on(ca.jacobian(rhs, ca.vertcat(x, u)), ca.vertcat(x, u)):
            raise ValueError(f"method 'exact' needs a linear vector field; plant {config['name']!r} is not linear")
        M = scipy.linalg.expm(np.block([[A, B], [np.zeros((m, n + m))]]) * float(config["dt"]))
        return ca.Function("F", [x, u], [ca.mtimes(ca.DM(M[:n, :n]), x) + ca.mtimes(ca.DM(M[:n, n:]), u)],
                           ["x", "u"], ["x_next"])
    substeps = int(config.get("substeps", 1))
    h = float(config["dt"]) / substeps
    y = x
    for _ in range(substeps):
        y = _rk_step(f, y, u, h, config.get("method", "rk4"))
    return ca.Function("F", [x, u], [y], ["x", "u"], ["x_next"])


def _dims(config: dict) -> tuple[int, int]:
    """State and control dimensions of the model of ``config["name"]``."""
    n, m, _ = MODELS[config["name"]]
    return n, m


# ----------------------------------------------------------------------------- solver
@dataclass
class ReferenceResult:
    """IPOPT's answer for one instance (float64 arrays)."""

    states: np.ndarray  #: ``(N + 1, n)``
    controls: np.ndarray  #: ``(N, m)``
    cost: float
    success: bool
    status: str
    iterations: int
    solve_time: float  #: wall-clock seconds of the IPOPT call


class IpoptReference:
    """Multiple-shooting IPOPT solver of a :class:`~trc.problem.Problem`, built once.

    Parameters
    ----------
    problem : trc.problem.Problem
    tol : float
        IPOPT's ``tol`` (scaled NLP error); ``constr_viol_tol`` is set to ``tol`` as well.
    max_iter : int
    options : dict, optional
        Extra IPOPT options (``{"mu_strategy": "adaptive"}``, ...).
    """

    def __init__(self, problem, tol: float = 1e-10, max_iter: int = 3000, options: dict | None = None):
        self.problem = problem

        plant = problem.make_plant(torch.float64)
        config = plant.config()
        # the numbers the plant actually simulates with (its buffers), so both solve one problem
        config.update({key: getattr(plant, key).tolist() for key in plant.params})
        config["dt"] = float(problem.dt)
        self.config = config
        self.n, self.m = _dims(config)
        N, n, m = problem.horizon, self.n, self.m
        Q, R, Qf = problem.weights
        F = discrete_step(config)

        X = ca.SX.sym("X", n, N + 1)
        U = ca.SX.sym("U", m, N)
        P = ca.SX.sym("P", 2 * n)  # (x0, target)
        x0, xt = P[:n], P[n:]
        J = 0
        for k in range(N):
            e = X[:, k] - xt
            J += problem.dt * (ca.bilin(ca.DM(Q), e, e) + ca.bilin(ca.DM(R), U[:, k], U[:, k]))
        e = X[:, N] - xt
        J += ca.bilin(ca.DM(Qf), e, e)
        Fmap = F.map(N)
        defects = Fmap(X[:, :N], U) - X[:, 1:]
        g = ca.vertcat(X[:, 0] - x0, ca.vec(defects))
        w = ca.vertcat(ca.vec(X), ca.vec(U))
        opts = {
            "ipopt.tol": tol,
            "ipopt.constr_viol_tol": tol,
            "ipopt.max_iter": max_iter,
            "ipopt.print_level": 0,
            "print_time": False,
            "ipopt.sb": "yes",
        }
        for key, value in (options or {}).items():
            opts[f"ipopt.{key}"] = value
        self._solver = ca.nlpsol("reference", "ipopt", {"x": w, "f": J, "g": g, "p": P}, opts)
        self._ng = g.shape[0]

        def bound(key, dim, default):
            v = np.asarray(config.get(key, [default] * dim), dtype=float).reshape(-1)
            return np.broadcast_to(v, (dim,))

        xlo, xhi = bound("x_min", n, -math.inf), bound("x_max", n, math.inf)
        ulo, uhi = bound("u_min", m, -math.inf), bound("u_max", m, math.inf)
        self._lbw = np.concatenate([np.tile(xlo, N + 1), np.tile(ulo, N)])
        self._ubw = np.concatenate([np.tile(xhi, N + 1), np.tile(uhi, N)])
        self._F = F
        # gradient of the Lagrangian J + sum_k lam_k' (x_{k+1} - F(x_k, u_k)) w.r.t. x_1..x_N, u
        lam = ca.SX.sym("lam", n, N)
        Lag = J + ca.sum1(ca.sum2(lam * (X[:, 1:] - Fmap(X[:, :N], U))))
        self._grad_L = ca.Function("grad_L", [X, U, lam, P], [ca.gradient(Lag, X)[:, 1:], ca.gradient(Lag, U)])
        self._grad_J = ca.Function("grad_J", [X, U, P], [ca.gradient(J, X)[:, 1:], ca.gradient(J, U)])
        self._bounds = (xlo, xhi, ulo, uhi)

    def solve(self, x0, target, states_guess=None, controls_guess=None) -> ReferenceResult:
        """Solve one instance.

        Parameters
        ----------
        x0, target : array_like, shape ``(n,)``
        states_guess : array_like, shape ``(N + 1, n)``, optional
            Initial guess of the trajectory; default the straight line from ``x0`` to ``target``.
        controls_guess : array_like, shape ``(N, m)``, optional
            Initial guess of the controls; default zero.
        """
        N, n, m = self.problem.horizon, self.n, self.m
        x0 = np.asarray(x0, dtype=float).reshape(n)
        target = np.asarray(target, dtype=float).reshape(n)
        if states_guess is None:
            s = np.linspace(0.0, 1.0, N + 1)[:, None]
            states_guess = (1 - s) * x0 + s * target
        if controls_guess is None:
            controls_guess = np.zeros((N, m))
        w0 = np.concatenate([np.asarray(states_guess, float).reshape(-1), np.asarray(controls_guess, float).reshape(-1)])
        w0 = np.clip(w0, self._lbw, self._ubw)
        start = time.perf_counter()
        sol = self._solver(x0=w0, p=np.concatenate([x0, target]), lbx=self._lbw, ubx=self._ubw, lbg=0, ubg=0)
        elapsed = time.perf_counter() - start
        stats = self._solver.stats()
        w = np.asarray(sol["x"]).reshape(-1)
        X = w[: n * (N + 1)].reshape(N + 1, n)
        U = w[n * (N + 1):].reshape(N, m)
        return ReferenceResult(
            states=X,
            controls=U,
            cost=float(sol["f"]),
            success=bool(stats["success"]),
            status=str(stats["return_status"]),
            iterations=int(stats["iter_count"]),
            solve_time=elapsed,
        )

    def kkt_residual(self, x0, target, states, controls, multipliers, bound_tol: float = 1e-9) -> float:
        """Largest violation of the KKT stationarity conditions at a candidate solution.

        ``L = J + sum_k lam_k' (x_{k+1} - F(x_k, u_k))`` is differentiated by CasADi. For an entry
        strictly inside its bounds the residual is ``|dL/dw|``; at an upper bound it is
        ``max(dL/dw, 0)`` (the bound multiplier ``-dL/dw`` must be >= 0), at a lower bound
        ``max(-dL/dw, 0)``. The result is divided by ``max(1, ||grad J||_inf)``.

        Parameters
        ----------
        x0, target : array_like, shape ``(n,)``
        states : array_like, shape ``(N + 1, n)``
        controls : array_like, shape ``(N, m)``
        multipliers : array_like, shape ``(N, n)``
            Multipliers of the dynamics constraints ``x_{k+1} - F(x_k, u_k) = 0``.
        """
        p = np.concatenate([np.asarray(x0, float).ravel(), np.asarray(target, float).ravel()])
        X = np.asarray(states, float).T
        U = np.asarray(controls, float).T
        lam = np.asarray(multipliers, float).T
        gx, gu = (np.asarray(v) for v in self._grad_L(X, U, lam, p))
        jx, ju = (np.asarray(v) for v in self._grad_J(X, U, p))
        xlo, xhi, ulo, uhi = self._bounds
        out = 0.0
        for g, v, lo, hi in ((gx, X[:, 1:], xlo, xhi), (gu, U, ulo, uhi)):
            at_hi = v >= hi[:, None] - bound_tol
            at_lo = v <= lo[:, None] + bound_tol
            r = np.where(at_hi, np.maximum(g, 0.0), np.where(at_lo, np.maximum(-g, 0.0), np.abs(g)))
            out = max(out, float(r.max()))
        return out / max(1.0, float(np.abs(np.concatenate([jx.ravel(), ju.ravel()])).max()))

    def simulate(self, x0, controls) -> np.ndarray:
        """Roll ``controls`` ``(N, m)`` out from ``x0`` through the CasADi step; ``(N + 1, n)``."""
        x = np.asarray(x0, dtype=float).reshape(self.n)
        out = [x]
        for u in np.asarray(controls, dtype=float).reshape(-1, self.m):
            x = np.asarray(self._F(x, u)).reshape(self.n)
            out.append(x)
        return np.stack(out)


# ----------------------------------------------------------------------------- rocket


def rocket_step(x, thrust, gamma, dt: float, g: float, alpha: float):
    """Exact state after ``dt`` seconds of constant thrust (CasADi or NumPy expressions).

    Açıkmeşe & Ploen (2007), eqs. of motion ``r'' = T / m + g e_g``, ``m' = -alpha Gamma`` with
    ``Gamma = ||T||`` (> 0 here, since ``rho1 > 0``) and ``e_g = (0, 0, -1)``. With
    ``w = alpha Gamma`` and ``m1 = m - w dt`` (Tsiolkovsky)::

        v1 = v + g e_g dt + (T / w) ln(m / m1)
        r1 = r + v dt + g e_g dt^2 / 2 + (T / w) (dt - (m1 / w) ln(m / m1))

    the second from ``int_0^dt ln(m / (m - w s)) ds = dt - (m1 / w) ln(m / m1)``.

    Parameters
    ----------
    x : vector of length 7
        ``(r, v, m)`` in m, m/s, kg.
    thrust : vector of length 3
        Thrust in N.
    gamma : scalar
        Thrust magnitude ``||thrust||`` in N (a separate argument: the NLP carries it as a
        bounded variable).
    dt : float
        Seconds.
    g, alpha : float
        Gravity in m/s^2 and fuel use ``1 / (Isp g0)`` in s/m.

    Returns
    -------
    list of three expressions
        ``r1``, ``v1``, ``m1``.
    """
    r, v, m = x[0:3], x[3:6], x[6]
    w = alpha * gamma
    m1 = m - w * dt
    burn = ca.log(m / m1) if isinstance(m, (ca.SX, ca.MX)) else np.log(m / m1)
    down = ca.DM([0.0, 0.0, -g]) if isinstance(m, (ca.SX, ca.MX)) else np.array([0.0, 0.0, -g])
    v1 = v + down * dt + thrust / w * burn
    r1 = r + v * dt + down * dt**2 / 2 + thrust / w * (dt - m1 / w * burn)
    return r1, v1, m1


class RocketReference:
    """The non-convex minimum-fuel landing of a ``rocket`` problem, by IPOPT (direct multiple shooting).

    Decision variables: the states ``x_0 .. x_N`` (``(r, v, m)``), the thrust ``T_k`` held on
    interval ``k`` and its magnitude ``Gamma_k`` with the bounds ``rho1 <= Gamma_k <= rho2``;
    constraints ``x_{k+1} = step(x_k, T_k, Gamma_k)`` (:func:`rocket_step`, exact),
    ``||T_k||^2 = Gamma_k^2`` (the non-convex annulus), ``m_N >= m_dry``, landing at the
    target position and velocity, and the glide slope ``(r_k - r*)_z >= tan(gamma)
    ||(r_k - r*)_xy||`` at the nodes ``1 .. N-1`` (squared, with ``(r_k - r*)_z >= 0``; the last
    node is the target itself). Objective: the propellant used, ``m_0 - m_N``.

    The vehicle numbers are read from the float64 plant's parameter buffers (``g``, ``isp``,
    ``m_dry``, engines, throttle, cant angle); ``rho1``, ``rho2`` and ``alpha`` are computed
    here from the paper's definitions, not taken from the plant's properties.

    Parameters
    ----------
    problem : trc.problem.Problem
        A ``rocket`` problem with ``cost == "fuel"``.
    tol : float
        IPOPT ``tol`` and ``constr_viol_tol``.
    max_iter : int
    """

    def __init__(self, problem, tol: float = 1e-9, max_iter: int = 3000):
        plant = problem.make_plant(torch.float64)
        p = {key: float(getattr(plant, key)) for key in plant.params}
        self.problem = problem
        self.g = p["g"]
        self.alpha = 1.0 / (p["isp"] * G0)
        cos = math.cos(math.radians(p["cant_angle"]))
        self.rho1 = p["n_engines"] * p["throttle_min"] * p["thrust_max"] * cos
        self.rho2 = p["n_engines"] * p["throttle_max"] * p["thrust_max"] * cos
        self.m_dry = p["m_dry"]
        self.glide_slope = float(problem.options.get("glide_slope", 4.0))
        N, dt = problem.horizon, float(problem.dt)
        self.N, self.dt = N, dt

        X = ca.SX.sym("X", 7, N + 1)
        T = ca.SX.sym("T", 3, N)
        G = ca.SX.sym("G", N)
        P = ca.SX.sym("P", 13)  # x0 (7), landing position and velocity (6)
        equal = [X[:, 0] - P[:7]]
        for k in range(N):
            r1, v1, m1 = rocket_step(X[:, k], T[:, k], G[k], dt, self.g, self.alpha)
            equal += [X[0:3, k + 1] - r1, X[3:6, k + 1] - v1, X[6, k + 1] - m1, ca.sumsqr(T[:, k]) - G[k] ** 2]
        equal.append(X[0:6, N] - P[7:13])
        tan2 = math.tan(math.radians(self.glide_slope)) ** 2
        cone = []
        for k in range(1, N):
            d = X[0:3, k] - P[7:10]
            cone += [d[2] ** 2 - tan2 * ca.sumsqr(d[0:2]), d[2]]
        eq, ineq = ca.vertcat(*equal), ca.vertcat(*cone)
        w = ca.vertcat(ca.vec(X), ca.vec(T), G)
        opts = {"ipopt.tol": tol, "ipopt.constr_viol_tol": tol, "ipopt.max_iter": max_iter, "ipopt.print_level": 0,
                "print_time": False, "ipopt.sb": "yes"}
        self._solver = ca.nlpsol("rocket_reference", "ipopt",
                                 {"x": w, "f": X[6, 0] - X[6, N], "g": ca.vertcat(eq, ineq), "p": P}, opts)
        inf = np.inf
        self._lbw = np.concatenate([np.tile([-inf] * 6 + [self.m_dry], N + 1), np.full(3 * N, -inf),
                                    np.full(N, self.rho1)])
        self._ubw = np.concatenate([np.full(7 * (N + 1) + 3 * N, inf), np.full(N, self.rho2)])
        self._lbg = np.zeros(eq.shape[0] + ineq.shape[0])
        self._ubg = np.concatenate([np.zeros(eq.shape[0]), np.full(ineq.shape[0], inf)])

    def default_guess(self, x0, target) -> tuple[np.ndarray, np.ndarray]:
        """A naive start: the straight line from ``x0`` to the target, and a vertical thrust
        half-way between ``rho1`` and ``rho2`` with the mass falling at its rate (``(N + 1, 7)``
        states, ``(N, 3)`` thrust)."""
        N = self.N
        x0, target = np.asarray(x0, float), np.asarray(target, float)
        s = np.linspace(0.0, 1.0, N + 1)[:, None]
        states = (1 - s) * x0 + s * target
        mid = (self.rho1 + self.rho2) / 2
        states[:, 6] = x0[6] - self.alpha * mid * self.dt * N * s[:, 0]
        return states, np.tile([0.0, 0.0, mid], (N, 1))

    def solve(self, x0, target, states_guess=None, controls_guess=None) -> ReferenceResult:
        """Solve one instance.

        Parameters
        ----------
        x0 : array_like, shape ``(7,)``
            Initial ``(r, v, m)``.
        target : array_like, shape ``(7,)``
            Landing position and velocity (mass entry ignored).
        states_guess : array_like, shape ``(N + 1, 7)``, optional
        controls_guess : array_like, shape ``(N, 3)``, optional
            Initial guesses; default :meth:`default_guess`.

        Returns
        -------
        ReferenceResult
            ``controls`` the thrust in N, ``cost`` the propellant used in kg.
        """
        N = self.N
        x0, target = np.asarray(x0, float).reshape(7), np.asarray(target, float).reshape(7)
        states, thrust = self.default_guess(x0, target)
        if states_guess is not None:
            states = np.asarray(states_guess, float).reshape(N + 1, 7)
        if controls_guess is not None:
            thrust = np.asarray(controls_guess, float).reshape(N, 3)
        magnitude = np.clip(np.linalg.norm(thrust, axis=1), self.rho1, self.rho2)
        w0 = np.clip(np.concatenate([states.reshape(-1), thrust.reshape(-1), magnitude]), self._lbw, self._ubw)
        start = time.perf_counter()
        sol = self._solver(x0=w0, p=np.concatenate([x0, target[:6]]), lbx=self._lbw, ubx=self._ubw, lbg=self._lbg,
                           ubg=self._ubg)
        elapsed = time.perf_counter() - start
        stats = self._solver.stats()
        w = np.asarray(sol["x"]).reshape(-1)
        return ReferenceResult(
            states=w[: 7 * (N + 1)].reshape(N + 1, 7),
            controls=w[7 * (N + 1): 7 * (N + 1) + 3 * N].reshape(N, 3),
            cost=float(sol["f"]),
            success=bool(stats["success"]),
            status=str(stats["return_status"]),
            iterations=int(stats["iter_count"]),
            solve_time=elapsed,
        )
