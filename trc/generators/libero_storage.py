"""LIBERO problems, episodes and demonstrations in LIBERO's HDF5 layout: writer, loader, staging.

One HDF5 file per task, ``<task name>_demo.hdf5``, laid out as LIBERO's own data sets
(``libero/scripts/create_dataset.py``), so the loader reads LIBERO's official files too::

    data/                         attrs: problem_info (JSON, with "language_instruction"),
                                         env_args (JSON), bddl_file_name, num_demos, total
    data/demo_<i>/                attrs: num_samples, init_state_id (ours)
        actions          (T, 7)   float64, delta end-effector actions in [-1, 1]
        rewards, dones   (T,)     1 at the last step of a successful demonstration
        states           (T, S)   flattened MuJoCo states (time, qpos, qvel) before each action
        robot_states     (T, 9)   gripper_states, ee_pos, ee_quat (x, y, z, w)
        executed_actions (T, 7)   ours: the actions applied (labels plus exploration noise)
        obs/agentview_rgb   (T, H, W, 3) uint8, as rendered (OpenGL convention: upside down)
        obs/eye_in_hand_rgb (T, H, W, 3) uint8
        obs/ee_pos (T, 3) m, obs/ee_ori (T, 3) axis-angle rad, obs/ee_states (T, 6),
        obs/gripper_states (T, 2) m, obs/joint_states (T, 7) rad

The ``problem:`` section of a LIBERO configuration is :class:`LiberoProblem`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np
from scipy.spatial.transform import Rotation

from dynamics.errors import ConfigError, DatasetError
from dynamics.libero import MAX_STEPS, RENDER_MODES, SUITES, get_task, suite_tasks

from ..config import check_choice, check_int
from ..io import atomic_path

__all__ = [
    "LiberoProblem",
    "OBS_KEYS",
    "Episode",
    "LiberoDemo",
    "task_file_name",
    "write_task_file",
    "read_task_file",
    "load_demos",
    "stage_episode",
    "load_staged",
]

#: Observation keys of LIBERO's data sets that TRC reads and writes.
OBS_KEYS = ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states")
_IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")


@dataclasses.dataclass
class LiberoProblem:
    """The ``problem:`` section of a LIBERO configuration.

    Attributes
    ----------
    kind : str
        Must be ``"libero"``: the problem kind ``libero`` (:mod:`trc.kinds.libero`).
    name : str
        Problem name (file names, reports).
    suite : str
        LIBERO suite, see :data:`dynamics.libero.SUITES`.
    tasks : "all" or list of int
        Task indices of the suite.
    max_steps : int, optional
        Episode limit; default LIBERO's for the suite (Spatial: 220).
    camera_size : int
        Height and width of both camera images.
    render : {"fast", "libero"}
        Render settings, see :data:`dynamics.libero.RENDER_MODES`.
    assets : str, optional
        LIBERO's assets folder; default see :func:`dynamics.libero.configure_libero`.
    """

    kind: str = "libero"
    name: str = "libero_spatial"
    suite: str = "libero_spatial"
    tasks: Any = "all"
    max_steps: int | None = None
    camera_size: int = 128
    render: str = "fast"
    assets: str | None = None

    def __post_init__(self):
        check_choice(self.kind, "problem.kind", ("libero",))
        check_choice(self.suite, "problem.suite", SUITES)
        if self.tasks != "all":
            if not isinstance(self.tasks, (list, tuple)) or not self.tasks or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.tasks
            ):
                raise ConfigError(f"problem.tasks must be 'all' or a list of task indices, got {self.tasks!r}")
            self.tasks = [int(t) for t in self.tasks]
        if self.max_steps is None:
            self.max_steps = MAX_STEPS[self.suite]
        check_int(self.max_steps, "problem.max_steps", 1)
        check_choice(self.render, "problem.render", RENDER_MODES)
        check_int(self.camera_size, "problem.camera_size", 8)

    def task_list(self) -> list[int]:
        """Task indices of the problem."""
        if self.tasks == "all":
            return list(range(len(suite_tasks(self.suite))))
        return list(self.tasks)

    def worker_dict(self) -> dict:
        """What a worker process needs to build the simulator (picklable)."""
        return {"suite": self.suite, "camera_size": self.camera_size, "render": self.render,
                "assets": self.assets, "max_steps": self.max_steps}

    def file_attrs(self, task_index: int) -> dict:
        """``data`` attributes of a task's file: ``problem_info``, ``env_args``, ``bddl_file_name``."""
        task = get_task(self.suite, task_index)
        text = task.bddl_file.read_text()
        problem = re.search(r"\(problem\s+([^\s)]+)", text)
        domain = re.search(r"\(:domain\s+([^\s)]+)", text)
        problem_name = problem.group(1) if problem else "LIBERO_Tabletop_Manipulation"
        return {
            "problem_info": {
                "problem_name": problem_name,
                "domain_name": domain.group(1) if domain else "robosuite",
                "language_instruction": task.language,
            },
            "env_args": {
                "type": 1,
                "env_name": problem_name,
                "problem_name": problem_name,
                "bddl_file": str(task.bddl_file),
                "env_kwargs": {
                    "robots": ["Panda"], "controller": "OSC_POSE", "control_freq": 20,
                    "camera_names": ["agentview", "robot0_eye_in_hand"],
                    "camera_heights": self.camera_size, "camera_widths": self.camera_size,
                    "render": self.render,
                },
            },
            "bddl_file_name": str(task.bddl_file),
            "task_name": task.name,
            "suite": self.suite,
            "task_index": int(task_index),
        }


