"""Discrete problems (grid maze, sudoku): the ``problem:`` section with ``kind: maze | sudoku``.

Discrete configuration files share the layout of the continuous ones (``problem``,
``generator``, ``model``, ``training``, ``evaluation``), but their ``problem`` section has a
``kind`` key and describes an instance distribution instead of a control horizon::

    problem:
      kind: maze
      name: maze5
      height: 5
      width: 5
      layout: backtracker      # or random
      loop_probability: 0.0
      max_steps: 100           # episode limit (truncation); default 4 * height * width
      rewards: {goal: 1.0, step: -0.01, invalid: -0.1}

    problem:
      kind: sudoku
      name: sudoku4
      size: 4
      givens: [5, 10]          # inclusive range (or one number)
      on_mistake: terminate    # or reject

The problem kind ``discrete`` (:mod:`trc.kinds.discrete`) takes such files to its generator,
trainer and evaluator.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

import dynamics
from dynamics.discrete_env import MazeEnv, Rewards, SudokuEnv
from dynamics.errors import ConfigError, PuzzleError
from dynamics.maze import random_instances
from dynamics.sudoku import random_puzzles

from .config import check_int, check_seed, from_dict
from .generators.config import DEFAULT_DATASET_DIR

__all__ = ["KINDS", "MazeProblem", "SudokuProblem", "DiscreteGeneratorConfig", "problem_from_dict"]

#: Values of ``problem.kind`` of discrete configurations.
KINDS = ("maze", "sudoku")


def _rewards(value, where) -> dict:
    try:
        return asdict(Rewards(**(value or {})))
    except TypeError as exc:
        raise ConfigError(f"{where}.rewards: {exc}; allowed keys: goal, step, invalid") from exc


@dataclass
class MazeProblem:
    """Distribution of grid mazes (see :mod:`dynamics.maze`) and the episode settings.

    Attributes
    ----------
    name : str
    kind : "maze"
    height, width : int
        Grid size in cells, walls included (3 to 64).
    layout : {"backtracker", "random"}
    loop_probability, wall_probability : float
        Generator options of :func:`dynamics.maze.random_layout`.
    max_steps : int, optional
        Episode limit; default ``4 * height * width``.
    rewards : dict
        ``goal``, ``step``, ``invalid`` of :class:`dynamics.discrete_env.Rewards`.
    """

    name: str
    kind: str = "maze"
    height: int = 5
    width: int = 5
    layout: str = "backtracker"
    loop_probability: float = 0.0
    wall_probability: float = 0.3
    max_steps: int | None = None
    rewards: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind != "maze":
            raise ConfigError(f"MazeProblem.kind must be 'maze', got {self.kind!r}")
        self.height = check_int(self.height, "problem.height", 3, 64)
        self.width = check_int(self.width, "problem.width", 3, 64)
        if self.max_steps is None:
            self.max_steps = 4 * self.height * self.width
        self.max_steps = check_int(self.max_steps, "problem.max_steps", 1)
        self.rewards = _rewards(self.rewards, "problem")
        try:
            self.sample(1, 0)
        except PuzzleError as exc:
            raise ConfigError(f"problem: {exc}") from exc

    @property
    def generator_options(self) -> dict:
        return dict(layout=self.layout, loop_probability=self.loop_probability, wall_probability=self.wall_probability)

    def make_plant(self) -> dynamics.Plant:
        """The :class:`dynamics.maze.Maze` plant of this size."""
        return dynamics.make("maze", height=self.height, width=self.width)

    def make_env(self, **kwargs):
        """A ``trc/Maze-v0`` environment drawing mazes from this distribution."""
        return MazeEnv(self.height, self.width, max_steps=self.max_steps, rewards=self.rewards,
                       **self.generator_options, **kwargs)

    def sample(self, num: int, seed):
        """``num`` mazes: walls ``(num, H, W)`` bool, starts and goals ``(num, 2)`` int64."""
        return random_instances(num, self.height, self.width, seed, **self.generator_options)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SudokuProblem:
    """Distribution of sudoku puzzles (see :mod:`dynamics.sudoku`) and the episode settings.

    Attributes
    ----------
    name : str
    kind : "sudoku"
    size : {4, 9}
    givens : int or [int, int]
        Number of givens, or an inclusive range drawn uniformly per puzzle.
    on_mistake : {"terminate", "reject"}
        See :func:`dynamics.discrete_env.sudoku_transition`.
    max_steps : int, optional
        Episode limit; default ``2 * size**2``.
    rewards : dict
    """

    name: str
    kind: str = "sudoku"
    size: int = 4
    givens: object = field(default_factory=lambda: [6, 10])
    on_mistake: str = "terminate"
    max_steps: int | None = None
    rewards: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind != "sudoku":
            raise ConfigError(f"SudokuProblem.kind must be 'sudoku', got {self.kind!r}")
        if self.size not in (4, 9):
            raise ConfigError(f"problem.size must be 4 or 9, got {self.size!r}")
        g = [self.givens, self.givens] if isinstance(self.givens, numbers.Integral) else self.givens
        if not isinstance(g, (list, tuple)) or len(g) != 2:
            raise ConfigError(f"problem.givens must be an integer or [low, high], got {self.givens!r}")
        low = check_int(g[0], "problem.givens", 1, self.size ** 2)
        high = check_int(g[1], "problem.givens", low, self.size ** 2)
        self.givens = [low, high]
        if self.on_mistake not in ("terminate", "reject"):
            raise ConfigError(f"problem.on_mistake must be 'terminate' or 'reject', got {self.on_mistake!r}")
        if self.max_steps is None:
            self.max_steps = 2 * self.size ** 2
        self.max_steps = check_int(self.max_steps, "problem.max_steps", 1)
        self.rewards = _rewards(self.rewards, "problem")

    def make_plant(self) -> dynamics.Plant:
        """The :class:`dynamics.sudoku.Sudoku` plant of this size."""
        return dynamics.make("sudoku", size=self.size)

    def make_env(self, **kwargs):
        """A ``trc/Sudoku-v0`` environment drawing puzzles from this distribution."""
        return SudokuEnv(self.size, givens=tuple(self.givens), max_steps=self.max_steps, on_mistake=self.on_mistake,
                         rewards=self.rewards, **kwargs)

    def sample(self, num: int, seed):
        """``num`` puzzles and their solutions, each ``(num, n, n)`` int64."""
        return random_puzzles(num, self.size, tuple(self.givens), seed)

    def to_dict(self) -> dict:
        return asdict(self)


_PROBLEMS = {"maze": MazeProblem, "sudoku": SudokuProblem}


def problem_from_dict(data: Mapping, where: str = "problem"):
    """A :class:`MazeProblem` or :class:`SudokuProblem` from a ``problem:`` mapping with ``kind``.

    Raises
    ------
    ConfigError
        On a missing or unknown ``kind``, unknown keys or invalid values.
    """
    if isinstance(data, (MazeProblem, SudokuProblem)):
        return data
    if not isinstance(data, Mapping) or data.get("kind") not in KINDS:
        got = data.get("kind") if isinstance(data, Mapping) else data
        raise ConfigError(f"{where}.kind must be one of {KINDS} for a discrete problem, got {got!r}")
    return from_dict(_PROBLEMS[data["kind"]], data, where)


@dataclass
class DiscreteGeneratorConfig:
    """The ``generator:`` section of a discrete configuration.

    Attributes
    ----------
    solver : str
        ``"bfs"`` for mazes (breadth-first search), ``"sudoku"`` for sudoku (exact search
        for the unique solution, then the order of placements); default: the one of the kind.
    num_samples : int
        Instances in the data set.
    splits : list of 3 float
        ``train``, ``val``, ``test`` fractions.
    seed : int
        Seed of the instances and of the splits.
    out : str, optional
        Output file; default ``datasets/<problem name>.h5``.
    """

    solver: str | None = None
    num_samples: int = 1000
    splits: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0
    out: str | None = None

    def __post_init__(self):
        if self.solver not in (None, "bfs", "sudoku"):
            raise ConfigError(
                f"generator.solver of a discrete problem must be 'bfs' (maze) or 'sudoku', got {self.solver!r}"
            )
        self.num_samples = check_int(self.num_samples, "generator.num_samples", 1)
        self.seed = check_seed(self.seed, "generator.seed")
        s = self.splits
        if not isinstance(s, (list, tuple)) or len(s) != 3 or any(
            not isinstance(v, numbers.Real) or v < 0 for v in s
        ) or not np.isclose(sum(s), 1.0):
            raise ConfigError(f"generator.splits must be 3 non-negative fractions summing to 1, got {s!r}")
        self.splits = [float(v) for v in s]

    def output_path(self, problem) -> Path:
        """``out``, or ``datasets/<problem name>.h5``."""
        return Path(self.out) if self.out is not None else Path(DEFAULT_DATASET_DIR) / f"{problem.name}.h5"
