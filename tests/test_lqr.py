"""Tests of the ``lqr`` solver, its Riccati helpers and the shared solution checks.

References are independent of the implementation: scipy's algebraic Riccati solvers and
python-control's ``dlqr``, a dense batch least-squares solution of the same problem (no
Riccati recursion), an analytic zero-order-hold discretisation, and a cvxpy QP.
"""

from __future__ import annotations

import time

import control as ct
import numpy as np
import pytest
import scipy.linalg
import torch

import dynamics
from dynamics import (
    ConfigError,
    DimensionError,
    NonFiniteError,
    UncontrollableError,
    UnknownNameError,
)
from trc.generators import make_solver, solver_names
from trc.generators.checks import Tolerances, check_solution, failure_counts
from trc.generators.lqr import (
    FiniteHorizonLQR,
    check_controllable,
    exact_discretization,
    infinite_horizon_gain,
)
from trc.problem import Problem

GRAVITY = 9.81


def di_problem(horizon: int = 15, **plant) -> Problem:
    """The standard double-integrator problem (targets need not be equilibria)."""
    return Problem(
        name="di", plant={"name": "double_integrator", **plant}, dt=0.33, horizon=horizon,
        initial_state={"low": [-2, -2], "high": [2, 2]}, target_state={"low": [-2, -2], "high": [2, 2]},
        Q=[10, 5], R=[0.1], Qf_scale=20,
    )


class FallingMass(dynamics.Plant):
    """Affine test plant ``h'' = u - g``: the LQR's drift term ``c`` is non-zero."""

    name = "falling_mass_test"
    state_names = ("height", "velocity")
    state_units = ("m", "m/s")
    control_names = ("thrust",)
    control_units = ("m/s^2",)

    def f(self, x, u):
        return torch.stack((x[:, 1], u[:, 0] - GRAVITY), dim=-1)


@pytest.fixture
def falling_mass(monkeypatch):
    """Register :class:`FallingMass` for one test only (the registry is restored after)."""
    monkeypatch.setitem(dynamics.registry.PLANTS._items, FallingMass.name, FallingMass)
    return Problem(
        name="falling", plant={"name": FallingMass.name}, dt=0.2, horizon=12,
        initial_state={"low": [5, -1], "high": [10, 1]}, target_state={"low": [0, -0.5], "high": [1, 0.5]},
        Q=[[3.0, 0.5], [0.5, 1.0]], R=[0.2], Qf=[[40.0, 0.0], [0.0, 10.0]],
    )


def least_squares_lqr(A, B, c, Qd, Rd, Qf, N, x0, target):
    """Dense reference: minimise the cost over the stacked controls by one linear solve."""
    n, m = B.shape
    Sx = np.zeros(((N + 1) * n, n))
    Su = np.zeros(((N + 1) * n, N * m))
    Sc = np.zeros((N + 1) * n)
    Ak = np.eye(n)
    for k in range(N + 1):
        Sx[k * n:(k + 1) * n] = Ak
        Ak = A @ Ak
        for j in range(k):
            Aj = np.linalg.matrix_power(A, k - 1 - j)
            Su[k * n:(k + 1) * n, j * m:(j + 1) * m] = Aj @ B
            Sc[k * n:(k + 1) * n] += Aj @ c
    Qbar = scipy.linalg.block_diag(*([Qd] * N + [Qf]))
    Rbar = scipy.linalg.block_diag(*([Rd] * N))
    offset = x0 @ Sx.T + Sc - np.tile(target, (1, N + 1))  # (batch, (N+1) n)
    H = Su.T @ Qbar @ Su + Rbar
    U = -np.linalg.solve(H, Su.T @ Qbar @ offset.T).T
    X = offset + np.tile(target, (1, N + 1)) + U @ Su.T
    cost = np.einsum("bi,ij,bj->b", X - np.tile(target, (1, N + 1)), Qbar, X - np.tile(target, (1, N + 1)))
    cost += np.einsum("bi,ij,bj->b", U, Rbar, U)
    return U.reshape(-1, N, m), X.reshape(-1, N + 1, n), cost


