"""Solver interface and registry for the optimal-trajectory generators.

A solver is built for one :class:`~trc.problem.Problem` and solves batches of instances
(initial state, target state). Register a new one with :func:`register_solver`::

    @register_solver("lqr")
    class LQRSolver(Solver):
        def solve(self, x0, target): ...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics.registry import Registry

__all__ = ["Solution", "Solver", "register_solver", "make_solver", "solver_names"]


@dataclass
class Solution:
    """Solutions of a batch of ``B`` optimal-control problems (all arrays float64 unless noted).

    Attributes
    ----------
    states : ndarray, shape ``(B, N + 1, n)``
        Optimal trajectories, re-simulated from ``controls`` through the plant.
    controls : ndarray, shape ``(B, N, m)``
    costs : ndarray, shape ``(B,)``
        The problem's cost ``J`` of each trajectory.
    success : ndarray of bool, shape ``(B,)``
        True where the solver reported an optimum and the checks passed.
    status : ndarray of str, shape ``(B,)``
        Solver status, or the reason a check failed.
    iterations : ndarray of int, shape ``(B,)``
        Solver iterations (1 for closed-form solvers).
    solve_time : ndarray, shape ``(B,)``
        Wall-clock seconds spent on each instance.
    dynamics_residual : ndarray, shape ``(B,)``, optional
        Largest gap between the solver's own predicted states and the re-simulated ones
        (NaN where the solver predicts no states).
    """

    states: np.ndarray
    controls: np.ndarray
    costs: np.ndarray
    success: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    solve_time: np.ndarray
    dynamics_residual: np.ndarray | None = None


class Solver:
    """Base class: a solver for one problem; call :meth:`solve` on batches of instances."""

    name: str = "solver"

    def __init__(self, problem, **options):
        self.problem = problem
        self.options = options

    def solve(self, x0: np.ndarray, target: np.ndarray) -> Solution:
        """Solve ``B`` instances.

        Parameters
        ----------
        x0, target : ndarray, shape ``(B, n)``
            Initial and target states.

        Returns
        -------
        Solution
        """
        raise NotImplementedError


#: The registry of solvers (:class:`dynamics.registry.Registry`).
SOLVERS: Registry[type] = Registry("solver")


def register_solver(name: str):
    """Class decorator registering a :class:`Solver` subclass under ``name``."""
    return SOLVERS.register(name)


def solver_names() -> list[str]:
    """Sorted names of the registered solvers."""
    return SOLVERS.names()


def make_solver(name: str, problem, **options) -> Solver:
    """Build the solver registered under ``name`` for ``problem``.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered; the message lists the choices.
    """
    return SOLVERS.get(name)(problem, **options)
