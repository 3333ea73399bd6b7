"""Gymnasium environments of the discrete plants: ``trc/Maze-v0`` and ``trc/Sudoku-v0``.

Both environments step the registered plants (:class:`dynamics.maze.Maze`,
:class:`dynamics.sudoku.Sudoku`) through batched *transition functions*,
:func:`maze_transition` and :func:`sudoku_transition`, which the RL trainer
(:mod:`trc.training.discrete`) calls on whole batches: one simulator and one reward
definition for the single environment and the batched training.

Reward shaping (:class:`Rewards`, per step)::

    r = step                        every step (a small cost of time, default -0.01)
      + invalid                     a move into a wall / an illegal or wrong placement (default -0.1)
      + goal                        reaching the goal / completing the board (default +1)

Episodes terminate at the goal (and, for sudoku with ``on_mistake="terminate"``, on a
placement that contradicts the unique solution) and are truncated after ``max_steps``.
``info`` holds ``action_mask`` (the moves not blocked by a wall, the legal placements),
``is_success``, ``steps`` and ``invalid`` (count of penalised actions).

Examples
--------
>>> import gymnasium as gym
>>> import dynamics.discrete_env  # registers the ids
>>> env = gym.make("trc/Maze-v0", height=5, width=5)
>>> obs, info = env.reset(seed=0)
>>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from .errors import InvalidActionError, PuzzleError
from .maze import Maze, random_instance
from .sudoku import Sudoku, check_board, random_puzzle, solve

__all__ = ["Rewards", "MazeEnv", "SudokuEnv", "maze_transition", "sudoku_transition", "maze_grid", "sudoku_grid"]

OBSERVATIONS = ("state", "grid")


@dataclass(frozen=True)
class Rewards:
    """Reward shaping of the discrete environments (see the module notes).

    Attributes
    ----------
    goal : float
        Bonus on reaching the goal or completing the board.
    step : float
        Added every step (normally negative: a cost of time).
    invalid : float
        Added on a blocked move or an illegal or wrong placement (normally negative).
    """

    goal: float = 1.0
    step: float = -0.01
    invalid: float = -0.1


def maze_transition(plant: Maze, x: torch.Tensor, action: torch.Tensor, rewards: Rewards = Rewards()):
    """One batched maze step with rewards.

    Parameters
    ----------
    plant : Maze
    x : Tensor, shape ``(batch, state_dim)``
    action : Tensor of int, shape ``(batch,)``
    rewards : Rewards

    Returns
    -------
    x_next : Tensor, shape ``(batch, state_dim)``
    reward : Tensor, shape ``(batch,)``
    reached : Tensor of bool, shape ``(batch,)``
        The agent is on the goal after the step.
    invalid : Tensor of bool, shape ``(batch,)``
        The move was blocked by a wall or the border.

    Raises
    ------
    InvalidActionError
        If an action is not in ``{0, 1, 2, 3}``.
    """
    u = action.reshape(-1, 1)
    a = plant.action_index(u)
    invalid = plant.blocked(x).gather(1, a.unsqueeze(1).to(x.device))[:, 0]
    x_next = plant.step(x, u.to(x.dtype))
    reached = plant.at_goal(x_next)
    reward = rewards.step + rewards.invalid * invalid.to(x.dtype) + rewards.goal * reached.to(x.dtype)
    return x_next, reward, reached, invalid


def sudoku_transition(
    plant: Sudoku,
    x: torch.Tensor,
    action: torch.Tensor,
    solution: torch.Tensor,
    rewards: Rewards = Rewards(),
    on_mistake: str = "terminate",
):
    """One batched sudoku step with rewards.

    A placement is *illegal* when the cell is full or the digit repeats one of its row,
    column or box (board unchanged, ``invalid`` penalty). A legal placement that differs
    from the unique solution is a *mistake*: with ``on_mistake="terminate"`` it is placed
    and ends the episode as a failure, with ``"reject"`` it is undone; both are penalised
    like illegal moves.

    Parameters
    ----------
    plant : Sudoku
    x : Tensor, shape ``(batch, n * n)``
    action : Tensor of int, shape ``(batch,)``
    solution : Tensor, shape ``(batch, n * n)``
    rewards : Rewards
    on_mistake : {"terminate", "reject"}

    Returns
    -------
    x_next : Tensor, shape ``(batch, n * n)``
    reward : Tensor, shape ``(batch,)``
    solved : Tensor of bool, shape ``(batch,)``
        The board is complete (and therefore equal to the solution).
    invalid : Tensor of bool, shape ``(batch,)``
        Illegal placement or mistake.
    mistake : Tensor of bool, shape ``(batch,)``
        Legal placement of a wrong digit.
    """
    if on_mistake not in ("terminate", "reject"):
        raise ValueError(f"on_mistake must be 'terminate' or 'reject', got {on_mistake!r}")
    u = action.reshape(-1, 1)
    a = plant.action_index(u).to(x.device)
    legal = plant.legal_actions(x).gather(1, a.unsqueeze(1))[:, 0]
    n = plant.size
    rows = torch.arange(x.shape[0], device=x.device)
    cell, digit = a // n, a % n + 1
    mistake = legal & (solution[rows, cell].round().long() != digit)
    x_next = plant.step(x, u.to(x.dtype))
    if on_mistake == "reject":
        x_next = torch.where(mistake.unsqueeze(1), x, x_next)
    invalid = ~legal | mistake
    solved = (x_next != 0).all(1) & ~mistake
    reward = rewards.step + rewards.invalid * invalid.to(x.dtype) + rewards.goal * solved.to(x.dtype)
    return x_next, reward, solved, invalid, mistake


def maze_grid(plant: Maze, x: torch.Tensor) -> torch.Tensor:
    """Image encoding of maze states: float ``(batch, 3, H, W)`` channels wall, goal, agent."""
    walls, goal, agent = plant.unpack(x)
    rows = torch.arange(x.shape[0], device=x.device)
    out = torch.zeros(x.shape[0], 3, plant.height, plant.width, dtype=x.dtype, device=x.device)
    out[:, 0] = walls.to(x.dtype)
    out[rows, 1, goal[:, 0], goal[:, 1]] = 1
    out[rows, 2, agent[:, 0], agent[:, 1]] = 1
    return out


def sudoku_grid(plant: Sudoku, x: torch.Tensor) -> torch.Tensor:
    """One-hot encoding of boards: float ``(batch, n + 1, n, n)``, channel 0 = empty."""
    n = plant.size
    board = plant.validate(x).round().long().reshape(-1, n, n)
    return torch.nn.functional.one_hot(board, n + 1).permute(0, 3, 1, 2).to(x.dtype)


class _DiscreteEnv(gym.Env):
    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def _check_options(self, observation, max_steps, render_mode):
        if observation not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
        if max_steps is not None and not (isinstance(max_steps, (int, np.integer)) and max_steps >= 1):
            raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")

    def _action(self, action) -> torch.Tensor:
        if not self.action_space.contains(action) and not (
            np.ndim(action) == 0 and np.asarray(action).dtype.kind in "iu" and 0 <= int(action) < self.action_space.n
        ):
            raise InvalidActionError(
                f"{type(self).__name__}: action {action!r} is not in the action space Discrete({self.action_space.n})"
            )
        return torch.tensor([int(action)])

    def _obs(self):
        x = self._x
        if self.observation == "grid":
            return self._grid(x)[0].numpy().astype(np.float32)
        return x[0].numpy().astype(np.float32)


class MazeEnv(_DiscreteEnv):
    """Grid maze environment (``trc/Maze-v0``).

    Parameters
    ----------
    height, width : int
        Grid size in cells, walls included (3 to 64).
    layout : {"backtracker", "random"}
        Maze generator, see :func:`dynamics.maze.random_layout`.
    loop_probability, wall_probability : float
        Generator options.
    max_steps : int, optional
        Truncation limit; default ``4 * height * width``.
    observation : {"state", "grid"}
        ``"state"``: the plant state ``(H*W + 4,)`` (walls, goal, agent); ``"grid"``: channels
        wall, goal, agent ``(3, H, W)``.
    rewards : Rewards or dict, optional
        Reward shaping; default ``Rewards()``.
    render_mode : {"ansi", "rgb_array"}, optional

    Notes
    -----
    ``reset(options={"walls": ..., "start": ..., "goal": ...})`` plays a given maze.
    """

    def __init__(
        self,
        height: int = 5,
        width: int = 5,
        *,
        layout: str = "backtracker",
        loop_probability: float = 0.0,
        wall_probability: float = 0.3,
        max_steps: int | None = None,
        observation: str = "state",
        rewards: Rewards | dict | None = None,
        render_mode: str | None = None,
    ):
        self._check_options(observation, max_steps, render_mode)
        self.plant = Maze(height=height, width=width)
        self.generator_options = dict(
            layout=layout, loop_probability=loop_probability, wall_probability=wall_probability
        )
        random_instance(height, width, 0, **self.generator_options)  # validate the options now
        self.max_steps = int(max_steps) if max_steps is not None else 4 * height * width
        self.observation = observation
        self.rewards = Rewards(**rewards) if isinstance(rewards, dict) else (rewards or Rewards())
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(4)
        if observation == "grid":
            self.observation_space = spaces.Box(0.0, 1.0, (3, height, width), np.float32)
        else:
            high = np.concatenate([np.ones(height * width), [height - 1, width - 1] * 2]).astype(np.float32)
            self.observation_space = spaces.Box(np.zeros_like(high), high, dtype=np.float32)
        self._grid = lambda x: maze_grid(self.plant, x)
        self._x = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = dict(options or {})
        if {"walls", "start", "goal"} <= set(options):
            walls, start, goal = options.pop("walls"), options.pop("start"), options.pop("goal")
        else:
            walls, start, goal = random_instance(self.plant.height, self.plant.width, self.np_random,
                                                 **self.generator_options)
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; expected walls, start and goal together")
        self._x = self.plant.pack(np.asarray(walls)[None], np.asarray(goal)[None], np.asarray(start)[None])
        if bool(self.plant.at_goal(self._x)[0]):
            raise PuzzleError("maze start equals the goal")
        self._steps, self._invalid = 0, 0
        return self._obs(), self._info(False)

    def _info(self, success: bool) -> dict:
        mask = (~self.plant.blocked(self._x)[0]).numpy().astype(np.int8)
        return {"action_mask": mask, "is_success": success, "steps": self._steps, "invalid": self._invalid}

    def step(self, action):
        if self._x is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        x, reward, reached, invalid = maze_transition(self.plant, self._x, self._action(action), self.rewards)
        self._x = x
        self._steps += 1
        self._invalid += int(invalid[0])
        terminated = bool(reached[0])
        truncated = not terminated and self._steps >= self.max_steps
        return self._obs(), float(reward[0]), terminated, truncated, self._info(terminated)

    def render(self):
        if self.render_mode == "ansi":
            return self.plant.render(self._x)
        if self.render_mode == "rgb_array":
            g = maze_grid(self.plant, self._x)[0].numpy()
            img = np.full(g.shape[1:] + (3,), 255, dtype=np.uint8)
            img[g[0] > 0] = (40, 40, 40)
            img[g[1] > 0] = (40, 170, 60)
            img[g[2] > 0] = (210, 50, 50)
            return np.kron(img, np.ones((16, 16, 1), dtype=np.uint8))
        return None


class SudokuEnv(_DiscreteEnv):
    """Sudoku environment (``trc/Sudoku-v0``).

    Parameters
    ----------
    size : {4, 9}
        Board size.
    givens : int or (int, int)
        Number of given digits, or an inclusive range sampled per episode.
    max_steps : int, optional
        Truncation limit; default ``2 * size**2``.
    on_mistake : {"terminate", "reject"}
        What a legal but wrong placement does, see :func:`sudoku_transition`.
    observation : {"state", "grid"}
        ``"state"``: the board ``(n*n,)``; ``"grid"``: one-hot ``(n + 1, n, n)``.
    rewards : Rewards or dict, optional
    render_mode : {"ansi"}, optional

    Notes
    -----
    ``reset(options={"puzzle": board})`` plays a given puzzle; it must have exactly one
    solution (:class:`~dynamics.discrete.PuzzleError` otherwise).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        size: int = 4,
        *,
        givens=(6, 10),
        max_steps: int | None = None,
        on_mistake: str = "terminate",
        observation: str = "state",
        rewards: Rewards | dict | None = None,
        render_mode: str | None = None,
    ):
        self._check_options(observation, max_steps, render_mode)
        if on_mistake not in ("terminate", "reject"):
            raise ValueError(f"on_mistake must be 'terminate' or 'reject', got {on_mistake!r}")
        self.plant = Sudoku(size=size)
        low, high = (givens, givens) if np.ndim(givens) == 0 else tuple(givens)
        if not (1 <= low <= high <= size * size):
            raise PuzzleError(f"sudoku givens must lie in [1, {size * size}] with low <= high, got {givens!r}")
        self.givens = (int(low), int(high))
        self.max_steps = int(max_steps) if max_steps is not None else 2 * size * size
        self.on_mistake = on_mistake
        self.observation = observation
        self.rewards = Rewards(**rewards) if isinstance(rewards, dict) else (rewards or Rewards())
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(size ** 3)
        if observation == "grid":
            self.observation_space = spaces.Box(0.0, 1.0, (size + 1, size, size), np.float32)
        else:
            self.observation_space = spaces.Box(0.0, float(size), (size * size,), np.float32)
        self._grid = lambda x: sudoku_grid(self.plant, x)
        self._x = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = dict(options or {})
        n = self.plant.size
        if "puzzle" in options:
            puzzle = check_board(options.pop("puzzle"), n)
            solutions = solve(puzzle, limit=2)
            if len(solutions) != 1:
                raise PuzzleError(f"sudoku puzzle must have exactly one solution, found {len(solutions)}"
                                  + (" (or more)" if solutions else ""))
            solution = solutions[0]
        else:
            givens = int(self.np_random.integers(self.givens[0], self.givens[1] + 1))
            puzzle, solution = random_puzzle(n, givens, self.np_random)
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; expected 'puzzle'")
        self._x = torch.tensor(puzzle.reshape(1, -1), dtype=torch.float32)
        self._solution = torch.tensor(solution.reshape(1, -1), dtype=torch.float32)
        self._steps, self._invalid = 0, 0
        return self._obs(), self._info(False)

    def _info(self, success: bool) -> dict:
        mask = self.plant.legal_actions(self._x)[0].numpy().astype(np.int8)
        return {"action_mask": mask, "is_success": success, "steps": self._steps, "invalid": self._invalid}

    def step(self, action):
        if self._x is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        x, reward, solved, invalid, mistake = sudoku_transition(
            self.plant, self._x, self._action(action), self._solution, self.rewards, self.on_mistake
        )
        self._x = x
        self._steps += 1
        self._invalid += int(invalid[0])
        terminated = bool(solved[0]) or (self.on_mistake == "terminate" and bool(mistake[0]))
        truncated = not terminated and self._steps >= self.max_steps
        return self._obs(), float(reward[0]), terminated, truncated, self._info(bool(solved[0]))

    def render(self):
        if self.render_mode == "ansi":
            return self.plant.render(self._x)
        return None


for _id, _cls in (("trc/Maze-v0", "MazeEnv"), ("trc/Sudoku-v0", "SudokuEnv")):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=f"dynamics.discrete_env:{_cls}")
