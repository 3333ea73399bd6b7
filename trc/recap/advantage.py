"""Advantages and the binary advantage indicator of RECAP.

* n-step advantage (default; Physical Intelligence, pi*0.6, arXiv 2511.14759, sec. IV-B)::

      A_t = sum_{k < n} gamma^k r_{t+k} + gamma^n V(o_{t+n}) - V(o_t),

  truncated at the episode's end: the sum stops at the last frame and the bootstrap term is
  dropped when ``t + n`` lies past it (the value after the end is 0).
* GAE(lambda) (Schulman et al., arXiv 1506.02438, eq. 16)::

      delta_t = r_t + gamma V(o_{t+1}) - V(o_t),     A_t = sum_{k >= 0} (gamma lam)^k delta_{t+k},

  with ``V = 0`` after the end.
* indicator ``I_t = 1[A_t > eps_task]``, the threshold ``eps`` set per task to the
  ``1 - positive_fraction`` quantile of the task's advantages so that about 30 % of the frames
  are positive; frames where the expert intervened are always positive.

Rewards and values are in the same (normalised) units; see :mod:`trc.recap.value`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics.errors import ConfigError, DimensionError, NonFiniteError

from .value import _int1d, _padded, check_gamma, episode_bounds

__all__ = ["n_step_advantages", "gae_advantages", "lambda_returns", "task_thresholds", "indicators",
           "AdvantageLabels", "label_advantages"]

#: Fraction of frames labelled positive per task (pi*0.6).
POSITIVE_FRACTION = 0.3


def _frames(rewards, values, episode_index):
    r = np.asarray(rewards, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    e = _int1d(episode_index, "episode_index")
    for a, what in ((r, "rewards"), (v, "values")):
        if a.shape != e.shape:
            raise DimensionError(f"{what} have shape {a.shape}; expected {e.shape} (one per frame)")
        if not np.isfinite(a).all():
            raise NonFiniteError(f"{what} contain NaN or infinity")
    return r, v, episode_bounds(e)


def n_step_advantages(rewards, values, episode_index, n: int = 10, gamma: float = 1.0) -> np.ndarray:
    """n-step advantages ``(frames,)`` float64 (see the module notes).

    Parameters
    ----------
    rewards, values : array_like, shape ``(frames,)``
        Per-frame rewards and value estimates ``V(o_t)``, episodes contiguous.
    episode_index : array_like of int, shape ``(frames,)``
    n : int
        Look-ahead in frames, >= 1.
    gamma : float
        Discount in ``(0, 1]``.

    Raises
    ------
    ConfigError
        On ``n < 1``, ``gamma`` outside ``(0, 1]`` or non-contiguous episodes.
    DimensionError
        If the arrays differ in shape.
    NonFiniteError
        On NaN or infinite rewards or values.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be an integer >= 1, got {n!r}")
    check_gamma(gamma, "gamma")
    r, v, (starts, ends) = _frames(rewards, values, episode_index)
    R, valid, idx = _padded(r, starts, ends)
    V, _, _ = _padded(v, starts, ends)
    E, T = R.shape
    # pad n zeros after every episode: r = 0 and V = 0 past the end
    Rp = np.concatenate((R, np.zeros((E, n))), 1)
    Vp = np.concatenate((V, np.zeros((E, n))), 1)
    acc = np.zeros((E, T))
    for k in range(n):
        acc += gamma ** k * Rp[:, k:k + T]
    A = acc + gamma ** n * Vp[:, n:n + T] - V
    out = np.empty_like(r)
    out[idx[valid]] = A[valid]
    return out


def gae_advantages(rewards, values, episode_index, gamma: float = 1.0, lam: float = 0.95) -> np.ndarray:
    """GAE(gamma, lambda) advantages ``(frames,)`` float64 (see the module notes).

    Raises
    ------
    ConfigError
        On ``gamma`` or ``lam`` outside their ranges (``(0, 1]``, ``[0, 1]``).
    DimensionError, NonFiniteError
        As :func:`n_step_advantages`.
    """
    check_gamma(gamma, "gamma")
    if not (isinstance(lam, (int, float, np.floating)) and 0 <= lam <= 1):
        raise ConfigError(f"lam must lie in [0, 1], got {lam!r}")
    r, v, (starts, ends) = _frames(rewards, values, episode_index)
    R, valid, idx = _padded(r, starts, ends)
    V, _, _ = _padded(v, starts, ends)
    E, T = R.shape
    V_next = np.concatenate((V[:, 1:], np.zeros((E, 1))), 1)  # zeros past the end (padding is 0 too)
    delta = R + gamma * V_next - V
    A = np.zeros((E, T))
    acc = np.zeros(E)
    for t in range(T - 1, -1, -1):  # backwards over time, every episode at once
        acc = delta[:, t] + gamma * lam * acc
        A[:, t] = acc
    out = np.empty_like(r)
    out[idx[valid]] = A[valid]
    return out