def task_file_name(task_name: str) -> str:
    """File name of a task's demonstrations, as LIBERO names them."""
    return f"{task_name}_demo.hdf5"


# ---------------------------------------------------------------------- episodes
@dataclasses.dataclass
class Episode:
    """One episode in LIBERO's data-set layout (``T`` steps; arrays in time order).

    What the scripted expert (:func:`trc.generators.libero_expert.run_episode`) records,
    :func:`write_task_file` writes and :func:`load_staged` reads back.

    Attributes
    ----------
    obs : dict of ndarray
        ``agentview_rgb`` ``(T, H, W, 3)`` uint8, ``eye_in_hand_rgb`` ``(T, H, W, 3)`` uint8,
        ``ee_pos`` ``(T, 3)``, ``ee_ori`` ``(T, 3)``, ``ee_states`` ``(T, 6)``,
        ``gripper_states`` ``(T, 2)``, ``joint_states`` ``(T, 7)``: the observation before
        each action.
    actions : ndarray, shape ``(T, 7)``
        The expert's actions (labels).
    executed_actions : ndarray, shape ``(T, 7)``
        The actions applied (labels plus exploration noise).
    rewards, dones : ndarray, shape ``(T,)``
        1 at the step after which the goal holds (the last), else 0.
    states : ndarray, shape ``(T, state_dim)``
        Flattened MuJoCo states before each action.
    success : bool
    init_state_id : int
    task_index : int
    cpu_seconds : float
        Process CPU time of the episode (simulation, rendering, expert).
    """

    obs: dict
    actions: np.ndarray
    executed_actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    states: np.ndarray
    success: bool
    init_state_id: int
    task_index: int
    cpu_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.actions)


# ---------------------------------------------------------------------- writer
def _robot_states(obs: dict) -> np.ndarray:
    quat = Rotation.from_rotvec(np.asarray(obs["ee_ori"])).as_quat()  # (x, y, z, w)
    return np.concatenate([obs["gripper_states"], obs["ee_pos"], quat], axis=1)


