"""Checkpoints: the resumable training state and the exported model file.

Two files, two purposes:

``checkpoint.pt`` (training state, written atomically after every epoch)
    Everything needed to continue a run after an interruption (even ``kill -9``) and reach
    the same weights as an uninterrupted run: model and EMA weights, optimiser and scheduler
    states, the number of finished epochs and steps, early-stopping state, the metric history
    and the states of every random generator (torch, NumPy, Python, the data-order
    generator). Format tag :data:`TRAINING_STATE_FORMAT`.

``model.pt`` (the exported model, read by :func:`trc.load`)
    The problem (as a dict), the model configuration, the weights (the EMA weights when the
    run used an EMA), the TRC version and the format tag :data:`MODEL_FORMAT`.

Both hold only tensors and plain Python data, so they are read with
``torch.load(..., weights_only=True)``: loading a checkpoint never runs pickled code.
Every failure to read (missing, truncated or foreign file, wrong format, missing keys) is a
:class:`~dynamics.errors.CheckpointError` naming the file and what was expected.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dynamics.errors import CheckpointError

from ..io import atomic_torch_save

__all__ = [
    "MODEL_FORMAT",
    "TRAINING_STATE_FORMAT",
    "MODEL_KEYS",
    "rng_state",
    "set_rng_state",
    "save_model_file",
    "read_model_file",
    "save_training_state",
    "read_training_state",
]

#: Format tag of exported model files (``model.pt``).
MODEL_FORMAT = "trc-model/1"
#: Format tag of resumable training states (``checkpoint.pt``).
TRAINING_STATE_FORMAT = "trc-training-state/1"
#: Keys every model file holds.
MODEL_KEYS = ("format", "trc_version", "model_class", "model_config", "problem", "state_dict")
_STATE_KEYS = ("format", "epoch", "step", "model", "ema", "optimizer", "scheduler", "rng", "history", "config")


# --------------------------------------------------------------------------- random generators
def rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """States of the torch, CUDA, NumPy and Python generators (and the data-order one).

    NumPy's and Python's states are converted to tensors and tuples so the result can be
    saved and loaded with ``weights_only=True``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
        "loader": None if loader_generator is None else loader_generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def set_rng_state(state: Mapping, loader_generator: torch.Generator | None = None) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if loader_generator is not None and state.get("loader") is not None:
        loader_generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- reading helpers
def _load(path: str | os.PathLike, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ... : all mean "not a valid file"
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read (truncated, corrupt or not a TRC file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} holds a {type(data).__name__}; expected a dict")
    return data


def _check_format(data: dict, path, expected: str, keys, what: str) -> None:
    fmt = data.get("format")
    if fmt != expected:
        raise CheckpointError(f"{what} {str(path)!r} has format {fmt!r}; expected {expected!r}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise CheckpointError(f"{what} {str(path)!r} lacks the key(s) {missing}; expected all of {list(keys)}")


# --------------------------------------------------------------------------- model files
def save_model_file(
    path: str | os.PathLike,
    *,
    state_dict: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    problem: Mapping[str, Any],
    model_class: str = "TinyRecursiveControl",
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write an exported model atomically (see the module documentation).

    Parameters
    ----------
    path : path-like
        Output file, conventionally ``<run>/model.pt``.
    state_dict : mapping of str to Tensor
        Model weights (moved to CPU).
    model_config : mapping
        ``TRCConfig.to_dict()`` of the model.
    problem : mapping
        ``Problem.to_dict()`` of the problem it was trained on.
    model_class : str
        Class name of the model.
    metadata : mapping, optional
        Plain data stored alongside (training summary, data set path, ...).
    """
    from .. import __version__

    payload = {
        "format": MODEL_FORMAT,
        "trc_version": __version__,
        "model_class": model_class,
        "model_config": dict(model_config),
        "problem": dict(problem),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "metadata": dict(metadata or {}),
    }
    atomic_torch_save(payload, path)


def read_model_file(path: str | os.PathLike) -> dict:
    """Read and check a model file written by :func:`save_model_file`.

    Returns
    -------
    dict
        With the keys of :data:`MODEL_KEYS` and ``metadata``.

    Raises
    ------
    CheckpointError
        If the file is missing, cannot be read (truncated, corrupt, not a torch file), has
        another format tag, or lacks a key.
    """
    data = _load(path, "model file")
    _check_format(data, path, MODEL_FORMAT, MODEL_KEYS, "model file")
    for key in ("model_config", "problem", "state_dict"):
        if not isinstance(data[key], dict):
            raise CheckpointError(
                f"model file {str(path)!r}: {key!r} is a {type(data[key]).__name__}; expected a dict"
            )
    data.setdefault("metadata", {})
    return data


# --------------------------------------------------------------------------- training states
def save_training_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write a resumable training state atomically; ``state`` holds the keys listed in the module doc."""
    missing = [k for k in _STATE_KEYS if k not in state and k != "format"]
    if missing:
        raise CheckpointError(f"training state lacks the key(s) {missing}")
    atomic_torch_save({"format": TRAINING_STATE_FORMAT, **state}, path)


def read_training_state(path: str | os.PathLike) -> dict:
    """Read and check a training state written by :func:`save_training_state`.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, of another format or incomplete.
    """
    data = _load(path, "training checkpoint")
    _check_format(data, path, TRAINING_STATE_FORMAT, _STATE_KEYS, "training checkpoint")
    return data
