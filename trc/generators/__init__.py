"""Generators of optimal trajectories: solvers, checks, HDF5 storage."""

from .base import Solution, Solver, make_solver, register_solver, solver_names

__all__ = ["Solution", "Solver", "make_solver", "register_solver", "solver_names"]
