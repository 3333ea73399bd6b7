"""TRC controllers as python-control systems (trc.iosys, model.to_iosys).

References: a receding-horizon loop written by hand with the model and the plant's own step;
python-control's exact zero-order-hold discretisation of LTI systems; the plant's RK4 step
against scipy's adaptive integration of a python-control nonlinear system.
"""

from __future__ import annotations

import control as ct
import numpy as np
import pytest
import torch

import dynamics
from dynamics.errors import ConfigError, DimensionError, NonFiniteError
from trc.iosys import controller_iosys, sample_system, target_labels
from trc.models import TinyRecursiveControl, TRCConfig
from trc.problem import Problem

F64 = torch.float64


def di_problem(horizon: int = 8) -> Problem:
    return Problem(
        name="di_iosys", plant={"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}, dt=0.33, horizon=horizon,
        Q=[10.0, 5.0], R=[0.1], Qf_scale=20.0,
        initial_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]}, target_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]},
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = TRCConfig(latent_dim=16, hidden_dim=32, num_layers=1, H_cycles=2, L_cycles=1, feedback_channels=8)
    return TinyRecursiveControl.from_problem(di_problem(), cfg).eval()


def manual_loop(model, x0, target, steps):
    """Receding horizon by hand: plan from the current state, apply u_0 with the plant's step."""
    plant = model.plant.double()
    x = torch.as_tensor(np.asarray(x0, float)[None])
    xt = torch.as_tensor(np.asarray(target, float)[None], dtype=torch.float32)
    states, controls = [x[0].numpy().copy()], []
    with torch.no_grad():
        for _ in range(steps):
            u = model(x.float(), xt)[:, 0].double()
            controls.append(u[0].numpy().copy())
            x = plant.step(x, u)
            states.append(x[0].numpy().copy())
    model.plant.float()
    return np.array(states), np.array(controls)


def test_controller_signals_and_timebase(model):
    ctrl = model.to_iosys()
    assert isinstance(ctrl, ct.NonlinearIOSystem)
    assert ctrl.input_labels == ["position", "velocity", "xd[0]", "xd[1]"]
    assert ctrl.output_labels == ["acceleration"]
    assert ctrl.nstates == 0 and ctrl.isdtime(strict=True) and ctrl.dt == pytest.approx(0.33)
    assert target_labels(3) == ["xd[0]", "xd[1]", "xd[2]"]
    # the output is the first control of the model's plan
    x, xt = np.array([1.0, -0.5]), np.array([0.2, 0.1])
    with torch.no_grad():
        expected = model(torch.tensor(x[None], dtype=torch.float32), torch.tensor(xt[None], dtype=torch.float32))[0, 0].numpy()
    np.testing.assert_allclose(ctrl.output(0.0, [], np.concatenate([x, xt])), expected, rtol=1e-6)


