"""Tests of the ``rocket`` plant and its lossless-convexification SOCP solver.

References: the published Mars example of Açıkmeşe & Ploen (2007) / Blackmore et al. (2010)
(parameters and initial state), closed-form ballistic and constant-thrust (Tsiolkovsky)
trajectories, torch.autograd.gradcheck, the theory of lossless convexification
(``||u|| = sigma`` at the optimum, bang-bang thrust magnitude), a second solver of the same
landing (CasADi/IPOPT on the original non-convex problem, ``trc/generators/ipopt.py``) and
scipy's ``solve_ivp`` on the equations of motion written here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import dynamics
from dynamics import ConfigError, NonFiniteError
from dynamics.rocket import STANDARD_G0
from trc.generators import make_solver
from trc.generators.rocket import position_weight
from trc.problem import Problem

from trc.generators.ipopt import RocketReference

# The published example in our axes (z up): papers' (e1, e2, e3) = our (z, x, y).
X0 = [0.0, 2000.0, 1500.0, 0.0, 100.0, -75.0, 1905.0]
TARGET = [0.0] * 7
F64 = torch.float64


def rocket_problem(horizon=50, time_of_flight=72.0, low=X0, high=X0, **options) -> Problem:
    return Problem(
        name="rocket", plant={"name": "rocket"}, dt=time_of_flight / horizon, horizon=horizon, cost="fuel",
        initial_state={"low": list(low), "high": list(high)}, target_state={"low": TARGET, "high": TARGET},
        tolerance=0.1, options=options,
    )


@pytest.fixture(scope="module")
def published():
    """The published example, solved once for the module (one SOCP pair, ~1 s)."""
    problem = rocket_problem()
    solver = make_solver("rocket", problem)
    x0, target = np.array([X0]), np.array([TARGET])
    return problem, solver, solver.solve(x0, target), solver.solve_instance(x0[0], target[0])


# ---------------------------------------------------------------------- plant
def test_published_parameters():
    plant = dynamics.make("rocket").double()
    cos27 = math.cos(math.radians(27))
    assert plant.rho1 == pytest.approx(6 * 0.3 * 3100 * cos27, rel=1e-7)  # 4971.8 N
    assert plant.rho2 == pytest.approx(6 * 0.8 * 3100 * cos27, rel=1e-7)  # 13258.2 N
    assert plant.alpha == pytest.approx(1 / (225 * 9.80665), rel=1e-12)
    assert float(plant.m_dry) == 1505 and float(plant.m_wet) == 1905
    np.testing.assert_allclose(plant.gravity.numpy(), [0, 0, -3.7114], rtol=1e-7)
    assert plant.x_min[6] == 1505 and plant.x_max[6] == 1905


def test_free_fall_and_constant_thrust_match_closed_form():
    plant = dynamics.make("rocket", dt=0.5, substeps=4).double()
    g, a = 3.711400032043457, plant.alpha  # float32-stored g, as the plant uses it
    x0 = torch.tensor([X0, [10.0, -20.0, 800.0, 5.0, 0.0, -10.0, 1700.0]], dtype=F64)
    T = torch.tensor([[0.0, 0.0, 0.0], [3000.0, -4000.0, 9000.0]], dtype=F64)
    N = 40
    states = plant.rollout(x0, T[:, None, :].expand(2, N, 3).contiguous())
    t = 0.5 * N
    # Ballistic: mass constant up to the smoothing eps.
    exp0 = np.array(X0[:6]) + np.r_[np.array(X0[3:6]) * t + [0, 0, -g * t**2 / 2], [0, 0, -g * t]]
    np.testing.assert_allclose(states[0, -1, :6].numpy(), exp0, rtol=1e-12, atol=1e-9)
    assert states[0, -1, 6].item() == pytest.approx(X0[6], abs=a * 1e-6 * t * 1.01)
    # Constant thrust: m(t) = m0 - a |T| t, v(t) = v0 + g t + T / (a |T|) ln(m0 / m(t)) (Tsiolkovsky).
    m0, Tn = 1700.0, float(torch.linalg.norm(T[1]))
    m_t = m0 - a * Tn * t
    v_t = x0[1, 3:6].numpy() + np.array([0, 0, -g * t]) + T[1].numpy() / (a * Tn) * math.log(m0 / m_t)
    assert states[1, -1, 6].item() == pytest.approx(m_t, rel=1e-12)
    np.testing.assert_allclose(states[1, -1, 3:6].numpy(), v_t, rtol=1e-9)


@pytest.mark.parametrize("method, substeps", [("rk4", 1), ("rk4", 3), ("euler", 2), ("midpoint", 1), ("heun3", 2)])
def test_closed_form_steps_equal_torchdiffeq_steps(method, substeps):
    """The rocket's closed-form rollout gives the states and gradients of torchdiffeq's steps of f."""
    from dynamics.fixed_step import zoh_rollout

    plant = dynamics.make("rocket", dt=1.44, method=method, substeps=substeps).double()
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.tensor([X0], dtype=F64) + 10 * torch.randn(3, 7, dtype=F64, generator=gen)).requires_grad_()
    u = (torch.randn(3, 20, 3, dtype=F64, generator=gen) * 4000 + torch.tensor([0.0, 0.0, 8000.0], dtype=F64))
    u.requires_grad_()
    plant.isp.requires_grad_()  # a physical parameter (buffer): the rollout is differentiable in it
    got = plant.rollout(x0, u)  # (batch, N + 1, 7), through fixed_step_rollout
    ref = zoh_rollout(plant.f, x0, u, 1.44, method, substeps).transpose(0, 1)
    np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-9)
    weights = torch.randn(got.shape, dtype=F64, generator=gen)
    g_got = torch.autograd.grad((weights * got).sum(), (x0, u, plant.isp))
    g_ref = torch.autograd.grad((weights * ref).sum(), (x0, u, plant.isp))
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun3", "rk4"])
def test_tableaus_are_torchdiffeqs_steps(method):
    """dynamics.fixed_step.TABLEAUS reproduces torchdiffeq's step of each one-step method on a
    nonlinear vector field (the coefficients the rocket's closed form uses)."""
    from torchdiffeq._impl.odeint import SOLVERS

    from dynamics.fixed_step import TABLEAUS

    def field(t, y, perturb=None):
        return torch.stack((torch.sin(y[1]) * y[0], y[0] ** 2 - y[1]))

    y, h = torch.tensor([0.7, -0.3], dtype=F64), 0.37
    step = SOLVERS[method](func=None, y0=y, rtol=0.0, atol=0.0, perturb=False)._step_func
    ref, _ = step(field, 0.0, h, h, y)
    c, a, b = TABLEAUS[method]
    k = []
    for i in range(len(b)):
        assert sum(a[i]) == pytest.approx(c[i])
        k.append(field(c[i] * h, y + h * sum((aij * kj for aij, kj in zip(a[i], k)), torch.zeros_like(y))))
    got = h * sum(bi * ki for bi, ki in zip(b, k))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-14, atol=1e-15)


