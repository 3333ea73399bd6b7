"""HDF5 files of optimal trajectories: the schema, an atomic writer and a validating reader.

The schema is documented in ``datasets/README.md``. In short, for ``M`` successful solves of a
problem with horizon ``N``, ``n`` states and ``m`` controls::

    /states            (M, N + 1, n) float64   optimal trajectories, x0 first
    /controls          (M, N, m)     float64   optimal controls, controls[:, k] held on [k dt, (k+1) dt)
    /initial_states    (M, n)        float64
    /target_states     (M, n)        float64
    /costs             (M,)          float64   J of trc.cost
    /status            (M,)          str       solver status
    /iterations        (M,)          int64
    /solve_time        (M,)          float64   seconds (the only field that differs between runs)
    /instance_index    (M,)          int64     position in the seeded instance stream
    /steps_to_go       (M,)          int64     optional: a plan of the k <= N steps left (shrinking
                                               horizon), padded to N with x_k and u_{k-1}
    /splits/{train,val,test}         int64     row indices into the arrays above
    /failures/...                              failed instances (never training data)
    attributes: schema_version, problem (JSON), plant (name), plant_config (JSON), dt, N,
                Q, R, Qf, u_min, u_max, x_min, x_max, solver, solver_options (JSON), seed, ...

Every file is written to a temporary file and renamed (:func:`trc.io.atomic_path`), and every
numeric array carries a Fletcher-32 checksum, so a truncated or corrupted file is detected on
reading and reported as :class:`~dynamics.errors.DatasetError`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch

from dynamics.errors import DatasetError, TRCError
from trc.problem import Problem

from ..io import atomic_path, check_output_path, output_lock
from ..version import __version__
from .config import SPLIT_NAMES

__all__ = [
    "JSONText",
    "encode_attr",
    "create_dataset",
    "decode_attrs",
    "open_h5",
    "SCHEMA_VERSION",
    "ARRAY_NAMES",
    "OPTIONAL_ARRAY_NAMES",
    "FAILURE_NAMES",
    "REQUIRED_ATTRS",
    "GeneratedDataset",
    "write_dataset",
    "read_dataset",
    "read_attrs",
]

#: Version of the file layout; readers refuse newer versions.
SCHEMA_VERSION = 1

#: Per-sample arrays at the root of the file, with their number of dimensions.
ARRAY_NAMES = {
    "states": 3,
    "controls": 3,
    "initial_states": 2,
    "target_states": 2,
    "costs": 1,
    "status": 1,
    "iterations": 1,
    "solve_time": 1,
    "instance_index": 1,
}

#: Per-instance arrays of the ``failures`` group.
FAILURE_NAMES = {
    "initial_states": 2,
    "target_states": 2,
    "status": 1,
    "iterations": 1,
    "solve_time": 1,
    "instance_index": 1,
}

#: Attributes every data set carries (beyond these, writers may add free-form metadata).
REQUIRED_ATTRS = (
    "schema_version",
    "problem",
    "problem_name",
    "plant",
    "plant_config",
    "dt",
    "N",
    "state_dim",
    "control_dim",
    "Q",
    "R",
    "Qf",
    "cost",
    "solver",
    "solver_options",
    "seed",
    "num_samples",
    "trc_version",
    "created",
)

_FLOAT = {"states", "controls", "initial_states", "target_states", "costs", "solve_time"}
_INT = {"iterations", "instance_index", "steps_to_go"}

#: Optional per-sample arrays (absent: every plan covers the horizon ``N``).
OPTIONAL_ARRAY_NAMES = {"steps_to_go": 1}


@dataclass
class GeneratedDataset:
    """A data set of ``M`` optimal trajectories in memory (NumPy arrays), as stored in HDF5.

    Attributes
    ----------
    problem : trc.problem.Problem
        The problem the trajectories solve.
    solver : str
        Name of the solver that produced them.
    solver_options : dict
        Keyword arguments of the solver.
    seed : int
        Seed of the instance stream and of the splits.
    states : ndarray, shape ``(M, N + 1, n)``
        Optimal trajectories, the initial state first.
    controls : ndarray, shape ``(M, N, m)``
        Optimal controls; ``controls[:, k]`` is held on ``[k dt, (k + 1) dt)``.
    initial_states, target_states : ndarray, shape ``(M, n)``
    costs : ndarray, shape ``(M,)``
        Cost ``J`` of each trajectory (:mod:`trc.cost` convention).
    status : ndarray of str, shape ``(M,)``
        Solver status of each solve.
    iterations : ndarray of int64, shape ``(M,)``
    solve_time : ndarray, shape ``(M,)``
        Wall-clock seconds per solve.
    instance_index : ndarray of int64, shape ``(M,)``
        Position of each instance in the seeded instance stream (see :mod:`.pipeline`).
    splits : dict of str to ndarray of int64
        Row indices of the ``train``, ``val`` and ``test`` splits.
    failures : dict of str to ndarray
        Failed instances: ``initial_states``, ``target_states`` ``(F, n)``, ``status``,
        ``iterations``, ``solve_time``, ``instance_index`` ``(F,)``. Never training data.
    attrs : dict
        Further metadata (creation info, timings, ...). :func:`read_dataset` fills it with
        every attribute of the file, JSON attributes decoded.
    steps_to_go : ndarray of int64, shape ``(M,)``, optional
        Plans of a shrinking horizon: sample ``i`` is optimal for the ``k_i <= N`` steps left
        before a fixed final time, and its arrays are padded to ``N`` with ``x_k`` and
        ``u_{k-1}``. None: every plan covers ``N`` steps.
    """

    problem: object
    solver: str
    solver_options: dict
    seed: int
    states: np.ndarray
    controls: np.ndarray
    initial_states: np.ndarray
    target_states: np.ndarray
    costs: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    solve_time: np.ndarray
    instance_index: np.ndarray
    splits: dict
    failures: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    steps_to_go: Optional[np.ndarray] = None

    @property
    def num_samples(self) -> int:
        """Number of trajectories ``M``."""
        return int(self.states.shape[0])

    def arrays(self) -> dict:
        """The per-sample arrays by name (see :data:`ARRAY_NAMES`; optional ones when present)."""
        names = [*ARRAY_NAMES, *(k for k in OPTIONAL_ARRAY_NAMES if getattr(self, k) is not None)]
        return {name: getattr(self, name) for name in names}

    def split(self, name: str) -> dict:
        """The per-sample arrays of split ``name`` (``"train"``, ``"val"`` or ``"test"``).

        Raises
        ------
        KeyError
            If the split does not exist.
        """
        if name not in self.splits:
            raise KeyError(f"unknown split {name!r}; the data set has {sorted(self.splits)}")
        idx = self.splits[name]
        return {key: value[idx] for key, value in self.arrays().items()}


# ---------------------------------------------------------------------------- writing
def _standard_attrs(data: GeneratedDataset) -> dict:
    """The schema's attributes, derived from the problem and the arrays."""
    problem = data.problem
    plant = problem.make_plant()
    Q, R, Qf = problem.weights
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "problem": problem.to_dict(),
        "problem_name": problem.name,
        "plant": plant.name,
        "plant_config": plant.config(),
        "state_names": list(plant.state_names),
        "control_names": list(plant.control_names),
        "dt": float(problem.dt),
        "N": int(problem.horizon),
        "state_dim": int(plant.state_dim),
        "control_dim": int(plant.control_dim),
        "Q": np.asarray(Q, dtype=np.float64),
        "R": np.asarray(R, dtype=np.float64),
        "Qf": np.asarray(Qf, dtype=np.float64),
        "u_min": plant.u_min.double().numpy(),
        "u_max": plant.u_max.double().numpy(),
        "x_min": plant.x_min.double().numpy(),
        "x_max": plant.x_max.double().numpy(),
        "cost": problem.cost,
        "tolerance": float(problem.tolerance),
        "solver": data.solver,
        "solver_options": dict(data.solver_options),
        "seed": int(data.seed),
        "num_samples": data.num_samples,
        "num_failures": int(len(data.failures.get("status", ()))),
        "trc_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
    }
    try:
        attrs["torch_version"] = str(torch.__version__)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return attrs


