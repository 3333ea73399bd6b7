"""Terminal correction (Levenberg-Marquardt on the terminal error through the plant)."""

import math

import numpy as np
import pytest
import torch

import dynamics
import trc.generators.nonlinear  # noqa: F401  (registers the "nonlinear" solver)
from dynamics.errors import ConfigError
from trc import Problem
from trc.generators import make_solver
from trc.models import TinyRecursiveControl, TRCConfig
from trc.models.correction import terminal_correction

TINY = dict(latent_dim=16, hidden_dim=32, num_layers=1, H_cycles=2, L_cycles=2, feedback_channels=4)
DT, N = 0.2, 10


def di_problem():
    return Problem.from_dict(dict(
        name="double_integrator", plant={"name": "double_integrator", "u_min": -4, "u_max": 4}, dt=DT,
        horizon=N, Q=[10, 5], R=[0.1], Qf_scale=20,
        initial_state={"low": [-1, -1], "high": [1, 1]}, target_state={"low": [-1, -1], "high": [1, 1]},
    ))


def lifted_input_matrix(dt: float, horizon: int) -> np.ndarray:
    """x_N = A_d^N x_0 + Gamma u for the double integrator under zero-order hold (analytic A_d, B_d)."""
    Ad = np.array([[1.0, dt], [0.0, 1.0]])
    Bd = np.array([[dt**2 / 2], [dt]])
    return np.hstack([np.linalg.matrix_power(Ad, horizon - 1 - k) @ Bd for k in range(horizon)])


def test_one_step_is_the_minimum_norm_correction_on_a_linear_plant():
    plant = dynamics.make("double_integrator", dt=DT).double()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    target = torch.randn(5, 2, generator=g, dtype=torch.float64)
    a = torch.randn(5, N, 1, generator=g, dtype=torch.float64)
    identity = lambda v: v  # unbounded controls: x_N is affine in a
    scale = torch.ones(2, dtype=torch.float64)
    out = terminal_correction(plant, x0, target, a, identity, scale, steps=1, damping=1e-10)
    x_N = plant.rollout(x0, a)[:, -1]
    Gamma = lifted_input_matrix(DT, N)
    expected = Gamma.T @ np.linalg.solve(Gamma @ Gamma.T, (target - x_N).numpy().T)  # (N, B)
    np.testing.assert_allclose((out - a).squeeze(-1).numpy(), expected.T, atol=1e-6)
    np.testing.assert_allclose(plant.rollout(x0, out)[:, -1].numpy(), target.numpy(), atol=1e-6)


def test_bounded_nonlinear_plant_error_never_increases_and_mostly_vanishes():
    plant = dynamics.make("pendulum", dt=0.05, u_max=3.0).double()
    squash = lambda v: 3.0 * torch.tanh(v)
    g = torch.Generator().manual_seed(1)
    B = 16
    x0 = 0.2 * torch.randn(B, 2, generator=g, dtype=torch.float64)
    target = x0 + 0.3 * torch.randn(B, 2, generator=g, dtype=torch.float64)
    a = 0.3 * torch.randn(B, 40, 1, generator=g, dtype=torch.float64)
    scale = torch.ones(2, dtype=torch.float64)

    def err(v):
        return torch.linalg.vector_norm(plant.rollout(x0, squash(v))[:, -1] - target, dim=-1)

    before = err(a)
    with torch.inference_mode():  # the correction runs its own autograd even here
        out = terminal_correction(plant, x0, target, a, squash, scale, steps=8, tol=1e-9)
    assert not out.requires_grad
    after = err(out)
    assert (after <= before + 1e-12).all()
    assert (after < 1e-4).float().mean() > 0.9
    assert (squash(out).abs() <= 3.0).all()


