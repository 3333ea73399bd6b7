"""Time-varying LQR tracking of a predicted trajectory: feed-forward plus local feedback.

On a fast unstable plant an open-loop plan cannot be precise enough: on the cart-pole of
``configs/cartpole.yaml`` a change of 1 mN in the optimal forces moves the final pole rate by
0.9 rad/s. What stabilises a swing-up in practice is feedback around the planned trajectory
(Tedrake, *Underactuated Robotics*, 2023, Ch. 8, "time-varying LQR"; Anderson & Moore,
*Optimal Control: Linear Quadratic Methods*, 1990, Ch. 2). Given a reference ``(x_ref, u_ref)``
predicted by the network, this module

1. linearises the zero-order-hold map ``x_{k+1} = F(x_k, u_k)`` of the plant at every reference
   point at once (``A_k = dF/dx``, ``B_k = dF/du``; ``state_dim`` backward passes through one
   batched step);
2. runs the discrete Riccati recursion backwards, ``P_N = Q_f``,
   ``K_k = (R + B_k^T P_{k+1} B_k)^{-1} B_k^T P_{k+1} A_k``,
   ``P_k = Q + A_k^T P_{k+1} (A_k - B_k K_k)``;
3. simulates the closed loop ``u_k = sat(u_ref,k - K_k (x_k - x_ref,k))`` from the true ``x_0``.

The controls that closed loop applied are the new open-loop plan: the same trajectory, now
started where the plant really goes. Everything is batched; the loops run over the horizon.
"""

from __future__ import annotations

import torch

from dynamics.plant import Plant

__all__ = ["linearize_along", "tvlqr_gains", "tvlqr_tracking"]


def linearize_along(plant: Plant, x_ref: torch.Tensor, u_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobians of the plant's one-step map at every point of reference trajectories.

    Parameters
    ----------
    plant : dynamics.Plant
    x_ref : Tensor, shape ``(batch, horizon, state_dim)``
        States ``x_0 .. x_{N-1}`` of the linearisation points.
    u_ref : Tensor, shape ``(batch, horizon, control_dim)``

    Returns
    -------
    A : Tensor, shape ``(batch, horizon, state_dim, state_dim)``
    B : Tensor, shape ``(batch, horizon, state_dim, control_dim)``
    """
    batch, N, n = x_ref.shape
    with torch.inference_mode(False), torch.enable_grad():
        x = x_ref.detach().clone().reshape(batch * N, n).requires_grad_(True)
        u = u_ref.detach().clone().reshape(batch * N, -1).requires_grad_(True)
        y = plant.step(x, u)
        rows = [torch.autograd.grad(y[:, i].sum(), (x, u), retain_graph=i < n - 1) for i in range(n)]
    A = torch.stack([r[0] for r in rows], 1).view(batch, N, n, n)
    B = torch.stack([r[1] for r in rows], 1).view(batch, N, n, -1)
    return A.detach(), B.detach()


def tvlqr_gains(A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor, R: torch.Tensor, Qf: torch.Tensor) -> torch.Tensor:
    """Finite-horizon discrete LQR gains ``K_k`` ``(batch, horizon, control_dim, state_dim)``.

    ``A`` ``(batch, N, n, n)``, ``B`` ``(batch, N, n, m)``; weights ``Q``, ``Qf`` ``(n, n)`` and
    ``R`` ``(m, m)`` (the problem's, per step). The recursion of the module documentation.
    """
    batch, N, n, m = B.shape
    P = Qf.to(A).expand(batch, n, n)
    Q, R = Q.to(A), R.to(A)
    gains = [None] * N
    for k in reversed(range(N)):
        Ak, Bk = A[:, k], B[:, k]
        BtP = Bk.transpose(1, 2) @ P
        K = torch.linalg.solve(R + BtP @ Bk, BtP @ Ak)
        P = Q + Ak.transpose(1, 2) @ P @ (Ak - Bk @ K)
        P = (P + P.transpose(1, 2)) / 2
        gains[k] = K
    return torch.stack(gains, 1)


def tvlqr_tracking(
    plant: Plant,
    x0: torch.Tensor,
    x_ref: torch.Tensor,
    u_ref: torch.Tensor,
    Q: torch.Tensor,
    R: torch.Tensor,
    Qf: torch.Tensor,
) -> torch.Tensor:
    """Controls of the TVLQR closed loop around ``(x_ref, u_ref)`` started at ``x0``.

    Parameters
    ----------
    plant : dynamics.Plant
        Its bounds ``u_min``, ``u_max`` saturate the closed-loop controls.
    x0 : Tensor, shape ``(batch, state_dim)``
        True initial states.
    x_ref : Tensor, shape ``(batch, horizon + 1, state_dim)``
        Reference states (``x_ref[:, 0]`` need not equal ``x0``).
    u_ref : Tensor, shape ``(batch, horizon, control_dim)``
    Q, R, Qf : Tensor
        Tracking weights ``(n, n)``, ``(m, m)``, ``(n, n)``.

    Returns
    -------
    Tensor, shape ``(batch, horizon, control_dim)``
        The controls applied, within the plant's bounds; detached.
    """
    with torch.no_grad():
        A, B = linearize_along(plant, x_ref[:, :-1], u_ref)
        K = tvlqr_gains(A, B, Q, R, Qf)
        x, applied = x0, []
        for k in range(u_ref.shape[1]):
            u = plant.clamp_controls(u_ref[:, k] - (K[:, k] @ (x - x_ref[:, k]).unsqueeze(-1)).squeeze(-1))
            applied.append(u)
            x = plant.step(x, u)
    return torch.stack(applied, 1)
