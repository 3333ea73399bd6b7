"""Maze plant, generator, BFS solver and gymnasium environment.

References: networkx shortest paths and scipy.sparse.csgraph (independent of the BFS here).
"""

import gymnasium as gym
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from gymnasium.utils.env_checker import check_env
from scipy.sparse.csgraph import shortest_path

import dynamics
from dynamics.errors import InvalidActionError, PuzzleError
from dynamics.discrete_env import MazeEnv, Rewards, maze_transition
from dynamics.errors import DimensionError
from dynamics.maze import MOVES, Maze, random_instance, random_instances, random_layout
from trc.generators.maze import bfs_distances, optimal_actions, shortest_paths, solve_mazes


def grid_graph(walls):
    H, W = walls.shape
    g = nx.grid_2d_graph(H, W)
    return g.subgraph([c for c in g if not walls[c]]).copy()


CASES = [(5, 5, "backtracker", 0.0), (7, 9, "backtracker", 0.3), (15, 15, "backtracker", 0.3),
         (16, 12, "backtracker", 0.1), (9, 9, "random", 0.0), (15, 15, "random", 0.0), (3, 3, "backtracker", 0.0)]


@pytest.mark.parametrize("H,W,layout,loops", CASES)
def test_mazes_are_always_solvable(H, W, layout, loops):
    walls, starts, goals = random_instances(20, H, W, seed=H * W, layout=layout, loop_probability=loops)
    for w, s, g in zip(walls, starts, goals):
        assert not w[tuple(s)] and not w[tuple(g)] and tuple(s) != tuple(g)
        assert nx.has_path(grid_graph(w), tuple(s), tuple(g))


def test_backtracker_without_loops_is_a_perfect_maze():
    walls = random_layout(15, 15, 3)
    g = grid_graph(walls)
    assert nx.is_tree(g)  # connected and acyclic: one path between any two cells


@pytest.mark.parametrize("H,W,layout,loops", CASES)
def test_bfs_matches_networkx_and_csgraph(H, W, layout, loops):
    walls, starts, goals = random_instances(10, H, W, seed=7, layout=layout, loop_probability=loops)
    dist = bfs_distances(walls, goals)
    for i in range(10):
        g = grid_graph(walls[i])
        ref = nx.single_source_shortest_path_length(g, tuple(goals[i]))
        expected = np.full((H, W), -1)
        for cell, d in ref.items():
            expected[cell] = d
        np.testing.assert_array_equal(dist[i], expected)
        # scipy: unweighted adjacency of open cells, BFS-free Dijkstra
        idx = {c: k for k, c in enumerate(g.nodes)}
        rows = [idx[a] for a, b in g.edges] + [idx[b] for a, b in g.edges]
        cols = [idx[b] for a, b in g.edges] + [idx[a] for a, b in g.edges]
        adj = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(idx), len(idx)))
        d_sp = shortest_path(adj, unweighted=True, indices=idx[tuple(goals[i])])
        for c, k in idx.items():
            assert (dist[i][c] == -1 and np.isinf(d_sp[k])) or dist[i][c] == d_sp[k]


def test_shortest_paths_are_optimal_and_reach_the_goal():
    walls, starts, goals = random_instances(30, 11, 11, seed=1, loop_probability=0.3)
    sol = solve_mazes(walls, starts, goals)
    plant = Maze(height=11, width=11)
    x0 = plant.pack(walls, goals, starts)
    for i in range(30):
        L = int(sol.lengths[i])
        assert L == nx.shortest_path_length(grid_graph(walls[i]), tuple(starts[i]), tuple(goals[i]))
        assert (sol.actions[i, L:] == -1).all() and (sol.actions[i, :L] >= 0).all()
        traj = plant.rollout(x0[i:i + 1], torch.tensor(sol.actions[i:i + 1, :L, None], dtype=torch.float32))
        assert bool(plant.at_goal(traj[:, -1])[0])
        assert not plant.at_goal(traj[0, :-1]).any()  # no shorter prefix reaches it


def test_optimal_actions_decrease_the_distance_by_one():
    walls, starts, goals = random_instances(5, 9, 9, seed=2, loop_probability=0.5)
    d = bfs_distances(walls, goals)
    opt = optimal_actions(walls, d)
    for i, r, c, a in zip(*np.nonzero(opt)):
        nr, nc = r + MOVES[a][0], c + MOVES[a][1]
        assert d[i, nr, nc] == d[i, r, c] - 1
    # every reachable non-goal cell has at least one optimal action
    assert (opt.any(-1) == (d > 0)).all()


