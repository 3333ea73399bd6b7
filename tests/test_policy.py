"""Receding-horizon TRC policies in the Gymnasium environments (trc.policy).

References: the model's own plan (the action must be its first control), the cost convention
of trc.cost (the return of an episode run to the horizon is minus its cost J), and
Gymnasium's environment checker.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import dynamics
from dynamics.env import PlantEnv, PlantVectorEnv
from dynamics.errors import ConfigError, DimensionError, NonFiniteError
from trc.cost import quadratic_cost
from trc.models import TinyRecursiveControl, TRCConfig
from trc.policy import Episode, RecedingHorizonPolicy, run_episode
from trc.problem import Problem


def pendulum_problem() -> Problem:
    return Problem(
        name="pendulum_policy", plant={"name": "pendulum", "u_max": 3.0}, dt=0.1, horizon=6, Q=[10.0, 1.0], R=[0.1],
        Qf_scale=5.0, initial_state={"low": [-0.3, -0.5], "high": [0.3, 0.5]},
        target_state={"low": [3.14159, 0.0], "high": [3.14159, 0.0]}, tolerance=0.2,
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = TRCConfig(latent_dim=16, hidden_dim=32, num_layers=1, H_cycles=2, L_cycles=1, feedback_channels=8)
    return TinyRecursiveControl.from_problem(pendulum_problem(), cfg).eval()


def test_action_is_first_planned_control(model):
    env = PlantEnv.from_problem(pendulum_problem())
    policy = RecedingHorizonPolicy(model, env)
    obs, _ = env.reset(seed=1)
    action = policy(obs)
    with torch.no_grad():
        plan = model(torch.as_tensor(obs[None, :2]), torch.as_tensor(obs[None, 2:]))
    assert action.shape == (1,) and action.dtype == np.float32
    np.testing.assert_allclose(action, plan[0, 0].numpy(), rtol=1e-6)
    assert env.action_space.contains(action)
    assert policy.plan(obs).shape == (6, 1)
    assert policy.predict(obs)[1] is None


def test_batched_observations_match_single_ones(model):
    env = PlantEnv.from_problem(pendulum_problem())
    policy = RecedingHorizonPolicy(model, env)
    obs = np.stack([env.reset(seed=s)[0] for s in range(5)])
    batch = policy(obs)
    assert batch.shape == (5, 1)
    np.testing.assert_allclose(batch, np.stack([policy(o) for o in obs]), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*WARN:")  # check_env's advice on unbounded/unnormalised spaces
def test_episode_return_is_minus_the_cost(model):
    """Run to the horizon (no early termination): return = -J of the executed trajectory."""
    problem = pendulum_problem()
    env = PlantEnv.from_problem(problem, horizon=9, terminate_at_target=False)
    check_env(env, skip_render_check=True)
    episode = run_episode(env, RecedingHorizonPolicy(model, env), seed=3)
    assert isinstance(episode, Episode) and len(episode) == 9 and episode.truncated and not episode.terminated
    assert episode.states.shape == (10, 2) and episode.actions.shape == (9, 1)
    Q, R, Qf = problem.weights
    J = quadratic_cost(torch.as_tensor(episode.states[None]), torch.as_tensor(episode.actions[None]),
                       torch.as_tensor(episode.target[None]), Q, R, Qf, problem.dt)
    assert episode.total_reward == pytest.approx(-float(J[0]), rel=1e-9)
    # the states are the plant's response to the actions
    plant = problem.make_plant(torch.float64)
    with torch.no_grad():
        sim = plant.rollout(torch.as_tensor(episode.states[None, 0]), torch.as_tensor(episode.actions[None]))[0]
    np.testing.assert_allclose(episode.states, sim.numpy(), rtol=1e-10, atol=1e-12)


def test_vector_env_and_registered_id(model):
    import gymnasium as gym

    envs = PlantVectorEnv.from_problem(pendulum_problem(), num_envs=3)
    policy = RecedingHorizonPolicy(model, envs)
    obs, _ = envs.reset(seed=0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = envs.step(policy(obs))
    assert obs.shape == (3, 4) and np.isfinite(reward).all()
    # a registered id with its default task: same sizes, but another dt -> refused
    env = gym.make("trc/Pendulum-v0")
    with pytest.raises(ConfigError, match="dt"):
        RecedingHorizonPolicy(model, env)


def test_bad_environments_and_observations(model):
    with pytest.raises(DimensionError, match="observations"):
        RecedingHorizonPolicy(model, dynamics.make_env("cartpole"))
    policy = RecedingHorizonPolicy(model)
    with pytest.raises(DimensionError, match="observation"):
        policy(np.zeros(3))
    with pytest.raises(NonFiniteError):
        policy(np.array([np.nan, 0.0, 0.0, 0.0]))
    with pytest.raises(ConfigError, match="max_steps"):
        run_episode(PlantEnv.from_problem(pendulum_problem()), policy, max_steps=0)
    episode = run_episode(PlantEnv.from_problem(pendulum_problem()), policy, seed=0, max_steps=2)
    assert len(episode) == 2
