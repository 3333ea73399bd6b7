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

``python -m trc.generate`` and ``python -m trc.train`` hand such files to :func:`generate_main`
and :func:`train_main` (see :func:`wants_discrete`), which use :mod:`trc.generators.discrete`
and :mod:`trc.training.discrete`.
"""

from __future__ import annotations

import copy
import numbers
import os
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

import dynamics
from dynamics.discrete import PuzzleError
from dynamics.discrete_env import Rewards
from dynamics.errors import ConfigError

from .config import from_dict, load_yaml

__all__ = [
    "KINDS", "MazeProblem", "SudokuProblem", "DiscreteGeneratorConfig", "DiscreteExperiment",
    "is_discrete_config", "load_discrete_experiment", "discrete_experiment_from_dict", "problem_from_dict",
    "wants_discrete", "generate_main", "train_main",
]

KINDS = ("maze", "sudoku")
SECTIONS = ("problem", "generator", "model", "training", "evaluation")


def _int(value, what, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low) or (
        high is not None and value > high
    ):
        rng = f" in [{low}, {high}]" if high is not None else (f" >= {low}" if low is not None else "")
        raise ConfigError(f"{what} must be an integer{rng}, got {value!r}")
    return int(value)


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
        self.height = _int(self.height, "problem.height", 3, 64)
        self.width = _int(self.width, "problem.width", 3, 64)
        if self.max_steps is None:
            self.max_steps = 4 * self.height * self.width
        self.max_steps = _int(self.max_steps, "problem.max_steps", 1)
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
        from dynamics.discrete_env import MazeEnv

        return MazeEnv(self.height, self.width, max_steps=self.max_steps, rewards=self.rewards,
                       **self.generator_options, **kwargs)

    def sample(self, num: int, seed):
        """``num`` mazes: walls ``(num, H, W)`` bool, starts and goals ``(num, 2)`` int64."""
        from dynamics.maze import random_instances

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
        low = _int(g[0], "problem.givens", 1, self.size ** 2)
        high = _int(g[1], "problem.givens", low, self.size ** 2)
        self.givens = [low, high]
        if self.on_mistake not in ("terminate", "reject"):
            raise ConfigError(f"problem.on_mistake must be 'terminate' or 'reject', got {self.on_mistake!r}")
        if self.max_steps is None:
            self.max_steps = 2 * self.size ** 2
        self.max_steps = _int(self.max_steps, "problem.max_steps", 1)
        self.rewards = _rewards(self.rewards, "problem")

    def make_plant(self) -> dynamics.Plant:
        """The :class:`dynamics.sudoku.Sudoku` plant of this size."""
        return dynamics.make("sudoku", size=self.size)

    def make_env(self, **kwargs):
        """A ``trc/Sudoku-v0`` environment drawing puzzles from this distribution."""
        from dynamics.discrete_env import SudokuEnv

        return SudokuEnv(self.size, givens=tuple(self.givens), max_steps=self.max_steps, on_mistake=self.on_mistake,
                         rewards=self.rewards, **kwargs)

    def sample(self, num: int, seed):
        """``num`` puzzles and their solutions, each ``(num, n, n)`` int64."""
        from dynamics.sudoku import random_puzzles

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
            raise ConfigError(f"generator.solver of a discrete problem must be 'bfs' (maze) or 'sudoku', got {self.solver!r}")
        self.num_samples = _int(self.num_samples, "generator.num_samples", 1)
        self.seed = _int(self.seed, "generator.seed", 0)
        s = self.splits
        if not isinstance(s, (list, tuple)) or len(s) != 3 or any(
            not isinstance(v, numbers.Real) or v < 0 for v in s
        ) or not np.isclose(sum(s), 1.0):
            raise ConfigError(f"generator.splits must be 3 non-negative fractions summing to 1, got {s!r}")
        self.splits = [float(v) for v in s]

    def output_path(self, problem):
        from pathlib import Path

        from .generators.config import DEFAULT_DATASET_DIR

        return Path(self.out) if self.out is not None else Path(DEFAULT_DATASET_DIR) / f"{problem.name}.h5"


@dataclass
class DiscreteExperiment:
    """A parsed discrete configuration file (see the module notes)."""

    problem: object
    generator: DiscreteGeneratorConfig
    sections: dict
    source: str = "<dict>"

    def section(self, name: str) -> dict:
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}; a configuration has the sections {list(SECTIONS)}")
        return copy.deepcopy(self.sections.get(name) or {})

    def parse(self, name: str, cls):
        return from_dict(cls, self.section(name), name)

    def dataset_path(self):
        return self.generator.output_path(self.problem)


def is_discrete_config(data) -> bool:
    """Whether a configuration (a mapping, or a YAML file path) describes a discrete problem.

    True when its ``problem`` section has ``kind: maze`` or ``kind: sudoku``; the CLIs use it
    to dispatch to the discrete pipeline.
    """
    if isinstance(data, (str, os.PathLike)):
        try:
            data = load_yaml(data)
        except ConfigError:
            return False
    problem = data.get("problem") if isinstance(data, Mapping) else None
    return isinstance(problem, Mapping) and problem.get("kind") in KINDS


def discrete_experiment_from_dict(data: Mapping, source: str = "<dict>") -> DiscreteExperiment:
    """Parse a discrete configuration mapping.

    Raises
    ------
    ConfigError
        On unknown sections, a missing or invalid ``problem``, or an invalid ``generator``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a configuration is a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; allowed sections: {list(SECTIONS)}")
    sections = {k: copy.deepcopy(dict(v)) for k, v in data.items() if v is not None}
    try:
        problem = problem_from_dict(sections.get("problem"), "problem")
        generator = from_dict(DiscreteGeneratorConfig, sections.get("generator", {}), "generator")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return DiscreteExperiment(problem=problem, generator=generator, sections=sections, source=source)


