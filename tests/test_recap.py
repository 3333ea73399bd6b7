"""RECAP: value head, advantages, guidance, conditioned policies and the three-stage pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import dynamics
import trc
from dynamics.errors import ConfigError, DimensionError, NonFiniteError
from trc import lerobot
from trc.discrete import problem_from_dict
from trc.experiment import experiment_from_dict
from trc.kinds import get as get_kind
from trc.models.config import TRCConfig
from trc.models.discrete import DiscretePolicyConfig, RecursivePolicy
from trc.models.trc import TinyRecursiveControl
from trc.recap import stages as recap_stages
from trc.recap.advantage import (
    gae_advantages,
    indicators,
    label_advantages,
    lambda_returns,
    n_step_advantages,
    task_thresholds,
)
from trc.recap.envs import MazeEpisodes, Monitor, frames_of, run_episodes
from trc.recap.guidance import (
    NEGATIVE,
    NULL,
    POSITIVE,
    IndicatorEmbedding,
    drop_indicators,
    guide,
    indicator_tokens,
)
from trc.recap.policies import ConditionedMazePolicy, ConditionedTRC, MazeValueNet
from trc.recap.stages import STAGES, run_stage, wilson_interval
from trc.recap.value import (
    NUM_BINS,
    ValueHead,
    bin_centers,
    discounted_returns,
    episode_bounds,
    expected_value,
    normalize_returns,
    recap_rewards,
    two_hot,
    value_loss,
)
from trc.train import main as train_main


# ---------------------------------------------------------------------------- value
def test_bin_centres_span_minus_one_to_zero():
    c = bin_centers()
    assert c.shape == (201,) and NUM_BINS == 201
    assert c[0] == -1.0 and c[-1] == 0.0 and c[100] == pytest.approx(-0.5)
    assert torch.allclose(c.diff(), torch.full((200,), 0.005))


def test_two_hot_hand_cases():
    # -0.5 is bin 100 exactly: one-hot; -0.0025 lies half-way between bins 199 (-0.005) and 200 (0)
    t = two_hot([-0.5, -0.0025, -0.0035, 0.0, -1.0, 0.3, -2.0])
    assert t[0, 100] == 1.0 and t[0].sum() == 1.0 and (t[0] > 0).sum() == 1
    assert t[1, 199] == pytest.approx(0.5) and t[1, 200] == pytest.approx(0.5)
    # -0.0035: 0.3 of the way from -0.005 to 0 -> weight 0.7 on bin 199, 0.3 on bin 200
    assert t[2, 199] == pytest.approx(0.7) and t[2, 200] == pytest.approx(0.3)
    assert t[3, 200] == 1.0 and t[4, 0] == 1.0
    assert t[5, 200] == 1.0 and t[6, 0] == 1.0  # clipped
    # the expectation of the target is the value itself
    v = torch.tensor([-0.5, -0.0025, -0.0035, -0.123456, -0.9999])
    assert torch.allclose(two_hot(v) @ bin_centers(), v, atol=1e-6)


def test_two_hot_rejects_bad_input():
    with pytest.raises(NonFiniteError):
        two_hot([float("nan")])
    with pytest.raises(DimensionError):
        two_hot(np.zeros((2, 2)))
    with pytest.raises(ConfigError):
        bin_centers(1)


def test_value_loss_and_expectation():
    # a head whose logits put all mass on bin 40 predicts its centre; CE with the one-hot target is ~0
    logits = torch.full((1, 201), -1e4)
    logits[0, 40] = 0.0
    assert float(expected_value(logits)) == pytest.approx(-1 + 40 * 0.005)
    target = two_hot([-1 + 40 * 0.005])
    assert float(value_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)
    # uniform logits: CE = log(201); the expectation is -0.5
    u = torch.zeros(3, 201)
    assert float(value_loss(u, two_hot([-0.1, -0.2, -0.7]))) == pytest.approx(np.log(201), rel=1e-6)
    assert torch.allclose(expected_value(u), torch.full((3,), -0.5))
    with pytest.raises(DimensionError):
        value_loss(u, torch.zeros(3, 200))
    head = ValueHead(5)
    assert head(torch.zeros(2, 5)).shape == (2, 201)


def test_rewards_and_returns_hand_computed():
    # episode 0: 3 frames, success; episode 1: 2 frames, failure with C_fail = 4
    r = recap_rewards([3, 2], [True, False], c_fail=4.0)
    assert r.tolist() == [-1, -1, 0, -1, -4]
    e = [7, 7, 7, 9, 9]
    assert discounted_returns(r, e).tolist() == [-2, -1, 0, -5, -4]
    g = discounted_returns(r, e, gamma=0.5)
    assert g.tolist() == pytest.approx([-1 - 0.5, -1, 0, -1 - 0.5 * 4, -4])
    # normalised by max_steps + C_fail = 6 + 4
    assert normalize_returns([-2, -5, -12], 6, 4.0).tolist() == pytest.approx([-0.2, -0.5, -1.0])
    s, t = episode_bounds(e)
    assert s.tolist() == [0, 3] and t.tolist() == [3, 5]


def test_returns_reject_bad_input():
    with pytest.raises(ConfigError, match="contiguous"):
        episode_bounds([0, 1, 0])
    with pytest.raises(DimensionError):
        recap_rewards([2, 1], [True], 1.0)
    with pytest.raises(ConfigError):
        recap_rewards([0], [True], 1.0)
    with pytest.raises(ConfigError):
        discounted_returns([0.0], [0], gamma=1.5)
    with pytest.raises(NonFiniteError):
        discounted_returns([np.inf], [0])


# ---------------------------------------------------------------------------- advantages
def test_n_step_advantage_hand_computed():
    r = [-1.0, -1.0, -1.0, 0.0]
    v = [-0.5, -0.4, -0.2, -0.1]
    e = [0, 0, 0, 0]
    a = n_step_advantages(r, v, e, n=2, gamma=1.0)
    # t=0: -1 - 1 + V2 - V0 = -2 - 0.2 + 0.5;  t=1: -2 + V3 - V1 = -2 - 0.1 + 0.4
    # t=2: truncated: -1 + 0 - V2 = -1 + 0.2;  t=3: 0 - V3 = 0.1
    assert a.tolist() == pytest.approx([-1.7, -1.7, -0.8, 0.1])
    a = n_step_advantages(r, v, e, n=1, gamma=0.9)
    assert a.tolist() == pytest.approx([-1 + 0.9 * -0.4 + 0.5, -1 + 0.9 * -0.2 + 0.4, -1 + 0.9 * -0.1 + 0.2, 0.1])
    # two episodes are independent: no bootstrap across the boundary
    two = n_step_advantages([-1.0, -1.0, -1.0], [0.0, -0.3, -0.7], [0, 0, 1], n=5)
    assert two.tolist() == pytest.approx([-2.0, -1 + 0.3, -1 + 0.7])


def test_gae_hand_computed_and_limits():
    r = np.array([-1.0, -1.0, 0.0])
    v = np.array([-0.5, -0.3, -0.1])
    e = [0, 0, 0]
    gamma, lam = 0.9, 0.5
    d = [r[0] + gamma * v[1] - v[0], r[1] + gamma * v[2] - v[1], r[2] - v[2]]
    want = [d[0] + gamma * lam * d[1] + (gamma * lam) ** 2 * d[2], d[1] + gamma * lam * d[2], d[2]]
    assert gae_advantages(r, v, e, gamma, lam).tolist() == pytest.approx(want)
    # lam = 1: Monte-Carlo return minus V; lam = 0: one-step TD error
    assert gae_advantages(r, v, e, gamma, 1.0) == pytest.approx(discounted_returns(r, e, gamma) - v)
    assert gae_advantages(r, v, e, gamma, 0.0) == pytest.approx(d)
    assert lambda_returns(r, v, e, gamma, 1.0) == pytest.approx(discounted_returns(r, e, gamma))
    # n-step with n >= episode length equals lam = 1
    assert n_step_advantages(r, v, e, n=3, gamma=gamma) == pytest.approx(gae_advantages(r, v, e, gamma, 1.0))
    with pytest.raises(ConfigError):
        gae_advantages(r, v, e, gamma, 1.5)
    with pytest.raises(DimensionError):
        n_step_advantages(r, v[:2], e)
    with pytest.raises(ConfigError):
        n_step_advantages(r, v, e, n=0)


def test_thresholds_and_indicators():
    a = np.arange(10, dtype=float)  # task 0: 0..9
    t = np.zeros(10, dtype=int)
    eps = task_thresholds(a, t, 0.3)
    assert eps == {0: pytest.approx(6.3)}  # numpy's linear 0.7 quantile of 0..9
    ind = indicators(a, t, eps)
    assert ind.tolist() == [False] * 7 + [True] * 3
    # interventions are always positive
    iv = np.zeros(10, dtype=bool)
    iv[0] = True
    assert indicators(a, t, eps, iv)[0]
    # per task: task 1 holds larger advantages but still gets 30 % positive
    a2 = np.concatenate((a, a + 100))
    t2 = np.repeat([0, 1], 10)
    eps2 = task_thresholds(a2, t2)
    assert eps2[1] == pytest.approx(106.3)
    assert indicators(a2, t2, eps2).reshape(2, 10).sum(1).tolist() == [3, 3]
    with pytest.raises(ConfigError, match="no advantage threshold"):
        indicators(a2, t2, {0: 1.0})
    with pytest.raises(ConfigError):
        task_thresholds(a, t, 1.0)
    labels = label_advantages([-1.0, -1.0, 0.0], [-0.5, -0.3, 0.0], [0, 0, 0], [0, 0, 0], [False, False, True], n=1)
    assert labels.advantage.tolist() == pytest.approx([-0.8, -0.7, 0.0])
    assert labels.advantage_mean == pytest.approx(-0.5)
    assert labels.indicator.tolist() == [False, False, True]
    with pytest.raises(ConfigError):
        label_advantages([0.0], [0.0], [0], [0], method="td")


# ---------------------------------------------------------------------------- guidance
def test_guidance_exact_limits_and_arithmetic():
    null, pos = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.0]])
    assert torch.equal(guide(null, pos, 0.0), null)
    assert torch.equal(guide(null, pos, 1.0), pos)
    assert guide(null, pos, 1.5).tolist() == [[4.0, 1.0]]
    # logits: beta = 2 gives softmax proportional to p_pos^2 / p_null
    ln, lp = torch.log(torch.tensor([0.5, 0.5])), torch.log(torch.tensor([0.8, 0.2]))
    p = torch.softmax(guide(ln, lp, 2.0), -1)
    q = torch.tensor([0.8 ** 2 / 0.5, 0.2 ** 2 / 0.5])
    assert torch.allclose(p, q / q.sum())
    with pytest.raises(DimensionError):
        guide(null, pos[:, :1], 1.0)
    with pytest.raises(ConfigError):
        guide(null, pos, -1.0)
    with pytest.raises(NonFiniteError):
        guide(null, pos, float("nan"))


def test_indicator_tokens_and_dropout():
    tok = indicator_tokens([True, False, True])
    assert tok.tolist() == [POSITIVE, NEGATIVE, POSITIVE]
    g = torch.Generator().manual_seed(0)
    dropped = drop_indicators(torch.full((20000,), POSITIVE), 0.3, g)
    frac = float((dropped == NULL).float().mean())
    assert abs(frac - 0.3) < 0.015
    assert set(dropped.unique().tolist()) == {POSITIVE, NULL}
    assert torch.equal(drop_indicators(tok, 0.0), tok)
    with pytest.raises(ConfigError):
        drop_indicators(tok, 1.2)
    emb = IndicatorEmbedding(4)
    assert torch.equal(emb(tok), torch.zeros(3, 4))
    with pytest.raises(DimensionError):
        emb(torch.tensor([3]))


# ---------------------------------------------------------------------------- conditioned networks
REPO = Path(__file__).resolve().parent.parent


def _maze_batch(n=3, size=5, seed=0):
    plant = dynamics.make("maze", height=size, width=size)
    xs = []
    for i in range(n):
        w, s, g = dynamics.maze.random_instance(size, size, seed=seed + i)
        xs.append(plant.pack(w[None], g[None], s[None]))
    return plant, torch.cat(xs)


def test_conditioned_maze_policy_wraps_exactly_and_guides():
    torch.manual_seed(0)
    plant, x = _maze_batch()
    base = RecursivePolicy(plant, DiscretePolicyConfig(latent_dim=8, hidden_dim=8, H_cycles=2, L_cycles=1))
    pol = ConditionedMazePolicy(base)
    # a fresh wrapper (zero embedding) is the wrapped network, for every token
    for tok in (NEGATIVE, POSITIVE, NULL):
        assert torch.equal(pol(x, tok)[-1], base(x).logits[-1])
    torch.nn.init.normal_(pol.indicator.embedding.weight)
    null, pos = pol(x, NULL)[-1], pol(x, POSITIVE)[-1]
    assert not torch.allclose(null, pos)
    assert torch.equal(pol.guided_logits(x, 0.0), null)
    assert torch.equal(pol.guided_logits(x, 1.0), pos)
    legal = ~plant.blocked(x)
    g = pol.guided_logits(x, 2.5)
    assert torch.allclose(g[legal], (null + 2.5 * (pos - null))[legal])
    assert (g[~legal] == -1e9).all()  # blocked moves stay masked
    with pytest.raises(DimensionError):
        pol(x, torch.tensor([0, 1]))
    with pytest.raises(ConfigError):
        ConditionedMazePolicy(RecursivePolicy(plant, DiscretePolicyConfig(carry_latent=True)))
    assert MazeValueNet(plant, 16)(x).shape == (3, 201)


def test_conditioned_trc_wraps_exactly_and_guides():
    torch.manual_seed(0)
    prob = get_kind("continuous").parse_problem({"task": "double_integrator"})
    base = TinyRecursiveControl.from_problem(prob, TRCConfig(latent_dim=8, hidden_dim=16, H_cycles=2, L_cycles=1,
                                                             feedback=False))
    pol = ConditionedTRC(base)
    x0, xt = torch.randn(5, 2), torch.randn(5, 2)
    assert torch.equal(pol(x0, xt, POSITIVE), base(x0, xt)[:, 0])
    torch.nn.init.normal_(pol.indicator.embedding.weight)
    null, pos = pol(x0, xt, NULL), pol(x0, xt, POSITIVE)
    assert not torch.allclose(null, pos)
    assert torch.equal(pol.guided_action(x0, xt, 0.0), null)
    assert torch.equal(pol.guided_action(x0, xt, 1.0), pos)
    want = (null + 1.5 * (pos - null)).clamp(-4.0, 4.0)
    assert torch.allclose(pol.guided_action(x0, xt, 1.5), want)
    # the hook is inactive outside the wrapper: the base network is unchanged
    assert torch.equal(base(x0, xt)[:, 0], base(x0, xt)[:, 0])
    with pytest.raises(ConfigError):
        ConditionedTRC(torch.nn.Linear(2, 2))


def test_conditioned_trc_indicator_is_an_encoder_input():
    """The indicator enters before the encoder's nonlinearity: its effect on the encoded latent
    depends on the state (a shift of the output latent would be the same in every state)."""
    torch.manual_seed(0)
    prob = get_kind("continuous").parse_problem({"task": "double_integrator"})
    base = TinyRecursiveControl.from_problem(prob, TRCConfig(latent_dim=8, hidden_dim=16, H_cycles=2, L_cycles=1,
                                                             feedback=False))
    pol = ConditionedTRC(base)
    assert pol.indicator.embedding.weight.shape == (3, base.encoder[0][0].out_features)
    torch.nn.init.normal_(pol.indicator.embedding.weight)
    latents = []
    base.encoder.register_forward_hook(lambda m, i, o: latents.append(o.detach()))
    x0, xt = torch.randn(4, 2), torch.randn(4, 2)
    pol(x0, xt, NULL)
    pol(x0, xt, POSITIVE)
    shift = latents[1] - latents[0]  # (4, latent_dim): one row per state
    assert shift.abs().max() > 1e-3
    assert not torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-4)
    # the reference: the hidden pre-activation of the first layer moves by exactly the token's embedding
    pre = base.encoder[0][0]
    feats = torch.randn(3, pre.in_features)
    pol._condition = pol.indicator(torch.tensor([POSITIVE] * 3))
    try:
        assert torch.allclose(pre(feats), feats @ pre.weight.T + pre.bias + pol.indicator.embedding.weight[POSITIVE])
    finally:
        pol._condition = None
    assert torch.allclose(pre(feats), feats @ pre.weight.T + pre.bias)


def test_wilson_interval_reference_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # Wilson (1927), z = 1.96
    lo, hi = wilson_interval(166, 200)
    assert round(lo, 2) == 0.77 and round(hi, 2) == 0.88  # the 77-88 % for 166/200
    assert wilson_interval(0, 10)[0] == 0.0
    with pytest.raises(ConfigError):
        wilson_interval(3, 2)


# ---------------------------------------------------------------------------- episodes and the monitor
def test_monitor_takes_over_and_expert_finishes():
    prob = problem_from_dict({"kind": "maze", "name": "m", "height": 5, "width": 5, "layout": "backtracker",
                              "loop_probability": 0.3, "max_steps": 20})
    env = MazeEpisodes(prob, epsilon=0.0)
    ctx = env.sample(8, 3)
    # a controller that always moves up: once up is blocked or leads away, progress stalls -> takeover after
    # `patience` steps without a new best distance
    stuck = lambda obs, t: torch.zeros(obs["observation.state"].shape[0], dtype=torch.long)
    ep = run_episodes(env, ctx, stuck, monitor=Monitor(patience=3, budget=1.0))
    assert ep["success"].all()  # the BFS expert resumes from wherever the agent is
    alive, iv = ep["alive"], ep["intervention"]
    # the takeover is sticky: once the expert has the episode, every later frame is an intervention
    for b in range(8):
        if iv[:, b].any():
            first = int(torch.nonzero(iv[:, b])[0])
            assert iv[first:, b][alive[first:, b]].all()
            assert first >= 3  # not before `patience` steps
    # without a monitor the 'up' controller fails where up does not lead to the goal, and never intervenes
    ep2 = run_episodes(env, ctx, stuck)
    assert not ep2["intervention"].any() and ep2["success"].sum() < 8
    # the budget rule alone: takeover at ceil(0.6 * 20) = 12 steps at the latest
    ep3 = run_episodes(env, ctx, stuck, monitor=Monitor(patience=100, budget=0.6))
    assert all(bool(ep3["intervention"][12, b]) for b in range(8) if ep3["alive"][12, b])
    fr = frames_of(env, ep)
    assert fr["episode_index"].tolist() == np.repeat(np.arange(8), ep["lengths"].numpy()).tolist()
    assert fr["frame_index"][:int(ep["lengths"][0])].tolist() == list(range(int(ep["lengths"][0])))
    assert fr["next.done"].sum() == 8 and fr["action"].shape == (len(fr["episode_index"]), 1)
    assert fr["complementary_info.is_intervention"].sum() == int(iv.sum())


def test_demonstrator_is_epsilon_greedy_with_habit():
    prob = problem_from_dict({"kind": "maze", "name": "m", "height": 5, "width": 5, "max_steps": 20})
    ctx_env = MazeEpisodes(prob, epsilon=1.0, habit=0)
    ctx = ctx_env.sample(64, 1)
    x = ctx["x0"]
    a = ctx_env.demo(x, ctx, torch.Generator().manual_seed(0))
    up_open = ~ctx_env.plant.blocked(x)[:, 0]
    assert (a[up_open] == 0).all()  # the habit wherever it is open
    greedy = MazeEpisodes(prob, epsilon=0.0).demo(x, ctx, torch.Generator().manual_seed(0))
    assert torch.equal(greedy, ctx_env.expert(x, ctx))


# ---------------------------------------------------------------------------- the pipeline
TINY_MAZE = {
    "problem": {"kind": "recap", "name": "tiny_maze", "plant": "maze",
                "base": {"height": 5, "width": 5, "layout": "backtracker", "loop_probability": 0.3, "max_steps": 12}},
    "generator": {"seed": 0, "demo_episodes": 12, "correction_episodes": 12, "autonomous_episodes": 12,
                  "eval_episodes": 12},
    "model": {"latent_dim": 8, "hidden_dim": 8, "num_layers": 1, "H_cycles": 1, "L_cycles": 1},
    "training": {"batch_size": 16, "value_steps": 8, "policy_steps": 8, "value_hidden": 16, "checkpoint_every": 4,
                 "n_step": 3},
}

TINY_CONTINUOUS = {
    "problem": {"kind": "recap", "name": "tiny_di", "plant": "continuous", "max_steps": 10, "tolerance": 0.2,
                "base": {"task": "double_integrator", "target_state": {"low": [-2.0, 0.0], "high": [2.0, 0.0]}}},
    "generator": {"seed": 0, "demo_episodes": 12, "correction_episodes": 12, "autonomous_episodes": 12,
                  "eval_episodes": 12},
    "model": {"latent_dim": 8, "hidden_dim": 8, "H_cycles": 1, "L_cycles": 1, "feedback": False},
    "training": {"batch_size": 16, "value_steps": 8, "policy_steps": 8, "value_hidden": 16, "checkpoint_every": 4,
                 "n_step": 3},
}


def _write_config(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_maze_pipeline_three_stages(tmp_path, capsys):
    cfg = _write_config(tmp_path, TINY_MAZE)
    out = tmp_path / "run"
    # stages run in order
    assert train_main(["--config", str(cfg), "--out", str(out), "--stage", "corrections", "--quiet"]) == 2
    assert "needs stage 'demos'" in capsys.readouterr().err
    for stage in STAGES:
        assert train_main(["--config", str(cfg), "--out", str(out), "--stage", stage, "--quiet"]) == 0
    metrics = {s: json.loads((out / s / "metrics.json").read_text()) for s in STAGES}
    for s, m in metrics.items():
        assert m["episodes"] == 12 and len(m["eval_success"]) == 12
        assert {"success_rate", "mean_steps_to_success", "advantage_mean", "value_loss", "success_ci95"} <= set(m)
        ds = lerobot.read_dataset(out / s / "dataset")
        assert ds.info["codebase_version"] == "v3.0"
        assert set(ds.episodes["stage"].tolist()) == {s}
        assert len(ds.episodes["success"]) == m["collected_episodes"]
        for col in ("complementary_info.value", "complementary_info.advantage", "complementary_info.indicator",
                    "complementary_info.is_intervention", "next.reward", "observation.state"):
            assert col in ds.frames
        # the stored indicator is consistent with the stored advantage: interventions or above the threshold
        ind, adv = ds.frames["complementary_info.indicator"], ds.frames["complementary_info.advantage"]
        iv = ds.frames["complementary_info.is_intervention"]
        eps = m["thresholds"]["0"]
        assert np.array_equal(ind, (adv.astype(np.float64) > eps - 1e-6) | iv) or \
            np.array_equal(ind, (adv > np.float32(eps)) | iv)
        # RECAP rewards: -1 per frame, 0 / -C_fail (= max_steps = 12) at the end
        r = ds.frames["next.reward"]
        last = ds.frames["next.done"]
        assert set(np.unique(r[~last]).tolist()) == {-1.0}
        assert set(np.unique(r[last]).tolist()) <= {0.0, -12.0}
    assert metrics["demos"]["intervention_fraction"] == 0.0
    assert metrics["corrections"]["intervention_fraction"] > 0.0
    assert metrics["autonomous"]["intervention_fraction"] == 0.0
    assert metrics["autonomous"]["training_frames"] > metrics["corrections"]["training_frames"] > \
        metrics["demos"]["training_frames"]
    # rerunning a finished stage does nothing
    before = (out / "demos" / "policy.pt").stat().st_mtime_ns
    assert train_main(["--config", str(cfg), "--out", str(out), "--stage", "demos"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "demos" / "policy.pt").stat().st_mtime_ns == before
    # model files load with trc.load
    pol = trc.load(out / "autonomous" / "model.pt")
    assert type(pol).__name__ == "ConditionedMazePolicy"
    # another seed in the same run folder is refused
    assert train_main(["--config", str(cfg), "--out", str(out), "--stage", "demos", "--seed", "5"]) == 2


def test_continuous_pipeline_same_seed_same_arrays(tmp_path):
    exp = experiment_from_dict(TINY_CONTINUOUS)
    m1 = [run_stage(exp, s, out=tmp_path / "a") for s in STAGES]
    m2 = run_stage(exp, "demos", out=tmp_path / "b")
    a = lerobot.read_dataset(tmp_path / "a" / "demos" / "dataset").frames
    b = lerobot.read_dataset(tmp_path / "b" / "demos" / "dataset").frames
    for key in ("action", "observation.state", "observation.environment_state", "complementary_info.advantage"):
        assert np.array_equal(a[key], b[key])
    assert m1[0]["eval_success"] == m2["eval_success"]
    assert m1[1]["intervention_fraction"] > 0
    sd1 = torch.load(tmp_path / "a" / "demos" / "policy.pt")
    sd2 = torch.load(tmp_path / "b" / "demos" / "policy.pt")
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_stage_option_refused_for_kinds_without_stages(capsys):
    assert train_main(["--config", str(REPO / "configs" / "maze.yaml"), "--stage", "autonomous"]) == 2
    assert "no RECAP stages" in capsys.readouterr().err
    assert train_main(["--config", str(REPO / "configs" / "double_integrator.yaml"), "--stage", "demos"]) == 2


def test_bad_recap_configs(tmp_path):
    never = tmp_path / "never-written"
    bad_plant = {**TINY_MAZE, "problem": {**TINY_MAZE["problem"], "plant": "sudoku"}}
    with pytest.raises(ConfigError, match="problem.plant"):
        experiment_from_dict(bad_plant)
    moving = {**TINY_CONTINUOUS, "problem": {**TINY_CONTINUOUS["problem"], "base": {"task": "double_integrator"}}}
    with pytest.raises(ConfigError, match="equilibria"):
        run_stage(experiment_from_dict(moving), "demos", out=never)
    with pytest.raises(ConfigError, match="stage"):
        run_stage(experiment_from_dict(TINY_MAZE), "rl", out=never)
    bad_train = {**TINY_MAZE, "training": {**TINY_MAZE["training"], "advantage": "td"}}
    with pytest.raises(ConfigError):
        run_stage(experiment_from_dict(bad_train), "demos", out=never)
    assert not never.exists()


def test_interrupted_stage_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """An exception after a checkpoint (in process); the rerun resumes and matches an uninterrupted run."""
    stages = recap_stages
    data = json.loads(json.dumps(TINY_MAZE))
    data["training"].update(policy_steps=16, value_steps=8, checkpoint_every=4)
    exp = experiment_from_dict(data)
    real, saves = stages.atomic_torch_save, []

    def save_then_die(obj, path):
        real(obj, path)
        saves.append(Path(path).name)
        if saves.count("checkpoint.pt") == 4:  # the value (2 saves) and 2 of the policy
            raise KeyboardInterrupt

    monkeypatch.setattr(stages, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_stage(exp, "demos", out=tmp_path / "cut")
    monkeypatch.setattr(stages, "atomic_torch_save", real)
    ck = torch.load(tmp_path / "cut" / "demos" / "checkpoint.pt", weights_only=False)
    assert ck["phase"] == "policy-recap" and ck["step"] == 8
    run_stage(exp, "demos", out=tmp_path / "cut")
    run_stage(exp, "demos", out=tmp_path / "straight")
    a = torch.load(tmp_path / "cut" / "demos" / "policy.pt")
    b = torch.load(tmp_path / "straight" / "demos" / "policy.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut" / "demos" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_killed_stage_resumes_to_the_same_weights(tmp_path):
    """kill -9 during training; the rerun resumes from checkpoint.pt and ends where an uninterrupted run ends."""
    data = json.loads(json.dumps(TINY_MAZE))
    data["training"].update(policy_steps=120, value_steps=40, checkpoint_every=5)
    cfg = _write_config(tmp_path, data)
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "trc.train", "--config", str(cfg), "--out", str(killed), "--stage", "demos",
           "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "demos" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    phase = None
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                phase = torch.load(ckpt, weights_only=False)["phase"]
            except Exception:  # being replaced at this instant
                phase = None
            if phase == "policy-recap":
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be killed; raise policy_steps"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "demos" / "metrics.json").exists()
    step = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < step < 120
    assert train_main(["--config", str(cfg), "--out", str(killed), "--stage", "demos", "--quiet"]) == 0
    straight = tmp_path / "straight"
    assert train_main(["--config", str(cfg), "--out", str(straight), "--stage", "demos", "--quiet"]) == 0
    a = torch.load(killed / "demos" / "policy.pt")
    b = torch.load(straight / "demos" / "policy.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "demos" / "metrics.json").read_text())["eval_success"] == \
        json.loads((straight / "demos" / "metrics.json").read_text())["eval_success"]


# ---------------------------------------------------------------------------- the benchmark's arithmetic
@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import recap_pipeline as module  # benchmarks/recap_pipeline.py

    yield module
    sys.modules.pop("recap_pipeline", None)  # benchmarks are not importable outside their tests


def test_benchmark_mcnemar_and_gap(bench):
    t = bench.mcnemar([1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 1, 1])
    assert (t["a_only"], t["b_only"]) == (3, 1)
    assert t["p_value"] == pytest.approx(0.625)  # 2 * P(Bin(4, 1/2) <= 1) = 2 * 5/16
    assert bench.mcnemar([1, 0], [1, 0])["p_value"] == 1.0
    # 10 discordant pairs all one way: p = 2 / 2**10
    assert bench.mcnemar([1] * 10, [0] * 10)["p_value"] == pytest.approx(2 / 1024)
    assert bench.gap_closed(0.5, 0.9, 0.7) == pytest.approx(0.5)
    assert bench.gap_closed(0.5, 0.9, 0.4) == pytest.approx(-0.25)
    assert bench.gap_closed(0.9, 0.8, 0.95) is None


@pytest.mark.slow
def test_benchmark_quick_runs(bench, tmp_path):
    out = tmp_path / "r.md"
    assert bench.main(["--work", str(tmp_path / "w"), "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "RECAP beta=2.5" in text and "BC (optimal demos)" in text and "Goal" in text
