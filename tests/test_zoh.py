"""Exact zero-order-hold rollouts of linear plants (dynamics.zoh) against python-control."""

import control as ct
import numpy as np
import pytest
import torch

import dynamics
from dynamics.errors import ConfigError
from dynamics.zoh import lifted_rollout, lifted_zoh
from dynamics.interval import IntervalRollout

A = [[0.0, 1.0, 0.0], [-2.0, -0.3, 1.0], [0.5, 0.0, -1.0]]
B = [[0.0, 0.0], [1.0, 0.0], [0.2, 1.0]]


def c2d_rollout(dt, x0, controls):
    """Reference: python-control's exact ZOH discretisation, stepped in numpy."""
    sysd = ct.c2d(ct.ss(A, B, np.eye(3), 0), dt, method="zoh")
    x = x0.T
    states = [x]
    for k in range(controls.shape[1]):
        x = sysd.A @ x + sysd.B @ controls[:, k].T
        states.append(x)
    return np.stack(states, 1).transpose(2, 1, 0)


def test_linear_plant_rollout_equals_c2d():
    plant = dynamics.make("linear", A=A, B=B, dt=0.15, dtype=torch.float64)
    assert plant.method == "exact"
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    u = torch.randn(6, 25, 2, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(plant.rollout(x0, u).numpy(), c2d_rollout(0.15, x0.numpy(), u.numpy()),
                               rtol=1e-11, atol=1e-11)
    # rk4 approximates it (fourth order)
    rk4 = dynamics.make("linear", A=A, B=B, dt=0.15, method="rk4", dtype=torch.float64)
    np.testing.assert_allclose(rk4.rollout(x0, u).numpy(), plant.rollout(x0, u).numpy(), atol=1e-3)
    # step() and a different dt go through the same path
    np.testing.assert_allclose(plant.step(x0, u[:, 0], dt=0.05).numpy(),
                               c2d_rollout(0.05, x0.numpy(), u[:, :1].numpy())[:, 1], rtol=1e-11, atol=1e-11)


def test_double_integrator_matches_the_textbook_discretisation():
    dt = 0.33
    plant = dynamics.make("double_integrator", dt=dt, dtype=torch.float64)
    Phi, Gamma = plant.lifted_matrices(4)
    np.testing.assert_allclose(Phi[1].numpy(), [[1, dt], [0, 1]], atol=1e-14)
    np.testing.assert_allclose(Gamma[1, 0].numpy(), [[dt**2 / 2], [dt]], atol=1e-14)
    np.testing.assert_allclose(Gamma[4, 1].numpy(), (Phi[2] @ Gamma[1, 0]).numpy(), atol=1e-14)
    assert (Gamma[2, 2:] == 0).all()  # causality


def test_gradients_in_A_B_controls_match_finite_differences():
    At = torch.tensor(A, dtype=torch.float64, requires_grad=True)
    Bt = torch.tensor(B, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def final(A_, B_, x0_, u_):
        return lifted_rollout(*lifted_zoh(A_, B_, 0.2, 5), x0_, u_)[:, -1]

    assert torch.autograd.gradcheck(final, (At, Bt, x0, u))


def test_plant_parameters_stay_differentiable_and_the_cache_follows_new_values():
    plant = dynamics.make("linear", A=A, B=B, dt=0.1, dtype=torch.float64)
    x0 = torch.ones(1, 3, dtype=torch.float64)
    u = torch.zeros(1, 4, 2, dtype=torch.float64)
    before = plant.rollout(x0, u)
    plant.set_params(A=np.array(A) * 2)
    after = plant.rollout(x0, u)
    assert not torch.allclose(before, after)
    np.testing.assert_allclose(after.numpy()[0, -1], (torch.linalg.matrix_exp(plant.A * 0.4) @ x0[0]).numpy(), atol=1e-12)
    plant.get_buffer("A").requires_grad_(True)
    plant.rollout(x0, u)[:, -1].sum().backward()
    assert plant.A.grad is not None and torch.isfinite(plant.A.grad).all()


def test_exact_method_needs_a_linear_plant():
    plant = dynamics.make("pendulum", dt=0.05, method="exact")
    with pytest.raises(ConfigError, match="linear vector field"):
        plant.rollout(torch.zeros(1, 2), torch.zeros(1, 3, 1))


def test_interval_rollout_of_an_exact_plant():
    plant = dynamics.make("double_integrator", dt=0.2, dtype=torch.float64)
    x0 = torch.randn(3, 2, dtype=torch.float64)
    u = torch.randn(3, 7, 1, dtype=torch.float64)
    with pytest.raises(ConfigError, match="horizon"):
        IntervalRollout(plant)
    for horizon in (7, 5):  # its stored horizon, or another one computed on the fly
        np.testing.assert_allclose(IntervalRollout(plant, horizon).rollout(x0, u).numpy(), plant.rollout(x0, u).numpy(),
                                   atol=1e-13)
