"""Data sets of optimal maze and sudoku solutions: generation and the discrete HDF5 schema.

The discrete schema extends the continuous one of :mod:`trc.generators.storage` (same root
arrays where they make sense, same ``splits``/``failures`` groups, same checksums and atomic
writes); ``datasets/README.md`` documents it. For ``M`` instances whose optimal solutions take
at most ``L`` steps, with plant state dimension ``n``::

    /initial_states  (M, n)        float64  plant state at the start (maze: walls, goal, start; sudoku: the puzzle)
    /target_states   (M, n)        float64  plant state after the optimal actions (agent on the goal; the solution)
    /controls        (M, L, 1)     float64  optimal action indices, padded with -1 after lengths[i]
    /lengths         (M,)          int64    optimal number of steps (shortest path / empty cells)
    /costs           (M,)          float64  = lengths (an episode costs one per step)
    /status          (M,)          str      "optimal"
    /iterations      (M,)          int64    maze: BFS levels expanded; sudoku: placements beyond singles
    /solve_time      (M,)          float64  seconds
    /instance_index  (M,)          int64    position in the seeded instance stream
    /distances       (M, H, W)     int64    maze only: BFS distance of every cell to the goal (-1: wall)
    /splits/{train,val,test}       int64
    /failures/{instance_index,status}       empty (every generated instance is solvable)
    attributes: schema_version, kind ("maze" | "sudoku"), problem (JSON), problem_name, plant,
                plant_config, dt (1), N (= L), state_dim, control_dim (1), num_actions, cost
                ("steps"), solver ("bfs" | "sudoku"), solver_options, seed, num_samples,
                trc_version, created

Trajectories are not stored: ``plant.rollout(initial_states, controls[:, :lengths])`` rebuilds
them exactly (:meth:`DiscreteDataset.trajectory`).

:func:`write_discrete_dataset` replaces an existing file only if it holds the same data set
(same problem, seed, sample count and splits) or with ``force``, and holds the writer lock of
the file (:func:`trc.io.output_lock`) while it writes; :func:`check_discrete_output` makes the
same checks before generating, so that a bad output path fails before any work.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from dynamics.errors import DatasetError, TRCError
from dynamics.sudoku import random_puzzle
from trc.discrete import problem_from_dict

from ..io import atomic_path, check_output_file, check_output_path, output_lock
from ..version import __version__
from .config import SPLIT_NAMES, check_seed
from .maze import solve_mazes
from .pipeline import split_indices
from .storage import (
    SCHEMA_VERSION,
    JSONText,
    create_dataset,
    decode_attrs,
    encode_attr,
    open_h5,
)
from .sudoku import solve_sudokus

__all__ = [
    "DiscreteDataset",
    "generate_discrete",
    "check_discrete_output",
    "write_discrete_dataset",
    "read_discrete_dataset",
    "DISCRETE_ARRAYS",
]

#: Root arrays of a discrete data set and their number of dimensions (``distances``: maze only).
DISCRETE_ARRAYS = {
    "initial_states": 2,
    "target_states": 2,
    "controls": 3,
    "lengths": 1,
    "costs": 1,
    "status": 1,
    "iterations": 1,
    "solve_time": 1,
    "instance_index": 1,
}
_FLOATS = {"initial_states", "target_states", "controls", "costs", "solve_time"}
REQUIRED = ("schema_version", "kind", "problem", "problem_name", "plant", "plant_config", "N", "state_dim",
            "control_dim", "num_actions", "solver", "seed", "num_samples")


@dataclass
class DiscreteDataset:
    """Optimal solutions of ``M`` maze or sudoku instances (see the module notes for shapes)."""

    problem: object
    solver: str
    seed: int
    initial_states: np.ndarray
    target_states: np.ndarray
    controls: np.ndarray
    lengths: np.ndarray
    costs: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    solve_time: np.ndarray
    instance_index: np.ndarray
    splits: dict
    distances: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.problem.kind

    @property
    def num_samples(self) -> int:
        return int(self.initial_states.shape[0])

    def arrays(self) -> dict:
        out = {name: getattr(self, name) for name in DISCRETE_ARRAYS}
        if self.distances is not None:
            out["distances"] = self.distances
        return out

    def split(self, name: str) -> dict:
        """The arrays of split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; the data set has {sorted(self.splits)}")
        idx = self.splits[name]
        return {key: value[idx] for key, value in self.arrays().items()}

    def trajectory(self, i: int) -> torch.Tensor:
        """States of instance ``i`` along its optimal actions, ``(lengths[i] + 1, n)`` (plant rollout)."""
        plant = self.problem.make_plant()
        L = int(self.lengths[i])
        x0 = torch.as_tensor(self.initial_states[i:i + 1], dtype=torch.float32)
        u = torch.as_tensor(self.controls[i:i + 1, :L], dtype=torch.float32)
        return plant.rollout(x0, u)[0]


