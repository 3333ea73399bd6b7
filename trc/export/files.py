"""Exported files: the formats and their suffixes, the metadata stored with a program, and how
a file's format is recognised.

Shared by the writers (:mod:`trc.export.formats`, :mod:`trc.export.inductor`) and the loader
(:mod:`trc.export.controller`), which therefore need not import each other.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["FORMATS", "BATCH_KEY", "STATE_DIM_KEY", "HORIZON_KEY", "format_of", "is_aoti_package"]

#: Export format -> default file suffix.
FORMATS = {"torchscript": ".ts", "onnx": ".onnx", "torch_export": ".pt2", "aoti": ".aoti.pt2"}

#: File suffix -> export format (``.pt`` is TorchScript as well; the longest match wins).
_SUFFIX_FORMAT = {".aoti.pt2": "aoti", ".ts": "torchscript", ".pt": "torchscript", ".onnx": "onnx",
                  ".pt2": "torch_export"}

#: Package metadata key of an AOTInductor program with the fixed batch size it was compiled for.
BATCH_KEY = "trc_batch"

#: Metadata key (AOTInductor) and extra file (TorchScript, torch.export) with the program's state
#: dimension, which :class:`~trc.export.controller.ExportedController` checks the inputs against
#: (an AOTInductor program does not check its input shapes itself; ONNX keeps the shapes in its
#: graph).
STATE_DIM_KEY = "trc_state_dim"

#: Metadata key and extra file of a program that takes the steps to go as a third input (a model
#: with ``time_to_go``): its horizon ``N``, the default steps to go (absent for other programs).
HORIZON_KEY = "trc_time_to_go_horizon"


def format_of(path: Path) -> str | None:
    """The export format a file name implies (longest matching suffix), or ``None``."""
    return next((fmt for suffix, fmt in _SUFFIX_FORMAT.items() if path.name.endswith(suffix)), None)


def is_aoti_package(path: Path) -> bool:
    """Whether the ``.pt2`` archive at ``path`` holds an AOTInductor program (its compiled
    model lives under ``data/aotinductor/``; a :func:`torch.export.save` archive has none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/data/aotinductor/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False
