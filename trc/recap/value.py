"""Distributional value function of RECAP: rewards, normalised returns, two-hot targets, the 201-bin head.

RECAP (Physical Intelligence, "pi*0.6: a VLA that learns from experience", arXiv 2511.14759,
sec. IV-A) trains a value function ``V(o_t)`` of the policies that produced the data by
cross-entropy on the binned Monte-Carlo return:

* reward of frame ``t`` of an episode of ``T`` frames: ``r_t = -1`` for ``t < T - 1``; at the last
  frame ``r_{T-1} = 0`` if the episode succeeded and ``-C_fail`` if it failed;
* return ``G_t = sum_{k >= 0} gamma^k r_{t+k}`` (``gamma = 1`` by default: ``G_t`` is minus the
  steps to go, minus ``C_fail`` on a failure);
* the return is normalised per task into ``[-1, 0]`` by dividing by ``max_steps + C_fail``, the
  task's maximum episode length plus the failure cost (the most negative undiscounted return);
* the value is a categorical distribution over ``201`` bins whose centres span ``[-1, 0]``
  evenly; its target is the *two-hot* encoding of the normalised return (the weights of the
  two nearest centres, linear in the distance, so the expected bin centre is the return
  exactly; a value on a centre is one-hot); the loss is the cross-entropy and the prediction
  the expectation ``V = sum_b softmax(logits)_b c_b``.

With ``lam < 1`` the target is the TD(lambda) return ``G^lam_t = A^GAE_t + V(o_t)`` of the
current value (:func:`trc.recap.advantage.lambda_returns`; Schulman et al., "High-dimensional
continuous control using generalized advantage estimation", arXiv 1506.02438, eq. 16) instead
of the Monte-Carlo return.

:func:`calibration` measures a trained value on held-out episodes (issue 22, item 3): the AUROC of
predicting an episode's success from its value, and the error of the steps-to-go read back from
the value by inverting the normalisation.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from scipy import stats
from torch import nn

from dynamics.errors import ConfigError, DimensionError, NonFiniteError

__all__ = ["NUM_BINS", "bin_centers", "recap_rewards", "episode_bounds", "discounted_returns", "normalize_returns",
           "two_hot", "ValueHead", "expected_value", "value_loss", "auroc", "steps_to_go", "ValueCalibration",
           "calibration"]

#: Bins of the value distribution (pi*0.6).
NUM_BINS = 201


def bin_centers(num_bins: int = NUM_BINS) -> torch.Tensor:
    """Centres of the value bins, ``(num_bins,)`` float32, evenly spaced on ``[-1, 0]``.

    Raises
    ------
    ConfigError
        If ``num_bins < 2``.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ConfigError(f"num_bins must be an integer >= 2, got {num_bins!r}")
    return torch.linspace(-1.0, 0.0, num_bins)


def _int1d(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise DimensionError(f"{what} has shape {a.shape}; expected (frames,)")
    return a.astype(np.int64)


def episode_bounds(episode_index) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) frame of every episode of contiguous per-frame episode indices.

    Parameters
    ----------
    episode_index : array_like of int, shape ``(frames,)``
        Episodes contiguous (the LeRobot layout); their values need not start at 0.

    Returns
    -------
    starts, ends : ndarray of int64, shape ``(episodes,)``

    Raises
    ------
    DimensionError
        If ``episode_index`` is not one-dimensional.
    ConfigError
        If an episode's frames are not contiguous.
    """
    e = _int1d(episode_index, "episode_index")
    if e.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero(np.diff(e) != 0) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [e.size]))
    if len(np.unique(e[starts])) != len(starts):
        raise ConfigError("episode_index: the frames of an episode must be contiguous; an episode index reappears "
                          "after another episode")
    return starts.astype(np.int64), ends.astype(np.int64)


def recap_rewards(lengths, success, c_fail: float) -> np.ndarray:
    """Per-frame rewards of RECAP, flat over contiguous episodes, float32 ``(sum(lengths),)``.

    ``-1`` per frame, the last frame ``0`` on success and ``-c_fail`` on failure.

    Parameters
    ----------
    lengths : array_like of int, shape ``(episodes,)``
        Frames per episode, each >= 1.
    success : array_like of bool, shape ``(episodes,)``
    c_fail : float
        Failure cost ``C_fail >= 0`` (in steps).

    Raises
    ------
    DimensionError
        If the shapes differ.
    ConfigError
        If a length is < 1 or ``c_fail`` is negative.
    """
    lengths = _int1d(lengths, "lengths")
    success = np.asarray(success, dtype=bool)
    if success.shape != lengths.shape:
        raise DimensionError(f"success has shape {success.shape}; expected {lengths.shape} (one per episode)")
    if (lengths < 1).any():
        raise ConfigError(f"every episode needs at least one frame, got lengths {lengths[lengths < 1][:5].tolist()}")
    if not (np.isfinite(c_fail) and c_fail >= 0):
        raise ConfigError(f"c_fail must be a finite non-negative number, got {c_fail!r}")
    r = -np.ones(int(lengths.sum()), dtype=np.float32)
    last = np.cumsum(lengths) - 1
    r[last] = np.where(success, 0.0, -float(c_fail))
    return r


def _padded(values: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Episodes as rows of a ``(episodes, max_len)`` array (zeros after the end) and the gather index."""
    lengths = ends - starts
    T = int(lengths.max()) if lengths.size else 0
    t = np.arange(T)
    valid = t[None, :] < lengths[:, None]
    idx = np.where(valid, starts[:, None] + t[None, :], 0)
    return np.where(valid, values[idx], 0.0), valid, idx


