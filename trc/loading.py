"""``trc.load``: a trained model from its ``model.pt``, ready for inference.

>>> import trc
>>> model = trc.load("runs/double_integrator/model.pt")              # doctest: +SKIP
>>> u = model(x0, x_target)      # (batch, horizon, control_dim)      # doctest: +SKIP
>>> model.plant, model.config, model.problem                         # doctest: +SKIP
"""

from __future__ import annotations

import os

import torch

from dynamics.errors import CheckpointError, TRCError

__all__ = ["load", "model_from_payload"]


def model_from_payload(payload: dict, source: str = "<dict>"):
    """Build the model stored in a model-file payload (see :mod:`trc.training.checkpoint`).

    Raises
    ------
    CheckpointError
        If the model class is unknown, the problem or configuration is invalid, or the
        weights do not fit the model (missing, unexpected or mis-shaped tensors).
    """
    from .models import TinyRecursiveControl
    from .problem import Problem

    if payload.get("model_class") != "TinyRecursiveControl":
        raise CheckpointError(
            f"{source}: model class {payload.get('model_class')!r} is not supported; expected 'TinyRecursiveControl'"
        )
    try:
        problem = Problem.from_dict(payload["problem"])
        model = TinyRecursiveControl.from_problem(problem, payload["model_config"])
    except TRCError as exc:
        raise CheckpointError(f"{source}: its problem or model configuration is invalid: {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: the weights do not fit the model it describes: {exc}") from exc
    model.problem = problem
    model.metadata = dict(payload.get("metadata") or {})
    model.trc_version = payload.get("trc_version")
    return model


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load a trained TRC model written by ``python -m trc.train`` (its ``model.pt``).

    Parameters
    ----------
    path : str or PathLike
        The model file.
    map_location : str or torch.device
        Device of the returned model (default CPU).

    Returns
    -------
    trc.models.TinyRecursiveControl
        In eval mode, with its plant (``model.plant``), configuration (``model.config``), the
        problem it was trained for (``model.problem``) and the training metadata
        (``model.metadata``). Calling it, ``model(x0, target)`` returns the controls
        ``(batch, horizon, control_dim)``.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or corrupt, not a TRC model file (format tag), or its
        weights do not fit the model it describes.
    """
    from .training.checkpoint import read_model_file

    payload = read_model_file(path)
    model = model_from_payload(payload, source=f"model file {str(path)!r}")
    return model.to(map_location).eval()