def test_gradcheck_including_zero_thrust():
    plant = dynamics.make("rocket", dt=0.5).double()
    x = torch.tensor([X0, [1.0, 2.0, 300.0, 0.5, -0.5, -3.0, 1600.0]], dtype=F64, requires_grad=True)
    u = torch.tensor([[0.0, 0.0, 0.0], [1200.0, -800.0, 6000.0]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(plant.f, (x, u))
    assert torch.autograd.gradcheck(lambda x, u: plant.step(x, u), (x, u))
    # The smooth magnitude is differentiable at T = 0 with gradient 0.
    u0 = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    plant.thrust_magnitude(u0).sum().backward()
    assert torch.equal(u0.grad, torch.zeros(1, 3, dtype=F64))


def test_bad_parameters_raise():
    with pytest.raises(ConfigError, match="m_dry < m_wet"):
        dynamics.make("rocket", m_dry=2000.0)
    with pytest.raises(ConfigError, match="throttle"):
        dynamics.make("rocket", throttle_min=0.9, throttle_max=0.8)
    with pytest.raises(NonFiniteError, match="isp"):
        dynamics.make("rocket", isp=math.nan)


# ---------------------------------------------------------------------- solver
def test_published_example_is_solved(published):
    problem, solver, sol, res = published
    assert sol.success.all(), sol.status
    assert sol.status[0] == "optimal"
    # Fuel: the problem's cost equals m0 - m_N of the simulated trajectory and the SOCP's.
    fuel = sol.costs[0]
    assert fuel == pytest.approx(X0[6] - sol.states[0, -1, 6], rel=1e-12)
    assert fuel == pytest.approx(res.fuel, abs=1e-3)
    # Lower bound of the rocket equation: ln(m0 / mf) >= |v_f - v0 - g tf| / (Isp g0).
    dv = np.linalg.norm(np.array(TARGET[3:6]) - X0[3:6] - solver.g * 72.0)
    assert fuel > X0[6] * (1 - math.exp(-dv / (225 * STANDARD_G0)))
    assert 300 < fuel < 400  # kg; the example lands with about 1536 kg
    # Terminal state reached in the simulation (not only in the SOCP).
    assert np.linalg.norm(sol.states[0, -1, :3]) < 1e-2
    assert np.linalg.norm(sol.states[0, -1, 3:6]) < 1e-3
    assert sol.states[0, -1, 6] >= 1505
    # The SOCP's discretisation agrees with the plant (ZOH on thrust).
    assert np.abs(sol.states[0] - res.states).max() < 5e-3


def test_lossless_convexification(published):
    _, _, _, res = published
    norm_u = np.linalg.norm(res.u, axis=1)
    np.testing.assert_allclose(norm_u, res.sigma, rtol=1e-6)


def test_thrust_is_bang_bang_within_bounds(published):
    _, solver, sol, _ = published
    T = np.linalg.norm(sol.controls[0], axis=1)
    rho1, rho2 = solver.rho1, solver.rho2
    assert (T >= rho1 * (1 - 1e-5)).all() and (T <= rho2 * (1 + 1e-5)).all()
    at_min = np.isclose(T, rho1, rtol=1e-3)
    at_max = np.isclose(T, rho2, rtol=1e-3)
    assert at_min.sum() >= 5 and at_max.sum() >= 5  # both arcs appear
    assert (at_min | at_max).mean() >= 0.9  # switching intervals only in between
    # max - min - max structure, as in the published solutions
    arcs = [k for k, flag in enumerate(at_max) if flag]
    assert arcs[0] == 0 and arcs[-1] == len(T) - 1


def test_glide_slope_respected(published):
    problem, solver, sol, _ = published
    assert solver.glide_slope == 4.0
    margin = solver.glide_margin(sol.states, np.array([TARGET]))
    assert margin[0] > -1e-3
    # A steeper glide slope (6 deg; 8 deg is infeasible in 72 s) is active and still met.
    steep = make_solver("rocket", rocket_problem(glide_slope=6.0))
    sol_steep = steep.solve(np.array([X0]), np.array([TARGET]))
    assert sol_steep.success.all(), sol_steep.status
    d = sol_steep.states[0, 1:, :3]
    gap = d[:, 2] - math.tan(math.radians(6.0)) * np.linalg.norm(d[:, :2], axis=1)
    assert gap.min() > -1e-3 and np.isclose(gap, 0, atol=1e-2).sum() >= 3  # active on an arc
    assert sol_steep.costs[0] > sol.costs[0] + 1.0  # a tighter constraint costs fuel


def test_refinement_reduces_the_dynamics_residual(published):
    _, solver, sol, res = published
    rough = make_solver("rocket", rocket_problem(), refine=False, terminal_tol=1.0)
    res0 = rough.solve_instance(np.array(X0), np.array(TARGET))
    sol0 = rough.solve(np.array([X0]), np.array([TARGET]))
    assert sol0.success.all()
    r0 = np.abs(sol0.states[0] - res0.states).max()
    r1 = np.abs(sol.states[0] - res.states).max()
    assert r1 < r0 / 20
    assert res.fuel == pytest.approx(res0.fuel, rel=1e-3)
    np.testing.assert_allclose(position_weight([0.0, 1e-6, 0.01]), [0.5, 0.5 - 1e-6 / 12, 0.5 - 0.01 / 12], rtol=1e-8)


def test_batch_of_initial_states():
    problem = rocket_problem(
        horizon=40, time_of_flight=75.0,
        low=[-200, 1800, 1400, -10, 90, -80, 1905], high=[200, 2200, 1600, 10, 110, -70, 1905],
    )
    x0, target = problem.sample(3, seed=0)
    sol = make_solver("rocket", problem).solve(x0, target)
    assert sol.success.all(), sol.status
    assert sol.controls.shape == (3, 40, 3) and sol.states.shape == (3, 41, 7)
    assert (sol.iterations > 0).all() and (sol.solve_time > 0).all()


def test_too_short_flight_is_reported_infeasible():
    problem = rocket_problem(horizon=20, time_of_flight=30.0)
    sol = make_solver("rocket", problem).solve(np.array([X0]), np.array([TARGET]))
    assert not sol.success[0]
    assert sol.status[0] == "solver: infeasible"
    assert np.isnan(sol.costs[0])


def test_configuration_errors():
    with pytest.raises(ConfigError, match="glide_slope"):
        make_solver("rocket", rocket_problem(glide_slope=95.0))
    with pytest.raises(ConfigError, match="unknown problem.options"):
        make_solver("rocket", rocket_problem(glide=4.0))
    with pytest.raises(ConfigError, match="unknown option"):
        make_solver("rocket", rocket_problem(), tol=1e-3)
    with pytest.raises(ConfigError, match="backend"):
        make_solver("rocket", rocket_problem(), backend="MOSEK_NOT_INSTALLED")
    quadratic = Problem(
        name="r", plant={"name": "rocket"}, dt=1.0, horizon=5, cost="quadratic",
        initial_state={"low": X0, "high": X0}, target_state={"low": TARGET, "high": TARGET},
    )
    with pytest.raises(ConfigError, match="fuel"):
        make_solver("rocket", quadratic)
    di = Problem(
        name="di", plant={"name": "double_integrator"}, dt=0.3, horizon=5, cost="fuel",
        initial_state={"low": [0, 0], "high": [0, 0]}, target_state={"low": [0, 0], "high": [0, 0]},
    )
    with pytest.raises(ConfigError, match="expected 'rocket'"):
        make_solver("rocket", di)


# ---------------------------------------------------------------------- second solver
def ivp_rollout(x0, thrust, dt, g, alpha):
    """Thrust ``(N, 3)`` held on each interval, integrated by ``solve_ivp`` (DOP853, rtol 1e-12)
    on ``r' = v, v' = T / m + (0, 0, -g), m' = -alpha ||T||`` (Açıkmeşe & Ploen 2007); ``(N + 1, 7)``."""
    x = np.asarray(x0, dtype=float)
    out = [x]
    for T in np.asarray(thrust, dtype=float):
        def field(t, y, T=T):
            return np.concatenate([y[3:6], T / y[6] + [0.0, 0.0, -g], [-alpha * np.linalg.norm(T)]])

        x = solve_ivp(field, (0.0, dt), x, method="DOP853", rtol=1e-12, atol=1e-10).y[:, -1]
        out.append(x)
    return np.stack(out)


@pytest.mark.parametrize("glide_slope", [4.0, 6.0])
def test_socp_optimum_is_the_nonconvex_optimum_found_by_ipopt(glide_slope):
    """The SOCP's fuel equals the optimum of the original problem, found by another solver.

    Reference: IPOPT on the untransformed landing (``RocketReference``): thrust on the annulus
    ``rho1 <= ||T|| <= rho2`` (``||T||^2 = Gamma^2``, ``Gamma`` bounded), exact Tsiolkovsky steps,
    no change of variables, started from a naive vertical mid-throttle guess. Lossless
    convexification says the optima coincide. The SOCP's thrust meets its bounds to ~1e-6
    relative (module docstring; the checks allow 1e-5) and IPOPT's to its tolerance, so the fuel
    must agree within 1e-5 relative (4 g of the ~370 kg), and the SOCP may be lower than the
    exact optimum by no more than that. The 6 deg case has an active glide slope. Published fuel
    figures of the example could not be checked here: only its vehicle and initial state are used.
    """
    problem = rocket_problem(glide_slope=glide_slope)
    solver = make_solver("rocket", problem)
    sol = solver.solve(np.array([X0]), np.array([TARGET]))
    assert sol.success.all(), sol.status
    ref_solver = RocketReference(problem)
    ref = ref_solver.solve(X0, TARGET)
    assert ref.success, ref.status
    # the two solvers' own vehicle numbers agree (read from the plant buffers vs its properties)
    assert (ref_solver.rho1, ref_solver.rho2) == pytest.approx((solver.rho1, solver.rho2), rel=1e-12)
    assert ref_solver.alpha == pytest.approx(solver.alpha, rel=1e-12)

    # IPOPT's answer is a feasible landing of the original problem (independent re-simulation)
    dt, g, alpha = problem.dt, ref_solver.g, ref_solver.alpha
    sim = ivp_rollout(X0, ref.controls, dt, g, alpha)
    np.testing.assert_allclose(sim, ref.states, atol=1e-6)
    assert np.linalg.norm(sim[-1, :6]) < 1e-6 and sim[-1, 6] >= 1505
    T_ref = np.linalg.norm(ref.controls, axis=1)
    assert (T_ref >= solver.rho1 * (1 - 1e-9)).all() and (T_ref <= solver.rho2 * (1 + 1e-9)).all()

    # the SOCP's optimum: same fuel, same thrust profile, same trajectory
    fuel = sol.costs[0]
    assert fuel == pytest.approx(ref.cost, rel=1e-5)
    assert fuel >= ref.cost * (1 - 1e-5)
    T_socp = np.linalg.norm(sol.controls[0], axis=1)
    np.testing.assert_allclose(T_socp, T_ref, atol=1e-3 * solver.rho2)  # 13 N: the same bang-bang arcs
    np.testing.assert_allclose(sol.states[0], ref.states, atol=0.05)  # m, m/s, kg

    # and the SOCP's thrust, re-simulated exactly, lands and burns what the solution reports
    sim = ivp_rollout(X0, sol.controls[0], dt, g, alpha)
    assert np.linalg.norm(sim[-1, :3]) + np.linalg.norm(sim[-1, 3:6]) < problem.tolerance
    assert X0[6] - sim[-1, 6] == pytest.approx(fuel, rel=1e-9)
    margin = solver.glide_margin(sim[None], np.array([TARGET]))[0]
    assert margin > -1e-2  # metres of altitude


def test_ipopt_reference_rejects_an_unreachable_landing():
    """The reference is not a rubber stamp: 30 s is too short to land (the SOCP says infeasible too)."""
    problem = rocket_problem(horizon=20, time_of_flight=30.0)
    ref = RocketReference(problem, max_iter=300).solve(X0, TARGET)
    assert not ref.success
