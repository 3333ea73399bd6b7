"""Certified mode (trc.certified) and the warm starts of the solvers it relies on.

The reference is always the cold solve of the same solver: a warm start may change the path
(iterations) but never the certified answer, whatever the quality of the plan. The certificates'
own claims (trajectory, cost, bounds, landing) are checked against scipy's ``solve_ivp`` on
vector fields written here from the plants' equations, not against the plants' rollouts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import trc.generators.nonlinear  # noqa: F401  (registers the "nonlinear" solver)
from dynamics.errors import ConfigError, DimensionError
from trc.certified import CertifiedSolver, PlanChecks, check_plan, warm_start_arguments
from trc.generators import Solution, Solver, make_solver
from trc.models import TinyRecursiveControl, TRCConfig
from trc.problem import Problem

TINY = TRCConfig(latent_dim=16, hidden_dim=32, num_layers=1, H_cycles=2, L_cycles=1, feedback_channels=8)


def di_problem(x_bound=None) -> Problem:
    plant = {"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}
    if x_bound is not None:
        plant.update(x_min=[-10.0, -x_bound], x_max=[10.0, x_bound])
    box = 2.0 if x_bound is None else 1.0
    return Problem(
        name="di_certified", plant=plant, dt=0.33, horizon=15, Q=[10.0, 5.0], R=[0.1], Qf_scale=20.0,
        initial_state={"low": [-box, -box], "high": [box, box]}, target_state={"low": [-box, -box], "high": [box, box]},
    )


@pytest.fixture(scope="module")
def di():
    problem = di_problem()
    solver = make_solver("qp", problem)
    x0, target = problem.sample(40, seed=0)
    return problem, solver, x0, target, solver.solve(x0, target)


def zoh_ivp(field, x0: np.ndarray, controls: np.ndarray, dt: float) -> np.ndarray:
    """States ``(B, N + 1, n)`` of ``x' = field(x, u)`` under controls ``(B, N, m)`` held on each
    interval: ``solve_ivp`` (DOP853, rtol 1e-10) over the whole batch at once, one call per interval."""
    x = np.asarray(x0, dtype=float)
    B, n = x.shape
    out = [x]
    for k in range(controls.shape[1]):
        u = controls[:, k]
        sol = solve_ivp(lambda t, y, u=u: field(y.reshape(B, n), u).ravel(), (0.0, dt), x.ravel(), method="DOP853",
                        rtol=1e-10, atol=1e-12)
        x = sol.y[:, -1].reshape(B, n)
        out.append(x)
    return np.stack(out, axis=1)


def double_integrator_field(x, u):
    """``p' = v, v' = u``."""
    return np.stack([x[:, 1], u[:, 0]], axis=1)


def quadratic_cost(problem, states, controls, target) -> np.ndarray:
    """``dt sum_k (e_k' Q e_k + u_k' R u_k) + e_N' Qf e_N`` with ``e = x - x*`` (the TRC convention), ``(B,)``."""
    Q, R, Qf = problem.weights
    e = states - target[:, None]
    stage = np.einsum("bki,ij,bkj->b", e[:, :-1], Q, e[:, :-1]) + np.einsum("bki,ij,bkj->b", controls, R, controls)
    return problem.dt * stage + np.einsum("bi,ij,bj->b", e[:, -1], Qf, e[:, -1])


def constrained(sol: Solution) -> np.ndarray:
    return ~np.char.startswith(sol.status.astype(str), "optimal (unconstrained)")


