"""Closed-loop harness (trc.closed_loop) against closed forms, and its failure paths."""

from __future__ import annotations

import json

import control as ct
import numpy as np
import pytest
import torch

import dynamics
from dynamics.errors import (
    ConfigError,
    DimensionError,
    NonFiniteError,
    UnknownNameError,
)
from trc import Problem
from trc import closed_loop as cl
from trc.models import TinyRecursiveControl, TRCConfig

DT, N = 0.1, 20
Q, R = np.diag([1.0, 0.5]), np.array([[0.1]])


def riccati_problem() -> tuple[Problem, np.ndarray]:
    """Double integrator, bounds far away, terminal weight = the DARE solution P: the N-step
    cost plus the terminal term of the LQR closed loop is then exactly x0' P x0."""
    sysd = ct.c2d(ct.ss([[0, 1], [0, 0]], [[0], [1]], np.eye(2), 0), DT, method="zoh")
    _, P, _ = ct.dlqr(sysd, Q * DT, R * DT)
    P = np.asarray(P)
    problem = Problem(name="di_riccati", plant={"name": "double_integrator", "u_min": -1e3, "u_max": 1e3}, dt=DT,
                      horizon=N, cost="quadratic", Q=Q.tolist(), R=R.tolist(), Qf=P.tolist(), tolerance=0.05,
                      initial_state={"low": [-1.0, -1.0], "high": [1.0, 1.0]},
                      target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]})
    return problem, P


def vdp_problem(**changes) -> Problem:
    return Problem(task="van_der_pol", horizon=30, **changes)


def test_lqr_closed_loop_cost_equals_the_riccati_cost_to_go():
    problem, P = riccati_problem()
    config = cl.ClosedLoopConfig(episodes=5, seed=3)
    result = cl.run(problem, cl.LQRController(problem), config, timing=False)
    x0 = result.states[:, 0]
    expected = np.einsum("bi,ij,bj->b", x0, P, x0)
    np.testing.assert_allclose(result.cost, expected, rtol=1e-7)
    assert result.states.shape == (5, 2 * N + 1, 2) and result.controls.shape == (5, 2 * N, 1)
    assert result.success.all() and not result.violation.any()


def test_mpc_with_the_riccati_terminal_weight_is_the_lqr():
    """Unconstrained linear MPC with terminal weight P is the infinite-horizon LQR (Rawlings, Mayne
    & Diehl 2017, sec. 2.5): the two closed loops have the same cost."""
    problem, _ = riccati_problem()
    config = cl.ClosedLoopConfig(episodes=2, steps=10, seed=1)
    lqr = cl.run(problem, cl.LQRController(problem), config, timing=False)
    mpc = cl.run(problem, cl.MPCController(problem, tol=1e-10), config, timing=False)
    np.testing.assert_allclose(mpc.controls, lqr.controls, atol=1e-6)


def test_simulated_plant_agrees_with_the_torch_plants():
    """The CasADi vector fields integrated by solve_ivp against the plants' own fine-step rollouts."""
    for problem in (vdp_problem(), Problem(task="pendulum"), Problem(task="cartpole"), Problem(task="rocket")):
        rng = np.random.default_rng(0)
        x0, _ = problem.sample(3, rng)
        plant = problem.make_plant(torch.float64)
        lo, hi = plant.u_min.numpy(), plant.u_max.numpy()
        if problem.cost == "fuel":
            u = np.tile([0.0, 0.0, 0.5 * (plant.rho1 + plant.rho2)], (3, 5, 1))
        else:
            u = rng.uniform(np.maximum(lo, -3), np.minimum(hi, 3), size=(3, 5, problem.control_dim))
        ours = cl.simulate(problem, x0, u, rtol=1e-10)
        fine = dynamics.make(problem.plant["name"], dtype=torch.float64, substeps=50,
                             **{k: v for k, v in problem.plant.items() if k != "name"}, dt=problem.dt)
        ref = fine.rollout(torch.as_tensor(x0), torch.as_tensor(u)).numpy()
        scale = np.maximum(np.abs(ref).max(axis=(0, 1)), 1.0)
        np.testing.assert_allclose(ours / scale, ref / scale, atol=1e-7, err_msg=problem.name)


def test_perturbations_are_reproducible_from_the_seed_and_shared_by_controllers():
    problem = vdp_problem()
    config = cl.ClosedLoopConfig(episodes=3, steps=20, perturbation="perturbed", seed=7)
    a = cl.run(problem, cl.LQRController(problem), config, timing=False)
    b = cl.run(problem, cl.LQRController(problem), config, timing=False)
    np.testing.assert_array_equal(a.states, b.states)
    c = cl.run(problem, cl.LQRController(problem), cl.ClosedLoopConfig(episodes=3, steps=20, perturbation="perturbed",
                                                                      seed=8), timing=False)
    assert not np.allclose(a.states, c.states)
    nominal = cl.run(problem, cl.LQRController(problem), cl.ClosedLoopConfig(episodes=3, steps=20, seed=7),
                     timing=False)
    np.testing.assert_array_equal(nominal.states[:, 0], a.states[:, 0])  # same initial states
    assert not np.allclose(nominal.states[:, 1:], a.states[:, 1:])  # but another plant and noise