def discounted_returns(rewards, episode_index, gamma: float = 1.0) -> np.ndarray:
    """Returns-to-go ``G_t = sum_{k} gamma^k r_{t+k}`` within each episode, float64 ``(frames,)``.

    Raises
    ------
    DimensionError
        If ``rewards`` and ``episode_index`` differ in shape.
    ConfigError
        If ``gamma`` is outside ``(0, 1]`` or episodes are not contiguous.
    NonFiniteError
        If a reward is not finite.
    """
    check_gamma(gamma, "gamma")
    r = np.asarray(rewards, dtype=np.float64)
    e = _int1d(episode_index, "episode_index")
    if r.shape != e.shape:
        raise DimensionError(f"rewards have shape {r.shape}; expected {e.shape} (one per frame)")
    if not np.isfinite(r).all():
        raise NonFiniteError("rewards contain NaN or infinity")
    starts, ends = episode_bounds(e)
    R, valid, idx = _padded(r, starts, ends)
    G = np.zeros_like(R)
    acc = np.zeros(R.shape[0])
    for t in range(R.shape[1] - 1, -1, -1):  # backwards over time, every episode at once
        acc = R[:, t] + gamma * acc
        G[:, t] = acc
    out = np.empty_like(r)
    out[idx[valid]] = G[valid]
    return out


def normalize_returns(returns, max_steps, c_fail: float) -> np.ndarray:
    """Returns scaled into ``[-1, 0]``: ``G / (max_steps + c_fail)``, clipped to ``[-1, 0]``.

    Parameters
    ----------
    returns : array_like, shape ``(frames,)``
    max_steps : int or array_like of int, shape ``(frames,)``
        The task's maximum episode length (per frame for several tasks).
    c_fail : float

    Raises
    ------
    ConfigError
        If ``max_steps + c_fail`` is not positive.
    """
    scale = np.asarray(max_steps, dtype=np.float64) + float(c_fail)
    if (scale <= 0).any():
        raise ConfigError(f"max_steps + c_fail must be positive, got {scale.min()}")
    return np.clip(np.asarray(returns, dtype=np.float64) / scale, -1.0, 0.0)


def check_gamma(value, what: str) -> None:
    """Raise ConfigError unless ``value`` lies in ``(0, 1]``."""
    if not (isinstance(value, (int, float, np.floating)) and 0 < value <= 1):
        raise ConfigError(f"{what} must lie in (0, 1], got {value!r}")


