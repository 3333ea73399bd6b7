"""Generic tests of every registered plant, plus plant-specific references.

The generic tests are parametrised over ``dynamics.names()``, so a new plant is tested as soon
as it is registered (plants with ``differentiable = False`` are skipped). References are
independent of the implementation: Jacobians written out by hand (or central finite
differences for plants without one here), a tight-tolerance dopri5 solution, python-control's
``input_output_response`` and ``c2d``, and the equations of Gymnasium's classic-control
environments.
"""

from __future__ import annotations

import copy
import json
import math

import control as ct
import numpy as np
import pytest
import torch

import dynamics
from dynamics import ConfigError, DimensionError, NonFiniteError, TRCError, UnknownNameError

F64 = torch.float64

# Constructor arguments of the plants in these tests (plants not listed use their defaults).
PLANT_KWARGS = {
    "linear": dict(A=[[0.0, 1.0], [-2.0, -0.5]], B=[[0.0], [1.0]]),
    "pendulum": dict(b=0.1),
    "cartpole": dict(b_c=0.2, b_p=0.01),
}
# Extra variants tested like registered plants: (case id, plant name, constructor arguments).
EXTRA_CASES = [
    ("linear_discrete", "linear", dict(A=[[1.0, 0.1], [-0.2, 0.95]], B=[[0.005], [0.1]], discrete=True, dt=0.1)),
    ("linear_mimo", "linear", dict(A=[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -2.0, -1.5]],
                                   B=[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])),
    ("pendulum_point_mass", "pendulum", dict(m=0.5, l=0.8, lc=0.8, I=0.5 * 0.8**2, g=9.81)),
]
# The physical parameter each plant's gradient is checked against (default: its first one).
GRAD_PARAM = {"cartpole": "m_p", "pendulum": "m", "van_der_pol": "mu", "linear": "A"}


def _cases():
    cases = []
    for name in dynamics.names():
        marks = ()
        if getattr(dynamics.get(name), "differentiable", True) is False:
            marks = pytest.mark.skip(reason=f"{name} declares differentiable = False")
        cases.append(pytest.param(name, name, PLANT_KWARGS.get(name, {}), id=name, marks=marks))
    cases += [pytest.param(*case, id=case[0]) for case in EXTRA_CASES]
    return cases


CASES = _cases()


def build(name, kwargs, **extra) -> dynamics.Plant:
    """The plant in float64."""
    return dynamics.make(name, **{**kwargs, **extra}).double()


def sample_states(plant, batch: int, gen: torch.Generator) -> torch.Tensor:
    """States uniform inside finite bounds, standard normal (clamped to one-sided bounds) elsewhere."""
    lo, hi = plant.x_min.to(F64), plant.x_max.to(F64)
    n = plant.state_dim
    normal = torch.randn(batch, n, generator=gen, dtype=F64)
    uniform = torch.rand(batch, n, generator=gen, dtype=F64)
    both = torch.isfinite(lo) & torch.isfinite(hi)
    box = torch.where(both, lo, 0) + torch.where(both, hi - lo, 0) * uniform
    return torch.where(both, box, torch.maximum(torch.minimum(normal, hi), lo))


def sample_controls(plant, batch: int, horizon: int, gen: torch.Generator) -> torch.Tensor:
    """Controls uniform inside finite bounds (inner 90 %), standard normal elsewhere."""
    lo, hi = plant.u_min.to(F64), plant.u_max.to(F64)
    m = plant.control_dim
    normal = torch.randn(batch, horizon, m, generator=gen, dtype=F64)
    uniform = torch.rand(batch, horizon, m, generator=gen, dtype=F64)
    both = torch.isfinite(lo) & torch.isfinite(hi)
    box = torch.where(both, lo, 0) + torch.where(both, hi - lo, 0) * (0.05 + 0.9 * uniform)
    return torch.where(both, box, torch.maximum(torch.minimum(normal, hi), lo))


def field(plant):
    """The map whose Jacobian ``linearize`` returns: ``f`` or the difference map."""
    return plant.discrete_step if plant.discrete else plant.f


# ---------------------------------------------------------------------- analytic Jacobians
def _jac_double_integrator(p, x, u):
    return np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[0.0], [1.0]])


def _jac_van_der_pol(p, x, u):
    mu, (pos, vel) = p["mu"], x
    return np.array([[0.0, 1.0], [-2 * mu * pos * vel - 1, mu * (1 - pos**2)]]), np.array([[0.0], [1.0]])


