"""Configuration of the Tiny Recursive Control network: the YAML ``model:`` section.

::

    model:
      mode: two_level          # or single_latent
      latent_dim: 64
      hidden_dim: 256
      num_layers: 2
      H_cycles: 3              # outer refinement cycles K
      L_cycles: 4              # inner reasoning steps n per cycle
      feedback: true           # roll controls out through the plant every cycle
      act: false               # adaptive halting head

Parsed with :func:`trc.config.from_dict` (unknown keys raise
:class:`~dynamics.errors.ConfigError`); ``state_dim``, ``control_dim`` and ``horizon`` are
filled in from the problem by :meth:`~trc.models.TinyRecursiveControl.from_problem`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from dynamics.errors import ConfigError

from ..config import check_bool, check_int, check_real, from_dict
from .recursion import RecursionConfig

__all__ = ["TRCConfig"]


@dataclass
class TRCConfig(RecursionConfig):
    """Hyper-parameters of :class:`~trc.models.TinyRecursiveControl`.

    Attributes
    ----------
    mode : {"two_level", "single_latent"}
        Recursion scheme of the shared core (:class:`~trc.models.recursion.RecursionCore`).
    latent_dim : int
        Width ``D`` of the latents ``z_H``, ``z_L`` (or ``z``).
    hidden_dim : int
        Hidden width of the shared network's blocks, the encoder and the decoders.
    num_layers : int
        Blocks in the shared network ``f``.
    H_cycles : int
        Outer refinement cycles ``K``: each updates the latent and refines the controls once.
    L_cycles : int
        Inner reasoning steps ``n`` per cycle (``z_L`` updates in two-level mode).
    feedback : bool
        Encode the trajectory error of the current controls, rolled out through the plant,
        at every cycle. Used whenever a plant is available (the model's own, or one passed to
        ``forward``); ``plant=False`` in ``forward`` disables it for one call.
    feedback_channels : int
        Channels of the 1-D convolutions of the trajectory-error encoder.
    feedback_kernel : int
        Odd kernel size (in time steps) of those convolutions.
    feedback_pool_first : bool
        Average the error sequence down to 16 time positions before the convolutions instead
        of after them: the convolutions then see a coarser error signal, but at a fraction of
        the cost on long horizons (N = 100: about 6x fewer encoder operations). The
        iterative-learning-control path (``feedback_gain``) still sees every time step.
    feedback_gain : bool
        Add a learned linear iterative-learning-control correction ``L vec(e)`` of the whole
        error trajectory to the controls' pre-activations every cycle
        (:class:`~trc.models.feedback.FeedbackGain`); needs ``feedback``.
    detach_feedback : bool
        Do not back-propagate through the plant rollouts of the feedback path (cheaper
        training; the feedback still shapes the output).
    gradient_last_cycle_only : bool
        Run all refinement cycles but the last under ``torch.no_grad`` (TRM's 1-step gradient,
        arXiv 2510.04871 Sec. 4.1). The initial controls keep their gradient through the
        residual sum.
    act : bool
        Build the adaptive-halting head; in eval mode samples stop refining once it says so.
    halt_threshold : float
        Training target of the halting head: halt when the next cycle lowers the cost by less
        than ``halt_threshold`` times the current cost.
    dropout : float
        Dropout in the shared network, in ``[0, 1)``.
    state_head : bool
        Also decode the predicted state trajectory ``x_1 .. x_N`` from the final ``z_H``
        (``TRCOutput.predicted_states``), trained by ``training.loss.states``.
    tracking : bool
        In eval mode with a plant, replace the plan by the controls of a time-varying LQR
        closed loop around the predicted trajectory, started at the true ``x_0``
        (:func:`~trc.models.tracking.tvlqr_tracking`), before the terminal correction; needs
        ``state_head``.
    correction_steps : int
        Levenberg-Marquardt steps on the terminal error through the plant after the last
        cycle, in eval mode with a plant (:func:`~trc.models.correction.terminal_correction`);
        0 (the default) turns the correction off. Training never runs it: the network learns
        the plan, the correction removes the plan's open-loop terminal miss.
    correction_damping : float
        Initial Levenberg-Marquardt damping of that correction (> 0).
    correction_tol : float
        The correction stops early once every sample's scaled terminal error
        ``||(x_N - x*) / s||`` (``s`` the state normalisation) is below this (> 0).
    output_margin : float
        ``delta >= 0``: bounded controls use ``clip((1 + delta) tanh(a), -1, 1)`` instead of
        ``tanh(a)`` (boxes; the magnitude under a norm bound likewise), so a control on its
        bound, where bang-bang optima put it (the rocket's fuel-optimal thrust is at its
        maximum half of the time), is reached at a finite pre-activation instead of only in the
        limit. ``0`` (default): plain ``tanh``.
    time_to_go : bool
        Take the number of steps to go ``k`` (``1 <= k <= N``) as an input, for problems with
        a fixed final time re-planned with the time remaining (shrinking horizon, as
        powered-descent guidance does: Açıkmeşe & Ploen 2007). The encoder sees ``k / N``; the
        plan's first ``k`` controls are the plan, the rest padding; the trajectory-error
        feedback holds the state of step ``k`` over the padding. Trained on every suffix of
        the optimal trajectories (the tail of an optimal plan is optimal for the time left:
        Bellman's principle; :func:`trc.data.suffix_split`). Excludes ``tracking`` and
        ``correction_steps`` (both act on step ``N``).
    state_dim, control_dim, horizon : int, optional
        Problem sizes ``n``, ``m``, ``N``; filled in from the problem when omitted, checked
        against it when given.

    Raises
    ------
    ConfigError
        On any invalid value (the message names it and the accepted range).
    """

    L_cycles: int = 4
    feedback: bool = True
    feedback_channels: int = 32
    feedback_kernel: int = 3
    feedback_pool_first: bool = False
    feedback_gain: bool = True
    detach_feedback: bool = False
    gradient_last_cycle_only: bool = False
    act: bool = False
    halt_threshold: float = 0.01
    dropout: float = 0.0
    state_head: bool = False
    tracking: bool = False
    correction_steps: int = 0
    correction_damping: float = 1e-3
    correction_tol: float = 1e-3
    output_margin: float = 0.0
    time_to_go: bool = False
    state_dim: Optional[int] = None
    control_dim: Optional[int] = None
    horizon: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("feedback_channels", "feedback_kernel"):
            check_int(getattr(self, name), f"model.{name}", 1)
        for name in ("state_dim", "control_dim", "horizon"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), f"model.{name}", 1)
        if self.feedback_kernel % 2 == 0:
            raise ConfigError(f"model.feedback_kernel must be odd, got {self.feedback_kernel}")
        for name in ("feedback", "feedback_pool_first", "feedback_gain", "detach_feedback", "gradient_last_cycle_only",
                     "act", "state_head", "tracking", "time_to_go"):
            check_bool(getattr(self, name), f"model.{name}")
        check_real(self.dropout, "model.dropout", 0.0, 1.0, high_open=True)
        if self.tracking and not self.state_head:
            raise ConfigError("model.tracking needs model.state_head: true (the trajectory it tracks)")
        check_int(self.correction_steps, "model.correction_steps", 0)
        for name in ("correction_damping", "correction_tol"):
            check_real(getattr(self, name), f"model.{name} (a positive number)", 0.0, low_open=True)
        check_real(self.halt_threshold, "model.halt_threshold", 0.0, 1.0, high_open=True)
        check_real(self.output_margin, "model.output_margin", 0.0)
        if self.time_to_go and (self.tracking or self.correction_steps > 0):
            raise ConfigError("model.time_to_go excludes model.tracking and model.correction_steps > 0: both act "
                              "on the state of step N, not of the steps to go")

    # ---------------------------------------------------------------- helpers
    def replace(self, **changes) -> "TRCConfig":
        """A copy with ``changes`` applied (validated; unknown names raise ConfigError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown model option(s) {unknown}; allowed: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain data (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> "TRCConfig":
        """Build from a mapping (the YAML ``model:`` section), rejecting unknown keys."""
        return from_dict(cls, data, "model")
