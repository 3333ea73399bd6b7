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

``python -m trc.generate`` hands such files to :func:`trc.generators.discrete.generate_discrete`
and ``python -m trc.train`` to :func:`train_main` (:mod:`trc.training.discrete`).
"""

from __future__ import annotations

import copy
import numbers
import os
from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

import dynamics
from dynamics.errors import PuzzleError
from dynamics.discrete_env import Rewards
from dynamics.errors import ConfigError

from .config import from_dict, load_yaml

__all__ = [
    "KINDS", "MazeProblem", "SudokuProblem", "DiscreteGeneratorConfig", "DiscreteExperiment",
    "is_discrete_config", "load_discrete_experiment", "discrete_experiment_from_dict", "problem_from_dict",
    "wants_discrete", "train_main", "dispatch_train",
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
            raise ConfigError(
                f"generator.solver of a discrete problem must be 'bfs' (maze) or 'sudoku', got {self.solver!r}"
            )
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

    :func:`dispatch_train` uses it to hand the whole command line to :func:`train_main`.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.config is not None and is_discrete_config(known.config)


def dispatch_train(argv=None):
    """Run ``python -m trc.train`` here when it concerns this module, else return None.

    Handles discrete configurations (:func:`wants_discrete`) and the REINFORCE fine-tuning
    stage ``--stage rl`` of continuous ones; ``trc.train.main`` calls it first.

    Returns
    -------
    int or None
        The exit status, or None when the command line is for the continuous trainer.
    """
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    if wants_discrete(args) or any(a == "--stage" or a.startswith("--stage=") for a in args):
        return train_main(args)
    return None


def train_main(argv=None) -> int:
    """``python -m trc.train --config <yaml> [--stage all|supervised|rl]``.

    Discrete configurations: supervised pre-training on the optimal solutions, REINFORCE
    fine-tuning, evaluation on the test split; writes ``model.pt``, ``metrics.json`` and
    ``history.json`` to the run folder. Continuous configurations with ``--stage rl``:
    REINFORCE fine-tuning (:func:`trc.training.rl.reinforce_continuous`) of the trained model
    ``--init`` (default ``<out>/model.pt``), written to ``<out>/model_rl.pt`` with
    ``rl_metrics.json`` (greedy cost on fresh instances before and after).
    """
    import argparse
    import json
    import logging
    import sys

    from dynamics.errors import TRCError

    p = argparse.ArgumentParser(prog="python -m trc.train",
                                description="Train a discrete policy, or RL-fine-tune a model.")
    p.add_argument("--config", required=True, metavar="YAML")
    p.add_argument("--out", metavar="DIR")
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--stage", choices=("all", "supervised", "rl"), default="all",
                   help="all: supervised then RL (discrete); rl: REINFORCE fine-tuning of --init (or <out>/model.pt)")
    p.add_argument("--init", metavar="MODEL", help="model file to start from")
    p.add_argument("--rl-iterations", type=int, default=100, help="continuous --stage rl: policy-gradient steps")
    p.add_argument("--rl-lr", type=float, default=1e-4, help="continuous --stage rl: learning rate")
    p.add_argument("--rl-sigma", type=float, default=0.05,
                   help="continuous --stage rl: exploration std (fraction of the control range)")
    p.add_argument("--rl-batch", type=int, default=64, help="continuous --stage rl: episodes per step")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(name)s: %(message)s")
    try:
        if is_discrete_config(args.config):
            from .training.discrete import run_discrete_training

            exp = load_discrete_experiment(args.config)
            metrics = run_discrete_training(exp, stage=args.stage, seed=args.seed, out=args.out, init=args.init,
                                            progress=not args.quiet)
            print(json.dumps({k: v for k, v in metrics.items() if k != "after_supervised"}, indent=2))
            return 0
        if args.stage != "rl":
            raise ConfigError(f"--stage {args.stage} applies to discrete configurations; continuous models are trained "
                              f"by `python -m trc.train --config {args.config}` and fine-tuned with --stage rl")
        metrics = _continuous_rl(args)
    except ConfigError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    except TRCError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=2))
    return 0


def _continuous_rl(args) -> dict:
    """The continuous ``--stage rl``: fine-tune, compare greedy costs, save ``model_rl.pt``."""
    import dataclasses
    import json
    from pathlib import Path

    import torch

    from .experiment import load_experiment
    from .io import atomic_write_text
    from .loading import load
    from .training.checkpoint import save_model_file
    from .training.rl import ContinuousRLConfig, reinforce_continuous, stage_rewards

    exp = load_experiment(args.config)
    problem = exp.problem
    run = Path(args.out or f"runs/{problem.name}")
    model = load(args.init or run / "model.pt")
    seed = 0 if args.seed is None else args.seed
    x0, target = (torch.as_tensor(a, dtype=torch.float32) for a in problem.sample(256, [seed, 99]))
    plant = problem.make_plant()

    def greedy_cost() -> float:
        with torch.no_grad():
            u = model(x0, target)
            return float(-stage_rewards(problem, plant.rollout(x0, u), u, target).sum(1).mean())

    before = greedy_cost()
    cfg = ContinuousRLConfig(iterations=args.rl_iterations, lr=args.rl_lr, sigma=args.rl_sigma,
                             batch_size=args.rl_batch, seed=seed)
    history = reinforce_continuous(model, problem, cfg)
    after = greedy_cost()
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dataclasses.asdict(model.config)
    metrics = {"problem": problem.name, "stage": "rl", "greedy_cost_before": before, "greedy_cost_after": after,
               "iterations": len(history), "eval_instances": 256}
    save_model_file(run / "model_rl.pt", state_dict=model.state_dict(), model_config=config, problem=problem.to_dict(),
                    metadata={**getattr(model, "metadata", {}), "rl": metrics})
    atomic_write_text(run / "rl_metrics.json", json.dumps({**metrics, "history": history}, indent=2))
    return metrics
