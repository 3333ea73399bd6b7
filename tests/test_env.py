"""Gymnasium environments of the plants (dynamics.env).

Parametrised over the registered Gymnasium ids, so the environment of a new plant is checked
as soon as the plant is registered. References: Gymnasium's own ``check_env``, the plant's
``rollout`` and the TRC cost of ``trc.cost``.
"""

from __future__ import annotations

import math
import re
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import dynamics
from dynamics import ConfigError, DimensionError, NonFiniteError, UnknownNameError
from dynamics.env import PlantEnv, env_id, make_env, register_envs

IDS = register_envs()
# check_env's advice that is a design choice here: unbounded states and physical (not
# normalised) action units.
ALLOWED_WARNINGS = re.compile(r"infinity|symmetric and normalized")


def _name(gym_id: str) -> str:
    return next(name for name in dynamics.names() if env_id(name) == gym_id)


def _no_unexpected_warnings(record) -> None:
    unexpected = [str(w.message) for w in record if not ALLOWED_WARNINGS.search(str(w.message))]
    assert not unexpected, unexpected


def test_the_classic_plants_have_ids():
    assert {"trc/Pendulum-v0", "trc/CartPole-v0", "trc/DoubleIntegrator-v0", "trc/VanDerPol-v0"} <= set(IDS)
    assert env_id("linear") not in IDS  # needs A and B
    for name in dynamics.names():
        if getattr(dynamics.get(name), "discrete", False):
            assert env_id(name) not in IDS
    assert register_envs() == IDS  # idempotent


@pytest.mark.parametrize("gym_id", IDS)
def test_check_env(gym_id):
    env = gymnasium.make(gym_id)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    _no_unexpected_warnings(record)
    env.close()


@pytest.mark.parametrize("gym_id", IDS)
def test_episode_matches_rollout_and_trc_cost(gym_id):
    """States follow the plant's rollout; the return of a full episode is ``-J`` of trc.cost."""
    from trc.cost import quadratic_cost

    env = gymnasium.make(gym_id, horizon=6, terminate_at_target=False).unwrapped
    if env.cost != "quadratic":
        pytest.skip("fuel-cost environment")
    obs, info = env.reset(seed=3)
    n = env.plant.state_dim
    np.testing.assert_allclose(obs, np.concatenate([info["state"], info["target"]]).astype(np.float32))
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    env.action_space.seed(3)
    states, controls, rewards = [info["state"]], [], []
    done = False
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        while not done:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, info = env.step(action)
            assert obs in env.observation_space
            states.append(info["state"])
            controls.append(np.clip(action.astype(np.float64), env.u_min, env.u_max))
            rewards.append(reward)
            done = terminated or truncated
    _no_unexpected_warnings(record)
    if terminated:  # left the state bounds early: compare what there is
        assert info["out_of_bounds"]
    else:
        assert truncated and len(rewards) == 6
    states, controls = np.array(states), np.array(controls)
    target = info["target"]
    plant = env.plant
    with torch.no_grad():
        traj = plant.rollout(torch.tensor(states[:1]), torch.tensor(controls[None]))[0].numpy()
    np.testing.assert_allclose(states, traj, rtol=1e-12, atol=1e-12)
    J = quadratic_cost(torch.tensor(states[None]), torch.tensor(controls[None]), torch.tensor(target[None]),
                       env.Q, env.R, env.Qf, env.dt)
    assert sum(rewards) == pytest.approx(-float(J[0]), rel=1e-10, abs=1e-12)
    assert np.allclose(obs[n:], target.astype(np.float32))


@pytest.mark.parametrize("gym_id", IDS)
def test_seeding_is_deterministic(gym_id):
    env = gymnasium.make(gym_id).unwrapped
    first, _ = env.reset(seed=123)
    again, _ = env.reset(seed=123)
    np.testing.assert_array_equal(first, again)
    if np.any(env.initial_high > env.initial_low):
        other, _ = env.reset(seed=124)
        assert not np.array_equal(first, other)
    x0 = (env.initial_low + env.initial_high) / 2
    obs, info = env.reset(options={"x0": x0})
    np.testing.assert_array_equal(info["state"], x0)


