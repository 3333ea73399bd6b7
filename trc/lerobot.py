"""LeRobot v3 data sets: an atomic writer and a validating reader (pyarrow, no ``lerobot`` import).

The layout is the one of LeRobot's ``codebase_version`` ``"v3.0"`` (Hugging Face LeRobot,
``src/lerobot/datasets/utils.py`` and ``dataset_metadata.py``; the documentation page
"LeRobotDataset v3.0"). For ``F`` frames in ``E`` episodes::

    <root>/meta/info.json                           codebase_version "v3.0", fps, features (dtype, shape,
                                                    names), totals, splits, data_path, video_path, ...
    <root>/meta/stats.json                          per feature: min, max, mean, std, count, q01 ... q99
    <root>/meta/tasks.parquet                       one row per task: task (the index, instruction text),
                                                    task_index
    <root>/meta/episodes/chunk-000/file-000.parquet one row per episode: episode_index, tasks, length,
                                                    dataset_from_index, dataset_to_index,
                                                    data/chunk_index, data/file_index,
                                                    [videos/<key>/{chunk_index, file_index,
                                                    from_timestamp, to_timestamp}],
                                                    meta/episodes/{chunk_index, file_index},
                                                    stats/<feature>/<stat>, and the caller's columns
                                                    (e.g. stage, success)
    <root>/data/chunk-000/file-000.parquet          one row per frame, episodes contiguous and in order
    <root>/videos/<key>/chunk-000/file-000.mp4      (video features only) every episode's frames, in order
    <root>/meta/trc.json                            (optional) free-form metadata of the writer

Frame columns: ``timestamp`` float32 (s), ``frame_index``, ``episode_index``, ``index``,
``task_index`` int64, ``action``, ``observation.*``, ``next.reward`` float32, ``next.done``
bool, ``complementary_info.*``. A feature of shape ``(d,)`` is a ``fixed_size_list`` column,
a feature of shape ``(1,)`` a scalar column (as LeRobot's ``datasets.Value``), an image a
``struct<bytes: binary, path: string>`` column holding PNG bytes (LeRobot's ``image`` dtype,
``datasets.Image``). Parquet files carry the ``huggingface`` schema metadata that
``datasets`` reads, so ``datasets.Dataset.from_parquet`` sees the same features.

Statistics (``meta/stats.json``) are exact over the frames: ``min``, ``max``, ``mean``,
``std`` (population, ``ddof=0``), ``count`` and the quantiles ``q01, q10, q50, q90, q99``
(``numpy.quantile``, linear), of shape ``(d,)`` for vectors and ``(1,)`` for scalars. Images
and videos: per channel, in ``[0, 1]`` (pixels / 255), shape ``(3, 1, 1)``, over at most
:data:`MAX_IMAGE_STAT_FRAMES` frames spread evenly (``count`` is the number of frames used),
as LeRobot samples frames for image statistics. LeRobot computes quantiles from histograms
and aggregates per-episode statistics, so its numbers differ from these in the last digits.

Videos (``dtype: video``) are H.264 MP4 (``libx264``, ``yuv420p``, CRF :data:`VIDEO_CRF`),
encoded and decoded by ffmpeg through ``imageio`` and ``imageio-ffmpeg`` (the ``arm`` extra);
this is lossy, images (``dtype: image``, PNG through Pillow) are not.

Errors: :class:`~dynamics.errors.DatasetError` for a malformed data set (in memory or on disk),
:class:`~dynamics.errors.DimensionError` for arrays of the wrong shape or ragged lengths,
:class:`~dynamics.errors.NonFiniteError` for NaN or infinite values,
:class:`~dynamics.errors.ConfigError` for a bad ``root``, ``fps`` or an existing ``root``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io as _io
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dynamics.errors import ConfigError, DatasetError, DimensionError, NonFiniteError

from .io import atomic_directory, check_output_name, output_lock

__all__ = [
    "CODEBASE_VERSION",
    "INFO_PATH",
    "STATS_PATH",
    "TASKS_PATH",
    "TRC_META_PATH",
    "DATA_PATH",
    "VIDEO_PATH",
    "EPISODES_PATH",
    "DEFAULT_FEATURES",
    "REQUIRED_COLUMNS",
    "STAGES",
    "QUANTILES",
    "MAX_IMAGE_STAT_FRAMES",
    "VIDEO_CRF",
    "LeRobotDataset",
    "write_dataset",
    "read_dataset",
    "feature_stats",
    "video_available",
]

#: The LeRobot format version written and the only one read.
CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
#: Free-form metadata of the writer (not part of LeRobot's layout; LeRobot ignores it).
TRC_META_PATH = "meta/trc.json"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
#: LeRobot's defaults of ``meta/info.json`` (files per chunk folder, file sizes in MB).
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200

#: The index columns every LeRobot frame has (LeRobot's ``DEFAULT_FEATURES``).
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
#: Frame columns :func:`write_dataset` requires.
REQUIRED_COLUMNS = ("episode_index", "frame_index", "task_index", "action")
#: Scalar per-frame columns of a fixed dtype (returned as ``(F,)`` arrays).
_SCALARS = {
    "timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
    "task_index": "int64", "next.reward": "float32", "next.done": "bool",
    "complementary_info.is_intervention": "bool", "complementary_info.value": "float32",
    "complementary_info.advantage": "float32", "complementary_info.indicator": "bool",
}
#: Values of the per-episode column ``stage`` (the three stages of RECAP, arXiv 2511.14759).
STAGES = ("demos", "corrections", "autonomous")
#: Quantiles of ``meta/stats.json`` (LeRobot's ``DEFAULT_QUANTILES``).
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_Q_KEYS = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *_Q_KEYS)
#: Frames used at most for the statistics of one image feature (spread evenly).
MAX_IMAGE_STAT_FRAMES = 256
_MAX_EPISODE_IMAGE_STAT_FRAMES = 16
#: Constant rate factor of the H.264 videos (0 lossless luma, 51 worst; x264's default is 23).
VIDEO_CRF = 10
_VIDEO_CODEC = "libx264"
_VIDEO_PIX_FMT = "yuv420p"
_ROWS_PER_GROUP = 4096
_FLOAT_DTYPES = ("float32", "float64")
_INT_DTYPES = ("int64", "int32")
_EPISODE_STANDARD = ("episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index",
                     "data/chunk_index", "data/file_index", "meta/episodes/chunk_index", "meta/episodes/file_index")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


# ---------------------------------------------------------------------------- the data set in memory
@dataclass
class LeRobotDataset:
    """A LeRobot v3 data set read into memory (:func:`read_dataset`).

    Attributes
    ----------
    root : pathlib.Path
        The data set's folder.
    info : dict
        ``meta/info.json`` as written (``features`` with ``dtype``, ``shape``, ``names``).
    frames : dict of str to ndarray
        One array per frame column, first axis the frame (``F`` frames, episodes contiguous
        and in order): scalars ``(F,)``, vectors ``(F, d)``, images and videos
        ``(F, H, W, 3)`` uint8. ``float32``/``float64``, ``int64``, ``bool`` or ``str`` as
        the feature's dtype says.
    episodes : dict of str to ndarray
        One array per ``meta/episodes`` column, first axis the episode (``E,``): the
        standard columns (``episode_index``, ``length``, ``dataset_from_index``, ...,
        ``tasks`` as an object array of lists of str) and the writer's own (``stage``,
        ``success``, ...). The per-episode statistics (``stats/...``) are left out.
    tasks : list of str
        ``tasks[i]`` is the instruction of ``task_index`` ``i``.
    stats : dict
        ``meta/stats.json``: ``stats[feature][stat]`` as float64 arrays (``count`` int64).
    metadata : dict
        ``meta/trc.json`` (empty if the writer gave none).
    """

    root: Path
    info: dict
    frames: dict
    episodes: dict
    tasks: list
    stats: dict
    metadata: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        """Number of frames ``F``."""
        return int(self.info["total_frames"])

    @property
    def num_episodes(self) -> int:
        """Number of episodes ``E``."""
        return int(self.info["total_episodes"])

    @property
    def fps(self) -> float:
        """Frames per second."""
        return float(self.info["fps"])

    def episode(self, i: int) -> dict:
        """The frame columns of episode ``i`` (views into :attr:`frames`).

        Raises
        ------
        DatasetError
            If there is no episode ``i``.
        """
        if not 0 <= int(i) < self.num_episodes:
            raise DatasetError(f"episode {i} does not exist; the data set has episodes 0..{self.num_episodes - 1}")
        a, b = int(self.episodes["dataset_from_index"][i]), int(self.episodes["dataset_to_index"][i])
        return {k: v[a:b] for k, v in self.frames.items()}


def video_available() -> bool:
    """Whether MP4 videos can be written and read here: ``imageio`` with ``imageio-ffmpeg``
    (the ``arm`` extra), whose bundled ffmpeg has the ``libx264`` encoder."""
    return all(importlib.util.find_spec(name) is not None for name in ("imageio", "imageio_ffmpeg"))


# ---------------------------------------------------------------------------- statistics
def feature_stats(values: np.ndarray, *, image: bool = False) -> dict:
    """LeRobot statistics of one feature over the frames given.

    Parameters
    ----------
    values : ndarray
        ``(n,)`` scalars, ``(n, d)`` vectors (bool and int are cast to float64), or, with
        ``image``, ``(n, H, W, C)`` uint8 images.
    image : bool
        Per-channel statistics of pixels / 255, shaped ``(C, 1, 1)``.

    Returns
    -------
    dict of str to ndarray
        ``min``, ``max``, ``mean``, ``std`` (``ddof=0``), ``count`` (``(1,)`` int64: frames)
        and ``q01``, ``q10``, ``q50``, ``q90``, ``q99`` (``numpy.quantile``, linear); shape
        ``(1,)`` for scalars, ``(d,)`` for vectors, ``(C, 1, 1)`` for images.

    Raises
    ------
    DimensionError
        If there are no frames or the array has the wrong number of dimensions.
    """
    values = np.asarray(values)
    if values.shape[:1] == (0,) or values.ndim == 0:
        raise DimensionError(f"statistics need at least one frame; got an array of shape {values.shape}")
    n = values.shape[0]
    if image:
        if values.ndim != 4:
            raise DimensionError(f"image statistics need (frames, H, W, C); got shape {values.shape}")
        if values.dtype == np.uint8:
            return _uint8_image_stats(values)
        flat = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
        shape = (values.shape[-1], 1, 1)
    else:
        if values.ndim not in (1, 2):
            raise DimensionError(f"statistics need (frames,) or (frames, d); got shape {values.shape}")
        flat = values.reshape(n, -1).astype(np.float64)
        shape = (flat.shape[1],)
    out = {
        "min": flat.min(axis=0), "max": flat.max(axis=0), "mean": flat.mean(axis=0), "std": flat.std(axis=0),
    }
    quantiles = np.quantile(flat, QUANTILES, axis=0)
    out.update({key: quantiles[i] for i, key in enumerate(_Q_KEYS)})
    out = {k: np.asarray(v, dtype=np.float64).reshape(shape) for k, v in out.items()}
    out["count"] = np.array([n], dtype=np.int64)
    return {k: out[k] for k in STAT_KEYS}


def _uint8_image_stats(values: np.ndarray) -> dict:
    """:func:`feature_stats` of uint8 images from per-channel histograms of the 256 levels:
    the same numbers as on the pixels themselves (the quantiles by the linear rule of
    ``numpy.quantile`` on the sorted pixels), in one pass of ``bincount``."""
    C = values.shape[-1]
    levels = np.arange(256, dtype=np.float64)
    out = {k: np.zeros(C) for k in ("min", "max", "mean", "std", *_Q_KEYS)}
    for c in range(C):
        counts = np.bincount(values[..., c].ravel(), minlength=256).astype(np.int64)
        N = int(counts.sum())
        cum = np.cumsum(counts)
        present = np.flatnonzero(counts)
        mean = (levels * counts).sum() / N
        out["min"][c], out["max"][c], out["mean"][c] = levels[present[0]], levels[present[-1]], mean
        out["std"][c] = np.sqrt((counts * (levels - mean) ** 2).sum() / N)
        for q, key in zip(QUANTILES, _Q_KEYS):
            pos = q * (N - 1)
            lo = int(np.floor(pos))
            hi = min(lo + 1, N - 1)
            v_lo, v_hi = levels[np.searchsorted(cum, lo, side="right")], levels[np.searchsorted(cum, hi, side="right")]
            out[key][c] = v_lo + (pos - lo) * (v_hi - v_lo)
    stats = {k: (v / 255.0).reshape(C, 1, 1) for k, v in out.items()}
    stats["count"] = np.array([values.shape[0]], dtype=np.int64)
    return {k: stats[k] for k in STAT_KEYS}


def _spread(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` frame indices spread evenly over ``range(n)``."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _stats_of(column: np.ndarray, spec: dict, limit: int) -> dict | None:
    dtype = spec["dtype"]
    if dtype == "string":
        return None
    if dtype in ("image", "video"):
        return feature_stats(column[_spread(len(column), limit)], image=True)
    return feature_stats(column)


def _episode_stats(column: np.ndarray, spec: dict, bounds: np.ndarray) -> dict:
    """:func:`feature_stats` of every episode, stacked: ``stats[key]`` has shape ``(E, *stat shape)``.

    Vectors and scalars are reduced per episode with segment operations (``reduceat``) and a
    sort within episodes for the quantiles (``numpy.quantile``'s linear rule); images episode
    by episode over at most 16 frames spread evenly.
    """
    E = len(bounds) - 1
    if spec["dtype"] in ("image", "video"):
        per = [_stats_of(column[bounds[e]:bounds[e + 1]], spec, _MAX_EPISODE_IMAGE_STAT_FRAMES) for e in range(E)]
        return {k: np.stack([p[k] for p in per]) for k in STAT_KEYS}
    x = column.reshape(len(column), -1).astype(np.float64)
    starts, lengths = bounds[:-1], np.diff(bounds)
    mean = np.add.reduceat(x, starts, axis=0) / lengths[:, None]
    dev = x - np.repeat(mean, lengths, axis=0)
    out = {
        "min": np.minimum.reduceat(x, starts, axis=0), "max": np.maximum.reduceat(x, starts, axis=0), "mean": mean,
        "std": np.sqrt(np.add.reduceat(dev * dev, starts, axis=0) / lengths[:, None]),
    }
    episode = np.repeat(np.arange(E), lengths)
    ordered = np.empty_like(x)
    for j in range(x.shape[1]):  # sort every column within its episodes
        ordered[:, j] = x[np.lexsort((x[:, j], episode)), j]
    for q, key in zip(QUANTILES, _Q_KEYS):
        pos = q * (lengths - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, lengths - 1)
        frac = (pos - lo)[:, None]
        a, b = ordered[starts + lo], ordered[starts + hi]
        out[key] = a + frac * (b - a)
    out["count"] = lengths.astype(np.int64)[:, None]
    return {k: out[k] for k in STAT_KEYS}


def _nested_column(values: np.ndarray) -> pa.Array:
    """``(E, ...)`` array as a column of (nested) fixed-size lists, one row per episode."""
    values = np.ascontiguousarray(values)
    arr = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


# ---------------------------------------------------------------------------- validation
def _check_root(root) -> Path:
    text = check_output_name(root, what="LeRobot root")
    path = Path(text)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        info = None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"LeRobot root {text!r} exists and is not a folder; expected a folder path")
    parent = Path(os.path.abspath(text)).parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"LeRobot root {text!r} cannot be created: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"LeRobot root {text!r} cannot be created: the folder {str(parent)!r} is not writable")
    return path


def _check_fps(fps) -> float | int:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise ConfigError(f"fps must be a positive number (frames per second), got {fps!r}")
    value = float(fps)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"fps must be a positive finite number (frames per second), got {fps!r}")
    return int(value) if value == int(value) else value  # LeRobot writes integer rates as int


def _check_tasks(tasks) -> list[str]:
    if isinstance(tasks, str) or not isinstance(tasks, (list, tuple)) or not tasks:
        raise DatasetError(f"tasks must be a non-empty list of instruction strings, got {tasks!r}")
    bad = [t for t in tasks if not isinstance(t, str) or not t]
    if bad:
        raise DatasetError(f"tasks must be non-empty strings; got {bad[:3]!r}")
    if len(set(tasks)) != len(tasks):
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        raise DatasetError(f"tasks must be unique (meta/tasks.parquet is indexed by the text); repeated: {dup!r}")
    return list(tasks)


def _is_string_array(a: np.ndarray) -> bool:
    return a.dtype.kind == "U" or (a.dtype.kind == "O" and a.size > 0 and all(isinstance(v, str) for v in a.ravel()))


def _infer_feature(name: str, a: np.ndarray, given: dict, video: bool) -> dict:
    """The feature of frame column ``name`` (dtype, shape, names) from its array and ``given``."""
    F = a.shape[0]
    want = given.get("dtype")
    if name in _SCALARS:
        if a.ndim != 1:
            raise DimensionError(f"frame column {name!r} has shape {a.shape}; expected ({F},)")
        dtype = _SCALARS[name]
        if want is not None and want != dtype:
            raise DatasetError(f"frame column {name!r} has the fixed dtype {dtype!r}; features gives {want!r}")
        shape, names = [1], None
    elif a.dtype == np.uint8 and a.ndim == 4:
        if a.shape[-1] != 3:
            raise DimensionError(f"image column {name!r} has shape {a.shape}; expected ({F}, H, W, 3) uint8 RGB")
        dtype = want or ("video" if video else "image")
        if dtype not in ("image", "video"):
            raise DatasetError(f"image column {name!r} must have dtype 'image' or 'video'; features gives {want!r}")
        shape, names = list(a.shape[1:]), ["height", "width", "channels"]
    elif _is_string_array(a):
        if a.ndim != 1:
            raise DimensionError(f"string column {name!r} has shape {a.shape}; expected ({F},)")
        if want not in (None, "string"):
            raise DatasetError(f"string column {name!r} must have dtype 'string'; features gives {want!r}")
        dtype, shape, names = "string", [1], None
    else:
        if a.ndim not in (1, 2):
            raise DimensionError(f"frame column {name!r} has shape {a.shape}; expected ({F},) or ({F}, d), "
                                 f"or ({F}, H, W, 3) uint8 for an image")
        if a.dtype == np.bool_:
            dtype, allowed = "bool", ("bool",)
        elif a.dtype.kind in "iu":
            dtype, allowed = "int64", _INT_DTYPES + _FLOAT_DTYPES
        elif a.dtype.kind == "f":
            dtype, allowed = "float32", _FLOAT_DTYPES
        else:
            raise DatasetError(f"frame column {name!r} has dtype {a.dtype}; expected a number, bool, str or a uint8 "
                               "image")
        if want is not None:
            if want not in allowed:
                raise DatasetError(f"frame column {name!r} of dtype {a.dtype} cannot be stored as {want!r}; "
                                   f"allowed: {list(allowed)}")
            dtype = want
        d = 1 if a.ndim == 1 else a.shape[1]
        if d < 1:
            raise DimensionError(f"frame column {name!r} has shape {a.shape}; a vector needs at least one entry")
        shape = [d]
        base = name.split(".")[-1]
        names = None if a.ndim == 1 else [f"{base}_{i}" for i in range(d)]
    if "shape" in given and list(given["shape"]) != shape:
        raise DimensionError(f"frame column {name!r} has per-frame shape {tuple(shape)}; features gives "
                             f"{tuple(given['shape'])}")
    if given.get("names") is not None:
        names = given["names"]
        size = len(names) if isinstance(names, list) else None
        if dtype not in ("image", "video") and isinstance(names, list) and size != shape[0]:
            raise DimensionError(f"features[{name!r}]['names'] has {size} names; the column has {shape[0]} entries")
    return {"dtype": dtype, "shape": shape, "names": names}


def _cast(name: str, a: np.ndarray, feature: dict) -> np.ndarray:
    dtype = feature["dtype"]
    if dtype in ("image", "video"):
        return np.ascontiguousarray(a, dtype=np.uint8)
    if dtype == "string":
        return np.asarray(a, dtype=str)
    if dtype == "bool":
        if a.dtype != np.bool_:
            if a.dtype.kind not in "iuf" or not np.isin(a, (0, 1)).all():
                raise DatasetError(f"frame column {name!r} must be bool (or 0/1); got dtype {a.dtype}")
        return a.astype(bool)
    if dtype in _INT_DTYPES:
        if a.dtype.kind not in "iu":
            raise DatasetError(f"frame column {name!r} must hold integers; got dtype {a.dtype}")
        return a.astype(dtype)
    if a.dtype.kind not in "iuf":
        raise DatasetError(f"frame column {name!r} must hold numbers; got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise NonFiniteError(f"frame column {name!r} holds {bad} NaN or infinite value(s); expected finite numbers")
    return a.astype(dtype)


def _episode_bounds(episode_index: np.ndarray) -> np.ndarray:
    """Start of each episode and the end, ``(E + 1,)``, after checking the episodes are 0, 1, ... in order."""
    F = len(episode_index)
    if episode_index[0] != 0:
        raise DatasetError(f"episode_index must start at 0 (episodes 0, 1, 2, ... in order); it starts at "
                           f"{int(episode_index[0])}")
    step = np.diff(episode_index)
    bad = np.flatnonzero((step != 0) & (step != 1))
    if bad.size:
        k = int(bad[0])
        raise DatasetError(
            f"episode_index must be contiguous and in order (each step +0 or +1); frame {k + 1} goes from episode "
            f"{int(episode_index[k])} to {int(episode_index[k + 1])}"
        )
    starts = np.concatenate([[0], np.flatnonzero(step) + 1])
    return np.append(starts, F).astype(np.int64)


def _check_frames(frames, tasks: list, fps, features, video: bool) -> tuple[dict, dict, np.ndarray]:
    """Validated, cast frame columns, their features and the episode bounds."""
    if not isinstance(frames, dict) or not frames:
        raise DatasetError(f"frames must be a dict of column name to array, got {type(frames).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frames]
    if missing:
        raise DatasetError(f"frames lack the required column(s) {missing}; required: {list(REQUIRED_COLUMNS)}, "
                           f"given: {sorted(frames)}")
    features = {} if features is None else features
    if not isinstance(features, dict):
        raise DatasetError(f"features must be a dict of column name to feature, got {type(features).__name__}")
    unknown = sorted(set(features) - set(frames) - set(DEFAULT_FEATURES) - {"next.reward", "next.done",
                                                                            "complementary_info.is_intervention"})
    if unknown:
        raise DatasetError(f"features name column(s) {unknown} that frames do not have; frames: {sorted(frames)}")
    arrays = {}
    for name, value in frames.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DatasetError(f"frame column name {name!r} must be a non-empty string of letters, digits, '_', '.', "
                               "'-' (no '/')")
        arrays[name] = np.asarray(value)
        if arrays[name].ndim == 0:
            raise DimensionError(f"frame column {name!r} is a scalar; expected an array with one row per frame")
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    F = lengths["episode_index"]
    ragged = {k: v for k, v in lengths.items() if v != F}
    if ragged:
        raise DimensionError(f"frame columns disagree on the number of frames: episode_index has {F}, "
                             f"{ragged} differ")
    if F == 0:
        raise DatasetError("frames hold no frame; a data set needs at least one")
    if arrays["action"].ndim != 2:
        raise DimensionError(f"action has shape {arrays['action'].shape}; expected ({F}, action_dim)")
    for name in ("episode_index", "frame_index", "task_index", "index"):
        if name in arrays and (arrays[name].ndim != 1 or arrays[name].dtype.kind not in "iu"):
            raise DatasetError(f"{name} must be a 1-D integer array ({F},); got dtype {arrays[name].dtype}, "
                               f"shape {arrays[name].shape}")
    for name, spec in features.items():
        if not isinstance(spec, dict):
            raise DatasetError(f"features[{name!r}] must be a dict with dtype/shape/names, got {spec!r}")
    bounds = _episode_bounds(arrays["episode_index"])
    starts = np.repeat(bounds[:-1], np.diff(bounds))
    expected_frame = np.arange(F) - starts
    wrong = np.flatnonzero(arrays["frame_index"] != expected_frame)
    if wrong.size:
        k = int(wrong[0])
        raise DatasetError(
            f"frame_index must be 0 .. length - 1 within each episode; frame {k} (episode "
            f"{int(arrays['episode_index'][k])}) has frame_index {int(arrays['frame_index'][k])}, expected "
            f"{int(expected_frame[k])}"
        )
    task_index = arrays["task_index"]
    bad = np.flatnonzero((task_index < 0) | (task_index >= len(tasks)))
    if bad.size:
        raise DatasetError(f"task_index {int(task_index[bad[0]])} (frame {int(bad[0])}) is unknown; tasks has "
                           f"{len(tasks)} entries, so task_index must lie in [0, {len(tasks)})")
    if "index" in arrays and not np.array_equal(arrays["index"], np.arange(F)):
        raise DatasetError("index must be the global frame index 0 .. F - 1")
    # Defaults (LeRobot's DEFAULT_FEATURES plus reward, done, intervention).
    arrays.setdefault("index", np.arange(F, dtype=np.int64))
    arrays.setdefault("timestamp", (arrays["frame_index"] / float(fps)).astype(np.float32))
    arrays.setdefault("next.reward", np.zeros(F, dtype=np.float32))
    done = np.zeros(F, dtype=bool)
    done[bounds[1:] - 1] = True
    arrays.setdefault("next.done", done)
    arrays.setdefault("complementary_info.is_intervention", np.zeros(F, dtype=bool))
    feats, cast = {}, {}
    order = list(DEFAULT_FEATURES) + [n for n in arrays if n not in DEFAULT_FEATURES]
    for name in order:
        feats[name] = _infer_feature(name, arrays[name], features.get(name, {}), video)
        cast[name] = _cast(name, arrays[name], feats[name])
        for key in ("info",):
            if key in features.get(name, {}):
                feats[name][key] = features[name][key]
    if not np.isfinite(cast["timestamp"]).all() or (cast["timestamp"] < 0).any():
        raise NonFiniteError("timestamp must hold finite, non-negative seconds")
    for name, feat in feats.items():
        if feat["dtype"] == "video":
            if not video_available():
                raise ConfigError(f"column {name!r} is a video, but no MP4 encoder is available here (imageio with "
                                  "imageio-ffmpeg); store it as dtype 'image' instead")
            H, W = feat["shape"][:2]
            if H % 2 or W % 2:
                raise DimensionError(f"video column {name!r} has frames of {H} x {W}; {_VIDEO_PIX_FMT} videos need "
                                     "an even height and width (store it as dtype 'image' instead)")
    return cast, feats, bounds


def _check_episode_columns(episodes, E: int) -> dict:
    if episodes is None:
        return {}
    if not isinstance(episodes, dict):
        raise DatasetError(f"episodes must be a dict of column name to array, got {type(episodes).__name__}")
    out = {}
    for name, value in episodes.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DatasetError(f"episode column name {name!r} must be a non-empty string of letters, digits, '_', "
                               "'.', '-' (no '/')")
        if name in _EPISODE_STANDARD:
            raise DatasetError(f"episode column {name!r} is written by write_dataset itself; choose another name")
        a = np.asarray(value)
        if a.ndim == 0 or a.shape[0] != E:
            raise DimensionError(f"episode column {name!r} has shape {a.shape}; expected ({E}, ...) for {E} episodes")
        if _is_string_array(a):
            a = np.asarray(a, dtype=str)
            if a.ndim != 1:
                raise DimensionError(f"episode column {name!r} of strings has shape {a.shape}; expected ({E},)")
        elif a.dtype.kind not in "biuf":
            raise DatasetError(f"episode column {name!r} has dtype {a.dtype}; expected numbers, bool or str")
        elif a.dtype.kind == "f" and not np.isfinite(a).all():
            raise NonFiniteError(f"episode column {name!r} holds NaN or infinite values")
        if name == "stage":
            bad = sorted(set(np.asarray(a, dtype=str).tolist()) - set(STAGES))
            if bad or a.dtype.kind != "U":
                raise DatasetError(f"episode column 'stage' must hold {list(STAGES)}; got {bad or a.dtype}")
        if name == "success" and a.dtype != np.bool_:
            raise DatasetError(f"episode column 'success' must be bool; got dtype {a.dtype}")
        out[name] = a
    return out


# ---------------------------------------------------------------------------- arrow conversion
def _arrow_type(feature: dict) -> pa.DataType:
    dtype = feature["dtype"]
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype == "string":
        return pa.string()
    scalar = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "int32": pa.int32(),
              "bool": pa.bool_()}[dtype]
    if feature["shape"] == [1]:
        return scalar
    return pa.list_(scalar, feature["shape"][0])


def _hf_feature(feature: dict) -> dict:
    """The ``datasets`` feature (JSON) of a LeRobot feature, as LeRobot's ``get_hf_features_from_features``."""
    dtype = feature["dtype"]
    if dtype == "image":
        return {"_type": "Image"}
    if feature["shape"] == [1]:
        return {"dtype": dtype, "_type": "Value"}
    return {"feature": {"dtype": dtype, "_type": "Value"}, "length": feature["shape"][0], "_type": "List"}


def _png(image: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _arrow_column(a: np.ndarray, feature: dict) -> pa.Array:
    dtype = feature["dtype"]
    typ = _arrow_type(feature)
    if dtype == "image":
        return pa.array([{"bytes": _png(im), "path": None} for im in a], type=typ)
    if dtype == "string":
        return pa.array(a.tolist(), type=typ)
    if feature["shape"] == [1]:
        return pa.array(a.reshape(-1), type=typ)
    flat = pa.array(np.ascontiguousarray(a).reshape(-1), type=typ.value_type)
    return pa.FixedSizeListArray.from_arrays(flat, feature["shape"][0])


def _to_list(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


# ---------------------------------------------------------------------------- writing
def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tasks(path: Path, tasks: list) -> None:
    table = pa.table({"task_index": pa.array(np.arange(len(tasks), dtype=np.int64)), "task": pa.array(tasks)})
    pandas_meta = {  # the schema metadata pandas writes for a frame indexed by "task" (LeRobot's write_tasks)
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _encode_video(path: Path, frames: np.ndarray, fps) -> dict:
    import imageio.v2 as iio  # optional dependency (extra "arm"), checked by video_available()

    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1000)
    try:
        writer = iio.get_writer(path, format="FFMPEG", mode="I", fps=float(rate), codec=_VIDEO_CODEC,
                                pixelformat=_VIDEO_PIX_FMT, quality=None, macro_block_size=1,
                                ffmpeg_params=["-crf", str(VIDEO_CRF), "-g", "2"], ffmpeg_log_level="error")
        with contextlib.closing(writer):
            for image in frames:
                writer.append_data(np.ascontiguousarray(image))
    except (OSError, RuntimeError, ValueError) as exc:
        raise DatasetError(f"cannot encode the video {str(path)!r} with ffmpeg ({_VIDEO_CODEC}): {exc}") from exc
    return {"video.height": int(H), "video.width": int(W), "video.codec": "h264", "video.pix_fmt": _VIDEO_PIX_FMT,
            "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}


def _is_lerobot_root(path: Path) -> bool:
    return (path / INFO_PATH).is_file() or not any(path.iterdir())


def write_dataset(root, frames: dict, *, tasks: list, fps: float, episodes: dict | None = None,
                  features: dict | None = None, robot_type: str | None = None, overwrite: bool = False,
                  video: bool = False, metadata: dict | None = None) -> Path:
    """Write a LeRobot v3 data set atomically (see the module notes for the layout).

    Everything is checked before anything is written; the files go into a temporary folder
    beside ``root`` (``.<name>.<pid>-...tmpdir``), are fsynced, and the folder is renamed to
    ``root``. A writer killed midway leaves only that temporary folder, removed by the next
    write of the same ``root``.

    Parameters
    ----------
    root : str or PathLike
        The data set's folder. An existing folder is refused unless ``overwrite``; even then
        only a LeRobot data set (it has ``meta/info.json``) or an empty folder is replaced.
    frames : dict of str to array_like
        One array per column, first axis the frame (``F`` frames, episodes contiguous and in
        order). Required: ``episode_index``, ``frame_index`` (``0 .. length - 1`` in each
        episode), ``task_index`` (integers ``(F,)``) and ``action`` ``(F, action_dim)``.
        Optional, with defaults: ``timestamp`` (``frame_index / fps``, float32 s), ``index``
        (``arange(F)``), ``next.reward`` (0, float32), ``next.done`` (True on each episode's
        last frame), ``complementary_info.is_intervention`` (False). Any ``observation.*``:
        ``(F, d)`` vectors (float32 unless ``features`` says float64; integers int64) or
        ``(F, H, W, 3)`` uint8 images. RECAP columns ``complementary_info.value``,
        ``complementary_info.advantage`` (float32) and ``complementary_info.indicator`` (bool).
    tasks : list of str
        ``tasks[i]`` is the instruction of ``task_index`` ``i`` (unique, non-empty).
    fps : float
        Frames per second (written as an int when it is one, as LeRobot does).
    episodes : dict of str to array_like, optional
        Per-episode columns ``(E, ...)`` added to ``meta/episodes``: numbers, bool, str or
        numeric arrays. ``stage`` must hold :data:`STAGES`, ``success`` bool.
    features : dict, optional
        Per-column overrides of the inferred features: ``dtype`` (``"float64"`` to keep
        double precision, ``"video"`` for an image column), ``shape`` (checked), ``names``,
        ``info``.
    robot_type : str, optional
    overwrite : bool
        Replace an existing data set at ``root``.
    video : bool
        Store every image column as an MP4 video (``dtype: video``; lossy H.264).
    metadata : dict, optional
        JSON-serialisable metadata written to ``meta/trc.json``.

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    DatasetError
        A required column is missing; ``episode_index`` does not start at 0 or is not
        contiguous and in order; ``frame_index`` is not ``0 .. length - 1`` per episode;
        a ``task_index`` is not an index of ``tasks``; ``tasks`` are empty or repeated; a
        column has a dtype that cannot be stored; an episode column is invalid.
    DimensionError
        Columns disagree on the number of frames (ragged), an array has the wrong number of
        dimensions, ``features`` gives another shape, or a video frame size is odd.
    NonFiniteError
        A float column holds NaN or infinity.
    ConfigError
        ``root`` is not a folder path or cannot be created; it exists and ``overwrite`` is
        False (or it is not a LeRobot data set); ``fps`` is not a positive number; ``video``
        is asked but no MP4 encoder is installed; another process writes ``root``.
    """
    path = _check_root(root)
    fps = _check_fps(fps)
    tasks = _check_tasks(tasks)
    if video and not video_available():
        raise ConfigError("video=True needs imageio with imageio-ffmpeg (pip install imageio imageio-ffmpeg), which "
                          "is not installed here; write the images with video=False (PNG, dtype 'image')")
    if robot_type is not None and not isinstance(robot_type, str):
        raise ConfigError(f"robot_type must be a string or None, got {robot_type!r}")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise DatasetError(f"metadata must be a dict, got {type(metadata).__name__}")
        try:
            metadata_text = json.dumps(metadata, indent=1, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"metadata is not JSON-serialisable: {exc}") from exc
    cols, feats, bounds = _check_frames(frames, tasks, fps, features, video)
    E = len(bounds) - 1
    extras = _check_episode_columns(episodes, E)
    if path.exists() and not overwrite:
        raise ConfigError(f"LeRobot root {str(path)!r} already exists; refusing to replace it. Choose another "
                          "folder, remove it, or pass overwrite=True (--force on the command line)")
    if path.exists() and not _is_lerobot_root(path):
        raise ConfigError(f"LeRobot root {str(path)!r} is a non-empty folder without {INFO_PATH}; refusing to "
                          "replace it even with overwrite=True")
    # Statistics (computed before anything is written).
    stats = {}
    for name, feat in feats.items():
        s = _stats_of(cols[name], feat, MAX_IMAGE_STAT_FRAMES)
        if s is not None:
            stats[name] = s
    ep_stats = {name: _episode_stats(cols[name], feat, bounds) for name, feat in feats.items() if name in stats}

    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path), atomic_directory(path, overwrite=overwrite) as tmp:
        _write_tree(tmp, cols, feats, bounds, tasks, fps, extras, stats, ep_stats, robot_type)
        if metadata is not None:
            (tmp / TRC_META_PATH).write_text(metadata_text + "\n", encoding="utf-8")
    return path


def _write_tree(tmp: Path, cols, feats, bounds, tasks, fps, extras, stats, ep_stats, robot_type) -> None:
    E, F = len(bounds) - 1, int(bounds[-1])
    table_feats = {k: f for k, f in feats.items() if f["dtype"] != "video"}
    video_keys = [k for k, f in feats.items() if f["dtype"] == "video"]
    schema = pa.schema([(k, _arrow_type(f)) for k, f in table_feats.items()], metadata={
        "huggingface": json.dumps({"info": {"features": {k: _hf_feature(f) for k, f in table_feats.items()}}})})
    data_file = tmp / DATA_PATH.format(chunk_index=0, file_index=0)
    data_file.parent.mkdir(parents=True)
    with pq.ParquetWriter(data_file, schema, compression="snappy") as writer:
        e = 0
        while e < E:  # row groups of whole episodes, ~_ROWS_PER_GROUP rows
            stop = int(np.searchsorted(bounds, bounds[e] + _ROWS_PER_GROUP, side="right")) - 1
            stop = min(max(stop, e + 1), E)
            a, b = bounds[e], bounds[stop]
            arrays = [_arrow_column(cols[k][a:b], f) for k, f in table_feats.items()]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            e = stop
    for key in video_keys:
        feats[key]["info"] = _encode_video(tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
                                           cols[key], fps)
    # meta/episodes
    from_idx, to_idx = bounds[:-1], bounds[1:]
    ep_tasks = []
    for e in range(E):
        t = cols["task_index"][from_idx[e]:to_idx[e]]
        _, first = np.unique(t, return_index=True)
        ep_tasks.append([tasks[int(t[i])] for i in np.sort(first)])
    columns = {
        "episode_index": pa.array(np.arange(E, dtype=np.int64)),
        "tasks": pa.array(ep_tasks, type=pa.list_(pa.string())),
        "length": pa.array((to_idx - from_idx).astype(np.int64)),
        "data/chunk_index": pa.array(np.zeros(E, dtype=np.int64)),
        "data/file_index": pa.array(np.zeros(E, dtype=np.int64)),
        "dataset_from_index": pa.array(from_idx.astype(np.int64)),
        "dataset_to_index": pa.array(to_idx.astype(np.int64)),
    }
    for key in video_keys:
        columns[f"videos/{key}/chunk_index"] = pa.array(np.zeros(E, dtype=np.int64))
        columns[f"videos/{key}/file_index"] = pa.array(np.zeros(E, dtype=np.int64))
        columns[f"videos/{key}/from_timestamp"] = pa.array(from_idx / float(fps))
        columns[f"videos/{key}/to_timestamp"] = pa.array(to_idx / float(fps))
    columns["meta/episodes/chunk_index"] = pa.array(np.zeros(E, dtype=np.int64))
    columns["meta/episodes/file_index"] = pa.array(np.zeros(E, dtype=np.int64))
    for name in stats:
        for key in STAT_KEYS:
            columns[f"stats/{name}/{key}"] = _nested_column(ep_stats[name][key])
    for name, a in extras.items():
        columns[name] = pa.array(a.tolist() if a.ndim > 1 or a.dtype.kind == "U" else a)
    _write_parquet(tmp / EPISODES_PATH.format(chunk_index=0, file_index=0), pa.table(columns))
    _write_tasks(tmp / TASKS_PATH, tasks)
    _write_json(tmp / STATS_PATH, {k: {s: _to_list(v) for s, v in st.items()} for k, st in stats.items()})
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": E,
        "total_frames": F,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": fps,
        "splits": {"train": f"0:{E}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video_keys else None,
        "features": feats,
    }
    _write_json(tmp / INFO_PATH, info)


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


# ---------------------------------------------------------------------------- reading
def _load_json(path: Path, root: Path):
    rel = path.relative_to(root)
    if not path.is_file():
        raise DatasetError(f"LeRobot data set {str(root)!r} lacks {str(rel)!r}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"LeRobot data set {str(root)!r}: {str(rel)!r} is not valid JSON: {exc}") from exc


def _read_parquet(path: Path, root: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"LeRobot data set {str(root)!r}: cannot read {str(path.relative_to(root))!r} "
                           f"(corrupt or not Parquet): {exc}") from exc


def _parquet_files(folder: Path, root: Path, what: str) -> list[tuple[int, int, Path]]:
    files = []
    for p in folder.glob("chunk-*/file-*.parquet"):
        m = re.fullmatch(r"chunk-(\d+)", p.parent.name), re.fullmatch(r"file-(\d+)\.parquet", p.name)
        if m[0] and m[1]:
            files.append((int(m[0].group(1)), int(m[1].group(1)), p))
    if not files:
        raise DatasetError(f"LeRobot data set {str(root)!r} has no {what} file ({str(folder.relative_to(root))}/"
                           "chunk-<i>/file-<j>.parquet)")
    return sorted(files)


def _column_numpy(col: pa.ChunkedArray, feature: dict | None, name: str, root: Path) -> np.ndarray:
    typ = col.type
    if pa.types.is_struct(typ) and {f.name for f in typ} >= {"bytes", "path"}:
        return _decode_images(col, name, root)
    if pa.types.is_fixed_size_list(typ) and col.null_count == 0 and not pa.types.is_nested(typ.value_type):
        flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        out = flat.reshape(len(col), typ.list_size)
        if feature is not None and feature.get("dtype") in _FLOAT_DTYPES + _INT_DTYPES + ("bool",):
            out = out.astype(feature["dtype"])
        return out
    if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
        rows = col.to_pylist()
        try:
            out = np.asarray(rows)
        except ValueError as exc:
            raise DatasetError(f"LeRobot data set {str(root)!r}: column {name!r} has rows of different "
                               "lengths") from exc
        if out.dtype == object and feature is None:
            return out
        if out.dtype == object:
            raise DatasetError(f"LeRobot data set {str(root)!r}: column {name!r} has rows of different lengths")
        if feature is not None and feature.get("dtype") in _FLOAT_DTYPES + _INT_DTYPES + ("bool",):
            out = out.astype(feature["dtype"])
        return out
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return np.asarray(col.to_pylist(), dtype=str)
    out = col.to_numpy()
    if feature is not None and feature.get("dtype") in _FLOAT_DTYPES + _INT_DTYPES + ("bool",):
        out = out.astype(feature["dtype"])
    return out


def _decode_images(col: pa.ChunkedArray, name: str, root: Path) -> np.ndarray:
    images = []
    for i, cell in enumerate(col.to_pylist()):
        data = None if cell is None else cell.get("bytes")
        if data is None and cell is not None and cell.get("path"):
            p = Path(cell["path"])
            p = p if p.is_absolute() else root / p
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise DatasetError(f"LeRobot data set {str(root)!r}: image {name!r} of frame {i} names the missing "
                                   f"file {str(p)!r}") from exc
        if data is None:
            raise DatasetError(f"LeRobot data set {str(root)!r}: image {name!r} of frame {i} has neither bytes nor "
                               "path")
        try:
            with Image.open(_io.BytesIO(data)) as im:
                images.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise DatasetError(f"LeRobot data set {str(root)!r}: image {name!r} of frame {i} cannot be decoded: "
                               f"{exc}") from exc
    try:
        return np.stack(images).astype(np.uint8)
    except ValueError as exc:
        raise DatasetError(f"LeRobot data set {str(root)!r}: images of {name!r} differ in size") from exc


def _decode_video(path: Path, root: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"LeRobot data set {str(root)!r} lacks the video {str(path.relative_to(root))!r}")
    if not video_available():
        raise DatasetError(f"LeRobot data set {str(root)!r} has videos, but imageio with imageio-ffmpeg is not "
                           "installed to decode them (pip install imageio imageio-ffmpeg)")
    import imageio.v2 as iio  # optional dependency (extra "arm")

    try:
        with contextlib.closing(iio.get_reader(path, format="FFMPEG")) as reader:
            frames = [np.asarray(f)[..., :3] for f in reader]
    except (OSError, RuntimeError, ValueError) as exc:
        raise DatasetError(f"LeRobot data set {str(root)!r}: cannot decode {str(path.relative_to(root))!r}: "
                           f"{exc}") from exc
    if not frames:
        raise DatasetError(f"LeRobot data set {str(root)!r}: the video {str(path.relative_to(root))!r} has no frame")
    return np.stack(frames)


def _read_tasks(root: Path) -> list[str]:
    path = root / TASKS_PATH
    if not path.is_file():
        raise DatasetError(f"LeRobot data set {str(root)!r} lacks {TASKS_PATH!r}")
    table = _read_parquet(path, root)
    names = table.column_names
    text = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
    if text is None or "task_index" not in names:
        raise DatasetError(f"LeRobot data set {str(root)!r}: {TASKS_PATH!r} has columns {names}; expected 'task' "
                           "(the index) and 'task_index'")
    idx = np.asarray(table.column("task_index").to_numpy(), dtype=np.int64)
    texts = table.column(text).to_pylist()
    if not np.array_equal(np.sort(idx), np.arange(len(idx))):
        raise DatasetError(f"LeRobot data set {str(root)!r}: task_index of {TASKS_PATH!r} must be 0 .. "
                           f"{len(idx) - 1}; got {sorted(idx.tolist())[:10]}")
    out = [""] * len(idx)
    for i, t in zip(idx, texts):
        out[int(i)] = str(t)
    return out


def _scalar_frame(name: str, feature: dict) -> bool:
    """Whether column ``name`` is returned as ``(F,)`` (a scalar) rather than ``(F, 1)``."""
    if name in _SCALARS or feature.get("dtype") == "string":
        return True
    return list(feature.get("shape", [])) == [1] and not isinstance(feature.get("names"), (list, dict))


def read_dataset(root) -> LeRobotDataset:
    """Read and check a LeRobot v3 data set (every data file listed under ``data/``).

    Parameters
    ----------
    root : str or PathLike
        The data set's folder.

    Returns
    -------
    LeRobotDataset
        Frames as arrays (images decoded from PNG, videos from MP4), episodes, tasks, stats.

    Raises
    ------
    DatasetError
        ``root`` is not a folder; ``meta/info.json``, ``meta/stats.json``,
        ``meta/tasks.parquet``, ``meta/episodes`` or ``data`` is missing or unreadable; the
        ``codebase_version`` is not ``"v3.0"``; a feature's column is missing; the episode
        indices or lengths of ``meta/episodes`` disagree with each other, with the totals of
        ``info.json`` or with the frames of ``data``; a video has another frame count.
    """
    if isinstance(root, bytes) or not isinstance(root, (str, os.PathLike)):
        raise DatasetError(f"LeRobot root must be a folder path, got {root!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"LeRobot data set {str(root)!r} does not exist or is not a folder")
    info = _load_json(root / INFO_PATH, root)
    if not isinstance(info, dict):
        raise DatasetError(f"LeRobot data set {str(root)!r}: {INFO_PATH!r} is not a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(f"LeRobot data set {str(root)!r} has codebase_version {version!r}; this reader reads "
                           f"{CODEBASE_VERSION!r} only (convert older data sets with LeRobot's "
                           "convert_dataset_v21_to_v30)")
    need = ("fps", "features", "total_episodes", "total_frames", "total_tasks", "data_path")
    missing = [k for k in need if k not in info]
    if missing:
        raise DatasetError(f"LeRobot data set {str(root)!r}: {INFO_PATH!r} lacks {missing}")
    features = info["features"]
    if not isinstance(features, dict) or any(not isinstance(f, dict) or "dtype" not in f for f in features.values()):
        raise DatasetError(f"LeRobot data set {str(root)!r}: 'features' of {INFO_PATH!r} must map names to dicts "
                           "with a dtype")
    stats_raw = _load_json(root / STATS_PATH, root)
    tasks = _read_tasks(root)
    if len(tasks) != info["total_tasks"]:
        raise DatasetError(f"LeRobot data set {str(root)!r}: {TASKS_PATH!r} has {len(tasks)} tasks; info.json says "
                           f"total_tasks={info['total_tasks']}")

    ep_files = _parquet_files(root / "meta" / "episodes", root, "meta/episodes")
    ep_table = pa.concat_tables([_read_parquet(p, root) for *_, p in ep_files], promote_options="default")
    need_ep = ("episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index",
               "data/file_index")
    missing = [c for c in need_ep if c not in ep_table.column_names]
    if missing:
        raise DatasetError(f"LeRobot data set {str(root)!r}: meta/episodes lacks the column(s) {missing}")
    episodes = {}
    for name in ep_table.column_names:
        if name.startswith("stats/"):
            continue
        col = ep_table.column(name)
        episodes[name] = (np.asarray(col.to_pylist() + [None], dtype=object)[:-1] if name == "tasks"
                          else _column_numpy(col, None, name, root))
    E = len(ep_table)

    data_files = _parquet_files(root / "data", root, "data")
    tables, file_start, offset = [], {}, 0
    for chunk, file, p in data_files:
        t = _read_parquet(p, root)
        file_start[(chunk, file)] = (offset, offset + len(t))
        offset += len(t)
        tables.append(t)
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as exc:
        raise DatasetError(f"LeRobot data set {str(root)!r}: the data files have different columns: {exc}") from exc
    missing = [k for k, f in features.items() if f["dtype"] != "video" and k not in table.column_names]
    if missing:
        raise DatasetError(f"LeRobot data set {str(root)!r}: the data lacks the column(s) {missing} that info.json "
                           "lists in 'features'")
    F = len(table)
    _check_episodes(root, info, episodes, E, F, table, file_start)

    frames = {}
    for name in table.column_names:
        feat = features.get(name)
        arr = _column_numpy(table.column(name), feat, name, root)
        if feat is not None and not _scalar_frame(name, feat) and arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        frames[name] = arr
    fps = float(info["fps"])
    for name, feat in features.items():
        if feat["dtype"] == "video":
            frames[name] = _read_video_column(root, info, name, episodes, E, fps)
    stats = {}
    for name, st in (stats_raw or {}).items():
        if isinstance(st, dict):
            stats[name] = {k: np.atleast_1d(np.asarray(v, dtype=np.int64 if k == "count" else np.float64))
                           for k, v in st.items()}
    metadata = _load_json(root / TRC_META_PATH, root) if (root / TRC_META_PATH).is_file() else {}
    return LeRobotDataset(root=root, info=info, frames=frames, episodes=episodes, tasks=tasks, stats=stats,
                          metadata=metadata)


def _check_episodes(root, info, episodes, E, F, table, file_start) -> None:
    where = f"LeRobot data set {str(root)!r}"
    if E != info["total_episodes"] or F != info["total_frames"]:
        raise DatasetError(f"{where}: info.json says {info['total_episodes']} episodes and {info['total_frames']} "
                           f"frames; meta/episodes has {E} episodes and data has {F} frames")
    ep_index = np.asarray(episodes["episode_index"], dtype=np.int64)
    if not np.array_equal(ep_index, np.arange(E)):
        raise DatasetError(f"{where}: meta/episodes must list episodes 0 .. {E - 1} in order; got "
                           f"{ep_index[:10].tolist()}{' ...' if E > 10 else ''}")
    start = np.asarray(episodes["dataset_from_index"], dtype=np.int64)
    stop = np.asarray(episodes["dataset_to_index"], dtype=np.int64)
    length = np.asarray(episodes["length"], dtype=np.int64)
    bad = np.flatnonzero(stop - start != length)
    if bad.size:
        e = int(bad[0])
        raise DatasetError(f"{where}: episode {e} has length {int(length[e])} but spans frames "
                           f"[{int(start[e])}, {int(stop[e])})")
    bounds = np.concatenate([[0], np.cumsum(length)])
    if not (np.array_equal(start, bounds[:-1]) and bounds[-1] == F):
        raise DatasetError(f"{where}: the episodes of meta/episodes do not tile the {F} frames of data in order "
                           f"(lengths sum to {int(bounds[-1])}, first starts {start[:5].tolist()})")
    if "episode_index" not in table.column_names or "frame_index" not in table.column_names:
        raise DatasetError(f"{where}: the data lacks episode_index or frame_index")
    data_ep = np.asarray(table.column("episode_index").to_numpy(), dtype=np.int64)
    expected = np.repeat(np.arange(E), length)
    bad = np.flatnonzero(data_ep != expected)
    if bad.size:
        k = int(bad[0])
        raise DatasetError(f"{where}: frame {k} of data has episode_index {int(data_ep[k])}; meta/episodes places it "
                           f"in episode {int(expected[k])}")
    frame_index = np.asarray(table.column("frame_index").to_numpy(), dtype=np.int64)
    bad = np.flatnonzero(frame_index != np.arange(F) - np.repeat(start, length))
    if bad.size:
        k = int(bad[0])
        raise DatasetError(f"{where}: frame {k} of data has frame_index {int(frame_index[k])}; expected "
                           f"{int(k - np.repeat(start, length)[k])}")
    chunk = np.asarray(episodes["data/chunk_index"], dtype=np.int64)
    file = np.asarray(episodes["data/file_index"], dtype=np.int64)
    for e in range(E):
        span = file_start.get((int(chunk[e]), int(file[e])))
        if span is None or not (span[0] <= start[e] and stop[e] <= span[1]):
            raise DatasetError(f"{where}: episode {e} is listed in data file chunk {int(chunk[e])} file {int(file[e])}"
                               f", which does not hold its frames [{int(start[e])}, {int(stop[e])})")


def _read_video_column(root, info, key, episodes, E, fps) -> np.ndarray:
    template = info.get("video_path") or VIDEO_PATH
    cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    missing = [c for c in cols if c not in episodes]
    if missing:
        raise DatasetError(f"LeRobot data set {str(root)!r}: meta/episodes lacks {missing} of the video {key!r}")
    decoded, parts = {}, []
    length = np.asarray(episodes["length"], dtype=np.int64)
    for e in range(E):
        ref = (int(episodes[cols[0]][e]), int(episodes[cols[1]][e]))
        if ref not in decoded:
            decoded[ref] = _decode_video(root / template.format(video_key=key, chunk_index=ref[0],
                                                                file_index=ref[1]), root)
        first = int(round(float(episodes[cols[2]][e]) * fps))
        part = decoded[ref][first:first + int(length[e])]
        if len(part) != length[e]:
            raise DatasetError(f"LeRobot data set {str(root)!r}: the video {key!r} of episode {e} has {len(part)} "
                               f"frames from {first}; the episode has {int(length[e])}")
        parts.append(part)
    return np.concatenate(parts) if parts else np.zeros((0,), np.uint8)
