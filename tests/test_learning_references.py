"""REINFORCE and behaviour cloning checked on small cases whose answers are known in closed form.

* Continuous REINFORCE (:func:`trc.training.rl.reinforce_continuous`) on a double integrator
  from a fixed state: the cost is a quadratic ``J(u) = u'Hu + 2h'u + c`` of the open-loop
  controls (lifted zero-order-hold matrices built here), so the policy gradient of the Gaussian
  policy's mean is ``-grad J`` and the optimum is ``u* = -H^{-1} h``.
* Discrete REINFORCE (:func:`trc.training.discrete.train_reinforce`) on a one-step maze, a
  four-armed bandit with known rewards: ``dE[R]/dz_i = pi_i (r_i - r_bar)`` for softmax logits ``z``.
* Behaviour cloning (:func:`trc.training.bc.bc_loss`, :func:`trc.training.bc.train_bc`) of a
  linear policy: the squared loss is minimised by a weighted least-squares fit (numpy), the
  absolute loss of a constant policy by the median.

The policies are small test doubles with the interfaces the training functions call; the
training code under test is the project's.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from trc.discrete import MazeProblem
from trc.models.discrete import PolicyOutput
from trc.models.visuomotor import CAMERAS
from trc.problem import Problem
from trc.training.bc import BCConfig, BCData, bc_loss, train_bc
from trc.training.discrete import DiscreteTrainConfig, Instances, train_reinforce
from trc.training.rl import ContinuousRLConfig, reinforce_continuous, stage_rewards


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def gradients(monkeypatch):
    """Record the gradient of the first parameter handed to ``clip_grad_norm_`` (the raw
    estimate, before clipping and before the optimiser step), then clip as usual."""
    seen = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        seen.append(parameters[0].grad.detach().double().numpy().ravel().copy())
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    return seen


# ----------------------------------------------------------------------------- continuous REINFORCE
N, DT = 3, 0.5
X0, TARGET = np.array([1.0, -0.5]), np.array([0.0, 0.0])


def bandit_problem() -> Problem:
    """Double integrator from a fixed state to the origin; control bounds far from the optimum."""
    return Problem(name="di_bandit", plant={"name": "double_integrator", "u_min": -50.0, "u_max": 50.0}, dt=DT,
                   horizon=N, Q=[1.0, 0.5], R=[0.2], Qf_scale=10.0, initial_state={"low": list(X0), "high": list(X0)},
                   target_state={"low": list(TARGET), "high": list(TARGET)})


def cost_to_go(problem: Problem, k0: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(H, h, c)`` with ``u'Hu + 2h'u + c`` the cost from step ``k0`` on (stages ``k0..N-1`` and the
    terminal cost), for the exact zero-order-hold double integrator ``A = [[1, dt], [0, 1]]``,
    ``B = [dt^2 / 2, dt]``: ``e_k = A^k x0 - x* + sum_{j<k} A^(k-1-j) B u_j``."""
    Q, R, Qf = problem.weights
    A = np.array([[1.0, DT], [0.0, 1.0]])
    B = np.array([DT**2 / 2, DT])
    E = [np.linalg.matrix_power(A, k) @ X0 - TARGET for k in range(N + 1)]
    M = [np.stack([np.linalg.matrix_power(A, k - 1 - j) @ B if j < k else np.zeros(2) for j in range(N)], 1)
         for k in range(N + 1)]
    H, h, c = np.zeros((N, N)), np.zeros(N), 0.0
    for k in range(k0, N):
        H += DT * M[k].T @ Q @ M[k]
        H[k, k] += DT * R[0, 0]
        h += DT * M[k].T @ Q @ E[k]
        c += DT * E[k] @ Q @ E[k]
    return H + M[N].T @ Qf @ M[N], h + M[N].T @ Qf @ E[N], c + E[N] @ Qf @ E[N]


class OpenLoopMean(nn.Module):
    """The Gaussian policy's mean as free parameters: one control sequence ``(N, 1)`` for every
    episode (the interface of a TRC model as ``reinforce_continuous`` calls it)."""

    def __init__(self, init):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(np.asarray(init, dtype=np.float32).reshape(N, 1)))

    def forward(self, x0, target, plant=None, return_all_iterations=False):
        u = self.theta.expand(x0.shape[0], N, 1)
        return SimpleNamespace(controls=u, all_controls=torch.stack([u, u]))