def test_kwargs_route_to_env_and_plant():
    env = gymnasium.make("trc/Pendulum-v0", horizon=10, u_max=1.0, m=2.0, Q=[1.0, 2.0]).unwrapped
    assert env.horizon == 10 and env.plant.params["m"] == 2.0
    assert env.action_space.high.tolist() == [1.0] and env.action_space.low.tolist() == [-1.0]
    np.testing.assert_array_equal(env.Q, np.diag([1.0, 2.0]))
    direct = make_env("pendulum", horizon=10, dt=0.02)
    assert direct.dt == 0.02 and direct.plant.dt == 0.02
    assert direct.plant.u_max.tolist() == [3.0]  # the default task's torque limit
    np.testing.assert_allclose(direct.target_low, [math.pi, 0.0])


def test_reaching_the_target_terminates():
    env = make_env("double_integrator")
    target = np.array([0.5, 0.0])
    obs, info = env.reset(seed=0, options={"x0": target, "target": target})
    obs, reward, terminated, truncated, info = env.step(np.zeros(1, dtype=np.float32))
    assert terminated and not truncated and info["is_success"] and not info["out_of_bounds"]
    assert reward == pytest.approx(0.0, abs=1e-12)
    env = make_env("double_integrator", terminate_at_target=False)
    env.reset(options={"x0": target, "target": target})
    assert env.step(np.zeros(1, dtype=np.float32))[2:4] == (False, False)


def test_truncation_at_the_horizon():
    env = make_env("van_der_pol", horizon=3, terminate_at_target=False)
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, dtype=np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_leaving_the_track_terminates_with_an_observation_in_the_space():
    env = make_env("cartpole", horizon=50, track_limit=2.4)  # the standard task has no track limit
    obs, _ = env.reset(options={"x0": [2.3, 5.0, 0.0, 0.0], "target": [0.0, 0.0, 0.0, 0.0]})
    obs, reward, terminated, truncated, info = env.step(np.array([10.0], dtype=np.float32))
    assert terminated and info["out_of_bounds"] and not info["is_success"]
    assert info["state"][0] > 2.4 and obs in env.observation_space
    e = info["state"] - info["target"]
    assert info["terminal_cost"] == pytest.approx(float(e @ env.Qf @ e))
    assert reward == pytest.approx(-(info["stage_cost"] + info["terminal_cost"]))


def test_actions_are_clipped_to_the_bounds():
    env = make_env("pendulum")
    env.reset(seed=1)
    x = env.state
    big = env.step(np.array([100.0], dtype=np.float32))
    env.reset(options={"x0": x, "target": env.target})
    clipped = env.step(np.array([3.0], dtype=np.float32))
    np.testing.assert_array_equal(big[0], clipped[0])
    assert big[1] == clipped[1]


def test_from_problem_matches_problem_cost():
    from trc.problem import Problem

    problem = Problem(
        name="di", plant={"name": "double_integrator", "u_min": -4, "u_max": 4}, dt=0.33, horizon=5,
        initial_state={"low": [-2, -2], "high": [2, 2]}, target_state={"low": [0, 0], "high": [0, 0]},
        Q=[10, 5], R=[0.1], Qf_scale=20, tolerance=0.05,
    )
    env = PlantEnv.from_problem(problem, terminate_at_target=False)
    assert (env.dt, env.horizon, env.tolerance) == (0.33, 5, 0.05)
    np.testing.assert_array_equal(env.Qf, 20 * np.diag([10.0, 5.0]))
    obs, info = env.reset(seed=0)
    states, controls, total = [info["state"]], [], 0.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        u = rng.uniform(-4, 4, size=1)
        obs, reward, terminated, truncated, info = env.step(u.astype(np.float32))
        states.append(info["state"])
        controls.append(u.astype(np.float32).astype(np.float64))
        total += reward
    assert truncated
    J = problem.cost_of(torch.tensor(np.array(states)[None]), torch.tensor(np.array(controls)[None]),
                        torch.tensor(info["target"][None]))
    assert total == pytest.approx(-float(J[0]), rel=1e-10)


