"""The :class:`Plant` base class: a batched, differentiable simulator of a controlled system.

A plant defines the continuous-time vector field ``f(x, u)``; the base class turns it into a
zero-order-hold discrete-time map with :mod:`torchdiffeq` (fixed-step RK4 by default, stepped
interval by interval with torchdiffeq's step functions: :mod:`dynamics.fixed_step`; exactly,
with the matrix exponential, for linear plants: :mod:`dynamics.zoh`), rolls
control sequences out over a horizon, linearises with torch autograd and converts to
python-control systems.

Conventions (batch first, as everywhere in TRC):

* states ``x``: ``(batch, state_dim)``
* controls ``u``: ``(batch, control_dim)``
* control sequences: ``(batch, horizon, control_dim)``
* trajectories: ``(batch, horizon + 1, state_dim)``, the initial state first.
"""

from __future__ import annotations

import copy
import functools
import math

import control as ct
import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint

from .errors import ConfigError, DimensionError, NonFiniteError
from .fixed_step import ONE_STEP_METHODS, check_dt, check_real, zoh_rollout
from .zoh import lifted_rollout, lifted_zoh

__all__ = ["Plant", "FIXED_STEP_METHODS", "EXACT"]

#: torchdiffeq methods that step on the control grid (optionally with sub-steps).
FIXED_STEP_METHODS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams")

#: Integration method of linear plants: the exact zero-order-hold discretisation (matrix
#: exponential, :mod:`dynamics.zoh`) instead of a torchdiffeq solver.
EXACT = "exact"

#: Lifted matrices kept per plant (keyed on dt, horizon, dtype, device and the values of A, B).
_LIFTED_CACHE_SIZE = 8


def _as_bound(value, dim: int, default: float, what: str) -> torch.Tensor:
    """A bound given as ``None``, a scalar or a sequence, as a float64 tensor of shape ``(dim,)``."""
    if value is None:
        return torch.full((dim,), default, dtype=torch.float64)
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(dim).clone()
    if t.shape != (dim,):
        raise DimensionError(f"{what} has {t.numel()} entries; expected 1 or {dim}")
    if torch.isnan(t).any():
        raise NonFiniteError(f"{what} contains NaN: {t.tolist()}")
    return t


