"""RL fine-tuning of discrete policies: the clipped, KL-regularised policy-gradient loss, its
configuration, and a run from a good supervised start that must not lower the greedy success."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch

from dynamics.errors import ConfigError, DimensionError
from trc.discrete import MazeProblem, problem_from_dict
from trc.models.discrete import PolicyOutput, make_discrete_policy
from trc.training.discrete import (
    DiscreteTrainConfig,
    Instances,
    discounted_returns,
    evaluate_policy,
    group_advantages,
    instances_from_problem,
    policy_gradient_terms,
    train_reinforce,
    train_supervised,
)

TINY = {"kind": "maze", "name": "tiny", "height": 3, "width": 5, "layout": "random", "wall_probability": 0.2,
        "max_steps": 12}


# ---------------------------------------------------------------------------- the loss terms, by hand
def test_terms_against_a_hand_computed_case():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    logits = p.log()
    ref = torch.full((1, 3), 1 / 3).log()
    a = torch.tensor([0])
    old = torch.tensor([math.log(0.25)])  # ratio pi / pi_old = 0.5 / 0.25 = 2
    for adv, expected in ((1.0, 1.2), (-1.0, -2.0)):  # min(2 A, clip(2, 0.8, 1.2) A)
        surrogate, entropy, kl, clipped = policy_gradient_terms(logits, a, torch.tensor([adv]), old, ref, clip=0.2)
        assert surrogate.item() == pytest.approx(expected, rel=1e-6)
        assert bool(clipped.item())
    assert entropy.item() == pytest.approx(1.5 * math.log(2), rel=1e-6)  # -(0.5 ln 0.5 + 2 * 0.25 ln 0.25)
    assert kl.item() == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), rel=1e-6)
    # inside the trust region the ratio is not clipped
    surrogate, _, _, clipped = policy_gradient_terms(logits, a, torch.tensor([1.0]), torch.tensor([math.log(0.45)]),
                                                     clip=0.2)
    assert surrogate.item() == pytest.approx(0.5 / 0.45, rel=1e-6) and not bool(clipped.item())


def test_kl_matches_scipy_and_masked_actions_add_nothing():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    ref_logits = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    masked = torch.zeros(6, 5, dtype=torch.bool)
    masked[:, 4] = True
    masked[0, 1] = True
    logits, ref_logits = logits.masked_fill(masked, -1e9), ref_logits.masked_fill(masked, -1e9)
    ref = torch.log_softmax(ref_logits, -1)
    a = torch.zeros(6, dtype=torch.long)
    old = torch.log_softmax(logits, -1)[:, 0]
    _, entropy, kl, _ = policy_gradient_terms(logits, a, torch.zeros(6, dtype=torch.float64), old, ref)
    p, q = torch.softmax(logits, -1).numpy(), torch.softmax(ref_logits, -1).numpy()
    np.testing.assert_allclose(kl.numpy(), scipy.stats.entropy(p, q, axis=-1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(entropy.numpy(), scipy.stats.entropy(p, axis=-1), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(kl).all() and (kl >= 0).all()


def test_gradient_is_reinforce_at_the_collecting_policy_and_temperature_scales_it():
    # d/dlogits [rho A] at rho = 1 is A (e_a - pi) / T: REINFORCE's A grad log pi(a) (Williams 1992)
    logits = torch.tensor([[0.3, -0.2, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    a, adv = torch.tensor([2]), torch.tensor([0.7], dtype=torch.float64)
    for T in (1.0, 0.5):
        old = torch.log_softmax(logits.detach() / T, -1)[:, 2]
        logits.grad = None
        surrogate, _, _, _ = policy_gradient_terms(logits, a, adv, old, temperature=T)
        surrogate.sum().backward()
        pi = torch.softmax(logits.detach() / T, -1)[0]
        expected = 0.7 * (torch.nn.functional.one_hot(torch.tensor(2), 4).double() - pi) / T
        torch.testing.assert_close(logits.grad[0], expected)
    # a clipped ratio passes no gradient: pi(a) = 0.9 against pi_old = 0.5, A > 0
    logits = torch.tensor([[math.log(0.9), math.log(0.1)]], dtype=torch.float64, requires_grad=True)
    one = torch.tensor([1.0], dtype=torch.float64)
    surrogate, _, _, clipped = policy_gradient_terms(logits, torch.tensor([0]), one,
                                                     torch.tensor([math.log(0.5)], dtype=torch.float64), clip=0.2)
    surrogate.sum().backward()
    assert bool(clipped.item()) and surrogate.item() == pytest.approx(1.2)
    assert torch.count_nonzero(logits.grad) == 0


def test_truncated_ratio_keeps_a_bounded_gradient():
    # pi(a) = 0.5 against pi_old(a) = 0.25: ratio 2 truncated at 1.5; the gradient is 1.5 A (e_a - pi)
    logits = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([math.log(0.25)], dtype=torch.float64)
    surrogate, _, _, _ = policy_gradient_terms(logits, torch.tensor([0]), torch.tensor([-2.0], dtype=torch.float64),
                                               old, max_ratio=1.5)
    surrogate.sum().backward()
    assert surrogate.item() == pytest.approx(-3.0)
    torch.testing.assert_close(logits.grad[0], -3.0 * torch.tensor([0.5, -0.25, -0.25], dtype=torch.float64))
    # below the truncation nothing changes
    s1, _, _, _ = policy_gradient_terms(logits, torch.tensor([0]), torch.tensor([1.0], dtype=torch.float64), old,
                                        max_ratio=3.0)
    assert s1.item() == pytest.approx(2.0)


def test_terms_reject_mismatched_shapes():
    logits = torch.zeros(3, 4)
    with pytest.raises(DimensionError, match=r"actions \(2,\)"):
        policy_gradient_terms(logits, torch.zeros(2, dtype=torch.long), torch.zeros(3), torch.zeros(3))
    with pytest.raises(DimensionError, match=r"ref_logp has shape \(3, 5\)"):
        policy_gradient_terms(logits, torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.zeros(3),
                              torch.zeros(3, 5))


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[-0.01, -0.01], [1.0, -0.01], [0.0, 1.0]])
    alive = torch.tensor([[True, True], [True, True], [False, True]])
    G = discounted_returns(rewards, alive, 0.9)
    expected = torch.tensor([[-0.01 + 0.9, -0.01 - 0.009 + 0.81], [1.0, -0.01 + 0.9], [0.0, 1.0]])
    torch.testing.assert_close(G, expected)


def test_group_advantages_by_hand():
    R = torch.tensor([1.0, 0.0, 0.5, 0.5])
    torch.testing.assert_close(group_advantages(R, 2), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    # leave-one-out means of the four: 1/3, 2/3, 1/2, 1/2
    torch.testing.assert_close(group_advantages(R, 4), torch.tensor([2 / 3, -2 / 3, 0.0, 0.0]))
    torch.testing.assert_close(group_advantages(torch.full((6,), -0.4), 3), torch.zeros(6))  # never solved: no signal
    with pytest.raises(DimensionError, match=r"returns of shape \(5,\) with group 2"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(DimensionError, match="group 1"):
        group_advantages(torch.zeros(4), 1)


# ---------------------------------------------------------------------------- deep supervision
#: One-step maze: start at (1, 2) of a 3 x 5 grid, goal to its right. Moves up and down hit a wall
#: (step + invalid), right reaches the goal (step + goal), left moves to an open cell (step).
ARM_REWARDS = np.array([-0.01 - 0.1, -0.01 + 1.0, -0.01 - 0.1, -0.01])


class TwoCycleLogits(torch.nn.Module):
    """State-independent logits of two H-cycles; the second (last) one acts."""

    def __init__(self, plant, z1, z2):
        super().__init__()
        self.plant = plant
        self.config = SimpleNamespace(carry_latent=False, architecture="mlp")
        self.z1 = torch.nn.Parameter(torch.tensor(z1, dtype=torch.float32))
        self.z2 = torch.nn.Parameter(torch.tensor(z2, dtype=torch.float32))

    def forward(self, x, prev=None, state=None):
        return PolicyOutput([self.z1.expand(x.shape[0], 4), self.z2.expand(x.shape[0], 4)], None, None)


def test_earlier_cycles_get_their_own_policy_gradient():
    """Actions come from cycle 2; with the optimal-value baseline ``V* = 0.99`` the gradient on
    cycle 1's logits must be half (two cycles averaged) of cycle 1's own policy gradient,
    ``-pi1_i (r_i - pi1 . r) / 2``, within 4 standard errors, and not the unweighted
    ``-E_{a ~ pi2}[(r_a - V*) (e_a - pi1)] / 2``, which keeps a baseline term."""
    problem = MazeProblem(name="bandit", height=3, width=5, max_steps=1,
                          rewards={"goal": 1.0, "step": -0.01, "invalid": -0.1})
    plant = problem.make_plant()
    walls = np.ones((1, 3, 5), dtype=bool)
    walls[0, 1, 1:4] = False
    distances = torch.full((1, 3, 5), -1, dtype=torch.long)
    distances[0, 1, 1:4] = torch.tensor([2, 1, 0])
    pool = Instances(x0=plant.pack(walls, np.array([[1, 3]]), np.array([[1, 2]])), actions=torch.tensor([[1]]),
                     lengths=torch.tensor([1]), distances=distances)
    z1, z2 = [1.0, -0.5, 0.2, 0.5], [0.0, 0.8, 0.0, 0.3]
    policy = TwoCycleLogits(plant, z1, z2)
    B = 8000
    cfg = DiscreteTrainConfig(rl_iterations=1, rl_batch=B, rl_lr=1e-12, entropy=0.0, augment=False, grad_clip=1e6,
                              rl_max_ratio=1e6, seed=0)  # no truncation: the unbiased importance weight
    train_reinforce(policy, problem, cfg, instance_pool=pool)
    g = policy.z1.grad.double().numpy()
    pi1 = torch.softmax(torch.tensor(z1, dtype=torch.float64), 0).numpy()
    pi2 = torch.softmax(torch.tensor(z2, dtype=torch.float64), 0).numpy()
    A = ARM_REWARDS - 0.99
    expected = -0.5 * pi1 * (ARM_REWARDS - pi1 @ ARM_REWARDS)
    # per-episode terms w(a) A(a) (e_a - pi1), a ~ pi2, w = pi1 / pi2
    terms = np.array([pi1[a] / pi2[a] * A[a] * (np.eye(4)[a] - pi1) for a in range(4)])
    se = 0.5 * np.sqrt((pi2 @ terms ** 2 - (pi2 @ terms) ** 2) / B)
    assert (np.abs(g - expected) < 4 * se).all(), (g, expected, se)
    unweighted = -0.5 * sum(pi2[a] * A[a] * (np.eye(4)[a] - pi1) for a in range(4))
    assert np.abs(unweighted - expected).max() > 10 * se.max()  # the test tells the two apart


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("key, value, message", [
    ("kl_coef", -0.1, r"training.kl_coef must be a finite number in \[0.0, inf\], got -0.1"),
    ("kl_coef", float("nan"), r"training.kl_coef"),
    ("clip", 0.0, r"training.clip \(or null\) must be a finite number in \(0.0, 1.0\), got 0.0"),
    ("clip", 1.5, r"training.clip \(or null\).*got 1.5"),
    ("clip", "0.2", r"training.clip \(or null\)"),
    ("rl_epochs", 0, r"training.rl_epochs"),
    ("rl_epochs", 2.5, r"training.rl_epochs"),
    ("rl_warmup", -1, r"training.rl_warmup"),
    ("rl_temperature", 0.0, r"training.rl_temperature must be a finite number in \(0.0, inf\], got 0.0"),
    ("rl_temperature", True, r"training.rl_temperature"),
    ("rl_max_ratio", 0.5, r"training.rl_max_ratio must be a finite number in \[1.0, inf\], got 0.5"),
    ("baseline", "critic", r"training.baseline must be 'optimal', 'mean' or 'group', got 'critic'"),
])
def test_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        DiscreteTrainConfig(**{key: value})


def test_group_config_errors():
    with pytest.raises(ConfigError, match=r"training.rl_group must be .*2.*got 1"):
        DiscreteTrainConfig(baseline="group")
    with pytest.raises(ConfigError, match=r"training.rl_batch must be a multiple of training.rl_group = 4, got 30"):
        DiscreteTrainConfig(baseline="group", rl_group=4, rl_batch=30)
    assert DiscreteTrainConfig(baseline="group", rl_group=4, rl_batch=32).rl_group == 4


def test_config_defaults_are_plain_reinforce():
    cfg = DiscreteTrainConfig()
    assert (cfg.kl_coef, cfg.clip, cfg.rl_epochs, cfg.rl_temperature, cfg.rl_warmup, cfg.rl_group) == \
        (0.0, None, 1, 1.0, 0, 1)
    assert DiscreteTrainConfig(clip=0.2, kl_coef=0.5, rl_epochs=4, rl_warmup=3, rl_temperature=0.5).clip == 0.2


# ---------------------------------------------------------------------------- a tiny run from a good start
@pytest.fixture(scope="module")
def good_start():
    """A small recursive policy trained on optimal paths of tiny mazes, and held-out instances."""
    torch.set_num_threads(1)
    problem = problem_from_dict(TINY)
    train = instances_from_problem(problem, 256, 0)
    test = instances_from_problem(problem, 200, 99)
    torch.manual_seed(0)
    model = {"latent_dim": 16, "hidden_dim": 32, "H_cycles": 2, "L_cycles": 1}
    policy = make_discrete_policy(problem.make_plant(), model)
    policy.problem = problem
    train_supervised(policy, train, DiscreteTrainConfig(supervised_batches=60, batch_size=32, lr=3e-3))
    return problem, policy, test


def _greedy_successes(policy, problem, test) -> int:
    return round(evaluate_policy(policy, problem, test)["success_rate"] * len(test))


def test_regularised_run_keeps_a_good_start(good_start):
    """The settings of configs/maze.yaml (leave-one-out group baseline, KL to the supervised
    policy, warm-up) keep the greedy success of a good start on held-out mazes; plain REINFORCE
    with the optimal-value baseline at a larger step size loses much of it on the same start."""
    problem, start, test = good_start
    before = _greedy_successes(start, problem, test)
    assert before >= 0.85 * len(test), before  # the start is good
    state = {k: v.clone() for k, v in start.state_dict().items()}
    for seed in (3, 4):
        start.load_state_dict(state)
        cfg = DiscreteTrainConfig(rl_iterations=8, rl_batch=32, rl_lr=3e-4, entropy=0.0, baseline="group",
                                  rl_group=4, kl_coef=0.1, rl_warmup=2, seed=seed)
        hist = train_reinforce(start, problem, cfg)
        after = _greedy_successes(start, problem, test)
        assert after >= before - 3, (seed, before, after)  # within 1.5 % of 200 held-out mazes
        assert len(hist) == 8 and all(np.isfinite(h["kl"]) and h["clip_fraction"] == 0 for h in hist)
        assert hist[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first batch is collected by the reference
        assert [h["lr"] for h in hist[:3]] == pytest.approx([1e-4, 2e-4, 3e-4])  # linear warm-up
    start.load_state_dict(state)
    train_reinforce(start, problem, DiscreteTrainConfig(rl_iterations=8, rl_batch=32, rl_lr=3e-3, entropy=0.0, seed=4))
    assert _greedy_successes(start, problem, test) < before - 20
    start.load_state_dict(state)


def test_kl_penalty_keeps_the_policy_near_the_reference(good_start):
    problem, start, test = good_start
    state = {k: v.clone() for k, v in start.state_dict().items()}

    def log_probs(policy):  # greedy-relevant last-cycle log-probabilities at the held-out start states
        with torch.no_grad():
            return torch.log_softmax(policy(test.x0).logits[-1], -1)

    ref = log_probs(start)
    kl = {}
    for coef in (0.0, 2.0):
        start.load_state_dict(state)
        cfg = DiscreteTrainConfig(rl_iterations=6, rl_batch=32, rl_lr=1e-2, entropy=0.0, kl_coef=coef, seed=4)
        train_reinforce(start, problem, cfg)
        logp = log_probs(start)
        kl[coef] = float((logp.exp() * (logp.clamp(min=-1e4) - ref.clamp(min=-1e4))).sum(-1).mean())
    start.load_state_dict(state)
    assert kl[0.0] > 1e-3 and kl[2.0] < 0.5 * kl[0.0], kl
