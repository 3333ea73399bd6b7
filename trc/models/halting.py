"""Adaptive halting (ACT) for recursive refinement: stop when another cycle stops paying.

After cycle ``k`` has produced controls ``u^(k)`` with cost ``J_k``, the halting head predicts
whether running cycle ``k + 1`` is worth it. It is trained with a binary cross-entropy against
the target "the next cycle lowers the cost by less than ``threshold`` times the current cost",
computed from the costs of all cycles of a training forward pass
(``return_all_iterations=True``). At inference (eval mode), each sample stops as soon as its
halting logit is positive; the rest of the batch continues.

This is the halting of Tiny Recursive Models (arXiv 2510.04871, Sec. 4.6: a single halting
probability trained with a binary target, no Q-learning "continue" loss), with the target
defined by the control cost instead of answer correctness; it descends from ACT (Graves,
"Adaptive Computation Time for Recurrent Neural Networks", arXiv 1603.08983, 2016).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import DimensionError

__all__ = ["HaltingHead", "halting_targets", "halting_loss"]


class HaltingHead(nn.Module):
    """Halting logit from the latent ``z_H`` ``(batch, D)`` and, if given, the feedback latent.

    ``logit = w_z' z_H + w_e' e + b``; initialised to ``w = 0``, ``b = -5`` (halting probability
    0.7 %), as in TRM, so an untrained head never stops refinement early.

    Parameters
    ----------
    latent_dim : int
        Width ``D`` of ``z_H`` and of the feedback latent.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.from_latent = nn.Linear(latent_dim, 1)
        self.from_feedback = nn.Linear(latent_dim, 1, bias=False)
        with torch.no_grad():
            self.from_latent.weight.zero_()
            self.from_latent.bias.fill_(-5.0)
            self.from_feedback.weight.zero_()

    def forward(self, z_H: torch.Tensor, feedback: torch.Tensor | None = None) -> torch.Tensor:
        """Halting logits, shape ``(batch,)``; positive means "stop refining"."""
        logit = self.from_latent(z_H)
        if feedback is not None:
            logit = logit + self.from_feedback(feedback)
        return logit.squeeze(-1)


def halting_targets(all_costs: torch.Tensor, threshold: float = 0.01, lookahead: str = "next") -> torch.Tensor:
    """Binary halting targets from the costs of every cycle.

    Parameters
    ----------
    all_costs : Tensor, shape ``(cycles + 1, batch)``
        ``J_k`` of the controls after cycle ``k`` (``k = 0`` the initial controls).
    threshold : float
        Relative improvement below which another cycle is not worth it.
    lookahead : {"next", "rest"}
        ``"next"``: target 1 where ``J_k - J_{k+1} < threshold * |J_k|``. ``"rest"``: compare
        with the best of all later cycles instead of the next one.

    Returns
    -------
    Tensor, shape ``(cycles, batch)``
        Float targets in ``{0, 1}`` for the decisions after cycles ``0 .. cycles - 1``.

    Raises
    ------
    DimensionError
        If ``all_costs`` is not ``(cycles + 1, batch)`` with at least two cycles.
    ValueError
        On an unknown ``lookahead``.
    """
    if all_costs.ndim != 2 or all_costs.shape[0] < 2:
        raise DimensionError(f"all_costs has shape {tuple(all_costs.shape)}; expected (cycles + 1 >= 2, batch)")
    J = all_costs.detach()
    if lookahead == "next":
        later = J[1:]
    elif lookahead == "rest":
        later = torch.flip(torch.cummin(torch.flip(J[1:], (0,)), dim=0).values, (0,))
    else:
        raise ValueError(f"lookahead must be 'next' or 'rest', got {lookahead!r}")
    return ((J[:-1] - later) < threshold * J[:-1].abs()).to(J.dtype)


def halting_loss(
    halt_logits: torch.Tensor, all_costs: torch.Tensor, threshold: float = 0.01, lookahead: str = "next"
) -> torch.Tensor:
    """Binary cross-entropy of the halting head against :func:`halting_targets`.

    Parameters
    ----------
    halt_logits : Tensor, shape ``(cycles, batch)``
        ``TRCOutput.halt_logits``: the logit after cycles ``0 .. cycles - 1``.
    all_costs : Tensor, shape ``(cycles + 1, batch)``
        ``TRCOutput.all_costs`` of the same forward pass (not differentiated).
    threshold, lookahead
        See :func:`halting_targets`.

    Returns
    -------
    Tensor, scalar
        Mean binary cross-entropy (nats).

    Raises
    ------
    DimensionError
        If the shapes do not match.
    """
    targets = halting_targets(all_costs, threshold, lookahead)
    if halt_logits.shape != targets.shape:
        raise DimensionError(
            f"halt_logits has shape {tuple(halt_logits.shape)}; expected {tuple(targets.shape)} "
            f"(one logit per cycle but the last, from all_costs {tuple(all_costs.shape)})"
        )
    return F.binary_cross_entropy_with_logits(halt_logits, targets.to(halt_logits.dtype))
