"""Imitation weight on the first controls of a plan (``training.loss.first_controls``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamics.errors import ConfigError, DimensionError
from trc.config import from_dict
from trc.problem import Problem
from trc.training import LossConfig, TrainConfig, TRCLoss
from trc.training.config import FirstControlsConfig
from trc.training.losses import first_control_weights, imitation_loss

N = 4


@pytest.fixture(scope="module")
def problem():
    """A double integrator with |u| <= 2 (control half range 2) and a horizon of 4 steps."""
    return from_dict(Problem, {
        "name": "di_first_control",
        "plant": {"name": "double_integrator", "u_min": -2, "u_max": 2},
        "dt": 0.1,
        "horizon": N,
        "Q": [1, 1],
        "R": [0.1],
        "initial_state": {"low": [-1, -1], "high": [1, 1]},
        "target_state": {"low": [0, 0], "high": [0, 0]},
    }, "problem")


def _loss(problem, **loss):
    cfg = LossConfig(imitation=1.0, cost=0.0, terminal=0.0, cycle_weights="last", **loss)
    plant = problem.make_plant(torch.float64)
    return TRCLoss(problem, plant, cfg, 1, torch.tensor([2.0], dtype=torch.float64),
                   torch.ones(2, dtype=torch.float64), cost_floor=1e-12)


def _batch(seed=0, B=5):
    g = torch.Generator().manual_seed(seed)
    u_opt = 2 * torch.rand(B, N, 1, generator=g, dtype=torch.float64) - 1
    u = (u_opt + 0.3 * torch.randn(B, N, 1, generator=g, dtype=torch.float64)).clamp(-2, 2)
    x0 = torch.rand(B, 2, generator=g, dtype=torch.float64)
    return u, u_opt, x0, torch.zeros(B, 2, dtype=torch.float64), torch.ones(B, dtype=torch.float64)


def test_weighted_imitation_matches_a_hand_computed_case():
    # One sample, N = 4, m = 1, half range s = 2, errors 0.2, -0.4, 0.6, 1.0:
    # squared in units of s: 0.01, 0.04, 0.09, 0.25.
    u_opt = torch.zeros(1, 4, 1, dtype=torch.float64)
    u = torch.tensor([[[0.2], [-0.4], [0.6], [1.0]]], dtype=torch.float64)
    s = torch.tensor([2.0], dtype=torch.float64)
    # k = 1, weight 10: (10 * 0.01 + 0.04 + 0.09 + 0.25) / 4 = 0.12
    w1 = first_control_weights(FirstControlsConfig(k=1, weight=10), 4)
    assert w1.tolist() == [10.0, 1.0, 1.0, 1.0]
    assert float(imitation_loss(u, u_opt, s, w1)) == pytest.approx(0.12, rel=1e-12)
    # k = 2, weight 3: (3 * 0.01 + 3 * 0.04 + 0.09 + 0.25) / 4 = 0.1225
    w2 = first_control_weights(FirstControlsConfig(k=2, weight=3), 4)
    assert float(imitation_loss(u, u_opt, s, w2)) == pytest.approx(0.1225, rel=1e-12)
    # unweighted: (0.01 + 0.04 + 0.09 + 0.25) / 4 = 0.0975
    assert float(imitation_loss(u, u_opt, s)) == pytest.approx(0.0975, rel=1e-12)


def test_weighted_imitation_with_two_controls_matches_numpy():
    g = np.random.default_rng(3)
    u, u_opt = g.normal(size=(3, 6, 2)), g.normal(size=(3, 6, 2))
    s = np.array([0.5, 4.0])
    w = first_control_weights(FirstControlsConfig(k=3, weight=7.5), 6)
    ref = np.mean(np.array([7.5, 7.5, 7.5, 1, 1, 1])[None, :, None] * ((u - u_opt) / s) ** 2, axis=(1, 2))
    got = imitation_loss(torch.as_tensor(u), torch.as_tensor(u_opt), torch.as_tensor(s), w)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


def test_default_off_is_exactly_todays_loss(problem):
    u, u_opt, x0, xt, J = _batch()
    off = _loss(problem)
    assert off.step_weights is None
    loss, parts = off({"all_controls": torch.stack([u_opt, u])}, x0, xt, u_opt, J)
    # Today's formula, written out: the mean of ((u - u*) / s)^2 over batch, steps and controls.
    today = (((u - u_opt) / 2.0) ** 2).mean()
    assert torch.equal(loss, today)
    assert parts["imitation"] == float(today)
    # A weight of 1 is the same loss, bit for bit.
    one, _ = _loss(problem, first_controls={"k": 3, "weight": 1})({"all_controls": torch.stack([u_opt, u])},
                                                                    x0, xt, u_opt, J)
    assert torch.equal(one, loss)


def test_trcloss_weights_the_first_control_and_its_gradient(problem):
    u, u_opt, x0, xt, J = _batch(seed=1)
    u = u.clone().requires_grad_(True)
    on = _loss(problem, first_controls={"k": 1, "weight": 25})
    loss, parts = on({"all_controls": torch.stack([u_opt, u])}, x0, xt, u_opt, J)
    err = ((u - u_opt) / 2.0) ** 2
    ref = (25 * err[:, 0].sum() + err[:, 1:].sum()) / err.numel()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert parts["imitation"] == pytest.approx(float(ref.detach()), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, u)
    # d/du of w_j ((u - u*) / 2)^2 / (B N) = w_j (u - u*) / (2 B N)
    expected = torch.tensor([25.0, 1, 1, 1], dtype=torch.float64)[None, :, None] * (u - u_opt) / (2 * u.numel())
    torch.testing.assert_close(grad, expected.detach(), rtol=1e-12, atol=1e-15)


def test_config_parses_validates_and_round_trips():
    cfg = TrainConfig.from_dict({"loss": {"first_controls": {"k": 2, "weight": 50}}})
    assert cfg.loss.first_controls == FirstControlsConfig(k=2, weight=50.0)
    assert TrainConfig.from_dict(cfg.to_dict()).loss.first_controls == cfg.loss.first_controls
    # Off: the dictionary of a configuration without the option is what it was before the option.
    plain = TrainConfig().to_dict()
    assert "first_controls" not in plain["loss"]
    assert TrainConfig.from_dict(plain).loss.first_controls is None


@pytest.mark.parametrize("value, match", [
    ({"k": 0, "weight": 10}, r"first_controls\.k .*got 0"),
    ({"k": 1.5}, r"first_controls\.k"),
    ({"k": 1, "weight": 0.5}, r"first_controls\.weight .*\[1\.0, inf\].*got 0\.5"),
    ({"k": 1, "weight": float("nan")}, r"first_controls\.weight"),
    ({"k": 1, "discount": 0.9}, r"unknown key\(s\) \['discount'\].*first_controls"),
    (10, r"first_controls must be null or a mapping.*got 10"),
])
def test_bad_first_controls_raise_config_error(value, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"loss": {"first_controls": value}})


def test_k_beyond_the_horizon_raises_config_error(problem):
    with pytest.raises(ConfigError, match=rf"at most the horizon N = {N}, got {N + 1}"):
        _loss(problem, first_controls={"k": N + 1, "weight": 2})


def test_step_weights_of_the_wrong_length_raise_dimension_error():
    u = torch.zeros(2, 4, 1)
    with pytest.raises(DimensionError, match=r"step_weights has shape \(3,\); expected \(4,\)"):
        imitation_loss(u, u, torch.ones(1), torch.ones(3))