# ---------------------------------------------------------------------- discretisation
def test_double_integrator_discretisation_is_analytic():
    plant = di_problem().make_plant(torch.float64)
    A, B, c = exact_discretization(plant)
    dt = 0.33
    np.testing.assert_allclose(A, [[1, dt], [0, 1]], atol=1e-14)
    np.testing.assert_allclose(B, [[dt**2 / 2], [dt]], atol=1e-14)
    np.testing.assert_allclose(c, 0, atol=1e-14)
    # RK4 integrates the double integrator exactly: the plant's own map agrees.
    for got, want in zip(exact_discretization(plant, "plant"), (A, B, c)):
        np.testing.assert_allclose(got, want, atol=1e-14)


def test_affine_discretisation_matches_analytic_drift(falling_mass):
    A, B, c = exact_discretization(falling_mass.make_plant(torch.float64))
    dt = 0.2
    np.testing.assert_allclose(A, [[1, dt], [0, 1]], atol=1e-14)
    np.testing.assert_allclose(B, [[dt**2 / 2], [dt]], atol=1e-14)
    np.testing.assert_allclose(c, [-GRAVITY * dt**2 / 2, -GRAVITY * dt], atol=1e-13)


def test_linear_plant_discretisation_matches_c2d():
    A = [[0.0, 1.0], [-2.0, -0.5]]
    plant = dynamics.make("linear", A=A, B=[[0.0], [1.0]], dt=0.1).double()
    Ad, Bd, c = exact_discretization(plant)
    ref = ct.c2d(ct.ss(A, [[0.0], [1.0]], np.eye(2), 0), 0.1, "zoh")
    np.testing.assert_allclose(Ad, ref.A, atol=1e-14)
    np.testing.assert_allclose(Bd, ref.B, atol=1e-14)
    np.testing.assert_allclose(c, 0, atol=0)


def test_nonlinear_and_non_differentiable_plants_are_rejected():
    vdp = Problem(
        name="vdp", plant={"name": "van_der_pol"}, dt=0.1, horizon=10,
        initial_state={"low": [-1, -1], "high": [1, 1]}, target_state={"low": [0, 0], "high": [0, 0]},
    )
    with pytest.raises(ConfigError, match="van_der_pol.*not linear"):
        make_solver("lqr", vdp)
    with pytest.raises(ConfigError, match="discretization must be"):
        exact_discretization(di_problem().make_plant(torch.float64), "euler")


# ---------------------------------------------------------------------- Riccati
def test_long_horizon_gains_converge_to_dlqr():
    plant = di_problem().make_plant(torch.float64)
    A, B, _ = exact_discretization(plant)
    Q, R, _ = di_problem().weights
    Qd, Rd = 0.33 * Q, 0.33 * R
    lqr = FiniteHorizonLQR.from_matrices(A, B, Qd, Rd, np.zeros((2, 2)), horizon=400)
    K_ref, S_ref, _ = ct.dlqr(A, B, Qd, Rd)
    P_are = scipy.linalg.solve_discrete_are(A, B, Qd, Rd)
    np.testing.assert_allclose(lqr.K[0], K_ref, rtol=1e-9)
    np.testing.assert_allclose(lqr.P[0], P_are, rtol=1e-9)
    # With the stationary P as terminal weight, every gain is the stationary one.
    lqr = FiniteHorizonLQR.from_matrices(A, B, Qd, Rd, P_are, horizon=20)
    np.testing.assert_allclose(lqr.K, np.broadcast_to(K_ref, lqr.K.shape), rtol=1e-9, atol=1e-12)