def test_parameter_mismatch_scales_every_parameter_within_the_range():
    problem = Problem(task="pendulum")
    sim = cl._Simulator(problem)
    ep = cl._episodes(problem, cl.ClosedLoopConfig(episodes=50, perturbation="mismatch"), sim)
    factors = ep.params[:, sim.nominal > 0] / sim.nominal[sim.nominal > 0]
    assert factors.min() >= 0.8 and factors.max() <= 1.2 and factors.std() > 0.05
    assert sim.param_names == ("m", "g", "lc", "I", "b")


def test_impulse_moves_the_state_at_mid_episode():
    problem = vdp_problem()
    base = cl.ClosedLoopConfig(episodes=2, steps=20, seed=0)
    kicked = cl.ClosedLoopConfig(episodes=2, steps=20, seed=0, perturbation="impulse")
    a = cl.run(problem, cl.LQRController(problem), base, timing=False)
    b = cl.run(problem, cl.LQRController(problem), kicked, timing=False)
    np.testing.assert_array_equal(a.states[:, :10], b.states[:, :10])
    jump = np.abs(b.states[:, 10] - a.states[:, 10])
    np.testing.assert_allclose(jump, 0.1 * cl.state_scale(problem) * np.ones((2, 1)), rtol=1e-12)


def test_a_state_constraint_violation_is_not_a_success():
    problem = vdp_problem(plant={"x_min": [-10.0, -0.5], "x_max": [10.0, 0.5]})
    result = cl.run(problem, cl.LQRController(problem), cl.ClosedLoopConfig(episodes=6, seed=0), timing=False)
    held = (np.linalg.norm(result.states[:, -3:], axis=-1) < problem.tolerance).all(1)
    outside = (np.abs(result.states[..., 1]) > 0.5 + 1e-6).any(1)
    assert outside.any() and held[outside].any()
    np.testing.assert_array_equal(result.violation, outside)
    np.testing.assert_array_equal(result.success, held & ~outside)


def test_trc_model_runs_and_compare_reports_cost_ratios(tmp_path):
    problem, _ = riccati_problem()
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=16, hidden_dim=32, H_cycles=1, L_cycles=1))
    config = cl.ClosedLoopConfig(episodes=2, steps=4, timing_repeats=3)
    results = cl.compare(problem, [cl.TRCController(model), cl.LQRController(problem)], config)
    assert set(results) == {"trc", "lqr", "optimum"}
    assert np.isfinite(results["lqr"].cost_ratio).all() and (results["lqr"].cost_ratio > 0).all()
    np.testing.assert_array_equal(results["optimum"].cost_ratio, 1.0)
    assert results["trc"].ms_per_step > 0
    path = cl.write_report(tmp_path, {"nominal": results}, problem=problem, config={"episodes": 2})
    data = json.loads((tmp_path / "closed_loop.json").read_text())
    assert data["results"]["nominal"]["lqr"]["episodes"] == 2
    assert "| lqr |" in path.read_text()


def test_fixed_final_time_needs_a_time_to_go_input():
    problem, _ = riccati_problem()
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=8, hidden_dim=16, H_cycles=1, L_cycles=1))
    controller = cl.TRCController(model)
    with pytest.raises(ConfigError, match="time-to-go"):
        controller.plan(np.zeros((1, 2)), np.zeros((1, 2)), N - 1)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"perturbation": "wind"}, UnknownNameError, "unknown perturbation"),
    ({"perturbation": cl.Perturbation}, ConfigError, "perturbation"),
    ({"episodes": 0}, ConfigError, "episodes"),
    ({"replan_every": 0}, ConfigError, "replan_every"),
    ({"rtol": 1e-6}, ConfigError, "rtol"),
    ({"seed": -1}, ConfigError, "seed"),
])
def test_bad_settings_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        cl.ClosedLoopConfig(**kwargs)


@pytest.mark.parametrize("field", ["param_scale", "process_noise", "measurement_noise", "impulse"])
def test_negative_or_non_finite_levels_are_refused(field):
    for value in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=field):
            cl.Perturbation(**{field: value})
    with pytest.raises(ConfigError, match="param_scale"):
        cl.Perturbation(param_scale=1.0)


def test_a_model_for_another_dt_is_refused():
    problem = vdp_problem()
    other = vdp_problem(dt=0.1)
    model = TinyRecursiveControl.from_problem(other, TRCConfig(latent_dim=8, hidden_dim=16, H_cycles=1, L_cycles=1))
    with pytest.raises(ConfigError, match="dt"):
        cl.run(problem, cl.TRCController(model), cl.ClosedLoopConfig(episodes=1, steps=2), timing=False)


