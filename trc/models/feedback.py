"""Trajectory-error feedback: what the plant says about the current controls, as a latent.

At every refinement cycle TRC rolls its current controls out through the differentiable plant
and encodes the WHOLE error trajectory ``e_k = (x_k - x*) / s`` for ``k = 1..N`` (``s`` the
state scale of the problem), not only the terminal error: where along the horizon the
trajectory drifts tells the network which controls to change. The terminal error ``e_N``, which
decides success, also gets a direct linear path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import DimensionError

__all__ = ["trajectory_error", "hold_after", "TrajectoryErrorEncoder", "FeedbackGain"]

#: Normalised errors are passed through ``asinh``, linear near 0 and logarithmic far away, so a
#: diverging rollout (an untrained model on an unstable plant) cannot blow the latent up; they
#: are clipped to +-_LARGE first (NaN to +_LARGE), so features stay below asinh(1e6) = 14.5.
_LARGE = 1e6


def trajectory_error(states: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                     inverse_scale_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised, compressed error sequence of a rollout.

    Parameters
    ----------
    states : Tensor, shape ``(batch, horizon + 1, state_dim)``
        Rollout, ``x_0`` first (as returned by :meth:`dynamics.Plant.rollout`).
    target : Tensor, shape ``(batch, state_dim)``
        Target state ``x*``.
    scale : Tensor, shape ``(state_dim,)``
        Positive state scale ``s`` (state units).
    inverse_scale_rows : Tensor, shape ``(horizon * state_dim,)``, optional
        ``1 / s`` repeated ``horizon`` times, precomputed: the errors are then multiplied by it
        instead of divided by the repeated ``s`` (the same numbers to rounding). A compiled
        program loads it as one vector, where it computed the repeated scale of every entry from
        the ``state_dim`` constants (with an integer remainder per entry); with it, the error
        sequence of the rocket's batch-1024 program took 0.7 instead of 1.6 ms on one core
        (:func:`trc.export.export_controller` sets it in the model it compiles).

    Returns
    -------
    Tensor, shape ``(batch, horizon, state_dim)``
        ``asinh((x_k - x*) / s)`` for ``k = 1..N``; the last row is the terminal error.
        Normalised errors beyond ``+-1e6`` and non-finite states (a diverged rollout) are
        clipped to ``+-1e6`` (NaN to ``+1e6``) first.

    Raises
    ------
    DimensionError
        If the shapes disagree.
    """
    if states.ndim != 3 or target.ndim != 2 or states.shape[0] != target.shape[0] or states.shape[2] != target.shape[1]:
        raise DimensionError(
            f"expected states (B, N+1, n) and target (B, n); got {tuple(states.shape)} and {tuple(target.shape)}"
        )
    # On the flattened (batch, N * n) rows: compiled kernels then vectorise along N * n instead
    # of along the few state components (Van der Pol at batch 1024: 10 ms -> 5 ms with the rollout).
    B, length, n = states.shape
    rows = states.reshape(B, length * n)[:, n:] - target.repeat(1, length - 1)
    if inverse_scale_rows is None:
        err = rows / scale.repeat(length - 1)
    else:
        err = rows * inverse_scale_rows
    # NaN to +_LARGE with a comparison (vectorised when compiled; nan_to_num was not)
    err = torch.where(err != err, _LARGE, err).clamp(-_LARGE, _LARGE)
    return _asinh(err).view(B, length - 1, n)


def hold_after(states: torch.Tensor, steps_to_go: torch.Tensor) -> torch.Tensor:
    """Rollouts with every state after step ``k`` replaced by ``x_k``: a plan that ends at a fixed
    final time ``k`` steps from now (shrinking horizon).

    Parameters
    ----------
    states : Tensor, shape ``(batch, horizon + 1, state_dim)``
    steps_to_go : Tensor of int, shape ``(batch,)``
        ``k`` per sample, ``0 <= k <= horizon``.

    Returns
    -------
    Tensor, shape ``(batch, horizon + 1, state_dim)``
    """
    index = torch.arange(states.shape[1], device=states.device).unsqueeze(0)
    index = torch.minimum(index, steps_to_go.unsqueeze(1))
    return states.gather(1, index.unsqueeze(-1).expand(-1, -1, states.shape[2]))


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """``asinh(x) = sign(x) log(|x| + sqrt(x^2 + 1))`` for ``|x| <= 1e6`` (``x^2`` stays finite).

    Written out because TorchInductor compiles this form to vector instructions, while
    ``torch.asinh`` becomes a scalar ``std::asinh`` call per element: 1.8 of the 3.1 ms
    that the error sequence of Van der Pol at batch 1024 took on one core. In float32 its
    absolute error is below 6e-7 (``torch.asinh``'s: 1e-6); the derivative is ``torch.asinh``'s,
    also at 0 (the ``where`` instead of ``abs`` and ``copysign``, whose derivatives vanish there).
    """
    negative = x < 0
    a = torch.where(negative, -x, x)
    r = torch.log(a + torch.sqrt(a * a + 1.0))
    return torch.where(negative, -r, r)