# ---------------------------------------------------------------------------- generation
def generate_discrete(
    problem, num_samples: int, seed: int, splits=(0.8, 0.1, 0.1), progress: bool = False
) -> DiscreteDataset:
    """Draw ``num_samples`` instances of a discrete problem and solve them optimally.

    Parameters
    ----------
    problem : trc.discrete.MazeProblem or trc.discrete.SudokuProblem
    num_samples : int
    seed : int
        The same seed gives the same instances, solutions and splits.
    splits : 3 floats
        ``train``, ``val``, ``test`` fractions.
    progress : bool
        Show a progress bar (sudoku generation takes ~0.1 s per 9 x 9 puzzle).

    Returns
    -------
    DiscreteDataset
    """
    rng = np.random.default_rng(seed)
    plant = problem.make_plant()
    M = int(num_samples)
    if problem.kind == "maze":
        walls, starts, goals = problem.sample(M, rng)
        t0 = time.perf_counter()
        sol = solve_mazes(walls, starts, goals)
        seconds = (time.perf_counter() - t0) / max(M, 1)
        x0 = plant.pack(walls, goals, starts).double().numpy()
        xT = plant.pack(walls, goals, goals).double().numpy()
        actions, lengths, distances = sol.actions, sol.lengths, sol.distances
        iterations = distances.max(axis=(1, 2)) + 1
        solve_time = np.full(M, seconds)
        solver = "bfs"
    else:
        n = problem.size
        puzzles = np.zeros((M, n, n), dtype=np.int64)
        bar = _progress(M, progress, f"sudoku {n}x{n}")
        for i in range(M):
            puzzles[i], _ = random_puzzle(n, int(rng.integers(problem.givens[0], problem.givens[1] + 1)), rng)
            bar.update(1)
        bar.close()
        solve_time = np.zeros(M)
        parts = []
        for i in range(M):
            t0 = time.perf_counter()
            parts.append(solve_sudokus(puzzles[i:i + 1]))
            solve_time[i] = time.perf_counter() - t0
        L = max(int(p.lengths[0]) for p in parts) if parts else 0
        actions = np.full((M, L), -1, dtype=np.int64)
        for i, p in enumerate(parts):
            actions[i, :p.lengths[0]] = p.actions[0, :p.lengths[0]]
        lengths = np.array([p.lengths[0] for p in parts], dtype=np.int64)
        iterations = np.array([p.guesses[0] for p in parts], dtype=np.int64)
        x0 = puzzles.reshape(M, -1).astype(np.float64)
        xT = np.stack([p.solutions[0] for p in parts]).reshape(M, -1).astype(np.float64) if parts else x0
        distances = None
        solver = "sudoku"
    return DiscreteDataset(
        problem=problem, solver=solver, seed=int(seed),
        initial_states=x0, target_states=xT, controls=actions[..., None].astype(np.float64),
        lengths=lengths, costs=lengths.astype(np.float64), status=np.full(M, "optimal"),
        iterations=iterations.astype(np.int64), solve_time=solve_time, instance_index=np.arange(M, dtype=np.int64),
        splits=split_indices(M, list(splits), seed), distances=distances,
        attrs={"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    )


def _progress(total, enabled, desc):
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# ---------------------------------------------------------------------------- storage
def _check(data: DiscreteDataset, where) -> None:
    M = data.num_samples
    n = data.problem.make_plant().state_dim
    L = data.controls.shape[1] if data.controls.ndim == 3 else -1
    expected = {
        "initial_states": (M, n), "target_states": (M, n), "controls": (M, L, 1), "lengths": (M,), "costs": (M,),
        "status": (M,), "iterations": (M,), "solve_time": (M,), "instance_index": (M,),
    }
    if data.problem.kind == "maze":
        expected["distances"] = (M, data.problem.height, data.problem.width)
        if data.distances is None:
            raise DatasetError(f"{where}: a maze data set needs 'distances'")
    for name, shape in expected.items():
        got = np.shape(getattr(data, name))
        if got != shape:
            raise DatasetError(f"{where}: array {name!r} has shape {got}; expected {shape} (M={M}, L={L}, n={n})")
    if M and (data.lengths.min() < 1 or data.lengths.max() > L):
        raise DatasetError(f"{where}: lengths must lie in [1, {L}]")
    steps = np.arange(L)[None, :]
    a = data.controls[..., 0]
    valid = steps < data.lengths[:, None]
    if ((a < 0) & valid).any() or ((a != -1) & ~valid).any():
        raise DatasetError(f"{where}: controls must hold actions for the first lengths[i] steps and -1 after")
    if ((a >= data.problem.make_plant().num_actions) | (a != np.round(a))).any():
        raise DatasetError(f"{where}: controls hold non-integer or out-of-range actions")
    all_idx = np.concatenate([np.asarray(data.splits[k]).ravel() for k in SPLIT_NAMES])
    if set(data.splits) != set(SPLIT_NAMES) or np.unique(all_idx).size != all_idx.size or (
        all_idx.size and (all_idx.min() < 0 or all_idx.max() >= M)
    ):
        raise DatasetError(f"{where}: splits must be disjoint index sets {list(SPLIT_NAMES)} within [0, {M})")


def _same_discrete(path: Path, problem, num_samples: int, seed: int, splits: dict) -> bool | str:
    """True if ``path`` holds the discrete data set of these settings; otherwise what it holds."""
    try:
        if not h5py.is_hdf5(path):
            return "it is not an HDF5 file"
        with open_h5(path) as f:
            attrs = decode_attrs(f.attrs, path)
            stored = {k: np.asarray(f["splits"][k][()]) for k in SPLIT_NAMES} if "splits" in f else None
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:  # DatasetError is an OSError
        return f"it cannot be read as a data set: {exc}"
    if attrs.get("kind") not in ("maze", "sudoku"):
        return f"it is not a discrete data set (kind {attrs.get('kind')!r}, problem {attrs.get('problem_name')!r})"
    if attrs.get("problem") != json.loads(json.dumps(problem.to_dict())):
        return f"it holds a data set of problem {attrs.get('problem_name')!r}; this run writes problem {problem.name!r}"
    same = (
        attrs.get("seed") == seed and attrs.get("num_samples") == num_samples and stored is not None
        and all(np.array_equal(np.sort(stored[k]), np.sort(np.asarray(splits[k]))) for k in SPLIT_NAMES)
    )
    if same:
        return True
    sizes = [len(stored[k]) for k in SPLIT_NAMES] if stored is not None else None
    return (
        f"it holds a data set of problem {problem.name!r} with other settings: {attrs.get('num_samples')} samples, "
        f"seed {attrs.get('seed')}, split sizes {sizes}; this run: {num_samples} samples, seed {seed}, "
        f"split sizes {[len(splits[k]) for k in SPLIT_NAMES]}"
    )


def check_discrete_output(path, problem, num_samples: int, seed: int, splits=(0.8, 0.1, 0.1), *,
                          force: bool = False) -> Path:
    """Check, before :func:`generate_discrete`, that its data set may be written to ``path``.

    The same checks as :func:`write_discrete_dataset` makes before writing, so a bad output
    fails before the instances are generated. Callers that generate and then write should
    hold :func:`trc.io.output_lock` of ``path`` around both.

    Parameters
    ----------
    path : str or PathLike
        The output file.
    problem, num_samples, seed, splits
        As for :func:`generate_discrete`.
    force : bool
        Allow replacing an existing file that holds something else.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ConfigError
        If ``seed`` is outside ``[0, 2**63 - 1]``, ``path`` cannot be written
        (:func:`trc.io.check_output_path`), or it exists and holds something else than this
        data set (another file, a data set of another problem or other settings) and
        ``force`` is False.
    """
    seed = check_seed(seed, "seed")
    expected = split_indices(int(num_samples), list(splits), seed)
    check_output_file(path, force=force, is_own=functools.partial(
        _same_discrete, problem=problem, num_samples=int(num_samples), seed=seed, splits=expected))
    return Path(path)


def write_discrete_dataset(path, data: DiscreteDataset, *, force: bool = False) -> Path:
    """Write a discrete data set atomically (see the module notes for the schema).

    Parameters
    ----------
    path : str or PathLike
        Output file; its folder is created if needed. An existing file is replaced only if it
        holds the same data set (same problem, seed, sample count and splits), or with
        ``force``.
    data : DiscreteDataset
    force : bool
        Replace an existing file whatever it holds.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    DatasetError
        If the arrays disagree with each other or with the problem.
    ConfigError
        Before writing: if the seed is outside ``[0, 2**63 - 1]``; ``path`` is empty, a
        folder, under a file or in a folder that cannot be written; ``path`` exists and holds
        something else and ``force`` is False (:func:`trc.io.check_output_file`); or another
        process is writing ``path`` (:func:`trc.io.output_lock`).
    """
    _check(data, "in memory")
    plant = data.problem.make_plant()
    attrs = {
        **data.attrs,
        "schema_version": SCHEMA_VERSION, "kind": data.problem.kind, "problem": data.problem.to_dict(),
        "problem_name": data.problem.name, "plant": plant.name, "plant_config": plant.config(), "dt": 1.0,
        "N": int(data.controls.shape[1]), "state_dim": int(plant.state_dim), "control_dim": 1,
        "num_actions": int(plant.num_actions), "cost": "steps", "solver": data.solver, "solver_options": {},
        "seed": check_seed(data.seed, "seed"), "num_samples": data.num_samples, "num_failures": 0,
        "trc_version": __version__,
    }
    attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    encoded = {key: encode_attr(value) for key, value in attrs.items() if key != "json_attrs"}
    encoded["json_attrs"] = json.dumps(sorted(k for k, v in encoded.items() if isinstance(v, JSONText)))
    path = check_output_path(path)
    with output_lock(path):
        own = functools.partial(_same_discrete, problem=data.problem, num_samples=data.num_samples,
                                seed=int(data.seed), splits=data.splits)
        check_output_file(path, force=force, is_own=own)
        _write(path, data, encoded)
    return path


def _write(path: Path, data: DiscreteDataset, encoded: dict) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, array in data.arrays().items():
                if name in _FLOATS or name == "status":
                    create_dataset(f, name, array)
                else:
                    create_dataset(f, name, np.asarray(array, dtype=np.int64))
            splits = f.create_group("splits")
            for name in SPLIT_NAMES:
                create_dataset(splits, name, np.sort(np.asarray(data.splits[name], dtype=np.int64)))
            failures = f.create_group("failures")
            create_dataset(failures, "instance_index", np.zeros((0,), dtype=np.int64))
            create_dataset(failures, "status", np.zeros((0,), dtype=object))
            for key, value in encoded.items():
                f.attrs[key] = str(value) if isinstance(value, JSONText) else value


def read_discrete_dataset(path) -> DiscreteDataset:
    """Read and validate a discrete data set.

    Raises
    ------
    DatasetError
        If the file is missing, corrupt, not a discrete TRC data set, or inconsistent.
    """
    with open_h5(path) as f:
        try:
            attrs = decode_attrs(f.attrs, path)
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"data set {str(path)!r}: cannot read its attributes (corrupt file?): {exc}") from exc
        missing = [k for k in REQUIRED if k not in attrs]
        if missing:
            hint = ""
            if "kind" in missing:
                hint = " (a continuous data set? read it with trc.generators.storage.read_dataset)"
            raise DatasetError(f"data set {str(path)!r} lacks the attribute(s) {missing}{hint}")
        if not isinstance(attrs["schema_version"], int) or attrs["schema_version"] > SCHEMA_VERSION:
            raise DatasetError(f"data set {str(path)!r} has schema_version {attrs['schema_version']!r}; "
                               f"this version of TRC reads up to {SCHEMA_VERSION}")
        names = dict(DISCRETE_ARRAYS, **({"distances": 3} if attrs["kind"] == "maze" else {}))
        arrays = {}
        for name, ndim in names.items():
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise DatasetError(f"data set {str(path)!r} lacks the array {name!r}; expected {sorted(names)}")
            try:
                value = f[name].asstr()[()] if name == "status" else f[name][()]
            except Exception as exc:
                raise DatasetError(
                    f"data set {str(path)!r}: cannot read {name!r} (corrupt or truncated file): {exc}"
                ) from exc
            value = np.asarray(value)
            if value.ndim != ndim:
                raise DatasetError(f"data set {str(path)!r}: {name!r} has {value.ndim} dimensions; expected {ndim}")
            arrays[name] = value
        if "splits" not in f:
            raise DatasetError(f"data set {str(path)!r} lacks the group 'splits'")
        try:
            splits = {k: np.asarray(f["splits"][k][()]) for k in SPLIT_NAMES}
        except Exception as exc:
            raise DatasetError(f"data set {str(path)!r}: cannot read the splits: {exc}") from exc
    try:
        problem = problem_from_dict(attrs["problem"])
    except TRCError as exc:
        raise DatasetError(f"data set {str(path)!r}: its problem attribute cannot be rebuilt: {exc}") from exc
    data = DiscreteDataset(problem=problem, solver=str(attrs["solver"]), seed=int(attrs["seed"]), splits=splits,
                           attrs=attrs, **arrays)
    try:
        _check(data, f"data set {str(path)!r}")
    except DatasetError:
        raise
    if attrs["num_samples"] != data.num_samples:
        raise DatasetError(f"data set {str(path)!r}: attribute num_samples={attrs['num_samples']} "
                           f"but the arrays hold {data.num_samples}")
    return data