@pytest.mark.skipif("rocket" not in dynamics.names(), reason="no rocket plant")
def test_fuel_reward_is_the_propellant_burnt():
    env = make_env("rocket", cost="fuel", terminate_at_target=False)
    obs, info = env.reset(seed=0)
    m0 = info["state"][-1]
    obs, reward, *_ , info = env.step(env.action_space.high * 0.5)
    assert reward == pytest.approx(-(m0 - info["state"][-1])) and reward < 0


def test_gymnasium_wrappers_work():
    one = np.ones(1, dtype=np.float32)
    env = gymnasium.wrappers.RescaleAction(gymnasium.make("trc/CartPole-v0"), -one, one)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.ones(1, dtype=np.float32))
    assert np.isfinite(reward) and obs.shape == (8,)


# ---------------------------------------------------------------------- bad input
def test_bad_actions_and_call_order():
    env = make_env("pendulum")
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(np.zeros(1, dtype=np.float32))
    env.reset(seed=0)
    with pytest.raises(DimensionError, match=r"shape \(2,\); expected \(1,\)"):
        env.step(np.zeros(2, dtype=np.float32))
    with pytest.raises(DimensionError):
        env.step(np.zeros((1, 1), dtype=np.float32))
    with pytest.raises(NonFiniteError):
        env.step(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ConfigError, match="unknown reset option"):
        env.reset(options={"x_0": [0, 0]})
    with pytest.raises(DimensionError):
        env.reset(options={"x0": [0, 0, 0]})
    with pytest.raises(NonFiniteError):
        env.reset(options={"target": [np.inf, 0]})


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(Q=[1.0, 2.0, 3.0]), DimensionError, "Q diagonal has 3 entries; expected 2"),
        (dict(R=np.ones((2, 2))), DimensionError, r"R has shape \(2, 2\); expected \(1, 1\)"),
        (dict(Q=[[1.0, 2.0], [0.0, 1.0]]), ConfigError, "symmetric"),
        (dict(Qf=[-1.0, 1.0]), ConfigError, "positive semi-definite"),
        (dict(horizon=0), ConfigError, "horizon"),
        (dict(horizon=2.5), ConfigError, "horizon"),
        (dict(tolerance=0.0), ConfigError, "tolerance"),
        (dict(cost="time"), ConfigError, "cost"),
        (dict(render_mode="human"), ConfigError, "render_mode"),
        (dict(initial_state={"low": [0, 0]}), ConfigError, "'low' and 'high'"),
        (dict(initial_state={"low": [1, 0], "high": [0, 0]}), ConfigError, "exceeds"),
        (dict(target_state=([0.0], [0.0])), DimensionError, "target_state.low"),
        (dict(x_min=[-1, -1], x_max=[1, 1]), ConfigError, "leaves the plant's state bounds"),
    ],
)
def test_bad_environment_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_env("double_integrator", **kwargs)


def test_bad_plants():
    with pytest.raises(UnknownNameError, match="pendulum"):
        make_env("no_such_plant")
    discrete = dynamics.make("linear", A=[[1.0]], B=[[1.0]], discrete=True)
    with pytest.raises(ConfigError, match="continuous-time"):
        PlantEnv(discrete)
    with pytest.raises(ConfigError, match="need a plant name"):
        PlantEnv(dynamics.make("pendulum"), m=2.0)
    # a linear plant works when given its matrices
    env = make_env("linear", A=[[0.0, 1.0], [0.0, 0.0]], B=[[0.0], [1.0]])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_env(env)
    assert not [w for w in record if not re.search(r"infinity|normalized|spec", str(w.message))]


def test_env_does_not_modify_the_users_plant():
    plant = dynamics.make("pendulum", u_max=2.0)
    env = PlantEnv(plant, horizon=5)
    assert plant.u_min.dtype == torch.float32 and env.plant.u_min.dtype == torch.float64
    assert env.plant is not plant


