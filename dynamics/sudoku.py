"""Sudoku: place digits on an ``n x n`` board (``n = b**2``: 4 x 4 or 9 x 9) until it is full.

Rules: every row, column and ``b x b`` box holds each digit ``1..n`` once. A puzzle is a
partially filled board with exactly one completion.

State layout (plant state ``x``, float, ``state_dim = n * n``): the board, row-major,
``0`` for an empty cell and ``1..n`` for a digit.

Action ``a = cell * n + (digit - 1)`` with ``cell = row * n + col``: place ``digit`` in
``cell`` (``num_actions = n**3``). The placement happens only when it is *legal*: the cell
is empty and the digit is not already in its row, column or box; otherwise the board is
unchanged. (Whether a legal digit is also the puzzle's solution is the environment's
business, :class:`dynamics.discrete_env.SudokuEnv`.)

Puzzle generation (:func:`random_puzzle`): a random complete grid from a randomised
backtracking search, then cells are emptied in random order as long as the solution stays
unique, until the requested number of givens is reached (the "dig holes" method; see
Simonis, *Sudoku as a constraint problem*, CP workshop 2005, for the constraint model).
Uniqueness after removing a cell with digit ``d`` is decided by one search for a completion
with a digit other than ``d`` in that cell (:func:`solve` with ``forbid``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .discrete import DiscretePlant
from .errors import DimensionError, PuzzleError
from .registry import register

__all__ = [
    "Sudoku", "SIZES", "solve", "count_solutions", "check_board", "random_solution", "random_puzzle",
    "random_puzzles", "encode_action", "decode_action",
]

SIZES = (4, 9)


def _box(n: int) -> int:
    if n not in SIZES:
        raise PuzzleError(f"sudoku size must be one of {SIZES}, got {n!r}")
    return math.isqrt(n)


def encode_action(row, col, digit, n: int):
    """Action index of placing ``digit`` (1..n) at ``(row, col)``: ``(row * n + col) * n + digit - 1``."""
    return (np.asarray(row) * n + np.asarray(col)) * n + np.asarray(digit) - 1


def decode_action(a, n: int):
    """``(row, col, digit)`` of action indices ``a``; inverse of :func:`encode_action`."""
    a = np.asarray(a)
    cell, digit = a // n, a % n + 1
    return cell // n, cell % n, digit


@register("sudoku")
class Sudoku(DiscretePlant):
    """Sudoku plant: batched digit placements on ``n x n`` boards.

    Parameters
    ----------
    size : {4, 9}
        Board size ``n``.
    **kwargs
        ``dt`` (one time step, default 1) of :class:`~dynamics.Plant`.

    Raises
    ------
    PuzzleError
        On an unsupported size.
    """

    def __init__(self, size: int = 9, **kwargs):
        self.box = _box(size)
        self.size = int(size)
        self.num_actions = self.size ** 3
        self.state_names = tuple(f"cell_{r}_{c}" for r in range(self.size) for c in range(self.size))
        self.state_units = ("digit",) * self.size ** 2
        super().__init__(**kwargs)

    def config(self) -> dict:
        return {"name": self.name, "size": self.size, "dt": self.dt}

    def extra_repr(self) -> str:
        return f"size={self.size}, state_dim={self.state_dim}, num_actions={self.num_actions}"

    def validate(self, x: torch.Tensor) -> torch.Tensor:
        """Check that states are boards with integer entries in ``[0, n]``; return ``x``.

        Raises
        ------
        DimensionError, NonFiniteError
            On a wrong shape or non-finite entries.
        PuzzleError
            On fractional or out-of-range entries.
        """
        x = self.check_state(x)
        bad = (x != x.round()) | (x < 0) | (x > self.size)
        if bad.any():
            raise PuzzleError(
                f"sudoku cells must be integers in [0, {self.size}] (0 = empty), got {x[bad][:5].tolist()}"
            )
        return x

    def _onehot(self, x: torch.Tensor) -> torch.Tensor:
        """Digit indicators ``(batch, n, n, n)``: ``[b, r, c, d - 1]`` is 1 where cell (r, c) holds d."""
        n = self.size
        board = x.round().long().reshape(-1, n, n)
        return torch.nn.functional.one_hot(board, n + 1)[..., 1:].bool()

    def candidates(self, x: torch.Tensor) -> torch.Tensor:
        """Legal digits of every cell, bool ``(batch, n * n, n)``.

        ``[b, cell, d - 1]`` is True when the cell is empty and ``d`` is in neither its row,
        its column nor its box.
        """
        x = self.validate(x)
        n, b = self.size, self.box
        oh = self._onehot(x)  # (B, r, c, d)
        row = oh.any(2, keepdim=True)  # (B, r, 1, d)
        col = oh.any(1, keepdim=True)  # (B, 1, c, d)
        box = oh.reshape(-1, b, b, b, b, n).any(4, keepdim=True).any(2, keepdim=True)  # (B, br, 1, bc, 1, d)
        box = box.expand(-1, b, b, b, b, n).reshape(-1, n, n, n)
        empty = (x.reshape(-1, n, n) == 0).unsqueeze(-1)
        return (empty & ~row & ~col & ~box).reshape(-1, n * n, n)

    def legal_actions(self, x: torch.Tensor) -> torch.Tensor:
        """Mask of legal actions, bool ``(batch, n**3)`` (index layout of :func:`encode_action`)."""
        return self.candidates(x).reshape(x.shape[0], -1)

    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Place the digits of a batch of actions where legal.

        Parameters
        ----------
        x : Tensor, shape ``(batch, n * n)``
        u : Tensor, shape ``(batch, 1)``
            Action indices ``(row * n + col) * n + digit - 1``.

        Returns
        -------
        Tensor, shape ``(batch, n * n)``
            Boards after the legal placements; illegal ones leave the board unchanged.

        Raises
        ------
        InvalidActionError
            If an action is not an integer in ``[0, n**3)``.
        PuzzleError
            On malformed boards.
        """
        a = self.action_index(u).to(x.device)
        legal = self.legal_actions(x).gather(1, a.unsqueeze(1))[:, 0]
        cell, digit = a // self.size, a % self.size + 1
        new = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        new[rows, cell] = torch.where(legal, digit.to(x.dtype), x[rows, cell])
        return new

    def solved(self, x: torch.Tensor) -> torch.Tensor:
        """Whether each board is full and satisfies every rule, bool ``(batch,)``."""
        x = self.validate(x)
        n, b = self.size, self.box
        oh = self._onehot(x)
        rows_ok = oh.sum(2).eq(1).all(-1).all(-1)
        cols_ok = oh.sum(1).eq(1).all(-1).all(-1)
        boxes_ok = oh.reshape(-1, b, b, b, b, n).sum((2, 4)).eq(1).all(-1).all(-1).all(-1)
        return (x != 0).all(1) & rows_ok & cols_ok & boxes_ok

    def render(self, x: torch.Tensor, index: int = 0) -> str:
        """Text picture of board ``index`` (``.`` for empty cells)."""
        n, b = self.size, self.box
        board = x[index].round().long().reshape(n, n).tolist()
        lines = []
        for r in range(n):
            if r and r % b == 0:
                lines.append("-" * (2 * n + 2 * (b - 1) - 1))
            cells = [str(v) if v else "." for v in board[r]]
            lines.append(" | ".join(" ".join(cells[i:i + b]) for i in range(0, n, b)))
        return "\n".join(lines)