def _check_shapes(data: GeneratedDataset) -> None:
    """Raise DatasetError unless the arrays agree with each other and with the problem."""
    M = data.num_samples
    N, n, m = data.problem.horizon, data.problem.state_dim, data.problem.control_dim
    expected = {
        "states": (M, N + 1, n),
        "controls": (M, N, m),
        "initial_states": (M, n),
        "target_states": (M, n),
        "costs": (M,),
        "status": (M,),
        "iterations": (M,),
        "solve_time": (M,),
        "instance_index": (M,),
    }
    if data.steps_to_go is not None:
        expected["steps_to_go"] = (M,)
    for name, shape in expected.items():
        got = np.shape(getattr(data, name))
        if got != shape:
            raise DatasetError(f"array {name!r} has shape {got}; expected {shape} (M={M}, N={N}, n={n}, m={m})")
    k = data.steps_to_go
    if k is not None and k.size and not (np.all(k == np.round(k)) and k.min() >= 1 and k.max() <= N):
        raise DatasetError(f"array 'steps_to_go' must hold whole numbers in [1, N={N}], got [{k.min()}, {k.max()}]")
    _check_splits(data.splits, M, "in memory")
    F = len(data.failures.get("status", ()))
    for name, ndim in FAILURE_NAMES.items():
        if not data.failures and F == 0:
            break
        if name not in data.failures:
            raise DatasetError(f"failures lack {name!r}; expected the keys {sorted(FAILURE_NAMES)}")
        shape = (F, n) if ndim == 2 else (F,)
        if np.shape(data.failures[name]) != shape:
            raise DatasetError(f"failures[{name!r}] has shape {np.shape(data.failures[name])}; expected {shape}")


