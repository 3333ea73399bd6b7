"""Sudoku plant, puzzle generator, placement orders and gymnasium environment.

Reference for uniqueness: an integer program solved by scipy.optimize.milp (HiGHS), with a
no-good cut excluding the first solution; independent of the depth-first search under test.
"""

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from scipy.optimize import Bounds, LinearConstraint, milp

import dynamics
from dynamics.errors import InvalidActionError, PuzzleError
from dynamics.discrete_env import Rewards, SudokuEnv, sudoku_transition
from dynamics.errors import DimensionError
from dynamics.sudoku import (Sudoku, check_board, count_solutions, decode_action, encode_action, random_puzzle,
                             random_puzzles, solve)
from trc.generators.sudoku import placement_order, solve_sudokus


def milp_solutions(puzzle, max_solutions=2):
    """Solutions of a puzzle by integer programming, at most ``max_solutions`` (no-good cuts)."""
    n = puzzle.shape[0]
    b = math.isqrt(n)
    var = lambda r, c, d: (r * n + c) * n + d  # noqa: E731
    rows = []
    for r in range(n):
        for c in range(n):
            rows.append([var(r, c, d) for d in range(n)])  # one digit per cell
    for d in range(n):
        for i in range(n):
            rows.append([var(i, c, d) for c in range(n)])  # once per row
            rows.append([var(r, i, d) for r in range(n)])  # once per column
            br, bc = divmod(i, b)
            rows.append([var(br * b + r, bc * b + c, d) for r in range(b) for c in range(b)])  # once per box
    A = np.zeros((len(rows), n ** 3))
    for k, idx in enumerate(rows):
        A[k, idx] = 1
    lo = np.zeros(n ** 3)
    for r, c in zip(*np.nonzero(puzzle)):
        lo[var(r, c, puzzle[r, c] - 1)] = 1
    constraints = [LinearConstraint(A, 1, 1)]
    found = []
    while len(found) < max_solutions:
        res = milp(np.zeros(n ** 3), constraints=constraints, integrality=np.ones(n ** 3), bounds=Bounds(lo, 1))
        if res.status != 0:
            break
        x = np.round(res.x).astype(int)
        found.append(x.reshape(n, n, n).argmax(-1) + 1)
        cut = np.zeros((1, n ** 3))
        cut[0, np.nonzero(x)[0]] = 1
        constraints.append(LinearConstraint(cut, -np.inf, n * n - 1))
    return found


@pytest.mark.parametrize("n,givens", [(4, 4), (4, 6), (4, 10), (9, 30), (9, 40)])
def test_generated_puzzles_have_exactly_one_solution(n, givens):
    for seed in range(3 if n == 9 else 6):
        puzzle, solution = random_puzzle(n, givens, seed)
        assert (puzzle > 0).sum() == givens
        assert ((puzzle == 0) | (puzzle == solution)).all()
        ref = milp_solutions(puzzle)
        assert len(ref) == 1, "the integer program finds a second solution"
        np.testing.assert_array_equal(ref[0], solution)
        assert count_solutions(puzzle) == 1


def test_solver_counts_several_solutions():
    puzzle = np.zeros((4, 4), dtype=int)
    puzzle[0] = [1, 2, 3, 4]
    assert count_solutions(puzzle, limit=10) == len(milp_solutions(puzzle, 10))  # both see the same count (>1)
    assert count_solutions(puzzle, limit=10) > 1
    assert solve(puzzle, limit=1, forbid={4: solve(puzzle)[0].ravel()[4]})  # another completion exists


def test_solutions_satisfy_the_rules():
    plant = Sudoku(size=9)
    puzzles, solutions = random_puzzles(4, 9, (30, 35), seed=3)
    x = torch.tensor(solutions.reshape(4, -1), dtype=torch.float32)
    assert plant.solved(x).all()
    bad = x.clone()
    bad[:, [0, 1]] = bad[:, [1, 0]]  # swap two cells of row 0: column rule broken
    assert not plant.solved(bad).any()
    assert not plant.solved(torch.tensor(puzzles.reshape(4, -1), dtype=torch.float32)).any()


@pytest.mark.parametrize("n,givens", [(4, (4, 8)), (9, (30, 40))])
def test_placement_order_completes_the_board_with_legal_moves(n, givens):
    plant = Sudoku(size=n)
    puzzles, _ = random_puzzles(5, n, givens, seed=1)
    sol = solve_sudokus(puzzles)
    for i in range(5):
        x = torch.tensor(puzzles[i].reshape(1, -1), dtype=torch.float32)
        L = int(sol.lengths[i])
        assert L == (puzzles[i] == 0).sum()
        for a in sol.actions[i, :L]:
            assert plant.legal_actions(x)[0, a]
            x = plant.step(x, torch.tensor([[float(a)]]))
        np.testing.assert_array_equal(x[0].numpy().reshape(n, n), sol.solutions[i])


