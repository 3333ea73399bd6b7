"""Gymnasium environments for the continuous-time plants.

Every registered continuous plant that can be built with its default parameters gets a
Gymnasium id ``trc/<Name>-v0`` (``trc/Pendulum-v0``, ``trc/CartPole-v0``,
``trc/DoubleIntegrator-v0``, ``trc/VanDerPol-v0``, ...) when :mod:`dynamics` is imported::

    import gymnasium as gym
    import dynamics  # registers the ids

    env = gym.make("trc/Pendulum-v0", horizon=100)
    obs, info = env.reset(seed=0)

or build one directly with :func:`make_env` or :meth:`PlantEnv.from_problem`. The default task of
a plant is its standard problem (:mod:`dynamics.tasks`, the problem of ``configs/<plant>.yaml``):
same ``dt``, horizon, bounds, weights, sampling boxes and tolerance. For many
parallel episodes, ``gym.make_vec("trc/Pendulum-v0", num_envs=64)`` (or
:func:`make_vector_env`) gives a :class:`PlantVectorEnv` that moves all of them with one
batched plant step.

Design
------
* **Task.** An episode is one instance of a TRC optimal-control problem: an initial state
  ``x0`` and a target ``x*`` drawn uniformly from boxes, ``horizon`` steps of ``dt`` seconds
  under zero-order hold, quadratic cost with weights ``Q, R, Qf``.
* **Observation** ``= concatenate(x, x*)``, a flat ``float32`` vector of shape
  ``(2 * state_dim,)``: a goal-conditioned task in the form every RL library takes without
  wrappers. ``info["state"]`` and ``info["target"]`` hold the float64 values. The space's
  bounds are the plant's state bounds (infinite where the plant has none) for both halves.
* **Action** ``= u``, a ``float32`` vector ``(control_dim,)`` in the Box of the plant's control
  bounds; actions outside it are clipped (the reward uses the clipped control).
* **Reward** ``= -dt [(x_k - x*)' Q (x_k - x*) + u_k' R u_k]`` (minus the stage cost of
  :mod:`trc.cost`); the last step of an episode also subtracts the terminal cost
  ``(x_N - x*)' Qf (x_N - x*)``, so the return of an episode that runs to the horizon is
  exactly ``-J``. With ``cost="fuel"`` (rocket) the reward is minus the propellant burnt in the
  step (the last state is the mass, as in :func:`trc.cost.fuel_cost`).
* **terminated** when ``||x - x*||_2 < tolerance`` (``info["is_success"]``, can be switched off
  with ``terminate_at_target=False``), or when the state leaves the plant's state bounds or
  becomes non-finite (``info["out_of_bounds"]``; the observation is then clipped to the
  observation space and ``info["state"]`` holds the true state). **truncated** at the horizon.
* **Seeding.** ``reset(seed=...)`` seeds ``self.np_random``; ``reset(options={"x0": ...,
  "target": ...})`` fixes the initial state and/or the target.

The plant is simulated in float64 with its own integrator (:meth:`dynamics.Plant.step`).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from . import tasks
from .errors import ConfigError, DimensionError, NonFiniteError, TRCError
from .plant import Plant
from .registry import get, make, names

__all__ = ["PlantEnv", "PlantVectorEnv", "make_env", "make_vector_env", "register_envs", "env_id", "default_task",
           "problem_kwargs"]

#: Gymnasium names of plants whose CamelCase name is not the usual one.
_GYM_NAMES = {"cartpole": "CartPole"}

_ENV_KEYS = ("Q", "R", "Qf", "horizon", "initial_state", "target_state", "tolerance", "cost",
             "terminate_at_target", "render_mode")


def env_id(name: str) -> str:
    """Gymnasium id of plant ``name``: ``"pendulum"`` -> ``"trc/Pendulum-v0"``."""
    camel = _GYM_NAMES.get(name) or "".join(part.capitalize() for part in name.split("_"))
    return f"trc/{camel}-v0"


# ---------------------------------------------------------------------- validation helpers
def _vector(value, dim: int, what: str) -> np.ndarray:
    """``value`` as a finite float64 vector of shape ``(dim,)``."""
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DimensionError(f"{what} must be a vector of {dim} numbers, got {value!r}") from exc
    if v.shape != (dim,):
        raise DimensionError(f"{what} has shape {v.shape}; expected ({dim},)")
    if not np.isfinite(v).all():
        raise NonFiniteError(f"{what} contains NaN or infinity: {v.tolist()}")
    return v


def _weight(value, dim: int, what: str) -> np.ndarray:
    """A weight given as a scalar, a diagonal or a full matrix, as a PSD ``(dim, dim)`` array."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = a * np.eye(dim)
    elif a.ndim == 1:
        if a.size != dim:
            raise DimensionError(f"{what} diagonal has {a.size} entries; expected {dim}")
        a = np.diag(a)
    if a.shape != (dim, dim):
        raise DimensionError(f"{what} has shape {a.shape}; expected ({dim}, {dim})")
    if not np.isfinite(a).all():
        raise NonFiniteError(f"{what} contains NaN or infinity")
    if not np.allclose(a, a.T) or np.linalg.eigvalsh(a).min() < -1e-12:
        raise ConfigError(f"{what} must be symmetric positive semi-definite, got {a.tolist()}")
    return a