# ---------------------------------------------------------------------- vector environments
@pytest.mark.parametrize("gym_id", IDS)
def test_vector_env_equals_sync_vector_env(gym_id):
    """The batched PlantVectorEnv reproduces SyncVectorEnv of PlantEnv copies step for step,
    through next-step autoresets (short horizon, reachable tolerance)."""
    from dynamics.env import PlantVectorEnv

    name, kwargs = _name(gym_id), dict(horizon=3)
    sync = gymnasium.vector.SyncVectorEnv([lambda: make_env(name, **kwargs) for _ in range(3)])
    vec = gymnasium.make_vec(gym_id, num_envs=3, **kwargs)
    assert isinstance(vec, PlantVectorEnv)
    assert vec.single_observation_space == sync.single_observation_space
    assert vec.observation_space == sync.observation_space and vec.action_space == sync.action_space
    results = [sync.reset(seed=11), vec.reset(seed=11)]
    sync.action_space.seed(2)
    ends = 0
    for _ in range(8):
        actions = sync.action_space.sample()
        results = [sync.step(actions), vec.step(actions)]
        ends += int(np.sum(results[0][2] | results[0][3]))
        for ours, theirs in zip(results[1][:4], results[0][:4]):
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
        info_sync, info_vec = results[0][4], results[1][4]
        assert sorted(info_vec) == sorted(info_sync)
        for key in info_sync:
            assert info_vec[key].dtype == info_sync[key].dtype, key
            np.testing.assert_allclose(info_vec[key], info_sync[key], rtol=1e-12, atol=1e-12, err_msg=key)
    assert ends >= 3  # the autoreset path ran


def test_vector_env_options_and_bad_input():
    from dynamics.env import PlantVectorEnv, make_vector_env

    vec = make_vector_env("double_integrator", num_envs=4)
    with pytest.raises(gymnasium.error.ResetNeeded):
        vec.step(np.zeros((4, 1)))
    x0 = np.array([[0.1 * i, 0.0] for i in range(4)])
    obs, info = vec.reset(seed=0, options={"x0": x0, "target": [0.0, 0.0]})
    np.testing.assert_array_equal(info["state"], x0)
    np.testing.assert_array_equal(obs[:, 2:], 0.0)
    assert info["is_success"].tolist() == [True, False, False, False]
    with pytest.raises(DimensionError, match=r"expected \(num_envs, control_dim\) = \(4, 1\)"):
        vec.step(np.zeros((3, 1)))
    with pytest.raises(NonFiniteError):
        vec.step(np.full((4, 1), np.nan))
    with pytest.raises(DimensionError, match="seeds"):
        vec.reset(seed=[1, 2])
    with pytest.raises(DimensionError, match="rows"):
        vec.reset(options={"x0": x0[:2]})
    with pytest.raises(ConfigError, match="num_envs"):
        PlantVectorEnv("pendulum", num_envs=0)


def test_vector_env_from_problem():
    from dynamics.env import PlantVectorEnv
    from trc.problem import Problem

    problem = Problem(
        name="vdp", plant={"name": "van_der_pol"}, dt=0.1, horizon=4,
        initial_state={"low": [-1, -1], "high": [1, 1]}, target_state={"low": [0, 0], "high": [0, 0]},
    )
    vec = PlantVectorEnv.from_problem(problem, num_envs=2)
    single = PlantEnv.from_problem(problem)
    assert vec.num_envs == 2 and vec.env.horizon == single.horizon == 4
    obs, _ = vec.reset(seed=3)
    np.testing.assert_array_equal(obs[0], single.reset(seed=3)[0])


