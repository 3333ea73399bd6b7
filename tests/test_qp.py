"""Tests of the ``qp`` solver: constrained LQ optimal control with cvxpy.

Optimality is checked against scipy.optimize on the condensed problem (the states
eliminated; bounded-variable least squares and SLSQP), an independent formulation and
algorithm, by the KKT conditions, and against a second QP backend.
"""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import scipy.optimize
import torch

from dynamics import ConfigError, DimensionError, InfeasibleError, TRCError, UncontrollableError
from trc.generators import make_solver
from trc.generators.checks import failure_counts
from trc.problem import Problem

DT = 0.33


def di_problem(horizon: int = 15, **plant) -> Problem:
    return Problem(
        name="di", plant={"name": "double_integrator", **plant}, dt=DT, horizon=horizon,
        initial_state={"low": [-2, -2], "high": [2, 2]}, target_state={"low": [-2, -2], "high": [2, 2]},
        Q=[10, 5], R=[0.1], Qf_scale=20,
    )


def condensed(problem, x0, target):
    """``J(U) = U' H U + 2 g' U + const`` and ``X = S U + s`` (stacked x_1..x_N) for one instance."""
    N = problem.horizon
    A = np.array([[1.0, DT], [0.0, 1.0]])
    B = np.array([[DT**2 / 2], [DT]])
    S = np.zeros((2 * N, N))
    s = np.zeros(2 * N)
    for k in range(1, N + 1):
        s[2 * (k - 1):2 * k] = np.linalg.matrix_power(A, k) @ x0
        for j in range(k):
            S[2 * (k - 1):2 * k, j] = (np.linalg.matrix_power(A, k - 1 - j) @ B)[:, 0]
    Q, R, Qf = problem.weights
    W = np.kron(np.eye(N), DT * Q)
    W[-2:, -2:] = Qf
    e = s - np.tile(target, N)
    H = S.T @ W @ S + DT * R[0, 0] * np.eye(N)
    g = S.T @ W @ e
    const = e @ W @ e + (x0 - target) @ (DT * Q) @ (x0 - target)
    return H, g, const, S, s


def scipy_reference(problem, x0, target, u_max, v_max=None):
    """Minimise the condensed cost with scipy.

    Control bounds only: bounded-variable least squares (``lsq_linear(method="bvls")``, an
    active-set method exact to rounding) on ``||L' U + L^{-1} g||^2`` with ``H = L L'``.
    With state bounds: SLSQP.
    """
    H, g, const, S, s = condensed(problem, x0, target)
    N = problem.horizon
    fun = lambda U: U @ H @ U + 2 * g @ U + const  # noqa: E731
    jac = lambda U: 2 * (H @ U + g)  # noqa: E731
    bounds = [(-u_max, u_max)] * N
    if v_max is None:
        L = np.linalg.cholesky(H)
        res = scipy.optimize.lsq_linear(L.T, -np.linalg.solve(L, g), bounds=(-u_max, u_max), method="bvls", tol=1e-14)
        assert res.success, res.message
        return res.x, fun(res.x)
    else:
        Sv, sv = S[1::2], s[1::2]  # velocities: v_max - (Sv U + sv) >= 0 and v_max + ... >= 0
        cons = [{"type": "ineq", "fun": lambda U: v_max - Sv @ U - sv, "jac": lambda U: -Sv},
                {"type": "ineq", "fun": lambda U: v_max + Sv @ U + sv, "jac": lambda U: Sv}]
        res = scipy.optimize.minimize(fun, np.zeros(N), jac=jac, method="SLSQP", bounds=bounds, constraints=cons,
                                      options={"ftol": 1e-10, "maxiter": 1000})
        # Status 8 ("positive directional derivative for linesearch"): SLSQP cannot descend any
        # further, which on this convex QP happens at the optimum to rounding (it depends on the
        # BLAS thread count); the caller's cost comparison still catches an early stop.
        assert res.success or res.status == 8, res.message
        assert min(c["fun"](res.x).min() for c in cons) >= -1e-8 and np.abs(res.x).max() <= u_max + 1e-9
    return res.x, res.fun


