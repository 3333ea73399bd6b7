"""Grid maze: an agent moves on a grid of open cells and walls towards a goal cell.

Layouts (:func:`random_layout`)
-------------------------------
* ``"backtracker"``: a perfect maze carved by a randomised depth-first search (the
  "recursive backtracker", Buck, *Mazes for Programmers*, 2015, ch. 8) on the lattice of
  even-indexed cells; walls sit on the cells between them. ``loop_probability`` then opens
  each remaining wall between two rooms with that probability, which adds loops (a
  "braided" maze) so that shortest paths are not the only paths.
* ``"random"``: every cell is a wall with probability ``wall_probability`` (a gridworld with
  obstacles); start and goal are drawn in the same 4-connected component
  (:func:`scipy.ndimage.label`), so every instance is solvable.

A maze of size ``height x width`` counts cells, walls included; the outside of the grid
is a wall. Sizes from 3 x 3 to 64 x 64 are accepted.

State layout (plant state ``x``, float, ``state_dim = height * width + 4``)::

    x[:, :H*W]       walls, row-major, 1 = wall, 0 = open
    x[:, H*W:H*W+2]  goal  (row, col)
    x[:, H*W+2:]     agent (row, col)

Actions: ``0 = up (row - 1)``, ``1 = right (col + 1)``, ``2 = down (row + 1)``,
``3 = left (col - 1)``. A move into a wall or off the grid leaves the agent in place; the
goal is absorbing.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .discrete import DiscretePlant
from .errors import DimensionError, PuzzleError
from .registry import register

__all__ = ["Maze", "MOVES", "ACTION_NAMES", "LAYOUTS", "random_layout", "random_instance", "random_instances"]

#: Row/column displacement of each action, shape ``(4, 2)``.
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)
ACTION_NAMES = ("up", "right", "down", "left")
LAYOUTS = ("backtracker", "random")
MIN_SIZE, MAX_SIZE = 3, 64


def _check_size(height, width):
    for value, what in ((height, "height"), (width, "width")):
        if not (isinstance(value, (int, np.integer)) and MIN_SIZE <= value <= MAX_SIZE):
            raise PuzzleError(f"maze {what} must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {value!r}")


@register("maze")
class Maze(DiscretePlant):
    """Grid maze plant: batched moves of an agent blocked by walls.

    Parameters
    ----------
    height, width : int
        Grid size in cells (walls included), each in ``[3, 64]``.
    **kwargs
        ``dt`` (one time step, default 1) of :class:`~dynamics.Plant`.

    Raises
    ------
    PuzzleError
        On a size outside ``[3, 64]``.

    Examples
    --------
    >>> import dynamics, torch
    >>> plant = dynamics.make("maze", height=5, width=5)
    >>> walls, start, goal = dynamics.maze.random_instance(5, 5, seed=0)
    >>> x = plant.pack(walls[None], goal[None], start[None])
    >>> x1 = plant.step(x, torch.tensor([[2.0]]))  # move down (if open)
    """

    num_actions = 4

    def __init__(self, height: int = 5, width: int = 5, **kwargs):
        _check_size(height, width)
        self.height, self.width = int(height), int(width)
        cells = [f"wall_{r}_{c}" for r in range(self.height) for c in range(self.width)]
        self.state_names = tuple(cells) + ("goal_row", "goal_col", "agent_row", "agent_col")
        self.state_units = ("1",) * len(cells) + ("cell",) * 4
        super().__init__(**kwargs)
        self.register_buffer("moves", torch.as_tensor(MOVES), persistent=False)

    def config(self) -> dict:
        return {"name": self.name, "height": self.height, "width": self.width, "dt": self.dt}

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}, state_dim={self.state_dim}, num_actions=4"

    @property
    def num_cells(self) -> int:
        """``height * width``."""
        return self.height * self.width

    # ------------------------------------------------------------------ state (un)packing
    def pack(self, walls, goal, agent) -> torch.Tensor:
        """Plant states from maze parts.

        Parameters
        ----------
        walls : array_like of bool, shape ``(batch, height, width)``
        goal, agent : array_like of int, shape ``(batch, 2)``
            ``(row, col)`` cells.

        Returns
        -------
        Tensor, shape ``(batch, state_dim)``, float32.

        Raises
        ------
        DimensionError
            On wrong shapes.
        PuzzleError
            If a goal or agent is off the grid or on a wall.
        """
        walls = torch.as_tensor(np.asarray(walls), dtype=torch.float32)
        goal = torch.as_tensor(np.asarray(goal), dtype=torch.float32)
        agent = torch.as_tensor(np.asarray(agent), dtype=torch.float32)
        if walls.ndim != 3 or walls.shape[1:] != (self.height, self.width):
            raise DimensionError(
                f"maze walls have shape {tuple(walls.shape)}; expected (batch, {self.height}, {self.width})"
            )
        for t, what in ((goal, "goal"), (agent, "agent")):
            if t.shape != (walls.shape[0], 2):
                raise DimensionError(f"maze {what} has shape {tuple(t.shape)}; expected ({walls.shape[0]}, 2)")
        x = torch.cat((walls.reshape(walls.shape[0], -1), goal, agent), dim=1)
        self.validate(x)
        return x

    def unpack(self, x: torch.Tensor):
        """Split states ``(batch, state_dim)`` into walls ``(batch, H, W)`` bool and goal, agent
        ``(batch, 2)`` int64."""
        x = self.check_state(x)
        hw = self.num_cells
        walls = x[:, :hw].reshape(-1, self.height, self.width) > 0.5
        return walls, x[:, hw:hw + 2].round().long(), x[:, hw + 2:hw + 4].round().long()

    def validate(self, x: torch.Tensor) -> torch.Tensor:
        """Check that states are well-formed mazes; return ``x``.

        Raises
        ------
        DimensionError, NonFiniteError
            On a wrong shape or non-finite entries.
        PuzzleError
            If walls are not 0/1, positions are fractional or off the grid, or the goal or the
            agent is on a wall.
        """
        x = self.check_state(x)
        hw = self.num_cells
        walls = x[:, :hw]
        if ((walls != 0) & (walls != 1)).any():
            raise PuzzleError("maze walls must be 0 (open) or 1 (wall)")
        pos = x[:, hw:]
        if (pos != pos.round()).any():
            bad = pos[(pos != pos.round()).any(1)][:3].tolist()
            raise PuzzleError(f"maze goal/agent cells must be integers, got {bad}")
        rows, cols = pos[:, 0::2], pos[:, 1::2]
        off = (rows < 0) | (rows >= self.height) | (cols < 0) | (cols >= self.width)
        if off.any():
            raise PuzzleError(
                f"maze goal/agent (row, col) must lie in [0, {self.height}) x [0, {self.width}), "
                f"got {pos[off.any(1)][:3].tolist()}"
            )
        idx = (rows * self.width + cols).long()
        on_wall = walls.gather(1, idx) > 0.5
        if on_wall.any():
            which = ["goal", "agent"][int(on_wall.any(0).nonzero()[0])]
            raise PuzzleError(f"maze {which} lies on a wall in {int(on_wall.any(1).sum())} instance(s)")
        return x

    # ------------------------------------------------------------------ dynamics
    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Move every agent of the batch by its action unless a wall or the border blocks it.

        Parameters
        ----------
        x : Tensor, shape ``(batch, state_dim)``
        u : Tensor, shape ``(batch, 1)``
            Action indices (0 up, 1 right, 2 down, 3 left).

        Returns
        -------
        Tensor, shape ``(batch, state_dim)``
            Next states; walls and goal are unchanged. An agent on the goal stays there.

        Raises
        ------
        InvalidActionError
            If an action is not an integer in ``[0, 4)``.
        PuzzleError
            On malformed states, see :meth:`validate`.
        """
        x = self.validate(x)
        a = self.action_index(u).to(x.device)
        blocked, new = self._target(x, a)
        hw = self.num_cells
        agent = x[:, hw + 2:hw + 4]
        at_goal = (agent == x[:, hw:hw + 2]).all(1, keepdim=True)
        new_agent = torch.where(blocked.unsqueeze(1) | at_goal, agent, new.to(x.dtype))
        return torch.cat((x[:, :hw + 2], new_agent), dim=1)

    def _target(self, x: torch.Tensor, a: torch.Tensor):
        """The cell each action leads to and whether a wall or the border blocks it."""
        hw = self.num_cells
        agent = x[:, hw + 2:hw + 4].round().long()
        new = agent + self.moves.to(x.device)[a]
        inside = (new[:, 0] >= 0) & (new[:, 0] < self.height) & (new[:, 1] >= 0) & (new[:, 1] < self.width)
        idx = (new[:, 0].clamp(0, self.height - 1) * self.width + new[:, 1].clamp(0, self.width - 1)).unsqueeze(1)
        wall = x[:, :hw].gather(1, idx)[:, 0] > 0.5
        return ~inside | wall, new

    def blocked(self, x: torch.Tensor) -> torch.Tensor:
        """Which of the four actions a wall or the border blocks, bool ``(batch, 4)``."""
        x = self.validate(x)
        out = []
        for a in range(4):  # four actions, vectorised over the batch
            out.append(self._target(x, torch.full((x.shape[0],), a, dtype=torch.long, device=x.device))[0])
        return torch.stack(out, dim=1)

    def at_goal(self, x: torch.Tensor) -> torch.Tensor:
        """Whether each agent is on its goal, bool ``(batch,)``."""
        hw = self.num_cells
        return (x[:, hw + 2:hw + 4] == x[:, hw:hw + 2]).all(1)

    def render(self, x: torch.Tensor, index: int = 0) -> str:
        """ASCII picture of instance ``index``: ``#`` wall, ``.`` open, ``A`` agent, ``G`` goal."""
        walls, goal, agent = self.unpack(x[index:index + 1])
        rows = []
        for r in range(self.height):
            line = ""
            for c in range(self.width):
                if (r, c) == tuple(agent[0].tolist()):
                    line += "A"
                elif (r, c) == tuple(goal[0].tolist()):
                    line += "G"
                else:
                    line += "#" if walls[0, r, c] else "."
            rows.append(line)
        return "\n".join(rows)