def test_correcting_a_perturbed_optimal_swing_up_lowers_error_and_cost():
    """Fixed case: the SQP-optimal pendulum swing-up (3 N m limit, from hanging to upright),
    its pre-activations ``atanh(u / 3)`` (saturated controls kept at 0.999 of the bound) perturbed
    by N(0, 0.1^2) noise (seed 0). The perturbed plan misses upright by over a radian; ten
    correction steps bring the miss below 1 % of that and under the tolerance, and the cost from
    over 10 times the optimum to within 1 % of it."""
    problem = Problem(name="pendulum_swing_up", plant={"name": "pendulum", "u_min": -3.0, "u_max": 3.0}, dt=0.05,
                      horizon=60, Q=[1.0, 0.1], R=[0.1], Qf_scale=100.0,
                      initial_state={"low": [0.0, 0.0], "high": [0.0, 0.0]},
                      target_state={"low": [math.pi, 0.0], "high": [math.pi, 0.0]}, tolerance=0.05)
    x0, target = np.array([[0.0, 0.0]]), np.array([[math.pi, 0.0]])
    sol = make_solver("nonlinear", problem).solve(x0, target)
    assert sol.success.all(), sol.status
    plant = problem.make_plant(torch.float64)
    x0, target = torch.tensor(x0), torch.tensor(target)
    squash = lambda v: 3.0 * torch.tanh(v)  # noqa: E731
    a_opt = torch.atanh(torch.tensor(sol.controls / 3.0).clamp(-0.999, 0.999))
    a = a_opt + 0.1 * torch.randn(a_opt.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error_and_cost(pre):
        u = squash(pre)
        X = plant.rollout(x0, u)
        return float((X[0, -1] - target[0]).norm()), float(problem.cost_of(X, u, target)[0])

    err_before, J_before = error_and_cost(a)
    out = terminal_correction(plant, x0, target, a, squash, torch.ones(2, dtype=torch.float64), steps=10)
    err_after, J_after = error_and_cost(out)
    assert err_before > 1.0 and J_before > 10 * sol.costs[0]
    assert err_after < 0.01 * err_before and err_after < problem.tolerance
    assert J_after < 0.1 * J_before and J_after <= 1.01 * sol.costs[0]


def test_dims_leave_other_entries_free():
    plant = dynamics.make("double_integrator", dt=DT).double()
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    target = torch.tensor([[1.0, 5.0], [-1.0, 5.0], [0.5, 5.0]], dtype=torch.float64)
    out = terminal_correction(plant, x0, target, torch.zeros(3, N, 1, dtype=torch.float64), lambda v: v,
                              torch.ones(2, dtype=torch.float64), dims=[0], steps=2, damping=1e-10)
    x_N = plant.rollout(x0, out)[:, -1]
    np.testing.assert_allclose(x_N[:, 0].numpy(), target[:, 0].numpy(), atol=1e-6)
    assert (x_N[:, 1] - 5.0).abs().min() > 1.0  # the velocity was not asked for


def test_model_applies_it_in_eval_mode_only():
    problem = di_problem()
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(**TINY, correction_steps=5))
    torch.manual_seed(0)
    plain = TinyRecursiveControl.from_problem(problem, TRCConfig(**TINY))
    g = torch.Generator().manual_seed(2)
    x0 = 2 * torch.rand(8, 2, generator=g) - 1
    target = 2 * torch.rand(8, 2, generator=g) - 1
    torch.testing.assert_close(model.train()(x0, target), plain.train()(x0, target))  # training: untouched

    model.eval(), plain.eval()
    with torch.no_grad():
        out = model(x0, target, return_all_iterations=True)
        u_plain = plain(x0, target)
    assert out.all_controls.shape[0] == TINY["H_cycles"] + 2 and out.all_states.shape[0] == TINY["H_cycles"] + 2
    torch.testing.assert_close(out.all_controls[-2], u_plain)  # the network's own plan comes first
    plant = model.plant.double()
    miss = lambda u: torch.linalg.vector_norm(plant.rollout(x0.double(), u.double())[:, -1] - target.double(), dim=-1)
    assert (miss(out.controls) <= miss(u_plain) + 1e-6).all()
    assert miss(out.controls).median() < 0.1 * miss(u_plain).median()
    assert ((out.controls >= -4) & (out.controls <= 4)).all()
    with torch.no_grad():  # without a plant there is nothing to correct through
        torch.testing.assert_close(model(x0, target, plant=False), plain(x0, target, plant=False))


