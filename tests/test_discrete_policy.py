"""Discrete policies (recursive and MLP), losses, training stages, data sets and CLIs."""

import json
import time

import numpy as np
import pytest
import torch
import yaml

import dynamics
import trc
from dynamics.errors import CheckpointError, ConfigError, DatasetError, DimensionError
from trc.discrete import problem_from_dict
from trc.evaluate import main as evaluate_main
from trc.generate import main as generate_main
from trc.train import main as train_main
from trc.generators.discrete import generate_discrete, read_discrete_dataset, write_discrete_dataset
from trc.models.discrete import (DiscretePolicyConfig, MLPPolicy, RecursivePolicy, count_parameters,
                                 make_discrete_policy)
from trc.models.recursion import RecursionCore
from trc.training.discrete import (DiscreteTrainConfig, _augment, evaluate_policy, instances_from_problem,
                                   optimal_action_mask, optimal_value, rollout, set_loss, train_reinforce,
                                   train_supervised)

MAZE = dict(kind="maze", name="maze5", height=5, width=5, loop_probability=0.3, max_steps=30)
SUDOKU = dict(kind="sudoku", name="sudoku4", size=4, givens=[6, 10])


@pytest.fixture(scope="module")
def maze():
    problem = problem_from_dict(MAZE)
    return problem, instances_from_problem(problem, 64, 0)


@pytest.mark.parametrize("spec", [MAZE, SUDOKU, dict(SUDOKU, size=9, givens=[40, 45])])
@pytest.mark.parametrize("arch", ["trc", "mlp"])
def test_policy_shapes_and_masks(spec, arch):
    problem = problem_from_dict(spec)
    plant = problem.make_plant()
    inst = instances_from_problem(problem, 3, 0)
    cfg = DiscretePolicyConfig(architecture=arch, H_cycles=2, L_cycles=1, condition_on_previous_action=True)
    policy = make_discrete_policy(plant, cfg)
    out = policy(inst.x0, torch.tensor([-1, 0, 2]))
    assert len(out.logits) == (2 if arch == "trc" else 1)
    assert all(l.shape == (3, plant.num_actions) for l in out.logits)
    legal = ~plant.blocked(inst.x0) if plant.name == "maze" else plant.legal_actions(inst.x0)
    assert (out.logits[-1][~legal] <= -1e8).all() and (out.logits[-1][legal] > -1e8).all()
    if arch == "trc":
        tokens = plant.height * plant.width if plant.name == "maze" else plant.size ** 2
        assert out.token_logits[-1].shape[:2] == (3, tokens)
        assert out.state.z_H.shape == (3, tokens, cfg.latent_dim) and out.state.z_L is not None
    with pytest.raises(DimensionError, match="expected"):
        policy(inst.x0[:, :-1])


def test_recursive_policy_reuses_the_trc_core_and_mlp_matches_parameters():
    plant = dynamics.make("maze", height=9, width=9)
    cfg = DiscretePolicyConfig(latent_dim=16, hidden_dim=32)
    trc = RecursivePolicy(plant, cfg)
    assert isinstance(trc.core, RecursionCore)
    mlp = MLPPolicy(plant, cfg)
    assert abs(count_parameters(mlp) / count_parameters(trc) - 1) < 0.05
    # one shared network: more cycles do not add parameters
    assert count_parameters(RecursivePolicy(plant, DiscretePolicyConfig(latent_dim=16, hidden_dim=32, H_cycles=5))) \
        == count_parameters(trc)


def test_set_loss_matches_definition():
    logits = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 0.5, 0.5]])
    targets = torch.tensor([[True, False, True, False], [False, False, False, False]])
    p = torch.softmax(logits[0], -1)
    assert torch.allclose(set_loss(logits, targets), torch.tensor([-torch.log(p[0] + p[2]), 0.0]))


def test_config_errors():
    with pytest.raises(ConfigError, match="architecture"):
        DiscretePolicyConfig(architecture="transformer")
    with pytest.raises(ConfigError, match="H_cycles"):
        DiscretePolicyConfig(H_cycles=0)
    with pytest.raises(ConfigError, match="kind"):
        problem_from_dict({"kind": "chess", "name": "x"})
    with pytest.raises(ConfigError, match="unknown key"):
        problem_from_dict(dict(MAZE, colour="red"))
    with pytest.raises(ConfigError, match="gamma"):
        DiscreteTrainConfig(gamma=0)
    with pytest.raises(ConfigError, match="maze"):
        make_discrete_policy(dynamics.make("double_integrator"), {})


def test_supervised_training_reduces_the_loss(maze):
    problem, inst = maze
    torch.manual_seed(0)
    policy = make_discrete_policy(problem.make_plant(), dict(latent_dim=16, hidden_dim=32, H_cycles=2, L_cycles=1))
    hist = train_supervised(policy, inst, DiscreteTrainConfig(supervised_batches=30, batch_size=16, lr=3e-3))
    first, last = np.mean([h["loss"] for h in hist[:5]]), np.mean([h["loss"] for h in hist[-5:]])
    assert last < 0.8 * first