# ---------------------------------------------------------------------- instance generation
def _backtracker(height: int, width: int, rng: np.random.Generator, loop_probability: float) -> np.ndarray:
    """Walls of a maze carved by randomised depth-first search on the even-indexed cells."""
    walls = np.ones((height, width), dtype=bool)
    rooms_r, rooms_c = (height + 1) // 2, (width + 1) // 2
    visited = np.zeros((rooms_r, rooms_c), dtype=bool)
    start = (int(rng.integers(rooms_r)), int(rng.integers(rooms_c)))
    stack = [start]
    visited[start] = True
    walls[2 * start[0], 2 * start[1]] = False
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in MOVES if 0 <= r + dr < rooms_r and 0 <= c + dc < rooms_c
                   and not visited[r + dr, c + dc]]
        if not options:
            stack.pop()
            continue
        nr, nc = options[int(rng.integers(len(options)))]
        walls[r + nr, c + nc] = False  # the cell between rooms (2r, 2c) and (2nr, 2nc)
        walls[2 * nr, 2 * nc] = False
        visited[nr, nc] = True
        stack.append((nr, nc))
    if loop_probability > 0:
        # walls between two rooms: one coordinate odd, the other even, both rooms inside
        rr, cc = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        vertical = (rr % 2 == 1) & (cc % 2 == 0) & (rr + 1 < height)
        horizontal = (rr % 2 == 0) & (cc % 2 == 1) & (cc + 1 < width)
        between = vertical | horizontal
        candidates = between & walls
        walls[candidates & (rng.random((height, width)) < loop_probability)] = False
    return walls


