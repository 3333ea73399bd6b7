"""Forced Van der Pol oscillator ``x'' - mu (1 - x^2) x' + x = u``."""

import torch

from .plant import Plant
from .registry import register

__all__ = ["VanDerPol"]


@register("van_der_pol")
class VanDerPol(Plant):
    """Forced Van der Pol oscillator (van der Pol, *Phil. Mag.* 2 (1926) 978).

    State ``x = (position, velocity)``, control ``u`` an additive force per unit mass:
    ``f(x, u) = (x[1], mu (1 - x[0]**2) x[1] - x[0] + u[0])``.

    Parameters
    ----------
    mu : float
        Non-linear damping coefficient (dimensionless), default 1.
    **kwargs
        ``dt``, bounds and integrator options of :class:`~dynamics.Plant`.
    """

    state_names = ("position", "velocity")
    state_units = ("m", "m/s")
    control_names = ("force",)
    control_units = ("m/s^2",)

    def __init__(self, mu: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.set_params(mu=mu)

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        p, v = x[:, 0], x[:, 1]
        return torch.stack((v, self.mu * (1 - p**2) * v - p + u[:, 0]), dim=-1)