def _check_splits(splits: dict, M: int, where) -> None:
    if set(splits) != set(SPLIT_NAMES):
        raise DatasetError(f"{where}: splits are {sorted(splits)}; expected {list(SPLIT_NAMES)}")
    all_idx = np.concatenate([np.asarray(splits[name]).reshape(-1) for name in SPLIT_NAMES])
    if all_idx.size and (all_idx.min() < 0 or all_idx.max() >= M):
        raise DatasetError(f"{where}: split indices must lie in [0, {M}), got [{all_idx.min()}, {all_idx.max()}]")
    if np.unique(all_idx).size != all_idx.size:
        raise DatasetError(f"{where}: the train/val/test splits overlap")


class JSONText(str):
    """An attribute value stored as JSON text (listed in the ``json_attrs`` attribute)."""


def encode_attr(value):
    """An attribute as HDF5 can store it: numbers, strings and numeric arrays as they are,
    containers (dicts, nested or mixed lists, None) as JSON text."""
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return np.asarray(value)
    if isinstance(value, (dict, list, tuple, bool)) or value is None:
        return JSONText(json.dumps(value, sort_keys=True))
    if isinstance(value, str):
        return str(value)  # plain str (subclasses such as torch's TorchVersion do not convert)
    if isinstance(value, Path):
        return str(value)
    return value


def create_dataset(group: h5py.Group, name: str, array: np.ndarray) -> None:
    """Write array ``name`` of the schema into ``group``: float64 or int64 (by name), a
    Fletcher-32 checksum on numeric arrays, UTF-8 strings for ``status``."""
    if name == "status":
        group.create_dataset(name, data=np.asarray(array, dtype=object), dtype=h5py.string_dtype("utf-8"))
        return
    dtype = np.float64 if name in _FLOAT else np.int64
    array = np.ascontiguousarray(array, dtype=dtype)
    kwargs = {}
    if array.size:
        # Checksummed and compressed: corruption is detected on reading.
        kwargs = dict(chunks=True, compression="gzip", compression_opts=4, shuffle=True, fletcher32=True)
    group.create_dataset(name, data=array, **kwargs)


