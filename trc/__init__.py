"""Tiny Recursive Control: tiny recursive networks trained on optimal control solutions."""

from dynamics.errors import *  # noqa: F401,F403

from .kinds import load, save
from .models import TinyRecursiveControl, TRCConfig  # noqa: F401
from .problem import Box, Problem
from .version import __version__

__all__ = ["Box", "Problem", "TRCConfig", "TinyRecursiveControl", "load", "save", "__version__"]
