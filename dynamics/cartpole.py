"""Cart-pole: a pole hinged on a cart that a horizontal force pushes along a track.

Equations of Barto, Sutton & Anderson (1983) in the corrected form of Florian (2007), for a
uniform pole of half-length ``l`` (pivot to centre of mass) and frictionless joints, plus
optional *viscous* friction at the cart and the hinge (from Lagrange's equations with the
Rayleigh dissipation function ``(b_c x'^2 + b_p theta'^2) / 2``)::

    (m_c + m_p) x''          + m_p l cos(theta) theta'' = u + m_p l theta'^2 sin(theta) - b_c x'
    m_p l cos(theta) x''     + (4/3) m_p l^2 theta''    = m_p g l sin(theta) - b_p theta'

with ``theta = 0`` upright and ``theta > 0`` leaning towards ``+x`` (Barto's convention, also
Gymnasium's ``CartPole-v1``). A swing-up goes from ``theta = pi`` to ``theta = 0``.
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError
from .pendulum import _check_params, _symmetric_bounds
from .plant import Plant
from .registry import register

__all__ = ["CartPole"]


@register("cartpole")
class CartPole(Plant):
    r"""Cart-pole with a uniform pole and optional viscous friction.

    State ``x = (x, x_dot, theta, theta_dot)``: cart position (m), cart velocity (m/s), pole
    angle from upright (rad, positive towards ``+x``), pole angular velocity (rad/s). Control
    ``u = (force,)``: horizontal force on the cart in N.

    Solving the two equations of motion of the module docstring for the accelerations
    (Florian 2007, with the Coulomb friction coefficients set to zero)::

        theta'' = (g sin(theta) + cos(theta) (-u - m_p l theta'^2 sin(theta)) / (m_c + m_p))
                  / (l (4/3 - m_p cos(theta)^2 / (m_c + m_p)))
        x''     = (u + m_p l (theta'^2 sin(theta) - theta'' cos(theta))) / (m_c + m_p)

    when ``b_c = b_p = 0``. The implementation solves the 2x2 mass-matrix system in closed
    form (its determinant ``(m_c + m_p) (4/3) m_p l^2 - (m_p l cos(theta))^2`` is positive).

    Parameters
    ----------
    m_c : float
        Cart mass in kg, > 0. Default 1.0 (Barto et al.).
    m_p : float
        Pole mass in kg, > 0. Default 0.1.
    l : float
        Pole **half**-length in m (pivot to centre of mass), > 0; the pole is ``2 l`` long
        and its inertia about the centre of mass is ``m_p l**2 / 3``. Default 0.5.
    g : float
        Gravitational acceleration in m/s^2, >= 0. Default 9.8 (Barto et al.).
    b_c : float
        Viscous friction of the cart on the track in N s/m, >= 0. Default 0.
    b_p : float
        Viscous friction of the hinge in N m s/rad, >= 0. Default 0.
    u_max : float, optional
        Force bound in N; ``u_min`` defaults to ``-u_max``. Default unbounded (Barto et al.
        apply +-10 N).
    u_min : float, optional
        Lower force bound in N, when it is not ``-u_max``.
    track_limit : float, optional
        Half-length of the track in m: sets the state bounds ``|x| <= track_limit`` (Barto et
        al. use 2.4). Give either this or ``x_min``/``x_max``.
    **kwargs
        ``dt``, state bounds and integrator options of :class:`~dynamics.Plant`.

    Raises
    ------
    ConfigError
        If a parameter is out of range, or ``track_limit`` is combined with ``x_min``/``x_max``.
    NonFiniteError
        If a parameter is NaN or infinite.

    References
    ----------
    A. G. Barto, R. S. Sutton and C. W. Anderson, "Neuronlike adaptive elements that can solve
    difficult learning control problems", *IEEE Trans. SMC* 13(5) (1983) 834-846.
    R. V. Florian, "Correct equations for the dynamics of the cart-pole system", Center for
    Cognitive and Neural Studies (Coneural), Romania, tech. rep. (2007).

    Examples
    --------
    >>> import dynamics
    >>> plant = dynamics.make("cartpole", u_max=10.0, track_limit=2.4, dt=0.02)
    >>> plant.x_max.tolist()[0]
    2.4000000953674316
    """

    state_names = ("x", "x_dot", "theta", "theta_dot")
    state_units = ("m", "m/s", "rad", "rad/s")
    control_names = ("force",)
    control_units = ("N",)

    def __init__(
        self,
        m_c: float = 1.0,
        m_p: float = 0.1,
        l: float = 0.5,
        g: float = 9.8,
        b_c: float = 0.0,
        b_p: float = 0.0,
        *,
        u_max=None,
        u_min=None,
        track_limit: float | None = None,
        **kwargs,
    ):
        _check_params(self.name, {"m_c": m_c, "m_p": m_p, "l": l}, {"g": g, "b_c": b_c, "b_p": b_p})
        if track_limit is not None:
            if "x_min" in kwargs or "x_max" in kwargs:
                raise ConfigError(f"{self.name}: give either track_limit or x_min/x_max, not both")
            _check_params(self.name, {"track_limit": track_limit}, {})
            kwargs["x_min"] = [-track_limit, -math.inf, -math.inf, -math.inf]
            kwargs["x_max"] = [track_limit, math.inf, math.inf, math.inf]
        u_min, u_max = _symmetric_bounds(u_min, u_max)
        super().__init__(u_min=u_min, u_max=u_max, **kwargs)
        self.set_params(m_c=m_c, m_p=m_p, l=l, g=g, b_c=b_c, b_p=b_p)

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(x_dot, x'', theta_dot, theta'')``; shapes as in :meth:`Plant.f`."""
        x_dot, theta, theta_dot = x[:, 1], x[:, 2], x[:, 3]
        s, c = torch.sin(theta), torch.cos(theta)
        total = self.m_c + self.m_p
        ml = self.m_p * self.l
        # Pole inertia about the hinge. Products, not ``** 2``, of the 0-d parameter buffers:
        # TorchInductor (AOTInductor exports) cannot lower ``pow`` of a folded constant.
        inertia = (4.0 / 3.0) * self.m_p * self.l * self.l
        r_x = u[:, 0] + ml * theta_dot**2 * s - self.b_c * x_dot
        r_theta = ml * self.g * s - self.b_p * theta_dot
        det = total * inertia - (ml * c) ** 2
        x_acc = (inertia * r_x - ml * c * r_theta) / det
        theta_acc = (total * r_theta - ml * c * r_x) / det
        return torch.stack((x_dot, x_acc, theta_dot, theta_acc), dim=-1)
