"""Advantage-conditioned policies and value networks of the cheap plants, wrapping TRC's networks.

The wrappers add the advantage indicator (:mod:`trc.recap.guidance`: negative, positive or
null) without changing the wrapped network's code:

* :class:`ConditionedMazePolicy` wraps the recursive maze policy
  (:class:`trc.models.discrete.RecursivePolicy`): an embedding of the indicator is added to
  every cell's input embedding before the recursion, the way the policy injects its previous
  action; the network's relational core, head and action read-out are reused.
* :class:`ConditionedTRC` wraps :class:`trc.models.TinyRecursiveControl`: the embedding is
  added to the pre-activation of the encoder's first layer (a forward hook on its first
  ``nn.Linear``), i.e. the indicator is one more input of the encoder, as the text token is an
  input of pi*0.6's network. The encoder's nonlinearity then makes its effect depend on the
  state, and the encoded latent carries it into every cycle of the recursion. (Added to the
  encoder's output latent instead, the indicator can only shift the latent by the same vector
  in every state. In the benchmark of ``benchmarks/results/2026-12-07-53bcf2e-recap.md`` the
  double integrator kept 100 % success at every stage with the input and fell to 94.7 % after
  the corrections with the output shift, the rest of the configuration equal.) It acts in
  receding horizon: the first control of the plan.

Both embeddings start at zero, so a fresh wrapper computes exactly what the wrapped network
does. Only the action prediction sees the indicator (pi*0.6, sec. IV-C); the value networks
(:class:`MazeValueNet`, :class:`ContinuousValueNet`) do not.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dynamics.discrete_env import maze_grid
from dynamics.errors import ConfigError, DimensionError

from ..models.discrete import RecursivePolicy, encode_tokens
from ..models.trc import TinyRecursiveControl, state_normalization
from .guidance import NULL, POSITIVE, IndicatorEmbedding, guide
from .value import NUM_BINS, ValueHead

__all__ = ["ConditionedMazePolicy", "MazeValueNet", "ConditionedTRC", "ContinuousValueNet"]


def _tokens(tokens, batch: int, device) -> torch.Tensor:
    if isinstance(tokens, int):
        return torch.full((batch,), tokens, dtype=torch.long, device=device)
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=device)
    if tokens.shape != (batch,):
        raise DimensionError(f"indicator tokens have shape {tuple(tokens.shape)}; expected ({batch},)")
    return tokens


class ConditionedMazePolicy(nn.Module):
    """Recursive maze policy conditioned on the advantage indicator.

    Parameters
    ----------
    base : trc.models.discrete.RecursivePolicy
        A maze policy (its weights are shared, not copied).

    Raises
    ------
    ConfigError
        If ``base`` is not a recursive maze policy, or carries its latent or conditions on the
        previous action (the per-step state the wrapper does not carry).
    """

    def __init__(self, base: RecursivePolicy):
        super().__init__()
        if not isinstance(base, RecursivePolicy) or base.kind != "maze":
            raise ConfigError(f"ConditionedMazePolicy wraps a RecursivePolicy of a maze, got {type(base).__name__}")
        if not base.agent_independent:
            raise ConfigError("ConditionedMazePolicy needs carry_latent: false and condition_on_previous_action: "
                              "false")
        self.base = base
        self.plant = base.plant
        self.indicator = IndicatorEmbedding(base.config.latent_dim)

    def token_logits(self, x: torch.Tensor, tokens) -> list:
        """Per-cell move logits ``(batch, H*W, 4)`` after every H-cycle, conditioned on ``tokens``."""
        b = self.base
        grid = maze_grid(self.plant, x).flatten(2).transpose(1, 2)[..., :2]  # walls and goal per cell
        emb = b.embed(grid) + self.indicator(_tokens(tokens, x.shape[0], x.device)).unsqueeze(1)
        state = b.core.init_state(emb)
        out = []
        for _ in range(b.config.H_cycles):
            state = b.core.step(state, emb)
            out.append(b.head(b.core.output(state)))
        return out

    def forward(self, x: torch.Tensor, tokens=NULL) -> list:
        """Action logits ``(batch, 4)`` after every H-cycle (blocked moves at ``-1e9`` when masking).

        Parameters
        ----------
        x : Tensor, shape ``(batch, state_dim)``
            Maze plant states.
        tokens : int or Tensor of int, shape ``(batch,)``
            Indicator tokens (0 negative, 1 positive, 2 null).
        """
        return [self.base.action_logits(t, x) for t in self.token_logits(x, tokens)]

    @torch.no_grad()
    def guided_logits(self, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """Classifier-free-guided logits ``(batch, 4)`` of the last cycle (``beta = 0``: unconditioned)."""
        null = self.forward(x, NULL)[-1] if beta != 1 else None
        pos = self.forward(x, POSITIVE)[-1] if beta != 0 else None
        if null is None:
            return pos
        if pos is None:
            return null
        mask = torch.isclose(null, torch.full_like(null, -1e9))
        return guide(null, pos, beta).masked_fill(mask, -1e9)


class MazeValueNet(nn.Module):
    """Distributional value of maze states: an MLP on the per-cell wall, goal and agent indicators
    (:func:`trc.models.discrete.encode_tokens`, flattened) with a 201-bin head.

    The value only labels the frames it is trained on (advantages of the collected data), so
    the cheaper MLP, not the recursive network, is used.

    Parameters
    ----------
    plant : dynamics.maze.Maze
    hidden_dim : int
    num_bins : int
    """

    def __init__(self, plant, hidden_dim: int = 256, num_bins: int = NUM_BINS):
        super().__init__()
        self.plant = plant
        n = 3 * plant.height * plant.width
        self.body = nn.Sequential(nn.Linear(n, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.head = ValueHead(hidden_dim, num_bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Value logits ``(batch, num_bins)`` of states ``(batch, state_dim)``."""
        return self.head(self.body(encode_tokens(self.plant, x).flatten(1)))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """Expected normalised value ``(batch,)`` in ``[-1, 0]``."""
        return self.head.value(self.forward(x))