def _tracing() -> bool:
    """Whether a tracer (:func:`torch.jit.trace`, :func:`torch.export.export`, :func:`torch.compile`)
    is running: the finiteness check of :meth:`Plant.f` reads the data, which a traced program
    cannot branch on, so it is left out of traced programs."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _all_finite(x: torch.Tensor, u: torch.Tensor) -> bool:
    """Whether ``x`` and ``u`` hold no NaN or infinity: one ``isfinite`` of both joined (three
    small kernels and one read of the result), two when their leading shapes differ."""
    if x.shape[:-1] == u.shape[:-1]:
        return bool(torch.cat((x, u), -1).isfinite().all())
    return bool(torch.isfinite(x).all() & torch.isfinite(u).all())


def _finite_checked(field):
    """``field(self, x, u)`` behind one fused NaN/infinity check of ``x`` and ``u``."""

    @functools.wraps(field)
    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if not _tracing() and not _all_finite(x, u):
            bad = "x" if not bool(torch.isfinite(x).all()) else "u"
            raise NonFiniteError(f"{self.name}: f(x, u) got NaN or infinity in {bad}")
        return field(self, x, u)

    return f


class Plant(nn.Module):
    """Base class of every plant: a batched, differentiable simulator.

    Subclasses set the class attributes ``state_names``, ``state_units``, ``control_names``,
    ``control_units``, call ``super().__init__`` and :meth:`set_params` in their constructor,
    and implement :meth:`f` (or :meth:`discrete_step` for discrete-time plants).

    Parameters
    ----------
    dt : float
        Sample time of the zero-order hold in seconds (time steps for discrete plants).
    u_min, u_max : float or sequence of float, optional
        Control bounds, scalar or of length ``control_dim``; default unbounded.
    x_min, x_max : float or sequence of float, optional
        State bounds where the problem has them; default unbounded.
    method : str
        A torchdiffeq method (``"rk4"`` by default; ``"dopri5"`` and the other adaptive
        methods are accepted and stop at every control switch), or ``"exact"`` for plants
        with a linear vector field (:meth:`linear_matrices`): the exact zero-order hold of
        :mod:`dynamics.zoh`, the default of those plants.
    substeps : int
        Integrator steps per control interval for fixed-step methods.
    rtol, atol : float
        Tolerances of adaptive methods.

    Notes
    -----
    :meth:`f` checks that ``x`` and ``u`` are finite (one fused check per call; left out of
    traced programs); the integrators call the unchecked :meth:`f_unchecked` at every stage,
    after :meth:`rollout` and :meth:`step` checked their inputs once. A subclass implements
    ``f`` and gets both: the base class wraps it when the subclass is defined.

    Buffers are created in the default dtype (float32); build with
    ``dynamics.make(name, dtype=torch.float64, ...)`` for parameters exact to float64.
    Physical parameters are stored as float buffers, so ``plant.double()`` and ``plant.to``
    move them, and ``plant.get_buffer(name).requires_grad_()`` makes rollouts differentiable
    with respect to them. They are not ``nn.Parameter`` s, so a plant inside a model does not
    add to the model's trainable parameters.
    """

    name: str = "plant"
    state_names: tuple[str, ...] = ()
    state_units: tuple[str, ...] = ()
    control_names: tuple[str, ...] = ()
    control_units: tuple[str, ...] = ()
    #: True for plants defined by a difference equation ``x[k+1] = F(x[k], u[k])``.
    discrete: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        field = cls.__dict__.get("f")
        if field is not None:  # the subclass's own vector field: keep it unchecked, check f
            cls.f_unchecked = field
            cls.f = _finite_checked(field)

    @property
    def control_norm_bounds(self) -> tuple[float, float] | None:
        """``(lo, hi)`` when the control vector's Euclidean norm must lie in ``[lo, hi]`` (a
        bound that is not a box, e.g. a rocket's thrust magnitude); ``None`` for none."""
        return None

    def __init__(
        self,
        *,
        dt: float = 0.1,
        u_min=None,
        u_max=None,
        x_min=None,
        x_max=None,
        method: str = "rk4",
        substeps: int = 1,
        rtol: float = 1e-7,
        atol: float = 1e-9,
    ):
        super().__init__()
        dt = check_dt(dt, self.name)
        if isinstance(substeps, bool) or int(substeps) != substeps or substeps < 1:
            raise ConfigError(f"substeps must be a positive integer, got {substeps!r}")
        self.dt = dt
        self.method = method
        self.substeps = int(substeps)
        self.rtol, self.atol = float(rtol), float(atol)
        self._param_values: dict = {}
        self._lifted: dict = {}
        n, m = self.state_dim, self.control_dim
        dtype = torch.get_default_dtype()
        self.register_buffer("u_min", _as_bound(u_min, m, -math.inf, "u_min").to(dtype))
        self.register_buffer("u_max", _as_bound(u_max, m, math.inf, "u_max").to(dtype))
        self.register_buffer("x_min", _as_bound(x_min, n, -math.inf, "x_min").to(dtype))
        self.register_buffer("x_max", _as_bound(x_max, n, math.inf, "x_max").to(dtype))
        for lo, hi, what in ((self.u_min, self.u_max, "u"), (self.x_min, self.x_max, "x")):
            if (lo > hi).any():
                raise ConfigError(f"{what}_min {lo.tolist()} exceeds {what}_max {hi.tolist()}")

    # ------------------------------------------------------------------ description
    @property
    def state_dim(self) -> int:
        """Number of states ``n``."""
        return len(self.state_names)

    @property
    def control_dim(self) -> int:
        """Number of controls ``m``."""
        return len(self.control_names)

    def set_params(self, **params) -> None:
        """Store physical parameters as float buffers (scalars or arrays); see the class notes."""
        for key, value in params.items():
            t = torch.as_tensor(value, dtype=torch.get_default_dtype())
            if not torch.isfinite(t).all():
                raise NonFiniteError(f"plant parameter {key!r} must be finite, got {value!r}")
            if key in self._buffers:
                self._buffers[key] = t.to(self._buffers[key])
            else:
                self.register_buffer(key, t)
            # Keep the exact values given (float64 Python data) for config(); the buffer may be float32.
            self._param_values[key] = np.asarray(value, dtype=float).tolist()

    @property
    def params(self) -> dict:
        """Physical parameters as given, as plain Python numbers or nested lists (JSON-serialisable)."""
        return dict(self._param_values)

    def config(self) -> dict:
        """Everything :func:`dynamics.make` needs to rebuild this plant (JSON-serialisable)."""
        bounds = {}
        for key in ("u_min", "u_max", "x_min", "x_max"):
            values = getattr(self, key).tolist()
            if any(math.isfinite(v) for v in values):
                bounds[key] = [v if math.isfinite(v) else (math.inf if v > 0 else -math.inf) for v in values]
        return {
            "name": self.name,
            **self.params,
            **bounds,
            "dt": self.dt,
            "method": self.method,
            "substeps": self.substeps,
            "rtol": self.rtol,
            "atol": self.atol,
        }

    def extra_repr(self) -> str:
        return f"state_dim={self.state_dim}, control_dim={self.control_dim}, dt={self.dt}, method={self.method!r}"

    # ------------------------------------------------------------------ validation
    def check_state(self, x: torch.Tensor, what: str = "x") -> torch.Tensor:
        """Validate a batch of states ``(batch, state_dim)``; return it as a tensor.

        Raises
        ------
        DimensionError
            If ``x`` is not two-dimensional with ``state_dim`` columns, or is complex.
        NonFiniteError
            If ``x`` contains NaN or infinity.
        """
        return self._check(x, self.state_dim, what, "state_dim")

    def check_control(self, u: torch.Tensor, what: str = "u") -> torch.Tensor:
        """Validate a batch of controls ``(batch, control_dim)``; see :meth:`check_state`."""
        return self._check(u, self.control_dim, what, "control_dim")

    def _check(self, t, dim: int, what: str, dim_name: str, ndim: int = 2) -> torch.Tensor:
        if not torch.is_tensor(t):
            if np.iscomplexobj(t):
                raise DimensionError(f"{self.name}: {what} must be real, got {np.asarray(t).dtype}")
            t = torch.as_tensor(t, dtype=self.u_min.dtype)
        check_real(t, what, self.name)
        if t.ndim != ndim or t.shape[-1] != dim:
            expected = "(batch, " + ("horizon, " if ndim == 3 else "") + f"{dim_name}={dim})"
            raise DimensionError(f"{self.name}: {what} has shape {tuple(t.shape)}; expected {expected}")
        if not torch.isfinite(t).all():
            raise NonFiniteError(f"{self.name}: {what} contains NaN or infinity")
        return t

    # ------------------------------------------------------------------ dynamics
    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Continuous-time vector field ``dx/dt = f(x, u)``.

        Parameters
        ----------
        x : Tensor, shape ``(batch, state_dim)``
        u : Tensor, shape ``(batch, control_dim)``

        Returns
        -------
        Tensor, shape ``(batch, state_dim)``
            Time derivative of the state, in state units per second.

        Raises
        ------
        NonFiniteError
            If ``x`` or ``u`` contains NaN or infinity (the subclasses' ``f``; see the class
            notes).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement f(x, u)")

    def f_unchecked(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """:meth:`f` without the check of ``x`` and ``u``: what the integrators evaluate at
        every stage, and what programs that check their inputs once call."""
        return self.f(x, u)

    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Difference map ``x[k+1] = F(x[k], u[k])`` of a discrete-time plant."""
        raise NotImplementedError(f"{type(self).__name__} is continuous-time; use step()")

    def linear_matrices(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(A, B)`` with ``f(x, u) = A x + B u`` exactly, for linear plants; ``None`` otherwise.

        Returns
        -------
        tuple of Tensor ``(state_dim, state_dim)`` and ``(state_dim, control_dim)``, or None
            In the dtype and on the device of the plant's buffers.
        """
        return None

    def lifted_matrices(self, horizon: int, dt: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact zero-order-hold matrices ``Phi`` ``(N + 1, n, n)`` and ``Gamma`` ``(N + 1, N, n, m)``
        of a linear plant: ``x_k = Phi[k] x_0 + sum_j Gamma[k, j] u_j`` (:func:`dynamics.zoh.lifted_zoh`).

        Cached for the current values of ``A`` and ``B`` unless they require gradients.

        Raises
        ------
        ConfigError
            If the plant is not linear (:meth:`linear_matrices` is ``None``), or ``dt`` is not a
            positive finite number.
        """
        AB = self.linear_matrices()
        if AB is None:
            raise ConfigError(f"{self.name}: method 'exact' needs a linear vector field; use e.g. 'rk4'")
        A, B = AB
        dt = self.dt if dt is None else check_dt(dt, self.name)
        if A.requires_grad or B.requires_grad:
            return lifted_zoh(A, B, dt, horizon)
        key = (dt, int(horizon), A.dtype, str(A.device), tuple(A.flatten().tolist()), tuple(B.flatten().tolist()))
        hit = self._lifted.get(key)
        if hit is None:
            if len(self._lifted) >= _LIFTED_CACHE_SIZE:
                self._lifted.clear()
            hit = self._lifted[key] = lifted_zoh(A, B, dt, horizon)
        return hit

    def fixed_step_rollout(self, x0: torch.Tensor, controls: torch.Tensor, dt: float) -> torch.Tensor:
        """Zero-order-hold rollout with a one-step fixed-grid method (``self.method`` one of
        :data:`dynamics.fixed_step.ONE_STEP_METHODS`, ``self.substeps`` steps per interval).

        :func:`dynamics.fixed_step.zoh_rollout` of :meth:`f`; a plant whose steps have a closed
        form overrides it with the same states to rounding (:class:`dynamics.Rocket`). Unchecked
        inputs: :meth:`rollout` checks them.

        Parameters
        ----------
        x0 : Tensor, shape ``(batch, state_dim)``
        controls : Tensor, shape ``(batch, horizon, control_dim)``
        dt : float
            Control interval in seconds.

        Returns
        -------
        Tensor, shape ``(horizon + 1, batch, state_dim)``
            States at the switching times, ``x0`` first (time-major).
        """
        return zoh_rollout(self.f_unchecked, x0, controls, dt, self.method, self.substeps)

    def _integrate(self, x0: torch.Tensor, controls: torch.Tensor, dt: float) -> torch.Tensor:
        """Integrate ``f`` under zero-order hold; returns ``(horizon + 1, batch, state_dim)``."""
        horizon = controls.shape[1]
        if self.method == EXACT:
            Phi, Gamma = self.lifted_matrices(horizon, dt)
            return lifted_rollout(Phi.to(x0.dtype), Gamma.to(x0.dtype), x0, controls).transpose(0, 1)
        if self.method in ONE_STEP_METHODS:
            return self.fixed_step_rollout(x0, controls, dt)
        fixed = self.method in FIXED_STEP_METHODS
        per_interval = self.substeps if fixed else 1
        grid = torch.arange(horizon * per_interval + 1, dtype=x0.dtype, device=x0.device) * (dt / per_interval)
        switch = grid[::per_interval].contiguous()  # the control switching times

        def field(t, x):
            # The solver nudges t to the correct side of a switch (perturb / jump_t), so the
            # interval index from the exact switching grid implements the zero-order hold.
            k = torch.searchsorted(switch, t.reshape(1).to(switch.dtype), right=True) - 1
            return self.f_unchecked(x, controls[:, int(k.clamp(0, horizon - 1))])

        options = {"perturb": True} if fixed else {"jump_t": switch[1:-1]}
        kwargs = {} if fixed else {"rtol": self.rtol, "atol": self.atol}
        states = odeint(field, x0, grid, method=self.method, options=options, **kwargs)
        return states[::per_interval]

    def step(self, x: torch.Tensor, u: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        """One zero-order-hold step: the state after holding ``u`` for ``dt`` seconds.

        Parameters
        ----------
        x : Tensor, shape ``(batch, state_dim)``
        u : Tensor, shape ``(batch, control_dim)``
        dt : float, optional
            Step in seconds; default ``self.dt``. Ignored by discrete-time plants.

        Returns
        -------
        Tensor, shape ``(batch, state_dim)``

        Raises
        ------
        DimensionError, NonFiniteError
            On a malformed, complex or non-finite ``x`` or ``u``.
        ConfigError
            If ``dt`` is not a positive finite number of seconds.
        """
        dt = self.dt if dt is None else check_dt(dt, self.name)
        x = self.check_state(x)
        u = self.check_control(u)
        if u.shape[0] != x.shape[0]:
            raise DimensionError(f"{self.name}: u has batch {u.shape[0]} but x has batch {x.shape[0]}")
        if self.discrete:
            return self.discrete_step(x, u)
        return self._integrate(x, u.unsqueeze(1), dt)[-1]

    def rollout(self, x0: torch.Tensor, controls: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        """Simulate a control sequence from ``x0`` under zero-order hold.

        Parameters
        ----------
        x0 : Tensor, shape ``(batch, state_dim)``
            Initial states.
        controls : Tensor, shape ``(batch, horizon, control_dim)``
            Control sequence, ``controls[:, k]`` held on ``[k dt, (k + 1) dt)``.
        dt : float, optional
            Sample time in seconds; default ``self.dt``.

        Returns
        -------
        Tensor, shape ``(batch, horizon + 1, state_dim)``
            The trajectory, ``x0`` first. Differentiable with respect to ``x0``, ``controls``
            and the physical parameters.

        Raises
        ------
        DimensionError, NonFiniteError
            On malformed, complex or non-finite inputs, or batch sizes that differ.
        ConfigError
            If ``dt`` is not a positive finite number of seconds.
        """
        dt = self.dt if dt is None else check_dt(dt, self.name)
        x0 = self.check_state(x0, "x0")
        controls = self._check(controls, self.control_dim, "controls", "control_dim", ndim=3)
        if controls.shape[0] != x0.shape[0]:
            raise DimensionError(
                f"{self.name}: controls has batch {controls.shape[0]} but x0 has batch {x0.shape[0]}"
            )
        if controls.shape[1] == 0:
            return x0.unsqueeze(1)
        if self.discrete:
            states = [x0]
            for k in range(controls.shape[1]):
                states.append(self.discrete_step(states[-1], controls[:, k]))
            return torch.stack(states, dim=1)
        return self._integrate(x0, controls, dt).transpose(0, 1)

    # ------------------------------------------------------------------ python-control
    def _jacobians(self, fun, x_eq, u_eq):
        x_eq = torch.as_tensor(np.asarray(x_eq, dtype=float).reshape(1, -1), dtype=torch.float64)
        u_eq = torch.as_tensor(np.asarray(u_eq, dtype=float).reshape(1, -1), dtype=torch.float64)
        self.check_state(x_eq, "x_eq")
        self.check_control(u_eq, "u_eq")
        plant = self if self.u_min.dtype == torch.float64 else _float64_copy(self)
        A, B = torch.autograd.functional.jacobian(lambda x, u: fun(plant, x, u)[0], (x_eq[0:1], u_eq[0:1]))
        return A.reshape(self.state_dim, self.state_dim).numpy(), B.reshape(self.state_dim, self.control_dim).numpy()

    def linearize(self, x_eq, u_eq) -> ct.StateSpace:
        """Linearisation about ``(x_eq, u_eq)`` as a python-control :class:`~control.StateSpace`.

        ``A = df/dx`` and ``B = df/du`` come from torch autograd in float64. For continuous
        plants the system is continuous-time (``dt = 0``); for discrete plants it is the
        discrete-time linearisation with sample time ``self.dt``. ``C = I``, ``D = 0``.

        Parameters
        ----------
        x_eq : array_like, shape ``(state_dim,)``
        u_eq : array_like, shape ``(control_dim,)``

        Returns
        -------
        control.StateSpace
        """
        if self.discrete:
            A, B = self._jacobians(lambda p, x, u: p.discrete_step(x, u), x_eq, u_eq)
            dt = self.dt
        else:
            A, B = self._jacobians(lambda p, x, u: p.f(x, u), x_eq, u_eq)
            dt = 0
        n, m = A.shape[0], B.shape[1]
        return ct.ss(
            A, B, np.eye(n), np.zeros((n, m)), dt,
            inputs=list(self.control_names), outputs=list(self.state_names), states=list(self.state_names),
            name=f"{self.name}_linearized",
        )

    def to_iosys(self, name: str | None = None) -> ct.NonlinearIOSystem:
        """The plant as a python-control :class:`~control.NonlinearIOSystem`.

        Inputs are the controls, outputs the full state. A continuous plant gives a
        continuous-time system whose update function is ``f``; a discrete plant a
        discrete-time system with sample time ``self.dt``. The system evaluates the torch
        model in float64 on one state at a time.
        """
        plant = _float64_copy(self)

        def updfcn(t, x, u, params):
            with torch.no_grad():
                xt = torch.as_tensor(np.asarray(x, dtype=float).reshape(1, -1))
                ut = torch.as_tensor(np.asarray(u, dtype=float).reshape(1, -1))
                out = plant.discrete_step(xt, ut) if plant.discrete else plant.f(xt, ut)
            return out[0].numpy()

        return ct.nlsys(
            updfcn, lambda t, x, u, params: np.asarray(x), dt=self.dt if self.discrete else 0,
            inputs=list(self.control_names), outputs=list(self.state_names), states=list(self.state_names),
            name=name or self.name,
        )

    # ------------------------------------------------------------------ helpers for users
    def clamp_controls(self, controls: torch.Tensor) -> torch.Tensor:
        """Controls clipped to ``[u_min, u_max]`` (any leading shape, last dim ``control_dim``)."""
        return torch.maximum(torch.minimum(controls, self.u_max.to(controls)), self.u_min.to(controls))


def _float64_copy(plant: Plant) -> Plant:
    clone = copy.deepcopy(plant)
    return clone.double()