# ------------------------------------------------------------------------------ solver warm starts
@pytest.mark.parametrize("x_bound", [None, 1.5])
def test_qp_active_set_warm_start_finds_the_qp_optimum(x_bound):
    problem = di_problem(x_bound)
    solver = make_solver("qp", problem)
    x0, target = problem.sample(40, seed=1)
    cold = solver.solve(x0, target)
    need = constrained(cold)
    assert cold.success.all() and need.sum() >= 5
    rng = np.random.default_rng(0)
    for guess in (cold.controls, np.clip(cold.controls + 0.3 * rng.standard_normal(cold.controls.shape), -4, 4),
                  rng.uniform(-4, 4, cold.controls.shape)):
        warm = solver.solve(x0, target, initial_controls=guess)
        assert warm.success.all()
        np.testing.assert_allclose(warm.controls, cold.controls, atol=2e-7)
        np.testing.assert_allclose(warm.costs, cold.costs, rtol=1e-9)
    # from the optimum itself the predicted active set is right: one KKT solve per instance
    warm = solver.solve(x0, target, initial_controls=cold.controls)
    assert (warm.status[need] == "optimal (active set)").all()
    assert warm.iterations[need].max() <= 2 < cold.iterations[need].min()
    with pytest.raises(DimensionError, match="initial_controls"):
        solver.solve(x0, target, initial_controls=cold.controls[:, :3])


def test_rocket_warm_start_skips_the_first_socp_when_the_plan_is_exact():
    problem = Problem(
        name="rocket_certified", plant={"name": "rocket"}, dt=3.6, horizon=20, cost="fuel",
        initial_state={"low": [-300, 1500, 1200, -20, 40, -80, 1905], "high": [300, 2100, 1600, 20, 80, -60, 1905]},
        target_state={"low": [0, 0, 0, 0, 0, 0, 1505], "high": [0, 0, 0, 0, 0, 0, 1505]}, tolerance=0.5,
        options={"glide_slope": 4.0},
    )
    solver = make_solver("rocket", problem)
    x0, target = problem.sample(2, seed=0)
    cold = solver.solve(x0, target)
    assert cold.success.all()
    exact = solver.solve(x0, target, initial_controls=cold.controls)
    assert exact.success.all() and (exact.iterations < 0.75 * cold.iterations).all()  # one SOCP instead of two
    np.testing.assert_allclose(exact.costs, cold.costs, atol=1e-4)  # kg of propellant
    rough = solver.solve(x0, target, initial_controls=cold.controls * 1.05)  # 5 % off: a second SOCP is needed
    assert rough.success.all()
    np.testing.assert_allclose(rough.costs, cold.costs, atol=1e-4)


def test_warm_start_arguments_per_solver(di):
    problem, qp, *_ = di
    U, X = np.zeros((1, 15, 1)), np.zeros((1, 16, 2))
    assert set(warm_start_arguments(qp, U, X)) == {"initial_controls"}
    assert set(warm_start_arguments(make_solver("nonlinear", problem), U, X)) == {"controls_guess", "states_guess"}
    with pytest.raises(ConfigError, match="cannot be warm-started"):
        warm_start_arguments(make_solver("lqr", problem), U, X)


# ------------------------------------------------------------------------------ plans and their checks
def test_plan_report_against_independent_rollouts(di):
    problem, _, x0, target, _ = di
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TINY).eval()
    plan = check_plan(problem, model, x0, target)
    plant = problem.make_plant(torch.float64)
    with torch.no_grad():
        U = model(torch.as_tensor(x0, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)).double()
        X = plant.rollout(torch.as_tensor(x0), U)
        J = problem.cost_of(X, U, torch.as_tensor(target)).numpy()
        zero = torch.zeros_like(U)
        J0 = problem.cost_of(plant.rollout(torch.as_tensor(x0), zero), zero, torch.as_tensor(target)).numpy()
    np.testing.assert_allclose(plan.controls, U.numpy(), rtol=1e-12)
    np.testing.assert_allclose(plan.states, X.numpy(), rtol=1e-12)
    np.testing.assert_allclose(plan.costs, J, rtol=1e-12)
    np.testing.assert_allclose(plan.cost_bound, J0, rtol=1e-12)  # default bound: the cost of u = 0
    np.testing.assert_array_equal(plan.ok, J <= J0)
    assert all(s.startswith("cost: ") for s in plan.status[~plan.ok])
    assert (plan.status[plan.ok] == "ok").all()
    assert check_plan(problem, model, x0, target, PlanChecks(max_cost=None)).ok.all()
    assert not check_plan(problem, model, x0, target, PlanChecks(max_cost=None, max_terminal_error=1e-6)).ok.any()


