"""The standard task of each continuous plant: the one place its numbers are written down.

A task is an optimal-control problem on a plant: the plant's constructor arguments (bounds,
physical parameters), the sample time ``dt`` in seconds, the horizon ``N``, the quadratic
weights ``Q``, ``R`` and ``Qf = Qf_scale Q``, the boxes that ``x0`` and the target ``x*`` are
drawn from uniformly, and the success tolerance on the final state. Each task is written in the
form of the ``problem:`` section of a configuration file (:class:`trc.problem.Problem`), and is
used by

* the configuration files ``configs/<plant>.yaml``, whose ``problem:`` section says
  ``task: <name>`` and lists only the keys it changes (:class:`trc.problem.Problem`),
* the Gymnasium environments ``trc/<Name>-v0`` and :func:`dynamics.make_env`
  (:mod:`dynamics.env`), whose default task it is.

>>> from dynamics import tasks
>>> tasks.names()
['cartpole', 'double_integrator', 'pendulum', 'rocket', 'van_der_pol']
>>> tasks.task("van_der_pol")["dt"], tasks.task("van_der_pol")["horizon"]
(0.05, 100)
"""

from __future__ import annotations

import copy

from .errors import UnknownNameError

__all__ = ["task", "names"]

# The standard tasks by name, in the form of a ``problem:`` section; read them with task(),
# which returns a copy. Keys: ``name``, ``plant`` (``{"name": <registered plant>, **constructor
# arguments}``; the task's ``dt`` is the plant's), ``dt`` (s), ``horizon``, ``cost``
# (``"quadratic"`` or ``"fuel"``), ``Q``, ``R`` (diagonals or scalars), ``Qf_scale``,
# ``initial_state`` and ``target_state`` (``{"low": [...], "high": [...]}``), ``tolerance`` and,
# where the problem's solver needs them, ``options``.
_TASKS: dict[str, dict] = {
    # A unit mass x'' = u: reach a random target state from a random initial state.
    "double_integrator": {
        "name": "double_integrator",
        "plant": {"name": "double_integrator", "u_min": -4.0, "u_max": 4.0},  # |u| <= 4 m/s^2
        "dt": 0.33,
        "horizon": 15,  # 4.95 s
        "cost": "quadratic",
        "Q": [10.0, 5.0],
        "R": [0.1],
        "Qf_scale": 20.0,
        "initial_state": {"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        "target_state": {"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        "tolerance": 0.1,  # ||x_N - x*||_2
    },
    # Forced Van der Pol oscillator (mu = 1): drive a random initial state to the origin.
    "van_der_pol": {
        "name": "van_der_pol",
        "plant": {"name": "van_der_pol", "mu": 1.0, "u_min": -2.0, "u_max": 2.0},  # |u| <= 2
        "dt": 0.05,
        "horizon": 100,  # 5 s
        "cost": "quadratic",
        "Q": [10.0, 5.0],
        "R": [0.1],
        "Qf_scale": 20.0,
        "initial_state": {"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        "target_state": {"low": [0.0, 0.0], "high": [0.0, 0.0]},
        "tolerance": 0.2,
    },
    # Swing-up of a uniform rod (1 kg, 1 m) from near hanging (theta = 0) to upright (pi). The
    # torque limit (3 N m) is below the peak gravity torque (4.9 N m): it has to pump energy.
    "pendulum": {
        "name": "pendulum",
        "plant": {"name": "pendulum", "m": 1.0, "l": 1.0, "b": 0.0, "u_max": 3.0},
        "dt": 0.05,
        "horizon": 60,  # 3 s
        "cost": "quadratic",
        "Q": [10.0, 1.0],
        "R": [0.1],
        "Qf_scale": 20.0,
        "initial_state": {"low": [-0.3, -0.5], "high": [0.3, 0.5]},
        "target_state": {"low": [3.141592653589793, 0.0], "high": [3.141592653589793, 0.0]},
        "tolerance": 0.2,
    },
    # Cart-pole swing-up (Barto et al. 1983 parameters): the pole from hanging (theta = pi) to
    # upright (theta = 0) with the cart back at the origin, |force| <= 10 N, no track limit.
    "cartpole": {
        "name": "cartpole",
        "plant": {"name": "cartpole", "m_c": 1.0, "m_p": 0.1, "l": 0.5, "g": 9.8, "u_max": 10.0},
        "dt": 0.05,
        "horizon": 60,  # 3 s
        "cost": "quadratic",
        "Q": [5.0, 0.5, 10.0, 0.5],  # x, x_dot, theta, theta_dot
        "R": [0.05],
        "Qf_scale": 100.0,
        "initial_state": {  # theta in pi -+ 0.3 (the literals of the published data sets)
            "low": [-0.5, -0.2, 2.841592653589793, -0.3],
            "high": [0.5, 0.2, 3.441592653589793, 0.3],
        },
        "target_state": {"low": [0.0, 0.0, 0.0, 0.0], "high": [0.0, 0.0, 0.0, 0.0]},
        "tolerance": 0.2,
    },
    # Fuel-optimal Mars powered descent (Acikmese & Ploen 2007, Sec. V vehicle: the rocket's
    # default parameters): land at the origin at rest after N dt = 72 s. Initial states near the
    # published example r0 = (0, 2000, 1500) m, v0 = (0, 100, -75) m/s but slower, so that every
    # instance is feasible.
    "rocket": {
        "name": "rocket",
        "plant": {"name": "rocket"},
        "dt": 1.44,
        "horizon": 50,  # 72 s of flight
        "cost": "fuel",  # J = m_0 - m_N (kg); Q, R and Qf_scale are unused
        "Q": 1.0,
        "R": 1.0,
        "Qf_scale": 1.0,
        "initial_state": {  # x, y, z (m), vx, vy, vz (m/s), mass (kg)
            "low": [-300.0, 1500.0, 1200.0, -20.0, 40.0, -80.0, 1905.0],
            "high": [300.0, 2100.0, 1600.0, 20.0, 80.0, -60.0, 1905.0],
        },
        "target_state": {  # the landing site at rest; the mass entry is ignored
            "low": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1505.0],
            "high": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1505.0],
        },
        "tolerance": 0.5,  # ||r_N - r_f|| + ||v_N - v_f|| (m + m/s)
        "options": {"glide_slope": 4.0},  # degrees above the horizontal
    },
}


def names() -> list[str]:
    """Sorted names of the standard tasks."""
    return sorted(_TASKS)


def task(name: str) -> dict:
    """A copy of standard task ``name``: a ``problem:`` section as a dict of plain data.

    Its keys: ``name``, ``plant`` (``{"name": <registered plant>, **constructor arguments}``),
    ``dt`` (s, also the plant's), ``horizon``, ``cost``, ``Q``, ``R``, ``Qf_scale``,
    ``initial_state``, ``target_state`` (``{"low": [...], "high": [...]}``), ``tolerance``, and
    ``options`` where the problem's solver needs them.

    Raises
    ------
    UnknownNameError
        If there is no task ``name``; the message lists the names.
    """
    if not isinstance(name, str) or name not in _TASKS:
        raise UnknownNameError(f"unknown task {name!r}; choose one of {names()}")
    return copy.deepcopy(_TASKS[name])
