"""Command line: convert TRC's HDF5 data sets to LeRobot v3 and back (``trc-convert`` or ``python -m trc.convert``).

Usage::

    python -m trc.convert --to lerobot IN OUT [--fps F] [--video] [--force] [--seed S] [--quiet]
    python -m trc.convert --to hdf5 IN OUT [--force] [--seed S] [--quiet]

``--to lerobot`` reads ``IN``, one of

* a continuous data set (:mod:`trc.generators.storage`): each trajectory is an episode of
  ``N`` frames with ``observation.state`` ``x_k``, ``action`` ``u_k``, ``observation.target``
  the target state, ``next.reward`` ``-`` the stage cost (``-dt [(x_k - x*)' Q (x_k - x*) +
  u_k' R u_k]``, the terminal cost ``(x_N - x*)' Qf (x_N - x*)`` added to the last step, so the
  rewards of an episode sum to ``-J``; fuel problems: ``-(m_k - m_{k+1})``), task the plant's
  name, ``fps = 1 / dt``;
* a maze or sudoku data set (:mod:`trc.generators.discrete`): each instance is an episode of
  its optimal actions (``action`` ``(F, 1)`` int64), ``observation.state`` the plant state
  before each action (rebuilt by stepping the plant), ``next.reward`` the environment's reward
  (:mod:`dynamics.discrete_env`), ``fps = 1``;
* LIBERO demonstrations (:mod:`trc.generators.libero_storage`): a ``*_demo.hdf5`` file or a
  folder of them, each demonstration an episode, the instruction its task; the two cameras as
  ``observation.images.agentview`` and ``observation.images.eye_in_hand`` (PNG, or MP4 with
  ``--video``; as rendered, upside down), ``observation.state`` the 8 numbers ``ee_pos``,
  ``ee_ori``, ``gripper_states`` (LeRobot's LIBERO convention), every observation key as its
  own ``observation.<key>`` column, the MuJoCo states as ``observation.environment_state``
  (zero-padded to the longest task; ``sim_state_dim`` per episode), ``fps`` the control
  frequency (20 Hz);

and writes the LeRobot v3 folder ``OUT`` (:mod:`trc.lerobot`). Per-episode columns keep what
the HDF5 file holds per trajectory (``cost``, ``status``, ``split``, ...; ``stage`` is
``"demos"``, ``success`` True for solver optima) and ``meta/trc.json`` keeps the file's
attributes, so that ``--to hdf5`` writes the same kind of file back with equal arrays
(continuous and discrete: a ``.h5`` file; LIBERO: a folder of ``*_demo.hdf5`` files).

An existing ``OUT`` is refused unless ``--force``. Conversion draws no random numbers: every
``--seed`` gives the same arrays (the option exists as in every TRC command).
Exit status (:mod:`trc.cli`): 0 success, 1 run-time failure (a bad data set), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from dynamics.discrete_env import Rewards, maze_transition, sudoku_transition
from dynamics.errors import ConfigError, DatasetError
from trc.discrete import problem_from_dict
from trc.problem import Problem

from . import lerobot
from .cli import add_quiet, add_seed, run
from .generators.config import SPLIT_NAMES
from .generators.discrete import DiscreteDataset, read_discrete_dataset, write_discrete_dataset
from .generators.libero_storage import OBS_KEYS, Episode, read_task_file, task_file_name, write_task_file
from .generators.storage import FAILURE_NAMES, GeneratedDataset, read_dataset as read_continuous
from .generators.storage import write_dataset as write_continuous
from .io import check_output_file, check_output_name, output_lock

__all__ = [
    "main",
    "build_parser",
    "source_kind",
    "to_lerobot",
    "to_hdf5",
    "continuous_frames",
    "discrete_frames",
    "libero_frames",
]

#: LeRobot column of each LIBERO camera.
LIBERO_CAMERAS = {"agentview_rgb": "observation.images.agentview", "eye_in_hand_rgb": "observation.images.eye_in_hand"}
_LIBERO_FPS = 20
_FILE_ATTRS_SET_BY_WRITER = ("num_demos", "total", "macros_image_convention")


# ---------------------------------------------------------------------------- JSON
def _jsonable(value):
    """``value`` with NumPy arrays and scalars as lists and numbers (JSON writes inf as Infinity)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _source(ds: lerobot.LeRobotDataset) -> dict:
    src = ds.metadata.get("trc_source")
    if not isinstance(src, dict) or src.get("kind") not in ("continuous", "discrete", "libero"):
        raise DatasetError(
            f"LeRobot data set {str(ds.root)!r} was not written by trc.convert ({lerobot.TRC_META_PATH} has no "
            "'trc_source' of kind continuous, discrete or libero); it cannot be converted back to a TRC HDF5 file"
        )
    return src


