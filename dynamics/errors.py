"""Exception hierarchy shared by :mod:`dynamics` and :mod:`trc`.

Every error a user can trigger with bad input is one of these, so callers can
catch ``TRCError`` for all of them or a specific subclass for one problem.
Messages name the received and the expected value.
"""

__all__ = [
    "TRCError",
    "DimensionError",
    "NonFiniteError",
    "UnknownNameError",
    "ConfigError",
    "UncontrollableError",
    "SolverError",
    "InfeasibleError",
    "DatasetError",
    "CheckpointError",
    "InvalidActionError",
    "PuzzleError",
]


class TRCError(Exception):
    """Base class of every error raised by TRC."""


class DimensionError(TRCError, ValueError):
    """An array has the wrong shape, e.g. ``x`` of shape ``(batch, 3)`` for a 2-state plant."""


class NonFiniteError(TRCError, ValueError):
    """A state, control or parameter contains NaN or infinity."""


class UnknownNameError(TRCError, KeyError):
    """A name (plant, solver, preset, ...) is not registered; the message lists the choices."""

    def __str__(self):  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class ConfigError(TRCError, ValueError):
    """A configuration (YAML file or dataclass) is malformed or has unknown keys."""


class UncontrollableError(TRCError, ValueError):
    """The pair ``(A, B)`` is not controllable (or not stabilisable) where it must be."""


class SolverError(TRCError, RuntimeError):
    """An optimal-control solver failed or returned a solution that does not pass its checks."""


class InfeasibleError(SolverError):
    """The optimal-control problem has no feasible solution (e.g. incompatible bounds)."""


class DatasetError(TRCError, OSError):
    """An HDF5 data set is missing, corrupt, truncated or does not follow the schema."""


class CheckpointError(TRCError, OSError):
    """A checkpoint is missing, corrupt or does not match the model or plant it is loaded into."""


class InvalidActionError(TRCError, ValueError):
    """An action is not in the plant's action set (e.g. action 4 in a four-action maze)."""


class PuzzleError(TRCError, ValueError):
    """A maze or sudoku instance is malformed (start on a wall, conflicting givens, no or
    several solutions, digits out of range, ...)."""