def _box(value, dim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A sampling box given as ``{"low", "high"}``, ``(low, high)`` or an object with them."""
    if isinstance(value, Mapping):
        if set(value) != {"low", "high"}:
            raise ConfigError(f"{what} must have exactly the keys 'low' and 'high', got {sorted(value)}")
        low, high = value["low"], value["high"]
    elif hasattr(value, "low") and hasattr(value, "high"):  # trc.problem.Box
        low, high = value.low, value.high
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = value
    else:
        raise ConfigError(f"{what} must be {{'low': [...], 'high': [...]}} or (low, high), got {value!r}")
    low, high = _vector(low, dim, f"{what}.low"), _vector(high, dim, f"{what}.high")
    if (low > high).any():
        raise ConfigError(f"{what}.low {low.tolist()} exceeds {what}.high {high.tolist()}")
    return low, high


# ---------------------------------------------------------------------- environment
class PlantEnv(gymnasium.Env):
    """A plant and a quadratic regulation/tracking task as a :class:`gymnasium.Env`.

    See the module docstring for the observation, action, reward and termination design.

    Parameters
    ----------
    plant : Plant or str
        A continuous-time plant (copied and converted to float64), or a registered name built
        with ``plant_kwargs``.
    Q, R : scalar, diagonal or matrix
        Stage-cost weights, shapes ``(state_dim, state_dim)`` and ``(control_dim,
        control_dim)``; default identity.
    Qf : scalar, diagonal or matrix, optional
        Terminal weight, default ``Q``.
    horizon : int
        Steps per episode ``N`` (``truncated`` after the ``N``-th step). Default 100.
    initial_state, target_state : {"low": list, "high": list} or (low, high), optional
        Uniform sampling boxes of ``x0`` and ``x*`` (``low == high`` fixes them). Default: the
        plant's state bounds where finite, else ``[-1, 1]`` for ``x0`` and the origin for
        ``x*``. Both must lie inside the plant's state bounds.
    tolerance : float
        Success radius on ``||x - x*||_2`` in state units, > 0. Default 0.1.
    cost : {"quadratic", "fuel"}
        Reward definition; see the module docstring.
    terminate_at_target : bool
        End the episode (``terminated``) when the state reaches the tolerance ball.
    render_mode : None
        No rendering is implemented; only ``None`` is accepted.
    **plant_kwargs
        Constructor arguments of the plant when ``plant`` is a name.

    Attributes
    ----------
    plant : Plant
        The float64 copy of the plant being simulated.
    Q, R, Qf : ndarray
        Weights as float64 matrices.
    dt : float
        Sample time in seconds.

    Raises
    ------
    ConfigError
        On a discrete-time plant, invalid weights, boxes outside the state bounds, or a
        non-positive horizon or tolerance.
    DimensionError, NonFiniteError
        On weights or boxes of the wrong size or with non-finite entries.
    UnknownNameError
        If ``plant`` is an unknown name.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        plant: Plant | str,
        *,
        Q=1.0,
        R=1.0,
        Qf=None,
        horizon: int = 100,
        initial_state=None,
        target_state=None,
        tolerance: float = 0.1,
        cost: str = "quadratic",
        terminate_at_target: bool = True,
        render_mode: str | None = None,
        **plant_kwargs,
    ):
        super().__init__()
        if isinstance(plant, str):
            plant = make(plant, **plant_kwargs)
        elif plant_kwargs:
            raise ConfigError(f"plant arguments {sorted(plant_kwargs)} need a plant name, not a built plant")
        if not isinstance(plant, Plant):
            raise ConfigError(f"plant must be a dynamics.Plant or a registered name, got {type(plant).__name__}")
        if plant.discrete:
            raise ConfigError(f"{plant.name}: PlantEnv needs a continuous-time plant; this one is discrete-time")
        if render_mode is not None:
            raise ConfigError(f"render_mode {render_mode!r} is not supported; choose None")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ConfigError(f"horizon must be a positive integer number of steps, got {horizon!r}")
        if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
            raise ConfigError(f"tolerance must be a positive finite number, got {tolerance!r}")
        if cost not in ("quadratic", "fuel"):
            raise ConfigError(f"cost must be 'quadratic' or 'fuel', got {cost!r}")

        self.plant = copy.deepcopy(plant).double().requires_grad_(False)
        n, m = self.plant.state_dim, self.plant.control_dim
        self.dt = self.plant.dt
        self.horizon = int(horizon)
        self.tolerance = float(tolerance)
        self.cost = cost
        self.terminate_at_target = bool(terminate_at_target)
        self.render_mode = render_mode
        self.Q = _weight(Q, n, "Q")
        self.R = _weight(R, m, "R")
        self.Qf = self.Q.copy() if Qf is None else _weight(Qf, n, "Qf")

        self.x_min = self.plant.x_min.numpy().astype(np.float64)
        self.x_max = self.plant.x_max.numpy().astype(np.float64)
        self.u_min = self.plant.u_min.numpy().astype(np.float64)
        self.u_max = self.plant.u_max.numpy().astype(np.float64)
        finite = np.isfinite(self.x_min) & np.isfinite(self.x_max)
        if initial_state is None:
            initial_state = (np.where(finite, self.x_min, -1.0), np.where(finite, self.x_max, 1.0))
        if target_state is None:
            origin = np.clip(np.zeros(n), self.x_min, self.x_max)
            target_state = (origin, origin)
        self.initial_low, self.initial_high = _box(initial_state, n, "initial_state")
        self.target_low, self.target_high = _box(target_state, n, "target_state")
        for low, high, what in ((self.initial_low, self.initial_high, "initial_state"),
                                (self.target_low, self.target_high, "target_state")):
            if (low < self.x_min).any() or (high > self.x_max).any():
                raise ConfigError(
                    f"{what} box [{low.tolist()}, {high.tolist()}] leaves the plant's state bounds "
                    f"[{self.x_min.tolist()}, {self.x_max.tolist()}]"
                )

        obs_low = np.concatenate([self.x_min, self.x_min]).astype(np.float32)
        obs_high = np.concatenate([self.x_max, self.x_max]).astype(np.float32)
        self.observation_space = spaces.Box(obs_low, obs_high, shape=(2 * n,), dtype=np.float32)
        self.action_space = spaces.Box(
            self.u_min.astype(np.float32), self.u_max.astype(np.float32), shape=(m,), dtype=np.float32
        )
        self._x: np.ndarray | None = None
        self._target: np.ndarray | None = None
        self._k = 0

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_problem(cls, problem, **overrides) -> "PlantEnv":
        """The environment of a :class:`trc.problem.Problem` (or any object with its fields).

        Uses the problem's plant (with its ``dt``), ``Q, R, Qf`` (``problem.weights``),
        ``horizon``, ``initial_state``/``target_state`` boxes, ``tolerance`` and ``cost``.

        Parameters
        ----------
        problem : trc.problem.Problem
        **overrides
            Keyword arguments of :class:`PlantEnv` that replace the problem's values.
        """
        return cls(problem.make_plant(torch.float64), **{**problem_kwargs(problem), **overrides})

    # ------------------------------------------------------------------ gymnasium API
    @property
    def state(self) -> np.ndarray:
        """Current plant state ``(state_dim,)``, float64 (a copy)."""
        if self._x is None:
            raise gymnasium.error.ResetNeeded("call reset() before reading the state")
        return self._x.copy()

    @property
    def target(self) -> np.ndarray:
        """Current target state ``(state_dim,)``, float64 (a copy)."""
        if self._target is None:
            raise gymnasium.error.ResetNeeded("call reset() before reading the target")
        return self._target.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode: draw ``x0`` and ``x*`` (or take ``options["x0"]``/``["target"]``).

        Parameters
        ----------
        seed : int, optional
            Seeds ``self.np_random`` (Gymnasium convention).
        options : dict, optional
            ``"x0"`` and/or ``"target"``: array_like ``(state_dim,)`` inside the state bounds,
            used instead of a sample.

        Returns
        -------
        observation : ndarray, float32, shape ``(2 * state_dim,)``
        info : dict
            ``state``, ``target`` (float64 copies), ``is_success``, ``out_of_bounds``.

        Raises
        ------
        ConfigError
            On an unknown option or a state outside the state bounds.
        DimensionError, NonFiniteError
            On a malformed option.
        """
        super().reset(seed=seed)
        x0, target = self._parse_options(options)
        if x0 is None:
            x0 = self.np_random.uniform(self.initial_low, self.initial_high)
        if target is None:
            target = self.np_random.uniform(self.target_low, self.target_high)
        self._x, self._target, self._k = x0.astype(np.float64), target.astype(np.float64), 0
        obs, info = self._observe(self._x[None], self._target[None])
        return obs[0], _unbatch(info)

    def step(self, action):
        """Hold ``action`` for ``dt`` seconds; see the module docstring for the reward.

        Parameters
        ----------
        action : array_like, shape ``(control_dim,)``
            Control; clipped to the action space.

        Returns
        -------
        observation, reward, terminated, truncated, info
            ``info`` as in :meth:`reset`, plus ``stage_cost`` and ``terminal_cost``.

        Raises
        ------
        gymnasium.error.ResetNeeded
            If called before :meth:`reset`.
        DimensionError, NonFiniteError
            On a malformed or non-finite action.
        """
        if self._x is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        u = _vector(action, self.plant.control_dim, "action")
        self._k += 1
        x_next, obs, reward, terminated, truncated, info = self._transition(
            self._x[None], self._target[None], u[None], np.array([self._k])
        )
        self._x = x_next[0]
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), _unbatch(info)

    # ------------------------------------------------------------------ batched core
    def simulate(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The plant over one sample interval: states ``(B, n)`` and held controls ``(B, m)``
        to the next states ``(B, n)`` (float64). Here the plant's own integrator
        (:meth:`Plant.step`); a subclass may simulate it otherwise (``trc.closed_loop.ClosedLoopEnv``:
        ``solve_ivp`` with perturbed parameters and noise)."""
        with torch.no_grad():
            return self.plant.step(torch.as_tensor(x), torch.as_tensor(u)).numpy()

    def _parse_options(self, options, batch: int | None = None):
        """``options["x0"]`` and ``options["target"]`` validated, or ``None`` where absent."""
        options = dict(options or {})
        unknown = sorted(set(options) - {"x0", "target"})
        if unknown:
            raise ConfigError(f"unknown reset option(s) {unknown}; allowed: ['target', 'x0']")
        n = self.plant.state_dim
        out = []
        for key in ("x0", "target"):
            value = options.get(key)
            if value is not None:
                if batch is not None and np.ndim(value) == 2:
                    value = np.stack([_vector(v, n, f"options[{key!r}][{i}]") for i, v in enumerate(value)])
                    if value.shape[0] != batch:
                        raise DimensionError(f"options[{key!r}] has {value.shape[0]} rows; expected {batch}")
                else:
                    value = _vector(value, n, f"options[{key!r}]")
                if (value < self.x_min).any() or (value > self.x_max).any():
                    raise ConfigError(
                        f"options[{key!r}] {value.tolist()} leaves the state bounds "
                        f"[{self.x_min.tolist()}, {self.x_max.tolist()}]"
                    )
            out.append(value)
        return out

    def _observe(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, dict]:
        """Observations ``(B, 2n)`` and info arrays of states ``x`` and targets ``(B, n)``."""
        finite = np.isfinite(x).all(axis=1)
        out = ~finite | (x < self.x_min).any(axis=1) | (x > self.x_max).any(axis=1)
        with np.errstate(invalid="ignore"):
            reached = finite & (np.linalg.norm(x - target, axis=1) < self.tolerance)
        obs = np.concatenate([np.nan_to_num(x), target], axis=1).astype(np.float32)
        obs = np.clip(obs, self.observation_space.low, self.observation_space.high)
        info = {"state": x.copy(), "target": target.copy(), "is_success": reached, "out_of_bounds": out}
        return obs, info

    def _transition(self, x, target, u, k):
        """One step of ``B`` episodes: states ``x``, targets ``(B, n)``, controls ``(B, m)``,
        step counts after the step ``k`` ``(B,)``. Returns the next states and the
        Gymnasium ``(obs, reward, terminated, truncated, info)`` as arrays over ``B``."""
        u = np.clip(u, self.u_min, self.u_max)
        err = x - target
        x_next = self.simulate(x, u)
        if self.cost == "quadratic":
            stage = self.dt * (np.einsum("bi,ij,bj->b", err, self.Q, err) + np.einsum("bi,ij,bj->b", u, self.R, u))
        else:  # propellant burnt: the mass (last state) lost in the step
            stage = x[:, -1] - x_next[:, -1]
        obs, info = self._observe(x_next, target)
        terminated = info["out_of_bounds"] | (self.terminate_at_target & info["is_success"])
        truncated = ~terminated & (k >= self.horizon)
        terminal = np.zeros(len(x))
        if self.cost == "quadratic":
            done = (terminated | truncated) & np.isfinite(x_next).all(axis=1)
            e = np.where(done[:, None], x_next - target, 0.0)
            terminal = np.einsum("bi,ij,bj->b", e, self.Qf, e)
        info["stage_cost"] = stage
        info["terminal_cost"] = terminal
        return x_next, obs, -(stage + terminal), terminated, truncated, info