def test_plans_outside_the_plant_bounds_fail():
    problem = di_problem()
    plant = problem.make_plant()
    Q, R, Qf = problem.weights
    torch.manual_seed(3)
    wide = TinyRecursiveControl(TINY.replace(state_dim=2, control_dim=1, horizon=15), u_min=-40.0, u_max=40.0,
                                plant=plant, Q=Q, R=R, Qf=Qf, state_scale=[2.0, 2.0]).eval()
    x0, target = problem.sample(20, seed=2)
    plan = check_plan(problem, wide, x0, target, PlanChecks(max_cost=None))
    outside = (np.abs(plan.controls) > 4.0).any(axis=(1, 2))
    assert outside.any()
    assert not plan.ok[outside].any()
    assert all("control_bounds" in s for s in plan.status[outside])


@pytest.mark.parametrize("bad", [{"dynamics_rtol": -1.0}, {"max_cost": "cheap"}, {"max_terminal_error": 0.0}])
def test_plan_checks_are_validated(bad):
    with pytest.raises(ConfigError):
        PlanChecks(**bad)


# ------------------------------------------------------------------------------ certified solver
def test_certified_output_is_the_solvers_optimum_whatever_the_plan(di):
    problem, solver, x0, target, cold = di
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TINY).eval()  # untrained: poor plans
    for checks in (PlanChecks(), PlanChecks(max_cost=None, dynamics_rtol=1.0)):
        out = CertifiedSolver(model, solver, checks).solve(x0, target)
        np.testing.assert_array_equal(out.warm_started, out.plan.ok)
        assert out.solution.success.all()
        np.testing.assert_allclose(out.solution.costs, cold.costs, rtol=1e-9)
        np.testing.assert_allclose(out.solution.controls, cold.controls, atol=2e-7)
        assert out.seconds >= out.plan.seconds > 0
    assert out.warm_started.all()  # the relaxed checks let every plan through


def test_certified_nonlinear_converges_from_the_plans():
    problem = Problem(
        name="vdp_certified", plant={"name": "van_der_pol", "u_min": -2.0, "u_max": 2.0}, dt=0.2, horizon=15,
        Q=[10.0, 5.0], R=[0.1], Qf_scale=20.0, initial_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]}, tolerance=0.2,
    )
    solver = make_solver("nonlinear", problem)
    x0, target = problem.sample(6, seed=0)
    cold = solver.solve(x0, target)
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TINY).eval()
    out = CertifiedSolver(model, solver, PlanChecks(max_cost=None)).solve(x0, target)
    assert out.warm_started.all() and out.solution.success.all()
    # Van der Pol regulation is benign: every start reaches the same optimum here
    np.testing.assert_allclose(out.solution.costs, cold.costs, rtol=1e-6)


