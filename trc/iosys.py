"""Trained TRC controllers as python-control systems, and sampling of continuous plants.

:func:`controller_iosys` (also ``model.to_iosys()``) wraps a trained
:class:`~trc.models.TinyRecursiveControl` as a discrete-time, memoryless
:class:`control.NonlinearIOSystem` implementing *receding-horizon* control: at every sample
``t_k = k dt`` it reads the measured state ``x_k`` (and the target ``x*``), plans the whole
control sequence ``u_0 .. u_{N-1}`` with the network and outputs the first control ``u_0``
(Rawlings, Mayne & Diehl, *Model Predictive Control: Theory, Computation, and Design*, 2nd
ed., 2017, sec. 1.3). The system has no states; it works wherever python-control takes a
discrete-time system with sample time ``dt``: :func:`control.interconnect`,
:func:`control.feedback`, :func:`control.input_output_response`.

Signal names follow python-control's state-feedback convention
(:func:`control.create_statefbk_iosystem`): the measured state inputs carry the plant's state
names (so ``interconnect`` connects them to a plant's outputs by name), the target inputs are
``xd[0] .. xd[n-1]``, and the outputs carry the plant's control names.

python-control refuses to connect systems of different timebases, so a continuous-time plant
must be sampled first: :func:`sample_system` turns a TRC :class:`~dynamics.Plant`, a
python-control LTI system or a continuous :class:`~control.NonlinearIOSystem` into the
discrete-time system seen through a zero-order hold.

Examples
--------
>>> import control as ct, numpy as np, trc
>>> model = trc.load("runs/double_integrator/model.pt")            # doctest: +SKIP
>>> ctrl = model.to_iosys()                                         # doctest: +SKIP
>>> plant = sample_system(ct.ss([[0, 1], [0, 0]], [[0], [1]], np.eye(2), 0,
...                             inputs="acceleration", outputs=["position", "velocity"]),
...                       model.dt)                                  # doctest: +SKIP
>>> loop = ct.interconnect([plant, ctrl], inplist=["xd[0]", "xd[1]"],
...                        outlist=["position", "velocity", "acceleration"])  # doctest: +SKIP
>>> T = np.arange(40) * model.dt                                    # doctest: +SKIP
>>> resp = ct.input_output_response(loop, T, U=np.zeros((2, 40)), X0=[1.5, 0.0])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict

import control as ct
import numpy as np
import torch
from scipy.integrate import solve_ivp

from dynamics.errors import ConfigError, DimensionError, NonFiniteError
from dynamics.plant import Plant

__all__ = ["controller_iosys", "sample_system", "target_labels"]

#: Number of recent (input -> control) evaluations a controller system remembers: python-control
#: evaluates the output function of a static subsystem several times per sample.
_CACHE_SIZE = 8


def target_labels(state_dim: int) -> list[str]:
    """Names of the target inputs, ``["xd[0]", ..., "xd[n-1]"]`` (python-control's convention)."""
    return [f"xd[{i}]" for i in range(state_dim)]


def _names(given, default, dim: int, what: str) -> list[str]:
    names = list(default) if given is None else ([given] if isinstance(given, str) else list(given))
    if len(names) != dim:
        raise DimensionError(f"{what} has {len(names)} names {names}; expected {dim}")
    return [str(s) for s in names]


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Run ``model`` in eval mode (dropout off, adaptive halting on), restoring the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def controller_iosys(
    model,
    *,
    target=None,
    name: str = "trc",
    inputs=None,
    target_inputs=None,
    outputs=None,
    dt: float | None = None,
) -> ct.NonlinearIOSystem:
    """A trained TRC model as a discrete-time receding-horizon controller (python-control).

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        A trained model (e.g. from :func:`trc.load`). It is evaluated in eval mode, without
        gradients, in its own dtype and on its own device.
    target : array_like, shape ``(state_dim,)``, optional
        A fixed target ``x*``. Without it (default) the target is an input of the system
        (``target_inputs``); with it the system's only inputs are the measured states, so it
        fits :func:`control.feedback` directly. A simulation can change a fixed target with
        ``params={"target": ...}``.
    name : str
        System name.
    inputs : list of str, optional
        Names of the measured-state inputs; default the plant's state names (``model.plant``)
        or ``x[i]``.
    target_inputs : list of str, optional
        Names of the target inputs; default ``xd[i]``. Ignored with a fixed ``target``.
    outputs : list of str, optional
        Names of the control outputs; default the plant's control names or ``u[j]``.
    dt : float, optional
        Sample time in seconds; default the model's ``dt`` (the one it was trained with; a
        different value is allowed but the plans then refer to the wrong sample time).

    Returns
    -------
    control.NonlinearIOSystem
        Memoryless, discrete-time (sample time ``dt``). Inputs: ``state_dim`` measured states,
        then ``state_dim`` targets (unless ``target`` is fixed). Outputs: the first control
        ``u_0`` of the plan, ``control_dim`` values within the model's bounds.

    Raises
    ------
    ConfigError
        If the model has no sample time and ``dt`` is not given, or ``dt`` is not positive.
    DimensionError
        If a list of names or ``target`` has the wrong length.
    NonFiniteError
        If ``target`` contains NaN or infinity.

    Notes
    -----
    The last few evaluations are cached by input value: python-control evaluates a static
    subsystem's output several times per sample, and each evaluation is a full network pass.

    Examples
    --------
    >>> ctrl = controller_iosys(model, target=[0.0, 0.0])           # doctest: +SKIP
    >>> loop = ct.feedback(sample_system(model.plant), ctrl, sign=1)  # doctest: +SKIP
    """
    n, m = int(model.state_dim), int(model.control_dim)
    plant = getattr(model, "plant", None)
    state_default = plant.state_names if plant is not None and len(plant.state_names) == n else [f"x[{i}]" for i in range(n)]
    control_default = (
        plant.control_names if plant is not None and len(plant.control_names) == m else [f"u[{j}]" for j in range(m)]
    )
    state_in = _names(inputs, state_default, n, "inputs")
    control_out = _names(outputs, control_default, m, "outputs")
    dt = model.dt if dt is None else dt
    if dt is None:
        raise ConfigError("the model has no sample time dt; pass dt=... (seconds)")
    if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise ConfigError(f"dt must be a positive number of seconds, got {dt!r}")
    fixed = None
    if target is not None:
        fixed = _target_vector(target, n)
        in_names = state_in
    else:
        in_names = state_in + _names(target_inputs, target_labels(n), n, "target_inputs")

    ref = model.state_scale if hasattr(model, "state_scale") else next(model.parameters())
    cache: OrderedDict = OrderedDict()

    def outfcn(t, x, u, params):
        u = np.asarray(u, dtype=float).reshape(-1)
        measured = u[:n]
        if fixed is None:
            goal = u[n:2 * n]
        else:
            goal = _target_vector(params["target"], n) if params and "target" in params else fixed
        key = measured.tobytes() + goal.tobytes()
        hit = cache.get(key)
        if hit is not None:
            return hit.copy()
        if not (np.isfinite(measured).all() and np.isfinite(goal).all()):
            raise NonFiniteError(f"{name}: non-finite input at t={t}: state {measured.tolist()}, target {goal.tolist()}")
        with torch.no_grad(), _eval_mode(model):
            x0 = torch.as_tensor(measured[None], dtype=ref.dtype, device=ref.device)
            xt = torch.as_tensor(goal[None], dtype=ref.dtype, device=ref.device)
            control = model(x0, xt)[0, 0].double().cpu().numpy()
        cache[key] = control
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
        return control.copy()

    return ct.nlsys(
        None, outfcn, inputs=in_names, outputs=control_out, dt=float(dt), name=name,
        params={} if fixed is None else {"target": fixed},
    )


def _target_vector(value, n: int) -> np.ndarray:
    a = np.asarray(value, dtype=float).reshape(-1)
    if a.shape != (n,):
        raise DimensionError(f"target has {a.size} entries; expected state_dim={n}")
    if not np.isfinite(a).all():
        raise NonFiniteError(f"target contains NaN or infinity: {a.tolist()}")
    return a


def sample_system(system, dt: float | None = None, *, name: str | None = None, rtol: float = 1e-10,
                  atol: float = 1e-12):
    """The discrete-time system seen through a zero-order hold of ``dt`` seconds.

    Parameters
    ----------
    system : dynamics.Plant, control.LTI or control.NonlinearIOSystem
        * a TRC plant: a discrete-time :class:`~control.NonlinearIOSystem` whose update is the
          plant's own zero-order-hold step (:meth:`dynamics.Plant.step`, its integrator, in
          float64), i.e. exactly the model the controller was trained on; inputs are the
          controls, outputs the states (names from the plant);
        * a continuous python-control LTI system: :func:`control.sample_system` with
          ``method="zoh"`` (exact);
        * a continuous :class:`~control.NonlinearIOSystem`: each update integrates its
          dynamics over ``[t, t + dt]`` with the input held, by
          :func:`scipy.integrate.solve_ivp` (RK45, tolerances ``rtol``, ``atol``); the
          outputs are those of the continuous system at the sample times.

        A discrete-time system with sample time ``dt`` (or ``dt=None``) is returned unchanged.
    dt : float, optional
        Sample time in seconds; default the plant's ``dt`` (required for python-control
        systems).
    name : str, optional
        Name of the sampled system; default the system's name (python-control's default for
        LTI systems, ``<name>$sampled``).
    rtol, atol : float
        Tolerances of the integration of a nonlinear system.

    Returns
    -------
    control.InputOutputSystem
        Discrete-time, sample time ``dt``.

    Raises
    ------
    ConfigError
        If ``dt`` is missing or not positive, or a discrete-time system has another sample time.
    TypeError
        If ``system`` is none of the supported kinds.
    """
    if isinstance(system, Plant):
        dt = system.dt if dt is None else dt
        _check_dt(dt)
        if system.discrete:
            if not np.isclose(dt, system.dt):
                raise ConfigError(f"{system.name} is discrete-time with dt={system.dt}; cannot resample to dt={dt}")
            return system.to_iosys(name=name)
        return _sampled_plant(system, float(dt), name)
    if not isinstance(system, ct.InputOutputSystem):
        raise TypeError(f"system must be a dynamics.Plant or a python-control system, got {type(system).__name__}")
    if system.isdtime(strict=True):
        if dt is not None and not (system.dt is True or np.isclose(system.dt, dt)):
            raise ConfigError(f"{system.name} is discrete-time with dt={system.dt}; cannot resample to dt={dt}")
        return system
    if dt is None:
        raise ConfigError(f"sampling {system.name}: pass the sample time dt (seconds)")
    _check_dt(dt)
    if isinstance(system, ct.LTI):
        kwargs = {} if name is None else {"name": name}
        return ct.sample_system(system, float(dt), method="zoh", **kwargs)
    return _sampled_nonlinear(system, float(dt), name, rtol, atol)


def _check_dt(dt) -> None:
    if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise ConfigError(f"dt must be a positive number of seconds, got {dt!r}")


def _sampled_plant(plant: Plant, dt: float, name: str | None) -> ct.NonlinearIOSystem:
    sim = copy.deepcopy(plant).double().requires_grad_(False)

    def updfcn(t, x, u, params):
        with torch.no_grad():
            xt = torch.as_tensor(np.asarray(x, dtype=float).reshape(1, -1))
            ut = torch.as_tensor(np.asarray(u, dtype=float).reshape(1, -1))
            return sim.step(xt, ut, dt=dt)[0].numpy()

    return ct.nlsys(
        updfcn, lambda t, x, u, params: np.asarray(x, dtype=float), dt=dt,
        inputs=list(plant.control_names), outputs=list(plant.state_names), states=list(plant.state_names),
        name=name or plant.name,
    )


def _sampled_nonlinear(system, dt: float, name: str | None, rtol: float, atol: float) -> ct.NonlinearIOSystem:
    def updfcn(t, x, u, params):
        u = np.asarray(u, dtype=float)
        sol = solve_ivp(lambda s, y: system.dynamics(s, y, u, params), (t, t + dt), np.asarray(x, dtype=float),
                        rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"sampling {system.name}: integration failed at t={t}: {sol.message}")
        return sol.y[:, -1]

    def outfcn(t, x, u, params):
        return system.output(t, x, u, params)

    return ct.nlsys(
        updfcn, outfcn, dt=dt, inputs=system.input_labels, outputs=system.output_labels,
        states=system.state_labels, params=dict(system.params), name=name or f"{system.name}$sampled",
    )
