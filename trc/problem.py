"""Optimal-control problems: plant, horizon, time step, cost, bounds and sampling.

A :class:`Problem` is the ``problem:`` section of a configuration file. It is what the
generators solve, what the model is trained on and what evaluation judges against::

    problem:
      name: double_integrator
      plant: {name: double_integrator, u_min: -4, u_max: 4}
      dt: 0.33
      horizon: 15
      cost: quadratic
      Q: [10, 5]          # diagonal, or a full matrix
      R: [0.1]
      Qf_scale: 20        # Qf = Qf_scale * Q unless Qf is given
      initial_state: {low: [-2, -2], high: [2, 2]}
      target_state: {low: [-2, -2], high: [2, 2]}
      tolerance: 0.1      # success: ||x_N - x*||_2 < tolerance

A standard problem is one line (:mod:`dynamics.tasks` holds its numbers); any other key
changes it, e.g. a shorter horizon, or a plant argument (``plant`` keys are merged into the
task's plant arguments, every other key replaces the task's value)::

    problem:
      task: van_der_pol
      horizon: 50
      plant: {u_max: 1.0}
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import dynamics
from dynamics import tasks
from dynamics.errors import ConfigError

from .config import describe, from_dict, is_int, is_real
from .cost import trajectory_cost

__all__ = ["Box", "Problem"]

COSTS = ("quadratic", "fuel")


class _Unset:
    """Default of the fields of :class:`Problem`: the key was not given (so a task's value, or
    the field's default, applies)."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()

#: Fields a problem must have (given or from its task).
_REQUIRED = ("name", "plant", "dt", "horizon", "initial_state", "target_state")

#: Defaults of the other fields.
_DEFAULTS = {
    "cost": "quadratic", "Q": 1.0, "R": 1.0, "Qf": None, "Qf_scale": 1.0, "tolerance": 0.1, "options": {},
}


@dataclass
class Box:
    """Uniform distribution on the box ``[low, high]`` (``low == high`` gives a fixed state)."""

    low: list
    high: list

    def __post_init__(self):
        lo, hi = np.asarray(self.low, dtype=float), np.asarray(self.high, dtype=float)
        if lo.ndim != 1 or lo.shape != hi.shape:
            raise ConfigError(f"box low {self.low!r} and high {self.high!r} must be lists of equal length")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or (lo > hi).any():
            raise ConfigError(f"box needs finite low <= high, got low={self.low!r}, high={self.high!r}")
        self.low, self.high = lo.tolist(), hi.tolist()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples, shape ``(n, dim)``, float64."""
        lo, hi = np.asarray(self.low), np.asarray(self.high)
        return lo + (hi - lo) * rng.random((n, lo.size))


def _matrix(value, dim: int, what: str) -> np.ndarray:
    """A weight given as a scalar, a diagonal list or a full matrix, as a ``(dim, dim)`` array."""
    if isinstance(value, (bool, np.bool_)) or np.iscomplexobj(value):
        raise ConfigError(f"{what} must be real numbers, got {value!r}")
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be a number, a diagonal list or a matrix, got {value!r}") from exc
    if not np.isfinite(a).all():
        raise ConfigError(f"{what} must be finite, got {a.tolist()}")
    if a.ndim == 0:
        a = a * np.eye(dim)
    elif a.ndim == 1:
        if a.size != dim:
            raise ConfigError(f"{what} diagonal has {a.size} entries; expected {dim}")
        a = np.diag(a)
    if a.shape != (dim, dim):
        raise ConfigError(f"{what} has shape {a.shape}; expected ({dim}, {dim})")
    if not np.allclose(a, a.T) or np.linalg.eigvalsh(a).min() < -1e-12:
        raise ConfigError(f"{what} must be symmetric positive semi-definite, got {a.tolist()}")
    return a


@dataclass
class Problem:
    """An optimal-control problem over a finite horizon.

    Every field may be left out when ``task`` names a standard task (:mod:`dynamics.tasks`),
    which then supplies it; given fields change the task (``plant`` keys are merged into the
    task's plant arguments, other fields replace the task's value). Without a task, ``name``,
    ``plant``, ``dt``, ``horizon``, ``initial_state`` and ``target_state`` are required.

    Attributes
    ----------
    name : str
        Problem name (used for file names and reports).
    plant : dict
        ``{"name": <registered plant>, **constructor arguments}`` for :func:`dynamics.make`.
        The problem's ``dt`` overrides any ``dt`` given here.
    dt : float
        Sample time in seconds.
    horizon : int
        Number of control intervals ``N``.
    cost : {"quadratic", "fuel"}
        ``quadratic``: ``J = dt * sum_k [(x_k - x*)' Q (x_k - x*) + u_k' R u_k]
        + (x_N - x*)' Qf (x_N - x*)``. ``fuel``: the plant's fuel use (rocket).
    Q, R, Qf : scalar, diagonal list or matrix
        Weights; ``Qf`` defaults to ``Qf_scale * Q``.
    initial_state, target_state : Box
        Sampling distributions of ``x0`` and the target ``x*``.
    tolerance : float
        Success threshold on ``||x_N - x*||_2``.
    options : dict
        Problem-specific settings read by its solver (e.g. the rocket's glide slope).
    task : str, optional
        Name of the standard task this problem starts from (:func:`dynamics.tasks.task`).
        Not part of :meth:`to_dict`, which holds the resolved fields: a problem written with a
        task and the same problem written out in full have equal dicts, data sets and models.

    Raises
    ------
    ConfigError
        On an unknown task (the cause is its :class:`~dynamics.errors.UnknownNameError`), a
        missing required field, or an invalid value, e.g. ``horizon: true`` (a bool is not an
        integer), a non-positive or non-finite ``dt`` or ``tolerance``, or weights that are not
        symmetric positive semi-definite.
    """

    name: str = _UNSET
    plant: dict = _UNSET
    dt: float = _UNSET
    horizon: int = _UNSET
    initial_state: Box = _UNSET
    target_state: Box = _UNSET
    cost: str = _UNSET
    Q: Any = _UNSET
    R: Any = _UNSET
    Qf: Any = _UNSET
    Qf_scale: float = _UNSET
    tolerance: float = _UNSET
    options: dict = _UNSET
    task: str | None = field(default=None, compare=False)

    def __post_init__(self):
        self._resolve()
        if isinstance(self.initial_state, dict):
            self.initial_state = _box(self.initial_state, "initial_state")
        if isinstance(self.target_state, dict):
            self.target_state = _box(self.target_state, "target_state")
        for what in ("initial_state", "target_state"):
            if not isinstance(getattr(self, what), Box):
                raise ConfigError(
                    f"problem.{what} must be {{low: [...], high: [...]}}, got {getattr(self, what)!r}"
                )
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"problem.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.plant, dict) or "name" not in self.plant:
            raise ConfigError(f"problem.plant must be a mapping with a 'name', got {self.plant!r}")
        if not (is_real(self.dt) and self.dt > 0):
            raise ConfigError(f"problem.dt must be a positive finite number of seconds, got {describe(self.dt)}")
        if not (is_int(self.horizon) and self.horizon >= 1):
            raise ConfigError(f"problem.horizon must be a positive integer, got {describe(self.horizon)}")
        self.horizon = int(self.horizon)
        if self.cost not in COSTS:
            raise ConfigError(f"problem.cost must be one of {COSTS}, got {self.cost!r}")
        if not (is_real(self.tolerance) and self.tolerance > 0):
            raise ConfigError(f"problem.tolerance must be a positive finite number, got {describe(self.tolerance)}")
        if not (is_real(self.Qf_scale) and self.Qf_scale >= 0):
            raise ConfigError(f"problem.Qf_scale must be a finite number >= 0, got {describe(self.Qf_scale)}")
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ConfigError(f"problem.options must be a mapping of named settings, got {self.options!r}")
        plant = self.make_plant()  # validates the plant name and parameters
        n, m = plant.state_dim, plant.control_dim
        for box, what in ((self.initial_state, "initial_state"), (self.target_state, "target_state")):
            if len(box.low) != n:
                raise ConfigError(f"problem.{what} has {len(box.low)} entries; the plant has state_dim={n}")
        self._Q = _matrix(self.Q, n, "problem.Q")
        self._R = _matrix(self.R, m, "problem.R")
        self._Qf = _matrix(self.Qf, n, "problem.Qf") if self.Qf is not None else self.Qf_scale * self._Q
        if self.cost == "quadratic" and np.linalg.eigvalsh(self._R).min() <= 0:
            raise ConfigError("problem.R must be positive definite for a quadratic cost")

    def _resolve(self) -> None:
        """Fill the fields not given from the task (merging ``plant``) or from the defaults."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name != "task" and getattr(self, f.name) is not _UNSET}
        values = {}
        if self.task is not None:
            try:
                values = tasks.task(self.task)
            except dynamics.UnknownNameError as exc:
                raise ConfigError(f"problem.task: {exc}") from exc
            plant = given.get("plant")
            if isinstance(plant, dict):
                base = values["plant"]
                if plant.get("name", base["name"]) != base["name"]:
                    raise ConfigError(
                        f"problem.plant.name {plant['name']!r} differs from the plant {base['name']!r} of "
                        f"task {self.task!r}; leave the name out or drop the task"
                    )
                given["plant"] = {**base, **plant}
        values.update(given)
        missing = [key for key in _REQUIRED if key not in values]
        if missing:
            raise ConfigError(
                f"problem: missing key(s) {missing}; give them, or a standard task (problem.task, "
                f"one of {tasks.names()}) that has them"
            )
        for key, default in _DEFAULTS.items():
            values.setdefault(key, copy.deepcopy(default))
        for key, value in values.items():
            setattr(self, key, value)

    # ---------------------------------------------------------------- derived
    def make_plant(self, dtype: torch.dtype = torch.float32) -> dynamics.Plant:
        """Build the plant with this problem's ``dt``.

        Raises
        ------
        ConfigError
            If the plant name is unknown or a parameter is rejected.
        """
        params = {k: v for k, v in self.plant.items() if k != "name"}
        params["dt"] = float(self.dt)
        try:
            plant = dynamics.make(self.plant["name"], dtype=dtype, **params)
        except dynamics.UnknownNameError as exc:
            raise ConfigError(str(exc)) from exc
        except TypeError as exc:
            raise ConfigError(f"problem.plant: {exc}") from exc
        return plant

    @property
    def state_dim(self) -> int:
        return self._Q.shape[0]

    @property
    def control_dim(self) -> int:
        return self._R.shape[0]

    @property
    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Q, R, Qf)`` as float64 arrays of shapes ``(n, n)``, ``(m, m)``, ``(n, n)``."""
        return self._Q, self._R, self._Qf

    def sample(self, num: int, seed: int | np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``num`` initial and target states, each ``(num, state_dim)`` float64.

        The same ``seed`` gives the same states (NumPy ``default_rng``).
        """
        rng = np.random.default_rng(seed)
        return self.initial_state.sample(num, rng), self.target_state.sample(num, rng)

    def to_dict(self) -> dict:
        """The resolved problem as plain data (round-trips through :meth:`from_dict`); without
        ``task``, so it does not depend on how the problem was written."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "task"}

    @classmethod
    def from_dict(cls, data) -> "Problem":
        return from_dict(cls, data, "problem")

    def cost_of(self, states: torch.Tensor, controls: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The problem's cost ``J`` of trajectories; see :func:`trc.cost.trajectory_cost`."""
        return trajectory_cost(self, states, controls, target)


def _box(data, what: str) -> Box:
    return from_dict(Box, data, f"problem.{what}")


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