def _episode_column(ds: lerobot.LeRobotDataset, name: str) -> np.ndarray:
    if name not in ds.episodes:
        raise DatasetError(f"LeRobot data set {str(ds.root)!r}: meta/episodes lacks the column {name!r} that "
                           "trc.convert writes")
    return ds.episodes[name]


def _frame_column(ds: lerobot.LeRobotDataset, name: str) -> np.ndarray:
    if name not in ds.frames:
        raise DatasetError(f"LeRobot data set {str(ds.root)!r} lacks the frame column {name!r} that trc.convert "
                           "writes")
    return ds.frames[name]


def _splits_column(splits: dict, M: int) -> np.ndarray:
    out = np.full(M, "none", dtype=object)
    for name in SPLIT_NAMES:
        out[np.asarray(splits.get(name, []), dtype=np.int64)] = name
    return out.astype(str)


def _splits_of(column: np.ndarray) -> dict:
    return {name: np.flatnonzero(column == name).astype(np.int64) for name in SPLIT_NAMES}


# ---------------------------------------------------------------------------- continuous
def _stage_rewards(attrs: dict, states: np.ndarray, controls: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-step rewards ``(M, N)`` whose sum over an episode is ``-J`` (see the module notes)."""
    if attrs["cost"] == "fuel":
        mass = states[..., -1]
        return -(mass[:, :-1] - mass[:, 1:])
    Q, R, Qf = (np.atleast_2d(np.asarray(attrs[k], dtype=np.float64)) for k in ("Q", "R", "Qf"))
    err = states - target[:, None, :]
    stage = np.einsum("mki,ij,mkj->mk", err[:, :-1], Q, err[:, :-1]) + np.einsum("mki,ij,mkj->mk", controls, R,
                                                                                   controls)
    rewards = -float(attrs["dt"]) * stage
    rewards[:, -1] -= np.einsum("mi,ij,mj->m", err[:, -1], Qf, err[:, -1])
    return rewards


def continuous_frames(data: GeneratedDataset) -> dict:
    """The :func:`trc.lerobot.write_dataset` arguments of a continuous data set (see the module notes).

    Returns
    -------
    dict
        ``frames``, ``tasks``, ``fps``, ``episodes``, ``features``, ``robot_type``, ``metadata``.
    """
    attrs = data.attrs
    M, N = data.controls.shape[:2]
    n, m = data.states.shape[2], data.controls.shape[2]
    F = M * N
    rewards = _stage_rewards(attrs, data.states, data.controls, data.target_states)
    frames = {
        "episode_index": np.repeat(np.arange(M, dtype=np.int64), N),
        "frame_index": np.tile(np.arange(N, dtype=np.int64), M),
        "task_index": np.zeros(F, dtype=np.int64),
        "action": data.controls.reshape(F, m),
        "observation.state": data.states[:, :-1].reshape(F, n),
        "observation.target": np.repeat(data.target_states, N, axis=0),
        "next.reward": rewards.reshape(F).astype(np.float32),
    }
    state_names = list(attrs.get("state_names") or [f"x_{i}" for i in range(n)])
    control_names = list(attrs.get("control_names") or [f"u_{i}" for i in range(m)])
    features = {
        "action": {"dtype": "float64", "names": control_names},
        "observation.state": {"dtype": "float64", "names": state_names},
        "observation.target": {"dtype": "float64", "names": state_names},
    }
    episodes = {
        "stage": np.full(M, "demos"), "success": np.ones(M, dtype=bool),
        "initial_state": data.initial_states, "final_state": data.states[:, -1], "cost": data.costs,
        "status": np.asarray(data.status, dtype=str), "iterations": data.iterations, "solve_time": data.solve_time,
        "instance_index": data.instance_index, "split": _splits_column(data.splits, M),
    }
    failures = {k: _jsonable(np.asarray(data.failures.get(k, []))) for k in FAILURE_NAMES}
    metadata = {"trc_source": {"kind": "continuous", "attrs": _jsonable(attrs), "failures": failures,
                               "state_dim": n, "control_dim": m, "horizon": N}}
    return {"frames": frames, "tasks": [str(attrs["plant"])], "fps": 1.0 / float(attrs["dt"]), "episodes": episodes,
            "features": features, "robot_type": str(attrs["plant"]), "metadata": metadata}


def _to_continuous(ds: lerobot.LeRobotDataset, src: dict) -> GeneratedDataset:
    attrs = src["attrs"]
    n, m, N = int(src["state_dim"]), int(src["control_dim"]), int(src["horizon"])
    M = ds.num_episodes
    length = ds.episodes["length"]
    if M and not (length == N).all():
        raise DatasetError(f"LeRobot data set {str(ds.root)!r}: every episode of a continuous data set has {N} "
                           f"frames; lengths are {sorted(set(length.tolist()))}")
    states = _frame_column(ds, "observation.state").astype(np.float64).reshape(M, N, n)
    final = _episode_column(ds, "final_state").astype(np.float64).reshape(M, n)
    target = _frame_column(ds, "observation.target").astype(np.float64).reshape(M, N, n)[:, 0]
    failures = {}
    for k, ndim in FAILURE_NAMES.items():
        value = np.asarray(src["failures"].get(k, []))
        if ndim == 2:
            value = value.astype(np.float64).reshape(-1, n)
        failures[k] = value.astype(str) if k == "status" else value
    try:
        problem = Problem.from_dict(attrs["problem"])
    except Exception as exc:
        raise DatasetError(f"LeRobot data set {str(ds.root)!r}: its problem cannot be rebuilt: {exc}") from exc
    return GeneratedDataset(
        problem=problem, solver=str(attrs["solver"]), solver_options=dict(attrs.get("solver_options") or {}),
        seed=int(attrs["seed"]),
        states=np.concatenate([states, final[:, None]], axis=1),
        controls=_frame_column(ds, "action").astype(np.float64).reshape(M, N, m),
        initial_states=_episode_column(ds, "initial_state").astype(np.float64).reshape(M, n),
        target_states=target,
        costs=_episode_column(ds, "cost").astype(np.float64),
        status=_episode_column(ds, "status").astype(str),
        iterations=_episode_column(ds, "iterations").astype(np.int64),
        solve_time=_episode_column(ds, "solve_time").astype(np.float64),
        instance_index=_episode_column(ds, "instance_index").astype(np.int64),
        splits=_splits_of(_episode_column(ds, "split")),
        failures=failures,
        attrs=dict(attrs),
    )


# ---------------------------------------------------------------------------- discrete
def _rollout_discrete(data: DiscreteDataset) -> tuple[np.ndarray, np.ndarray]:
    """States before each action and the rewards, both for the valid steps only (frames of all episodes)."""
    problem = data.problem
    plant = problem.make_plant()
    rewards_cfg = Rewards(**problem.rewards)
    M, L = data.controls.shape[:2]
    x = torch.as_tensor(data.initial_states, dtype=torch.float32)
    solution = torch.as_tensor(data.target_states, dtype=torch.float32)
    lengths = torch.as_tensor(data.lengths)
    states = torch.zeros((M, L, x.shape[1]), dtype=torch.float32)
    rewards = torch.zeros((M, L), dtype=torch.float32)
    with torch.no_grad():
        for k in range(L):  # time steps; the batch moves together
            valid = lengths > k
            action = torch.as_tensor(data.controls[:, k, 0]).long().clamp(min=0)
            states[:, k] = x
            if problem.kind == "maze":
                x_next, r, *_ = maze_transition(plant, x, action, rewards_cfg)
            else:
                x_next, r, *_ = sudoku_transition(plant, x, action, solution, rewards_cfg, problem.on_mistake)
            rewards[:, k] = torch.where(valid, r.float(), torch.zeros_like(r.float()))
            x = torch.where(valid[:, None], x_next.float(), x)
    mask = (np.arange(L)[None, :] < data.lengths[:, None])
    return states.numpy()[mask], rewards.numpy()[mask]


def discrete_frames(data: DiscreteDataset) -> dict:
    """The :func:`trc.lerobot.write_dataset` arguments of a maze or sudoku data set (see the module notes)."""
    M, L = data.controls.shape[:2]
    lengths = data.lengths.astype(np.int64)
    F = int(lengths.sum())
    states, rewards = _rollout_discrete(data)
    mask = np.arange(L)[None, :] < lengths[:, None]
    frame_index = np.broadcast_to(np.arange(L), (M, L))[mask]
    plant = data.problem.make_plant()
    frames = {
        "episode_index": np.repeat(np.arange(M, dtype=np.int64), lengths),
        "frame_index": frame_index.astype(np.int64),
        "task_index": np.zeros(F, dtype=np.int64),
        "action": data.controls[..., 0][mask].astype(np.int64).reshape(F, 1),
        "observation.state": states,
        "observation.target": np.repeat(data.target_states, lengths, axis=0).astype(np.float32),
        "next.reward": rewards,
    }
    episodes = {
        "stage": np.full(M, "demos"), "success": np.ones(M, dtype=bool),
        "initial_state": data.initial_states, "target_state": data.target_states, "cost": data.costs,
        "status": np.asarray(data.status, dtype=str), "iterations": data.iterations, "solve_time": data.solve_time,
        "instance_index": data.instance_index, "split": _splits_column(data.splits, M),
    }
    if data.distances is not None:
        episodes["distances"] = data.distances.astype(np.int64)
    features = {"action": {"names": ["action"]}}
    metadata = {"trc_source": {"kind": "discrete", "attrs": _jsonable(data.attrs), "horizon": int(L),
                               "state_dim": int(data.initial_states.shape[1])}}
    return {"frames": frames, "tasks": [str(plant.name)], "fps": 1, "episodes": episodes, "features": features,
            "robot_type": str(plant.name), "metadata": metadata}


def _to_discrete(ds: lerobot.LeRobotDataset, src: dict) -> DiscreteDataset:
    attrs = src["attrs"]
    L, n = int(src["horizon"]), int(src["state_dim"])
    M = ds.num_episodes
    lengths = ds.episodes["length"].astype(np.int64)
    if M and lengths.max() > L:
        raise DatasetError(f"LeRobot data set {str(ds.root)!r}: an episode has {int(lengths.max())} frames; the "
                           f"data set's horizon is {L}")
    controls = np.full((M, L, 1), -1.0)
    mask = np.arange(L)[None, :] < lengths[:, None]
    controls[..., 0][mask] = _frame_column(ds, "action").reshape(-1).astype(np.float64)
    try:
        problem = problem_from_dict(attrs["problem"])
    except Exception as exc:
        raise DatasetError(f"LeRobot data set {str(ds.root)!r}: its problem cannot be rebuilt: {exc}") from exc
    distances = ds.episodes.get("distances")
    return DiscreteDataset(
        problem=problem, solver=str(attrs["solver"]), seed=int(attrs["seed"]),
        initial_states=_episode_column(ds, "initial_state").astype(np.float64).reshape(M, n),
        target_states=_episode_column(ds, "target_state").astype(np.float64).reshape(M, n),
        controls=controls, lengths=lengths,
        costs=_episode_column(ds, "cost").astype(np.float64),
        status=_episode_column(ds, "status").astype(str),
        iterations=_episode_column(ds, "iterations").astype(np.int64),
        solve_time=_episode_column(ds, "solve_time").astype(np.float64),
        instance_index=_episode_column(ds, "instance_index").astype(np.int64),
        splits=_splits_of(_episode_column(ds, "split")),
        distances=None if distances is None else np.asarray(distances, dtype=np.int64),
        attrs=dict(attrs),
    )


# ---------------------------------------------------------------------------- LIBERO
def _libero_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*_demo.hdf5"))
        if not files:
            raise DatasetError(f"folder {str(path)!r} holds no *_demo.hdf5 file")
        return files
    return [path]


def _libero_extras(path: Path, keys: list[str]) -> tuple[list, list]:
    """``executed_actions`` and ``init_state_id`` of each demo (not returned by ``read_task_file``)."""
    executed, init_ids = [], []
    with h5py.File(path, "r") as f:
        for key in keys:
            g = f["data"][key]
            executed.append(g["executed_actions"][()] if "executed_actions" in g else g["actions"][()])
            init_ids.append(int(g.attrs.get("init_state_id", -1)))
    return executed, init_ids


def libero_frames(path: str | os.PathLike) -> dict:
    """The :func:`trc.lerobot.write_dataset` arguments of LIBERO demonstration files (see the module notes).

    Raises
    ------
    DatasetError
        If a file is missing or not in LIBERO's layout.
    """
    tasks, files_meta, demos_all, extras = [], {}, [], []
    fps = None
    for file in _libero_files(Path(path)):
        attrs, demos = read_task_file(file, OBS_KEYS, with_states=True)
        executed, init_ids = _libero_extras(file, [d.key for d in demos])
        task_name = file.name.removesuffix("_demo.hdf5")
        if task_name in files_meta:
            raise DatasetError(f"two files of task {task_name!r}; expected one *_demo.hdf5 per task")
        keep = {k: v for k, v in attrs.items() if k not in _FILE_ATTRS_SET_BY_WRITER}
        files_meta[task_name] = {"attrs": _jsonable(keep), "file": file.name}
        freq = ((attrs.get("env_args") or {}).get("env_kwargs") or {}).get("control_freq") \
            if isinstance(attrs.get("env_args"), dict) else None
        fps = fps or freq
        for demo, ex, init in zip(demos, executed, init_ids):
            if demo.language not in tasks:
                tasks.append(demo.language)
            demos_all.append(demo)
            extras.append((ex, init, task_name))
    if not demos_all:
        raise DatasetError(f"{str(path)!r} holds no demonstration")
    lengths = np.array([len(d) for d in demos_all], dtype=np.int64)
    E, F = len(demos_all), int(lengths.sum())
    S = max((d.states.shape[1] if d.states is not None else 0) for d in demos_all)
    env_state = np.zeros((F, max(S, 1)))
    start = 0
    for d in demos_all:
        if d.states is not None:
            env_state[start:start + len(d), :d.states.shape[1]] = d.states
        start += len(d)

    def cat(get):
        return np.concatenate([get(d) for d in demos_all])

    frames = {
        "episode_index": np.repeat(np.arange(E, dtype=np.int64), lengths),
        "frame_index": np.concatenate([np.arange(n, dtype=np.int64) for n in lengths]),
        "task_index": np.repeat([tasks.index(d.language) for d in demos_all], lengths).astype(np.int64),
        "action": cat(lambda d: d.actions),
        "observation.state": cat(lambda d: np.concatenate([d.obs["ee_pos"], d.obs["ee_ori"], d.obs["gripper_states"]],
                                                          axis=1)).astype(np.float32),
        "observation.environment_state": env_state,
        "complementary_info.executed_action": np.concatenate([np.asarray(e[0], dtype=np.float64) for e in extras]),
        "next.reward": cat(lambda d: d.rewards).astype(np.float32),
        "next.done": cat(lambda d: d.dones).astype(bool),
    }
    for key in OBS_KEYS:
        frames[LIBERO_CAMERAS.get(key, f"observation.{key}")] = cat(lambda d: d.obs[key])
    features = {name: {"dtype": "float64"} for name in
                ["action", "observation.environment_state", "complementary_info.executed_action"]
                + [f"observation.{k}" for k in OBS_KEYS if k not in LIBERO_CAMERAS]}
    features["observation.state"] = {"names": ["x", "y", "z", "axis_angle1", "axis_angle2", "axis_angle3",
                                               "gripper_1", "gripper_2"]}
    features["action"]["names"] = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    episodes = {
        "stage": np.full(E, "demos"),
        "success": np.array([bool(np.any(d.dones)) for d in demos_all]),
        "init_state_id": np.array([e[1] for e in extras], dtype=np.int64),
        "task_name": np.array([e[2] for e in extras], dtype=str),
        "sim_state_dim": np.array([d.states.shape[1] if d.states is not None else 0 for d in demos_all],
                                  dtype=np.int64),
    }
    metadata = {"trc_source": {"kind": "libero", "files": files_meta, "image_convention": "opengl"}}
    return {"frames": frames, "tasks": tasks, "fps": fps or _LIBERO_FPS, "episodes": episodes, "features": features,
            "robot_type": "panda", "metadata": metadata}


def _write_libero(ds: lerobot.LeRobotDataset, src: dict, out: Path, force: bool) -> Path:
    names = _episode_column(ds, "task_name").astype(str)
    dims = _episode_column(ds, "sim_state_dim").astype(np.int64)
    init_ids = _episode_column(ds, "init_state_id").astype(np.int64)
    success = _episode_column(ds, "success").astype(bool)
    files = src.get("files") or {}
    missing = sorted(set(names.tolist()) - set(files))
    if missing:
        raise DatasetError(f"LeRobot data set {str(ds.root)!r}: {lerobot.TRC_META_PATH} has no file attributes for "
                           f"the task(s) {missing}")
    for key in [*(LIBERO_CAMERAS.get(k, f"observation.{k}") for k in OBS_KEYS), "action", "next.reward", "next.done",
                "observation.environment_state", "complementary_info.executed_action"]:
        _frame_column(ds, key)
    by_task = {}
    for e, name in enumerate(names.tolist()):
        part = ds.episode(e)
        obs = {key: part[LIBERO_CAMERAS.get(key, f"observation.{key}")] for key in OBS_KEYS}
        obs = {k: (v.astype(np.uint8) if k in LIBERO_CAMERAS else v.astype(np.float64)) for k, v in obs.items()}
        attrs = files[name]["attrs"]
        by_task.setdefault(name, []).append(Episode(
            obs=obs, actions=part["action"].astype(np.float64),
            executed_actions=part["complementary_info.executed_action"].astype(np.float64),
            rewards=part["next.reward"].astype(np.float64), dones=part["next.done"].astype(np.uint8),
            states=part["observation.environment_state"][:, :int(dims[e])].astype(np.float64),
            success=bool(success[e]), init_state_id=int(init_ids[e]), task_index=int(attrs.get("task_index", -1)),
        ))
    targets = {name: out / task_file_name(name) for name in by_task}
    for path in targets.values():  # every file checked before the first is written
        check_output_file(path, force=force, what="output file")
    for name, episodes in by_task.items():
        with output_lock(targets[name]):
            write_task_file(targets[name], episodes, files[name]["attrs"])
    return out


# ---------------------------------------------------------------------------- dispatch
def source_kind(path: str | os.PathLike) -> str:
    """``"continuous"``, ``"discrete"``, ``"libero"`` (HDF5 inputs) or ``"lerobot"`` (a LeRobot v3 folder).

    Raises
    ------
    DatasetError
        If ``path`` does not exist or is none of these.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"input {str(path)!r} does not exist")
    if path.is_dir():
        if (path / lerobot.INFO_PATH).is_file():
            return "lerobot"
        if any(path.glob("*_demo.hdf5")):
            return "libero"
        raise DatasetError(f"input folder {str(path)!r} is neither a LeRobot data set (no {lerobot.INFO_PATH}) nor "
                           "a folder of LIBERO *_demo.hdf5 files")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"input {str(path)!r} is not an HDF5 file")
    with h5py.File(path, "r") as f:
        if "data" in f and "problem_info" in f["data"].attrs:
            return "libero"
        kind = f.attrs.get("kind")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    return "discrete" if kind in ("maze", "sudoku") else "continuous"


