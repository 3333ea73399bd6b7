"""Linear time-invariant plants ``dx/dt = A x + B u`` or ``x[k+1] = A x[k] + B u[k]``."""

from __future__ import annotations

import math

import control as ct
import numpy as np
import torch

from .errors import ConfigError, DimensionError, NonFiniteError
from .plant import Plant
from .registry import register

__all__ = ["Linear"]


def _matrix(value, what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DimensionError(f"linear: {what} must be a 2-D array of numbers, got {value!r}") from exc
    return a


@register("linear")
class Linear(Plant):
    r"""Linear time-invariant plant, continuous or discrete time.

    Continuous (``discrete=False``): :math:`\dot x = A x + B u`, simulated under zero-order
    hold exactly (``method="exact"``, the default: the matrix exponential of
    :mod:`dynamics.zoh`, as :func:`control.c2d` with ``"zoh"``) or with a torchdiffeq
    ``method``. Discrete (``discrete=True``):
    :math:`x_{k+1} = A x_k + B u_k` with sample time ``dt``.

    The plant's output is its full state: the ``C`` and ``D`` matrices of a ``sys`` are not
    used.

    Parameters
    ----------
    A : array_like, shape ``(n, n)``
        State matrix.
    B : array_like, shape ``(n, m)``
        Input matrix.
    sys : control.StateSpace or control.TransferFunction, optional
        Instead of ``A`` and ``B``: a python-control system (converted with
        :func:`control.ss`). Its sample time decides the kind of plant: ``sys.dt == 0`` (or
        ``None``) gives a continuous plant, ``sys.dt > 0`` a discrete plant with
        ``dt = sys.dt``; ``sys.dt = True`` (discrete with unspecified sampling period) is
        rejected. State and input labels of ``sys`` become the plant's names.
    discrete : bool, optional
        Whether ``(A, B)`` is a difference equation; default ``False`` (or decided by ``sys``).
    state_names, control_names : sequence of str, optional
        Names of the states and controls; default ``x[i]`` and ``u[j]`` as in python-control.
    **kwargs
        ``dt`` (sample time in seconds, or of the difference equation), bounds and integrator
        options of :class:`~dynamics.Plant`.

    Raises
    ------
    DimensionError
        If ``A`` is not square, ``B`` does not have ``n`` rows, or a list of names has the
        wrong length.
    NonFiniteError
        If ``A`` or ``B`` contains NaN or infinity.
    ConfigError
        If neither or both of ``sys`` and ``(A, B)`` are given, ``sys.dt`` is ``True``, or
        ``discrete``/``dt`` contradict ``sys``.

    Notes
    -----
    ``A`` and ``B`` are stored as buffers (see :meth:`Plant.set_params`), so
    ``dynamics.make(**plant.config())`` rebuilds the plant and
    ``plant.get_buffer("A").requires_grad_()`` makes rollouts differentiable in ``A``.

    Examples
    --------
    >>> import control as ct, dynamics
    >>> plant = dynamics.make("linear", A=[[0, 1], [0, 0]], B=[[0], [1]], dt=0.1)
    >>> plant.is_controllable()
    True
    >>> sysd = ct.c2d(ct.ss([[0, 1], [0, 0]], [[0], [1]], [[1, 0]], 0), 0.1)
    >>> dynamics.make("linear", sys=sysd).discrete
    True
    """

    def __init__(
        self,
        A=None,
        B=None,
        *,
        sys=None,
        discrete: bool | None = None,
        state_names=None,
        control_names=None,
        **kwargs,
    ):
        if sys is not None:
            if A is not None or B is not None:
                raise ConfigError("linear: give either sys or (A, B), not both")
            if not isinstance(sys, ct.LTI):
                raise ConfigError(f"linear: sys must be a python-control LTI system, got {type(sys).__name__}")
            sys = ct.ss(sys)
            A, B = sys.A, sys.B
            state_names = list(sys.state_labels) if state_names is None else state_names
            control_names = list(sys.input_labels) if control_names is None else control_names
            if sys.dt is True:
                raise ConfigError(
                    "linear: sys.dt is True (discrete time with an unspecified sample time); "
                    "give the sample time in seconds, e.g. ct.ss(A, B, C, D, dt=0.1)"
                )
            sys_discrete = bool(sys.dt)  # None and 0 are continuous time
            if discrete is not None and bool(discrete) != sys_discrete:
                raise ConfigError(f"linear: discrete={discrete!r} contradicts sys.dt={sys.dt!r}")
            discrete = sys_discrete
            if sys_discrete:
                if "dt" in kwargs and not math.isclose(float(kwargs["dt"]), float(sys.dt)):
                    raise ConfigError(f"linear: dt={kwargs['dt']!r} contradicts sys.dt={sys.dt!r}")
                kwargs["dt"] = float(sys.dt)
        elif A is None or B is None:
            raise ConfigError("linear: give the matrices A (n, n) and B (n, m), or sys=<control.StateSpace>")

        A, B = _matrix(A, "A"), _matrix(B, "B")
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise DimensionError(f"linear: A has shape {A.shape}; expected a non-empty square (n, n)")
        n = A.shape[0]
        if B.ndim != 2 or B.shape[0] != n or B.shape[1] == 0:
            raise DimensionError(f"linear: B has shape {B.shape}; expected (n, m) = ({n}, m) with m >= 1")
        m = B.shape[1]
        for mat, what in ((A, "A"), (B, "B")):
            if not np.isfinite(mat).all():
                raise NonFiniteError(f"linear: {what} contains NaN or infinity: {mat.tolist()}")
        self.state_names = self._names(state_names, n, "x", "state_names")
        self.control_names = self._names(control_names, m, "u", "control_names")
        self.state_units = ("",) * n
        self.control_units = ("",) * m
        self.discrete = bool(discrete)
        if not self.discrete:
            kwargs.setdefault("method", "exact")
        super().__init__(**kwargs)
        self.set_params(A=A, B=B)

    @staticmethod
    def _names(names, dim: int, prefix: str, what: str) -> tuple[str, ...]:
        if names is None:
            return tuple(f"{prefix}[{i}]" for i in range(dim))
        names = tuple(str(s) for s in names)
        if len(names) != dim:
            raise DimensionError(f"linear: {what} has {len(names)} entries; expected {dim}")
        return names

    def config(self) -> dict:
        """As :meth:`Plant.config`, plus ``discrete`` and the state and control names."""
        return {
            **super().config(),
            "discrete": self.discrete,
            "state_names": list(self.state_names),
            "control_names": list(self.control_names),
        }

    def extra_repr(self) -> str:
        return super().extra_repr() + f", discrete={self.discrete}"

    def linear_matrices(self):
        """``(A, B)`` of a continuous plant (its rollouts default to the exact zero-order hold);
        ``None`` for a discrete one."""
        return None if self.discrete else (self.A, self.B)

    def _affine(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x @ self.A.to(x).T + u @ self.B.to(x).T

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``A x + B u`` for ``x`` ``(batch, n)``, ``u`` ``(batch, m)``; see :meth:`Plant.f`.

        Raises
        ------
        NotImplementedError
            For a discrete plant, which has no vector field (use :meth:`discrete_step`).
        """
        if self.discrete:
            raise NotImplementedError("linear: this plant is discrete-time; use discrete_step() or step()")
        return self._affine(x, u)

    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x[k+1] = A x[k] + B u[k]``, shapes ``(batch, n)``; only for ``discrete=True``."""
        if not self.discrete:
            return super().discrete_step(x, u)
        return self._affine(x, u)

    # ------------------------------------------------------------------ controllability
    def controllability_rank(self, tol: float | None = None) -> int:
        """Rank of the controllability matrix ``[B, A B, ..., A^(n-1) B]`` (:func:`control.ctrb`).

        Parameters
        ----------
        tol : float, optional
            Singular-value threshold of :func:`numpy.linalg.matrix_rank`.
        """
        A = self.A.detach().cpu().double().numpy()
        B = self.B.detach().cpu().double().numpy()
        return int(np.linalg.matrix_rank(ct.ctrb(A, B), tol=tol))

    def is_controllable(self, tol: float | None = None) -> bool:
        """Whether ``(A, B)`` is controllable (full-rank controllability matrix)."""
        return self.controllability_rank(tol) == self.state_dim
