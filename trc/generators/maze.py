"""Optimal maze solutions: breadth-first search distances, optimal actions and shortest paths.

In a maze every move costs one step, so breadth-first search from the goal gives the exact
shortest-path distance of every cell (Moore, "The shortest path through a maze", *Proc.
Int. Symp. Theory of Switching*, 1959; Cormen et al., *Introduction to Algorithms*, 3rd ed.,
sec. 22.2). The search here is *level-synchronous*: frontier ``k`` is the set of open cells
next to frontier ``k - 1`` not reached before, computed with array shifts for a whole batch of
mazes at once. The grid graph is undirected, so distances to the goal equal distances from it.

An action is *optimal* in a cell when it leads to an open neighbour one step closer to the
goal; every path that takes only optimal actions is a shortest path, and
:func:`shortest_paths` returns the one that breaks ties by the lowest action index
(up, right, down, left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics.errors import PuzzleError
from dynamics.errors import DimensionError
from dynamics.maze import MOVES

__all__ = ["bfs_distances", "optimal_actions", "shortest_paths", "MazeSolution", "solve_mazes"]

UNREACHABLE = -1


def _check(walls, cells=None, what="goals"):
    walls = np.asarray(walls, dtype=bool)
    if walls.ndim != 3:
        raise DimensionError(f"walls have shape {walls.shape}; expected (batch, height, width)")
    if cells is None:
        return walls, None
    cells = np.asarray(cells)
    if cells.shape != (walls.shape[0], 2):
        raise DimensionError(f"{what} have shape {cells.shape}; expected ({walls.shape[0]}, 2)")
    H, W = walls.shape[1:]
    if (cells < 0).any() or (cells[:, 0] >= H).any() or (cells[:, 1] >= W).any():
        raise PuzzleError(f"{what} must lie in [0, {H}) x [0, {W})")
    if walls[np.arange(len(cells)), cells[:, 0], cells[:, 1]].any():
        count = int(walls[np.arange(len(cells)), cells[:, 0], cells[:, 1]].sum())
        raise PuzzleError(f"{what} must be open cells; {count} lie on walls")
    return walls, cells.astype(np.int64)


def _shift(a: np.ndarray, dr: int, dc: int, fill) -> np.ndarray:
    """``out[:, r, c] = a[:, r + dr, c + dc]`` (``fill`` outside the grid)."""
    out = np.full_like(a, fill)
    H, W = a.shape[1:]
    rows_out, rows_in = slice(max(0, -dr), H - max(0, dr)), slice(max(0, dr), H - max(0, -dr))
    cols_out, cols_in = slice(max(0, -dc), W - max(0, dc)), slice(max(0, dc), W - max(0, -dc))
    out[:, rows_out, cols_out] = a[:, rows_in, cols_in]
    return out


def bfs_distances(walls, goals) -> np.ndarray:
    """Shortest-path distance (in moves) from every cell to the goal, for a batch of mazes.

    Parameters
    ----------
    walls : array_like of bool, shape ``(batch, H, W)``
        True on walls.
    goals : array_like of int, shape ``(batch, 2)``
        Goal cells ``(row, col)``, open.

    Returns
    -------
    ndarray of int64, shape ``(batch, H, W)``
        Distances; ``-1`` on walls and on open cells that cannot reach the goal.

    Raises
    ------
    DimensionError
        On wrong shapes.
    PuzzleError
        If a goal is off the grid or on a wall.
    """
    walls, goals = _check(walls, goals, "goals")
    B = walls.shape[0]
    dist = np.full(walls.shape, UNREACHABLE, dtype=np.int64)
    frontier = np.zeros(walls.shape, dtype=bool)
    frontier[np.arange(B), goals[:, 0], goals[:, 1]] = True
    dist[frontier] = 0
    k = 0
    while frontier.any():
        k += 1
        grown = np.zeros_like(frontier)
        for dr, dc in MOVES:
            grown |= _shift(frontier, dr, dc, False)
        frontier = grown & ~walls & (dist == UNREACHABLE)
        dist[frontier] = k
    return dist


def optimal_actions(walls, distances) -> np.ndarray:
    """Which actions are optimal in every cell: bool ``(batch, H, W, 4)``.

    Action ``a`` is optimal in an open cell at distance ``d > 0`` when the cell it leads to is
    open, inside the grid, and at distance ``d - 1``. No action is optimal at the goal, on
    walls or on cells that cannot reach the goal.
    """
    walls, _ = _check(walls)
    distances = np.asarray(distances)
    if distances.shape != walls.shape:
        raise DimensionError(f"distances have shape {distances.shape}; expected {walls.shape}")
    out = np.zeros(walls.shape + (4,), dtype=bool)
    for a, (dr, dc) in enumerate(MOVES):
        neighbour = _shift(distances, dr, dc, UNREACHABLE)
        out[..., a] = (distances > 0) & (neighbour >= 0) & (neighbour == distances - 1)
    return out


def shortest_paths(walls, starts, goals, distances=None):
    """One shortest path per maze, as actions (ties broken by the lowest action index).

    Parameters
    ----------
    walls : array_like of bool, shape ``(batch, H, W)``
    starts, goals : array_like of int, shape ``(batch, 2)``
    distances : ndarray, optional
        :func:`bfs_distances` of the mazes, if already computed.

    Returns
    -------
    actions : ndarray of int64, shape ``(batch, L)``
        ``L`` is the longest path; shorter paths are padded with ``-1``.
    lengths : ndarray of int64, shape ``(batch,)``
        Number of moves of each path (the BFS distance of the start).

    Raises
    ------
    PuzzleError
        If a start cannot reach its goal.
    """
    walls, starts = _check(walls, starts, "starts")
    _, goals = _check(walls, goals, "goals")
    if distances is None:
        distances = bfs_distances(walls, goals)
    B = walls.shape[0]
    rows = np.arange(B)
    lengths = distances[rows, starts[:, 0], starts[:, 1]]
    if (lengths < 0).any():
        raise PuzzleError(f"{int((lengths < 0).sum())} maze(s) have a start that cannot reach the goal")
    best = optimal_actions(walls, distances)
    L = int(lengths.max()) if B else 0
    actions = np.full((B, L), -1, dtype=np.int64)
    pos = starts.copy()
    for k in range(L):  # all mazes advance together
        moving = lengths > k
        a = np.argmax(best[rows, pos[:, 0], pos[:, 1]], axis=1)
        actions[moving, k] = a[moving]
        pos[moving] += MOVES[a[moving]]
    if not (pos == goals).all():  # pragma: no cover - guaranteed by the distances
        raise PuzzleError("internal error: a shortest path did not end on its goal")
    return actions, lengths.astype(np.int64)


@dataclass
class MazeSolution:
    """Optimal solutions of a batch of mazes.

    Attributes
    ----------
    distances : ndarray of int64, shape ``(batch, H, W)``
        BFS distance to the goal (``-1``: wall or unreachable).
    actions : ndarray of int64, shape ``(batch, L)``
        A shortest path from the start, padded with ``-1``.
    lengths : ndarray of int64, shape ``(batch,)``
        Shortest-path lengths (moves).
    """

    distances: np.ndarray
    actions: np.ndarray
    lengths: np.ndarray


def solve_mazes(walls, starts, goals) -> MazeSolution:
    """BFS distances and one shortest path for every maze of a batch (see the module notes)."""
    distances = bfs_distances(walls, goals)
    actions, lengths = shortest_paths(walls, starts, goals, distances)
    return MazeSolution(distances, actions, lengths)
