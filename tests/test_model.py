"""Tests of the Tiny Recursive Control network (trc.models)."""

import math

import pytest
import torch
from torch import nn

import dynamics
from dynamics.errors import CheckpointError, ConfigError, DimensionError, NonFiniteError, UnknownNameError
from trc import Problem
from trc.config import from_dict
from trc.cost import quadratic_cost
from trc.io import atomic_torch_save
from trc.models import (
    PRESETS,
    FeedbackGain,
    RecursionCore,
    TinyRecursiveControl,
    TrajectoryErrorEncoder,
    TRCConfig,
    create,
    create_large,
    create_medium,
    create_small,
    create_two_level_large,
    create_fast,
    create_fast_tiny,
    create_two_level_medium,
    create_two_level_small,
    halting_loss,
    halting_targets,
    preset_config,
    preset_table,
    trajectory_error,
)

MODES = ("single_latent", "two_level")
TINY = dict(latent_dim=16, hidden_dim=32, num_layers=1, H_cycles=2, L_cycles=2, feedback_channels=4)


def problem_dict(plant="double_integrator", **plant_args):
    return dict(
        name=plant,
        plant={"name": plant, "u_min": -4, "u_max": 4, **plant_args},
        dt=0.33 if plant == "double_integrator" else 0.2,
        horizon=15 if plant == "double_integrator" else 10,
        Q=[10, 5],
        R=[0.1],
        Qf_scale=20,
        initial_state={"low": [-2, -2], "high": [2, 2]},
        target_state={"low": [-2, -2], "high": [2, 2]},
    )


@pytest.fixture(scope="module")
def di_problem():
    return Problem.from_dict(problem_dict())


@pytest.fixture(scope="module")
def vdp_problem():
    return Problem.from_dict(problem_dict("van_der_pol", mu=1.0))