@pytest.mark.parametrize("plant_kind", ["trc_plant", "python_control_ss"])
def test_interconnect_matches_hand_written_receding_horizon(model, plant_kind):
    """ct.interconnect + ct.input_output_response reproduce the hand-written closed loop."""
    if plant_kind == "trc_plant":
        plant = sample_system(model.plant)
    else:  # the plant written directly in python-control, sampled by python-control (exact ZOH)
        plant = sample_system(ct.ss([[0, 1], [0, 0]], [[0], [1]], np.eye(2), 0, inputs="acceleration",
                                    outputs=["position", "velocity"]), model.dt)
    loop = ct.interconnect([plant, model.to_iosys()], inplist=["xd[0]", "xd[1]"],
                           outlist=["position", "velocity", "acceleration"])
    steps, x0, target = 6, np.array([1.5, 0.0]), np.array([-1.0, 0.0])
    T = np.arange(steps + 1) * model.dt
    resp = ct.input_output_response(loop, T, np.tile(target[:, None], steps + 1), X0=x0)
    states, controls = manual_loop(model, x0, target, steps)
    np.testing.assert_allclose(resp.outputs[:2].T, states, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(resp.outputs[2, :steps], controls[:, 0], rtol=1e-6, atol=1e-8)


def test_feedback_with_fixed_target_and_params(model):
    target = np.array([0.5, 0.0])
    ctrl = controller_iosys(model, target=target)
    assert ctrl.input_labels == ["position", "velocity"]
    loop = ct.feedback(sample_system(model.plant), ctrl, sign=1)  # u = r + ctrl(y), r = 0
    T = np.arange(5) * model.dt
    resp = ct.input_output_response(loop, T, 0, X0=[1.0, 0.0])
    states, _ = manual_loop(model, [1.0, 0.0], target, 4)
    np.testing.assert_allclose(resp.outputs.T, states, rtol=1e-6, atol=1e-8)
    # the target of a simulation can be changed through params
    other = ct.input_output_response(loop, T, 0, X0=[1.0, 0.0], params={"target": [-1.0, 0.0]})
    states, _ = manual_loop(model, [1.0, 0.0], [-1.0, 0.0], 4)
    np.testing.assert_allclose(other.outputs.T, states, rtol=1e-6, atol=1e-8)


def test_sample_system_kinds_agree():
    """The plant's RK4 step, python-control's exact ZOH and scipy on a nonlinear system agree."""
    di = dynamics.make("double_integrator", dt=0.2)
    lti = sample_system(ct.ss([[0, 1], [0, 0]], [[0], [1]], np.eye(2), 0), 0.2)
    sampled = sample_system(di)
    assert sampled.dt == pytest.approx(0.2) and lti.dt == pytest.approx(0.2)
    T = np.arange(6) * 0.2
    U = np.sin(np.arange(6))[None]
    a = ct.input_output_response(sampled, T, U, X0=[0.3, -0.2]).outputs
    b = ct.input_output_response(lti, T, U, X0=[0.3, -0.2]).outputs
    np.testing.assert_allclose(a, b, atol=1e-12)  # RK4 is exact for the double integrator

    vdp = dynamics.make("van_der_pol", mu=1.0, dt=0.05, substeps=4)
    nl = ct.nlsys(lambda t, x, u, p: np.array([x[1], (1 - x[0] ** 2) * x[1] - x[0] + u[0]]), None,
                  inputs=1, states=2, outputs=2, name="vdp")
    T = np.arange(11) * 0.05
    U = 0.5 * np.ones((1, 11))
    a = ct.input_output_response(sample_system(vdp), T, U, X0=[1.0, 0.5]).outputs
    b = ct.input_output_response(sample_system(nl, 0.05), T, U, X0=[1.0, 0.5]).outputs
    np.testing.assert_allclose(a, b, atol=1e-8)


def test_sample_system_passes_discrete_systems_and_rejects_mismatches():
    sysd = ct.ss([[1.0]], [[1.0]], [[1.0]], 0, dt=0.1)
    assert sample_system(sysd) is sysd and sample_system(sysd, 0.1) is sysd
    with pytest.raises(ConfigError, match="dt=0.1"):
        sample_system(sysd, 0.2)
    with pytest.raises(ConfigError, match="sample time"):
        sample_system(ct.ss([[0.0]], [[1.0]], [[1.0]], 0))
    with pytest.raises(ConfigError, match="positive"):
        sample_system(dynamics.make("double_integrator"), -1.0)
    with pytest.raises(TypeError, match="python-control"):
        sample_system(np.eye(2), 0.1)


def test_controller_rejects_bad_arguments(model):
    with pytest.raises(DimensionError, match="expected 2"):
        controller_iosys(model, inputs=["x"])
    with pytest.raises(DimensionError, match="expected 1"):
        controller_iosys(model, outputs=["a", "b"])
    with pytest.raises(DimensionError, match="state_dim=2"):
        controller_iosys(model, target=[0.0, 0.0, 0.0])
    with pytest.raises(NonFiniteError):
        controller_iosys(model, target=[np.nan, 0.0])
    with pytest.raises(ConfigError, match="positive"):
        controller_iosys(model, dt=0.0)
    ctrl = controller_iosys(model)
    with pytest.raises(NonFiniteError, match="non-finite"):
        ctrl.output(0.0, [], [np.inf, 0.0, 0.0, 0.0])


def test_model_without_plant_needs_dt():
    cfg = TRCConfig(latent_dim=8, hidden_dim=16, num_layers=1, H_cycles=1, L_cycles=1, state_dim=2, control_dim=1,
                    horizon=4)
    bare = TinyRecursiveControl(cfg).eval()
    with pytest.raises(ConfigError, match="dt"):
        controller_iosys(bare)
    ctrl = controller_iosys(bare, dt=0.1)
    assert ctrl.input_labels == ["x[0]", "x[1]", "xd[0]", "xd[1]"] and ctrl.output_labels == ["u[0]"]
