"""Fixed-interval rollouts that record only tensor operations: a plant's form in exported programs.

:meth:`dynamics.Plant.rollout` checks its inputs (shapes, finiteness) and, for the Adams
methods, finds the control interval of every evaluation of ``f`` from the solver's time; a
trace (:func:`torch.jit.trace`) or :func:`torch.export.export` would freeze those
data-dependent decisions. :class:`IntervalRollout` wraps a plant and takes the same steps with
tensor operations only, interval by interval, so that the rollouts of a controller's
trajectory-error feedback can be part of an exported program (``python -m trc.export``).
It steps with the plant's own helpers: :func:`dynamics.fixed_step.zoh_rollout` for the
one-step fixed-grid methods and :func:`dynamics.zoh.lifted_rollout` for the exact
zero-order hold of linear plants.
"""

from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

from .errors import ConfigError
from .fixed_step import ONE_STEP_METHODS, zoh_rollout
from .plant import EXACT, FIXED_STEP_METHODS, Plant
from .zoh import lifted_rollout

__all__ = ["IntervalRollout"]


class IntervalRollout(Plant):
    """A fixed-step plant whose rollout records only tensor operations (for traces and exports).

    ``rollout`` takes the same fixed steps as :meth:`dynamics.Plant.rollout` without its input
    checks: torchdiffeq's step function of the plant's method, interval by interval
    (:func:`dynamics.fixed_step.zoh_rollout`, also where the plant's own rollout computes those
    steps in closed form, :meth:`dynamics.Rocket.fixed_step_rollout`: its prefix sums are
    products with a constant left factor, which Inductor's own GEMM kernels do not take, so a
    batch-1 program would lose its stack-allocated buffers); for the Adams methods, one
    :func:`torchdiffeq.odeint` call per control interval on the grid
    ``[0, dt / substeps, ..., dt]`` with ``u_k`` held (the vector fields are autonomous between
    switches). Discrete-time plants step their difference equation. A linear plant with the
    ``"exact"`` method uses its lifted zero-order-hold matrices for ``horizon`` steps, computed
    here once and stored as constants (:mod:`dynamics.zoh`).

    Parameters
    ----------
    plant : dynamics.Plant
        A continuous plant with a fixed-step or the exact method, or a discrete plant.
    horizon : int, optional
        Horizon of the rollouts; needed for the exact method.

    Raises
    ------
    ConfigError
        If the plant integrates with an adaptive method, or uses the exact method and
        ``horizon`` is not given.
    """

    def __init__(self, plant: Plant, horizon: int | None = None):
        nn.Module.__init__(self)
        exact = not plant.discrete and plant.method == EXACT
        if exact and horizon is None:
            raise ConfigError(f"{plant.name}: the exact method needs the horizon of the rollouts")
        if not plant.discrete and not exact and plant.method not in FIXED_STEP_METHODS:
            raise ConfigError(f"{plant.name}: method {plant.method!r} is adaptive; IntervalRollout needs one of "
                              f"{FIXED_STEP_METHODS}")
        self.inner = plant
        self.lifted = None
        if exact:
            with torch.no_grad():
                self.lifted = tuple(t.detach().clone() for t in plant.lifted_matrices(int(horizon)))
        self.name, self.discrete = plant.name, plant.discrete
        self.state_names, self.control_names = plant.state_names, plant.control_names
        self.dt, self.method, self.substeps = plant.dt, plant.method, plant.substeps

    @property
    def steps_vector_field(self) -> bool:
        """Whether the rollouts integrate a vector field (not the lifted matrices of an exact
        zero-order hold, nor a discrete plant's difference equation)."""
        return self.lifted is None and not self.discrete

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The wrapped plant's vector field ``(batch, state_dim)`` of ``x`` ``(batch, state_dim)``
        and ``u`` ``(batch, control_dim)``."""
        return self.inner.f_unchecked(x, u)

    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The wrapped plant's next state ``(batch, state_dim)`` (discrete-time plants)."""
        return self.inner.discrete_step(x, u)

    def rollout(self, x0: torch.Tensor, controls: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        """Trajectories of ``controls`` from ``x0``, without input checks.

        Parameters
        ----------
        x0 : Tensor, shape ``(batch, state_dim)``
            Initial states.
        controls : Tensor, shape ``(batch, horizon, control_dim)``
            Control sequence, ``controls[:, k]`` held on interval ``k``.
        dt : float, optional
            Control interval in seconds; default the plant's.

        Returns
        -------
        Tensor, shape ``(batch, horizon + 1, state_dim)``
            The trajectories, ``x0`` first.
        """
        if self.lifted is not None:
            Phi, Gamma = self.lifted
            if dt is not None or controls.shape[1] != Gamma.shape[1]:
                Phi, Gamma = self.inner.lifted_matrices(controls.shape[1], dt)
            return lifted_rollout(Phi.to(x0), Gamma.to(x0), x0, controls)
        h = self.dt if dt is None else float(dt)
        if not self.discrete and self.method in ONE_STEP_METHODS:
            return zoh_rollout(self.inner.f_unchecked, x0, controls, h, self.method, self.substeps).transpose(0, 1)
        states = [x0]
        x = x0
        if not self.discrete:
            grid = torch.linspace(0.0, h, self.substeps + 1, dtype=x0.dtype, device=x0.device)
        for k in range(controls.shape[1]):
            u = controls[:, k]
            if self.discrete:
                x = self.inner.discrete_step(x, u)
            else:
                x = odeint(lambda t, y, u=u: self.inner.f_unchecked(y, u), x, grid, method=self.method)[-1]
            states.append(x)
        return torch.stack(states, dim=1)
