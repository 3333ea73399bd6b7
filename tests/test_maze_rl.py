"""benchmarks/maze_rl.py: REINFORCE against RECAP on the maze, end to end on tiny sizes, and its bad input."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from dynamics.errors import DimensionError
from trc.experiment import load_experiment
from trc.generators.maze import bfs_distances
from trc.training.discrete import _augment, instances_from_problem, rollout

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("maze_rl")


@pytest.fixture
def tiny_config(tmp_path):
    """configs/maze.yaml with a short step budget and a small network (same distribution of 5 x 5 mazes)."""
    data = yaml.safe_load((ROOT / "configs" / "maze.yaml").read_text())
    data["problem"]["max_steps"] = 8
    data["model"].update(latent_dim=8, hidden_dim=16, num_layers=1, H_cycles=2, L_cycles=1)
    path = tmp_path / "maze_tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def tiny_args(config: str, *extra: str) -> list:
    return ["--maze-config", config, "--eval-episodes", "16", "--sup-mazes", "32", "--sup-batches", "3",
            "--episodes-supervised", "16", "--episodes-scratch", "16", "--rl-batch", "8", "--recap-rounds", "2",
            "--pool", "32", "--value-steps", "2", "--policy-steps", "2", "--quiet", *extra]


def tiny_cfg(bench, config: str, **over):
    base = {"maze_config": config, "eval_episodes": 16, "sup_mazes": 32, "sup_batches": 3,
            "episodes_supervised": 16, "episodes_scratch": 16, "rl_batch": 8, "recap_rounds": 2, "pool": 32,
            "value_steps": 2, "policy_steps": 2}
    return bench.BenchConfig(**{**base, **over})


# ---------------------------------------------------------------------------- arithmetic
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(bench):
    t = bench.mcnemar([1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 1, 1])
    assert (t["a_only"], t["b_only"]) == (3, 1)
    assert t["p_value"] == pytest.approx(0.625)  # 2 * P(Bin(4, 1/2) <= 1) = 2 * 5 / 16
    t = bench.mcnemar([1] * 10 + [0] * 5, [0] * 10 + [0] * 5)
    assert t["p_value"] == pytest.approx(2 / 2**10)
    assert bench.mcnemar([1, 0], [1, 0]) == {"a_only": 0, "b_only": 0, "p_value": 1.0}
    with pytest.raises(DimensionError, match=r"\(3,\) and \(2,\)"):
        bench.mcnemar([1, 0, 1], [1, 0])


def test_symmetric_states_hold_every_augmentation_of_the_supervised_training(bench):
    """Every random symmetry the supervised training draws (trc.training.discrete's augmentation)
    is one of the 8 images, so excluding them keeps the held-out mazes out of every training batch."""
    exp = load_experiment(ROOT / "configs" / "maze.yaml")
    inst = instances_from_problem(exp.problem, 6, 3)
    plant = exp.problem.make_plant()
    images = bench.symmetric_states(plant, inst.x0).reshape(8, 6, -1)
    assert torch.equal(images[0], inst.x0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        aug = _augment(plant, inst, gen).x0
        assert all(any(torch.equal(aug[i], images[k, i]) for k in range(8)) for i in range(6))
    # every image is a maze whose goal is as many moves from the agent as in the original (BFS)
    lengths = []
    for k in range(8):
        walls, goal, agent = plant.unpack(images[k])
        d = bfs_distances(walls.numpy(), goal.numpy())
        lengths.append(d[np.arange(6), agent[:, 0].numpy(), agent[:, 1].numpy()])
    assert all(np.array_equal(lengths[k], inst.lengths.numpy()) for k in range(8))
    assert len({images[k, 0].numpy().tobytes() for k in range(8)}) > 1


# ---------------------------------------------------------------------------- end to end
def test_tiny_run_end_to_end(bench, tiny_config, tmp_path, capsys):
    out = tmp_path / "r.md"
    assert bench.main(tiny_args(tiny_config, "--seed", "3", "--out", str(out), "--json")) == 0
    text = out.read_text()
    assert text.strip() in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith(("| supervised |", "| scratch |"))]
    assert len(rows) == 6 + 6  # 6 rows of the table, 6 McNemar tests
    res = json.loads(out.with_suffix(".json").read_text())
    by = {(r["start"], r["method"]): r for r in res["rows"]}
    assert set(by) == {(s, m) for s in ("supervised", "scratch") for m in ("start", "REINFORCE", "RECAP")}
    for s in ("supervised", "scratch"):
        assert by[(s, "start")]["episodes"] == 0
        assert by[(s, "REINFORCE")]["episodes"] == by[(s, "RECAP")]["episodes"] == 16
        for m in ("start", "REINFORCE", "RECAP"):
            r = by[(s, m)]
            k = sum(r["eval_success"])
            assert len(r["eval_success"]) == 16 and r["success"] == k / 16
            lo, hi = r["ci"]  # the Wilson interval's closed form (Wilson, JASA 22, 1927)
            z = stats.norm.ppf(0.975)
            p = k / 16
            centre = (p + z * z / 32) / (1 + z * z / 16)
            half = z * np.sqrt(p * (1 - p) / 16 + z * z / (4 * 256)) / (1 + z * z / 16)
            assert (lo, hi) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)))
    for t in res["tests"]:
        a, b = by[(t["start"], t["a"])]["eval_success"], by[(t["start"], t["b"])]["eval_success"]
        n10 = sum(x and not y for x, y in zip(a, b))
        n01 = sum(y and not x for x, y in zip(a, b))
        assert (t["a_only"], t["b_only"]) == (n10, n01)
    assert res["details"]["scratch/REINFORCE"]["rl_lr"] == pytest.approx(1e-3)
    assert res["details"]["supervised/REINFORCE"]["kl_coef"] == pytest.approx(0.1)


def test_same_seed_same_arrays_and_held_out_never_trained_on(bench, tiny_config):
    cfg = tiny_cfg(bench, tiny_config, starts=("scratch",), seed=5)
    setup = bench.make_setup(cfg)
    held = setup.env.keys({"x0": bench.symmetric_states(setup.env.plant, setup.held_out["x0"])})
    assert not held & setup.env.keys(setup.supervised_mazes)
    assert not held & setup.env.keys(setup.pool)
    a = bench.benchmark(cfg, setup)
    b = bench.benchmark(cfg)
    strip = lambda res: [{k: v for k, v in r.items() if k != "seconds"} for r in res["rows"]]
    assert strip(a) == strip(b)
    rounds = [res["details"]["scratch/RECAP"]["rounds"] for res in (a, b)]
    assert [(r["value_loss"], r["policy_loss"]) for r in rounds[0]] == [(r["value_loss"], r["policy_loss"])
                                                                         for r in rounds[1]]


def test_start_rows_evaluate_the_wrapped_network_like_the_plain_rollout(bench, tiny_config):
    """The conditioned wrapper (zero indicator embedding) evaluated by trc.recap.stages.evaluate gives
    the per-episode greedy successes of trc.training.discrete.rollout on the wrapped network."""
    cfg = tiny_cfg(bench, tiny_config, sup_batches=20)
    setup = bench.make_setup(cfg)
    policy, _ = bench.make_start(setup, cfg, "supervised")
    ours = bench.evaluate(policy, setup.env, setup.held_out, 1.0)["eval_success"]
    plain = rollout(policy.base, setup.held_out["inst"], setup.run.problem.max_steps, greedy=True)["success"]
    assert ours == plain.int().tolist()


# ---------------------------------------------------------------------------- bad input
def test_existing_out_is_refused_without_overwrite_and_replaced_with_it(bench, tiny_config, tmp_path, capsys):
    out = tmp_path / "r.md"
    out.write_text("keep me")
    assert bench.main(tiny_args(tiny_config, "--starts", "scratch", "--out", str(out))) == 2
    assert out.read_text() == "keep me"
    assert "already exists" in capsys.readouterr().err
    assert bench.main(tiny_args(tiny_config, "--starts", "scratch", "--out", str(out), "--overwrite")) == 0
    assert out.read_text().startswith("# REINFORCE against RECAP")


@pytest.mark.parametrize("extra, message", [
    (["--episodes-scratch", "12"], r"--episodes-scratch must be a multiple of --rl-batch = 8.*got 12"),
    (["--recap-rounds", "3"], r"multiple of --recap-rounds = 3"),
    (["--starts", "scratch,bogus"], r"--starts"),
    (["--starts", "scratch,scratch"], r"distinct starts"),
    (["--collect", "argmax"], r"--collect"),
    (["--eval-episodes", "0"], r"--eval-episodes"),
    (["--seed", "-1"], r"--seed"),
    (["--json"], r"--json and --overwrite need --out"),
    (["--recap-config", "/nonexistent/recap.yaml"], r"cannot be read"),
])
def test_bad_options_exit_2_before_writing(bench, tiny_config, tmp_path, capsys, extra, message):
    out = tmp_path / "never.md"
    argv = tiny_args(tiny_config, *extra) + ([] if "--json" in extra else ["--out", str(out)])
    assert bench.main(argv) == 2
    assert not out.exists()
    assert re.search(message, capsys.readouterr().err)


def test_bad_configuration_values_exit_2(bench, tiny_config, tmp_path, capsys):
    data = yaml.safe_load(Path(tiny_config).read_text())
    data["training"]["rl_group"] = 3  # rl_batch 8 is no multiple of 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert bench.main(tiny_args(str(bad))) == 2
    assert "rl_batch must be a multiple of training.rl_group" in capsys.readouterr().err
    data = yaml.safe_load(Path(tiny_config).read_text())
    del data["model"]
    bad.write_text(yaml.safe_dump(data))
    assert bench.main(tiny_args(str(bad))) == 2
    assert "lacks the section(s) ['model']" in capsys.readouterr().err