def to_lerobot(src: str | os.PathLike, out: str | os.PathLike, *, fps: float | None = None, video: bool = False,
               force: bool = False) -> Path:
    """Convert a TRC HDF5 data set or LIBERO demonstrations to the LeRobot v3 folder ``out``.

    Parameters
    ----------
    src : path
        Continuous or discrete ``.h5`` data set, a LIBERO ``*_demo.hdf5`` file or a folder of them.
    out : path
        The LeRobot folder to write.
    fps : float, optional
        Frames per second (default: ``1 / dt``, 1 for discrete sets, LIBERO's control frequency).
    video : bool
        LIBERO only: store the cameras as MP4 videos.
    force : bool
        Replace an existing LeRobot data set at ``out``.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    DatasetError
        If ``src`` is missing or not a valid data set.
    ConfigError
        If ``out`` exists and ``force`` is False, ``fps`` is not positive, or ``video`` is asked
        for a set without images or without a video encoder.
    """
    kind = source_kind(src)
    if kind == "lerobot":
        raise ConfigError(f"input {str(src)!r} is already a LeRobot data set; use --to hdf5 to convert it back")
    lerobot._check_root(out)
    if Path(out).exists() and not force:
        raise ConfigError(f"output {str(out)!r} already exists; refusing to replace it (pass --force)")
    if video and kind != "libero":
        raise ConfigError(f"--video needs images; a {kind} data set has none")
    if kind == "continuous":
        args = continuous_frames(read_continuous(src))
    elif kind == "discrete":
        args = discrete_frames(read_discrete_dataset(src))
    else:
        args = libero_frames(src)
    if fps is not None:
        args["fps"] = fps
    args["metadata"]["trc_source"]["input"] = os.path.basename(os.path.abspath(src))
    return lerobot.write_dataset(out, args.pop("frames"), overwrite=force, video=video, **args)