def test_time_budget_anneals_the_learning_rate(maze):
    problem, inst = maze
    torch.manual_seed(0)
    policy = make_discrete_policy(problem.make_plant(), dict(latent_dim=8, hidden_dim=16, H_cycles=1, L_cycles=1))
    cfg = DiscreteTrainConfig(supervised_batches=10**6, batch_size=4, lr=1e-3)
    hist = train_supervised(policy, inst, cfg, deadline=time.monotonic() + 3.0)
    assert len(hist) < 10**6  # stopped by the budget
    assert hist[0]["lr"] == pytest.approx(1e-3)
    assert hist[-1]["lr"] < 0.3e-3  # the cosine followed the time budget, not the 10**6 batches


def test_tiny_reinforce_run_improves_reward():
    problem = problem_from_dict(dict(kind="maze", name="tiny", height=3, width=5, layout="random",
                                     wall_probability=0.2, max_steps=12))
    torch.manual_seed(0)
    policy = make_discrete_policy(problem.make_plant(), dict(architecture="mlp", mlp_width=32, mlp_layers=1))
    test = instances_from_problem(problem, 256, 123)

    def sampled_return():
        g = torch.Generator().manual_seed(5)
        rewards = dynamics.discrete_env.Rewards(**problem.rewards)
        ep = rollout(policy, test, problem.max_steps, greedy=False, rewards=rewards, generator=g)
        return float(ep["returns"].mean())

    before = sampled_return()
    cfg = DiscreteTrainConfig(rl_iterations=25, rl_batch=64, rl_lr=1e-2, entropy=0.0, baseline="mean",
                              normalize_advantage=True)
    hist = train_reinforce(policy, problem, cfg)
    after = sampled_return()
    assert after > before + 0.1, (before, after)
    assert len(hist) == 25 and all(np.isfinite(h["mean_return"]) for h in hist)


def test_evaluation_of_an_oracle_policy_is_optimal(maze):
    problem, inst = maze
    plant = problem.make_plant()

    class Oracle(torch.nn.Module):
        config = DiscretePolicyConfig(architecture="mlp")

        def __init__(self):
            super().__init__()
            self.plant = plant
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, prev=None, state=None, H_cycles=None, mask=None):
            from trc.models.discrete import PolicyOutput

            return PolicyOutput([optimal_action_mask(plant, x, self.inst).float() * 10], None, None)

    oracle = Oracle()
    oracle.inst = inst
    m = evaluate_policy(oracle, problem, inst, batch_size=len(inst))
    assert m["success_rate"] == 1.0 and m["optimality_gap"] == 0.0 and m["within_5pct"] == 1.0
    # the optimal-value baseline equals the discounted return of optimal episodes
    rewards = dynamics.discrete_env.Rewards(**problem.rewards)
    ep = rollout(oracle, inst, problem.max_steps, rewards=rewards, record=True)
    G, running = torch.zeros_like(ep["rewards"]), torch.zeros(len(inst))
    for t in reversed(range(G.shape[0])):
        running = ep["rewards"][t] + 0.9 * running * ep["alive"][t]
        G[t] = running
    V = optimal_value(plant, torch.stack(ep["x"]), inst, rewards, 0.9)
    torch.testing.assert_close(G[ep["alive"]], V[ep["alive"]])


@pytest.mark.parametrize("spec", [MAZE, SUDOKU])
def test_augmentation_keeps_solutions_optimal(spec):
    problem = problem_from_dict(spec)
    plant = problem.make_plant()
    inst = _augment(plant, instances_from_problem(problem, 32, 0), torch.Generator().manual_seed(0))
    x = inst.x0
    from trc.training.discrete import _step
    from dynamics.discrete_env import Rewards

    for t in range(int(inst.lengths.max())):
        active = inst.lengths > t
        a = inst.actions[:, t].clamp(min=0)
        assert optimal_action_mask(plant, x, inst)[active, a[active]].all()
        x = torch.where(active[:, None], _step(plant, x, a, inst, Rewards())[0], x)
    done = plant.at_goal(x) if plant.name == "maze" else plant.solved(x)
    assert done.all()


