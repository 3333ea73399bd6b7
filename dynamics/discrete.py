"""Base class and errors of the discrete plants (grid maze, sudoku).

Discrete plants have integer states and a finite set of actions. They follow the
:class:`~dynamics.Plant` interface (batched ``step``/``rollout`` on tensors, batch first)
but are not differentiable ODE plants: ``differentiable = False`` tells the generic plant
tests and the gradient-based trainers to skip them, ``discrete = True`` makes
:meth:`~dynamics.Plant.step` call :meth:`DiscretePlant.discrete_step`.

A control ``u`` of shape ``(batch, 1)`` holds the integer action index (as a float or an
integer tensor); an index outside ``[0, num_actions)`` or a fractional one raises
:class:`InvalidActionError`.
"""

from __future__ import annotations

import torch

from .errors import DimensionError, InvalidActionError, PuzzleError
from .plant import Plant

# The errors live in dynamics.errors with the others; re-exported here for existing imports.
__all__ = ["DiscretePlant", "InvalidActionError", "PuzzleError"]


class DiscretePlant(Plant):
    """Base of plants with a finite action set and integer-valued states.

    Subclasses set ``num_actions`` and the per-instance ``state_names``, and implement
    :meth:`discrete_step`. ``dt`` is one time step (default 1).

    Notes
    -----
    :meth:`linearize` raises ``NotImplementedError``: the dynamics are piecewise constant
    in the state and the control, so Jacobians are zero or undefined.
    """

    discrete = True
    #: Plants with ``differentiable = False`` are skipped by gradient-based tests and trainers.
    differentiable = False
    #: Number of discrete actions; the control is one integer index in ``[0, num_actions)``.
    num_actions: int = 0
    control_names = ("action",)
    control_units = ("index",)

    def __init__(self, **kwargs):
        kwargs.setdefault("dt", 1.0)
        super().__init__(**kwargs)

    def action_index(self, u: torch.Tensor) -> torch.Tensor:
        """The integer actions of a control batch ``u`` of shape ``(batch, 1)`` as int64 ``(batch,)``.

        Raises
        ------
        DimensionError
            If ``u`` is not ``(batch, 1)``.
        InvalidActionError
            If an action is fractional or outside ``[0, num_actions)``.
        """
        u = torch.as_tensor(u)
        if u.ndim != 2 or u.shape[1] != 1:
            raise DimensionError(f"{self.name}: action batch has shape {tuple(u.shape)}; expected (batch, 1)")
        a = u[:, 0]
        if a.is_floating_point():
            if not torch.isfinite(a).all() or (a != torch.round(a)).any():
                bad = a[~torch.isfinite(a) | (a != torch.round(a))][:5].tolist()
                raise InvalidActionError(f"{self.name}: actions must be integers in [0, {self.num_actions}), got {bad}")
            a = a.round()
        a = a.long()
        bad = (a < 0) | (a >= self.num_actions)
        if bad.any():
            raise InvalidActionError(
                f"{self.name}: actions must be integers in [0, {self.num_actions}), got {a[bad][:5].tolist()}"
            )
        return a

    def check_control(self, u: torch.Tensor, what: str = "u") -> torch.Tensor:
        """Validate a batch of actions ``(batch, 1)``; raises :class:`InvalidActionError` on a bad index."""
        self.action_index(u)
        return torch.as_tensor(u)

    def linearize(self, x_eq, u_eq):
        raise NotImplementedError(
            f"{self.name} is a discrete plant (piecewise-constant dynamics); it has no linearisation"
        )

    def extra_repr(self) -> str:
        return f"state_dim={self.state_dim}, num_actions={self.num_actions}"
