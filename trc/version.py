"""The version of TRC (recorded in data sets and model files), and the commit of a source tree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__version__ = "0.1.0"


def source_commit(path: str | os.PathLike | None = None) -> str:
    """Short hash of the git commit checked out at ``path`` (default: this package's folder), as
    benchmarks record it beside their numbers; ``"unknown"`` outside a git checkout or without git."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
