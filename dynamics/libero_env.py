"""LIBERO tasks as Gymnasium environments.

``gymnasium.make("trc/LIBERO-v0", suite="libero_spatial", task=3)`` (registered when
:mod:`dynamics.libero_env` is imported) or :class:`LiberoEnv` directly.

* **Observation** (``spaces.Dict``): ``agentview_rgb`` and ``eye_in_hand_rgb``
  ``(S, S, 3)`` uint8 (as LIBERO renders them: upside down), ``ee_pos`` (3, m), ``ee_ori``
  (3, axis-angle rad), ``gripper_states`` (2, m), ``joint_states`` (7, rad) and
  ``instruction`` (text).
* **Action**: ``Box(-1, 1, (7,))``, LIBERO's delta end-effector action (see
  :mod:`dynamics.libero`).
* **Reward**: 1 on the step where LIBERO's goal predicate first holds, else 0.
  **terminated** then; **truncated** after ``max_steps`` steps (LIBERO-Spatial: 220).
* **Episodes** start from LIBERO's official init states: ``reset(options={"init_state": i})``
  picks one, otherwise one is drawn with the environment's seeded generator. Objects settle for
  5 idle steps after the reset, as in LIBERO's evaluation.
* ``info``: ``is_success``, ``init_state`` (index), ``state`` (flattened MuJoCo state).
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from .errors import ConfigError
from .libero import MAX_STEPS, LiberoSimulator, proprio_from_raw

__all__ = ["LiberoEnv", "ENV_ID"]

#: Gymnasium id of the LIBERO environments.
ENV_ID = "trc/LIBERO-v0"


class LiberoEnv(gymnasium.Env):
    """One LIBERO task as a Gymnasium environment; see the module notes.

    Parameters
    ----------
    suite : str
        LIBERO suite.
    task : int or str
        Task index or name.
    max_steps : int, optional
        Episode limit; default LIBERO's for the suite.
    camera_size : int
        Image height and width.
    render : {"fast", "libero"}
        Render settings of :class:`~dynamics.libero.LiberoSimulator`.
    render_mode : {"rgb_array"}, optional
        :meth:`render` returns the agent view, upright.
    assets : path, optional
        LIBERO's assets.
    simulator : LiberoSimulator, optional
        Use this simulator (with cameras) instead of building one; ``suite``, ``task``,
        ``camera_size``, ``render`` and ``assets`` are then taken from it. :meth:`close` leaves
        a simulator given here open (its owner closes it); one built here is closed.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, suite: str = "libero_spatial", task: int | str = 0, *, max_steps: int | None = None,
                 camera_size: int = 128, render: str = "fast", render_mode: str | None = None, assets=None,
                 simulator: LiberoSimulator | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer))
                                      or max_steps < 1):
            raise ConfigError(f"max_steps must be a positive integer, got {max_steps!r}")
        if simulator is not None:
            if not simulator.cameras:
                raise ConfigError("the simulator of a LiberoEnv must render its cameras (cameras=True)")
            self.sim = simulator
            suite, camera_size = simulator.task.suite, simulator.camera_size
        else:
            self.sim = LiberoSimulator(suite, task, camera_size=camera_size, render=render, assets=assets)
        self._owns_sim = simulator is None
        self.max_steps = int(max_steps or MAX_STEPS[suite])
        self.render_mode = render_mode
        s = camera_size
        self.observation_space = spaces.Dict({
            "agentview_rgb": spaces.Box(0, 255, (s, s, 3), np.uint8),
            "eye_in_hand_rgb": spaces.Box(0, 255, (s, s, 3), np.uint8),
            "ee_pos": spaces.Box(-np.inf, np.inf, (3,), np.float64),
            "ee_ori": spaces.Box(-np.inf, np.inf, (3,), np.float64),
            "gripper_states": spaces.Box(-np.inf, np.inf, (2,), np.float64),
            "joint_states": spaces.Box(-np.inf, np.inf, (7,), np.float64),
            "instruction": spaces.Text(max_length=512, min_length=1, charset=_charset()),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._init_id = 0
        self._steps = 0
        self._done = False

    @property
    def instruction(self) -> str:
        """The task's language instruction."""
        return self.sim.language

    def _obs(self, raw: dict) -> dict:
        p = proprio_from_raw(raw)
        return {
            "agentview_rgb": np.asarray(raw["agentview_image"], dtype=np.uint8),
            "eye_in_hand_rgb": np.asarray(raw["robot0_eye_in_hand_image"], dtype=np.uint8),
            "ee_pos": p["ee_pos"], "ee_ori": p["ee_ori"], "gripper_states": p["gripper_states"],
            "joint_states": p["joint_states"], "instruction": self.sim.language,
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        n = len(self.sim.init_states)
        init = options.get("init_state")
        self._init_id = int(self.np_random.integers(n)) if init is None else int(init)
        raw = self.sim.reset(self._init_id)
        self._steps, self._done = 0, False
        return self._obs(raw), {"is_success": False, "init_state": self._init_id, "state": self.sim.get_state()}

    def step(self, action):
        if self._done:
            raise gymnasium.error.ResetNeeded("the episode has ended; call reset()")
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        raw, success = self.sim.step(action)
        self._steps += 1
        truncated = self._steps >= self.max_steps and not success
        self._done = success or truncated
        info = {"is_success": success, "init_state": self._init_id, "state": self.sim.get_state()}
        return self._obs(raw), float(success), bool(success), bool(truncated), info

    def render(self):
        if self.render_mode == "rgb_array" and self.sim.last_raw is not None:
            return np.asarray(self.sim.last_raw["agentview_image"])[::-1, ::-1].copy()
        return None

    def close(self):
        """Close the simulator if this environment built it (see ``simulator``)."""
        if self._owns_sim:
            self.sim.close()


def _charset() -> str:
    return string.ascii_letters + string.digits + string.punctuation + " "


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="dynamics.libero_env:LiberoEnv")
