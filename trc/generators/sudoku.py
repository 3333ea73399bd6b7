"""Optimal sudoku solutions: the unique solution and an order of placements.

Every complete solution of a puzzle with ``E`` empty cells takes exactly ``E`` placements, so
any order of the solution's digits is optimal. The order stored here is the one a logical
solver follows (Simonis, *Sudoku as a constraint problem*, 2005; the "singles" rules): at each
step place

1. a *naked single* -- the empty cell with exactly one candidate digit (lowest cell first);
2. otherwise a *hidden single* -- a digit that has one possible cell in a row, column or box;
3. otherwise the solution digit of the empty cell with the fewest candidates
   (a "guess" that the exact search has already verified).

The number of steps of kind 3 (``guesses``) measures how far a puzzle is beyond the singles
rules (0 for every puzzle a singles solver completes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dynamics.errors import PuzzleError
from dynamics.sudoku import check_board, encode_action, solve

__all__ = ["placement_order", "SudokuSolution", "solve_sudokus"]


def _candidates(board: np.ndarray) -> np.ndarray:
    """Bool ``(n, n, n)``: ``[r, c, d - 1]`` True when ``d`` may go in the empty cell ``(r, c)``."""
    n = board.shape[0]
    b = math.isqrt(n)
    onehot = np.zeros((n, n, n + 1), dtype=bool)
    onehot[np.arange(n)[:, None], np.arange(n)[None, :], board] = True
    oh = onehot[..., 1:]
    row = oh.any(1, keepdims=True)
    col = oh.any(0, keepdims=True)
    box = oh.reshape(b, b, b, b, n).any((1, 3), keepdims=True)
    box = np.broadcast_to(box, (b, b, b, b, n)).reshape(n, n, n)
    return (board == 0)[..., None] & ~row & ~col & ~box


def placement_order(puzzle, solution) -> tuple[np.ndarray, int]:
    """The placements that complete ``puzzle`` into ``solution``, in logical order.

    Parameters
    ----------
    puzzle, solution : array_like of int, shape ``(n, n)``

    Returns
    -------
    actions : ndarray of int64, shape ``(E,)``
        Action indices (:func:`dynamics.sudoku.encode_action`), one per empty cell.
    guesses : int
        Placements that were neither naked nor hidden singles.

    Raises
    ------
    PuzzleError
        If ``solution`` is not a completion of ``puzzle``.
    """
    board = check_board(puzzle).copy()
    solution = check_board(solution, board.shape[0])
    n = board.shape[0]
    b = math.isqrt(n)
    if (solution == 0).any() or ((board != 0) & (board != solution)).any():
        raise PuzzleError("the solution must be complete and agree with the puzzle's givens")
    actions, guesses = [], 0
    while (board == 0).any():
        cand = _candidates(board)
        counts = cand.sum(-1)
        cell = None
        naked = np.argwhere((board == 0) & (counts == 1))
        if len(naked):
            cell = tuple(naked[0])
        else:
            for unit in _units(n, b):
                per_digit = cand[unit].sum(0)  # (n,) number of places of each digit in this unit
                hits = np.flatnonzero(per_digit == 1)
                if len(hits):
                    d = hits[0]
                    k = np.flatnonzero(cand[unit][:, d])[0]
                    cell = (unit[0][k], unit[1][k])
                    break
        if cell is None:
            empty = np.argwhere(board == 0)
            cell = tuple(empty[np.argmin(counts[board == 0])])
            guesses += 1
        r, c = int(cell[0]), int(cell[1])
        if board[r, c] != 0 or not cand[r, c, solution[r, c] - 1]:
            raise PuzzleError("the solution contradicts the puzzle's rules")
        board[r, c] = solution[r, c]
        actions.append(int(encode_action(r, c, solution[r, c], n)))
    return np.asarray(actions, dtype=np.int64), guesses


def _units(n: int, b: int):
    """Index tuples ``(rows, cols)`` of every row, column and box."""
    idx = np.arange(n)
    units = [(np.full(n, r), idx) for r in range(n)] + [(idx, np.full(n, c)) for c in range(n)]
    for br in range(b):
        for bc in range(b):
            rr, cc = np.meshgrid(np.arange(br * b, br * b + b), np.arange(bc * b, bc * b + b), indexing="ij")
            units.append((rr.ravel(), cc.ravel()))
    return units


@dataclass
class SudokuSolution:
    """Optimal solutions of a batch of puzzles.

    Attributes
    ----------
    solutions : ndarray of int64, shape ``(batch, n, n)``
    actions : ndarray of int64, shape ``(batch, L)``
        Placement orders, padded with ``-1`` (``L`` the most empty cells).
    lengths : ndarray of int64, shape ``(batch,)``
        Placements needed (empty cells).
    guesses : ndarray of int64, shape ``(batch,)``
        Placements beyond the singles rules.
    """

    solutions: np.ndarray
    actions: np.ndarray
    lengths: np.ndarray
    guesses: np.ndarray


def solve_sudokus(puzzles) -> SudokuSolution:
    """Solve a batch of puzzles exactly and order the placements.

    Raises
    ------
    PuzzleError
        If a puzzle is malformed or has no or several solutions.
    """
    puzzles = np.asarray(puzzles)
    if puzzles.ndim != 3:
        raise PuzzleError(f"puzzles must have shape (batch, n, n), got {puzzles.shape}")
    B, n = puzzles.shape[0], puzzles.shape[1]
    solutions = np.zeros((B, n, n), dtype=np.int64)
    orders, guesses = [], np.zeros(B, dtype=np.int64)
    for i in range(B):
        found = solve(puzzles[i], limit=2)
        if len(found) != 1:
            raise PuzzleError(f"puzzle {i} has {'no' if not found else 'several'} solution(s); expected exactly one")
        solutions[i] = found[0]
        order, guesses[i] = placement_order(puzzles[i], found[0])
        orders.append(order)
    lengths = np.array([len(o) for o in orders], dtype=np.int64)
    actions = np.full((B, int(lengths.max()) if B else 0), -1, dtype=np.int64)
    for i, o in enumerate(orders):
        actions[i, :len(o)] = o
    return SudokuSolution(solutions, actions, lengths, guesses)
