"""Tiny Recursive Control: tiny recursive networks trained on optimal control solutions."""

__version__ = "0.1.0"

from dynamics.errors import *  # noqa: F401,F403
from .problem import Box, Problem
from .kinds import load, save
from .models import TinyRecursiveControl, TRCConfig  # noqa: F401

__all__ = ["Box", "Problem", "TRCConfig", "TinyRecursiveControl", "load", "save", "__version__"]
