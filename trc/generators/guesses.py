"""Initial guesses for the multi-start option of the ``"nonlinear"`` solver (swing-up problems).

A Newton-type solver of a non-convex optimal-control problem converges to the local optimum
whose basin holds its initial guess, so a good guess is part of the method (Betts, *Practical
Methods for Optimal Control and Estimation Using Nonlinear Programming*, 2nd ed., SIAM 2010, on
the initial guess of direct transcription methods): trajectories that already satisfy the
dynamics and do roughly the right thing are better starts than straight lines, and several of
them in different basins (multi-start) let the solver keep the best local optimum.

For the torque-driven pendulum (:class:`dynamics.pendulum.Pendulum`) the guesses are closed-loop
simulations of *energy pumping* (Astrom & Furuta, "Swinging up a pendulum by energy control",
*Automatica* 36 (2000) 287): with the energy of the rod about its lowest position

    E = I omega^2 / 2 + m g lc (1 - cos theta),

the torque ``u = sat_{alpha u_lim}(k (E_ref - E) sign(omega) + b omega)`` puts energy in (or
takes it out) at the largest admissible rate, since ``dE/dt = (u - b omega) omega``; ``u_lim``
is the smaller torque bound (``m g lc`` if unbounded) and ``k = 10 u_lim / (m g lc)`` saturates
until the energy error is below a tenth of ``m g lc``. Each guess differs in two numbers:

* the *first swing direction* ``d = +1`` or ``-1``: until the rod moves in direction ``d``
  (``d omega > omega_s``, ``omega_s = 0.1 sqrt(m g lc / I)``) the torque is ``d alpha u_lim``;
  so the two guesses start by pushing the rod opposite ways and end in different basins;
* the *torque fraction* ``alpha`` in ``(0, 1]``: a smaller torque needs more swings to reach
  the target energy, so ``alpha`` sets the number of pump swings.

The reference energy is the target's, ``E_ref = E(x*)``, while the rod moves towards the target
angle ``theta*`` and ``0.85 E(x*)`` while it moves away from it: the angle is not wrapped (the
cost penalises ``theta - theta*``, :mod:`trc.cost`), so a rod that comes close to the upright
position on the wrong side (``theta* - 2 pi``) must fall back and swing through the bottom, not
balance there. Within 1 rad of ``theta*`` and ``0.3 max(E(x*), m g lc)`` of the target energy a
saturated PD law with gravity compensation, ``u = m g lc sin theta + b omega - kp (theta -
theta*) - kd (omega - omega*)`` (``kp = 4 m g lc``, ``kd = 2 sqrt((kp - m g lc) I)``: critically
damped about the upright position), catches the rod. The simulated states and controls are
consistent with the plant's own step, so the first SQP iterations start without dynamics
defects.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dynamics.errors import ConfigError, DimensionError

__all__ = ["GUESS_PLANTS", "MAX_STARTS", "TORQUE_FRACTIONS", "energy_pumping_guesses", "multistart_plan"]

#: Plants that have multi-start guesses.
GUESS_PLANTS = ("pendulum",)

#: Torque fractions of the energy-pumping guesses, in the order the starts use them.
TORQUE_FRACTIONS = (1.0, 0.6, 0.36, 0.216)

#: Largest number of starts: the straight line (or the caller's guess) and two directions for
#: every torque fraction.
MAX_STARTS = 1 + 2 * len(TORQUE_FRACTIONS)

_BACK_OFF = 0.85  # reference energy, as a fraction of E(x*), while moving away from theta*
_CATCH_ANGLE = 1.0  # rad from theta* where the PD law takes over
_CATCH_ENERGY = 0.3  # relative energy error below which it may take over


def multistart_plan(starts: int) -> list[tuple[str, int, float]]:
    """The starts in order: ``(name, direction, torque fraction)``; the first is the default guess.

    Parameters
    ----------
    starts : int
        Number of starts, ``1 <= starts <= MAX_STARTS``.

    Returns
    -------
    list of tuple
        ``("default", 0, 0.0)`` (straight line, or the caller's guess), then
        ``("pump+1@1.00", +1, 1.0)``, ``("pump-1@1.00", -1, 1.0)``, ``("pump+1@0.60", +1, 0.6)``, ...

    Raises
    ------
    ConfigError
        If ``starts`` is not an integer in ``[1, MAX_STARTS]``.
    """
    if isinstance(starts, bool) or not isinstance(starts, (int, np.integer)) or not 1 <= starts <= MAX_STARTS:
        raise ConfigError(f"starts must be an integer in [1, {MAX_STARTS}], got {starts!r}")
    plan = [("default", 0, 0.0)]
    for alpha in TORQUE_FRACTIONS:
        for d in (1, -1):
            plan.append((f"pump{d:+d}@{alpha:.2f}", d, alpha))
    return plan[:starts]


def energy_pumping_guesses(plant, x0, target, horizon: int, directions, fractions):
    """Energy-pumping closed-loop rollouts of a pendulum, for several guesses at once.

    All ``S`` guesses of all ``B`` instances are simulated together: one batched plant step
    per time step (a loop over the ``horizon`` steps only).

    Parameters
    ----------
    plant : dynamics.Plant
        A ``pendulum`` plant (float64), whose ``step`` is used.
    x0, target : ndarray, shape ``(B, 2)``
        Initial and target states ``(theta, omega)`` in rad and rad/s.
    horizon : int
        Number of steps ``N``.
    directions : sequence of int, length ``S``
        First swing direction of each guess, ``+1`` or ``-1``.
    fractions : sequence of float, length ``S``
        Torque fraction ``alpha`` in ``(0, 1]`` of each guess.

    Returns
    -------
    states : ndarray, shape ``(S, B, N + 1, 2)``
    controls : ndarray, shape ``(S, B, N, 1)``
        Torques in N m, within the plant's bounds.

    Raises
    ------
    ConfigError
        If the plant is not a pendulum, or a direction or fraction is out of range.
    DimensionError
        If ``x0`` or ``target`` is not ``(B, 2)``, or ``directions`` and ``fractions`` differ in length.
    """
    if plant.name not in GUESS_PLANTS:
        raise ConfigError(f"energy-pumping guesses need a plant in {GUESS_PLANTS}, got {plant.name!r}")
    x0, target = np.asarray(x0, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if x0.ndim != 2 or x0.shape[1] != 2 or target.shape != x0.shape:
        raise DimensionError(f"x0 and target must both be (B, 2); got {x0.shape} and {target.shape}")
    d = np.asarray(directions, dtype=np.float64).reshape(-1)
    alpha = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if d.shape != alpha.shape:
        raise DimensionError(f"{d.size} directions for {alpha.size} torque fractions; expected equal lengths")
    if not np.isin(d, (-1.0, 1.0)).all():
        raise ConfigError(f"directions must be +1 or -1, got {d.tolist()}")
    if not ((alpha > 0) & (alpha <= 1)).all():
        raise ConfigError(f"torque fractions must be in (0, 1], got {alpha.tolist()}")
    S, B = d.size, x0.shape[0]
    f64 = {"dtype": torch.float64, "device": plant.u_max.device}
    m, g, lc, inertia, b = (float(getattr(plant, k)) for k in ("m", "g", "lc", "I", "b"))
    mgl = m * g * lc
    lo, hi = float(plant.u_min.reshape(-1)[0]), float(plant.u_max.reshape(-1)[0])
    u_lim = min(-lo, hi)
    if not math.isfinite(u_lim) or u_lim <= 0:
        u_lim = mgl  # unbounded torque: pump with the peak gravity torque
    kp = 4 * mgl
    kd = 2 * math.sqrt((kp - mgl) * inertia)
    k_e = 10 * u_lim / max(mgl, 1e-12)  # saturated until the energy error is below 10 % of m g lc
    w_start = 0.1 * math.sqrt(mgl / inertia)

    def energy(th, om):
        return 0.5 * inertia * om**2 + mgl * (1 - torch.cos(th))

    # rows: guess-major, (S * B, .)
    x = torch.as_tensor(np.tile(x0, (S, 1)), **f64)
    xt = torch.as_tensor(np.tile(target, (S, 1)), **f64)
    dd = torch.as_tensor(np.repeat(d, B), **f64)
    u_cap = torch.as_tensor(np.repeat(alpha, B), **f64) * u_lim
    E_t = energy(xt[:, 0], xt[:, 1])
    started = torch.zeros(S * B, dtype=torch.bool, device=x.device)
    X, U = [x], []
    for _ in range(horizon):
        th, om = x[:, 0], x[:, 1]
        E = energy(th, om)
        started = started | (dd * om > w_start)
        towards = torch.sign(om) == torch.sign(xt[:, 0] - th)
        E_ref = torch.where(towards, E_t, _BACK_OFF * E_t)
        u = torch.minimum(torch.maximum(k_e * (E_ref - E) * torch.sign(om) + b * om, -u_cap), u_cap)
        u = torch.where(started, u, dd * u_cap)
        near = ((th - xt[:, 0]).abs() < _CATCH_ANGLE) & ((E - E_t).abs() <= _CATCH_ENERGY * E_t.abs().clamp_min(mgl))
        u_pd = mgl * torch.sin(th) + b * om - kp * (th - xt[:, 0]) - kd * (om - xt[:, 1])
        u = torch.where(near, u_pd, u).clamp(lo, hi)[:, None]
        x = plant.step(x, u)
        X.append(x)
        U.append(u)
    states = torch.stack(X, 1).reshape(S, B, horizon + 1, 2)
    controls = torch.stack(U, 1).reshape(S, B, horizon, 1)
    return states.cpu().numpy(), controls.cpu().numpy()
