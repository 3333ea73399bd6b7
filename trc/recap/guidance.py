"""Advantage conditioning and classifier-free guidance (CFGRL, Frans et al., arXiv 2505.23458; pi*0.6).

The policy sees the advantage indicator as one of three tokens: :data:`NEGATIVE`, :data:`POSITIVE`
and :data:`NULL` (no conditioning). Training replaces the indicator by the null token with
probability ``dropout`` (30 % in pi*0.6), so one network is both the unconditioned policy
``pi(a | o)`` and the conditioned one ``pi(a | o, I)``. At inference, classifier-free guidance
combines the two::

    a = a_null + beta (a_pos - a_null)                    (continuous actions)
    logits = logits_null + beta (logits_pos - logits_null) (discrete actions)

``beta = 0`` is the unconditioned policy, ``beta = 1`` the positive-conditioned one, and
``beta > 1`` sharpens towards the actions the positive condition favours (for logits this is
``pi_null^(1 - beta) pi_pos^beta``, renormalised, the CFGRL product policy).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dynamics.errors import ConfigError, DimensionError, NonFiniteError

__all__ = ["NEGATIVE", "POSITIVE", "NULL", "TOKEN_NAMES", "INDICATOR_DROPOUT", "indicator_tokens",
           "drop_indicators", "guide", "IndicatorEmbedding"]

NEGATIVE, POSITIVE, NULL = 0, 1, 2
#: The text form of the tokens (pi*0.6 gives the indicator as "Advantage: positive/negative").
TOKEN_NAMES = ("Advantage: negative", "Advantage: positive", "")
#: Probability of replacing the indicator by the null token in training (pi*0.6).
INDICATOR_DROPOUT = 0.3


def indicator_tokens(indicator) -> torch.Tensor:
    """Tokens ``(n,)`` int64 of bool indicators: :data:`POSITIVE` where true, :data:`NEGATIVE` elsewhere."""
    ind = torch.as_tensor(indicator, dtype=torch.bool)
    return torch.where(ind, POSITIVE, NEGATIVE).long()


def drop_indicators(tokens: torch.Tensor, dropout: float = INDICATOR_DROPOUT,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens with each replaced by :data:`NULL` with probability ``dropout``.

    Raises
    ------
    ConfigError
        If ``dropout`` is outside ``[0, 1]``.
    """
    if not (isinstance(dropout, (int, float)) and 0 <= dropout <= 1):
        raise ConfigError(f"indicator dropout must lie in [0, 1], got {dropout!r}")
    drop = torch.rand(tokens.shape, generator=generator) < dropout
    return torch.where(drop.to(tokens.device), torch.full_like(tokens, NULL), tokens)


def guide(null: torch.Tensor, positive: torch.Tensor, beta: float) -> torch.Tensor:
    """Classifier-free guidance ``null + beta (positive - null)`` (actions or logits, any shape).

    ``beta = 0`` returns ``null`` and ``beta = 1`` returns ``positive`` exactly (no arithmetic).

    Raises
    ------
    DimensionError
        If the shapes differ.
    NonFiniteError
        If ``beta`` is not finite.
    ConfigError
        If ``beta`` is negative.
    """
    if null.shape != positive.shape:
        raise DimensionError(f"guidance: unconditioned output has shape {tuple(null.shape)}, the conditioned one "
                             f"{tuple(positive.shape)}; expected the same")
    beta = float(beta)
    if not math.isfinite(beta):
        raise NonFiniteError(f"guidance: beta must be finite, got {beta}")
    if beta < 0:
        raise ConfigError(f"guidance: beta must be >= 0, got {beta}")
    if beta == 0:
        return null
    if beta == 1:
        return positive
    return null + beta * (positive - null)


class IndicatorEmbedding(nn.Module):
    """Embedding ``(n,) -> (n, dim)`` of the three tokens, initialised to zero (a fresh wrapper
    leaves the wrapped network's output unchanged).

    Raises
    ------
    DimensionError
        (on call) If tokens are not ``(n,)`` or not in ``{0, 1, 2}``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(3, dim)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.ndim != 1:
            raise DimensionError(f"indicator tokens have shape {tuple(tokens.shape)}; expected (batch,)")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > 2):
            raise DimensionError(f"indicator tokens must be 0 (negative), 1 (positive) or 2 (null), got values in "
                                 f"[{int(tokens.min())}, {int(tokens.max())}]")
        return self.embedding(tokens)
