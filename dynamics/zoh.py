"""Exact zero-order-hold rollouts of linear plants in lifted (batch-matrix) form.

For ``dx/dt = A x + B u`` with ``u`` held on each interval of ``dt`` seconds, the block matrix
exponential of Van Loan (IEEE Trans. Automatic Control 23(3), 1978, 395-404)

.. math::

    \\exp\\left(\\begin{bmatrix} A & B \\\\ 0 & 0 \\end{bmatrix} t\\right)
    = \\begin{bmatrix} e^{A t} & \\int_0^t e^{A s} ds\\, B \\\\ 0 & I \\end{bmatrix}

gives, evaluated at ``t = dt``, the discrete pair ``A_d = e^{A dt}``, ``B_d`` (the ``zoh``
method of :func:`control.c2d`), and at ``t = k dt`` the powers ``A_d^k``. The whole
trajectory is then linear in ``x_0`` and the controls (the "lifted" or batch form of MPC,
e.g. Borrelli, Bemporad & Morari, *Predictive Control for Linear and Hybrid Systems*, CUP 2017,
Sec. 8.2):

.. math::

    x_k = \\Phi_k x_0 + \\sum_{j<k} \\Gamma_{k j} u_j, \\qquad
    \\Phi_k = A_d^k, \\quad \\Gamma_{k j} = A_d^{k-1-j} B_d ,

so a rollout of any horizon is two tensor contractions instead of a loop over time steps. The
matrices come from one batched :func:`torch.linalg.matrix_exp` and are differentiable in
``A`` and ``B``.
"""

from __future__ import annotations

import numbers

import torch

from .errors import ConfigError, DimensionError
from .fixed_step import check_dt, check_real

__all__ = ["lifted_zoh", "lifted_rollout"]


def lifted_zoh(A: torch.Tensor, B: torch.Tensor, dt: float, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lifted exact-ZOH matrices of ``dx/dt = A x + B u``.

    Parameters
    ----------
    A : Tensor, shape ``(n, n)``
    B : Tensor, shape ``(n, m)``
    dt : float
        Hold interval in seconds.
    horizon : int
        ``N`` >= 1.

    Returns
    -------
    Phi : Tensor, shape ``(N + 1, n, n)``
        ``A_d^k`` for ``k = 0..N``.
    Gamma : Tensor, shape ``(N + 1, N, n, m)``
        ``A_d^(k-1-j) B_d`` where ``j < k``, zero elsewhere.

    Raises
    ------
    ConfigError
        If ``dt`` is not a positive finite number or ``horizon`` not a positive integer.
    DimensionError
        If ``A`` is not square, ``B`` does not have ``n`` rows, or either is complex.
    """
    dt = check_dt(dt, "lifted_zoh")
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
        raise ConfigError(f"lifted_zoh: horizon must be a positive integer, got {horizon!r}")
    check_real(A, "A", "lifted_zoh")
    check_real(B, "B", "lifted_zoh")
    if A.ndim != 2 or A.shape[0] != A.shape[1] or B.ndim != 2 or B.shape[0] != A.shape[0]:
        raise DimensionError(
            f"lifted_zoh: A has shape {tuple(A.shape)} and B {tuple(B.shape)}; expected (n, n) and (n, m)"
        )
    horizon = int(horizon)
    n, m = B.shape
    M = torch.cat((torch.cat((A, B), 1), torch.zeros(m, n + m, dtype=A.dtype, device=A.device)), 0)
    t = torch.arange(horizon + 1, dtype=A.dtype, device=A.device) * dt
    E = torch.linalg.matrix_exp(M * t.view(-1, 1, 1))  # (N + 1, n + m, n + m)
    Phi = E[:, :n, :n]
    Bd = E[1, :n, n:]
    blocks = Phi[:horizon] @ Bd  # (N, n, m): A_d^i B_d
    k = torch.arange(horizon + 1, device=A.device).view(-1, 1)
    j = torch.arange(horizon, device=A.device).view(1, -1)
    lag = (k - 1 - j).clamp_min(0)
    Gamma = blocks[lag] * (j < k).to(A.dtype).view(horizon + 1, horizon, 1, 1)
    return Phi, Gamma


def lifted_rollout(Phi: torch.Tensor, Gamma: torch.Tensor, x0: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """Trajectories ``(batch, N + 1, n)`` from ``x0`` ``(batch, n)`` and ``controls`` ``(batch, N, m)``
    with the matrices of :func:`lifted_zoh`.

    Raises
    ------
    DimensionError
        If ``x0`` or ``controls`` is complex (a dtype check: no data is read, so exported
        programs keep it at no cost).
    """
    check_real(x0, "x0", "lifted_rollout")
    check_real(controls, "controls", "lifted_rollout")
    return torch.einsum("kab,zb->zka", Phi, x0) + torch.einsum("kjam,zjm->zka", Gamma, controls)