def _jac_pendulum(p, x, u):
    # I theta'' = u - m g lc sin(theta) - b omega  (Tedrake, Underactuated Robotics, ch. 2)
    m, g, lc, inertia, b = p["m"], p["g"], p["lc"], p["I"], p["b"]
    A = np.array([[0.0, 1.0], [-m * g * lc * math.cos(x[0]) / inertia, -b / inertia]])
    return A, np.array([[0.0], [1.0 / inertia]])


def _jac_cartpole(p, x, u):
    # Valid at equilibria only (sin(theta) = 0, velocities and force zero): linearise the
    # Lagrange equations M(theta) [x'', theta''] = [u - b_c x', m_p g l sin(theta) - b_p theta'].
    assert math.sin(x[2]) == pytest.approx(0, abs=1e-12) and not np.any(x[[1, 3]]) and not np.any(u)
    mc, mp, l, g, bc, bp = (p[k] for k in ("m_c", "m_p", "l", "g", "b_c", "b_p"))
    c = math.cos(x[2])
    M = np.array([[mc + mp, mp * l * c], [mp * l * c, 4.0 / 3.0 * mp * l**2]])
    Minv = np.linalg.inv(M)
    lower_A = Minv @ np.array([[0.0, -bc, 0.0, 0.0], [0.0, 0.0, mp * g * l * c, -bp]])
    lower_B = Minv @ np.array([[1.0], [0.0]])
    A = np.array([[0.0, 1.0, 0.0, 0.0], lower_A[0], [0.0, 0.0, 0.0, 1.0], lower_A[1]])
    B = np.array([[0.0], [lower_B[0, 0]], [0.0], [lower_B[1, 0]]])
    return A, B


def _jac_linear(p, x, u):
    return np.array(p["A"]), np.array(p["B"])


# name -> (Jacobian function, points (x, u) where it is valid, or None for random points)
ANALYTIC = {
    "double_integrator": (_jac_double_integrator, None),
    "van_der_pol": (_jac_van_der_pol, None),
    "pendulum": (_jac_pendulum, [([0.0, 0.0], [0.0]), ([math.pi, 0.0], [0.0])]),
    "cartpole": (_jac_cartpole, [([0.0, 0.0, 0.0, 0.0], [0.0]), ([0.3, 0.0, math.pi, 0.0], [0.0])]),
    "linear": (_jac_linear, None),
}


def central_differences(fun, x, u, h=1e-6):
    """``(df/dx, df/du)`` by central differences, float64 numpy; ``fun`` maps (1, n), (1, m)."""
    x = torch.as_tensor(x, dtype=F64).reshape(1, -1)
    u = torch.as_tensor(u, dtype=F64).reshape(1, -1)
    cols = []
    for z, other, first in ((x, u, True), (u, x, False)):
        J = []
        for i in range(z.shape[1]):
            step = torch.zeros_like(z)
            step[0, i] = h * max(1.0, abs(float(z[0, i])))
            args_p = (z + step, other) if first else (other, z + step)
            args_m = (z - step, other) if first else (other, z - step)
            J.append(((fun(*args_p) - fun(*args_m)) / (2 * step[0, i]))[0].detach().numpy())
        cols.append(np.stack(J, axis=1))
    return cols[0], cols[1]