def load_discrete_experiment(path) -> DiscreteExperiment:
    """Read and validate a discrete configuration file (see :func:`discrete_experiment_from_dict`)."""
    return discrete_experiment_from_dict(load_yaml(path), source=str(path))


# ---------------------------------------------------------------------------- command lines
def wants_discrete(argv=None) -> bool:
    """Whether a ``trc.generate`` / ``trc.train`` command line names a discrete configuration.

    The CLIs call this first and hand the whole command line to :func:`generate_main` /
    :func:`train_main` when it is true.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.config is not None and is_discrete_config(known.config)


def generate_main(argv=None) -> int:
    """``python -m trc.generate --config <discrete.yaml>``: instances and optimal solutions to HDF5.

    Options: ``--num-samples``, ``--seed``, ``--out``, ``--force``, ``--quiet``. Exit status 0
    on success, 1 on a run-time failure, 2 on a bad configuration.
    """
    import argparse
    import sys

    from dynamics.errors import TRCError

    from .generators.discrete import generate_discrete, read_discrete_dataset, write_discrete_dataset

    p = argparse.ArgumentParser(prog="python -m trc.generate", description="Generate optimal maze / sudoku solutions.")
    p.add_argument("--config", required=True, metavar="YAML")
    p.add_argument("--num-samples", type=int, metavar="N")
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--out", metavar="PATH")
    p.add_argument("--force", action="store_true", help="regenerate even if the output exists")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--workers", type=int, help="accepted for compatibility; discrete generation runs in this process")
    p.add_argument("--chunk-size", type=int, help="accepted for compatibility; ignored")
    args = p.parse_args(argv)
    try:
        exp = load_discrete_experiment(args.config)
        gen = exp.generator
        num = args.num_samples if args.num_samples is not None else gen.num_samples
        seed = args.seed if args.seed is not None else gen.seed
        if num < 1 or seed < 0:
            raise ConfigError(f"--num-samples must be positive and --seed non-negative, got {num}, {seed}")
        out = args.out or gen.output_path(exp.problem)
        from pathlib import Path

        out = Path(out)
        if out.is_file() and not args.force:
            try:
                old = read_discrete_dataset(out)
                same = (old.problem.to_dict() == exp.problem.to_dict() and old.seed == seed and old.num_samples == num)
            except TRCError:
                same = False
            if same:
                print(f"{out}: already holds this data set ({num} {exp.problem.kind} instances, seed {seed}); use --force")
                return 0
        data = generate_discrete(exp.problem, num, seed, gen.splits, progress=not args.quiet)
        write_discrete_dataset(out, data)
    except ConfigError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TRCError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 1
    sizes = {k: len(v) for k, v in data.splits.items()}
    print(f"wrote {out}: {data.num_samples} {exp.problem.kind} instances ({exp.problem.name}), solver {data.solver}, "
          f"optimal steps mean {data.lengths.mean():.2f} max {data.lengths.max()}, splits {sizes}")
    return 0


def train_main(argv=None) -> int:
    """``python -m trc.train --config <discrete.yaml> [--stage all|supervised|rl]``.

    Supervised pre-training on the optimal solutions, REINFORCE fine-tuning, evaluation on the
    test split; writes ``model.pt``, ``metrics.json`` and ``history.json`` to the run folder.
    """
    import argparse
    import json
    import logging
    import sys

    from dynamics.errors import TRCError

    from .training.discrete import run_discrete_training

    p = argparse.ArgumentParser(prog="python -m trc.train", description="Train a discrete (maze / sudoku) policy.")
    p.add_argument("--config", required=True, metavar="YAML")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--stage", choices=("all", "supervised", "rl"), default="all",
                   help="all: supervised then RL; rl: REINFORCE fine-tuning of --init (or <out>/model.pt)")
    p.add_argument("--init", metavar="MODEL", help="policy file to start from")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    try:
        exp = load_discrete_experiment(args.config)
        metrics = run_discrete_training(exp, stage=args.stage, seed=args.seed, out=args.out, init=args.init,
                                        progress=not args.quiet)
    except ConfigError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TRCError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in metrics.items() if k != "after_supervised"}, indent=2))
    return 0