class ConditionedTRC(nn.Module):
    """:class:`~trc.models.TinyRecursiveControl` conditioned on the advantage indicator, acting
    in receding horizon.

    Parameters
    ----------
    base : TinyRecursiveControl
        Built for the problem (:meth:`TinyRecursiveControl.from_problem`).

    Raises
    ------
    ConfigError
        If ``base`` is not a TinyRecursiveControl.
    """

    def __init__(self, base: TinyRecursiveControl):
        super().__init__()
        if not isinstance(base, TinyRecursiveControl):
            raise ConfigError(f"ConditionedTRC wraps a TinyRecursiveControl, got {type(base).__name__}")
        first = next((m for m in base.encoder.modules() if isinstance(m, nn.Linear)), None)
        if first is None:
            raise ConfigError(f"ConditionedTRC needs an encoder whose first layer is an nn.Linear, got "
                              f"{type(base.encoder).__name__} without one")
        self.base = base
        self.indicator = IndicatorEmbedding(first.out_features)
        self._condition: torch.Tensor | None = None
        first.register_forward_hook(self._add_condition)

    def _add_condition(self, module, inputs, output):
        if self._condition is None:
            return output
        return output + self._condition

    def plan(self, x: torch.Tensor, target: torch.Tensor, tokens=NULL) -> torch.Tensor:
        """Controls ``(batch, horizon, control_dim)`` from ``x`` to ``target``, conditioned on ``tokens``."""
        self._condition = self.indicator(_tokens(tokens, x.shape[0], x.device))
        try:
            return self.base(x, target)
        finally:
            self._condition = None

    def forward(self, x: torch.Tensor, target: torch.Tensor, tokens=NULL) -> torch.Tensor:
        """The first control of the plan, ``(batch, control_dim)``."""
        return self.plan(x, target, tokens)[:, 0]

    @torch.no_grad()
    def guided_action(self, x: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """``a_null + beta (a_pos - a_null)`` ``(batch, control_dim)``, clipped to the control bounds."""
        null = self.forward(x, target, NULL) if beta != 1 else None
        pos = self.forward(x, target, POSITIVE) if beta != 0 else None
        if null is None or pos is None:
            return pos if null is None else null
        return torch.maximum(torch.minimum(guide(null, pos, beta), self.base.u_max), self.base.u_min)


class ContinuousValueNet(nn.Module):
    """Distributional value of ``(x, target)``: an MLP on the normalised state, target and error
    (the inputs of TRC's encoder) with a 201-bin head.

    Parameters
    ----------
    problem : trc.Problem
    hidden_dim : int
    num_bins : int
    """

    def __init__(self, problem, hidden_dim: int = 128, num_bins: int = NUM_BINS):
        super().__init__()
        c, s = state_normalization(problem)
        self.register_buffer("center", torch.as_tensor(np.asarray(c), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(np.asarray(s), dtype=torch.float32))
        n = problem.state_dim
        self.body = nn.Sequential(nn.Linear(3 * n, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                  nn.GELU())
        self.head = ValueHead(hidden_dim, num_bins)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Value logits ``(batch, num_bins)``."""
        c, s = self.center, self.scale
        feats = torch.cat(((x - c) / s, (target - c) / s, (target - x) / s), -1).clamp(-10, 10)
        return self.head(self.body(feats))

    def value(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Expected normalised value ``(batch,)``."""
        return self.head.value(self.forward(x, target))