def two_hot(values, num_bins: int = NUM_BINS) -> torch.Tensor:
    """Two-hot targets of values in ``[-1, 0]``, ``(n, num_bins)`` float32, rows summing to 1.

    A value ``v`` between the centres ``c_i <= v <= c_{i+1}`` (spacing ``h``) puts weight
    ``(c_{i+1} - v) / h`` on bin ``i`` and ``(v - c_i) / h`` on bin ``i + 1``, so that
    ``sum_b w_b c_b = v``; a value on a centre is one-hot. Values outside ``[-1, 0]`` are clipped.

    Raises
    ------
    DimensionError
        If ``values`` is not one-dimensional.
    NonFiniteError
        If a value is NaN or infinite.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim != 1:
        raise DimensionError(f"values have shape {tuple(v.shape)}; expected (n,)")
    if not torch.isfinite(v).all():
        raise NonFiniteError("two_hot: values contain NaN or infinity")
    bin_centers(num_bins)
    pos = (v.clamp(-1.0, 0.0) + 1.0) * (num_bins - 1)  # fractional bin index in [0, num_bins - 1]
    lo = pos.floor().clamp(max=num_bins - 2)
    w_hi = pos - lo
    out = torch.zeros(v.shape[0], num_bins, dtype=torch.float64)
    rows = torch.arange(v.shape[0])
    out[rows, lo.long()] = 1.0 - w_hi
    out[rows, lo.long() + 1] += w_hi
    return out.float()


class ValueHead(nn.Module):
    """Linear map from features ``(..., in_dim)`` to value logits ``(..., num_bins)``.

    Parameters
    ----------
    in_dim : int
    num_bins : int
        Default 201 (pi*0.6).
    """

    def __init__(self, in_dim: int, num_bins: int = NUM_BINS):
        super().__init__()
        self.register_buffer("centers", bin_centers(num_bins), persistent=False)
        self.linear = nn.Linear(in_dim, num_bins)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected normalised value ``(...)`` of logits ``(..., num_bins)``."""
        return expected_value(logits, self.centers)


