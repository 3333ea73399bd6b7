"""The resumable training state (``checkpoint.pt``), written atomically after every epoch.

It holds everything needed to continue a run after an interruption (even ``kill -9``) and
reach the same weights as an uninterrupted run: model and EMA weights, optimiser and scheduler
states, the number of finished epochs and steps, early-stopping state, the metric history and
the states of every random generator (torch, NumPy, Python, the data-order generator). Format
tag :data:`TRAINING_STATE_FORMAT`. The trained policy itself goes to the model file
(:mod:`trc.model_file`).

It holds only tensors and plain Python data, so it is read with
``torch.load(..., weights_only=True)``: loading a checkpoint never runs pickled code. Every
failure to read (missing, truncated or foreign file, wrong format, missing keys) is a
:class:`~dynamics.errors.CheckpointError` naming the file and what was expected.
"""

from __future__ import annotations

import os
import random
from typing import Any, Mapping

import numpy as np
import torch

from dynamics.errors import CheckpointError

from ..io import atomic_torch_save
from ..model_file import read_torch_file

__all__ = [
    "TRAINING_STATE_FORMAT",
    "rng_state",
    "set_rng_state",
    "save_training_state",
    "read_training_state",
]

#: Format tag of resumable training states (``checkpoint.pt``).
TRAINING_STATE_FORMAT = "trc-training-state/1"
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
def _check_format(data: dict, path, expected: str, keys, what: str) -> None:
    fmt = data.get("format")
    if fmt != expected:
        raise CheckpointError(f"{what} {str(path)!r} has format {fmt!r}; expected {expected!r}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise CheckpointError(f"{what} {str(path)!r} lacks the key(s) {missing}; expected all of {list(keys)}")


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
    data = read_torch_file(path, "training checkpoint")
    _check_format(data, path, TRAINING_STATE_FORMAT, _STATE_KEYS, "training checkpoint")
    return data