def test_dataset_round_trip_and_corruption(tmp_path):
    for spec in (MAZE, SUDOKU):
        problem = problem_from_dict(spec)
        data = generate_discrete(problem, 20, 1)
        path = write_discrete_dataset(tmp_path / f"{problem.name}.h5", data)
        back = read_discrete_dataset(path)
        for name, value in data.arrays().items():
            np.testing.assert_array_equal(getattr(back, name), value)
        traj = back.trajectory(0)
        assert traj.shape == (data.lengths[0] + 1, problem.make_plant().state_dim)
        np.testing.assert_array_equal(traj[-1].numpy(), data.target_states[0])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated, corrupt or not HDF5"):
        read_discrete_dataset(path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_discrete_dataset(tmp_path / "missing.h5")


def test_policy_file_round_trip(tmp_path, maze):
    problem, inst = maze
    policy = make_discrete_policy(problem.make_plant(), dict(latent_dim=8, hidden_dim=16))
    with pytest.raises(ConfigError, match="no problem"):
        trc.save(policy, tmp_path / "p.pt")
    policy.problem = problem
    trc.save(policy, tmp_path / "p.pt", metadata={"note": 1})
    loaded = trc.load(tmp_path / "p.pt")
    assert type(loaded) is type(policy) and loaded.problem.to_dict() == problem.to_dict()
    assert loaded.metadata == {"note": 1} and not loaded.training
    policy.eval()
    assert torch.equal(loaded(inst.x0).logits[-1], policy(inst.x0).logits[-1])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        trc.load(tmp_path / "bad.pt")


def test_command_lines(tmp_path, capsys):
    cfg = {
        "problem": dict(MAZE),
        "generator": {"num_samples": 60, "seed": 0, "out": str(tmp_path / "m.h5")},
        "model": {"latent_dim": 8, "hidden_dim": 16, "H_cycles": 2, "L_cycles": 1},
        "training": {"supervised_batches": 3, "batch_size": 8, "rl_iterations": 1, "rl_batch": 8, "eval_episodes": 6},
    }
    path = tmp_path / "maze.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert generate_main(["--config", str(path), "--quiet"]) == 0
    assert read_discrete_dataset(tmp_path / "m.h5").num_samples == 60
    assert train_main(["--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["success_rate"] <= 1 and metrics["episodes"] == 6
    assert train_main(["--config", str(path), "--out", str(tmp_path / "run"), "--stage", "rl", "--quiet"]) == 0
    assert evaluate_main(["--checkpoint", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["split"] == "test" and report["episodes"] == read_discrete_dataset(tmp_path / "m.h5").split(
        "test")["initial_states"].shape[0] and 0 <= report["success_rate"] <= 1
    assert train_main(["--config", str(path), "--epochs", "3"]) == 2  # a continuous option
    assert generate_main(["--config", str(path), "--chunk-size", "3"]) == 2 and "not used for discrete" in (
        capsys.readouterr().err)
    cfg["problem"]["height"] = 1
    path.write_text(yaml.safe_dump(cfg))
    assert generate_main(["--config", str(path)]) == 2 and "height" in capsys.readouterr().err


def test_continuous_rewards_sum_to_the_cost_and_reinforce_improves_it():
    from trc.experiment import load_experiment
    from trc.models import create_two_level_small
    from trc.training.rl import ContinuousRLConfig, reinforce_continuous, stage_rewards

    problem = load_experiment("configs/double_integrator.yaml").problem
    plant = problem.make_plant()
    x0, target = (torch.as_tensor(a, dtype=torch.float32) for a in problem.sample(128, 7))
    u = torch.randn(128, problem.horizon, 1)
    states = plant.rollout(x0, u)
    torch.testing.assert_close(-stage_rewards(problem, states, u, target).sum(1), problem.cost_of(states, u, target))
    torch.manual_seed(0)
    model = create_two_level_small(problem.state_dim, problem.control_dim, problem.horizon,
                                   u_min=plant.u_min, u_max=plant.u_max)

    def greedy_cost():
        with torch.no_grad():
            v = model(x0, target, plant=False)
            return float(problem.cost_of(plant.rollout(x0, v), v, target).mean())

    before = greedy_cost()
    hist = reinforce_continuous(model, problem, ContinuousRLConfig(iterations=15, batch_size=32, lr=1e-3, sigma=0.1))
    assert len(hist) == 15 and greedy_cost() < 0.7 * before
    with pytest.raises(ConfigError, match="sigma"):
        ContinuousRLConfig(sigma=0)


def test_continuous_stage_rl_command_line(tmp_path):
    from trc.experiment import load_experiment
    from trc.models import TinyRecursiveControl, preset_config
    problem = load_experiment("configs/double_integrator.yaml").problem
    config = preset_config("two_level_small", state_dim=problem.state_dim, control_dim=problem.control_dim,
                           horizon=problem.horizon)
    model = TinyRecursiveControl.from_problem(problem, config.to_dict())
    trc.save(model, tmp_path / "model.pt")
    argv = ["--config", "configs/double_integrator.yaml", "--stage", "rl", "--out", str(tmp_path),
            "--rl-iterations", "2", "--rl-batch", "8", "--quiet"]
    assert train_main(argv) == 0
    metrics = json.loads((tmp_path / "rl_metrics.json").read_text())
    assert metrics["iterations"] == 2 and np.isfinite(metrics["greedy_cost_after"])
    assert (tmp_path / "model_rl.pt").is_file()
    assert train_main(["--config", "configs/double_integrator.yaml", "--stage", "supervised"]) == 2