def write_task_file(path: str | os.PathLike, episodes: Sequence, attrs: dict) -> Path:
    """Write one task's demonstrations in LIBERO's layout (atomically).

    Parameters
    ----------
    path : path
        Output ``.hdf5`` file.
    episodes : sequence of Episode
        :class:`Episode` s (or objects with the same fields).
    attrs : dict
        ``problem_info`` and ``env_args`` (dicts, stored as JSON), ``bddl_file_name`` and any
        further scalar attributes of the ``data`` group (see :meth:`LiberoProblem.file_attrs`).

    Returns
    -------
    Path

    Raises
    ------
    DatasetError
        If an episode lacks an observation key or its arrays disagree in length.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            total = 0
            for i, ep in enumerate(episodes):
                T = len(ep.actions)
                missing = [k for k in OBS_KEYS if k not in ep.obs]
                if missing:
                    raise DatasetError(f"episode {i} lacks observation keys {missing}; expected {list(OBS_KEYS)}")
                for k in OBS_KEYS:
                    if len(ep.obs[k]) != T:
                        raise DatasetError(f"episode {i}: obs/{k} has {len(ep.obs[k])} steps; actions have {T}")
                g = data.create_group(f"demo_{i}")
                g.attrs["num_samples"] = T
                g.attrs["init_state_id"] = int(getattr(ep, "init_state_id", -1))
                g.create_dataset("actions", data=np.asarray(ep.actions, dtype=np.float64))
                g.create_dataset("executed_actions", data=np.asarray(getattr(ep, "executed_actions", ep.actions), dtype=np.float64))
                g.create_dataset("rewards", data=np.asarray(ep.rewards, dtype=np.float64))
                g.create_dataset("dones", data=np.asarray(ep.dones, dtype=np.uint8))
                g.create_dataset("states", data=np.asarray(ep.states, dtype=np.float64))
                g.create_dataset("robot_states", data=_robot_states(ep.obs))
                o = g.create_group("obs")
                for k in OBS_KEYS:
                    arr = np.asarray(ep.obs[k])
                    if k in _IMAGE_KEYS:
                        o.create_dataset(k, data=arr.astype(np.uint8), chunks=(1, *arr.shape[1:]),
                                         compression="gzip", compression_opts=1)
                    else:
                        o.create_dataset(k, data=arr.astype(np.float64))
                total += T
            for key, value in attrs.items():
                data.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            data.attrs["num_demos"] = len(episodes)
            data.attrs["total"] = total
            data.attrs["macros_image_convention"] = "opengl"
    return path


# ---------------------------------------------------------------------- loader
@dataclasses.dataclass
class LiberoDemo:
    """One demonstration read from a LIBERO-layout file.

    Attributes
    ----------
    obs : dict of ndarray
        The requested observation keys, each ``(T, ...)``.
    actions : ndarray, shape ``(T, 7)``
    states : ndarray, shape ``(T, S)`` or None
    rewards, dones : ndarray, shape ``(T,)``
    language : str
        The task's instruction.
    task_name : str
    file : str
    key : str
        Name of the demo group (``"demo_3"``).
    """

    obs: dict
    actions: np.ndarray
    states: np.ndarray | None
    rewards: np.ndarray
    dones: np.ndarray
    language: str
    task_name: str
    file: str
    key: str

    def __len__(self) -> int:
        return len(self.actions)


def _language(attrs, path: Path) -> str:
    info = attrs.get("problem_info")
    if info is None:
        raise DatasetError(f"{str(path)!r}: data has no 'problem_info' attribute; not a LIBERO demonstration file")
    try:
        info = json.loads(info)
        return str(info["language_instruction"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{str(path)!r}: problem_info has no language_instruction: {info!r}") from exc


def read_task_file(path: str | os.PathLike, obs_keys: Iterable[str] = OBS_KEYS, with_states: bool = True) -> tuple[dict, list[LiberoDemo]]:
    """Read one LIBERO-layout file (ours or LIBERO's official ones).

    Parameters
    ----------
    path : path
    obs_keys : iterable of str
        Observation keys to load.
    with_states : bool
        Also load the MuJoCo ``states``.

    Returns
    -------
    attrs : dict
        Attributes of ``data`` (``problem_info`` and ``env_args`` decoded from JSON).
    demos : list of LiberoDemo
        In the order ``demo_0, demo_1, ...``.

    Raises
    ------
    DatasetError
        If the file is missing, unreadable, or lacks a group, data set or attribute of the layout.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"demonstration file {str(path)!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"cannot read {str(path)!r} as HDF5: {exc}") from exc
    with f:
        if "data" not in f:
            raise DatasetError(f"{str(path)!r} has no 'data' group; expected LIBERO's layout")
        data = f["data"]
        attrs = {}
        for k, v in data.attrs.items():
            v = v.decode() if isinstance(v, bytes) else v
            if k in ("problem_info", "env_args") and isinstance(v, str):
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            attrs[k] = v
        language = _language(data.attrs, path)
        task_name = Path(path).name.removesuffix("_demo.hdf5")
        keys = sorted((k for k in data if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        if not keys:
            raise DatasetError(f"{str(path)!r} holds no demo_<i> group")
        demos = []
        for key in keys:
            g = data[key]
            for need in ("actions", "obs"):
                if need not in g:
                    raise DatasetError(f"{str(path)!r}: {key} has no '{need}'")
            obs = {}
            for k in obs_keys:
                if k not in g["obs"]:
                    raise DatasetError(f"{str(path)!r}: {key}/obs has no '{k}'; it has {sorted(g['obs'])}")
                obs[k] = g["obs"][k][()]
            actions = g["actions"][()]
            T = len(actions)
            for k, v in obs.items():
                if len(v) != T:
                    raise DatasetError(f"{str(path)!r}: {key}/obs/{k} has {len(v)} steps; actions have {T}")
            demos.append(
                LiberoDemo(
                    obs=obs,
                    actions=actions.astype(np.float64),
                    states=g["states"][()] if with_states and "states" in g else None,
                    rewards=g["rewards"][()] if "rewards" in g else np.zeros(T),
                    dones=g["dones"][()] if "dones" in g else np.zeros(T, dtype=np.uint8),
                    language=language,
                    task_name=task_name,
                    file=str(path),
                    key=key,
                )
            )
    return attrs, demos


def load_demos(paths: str | os.PathLike | Iterable[str | os.PathLike], obs_keys: Iterable[str] = OBS_KEYS,
               with_states: bool = False) -> list[LiberoDemo]:
    """Demonstrations of one or several task files, or of every ``*_demo.hdf5`` in a folder.

    Raises
    ------
    DatasetError
        If a folder holds no demonstration file, or a file is malformed.
    """
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        files = sorted(p.glob("*_demo.hdf5")) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise DatasetError(f"folder {str(p)!r} holds no *_demo.hdf5 file")
    else:
        files = [Path(x) for x in paths]
    demos = []
    for f in files:
        demos.extend(read_task_file(f, obs_keys, with_states)[1])
    return demos


# ---------------------------------------------------------------------- staging (resumable generation)
def _stage_dir(staging: Path, task_index: int) -> Path:
    return Path(staging) / f"task_{task_index:03d}"


def stage_episode(staging: str | os.PathLike, task_index: int, attempt: int, episode) -> Path:
    """Save one finished episode (atomically) so an interrupted generation can resume."""
    tag = "ok" if episode.success else "fail"
    path = _stage_dir(Path(staging), task_index) / f"attempt_{attempt:04d}_{tag}.npz"
    arrays = {f"obs/{k}": v for k, v in episode.obs.items()}
    arrays.update(actions=episode.actions, executed_actions=episode.executed_actions, rewards=episode.rewards,
                  dones=episode.dones, states=episode.states)
    meta = {"success": bool(episode.success), "init_state_id": int(episode.init_state_id),
            "task_index": int(episode.task_index), "cpu_seconds": float(episode.cpu_seconds)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    return path


def load_staged(staging: str | os.PathLike, task_index: int, with_data: bool = False) -> list[dict]:
    """Staged episodes of a task: ``[{"attempt", "success", "path", ["episode"]}]`` sorted by attempt."""
    folder = _stage_dir(Path(staging), task_index)
    out = []
    for p in sorted(folder.glob("attempt_*.npz")) if folder.is_dir() else []:
        m = re.fullmatch(r"attempt_(\d+)_(ok|fail)\.npz", p.name)
        if not m:
            continue
        rec = {"attempt": int(m.group(1)), "success": m.group(2) == "ok", "path": str(p)}
        if with_data:
            with np.load(p) as z:
                meta = json.loads(str(z["meta"]))
                obs = {k[4:]: z[k] for k in z.files if k.startswith("obs/")}
                rec["episode"] = Episode(obs=obs, actions=z["actions"], executed_actions=z["executed_actions"],
                                         rewards=z["rewards"], dones=z["dones"], states=z["states"],
                                         success=meta["success"], init_state_id=meta["init_state_id"],
                                         task_index=meta["task_index"], cpu_seconds=meta["cpu_seconds"])
        out.append(rec)
    return out
