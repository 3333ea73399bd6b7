"""Tiny Recursive Control: a tiny network that refines a whole control sequence recursively.

Given the current state ``x_0`` and a target ``x*``, TRC outputs the controls
``u_0 .. u_{N-1}`` of a finite-horizon optimal-control problem:

1. encode the problem: ``x = Enc((x_0 - c)/s, (x* - c)/s, (x* - x_0)/s)``, ``(batch, D)``;
2. decode initial controls from ``x`` (cycle 0);
3. for ``k = 1 .. H_cycles``: roll the current controls out through the differentiable plant
   and encode the whole trajectory error (:mod:`trc.models.feedback`); update the latent(s) with
   the shared recursion core (:mod:`trc.models.recursion`, single-latent or two-level as in Tiny
   Recursive Models, arXiv 2510.04871), injecting ``x`` + feedback + an embedding of the current
   controls; decode a residual ``delta`` from ``z_H``, add the learned linear
   iterative-learning-control correction ``L vec(e)`` of the error trajectory ``e``
   (:class:`~trc.models.feedback.FeedbackGain`), and accumulate: ``a_k = a_{k-1} + delta_k``;
4. optionally, in eval mode with a plant: the controls of a time-varying LQR closed loop
   around the predicted state trajectory replace the plan (``tracking``,
   :mod:`trc.models.tracking`), then Levenberg-Marquardt steps on the terminal error through
   the plant remove the plan's open-loop miss (``correction_steps``,
   :mod:`trc.models.correction`);
5. the controls are ``u = center + half_range * tanh(a)`` on bounded dimensions (one-sided
   bounds use a softplus, free dimensions the identity), so no output ever leaves the bounds;
   a plant whose control vector has a norm bound ``lo <= ||u|| <= hi``
   (:attr:`dynamics.Plant.control_norm_bounds`, the rocket's thrust) gets
   ``u = a / ||a|| * (lo + (hi - lo) tanh ||a||)`` instead.

The model keeps everything inference needs: sizes, bounds, ``dt``, the cost weights ``Q``,
``R``, ``Qf`` (buffers), the state normalisation and the problem's plant (a submodule whose
physical parameters are buffers, not trainable parameters).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from dynamics.errors import ConfigError, DimensionError, NonFiniteError
from dynamics.plant import Plant

from ..cost import fuel_cost, quadratic_cost
from ..evaluation import target_dims
from ..iosys import controller_iosys
from ..problem import Problem
from .config import TRCConfig
from .correction import terminal_correction
from .feedback import FeedbackGain, TrajectoryErrorEncoder, hold_after, trajectory_error
from .halting import HaltingHead
from .recursion import RecursionCore
from .tracking import tvlqr_tracking

__all__ = ["TRCOutput", "TinyRecursiveControl", "state_normalization"]

#: Normalised encoder inputs are clipped to this many state scales (guards against overflow on
#: absurd inputs; far outside any training distribution anyway).
_INPUT_CLIP = 100.0

# Kinds of control dimension (``_kind`` buffer).
_FREE, _BOX, _LOWER, _UPPER = 0, 1, 2, 3


class TRCOutput(NamedTuple):
    """Everything one forward pass computed (``return_all_iterations=True``).

    Attributes
    ----------
    controls : Tensor, shape ``(batch, horizon, control_dim)``
        The final controls.
    all_controls : Tensor, shape ``(cycles + 1, batch, horizon, control_dim)``
        Controls after every cycle, ``all_controls[0]`` the initial ones (deep supervision);
        then one more entry per inference-time stage that ran (tracking, terminal correction).
    all_costs : Tensor or None, shape ``(cycles + 1, batch)``
        Trajectory cost ``J`` of each entry of ``all_controls`` (the problem's convention,
        :mod:`trc.cost`); ``None`` without a plant or cost weights.
    all_states : Tensor or None, shape ``(cycles + 1, batch, horizon + 1, state_dim)``
        Rollouts of each entry of ``all_controls``; ``None`` without a plant.
    halt_logits : Tensor or None, shape ``(cycles, batch)``
        Halting logits after cycles ``0 .. cycles - 1`` (ACT only), for
        :func:`~trc.models.halting.halting_loss`.
    cycles : Tensor of int64, shape ``(batch,)``
        Refinement cycles each sample used (less than ``H_cycles`` where ACT halted it).
    predicted_states : Tensor or None, shape ``(batch, horizon + 1, state_dim)``
        The state head's trajectory, ``x_0`` first (``state_head`` only).
    """

    controls: torch.Tensor
    all_controls: torch.Tensor
    all_costs: Optional[torch.Tensor]
    all_states: Optional[torch.Tensor]
    halt_logits: Optional[torch.Tensor]
    cycles: torch.Tensor
    predicted_states: Optional[torch.Tensor] = None


def state_normalization(problem) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``c`` and scale ``s`` (each ``(state_dim,)``) from a problem's sampling boxes.

    The union of the initial-state and target boxes is mapped to ``[-1, 1]``:
    ``c = (hi + lo) / 2``, ``s = (hi - lo) / 2``. A dimension with no spread (all boxes fixed on
    it) gets ``s = max(|c|, 1)``.
    """
    lo = np.minimum(problem.initial_state.low, problem.target_state.low)
    hi = np.maximum(problem.initial_state.high, problem.target_state.high)
    center, half = (hi + lo) / 2, (hi - lo) / 2
    scale = np.where(half > 0, half, np.maximum(np.abs(center), 1.0))
    return center, scale


