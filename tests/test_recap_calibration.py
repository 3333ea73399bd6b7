"""Calibration of RECAP's value on held-out episodes: AUROC of success and error of the steps to go."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
import torch

from dynamics.errors import ConfigError, DimensionError, NonFiniteError
from trc.experiment import experiment_from_dict
from trc.recap.envs import frames_of, run_episodes
from trc.recap.stages import (
    RecapRun,
    episode_sets,
    load_state,
    make_episodes,
    make_policy,
    make_value,
    run_stage,
)
from trc.recap.value import (
    auroc,
    calibration,
    discounted_returns,
    normalize_returns,
    recap_rewards,
    steps_to_go,
    two_hot,
)

BACKENDS = ("sklearn", "mannwhitneyu")


def _pairs_auroc(scores, labels) -> float:
    """AUROC by counting (positive, negative) pairs, ties one half: the definition itself."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _mc_values(lengths, success, max_steps, c_fail, gamma=1.0):
    """Normalised Monte-Carlo returns of episodes: the values a perfect value function predicts."""
    e = np.repeat(np.arange(len(lengths)), lengths)
    r = recap_rewards(lengths, success, c_fail)
    return normalize_returns(discounted_returns(r, e, gamma), max_steps, c_fail), e


# ---------------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("backend", BACKENDS)
def test_auroc_hand_counted(backend):
    # successes -0.1, -0.4 against failures -0.3, -0.5: pairs (+,+), (+,+), (-, ), (+,+) -> 3 of 4
    assert auroc([-0.1, -0.3, -0.4, -0.5], [1, 0, 1, 0], backend) == pytest.approx(0.75, abs=1e-12)
    # a tie counts one half: -0.2 > -0.4, -0.2 > -0.6, -0.4 = -0.4, -0.4 > -0.6 -> 3.5 of 4
    assert auroc([-0.2, -0.4, -0.4, -0.6], [1, 1, 0, 0], backend) == pytest.approx(0.875, abs=1e-12)
    # perfect, reversed, and a single class (undefined)
    assert auroc([0.0, -1.0], [1, 0], backend) == 1.0
    assert auroc([0.0, -1.0], [0, 1], backend) == 0.0
    assert auroc([-0.2, -0.3], [1, 1], backend) is None
    assert auroc([-0.2, -0.3], [0, 0], backend) is None


def test_auroc_backends_agree_with_pair_counting():
    rng = np.random.default_rng(3)
    for _ in range(5):
        scores = np.round(rng.uniform(-1, 0, 60), 1)  # many ties
        labels = rng.uniform(size=60) < scores + 1.0
        ref = _pairs_auroc(scores.tolist(), labels.tolist())
        for backend in BACKENDS:
            assert auroc(scores, labels, backend) == pytest.approx(ref, abs=1e-12)


def test_auroc_falls_back_to_mann_whitney_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)
    assert auroc([-0.1, -0.3, -0.4, -0.5], [1, 0, 1, 0]) == pytest.approx(0.75)
    v, e = _mc_values(np.array([2, 3]), np.array([True, False]), 10, 10)
    assert calibration(v, e, [True, False], 10, 10).auroc_backend == "mannwhitneyu"
    with pytest.raises(ConfigError, match="scikit-learn"):
        auroc([-0.1, -0.3], [1, 0], "sklearn")