def kkt_violation(problem, x0, target, U, u_max):
    """Largest violation of the KKT conditions of the box-constrained condensed QP at ``U``.

    For a convex QP they certify optimality: the gradient vanishes on free controls, points
    outwards (``<= 0`` at ``u_max``, ``>= 0`` at ``-u_max``) on saturated ones.
    """
    H, g, *_ = condensed(problem, x0, target)
    grad = 2 * (H @ U + g)
    upper, lower = U >= u_max - 1e-7, U <= -u_max + 1e-7
    free = ~(upper | lower)
    parts = [np.abs(grad[free]), np.maximum(grad[upper], 0), np.maximum(-grad[lower], 0)]
    return max((p.max() if p.size else 0.0) for p in parts)


# ---------------------------------------------------------------------- optimality
def test_active_control_bounds_are_respected_and_optimal():
    problem = di_problem(u_min=-1.5, u_max=1.5)
    x0, target = problem.sample(12, seed=0)
    sol = make_solver("qp", problem).solve(x0, target)
    assert sol.success.all(), sol.status
    assert (np.abs(sol.controls) <= 1.5).all()
    active = np.isclose(np.abs(sol.controls), 1.5, atol=1e-7).any(axis=(1, 2))
    assert active.sum() >= 6  # most instances saturate
    for i in range(len(x0)):
        assert kkt_violation(problem, x0[i], target[i], sol.controls[i, :, 0], 1.5) < 1e-6
        U_ref, J_ref = scipy_reference(problem, x0[i], target[i], 1.5)
        assert sol.costs[i] == pytest.approx(J_ref, rel=1e-9)
        np.testing.assert_allclose(sol.controls[i, :, 0], U_ref, atol=1e-6)


def test_state_bounds_active_match_slsqp_and_second_backend():
    problem = di_problem(u_min=-4, u_max=4, x_min=[-math.inf, -1.0], x_max=[math.inf, 1.0])
    x0, target = problem.sample(16, seed=1)
    x0[:, 1] = np.clip(x0[:, 1], -1, 1)  # start inside the velocity bound
    clarabel = make_solver("qp", problem).solve(x0, target)
    osqp = make_solver("qp", problem, backend="OSQP", force_qp=True).solve(x0, target)
    assert clarabel.success.all() and osqp.success.all(), (clarabel.status, osqp.status)
    assert (np.abs(clarabel.states[:, :, 1]) <= 1.0 + 1e-7).all()
    assert np.isclose(np.abs(clarabel.states[:, 1:, 1]), 1.0, atol=1e-6).any(axis=1).sum() >= 4
    np.testing.assert_allclose(clarabel.costs, osqp.costs, rtol=1e-8)
    np.testing.assert_allclose(clarabel.controls, osqp.controls, atol=1e-6)
    for i in range(4):
        U_ref, J_ref = scipy_reference(problem, x0[i], target[i], 4.0, v_max=1.0)
        assert clarabel.costs[i] == pytest.approx(J_ref, rel=1e-7)


def test_fast_path_is_exact():
    """LQR-feasible instances keep the LQR solution, which equals the forced QP's."""
    problem = di_problem(u_min=-4, u_max=4)
    x0, target = problem.sample(40, seed=2)
    fast = make_solver("qp", problem).solve(x0, target)
    forced = make_solver("qp", problem, force_qp=True).solve(x0, target)
    unconstrained = fast.status == "optimal (unconstrained)"
    assert 0 < unconstrained.sum() < 40
    assert set(fast.status[~unconstrained]) == {"optimal"} and set(forced.status) == {"optimal"}
    assert fast.success.all() and forced.success.all()
    np.testing.assert_allclose(fast.controls, forced.controls, atol=1e-6)
    np.testing.assert_allclose(fast.costs, forced.costs, rtol=1e-9)
    lqr = make_solver("lqr", problem).solve(x0, target)
    np.testing.assert_array_equal(fast.controls[unconstrained], lqr.controls[unconstrained])


def test_problem_is_dpp_and_built_once():
    solver = make_solver("qp", di_problem(u_min=-1, u_max=1))
    assert solver.qp.is_dpp()
    qp_before = solver.qp
    solver.solve(*di_problem().sample(3, seed=0))
    assert solver.qp is qp_before
    assert {p.name() for p in solver.qp.parameters()} == {"x0", "target"}


