"""Training losses of TRC: imitation, trajectory cost, terminal error, halting; deep supervision.

For a batch of ``B`` instances with optimal controls ``u*`` ``(B, N, m)`` and optimal costs
``J*`` ``(B,)``, and the controls ``u^(k)`` ``(B, N, m)`` the model proposes after each
refinement cycle ``k = 1..K``, the loss is

.. math::

    L = \\sum_{k=0}^{K} w_k \\big[ \\lambda_{im} L_{im}(u^{(k)}) + \\lambda_J L_J(u^{(k)})
        + \\lambda_T L_T(u^{(k)}) \\big] + \\lambda_{halt} L_{halt}

* imitation ``L_im = mean_{j,i}(w_j ((u_ji - u*_ji) / s_i)^2)``, ``s_u`` the control half-range and
  ``w_j = 1`` except, with ``first_controls: {k, weight}``, ``w_j = weight`` on the first ``k``
  steps (the controls a receding-horizon controller applies;
  :class:`trc.training.config.FirstControlsConfig`);
* cost ``L_J = mean(J(u) / max(J*, c) - 1)`` with ``J(u)`` the :mod:`trc.cost` cost of the
  rollout of ``u`` through the differentiable plant (same cost, same ``dt`` as ``J*``) and
  ``c`` a floor (``cost_floor`` times the median ``J*`` of the training set);
* terminal ``L_T = mean(||(x_N - x*) / s_x||^2)``, ``x_N`` the end of that rollout, over the
  state entries the target constrains (:func:`trc.evaluation.target_dims`);
* halting: :func:`trc.models.halting_loss` (binary cross-entropy against "the next cycle does
  not pay");
* states ``L_x = mean(((x_hat - x*_traj) / s_traj)^2)`` between the state head's trajectory and
  the optimal one, ``s_traj`` the spread of the optimal trajectories (:func:`state_scale`).

The weights ``w_k`` of the ``K + 1`` outputs (initial decode and ``K`` refinement cycles;
deep supervision, TRM arXiv:2510.04871 Sec. 2.4) come from
:func:`trc.training.config.cycle_weights`. The rollouts are the ones the model made for its
trajectory-error feedback when they carry the gradient; otherwise all supervised outputs are
rolled out in one batched call of shape ``(K' * B, N, m)``.
"""

from __future__ import annotations

from typing import Mapping

import torch

from dynamics.errors import ConfigError, DimensionError

from ..evaluation import target_dims
from ..models.feedback import hold_after
from ..models.halting import halting_loss
from .config import FirstControlsConfig, LossConfig, cycle_weights

__all__ = ["imitation_loss", "first_control_weights", "cost_ratio_loss", "terminal_loss", "control_scale",
           "state_scale", "TRCLoss"]


def first_control_weights(config: FirstControlsConfig, horizon: int) -> torch.Tensor:
    """Per-step imitation weights ``w_j``: ``config.weight`` for ``j < config.k``, else 1.

    Parameters
    ----------
    config : FirstControlsConfig
    horizon : int
        ``N``, the number of controls of a plan.

    Returns
    -------
    Tensor, shape ``(N,)``

    Raises
    ------
    ConfigError
        If ``config.k`` exceeds ``N``.
    """
    if config.k > horizon:
        raise ConfigError(f"training.loss.first_controls.k must be at most the horizon N = {horizon}, got {config.k}")
    w = torch.ones(horizon)
    w[: config.k] = config.weight
    return w