def test_auroc_rejects_bad_input():
    with pytest.raises(DimensionError, match=r"\(3,\).*\(2,\)"):
        auroc([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(NonFiniteError):
        auroc([np.nan, -0.2], [1, 0])
    with pytest.raises(ConfigError, match="'roc'"):
        auroc([-0.1, -0.2], [1, 0], "roc")


# ---------------------------------------------------------------------------- steps to go
def test_steps_to_go_inverts_the_normalisation():
    # gamma = 1: -V (max_steps + C_fail); 20 + 20 = 40
    np.testing.assert_allclose(steps_to_go([0.0, -0.25, -1.0], 20, 20.0), [0.0, 10.0, 40.0])
    # gamma < 1: a k-step return -(1 - gamma^k) / (1 - gamma) reads back as k
    gamma, scale = 0.9, 40.0
    k = np.arange(0, 25)
    v = -(1 - gamma ** k) / (1 - gamma) / scale
    np.testing.assert_allclose(steps_to_go(v, 20, 20.0, gamma), k, atol=1e-9)
    # a value below the return of an endless episode (-10 / 40 at gamma 0.9) reads as the bound
    assert steps_to_go([-0.5], 20, 20.0, gamma)[0] == 40.0
    # per-frame budgets (several tasks)
    np.testing.assert_allclose(steps_to_go([-0.5, -0.5], np.array([10, 30]), 10.0), [10.0, 20.0])
    with pytest.raises(ConfigError, match="gamma"):
        steps_to_go([-0.5], 20, 20.0, 0.0)
    with pytest.raises(ConfigError, match="positive"):
        steps_to_go([-0.5], 0, 0.0)


# ---------------------------------------------------------------------------- calibration
def test_exact_value_has_zero_steps_error():
    lengths = np.array([3, 5, 1, 20, 7])
    success = np.array([True, True, True, False, True])
    for gamma in (1.0, 0.95):
        v, e = _mc_values(lengths, success, 20, 20.0, gamma)
        c = calibration(v, e, success, 20, 20.0, gamma)
        assert c.steps_to_go_mae == pytest.approx(0.0, abs=1e-9)
        assert c.steps_to_go_median_ae == pytest.approx(0.0, abs=1e-9)
        assert c.steps_to_go_bias == pytest.approx(0.0, abs=1e-9)
        assert c.steps_to_go_mae_first_frame == pytest.approx(0.0, abs=1e-9)
        assert (c.episodes, c.successes, c.frames, c.successful_frames) == (5, 4, 36, 16)
        # the exact value separates the failure (-40/40 at every frame) from every success
        assert c.auroc_first_frame == 1.0 and c.auroc_frames == 1.0


def test_steps_error_hand_computed():
    # one successful episode of 4 frames: true steps to go 3, 2, 1, 0 (the last step is rewarded 0)
    # predicted 3, 2, 4, 0 -> errors 0, 0, 3, 0: mean 0.75, median 0, bias 0.75, first frame 0
    scale = 10 + 10.0
    v = -np.array([3.0, 2.0, 4.0, 0.0]) / scale
    c = calibration(v, [7, 7, 7, 7], [True], 10, 10.0)
    assert c.steps_to_go_mae == pytest.approx(0.75)
    assert c.steps_to_go_median_ae == pytest.approx(0.0)
    assert c.steps_to_go_bias == pytest.approx(0.75)
    assert c.steps_to_go_mae_first_frame == pytest.approx(0.0)
    assert c.auroc_first_frame is None and c.auroc_frames is None  # no failure: undefined
    # a value two steps pessimistic everywhere: error 2, bias +2
    lengths, success = np.array([4, 6, 9]), np.array([True, False, True])
    v, e = _mc_values(lengths, success, 10, 10.0)
    c = calibration(v - 2 / scale, e, success, 10, 10.0)
    assert c.steps_to_go_mae == pytest.approx(2.0) and c.steps_to_go_bias == pytest.approx(2.0)
    # no successful episode: the steps error is undefined
    c = calibration(v[4:10], e[4:10], [False], 10, 10.0)
    assert c.steps_to_go_mae is None and c.steps_to_go_bias is None and c.successful_frames == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_frame_and_frame_weighted_auroc_hand_counted(backend):
    # episode 0 succeeds (frames -0.1, -0.05), episode 1 fails (-0.2), episode 2 succeeds (-0.3)
    v = [-0.1, -0.05, -0.2, -0.3]
    e = [0, 0, 1, 2]
    c = calibration(v, e, [True, False, True], 10, 10.0, backend=backend)
    assert c.auroc_first_frame == pytest.approx(0.5)  # -0.1 > -0.2, -0.3 < -0.2
    assert c.auroc_frames == pytest.approx(2 / 3)  # -0.1, -0.05 above -0.2; -0.3 below
    assert c.auroc_backend == backend
    # the 0.75 case as episodes of one frame each; episode ids need not start at 0
    c = calibration([-0.1, -0.3, -0.4, -0.5], [5, 6, 7, 8], [True, False, True, False], 10, 10.0, backend=backend)
    assert c.auroc_first_frame == pytest.approx(0.75) and c.auroc_frames == pytest.approx(0.75)


def test_logits_give_the_calibration_of_their_expectation():
    lengths, success = np.array([3, 8, 5]), np.array([True, False, True])
    v, e = _mc_values(lengths, success, 10, 10.0)
    logits = torch.log(two_hot(v).double().clamp_min(1e-30))  # softmax gives back the two-hot weights
    a = calibration(logits, e, success, 10, 10.0).to_dict()
    b = calibration(v, e, success, 10, 10.0).to_dict()
    for key, value in b.items():
        assert a[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value)
    json.dumps(a)  # JSON-ready


def test_calibration_rejects_bad_input():
    v, e = [-0.1, -0.2, -0.3], [0, 0, 1]
    with pytest.raises(DimensionError, match=r"\(3,\)"):
        calibration(v[:2], e, [True, False], 10, 10.0)
    with pytest.raises(DimensionError, match=r"\(2,\)"):
        calibration(v, e, [True, False, True], 10, 10.0)  # success per frame, not per episode
    with pytest.raises(DimensionError):
        calibration(np.zeros((3, 4, 2)), e, [True, False], 10, 10.0)
    with pytest.raises(NonFiniteError):
        calibration([-0.1, np.inf, -0.3], e, [True, False], 10, 10.0)
    with pytest.raises(ConfigError, match=r"\[-1, 0\]"):
        calibration([-0.1, 0.5, -0.3], e, [True, False], 10, 10.0)
    with pytest.raises(ConfigError, match="contiguous"):
        calibration(v, [0, 1, 0], [True, False], 10, 10.0)
    with pytest.raises(ConfigError, match="gamma"):
        calibration(v, e, [True, False], 10, 10.0, gamma=1.5)
    with pytest.raises(ConfigError, match="backend"):
        calibration(v, e, [True, False], 10, 10.0, backend="roc")
    with pytest.raises(ConfigError, match="at least one frame"):
        calibration([], [], [], 10, 10.0)


# ---------------------------------------------------------------------------- the pipeline
TINY_MAZE = {
    "problem": {"kind": "recap", "name": "tiny_maze", "plant": "maze",
                "base": {"height": 5, "width": 5, "layout": "backtracker", "loop_probability": 0.3, "max_steps": 12}},
    "generator": {"seed": 0, "demo_episodes": 16, "correction_episodes": 12, "autonomous_episodes": 12,
                  "eval_episodes": 24},
    "model": {"latent_dim": 8, "hidden_dim": 8, "num_layers": 1, "H_cycles": 1, "L_cycles": 1},
    "training": {"batch_size": 16, "value_steps": 40, "policy_steps": 8, "value_hidden": 16, "checkpoint_every": 20,
                 "n_step": 3},
}


def test_stage_logs_the_calibration_of_its_value(tmp_path):
    """metrics.json of a stage holds the calibration of its value on the held-out episodes, recomputed here
    from value.pt and policy.pt by pair counting and the true remaining steps."""
    exp = experiment_from_dict(TINY_MAZE)
    m = run_stage(exp, "demos", out=tmp_path / "run")
    for key in ("value_auroc", "value_auroc_frames", "value_steps_to_go_mae", "value_steps_to_go_median_ae",
                "value_calibration", "value_loss", "advantage_mean"):
        assert key in m
    calib = m["value_calibration"]
    assert calib["episodes"] == 24 and calib["successes"] == sum(m["eval_success"])
    assert m["value_auroc"] == calib["auroc_first_frame"]
    assert m["value_steps_to_go_mae"] == calib["steps_to_go_mae"]
    # independent recomputation on the same held-out episodes
    run = RecapRun.from_experiment(exp, out=tmp_path / "run")
    env = make_episodes(run.problem, run.generator)
    policy = make_policy(run.problem, run.model, 0)
    load_state(policy, tmp_path / "run" / "demos" / "policy.pt")
    vnet = make_value(run.problem, run.model, 0, run.training.value_hidden)
    load_state(vnet, tmp_path / "run" / "demos" / "value.pt")
    policy.eval()
    with torch.no_grad():
        ep = run_episodes(env, episode_sets(run, env)["eval"], lambda obs, t: env.act(policy, obs, run.training.beta))
        cols = frames_of(env, ep)
        v = vnet.value(torch.as_tensor(cols["observation.state"])).double().numpy()
    succ, lengths = ep["success"].numpy(), ep["lengths"].numpy()
    assert succ.astype(int).tolist() == m["eval_success"]
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    scale = run.problem.max_steps + run.problem.c_fail
    assert 0 < succ.sum() < len(succ), "the held-out episodes need successes and failures for the AUROC"
    assert m["value_auroc"] == pytest.approx(_pairs_auroc(v[starts].tolist(), succ.tolist()), abs=1e-9)
    assert m["value_auroc_frames"] == pytest.approx(
        _pairs_auroc(v.tolist(), np.repeat(succ, lengths).tolist()), abs=1e-9)
    errors = [abs(-v[s + t] * scale - (n - 1 - t)) for s, n, ok in zip(starts, lengths, succ) if ok for t in range(n)]
    assert errors, "no held-out episode succeeded; the steps error is untested"
    assert m["value_steps_to_go_mae"] == pytest.approx(float(np.mean(errors)), abs=1e-6)
    assert m["value_steps_to_go_median_ae"] == pytest.approx(float(np.median(errors)), abs=1e-6)
    # rerunning the finished stage returns the same numbers (nothing recomputed)
    again = run_stage(exp, "demos", out=tmp_path / "run")
    assert again["skipped"] and again["value_calibration"] == calib