def test_nan_measurements_and_bad_shapes_are_named():
    problem = vdp_problem()
    with pytest.raises(NonFiniteError, match="measured state"):
        cl.run(problem, cl.LQRController(problem), cl.ClosedLoopConfig(episodes=1, steps=2),
               x0=np.array([[np.nan, 0.0]]), target=np.zeros((1, 2)), timing=False)
    with pytest.raises(DimensionError, match="episodes"):
        cl.run(problem, cl.LQRController(problem), cl.ClosedLoopConfig(episodes=1, steps=2),
               x0=np.zeros((1, 3)), target=np.zeros((1, 3)), timing=False)

    class Wrong(cl.Controller):
        name = "wrong"

        def plan(self, x, target, steps_to_go):
            return np.zeros((x.shape[0], 3))

    with pytest.raises(DimensionError, match="wrong"):
        cl.run(problem, Wrong(), cl.ClosedLoopConfig(episodes=1, steps=2), timing=False)


def test_a_target_that_is_not_an_equilibrium_is_refused():
    problem = Problem(task="cartpole")  # a pole at rest at 1 rad from upright cannot be held
    with pytest.raises(ConfigError, match="not an equilibrium"):
        cl.hold_targets(problem, np.array([[0.0, 0.0, 1.0, 0.0]]))
    moving, _ = cl.hold_targets(Problem(task="double_integrator"), np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(moving, [[1.0, 0.0]])  # the rate is set to zero: a target that can be held


def test_evaluate_command_runs_the_closed_loop_and_refuses_its_options_without_it(tmp_path):
    import trc
    from trc.evaluate import main

    problem, _ = riccati_problem()
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=8, hidden_dim=16, H_cycles=1, L_cycles=1))
    path = tmp_path / "model.pt"
    trc.save(model, path)
    out = tmp_path / "report"
    argv = ["--checkpoint", str(path), "--out", str(out)]
    assert main(argv + ["--closed-loop", "--episodes", "2", "--steps", "3", "--no-mpc", "--perturbation", "nominal",
                        "mismatch"]) == 0
    data = json.loads((out / "closed_loop.json").read_text())
    assert set(data["results"]) == {"nominal", "mismatch"}
    assert set(data["results"]["nominal"]) == {"trc", "lqr", "optimum"}
    assert data["results"]["mismatch"]["lqr"]["episodes"] == 2
    before = sorted(p.name for p in out.iterdir())
    assert main(argv + ["--episodes", "3"]) == 2  # a closed-loop option without --closed-loop
    assert main(argv + ["--closed-loop", "--perturbation", "wind"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--closed-loop", "--replan-every", "0"])
    assert exc.value.code == 2
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written by the refused runs


def test_gymnasium_env_runs_the_harness_plant_and_a_gym_policy_runs_in_the_harness():
    """ClosedLoopEnv simulates as the harness does: the LQR driven through the environment (as a
    gymnasium policy) and through cl.run give the same trajectory; a perturbed environment is
    reproducible from its reset seed."""
    from gymnasium.utils.env_checker import check_env

    problem = vdp_problem()
    lqr = cl.LQRController(problem)
    x0, target = np.array([[1.0, -0.5]]), np.zeros((1, 2))
    lqr.reset(x0, target)

    def policy(obs):
        obs = np.atleast_2d(obs).astype(float)
        return lqr.plan(obs[:, :2], obs[:, 2:], problem.horizon)[:, 0]

    env = cl.ClosedLoopEnv.from_problem(problem, terminate_at_target=False)
    obs, info = env.reset(seed=0, options={"x0": x0[0], "target": target[0]})
    states = [info["state"]]
    for _ in range(10):  # the policy is given the true state (float64), as the harness gives it
        obs, reward, terminated, truncated, info = env.step(policy(np.concatenate([info["state"], target[0]]))[0])
        states.append(info["state"])
    harness = cl.run(problem, cl.PolicyController(policy, name="lqr via gym"), cl.ClosedLoopConfig(steps=10),
                     x0=x0, target=target, timing=False)
    np.testing.assert_allclose(np.stack(states), harness.states[0], atol=1e-6)  # float32 observations

    noisy = cl.ClosedLoopEnv.from_problem(problem, perturbation="perturbed")
    runs = []
    for _ in range(2):
        obs, info = noisy.reset(seed=5)
        runs.append([obs] + [noisy.step(np.array([0.5], dtype=np.float32))[0] for _ in range(5)])
    np.testing.assert_array_equal(np.stack(runs[0]), np.stack(runs[1]))
    assert not np.allclose(noisy.params, cl._Simulator(problem).nominal)
    check_env(cl.ClosedLoopEnv.from_problem(problem, perturbation="noise"), skip_render_check=True)