def test_same_seed_same_mazes():
    a = random_instances(5, 9, 9, seed=11, loop_probability=0.2)
    b = random_instances(5, 9, 9, seed=11, loop_probability=0.2)
    c = random_instances(5, 9, 9, seed=12, loop_probability=0.2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_plant_is_registered_and_not_differentiable():
    assert "maze" in dynamics.names()
    plant = dynamics.make("maze", height=6, width=8)
    assert plant.differentiable is False and plant.discrete is True
    assert plant.state_dim == 6 * 8 + 4 and plant.control_dim == 1 and plant.num_actions == 4
    with pytest.raises(NotImplementedError):
        plant.linearize(np.zeros(plant.state_dim), [0])


def test_step_moves_blocks_and_absorbs():
    walls = np.array([[0, 0, 1], [1, 0, 1], [0, 0, 0]], dtype=bool)
    plant = Maze(height=3, width=3)
    x = plant.pack(np.repeat(walls[None], 5, 0), [[2, 2]] * 5, [[0, 0], [0, 0], [0, 1], [2, 1], [2, 2]])
    # right: open; down: into a wall; down: open; right: onto the goal; left: the goal is absorbing
    u = torch.tensor([[1.0], [2.0], [2.0], [1.0], [3.0]])
    _, _, agent = plant.unpack(plant.step(x, u))
    assert agent.tolist() == [[0, 1], [0, 0], [1, 1], [2, 2], [2, 2]]
    # off-grid move is blocked as well
    _, _, agent = plant.unpack(plant.step(x[:1], torch.tensor([[0.0]])))
    assert agent.tolist() == [[0, 0]]
    x1, r, reached, invalid = maze_transition(plant, x, torch.tensor([1, 2, 2, 1, 3]), Rewards(1.0, -0.01, -0.1))
    np.testing.assert_allclose(r.numpy(), [-0.01, -0.11, -0.01, 0.99, 0.99], atol=1e-6)  # the goal is absorbing
    assert invalid.tolist() == [False, True, False, False, False]


def test_batched_step_equals_single_steps():
    walls, starts, goals = random_instances(16, 7, 7, seed=5, loop_probability=0.2)
    plant = Maze(height=7, width=7)
    x = plant.pack(walls, goals, starts)
    u = torch.randint(0, 4, (16, 1)).float()
    batched = plant.step(x, u)
    single = torch.cat([plant.step(x[i:i + 1], u[i:i + 1]) for i in range(16)])
    assert torch.equal(batched, single)


@pytest.mark.parametrize("action", [4, -1, 1.5, float("nan")])
def test_invalid_actions_are_rejected(action):
    plant = Maze(height=5, width=5)
    w, s, g = random_instance(5, 5, seed=0)
    x = plant.pack(w[None], g[None], s[None])
    with pytest.raises(InvalidActionError, match=r"\[0, 4\)"):
        plant.step(x, torch.tensor([[action]]))


def test_malformed_mazes_are_rejected():
    plant = Maze(height=5, width=5)
    w, s, g = random_instance(5, 5, seed=0)
    wall_cell = np.argwhere(w)[0]
    with pytest.raises(PuzzleError, match="agent lies on a wall"):
        plant.pack(w[None], g[None], wall_cell[None])
    with pytest.raises(PuzzleError, match=r"\[0, 5\)"):
        plant.pack(w[None], g[None], np.array([[5, 0]]))
    with pytest.raises(DimensionError, match="expected"):
        plant.pack(w[None, :4], g[None], s[None])
    x = plant.pack(w[None], g[None], s[None])
    x[0, 0] = 0.5
    with pytest.raises(PuzzleError, match="0 \\(open\\) or 1"):
        plant.step(x, torch.tensor([[0.0]]))
    with pytest.raises(PuzzleError, match="integer"):
        Maze(height=2, width=5)
    with pytest.raises(PuzzleError, match="layout"):
        random_layout(5, 5, 0, layout="prim")


@pytest.mark.parametrize("observation", ["state", "grid"])
def test_env_checker_passes(observation):
    env = MazeEnv(7, 7, observation=observation, render_mode="rgb_array", loop_probability=0.2)
    check_env(env)
    env = gym.make("trc/Maze-v0", height=5, width=5, observation=observation)
    check_env(env.unwrapped)


def test_env_episode_rewards_and_truncation():
    w = np.zeros((3, 3), dtype=bool)
    env = MazeEnv(3, 3, max_steps=3, rewards={"goal": 2.0, "step": -0.5, "invalid": -1.0})
    obs, info = env.reset(options={"walls": w, "start": np.array([0, 0]), "goal": np.array([0, 2])})
    assert info["action_mask"].tolist() == [0, 1, 1, 0]
    _, r, term, trunc, _ = env.step(0)  # into the border
    assert (r, term, trunc) == (-1.5, False, False)
    _, r, term, trunc, _ = env.step(1)
    _, r, term, trunc, info = env.step(1)
    assert (r, term, trunc, info["is_success"]) == (1.5, True, False, True)
    env.reset(options={"walls": w, "start": np.array([0, 0]), "goal": np.array([2, 2])})
    for _ in range(3):
        _, _, term, trunc, _ = env.step(3)
    assert trunc and not term
    with pytest.raises(InvalidActionError, match="Discrete\\(4\\)"):
        env.step(7)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"walls": w})
