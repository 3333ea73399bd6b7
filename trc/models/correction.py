"""Terminal correction: Levenberg-Marquardt steps on the terminal error through the plant.

A learned plan of a swing-up or a landing is close to the optimum but, rolled out open loop
over the whole horizon, misses the target: the upright pendulum is unstable and a 72 s descent
integrates every small thrust error. This stage fixes the miss with the differentiable plant,
as a shooting method does (Betts, *Practical Methods for Optimal Control Using Nonlinear
Programming*, 2nd ed., SIAM 2010, Sec. 3.5): with the scaled terminal error
``e(a) = (x_N(a) - x*) / s`` of the control pre-activations ``a`` and its Jacobian
``G = de/da`` ``(batch, n_t, N m)`` (one backward pass per constrained state entry), each step is
the damped minimum-norm Gauss-Newton step

.. math::

    \\Delta a = -G^T (G G^T + \\lambda I)^{-1} e ,

the smallest change of the plan that removes the linearised miss, so the plan stays near the
network's (near-optimal) one. The damping ``lambda`` of each sample follows Levenberg-Marquardt
(Nocedal & Wright, *Numerical Optimization*, 2nd ed., Sec. 10.3): divided by 3 after a step
that lowers ``||e||``, multiplied by 4 (and the step undone) after one that does not, and
kept above ``16 eps max(1, max diag(G G^T))`` (``eps`` the dtype's machine epsilon), so that a
rank-deficient ``G`` (saturated controls, a target direction the plan cannot move) never makes
the system singular; a sample whose system still cannot be solved takes no step. The
controls stay within their bounds because the steps are taken on the pre-activations.

Every sample is corrected at once; no Python loop runs over the batch.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from dynamics.plant import Plant

__all__ = ["terminal_correction"]

def terminal_correction(
    plant: Plant,
    x0: torch.Tensor,
    target: torch.Tensor,
    a: torch.Tensor,
    squash: Callable[[torch.Tensor], torch.Tensor],
    scale: torch.Tensor,
    dims: Sequence[int] | None = None,
    steps: int = 5,
    damping: float = 1e-3,
    tol: float = 1e-3,
) -> torch.Tensor:
    """Correct control pre-activations so that the rollout ends at the target.

    Parameters
    ----------
    plant : dynamics.Plant
        Differentiable plant; ``plant.rollout(x0, u)`` is differentiated.
    x0, target : Tensor, shape ``(batch, state_dim)``
        Initial and target states (state units).
    a : Tensor, shape ``(batch, horizon, control_dim)``
        Pre-activations of the plan; ``squash(a)`` are its controls.
    squash : callable
        Map from pre-activations to bounded controls (the model's ``squash``).
    scale : Tensor, shape ``(state_dim,)``
        Positive state scale ``s`` of the error.
    dims : sequence of int, optional
        State entries the target constrains (default all; the rocket leaves out its mass).
    steps : int
        Levenberg-Marquardt iterations (each: one rollout and ``len(dims)`` backward passes).
    damping : float
        Initial damping ``lambda`` (> 0), in units of the scaled error squared (the plan as
        given counts as the first accepted point, so the first step uses ``damping / 3``).
    tol : float
        Stop early once every sample's ``||e||`` is below ``tol``.

    Returns
    -------
    Tensor, shape ``(batch, horizon, control_dim)``
        Corrected pre-activations, detached. A sample's ``||e||`` never increases.

    Notes
    -----
    Runs under autograd even inside ``torch.no_grad`` or ``torch.inference_mode``.
    """
    idx = list(range(x0.shape[-1])) if dims is None else list(dims)
    with torch.inference_mode(False), torch.enable_grad():
        x0, target, scale = x0.clone(), target.clone(), scale.clone()
        best = a.detach().clone()
        lam = torch.full((a.shape[0],), float(damping), dtype=a.dtype, device=a.device)
        eye = torch.eye(len(idx), dtype=a.dtype, device=a.device)
        e_best = G = None
        trial = best
        for it in range(steps + 1):
            trial = trial.detach().requires_grad_(True)
            x_N = plant.rollout(x0, squash(trial))[:, -1]
            e = ((x_N[:, idx] - target[:, idx]) / scale[idx]).nan_to_num(nan=1e6, posinf=1e6, neginf=-1e6)
            norm = torch.linalg.vector_norm(e.detach(), dim=-1)
            if e_best is None:
                better = torch.ones_like(norm, dtype=torch.bool)
                e_best, G = e.detach(), torch.zeros(*e.shape, trial[0].numel(), dtype=a.dtype, device=a.device)
            else:
                better = norm < torch.linalg.vector_norm(e_best, dim=-1)
            lam = torch.where(better, lam / 3, lam * 4)
            best = torch.where(better.view(-1, 1, 1), trial.detach(), best)
            e_best = torch.where(better.view(-1, 1), e.detach(), e_best)
            if bool((torch.linalg.vector_norm(e_best, dim=-1) < tol).all()) or it == steps:
                break
            rows = [
                torch.autograd.grad(e[:, i].sum(), trial, retain_graph=i < len(idx) - 1)[0].flatten(1)
                for i in range(len(idx))
            ]
            G = torch.where(better.view(-1, 1, 1), torch.stack(rows, 1), G)
            GGt = G @ G.transpose(1, 2)
            # a damping below the matrix's rounding level leaves G G^T singular when G is rank
            # deficient (saturated controls, an unreachable direction): keep it above that level
            floor = 16 * torch.finfo(a.dtype).eps * GGt.diagonal(dim1=1, dim2=2).amax(-1).clamp_min(1.0)
            lam = torch.maximum(lam, floor)
            solution, info = torch.linalg.solve_ex(GGt + lam.view(-1, 1, 1) * eye, e_best.unsqueeze(-1))
            solution = torch.where((info == 0).view(-1, 1, 1), solution, torch.zeros_like(solution))
            step = G.transpose(1, 2) @ solution.nan_to_num(0.0, 0.0, 0.0)
            trial = best - step.view_as(best)
    return best.detach()