def test_finite_horizon_matches_dense_least_squares_with_drift_and_terminal_cost(falling_mass):
    """Affine dynamics, cross-weighted Q and a separate Qf against an independent solve."""
    solver = make_solver("lqr", falling_mass)
    x0, target = falling_mass.sample(64, seed=3)
    Q, R, Qf = falling_mass.weights
    lqr = solver.lqr
    U_ref, X_ref, J_ref = least_squares_lqr(lqr.A, lqr.B, lqr.c, 0.2 * Q, 0.2 * R, Qf, 12, x0, target)
    for controls, states in (lqr.trajectories(x0, target), lqr.recursive_trajectories(x0, target)):
        np.testing.assert_allclose(controls, U_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(states, X_ref, rtol=1e-9, atol=1e-9)
    sol = solver.solve(x0, target)
    assert sol.success.all() and set(sol.status) == {"optimal"}
    np.testing.assert_allclose(sol.controls, U_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sol.states, X_ref, rtol=1e-9, atol=1e-9)  # simulated == predicted
    np.testing.assert_allclose(sol.costs, J_ref, rtol=1e-9)
    # The reported cost is the problem's own (trc.cost) on the simulated states.
    np.testing.assert_allclose(sol.costs, lqr.cost(X_ref, U_ref, target), rtol=1e-12)


def test_solution_is_a_minimum_of_the_trc_cost():
    """Perturbing the optimal controls in any direction increases the problem's cost."""
    problem = di_problem()
    solver = make_solver("lqr", problem)
    x0, target = problem.sample(8, seed=0)
    sol = solver.solve(x0, target)
    plant = problem.make_plant(torch.float64)
    rng = np.random.default_rng(0)
    for _ in range(5):
        du = 1e-3 * rng.standard_normal(sol.controls.shape)
        u = torch.from_numpy(sol.controls + du)
        states = plant.rollout(torch.from_numpy(x0), u)
        worse = problem.cost_of(states, u, torch.from_numpy(target)).numpy()
        assert (worse > sol.costs).all()


def test_infinite_horizon_gain_matches_scipy_are():
    A = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -2.0, -1.5]])
    B = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    Q, R = np.diag([3.0, 1.0, 0.5]), np.array([[1.0, 0.2], [0.2, 0.5]])
    K, P, E = infinite_horizon_gain(A, B, Q, R)
    P_ref = scipy.linalg.solve_continuous_are(A, B, Q, R)
    np.testing.assert_allclose(P, P_ref, rtol=1e-8)
    np.testing.assert_allclose(K, np.linalg.solve(R, B.T @ P_ref), rtol=1e-8)
    assert (np.real(E) < 0).all()
    sysd = ct.c2d(ct.ss(A, B, np.eye(3), 0), 0.1)
    Kd, Pd, Ed = infinite_horizon_gain(sysd.A, sysd.B, Q, R, dt=0.1)
    Pd_ref = scipy.linalg.solve_discrete_are(sysd.A, sysd.B, Q, R)
    np.testing.assert_allclose(Pd, 0.1 * Pd_ref, rtol=1e-8)  # TRC weights dt Q, dt R
    Ad, Bd = sysd.A, sysd.B
    np.testing.assert_allclose(Kd, np.linalg.solve(R + Bd.T @ Pd_ref @ Bd, Bd.T @ Pd_ref @ Ad), rtol=1e-8)
    assert (np.abs(Ed) < 1).all()


# ---------------------------------------------------------------------- against the QP
def test_lqr_equals_cvxpy_qp_when_bounds_are_inactive():
    problem = di_problem(u_min=-1000, u_max=1000)
    x0, target = problem.sample(20, seed=1)
    sol_lqr = make_solver("lqr", problem).solve(x0, target)
    sol_qp = make_solver("qp", problem, force_qp=True).solve(x0, target)
    assert sol_lqr.success.all() and sol_qp.success.all()
    assert set(sol_qp.status) == {"optimal"}  # solved by cvxpy, not the fast path
    scale = np.abs(sol_lqr.controls).max()
    np.testing.assert_allclose(sol_qp.controls, sol_lqr.controls, atol=1e-6 * scale)
    np.testing.assert_allclose(sol_qp.costs, sol_lqr.costs, rtol=1e-6)


# ---------------------------------------------------------------------- bounds and checks
def test_bound_violations_are_reported_not_kept():
    problem = di_problem(u_min=-4, u_max=4)
    x0, target = problem.sample(200, seed=2)
    sol = make_solver("lqr", problem).solve(x0, target)
    outside = (np.abs(sol.controls) > 4 * (1 + 1e-6) + 1e-9).any(axis=(1, 2))
    assert 0 < outside.sum() < 200  # the test covers both cases
    np.testing.assert_array_equal(sol.success, ~outside)
    assert all(s.startswith("control_bounds: max violation") for s in sol.status[outside])
    assert set(sol.status[~outside]) == {"optimal"}
    assert failure_counts(sol.status, sol.success) == {"control_bounds": int(outside.sum())}