def test_candidates_match_brute_force():
    plant = Sudoku(size=4)
    puzzles, _ = random_puzzles(6, 4, (4, 8), seed=0)
    x = torch.tensor(puzzles.reshape(6, -1), dtype=torch.float32)
    cand = plant.candidates(x)
    for i in range(6):
        for cell in range(16):
            r, c = divmod(cell, 4)
            for d in range(1, 5):
                board = puzzles[i].copy()
                ok = board[r, c] == 0
                if ok:
                    board[r, c] = d
                    try:
                        check_board(board)
                    except PuzzleError:
                        ok = False
                assert bool(cand[i, cell, d - 1]) == ok


def test_action_encoding_round_trip():
    a = np.arange(9 ** 3)
    r, c, d = decode_action(a, 9)
    np.testing.assert_array_equal(encode_action(r, c, d, 9), a)
    assert encode_action(8, 8, 9, 9) == 728


def test_step_places_legal_digits_only():
    plant = Sudoku(size=4)
    board = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32).repeat(3, 1)
    u = torch.tensor([[encode_action(0, 0, 2, 4)], [encode_action(0, 1, 1, 4)], [encode_action(0, 1, 2, 4)]],
                     dtype=torch.float32)  # occupied cell, row conflict, legal
    x1 = plant.step(board, u)
    assert torch.equal(x1[0], board[0]) and torch.equal(x1[1], board[1])
    assert x1[2, 1] == 2 and (x1[2] != board[2]).sum() == 1


def test_transition_mistakes_terminate_or_are_rejected():
    plant = Sudoku(size=4)
    puzzle, solution = random_puzzle(4, 6, seed=0)
    x = torch.tensor(puzzle.reshape(1, -1), dtype=torch.float32)
    s = torch.tensor(solution.reshape(1, -1), dtype=torch.float32)
    cell = int(np.flatnonzero(puzzle.ravel() == 0)[0])
    cand = plant.candidates(x)[0, cell]
    wrong = [d + 1 for d in range(4) if cand[d] and d + 1 != solution.ravel()[cell]]
    rewards = Rewards(1.0, -0.01, -0.1)
    if wrong:
        a = torch.tensor([cell * 4 + wrong[0] - 1])
        x1, r, solved, invalid, mistake = sudoku_transition(plant, x, a, s, rewards, "terminate")
        assert mistake.item() and invalid.item() and not solved.item() and x1[0, cell] == wrong[0]
        x1, *_ = sudoku_transition(plant, x, a, s, rewards, "reject")
        assert torch.equal(x1, x)
    a = torch.tensor([cell * 4 + int(solution.ravel()[cell]) - 1])
    x1, r, solved, invalid, mistake = sudoku_transition(plant, x, a, s, rewards)
    assert not invalid.item() and abs(float(r) + 0.01) < 1e-6


@pytest.mark.parametrize("action", [64, -1, 0.5])
def test_invalid_actions_are_rejected(action):
    plant = Sudoku(size=4)
    with pytest.raises(InvalidActionError, match=r"\[0, 64\)"):
        plant.step(torch.zeros(1, 16), torch.tensor([[action]]))


def test_malformed_puzzles_are_rejected():
    with pytest.raises(PuzzleError, match="repeat a digit in row 0"):
        check_board([[1, 1, 0, 0], [0] * 4, [0] * 4, [0] * 4])
    with pytest.raises(PuzzleError, match=r"\[0, 4\]"):
        check_board([[5, 0, 0, 0], [0] * 4, [0] * 4, [0] * 4])
    with pytest.raises(DimensionError, match="shape"):
        check_board(np.zeros((5, 5)))
    with pytest.raises(PuzzleError, match="integers"):
        Sudoku(size=4).step(torch.full((1, 16), 0.5), torch.tensor([[0.0]]))
    with pytest.raises(PuzzleError, match="size"):
        Sudoku(size=5)
    with pytest.raises(PuzzleError, match="givens"):
        random_puzzle(4, 0, 0)
    env = SudokuEnv(4)
    with pytest.raises(PuzzleError, match="exactly one solution"):
        env.reset(options={"puzzle": np.zeros((4, 4), dtype=int)})
    with pytest.raises(PuzzleError, match="exactly one solution, found 0"):
        env.reset(options={"puzzle": [[1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 3, 0], [0, 0, 4, 0]]})


def test_plant_is_registered():
    assert "sudoku" in dynamics.names()
    plant = dynamics.make("sudoku", size=9)
    assert plant.differentiable is False and plant.state_dim == 81 and plant.num_actions == 729


@pytest.mark.parametrize("observation", ["state", "grid"])
def test_env_checker_passes(observation):
    check_env(SudokuEnv(4, observation=observation, render_mode="ansi"))


def test_env_solves_with_the_optimal_order():
    env = SudokuEnv(4, givens=6, rewards={"goal": 1.0, "step": -0.01, "invalid": -0.1})
    obs, info = env.reset(seed=3)
    puzzle = obs.reshape(4, 4).astype(int)
    order, _ = placement_order(puzzle, solve(puzzle)[0])
    total = 0.0
    for k, a in enumerate(order):
        assert info["action_mask"][a] == 1
        obs, r, term, trunc, info = env.step(int(a))
        total += r
        assert term == (k == len(order) - 1)
    assert info["is_success"] and abs(total - (1.0 - 0.01 * len(order))) < 1e-5
