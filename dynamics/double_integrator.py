"""Double integrator ``x'' = u``: position and velocity of a unit mass pushed by a force."""

import torch

from .plant import Plant
from .registry import register

__all__ = ["DoubleIntegrator"]


@register("double_integrator")
class DoubleIntegrator(Plant):
    """Double integrator: state ``x = (position, velocity)``, control ``u = acceleration``.

    ``f(x, u) = (x[1], u[0])``; with a zero-order hold the exact discretisation is
    ``A = [[1, dt], [0, 1]]``, ``B = [[dt**2 / 2], [dt]]`` (Franklin, Powell & Workman,
    *Digital Control of Dynamic Systems*, 3rd ed., sec. 4.3), which the default method
    ``"exact"`` (:mod:`dynamics.zoh`) computes and RK4 also reproduces.

    Parameters
    ----------
    **kwargs
        ``dt``, bounds and integrator options of :class:`~dynamics.Plant`.
    """

    state_names = ("position", "velocity")
    state_units = ("m", "m/s")
    control_names = ("acceleration",)
    control_units = ("m/s^2",)

    def __init__(self, **kwargs):
        kwargs.setdefault("method", "exact")
        super().__init__(**kwargs)

    def linear_matrices(self):
        A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=self.u_min.dtype, device=self.u_min.device)
        B = torch.tensor([[0.0], [1.0]], dtype=self.u_min.dtype, device=self.u_min.device)
        return A, B

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.stack((x[:, 1], u[:, 0]), dim=-1)