# ---------------------------------------------------------------------- standard tasks
# The ``problem:`` sections of the standard configurations as they were written out in full
# before they referred to dynamics.tasks (git show 473ea89:configs/<name>.yaml). The problems
# they resolve to now must be identical, so that data sets, their run hashes and model files
# stay the same. The _fast configurations had the same sections as their base.
OLD_PROBLEM_SECTIONS = {
    "double_integrator": """
  name: double_integrator
  plant: {name: double_integrator, u_min: -4.0, u_max: 4.0}   # |u| <= 4 m/s^2
  dt: 0.33                  # s
  horizon: 15               # N: 4.95 s
  cost: quadratic
  Q: [10.0, 5.0]            # diag
  R: [0.1]
  Qf_scale: 20.0            # Qf = 20 Q
  initial_state: {low: [-2.0, -2.0], high: [2.0, 2.0]}
  target_state: {low: [-2.0, -2.0], high: [2.0, 2.0]}
  tolerance: 0.1            # success: ||x_N - x*||_2 < 0.1
""",
    "van_der_pol": """
  name: van_der_pol
  plant: {name: van_der_pol, mu: 1.0, u_min: -2.0, u_max: 2.0}   # |u| <= 2
  dt: 0.05                  # s
  horizon: 100              # N: 5 s
  cost: quadratic
  Q: [10.0, 5.0]
  R: [0.1]
  Qf_scale: 20.0
  initial_state: {low: [-2.0, -2.0], high: [2.0, 2.0]}
  target_state: {low: [0.0, 0.0], high: [0.0, 0.0]}
  tolerance: 0.2
""",
    "pendulum": """
  name: pendulum
  plant: {name: pendulum, m: 1.0, l: 1.0, b: 0.0, u_max: 3.0}
  dt: 0.05                  # s
  horizon: 60               # N: 3 s
  cost: quadratic
  Q: [10.0, 1.0]
  R: [0.1]
  Qf_scale: 20.0
  initial_state: {low: [-0.3, -0.5], high: [0.3, 0.5]}
  target_state: {low: [3.141592653589793, 0.0], high: [3.141592653589793, 0.0]}
  tolerance: 0.2
""",
    "cartpole": """
  name: cartpole
  plant: {name: cartpole, m_c: 1.0, m_p: 0.1, l: 0.5, g: 9.8, u_max: 10.0}
  dt: 0.05                  # s
  horizon: 60               # N: 3 s
  cost: quadratic
  Q: [5.0, 0.5, 10.0, 0.5]  # x, x_dot, theta, theta_dot
  R: [0.05]
  Qf_scale: 100.0
  initial_state:
    low: [-0.5, -0.2, 2.841592653589793, -0.3]    # theta in pi -+ 0.3
    high: [0.5, 0.2, 3.441592653589793, 0.3]
  target_state: {low: [0.0, 0.0, 0.0, 0.0], high: [0.0, 0.0, 0.0, 0.0]}
  tolerance: 0.2
""",
    "rocket": """
  name: rocket
  plant: {name: rocket}        # default parameters: the published vehicle (see dynamics/rocket.py)
  dt: 1.44                     # s
  horizon: 50                  # N: 72 s of flight
  cost: fuel                   # J = m_0 - m_N (kg)
  R: 1.0                       # unused by the fuel cost
  initial_state:               # x, y, z (m), vx, vy, vz (m/s), mass (kg)
    low: [-300.0, 1500.0, 1200.0, -20.0, 40.0, -80.0, 1905.0]
    high: [300.0, 2100.0, 1600.0, 20.0, 80.0, -60.0, 1905.0]
  target_state:                # the landing site at rest; the mass entry is ignored
    low: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1505.0]
    high: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1505.0]
  tolerance: 0.5               # ||r_N - r_f|| + ||v_N - v_f|| (m + m/s)
  options: {glide_slope: 4.0}  # degrees above the horizontal
""",
}
CONTINUOUS_CONFIGS = ["double_integrator", "van_der_pol", "van_der_pol_fast", "pendulum", "cartpole", "rocket",
                      "rocket_fast"]
REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config", CONTINUOUS_CONFIGS)
def test_configs_resolve_to_the_problems_they_had(config):
    """Each rewritten configuration gives exactly the problem of its old, written-out section:
    equal ``to_dict()`` and equal JSON text (same types and key order, so the same run hashes
    and data set attributes)."""
    import json

    import yaml

    from trc.config import load_yaml
    from trc.generators.pipeline import run_hash
    from trc.problem import Problem

    base = config.removesuffix("_fast")
    section = load_yaml(REPO / "configs" / f"{config}.yaml")["problem"]
    assert section["task"] == base and "dt" not in section and "horizon" not in section
    old = Problem.from_dict(yaml.safe_load(OLD_PROBLEM_SECTIONS[base]))
    new = Problem.from_dict(section)
    assert new.to_dict() == old.to_dict() and "task" not in new.to_dict()
    assert json.dumps(new.to_dict()) == json.dumps(old.to_dict())
    assert new == old
    generator = type("G", (), {"solver": "x", "options": {}, "seed": 0, "chunk_size": 1})()
    assert run_hash(new, generator) == run_hash(old, generator)


@pytest.mark.parametrize("name", ["double_integrator", "van_der_pol", "pendulum", "cartpole", "rocket"])
def test_default_env_task_is_the_configs_problem(name):
    """make_env(name) and the environment of configs/<name>.yaml's problem are the same task."""
    from trc.config import load_yaml
    from trc.problem import Problem

    problem = Problem.from_dict(load_yaml(REPO / "configs" / f"{name}.yaml")["problem"])
    ours, theirs = make_env(name), PlantEnv.from_problem(problem)
    assert (ours.dt, ours.horizon, ours.tolerance, ours.cost) == (problem.dt, problem.horizon, problem.tolerance,
                                                                 problem.cost)
    for key in ("Q", "R", "Qf", "initial_low", "initial_high", "target_low", "target_high", "u_min", "u_max",
                "x_min", "x_max"):
        np.testing.assert_array_equal(getattr(ours, key), getattr(theirs, key), err_msg=key)
    assert ours.plant.config() == theirs.plant.config()
    assert env_id(name) in IDS and gymnasium.make(env_id(name)).unwrapped.horizon == problem.horizon


def test_van_der_pol_env_has_the_configs_numbers():
    """The numbers written in the old configuration file (dt 0.05 s, N = 100, tolerance 0.2,
    Qf = 20 diag(10, 5)), not the environment's former defaults (0.1 s, 50 steps)."""
    env = make_env("van_der_pol")
    assert (env.dt, env.horizon, env.tolerance) == (0.05, 100, 0.2)
    np.testing.assert_array_equal(env.Qf, np.diag([200.0, 100.0]))
    assert env.plant.u_min.tolist() == [-2.0] and env.plant.u_max.tolist() == [2.0]


def test_task_with_overrides():
    """Keys given next to ``task`` replace the task's values; ``plant`` keys are merged."""
    import dataclasses

    from dynamics import tasks
    from trc.problem import Problem

    problem = Problem.from_dict({"task": "van_der_pol", "horizon": 40, "plant": {"u_max": 1.0}, "tolerance": 0.3})
    base = Problem(task="van_der_pol")
    assert (problem.horizon, problem.tolerance, problem.dt) == (40, 0.3, 0.05)
    assert problem.plant == {"name": "van_der_pol", "mu": 1.0, "u_min": -2.0, "u_max": 1.0}
    assert problem.make_plant().u_max.tolist() == [1.0] and problem.make_plant().u_min.tolist() == [-2.0]
    different = {k for k in base.to_dict() if base.to_dict()[k] != problem.to_dict()[k]}
    assert different == {"horizon", "tolerance", "plant"}
    # the resolved problem round-trips without its task; replace() keeps the resolved values
    again = Problem.from_dict(problem.to_dict())
    assert again == problem and again.task is None and problem.task == "van_der_pol"
    assert dataclasses.replace(problem, horizon=5).to_dict() == {**problem.to_dict(), "horizon": 5}
    # the task itself is not changed by a problem built from it
    problem.plant["u_max"] = 9.0
    assert tasks.task("van_der_pol")["plant"]["u_max"] == 2.0
    # the environment's defaults follow the same task; keywords change it
    assert make_env("van_der_pol", horizon=7, u_max=1.0).horizon == 7
    with pytest.raises(UnknownNameError, match="unknown task 'nope'"):
        tasks.task("nope")