# ------------------------------------------------------------------------------ certificates against solve_ivp
@pytest.mark.parametrize("x_bound", [None, 1.5])
def test_certified_qp_claims_hold_under_an_independent_integration(x_bound):
    """Re-simulated by ``solve_ivp`` (exact flow of ``p'' = u``), the certified solutions have the
    states, costs and bounds they claim, and are no worse than the plans they certify or doing
    nothing; the plan report's numbers are those of the same independent simulation."""
    problem = di_problem(x_bound)
    solver = make_solver("qp", problem)
    x0, target = problem.sample(30, seed=4)
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TINY).eval()
    out = CertifiedSolver(model, solver).solve(x0, target)  # default checks: some plans pass, some do not
    sol, plan = out.solution, out.plan
    assert sol.success.all(), sol.status
    assert 0 < out.warm_started.sum() < len(x0)  # both paths are exercised

    X = zoh_ivp(double_integrator_field, x0, sol.controls, problem.dt)
    np.testing.assert_allclose(sol.states, X, atol=1e-8)
    np.testing.assert_allclose(sol.costs, quadratic_cost(problem, X, sol.controls, target), rtol=1e-9)
    assert np.abs(sol.controls).max() <= 4.0 + 1e-9
    if x_bound is not None:
        assert np.abs(X[..., 1]).max() <= x_bound + 1e-6  # the velocity bound the QP claims
        assert (np.abs(X[..., 1]) > x_bound - 1e-3).any()  # and it is active somewhere

    # the plans and their report
    Xp = zoh_ivp(double_integrator_field, x0, plan.controls, problem.dt)
    J_plan = quadratic_cost(problem, Xp, plan.controls, target)
    np.testing.assert_allclose(plan.states, Xp, atol=1e-8)
    np.testing.assert_allclose(plan.costs, J_plan, rtol=1e-9)
    np.testing.assert_allclose(plan.terminal_error, np.linalg.norm(Xp[:, -1] - target, axis=1), rtol=1e-9)
    zero = np.zeros_like(plan.controls)
    J_zero = quadratic_cost(problem, zoh_ivp(double_integrator_field, x0, zero, problem.dt), zero, target)
    np.testing.assert_allclose(plan.cost_bound, J_zero, rtol=1e-9)
    feasible = (np.abs(Xp[..., 1]) <= x_bound + 1e-9).all(1) if x_bound is not None else np.ones(len(x0), bool)
    np.testing.assert_array_equal(plan.ok, feasible & (J_plan <= J_zero))
    # optimality: the certified cost is at most that of any feasible candidate checked here
    assert (sol.costs <= J_plan * (1 + 1e-9))[feasible].all()
    assert (sol.costs <= J_zero * (1 + 1e-9)).all()


def test_certified_nonlinear_claims_hold_under_an_independent_integration():
    """Van der Pol under the SQP, certified from untrained plans: ``solve_ivp`` on
    ``x'' - mu (1 - x^2) x' + x = u`` reproduces the certified states and costs up to the plant's
    RK4 error (4 sub-steps of 0.05 s: ~3e-5 in the states), and each certified cost is below
    that of the plan the solver started from."""
    problem = Problem(
        name="vdp_certified", plant={"name": "van_der_pol", "u_min": -2.0, "u_max": 2.0, "substeps": 4}, dt=0.2,
        horizon=15, Q=[10.0, 5.0], R=[0.1], Qf_scale=20.0, initial_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]}, tolerance=0.2,
    )
    mu = float(problem.make_plant(torch.float64).mu)

    def van_der_pol(x, u):
        return np.stack([x[:, 1], mu * (1 - x[:, 0] ** 2) * x[:, 1] - x[:, 0] + u[:, 0]], axis=1)

    x0, target = problem.sample(6, seed=0)
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TINY).eval()
    out = CertifiedSolver(model, make_solver("nonlinear", problem), PlanChecks(max_cost=None)).solve(x0, target)
    sol, plan = out.solution, out.plan
    assert out.warm_started.all() and sol.success.all(), sol.status
    X = zoh_ivp(van_der_pol, x0, sol.controls, problem.dt)
    np.testing.assert_allclose(sol.states, X, atol=1e-4)
    np.testing.assert_allclose(sol.costs, quadratic_cost(problem, X, sol.controls, target), rtol=1e-5)
    assert np.abs(sol.controls).max() <= 2.0 + 1e-9
    Xp = zoh_ivp(van_der_pol, x0, plan.controls, problem.dt)
    J_plan = quadratic_cost(problem, Xp, plan.controls, target)
    np.testing.assert_allclose(plan.costs, J_plan, rtol=1e-5)
    assert (sol.costs < J_plan).all()
    # the swing to the origin: every certified trajectory ends within the problem's tolerance
    assert (np.linalg.norm(X[:, -1] - target, axis=1) < problem.tolerance).all()


