"""Torque-driven pendulum: a rigid body swinging about a fixed pivot.

Equation of motion (Tedrake, *Underactuated Robotics*, ch. 2 "The Simple Pendulum", eq. 2.1,
extended to a rigid body with centre of mass at ``lc`` and inertia ``I`` about the pivot)::

    I theta'' = u - m g lc sin(theta) - b theta'

with ``theta = 0`` hanging straight down and ``theta = pi`` upright, so a swing-up goes from
``theta = 0`` to ``theta = pi``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ConfigError, NonFiniteError
from .plant import Plant
from .registry import register

__all__ = ["Pendulum"]


def _check_params(plant: str, positive: dict, nonnegative: dict) -> None:
    """Raise if a physical parameter is non-finite, non-positive or negative.

    Raises
    ------
    NonFiniteError
        If a value is NaN or infinite.
    ConfigError
        If a value in ``positive`` is ``<= 0`` or one in ``nonnegative`` is ``< 0``.
    """
    for key, value in {**positive, **nonnegative}.items():
        if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
            raise ConfigError(f"{plant}: parameter {key!r} must be a real number, got {value!r}")
        if not math.isfinite(value):
            raise NonFiniteError(f"{plant}: parameter {key!r} must be finite, got {value!r}")
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{plant}: parameter {key!r} must be > 0, got {value!r}")
    for key, value in nonnegative.items():
        if not value >= 0:
            raise ConfigError(f"{plant}: parameter {key!r} must be >= 0, got {value!r}")


def _symmetric_bounds(u_min, u_max):
    """``u_min`` defaulting to ``-u_max`` when only the upper bound is given."""
    if u_min is None and u_max is not None:
        u_min = (-np.asarray(u_max, dtype=float)).tolist()
    return u_min, u_max


@register("pendulum")
class Pendulum(Plant):
    r"""Torque-driven pendulum with viscous damping.

    State ``x = (theta, omega)``: angle in rad (``0`` hanging down, ``pi`` upright) and
    angular velocity in rad/s. Control ``u = (torque,)`` in N m at the pivot.

    .. math::

        \dot\theta = \omega, \qquad
        I \dot\omega = u - m g l_c \sin\theta - b \omega

    The defaults describe a uniform rod of mass 1 kg and length 1 m: ``lc = l / 2`` and
    ``I = m l**2 / 3``. Linearised at the upright equilibrium ``(pi, 0)`` the pendulum is
    unstable with eigenvalues ``+-sqrt(m g lc / I)`` (for ``b = 0``).

    Parameters
    ----------
    m : float
        Mass in kg, > 0. Default 1.
    l : float
        Length in m, > 0 (sets the defaults of ``lc`` and ``I``). Default 1.
    lc : float, optional
        Distance from the pivot to the centre of mass in m, >= 0. Default ``l / 2``.
    I : float, optional
        Moment of inertia about the pivot in kg m^2; must satisfy ``I >= m lc**2`` (parallel
        axis theorem). Default ``m l**2 / 3`` (uniform rod); give ``I = m lc**2`` for a point
        mass.
    g : float
        Gravitational acceleration in m/s^2, >= 0. Default 9.81.
    b : float
        Viscous damping at the pivot in N m s/rad, >= 0. Default 0.
    u_max : float, optional
        Torque bound in N m; ``u_min`` defaults to ``-u_max``. Default unbounded.
    u_min : float, optional
        Lower torque bound in N m, when it is not ``-u_max``.
    **kwargs
        ``dt``, state bounds and integrator options of :class:`~dynamics.Plant`.

    Raises
    ------
    ConfigError
        If a parameter is out of range (non-positive mass, ``I < m lc**2``, ...).
    NonFiniteError
        If a parameter is NaN or infinite.

    References
    ----------
    R. Tedrake, *Underactuated Robotics*, MIT course notes, ch. 2 (2023),
    https://underactuated.csail.mit.edu/pend.html

    Examples
    --------
    >>> import math, dynamics, torch
    >>> plant = dynamics.make("pendulum", u_max=2.0, dt=0.05)
    >>> plant.f(torch.tensor([[math.pi / 2, 0.0]]), torch.zeros(1, 1))  # doctest: +SKIP
    tensor([[  0.0000, -14.7150]])
    """

    state_names = ("theta", "omega")
    state_units = ("rad", "rad/s")
    control_names = ("torque",)
    control_units = ("N m",)

    def __init__(
        self,
        m: float = 1.0,
        l: float = 1.0,
        lc: float | None = None,
        I: float | None = None,
        g: float = 9.81,
        b: float = 0.0,
        *,
        u_max=None,
        u_min=None,
        **kwargs,
    ):
        _check_params(self.name, {"m": m, "l": l}, {"g": g, "b": b})
        lc = l / 2 if lc is None else lc
        I = m * l**2 / 3 if I is None else I
        _check_params(self.name, {"I": I}, {"lc": lc})
        # relative slack: parameters round-trip through float32 buffers (Plant.set_params)
        if I < m * lc**2 * (1 - 1e-6):
            raise ConfigError(
                f"{self.name}: inertia about the pivot I={I!r} kg m^2 is below m lc^2={m * lc**2!r} "
                "(parallel axis theorem); give I >= m lc^2 (I = m lc^2 for a point mass)"
            )
        u_min, u_max = _symmetric_bounds(u_min, u_max)
        super().__init__(u_min=u_min, u_max=u_max, **kwargs)
        self.set_params(m=m, l=l, lc=lc, I=I, g=g, b=b)

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(omega, (u - m g lc sin(theta) - b omega) / I)``; shapes as in :meth:`Plant.f`."""
        theta, omega = x[:, 0], x[:, 1]
        alpha = (u[:, 0] - self.m * self.g * self.lc * torch.sin(theta) - self.b * omega) / self.I
        return torch.stack((omega, alpha), dim=-1)