def test_stage_rewards_add_up_to_minus_the_lifted_cost():
    problem = bandit_problem()
    H, h, c = cost_to_go(problem, 0)
    u = np.array([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0]])
    plant = problem.make_plant(torch.float64)
    x0 = torch.tensor(np.stack([X0, X0]))
    U = torch.tensor(u[..., None])
    r = stage_rewards(problem, plant.rollout(x0, U), U, torch.tensor(np.stack([TARGET, TARGET])))
    np.testing.assert_allclose(-r.sum(1).numpy(), [v @ H @ v + 2 * h @ v + c for v in u], rtol=1e-12)


def test_reinforce_continuous_gradient_is_the_analytic_policy_gradient(gradients):
    """Mean of the first-step gradient estimates over 24 seeds (2000 episodes each) equals
    ``grad J(theta) / (N s)`` within 4 standard errors per component, ``s`` the population
    standard deviation of the centred returns-to-go (the estimator divides its advantages by
    their standard deviation and averages over the ``N`` steps): ``G_k = -(u'H_k u + 2 h_k'u + c_k)``
    with ``u = theta + sigma eps``, so ``Var G_k = 2 tr((sigma^2 H_k)^2) + ||2 sigma (H_k theta + h_k)||^2``."""
    problem = bandit_problem()
    H, h, _ = cost_to_go(problem, 0)
    u_star = -np.linalg.solve(H, h)
    theta = u_star + np.array([1.0, -1.0, 1.0])
    sigma = 1.0  # absolute: 0.01 of the control range of 100
    runs = 24
    for seed in range(runs):
        cfg = ContinuousRLConfig(iterations=1, batch_size=2000, lr=1e-12, sigma=0.01, gamma=1.0, entropy=0.0, seed=seed)
        reinforce_continuous(OpenLoopMean(theta), problem, cfg)
    g = np.array(gradients)
    assert g.shape == (runs, N)
    variances = []
    for k in range(N):
        Hk, hk, _ = cost_to_go(problem, k)
        variances.append(2 * np.trace((sigma**2 * Hk) @ (sigma**2 * Hk)) + np.sum((2 * sigma * (Hk @ theta + hk)) ** 2))
    expected = 2 * (H @ theta + h) / (N * math.sqrt(np.mean(variances)))
    se = g.std(0, ddof=1) / math.sqrt(runs)
    assert (np.abs(g.mean(0) - expected) < 4 * se).all(), (g.mean(0), expected, se)
    assert (np.abs(expected) > 10 * se).all()  # every component is resolved, not just noise


def test_reinforce_continuous_converges_to_the_optimal_open_loop_controls():
    """From ``u = 0`` (cost twice the optimum) 200 steps bring the policy mean to ``u*`` and the
    greedy cost to within 1 % of the excess it started with."""
    problem = bandit_problem()
    H, h, c = cost_to_go(problem, 0)
    u_star = -np.linalg.solve(H, h)
    J = lambda u: u @ H @ u + 2 * h @ u + c  # noqa: E731
    model = OpenLoopMean(np.zeros(N))
    history = reinforce_continuous(model, problem, ContinuousRLConfig(iterations=200, batch_size=64, lr=0.05,
                                                                      sigma=0.01, entropy=0.0, seed=0))
    theta = model.theta.detach().double().numpy().ravel()
    assert J(theta) - J(u_star) < 0.01 * (J(np.zeros(N)) - J(u_star))
    np.testing.assert_allclose(theta, u_star, atol=0.05)
    assert history[-1]["mean_cost_greedy"] == pytest.approx(J(theta), rel=1e-4)


# ----------------------------------------------------------------------------- discrete REINFORCE
#: One-step maze: start at (1, 2) of a 3 x 5 grid, goal to its right. Arms: up and down hit a
#: wall (step + invalid), right reaches the goal (step + goal), left moves to an open cell (step).
ARM_REWARDS = np.array([-0.01 - 0.1, -0.01 + 1.0, -0.01 - 0.1, -0.01])


def maze_bandit():
    problem = MazeProblem(name="maze_bandit", height=3, width=5, max_steps=1,
                          rewards={"goal": 1.0, "step": -0.01, "invalid": -0.1})
    plant = problem.make_plant()
    walls = np.ones((1, 3, 5), dtype=bool)
    walls[0, 1, 1:4] = False
    x0 = plant.pack(walls, np.array([[1, 3]]), np.array([[1, 2]]))
    distances = torch.full((1, 3, 5), -1, dtype=torch.long)
    distances[0, 1, 1:4] = torch.tensor([2, 1, 0])  # BFS distance to the goal
    pool = Instances(x0=x0, actions=torch.tensor([[1]]), lengths=torch.tensor([1]), distances=distances)
    return problem, plant, pool