def test_rocket_model_corrects_position_and_velocity_only():
    model = TinyRecursiveControl.from_problem(
        Problem.from_dict(dict(
            name="rocket", plant={"name": "rocket"}, dt=1.44, horizon=50, cost="fuel", R=1.0,
            initial_state={"low": [0, 2000, 1500, 0, 60, -70, 1905], "high": [0, 2000, 1500, 0, 60, -70, 1905]},
            target_state={"low": [0, 0, 0, 0, 0, 0, 1505], "high": [0, 0, 0, 0, 0, 0, 1505]},
            tolerance=0.5, options={"glide_slope": 4.0},
        )),
        TRCConfig(**TINY, correction_steps=1),
    )
    assert model.terminal_dims == [0, 1, 2, 3, 4, 5]
    # the thrust-magnitude bounds hold by construction, and unsquash inverts squash
    rho1, rho2 = model.plant.rho1, model.plant.rho2
    a = torch.cat((3 * torch.randn(200, 4, 3), torch.zeros(1, 4, 3), 1e3 * torch.randn(1, 4, 3)))
    norm = model.squash(a).norm(dim=-1)
    assert (norm >= rho1 * (1 - 1e-6)).all() and (norm <= rho2 * (1 + 1e-6)).all()
    u = model.squash(torch.randn(50, 4, 3))
    torch.testing.assert_close(model.squash(model.unsquash(u)), u, rtol=1e-4, atol=1e-2)
    x0 = torch.tensor([[0.0, 2000.0, 1500.0, 0.0, 60.0, -70.0, 1905.0]])
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1505.0]])
    with torch.no_grad():
        out = model.eval()(x0, target)
    assert (out.norm(dim=-1) >= rho1 * (1 - 1e-6)).all() and (out.norm(dim=-1) <= rho2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("bad", [dict(correction_steps=-1), dict(correction_steps=1.5), dict(correction_steps=True),
                                 dict(correction_damping=0.0), dict(correction_damping=float("nan")),
                                 dict(correction_tol=0.0)])
def test_config_validation(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        TRCConfig(**bad)


def test_stops_once_every_sample_is_within_tol():
    plant = dynamics.make("double_integrator", dt=DT).double()
    x0 = torch.zeros(2, 2, dtype=torch.float64)
    a = torch.zeros(2, N, 1, dtype=torch.float64)
    target = torch.tensor([[1e-4, 0.0], [0.0, -1e-4]], dtype=torch.float64)
    kept = terminal_correction(plant, x0, target, a, lambda v: v, torch.ones(2, dtype=torch.float64), tol=1e-3)
    assert torch.equal(kept, a)  # already within tol: no step taken
    moved = terminal_correction(plant, x0, target, a, lambda v: v, torch.ones(2, dtype=torch.float64), tol=1e-6)
    assert not torch.equal(moved, a)


def test_rank_deficient_jacobian_with_a_vanishing_damping_is_not_singular():
    """G G^T singular and the damping underflowing to zero (float32): solving the step used to
    raise torch.linalg.LinAlgError (seen on the pendulum in closed loop); the floor on the
    damping keeps the system solvable. Controls that cannot move (G = 0) stay as they are; a
    rank-1 G (one control step of the double integrator) still reduces the reachable miss."""
    plant = dynamics.make("double_integrator", dt=DT)
    x0 = torch.zeros(2, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    a = torch.zeros(2, 1, 1)
    frozen = terminal_correction(plant, x0, target, a, lambda v: 0 * v, torch.ones(2), steps=3, damping=1e-45)
    assert torch.equal(frozen, a)
    out = terminal_correction(plant, x0, target, a, lambda v: v, torch.ones(2), steps=3, damping=1e-45)
    assert torch.isfinite(out).all()
    err = lambda u: torch.linalg.vector_norm(plant.rollout(x0, u)[:, -1] - target, dim=-1)  # noqa: E731
    assert err(out)[0] < err(a)[0] - 1e-3  # the miss fell
    assert err(out)[1] == err(a)[1] == 0  # nothing to correct: unchanged