def test_check_solution_flags_each_failure():
    problem = di_problem(x_min=[-10, -3], x_max=[10, 3])
    plant = problem.make_plant(torch.float64)
    x0, target = problem.sample(5, seed=4)
    controls, predicted = make_solver("lqr", problem).lqr.trajectories(x0, target)
    report = check_solution(problem, x0, target, controls, predicted, plant=plant)
    assert report.success.all() and report.dynamics_residual.max() < 1e-12
    # Break one instance per check.
    bad_u = controls.copy()
    bad_u[0, 3, 0] = np.nan                      # non-finite control
    bad_x = predicted.copy()
    bad_x[1, 5, 1] += 1e-3                       # solver's states disagree with the dynamics
    bad_u[2] += 30.0                             # drives the velocity out of [-3, 3]
    ok = np.array([True, True, True, True, False])
    status = np.array(["optimal"] * 4 + ["max_iter"])
    report = check_solution(problem, x0, target, bad_u, bad_x, plant=plant,
                            solver_status=status, solver_success=ok)
    assert report.success.tolist() == [False, False, False, True, False]
    s = report.status
    assert s[0].startswith("non_finite") and np.isnan(report.states[0]).all()
    assert s[1].startswith("dynamics: residual 0.001")
    assert "state_bounds" in s[2] and report.state_violation[2] > 0
    assert s[3] == "optimal" and s[4] == "solver: max_iter"
    counts = report.failure_counts()
    assert counts["non_finite"] == 1 and counts["dynamics"] >= 1 and counts["solver"] == 1
    assert counts == failure_counts(s, report.success)
    # Loose tolerances let the residual pass.
    report = check_solution(problem, x0[1:2], target[1:2], controls[1:2], bad_x[1:2], plant=plant,
                            tolerances=Tolerances(dynamics_rtol=1e-2))
    assert report.success.all()
    with pytest.raises(ValueError, match="category"):
        report.fail(np.ones(1, bool), "bad: name")


# ---------------------------------------------------------------------- bad input
def test_uncontrollable_plant_raises_with_rank():
    problem = Problem(
        name="unctrb", plant={"name": "linear", "A": [[0.0, 0.0], [0.0, -1.0]], "B": [[1.0], [0.0]]},
        dt=0.1, horizon=10, initial_state={"low": [-1, -1], "high": [1, 1]},
        target_state={"low": [0, 0], "high": [0, 0]},
    )
    with pytest.raises(UncontrollableError, match="rank 1; expected 2"):
        make_solver("lqr", problem)
    with pytest.raises(UncontrollableError, match="rank 1; expected 2"):
        infinite_horizon_gain([[0.0, 0.0], [0.0, -1.0]], [[1.0], [0.0]], np.eye(2), [[1.0]])
    assert check_controllable([[1.0, 0.1], [0.0, 1.0]], [[0.005], [0.1]]) == 2
    # The finite-horizon problem is still well posed: solvable on request.
    sol = make_solver("lqr", problem, check_controllability=False).solve(*problem.sample(3, 0))
    assert sol.success.all()