class FixedLogits(nn.Module):
    """A state-independent softmax policy over the four moves (the policy interface of ``rollout``)."""

    def __init__(self, plant, logits):
        super().__init__()
        self.plant = plant
        self.config = SimpleNamespace(carry_latent=False, architecture="mlp")
        self.z = nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, x, prev=None, state=None):
        return PolicyOutput([self.z.expand(x.shape[0], 4)], None, None)


def test_reinforce_discrete_gradient_is_the_bandit_policy_gradient(gradients):
    """One step with 20 000 episodes and the batch-mean baseline: the gradient of the loss with
    respect to the logits is ``-(1 - 1/B) pi_i (r_i - r_bar)`` within 4 standard errors, the
    per-episode variance ``E[(r_a - r_bar)^2 (1{a=i} - pi_i)^2] - (pi_i (r_i - r_bar))^2``."""
    problem, plant, pool = maze_bandit()
    z = [0.5, -0.3, 0.1, 0.0]
    B = 20000
    cfg = DiscreteTrainConfig(rl_iterations=1, rl_batch=B, rl_lr=1e-12, entropy=0.0, baseline="mean", augment=False,
                              rl_minibatch=B, grad_clip=1e6, seed=0)
    history = train_reinforce(FixedLogits(plant, z), problem, cfg, instance_pool=pool)
    pi = torch.softmax(torch.tensor(z, dtype=torch.float64), 0).numpy()
    r_bar = pi @ ARM_REWARDS
    assert history[0]["mean_return"] == pytest.approx(r_bar, abs=0.02)
    expected = -(1 - 1 / B) * pi * (ARM_REWARDS - r_bar)
    second = np.array([sum(pi[a] * (ARM_REWARDS[a] - r_bar) ** 2 * ((a == i) - pi[i]) ** 2 for a in range(4))
                       for i in range(4)])
    se = np.sqrt((second - (pi * (ARM_REWARDS - r_bar)) ** 2) / B)
    g = gradients[0]
    assert (np.abs(g - expected) < 4 * se).all(), (g, expected, se)
    assert (np.abs(expected) > 10 * se).all()


@pytest.mark.parametrize("baseline", ["mean", "optimal"])
def test_reinforce_discrete_learns_the_best_arm(baseline):
    """From uniform logits, 60 steps put over 95 % of the probability on the move to the goal,
    with either baseline (the optimal value ``V* = step + goal`` of the start, or the batch mean)."""
    problem, plant, pool = maze_bandit()
    policy = FixedLogits(plant, [0.0] * 4)
    cfg = DiscreteTrainConfig(rl_iterations=60, rl_batch=64, rl_lr=0.15, entropy=0.0, baseline=baseline, augment=False,
                              seed=0)
    history = train_reinforce(policy, problem, cfg, instance_pool=pool)
    pi = torch.softmax(policy.z.detach(), 0)
    assert pi.argmax() == 1 and pi[1] > 0.95
    assert history[-1]["mean_return"] > history[0]["mean_return"]


# ----------------------------------------------------------------------------- behaviour cloning
CHUNK, STATE = 2, 14


def bc_data(n: int, actions: torch.Tensor, arm: torch.Tensor, mask: torch.Tensor) -> BCData:
    """Demonstration frames with blank 4 x 4 images (the linear policies below ignore them)."""
    return BCData(images={cam: torch.zeros(n, 3, 4, 4, dtype=torch.uint8) for cam in CAMERAS}, arm_state=arm,
                  text=torch.zeros(n, 4), actions=actions, mask=mask, demo=torch.arange(n), trajectories=[])


class LinearPolicy(nn.Module):
    """Action chunk ``W x + b`` of the arm state (``affine=False``: the bias alone), with a fixed
    z-score normalisation of the actions (the interface ``train_bc`` calls)."""

    def __init__(self, mean, std, affine=True):
        super().__init__()
        self.head = nn.Linear(STATE, CHUNK * 7)
        if not affine:
            nn.init.zeros_(self.head.weight)
            self.head.weight.requires_grad_(False)
        self.register_buffer("action_mean", mean)
        self.register_buffer("action_std", std)

    def normalize_actions(self, actions):
        return (actions - self.action_mean) / self.action_std

    def forward(self, images, text, arm):
        a = self.head(arm).reshape(-1, CHUNK, 7)
        return SimpleNamespace(actions=a, all_actions=[a, a], halt_logits=None)