def problem_kwargs(problem) -> dict:
    """The :class:`PlantEnv` arguments of a :class:`trc.problem.Problem` (duck-typed)."""
    Q, R, Qf = problem.weights
    return dict(
        Q=Q, R=R, Qf=Qf, horizon=problem.horizon, initial_state=problem.initial_state,
        target_state=problem.target_state, tolerance=problem.tolerance, cost=problem.cost,
    )


def _unbatch(info: dict) -> dict:
    """The info of a batch of one as plain Python values and ``(n,)`` arrays."""
    return {key: value[0].copy() if np.ndim(value) == 2 else value[0].item() for key, value in info.items()}


class PlantVectorEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` copies of :class:`PlantEnv` simulated as one batch of the plant.

    Equivalent to ``gymnasium.vector.SyncVectorEnv([lambda: PlantEnv(...)] * num_envs)`` step
    for step (same seeds ``seed + i``, same next-step autoreset, same infos with their
    ``"_key"`` masks), but one :meth:`dynamics.Plant.step` call moves all copies.

    Parameters
    ----------
    plant : Plant or str
        As for :class:`PlantEnv`.
    num_envs : int
        Number of parallel episodes ``B`` >= 1.
    **kwargs
        Task and plant arguments of :class:`PlantEnv`.

    Notes
    -----
    ``metadata["autoreset_mode"]`` is ``NEXT_STEP``: the step after an episode ends resets
    that copy (its action is ignored, its reward is 0). ``reset(options={"x0": ...,
    "target": ...})`` takes ``(state_dim,)`` (same for every copy) or ``(num_envs,
    state_dim)`` arrays.

    Examples
    --------
    >>> import gymnasium as gym, dynamics
    >>> envs = gym.make_vec("trc/Pendulum-v0", num_envs=16)
    >>> obs, info = envs.reset(seed=0)
    >>> obs.shape
    (16, 4)
    """

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, plant: Plant | str, num_envs: int = 1, **kwargs):
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.env = PlantEnv(plant, **kwargs)
        self.num_envs = int(num_envs)
        self.render_mode = self.env.render_mode
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self._x: np.ndarray | None = None
        self._target: np.ndarray | None = None
        self._k = np.zeros(self.num_envs, dtype=np.int64)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    @classmethod
    def from_problem(cls, problem, num_envs: int = 1, **overrides) -> "PlantVectorEnv":
        """``num_envs`` copies of :meth:`PlantEnv.from_problem` ``(problem, **overrides)``."""
        return cls(problem.make_plant(torch.float64), num_envs=num_envs, **{**problem_kwargs(problem), **overrides})

    @property
    def plant(self) -> Plant:
        """The float64 plant simulating all copies."""
        return self.env.plant

    def _sample(self, index: np.ndarray, x0=None, target=None) -> None:
        """Draw new initial states and targets for the copies ``index`` (each from its own RNG)."""
        env = self.env
        for i in index:  # one generator per copy, as SyncVectorEnv: a short loop over resets only
            self._x[i] = self._rngs[i].uniform(env.initial_low, env.initial_high) if x0 is None else x0[i]
            self._target[i] = self._rngs[i].uniform(env.target_low, env.target_high) if target is None else target[i]
        self._k[index] = 0

    def reset(self, *, seed: int | list | None = None, options: dict[str, Any] | None = None):
        """Reset every copy; ``seed`` is ``None``, an int (copy ``i`` gets ``seed + i``) or a list.

        Returns
        -------
        observations : ndarray, float32, shape ``(num_envs, 2 * state_dim)``
        infos : dict of arrays over the copies (with ``"_key"`` masks)
        """
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise DimensionError(f"reset got {len(seeds)} seeds; expected num_envs={self.num_envs}")
        if self._rngs is None:
            self._rngs = [None] * self.num_envs
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i] = gymnasium.utils.seeding.np_random(s)[0]
        x0, target = self.env._parse_options(options, batch=self.num_envs)
        n = self.plant.state_dim
        x0 = None if x0 is None else np.broadcast_to(x0, (self.num_envs, n))
        target = None if target is None else np.broadcast_to(target, (self.num_envs, n))
        self._x = np.zeros((self.num_envs, n))
        self._target = np.zeros((self.num_envs, n))
        self._sample(np.arange(self.num_envs), x0, target)
        self._autoreset[:] = False
        obs, info = self.env._observe(self._x, self._target)
        return obs, _with_masks(info, np.ones(self.num_envs, dtype=bool))

    def step(self, actions):
        """Step every copy; copies whose episode ended at the previous step are reset instead.

        Parameters
        ----------
        actions : array_like, shape ``(num_envs, control_dim)``

        Returns
        -------
        observations, rewards, terminations, truncations, infos
            Arrays over the copies; ``infos`` as in :meth:`PlantEnv.step` with ``"_key"``
            masks (``stage_cost``/``terminal_cost`` are absent for copies being reset).

        Raises
        ------
        gymnasium.error.ResetNeeded
            If called before :meth:`reset`.
        DimensionError, NonFiniteError
            On malformed or non-finite actions.
        """
        if self._x is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        m = self.plant.control_dim
        u = np.asarray(actions, dtype=np.float64)
        if u.shape != (self.num_envs, m):
            raise DimensionError(
                f"actions have shape {u.shape}; expected (num_envs, control_dim) = ({self.num_envs}, {m})"
            )
        if not np.isfinite(u).all():
            raise NonFiniteError("actions contain NaN or infinity")
        resets = np.flatnonzero(self._autoreset)
        self._sample(resets)
        self._k += 1
        x_next, obs, reward, terminated, truncated, info = self.env._transition(self._x, self._target, u, self._k)
        # copies being reset report their new initial state, as PlantEnv.reset does
        x_next[resets] = self._x[resets]
        self._k[resets] = 0
        obs_reset, info_reset = self.env._observe(self._x[resets], self._target[resets])
        obs[resets] = obs_reset
        for key, value in info_reset.items():
            info[key][resets] = value
        reward[resets] = 0.0
        terminated[resets] = False
        truncated[resets] = False
        stepped = np.ones(self.num_envs, dtype=bool)
        stepped[resets] = False
        info["stage_cost"][resets] = 0.0
        info["terminal_cost"][resets] = 0.0
        self._x = x_next
        self._autoreset = terminated | truncated
        masks = {"stage_cost": stepped, "terminal_cost": stepped}
        return obs, reward, terminated, truncated, _with_masks(info, np.ones(self.num_envs, dtype=bool), masks)


def _with_masks(info: dict, default: np.ndarray, masks: dict | None = None) -> dict:
    """Gymnasium vector infos: every ``key`` with a boolean ``"_key"`` mask over the copies."""
    out = {}
    for key, value in info.items():
        mask = (masks or {}).get(key, default)
        if mask.any():  # a key no copy reports is absent, as in SyncVectorEnv
            out[key], out[f"_{key}"] = value, mask.copy()
    return out


# ---------------------------------------------------------------------- factories
def default_task(name: str) -> dict:
    """The default task of plant ``name`` as :func:`make_env` arguments.

    The plant class's ``default_task`` attribute when it has one (a dict with the constructor
    arguments of the plant under ``"plant"`` and :class:`PlantEnv` arguments); otherwise the
    plant's standard task (:func:`dynamics.tasks.task`) converted: its plant arguments with
    its ``dt``, ``Qf = Qf_scale Q`` unless it gives ``Qf``, and its ``horizon``, ``Q``, ``R``,
    sampling boxes, ``tolerance`` and ``cost``; an empty dict (a generic regulation task) for
    plants with neither.

    Raises
    ------
    UnknownNameError
        If ``name`` is not a registered plant.
    """
    cls = get(name)
    custom = getattr(cls, "default_task", None)
    if custom is not None:
        return copy.deepcopy(dict(custom))
    if name not in tasks.names():
        return {}
    task = tasks.task(name)
    plant = {key: value for key, value in task["plant"].items() if key != "name"}
    plant["dt"] = task["dt"]
    Qf = task.get("Qf")  # the standard tasks give Qf_scale; a task may give Qf instead
    if Qf is None:
        Qf = (task["Qf_scale"] * np.asarray(task["Q"], dtype=np.float64)).tolist()
    keys = ("horizon", "Q", "R", "initial_state", "target_state", "tolerance", "cost")
    return {"plant": plant, "Qf": Qf, **{key: task[key] for key in keys}}


def make_env(name: str, **kwargs) -> PlantEnv:
    """The Gymnasium environment of plant ``name`` with its default task.

    Parameters
    ----------
    name : str
        A registered continuous-time plant.
    **kwargs
        Arguments of :class:`PlantEnv` (``Q``, ``R``, ``Qf``, ``horizon``, ``initial_state``,
        ``target_state``, ``tolerance``, ``cost``, ``terminate_at_target``, ``render_mode``)
        replace the default task's; all other keywords go to the plant's constructor on top
        of the task's plant arguments (e.g. ``dt``, ``u_max``, ``m``).

    Returns
    -------
    PlantEnv

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered (the message lists the names).

    Examples
    --------
    >>> import dynamics
    >>> env = dynamics.make_env("pendulum", horizon=50, u_max=2.0)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    (4,)
    """
    plant, env_kwargs = _split(name, kwargs)
    return PlantEnv(plant, **env_kwargs)


def make_vector_env(name: str, num_envs: int = 1, **kwargs) -> PlantVectorEnv:
    """``num_envs`` batched copies of :func:`make_env` ``(name, **kwargs)``; see :class:`PlantVectorEnv`.

    Also the ``vector_entry_point`` of the registered ids, so
    ``gymnasium.make_vec("trc/Pendulum-v0", num_envs=64)`` returns one.
    """
    plant, env_kwargs = _split(name, kwargs)
    return PlantVectorEnv(plant, num_envs=num_envs, **env_kwargs)


def _split(name: str, kwargs: dict) -> tuple[Plant, dict]:
    """The plant of ``name``'s default task updated by ``kwargs``, and the environment arguments."""
    task = default_task(name)
    plant_kwargs = task.pop("plant", {})
    env_kwargs = task
    for key, value in kwargs.items():
        (env_kwargs if key in _ENV_KEYS else plant_kwargs)[key] = value
    return make(name, dtype=torch.float64, **plant_kwargs), env_kwargs  # PlantEnv simulates in float64


def _has_env(name: str) -> bool:
    """Whether plant ``name`` is continuous-time and buildable with its default task."""
    cls = get(name)
    if getattr(cls, "discrete", False) is True:
        return False
    try:
        make_env(name)
    except (TRCError, TypeError, ValueError, NotImplementedError):
        return False
    return True


def register_envs() -> list[str]:
    """Register ``trc/<Name>-v0`` with Gymnasium for every suitable registered plant.

    Called when :mod:`dynamics` is imported; call it again after registering a new plant.
    Ids already registered are left alone.

    Returns
    -------
    list of str
        The Gymnasium ids of the :class:`PlantEnv` environments (plants with environments of
        their own, such as the maze or LIBERO, register those themselves and are not listed).
    """
    ids = []
    for name in names():
        gym_id = env_id(name)
        if gym_id in gymnasium.registry and gymnasium.registry[gym_id].entry_point != "dynamics.env:make_env":
            continue
        if gym_id not in gymnasium.registry:
            if not _has_env(name):
                continue
            gymnasium.register(
                id=gym_id,
                entry_point="dynamics.env:make_env",
                vector_entry_point="dynamics.env:make_vector_env",
                kwargs={"name": name},
            )
        ids.append(gym_id)
    return ids


register_envs()