def to_hdf5(src: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Convert a LeRobot v3 folder written by :func:`to_lerobot` back to the HDF5 data set it came from.

    Parameters
    ----------
    src : path
        The LeRobot folder.
    out : path
        Continuous and discrete sets: the ``.h5`` file; LIBERO: a folder for the
        ``*_demo.hdf5`` files.
    force : bool
        Replace existing output files.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    DatasetError
        If ``src`` is not a valid LeRobot data set or was not written by :func:`to_lerobot`.
    ConfigError
        If an output file exists and ``force`` is False, or ``out`` cannot be written.
    """
    check_output_name(out, what="output")
    ds = lerobot.read_dataset(src)
    source = _source(ds)
    out = Path(out)
    if source["kind"] == "libero":
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output {str(out)!r} is a file; LIBERO demonstrations go into a folder")
        return _write_libero(ds, source, out, force)
    if source["kind"] == "continuous":
        data = _to_continuous(ds, source)
        with output_lock(out):
            check_output_file(out, force=force)
            return write_continuous(out, data)
    return write_discrete_dataset(out, _to_discrete(ds, source), force=force)


# ---------------------------------------------------------------------------- command line
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.convert``."""
    parser = argparse.ArgumentParser(
        prog="python -m trc.convert",
        description="Convert TRC HDF5 data sets (continuous, maze/sudoku, LIBERO demonstrations) to LeRobot v3 "
        "folders and back.",
        epilog="Example: python -m trc.convert --to lerobot datasets/maze5.h5 datasets/maze5_lerobot",
    )
    parser.add_argument("--to", required=True, choices=("lerobot", "hdf5"), help="output format")
    parser.add_argument("input", metavar="IN", help="input: an HDF5 file, a LIBERO folder or a LeRobot folder")
    parser.add_argument("output", metavar="OUT", help="output: a LeRobot folder, an HDF5 file or a LIBERO folder")
    parser.add_argument("--fps", type=_positive_float, metavar="F",
                        help="--to lerobot: frames per second (default 1/dt, 1 for discrete, 20 for LIBERO)")
    parser.add_argument("--video", action="store_true", help="--to lerobot, LIBERO: cameras as MP4 videos (lossy)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    add_seed(parser, default=0, help="accepted as by every command; conversion draws no random numbers")
    add_quiet(parser)
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.to == "hdf5" and (args.fps is not None or args.video):
        raise ConfigError("--fps and --video apply to --to lerobot only")
    if args.to == "lerobot":
        out = to_lerobot(args.input, args.output, fps=args.fps, video=args.video, force=args.force)
        info = json.loads((Path(out) / lerobot.INFO_PATH).read_text(encoding="utf-8"))
        print(f"wrote {out}: LeRobot {info['codebase_version']}, {info['total_episodes']} episodes, "
              f"{info['total_frames']} frames, {info['total_tasks']} task(s), {info['fps']} fps")
    else:
        out = to_hdf5(args.input, args.output, force=args.force)
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :mod:`trc.cli`)."""
    return run(build_parser(), _command, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
