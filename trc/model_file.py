"""The model file (``model.pt``): one format for the policies of every problem kind.

A model file holds only tensors and plain Python data, read with
``torch.load(..., weights_only=True)`` (loading a model file never runs pickled code):

==============  ======================================================================
key             content
==============  ======================================================================
``format``      :data:`MODEL_FORMAT`
``trc_version`` the version of TRC that wrote it
``kind``        the problem kind (:mod:`trc.kinds`): ``continuous``, ``discrete``, ``libero``
``model_class`` the class of the policy, e.g. ``TinyRecursiveControl``
``model_config`` the policy's configuration (plain data)
``problem``     the problem it was trained for (plain data)
``state_dict``  the weights, on the CPU
``sha256``      SHA-256 of the weights (:func:`weights_digest`), verified on reading
``metadata``    training summary, data set path, ... (plain data)
==============  ======================================================================

:func:`trc.load` turns a model file into the policy of its kind. Files of the previous format
``trc-model/1`` (continuous policies, no digest) are still read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dynamics.errors import CheckpointError

from .version import __version__
from .io import atomic_torch_save

__all__ = ["MODEL_FORMAT", "MODEL_KEYS", "weights_digest", "save_model_file", "read_model_file", "read_torch_file"]

#: Format tag of model files.
MODEL_FORMAT = "trc-model/2"
#: The previous format (continuous policies only, no digest); still read.
_LEGACY_FORMAT = "trc-model/1"
#: Keys every model file holds.
MODEL_KEYS = ("format", "trc_version", "kind", "model_class", "model_config", "problem", "state_dict", "sha256")


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in sorted name order.

    Parameters
    ----------
    state_dict : mapping of str to Tensor

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_torch_file(path: str | os.PathLike, what: str) -> dict:
    """``torch.load(path, weights_only=True)`` of a file that must hold a dict.

    Raises
    ------
    CheckpointError
        If the file is missing, cannot be read (truncated, corrupt, not a torch file) or does
        not hold a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ... : all mean "not a valid file"
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read (truncated, corrupt or not a TRC file): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} holds a {type(data).__name__}; expected a dict")
    return data


def _plain(value):
    """``value`` with NumPy arrays and scalars turned into lists and Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_model_file(
    path: str | os.PathLike,
    *,
    kind: str,
    model_class: str,
    state_dict: Mapping[str, torch.Tensor],
    model_config: Mapping[str, Any],
    problem: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a model file atomically (see the module documentation).

    Parameters
    ----------
    path : path-like
        Output file, conventionally ``<run>/model.pt``.
    kind : str
        Problem kind (:func:`trc.kinds.names`).
    model_class : str
        Class name of the policy.
    state_dict : mapping of str to Tensor
        The weights (copied to the CPU).
    model_config : mapping
        The policy's configuration as plain data.
    problem : mapping
        The problem as plain data.
    metadata : mapping, optional
        Plain data stored alongside (NumPy arrays are turned into lists).
    """
    weights = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    payload = {
        "format": MODEL_FORMAT,
        "trc_version": __version__,
        "kind": str(kind),
        "model_class": str(model_class),
        "model_config": _plain(dict(model_config)),
        "problem": _plain(dict(problem)),
        "state_dict": weights,
        "sha256": weights_digest(weights),
        "metadata": _plain(dict(metadata or {})),
    }
    atomic_torch_save(payload, path)


def read_model_file(path: str | os.PathLike) -> dict:
    """Read a model file, check its layout and verify the weights' SHA-256.

    Returns
    -------
    dict
        With the keys of :data:`MODEL_KEYS` and ``metadata``.

    Raises
    ------
    CheckpointError
        If the file is missing or cannot be read, has another format tag, lacks a key, or its
        weights do not match the stored SHA-256 (a corrupted file).
    """
    data = read_torch_file(path, "model file")
    fmt = data.get("format")
    if fmt == _LEGACY_FORMAT:
        data = {**data, "kind": "continuous", "sha256": None}
    elif fmt != MODEL_FORMAT:
        raise CheckpointError(f"model file {str(path)!r} has format {fmt!r}; expected {MODEL_FORMAT!r}")
    missing = [k for k in MODEL_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"model file {str(path)!r} lacks the key(s) {missing}; expected all of {list(MODEL_KEYS)}")
    for key in ("model_config", "problem", "state_dict"):
        if not isinstance(data[key], dict):
            raise CheckpointError(f"model file {str(path)!r}: {key!r} is a {type(data[key]).__name__}; expected a dict")
    if data["sha256"] is not None:
        digest = weights_digest(data["state_dict"])
        if digest != data["sha256"]:
            raise CheckpointError(
                f"model file {str(path)!r} is corrupted: the SHA-256 of its weights is {digest[:16]}..., "
                f"the file records {str(data['sha256'])[:16]}..."
            )
    data.setdefault("metadata", {})
    return data