def test_certified_rocket_landings_hold_under_an_independent_integration():
    """Certified landings re-simulated by ``solve_ivp`` on ``r'' = T / m + g, m' = -||T|| / (Isp g0)``
    (Açıkmeşe & Ploen 2007): they land within the tolerance, keep the thrust in ``[rho1, rho2]``
    and above the glide slope, and burn the propellant the solution reports."""
    problem = Problem(
        name="rocket_certified", plant={"name": "rocket"}, dt=3.6, horizon=20, cost="fuel",
        initial_state={"low": [-300, 1500, 1200, -20, 40, -80, 1905], "high": [300, 2100, 1600, 20, 80, -60, 1905]},
        target_state={"low": [0, 0, 0, 0, 0, 0, 1505], "high": [0, 0, 0, 0, 0, 0, 1505]}, tolerance=0.5,
        options={"glide_slope": 4.0},
    )
    plant = problem.make_plant(torch.float64)
    g, alpha = float(plant.g), 1.0 / (float(plant.isp) * 9.80665)
    cos = math.cos(math.radians(float(plant.cant_angle)))
    rho1 = float(plant.n_engines * plant.throttle_min * plant.thrust_max) * cos
    rho2 = float(plant.n_engines * plant.throttle_max * plant.thrust_max) * cos

    def rocket(x, T):
        accel = T / x[:, 6:7] + np.array([0.0, 0.0, -g])
        return np.concatenate([x[:, 3:6], accel, -alpha * np.linalg.norm(T, axis=1, keepdims=True)], axis=1)

    x0, target = problem.sample(3, seed=1)
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TINY).eval()
    out = CertifiedSolver(model, make_solver("rocket", problem), PlanChecks(max_cost=None, dynamics_rtol=1.0)).solve(
        x0, target)
    sol = out.solution
    assert out.warm_started.all() and sol.success.all(), sol.status
    X = zoh_ivp(rocket, x0, sol.controls, problem.dt)
    miss = X[:, -1, :6] - target[:, :6]
    landing = np.linalg.norm(miss[:, :3], axis=1) + np.linalg.norm(miss[:, 3:], axis=1)
    assert (landing < problem.tolerance).all()
    np.testing.assert_allclose(sol.costs, x0[:, 6] - X[:, -1, 6], rtol=1e-9)  # kg of propellant
    np.testing.assert_allclose(sol.states, X, rtol=1e-7, atol=1e-4)  # the plant's RK4 steps of 3.6 s: ~5 um
    thrust = np.linalg.norm(sol.controls, axis=-1)
    assert (thrust >= rho1 * (1 - 1e-5)).all() and (thrust <= rho2 * (1 + 1e-5)).all()
    d = X[:, 1:, :3] - target[:, None, :3]
    assert (d[..., 2] - math.tan(math.radians(4.0)) * np.linalg.norm(d[..., :2], axis=-1)).min() > -0.05
    assert (X[:, -1, 6] >= 1505.0).all()


class _FlakyWarmStart(Solver):
    """A test double: warm-started solves fail, cold ones succeed (to exercise the retry)."""

    def solve(self, x0, target, *, initial_controls=None):
        B, N = len(x0), self.problem.horizon
        ok = np.full(B, initial_controls is None)
        return Solution(states=np.zeros((B, N + 1, 2)), controls=np.zeros((B, N, 1)), costs=np.where(ok, 1.0, np.nan),
                        success=ok, status=np.where(ok, "optimal", "failed"), iterations=np.full(B, 3 if ok[0] else 7),
                        solve_time=np.full(B, 0.5))


def test_failed_warm_starts_are_retried_cold(di):
    problem, _, x0, target, _ = di
    model = TinyRecursiveControl.from_problem(problem, TINY).eval()
    out = CertifiedSolver(model, _FlakyWarmStart(problem), PlanChecks(max_cost=None)).solve(x0[:4], target[:4])
    assert out.warm_started.all() and out.retried_cold.all() and out.solution.success.all()
    np.testing.assert_array_equal(out.solution.iterations, 10)  # 7 warm + 3 cold
    np.testing.assert_allclose(out.solution.solve_time, 1.0)
    no_retry = CertifiedSolver(model, _FlakyWarmStart(problem), PlanChecks(max_cost=None), retry_cold=False)
    assert not no_retry.solve(x0[:4], target[:4]).solution.success.any()


def test_model_must_fit_the_problem(di):
    problem, solver, *_ = di
    other = TinyRecursiveControl.from_problem(Problem.from_dict({**problem.to_dict(), "horizon": 10}), TINY)
    with pytest.raises(DimensionError, match="horizon"):
        CertifiedSolver(other, solver)