def lambda_returns(rewards, values, episode_index, gamma: float = 1.0, lam: float = 0.95) -> np.ndarray:
    """TD(lambda) returns ``G^lam_t = A^GAE_t + V_t`` ``(frames,)``: the value target with ``lam < 1``.

    ``lam = 1`` gives the Monte-Carlo return, ``lam = 0`` the one-step target ``r_t + gamma V_{t+1}``.
    """
    return gae_advantages(rewards, values, episode_index, gamma, lam) + np.asarray(values, dtype=np.float64)


def task_thresholds(advantages, task_index, positive_fraction: float = POSITIVE_FRACTION) -> dict[int, float]:
    """Per-task threshold ``eps``: the ``1 - positive_fraction`` quantile of the task's advantages.

    Returns
    -------
    dict of int to float
        ``{task_index: eps}`` for every task present.

    Raises
    ------
    ConfigError
        If ``positive_fraction`` is outside ``(0, 1)``.
    DimensionError
        If the arrays differ in shape.
    """
    if not (isinstance(positive_fraction, (int, float)) and 0 < positive_fraction < 1):
        raise ConfigError(f"positive_fraction must lie in (0, 1), got {positive_fraction!r}")
    a = np.asarray(advantages, dtype=np.float64)
    t = _int1d(task_index, "task_index")
    if a.shape != t.shape:
        raise DimensionError(f"advantages have shape {a.shape}; expected {t.shape} (one per frame)")
    return {int(k): float(np.quantile(a[t == k], 1.0 - positive_fraction)) for k in np.unique(t)}


def indicators(advantages, task_index, thresholds: dict, is_intervention=None) -> np.ndarray:
    """``I_t = 1[A_t > eps_task] or intervention_t``, bool ``(frames,)``.

    Raises
    ------
    ConfigError
        If a task has no threshold.
    DimensionError
        If the arrays differ in shape.
    """
    a = np.asarray(advantages, dtype=np.float64)
    t = _int1d(task_index, "task_index")
    if a.shape != t.shape:
        raise DimensionError(f"advantages have shape {a.shape}; expected {t.shape} (one per frame)")
    missing = sorted(set(np.unique(t).tolist()) - set(thresholds))
    if missing:
        raise ConfigError(f"no advantage threshold for task(s) {missing}; thresholds given for {sorted(thresholds)}")
    eps = np.zeros_like(a)
    for k, value in thresholds.items():
        eps[t == k] = value
    out = a > eps
    if is_intervention is not None:
        iv = np.asarray(is_intervention, dtype=bool)
        if iv.shape != a.shape:
            raise DimensionError(f"is_intervention has shape {iv.shape}; expected {a.shape}")
        out |= iv
    return out


@dataclass
class AdvantageLabels:
    """Advantage labels of a data set.

    Attributes
    ----------
    advantage : ndarray of float64, shape ``(frames,)``
    indicator : ndarray of bool, shape ``(frames,)``
    thresholds : dict of int to float
        ``eps`` per task.
    advantage_mean : float
        Mean advantage (logged).
    positive_fraction : float
        Fraction of frames with ``I = 1`` (interventions included).
    """

    advantage: np.ndarray
    indicator: np.ndarray
    thresholds: dict
    advantage_mean: float
    positive_fraction: float


def label_advantages(rewards, values, episode_index, task_index, is_intervention=None, *, method: str = "n_step",
                     n: int = 10, gamma: float = 1.0, lam: float = 0.95,
                     positive_fraction: float = POSITIVE_FRACTION) -> AdvantageLabels:
    """Advantages (``method`` ``"n_step"`` or ``"gae"``), per-task thresholds and indicators.

    Raises
    ------
    ConfigError
        On an unknown method or an invalid option.
    DimensionError, NonFiniteError
        On mismatched or non-finite arrays.
    """
    if method == "n_step":
        adv = n_step_advantages(rewards, values, episode_index, n, gamma)
    elif method == "gae":
        adv = gae_advantages(rewards, values, episode_index, gamma, lam)
    else:
        raise ConfigError(f"advantage method must be 'n_step' or 'gae', got {method!r}")
    eps = task_thresholds(adv, task_index, positive_fraction)
    ind = indicators(adv, task_index, eps, is_intervention)
    return AdvantageLabels(adv, ind, eps, float(adv.mean()) if adv.size else float("nan"),
                           float(ind.mean()) if ind.size else float("nan"))