def write_dataset(path: str | os.PathLike, data: GeneratedDataset) -> Path:
    """Write ``data`` to the HDF5 file ``path`` atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or PathLike
        Output file; its folder is created if needed. An existing file is replaced only once
        the new one is complete (callers that must not replace other files check it first
        with :func:`trc.io.check_output_file`, as :func:`trc.generators.pipeline.generate`
        does).
    data : GeneratedDataset
        The trajectories and their metadata. The schema attributes (see
        :data:`REQUIRED_ATTRS`) are derived from ``data.problem``; ``data.attrs`` adds
        free-form metadata (numbers, strings, arrays, or JSON-serialisable containers).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    DatasetError
        If the arrays disagree with each other or with the problem's dimensions.
    ConfigError
        If ``path`` is empty, a folder, under a file or in a folder that cannot be written
        (:func:`trc.io.check_output_path`), or another process is writing it
        (:func:`trc.io.output_lock`).
    """
    path = check_output_path(path)
    _check_shapes(data)
    attrs = {**data.attrs, **_standard_attrs(data)}
    if data.attrs.get("created"):  # keep a creation time given by the caller (the run's start)
        attrs["created"] = data.attrs["created"]
    attrs.pop("json_attrs", None)
    encoded = {key: encode_attr(value) for key, value in attrs.items()}
    encoded["json_attrs"] = json.dumps(sorted(k for k, v in encoded.items() if isinstance(v, JSONText)))
    with output_lock(path), atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, array in data.arrays().items():
                create_dataset(f, name, array)
            splits = f.create_group("splits")
            for name in SPLIT_NAMES:
                create_dataset(splits, name, np.sort(np.asarray(data.splits[name], dtype=np.int64)))
            failures = f.create_group("failures")
            n = data.problem.state_dim
            for name, ndim in FAILURE_NAMES.items():
                default = np.zeros((0, n) if ndim == 2 else (0,))
                create_dataset(failures, name, data.failures.get(name, default))
            for key, value in encoded.items():
                f.attrs[key] = str(value) if isinstance(value, JSONText) else value
    return path


# ---------------------------------------------------------------------------- reading
def decode_attrs(attrs: h5py.AttributeManager, path) -> dict:
    """The attributes of an HDF5 object as Python values (JSON attributes decoded).

    Raises
    ------
    DatasetError
        If ``json_attrs`` or one of the JSON attributes is not valid JSON.
    """
    out = {}
    raw = attrs.get("json_attrs", "[]")
    try:
        json_keys = set(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
    except (json.JSONDecodeError, TypeError) as exc:
        raise DatasetError(f"{path}: attribute 'json_attrs' is not a JSON list: {exc}") from exc
    for key in attrs:
        if key == "json_attrs":
            continue
        value = attrs[key]
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, np.generic):
            value = value.item()
        if key in json_keys and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: attribute {key!r} is not valid JSON: {exc}") from exc
        out[key] = value
    return out