# ---------------------------------------------------------------------- generic tests
@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_gradcheck_rollout(case, name, kwargs):
    """Rollouts are differentiable in x0, the controls and a physical parameter (float64)."""
    plant = build(name, kwargs)
    gen = torch.Generator().manual_seed(0)
    x0 = sample_states(plant, 2, gen).requires_grad_()
    controls = sample_controls(plant, 2, 3, gen).requires_grad_()
    key = GRAD_PARAM.get(name, next(iter(plant.params), None))
    inputs = [x0, controls]
    if key is not None:
        inputs.append(plant.get_buffer(key).detach().clone().requires_grad_())

    def rollout(x0, controls, *param):
        if param:
            setattr(plant, key, param[0])  # assigning a tensor to a buffer name replaces the buffer
        return plant.rollout(x0, controls)

    assert torch.autograd.gradcheck(rollout, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_linearize_matches_analytic_jacobians(case, name, kwargs):
    """``linearize`` against Jacobians written in this file (finite differences if none)."""
    plant = build(name, kwargs)
    params = plant.params
    jac, points = ANALYTIC.get(name, (None, None))
    if points is None:
        gen = torch.Generator().manual_seed(1)
        points = list(zip(sample_states(plant, 3, gen).tolist(), sample_controls(plant, 3, 1, gen)[:, 0].tolist()))
    for x, u in points:
        sys = plant.linearize(x, u)
        if jac is not None:
            A, B = jac(params, np.asarray(x), np.asarray(u))
        else:
            A, B = central_differences(field(plant), x, u)
        np.testing.assert_allclose(sys.A, A, rtol=1e-7, atol=1e-9, err_msg=f"A at x={x}, u={u}")
        np.testing.assert_allclose(sys.B, B, rtol=1e-7, atol=1e-9, err_msg=f"B at x={x}, u={u}")
        assert sys.dt == (plant.dt if plant.discrete else 0)
        assert sys.state_labels == list(plant.state_names) and sys.input_labels == list(plant.control_names)


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_linearize_matches_finite_differences(case, name, kwargs):
    """``linearize`` (autograd) against central differences of ``f`` at random points."""
    plant = build(name, kwargs)
    gen = torch.Generator().manual_seed(2)
    for x, u in zip(sample_states(plant, 2, gen), sample_controls(plant, 2, 1, gen)[:, 0]):
        sys = plant.linearize(x.numpy(), u.numpy())
        A, B = central_differences(field(plant), x, u)
        scale = max(1.0, np.abs(A).max(), np.abs(B).max())
        np.testing.assert_allclose(sys.A, A, rtol=1e-6, atol=1e-7 * scale)
        np.testing.assert_allclose(sys.B, B, rtol=1e-6, atol=1e-7 * scale)


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_rk4_converges_with_fourth_order(case, name, kwargs):
    """Halving the RK4 step (``substeps``) divides the error against dopri5 by ~16.

    Errors are relative to each state's magnitude. When the plant's own ``dt`` gives errors
    too close to round-off to measure (slow dynamics), ``dt`` is increased 8- then 64-fold.
    """
    plant = build(name, kwargs)
    if plant.discrete:
        pytest.skip("difference equation: no integrator")
    gen = torch.Generator().manual_seed(3)
    x0, controls = sample_states(plant, 2, gen), sample_controls(plant, 2, 2, gen)
    floor = 1e-11  # relative round-off and reference error
    for factor in (1, 8, 64):
        dt = plant.dt * factor
        ref = build(name, kwargs, method="dopri5", rtol=1e-13, atol=1e-13, dt=dt)
        with torch.no_grad():
            x_ref = ref.rollout(x0, controls)
            scale = x_ref.abs().amax(dim=(0, 1)) + 1.0
            errors = []
            for substeps in (1, 2, 4, 8):
                approx = build(name, kwargs, method="rk4", substeps=substeps, dt=dt).rollout(x0, controls)
                errors.append(float(((approx - x_ref).abs() / scale).max()))
        if errors[0] > 1e-8 or errors[0] < floor:
            break
    if errors[0] < floor:  # RK4 is exact (e.g. polynomial solutions of the double integrator)
        return
    ratios = [e0 / e1 for e0, e1 in zip(errors, errors[1:]) if e1 > 20 * floor]
    assert ratios, f"errors {errors} fall below the floor too fast to measure an order"
    orders = np.log2(ratios)
    # the finest measurable pair is in the asymptotic regime; none may be below order 3.3
    assert 3.6 < orders[-1] < 4.5, f"observed orders {orders}, errors {errors} (dt={dt})"
    assert orders.min() > 3.3, f"observed orders {orders}, errors {errors} (dt={dt})"


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_rollout_shapes_and_batching(case, name, kwargs):
    """Shapes are batch first; a batch gives the same result as its samples one by one."""
    plant = dynamics.make(name, **kwargs)  # float32, the default
    gen = torch.Generator().manual_seed(4)
    batch, horizon, n, m = 3, 4, plant.state_dim, plant.control_dim
    x0 = sample_states(plant, batch, gen).float()
    controls = sample_controls(plant, batch, horizon, gen).float()
    with torch.no_grad():
        traj = plant.rollout(x0, controls)
        assert traj.shape == (batch, horizon + 1, n) and traj.dtype == torch.float32
        torch.testing.assert_close(traj[:, 0], x0)
        for i in range(batch):
            single = plant.rollout(x0[i : i + 1], controls[i : i + 1])[0]
            torch.testing.assert_close(single, traj[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plant.step(x0, controls[:, 0]), traj[:, 1], rtol=1e-5, atol=1e-5)
        assert plant.rollout(x0, controls[:, :0]).shape == (batch, 1, n)
        if not plant.discrete:
            out = plant.f(x0, controls[:, 0])
            assert out.shape == (batch, n) and torch.isfinite(out).all()


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_to_iosys_agrees_with_rollout(case, name, kwargs):
    """python-control's simulation of ``to_iosys()`` matches ``rollout`` (constant input)."""
    plant = build(name, kwargs, method="dopri5", rtol=1e-11, atol=1e-11)
    gen = torch.Generator().manual_seed(5)
    horizon = 5
    x0 = sample_states(plant, 1, gen)
    u = sample_controls(plant, 1, 1, gen)[0, 0]
    controls = u.expand(1, horizon, -1)  # constant: python-control interpolates inputs linearly
    with torch.no_grad():
        traj = plant.rollout(x0, controls)[0].numpy()
    sys = plant.to_iosys()
    T = np.arange(horizon + 1) * plant.dt
    U = np.repeat(u.numpy()[:, None], horizon + 1, axis=1)
    kwargs_ivp = {} if plant.discrete else {"solve_ivp_kwargs": {"rtol": 1e-11, "atol": 1e-11}}
    resp = ct.input_output_response(sys, T, U, x0[0].numpy(), **kwargs_ivp)
    scale = np.abs(traj).max() + 1.0
    np.testing.assert_allclose(resp.states.T, traj, rtol=1e-7, atol=1e-8 * scale)
    np.testing.assert_allclose(resp.outputs.T, traj, rtol=1e-7, atol=1e-8 * scale)


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_config_round_trip(case, name, kwargs):
    """``make(**plant.config())`` rebuilds the same plant; the config is JSON-serialisable."""
    plant = dynamics.make(name, **{**kwargs, "dt": 0.05, "substeps": 2})
    cfg = plant.config()
    assert json.loads(json.dumps(cfg)) == cfg
    clone = dynamics.make(**cfg)
    assert type(clone) is type(plant) and clone.config() == cfg
    assert (clone.dt, clone.substeps, clone.discrete) == (0.05, 2, plant.discrete)
    gen = torch.Generator().manual_seed(6)
    x, u = sample_states(plant, 4, gen).float(), sample_controls(plant, 4, 1, gen)[:, 0].float()
    with torch.no_grad():
        torch.testing.assert_close(field(clone)(x, u), field(plant)(x, u), rtol=0, atol=0)
    for key in ("u_min", "u_max", "x_min", "x_max"):
        torch.testing.assert_close(getattr(clone, key), getattr(plant, key))


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_bad_inputs_raise(case, name, kwargs):
    """Malformed shapes raise DimensionError, NaN and infinity raise NonFiniteError."""
    plant = dynamics.make(name, **kwargs)
    n, m = plant.state_dim, plant.control_dim
    gen = torch.Generator().manual_seed(7)
    x, controls = sample_states(plant, 2, gen).float(), sample_controls(plant, 2, 3, gen).float()
    u = controls[:, 0]
    bad_shapes = [
        (x[:, :-1], u), (x[0], u), (torch.zeros(2, n + 1), u), (x, torch.zeros(2, m + 1)), (x, u[0]), (x[:1], u),
    ]
    for xb, ub in bad_shapes:
        with pytest.raises(DimensionError, match="expected|batch"):
            plant.step(xb, ub)
    for xb, cb in [(x, u), (x, controls[:1]), (x[0], controls), (x, torch.zeros(2, 3, m + 1))]:
        with pytest.raises(DimensionError):
            plant.rollout(xb, cb)
    for value in (math.nan, math.inf, -math.inf):
        xb = x.clone()
        xb[1, 0] = value
        with pytest.raises(NonFiniteError):
            plant.step(xb, u)
        with pytest.raises(NonFiniteError):
            plant.rollout(xb, controls)
        cb = controls.clone()
        cb[0, -1, 0] = value
        with pytest.raises(NonFiniteError):
            plant.rollout(x, cb)
        with pytest.raises(NonFiniteError):
            plant.linearize(xb[1].numpy(), u[0].numpy())


@pytest.mark.parametrize("case,name,kwargs", CASES)
def test_non_finite_parameters_raise(case, name, kwargs):
    """Every physical parameter rejects NaN (NonFiniteError for the plants of this file)."""
    params = dynamics.make(name, **kwargs).params
    own = name in ("pendulum", "cartpole", "linear")
    for key, value in params.items():
        bad = np.full(np.shape(value), math.nan).tolist() if np.ndim(value) else math.nan
        with pytest.raises(NonFiniteError if own else (NonFiniteError, ConfigError)):
            dynamics.make(name, **{**kwargs, key: bad})


def test_unknown_plant_lists_the_choices():
    with pytest.raises(UnknownNameError) as info:
        dynamics.make("no_such_plant")
    message = str(info.value)
    assert "no_such_plant" in message and all(name in message for name in dynamics.names())


@pytest.mark.parametrize("name", ["pendulum", "cartpole", "linear"])
def test_unknown_keyword_is_rejected(name):
    with pytest.raises(TypeError, match="no_such_option"):
        dynamics.make(name, **PLANT_KWARGS.get(name, {}), no_such_option=1)


# ---------------------------------------------------------------------- bad parameters
A2, B2 = [[0.0, 1.0], [0.0, 0.0]], [[0.0], [1.0]]
BAD_PARAMS = [
    ("pendulum", dict(m=0.0), ConfigError, "'m' must be > 0"),
    ("pendulum", dict(l=-1.0), ConfigError, "'l' must be > 0"),
    ("pendulum", dict(b=-0.1), ConfigError, "'b' must be >= 0"),
    ("pendulum", dict(I=0.1), ConfigError, "parallel axis"),  # I < m lc^2 = 0.25
    ("pendulum", dict(lc=1.0), ConfigError, "parallel axis"),  # default I = 1/3 < m lc^2 = 1
    ("pendulum", dict(g=math.inf), NonFiniteError, "finite"),
    ("pendulum", dict(m="heavy"), ConfigError, "real number"),
    ("pendulum", dict(u_max=1.0, u_min=2.0), ValueError, "exceeds"),
    ("cartpole", dict(m_c=-1.0), ConfigError, "'m_c' must be > 0"),
    ("cartpole", dict(l=0.0), ConfigError, "'l' must be > 0"),
    ("cartpole", dict(b_c=-1.0), ConfigError, "'b_c' must be >= 0"),
    ("cartpole", dict(track_limit=0.0), ConfigError, "'track_limit' must be > 0"),
    ("cartpole", dict(track_limit=2.4, x_min=[-1, -1, -1, -1]), ConfigError, "either track_limit"),
    ("linear", dict(A=[[0.0, 1.0]], B=[[0.0]]), DimensionError, r"A has shape \(1, 2\); expected"),
    ("linear", dict(A=[1.0, 2.0], B=[[0.0]]), DimensionError, "A has shape"),
    ("linear", dict(A=A2, B=[[1.0]]), DimensionError, r"B has shape \(1, 1\); expected \(n, m\) = \(2, m\)"),
    ("linear", dict(A=A2, B=[0.0, 1.0]), DimensionError, "B has shape"),
    ("linear", dict(A=A2, B=np.zeros((2, 0))), DimensionError, "m >= 1"),
    ("linear", dict(A=[[1, 2], [3]], B=B2), DimensionError, "2-D array"),
    ("linear", dict(A=[[0.0, math.inf], [0.0, 0.0]], B=B2), NonFiniteError, "A contains"),
    ("linear", dict(A=A2, B=[[math.nan], [1.0]]), NonFiniteError, "B contains"),
    ("linear", dict(A=A2), ConfigError, "give the matrices"),
    ("linear", dict(), ConfigError, "give the matrices"),
    ("linear", dict(A=A2, B=B2, state_names=["p"]), DimensionError, "state_names has 1 entries; expected 2"),
    ("linear", dict(A=A2, B=B2, control_names=["a", "b"]), DimensionError, "control_names"),
    ("linear", dict(A=A2, B=B2, sys=ct.ss(A2, B2, np.eye(2), 0)), ConfigError, "either sys"),
    ("linear", dict(sys=ct.ss(A2, B2, np.eye(2), 0, dt=True)), ConfigError, "unspecified sample time"),
    ("linear", dict(sys=ct.ss(A2, B2, np.eye(2), 0, dt=0.1), dt=0.2), ConfigError, "contradicts sys.dt"),
    ("linear", dict(sys=ct.ss(A2, B2, np.eye(2), 0), discrete=True), ConfigError, "contradicts"),
    ("linear", dict(sys=np.eye(2)), ConfigError, "LTI system"),
]


@pytest.mark.parametrize("name,kwargs,error,match", BAD_PARAMS, ids=[f"{b[0]}-{'-'.join(b[1])}" for b in BAD_PARAMS])
def test_bad_parameters_raise(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        dynamics.make(name, **kwargs)
    assert issubclass(error, TRCError) or error is ValueError


# ---------------------------------------------------------------------- plant-specific references
def test_double_integrator_zoh_matches_c2d():
    """One RK4 step of the double integrator is the exact ZOH discretisation (python-control c2d)."""
    plant = build("double_integrator", {}, dt=0.33)
    sysd = ct.c2d(plant.linearize([0, 0], [0]), 0.33, method="zoh")
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=F64)
    u = torch.tensor([[0.0], [0.0], [1.0]], dtype=F64)
    with torch.no_grad():
        out = plant.step(x, u).numpy()
    np.testing.assert_allclose(out[:2].T, sysd.A, rtol=0, atol=1e-14)
    np.testing.assert_allclose(out[2:].T, sysd.B, rtol=0, atol=1e-14)
    np.testing.assert_allclose(sysd.A, [[1, 0.33], [0, 1]], atol=1e-14)
    np.testing.assert_allclose(sysd.B, [[0.33**2 / 2], [0.33]], atol=1e-14)


def test_linear_continuous_zoh_converges_to_c2d():
    """A continuous linear plant's step converges to the exact ZOH map of ct.c2d."""
    A, B = np.array(PLANT_KWARGS["linear"]["A"]), np.array(PLANT_KWARGS["linear"]["B"])
    sysd = ct.c2d(ct.ss(A, B, np.eye(2), 0), 0.2)
    plant = build("linear", dict(A=A, B=B), dt=0.2, substeps=8)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=F64)
    u = torch.tensor([[0.0], [0.0], [1.0]], dtype=F64)
    with torch.no_grad():
        out = plant.step(x, u).numpy()
    np.testing.assert_allclose(out[:2].T, sysd.A, atol=1e-9)
    np.testing.assert_allclose(out[2:].T, sysd.B, atol=1e-9)


def test_linear_from_statespace():
    """``make("linear", sys=...)``: dt 0 -> continuous, dt > 0 -> discrete, labels kept."""
    A, B = np.array([[0.0, 1.0], [-2.0, -0.5]]), np.array([[0.0], [1.0]])
    sysc = ct.ss(A, B, [[1, 0]], 0, states=["p", "v"], inputs=["F"])
    cont = dynamics.make("linear", sys=sysc, dt=0.05)
    assert not cont.discrete and cont.dt == 0.05
    assert cont.state_names == ("p", "v") and cont.control_names == ("F",)
    np.testing.assert_allclose(cont.linearize([0, 0], [0]).A, A)

    sysd = ct.c2d(sysc, 0.1)
    disc = dynamics.make("linear", sys=sysd)
    assert disc.discrete and disc.dt == 0.1 and not cont.discrete  # instance, not class attribute
    x0 = np.array([0.3, -0.2])
    resp = ct.forced_response(ct.ss(sysd.A, sysd.B, np.eye(2), 0, 0.1), T=np.arange(6) * 0.1, U=np.ones(6), X0=x0)
    traj = disc.double().rollout(torch.tensor(x0[None]), torch.ones(1, 5, 1, dtype=F64))[0].detach().numpy()
    # parameters are stored as float32 buffers, so A and B carry float32 rounding
    np.testing.assert_allclose(traj, resp.states.T, rtol=1e-6, atol=1e-7)
    clone = dynamics.make(**disc.config())  # no sys in the config
    assert clone.discrete and clone.dt == 0.1 and clone.state_names == ("p", "v")

    tf = dynamics.make("linear", sys=ct.tf([1], [1, 0.5, 2]))  # transfer functions are converted
    assert tf.state_dim == 2 and tf.control_dim == 1
    with pytest.raises(NotImplementedError, match="discrete-time"):
        disc.f(torch.zeros(1, 2), torch.zeros(1, 1))


def test_linear_controllability_and_parameter_gradient():
    plant = dynamics.make("linear", A=[[0.0, 1.0], [0.0, 0.0]], B=[[0.0], [1.0]])
    assert plant.controllability_rank() == 2 and plant.is_controllable()
    unc = dynamics.make("linear", A=[[-1.0, 0.0], [0.0, -2.0]], B=[[1.0], [0.0]])
    assert unc.controllability_rank() == 1 and not unc.is_controllable()
    plant.get_buffer("A").requires_grad_()
    plant.rollout(torch.ones(1, 2), torch.zeros(1, 3, 1)).sum().backward()
    assert plant.A.grad is not None and plant.A.grad.abs().sum() > 0


def test_pendulum_matches_gymnasium_pendulum_v1():
    """Gymnasium's Pendulum-v1 is a uniform rod with theta measured from upright (pi here)."""
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    env = PendulumEnv(g=10.0)
    plant = build("pendulum", dict(m=env.m, l=env.l, g=10.0))  # defaults: lc = l/2, I = m l^2/3
    rng = np.random.default_rng(0)
    for _ in range(5):
        th, thdot, u = rng.uniform(-np.pi, np.pi), rng.uniform(-1, 1), rng.uniform(-2, 2)
        env.state = np.array([th, thdot])
        env.step(np.array([u]))
        gym_acc = (env.state[1] - thdot) / env.dt  # explicit Euler: the acceleration exactly
        ours = plant.f(torch.tensor([[th + math.pi, thdot]], dtype=F64), torch.tensor([[u]], dtype=F64))
        assert float(ours[0, 1]) == pytest.approx(gym_acc, rel=1e-6, abs=1e-9)
    # upright is an unstable equilibrium with eigenvalues +-sqrt(m g lc / I)
    plant = build("pendulum", {})
    poles = np.sort(ct.poles(plant.linearize([math.pi, 0.0], [0.0])).real)
    rate = math.sqrt(9.81 * 0.5 / (1 / 3))
    np.testing.assert_allclose(poles, [-rate, rate], rtol=1e-6)
    assert torch.allclose(plant.f(torch.tensor([[math.pi, 0.0]], dtype=F64), torch.zeros(1, 1, dtype=F64)),
                          torch.zeros(1, 2, dtype=F64), atol=1e-12)


def test_cartpole_matches_gymnasium_cartpole_v1():
    """Gymnasium's CartPole-v1 implements Barto et al. / Florian with the same defaults."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv

    env = CartPoleEnv()
    env.reset(seed=0)
    plant = build("cartpole", {})
    assert plant.params["l"] == env.length and abs(plant.params["m_p"] - env.masspole) < 1e-7
    rng = np.random.default_rng(0)
    for _ in range(6):
        state = rng.uniform([-2, -1, -np.pi, -2], [2, 1, np.pi, 2])
        action = int(rng.integers(2))
        env.state, env.steps_beyond_terminated = state.copy(), None
        env.step(action)
        gym_acc = (env.state[[1, 3]] - state[[1, 3]]) / env.tau  # explicit Euler
        force = env.force_mag if action == 1 else -env.force_mag
        ours = plant.f(torch.tensor(state[None], dtype=F64), torch.tensor([[force]], dtype=F64))[0, [1, 3]].numpy()
        np.testing.assert_allclose(ours, gym_acc, rtol=1e-6, atol=1e-9)


def test_bounds_helpers():
    pend = dynamics.make("pendulum", u_max=2.0)
    assert pend.u_min.tolist() == [-2.0] and pend.u_max.tolist() == [2.0]
    asym = dynamics.make("pendulum", u_min=-1.0, u_max=2.0)
    assert asym.u_min.tolist() == [-1.0]
    cart = dynamics.make("cartpole", u_max=10.0, track_limit=2.4)
    assert cart.x_max[0].item() == pytest.approx(2.4) and cart.x_min[0].item() == pytest.approx(-2.4)
    assert torch.isinf(cart.x_max[1:]).all() and cart.u_min.tolist() == [-10.0]
    # the cart friction slows the cart: f's velocity derivative opposes x_dot
    fric = dynamics.make("cartpole", b_c=1.0)
    assert fric.f(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.zeros(1, 1))[0, 1] < 0


def test_float64_parameters_under_double():
    """``plant.double()`` moves every physical parameter and bound to float64."""
    plant = copy.deepcopy(dynamics.make("cartpole", u_max=5.0)).double()
    assert all(b.dtype == F64 for b in plant.buffers())
    out = plant.f(torch.zeros(2, 4, dtype=F64), torch.ones(2, 1, dtype=F64))
    assert out.dtype == F64


@pytest.mark.parametrize("method, substeps", [("rk4", 1), ("rk4", 3), ("euler", 2), ("midpoint", 1), ("heun3", 2)])
def test_stepped_rollout_equals_torchdiffeq_odeint(method, substeps):
    """The interval-by-interval rollout (dynamics.fixed_step) gives odeint's states, gradients included."""
    from torchdiffeq import odeint

    from dynamics.fixed_step import zoh_rollout

    plant = dynamics.make("van_der_pol", dt=0.1, method=method, substeps=substeps).double()
    x0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.randn(3, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    got = plant.rollout(x0, u)
    # odeint on each interval with u_k held (the vector field is autonomous between switches)
    grid = torch.linspace(0.0, 0.1, substeps + 1, dtype=torch.float64)
    ref, x = [x0], x0
    for k in range(5):
        x = odeint(lambda t, y, k=k: plant.f(y, u[:, k]), x, grid, method=method)[-1]
        ref.append(x)
    ref = torch.stack(ref, 1)
    np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(), rtol=1e-13, atol=1e-13)
    g_got, = torch.autograd.grad(got[:, -1].sum(), u)
    g_ref, = torch.autograd.grad(ref[:, -1].sum(), u)
    np.testing.assert_allclose(g_got.numpy(), g_ref.numpy(), rtol=1e-12, atol=1e-13)
    with pytest.raises(ConfigError, match="one-step"):
        zoh_rollout(plant.f, x0, u, 0.1, method="explicit_adams")


# ---------------------------------------------------------------------- checks of f
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_f_checks_its_inputs_but_rollouts_check_once(method):
    """``f`` rejects NaN and infinity; the integrators evaluate the unchecked field at every stage,
    so a trajectory that diverges returns non-finite states instead of failing mid-rollout."""
    plant = dynamics.make("van_der_pol", dt=0.1, method=method, dtype=F64)
    x, u = torch.tensor([[0.5, -1.0]], dtype=F64), torch.tensor([[0.3]], dtype=F64)
    torch.testing.assert_close(plant.f(x, u), torch.tensor([[-1.0, 0.75 * -1.0 - 0.5 + 0.3]], dtype=F64))
    torch.testing.assert_close(plant.f_unchecked(x, u), plant.f(x, u), rtol=0, atol=0)
    for bad_x, bad_u, which in ((x * math.nan, u, "in x"), (x, u * math.inf, "in u"), (x, -u * math.inf, "in u")):
        with pytest.raises(NonFiniteError, match=f"van_der_pol: f\\(x, u\\) got NaN or infinity {which}"):
            plant.f(bad_x, bad_u)
    if method == "rk4":  # the cubic damping makes a large state blow up within a few steps
        with np.errstate(all="ignore"):
            states = plant.rollout(torch.tensor([[1e3, 1e3]], dtype=F64), torch.zeros(1, 5, 1, dtype=F64))
        assert torch.isfinite(states[0, 0]).all() and not torch.isfinite(states[0, -1]).all()
        with pytest.raises(NonFiniteError):
            plant.f(states[:, -1], torch.zeros(1, 1, dtype=F64))
    else:  # and the adaptive solver runs through the unchecked field as well
        plant.f = None  # an instance attribute shadows f: rollouts must not need it
        states = plant.rollout(x, torch.zeros(1, 3, 1, dtype=F64))
        assert states.shape == (1, 4, 2) and torch.isfinite(states).all()


def test_subclasses_get_a_checked_f():
    class Decay(dynamics.Plant):
        name = "decay"
        state_names, state_units, control_names, control_units = ("x",), ("m",), ("u",), ("m/s",)

        def f(self, x, u):
            """Exponential decay pushed by u."""
            return -x + u

    plant = Decay(dt=0.5).double()
    assert Decay.f_unchecked is not Decay.f and Decay.f.__doc__ == "Exponential decay pushed by u."
    with pytest.raises(NonFiniteError, match="decay: f"):
        plant.f(torch.tensor([[math.inf]]), torch.zeros(1, 1))
    x0 = torch.ones(1, 1, dtype=F64)
    got = plant.rollout(x0, torch.zeros(1, 1, 1, dtype=F64))[0, -1, 0]
    h = 0.5  # any 4-stage 4th-order Runge-Kutta step of x' = -x is the Taylor polynomial of exp(-h)
    assert float(got) == pytest.approx(1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24, rel=1e-14)


def test_traced_programs_leave_the_check_of_f_out():
    """torch.jit.trace and torch.export (non-strict, as trc's exports) capture f without the
    data-dependent check: no TracerWarning, no guard on data."""
    import warnings

    plant = dynamics.make("pendulum", dtype=F64)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.plant = plant

        def forward(self, x, u):
            return self.plant.f(x, u)

    x, u = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=F64), torch.tensor([[0.1], [-0.4]], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.trace itself
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(Field(), (x, u))
    exported = torch.export.export(Field(), (x, u), strict=False).module()
    for program in (traced, exported):
        torch.testing.assert_close(program(x, u), plant.f(x, u), rtol=0, atol=0)