# ---------------------------------------------------------------------- infeasibility
def test_impossible_state_bound_raises_infeasible():
    problem = di_problem(u_min=-4, u_max=4, x_min=[-math.inf, 5.0], x_max=[math.inf, 6.0])
    with pytest.raises(InfeasibleError, match="infeasible: no initial state"):
        make_solver("qp", problem)


def test_reversed_bounds_are_caught_when_the_plant_is_built():
    with pytest.raises((ValueError, TRCError), match="exceeds"):
        di_problem(u_min=4, u_max=-4)


def test_infeasible_instances_are_reported_per_instance():
    problem = di_problem(u_min=-1, u_max=1, x_min=[-math.inf, -0.3], x_max=[math.inf, 0.3])
    solver = make_solver("qp", problem)  # feasible for x0 with small velocity
    x0 = np.array([[0.0, 1.9], [0.0, 0.1], [1.0, -0.2]])  # the first cannot brake in one step
    target = np.zeros((3, 2))
    sol = solver.solve(x0, target)
    assert sol.success.tolist() == [False, True, True]
    assert sol.status[0] == "solver: infeasible"
    assert np.isnan(sol.controls[0]).all() and np.isnan(sol.costs[0])
    assert failure_counts(sol.status, sol.success) == {"solver": 1}


def linear_problem(B) -> Problem:
    """``x1' = u``-like plants with a second state ``x2' = -x2`` that ``B`` may or may not drive."""
    return Problem(
        name="lin", plant={"name": "linear", "A": [[0.0, 0.0], [0.0, -1.0]], "B": B, "u_min": -1.0, "u_max": 1.0},
        dt=0.1, horizon=10, initial_state={"low": [-1, -1], "high": [1, 1]},
        target_state={"low": [-0.5, -0.5], "high": [0.5, 0.5]}, Q=[1, 1], R=[0.1], Qf_scale=10,
    )


def test_uncontrollable_plant_raises_like_lqr(tmp_path):
    """With B = (1, 0)' the second state decays whatever the control: its targets are out of
    reach, yet every QP solution would pass the checks. The solver refuses the problem with the
    lqr solver's error, so no such sample is ever stored as optimal."""
    from trc.generators.config import GeneratorConfig
    from trc.generators.pipeline import generate

    A, B = np.array([[0.0, 0.0], [0.0, -1.0]]), np.array([[1.0], [0.0]])
    assert np.linalg.matrix_rank(np.hstack([B, A @ B])) == 1  # independent reference: [B, AB]
    problem = linear_problem(B.tolist())
    with pytest.raises(UncontrollableError, match=r"^qp: plant 'linear': .* has rank 1; expected 2") as qp_error:
        make_solver("qp", problem)
    with pytest.raises(UncontrollableError) as lqr_error:
        make_solver("lqr", problem)
    assert str(qp_error.value).removeprefix("qp") == str(lqr_error.value).removeprefix("lqr")
    out = tmp_path / "unctrb.h5"
    with pytest.raises(UncontrollableError):
        generate(problem, GeneratorConfig(solver="qp", num_samples=50, chunk_size=50), out=out, workers=1,
                 progress=False)
    assert not out.exists()
    # driving both states makes the same system controllable: the check lets it through
    controllable = linear_problem([[1.0], [1.0]])
    sol = make_solver("qp", controllable).solve(*controllable.sample(4, seed=0))
    assert sol.success.all(), sol.status


def test_bad_options_and_inputs():
    problem = di_problem(u_min=-1, u_max=1)
    with pytest.raises(ConfigError, match="backend 'GUROBI' is not supported"):
        make_solver("qp", problem, backend="GUROBI")
    with pytest.raises(ConfigError, match="unknown option"):
        make_solver("qp", problem, eps=1e-3)
    solver = make_solver("qp", problem)
    with pytest.raises(DimensionError):
        solver.solve(np.zeros((2, 3)), np.zeros((2, 3)))
    fuel = Problem(
        name="rocket", plant={"name": "rocket"}, dt=1.0, horizon=5, cost="fuel",
        initial_state={"low": [0] * 6 + [1900], "high": [0] * 6 + [1900]},
        target_state={"low": [0] * 7, "high": [0] * 7},
    )
    with pytest.raises(ConfigError, match="quadratic"):
        make_solver("qp", fuel)
    assert "OSQP" in cp.installed_solvers()  # the second backend the tests rely on
    assert torch.get_default_dtype() == torch.float32  # the solvers did not change it