def states(batch, seed=0, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (scale * (2 * torch.rand(batch, 2, generator=g) - 1)).to(dtype), (
        scale * (2 * torch.rand(batch, 2, generator=g) - 1)
    ).to(dtype)


def tiny_model(problem, seed=0, **overrides):
    torch.manual_seed(seed)
    return TinyRecursiveControl.from_problem(problem, TRCConfig(**{**TINY, **overrides}))


# ---------------------------------------------------------------------------- shapes and bounds
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_shapes_and_bounds_under_extreme_inputs(name):
    torch.manual_seed(0)
    model = create(name, 2, 1, 15, u_min=-4.0, u_max=4.0).eval()
    x0 = torch.tensor([[0.0, 0.0], [1e6, -1e6], [-3e4, 2e4], [1e-9, 5.0]])
    xt = torch.tensor([[1.0, -1.0], [-1e6, 1e6], [0.0, 0.0], [1e8, -1e8]])
    with torch.no_grad():
        out = model(x0, xt, return_all_iterations=True)
    assert out.controls.shape == (4, 15, 1)
    assert out.all_controls.shape == (model.config.H_cycles + 1, 4, 15, 1)
    assert out.all_costs is None and out.all_states is None  # no plant, no costs
    assert torch.isfinite(out.all_controls).all()
    assert (out.all_controls >= -4).all() and (out.all_controls <= 4).all()
    assert torch.equal(out.controls, out.all_controls[-1])


@pytest.mark.parametrize("mode", MODES)
def test_problem_model_shapes_costs_and_bounds(di_problem, mode):
    model = tiny_model(di_problem, mode=mode, H_cycles=3)
    x0, xt = states(6)
    x0[0] = torch.tensor([50.0, -50.0])  # far outside the training box
    with torch.no_grad():
        out = model(x0, xt, return_all_iterations=True)
    N, K = di_problem.horizon, 3
    assert out.controls.shape == (6, N, 1)
    assert out.all_controls.shape == (K + 1, 6, N, 1)
    assert out.all_states.shape == (K + 1, 6, N + 1, 2)
    assert out.all_costs.shape == (K + 1, 6)
    assert out.halt_logits is None
    assert out.cycles.tolist() == [K] * 6
    assert (out.all_controls.abs() <= 4).all()
    # all_states are the plant's rollouts of all_controls and all_costs their costs (trc.cost)
    plant = di_problem.make_plant()
    for k in range(K + 1):
        X = plant.rollout(x0, out.all_controls[k])
        torch.testing.assert_close(out.all_states[k], X)
        Q, R, Qf = di_problem.weights
        J = quadratic_cost(X, out.all_controls[k], xt, Q, R, Qf, di_problem.dt)
        torch.testing.assert_close(out.all_costs[k], J)


def test_bounds_one_sided_and_free_dimensions():
    torch.manual_seed(0)
    cfg = TRCConfig(state_dim=3, control_dim=4, horizon=7, **TINY)
    model = TinyRecursiveControl(cfg, u_min=[0.1, 0.0, -math.inf, -math.inf], u_max=[0.3, math.inf, 2.0, math.inf])
    x0 = torch.cat([torch.randn(64, 3), 1e5 * torch.randn(64, 3)])
    xt = torch.cat([torch.randn(64, 3), -1e5 * torch.randn(64, 3)])
    with torch.no_grad():
        u = model(x0, xt)
    assert u.shape == (128, 7, 4) and torch.isfinite(u).all()
    assert (u[..., 0] >= 0.1).all() and (u[..., 0] <= 0.3).all()
    assert (u[..., 1] >= 0.0).all()
    assert (u[..., 2] <= 2.0).all()
    # the squashing is exact: box centre at a = 0, identity on free dims
    a = torch.zeros(1, 1, 4)
    torch.testing.assert_close(model.squash(a)[0, 0, [0, 3]], torch.tensor([0.2, 0.0]))
    a = torch.tensor([[[0.0, 0.0, 0.0, -3.5]]])
    assert model.squash(a)[0, 0, 3] == -3.5


def test_an_output_margin_reaches_the_bounds_at_finite_pre_activations():
    """With output_margin delta, a box control is exactly on its bound once (1 + delta) tanh(a) >= 1,
    i.e. a >= atanh(1 / (1 + delta)), and the thrust magnitude under the rocket's norm bound
    likewise; unsquash inverts squash inside the bounds. Without it the bound is never reached."""
    delta = 0.05
    a_bound = math.atanh(1 / (1 + delta))
    cfg = TRCConfig(state_dim=2, control_dim=1, horizon=3, output_margin=delta, **TINY)
    model = TinyRecursiveControl(cfg, u_min=[-2.0], u_max=[3.0])
    a = torch.tensor([[[a_bound + 1e-3]], [[-a_bound - 1e-3]], [[0.3]]], dtype=torch.float64)
    u = model.double().squash(a)
    assert u[0, 0, 0] == 3.0 and u[1, 0, 0] == -2.0
    assert u[2, 0, 0] == pytest.approx(0.5 + 2.5 * (1 + delta) * math.tanh(0.3))
    torch.testing.assert_close(model.squash(model.unsquash(u[2:])), u[2:])
    plain = TinyRecursiveControl(TRCConfig(state_dim=2, control_dim=1, horizon=3, **TINY), u_min=[-2.0], u_max=[3.0])
    assert plain.double().squash(a)[0, 0, 0] < 3.0
    rocket = TinyRecursiveControl.from_problem(Problem(task="rocket"), {**TINY, "output_margin": delta}).double()
    lo, hi = rocket._norm_bounds
    T = rocket.squash(torch.tensor([[[0.0, 0.0, a_bound + 1e-3], [0.0, 0.0, 0.0]]], dtype=torch.float64))
    torch.testing.assert_close(T.norm(dim=-1), torch.tensor([[hi, lo]], dtype=torch.float64))
    with pytest.raises(ConfigError, match="output_margin"):
        TRCConfig(output_margin=-0.1)


@pytest.mark.parametrize("dims", [(1, 1, 1), (4, 2, 40), (6, 3, 25)])
def test_any_dimension_and_horizon_with_feedback(dims):
    n, m, N = dims
    plant = _LinearPlant(n, m)
    torch.manual_seed(0)
    model = TinyRecursiveControl(
        TRCConfig(state_dim=n, control_dim=m, horizon=N, **TINY), plant=plant, Q=1.0, R=0.1, u_min=-1, u_max=1
    )
    out = model(torch.randn(3, n), torch.randn(3, n), return_all_iterations=True)
    assert out.controls.shape == (3, N, m)
    assert out.all_states.shape == (3, 3, N + 1, n) and out.all_costs.shape == (3, 3)


class _LinearPlant(dynamics.Plant):
    """dx/dt = -x + B u with B = ones (test helper, any size)."""

    def __init__(self, n, m, **kw):
        self.state_names = tuple(f"x{i}" for i in range(n))
        self.control_names = tuple(f"u{i}" for i in range(m))
        super().__init__(dt=0.1, **kw)
        self.set_params(gain=1.0)

    def f(self, x, u):
        return -x + self.gain * u.sum(-1, keepdim=True).expand_as(x)


# ---------------------------------------------------------------------------- feedback
def test_feedback_changes_output_when_plant_changes(vdp_problem):
    model = tiny_model(vdp_problem).eval()
    x0, xt = states(5, seed=1)
    with torch.no_grad():
        u_own = model(x0, xt)
        u_none = model(x0, xt, plant=False)
        u_other = model(x0, xt, plant=dynamics.make("van_der_pol", mu=3.0, dt=vdp_problem.dt))
        model.plant.set_params(mu=3.0)
        u_changed = model(x0, xt)
        model.plant.set_params(mu=1.0)
        u_back = model(x0, xt)
    assert (u_own - u_none).abs().max() > 1e-4  # feedback is used by default
    assert (u_own - u_changed).abs().max() > 1e-4  # ... and depends on the plant's parameters
    torch.testing.assert_close(u_changed, u_other)
    torch.testing.assert_close(u_back, u_own)


def test_feedback_flag_off_ignores_the_plant(vdp_problem):
    model = tiny_model(vdp_problem, feedback=False).eval()
    assert model.error_encoder is None
    x0, xt = states(4)
    with torch.no_grad():
        out = model(x0, xt, return_all_iterations=True)
        model.plant.set_params(mu=3.0)
        u2 = model(x0, xt)
    torch.testing.assert_close(out.controls, u2)
    assert out.all_costs is not None  # the plant still gives the costs


def test_error_encoder_sees_the_whole_trajectory():
    torch.manual_seed(0)
    enc = TrajectoryErrorEncoder(state_dim=2, horizon=30, latent_dim=8, channels=4)
    X = torch.randn(3, 31, 2)
    xt = torch.randn(3, 2)
    e = trajectory_error(X, xt, torch.tensor([2.0, 0.5]))
    assert e.shape == (3, 30, 2)
    torch.testing.assert_close(e[:, -1], torch.asinh((X[:, -1] - xt) / torch.tensor([2.0, 0.5])))
    X2 = X.clone()
    X2[:, 7] += 1.0  # change an intermediate state only, terminal error unchanged
    e2 = trajectory_error(X2, xt, torch.tensor([2.0, 0.5]))
    assert (enc(e) - enc(e2)).abs().max() > 1e-4
    # a diverged rollout gives finite features
    X2[0, 3] = float("inf")
    X2[1, 4] = float("nan")
    assert torch.isfinite(enc(trajectory_error(X2, xt, torch.ones(2)))).all()
    with pytest.raises(DimensionError):
        enc(torch.zeros(3, 29, 2))


def test_trajectory_error_asinh_matches_torch_and_clips_diverged_states():
    """The written-out asinh has torch.asinh's values and derivative (also at 0); errors beyond
    1e6 (finite or not) are clipped, so features stay finite where x^2 would overflow."""
    from trc.models.feedback import _asinh

    x = torch.cat((torch.tensor([0.0, -0.0, 1e-12, -1e-9]), torch.logspace(-6, 6, 49), -torch.logspace(-6, 6, 49)))
    x = x.double().requires_grad_(True)
    torch.testing.assert_close(_asinh(x), torch.asinh(x), rtol=1e-12, atol=1e-15)
    got, = torch.autograd.grad(_asinh(x).sum(), x)
    torch.testing.assert_close(got, 1.0 / torch.sqrt(1.0 + x.detach() ** 2))
    x32 = x.detach().float()
    assert (_asinh(x32).double() - torch.asinh(x.detach())).abs().max() < 1e-6
    X = torch.zeros(1, 3, 2)
    X[0, 1] = torch.tensor([1e30, -float("inf")])
    X[0, 2] = torch.tensor([float("nan"), 3.0])
    e = trajectory_error(X, torch.zeros(1, 2), torch.ones(2))
    limit = math.asinh(1e6)
    torch.testing.assert_close(e[0], torch.tensor([[limit, -limit], [limit, math.asinh(3.0)]]))
    # the precomputed inverse scale (what exported programs use) gives the same numbers
    scale = torch.tensor([4.0, 0.25])
    torch.testing.assert_close(trajectory_error(X, torch.zeros(1, 2), scale, (1.0 / scale).repeat(2)),
                               trajectory_error(X, torch.zeros(1, 2), scale))
    X3, xt3 = torch.randn(5, 31, 2), torch.randn(5, 2)
    torch.testing.assert_close(trajectory_error(X3, xt3, scale, (1.0 / scale).repeat(30)),
                               torch.asinh((X3[:, 1:] - xt3[:, None]) / scale), rtol=1e-6, atol=1e-6)


def test_error_encoder_pool_first_pools_before_the_convolutions():
    """``pool_first``: adaptive average pooling to 16 positions, then torch's convolutions."""
    torch.manual_seed(0)
    enc = TrajectoryErrorEncoder(state_dim=2, horizon=100, latent_dim=8, channels=4, pool_first=True)
    errors = torch.randn(3, 100, 2)
    h = torch.nn.functional.adaptive_avg_pool1d(errors.transpose(1, 2), 16)  # (3, 2, 16)
    h = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(h))))  # (3, 4, 16)
    torch.testing.assert_close(enc(errors), enc.proj(h.flatten(1)) + enc.terminal(errors[:, -1]))
    # the same parameters as the default encoder, which pools after the convolutions
    after = TrajectoryErrorEncoder(state_dim=2, horizon=100, latent_dim=8, channels=4)
    after.load_state_dict(enc.state_dict())
    assert (after(errors) - enc(errors)).abs().max() > 1e-4
    errors.requires_grad_(True)
    h = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(errors.transpose(1, 2)))))  # (3, 4, 100)
    ref = enc.proj(torch.nn.functional.adaptive_avg_pool1d(h, 16).flatten(1)) + enc.terminal(errors[:, -1])
    got = after(errors)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(*(torch.autograd.grad(y.square().sum(), errors)[0] for y in (got, ref)))


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("form", ["_conv_im2col", "_conv_shifted_sum"])
def test_error_encoder_convolutions_match_conv1d(kernel, form):
    """Both matrix-product forms of the encoder's convolutions are torch's Conv1d with "same" padding."""
    from trc.models import feedback

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(3, 7, kernel, padding=kernel // 2)
    h = torch.randn(4, 11, 3, requires_grad=True)
    got = getattr(feedback, form)(h, conv, 11)
    ref = conv(h.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(got, ref)
    g_got, = torch.autograd.grad(got.square().sum(), h)
    g_ref, = torch.autograd.grad(ref.square().sum(), h)
    torch.testing.assert_close(g_got, g_ref)


def test_error_encoder_shifted_sum_convolutions():
    """``shifted_sum``: torch.export traces no im2col stack and no convolution, and the encoder
    gives the default's numbers."""
    torch.manual_seed(0)
    enc = TrajectoryErrorEncoder(state_dim=3, horizon=40, latent_dim=8, channels=4, pool_first=True).eval()
    errors = torch.randn(5, 40, 3)
    expected = enc(errors)

    def targets():
        graph = torch.export.export(enc, (errors,), strict=False).graph
        return {str(node.target) for node in graph.nodes if node.op == "call_function"}

    assert any("stack" in t for t in targets())  # the default, im2col
    enc.shifted_sum = True
    assert not any("stack" in t or "conv" in t for t in targets()), targets()
    torch.testing.assert_close(enc(errors), expected)
    assert "shifted_sum" not in enc.state_dict() and not TrajectoryErrorEncoder(3, 40, 8).shifted_sum


@pytest.mark.parametrize("length, positions", [(23, 16), (100, 16), (60, 16), (7, 7)])
def test_error_encoder_pooling_matches_adaptive_avg_pool(length, positions):
    from trc.models.feedback import _average_bins

    h = torch.randn(3, 5, length)
    torch.testing.assert_close(h @ _average_bins(length, positions).T, torch.nn.functional.adaptive_avg_pool1d(h, positions))


def test_feedback_gain_is_an_ilc_update(di_problem):
    """With the network's residual zeroed, a cycle is exactly u_1 = sat(a_0 + L vec(e(u_0)))."""
    model = tiny_model(di_problem, H_cycles=1, gradient_last_cycle_only=False).eval()
    assert isinstance(model.feedback_gain, FeedbackGain)
    assert (model.feedback_gain.gain.weight == 0).all()  # starts as the plain network
    with torch.no_grad():
        model.refine_head[-1].weight.zero_()
        model.refine_head[-1].bias.zero_()
        model.feedback_gain.gain.weight.normal_(std=0.1)
        x0, xt = states(4)
        out = model(x0, xt, return_all_iterations=True)
        a0 = torch.atanh(out.all_controls[0] / 4.0)
        errors = trajectory_error(di_problem.make_plant().rollout(x0, out.all_controls[0]), xt, model.state_scale)
        expected = 4.0 * torch.tanh(a0 + model.feedback_gain.gain(errors.flatten(1)).view(4, 15, 1))
    torch.testing.assert_close(out.controls, expected, atol=1e-4, rtol=1e-4)
    assert tiny_model(di_problem, feedback_gain=False).feedback_gain is None


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("last_only", [False, True])
def test_gradients_reach_every_parameter(di_problem, mode, last_only):
    model = tiny_model(di_problem, mode=mode, act=True, gradient_last_cycle_only=last_only, H_cycles=3).train()
    x0, xt = states(16)
    target_u = torch.rand(16, di_problem.horizon, 1)
    out = model(x0, xt, return_all_iterations=True)
    assert out.halt_logits.shape == (3, 16)
    loss = (out.all_controls - target_u).pow(2).mean() + out.all_costs[-1].mean() * 1e-3
    loss = loss + halting_loss(out.halt_logits, out.all_costs, model.config.halt_threshold)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"
    assert not any(b.requires_grad for b in model.buffers())


def test_gradient_last_cycle_only_detaches_earlier_cycles():
    core = RecursionCore(8, 16, 1, "two_level", L_cycles=2)
    x = torch.randn(4, 8, requires_grad=True)
    outs, state = core(x, H_cycles=3, gradient_last_cycle_only=True)
    assert [o.requires_grad for o in outs] == [False, False, True]
    outs, _ = core(x, H_cycles=3)
    assert all(o.requires_grad for o in outs)


def test_parameters_train(di_problem):
    """A few optimiser steps on a fixed batch lower the imitation loss (the model can learn)."""
    model = tiny_model(di_problem, H_cycles=2)
    x0, xt = states(32)
    target = 2 * torch.tanh(x0[:, :1] - xt[:, :1]).unsqueeze(1).expand(32, di_problem.horizon, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = (model(x0, xt, plant=False) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# ---------------------------------------------------------------------------- halting
class _HaltEven(nn.Module):
    """Halting stub: even samples (all samples if ``everyone``) halt at once, odd ones never."""

    def __init__(self, everyone=False):
        super().__init__()
        self.everyone = everyone

    def forward(self, z_H, feedback=None):
        idx = torch.arange(z_H.shape[0])
        return torch.where((idx % 2 == 0) | self.everyone, 1.0, -1.0).to(z_H)


@pytest.mark.parametrize("mode", MODES)
def test_act_halts_per_sample_at_inference(di_problem, mode):
    model = tiny_model(di_problem, mode=mode, act=True, H_cycles=3).eval()
    x0, xt = states(5)
    with torch.no_grad():
        full = model(x0, xt, return_all_iterations=True)  # untrained head (bias -5): never halts
        assert full.cycles.tolist() == [3] * 5
        model.halting = _HaltEven()
        out = model(x0, xt, return_all_iterations=True)
    assert out.cycles.tolist() == [0, 3, 0, 3, 0]
    torch.testing.assert_close(out.controls[0::2], full.all_controls[0][0::2])  # kept cycle-0 controls
    torch.testing.assert_close(out.controls[1::2], full.controls[1::2])
    torch.testing.assert_close(out.all_costs[-1], model.cost(out.all_states[-1], out.controls, xt))
    # all halted -> the loop stops at once
    model.halting = _HaltEven(everyone=True)
    with torch.no_grad():
        out = model(x0, xt, return_all_iterations=True)
    assert out.all_controls.shape[0] == 1 and out.cycles.tolist() == [0] * 5
    # in training mode ACT never stops early (deep supervision sees every cycle)
    model.train()
    out = model(x0, xt, return_all_iterations=True)
    assert out.cycles.tolist() == [3] * 5 and out.halt_logits.shape == (3, 5)


def test_halting_targets_and_loss():
    costs = torch.tensor([[10.0, 10.0], [5.0, 9.99], [4.99, 5.0]])  # (cycles + 1, batch)
    t = halting_targets(costs, threshold=0.01)
    torch.testing.assert_close(t, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    t_rest = halting_targets(costs, threshold=0.01, lookahead="rest")
    torch.testing.assert_close(t_rest, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    logits = torch.tensor([[-2.0, 3.0], [1.0, -1.0]])
    expected = nn.functional.binary_cross_entropy_with_logits(logits, t)
    torch.testing.assert_close(halting_loss(logits, costs, 0.01), expected)
    with pytest.raises(DimensionError):
        halting_loss(logits[:1], costs)
    with pytest.raises(ValueError):
        halting_targets(costs, lookahead="sideways")


# ---------------------------------------------------------------------------- config
def test_config_from_dict_and_validation():
    cfg = from_dict(TRCConfig, {"mode": "single_latent", "latent_dim": 32}, "model")
    assert cfg.mode == "single_latent" and cfg.latent_dim == 32
    assert TRCConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="latent_dm"):
        from_dict(TRCConfig, {"latent_dm": 32}, "model")
    bad = [
        dict(mode="three_level"),
        dict(latent_dim=0),
        dict(H_cycles=2.5),
        dict(L_cycles=-1),
        dict(num_layers=True),
        dict(dropout=1.0),
        dict(feedback_kernel=4),
        dict(feedback="yes"),
        dict(halt_threshold=-0.1),
        dict(horizon=0),
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError) as info:
            TRCConfig(**kwargs)
        key, value = next(iter(kwargs.items()))
        assert key in str(info.value) and str(value) in str(info.value)
    with pytest.raises(ConfigError):
        TRCConfig().replace(lattent_dim=3)


def test_model_rejects_bad_construction(di_problem):
    with pytest.raises(ConfigError, match="state_dim"):
        TinyRecursiveControl(TRCConfig())
    with pytest.raises(ConfigError, match="horizon=20 but the problem has 15"):
        TinyRecursiveControl.from_problem(di_problem, TRCConfig(horizon=20))
    cfg = TRCConfig(state_dim=2, control_dim=1, horizon=5, **TINY)
    with pytest.raises(DimensionError):
        TinyRecursiveControl(cfg, plant=_LinearPlant(3, 1))
    with pytest.raises(DimensionError):
        TinyRecursiveControl(cfg, u_min=[-1, -1])
    with pytest.raises(ConfigError):
        TinyRecursiveControl(cfg, u_min=1, u_max=-1)
    with pytest.raises(NonFiniteError):
        TinyRecursiveControl(cfg, state_scale=[1.0, 0.0])
    with pytest.raises(UnknownNameError, match="two_level_small"):
        preset_config("huge")


def test_forward_input_validation(di_problem):
    model = tiny_model(di_problem)
    x = torch.zeros(3, 2)
    with pytest.raises(DimensionError, match=r"\(3, 3\).*state_dim=2"):
        model(torch.zeros(3, 3), x)
    with pytest.raises(DimensionError):
        model(torch.zeros(2), torch.zeros(2))
    with pytest.raises(DimensionError, match="batch"):
        model(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(NonFiniteError):
        model(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))
    with pytest.raises(NonFiniteError):
        model(torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(DimensionError, match="state_dim=3"):
        model(x, x, plant=_LinearPlant(3, 1))
    with pytest.raises(TypeError):
        model(x, x, plant="double_integrator")


# ---------------------------------------------------------------------------- presets
def test_preset_table_matches_measured_counts():
    rows = {row["preset"]: row for row in preset_table(state_dim=2, control_dim=1, horizon=15)}
    assert list(rows) == list(PRESETS)
    factories = {
        "small": create_small, "medium": create_medium, "large": create_large,
        "two_level_small": create_two_level_small, "two_level_medium": create_two_level_medium,
        "two_level_large": create_two_level_large, "fast": create_fast, "fast_tiny": create_fast_tiny,
    }
    for name, factory in factories.items():
        model = factory(2, 1, 15)
        assert model.get_parameter_count() == rows[name]["parameters"]
        assert model.get_parameter_count() == sum(p.numel() for p in model.parameters())
        assert model.parameter_breakdown()["total"] == rows[name]["parameters"]
        assert rows[name]["mode"] == ("two_level" if name.startswith("two_level") else "single_latent")
        if name != "fast_tiny":  # meant for long sequences: 129,456 parameters on the rocket (below)
            assert 0.1e6 <= rows[name]["parameters"] <= 5e6
    assert rows["small"]["parameters"] <= 0.3e6 < rows["medium"]["parameters"] < rows["large"]["parameters"]
    assert 0.1e6 <= create_fast_tiny(7, 3, 50).get_parameter_count() < create_fast(7, 3, 50).get_parameter_count()
    assert rows["fast"]["H_cycles"] * rows["fast"]["L_cycles"] * rows["fast"]["num_layers"] < (
        rows["small"]["H_cycles"] * rows["small"]["L_cycles"] * rows["small"]["num_layers"])


def test_preset_overrides_and_plant_buffers_are_not_parameters(di_problem):
    model = create_small(2, 1, 15, H_cycles=5, act=True, plant=di_problem.make_plant(), u_max=2.0, u_min=-2.0)
    assert model.config.H_cycles == 5 and model.halting is not None and model.plant is not None
    assert model.u_max.tolist() == [2.0]
    mine = TinyRecursiveControl.from_problem(di_problem, preset_config("small"))
    vdp = TinyRecursiveControl.from_problem(
        Problem.from_dict(problem_dict("van_der_pol", mu=1.0) | {"horizon": 15}), preset_config("small")
    )
    assert mine.get_parameter_count() == vdp.get_parameter_count()  # mu is a buffer
    assert "plant.mu" in dict(vdp.named_buffers())


# ---------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("mode", MODES)
def test_deterministic_given_seed(di_problem, mode):
    x0, xt = states(4)
    u1 = tiny_model(di_problem, seed=3, mode=mode)(x0, xt)
    u2 = tiny_model(di_problem, seed=3, mode=mode)(x0, xt)
    u3 = tiny_model(di_problem, seed=4, mode=mode)(x0, xt)
    assert torch.equal(u1, u2)
    assert not torch.equal(u1, u3)


@pytest.mark.parametrize("mode", MODES)
def test_float64(di_problem, mode):
    model = tiny_model(di_problem, mode=mode).double()
    x0, xt = states(4, dtype=torch.float64)
    out = model(x0, xt, return_all_iterations=True)
    assert out.controls.dtype == torch.float64 and out.all_costs.dtype == torch.float64
    assert out.all_states.dtype == torch.float64
    out.controls.sum().backward()
    # float32 inputs are cast to the model's dtype
    assert model(x0.float(), xt.float()).dtype == torch.float64


@pytest.mark.parametrize("mode", MODES)
def test_batch_independence(di_problem, mode):
    model = tiny_model(di_problem, mode=mode, act=True).eval()
    model.halting.from_latent.weight.data.normal_()  # make ACT decisions sample-dependent
    model.halting.from_latent.bias.data.zero_()
    x0, xt = states(7, seed=5)
    with torch.no_grad():
        batch = model(x0, xt)
        for i in range(7):
            torch.testing.assert_close(model(x0[i : i + 1], xt[i : i + 1]), batch[i : i + 1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- save and rebuild
def test_model_file_round_trip(di_problem, tmp_path):
    import trc
    from trc.model_file import read_model_file

    model = tiny_model(di_problem, act=True).eval()
    x0, xt = states(3)
    path = tmp_path / "model.pt"
    trc.save(model, path, metadata={"note": "round trip"})
    payload = read_model_file(path)
    assert payload["kind"] == "continuous" and payload["model_class"] == "TinyRecursiveControl"
    assert payload["model_config"]["horizon"] == 15 and payload["problem"]["name"] == "double_integrator"
    rebuilt = trc.load(path)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x0, xt), model(x0, xt))
    assert rebuilt.plant is not None and rebuilt.dt == di_problem.dt
    assert rebuilt.problem.to_dict() == di_problem.to_dict() and rebuilt.metadata == {"note": "round trip"}
    bare = TinyRecursiveControl.from_config(model.export_config())
    assert bare.plant is None and bare.get_parameter_count() == model.get_parameter_count()
    with pytest.raises(ConfigError, match="not built for a problem"):
        trc.save(bare, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        trc.load(tmp_path / "missing.pt")
    other = {**payload, "model_config": {**payload["model_config"], "latent_dim": 8}}
    atomic_torch_save(other, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        trc.load(tmp_path / "other.pt")


# ---------------------------------------------------------------------------- the recursion core alone
def test_recursion_core_on_tokens_with_feedback():
    torch.manual_seed(0)
    core = RecursionCore(8, 16, 2, "two_level", L_cycles=3, token_mixing=5)
    x = torch.randn(2, 5, 8)
    calls = []

    def feedback(k, state):
        calls.append(k)
        return torch.full_like(x, float(k))

    outs, state = core(x, H_cycles=3, feedback=feedback)
    assert calls == [0, 1, 2] and len(outs) == 3 and outs[-1].shape == (2, 5, 8)
    assert state.z_L.shape == (2, 5, 8)
    # one H-cycle = L_cycles z_L updates then one z_H update, all with the same network
    s0 = core.init_state(x)
    z_L = s0.z_L
    for _ in range(3):
        z_L = core.net(z_L, s0.z_H + x)
    torch.testing.assert_close(core.step(s0, x).z_H, core.net(s0.z_H, z_L))
    # token mixing makes tokens interact; single-latent mode has no z_L
    single = RecursionCore(8, 16, 1, "single_latent", L_cycles=2)
    assert single.init_state(x).z_L is None
    with pytest.raises(DimensionError):
        core.step(core.init_state(torch.randn(2, 4, 8)), torch.randn(2, 4, 8))
    with pytest.raises(ConfigError):
        RecursionCore(8, 16, 1, "three_level")