def imitation_loss(controls: torch.Tensor, optimal: torch.Tensor, scale: torch.Tensor,
                   step_weights: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared control error in units of the control scale, optionally weighted per step.

    Parameters
    ----------
    controls, optimal : Tensor, shape ``(..., N, m)``
    scale : Tensor, shape ``(m,)``
        Positive control scale ``s_u`` (control units).
    step_weights : Tensor, shape ``(N,)``, optional
        Weight ``w_k`` of the squared error of step ``k`` (:func:`first_control_weights`);
        ``None`` weights every step 1.
    mask : Tensor, shape ``(B, N)``, optional
        Which steps count (the plan of a shrinking horizon: ``k < steps_to_go``); the mean is
        then over each sample's counted steps (``controls`` ``(..., B, N, m)``).

    Returns
    -------
    Tensor, shape ``controls.shape[:-2]``
        ``mean_{k, j}(w_k ((u_kj - u*_kj) / s_j)^2)`` per sample (divided by ``N m``, or by the
        counted steps times ``m``).

    Raises
    ------
    DimensionError
        If the last two axes of ``controls`` and ``optimal`` differ, or ``step_weights`` does
        not have ``N`` entries.
    """
    if controls.shape[-2:] != optimal.shape[-2:]:
        raise DimensionError(f"controls {tuple(controls.shape)} and optimal controls {tuple(optimal.shape)} differ")
    err = ((controls - optimal) / scale) ** 2
    if step_weights is not None:
        if step_weights.shape != (controls.shape[-2],):
            raise DimensionError(f"step_weights has shape {tuple(step_weights.shape)}; expected "
                                 f"({controls.shape[-2]},), one weight per control step")
        err = err * step_weights.to(err)[:, None]
    if mask is None:
        return err.mean(dim=(-2, -1))
    mask = mask.to(err)
    return (err.sum(-1) * mask).sum(-1) / (mask.sum(-1).clamp(min=1) * err.shape[-1])


def cost_ratio_loss(J: torch.Tensor, J_opt: torch.Tensor, floor: float) -> torch.Tensor:
    """Relative excess cost ``J / max(J*, floor) - 1`` per sample (shape of ``J``)."""
    return J / J_opt.clamp_min(floor) - 1.0


def terminal_loss(x_N: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``||(x_N - x*) / s_x||^2`` per sample; ``x_N, target`` ``(..., n)``, ``scale`` ``(n,)``."""
    return (((x_N - target) / scale) ** 2).sum(-1)


def control_scale(plant, optimal_controls: torch.Tensor | None = None) -> torch.Tensor:
    """Control scale ``s_u`` ``(m,)``: half the range ``(u_max - u_min) / 2`` where both bounds
    are finite, else the standard deviation of the optimal controls (1 when those are missing)."""
    half = (plant.u_max - plant.u_min).double() / 2
    if optimal_controls is not None and optimal_controls.numel():
        fallback = optimal_controls.reshape(-1, half.numel()).double().std(0, unbiased=False)
    else:
        fallback = torch.ones_like(half)
    s = torch.where(torch.isfinite(half) & (half > 0), half, fallback)
    return s.clamp_min(1e-6).float()


def state_scale(states: torch.Tensor) -> torch.Tensor:
    """State scale ``s_x`` ``(n,)``: the standard deviation of the optimal trajectories
    ``(M, N + 1, n)`` of the training set, floored at ``1e-3`` of the largest one."""
    s = states.reshape(-1, states.shape[-1]).double().std(0, unbiased=False)
    return s.clamp_min(max(float(s.max()) * 1e-3, 1e-9)).float()


def _field(output, name: str):
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


class TRCLoss:
    """The training objective of the module documentation, for one problem.

    Parameters
    ----------
    problem : trc.problem.Problem
    plant : dynamics.Plant
        Differentiable plant used for the rollouts (the model's own plant).
    config : LossConfig
        Loss weights.
    num_cycles : int
        ``K``, the model's ``H_cycles``; the loss supervises its ``K + 1`` outputs.
    u_scale : Tensor, shape ``(m,)``
        Control scale, see :func:`control_scale`.
    x_scale : Tensor, shape ``(n,)``
        State scale, see :func:`state_scale`.
    cost_floor : float
        Absolute floor ``c`` of ``J*`` in the cost term.
    halt_threshold : float
        Threshold of the halting targets (``model.halt_threshold``).
    reuse_rollouts : bool
        Use the rollouts the model made for its feedback (``TRCOutput.all_states``) instead of
        rolling the controls out again. Only valid when those rollouts carry the gradient with
        respect to the controls (the model's ``detach_feedback`` is false).
    traj_scale : Tensor, shape ``(n,)``, optional
        Scale ``s_traj`` of the states term (default ``x_scale``).

    Raises
    ------
    ConfigError
        If ``config.first_controls.k`` exceeds the problem's horizon ``N``.
    """

    def __init__(self, problem, plant, config: LossConfig, num_cycles: int, u_scale: torch.Tensor,
                 x_scale: torch.Tensor, cost_floor: float, halt_threshold: float = 0.01,
                 reuse_rollouts: bool = True, traj_scale: torch.Tensor | None = None):
        self.problem, self.plant, self.config = problem, plant, config
        self.num_cycles = num_cycles
        self.weights = cycle_weights(config.cycle_weights, num_cycles)
        self.u_scale, self.x_scale = u_scale, x_scale
        self.traj_scale = x_scale if traj_scale is None else traj_scale
        self.cost_floor = float(cost_floor)
        self.halt_threshold = float(halt_threshold)
        self.reuse_rollouts = reuse_rollouts

        self.dims = target_dims(problem)
        self.step_weights = (None if config.first_controls is None
                             else first_control_weights(config.first_controls, int(problem.horizon)))
        self.needs_rollout = config.cost > 0 or config.terminal > 0

    def __call__(self, output, x0: torch.Tensor, target: torch.Tensor, u_opt: torch.Tensor,
                 J_opt: torch.Tensor, x_opt: torch.Tensor | None = None,
                 steps_to_go: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one forward pass ``model(x0, target, return_all_iterations=True)``.

        Parameters
        ----------
        output : TRCOutput
            With ``all_controls`` ``(K + 1, B, N, m)`` and, when the cost or terminal term is
            used, optionally ``all_states`` ``(K + 1, B, N + 1, n)`` (rolled out again
            otherwise); for the halting term ``halt_logits`` and ``all_costs``.
        x0, target : Tensor, shape ``(B, n)``
        u_opt : Tensor, shape ``(B, N, m)``
        J_opt : Tensor, shape ``(B,)``
        x_opt : Tensor, shape ``(B, N + 1, n)``, optional
            Optimal trajectories; needed by the states term.
        steps_to_go : Tensor, shape ``(B,)``, optional
            Steps left of each sample's shrinking horizon (a model with ``time_to_go``): the
            imitation counts the first ``k`` controls, the rollouts hold ``x_k`` after step ``k``.

        Returns
        -------
        loss : Tensor, scalar
        parts : dict of str to float
            The terms of the final output before their ``training.loss`` weights
            (``imitation``, with its per-step weights ``w_j``; ``cost_ratio``, ``terminal``),
            ``halting`` when used, and the total ``loss``.

        Raises
        ------
        DimensionError
            If ``all_controls`` is missing or has the wrong shape.
        ConfigError
            If the halting weight is positive but the model has no halting head, or the states
            weight is positive but the model has no state head or ``x_opt`` is missing.
        """
        cfg = self.config
        all_u = _field(output, "all_controls")
        if all_u is None:
            raise DimensionError("the model output has no all_controls; call it with return_all_iterations=True")
        C = self.num_cycles + 1
        if all_u.ndim != 4 or all_u.shape[0] != C or all_u.shape[1:] != u_opt.shape:
            raise DimensionError(
                f"all_controls has shape {tuple(all_u.shape)}; expected ({C}, {', '.join(map(str, u_opt.shape))})"
            )
        w = torch.tensor(self.weights, dtype=all_u.dtype, device=all_u.device)
        if cfg.rollout_cycles == "last":
            active, w_roll = [C - 1], all_u.new_ones(1)
        else:
            active = [k for k, wk in enumerate(self.weights) if wk > 0]
            w_roll = w[active]
        B = x0.shape[0]
        parts: dict[str, torch.Tensor] = {}
        total = all_u.new_zeros(())

        mask = None
        if steps_to_go is not None:
            steps_to_go = torch.round(steps_to_go).long()
            mask = torch.arange(u_opt.shape[1], device=u_opt.device)[None] < steps_to_go[:, None]
        im = imitation_loss(all_u, u_opt.unsqueeze(0), self.u_scale, self.step_weights, mask).mean(1)  # (C,)
        parts["imitation"] = im[-1]
        if cfg.imitation > 0:
            total = total + cfg.imitation * (w * im).sum()

        if self.needs_rollout:
            states = _field(output, "all_states")
            idx = torch.tensor(active, device=all_u.device)
            u_act = all_u[idx]  # (A, B, N, m): only the supervised outputs
            A = len(active)
            # The model's rollouts carry the gradient when its feedback is not detached; its final
            # rollout (of the returned controls) always does.
            reuse = self.reuse_rollouts or active == [C - 1]
            if reuse and states is not None and states.shape[:2] == (C, B):
                x_act = states[idx].flatten(0, 1)
            else:
                x_act = self.plant.rollout(x0.repeat(A, 1), u_act.flatten(0, 1))
                if steps_to_go is not None:
                    x_act = hold_after(x_act, steps_to_go.repeat(A))
            tgt = target.repeat(A, 1)
            J = self.problem.cost_of(x_act, u_act.flatten(0, 1), tgt).reshape(A, B)
            ratio = cost_ratio_loss(J, J_opt.unsqueeze(0), self.cost_floor).mean(1)
            xN, xs = x_act[:, -1], self.x_scale
            if self.dims is not None:  # only the constrained entries of the target (rocket: not the mass)
                xN, tgt, xs = xN[:, self.dims], tgt[:, self.dims], xs[self.dims]
            term = terminal_loss(xN, tgt, xs).reshape(A, B).mean(1)
            parts["cost_ratio"], parts["terminal"] = ratio[-1], term[-1]
            if cfg.cost > 0:
                total = total + cfg.cost * (w_roll * ratio).sum()
            if cfg.terminal > 0:
                total = total + cfg.terminal * (w_roll * term).sum()

        if cfg.states > 0:
            x_hat = _field(output, "predicted_states")
            if x_hat is None or x_opt is None:
                raise ConfigError(
                    "training.loss.states > 0 needs a model with a state head (model.state_head: true) and the "
                    "optimal trajectories"
                )
            st = (((x_hat[:, 1:] - x_opt[:, 1:]) / self.traj_scale) ** 2).mean()
            parts["states"] = st
            total = total + cfg.states * st

        if cfg.halting > 0:
            logits, costs = _field(output, "halt_logits"), _field(output, "all_costs")
            if logits is None or costs is None:
                raise ConfigError(
                    "training.loss.halting > 0 needs a model with a halting head (model.act: true) and a "
                    "plant; the model output has no halt_logits or all_costs"
                )

            h = halting_loss(logits, costs, self.halt_threshold)
            parts["halting"] = h
            total = total + cfg.halting * h

        parts["loss"] = total
        return total, {k: float(v.detach()) for k, v in parts.items()}