def test_discrete_linear_plant_is_used_directly():
    A, B = [[1.0, 0.1], [-0.2, 0.95]], [[0.005], [0.1]]
    problem = Problem(
        name="ld", plant={"name": "linear", "A": A, "B": B, "discrete": True}, dt=0.1, horizon=20,
        initial_state={"low": [-1, -1], "high": [1, 1]}, target_state={"low": [-0.5, 0], "high": [0.5, 0]},
        Q=[1, 1], R=[0.1], Qf_scale=5,
    )
    solver = make_solver("lqr", problem)
    # The plant's own matrices (its parameters may be stored in float32, then promoted).
    A_plant, B_plant = solver.plant.A.numpy(), solver.plant.B.numpy()
    np.testing.assert_allclose(A_plant, A, rtol=1e-7)
    np.testing.assert_array_equal(solver.lqr.A, A_plant)
    np.testing.assert_array_equal(solver.lqr.B, B_plant)
    x0, target = problem.sample(16, seed=5)
    Q, R, Qf = problem.weights
    U_ref, _, J_ref = least_squares_lqr(A_plant, B_plant, np.zeros(2), 0.1 * Q, 0.1 * R, Qf, 20, x0, target)
    sol = solver.solve(x0, target)
    assert sol.success.all()
    np.testing.assert_allclose(sol.controls, U_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(sol.costs, J_ref, rtol=1e-9)


def test_continuous_linear_plant_zoh_residual_and_plant_discretisation():
    """c2d is exact; so is the linear plant's default simulator, RK4 is not: the checks see it;
    ``discretization="plant"`` removes it."""
    def problem(substeps, method="rk4"):
        return Problem(
            name="osc", plant={"name": "linear", "A": [[0, 1], [-2, -0.5]], "B": [[0], [1]], "substeps": substeps,
                               "method": method},
            dt=0.1, horizon=20, initial_state={"low": [-1, -1], "high": [1, 1]},
            target_state={"low": [0, 0], "high": [0, 0]}, Q=[1, 1], R=[0.1],
        )
    x0, target = problem(1).sample(8, seed=6)
    residual = [make_solver("lqr", problem(s)).solve(x0, target) for s in (1, 4)]
    exact = make_solver("lqr", problem(1), discretization="plant").solve(x0, target)
    assert exact.success.all()
    r1 = np.abs(residual[0].states - exact.states).max()
    r4 = np.abs(residual[1].states - exact.states).max()
    assert 1e-7 < r1 < 1e-4 and r4 < r1  # RK4's error, and it shrinks with substeps
    np.testing.assert_allclose(residual[1].costs, exact.costs, rtol=1e-4)  # simulators differ by RK4 error
    # the default method of a continuous linear plant is the exact zero-order hold: no residual
    c2d = make_solver("lqr", problem(1, "exact")).solve(x0, target)
    plant_exact = make_solver("lqr", problem(1, "exact"), discretization="plant").solve(x0, target)
    assert np.abs(c2d.states - plant_exact.states).max() < 1e-10


def test_bad_inputs_raise():
    problem = di_problem()
    solver = make_solver("lqr", problem)
    x0, target = problem.sample(4, seed=0)
    with pytest.raises(DimensionError, match=r"x0 has shape \(4, 3\)"):
        solver.solve(np.zeros((4, 3)), target)
    with pytest.raises(DimensionError, match="target"):
        solver.solve(x0, target[:2])
    with pytest.raises(DimensionError):
        solver.solve(x0[0], target[0])
    bad = x0.copy()
    bad[1, 0] = np.nan
    with pytest.raises(NonFiniteError):
        solver.solve(bad, target)
    with pytest.raises(UnknownNameError, match="no_such_solver.*lqr"):
        make_solver("no_such_solver", problem)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['tolerance'\]"):
        make_solver("lqr", problem, tolerance=1e-3)
    fuel = Problem(
        name="rocket", plant={"name": "rocket"}, dt=1.0, horizon=5, cost="fuel",
        initial_state={"low": [0] * 6 + [1900], "high": [0] * 6 + [1900]},
        target_state={"low": [0] * 7, "high": [0] * 7},
    )
    with pytest.raises(ConfigError, match="quadratic"):
        make_solver("lqr", fuel)
    with pytest.raises(DimensionError):
        FiniteHorizonLQR.from_matrices(np.eye(2), np.ones((3, 1)), np.eye(2), np.eye(1), np.eye(2), 5)
    with pytest.raises(ValueError, match="positive definite"):
        FiniteHorizonLQR.from_matrices(np.eye(2), np.ones((2, 1)), np.eye(2), np.zeros((1, 1)), np.eye(2), 5)


def test_registry_lists_the_linear_solvers():
    assert {"lqr", "qp", "rocket"} <= set(solver_names())


@pytest.mark.slow
def test_speed_100k_double_integrator_trajectories():
    """Goal of the generator: 100 000 LQR trajectories (N = 15) in under 10 s, checks included."""
    problem = di_problem()
    solver = make_solver("lqr", problem)
    x0, target = problem.sample(100_000, seed=0)
    elapsed = []
    for _ in range(2):  # best of two: the machine may be shared
        start = time.perf_counter()
        sol = solver.solve(x0, target)
        elapsed.append(time.perf_counter() - start)
    assert sol.states.shape == (100_000, 16, 2) and np.isfinite(sol.costs).all()
    assert min(elapsed) < 10.0, f"{min(elapsed):.2f} s for 100 000 trajectories"
