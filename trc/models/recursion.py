"""The shared recursion core of Tiny Recursive Models, independent of any plant or task.

This module holds the part of TRC that is not about control: ONE small network ``f`` applied
recursively to a latent state, in the two schemes of the Tiny Recursive Models paper
(Jolicoeur-Martineau, *Less is More: Recursive Reasoning with Tiny Networks*, arXiv
2510.04871, 2025, Fig. 1 and Alg. 1-3):

* **single latent** -- one latent ``z`` refined by ``L_cycles`` applications of
  ``z <- f(z, x + extra)`` per outer cycle;
* **two level** -- a high-level latent ``z_H`` (the "answer" state) and a low-level latent
  ``z_L`` (the "reasoning" state); per H-cycle, ``L_cycles`` updates
  ``z_L <- f(z_L, z_H + x + extra)`` followed by one update ``z_H <- f(z_H, z_L)``, with the
  SAME network ``f`` for both levels.

``f(h, injection) = Block_L(... Block_1(h + injection))``: the injection is added to the latent
before the blocks (TRM's "input injection"), and every block is post-norm
(``h <- RMSNorm(h + MLP(h))``, Zhang & Sennrich 2019), which keeps the latent's scale fixed
however many times ``f`` is applied.

The core only knows latent tensors of shape ``(batch, latent_dim)`` or
``(batch, tokens, latent_dim)``. What is injected (an embedding of the problem, feedback from a
simulator, the current answer) and what is read out (controls, token logits, actions) belongs to
the policy that uses it: :class:`~trc.models.TinyRecursiveControl` rolls controls through a
plant between cycles; a discrete (maze, sudoku) policy or a visuomotor policy builds its
injection from tokens or images and reads :meth:`RecursionCore.output` with its own head.

Typical use::

    core = RecursionCore(latent_dim=128, hidden_dim=256, num_layers=2,
                         mode="two_level", L_cycles=4)
    state = core.init_state(x)                 # x: (B, D) or (B, T, D) input embedding
    for k in range(H_cycles):
        extra = my_feedback(core.output(state))     # anything shaped like x, or None
        state = core.step(state, x, extra)
        y_k = my_head(core.output(state))

or, without per-cycle feedback, ``outputs, state = core(x, H_cycles=3)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn

from dynamics.errors import ConfigError, DimensionError

from ..config import check_choice, check_int

__all__ = ["MODES", "RecursionConfig", "MLPBlock", "SharedNet", "LatentState", "RecursionCore"]

#: The two recursion schemes of the core.
MODES = ("single_latent", "two_level")


@dataclass
class RecursionConfig:
    """The recursion fields every policy configuration shares (TRM, arXiv 2510.04871).

    Policies' configurations (:class:`~trc.models.TRCConfig`,
    :class:`~trc.models.discrete.DiscretePolicyConfig`,
    :class:`~trc.models.visuomotor.VisuomotorConfig`) derive from it, changing defaults
    where they need to, and call ``super().__post_init__()``.

    Attributes
    ----------
    mode : {"two_level", "single_latent"}
        Recursion scheme: ``z_H`` and ``z_L``, or one latent.
    latent_dim : int
        Width ``D`` of the latent state(s).
    hidden_dim : int
        Hidden width of the shared network.
    num_layers : int
        Blocks of the shared network.
    H_cycles : int
        ``K``, outer refinement cycles.
    L_cycles : int
        ``z_L`` updates per H-cycle.

    Raises
    ------
    ConfigError
        On an unknown mode or a size that is not a positive integer.
    """

    mode: str = "two_level"
    latent_dim: int = 64
    hidden_dim: int = 256
    num_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 2

    def __post_init__(self):
        check_choice(self.mode, "model.mode", MODES)
        for name in ("latent_dim", "hidden_dim", "num_layers", "H_cycles", "L_cycles"):
            setattr(self, name, check_int(getattr(self, name), f"model.{name}", 1))


class MLPBlock(nn.Module):
    """Post-norm residual MLP block: ``h <- RMSNorm(h + W2 GELU(W1 h))``.

    Parameters
    ----------
    latent_dim : int
        Width ``D`` of the latent.
    hidden_dim : int
        Width of the hidden layer.
    dropout : float
        Dropout on the hidden layer (training only).
    token_mixing : int, optional
        If given, the number of tokens ``T``: the block first mixes information across
        tokens with an MLP over the token axis (TRM's attention-free ``mlp_t`` variant) before
        the channel MLP. Inputs must then be ``(batch, T, D)``.

    Notes
    -----
    Works on ``(batch, D)`` and ``(batch, T, D)`` tensors; samples never interact, so a sample's
    output does not depend on the rest of the batch.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, dropout: float = 0.0, token_mixing: int | None = None):
        super().__init__()
        layers = [nn.Linear(latent_dim, hidden_dim), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, latent_dim))
        self.norm = nn.RMSNorm(latent_dim)
        self.token_mixing = token_mixing
        if token_mixing is not None:
            t = check_int(token_mixing, "token_mixing", 1)
            self.token_mlp = nn.Sequential(nn.Linear(t, 2 * t), nn.GELU(), nn.Linear(2 * t, t))
            self.token_norm = nn.RMSNorm(latent_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h``: ``(batch, D)`` or ``(batch, T, D)``; returns the same shape."""
        if self.token_mixing is not None:
            if h.ndim != 3 or h.shape[1] != self.token_mixing:
                raise DimensionError(
                    f"token-mixing block expects (batch, {self.token_mixing}, D) latents, got {tuple(h.shape)}"
                )
            h = self.token_norm(h + self.token_mlp(h.transpose(1, 2)).transpose(1, 2))
        return self.norm(h + self.mlp(h))


class SharedNet(nn.Module):
    """The network ``f(h, injection)`` that TRM applies recursively to every latent.

    ``f(h, injection) = Block_L(... Block_1(h + injection))`` with post-norm
    :class:`MLPBlock` s (TRM's ``ReasoningModule``, arXiv 2510.04871, Sec. 4).

    Parameters
    ----------
    latent_dim, hidden_dim : int
        Latent width ``D`` and hidden width of each block.
    num_layers : int
        Number of blocks (TRM uses 2).
    dropout : float
        Dropout inside the blocks.
    token_mixing : int, optional
        Number of tokens for token-mixing blocks, see :class:`MLPBlock`.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int,
        num_layers: int = 2,
        dropout: float = 0.0,
        token_mixing: int | None = None,
    ):
        super().__init__()
        num_layers = check_int(num_layers, "num_layers", 1)
        self.blocks = nn.ModuleList(MLPBlock(latent_dim, hidden_dim, dropout, token_mixing) for _ in range(num_layers))

    def forward(self, h: torch.Tensor, injection: torch.Tensor | None = None) -> torch.Tensor:
        """Apply ``f``; ``h`` and ``injection`` are ``(batch, D)`` or ``(batch, T, D)``."""
        if injection is not None:
            h = h + injection
        for block in self.blocks:
            h = block(h)
        return h


class LatentState(NamedTuple):
    """The recursive state: ``z_H`` ``(batch, [T,] D)`` and ``z_L`` (``None`` in single-latent mode).

    In single-latent mode ``z_H`` holds the one latent ``z``.
    """

    z_H: torch.Tensor
    z_L: Optional[torch.Tensor] = None

    def detach(self) -> "LatentState":
        """The state cut from the autograd graph (TRM's carry between supervision steps)."""
        return LatentState(self.z_H.detach(), None if self.z_L is None else self.z_L.detach())


class RecursionCore(nn.Module):
    """One shared network applied recursively, in TRM's single-latent or two-level scheme.

    Parameters
    ----------
    latent_dim : int
        Latent width ``D``.
    hidden_dim : int
        Hidden width of the blocks of the shared network.
    num_layers : int
        Blocks in the shared network.
    mode : {"single_latent", "two_level"}
        Recursion scheme, see the module documentation.
    L_cycles : int
        Inner updates per outer cycle: ``z`` updates (single latent) or ``z_L`` updates before
        each ``z_H`` update (two level).
    dropout : float
        Dropout in the shared network.
    token_mixing : int, optional
        Number of tokens if latents are token sequences that must exchange information.
    net : nn.Module, optional
        A custom shared network ``f(h, injection) -> h`` (same shape in and out) instead of
        :class:`SharedNet` (e.g. a graph network over the cells of a maze); ``hidden_dim``,
        ``num_layers``, ``dropout`` and ``token_mixing`` are then ignored.

    Attributes
    ----------
    net : SharedNet
        The ONE network ``f`` used for every update at every level.
    z_L_init : Tensor, shape ``(latent_dim,)``
        Initial ``z_L`` (two-level mode; a fixed random buffer), broadcast over the batch
        (and tokens).

    Raises
    ------
    ConfigError
        On an unknown mode or a non-positive size.

    References
    ----------
    A. Jolicoeur-Martineau, "Less is More: Recursive Reasoning with Tiny Networks",
    arXiv:2510.04871, 2025 (Alg. 3 ``latent_recursion`` / ``deep_recursion``).
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int,
        num_layers: int = 2,
        mode: str = "two_level",
        L_cycles: int = 4,
        dropout: float = 0.0,
        token_mixing: int | None = None,
        net: nn.Module | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"recursion mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.latent_dim = check_int(latent_dim, "latent_dim", 1)
        self.L_cycles = check_int(L_cycles, "L_cycles", 1)
        if net is None:
            net = SharedNet(latent_dim, check_int(hidden_dim, "hidden_dim", 1), num_layers, dropout, token_mixing)
        self.net = net
        if mode == "two_level":
            # A fixed random start (a buffer, as in TRM): it would receive no gradient under the
            # 1-step gradient anyway, and the post-norm blocks forget its scale after one update.
            self.register_buffer("z_L_init", torch.randn(latent_dim))

    @property
    def two_level(self) -> bool:
        """True in two-level (``z_H``, ``z_L``) mode."""
        return self.mode == "two_level"

    def init_state(self, x: torch.Tensor, z_H: torch.Tensor | None = None) -> LatentState:
        """The initial state for input embedding ``x`` ``(batch, [T,] D)``.

        ``z_H`` (or the single latent ``z``) starts at ``x`` unless given; ``z_L`` at
        :attr:`z_L_init`.
        """
        self._check(x, "x")
        z_H = x if z_H is None else self._check(z_H, "z_H")
        z_L = self.z_L_init.to(x).expand_as(x) if self.two_level else None
        return LatentState(z_H, z_L)

    def step(self, state: LatentState, x: torch.Tensor, extra: torch.Tensor | None = None) -> LatentState:
        """One outer cycle (one H-cycle in two-level mode).

        Parameters
        ----------
        state : LatentState
        x : Tensor, shape ``(batch, [T,] D)``
            Input embedding, injected at every low-level update.
        extra : Tensor, optional, same shape as ``x``
            Additional injection for this cycle (e.g. an encoding of feedback from a
            simulator, or of the current answer).

        Returns
        -------
        LatentState
            Single latent: ``z`` after ``L_cycles`` updates ``z <- f(z, x + extra)``.
            Two level: ``L_cycles`` updates ``z_L <- f(z_L, z_H + x + extra)``, then
            ``z_H <- f(z_H, z_L)``.
        """
        inj = x if extra is None else x + extra
        if not self.two_level:
            z = state.z_H
            for _ in range(self.L_cycles):
                z = self.net(z, inj)
            return LatentState(z, None)
        z_H, z_L = state
        inj = z_H + inj  # z_H is fixed during the L-cycles
        for _ in range(self.L_cycles):
            z_L = self.net(z_L, inj)
        z_H = self.net(z_H, z_L)
        return LatentState(z_H, z_L)

    @staticmethod
    def output(state: LatentState) -> torch.Tensor:
        """The latent that heads decode: ``z_H`` (or the single ``z``)."""
        return state.z_H

    def forward(
        self,
        x: torch.Tensor,
        H_cycles: int = 3,
        state: LatentState | None = None,
        feedback: Callable[[int, LatentState], torch.Tensor | None] | None = None,
        gradient_last_cycle_only: bool = False,
    ) -> tuple[list[torch.Tensor], LatentState]:
        """Run ``H_cycles`` outer cycles (TRM's ``deep_recursion``).

        Parameters
        ----------
        x : Tensor, shape ``(batch, [T,] D)``
            Input embedding.
        H_cycles : int
            Number of outer cycles.
        state : LatentState, optional
            Starting state (e.g. a carry from a previous supervision step); default
            :meth:`init_state`.
        feedback : callable, optional
            ``feedback(k, state) -> extra`` computes the extra injection of cycle ``k``
            (0-based) from the state before the cycle.
        gradient_last_cycle_only : bool
            Run the first ``H_cycles - 1`` cycles under ``torch.no_grad`` (TRM's 1-step
            gradient, Sec. 4.1), so memory does not grow with ``H_cycles``.

        Returns
        -------
        outputs : list of Tensor
            :meth:`output` after each cycle, for deep supervision; without gradient for all
            but the last when ``gradient_last_cycle_only``.
        state : LatentState
            The final state.
        """
        H_cycles = check_int(H_cycles, "H_cycles", 1)
        state = self.init_state(x) if state is None else state
        outputs = []
        for k in range(H_cycles):
            no_grad = gradient_last_cycle_only and k < H_cycles - 1
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                extra = feedback(k, state) if feedback is not None else None
                state = self.step(state, x, extra)
            outputs.append(self.output(state))
        return outputs, state

    def _check(self, t: torch.Tensor, what: str) -> torch.Tensor:
        if t.ndim not in (2, 3) or t.shape[-1] != self.latent_dim:
            raise DimensionError(f"{what} has shape {tuple(t.shape)}; expected (batch, [tokens,] {self.latent_dim})")
        return t

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, latent_dim={self.latent_dim}, L_cycles={self.L_cycles}"