def open_h5(path) -> h5py.File:
    """Open a data set file for reading.

    Raises
    ------
    DatasetError
        If the file is missing, not a file, or not a readable HDF5 file.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data set {str(path)!r} does not exist")
    if not path.is_file():
        raise DatasetError(f"data set {str(path)!r} is not a file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(
            f"data set {str(path)!r} is not a readable HDF5 file (truncated, corrupt or not HDF5; "
            f"regenerate it with `python -m trc.generate`): {exc}"
        ) from exc


def _attrs_of(f: h5py.File, path) -> dict:
    try:
        attrs = decode_attrs(f.attrs, path)
    except DatasetError:
        raise
    except Exception as exc:  # HDF5 raises OSError/RuntimeError/KeyError on damaged metadata
        raise DatasetError(f"data set {str(path)!r}: cannot read its attributes (corrupt file?): {exc}") from exc
    if attrs.get("kind") in ("maze", "sudoku"):
        raise DatasetError(
            f"data set {str(path)!r} is a discrete ({attrs['kind']}) data set; read it with "
            "trc.generators.discrete.read_discrete_dataset"
        )
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise DatasetError(f"data set {str(path)!r} lacks the attribute(s) {missing}; a TRC data set has {list(REQUIRED_ATTRS)}")
    if not isinstance(attrs["schema_version"], int) or attrs["schema_version"] > SCHEMA_VERSION:
        raise DatasetError(
            f"data set {str(path)!r} has schema_version {attrs['schema_version']!r}; "
            f"this version of TRC reads up to {SCHEMA_VERSION}"
        )
    return attrs


def read_attrs(path: str | os.PathLike) -> dict:
    """The attributes of a data set (JSON attributes decoded), without reading its arrays.

    Raises
    ------
    DatasetError
        If the file is missing, not HDF5, or lacks a required attribute.
    """
    with open_h5(path) as f:
        return _attrs_of(f, path)


def _read_array(group: h5py.Group, name: str, ndim: int, path, where: str) -> np.ndarray:
    if name not in group:
        raise DatasetError(
            f"data set {str(path)!r} lacks the array {where}{name!r}; expected {sorted(ARRAY_NAMES)} at the root, "
            f"splits/{{{','.join(SPLIT_NAMES)}}} and failures/{sorted(FAILURE_NAMES)}"
        )
    obj = group[name]
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"data set {str(path)!r}: {where}{name!r} is a group; expected an array")
    try:
        value = obj.asstr()[()] if name == "status" else obj[()]
    except Exception as exc:  # checksum mismatch, truncated chunk, bad filter ... (OSError, RuntimeError)
        raise DatasetError(f"data set {str(path)!r}: cannot read {where}{name!r} (corrupt or truncated file): {exc}") from exc
    value = np.asarray(value)
    if value.ndim != ndim:
        raise DatasetError(f"data set {str(path)!r}: {where}{name!r} has {value.ndim} dimensions; expected {ndim}")
    if name == "status":
        value = value.astype(str)
    return value


def read_dataset(path: str | os.PathLike) -> GeneratedDataset:
    """Read and validate a data set written by :func:`write_dataset`.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    GeneratedDataset
        Arrays as NumPy arrays, the :class:`~trc.problem.Problem` rebuilt from the ``problem``
        attribute, every file attribute in ``attrs``.

    Raises
    ------
    DatasetError
        If the file is missing, truncated, corrupt (checksum mismatch), not HDF5, written by a
        newer schema, lacks a required array or attribute, has arrays whose shapes disagree,
        holds non-finite trajectories, or describes a problem that cannot be rebuilt (e.g. an
        unknown plant). The message names the file and the problem found.
    """
    with open_h5(path) as f:
        attrs = _attrs_of(f, path)
        arrays = {name: _read_array(f, name, ndim, path, "") for name, ndim in ARRAY_NAMES.items()}
        arrays.update({name: _read_array(f, name, ndim, path, "") for name, ndim in OPTIONAL_ARRAY_NAMES.items()
                       if name in f})
        if "splits" not in f or not isinstance(f["splits"], h5py.Group):
            raise DatasetError(f"data set {str(path)!r} lacks the group 'splits'")
        splits = {name: _read_array(f["splits"], name, 1, path, "splits/") for name in SPLIT_NAMES}
        failures = {}
        if "failures" in f and isinstance(f["failures"], h5py.Group):
            failures = {name: _read_array(f["failures"], name, ndim, path, "failures/") for name, ndim in FAILURE_NAMES.items()}
    try:
        problem = Problem.from_dict(attrs["problem"])
    except TRCError as exc:
        raise DatasetError(f"data set {str(path)!r}: its problem attribute cannot be rebuilt: {exc}") from exc
    data = GeneratedDataset(
        problem=problem,
        solver=str(attrs["solver"]),
        solver_options=attrs["solver_options"],
        seed=int(attrs["seed"]),
        splits=splits,
        failures=failures,
        attrs=attrs,
        **arrays,
    )
    _check_shapes_read(data, attrs, path)
    return data


def _check_shapes_read(data: GeneratedDataset, attrs: dict, path) -> None:
    try:
        _check_shapes(data)
    except DatasetError as exc:
        raise DatasetError(f"data set {str(path)!r}: {exc}") from exc
    if attrs["num_samples"] != data.num_samples:
        raise DatasetError(f"data set {str(path)!r}: attribute num_samples={attrs['num_samples']} but the arrays hold {data.num_samples}")
    if (attrs["N"], attrs["state_dim"], attrs["control_dim"]) != (
        data.problem.horizon, data.problem.state_dim, data.problem.control_dim
    ):
        raise DatasetError(
            f"data set {str(path)!r}: attributes N={attrs['N']}, state_dim={attrs['state_dim']}, "
            f"control_dim={attrs['control_dim']} disagree with its problem "
            f"(N={data.problem.horizon}, n={data.problem.state_dim}, m={data.problem.control_dim})"
        )
    for name in ("states", "controls", "initial_states", "target_states", "costs"):
        if not np.isfinite(getattr(data, name)).all():
            raise DatasetError(f"data set {str(path)!r}: {name!r} contains NaN or infinity")
