"""Trajectory costs, one convention for generators, training, evaluation and reports.

Quadratic cost (the TRC convention)::

    J = dt * sum_{k=0}^{N-1} [(x_k - x*)' Q (x_k - x*) + u_k' R u_k] + (x_N - x*)' Qf (x_N - x*)

Fuel cost (rocket): the propellant mass used, ``J = m_0 - m_N`` in kilograms.
"""

from __future__ import annotations

import torch

from dynamics.errors import DimensionError

__all__ = ["quadratic_cost", "fuel_cost", "trajectory_cost"]


def _w(a, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def quadratic_cost(states, controls, target, Q, R, Qf, dt: float) -> torch.Tensor:
    """Quadratic tracking cost of a batch of trajectories.

    Parameters
    ----------
    states : Tensor, shape ``(batch, horizon + 1, state_dim)``
    controls : Tensor, shape ``(batch, horizon, control_dim)``
    target : Tensor, shape ``(batch, state_dim)``
    Q, Qf : array_like, shape ``(state_dim, state_dim)``
    R : array_like, shape ``(control_dim, control_dim)``
    dt : float
        Sample time in seconds.

    Returns
    -------
    Tensor, shape ``(batch,)``

    Raises
    ------
    DimensionError
        If the shapes do not agree.
    """
    if states.ndim != 3 or controls.ndim != 3 or target.ndim != 2:
        raise DimensionError(
            f"expected states (B, N+1, n), controls (B, N, m), target (B, n); got "
            f"{tuple(states.shape)}, {tuple(controls.shape)}, {tuple(target.shape)}"
        )
    if states.shape[1] != controls.shape[1] + 1 or states.shape[0] != controls.shape[0]:
        raise DimensionError(
            f"states {tuple(states.shape)} and controls {tuple(controls.shape)} disagree on batch or horizon"
        )
    err = states - target.unsqueeze(1)
    Q, R, Qf = _w(Q, states), _w(R, states), _w(Qf, states)
    stage = ((err[:, :-1] @ Q) * err[:, :-1]).sum(dim=(1, 2)) + ((controls @ R) * controls).sum(dim=(1, 2))
    terminal = ((err[:, -1] @ Qf) * err[:, -1]).sum(dim=1)
    return dt * stage + terminal


def fuel_cost(states: torch.Tensor, mass_index: int = -1) -> torch.Tensor:
    """Propellant used, ``m_0 - m_N`` (kg), from trajectories ``(batch, horizon + 1, state_dim)``."""
    return states[:, 0, mass_index] - states[:, -1, mass_index]


def trajectory_cost(problem, states, controls, target) -> torch.Tensor:
    """The cost ``J`` of ``problem`` (``(batch,)``) for the given trajectories; see module doc."""
    if problem.cost == "fuel":
        return fuel_cost(states)
    Q, R, Qf = problem.weights
    return quadratic_cost(states, controls, target, Q, R, Qf, problem.dt)
