"""Generators of optimal trajectories: solvers, checks, HDF5 storage."""

from .base import Solution, Solver, make_solver, register_solver, solver_names
from . import checks, lqr, qp, rocket  # noqa: E402,F401  (solvers register on import)
from .config import GeneratorConfig  # noqa: E402,F401
from . import nonlinear  # noqa: E402,F401  (registers "nonlinear")

__all__ = ["GeneratorConfig", "Solution", "Solver", "make_solver", "register_solver", "solver_names"]
