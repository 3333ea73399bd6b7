"""Policies for the discrete plants (grid maze, sudoku): a recursive policy and an MLP baseline.

Recursive policy (:class:`RecursivePolicy`)
-------------------------------------------
The state is read as a grid of tokens, one per cell (maze: wall / goal / agent indicators;
sudoku: the one-hot digit). The recursion is the shared core of TRC,
:class:`trc.models.recursion.RecursionCore` (two-level ``z_H``/``z_L`` scheme, ``L_cycles``
low-level updates per H-cycle, ONE shared network), with a *relational* shared network
(:class:`RelationalNet`) instead of the core's MLP: each block lets a cell read its
neighbours, ``h <- RMSNorm(h + W2 GELU(W1 [h, N_1 h, ..., N_r h]))``, where ``N_i`` are fixed
neighbourhood operators -- the four grid shifts for mazes (a cross-shaped convolution, the
structure of value-iteration networks, Tamar et al., NeurIPS 2016), the row, column and box
means for sudoku (the constraint graph of recurrent relational networks, Palm et al.,
NeurIPS 2018). Each application moves information one cell further, so the number of cycles
``K = H_cycles`` sets how far the policy can "see" along the maze per decision.

A linear head gives per-cell logits (maze: 4 moves, sudoku: ``n`` digits); the action logits
are the agent cell's moves (maze) or all ``(cell, digit)`` pairs (sudoku, ``n**3`` actions).
Illegal actions (blocked moves, placements that break a rule) are masked. The logits after
every H-cycle are returned for deep supervision. The latent state can be carried from one
environment step to the next (``carry_latent``), as TRM carries it across supervision steps,
and the previous action can be injected (``condition_on_previous_action``).

MLP baseline (:class:`MLPPolicy`)
---------------------------------
The same encoded grid, flattened, through a plain MLP whose width is chosen to match the
recursive policy's parameter count (:func:`matched_mlp_width`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import torch
from torch import nn

from dynamics.discrete_env import maze_grid, sudoku_grid
from dynamics.errors import ConfigError, DimensionError

from ..config import check_bool, check_choice, check_int, from_dict
from .recursion import LatentState, RecursionConfig, RecursionCore

__all__ = [
    "GridNeighbours", "SudokuPeers", "RelationalBlock", "RelationalNet", "RelationalRecursionCore",
    "DiscretePolicyConfig", "PolicyOutput", "RecursivePolicy", "MLPPolicy", "make_discrete_policy",
    "matched_mlp_width", "count_parameters", "encode_tokens", "legal_action_mask",
]

ARCHITECTURES = ("trc", "mlp")
NEG = -1e9  # logit of masked actions (finite, so entropies stay finite)


# ---------------------------------------------------------------------------- neighbourhoods
class GridNeighbours(nn.Module):
    """The four grid neighbours of every cell (zeros outside the grid).

    ``forward(h)`` maps ``(batch, H*W, D)`` to ``(batch, H*W, 4*D)``: the latents of the cell
    above, right, below and left, in that order (the action order of :mod:`dynamics.maze`).
    """

    relations = 4

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        g = nn.functional.pad(h.reshape(B, self.height, self.width, D), (0, 0, 1, 1, 1, 1))
        H, W = self.height, self.width
        up, down = g[:, 0:H, 1:W + 1], g[:, 2:H + 2, 1:W + 1]
        left, right = g[:, 1:H + 1, 0:W], g[:, 1:H + 1, 2:W + 2]
        return torch.cat((up, right, down, left), dim=-1).reshape(B, T, 4 * D)


class SudokuPeers(nn.Module):
    """Mean latent of every cell's row, column and box: ``(batch, n*n, D) -> (batch, n*n, 3*D)``."""

    relations = 3

    def __init__(self, size: int):
        super().__init__()
        self.n, self.b = size, math.isqrt(size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        n, b = self.n, self.b
        g = h.reshape(B, n, n, D)
        row = g.mean(2, keepdim=True).expand(B, n, n, D)
        col = g.mean(1, keepdim=True).expand(B, n, n, D)
        box = g.reshape(B, b, b, b, b, D).mean((2, 4), keepdim=True).expand(B, b, b, b, b, D).reshape(B, n, n, D)
        return torch.cat((row, col, box), dim=-1).reshape(B, T, 3 * D)


class RelationalBlock(nn.Module):
    """Post-norm residual block over a cell and its neighbours.

    ``h <- RMSNorm(h + W2 GELU(W1 [h, N(h)]))`` with ``N`` a neighbourhood module
    (:class:`GridNeighbours`, :class:`SudokuPeers`). Shapes ``(batch, tokens, D)``.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, neighbours: nn.Module):
        super().__init__()
        self.neighbours = neighbours
        self.mlp = nn.Sequential(
            nn.Linear((1 + neighbours.relations) * latent_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, latent_dim)
        )
        self.norm = nn.RMSNorm(latent_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h + self.mlp(torch.cat((h, self.neighbours(h)), dim=-1)))


class RelationalNet(nn.Module):
    """The shared network ``f(h, injection)`` of the recursion, built from :class:`RelationalBlock` s.

    Same call signature as :class:`trc.models.recursion.SharedNet`:
    ``f(h, injection) = Block_L(... Block_1(h + injection))``.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, num_layers: int, neighbours: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(RelationalBlock(latent_dim, hidden_dim, neighbours) for _ in range(num_layers))

    def forward(self, h: torch.Tensor, injection: torch.Tensor | None = None) -> torch.Tensor:
        if injection is not None:
            h = h + injection
        for block in self.blocks:
            h = block(h)
        return h


class RelationalRecursionCore(RecursionCore):
    """:class:`~trc.models.recursion.RecursionCore` whose shared network is a :class:`RelationalNet`.

    The recursion schemes (``step``, ``forward``, ``init_state``, deep recursion with the
    one-step gradient) are the core's; only the network ``f`` is replaced.
    """

    def __init__(self, latent_dim: int, hidden_dim: int, num_layers: int, mode: str, L_cycles: int,
                 neighbours: nn.Module):
        super().__init__(latent_dim, 1, 1, mode=mode, L_cycles=L_cycles)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ConfigError(f"num_layers must be a positive integer, got {num_layers!r}")
        self.net = RelationalNet(latent_dim, hidden_dim, num_layers, neighbours)


# ---------------------------------------------------------------------------- encodings
def _kind(plant) -> str:
    name = getattr(plant, "name", None)
    if name not in ("maze", "sudoku"):
        raise ConfigError(f"discrete policies support the plants 'maze' and 'sudoku', got {name!r}")
    return name


def encode_tokens(plant, x: torch.Tensor) -> torch.Tensor:
    """Per-cell input features ``(batch, tokens, features)`` of plant states ``x``.

    Maze: ``(batch, H*W, 3)`` wall, goal and agent indicators (the recursive policy plans on
    the first two and reads its action out at the agent's cell). Sudoku: ``(batch, n*n, n + 1)``
    one-hot digit (channel 0 = empty).
    """
    if _kind(plant) == "maze":
        g = maze_grid(plant, x)
    else:
        g = sudoku_grid(plant, x)
    return g.flatten(2).transpose(1, 2)


def legal_action_mask(plant, x: torch.Tensor) -> torch.Tensor:
    """Legal actions, bool ``(batch, num_actions)``: moves not blocked by a wall; rule-abiding placements."""
    if _kind(plant) == "maze":
        return ~plant.blocked(x)
    return plant.legal_actions(x)


def _token_layout(plant):
    """(tokens, input features, per-token outputs) of a plant."""
    if _kind(plant) == "maze":
        return plant.height * plant.width, 3, 4
    return plant.size ** 2, plant.size + 1, plant.size


# ---------------------------------------------------------------------------- config
@dataclass
class DiscretePolicyConfig(RecursionConfig):
    """The ``model:`` section of a discrete configuration.

    Attributes
    ----------
    architecture : {"trc", "mlp"}
        Recursive policy or the MLP baseline.
    latent_dim, hidden_dim : int
        Latent width ``D`` per cell and hidden width of the relational blocks.
    num_layers : int
        Blocks in the shared network.
    mode : {"two_level", "single_latent"}
        Recursion scheme of the core.
    H_cycles : int
        ``K``, outer cycles per decision.
    L_cycles : int
        ``z_L`` updates per H-cycle.
    carry_latent : bool
        Carry ``(z_H, z_L)`` from one environment step to the next.
    condition_on_previous_action : bool
        Inject an embedding of the previous action.
    mask_illegal : bool
        Mask blocked moves / illegal placements.
    mlp_width : int, optional
        Hidden width of the MLP baseline; default: matched to the parameter count of the
        recursive policy of the same section (:func:`matched_mlp_width`).
    mlp_layers : int
        Hidden layers of the MLP baseline.
    """

    latent_dim: int = 32
    hidden_dim: int = 64
    architecture: str = "trc"
    carry_latent: bool = False
    condition_on_previous_action: bool = False
    mask_illegal: bool = True
    mlp_width: Optional[int] = None
    mlp_layers: int = 2

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.architecture, "model.architecture", ARCHITECTURES)
        check_int(self.mlp_layers, "model.mlp_layers", 1)
        if self.mlp_width is not None:
            check_int(self.mlp_width, "model.mlp_width (or null)", 1)
        for key in ("carry_latent", "condition_on_previous_action", "mask_illegal"):
            check_bool(getattr(self, key), f"model.{key}")

    def to_dict(self) -> dict:
        return asdict(self)


