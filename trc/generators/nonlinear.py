"""Nonlinear optimal trajectories: Gauss-Newton SQP on multiple shooting (solver ``"nonlinear"``).

The problem (TRC cost convention, :mod:`trc.cost`) is the discrete-time optimal-control problem
of the plant's own zero-order-hold step ``F`` (its integrator, e.g. RK4)::

    min  J = dt * sum_{k<N} [(x_k - x*)' Q (x_k - x*) + u_k' R u_k] + (x_N - x*)' Qf (x_N - x*)
    s.t. x_{k+1} = F(x_k, u_k)   (k = 0 .. N-1),  x_0 given,
         u_min <= u_k <= u_max,  x_min <= x_k <= x_max.

Method
------
*Direct multiple shooting* (Bock & Plitt, *IFAC Proc.* 17 (1984) 1603) keeps the states
``x_1 .. x_N`` as unknowns beside the controls, so every shooting interval is linearised on
its own. That makes the derivatives cheap: the Jacobians ``A_k = dF/dx``, ``B_k = dF/du`` at
all ``N`` nodes of all instances come from ONE batched call of the differentiable plant
(``plant.step`` on ``n`` stacked copies of the ``(batch * N, n)`` nodes) and one reverse sweep
of torch autograd, with no Python loop over instances or time steps.

Each iteration solves the sparse QP of *sequential quadratic programming* (SQP; Nocedal &
Wright, *Numerical Optimization*, 2nd ed., ch. 18) with the *Gauss-Newton* Hessian, i.e. the
cost Hessian ``2 blockdiag(dt Q, dt R, ..., Qf)`` (Bock 1983; Diehl et al., *Fast direct multiple
shooting algorithms for optimal robot control*, 2006, sec. 4.3). The QPs of a batch are solved
exactly and together (:mod:`trc.generators.nonlinear_qp`): a primal-dual active-set fast path,
warm-started with the active bounds of the previous iteration, that factorises the stacked
KKT systems of the whole batch with one banded LU (LAPACK) and accepts a solution only if it
satisfies every KKT condition of the QP; and the interior-point solver Clarabel for the rest
(typically the first iterations). Steps are globalised by a backtracking line
search on the exact l1 merit function ``J + nu * sum_k ||x_{k+1} - F(x_k, u_k)||_1`` (Nocedal &
Wright, eq. 18.27 and Alg. 18.3), all trial step lengths of all instances evaluated in one
batched plant call.

Why Gauss-Newton and not the exact Hessian of the Lagrangian: at the optima of the swing-up
problems 30-40 % of the stage blocks of the exact Hessian are indefinite (eigenvalues down to
-20 against cost curvatures of 0.005-1), so any convex QP needs a blockwise regularisation
(eigenvalue projection, as in acados) that destroys the Newton model; measured on the
cart-pole this needed 3-10x more iterations and failed on 12 of 20 instances, while
Gauss-Newton converged on all. Gauss-Newton converges linearly, with a rate set by the
multipliers' curvature term it leaves out, to points that satisfy the KKT conditions exactly.

Why not SCP with a cvxpy problem, or scipy's SLSQP/trust-constr: SCP with a trust region needs
many more iterations for tight KKT tolerances; SLSQP is dense (cubic in ``N (n + m)``) and
trust-constr is slow in Python.

Optimality certificate
----------------------
An instance is *converged* when, at the current iterate ``z`` and the QP's multipliers,

* the stationarity residual of the Lagrangian, ``||grad_z L||_inf = ||H d||_inf``, is at most
  ``kkt_tol * max(1, ||grad J||_inf)``, and
* the dynamics defect ``max_k ||x_{k+1} - F(x_k, u_k)||_inf`` is at most ``feas_tol``;

bound feasibility, dual feasibility and complementarity hold exactly, since the QP solution
satisfies them (Nocedal & Wright, Thm. 12.1). The controls are then re-simulated through the
float64 plant by :func:`~trc.generators.checks.check_solution` (dynamics residual, bounds,
finiteness). An instance that did not converge or fails a check is returned with
``success = False`` and the reason in ``status`` (and logged); it is never silently kept.

Initial guesses and warm starts
-------------------------------
Swing-ups are non-convex with several local optima, so the initial guess decides which one
is found. The default guess is deterministic: states on the straight line from ``x0`` to the
target (``"interpolate"``), controls zero. Angles are not wrapped (the cost penalises
``theta - theta*``), so this line is the natural homotopy path and fixes the direction of the
swing; the IPOPT reference of the tests starts from the same guess and finds the same optima.
``initial_guess="neighbour"`` warm-starts: it orders the instances along a nearest-neighbour
chain in ``(x0, target)``, solves the first block from straight lines and every later block
from the solutions of the nearest instances already solved, with the states shifted by the
difference of the initial and target states. It keeps neighbouring instances on the same
branch of local optima, but on 32 random swing-up instances it did not save time (pendulum:
15 instead of 11 iterations; cart-pole: 37 instead of 43, in smaller batches), so it is not
the default. Callers can also pass their own guesses (``states_guess``, ``controls_guess``),
e.g. a previous solution.

Multi-start
-----------
``initial_guess="multistart"`` (with ``starts=S``) solves every instance from ``S`` initial
guesses and keeps, per instance, the successful start (converged and every check of
:func:`~trc.generators.checks.check_solution` passed) of lowest re-simulated cost ``J``; if no
start succeeds, the start that ran out of iterations closest to stationarity gets
``rescue_iter`` further iterations (Gauss-Newton converges linearly, and slowly where the
neglected curvature term of the multipliers is large, as at optima that balance near the upright
position for seconds: 500-900 iterations instead of 20-60), and if that fails too, the failure
is returned with ``success = False``. The first start is the default guess (the straight line,
or the caller's ``states_guess``/``controls_guess``); the others, built by
:mod:`trc.generators.guesses`, are closed-loop simulations of energy pumping (Astrom & Furuta,
*Automatica* 36 (2000) 287) with both first-swing directions and decreasing torque fractions
(more pump swings), which satisfy the dynamics from the start (Betts, *Practical Methods for
Optimal Control and Estimation Using Nonlinear Programming*, 2nd ed., SIAM 2010, on initial
guesses and multiple local optima). All ``S * B`` problems go through the same batched SQP (a
batch holds all the starts of ``batch_size`` instances), so a batch costs about ``S``
single-start solves; ``solve_time`` charges each instance with all its starts and the guess
simulation. Angles are not wrapped (``J`` penalises ``theta - theta*``), so no start aims at
``theta* -/+ 2 pi``: those are different, costlier targets of this cost.

On the pendulum swing-up from any angle (``theta0`` in ``[-pi, pi]``, ``|omega0| <= 1``,
``|u| <= 2`` N m, ``N = 100``: ``benchmarks/swing_up_labels.py``) the straight line fails on
about half the instances: where the line lies near the unstable upright position, the
linearised dynamics amplify its defects by ``e^(lambda t)`` over the horizon and the first QP
steps are of order ``1e6``-``1e12`` (Clarabel fails or the line search stalls). The pumping
guesses have no defects to amplify. The same amplification makes converged solutions that
balance near the top for seconds fail the re-simulation check with defects of ``1e-10``
(residuals up to ``1e-3``), hence the multi-start default ``feas_tol = 1e-14`` (a few rounding
errors of the plant step; about one more Gauss-Newton iteration).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dynamics.errors import ConfigError, DimensionError, NonFiniteError

from .base import Solution, Solver, register_solver
from .checks import assemble_solution, check_solution
from .guesses import GUESS_PLANTS, energy_pumping_guesses, multistart_plan
from .nonlinear_qp import QPLayout

__all__ = ["NonlinearSolver", "straight_line_states"]

_INITIAL_GUESSES = ("interpolate", "neighbour", "multistart")

_NOT_CONVERGED = "not converged after max_iter iterations"

#: Default number of starts of ``initial_guess="multistart"``.
DEFAULT_STARTS = 3

#: Default number of further SQP iterations of a multi-start instance that no start solved.
DEFAULT_RESCUE_ITER = 1000

#: Default dynamics-defect tolerances: single start, and multi-start (see the module docstring).
FEAS_TOL, MULTISTART_FEAS_TOL = 1e-10, 1e-14


def _linearize(plant, x: torch.Tensor, u: torch.Tensor):
    """Step and Jacobians of the plant at a batch of independent nodes.

    Parameters
    ----------
    plant : dynamics.Plant
        A float64 plant.
    x : Tensor, shape ``(M, n)``
    u : Tensor, shape ``(M, m)``

    Returns
    -------
    F : Tensor, shape ``(M, n)``
        ``plant.step(x, u)``.
    A : Tensor, shape ``(M, n, n)``
        ``dF/dx``.
    B : Tensor, shape ``(M, n, m)``
        ``dF/du``.
    """
    M, n = x.shape
    with torch.enable_grad():
        # n copies of the nodes; copy i back-propagates the unit vector e_i, so ONE reverse
        # sweep gives row i of every node's Jacobian in copy i (the nodes are independent).
        z = torch.cat([x, u], dim=1).detach().repeat(n, 1).requires_grad_(True)
        F = plant.step(z[:, :n], z[:, n:])
        seeds = torch.eye(n, dtype=F.dtype, device=F.device).repeat_interleave(M, dim=0)
        (grad,) = torch.autograd.grad(F, z, seeds)
    J = grad.reshape(n, M, -1).transpose(0, 1)  # (M, n, n + m)
    return F[:M].detach(), J[..., :n], J[..., n:]


@register_solver("nonlinear")
class NonlinearSolver(Solver):
    """Gauss-Newton SQP on a multiple-shooting transcription, with torch derivatives.

    See the module docstring for the method, the optimality test and the initial guesses.

    Parameters
    ----------
    problem : trc.problem.Problem
        A problem with ``cost: quadratic`` (positive definite ``R``) on any registered plant.
    max_iter : int
        Maximum SQP iterations per instance.
    kkt_tol : float
        Tolerance of the Lagrangian stationarity, relative to ``max(1, ||grad J||_inf)``.
    feas_tol : float, optional
        Tolerance of the dynamics defect ``max_k ||x_{k+1} - F(x_k, u_k)||_inf`` (state units);
        default ``1e-10``, and ``1e-14`` with ``initial_guess="multistart"`` (see the module
        docstring).
    qp_tol : float
        Tolerance of the QP solutions (Clarabel's gap and feasibility tolerances and the KKT
        verification of the active-set fast path).
    initial_guess : {"interpolate", "neighbour", "multistart"}
        See the module docstring.
    starts : int, optional
        Number of starts of ``initial_guess="multistart"`` (only with it), in
        ``[1, guesses.MAX_STARTS]``; default 3: the straight line (or the caller's guess) and the
        energy-pumping guesses of both first-swing directions at full torque.
    rescue_iter : int, optional
        With ``initial_guess="multistart"`` only: further SQP iterations (default 1000; 0: none)
        for an instance that no start solved, continuing its start that ran out of iterations
        with the smallest stationarity residual.
    batch_size : int
        Instances solved together; larger batches amortise the per-iteration overhead.
    device : str or torch.device, optional
        Device of the derivative computations (default CPU; the QPs run on the CPU).

    Attributes
    ----------
    diagnostics : dict
        Of the last :meth:`solve`, per instance: ``stationarity`` and ``defect`` (the KKT
        residuals at return), ``multipliers`` ``(B, N, n)`` of the dynamics constraints,
        ``predicted_states`` ``(B, N + 1, n)`` (the multiple-shooting states) and
        ``fast_qp_fraction`` (share of QPs solved by the active-set fast path). With
        ``initial_guess="multistart"`` also ``start`` ``(B,)`` (index of the start returned: the
        successful one of lowest cost, or 0 if none succeeded), ``start_names`` (``S`` names,
        :func:`~trc.generators.guesses.multistart_plan`), ``start_costs`` ``(B, S)`` (re-simulated
        ``J`` of each start, NaN where it failed), ``start_success`` ``(B, S)``,
        ``start_iterations`` ``(B, S)``, ``beats_first`` ``(B,)`` (the returned start succeeded
        and either the first start failed or its cost is lower by more than ``1e-8`` relative)
        and ``rescued`` ``(B,)`` (the instance got the ``rescue_iter`` iterations).

    Raises
    ------
    ConfigError
        On an invalid option (``starts`` or ``rescue_iter`` without
        ``initial_guess="multistart"``, or out of range; ``multistart`` with more than one start
        on a plant without guesses) or a problem whose cost is not quadratic.

    Examples
    --------
    >>> from trc.generators import make_solver
    >>> solver = make_solver("nonlinear", problem)              # doctest: +SKIP
    >>> sol = solver.solve(*problem.sample(16, seed=0))         # doctest: +SKIP
    >>> sol.success.all(), sol.costs.shape                      # doctest: +SKIP
    (True, (16,))
    """

    def __init__(
        self,
        problem,
        *,
        max_iter: int = 300,
        kkt_tol: float = 1e-8,
        feas_tol: float | None = None,
        qp_tol: float = 1e-10,
        initial_guess: str = "interpolate",
        starts: int | None = None,
        rescue_iter: int | None = None,
        batch_size: int = 64,
        device=None,
    ):
        super().__init__(
            problem, max_iter=max_iter, kkt_tol=kkt_tol, feas_tol=feas_tol, qp_tol=qp_tol,
            initial_guess=initial_guess, starts=starts, rescue_iter=rescue_iter, batch_size=batch_size,
            device=device,
        )
        if problem.cost != "quadratic":
            raise ConfigError(f"solver 'nonlinear' needs cost 'quadratic', got {problem.cost!r}")
        if not isinstance(initial_guess, str) or initial_guess not in _INITIAL_GUESSES:
            raise ConfigError(f"initial_guess must be one of {_INITIAL_GUESSES}, got {initial_guess!r}")
        multistart = initial_guess == "multistart"
        for key, value in (("starts", starts), ("rescue_iter", rescue_iter)):
            if value is not None and not multistart:
                raise ConfigError(f"{key} is an option of initial_guess='multistart'; got {key}={value!r} with "
                                  f"initial_guess={initial_guess!r}")
        starts = DEFAULT_STARTS if starts is None else starts
        rescue_iter = DEFAULT_RESCUE_ITER if rescue_iter is None else rescue_iter
        if isinstance(rescue_iter, bool) or not (isinstance(rescue_iter, int) and rescue_iter >= 0):
            raise ConfigError(f"rescue_iter must be an integer >= 0, got {rescue_iter!r}")
        multistart_plan(starts)  # validates starts
        if feas_tol is None:
            feas_tol = MULTISTART_FEAS_TOL if multistart else FEAS_TOL
        for key, value in (("kkt_tol", kkt_tol), ("feas_tol", feas_tol), ("qp_tol", qp_tol)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < 1):
                raise ConfigError(f"{key} must be a number in (0, 1), got {value!r}")
        for key, value in (("max_iter", max_iter), ("batch_size", batch_size)):
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        self.max_iter, self.kkt_tol, self.feas_tol = max_iter, float(kkt_tol), float(feas_tol)
        self.qp_tol, self.initial_guess, self.batch_size = float(qp_tol), initial_guess, batch_size
        self.starts, self.rescue_iter = int(starts), rescue_iter
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.plant = problem.make_plant(torch.float64).to(self.device)
        if multistart and self.starts > 1 and self.plant.name not in GUESS_PLANTS:
            raise ConfigError(f"initial_guess='multistart' with starts={self.starts} has guesses for the plants "
                              f"{GUESS_PLANTS}, got plant {self.plant.name!r}; use starts=1 or another initial_guess")
        self._check_plant = self.plant if self.device.type == "cpu" else problem.make_plant(torch.float64)
        n, m, N = self.plant.state_dim, self.plant.control_dim, problem.horizon
        self.n, self.m, self.N = n, m, N
        Q, R, Qf = problem.weights
        f64 = dict(dtype=torch.float64, device=self.device)
        self._Q, self._R, self._Qf = (torch.as_tensor(a, **f64) for a in (Q, R, Qf))
        bounds = [getattr(self.plant, k).double().cpu().numpy() for k in ("x_min", "x_max", "u_min", "u_max")]
        self._x_lo, self._x_hi, self._u_lo, self._u_hi = (torch.as_tensor(b, **f64) for b in bounds)
        self.layout = QPLayout(N, n, m, *bounds)
        dt = float(problem.dt)
        # Gauss-Newton Hessian = cost Hessian, constant: stage 0 (u_0 only), stages 1..N-1, terminal
        H0 = 2 * dt * R
        Hs = np.kron(np.ones((N - 1, 1, 1)), _block_diag(2 * dt * Q, 2 * dt * R))
        self._P_src = np.concatenate([H0.ravel(), Hs.ravel(), (2 * Qf).ravel()])
        self.diagnostics: dict = {}

    # ------------------------------------------------------------------ public
    def solve(self, x0, target, states_guess=None, controls_guess=None) -> Solution:
        """Solve ``B`` instances.

        Parameters
        ----------
        x0, target : array_like, shape ``(B, n)``
            Initial and target states.
        states_guess : array_like, shape ``(B, N + 1, n)``, optional
            Initial guess of the trajectories (the first state is replaced by ``x0``).
        controls_guess : array_like, shape ``(B, N, m)``, optional
            Initial guess of the controls (clipped to the bounds).

        Returns
        -------
        Solution
            Controls of the SQP; states re-simulated through the float64 plant; costs;
            ``success`` (converged and every check passed); ``status`` (``"converged"`` or the
            reasons of the failure); SQP iterations; wall-clock seconds per instance (a batch's
            time shared equally by its instances). With ``initial_guess="multistart"``: those of
            the returned start (iterations of that start; seconds of all starts), the given
            guesses being the first start; the other starts are in :attr:`diagnostics`.

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
        if self.initial_guess == "multistart":
            return self._solve_multistart(x0, target, states_guess, controls_guess)
        out = self._solve_batches(x0, target, states_guess, controls_guess)
        report = check_solution(
            self.problem, x0, target, out["U"], states=out["X"], solver_status=out["status"],
            solver_success=out["converged"], plant=self._check_plant,
        )
        self.diagnostics = {
            "stationarity": out["stationarity"], "defect": out["defect"], "multipliers": out["lam"],
            "predicted_states": out["X"], "fast_qp_fraction": out["fast_qp_fraction"],
        }
        return assemble_solution(self.problem, target, out["U"], report, out["iterations"], out["times"],
                                 solver_name=self.name)

    def _solve_batches(self, x0, target, states_guess, controls_guess, max_iter: int | None = None,
                       batch_size: int | None = None) -> dict:
        """The SQP on validated arrays, in batches of ``batch_size`` rows (default the option);
        per-row outcomes."""
        n, m, N = self.n, self.m, self.N
        B = x0.shape[0]
        X = np.zeros((B, N + 1, n)); U = np.zeros((B, N, m)); lam = np.zeros((B, N, n))
        iters = np.zeros(B, dtype=np.int64); times = np.zeros(B)
        ok = np.zeros(B, dtype=bool); status = np.empty(B, dtype=object)
        stat = np.full(B, np.nan); defect = np.full(B, np.nan)
        n_fast = n_qp = 0
        given = states_guess is not None or controls_guess is not None
        neighbour = self.initial_guess == "neighbour" and not given
        order = _chain_order(np.concatenate([x0, target], axis=1)) if neighbour else np.arange(B)
        size = self.batch_size if batch_size is None else batch_size
        for start in range(0, B, size):
            idx = order[start:start + size]
            if given:
                Xg = states_guess[idx] if states_guess is not None else straight_line_states(x0[idx], target[idx], N)
                Ug = controls_guess[idx] if controls_guess is not None else np.zeros((idx.size, N, m))
            elif neighbour and ok[order[:start]].any():  # from converged neighbours only
                done = order[:start][ok[order[:start]]]
                Xg, Ug = _neighbour_guess(x0[idx], target[idx], x0[done], target[done], X[done], U[done])
            else:
                Xg, Ug = straight_line_states(x0[idx], target[idx], N), np.zeros((idx.size, N, m))
            t0 = time.perf_counter()
            out = self._sqp(x0[idx], target[idx], Xg, Ug, max_iter)
            times[idx] = (time.perf_counter() - t0) / idx.size
            X[idx], U[idx], lam[idx] = out["X"], out["U"], out["lam"]
            iters[idx], ok[idx], status[idx] = out["iterations"], out["converged"], out["status"]
            stat[idx], defect[idx] = out["stationarity"], out["defect"]
            n_fast += out["fast_qps"]; n_qp += out["qps"]
        return {
            "X": X, "U": U, "lam": lam, "iterations": iters, "times": times, "converged": ok, "status": status,
            "stationarity": stat, "defect": defect, "fast_qp_fraction": n_fast / max(n_qp, 1),
        }

    def _solve_multistart(self, x0, target, states_guess, controls_guess) -> Solution:
        """All starts of all instances in one batched SQP; per instance the best successful start."""
        n, m, N = self.n, self.m, self.N
        B = x0.shape[0]
        plan = multistart_plan(self.starts)
        S = len(plan)
        t0 = time.perf_counter()
        X1 = states_guess if states_guess is not None else straight_line_states(x0, target, N)
        U1 = controls_guess if controls_guess is not None else np.zeros((B, N, m))
        Xg, Ug = X1[None], U1[None]
        if S > 1:
            with torch.no_grad():
                Xp, Up = energy_pumping_guesses(self.plant, x0, target, N, [p[1] for p in plan[1:]],
                                                [p[2] for p in plan[1:]])
            Xg, Ug = np.concatenate([Xg, Xp]), np.concatenate([Ug, Up])
        guess_time = (time.perf_counter() - t0) / B
        # rows instance-major: row i * S + s is start s of instance i, so a batch holds all the
        # starts of batch_size instances
        x0_all, target_all = np.repeat(x0, S, axis=0), np.repeat(target, S, axis=0)
        Xg, Ug = Xg.swapaxes(0, 1).reshape(B * S, N + 1, n), Ug.swapaxes(0, 1).reshape(B * S, N, m)
        out = self._solve_batches(x0_all, target_all, Xg, Ug, batch_size=self.batch_size * S)
        J, good = self._judge(x0_all, target_all, out)
        J, good = J.reshape(B, S).T, good.reshape(B, S).T
        # rescue: where no start succeeded, continue the start that ran out of iterations with the
        # smallest stationarity residual (Gauss-Newton converges linearly, slowly where the
        # multipliers are large: near long balancing at an unstable equilibrium)
        rescued = np.zeros(B, dtype=bool)
        slow = (out["status"] == _NOT_CONVERGED).reshape(B, S).T
        inst = np.flatnonzero(~good.any(0) & slow.any(0))
        if inst.size and self.rescue_iter > 0:
            pick = np.argmin(np.where(slow, out["stationarity"].reshape(B, S).T, np.inf), axis=0)[inst]
            r = inst * S + pick
            more = self._solve_batches(x0[inst], target[inst], out["X"][r], out["U"][r], self.rescue_iter)
            for key in ("X", "U", "lam", "converged", "status", "stationarity", "defect"):
                out[key][r] = more[key]
            out["iterations"][r] += more["iterations"]
            out["times"][r] += more["times"]
            rescued[inst] = True
            J, good = self._judge(x0_all, target_all, out)
            J, good = J.reshape(B, S).T, good.reshape(B, S).T
        fallback = np.zeros(B, dtype=np.int64)  # returned where no start succeeded: the first, or the rescued
        if rescued.any():
            fallback[inst] = pick
        winner = np.where(good.any(0), np.argmin(np.where(good, J, np.inf), axis=0), fallback)
        rows = np.arange(B) * S + winner
        report_sel = check_solution(
            self.problem, x0, target, out["U"][rows], states=out["X"][rows], solver_status=out["status"][rows],
            solver_success=out["converged"][rows], plant=self._check_plant,
        )
        J_first, J_best = J[0], J[winner, np.arange(B)]
        beats = good[winner, np.arange(B)] & (~good[0] | (J_best < J_first - 1e-8 * np.abs(J_first)))
        times = out["times"].reshape(B, S).sum(1) + guess_time
        self.diagnostics = {
            "stationarity": out["stationarity"][rows], "defect": out["defect"][rows],
            "multipliers": out["lam"][rows], "predicted_states": out["X"][rows],
            "fast_qp_fraction": out["fast_qp_fraction"],
            "start": winner, "start_names": [p[0] for p in plan], "start_costs": np.where(good, J, np.nan).T,
            "start_success": good.T, "start_iterations": out["iterations"].reshape(B, S),
            "beats_first": beats, "rescued": rescued,
        }
        return assemble_solution(self.problem, target, out["U"][rows], report_sel, out["iterations"][rows], times,
                                 solver_name=self.name)

    def _judge(self, x0, target, out) -> tuple[np.ndarray, np.ndarray]:
        """Re-simulated cost ``J (R,)`` (NaN where unusable) and success ``(R,)`` of SQP outcomes."""
        report = check_solution(
            self.problem, x0, target, out["U"], states=out["X"], solver_status=out["status"],
            solver_success=out["converged"], plant=self._check_plant,
        )
        J = np.full(x0.shape[0], np.nan)
        good = report.success & np.isfinite(report.states).all(axis=(1, 2))
        if good.any():
            with torch.no_grad():
                J[good] = self.problem.cost_of(
                    torch.from_numpy(report.states[good]), torch.from_numpy(out["U"][good]),
                    torch.from_numpy(target[good]),
                ).numpy()
        return J, good

    # ------------------------------------------------------------------ SQP
    def _cost(self, X, U, xt):
        """``J (B,)`` and its gradient w.r.t. ``x_1 .. x_N`` ``(B, N, n)`` and ``u`` ``(B, N, m)``."""
        dt = float(self.problem.dt)
        e = X - xt[:, None]
        Qe, Ru, Qfe = e[:, :-1] @ self._Q, U @ self._R, e[:, -1] @ self._Qf
        J = dt * ((Qe * e[:, :-1]).sum((1, 2)) + (Ru * U).sum((1, 2))) + (Qfe * e[:, -1]).sum(1)
        return J, torch.cat([2 * dt * Qe[:, 1:], 2 * Qfe[:, None]], dim=1), 2 * dt * Ru

    def _defects(self, X, U):
        """``x_{k+1} - F(x_k, u_k)`` ``(B, N, n)`` of trajectories ``X (B, N + 1, n)``, ``U (B, N, m)``."""
        F = self.plant.step(X[:, :-1].reshape(-1, self.n), U.reshape(-1, self.m))
        return X[:, 1:] - F.reshape(X.shape[0], self.N, self.n)

    def _sqp(self, x0, target, Xg, Ug, max_iter: int | None = None):
        """Run the SQP on one batch (``max_iter`` iterations, default the option); returns numpy
        arrays and per-instance outcomes."""
        n, m, N, L, dev = self.n, self.m, self.N, self.layout, self.device
        f64 = dict(dtype=torch.float64, device=dev)
        Bsz = x0.shape[0]
        X = torch.as_tensor(Xg, **f64).clone()
        X[:, 0] = torch.as_tensor(x0, **f64)
        X[:, 1:] = torch.minimum(torch.maximum(X[:, 1:], self._x_lo), self._x_hi)
        U = torch.minimum(torch.maximum(torch.as_tensor(Ug, **f64), self._u_lo), self._u_hi)
        xt = torch.as_tensor(target, **f64)
        lam = torch.zeros(Bsz, N, n, **f64)
        active = np.zeros((Bsz, L.nw), dtype=np.int8)
        known = np.zeros(Bsz, dtype=bool)  # has an active-set prediction
        running = np.ones(Bsz, dtype=bool)
        converged = np.zeros(Bsz, dtype=bool)
        status = np.array([_NOT_CONVERGED] * Bsz, dtype=object)
        iterations = np.zeros(Bsz, dtype=np.int64)
        stat_out = np.full(Bsz, np.inf); defect_out = np.full(Bsz, np.inf)
        alphas = torch.tensor([0.5**i for i in range(16)], **f64)
        eps = torch.finfo(torch.float64).eps
        fast_qps = qps = 0

        for _ in range(self.max_iter if max_iter is None else max_iter):
            a = np.flatnonzero(running)
            if a.size == 0:
                break
            at = torch.as_tensor(a, device=dev)
            Xa, Ua, xta = X[at], U[at], xt[at]
            Ba = a.size
            F, Ak, Bk = _linearize(self.plant, Xa[:, :-1].reshape(-1, n), Ua.reshape(-1, m))
            c = Xa[:, 1:] - F.reshape(Ba, N, n)  # defects
            J, gx, gu = self._cost(Xa, Ua, xta)
            A_src = L.constraint_sources(Ak.reshape(Ba, N, n, n).cpu().numpy(), Bk.reshape(Ba, N, n, m).cpu().numpy())
            w = L.pack(Xa[:, 1:].cpu().numpy(), Ua.cpu().numpy())
            q = L.pack(gx.cpu().numpy(), gu.cpu().numpy())
            b = L.rhs((-c).reshape(Ba, -1).cpu().numpy(), w)
            # predicted active bounds: the previous QP's (none before the first); the fast path
            # is verified against the QP's KKT conditions, so a wrong prediction costs only time
            pred = np.where(known[a][:, None], active[a], 0).astype(np.int8)
            res = L.solve(self._P_src, q, A_src, b, w, pred, self.qp_tol)
            iterations[a] += 1
            qps += Ba; fast_qps += int(res.fast.sum())
            active[a] = L.active_set(res.z, b, res.d)
            known[a] = res.ok

            # ---- KKT test at the current iterate: grad_z L = -H d (QP stationarity)
            lam_qp = torch.as_tensor(res.z[:, : N * n], **f64).reshape(Ba, N, n)
            Hd = torch.as_tensor(_hess_vec(L, self._P_src, res.d), **f64)
            g_inf = torch.cat([gx.reshape(Ba, -1), gu.reshape(Ba, -1)], 1).abs().amax(1)
            stat = (Hd.abs().amax(1) / g_inf.clamp_min(1.0)).cpu().numpy()
            defect = c.abs().amax((1, 2)).cpu().numpy()
            stat_out[a], defect_out[a] = stat, defect
            done = res.ok & (stat <= self.kkt_tol) & (defect <= self.feas_tol)
            failed = ~res.ok
            status[a[failed]] = "QP subproblem not solved"
            converged[a[done]] = True
            status[a[done]] = "converged"
            lam[at[torch.as_tensor(done)]] = lam_qp[torch.as_tensor(done)]
            running[a[done | failed]] = False
            go = np.flatnonzero(~done & res.ok)
            if go.size == 0:
                continue

            # ---- line search on the l1 merit function, all trial steps of all instances at once
            g_ = torch.as_tensor(go, device=dev)
            ag = at[g_]
            # penalty just above the dual norm of the QP multipliers (so that d is a descent
            # direction, Nocedal & Wright Thm. 18.2); it follows the multipliers down as well, so
            # the large multipliers of a poor initial guess do not block full steps later on
            nu_g = 1.1 * lam_qp[g_].abs().amax((1, 2)) + 1e-6
            dX, dU = (torch.as_tensor(v, **f64) for v in L.unpack(res.d[go]))
            Xg_, Ug_, cg = Xa[g_], Ua[g_], c[g_]
            viol = cg.abs().sum((1, 2))
            phi0 = J[g_] + nu_g * viol
            slope = (gx[g_] * dX).sum((1, 2)) + (gu[g_] * dU).sum((1, 2)) - nu_g * viol
            # trial step lengths in two rounds: 1 .. 1/8 for everybody, the rest where none passed
            Ng = go.size
            accept = torch.zeros(Ng, alphas.numel(), dtype=torch.bool, device=dev)
            tiny = slope.abs() <= 1e3 * eps * (phi0.abs() + 1.0)
            todo = torch.arange(Ng, device=dev)
            for lo_, hi_ in ((0, 4), (4, alphas.numel())):
                if todo.numel() == 0:
                    break
                al = alphas[lo_:hi_]
                Nt, Na = todo.numel(), al.numel()
                Xt = Xg_[todo][:, None].repeat(1, Na, 1, 1)
                Xt[:, :, 1:] += al[None, :, None, None] * dX[todo][:, None]
                Ut = Ug_[todo][:, None] + al[None, :, None, None] * dU[todo][:, None]
                Xt, Ut = Xt.reshape(Nt * Na, N + 1, n), Ut.reshape(Nt * Na, N, m)
                Jt, _, _ = self._cost(Xt, Ut, xta[g_][todo].repeat_interleave(Na, 0))
                ct = self._defects(Xt, Ut).reshape(Nt, Na, N, n)
                phi = Jt.reshape(Nt, Na) + nu_g[todo, None] * ct.abs().sum((2, 3))
                ok_t = phi <= phi0[todo, None] + 1e-4 * al[None] * slope[todo, None]
                if lo_ == 0:
                    # Near a solution the predicted decrease falls below the rounding error of
                    # the merit function: the full step is then taken (a Newton-type step).
                    ok_t[:, 0] |= tiny[todo]
                accept[todo, lo_:hi_] = ok_t
                todo = todo[~ok_t.any(1)]
            found = accept.any(1)
            first = torch.where(found, accept.to(torch.int8).argmax(1), torch.zeros_like(found, dtype=torch.long))
            alpha = alphas[first]
            stuck = ~found.cpu().numpy()
            if stuck.any():  # no decrease of the merit function at any step length
                status[a[go[stuck]]] = "line search failed"
                running[a[go[stuck]]] = False
            alpha = torch.where(found, alpha, torch.zeros_like(alpha))
            X[ag, 1:] = torch.minimum(torch.maximum(Xg_[:, 1:] + alpha[:, None, None] * dX, self._x_lo), self._x_hi)
            U[ag] = torch.minimum(torch.maximum(Ug_ + alpha[:, None, None] * dU, self._u_lo), self._u_hi)
            lam[ag] = lam[ag] + alpha[:, None, None] * (lam_qp[g_] - lam[ag])
        return {
            "X": X.cpu().numpy(), "U": U.cpu().numpy(), "lam": lam.cpu().numpy(), "iterations": iterations,
            "converged": converged, "status": status, "stationarity": stat_out, "defect": defect_out,
            "fast_qps": fast_qps, "qps": qps,
        }


def _hess_vec(L: QPLayout, P_src: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``H d`` for the block-diagonal Gauss-Newton Hessian; ``d (B, nw)``."""
    n, m, N, s = L.n, L.m, L.N, L.n + L.m
    out = np.zeros_like(d)
    H0 = P_src[: m * m].reshape(m, m)
    Hs = P_src[m * m: m * m + (N - 1) * s * s].reshape(N - 1, s, s)
    Hf = P_src[m * m + (N - 1) * s * s:].reshape(n, n)
    out[:, L.u_idx[0]] = d[:, L.u_idx[0]] @ H0.T
    out[:, L.stage_idx] = np.einsum("kij,bkj->bki", Hs, d[:, L.stage_idx])
    out[:, L.x_idx[-1]] = d[:, L.x_idx[-1]] @ Hf.T
    return out


def _block_diag(*blocks) -> np.ndarray:
    size = sum(b.shape[0] for b in blocks)
    out = np.zeros((size, size))
    i = 0
    for blk in blocks:
        k = blk.shape[0]
        out[i:i + k, i:i + k] = blk
        i += k
    return out


def straight_line_states(x0: np.ndarray, target: np.ndarray, N: int) -> np.ndarray:
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