def random_layout(
    height: int,
    width: int,
    seed: int | np.random.Generator | None = None,
    *,
    layout: str = "backtracker",
    loop_probability: float = 0.0,
    wall_probability: float = 0.3,
) -> np.ndarray:
    """Random maze walls, bool ``(height, width)`` (True = wall); see the module notes.

    Raises
    ------
    PuzzleError
        On a size outside ``[3, 64]``, an unknown layout or a probability outside ``[0, 1)``.
    """
    _check_size(height, width)
    if layout not in LAYOUTS:
        raise PuzzleError(f"unknown maze layout {layout!r}; choose one of {LAYOUTS}")
    for p, what in ((loop_probability, "loop_probability"), (wall_probability, "wall_probability")):
        if not 0 <= p < 1:
            raise PuzzleError(f"maze {what} must lie in [0, 1), got {p!r}")
    rng = np.random.default_rng(seed)
    if layout == "backtracker":
        return _backtracker(int(height), int(width), rng, float(loop_probability))
    return rng.random((height, width)) < wall_probability


def random_instance(
    height: int,
    width: int,
    seed: int | np.random.Generator | None = None,
    *,
    layout: str = "backtracker",
    loop_probability: float = 0.0,
    wall_probability: float = 0.3,
    max_tries: int = 100,
):
    """A solvable maze: walls ``(H, W)`` bool, start ``(2,)`` and goal ``(2,)`` int64 cells.

    Start and goal are distinct open cells drawn uniformly from one 4-connected component
    (the largest one for ``"random"`` layouts), so a path between them always exists.

    Raises
    ------
    PuzzleError
        On bad arguments, or when ``max_tries`` random layouts had no component of two cells.
    """
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        walls = random_layout(height, width, rng, layout=layout, loop_probability=loop_probability,
                              wall_probability=wall_probability)
        labels, count = ndimage.label(~walls)  # default structure: 4-connectivity
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        best = int(np.argmax(sizes)) + 1
        cells = np.argwhere(labels == best)
        if len(cells) < 2:
            continue
        i, j = rng.choice(len(cells), size=2, replace=False)
        return walls, cells[i].astype(np.int64), cells[j].astype(np.int64)
    raise PuzzleError(
        f"no {height}x{width} {layout} maze with two connected open cells in {max_tries} tries "
        f"(wall_probability={wall_probability})"
    )


def random_instances(num: int, height: int, width: int, seed: int | np.random.Generator | None = None, **options):
    """``num`` solvable mazes: walls ``(num, H, W)`` bool, starts and goals ``(num, 2)`` int64.

    The same ``seed`` gives the same mazes. ``options`` are those of :func:`random_instance`.
    """
    if not (isinstance(num, (int, np.integer)) and num >= 0):
        raise PuzzleError(f"number of mazes must be a non-negative integer, got {num!r}")
    rng = np.random.default_rng(seed)
    walls = np.zeros((num, height, width), dtype=bool)
    starts = np.zeros((num, 2), dtype=np.int64)
    goals = np.zeros((num, 2), dtype=np.int64)
    for i in range(num):
        walls[i], starts[i], goals[i] = random_instance(height, width, rng, **options)
    return walls, starts, goals