class PolicyOutput(NamedTuple):
    """Output of a discrete policy.

    Attributes
    ----------
    logits : list of Tensor, each ``(batch, num_actions)``
        Action logits after each H-cycle (one entry for the MLP); illegal actions at ``-1e9``
        when masking. The last entry is the policy.
    token_logits : list of Tensor, each ``(batch, tokens, per_token)``, or None
        Per-cell logits (maze moves / sudoku digits) after each H-cycle, for dense supervision.
    state : LatentState or None
        The latent state to carry to the next step.
    """

    logits: list
    token_logits: Optional[list]
    state: Optional[LatentState]


def _previous(prev_action, x) -> torch.Tensor:
    """Previous actions as int64 ``(batch,)``; ``-1`` (none yet) when not given."""
    if prev_action is None:
        return torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    return prev_action.long()


def _check_x(plant, x):
    if x.ndim != 2 or x.shape[1] != plant.state_dim:
        raise DimensionError(f"{plant.name} policy: x has shape {tuple(x.shape)}; expected (batch, {plant.state_dim})")


class RecursivePolicy(nn.Module):
    """Recursive (TRC) policy for a discrete plant; see the module documentation.

    Parameters
    ----------
    plant : dynamics.maze.Maze or dynamics.sudoku.Sudoku
    config : DiscretePolicyConfig

    Examples
    --------
    >>> import dynamics, torch
    >>> plant = dynamics.make("maze", height=5, width=5)
    >>> policy = RecursivePolicy(plant, DiscretePolicyConfig(H_cycles=3))
    >>> walls, start, goal = dynamics.maze.random_instance(5, 5, seed=0)
    >>> out = policy(plant.pack(walls[None], goal[None], start[None]))
    >>> out.logits[-1].shape
    torch.Size([1, 4])
    """

    def __init__(self, plant, config: DiscretePolicyConfig | None = None):
        super().__init__()
        config = config or DiscretePolicyConfig()
        self.plant, self.config, self.kind = plant, config, _kind(plant)
        #: The problem the policy is trained for, and the plain data of its model file (:func:`trc.load`).
        self.problem, self.metadata = None, {}
        self.tokens, features, self.per_token = _token_layout(plant)
        self.num_actions = plant.num_actions
        D = config.latent_dim
        neighbours = GridNeighbours(plant.height, plant.width) if self.kind == "maze" else SudokuPeers(plant.size)
        self.embed = nn.Linear(2 if self.kind == "maze" else features, D)
        self.prev_action = nn.Embedding(self.num_actions + 1, D) if config.condition_on_previous_action else None
        self.core = RelationalRecursionCore(
            D, config.hidden_dim, config.num_layers, config.mode, config.L_cycles, neighbours
        )
        self.head = nn.Linear(D, self.per_token)

    def _readout(self, token_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "maze":
            hw = self.tokens
            agent = x[:, hw + 2:hw + 4].round().long()
            idx = (agent[:, 0] * self.plant.width + agent[:, 1]).view(-1, 1, 1).expand(-1, 1, 4)
            return token_logits.gather(1, idx)[:, 0]
        return token_logits.reshape(x.shape[0], -1)

    @property
    def agent_independent(self) -> bool:
        """True when the per-cell outputs do not depend on the agent (maze without previous-action
        conditioning or carried latent): one recursion per episode then serves every step."""
        return self.kind == "maze" and self.prev_action is None and not self.config.carry_latent

    def token_outputs(self, x: torch.Tensor, prev_action: torch.Tensor | None = None,
                      state: LatentState | None = None, H_cycles: int | None = None):
        """Per-cell logits after every H-cycle and the final latent state.

        Returns
        -------
        token_logits : list of Tensor, each ``(batch, tokens, per_token)``
        state : LatentState
        """
        _check_x(self.plant, x)
        emb = self.embed(self._features(x))
        if self.prev_action is not None:
            emb = emb + self.prev_action(_previous(prev_action, x) + 1).unsqueeze(1)
        if state is None:
            state = self.core.init_state(emb)
        token_logits = []
        for _ in range(H_cycles or self.config.H_cycles):
            state = self.core.step(state, emb)
            token_logits.append(self.head(self.core.output(state)))
        return token_logits, state

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        feats = encode_tokens(self.plant, x)
        # Maze: the recursion plans on walls and goal; the agent enters through the read-out.
        return feats[..., :2] if self.kind == "maze" else feats

    def action_logits(
        self, token_logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Action logits ``(batch, num_actions)`` read from per-cell logits ``(batch, tokens, per_token)``
        (the agent's cell for mazes; every cell and digit for sudoku), illegal actions masked."""
        a = self._readout(token_logits, x)
        if self.config.mask_illegal:
            mask = legal_action_mask(self.plant, x) if mask is None else mask
            a = a.masked_fill(~mask, NEG)
        return a

    def forward(self, x: torch.Tensor, prev_action: torch.Tensor | None = None, state: LatentState | None = None,
                H_cycles: int | None = None, mask: torch.Tensor | None = None) -> PolicyOutput:
        """Action logits for plant states.

        Parameters
        ----------
        x : Tensor, shape ``(batch, state_dim)``
        prev_action : Tensor of int, shape ``(batch,)``, optional
            Previous actions (``-1`` or None: none yet); used with ``condition_on_previous_action``.
        state : LatentState, optional
            Carried latent; default a fresh start from the input embedding.
        H_cycles : int, optional
            Override ``config.H_cycles``.
        mask : Tensor of bool, shape ``(batch, num_actions)``, optional
            Legal actions; computed from the plant when ``mask_illegal`` and not given.

        Returns
        -------
        PolicyOutput
        """
        token_logits, state = self.token_outputs(x, prev_action, state, H_cycles)
        if self.config.mask_illegal and mask is None:
            mask = legal_action_mask(self.plant, x)
        logits = [self.action_logits(t, x, mask) for t in token_logits]
        return PolicyOutput(logits, token_logits, state)


class MLPPolicy(nn.Module):
    """MLP baseline: flattened per-cell features (and the previous action) to action logits.

    Parameters
    ----------
    plant : dynamics.maze.Maze or dynamics.sudoku.Sudoku
    config : DiscretePolicyConfig
        ``mlp_width`` (default: :func:`matched_mlp_width`), ``mlp_layers``,
        ``condition_on_previous_action``, ``mask_illegal``.
    """

    def __init__(self, plant, config: DiscretePolicyConfig | None = None):
        super().__init__()
        config = config or DiscretePolicyConfig(architecture="mlp")
        self.plant, self.config, self.kind = plant, config, _kind(plant)
        #: The problem the policy is trained for, and the plain data of its model file (:func:`trc.load`).
        self.problem, self.metadata = None, {}
        tokens, features, _ = _token_layout(plant)
        self.num_actions = plant.num_actions
        self.in_dim = tokens * features + (self.num_actions + 1 if config.condition_on_previous_action else 0)
        width = config.mlp_width or matched_mlp_width(plant, config)
        layers, d = [], self.in_dim
        for _ in range(config.mlp_layers):
            layers += [nn.Linear(d, width), nn.GELU()]
            d = width
        self.mlp = nn.Sequential(*layers, nn.Linear(d, self.num_actions))

    def forward(self, x, prev_action=None, state=None, H_cycles=None, mask=None) -> PolicyOutput:
        """Same interface as :meth:`RecursivePolicy.forward` (``state``/``H_cycles`` ignored)."""
        _check_x(self.plant, x)
        inp = encode_tokens(self.plant, x).flatten(1)
        if self.config.condition_on_previous_action:
            p = _previous(prev_action, x)
            inp = torch.cat((inp, nn.functional.one_hot(p + 1, self.num_actions + 1).to(inp)), dim=1)
        logits = self.mlp(inp)
        if self.config.mask_illegal:
            mask = legal_action_mask(self.plant, x) if mask is None else mask
            logits = logits.masked_fill(~mask, NEG)
        return PolicyOutput([logits], None, None)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def matched_mlp_width(plant, config: DiscretePolicyConfig) -> int:
    """Hidden width of an ``mlp_layers``-layer MLP with about as many parameters as the
    recursive policy of ``config`` (the positive root of the parameter-count quadratic)."""
    trc_config = DiscretePolicyConfig(**{**config.to_dict(), "architecture": "trc"})
    target = count_parameters(RecursivePolicy(plant, trc_config))
    tokens, features, _ = _token_layout(plant)
    i = tokens * features + (plant.num_actions + 1 if config.condition_on_previous_action else 0)
    A, L = plant.num_actions, config.mlp_layers
    # params(w) = (L - 1) w^2 + (i + 1 + L - 1 + A) w + A
    a, b, c = L - 1, i + L + A, A - target
    w = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return max(1, int(round(w)))


def make_discrete_policy(plant, config: DiscretePolicyConfig | dict | None = None) -> nn.Module:
    """The policy of ``config.architecture`` for ``plant`` (a dict is parsed strictly)."""
    if isinstance(config, dict) or config is None:
        config = from_dict(DiscretePolicyConfig, config or {}, "model")
    return RecursivePolicy(plant, config) if config.architecture == "trc" else MLPPolicy(plant, config)
