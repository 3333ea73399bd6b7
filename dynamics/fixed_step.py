"""Zero-order-hold rollouts stepped with torchdiffeq's fixed-grid Runge-Kutta steps.

Under a zero-order hold the vector field is autonomous on each control interval, and for a
fixed-step method the time grid is known before the first step: ``substeps`` equal steps of
``dt / substeps`` per interval. :func:`zoh_rollout` therefore applies torchdiffeq's own step
function (the Butcher tableau of :func:`torchdiffeq.odeint` with the same ``method``) step by
step, holding ``u_k`` on interval ``k``. The states are those of
``odeint(field, x0, grid, method=method)`` with the zero-order-hold field, to rounding, but the
rollout

* runs only tensor operations on the states (no time-grid validation, no ``searchsorted`` of
  the switching time at every evaluation of ``f``), so it takes less than half the time of the
  ``odeint`` rollout at small batch sizes (Van der Pol, N = 100, batch 1, one thread: 13 ms
  instead of 30 ms), and
* has no data-dependent control flow, so :func:`torch.export.export`, :func:`torch.compile`
  and AOTInductor capture it whole (:class:`dynamics.interval.IntervalRollout`, the rollouts of
  the compiled controllers of :mod:`trc.export`).

torchdiffeq keeps its step functions on its solver classes (``torchdiffeq._impl``); the
project pins ``torchdiffeq<0.3`` and ``tests/test_plants.py`` checks the rollout against
``odeint`` so that a change there is caught.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torchdiffeq._impl.odeint import SOLVERS

from .errors import ConfigError, DimensionError

__all__ = ["ONE_STEP_METHODS", "TABLEAUS", "zoh_rollout", "check_dt", "check_real"]

#: torchdiffeq fixed-grid methods whose step depends on the current state only (not on a
#: history of steps, as the Adams methods do): the methods :func:`zoh_rollout` accepts.
ONE_STEP_METHODS = ("euler", "midpoint", "heun3", "rk4")

#: Butcher tableau ``(c, a, b)`` of each of :data:`ONE_STEP_METHODS` as torchdiffeq steps it
#: (``torchdiffeq._impl.fixed_grid``; its ``rk4`` is Kutta's 3/8 rule, ``rk4_alt_step_func``):
#: stage ``i`` evaluates ``f`` at ``y + h sum_j a[i][j] k_j``, at time ``t + c[i] h``, and the
#: step is ``h sum_i b[i] k_i`` (Hairer, Norsett & Wanner, *Solving Ordinary Differential
#: Equations I*, Sec. II.1). For plants whose steps have a closed form in these coefficients
#: (:meth:`dynamics.Rocket.fixed_step_rollout`); ``tests/test_rocket.py`` checks them against
#: torchdiffeq's steps.
TABLEAUS = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "heun3": ((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": ((0.0, 1 / 3, 2 / 3, 1.0), ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125)),
}


def check_dt(dt, where: str = "") -> float:
    """``dt`` as a float after checking that it is a positive finite number of seconds.

    Parameters
    ----------
    dt : float
        A real number (Python, NumPy or a one-element real tensor); not a bool or a complex.
    where : str
        Prefix of the error message (e.g. the plant's name).

    Returns
    -------
    float

    Raises
    ------
    ConfigError
        If ``dt`` is not a real number, is a bool, or is not finite and positive (NaN, 0, -0.1).
    """
    value = math.nan
    if torch.is_tensor(dt):
        if dt.numel() == 1 and not dt.is_complex() and dt.dtype != torch.bool:
            value = float(dt)
    elif isinstance(dt, numbers.Real) and not isinstance(dt, (bool, np.bool_)):
        value = float(dt)
    if not (math.isfinite(value) and value > 0):
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}dt must be a positive finite number of seconds, got {dt!r}")
    return value


def check_real(t: torch.Tensor, what: str, where: str = "") -> None:
    """Raise unless tensor ``t`` has a real dtype (a dtype check only: no data is read, so it is
    cheap and traceable by :func:`torch.export.export`).

    Raises
    ------
    DimensionError
        If ``t`` is complex, e.g. ``"x0 must be real, got complex128"``.
    """
    if t.is_complex():
        prefix = f"{where}: " if where else ""
        raise DimensionError(f"{prefix}{what} must be real, got {str(t.dtype).replace('torch.', '')}")


def zoh_rollout(f, x0: torch.Tensor, controls: torch.Tensor, dt: float, method: str = "rk4",
                substeps: int = 1) -> torch.Tensor:
    """Integrate ``dx/dt = f(x, u)`` with ``controls[:, k]`` held on ``[k dt, (k + 1) dt)``.

    Parameters
    ----------
    f : callable
        Vector field ``f(x (batch, n), u (batch, m)) -> (batch, n)``, time-invariant.
    x0 : Tensor, shape ``(batch, n)``
        Initial states.
    controls : Tensor, shape ``(batch, horizon, m)``
        Control sequence.
    dt : float
        Control interval in seconds.
    method : str
        One of :data:`ONE_STEP_METHODS` (torchdiffeq's names).
    substeps : int
        Equal integrator steps per control interval.

    Returns
    -------
    Tensor, shape ``(horizon + 1, batch, n)``
        States at the switching times, ``x0`` first (time-major, as ``odeint`` returns them).
        Differentiable with respect to ``x0``, ``controls`` and the tensors ``f`` uses.

    Raises
    ------
    ConfigError
        If ``method`` is not one of :data:`ONE_STEP_METHODS`, ``dt`` is not a positive finite
        number or ``substeps`` not a positive integer.
    DimensionError
        If ``x0`` or ``controls`` is complex.
    """
    if method not in ONE_STEP_METHODS:
        raise ConfigError(f"method {method!r} is not a one-step fixed-grid method; choose one of {ONE_STEP_METHODS}")
    dt = check_dt(dt, "zoh_rollout")
    if isinstance(substeps, bool) or not isinstance(substeps, numbers.Integral) or substeps < 1:
        raise ConfigError(f"zoh_rollout: substeps must be a positive integer, got {substeps!r}")
    check_real(x0, "x0", "zoh_rollout")
    check_real(controls, "controls", "zoh_rollout")
    step = SOLVERS[method](func=None, y0=x0, rtol=0.0, atol=0.0, perturb=False)._step_func
    h = dt / int(substeps)
    x, states = x0, [x0]
    for k in range(controls.shape[1]):
        u = controls[:, k]

        def field(t, y, perturb=None, u=u):
            return f(y, u)

        for j in range(int(substeps)):
            t0 = k * dt + j * h
            dx, _ = step(field, t0, h, t0 + h, x)
            x = x + dx
        states.append(x)
    return torch.stack(states)