def expected_value(logits: torch.Tensor, centers: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_b softmax(logits)_b c_b``, shape ``logits.shape[:-1]``, in ``[-1, 0]``.

    Raises
    ------
    DimensionError
        If the last axis of ``logits`` is not the number of centres.
    """
    centers = bin_centers(logits.shape[-1]) if centers is None else centers
    if logits.shape[-1] != centers.shape[0]:
        raise DimensionError(f"logits have {logits.shape[-1]} bins; expected {centers.shape[0]}")
    return torch.softmax(logits, -1) @ centers.to(logits)


def value_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy ``-sum_b y_b log softmax(logits)_b`` with soft targets ``y`` (two-hot), averaged.

    Parameters
    ----------
    logits, targets : Tensor, shape ``(n, num_bins)``
    weights : Tensor, shape ``(n,)``, optional
        Per-row weights (normalised to sum 1).

    Raises
    ------
    DimensionError
        If the shapes differ.
    """
    if logits.shape != targets.shape:
        raise DimensionError(f"logits have shape {tuple(logits.shape)}, targets {tuple(targets.shape)}; expected "
                             "the same (n, num_bins)")
    ce = -(targets * torch.log_softmax(logits, -1)).sum(-1)
    if weights is None:
        return ce.mean()
    return (ce * weights).sum() / weights.sum().clamp(min=1e-12)


# ---------------------------------------------------------------------------- calibration
#: Ways of computing the AUROC: scikit-learn if installed (``"auto"``), or either explicitly.
AUROC_BACKENDS = ("auto", "sklearn", "mannwhitneyu")


def _auroc_backend(backend: str) -> str:
    if backend not in AUROC_BACKENDS:
        raise ConfigError(f"AUROC backend must be one of {list(AUROC_BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    return "sklearn" if importlib.util.find_spec("sklearn") is not None else "mannwhitneyu"


def auroc(scores, labels, backend: str = "auto") -> Optional[float]:
    """Area under the ROC curve of ``scores`` ranking the ``labels``; None if a class is absent.

    ``AUROC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2 = U / (n_pos n_neg)``, with ``U`` the
    Mann-Whitney statistic of the positives (Hanley and McNeil, "The meaning and use of the area
    under a receiver operating characteristic curve", Radiology 143, 1982): the fraction of
    (positive, negative) pairs that the score orders correctly, ties counting one half.

    Parameters
    ----------
    scores : array_like of float, shape ``(n,)``
        Higher means more likely positive.
    labels : array_like of bool, shape ``(n,)``
    backend : {"auto", "sklearn", "mannwhitneyu"}
        ``sklearn.metrics.roc_auc_score`` (``"auto"`` when scikit-learn is installed) or
        ``scipy.stats.mannwhitneyu``; both give the same number.

    Returns
    -------
    float or None
        In ``[0, 1]`` (0.5: no better than chance); None when every label is the same.

    Raises
    ------
    DimensionError
        If the shapes differ or are not one-dimensional.
    NonFiniteError
        If a score is NaN or infinite.
    ConfigError
        On an unknown backend, or if scikit-learn is asked for and not installed.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise DimensionError(f"scores have shape {s.shape} and labels {y.shape}; expected the same (n,)")
    if not np.isfinite(s).all():
        raise NonFiniteError("auroc: scores contain NaN or infinity")
    how = _auroc_backend(backend)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    if how == "sklearn":
        try:
            from sklearn.metrics import roc_auc_score  # optional dependency
        except ImportError as exc:
            raise ConfigError("AUROC backend 'sklearn' needs scikit-learn, which is not installed; use "
                              "'mannwhitneyu'") from exc
        return float(roc_auc_score(y, s))
    u = stats.mannwhitneyu(s[y], s[~y], alternative="two-sided", method="asymptotic").statistic
    return float(u) / (n_pos * n_neg)


def steps_to_go(values, max_steps, c_fail: float, gamma: float = 1.0) -> np.ndarray:
    """Steps to go read back from normalised values, the inverse of :func:`normalize_returns`.

    The return in steps is ``g = V (max_steps + C_fail)``. For ``gamma = 1`` the steps to go are
    ``-g``; for ``gamma < 1`` a successful return of ``k`` steps is ``-(1 - gamma^k) / (1 - gamma)``,
    so ``k = log(1 + (1 - gamma) g) / log(gamma)``. The result is clipped to
    ``[0, max_steps + C_fail]``, the range of the ``gamma = 1`` inverse (a value below the
    discounted return of an endless episode reads as that bound).

    Parameters
    ----------
    values : array_like, shape ``(n,)``
        Normalised values in ``[-1, 0]``.
    max_steps : int or array_like, shape ``(n,)``
        The task's step budget (per frame for several tasks).
    c_fail : float
        Failure cost in steps.
    gamma : float
        Discount in ``(0, 1]`` the value was trained with.

    Returns
    -------
    ndarray of float64, shape ``(n,)``
        Predicted steps to go (a real number, not rounded).

    Raises
    ------
    ConfigError
        If ``gamma`` is outside ``(0, 1]`` or ``max_steps + c_fail`` is not positive.
    """
    check_gamma(gamma, "gamma")
    scale = np.asarray(max_steps, dtype=np.float64) + float(c_fail)
    if (scale <= 0).any():
        raise ConfigError(f"max_steps + c_fail must be positive, got {scale.min()}")
    g = np.asarray(values, dtype=np.float64) * scale
    if gamma == 1:
        k = -g
    else:
        arg = 1.0 + (1.0 - gamma) * g
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(arg > 0, np.log(np.maximum(arg, 1e-300)) / np.log(gamma), np.inf)
    return np.clip(k, 0.0, scale)


@dataclass
class ValueCalibration:
    """Calibration of a value function on held-out episodes (:func:`calibration`).

    Attributes
    ----------
    episodes, successes, frames, successful_frames : int
    auroc_first_frame : float or None
        AUROC of predicting an episode's success from the value of its first frame (None if
        every episode succeeded or every one failed).
    auroc_frames : float or None
        The same over every frame, each frame labelled with its episode's success
        (frame-weighted: a long episode counts once per frame).
    steps_to_go_mae, steps_to_go_median_ae : float or None
        Mean and median absolute error, in steps, of the steps to go read back from the value
        (:func:`steps_to_go`) against the true steps to go, over every frame of the successful
        episodes (None without a successful episode).
    steps_to_go_bias : float or None
        Mean signed error (predicted minus true), in steps, over the same frames.
    steps_to_go_mae_first_frame : float or None
        Mean absolute error at the first frame of the successful episodes.
    auroc_backend : str
        ``"sklearn"`` or ``"mannwhitneyu"``.
    """

    episodes: int
    successes: int
    frames: int
    successful_frames: int
    auroc_first_frame: Optional[float]
    auroc_frames: Optional[float]
    steps_to_go_mae: Optional[float]
    steps_to_go_median_ae: Optional[float]
    steps_to_go_bias: Optional[float]
    steps_to_go_mae_first_frame: Optional[float]
    auroc_backend: str

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (None for undefined numbers)."""
        return asdict(self)


def calibration(values_or_logits, episode_index, success, max_steps, c_fail: float, gamma: float = 1.0,
                backend: str = "auto") -> ValueCalibration:
    """Calibration of a value on held-out episodes: AUROC of success and error of the steps to go.

    Issue 22, item 3; the value and its normalisation are RECAP's (pi*0.6, arXiv 2511.14759,
    sec. IV-A; see the module notes).

    * Success: the value ranks episodes; the AUROC of the episodes' success against the value at
      their first frame (:func:`auroc`), and against the value at every frame (frame-weighted).
    * Steps to go, on the successful episodes: the value read back in steps
      (:func:`steps_to_go`, ``-V (max_steps + C_fail)`` for ``gamma = 1``) against the true steps
      to go of frame ``t`` of an episode of ``T`` frames, ``T - 1 - t``: the ``-1`` rewards its
      return still counts (the last, successful step is rewarded 0), i.e. minus the
      undiscounted return :func:`discounted_returns` gives the frame. A value equal to the
      normalised Monte-Carlo return therefore has error 0.

    Parameters
    ----------
    values_or_logits : array_like or Tensor, shape ``(frames,)`` or ``(frames, num_bins)``
        Expected normalised values in ``[-1, 0]``, or value logits (their expectation over the
        bin centres, :func:`expected_value`, is used).
    episode_index : array_like of int, shape ``(frames,)``
        Episodes contiguous, frames in time order.
    success : array_like of bool, shape ``(episodes,)``
        Per episode, in the order the episodes appear in ``episode_index``.
    max_steps : int or array_like of int, shape ``(frames,)``
        The task's step budget used in the normalisation (per frame for several tasks).
    c_fail : float
        Failure cost in steps used in the normalisation.
    gamma : float
        Discount the value was trained with.
    backend : {"auto", "sklearn", "mannwhitneyu"}
        AUROC implementation (:func:`auroc`).

    Returns
    -------
    ValueCalibration

    Raises
    ------
    DimensionError
        If the values are not ``(frames,)`` or ``(frames, bins)``, or ``success`` is not one per
        episode.
    NonFiniteError
        If a value or logit is NaN or infinite.
    ConfigError
        If a value lies outside ``[-1, 0]``, episodes are not contiguous, there is no frame,
        ``gamma`` is outside ``(0, 1]``, ``max_steps + c_fail`` is not positive, or the backend
        is unknown.
    """
    v = torch.as_tensor(values_or_logits).detach().to(torch.float64)
    e = _int1d(episode_index, "episode_index")
    if v.ndim not in (1, 2) or v.shape[0] != e.shape[0]:
        raise DimensionError(f"values have shape {tuple(v.shape)}; expected ({e.shape[0]},) values or "
                             f"({e.shape[0]}, num_bins) logits (one per frame)")
    if not torch.isfinite(v).all():
        raise NonFiniteError("calibration: values or logits contain NaN or infinity")
    if v.ndim == 2:
        v = expected_value(v, bin_centers(v.shape[1]).to(torch.float64))
    v = v.numpy()
    if e.size == 0:
        raise ConfigError("calibration needs at least one frame, got 0")
    if (v < -1 - 1e-6).any() or (v > 1e-6).any():
        raise ConfigError(f"normalised values must lie in [-1, 0], got values in [{v.min():.4g}, {v.max():.4g}]")
    starts, ends = episode_bounds(e)
    lengths = ends - starts
    succ = np.asarray(success)
    if succ.shape != starts.shape:
        raise DimensionError(f"success has shape {succ.shape}; expected ({len(starts)},) (one per episode)")
    succ = succ.astype(bool)
    how = _auroc_backend(backend)
    frame_succ = np.repeat(succ, lengths)
    true = (np.repeat(lengths, lengths) - 1 - (np.arange(e.size) - np.repeat(starts, lengths))).astype(np.float64)
    pred = steps_to_go(v, max_steps, c_fail, gamma)
    err = pred[frame_succ] - true[frame_succ]
    first_err = pred[starts[succ]] - true[starts[succ]]
    some = err.size > 0
    return ValueCalibration(
        episodes=int(len(starts)), successes=int(succ.sum()), frames=int(e.size),
        successful_frames=int(frame_succ.sum()),
        auroc_first_frame=auroc(v[starts], succ, how), auroc_frames=auroc(v, frame_succ, how),
        steps_to_go_mae=float(np.abs(err).mean()) if some else None,
        steps_to_go_median_ae=float(np.median(np.abs(err))) if some else None,
        steps_to_go_bias=float(err.mean()) if some else None,
        steps_to_go_mae_first_frame=float(np.abs(first_err).mean()) if some else None,
        auroc_backend=how)
