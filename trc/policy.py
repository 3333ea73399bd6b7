"""A trained TRC model as a Gymnasium policy: receding-horizon control of a :class:`~dynamics.PlantEnv`.

The TRC environments (:mod:`dynamics.env`) observe ``concatenate(x, x*)``; the policy splits
the observation, plans the whole control sequence ``u_0 .. u_{N-1}`` from the current state to
the target with the network and returns the first control ``u_0`` (receding horizon: a new
plan at every step, Rawlings, Mayne & Diehl, *Model Predictive Control*, 2nd ed., 2017,
sec. 1.3). It takes single observations ``(2 n,)`` and batches ``(B, 2 n)`` (vector
environments) alike, one network pass per call.

>>> import dynamics, trc
>>> model = trc.load("runs/pendulum/model.pt")                              # doctest: +SKIP
>>> env = dynamics.env.PlantEnv.from_problem(model.problem)                  # doctest: +SKIP
>>> policy = RecedingHorizonPolicy(model, env)                               # doctest: +SKIP
>>> episode = run_episode(env, policy, seed=0)                               # doctest: +SKIP
>>> episode.success, episode.total_reward                                    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dynamics.errors import ConfigError, DimensionError, NonFiniteError

__all__ = ["RecedingHorizonPolicy", "Episode", "run_episode"]


class RecedingHorizonPolicy:
    """Receding-horizon policy of a trained TRC model for the TRC Gymnasium environments.

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        A trained model. It runs in eval mode without gradients, on its own device and dtype.
    env : gymnasium.Env or gymnasium.vector.VectorEnv, optional
        If given, the policy checks that the environment's observation ``(2 state_dim,)``,
        action ``(control_dim,)`` and sample time ``dt`` match the model, and clips actions to
        its action space (the model's controls are within its own bounds already).

    Raises
    ------
    DimensionError
        If the environment's spaces do not match the model's sizes.
    ConfigError
        If the environment's sample time differs from the model's (a plan for another ``dt``
        is a plan for another system).

    Examples
    --------
    >>> policy = RecedingHorizonPolicy(model)                # doctest: +SKIP
    >>> obs, info = env.reset(seed=0)                        # doctest: +SKIP
    >>> obs, reward, terminated, truncated, info = env.step(policy(obs))  # doctest: +SKIP
    """

    def __init__(self, model, env=None):
        self.model = model
        self.state_dim = int(model.state_dim)
        self.control_dim = int(model.control_dim)
        self._ref = model.state_scale if hasattr(model, "state_scale") else next(model.parameters())
        self.low = self.high = None
        if env is not None:
            self._check_env(env)

    def _check_env(self, env) -> None:
        obs_space = getattr(env, "single_observation_space", None) or env.observation_space
        act_space = getattr(env, "single_action_space", None) or env.action_space
        n, m = self.state_dim, self.control_dim
        if tuple(obs_space.shape) != (2 * n,):
            raise DimensionError(
                f"environment observations have shape {tuple(obs_space.shape)}; the model needs (2 * state_dim,) = ({2 * n},)"
            )
        if tuple(act_space.shape) != (m,):
            raise DimensionError(f"environment actions have shape {tuple(act_space.shape)}; the model gives ({m},)")
        env_dt = getattr(getattr(env, "unwrapped", env), "dt", None)
        if env_dt is None and hasattr(env, "env"):
            env_dt = getattr(env.env, "dt", None)  # PlantVectorEnv keeps its PlantEnv in .env
        model_dt = getattr(self.model, "dt", None)
        if env_dt is not None and model_dt is not None and not np.isclose(env_dt, model_dt):
            raise ConfigError(f"environment dt={env_dt} s differs from the model's dt={model_dt} s")
        self.low = np.asarray(act_space.low, dtype=np.float64)
        self.high = np.asarray(act_space.high, dtype=np.float64)

    def plan(self, observation) -> np.ndarray:
        """The whole plan of each observation.

        Parameters
        ----------
        observation : array_like, shape ``(2 state_dim,)`` or ``(B, 2 state_dim)``
            ``concatenate(x, x*)`` as the TRC environments return it.

        Returns
        -------
        ndarray, float64, shape ``(horizon, control_dim)`` or ``(B, horizon, control_dim)``

        Raises
        ------
        DimensionError
            If the observation does not have ``2 state_dim`` entries per row.
        NonFiniteError
            If it contains NaN or infinity.
        """
        obs = np.asarray(observation, dtype=np.float64)
        single = obs.ndim == 1
        obs = obs[None] if single else obs
        n = self.state_dim
        if obs.ndim != 2 or obs.shape[1] != 2 * n:
            raise DimensionError(f"observation has shape {np.shape(observation)}; expected ({2 * n},) or (B, {2 * n})")
        if not np.isfinite(obs).all():
            raise NonFiniteError("observation contains NaN or infinity")
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                x = torch.as_tensor(obs, dtype=self._ref.dtype, device=self._ref.device)
                controls = model(x[:, :n], x[:, n:]).double().cpu().numpy()
        finally:
            model.train(was_training)
        return controls[0] if single else controls

    def __call__(self, observation) -> np.ndarray:
        """The first control of the plan: ``(control_dim,)`` or ``(B, control_dim)``, float32.

        See :meth:`plan` for the accepted observations and the errors.
        """
        u = self.plan(observation)[..., 0, :]
        if self.low is not None:
            u = np.clip(u, self.low, self.high)
        return u.astype(np.float32)

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        """Stable-Baselines3-style ``(actions, state)``; the policy has no recurrent state."""
        return self(observation), None


@dataclass
class Episode:
    """One closed-loop episode (all arrays float64).

    Attributes
    ----------
    states : ndarray, shape ``(T + 1, state_dim)``
        True plant states (``info["state"]``), the initial one first.
    actions : ndarray, shape ``(T, control_dim)``
    rewards : ndarray, shape ``(T,)``
    target : ndarray, shape ``(state_dim,)``
    terminated, truncated : bool
        How the episode ended.
    success : bool
        ``info["is_success"]`` at the last step (the state reached the target tolerance).
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    target: np.ndarray
    terminated: bool
    truncated: bool
    success: bool

    @property
    def total_reward(self) -> float:
        """Sum of the rewards (minus the episode's cost on the TRC environments)."""
        return float(self.rewards.sum())

    def __len__(self) -> int:
        return len(self.actions)


def run_episode(env, policy, *, seed: int | None = None, options: dict | None = None, max_steps: int | None = None) -> Episode:
    """Run ``policy`` in ``env`` until the episode terminates or is truncated.

    Parameters
    ----------
    env : gymnasium.Env
        A single (not vector) environment whose ``info`` holds ``state`` and ``target`` (the
        TRC environments); for other environments the observations are recorded instead.
    policy : callable
        ``policy(observation) -> action``, e.g. a :class:`RecedingHorizonPolicy`.
    seed : int, optional
        Passed to ``env.reset``.
    options : dict, optional
        Passed to ``env.reset`` (``{"x0": ..., "target": ...}`` on the TRC environments).
    max_steps : int, optional
        Stop after this many steps even if the environment has not ended the episode.

    Returns
    -------
    Episode

    Raises
    ------
    ConfigError
        If ``max_steps`` is not a positive integer.
    """
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
    obs, info = env.reset(seed=seed, options=options)
    states = [np.asarray(info.get("state", obs), dtype=float)]
    target = np.asarray(info.get("target", np.full_like(states[0], np.nan)), dtype=float)
    actions, rewards = [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(np.asarray(action, dtype=float))
        rewards.append(float(reward))
        states.append(np.asarray(info.get("state", obs), dtype=float))
        if max_steps is not None and len(actions) >= max_steps:
            break
    return Episode(
        states=np.stack(states), actions=np.stack(actions) if actions else np.zeros((0,) + np.shape(env.action_space)),
        rewards=np.asarray(rewards), target=target, terminated=bool(terminated), truncated=bool(truncated),
        success=bool(info.get("is_success", False)),
    )