class TrajectoryErrorEncoder(nn.Module):
    """Encode an error sequence ``(batch, N, state_dim)`` into a latent ``(batch, latent_dim)``.

    Two 1-D convolutions over time (``state_dim -> channels -> channels``, GELU), an average
    pooling to at most ``max_positions`` time positions (so the size does not grow with long
    horizons), a linear map of the flattened features, plus a linear map of the terminal error
    ``e_N``. With ``pool_first`` the pooling comes first and the convolutions run over the
    ``max_positions`` pooled positions: the same parameters, a fraction of the operations.
    The output is not normalised: its size grows with the error, so the recursion can tell a
    nearly converged trajectory from a poor one (the ``asinh`` of :func:`trajectory_error`
    bounds it).

    The convolutions and the pooling are computed as matrix products (:func:`_conv_im2col` or
    :func:`_conv_shifted_sum`, :func:`_average_bins`; the same numbers as ``nn.Conv1d`` and
    ``adaptive_avg_pool1d``, to rounding): TorchInductor then compiles the whole encoder with
    its own kernels, which lets AOTInductor keep a batch-1 program's buffers on the stack
    (:mod:`trc.export.inductor`), and the ONNX exporter needs no pooling translation.

    Parameters
    ----------
    state_dim : int
        ``n``.
    horizon : int
        ``N``, the length of the error sequence.
    latent_dim : int
        Output width ``D``.
    channels : int
        Convolution channels.
    kernel_size : int
        Odd kernel size in time steps.
    max_positions : int
        Time positions kept after pooling.
    pool_first : bool
        Pool the error sequence before the convolutions instead of after them.

    Attributes
    ----------
    shifted_sum : bool
        Compute the convolutions with :func:`_conv_shifted_sum` instead of :func:`_conv_im2col`
        (the same numbers, to rounding). Not a checkpointed setting: ``False`` by default, for
        eager PyTorch and training; :func:`trc.export.export_controller` sets it in the copy it
        compiles for a large or free batch size.
    """

    shifted_sum: bool = False

    def __init__(
        self, state_dim: int, horizon: int, latent_dim: int, channels: int = 32, kernel_size: int = 3,
        max_positions: int = 16, pool_first: bool = False,
    ):
        super().__init__()
        self.state_dim, self.horizon = state_dim, horizon
        self.positions = min(horizon, max_positions)
        self.pool_first = bool(pool_first)
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(state_dim, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.proj = nn.Linear(channels * self.positions, latent_dim)
        self.terminal = nn.Linear(state_dim, latent_dim)
        # adaptive average pooling N -> positions as a constant matrix (not saved in checkpoints);
        # pooling first acts on the flattened (N * state_dim) error rows: one dense product
        # with the batch as its long side, instead of a batch of (positions x N) products or a
        # product of the transposed (batch * state_dim, N) sequences (whose transposition made
        # Van der Pol's batch-1024 AOTInductor program 28 instead of 21 ms per call on one thread;
        # contiguous, and an external bmm at batch 1 if not)
        pool = _average_bins(horizon, self.positions)
        if self.pool_first:
            pool = torch.kron(pool, torch.eye(state_dim))  # (positions * n, N * n)
        self.register_buffer("pool", pool, persistent=False)

    def forward(self, errors: torch.Tensor) -> torch.Tensor:
        """``errors``: ``(batch, N, state_dim)`` from :func:`trajectory_error`; returns ``(batch, D)``."""
        if errors.ndim != 3 or errors.shape[1:] != (self.horizon, self.state_dim):
            raise DimensionError(
                f"error sequence has shape {tuple(errors.shape)}; expected (batch, {self.horizon}, {self.state_dim})"
            )
        h = errors
        if self.pool_first:
            h = self._pool(h)  # (batch, positions, state_dim)
        length = h.shape[1]
        conv = _conv_shifted_sum if self.shifted_sum else _conv_im2col
        h = F.gelu(conv(h, self.conv1, length))
        h = F.gelu(conv(h, self.conv2, length))  # (batch, length, channels)
        if not self.pool_first:
            h = self._pool(h)  # (batch, positions, channels)
        h = h.transpose(1, 2)
        return self.proj(h.flatten(1)) + self.terminal(errors[:, -1])

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        """Average ``(batch, N, C)`` down to ``(batch, positions, C)``."""
        if self.positions == self.horizon:
            return h
        if self.pool_first:  # C = state_dim; self.pool is kron(bins, I_n)
            return F.linear(h.flatten(1), self.pool).view(h.shape[0], self.positions, self.state_dim)
        return torch.matmul(self.pool, h)


def _average_bins(length: int, positions: int) -> torch.Tensor:
    """``(positions, length)`` matrix of :func:`torch.nn.functional.adaptive_avg_pool1d`:
    row ``i`` averages inputs ``floor(i L / P) .. ceil((i + 1) L / P) - 1`` (PyTorch's bins)."""
    weights = torch.zeros(positions, length)
    for i in range(positions):
        start, stop = (i * length) // positions, -((-(i + 1) * length) // positions)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def _conv_im2col(h: torch.Tensor, conv: nn.Conv1d, length: int) -> torch.Tensor:
    """``conv`` (stride 1, zero "same" padding) applied to time-major ``h`` ``(batch, N, C)``
    (``N = length``, a Python int so that traced and exported programs keep it static), as one
    matrix product of the ``k`` shifted copies of ``h`` (im2col); returns
    ``(batch, N, out_channels)``, the same numbers as ``conv(h.transpose(1, 2)).transpose(1, 2)``
    to rounding.

    Written as a matrix product so that TorchInductor compiles it with its own GEMM kernels
    instead of an external oneDNN convolution, which would keep AOTInductor from
    stack-allocating the small buffers of a batch-1 program (:mod:`trc.export.inductor`); in eager mode
    it costs about the same, and its backward pass is two to three times cheaper than
    :func:`_conv_shifted_sum`'s.
    """
    k, N = conv.kernel_size[0], length
    padded = F.pad(h, (0, 0, k // 2, k // 2))
    columns = torch.stack([padded[:, j:j + N] for j in range(k)], dim=-1).flatten(2)  # (B, N, C * k)
    return F.linear(columns, conv.weight.flatten(1), conv.bias)


def _conv_shifted_sum(h: torch.Tensor, conv: nn.Conv1d, length: int) -> torch.Tensor:
    """:func:`_conv_im2col` without the shifted copies of ``h``: the padded sequence ``p``
    ``(batch, N + k - 1, C)`` times each tap ``W_j = weight[:, :, j]``, summed with its time
    shift, ``out_t = bias + sum_j (p W_j^T)_{t + j}``.

    The products run on the padded rows as they are and the shifted sum fuses with the bias
    and the activation that follow, so a compiled program writes no ``(batch, N, C k)``
    copy (Van der Pol's ``fast`` batch-1024 AOTInductor program: 21.1 instead of 22.2 ms per call
    on one thread, timed interleaved). The taps are strided views of the weight, which
    Inductor's own (``CPP``) GEMM kernels do not take: for programs with external GEMMs, i.e.
    large batch sizes (:mod:`trc.export.inductor`).
    """
    k, N = conv.kernel_size[0], length
    padded = F.pad(h, (0, 0, k // 2, k // 2))  # (B, N + k - 1, C)
    result = conv.bias
    for j in range(k):
        result = result + F.linear(padded, conv.weight[:, :, j])[:, j:j + N]
    return result


class FeedbackGain(nn.Module):
    """A learned linear iterative-learning-control law: ``delta_a = L vec(e)``.

    Maps the whole error sequence ``(batch, N, state_dim)`` linearly to a correction of the
    control pre-activations ``(batch, N, control_dim)``, added to the network's residual at
    every cycle. This is the update ``u_{j+1} = u_j + L e_j`` of iterative learning control
    (Arimoto, Kawamura & Miyazaki, "Bettering operation of robots by learning", J. Robotic
    Systems 1 (1984) 123; Bristow, Tharayil & Alleyne, "A survey of iterative learning
    control", IEEE Control Systems 26 (2006) 96) with ``L`` learned from data: for a linear
    plant the optimal correction of a sub-optimal control sequence is linear in its error
    trajectory, which this path represents exactly while the network handles the rest.
    ``L`` starts at zero.

    Parameters
    ----------
    state_dim, control_dim, horizon : int
        ``n``, ``m``, ``N``.
    """

    def __init__(self, state_dim: int, control_dim: int, horizon: int):
        super().__init__()
        self.shape = (horizon, control_dim)
        self.gain = nn.Linear(horizon * state_dim, horizon * control_dim, bias=False)
        nn.init.zeros_(self.gain.weight)

    def forward(self, errors: torch.Tensor) -> torch.Tensor:
        """``errors`` ``(batch, N, state_dim)`` -> correction ``(batch, N, control_dim)``."""
        return self.gain(errors.flatten(1)).view(-1, *self.shape)