# ---------------------------------------------------------------------- exact solver
def check_board(board, n: int | None = None) -> np.ndarray:
    """Validate a board and return it as an int64 array ``(n, n)``.

    Raises
    ------
    DimensionError
        If ``board`` is not ``(n, n)`` (or ``n * n`` flat) for ``n`` in ``{4, 9}``.
    PuzzleError
        On entries outside ``0..n`` or givens that break a rule.
    """
    a = np.asarray(board)
    if n is None:
        n = a.shape[0] if a.ndim == 2 else math.isqrt(a.size)
    if n not in SIZES:
        raise DimensionError(f"sudoku board has shape {a.shape}; expected (n, n) or (n*n,) with n in {SIZES}")
    if a.shape not in ((n, n), (n * n,)):
        raise DimensionError(f"sudoku board has shape {a.shape}; expected ({n}, {n}) or ({n * n},)")
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise PuzzleError("sudoku board entries must be integers")
    a = a.reshape(n, n).astype(np.int64)
    if a.min() < 0 or a.max() > n:
        raise PuzzleError(f"sudoku entries must lie in [0, {n}] (0 = empty), got min {a.min()}, max {a.max()}")
    b = math.isqrt(n)
    units = [a[r] for r in range(n)] + [a[:, c] for c in range(n)] + [
        a[r:r + b, c:c + b].ravel() for r in range(0, n, b) for c in range(0, n, b)
    ]
    for i, unit in enumerate(units):
        digits = unit[unit > 0]
        if len(digits) != len(set(digits.tolist())):
            kind = ("row", "column", "box")[i // n]
            raise PuzzleError(f"sudoku givens repeat a digit in {kind} {i % n}: {unit.tolist()}")
    return a


def solve(
    board, limit: int = 1, *, forbid: dict | None = None, rng: np.random.Generator | None = None
) -> list[np.ndarray]:
    """Completions of a sudoku board by depth-first search with constraint propagation.

    The search fills the empty cell with the fewest candidates first (minimum remaining
    values) and keeps row, column and box digit sets as bit masks.

    Parameters
    ----------
    board : array_like of int, shape ``(n, n)`` or ``(n * n,)``
        ``0`` for an empty cell.
    limit : int
        Stop after this many solutions (2 decides uniqueness).
    forbid : dict, optional
        ``{cell: digit}``: completions must not hold ``digit`` in ``cell`` (an empty cell).
    rng : numpy Generator, optional
        Try candidate digits in random order (random complete grids).

    Returns
    -------
    list of ndarray, each ``(n, n)`` int64
        At most ``limit`` completions.

    Raises
    ------
    DimensionError, PuzzleError
        On a malformed board, see :func:`check_board`.
    """
    a = check_board(board)
    n = a.shape[0]
    b = math.isqrt(n)
    full = (1 << n) - 1
    cells = a.ravel().tolist()
    rows, cols, boxes = [0] * n, [0] * n, [0] * n
    box_of = [(i // n) // b * b + (i % n) // b for i in range(n * n)]
    for i, v in enumerate(cells):
        if v:
            bit = 1 << (v - 1)
            rows[i // n] |= bit
            cols[i % n] |= bit
            boxes[box_of[i]] |= bit
    banned = [0] * (n * n)
    for cell, digit in (forbid or {}).items():
        banned[int(cell)] |= 1 << (int(digit) - 1)
    empty = [i for i, v in enumerate(cells) if v == 0]
    solutions: list[np.ndarray] = []

    def search(empty):
        if not empty:
            solutions.append(np.array(cells, dtype=np.int64).reshape(n, n))
            return len(solutions) >= limit
        best, best_mask, best_count = -1, 0, n + 1
        for k, i in enumerate(empty):
            mask = full & ~(rows[i // n] | cols[i % n] | boxes[box_of[i]] | banned[i])
            count = bin(mask).count("1")
            if count < best_count:
                best, best_mask, best_count = k, mask, count
                if count <= 1:
                    break
        if best_count == 0:
            return False
        i = empty[best]
        rest = empty[:best] + empty[best + 1:]
        digits = [d for d in range(n) if best_mask >> d & 1]
        if rng is not None:
            rng.shuffle(digits)
        r, c, x = i // n, i % n, box_of[i]
        for d in digits:
            bit = 1 << d
            rows[r] |= bit
            cols[c] |= bit
            boxes[x] |= bit
            cells[i] = d + 1
            done = search(rest)
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[x] &= ~bit
            cells[i] = 0
            if done:
                return True
        return False

    search(empty)
    return solutions


def count_solutions(board, limit: int = 2) -> int:
    """Number of completions of ``board``, counted up to ``limit``."""
    return len(solve(board, limit=limit))


def random_solution(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """A uniformly shuffled complete ``n x n`` sudoku grid, int64 ``(n, n)``."""
    _box(n)
    rng = np.random.default_rng(seed)
    return solve(np.zeros((n, n), dtype=np.int64), limit=1, rng=rng)[0]


def random_puzzle(n: int, givens: int, seed: int | np.random.Generator | None = None, *, max_tries: int = 50):
    """A puzzle with exactly ``givens`` filled cells and a unique solution.

    Parameters
    ----------
    n : {4, 9}
    givens : int
        Number of filled cells, in ``[1, n * n]``; fewer givens make harder puzzles. Random
        digging reaches about 4-6 givens for ``n = 4`` and 22-26 for ``n = 9``.
    seed : int or numpy Generator
    max_tries : int
        Fresh grids to try before giving up.

    Returns
    -------
    puzzle, solution : ndarray of int64, shape ``(n, n)``

    Raises
    ------
    PuzzleError
        On bad arguments, or if ``max_tries`` grids could not be dug down to ``givens``.
    """
    _box(n)
    if not (isinstance(givens, (int, np.integer)) and 1 <= givens <= n * n):
        raise PuzzleError(f"sudoku givens must be an integer in [1, {n * n}], got {givens!r}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        solution = random_solution(n, rng)
        puzzle = solution.ravel().copy()
        filled = n * n
        for cell in rng.permutation(n * n):
            if filled == givens:
                break
            digit = puzzle[cell]
            puzzle[cell] = 0
            if solve(puzzle, limit=1, forbid={cell: digit}):  # another completion exists
                puzzle[cell] = digit
            else:
                filled -= 1
        if filled == givens:
            return puzzle.reshape(n, n), solution
    raise PuzzleError(f"could not dig a unique {n}x{n} sudoku down to {givens} givens in {max_tries} tries")


def random_puzzles(num: int, n: int, givens, seed: int | np.random.Generator | None = None):
    """``num`` unique-solution puzzles; ``givens`` is an int or an inclusive range ``(low, high)``.

    Returns
    -------
    puzzles, solutions : ndarray of int64, shape ``(num, n, n)``
    """
    rng = np.random.default_rng(seed)
    low, high = (givens, givens) if np.ndim(givens) == 0 else tuple(givens)
    if low > high:
        raise PuzzleError(f"sudoku givens range must have low <= high, got {givens!r}")
    puzzles = np.zeros((num, n, n), dtype=np.int64)
    solutions = np.zeros((num, n, n), dtype=np.int64)
    for i in range(num):
        puzzles[i], solutions[i] = random_puzzle(n, int(rng.integers(low, high + 1)), rng)
    return puzzles, solutions
