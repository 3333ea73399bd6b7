"""The ``training:`` and ``evaluation:`` sections of a configuration file.

::

    training:
      epochs: 100
      batch_size: 256
      lr: 2.0e-3
      weight_decay: 1.0e-4
      warmup_fraction: 0.05      # linear warm-up over this fraction of all optimiser steps
      min_lr_ratio: 0.01         # cosine decays the learning rate to lr * min_lr_ratio
      grad_clip: 1.0             # max global L2 norm of the gradient; null disables
      ema_decay: 0.999           # EMA of the weights (evaluated and exported); null disables
      early_stopping_patience: 20  # validations without a better validation cost gap; null disables
      loss:
        imitation: 1.0           # MSE to the optimal controls, normalised by the control range
        cost: 0.1                # J_TRC / J_opt - 1 of the rollout through the plant
        terminal: 1.0            # ||(x_N - x*) / s||^2
        halting: 0.0             # ACT halting loss (needs model.act: true)
        cycle_weights: uniform   # deep supervision: uniform | linear | last | [w_0, ..., w_K]
        rollout_cycles: last     # cost and terminal terms on the final controls (or: all)
        first_controls: null     # e.g. {k: 1, weight: 100}: imitation weight of u_0..u_{k-1}

    evaluation:
      split: test
      plot_samples: 4
      latency_repeats: 200

Both are parsed with :func:`trc.config.from_dict`: unknown keys and invalid values raise
:class:`~dynamics.errors.ConfigError` naming the key, the received and the accepted values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from dynamics.errors import ConfigError

from ..config import check_int, check_real, from_dict, is_real

__all__ = ["LossConfig", "FirstControlsConfig", "TrainConfig", "EvaluationConfig", "CYCLE_WEIGHT_SCHEMES", "MONITORS", "cycle_weights"]

#: Validation metrics that ``training.monitor`` can select (all: lower is better).
MONITORS = ("cost_gap_median", "cost_gap_p95", "cost_gap_mean", "failure_rate", "terminal_error_mean",
            "first_control_error")

#: Named deep-supervision schemes over the ``K`` refinement cycles (see :func:`cycle_weights`).
CYCLE_WEIGHT_SCHEMES = ("uniform", "linear", "last")


def cycle_weights(spec, num_cycles: int) -> list[float]:
    """Deep-supervision weights of the ``K + 1`` outputs of a forward pass, normalised to sum 1.

    The model outputs its initial decode (output 0) and the controls after each of the ``K``
    refinement cycles (outputs ``1..K``), ``TRCOutput.all_controls``.

    Parameters
    ----------
    spec : {"uniform", "linear", "last"} or sequence of float
        ``uniform``: ``w_k = 1``; ``linear``: ``w_k = k + 1`` (later outputs, which the model
        returns, count most); ``last``: only the final output; or a list of non-negative
        weights, of length ``K + 1`` (initial decode first) or ``K`` (the initial decode then
        gets weight 0).
    num_cycles : int
        ``K`` (the model's ``H_cycles``).

    Returns
    -------
    list of float, length ``num_cycles + 1``

    Raises
    ------
    ConfigError
        If a list has the wrong length or sums to zero, or the scheme is unknown.

    References
    ----------
    Deep supervision over recursion steps: Jolicoeur-Martineau, *Less is More: Recursive
    Reasoning with Tiny Networks*, arXiv:2510.04871, 2025, Sec. 2.4.
    """
    K = num_cycles
    if isinstance(spec, str):
        if spec == "uniform":
            w = [1.0] * (K + 1)
        elif spec == "linear":
            w = [float(k + 1) for k in range(K + 1)]
        elif spec == "last":
            w = [0.0] * K + [1.0]
        else:
            raise ConfigError(
                f"training.loss.cycle_weights must be one of {CYCLE_WEIGHT_SCHEMES} or a list, got {spec!r}"
            )
    else:
        w = [float(v) for v in spec]
        if len(w) == K:
            w = [0.0] + w
        if len(w) != K + 1:
            raise ConfigError(
                f"training.loss.cycle_weights has {len(spec)} entries; the model has H_cycles={K}, so "
                f"expected {K + 1} (initial decode first) or {K}"
            )
    total = sum(w)
    if total <= 0:
        raise ConfigError(f"training.loss.cycle_weights must not all be zero, got {list(spec)}")
    return [v / total for v in w]


@dataclass
class FirstControlsConfig:
    """Extra imitation weight on the first controls of a plan (``training.loss.first_controls``).

    A receding-horizon controller applies only the first control ``u_0`` of each plan (or the
    first ``k`` when it re-plans every ``k`` steps); the plain imitation loss spreads over all
    ``N`` controls, so an error in ``u_0`` hardly counts. With this option the squared error of
    step ``j`` is multiplied by

    .. math::

        w_j = \\text{weight} \\; (j < k), \\qquad w_j = 1 \\; (j \\ge k),

    and the imitation term becomes ``mean_{j, i}(w_j ((u_ji - u*_ji) / s_i)^2)`` (still divided
    by ``N m``, not by the sum of the weights: the later controls keep their weight and ``u_0``
    gains ``weight - 1`` times its own). With ``k = 1`` and ``weight = N - 1`` the first control
    counts as much as the other ``N - 1`` together. Only ``u_0`` of each plan reaches the plant
    in receding-horizon control (Mayne, Rawlings, Rao & Scokaert, *Constrained model predictive
    control: Stability and optimality*, Automatica 36(6), 2000, Sec. 2).

    Attributes
    ----------
    k : int
        Number of leading controls weighted, ``1 <= k <= N`` (``N`` is checked against the
        problem's horizon when the loss is built).
    weight : float
        Their weight ``w``, ``>= 1`` (``1`` gives the plain imitation loss).

    Raises
    ------
    ConfigError
        If ``k`` is not an integer ``>= 1`` or ``weight`` is not a finite number ``>= 1``.
    """

    k: int = 1
    weight: float = 10.0

    def __post_init__(self):
        self.k = check_int(self.k, "training.loss.first_controls.k", 1)
        self.weight = check_real(self.weight, "training.loss.first_controls.weight", 1.0)


@dataclass
class LossConfig:
    """Weights of the training loss terms (``training.loss``); see :mod:`trc.training.losses`.

    Attributes
    ----------
    imitation : float
        Weight of the MSE between predicted and optimal controls, each control divided by
        its half-range ``(u_max - u_min) / 2`` (the data's standard deviation when unbounded).
    cost : float
        Weight of the trajectory-cost term ``J(rollout of u) / J* - 1`` (mean over the batch),
        the rollout going through the differentiable plant.
    terminal : float
        Weight of ``||(x_N - x*) / s||^2``, ``s`` the state scale of the problem.
    halting : float
        Weight of the adaptive-halting (ACT) loss; requires ``model.act: true``.
    states : float
        Weight of the MSE between the state head's trajectory and the optimal one, each state
        divided by its spread in the optimal trajectories; requires ``model.state_head: true``.
    cycle_weights : str or list of float
        Deep-supervision weights of the refinement cycles, see :func:`cycle_weights`.
    cost_floor : float
        ``J*`` in the cost term is floored at ``cost_floor`` times the median ``J*`` of the
        training set, so near-trivial instances (``x0`` close to ``x*``) cannot dominate.
    rollout_cycles : {"last", "all"}
        Outputs that the rollout terms (cost, terminal) supervise: only the final controls
        (``last``, the default: on Van der Pol it lowered the validation gap from 56 % to 16 %
        after 105 steps, and it needs one differentiable rollout instead of ``K + 1`` with the
        model's ``detach_feedback``), or those of ``cycle_weights`` (``all``).
    first_controls : FirstControlsConfig or None
        Extra imitation weight on the first ``k`` controls of each plan, for models used as
        receding-horizon controllers (``{k: 1, weight: 100}``), see
        :class:`FirstControlsConfig`. ``None`` (the default) keeps every control's weight 1.

    Raises
    ------
    ConfigError
        On a negative or non-finite weight, when all weights are zero, or on an invalid
        ``first_controls`` mapping (unknown key, ``k < 1``, ``weight < 1``).
    """

    imitation: float = 1.0
    cost: float = 0.1
    terminal: float = 1.0
    halting: float = 0.0
    states: float = 0.0
    cycle_weights: Any = "uniform"
    cost_floor: float = 0.01
    rollout_cycles: str = "last"
    first_controls: Optional[FirstControlsConfig] = None

    def __post_init__(self):
        for name in ("imitation", "cost", "terminal", "halting", "states"):
            setattr(self, name, check_real(getattr(self, name), f"training.loss.{name}", 0.0))
        if self.imitation + self.cost + self.terminal + self.states == 0:
            raise ConfigError(
                "training.loss: imitation, cost, terminal and states weights are all 0; at least one must be positive"
            )
        self.cost_floor = check_real(self.cost_floor, "training.loss.cost_floor", 0.0, 1.0, low_open=True)
        if self.rollout_cycles not in ("all", "last"):
            raise ConfigError(f"training.loss.rollout_cycles must be 'all' or 'last', got {self.rollout_cycles!r}")
        if self.first_controls is not None and not isinstance(self.first_controls, FirstControlsConfig):
            if not isinstance(self.first_controls, dict):
                raise ConfigError(f"training.loss.first_controls must be null or a mapping {{k: <int>, weight: "
                                  f"<number>}}, got {self.first_controls!r}")
            self.first_controls = from_dict(FirstControlsConfig, self.first_controls, "training.loss.first_controls")
        spec = self.cycle_weights
        if isinstance(spec, str):
            if spec not in CYCLE_WEIGHT_SCHEMES:
                raise ConfigError(
                    f"training.loss.cycle_weights must be one of {CYCLE_WEIGHT_SCHEMES} or a list of "
                    f"non-negative numbers, got {spec!r}"
                )
        elif isinstance(spec, (list, tuple)) and spec and all(is_real(v) and v >= 0 for v in spec):
            if sum(spec) <= 0:
                raise ConfigError(f"training.loss.cycle_weights must not all be zero, got {list(spec)}")
            self.cycle_weights = [float(v) for v in spec]
        else:
            raise ConfigError(
                f"training.loss.cycle_weights must be one of {CYCLE_WEIGHT_SCHEMES} or a non-empty list of "
                f"non-negative numbers, got {spec!r}"
            )


@dataclass
class TrainConfig:
    """Optimisation settings: the YAML ``training:`` section.

    Attributes
    ----------
    epochs : int
        Maximum number of passes over the training split.
    batch_size : int
        Samples per optimiser step (summed over processes under DDP: each of ``W`` processes
        takes ``batch_size / W``, rounded up).
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        AdamW decoupled weight decay (Loshchilov & Hutter, ICLR 2019).
    betas : list of 2 float
        AdamW moment coefficients.
    warmup_fraction : float
        Fraction of all optimiser steps with a linear learning-rate warm-up from 1 % of ``lr``.
    min_lr_ratio : float
        After warm-up the rate follows a cosine from ``lr`` down to ``lr * min_lr_ratio``
        (Loshchilov & Hutter, *SGDR*, ICLR 2017).
    grad_clip : float or None
        Maximum global L2 norm of the gradient (``torch.nn.utils.clip_grad_norm_``).
    ema_decay : float or None
        Decay of the exponential moving average of the weights, updated after every step
        (TRM, arXiv:2510.04871, uses 0.999). Validation, the final evaluation and the exported
        model use the EMA weights. ``None`` disables the EMA.
    early_stopping_patience : int or None
        Stop when the monitored validation metric (default the median cost gap) has not
        improved by ``early_stopping_min_delta`` for this many validations. The weights of the
        best validation are exported in any case. ``None`` disables early stopping.
    early_stopping_min_delta : float
        Minimum decrease of the monitored metric counted as an improvement.
    monitor : str
        Validation metric (lower is better) for early stopping and the choice of the exported
        weights: one of :data:`MONITORS`. ``first_control_error`` is the RMS error of the first
        control ``u_0`` in units of the control half-range (of every suffix of the validation
        plans for a model with ``time_to_go``): what a receding-horizon controller applies.
    val_every : int
        Validate every ``val_every`` epochs (and after the last one).
    eval_batch_size : int
        Batch size of validation and evaluation passes.
    max_minutes : float or None
        Wall-clock budget of the training loop; training stops after the epoch that exceeds
        it (a time budget makes a run depend on the machine's speed).
    num_threads : int or None
        ``torch.set_num_threads`` for this process; ``None`` keeps PyTorch's choice.
    device : {"auto", "cpu", "cuda"}
        ``auto`` uses CUDA when available.
    seed : int
        Seed of the weight initialisation, of the data order and of every random generator.
        The command-line ``--seed`` overrides it.
    tensorboard : bool
        Also log to TensorBoard when ``torch.utils.tensorboard`` can be imported.
    loss : LossConfig
        Loss weights.

    Raises
    ------
    ConfigError
        On any invalid value.
    """

    epochs: int = 100
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: Optional[float] = 1.0
    ema_decay: Optional[float] = 0.999
    early_stopping_patience: Optional[int] = 20
    early_stopping_min_delta: float = 0.0
    monitor: str = "cost_gap_median"
    val_every: int = 1
    eval_batch_size: int = 2048
    max_minutes: Optional[float] = None
    num_threads: Optional[int] = None
    device: str = "auto"
    seed: int = 0
    tensorboard: bool = True
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self):
        self.epochs = check_int(self.epochs, "training.epochs", 1)
        self.batch_size = check_int(self.batch_size, "training.batch_size", 1)
        self.lr = check_real(self.lr, "training.lr", 0.0, low_open=True)
        self.weight_decay = check_real(self.weight_decay, "training.weight_decay", 0.0)
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2):
            raise ConfigError(f"training.betas must be a list of 2 numbers in [0, 1), got {self.betas!r}")
        self.betas = [check_real(b, "training.betas[i]", 0.0, 1.0, high_open=True) for b in self.betas]
        self.warmup_fraction = check_real(self.warmup_fraction, "training.warmup_fraction", 0.0, 1.0, high_open=True)
        self.min_lr_ratio = check_real(self.min_lr_ratio, "training.min_lr_ratio", 0.0, 1.0)
        if self.grad_clip is not None:
            self.grad_clip = check_real(self.grad_clip, "training.grad_clip", 0.0, low_open=True)
        if self.ema_decay is not None:
            self.ema_decay = check_real(self.ema_decay, "training.ema_decay", 0.0, 1.0, high_open=True)
        if self.early_stopping_patience is not None:
            self.early_stopping_patience = check_int(
                self.early_stopping_patience, "training.early_stopping_patience", 1
            )
        self.early_stopping_min_delta = check_real(
            self.early_stopping_min_delta, "training.early_stopping_min_delta", 0.0
        )
        if self.monitor not in MONITORS:
            raise ConfigError(f"training.monitor must be one of {MONITORS}, got {self.monitor!r}")
        self.val_every = check_int(self.val_every, "training.val_every", 1)
        self.eval_batch_size = check_int(self.eval_batch_size, "training.eval_batch_size", 1)
        if self.max_minutes is not None:
            self.max_minutes = check_real(self.max_minutes, "training.max_minutes", 0.0, low_open=True)
        if self.num_threads is not None:
            self.num_threads = check_int(self.num_threads, "training.num_threads", 1)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"training.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        self.seed = check_int(self.seed, "training.seed", 0)
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"training.tensorboard must be true or false, got {self.tensorboard!r}")
        if isinstance(self.loss, dict):
            self.loss = from_dict(LossConfig, self.loss, "training.loss")
        if not isinstance(self.loss, LossConfig):
            raise ConfigError(f"training.loss must be a mapping, got {self.loss!r}")

    def to_dict(self) -> dict:
        """Plain data (round-trips through :meth:`from_dict`).

        ``loss.first_controls`` is left out when it is ``None``, so that configurations without
        it give the same dictionary (checkpoints, run fingerprints) as before the option existed.
        """
        data = dataclasses.asdict(self)
        if data["loss"].get("first_controls") is None:
            data["loss"].pop("first_controls", None)
        return data

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with ``changes`` applied.

        Raises
        ------
        ConfigError
            On unknown names or invalid values.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; allowed: {sorted(names)}")
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data) -> "TrainConfig":
        """Build from a mapping (the YAML ``training:`` section), rejecting unknown keys."""
        return from_dict(cls, data, "training")


@dataclass
class EvaluationConfig:
    """What the final evaluation measures: the YAML ``evaluation:`` section.

    Attributes
    ----------
    split : {"test", "val", "train"}
        Data split evaluated at the end of training (``trc.evaluate --split`` overrides it).
    plot_samples : int
        Samples drawn in the trajectory figure (0 disables it).
    latency_repeats : int
        Timed batch-1 forward passes; the median is reported.
    throughput_batch : int
        Batch size of the throughput measurement.
    throughput_repeats : int
        Timed passes at ``throughput_batch``.
    batch_size : int
        Batch size of the metric passes over the split.

    Raises
    ------
    ConfigError
        On any invalid value.
    """

    split: str = "test"
    plot_samples: int = 4
    latency_repeats: int = 200
    throughput_batch: int = 1024
    throughput_repeats: int = 10
    batch_size: int = 2048

    def __post_init__(self):
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"evaluation.split must be 'train', 'val' or 'test', got {self.split!r}")
        self.plot_samples = check_int(self.plot_samples, "evaluation.plot_samples", 0)
        self.latency_repeats = check_int(self.latency_repeats, "evaluation.latency_repeats", 1)
        self.throughput_batch = check_int(self.throughput_batch, "evaluation.throughput_batch", 1)
        self.throughput_repeats = check_int(self.throughput_repeats, "evaluation.throughput_repeats", 1)
        self.batch_size = check_int(self.batch_size, "evaluation.batch_size", 1)

    def to_dict(self) -> dict:
        """Plain data (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> "EvaluationConfig":
        """Build from a mapping (the YAML ``evaluation:`` section), rejecting unknown keys."""
        return from_dict(cls, data, "evaluation")