def _vector(value, dim: int, default: float, what: str) -> torch.Tensor:
    if value is None:
        return torch.full((dim,), float(default), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=float))
    t = t.flatten()
    if t.numel() == 1:
        t = t.expand(dim).clone()
    if t.shape != (dim,):
        raise DimensionError(f"{what} has {t.numel()} entries; expected 1 or {dim}")
    if torch.isnan(t).any():
        raise NonFiniteError(f"{what} contains NaN: {t.tolist()}")
    return t


def _weight(value, dim: int, what: str) -> torch.Tensor | None:
    if value is None:
        return None
    a = torch.as_tensor(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=float))
    if a.ndim == 0:
        a = a * torch.eye(dim, dtype=torch.float64)
    elif a.ndim == 1:
        a = torch.diag(a)
    if a.shape != (dim, dim):
        raise DimensionError(f"{what} has shape {tuple(a.shape)}; expected ({dim}, {dim})")
    if not torch.isfinite(a).all():
        raise NonFiniteError(f"{what} must be finite")
    return a


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class TinyRecursiveControl(nn.Module):
    """Tiny Recursive Control network (see the module documentation for the algorithm).

    Build it from a problem with :meth:`from_problem` (the usual way), from a preset
    (:mod:`trc.models.presets`), or directly from a config with the sizes filled in.

    Parameters
    ----------
    config : TRCConfig
        Hyper-parameters; ``state_dim``, ``control_dim`` and ``horizon`` must be set.
    u_min, u_max : scalar or sequence, optional
        Control bounds per dimension (``±inf`` for none); default the plant's, else unbounded.
    state_center, state_scale : scalar or sequence, optional
        State normalisation ``(x - c) / s`` of the encoder and the feedback; default 0 and 1.
    control_scale : scalar or sequence, optional
        Scale of unbounded and one-sided control dimensions (``u = scale * a``), default 1.
    dt : float, optional
        Sample time in seconds for the cost; default the plant's.
    Q, R, Qf : scalar, diagonal or matrix, optional
        Cost weights (``J`` convention of :mod:`trc.cost`); without them ``all_costs`` is None.
    cost : {"quadratic", "fuel"}
        Cost used for ``all_costs``.
    plant : dynamics.Plant, optional
        The plant rolled out for the trajectory-error feedback and the costs.

    Raises
    ------
    ConfigError
        If the config lacks the sizes or the cost kind is unknown.
    DimensionError
        If a bound, scale, weight or the plant does not match the sizes.
    NonFiniteError
        On NaN bounds or non-finite weights/scales.

    References
    ----------
    A. Jolicoeur-Martineau, "Less is More: Recursive Reasoning with Tiny Networks",
    arXiv:2510.04871, 2025 (recursion, deep supervision, 1-step gradient, halting).
    D. A. Bristow, M. Tharayil, A. G. Alleyne, "A survey of iterative learning control",
    IEEE Control Systems 26(3), 2006, 96-114 (the trajectory-error correction law).

    Examples
    --------
    >>> from trc import Problem
    >>> from trc.models import TinyRecursiveControl, TRCConfig
    >>> model = TinyRecursiveControl.from_problem(problem, TRCConfig(H_cycles=3))  # doctest: +SKIP
    >>> u = model(x0, x_target)              # (batch, horizon, control_dim)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: TRCConfig,
        *,
        u_min=None,
        u_max=None,
        state_center=None,
        state_scale=None,
        control_scale=None,
        dt: float | None = None,
        Q=None,
        R=None,
        Qf=None,
        cost: str = "quadratic",
        plant: Plant | None = None,
    ):
        super().__init__()
        if isinstance(config, dict):
            config = TRCConfig.from_dict(config)
        if not isinstance(config, TRCConfig):
            raise ConfigError(f"config must be a TRCConfig or a mapping, got {type(config).__name__}")
        missing = [k for k in ("state_dim", "control_dim", "horizon") if getattr(config, k) is None]
        if missing:
            raise ConfigError(f"model config needs {missing}; use TinyRecursiveControl.from_problem or set them")
        if cost not in ("quadratic", "fuel"):
            raise ConfigError(f"cost must be 'quadratic' or 'fuel', got {cost!r}")
        self.config = config
        n, m, N, D, H = config.state_dim, config.control_dim, config.horizon, config.latent_dim, config.hidden_dim
        self.state_dim, self.control_dim, self.horizon = n, m, N

        # ---- plant, bounds, normalisation, cost
        if plant is not None:
            if not isinstance(plant, Plant):
                raise ConfigError(f"plant must be a dynamics.Plant, got {type(plant).__name__}")
            self._check_plant(plant)
            u_min = plant.u_min if u_min is None else u_min
            u_max = plant.u_max if u_max is None else u_max
            dt = plant.dt if dt is None else dt
        self.plant = plant
        self.dt = None if dt is None else float(dt)
        self.cost_kind = cost
        lo = _vector(u_min, m, -math.inf, "u_min")
        hi = _vector(u_max, m, math.inf, "u_max")
        if (lo > hi).any():
            raise ConfigError(f"u_min {lo.tolist()} exceeds u_max {hi.tolist()}")
        kind = torch.full((m,), _FREE, dtype=torch.long)
        fin_lo, fin_hi = torch.isfinite(lo), torch.isfinite(hi)
        kind[fin_lo & fin_hi] = _BOX
        kind[fin_lo & ~fin_hi] = _LOWER
        kind[~fin_lo & fin_hi] = _UPPER
        box = kind == _BOX
        self._all_box = bool(box.all())  # fast path of squash(): every dimension boxed
        norm = None if plant is None else plant.control_norm_bounds
        self._norm_bounds = None if norm is None else (float(norm[0]), float(norm[1]))
        self.register_buffer("u_min", lo.float())
        self.register_buffer("u_max", hi.float())
        self.register_buffer("_kind", kind)
        self.register_buffer("_u_center", torch.where(box, (lo + hi) / 2, 0.0).float())
        self.register_buffer("_u_half", torch.where(box, (hi - lo) / 2, 1.0).float())
        self.register_buffer("_u_lo", torch.where(fin_lo, lo, 0.0).float())
        self.register_buffer("_u_hi", torch.where(fin_hi, hi, 0.0).float())
        u_scale = _vector(control_scale, m, 1.0, "control_scale")
        center = _vector(state_center, n, 0.0, "state_center")
        scale = _vector(state_scale, n, 1.0, "state_scale")
        for t, what in ((u_scale, "control_scale"), (scale, "state_scale")):
            if not (torch.isfinite(t).all() and (t > 0).all()):
                raise NonFiniteError(f"{what} must be positive and finite, got {t.tolist()}")
        if not torch.isfinite(center).all():
            raise NonFiniteError(f"state_center must be finite, got {center.tolist()}")
        self.register_buffer("control_scale", u_scale.float())
        self.register_buffer("state_center", center.float())
        self.register_buffer("state_scale", scale.float())
        #: ``1 / state_scale`` repeated ``N`` times for :func:`trajectory_error`, or None (divide by
        #: the repeated scale); not checkpointed: :func:`trc.export.export_controller` sets it in
        #: the copy it compiles.
        self.register_buffer("inverse_scale_rows", None, persistent=False)
        for name, value, dim in (("Q", Q, n), ("R", R, m), ("Qf", Qf, n)):
            w = _weight(value, dim, name)
            self.register_buffer(name, None if w is None else w.float())
        if self.Qf is None and self.Q is not None:
            self.Qf = self.Q.clone()

        # ---- networks
        self.encoder = nn.Sequential(_mlp(3 * n + int(config.time_to_go), H, D), nn.RMSNorm(D))
        self.core = RecursionCore(D, H, config.num_layers, config.mode, config.L_cycles, config.dropout)
        self.init_head = _mlp(D, H, N * m)
        self.refine_head = _mlp(D, H, N * m)
        self.control_embed = nn.Linear(N * m, D)
        self.error_encoder = (
            TrajectoryErrorEncoder(
                n, N, D, config.feedback_channels, config.feedback_kernel, pool_first=config.feedback_pool_first
            )
            if config.feedback
            else None
        )
        self.feedback_gain = FeedbackGain(n, m, N) if config.feedback and config.feedback_gain else None
        self.halting = HaltingHead(D) if config.act else None
        self.state_head = _mlp(D, H, N * n) if config.state_head else None
        # Scale of the state head's outputs, x_k = x_0 + trajectory_scale * y_k (state units);
        # the trainer sets it to the spread of the optimal trajectories.
        self.register_buffer("trajectory_scale", scale.float().clone() if config.state_head else None)
        with torch.no_grad():  # small first refinements: the initial decode does the coarse work
            self.refine_head[-1].weight.mul_(0.1)
            self.refine_head[-1].bias.zero_()
        self.problem_dict: dict | None = None
        #: The problem the model was built for (:meth:`from_problem`), else None.
        self.problem = None
        #: Plain data recorded with the model file (training summary, data set); set by :func:`trc.load`.
        self.metadata: dict = {}
        #: State entries the target constrains (``None``: all); set by :meth:`from_problem`.
        self.terminal_dims: list[int] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_problem(cls, problem, config: TRCConfig | dict | None = None) -> "TinyRecursiveControl":
        """Build a model for ``problem`` carrying everything inference needs.

        Sizes, control bounds and ``dt`` come from the problem and its plant
        (``problem.make_plant()``, kept as the model's plant for feedback), ``Q``, ``R``,
        ``Qf`` from ``problem.weights``, and the state normalisation from the sampling boxes
        (:func:`state_normalization`).

        Parameters
        ----------
        problem : trc.Problem or dict
        config : TRCConfig or dict, optional
            Default ``TRCConfig()``. Sizes left ``None`` are filled in.

        Raises
        ------
        ConfigError
            If the config's sizes contradict the problem's.
        """
        if isinstance(problem, dict):
            problem = Problem.from_dict(problem)
        if config is None:
            config = TRCConfig()
        elif isinstance(config, dict):
            config = TRCConfig.from_dict(config)
        sizes = {"state_dim": problem.state_dim, "control_dim": problem.control_dim, "horizon": problem.horizon}
        wrong = {k: (getattr(config, k), v) for k, v in sizes.items() if getattr(config, k) not in (None, v)}
        if wrong:
            raise ConfigError(
                "model config sizes contradict the problem: "
                + ", ".join(f"{k}={got} but the problem has {exp}" for k, (got, exp) in wrong.items())
            )
        config = config.replace(**sizes)
        plant = problem.make_plant()
        center, scale = state_normalization(problem)
        Q, R, Qf = problem.weights
        model = cls(
            config, state_center=center, state_scale=scale, dt=problem.dt, Q=Q, R=R, Qf=Qf,
            cost=problem.cost, plant=plant,
        )
        model.problem_dict = problem.to_dict()
        model.problem = problem

        model.terminal_dims = target_dims(problem)
        return model

    def export_config(self) -> dict:
        """The model config as plain data, sizes filled in (rebuild with :meth:`from_config`)."""
        return self.config.to_dict()

    @classmethod
    def from_config(cls, model_config: dict | TRCConfig, problem=None) -> "TinyRecursiveControl":
        """Rebuild an (untrained) model from :meth:`export_config` output and the problem, if any.

        Load the weights afterwards with ``load_state_dict``; model files are read by :func:`trc.load`.
        """
        if problem is not None:
            return cls.from_problem(problem, model_config)
        return cls(model_config)

    def to_iosys(self, **kwargs):
        """This controller as a discrete-time python-control system (receding horizon).

        Inputs: the measured state and the target ``xd[i]``; output: the first control of the
        plan; sample time ``dt``. See :func:`trc.iosys.controller_iosys` for ``kwargs``.
        """
        return controller_iosys(self, **kwargs)

    # ------------------------------------------------------------------ description
    def get_parameter_count(self) -> int:
        """Number of trainable parameters (plant parameters are buffers and do not count)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_breakdown(self) -> dict[str, int]:
        """Trainable parameters per submodule, plus ``"total"``."""
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():
            key = name.split(".")[0]
            counts[key] = counts.get(key, 0) + p.numel()
        counts["total"] = sum(counts.values())
        return counts

    def extra_repr(self) -> str:
        return (
            f"state_dim={self.state_dim}, control_dim={self.control_dim}, horizon={self.horizon}, "
            f"mode={self.config.mode!r}, H_cycles={self.config.H_cycles}, L_cycles={self.config.L_cycles}"
        )

    # ------------------------------------------------------------------ controls
    def squash(self, a: torch.Tensor) -> torch.Tensor:
        """Controls from pre-activations ``a`` ``(..., control_dim)``, inside the bounds by construction.

        Box: ``c + h tanh(a)``; lower bound only: ``u_min + s softplus(a)``; upper only:
        ``u_max - s softplus(-a)``; free: ``s a``. With a norm bound ``(lo, hi)`` on the whole
        control vector: ``a / ||a|| * (lo + (hi - lo) tanh ||a||)`` (``a = 0`` points along the diagonal).
        With ``config.output_margin = delta > 0``, ``tanh`` is ``clip((1 + delta) tanh, -1, 1)``.
        """
        if self._norm_bounds is not None:
            lo, hi = self._norm_bounds
            r = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
            diagonal = torch.full_like(a, a.shape[-1] ** -0.5)  # the direction of a = 0
            direction = torch.where(r > 1e-12, a / r.clamp_min(1e-12), diagonal)
            return direction * (lo + (hi - lo) * self._tanh(r))
        kind = self._kind
        # The clamp only removes floating-point overshoot of the exact bound.
        box = torch.minimum(torch.maximum(self._u_center + self._u_half * self._tanh(a), self._u_lo), self._u_hi)
        if self._all_box:
            return box
        lower = self._u_lo + self.control_scale * nn.functional.softplus(a)
        upper = self._u_hi - self.control_scale * nn.functional.softplus(-a)
        free = self.control_scale * a
        u = torch.where(kind == _BOX, box, free)
        u = torch.where(kind == _LOWER, lower, u)
        return torch.where(kind == _UPPER, upper, u)

    def _tanh(self, a: torch.Tensor) -> torch.Tensor:
        """``tanh``, or ``clip((1 + delta) tanh(a), -1, 1)`` with an output margin ``delta``."""
        delta = self.config.output_margin
        return torch.tanh(a) if delta == 0 else ((1 + delta) * torch.tanh(a)).clamp(-1.0, 1.0)

    def unsquash(self, u: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``a`` with ``squash(a) == u`` (up to rounding) for controls ``u``
        ``(..., control_dim)`` within the bounds; a control on a bound maps to a finite ``a``
        one float epsilon inside it."""
        eps = torch.finfo(u.dtype).eps
        if self._norm_bounds is not None:
            lo, hi = self._norm_bounds
            mag = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
            scale = 1 + self.config.output_margin
            r = torch.atanh(((mag - lo) / (hi - lo) / scale).clamp(0.0, 1 - eps)).clamp_min(1e-3)
            return u / mag.clamp_min(1e-12) * r
        scale = 1 + self.config.output_margin
        box = torch.atanh(((u - self._u_center) / self._u_half / scale).clamp(-1 + eps, 1 - eps))
        if self._all_box:
            return box

        def inv_softplus(v):
            v = v.clamp_min(eps)
            return v + torch.log(-torch.expm1(-v))

        lower = inv_softplus((u - self._u_lo) / self.control_scale)
        upper = -inv_softplus((self._u_hi - u) / self.control_scale)
        a = torch.where(self._kind == _BOX, box, u / self.control_scale)
        a = torch.where(self._kind == _LOWER, lower, a)
        return torch.where(self._kind == _UPPER, upper, a)

    def _unit(self, a: torch.Tensor) -> torch.Tensor:
        """Normalised controls for the control embedding: ``tanh(a)`` on boxes, ``a`` elsewhere
        (``u / hi`` under a norm bound)."""
        if self._norm_bounds is not None:
            return self.squash(a) / self._norm_bounds[1]
        if self._all_box:
            return torch.tanh(a)
        return torch.where(self._kind == _BOX, torch.tanh(a), a)

    def cost(self, states: torch.Tensor, controls: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Trajectory cost ``J`` ``(batch,)`` of the model's problem, or None without weights.

        ``states`` ``(batch, N + 1, n)``, ``controls`` ``(batch, N, m)``, ``target`` ``(batch, n)``;
        see :func:`trc.cost.quadratic_cost` and :func:`trc.cost.fuel_cost`.
        """
        if self.cost_kind == "fuel":
            return fuel_cost(states)
        if self.Q is None or self.R is None or self.dt is None:
            return None
        return quadratic_cost(states, controls, target, self.Q, self.R, self.Qf, self.dt)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        current_state: torch.Tensor,
        target_state: torch.Tensor,
        plant: Plant | bool | None = None,
        return_all_iterations: bool = False,
        steps_to_go=None,
    ):
        """Controls that take ``current_state`` to ``target_state`` over the horizon.

        Parameters
        ----------
        current_state : Tensor, shape ``(batch, state_dim)``
            Initial states ``x_0`` (state units).
        target_state : Tensor, shape ``(batch, state_dim)``
            Targets ``x*``.
        plant : dynamics.Plant or bool, optional
            Plant for the trajectory-error feedback and the costs. ``None`` (or ``True``): the
            model's own plant, if any. ``False``: no plant (no feedback, no costs). A plant
            given here must have the model's sizes (e.g. the same system with other physical
            parameters).
        return_all_iterations : bool
            Return a :class:`TRCOutput` with every cycle's controls, rollouts and costs
            instead of the controls alone.
        steps_to_go : int or Tensor of shape ``(batch,)``, optional
            Steps left before the fixed final time, ``1 <= k <= N`` (models with
            ``config.time_to_go``; default ``N``). Only the first ``k`` controls are the plan;
            the rollouts hold the state of step ``k`` after it.

        Returns
        -------
        Tensor, shape ``(batch, horizon, control_dim)``, or TRCOutput
            Controls within ``[u_min, u_max]``.

        Raises
        ------
        DimensionError
            If a state is not ``(batch, state_dim)``, the batches differ, the plant's sizes
            differ from the model's, or ``steps_to_go`` is not a scalar or ``(batch,)``.
        NonFiniteError
            If a state contains NaN or infinity.
        ConfigError
            If ``steps_to_go`` is outside ``[1, N]`` or not whole, or is given to a model
            without ``config.time_to_go``.
        """
        cfg = self.config
        x0 = self._check_states(current_state, "current_state")
        xt = self._check_states(target_state, "target_state")
        if x0.shape[0] != xt.shape[0]:
            raise DimensionError(f"current_state has batch {x0.shape[0]} but target_state has batch {xt.shape[0]}")
        plant = self._resolve_plant(plant)
        use_feedback = self.error_encoder is not None and plant is not None
        record = return_all_iterations
        act_inference = self.halting is not None and not self.training
        B, N, m = x0.shape[0], self.horizon, self.control_dim
        k_to_go = self._check_steps_to_go(steps_to_go, B)

        c, s = self.state_center, self.state_scale
        parts = [(x0 - c) / s, (xt - c) / s, (xt - x0) / s]
        if k_to_go is not None:
            parts.append((k_to_go.to(x0.dtype) / N).unsqueeze(-1))
        feats = torch.cat(parts, dim=-1).clamp(-_INPUT_CLIP, _INPUT_CLIP)
        x = self.encoder(feats)
        state = self.core.init_state(x)
        a = self.init_head(x).view(B, N, m)
        u = self.squash(a)

        halted = torch.zeros(B, dtype=torch.bool, device=x.device)
        cycles = torch.zeros(B, dtype=torch.long, device=x.device)
        all_controls, all_states, halt_logits = [u], [], []
        for k in range(1, cfg.H_cycles + 1):
            truncated = cfg.gradient_last_cycle_only and k < cfg.H_cycles
            with torch.no_grad() if truncated else contextlib.nullcontext():
                fb = correction = None
                if use_feedback:
                    traj = plant.rollout(x0, u.detach() if cfg.detach_feedback else u)
                    if k_to_go is not None:
                        traj = hold_after(traj, k_to_go)
                    errors = trajectory_error(traj, xt, s, self.inverse_scale_rows)
                    fb = self.error_encoder(errors)
                    if self.feedback_gain is not None:
                        correction = self.feedback_gain(errors)
                    if record:
                        all_states.append(traj)
            if self.halting is not None:
                # Outside no_grad: the head's weights learn from every cycle's (constant) inputs.
                logit = self.halting(self.core.output(state), fb)
                halt_logits.append(logit)
                if act_inference:
                    halted = halted | (logit > 0)
                    if bool(halted.all()):
                        break
            with torch.no_grad() if truncated else contextlib.nullcontext():
                extra = self.control_embed(self._unit(a).flatten(1))
                if fb is not None:
                    extra = extra + fb
                state = self.core.step(state, x, extra)
                delta = self.refine_head(self.core.output(state)).view(B, N, m)
                if correction is not None:
                    delta = delta + correction
            if act_inference:
                active = ~halted
                a = torch.where(active.view(B, 1, 1), a + delta, a)
                cycles = cycles + active.long()
            else:
                a = a + delta
                cycles = cycles + 1
            if record or use_feedback:
                u = self.squash(a)
                if record:
                    all_controls.append(u)

        x_hat = None
        if self.state_head is not None:
            y = self.state_head(self.core.output(state)).view(B, N, self.state_dim)
            x_hat = torch.cat((x0.unsqueeze(1), x0.unsqueeze(1) + self.trajectory_scale * y), 1)
        if plant is not None and not self.training:
            for a in self._inference_stages(plant, x0, xt, a, x_hat):
                u = self.squash(a)
                if record:
                    all_controls.append(u)
        if not record:
            return self.squash(a)
        all_states_t = all_costs = None
        if plant is not None:
            if not use_feedback:  # roll every cycle's controls out here in one batched call
                C = len(all_controls)
                X = plant.rollout(x0.repeat(C, 1), torch.cat(all_controls))
                if k_to_go is not None:
                    X = hold_after(X, k_to_go.repeat(C))
                all_states = list(X.view(C, B, N + 1, self.state_dim))
            while len(all_states) < len(all_controls):  # the last controls were not rolled out yet
                X = plant.rollout(x0, all_controls[len(all_states)])
                all_states.append(X if k_to_go is None else hold_after(X, k_to_go))
            all_states_t = torch.stack(all_states)
            C = all_states_t.shape[0]
            costs = self.cost(
                all_states_t.flatten(0, 1), torch.stack(all_controls).flatten(0, 1), xt.repeat(C, 1)
            )
            all_costs = None if costs is None else costs.view(C, B)
        return TRCOutput(
            controls=u,
            all_controls=torch.stack(all_controls),
            all_costs=all_costs,
            all_states=all_states_t,
            halt_logits=torch.stack(halt_logits) if halt_logits else None,
            cycles=cycles,
            predicted_states=x_hat,
        )

    # ------------------------------------------------------------------ helpers
    def _inference_stages(self, plant, x0, xt, a, x_hat):
        """Yield the pre-activations after each inference-time stage that is switched on."""
        cfg = self.config
        if cfg.tracking:
            n, m = self.state_dim, self.control_dim
            Q = torch.eye(n, dtype=x0.dtype, device=x0.device) if self.Q is None else self.Q
            R = torch.eye(m, dtype=x0.dtype, device=x0.device) if self.R is None else self.R
            Qf = Q if self.Qf is None else self.Qf
            a = self.unsquash(tvlqr_tracking(plant, x0, x_hat.detach(), self.squash(a).detach(), Q, R, Qf))
            yield a
        if cfg.correction_steps > 0:
            yield terminal_correction(
                plant, x0, xt, a, self.squash, self.state_scale, self.terminal_dims, cfg.correction_steps,
                cfg.correction_damping, cfg.correction_tol,
            )

    def _check_states(self, t, what: str) -> torch.Tensor:
        ref = self.state_scale
        if not torch.is_tensor(t):
            t = torch.as_tensor(np.asarray(t, dtype=float))
        if t.ndim != 2 or t.shape[1] != self.state_dim or t.shape[0] == 0:
            raise DimensionError(
                f"{what} has shape {tuple(t.shape)}; expected (batch >= 1, state_dim={self.state_dim})"
            )
        if not torch.isfinite(t).all():
            raise NonFiniteError(f"{what} contains NaN or infinity")
        return t.to(dtype=ref.dtype, device=ref.device)

    def _check_steps_to_go(self, steps_to_go, batch: int) -> torch.Tensor | None:
        """``steps_to_go`` as a long tensor ``(batch,)`` (None for models without the input)."""
        if not self.config.time_to_go:
            if steps_to_go is not None:
                raise ConfigError("this model plans a fixed horizon (model.time_to_go is false); it takes no "
                                  "steps_to_go")
            return None
        ref = self.state_scale.device
        if steps_to_go is None:
            return torch.full((batch,), self.horizon, dtype=torch.long, device=ref)
        k = torch.as_tensor(steps_to_go, device=ref)
        if k.ndim == 0:
            k = k.expand(batch)
        if k.shape != (batch,):
            raise DimensionError(f"steps_to_go has shape {tuple(k.shape)}; expected () or ({batch},)")
        if not bool(((k >= 1) & (k <= self.horizon) & (k == torch.round(k))).all()):
            raise ConfigError(f"steps_to_go must be whole numbers in [1, {self.horizon}], got {k.tolist()}")
        return k.long()

    def _check_plant(self, plant: Plant) -> None:
        if plant.state_dim != self.config.state_dim or plant.control_dim != self.config.control_dim:
            raise DimensionError(
                f"plant {plant.name!r} has state_dim={plant.state_dim}, control_dim={plant.control_dim}; "
                f"the model expects state_dim={self.config.state_dim}, control_dim={self.config.control_dim}"
            )

    def _resolve_plant(self, plant) -> Plant | None:
        if plant is False:
            return None
        if plant is None or plant is True:
            return self.plant
        if not isinstance(plant, Plant):
            raise TypeError(f"plant must be a dynamics.Plant, None, True or False; got {type(plant).__name__}")
        self._check_plant(plant)
        return plant