def test_bc_loss_is_the_masked_mean_of_the_weighted_errors():
    g = np.random.default_rng(0)
    pred, target = g.normal(size=(5, 4, 7)), g.normal(size=(5, 4, 7))
    mask = g.random((5, 4)) < 0.6
    mask[0] = False  # a sample without a real step contributes 0
    mask[1] = True
    diff = pred - target
    per = np.array([(0.7 * diff[b, mask[b]] ** 2 + 0.3 * np.abs(diff[b, mask[b]])).sum() / max(mask[b].sum() * 7, 1)
                    for b in range(5)])
    got = bc_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask), 0.7, 0.3, reduce=False)
    np.testing.assert_allclose(got.numpy(), per, rtol=1e-12)
    assert float(bc_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))) == pytest.approx(per.mean())


def test_train_bc_of_a_linear_policy_reaches_the_least_squares_fit():
    """Squared loss, full batch: ``train_bc`` must end at the weighted least-squares fit of the
    normalised actions, each real step weighted by ``1 / (real steps of its sample)`` (``bc_loss``
    averages per sample first); padded steps (set to 1000 here) must not enter. The noise makes
    the fit differ from the weights that generated the data, so the test tells them apart."""
    n = 192
    g = torch.Generator().manual_seed(0)
    arm = torch.randn(n, STATE, generator=g)
    W_true = 0.5 * torch.randn(CHUNK * 7, STATE, generator=g)
    b_true = torch.randn(CHUNK * 7, generator=g)
    mean, std = torch.randn(7, generator=g), torch.rand(7, generator=g) + 0.5
    z = (arm @ W_true.T + b_true).reshape(n, CHUNK, 7) + 0.5 * torch.randn(n, CHUNK, 7, generator=g)
    actions = z * std + mean
    mask = torch.ones(n, CHUNK, dtype=torch.bool)
    mask[: n // 4, 1] = False  # the demonstration ended: the last step of a quarter of the chunks is padding
    actions[~mask] = 1000.0
    torch.manual_seed(0)
    policy = LinearPolicy(mean, std)
    cfg = BCConfig(epochs=400, batch_size=n, lr=0.05, weight_decay=0.0, grad_clip=1e6, patience=1000, mse_weight=1.0,
                   l1_weight=0.0, cycle_weights="last", brightness=0.0, contrast=0.0, crop_pad=0)
    result = train_bc(policy, bc_data(n, actions, arm, mask), None, cfg, progress=False)

    X = np.c_[arm.numpy().astype(float), np.ones(n)]
    Z = policy.normalize_actions(actions).double().numpy()
    real = mask.numpy()
    coef = np.empty((CHUNK, STATE + 1, 7))
    for j in range(CHUNK):
        w = np.sqrt(real[:, j] / real.sum(1))[:, None]
        coef[j] = np.linalg.lstsq(X * w, Z[:, j] * w, rcond=None)[0]
    W = policy.head.weight.detach().double().numpy().reshape(CHUNK, 7, STATE)
    b = policy.head.bias.detach().double().numpy().reshape(CHUNK, 7)
    np.testing.assert_allclose(W, coef[:, :STATE].transpose(0, 2, 1), atol=5e-3)
    np.testing.assert_allclose(b, coef[:, STATE], atol=5e-3)
    assert np.abs(W - W_true.double().numpy().reshape(CHUNK, 7, STATE)).max() > 0.03
    residual = (X @ coef.transpose(1, 0, 2).reshape(STATE + 1, -1)).reshape(n, CHUNK, 7) - Z
    optimum = np.mean([(residual[i, real[i]] ** 2).mean() for i in range(n)])
    assert result["best_val_loss"] == pytest.approx(optimum, rel=1e-2)


def test_train_bc_with_the_absolute_loss_fits_the_median():
    """A constant policy (bias only) under the L1 loss converges to the per-entry median."""
    n = 101
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    actions = torch.distributions.Laplace(0.0, 1.0).sample((n, CHUNK, 7)) + torch.randn(CHUNK, 7, generator=g)
    mean, std = torch.zeros(7), torch.ones(7)
    policy = LinearPolicy(mean, std, affine=False)
    cfg = BCConfig(epochs=300, batch_size=n, lr=0.05, weight_decay=0.0, grad_clip=1e6, patience=1000, mse_weight=0.0,
                   l1_weight=1.0, cycle_weights="last", brightness=0.0, contrast=0.0, crop_pad=0)
    train_bc(policy, bc_data(n, actions, torch.randn(n, STATE, generator=g), torch.ones(n, CHUNK, dtype=torch.bool)),
             None, cfg, progress=False)
    median = actions.median(dim=0).values.double().numpy().ravel()
    np.testing.assert_allclose(policy.head.bias.detach().double().numpy(), median, atol=0.02)
    assert not policy.head.weight.detach().any()
