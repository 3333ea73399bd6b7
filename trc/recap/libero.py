"""RECAP on LIBERO: the three stages for the multi-task, language-conditioned visuomotor policy.

``python -m trc.train --config configs/recap_libero.yaml --stage demos|corrections|autonomous``
(problem kind ``recap_libero``). The stages follow :mod:`trc.recap.stages` (the cheap plants)
with LIBERO's simulator, scripted expert and visuomotor policy:

=============  ===============================================================================
episodes       one per (task, official init state); the held-out evaluation init states
               (``generator.eval_init_states``, default 0-19 of every task) are never used by
               a stage; demonstrations, corrections and autonomous rollouts draw from the others
demos          the scripted expert (:class:`trc.generators.libero_expert.PickPlaceExpert`) with
               DART action noise; labels are its noise-free actions
corrections    the previous stage's policy, guided with ``training.beta``; the expert takes over
               (for the rest of the episode, resuming from the scene:
               :meth:`~trc.generators.libero_expert.PickPlaceExpert.resume`) when the monitor
               fires: no progress for ``patience`` steps, the object dropped, or more than
               ``budget`` of the step budget used. Takeover frames are interventions
autonomous     the previous stage's policy alone, labelled by success only
value          :class:`LiberoValueNet`: the policy's encoders (cameras, instruction, arm state)
               and a 201-bin head, trained by cross-entropy on two-hot normalised returns
policy         :class:`ConditionedVisuomotor`: the recursive visuomotor policy
               (:class:`trc.models.visuomotor.VisuomotorPolicy`, TRC's recursion core) with the
               advantage indicator added to its fused input; indicator dropped 30 % of the time
               in training; classifier-free guidance ``a = a_null + beta (a_+ - a_null)`` on the
               normalised action chunk at inference
=============  ===============================================================================

Progress of the monitor: ``||p_grip - p_obj|| + ||p_obj - p_target||`` (m), privileged object
poses read from the simulator; a new best by ``min_improvement`` resets the patience counter. The
object counts as dropped when it was lifted more than 3 cm above its rest height and is back
within 1 cm of it, not held.

Every stage, in ``<out>/<stage>/``: ``rollouts/`` (one ``.npz`` per episode, written as each
finishes), ``value.pt``, ``policy.pt``, ``dataset/`` (LeRobot v3: both cameras as ``image``
columns, the arm state, actions, rewards, interventions, per-frame value, advantage and
indicator, per-episode stage, success and init state), ``evaluation/`` (one file per held-out
episode) and ``metrics.json``. A stage killed at any point (even ``kill -9``) resumes: finished
episodes are kept, training continues from ``checkpoint.pt``; a finished stage is not rerun.

References: Physical Intelligence, "pi*0.6: a VLA that learns from experience" (RECAP),
arXiv 2511.14759; Frans et al., "Diffusion guidance is a controllable policy improvement
operator" (CFGRL), arXiv 2505.23458; Laskey et al., DART, CoRL 2017.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from dynamics.errors import ConfigError, DatasetError
from dynamics.learned_arm import LearnedArmDynamics, arm_states, fit
from dynamics.libero import LiberoSimulator, proprio_from_raw, suite_tasks

from .. import lerobot
from ..backends import check_backend, map_unordered
from ..config import check_choice, check_int, check_real, check_seed, from_dict
from ..generators.libero_expert import PickPlaceExpert
from ..generators.libero_storage import LiberoProblem
from ..io import atomic_path, atomic_write_text
from ..models.visuomotor import CAMERAS, SentenceEncoder, VisuomotorConfig, VisuomotorOutput, VisuomotorPolicy
from ..training.bc import _cycle_weights, _resize, augment, bc_loss
from .advantage import label_advantages
from .envs import Monitor
from .guidance import INDICATOR_DROPOUT, NULL, POSITIVE, IndicatorEmbedding, drop_indicators, guide
from .stages import (STAGES, _check_run_folder, _fit, finished_stage, load_state, policy_data, trained,
                     wilson_interval)
from .value import (
    NUM_BINS,
    ValueHead,
    calibration,
    discounted_returns,
    normalize_returns,
    recap_rewards,
    two_hot,
    value_loss,
)

__all__ = ["RecapLiberoProblem", "RecapLiberoGenerator", "RecapLiberoTraining", "RecapLiberoRun",
           "ConditionedVisuomotor", "LiberoValueNet", "LiberoFrames", "run_episode", "build_frames",
           "run_libero_stage", "make_policy", "load_stage_policy", "evaluate_policy", "stage_episodes",
           "stage_training_data", "train_policy", "train_value", "predict_values", "IMAGE_COLUMNS"]

log = logging.getLogger("trc.recap")

#: LeRobot columns of the two cameras (LIBERO's agent view and eye-in-hand view).
IMAGE_COLUMNS = {"agentview_rgb": "observation.images.agentview", "eye_in_hand_rgb": "observation.images.wrist"}
#: Names of the arm state's entries (:func:`dynamics.learned_arm.arm_states`).
STATE_NAMES = ["ee_x", "ee_y", "ee_z", *(f"ee_rot6d_{i}" for i in range(6)), "finger_left", "finger_right",
               "ee_vx", "ee_vy", "ee_vz"]
#: The official init states of a LIBERO task (``init_states`` files hold 50).
NUM_INIT_STATES = 50
_PURPOSE = {"eval": 0, "demos": 1, "corrections": 2, "autonomous": 3, "train": 4}


# ---------------------------------------------------------------------------- configuration
@dataclass
class RecapLiberoProblem:
    """The ``problem:`` section (``kind: recap_libero``).

    Attributes
    ----------
    name : str
    base : dict
        The LIBERO problem (:class:`trc.generators.libero_storage.LiberoProblem` keys: ``suite``,
        ``tasks``, ``max_steps``, ``camera_size``, ``render``, ``assets``).
    c_fail : float, optional
        Failure cost in steps; default ``max_steps``.
    kind : "recap_libero"
    """

    name: str = "recap_libero"
    base: dict = field(default_factory=dict)
    c_fail: Optional[float] = None
    kind: str = "recap_libero"

    def __post_init__(self):
        if self.kind != "recap_libero":
            raise ConfigError(f"problem.kind must be 'recap_libero', got {self.kind!r}")
        if not isinstance(self.base, dict):
            raise ConfigError(f"problem.base must be a mapping (a LIBERO problem section), got {self.base!r}")
        self.inner = from_dict(LiberoProblem, {**self.base, "kind": "libero", "name": self.name}, "problem.base")
        if self.c_fail is None:
            self.c_fail = float(self.inner.max_steps)
        check_real(self.c_fail, "problem.c_fail", 0.0)

    @property
    def max_steps(self) -> int:
        """The step budget of an episode."""
        return int(self.inner.max_steps)

    def to_dict(self) -> dict:
        return asdict(self)


def _init_states(value, what: str) -> list[int]:
    """Sorted init-state indices of ``[[start, stop], ...]`` half-open ranges within ``0..49``."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{what} must be a non-empty list of [start, stop] ranges, got {value!r}")
    out = set()
    for r in value:
        if (not isinstance(r, (list, tuple)) or len(r) != 2 or
                not all(isinstance(v, int) and not isinstance(v, bool) for v in r) or
                not 0 <= r[0] < r[1] <= NUM_INIT_STATES):
            raise ConfigError(f"{what}: each range must be [start, stop] with 0 <= start < stop <= "
                              f"{NUM_INIT_STATES}, got {r!r}")
        out |= set(range(r[0], r[1]))
    return sorted(out)


@dataclass
class RecapLiberoGenerator:
    """The ``generator:`` section: which init states each stage uses, the demonstrator, the monitor.

    Attributes
    ----------
    seed : int
    eval_init_states, demo_init_states, correction_init_states, autonomous_init_states : list
        ``[[start, stop], ...]`` ranges of official init states (per task). The evaluation ones
        must be disjoint from every other.
    noise_std : float
        DART noise on the demonstrator's executed position and rotation actions.
    patience : int
        Monitor: steps without progress before the expert takes over.
    min_improvement : float
        Monitor: decrease of the progress measure (m) that counts as progress.
    budget : float
        Monitor: fraction of the step budget after which the expert takes over.
    action_steps : int, optional
        Actions of each predicted chunk executed before the policy is queried again; default
        half the chunk.
    calibration_episodes : int
        Held-out episodes per task recorded with images for the value's calibration.
    workers : int
        Rollout and evaluation processes (``--workers`` overrides).
    """

    seed: int = 0
    eval_init_states: list = field(default_factory=lambda: [[0, 20]])
    demo_init_states: list = field(default_factory=lambda: [[25, 45]])
    correction_init_states: list = field(default_factory=lambda: [[20, 25], [45, 50]])
    autonomous_init_states: list = field(default_factory=lambda: [[20, 50]])
    noise_std: float = 0.1
    patience: int = 40
    min_improvement: float = 0.005
    budget: float = 0.6
    action_steps: Optional[int] = None
    calibration_episodes: int = 2
    workers: int = 1

    def __post_init__(self):
        check_seed(self.seed)
        held_out = set(_init_states(self.eval_init_states, "generator.eval_init_states"))
        for stage in STAGES:
            key = {"demos": "demo_init_states", "corrections": "correction_init_states",
                   "autonomous": "autonomous_init_states"}[stage]
            overlap = held_out & set(_init_states(getattr(self, key), f"generator.{key}"))
            if overlap:
                raise ConfigError(f"generator.{key} uses the held-out evaluation init states {sorted(overlap)}")
        check_real(self.noise_std, "generator.noise_std", 0.0)
        check_int(self.patience, "generator.patience", 1)
        check_real(self.min_improvement, "generator.min_improvement", 0.0)
        check_real(self.budget, "generator.budget", 0.0, 1.0, low_open=True)
        if self.action_steps is not None:
            check_int(self.action_steps, "generator.action_steps", 1)
        check_int(self.calibration_episodes, "generator.calibration_episodes", 0)
        check_int(self.workers, "generator.workers", 1)

    def init_states(self, stage: str) -> list[int]:
        """Init-state indices of ``stage`` (``eval`` or one of :data:`STAGES`)."""
        key = {"eval": "eval_init_states", "demos": "demo_init_states", "corrections": "correction_init_states",
               "autonomous": "autonomous_init_states"}[stage]
        return _init_states(getattr(self, key), f"generator.{key}")


@dataclass
class RecapLiberoTraining:
    """The ``training:`` section (value, advantage labels and policy).

    Attributes
    ----------
    seed : int
    batch_size : int
    lr : float
        AdamW with cosine decay (:func:`trc.recap.stages._fit`).
    value_steps, policy_steps : int
        Gradient steps per stage.
    value_hidden : int
    gamma, lam : float
        Discount and GAE lambda.
    advantage : {"n_step", "gae"}
    n_step : int
        Steps of the n-step advantage (20 steps: 1 s of LIBERO's 20 Hz control).
    positive_fraction, indicator_dropout, beta : float
        RECAP's 30 % positive frames per task, 30 % null token, guidance at inference.
    awr_temperature, awr_max_weight : float
        The AWR ablation (:data:`trc.recap.stages.MODES`).
    finetune : bool
        Each stage continues from the previous stage's networks.
    mse_weight, l1_weight, cycle_weights, brightness, contrast, crop_pad
        Behaviour-cloning loss and augmentation (:class:`trc.training.bc.BCConfig`).
    arm_epochs, arm_hidden_dim : int
        The learned arm dynamics of the feedback (``model.feedback``), fitted in the demos stage.
    checkpoint_every, threads : int
    out : str, optional
        Run folder; default ``runs/<problem name>``.
    """

    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    value_steps: int = 2000
    policy_steps: int = 5000
    value_hidden: int = 256
    gamma: float = 1.0
    lam: float = 0.95
    advantage: str = "n_step"
    n_step: int = 20
    positive_fraction: float = 0.3
    indicator_dropout: float = INDICATOR_DROPOUT
    beta: float = 1.0
    awr_temperature: float = 0.05
    awr_max_weight: float = 20.0
    finetune: bool = True
    mse_weight: float = 0.7
    l1_weight: float = 0.3
    cycle_weights: str = "linear"
    brightness: float = 0.2
    contrast: float = 0.2
    crop_pad: int = 4
    arm_epochs: int = 20
    arm_hidden_dim: int = 256
    checkpoint_every: int = 200
    threads: int = 2
    out: Optional[str] = None

    def __post_init__(self):
        check_seed(self.seed, "training.seed")
        for key in ("batch_size", "value_steps", "policy_steps", "value_hidden", "n_step", "arm_epochs",
                    "arm_hidden_dim", "checkpoint_every", "threads"):
            check_int(getattr(self, key), f"training.{key}", 1)
        check_int(self.crop_pad, "training.crop_pad", 0)
        check_real(self.lr, "training.lr", 0.0, low_open=True)
        check_real(self.gamma, "training.gamma", 0.0, 1.0, low_open=True)
        check_real(self.lam, "training.lam", 0.0, 1.0)
        check_choice(self.advantage, "training.advantage", ("n_step", "gae"))
        check_choice(self.cycle_weights, "training.cycle_weights", ("last", "uniform", "linear"))
        check_real(self.positive_fraction, "training.positive_fraction", 0.0, 1.0, low_open=True, high_open=True)
        check_real(self.indicator_dropout, "training.indicator_dropout", 0.0, 1.0)
        check_real(self.beta, "training.beta", 0.0)
        check_real(self.awr_temperature, "training.awr_temperature", 0.0, low_open=True)
        check_real(self.awr_max_weight, "training.awr_max_weight", 1.0)
        if self.mse_weight < 0 or self.l1_weight < 0 or self.mse_weight + self.l1_weight <= 0:
            raise ConfigError(f"training.mse_weight and l1_weight must be >= 0 and not both 0, got "
                              f"{self.mse_weight!r}, {self.l1_weight!r}")


def _seed(base: int, purpose: str, extra: int = 0) -> int:
    return int(np.random.SeedSequence([base, 1000 + _PURPOSE[purpose], extra]).generate_state(1, np.uint32)[0])


# ---------------------------------------------------------------------------- networks
class ConditionedVisuomotor(nn.Module):
    """:class:`~trc.models.visuomotor.VisuomotorPolicy` conditioned on the advantage indicator.

    The indicator's embedding (:class:`~trc.recap.guidance.IndicatorEmbedding`, zero at
    initialisation) is added to the pre-activation of the fusion MLP's first layer: it is one more
    input of the fusion (as :class:`~trc.recap.policies.ConditionedTRC` does for the encoder), so
    its effect depends on the observation and reaches every recursion cycle through ``x``; only
    the action prediction sees it, as in RECAP.

    Parameters
    ----------
    base : VisuomotorPolicy
    beta : float
        Guidance of :meth:`act`.

    Raises
    ------
    ConfigError
        If ``base`` is not a VisuomotorPolicy.
    """

    def __init__(self, base: VisuomotorPolicy, beta: float = 1.0):
        super().__init__()
        if not isinstance(base, VisuomotorPolicy):
            raise ConfigError(f"ConditionedVisuomotor wraps a VisuomotorPolicy, got {type(base).__name__}")
        self.base, self.beta = base, float(beta)
        self.config = base.config
        first = base.fuse[0]
        self.indicator = IndicatorEmbedding(first.out_features)
        self._condition: torch.Tensor | None = None
        first.register_forward_hook(self._add_condition)
        self.problem, self.metadata = None, {}

    def _add_condition(self, module, inputs, output):
        return output if self._condition is None else output + self._condition

    def forward(self, images: dict, text: torch.Tensor, arm_state: torch.Tensor, tokens=NULL) -> VisuomotorOutput:
        """Normalised action chunk ``(batch, chunk, 7)`` (and every cycle's), given ``tokens`` ``(batch,)``
        or one token for the batch; the inputs as :meth:`VisuomotorPolicy.forward`."""
        B = text.shape[0]
        tok = torch.as_tensor(tokens, dtype=torch.long)
        tok = tok.expand(B) if tok.ndim == 0 else tok
        self._condition = self.indicator(tok)
        try:
            return self.base(images, text, arm_state)
        finally:
            self._condition = None

    @torch.no_grad()
    def guided(self, images: dict, text: torch.Tensor, arm_state: torch.Tensor, beta: float) -> tuple:
        """``a_null + beta (a_+ - a_null)`` on the normalised chunk ``(batch, chunk, 7)``, and the
        positive branch's output (the null branch's when ``beta = 0``)."""
        null = self.forward(images, text, arm_state, NULL) if beta != 1 else None
        pos = self.forward(images, text, arm_state, POSITIVE) if beta != 0 else None
        if null is None:
            return pos.actions, pos
        if pos is None:
            return null.actions, null
        return guide(null.actions, pos.actions, beta), pos

    @torch.no_grad()
    def act(self, images: dict, text: torch.Tensor, arm_state: torch.Tensor) -> tuple[torch.Tensor, VisuomotorOutput]:
        """Physical chunk ``(batch, chunk, 7)`` in ``[-1, 1]`` guided with :attr:`beta`; ``images``
        raw ``(batch, H, W, 3)`` uint8 per camera (as :meth:`VisuomotorPolicy.act`)."""
        was = self.training
        self.eval()
        imgs = {cam: self.base.preprocess(torch.as_tensor(np.asarray(images[cam]))) for cam in CAMERAS}
        a, out = self.guided(imgs, text.float(), arm_state.float(), self.beta)
        self.train(was)
        return self.base.denormalize_actions(a).clamp(-1.0, 1.0), out


class LiberoValueNet(nn.Module):
    """Distributional value ``V(o, instruction)``: the policy's input encoders and fusion (a
    :class:`~trc.models.visuomotor.VisuomotorPolicy` without feedback, whose
    :meth:`~trc.models.visuomotor.VisuomotorPolicy.embed` alone is used), an MLP and a 201-bin head.

    Parameters
    ----------
    config : VisuomotorConfig
    hidden_dim : int
    num_bins : int
    """

    def __init__(self, config: VisuomotorConfig, hidden_dim: int = 256, num_bins: int = NUM_BINS):
        super().__init__()
        self.encoder = VisuomotorPolicy(dataclasses.replace(config, feedback=False, halting=False))
        for module in (self.encoder.core, self.encoder.head):
            module.requires_grad_(False)
        d = config.latent_dim
        self.body = nn.Sequential(nn.Linear(d, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.head = ValueHead(hidden_dim, num_bins)

    def forward(self, images: dict, text: torch.Tensor, arm_state: torch.Tensor) -> torch.Tensor:
        """Value logits ``(batch, num_bins)``; images ``(batch, 3, S, S)`` in ``[0, 1]`` per camera."""
        return self.head(self.body(self.encoder.embed(images, text, arm_state)))


def _model_config(model: dict) -> VisuomotorConfig:
    return from_dict(VisuomotorConfig, model, "model")


def make_policy(model: dict, training: RecapLiberoTraining, beta: float | None = None) -> ConditionedVisuomotor:
    """An untrained conditioned policy of the ``model:`` section (with an untrained arm model when
    ``model.feedback``)."""
    cfg = _model_config(model)
    arm = LearnedArmDynamics(hidden_dim=training.arm_hidden_dim) if cfg.feedback else None
    return ConditionedVisuomotor(VisuomotorPolicy(cfg, arm), training.beta if beta is None else beta)


# ---------------------------------------------------------------------------- episodes
def _progress(sim, expert: PickPlaceExpert, raw: dict) -> tuple[float, float]:
    obj, _ = sim.body_pose(expert.obj)
    tgt, _ = sim.body_pose(expert.target)
    eef = np.asarray(raw["robot0_eef_pos"], dtype=float)
    return float(np.linalg.norm(eef - obj) + np.linalg.norm(obj - tgt)), float(obj[2])


def run_episode(sim, init_state: int, *, policy: ConditionedVisuomotor | None = None, text: torch.Tensor | None = None,
                monitor: Monitor | None = None, noise_std: float = 0.0, seed: int = 0, action_steps: int = 4,
                max_steps: int = 220, record: bool = True) -> dict:
    """One LIBERO episode: the scripted expert (``policy`` None), or the policy, with the expert taking
    over when ``monitor`` fires.

    Parameters
    ----------
    sim : dynamics.libero.LiberoSimulator
    init_state : int
        Official init state.
    policy : ConditionedVisuomotor, optional
        Acts guided with its ``beta``; None: the expert acts from the start (demonstration).
    text : Tensor, shape ``(384,)``
        The instruction's embedding (with ``policy``).
    monitor : Monitor, optional
    noise_std : float
        DART noise on the expert's executed position and rotation actions (labels stay clean).
    seed : int
        Seeds the noise and the expert's grasp side.
    action_steps, max_steps : int
    record : bool
        Keep the camera images of every frame (otherwise rendered only for the policy's queries).

    Returns
    -------
    dict
        ``images`` (camera -> ``(T, S, S, 3)`` uint8, with ``record``), ``proprio`` ``(T, 8)``
        (position, axis-angle, fingers), ``action`` ``(T, 7)`` labels (the expert's noise-free
        action where it acts, else the executed one), ``executed`` ``(T, 7)``, ``intervention``
        ``(T,)`` bool, ``success``, ``length``, ``takeover`` (step or -1), ``cpu_seconds``.
    """
    t0 = time.process_time()
    rng = np.random.default_rng(seed)
    raw = sim.reset(init_state)
    expert = PickPlaceExpert(sim, rng=rng)
    rest_z = _progress(sim, expert, raw)[1]
    expert_acts = policy is None
    limit = int(np.ceil(monitor.budget * max_steps)) if monitor is not None else None
    best, since, lifted, takeover = np.inf, 0, False, -1
    rec = {"images": {cam: [] for cam in CAMERAS}, "proprio": [], "action": [], "executed": [], "intervention": []}
    queue: list = []
    prev_pos = None
    success = False
    for t in range(max_steps):
        p = proprio_from_raw(raw)
        if monitor is not None and not expert_acts:
            prog, obj_z = _progress(sim, expert, raw)
            since = 0 if prog < best - monitor.min_improvement else since + 1
            best = min(best, prog)
            lifted |= obj_z > rest_z + 0.03
            dropped = lifted and obj_z < rest_z + 0.01 and not expert.holds_object(raw, rest_z)
            if since >= monitor.patience or t >= limit or dropped:
                expert_acts, takeover = True, t
                expert.resume(raw, rest_z)
        if expert_acts:
            label = expert.act(raw)
            a = label.copy()
            if noise_std > 0:
                a[:6] = np.clip(a[:6] + rng.normal(0.0, noise_std, 6), -1, 1)
        else:
            if not queue:
                imgs = {cam: raw[key][None] for cam, key in (("agentview_rgb", "agentview_image"),
                                                              ("eye_in_hand_rgb", "robot0_eye_in_hand_image"))}
                x = arm_states(p["ee_pos"][None], p["ee_ori"][None], p["gripper_states"][None], dt=sim.dt,
                               prev_ee_pos=prev_pos)
                chunk, _ = policy.act(imgs, text[None], torch.as_tensor(x, dtype=torch.float32))
                queue = list(chunk[0, :action_steps].numpy().astype(np.float64))
            a = queue.pop(0)
            label = a
        if record:
            rec["images"]["agentview_rgb"].append(np.asarray(raw["agentview_image"], dtype=np.uint8))
            rec["images"]["eye_in_hand_rgb"].append(np.asarray(raw["robot0_eye_in_hand_image"], dtype=np.uint8))
        rec["proprio"].append(np.concatenate([p["ee_pos"], p["ee_ori"], p["gripper_states"]]))
        rec["action"].append(label)
        rec["executed"].append(a)
        rec["intervention"].append(expert_acts and policy is not None)
        prev_pos = p["ee_pos"]
        need_images = record or (not expert_acts and not queue)
        raw, success = sim.step(np.asarray(a, dtype=np.float64), render=need_images)
        if success:
            break
    out = {"proprio": np.asarray(rec["proprio"], dtype=np.float64),
           "action": np.asarray(rec["action"], dtype=np.float32), "executed": np.asarray(rec["executed"], np.float32),
           "intervention": np.asarray(rec["intervention"], dtype=bool), "success": bool(success),
           "length": len(rec["action"]), "takeover": int(takeover), "cpu_seconds": time.process_time() - t0}
    if record:
        out["images"] = {cam: np.stack(v) for cam, v in rec["images"].items()}
    return out


#: What a process reuses between episodes: simulators by task, the acting policy, the instructions.
_WORKER: dict = {}


def _close_sims() -> None:
    for sim in _WORKER.pop("sims", {}).values():
        sim.close()


def _init_worker(problem: dict, policy_state: dict | None, text: dict) -> None:
    """Set up a process for episodes: the problem, the acting policy (built from its state) and the
    instruction embeddings; its simulators are closed when the process ends."""
    _close_sims()
    policy = None
    if policy_state is not None:
        policy = make_policy(policy_state["model"], RecapLiberoTraining(**policy_state["training"]),
                             policy_state["beta"])
        policy.load_state_dict(policy_state["weights"])
        policy.eval()
    _WORKER.update(problem=problem, policy=policy, text=text, sims={})
    Finalize(None, _close_sims, exitpriority=10)


def _episode_job(job: tuple) -> dict:
    """One episode ``(kind, task, init_state, seed, record, settings)`` in this process (one torch thread)."""
    kind, task, init_state, seed, record, settings = job
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        problem, sims = _WORKER["problem"], _WORKER["sims"]
        if task not in sims:
            _close_sims()
            sims = _WORKER["sims"] = {task: LiberoSimulator(problem["suite"], task, camera_size=problem["camera_size"],
                                                            render=problem["render"], assets=problem.get("assets"))}
        sim = sims[task]
        policy = None if kind == "demos" else _WORKER["policy"]
        monitor = Monitor(settings["patience"], settings["budget"], settings["min_improvement"]) \
            if kind == "corrections" else None
        text = torch.as_tensor(_WORKER["text"][sim.language], dtype=torch.float32)
        ep = run_episode(sim, init_state, policy=policy, text=text, monitor=monitor,
                         noise_std=settings["noise_std"] if kind == "demos" else 0.0, seed=seed,
                         action_steps=settings["action_steps"], max_steps=problem["max_steps"], record=record)
        ep.update(task_index=task, init_state=init_state, kind=kind)
        return ep
    finally:
        torch.set_num_threads(threads)


def _episode_path(folder: Path, task: int, init_state: int) -> Path:
    return folder / f"task{task:02d}_init{init_state:02d}.npz"


def _save_episode(path: Path, ep: dict) -> None:
    arrays = {k: v for k, v in ep.items() if k != "images"}
    arrays.update({f"images/{cam}": v for cam, v in ep.get("images", {}).items()})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _load_episode(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            ep = {k: z[k] for k in z.files if not k.startswith("images/")}
            images = {k[len("images/"):]: z[k] for k in z.files if k.startswith("images/")}
    except Exception as exc:
        raise DatasetError(f"episode file {str(path)!r} is unreadable: {exc}") from exc
    for key in ("success", "length", "takeover", "task_index", "init_state"):
        ep[key] = ep[key].item()
    ep["kind"] = str(ep["kind"])
    if images:
        ep["images"] = images
    return ep


def _run_episodes(folder: Path, jobs: list, initargs: tuple, *, backend: str, address: str | None, workers: int,
                  desc: str) -> list[dict]:
    """Run the episodes of ``jobs`` not on disk yet, each saved as it finishes; all of them, in job order."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not _episode_path(folder, j[1], j[2]).is_file()]
    if todo:
        here = backend == "local" and workers == 1
        if here:
            _init_worker(*initargs)
        try:
            for _, ep in map_unordered(_episode_job, todo, backend=backend, address=address, workers=workers,
                                       inline=True, initializer=None if here else _init_worker, initargs=initargs,
                                       progress=True, desc=desc):
                _save_episode(_episode_path(folder, ep["task_index"], ep["init_state"]), ep)
        finally:
            if here:
                _close_sims()
    return [_load_episode(_episode_path(folder, j[1], j[2])) for j in jobs]


# ---------------------------------------------------------------------------- frames
@dataclass
class LiberoFrames:
    """Training frames (episodes contiguous, global episode ids); the attributes the cheap pipeline's
    :func:`trc.recap.stages.policy_data` reads (``success``, ``intervention``) included.

    Attributes
    ----------
    images : dict camera -> uint8 Tensor ``(F, 3, S, S)``
    arm_state : Tensor ``(F, 14)``
    task_index, episode_index : ndarray of int64 ``(F,)``
    actions : Tensor ``(F, chunk, 7)``
        Label actions ``a[t : t + chunk]`` (the last repeated past the end), ``mask`` ``(F, chunk)``.
    intervention, success : ndarray of bool ``(F,)``
    rewards : ndarray of float64 ``(F,)``
    stage : ndarray of int64 ``(F,)``
        Index into :data:`~trc.recap.stages.STAGES`.
    executed : ndarray ``(F, 7)``
        Executed actions (the learned arm dynamics' inputs).
    """

    images: dict
    arm_state: torch.Tensor
    task_index: np.ndarray
    episode_index: np.ndarray
    actions: torch.Tensor
    mask: torch.Tensor
    intervention: np.ndarray
    success: np.ndarray
    rewards: np.ndarray
    stage: np.ndarray
    executed: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _episode_arm_states(ep: dict) -> np.ndarray:
    """Arm states ``(T, 14)`` of an episode's recorded proprioception (position, axis-angle, fingers)."""
    pr = ep["proprio"]
    return arm_states(pr[:, :3], pr[:, 3:6], pr[:, 6:8])


def build_frames(episodes: list[dict], stages: list[int], chunk: int, image_size: int, c_fail: float) -> LiberoFrames:
    """Frames of recorded episodes (:func:`run_episode` with ``record``), ``stages[i]`` the stage of episode ``i``.

    Raises
    ------
    DatasetError
        If there is no episode or one lacks its images.
    """
    if not episodes:
        raise DatasetError("no episodes to build training frames from")
    lengths = np.array([e["length"] for e in episodes])
    if any("images" not in e for e in episodes):
        raise DatasetError("training frames need episodes recorded with their camera images")
    ep_index = np.repeat(np.arange(len(episodes)), lengths)
    success = np.array([e["success"] for e in episodes], dtype=bool)
    acts, masks, states = [], [], []
    for e in episodes:
        T = e["length"]
        idx = np.arange(T)[:, None] + np.arange(chunk)[None, :]
        acts.append(e["action"][np.minimum(idx, T - 1)])
        masks.append(idx < T)
        states.append(_episode_arm_states(e))
    return LiberoFrames(
        images={cam: torch.cat([_resize(e["images"][cam], image_size) for e in episodes]) for cam in CAMERAS},
        arm_state=torch.as_tensor(np.concatenate(states), dtype=torch.float32),
        task_index=np.repeat([e["task_index"] for e in episodes], lengths).astype(np.int64),
        episode_index=ep_index.astype(np.int64),
        actions=torch.as_tensor(np.concatenate(acts), dtype=torch.float32),
        mask=torch.as_tensor(np.concatenate(masks)),
        intervention=np.concatenate([e["intervention"] for e in episodes]).astype(bool),
        success=np.repeat(success, lengths),
        rewards=recap_rewards(lengths, success, c_fail),
        stage=np.repeat(np.asarray(stages, dtype=np.int64), lengths),
        executed=np.concatenate([e["executed"] for e in episodes]).astype(np.float32),
    )


def _batch(fr: LiberoFrames, idx: torch.Tensor, text: torch.Tensor, cfg: RecapLiberoTraining | None,
           gen: torch.Generator | None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    imgs = {}
    for cam in CAMERAS:
        x = fr.images[cam][idx].float() / 255.0
        imgs[cam] = x if cfg is None else augment(x, cfg.brightness, cfg.contrast, cfg.crop_pad, gen)
    return imgs, text[torch.as_tensor(fr.task_index)[idx]], fr.arm_state[idx]


def _text_table(problem: RecapLiberoProblem, text: dict) -> torch.Tensor:
    """Instruction embeddings ``(tasks of the suite, 384)`` indexed by LIBERO task index."""
    tasks = suite_tasks(problem.inner.suite)
    return torch.stack([torch.as_tensor(np.asarray(text[t.language], dtype=np.float32)) for t in tasks])


@torch.no_grad()
def predict_values(vnet: LiberoValueNet, fr: LiberoFrames, text: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Expected normalised values ``(frames,)`` float64."""
    vnet.eval()
    out = []
    for s in range(0, len(fr), batch):
        idx = torch.arange(s, min(s + batch, len(fr)))
        out.append(vnet.head.value(vnet(*_batch(fr, idx, text, None, None))))
    vnet.train()
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def train_value(vnet: LiberoValueNet, fr: LiberoFrames, text: torch.Tensor, targets: np.ndarray,
                cfg: RecapLiberoTraining, gen: torch.Generator, ckpt: Path | None, fingerprint: dict) -> float:
    """Cross-entropy on two-hot normalised returns; returns the final mean loss."""
    y = two_hot(targets)

    def loss_fn(idx):
        return value_loss(vnet(*_batch(fr, idx, text, cfg, gen)), y[idx])

    return _fit(vnet, loss_fn, len(fr), cfg.value_steps, cfg, gen, ckpt, "value", fingerprint)


def train_policy(policy: ConditionedVisuomotor, fr: LiberoFrames, text: torch.Tensor, mode: str,
                 advantage: np.ndarray, indicator: np.ndarray, cfg: RecapLiberoTraining, gen: torch.Generator,
                 ckpt: Path | None, fingerprint: dict) -> float:
    """Train in one of :data:`~trc.recap.stages.MODES` (``recap``, ``bc``, ``filtered``, ``awr``) with the
    behaviour-cloning chunk loss, deep supervision over the cycles; returns the final mean loss.

    Raises
    ------
    ConfigError
        On an unknown mode.
    DatasetError
        If the mode selects no frame.
    """
    idx, tokens, weights = policy_data(mode, fr, advantage, indicator, cfg)
    if len(idx) == 0:
        raise DatasetError(f"policy training mode {mode!r} selects no frame of {len(fr)}")
    idx = torch.as_tensor(idx)
    dropout = cfg.indicator_dropout if mode == "recap" else 0.0
    base = policy.base

    def loss_fn(b):
        rows = idx[b]
        tok = drop_indicators(tokens[b], dropout, gen)
        out = policy(*_batch(fr, rows, text, cfg, gen), tok)
        target = base.normalize_actions(fr.actions[rows])
        w = weights[b] / weights[b].sum().clamp(min=1e-12)
        per_cycle = [bc_loss(a, target, fr.mask[rows], cfg.mse_weight, cfg.l1_weight, reduce=False)
                     for a in out.all_actions[1:]]
        return sum(c * (p * w).sum() for c, p in zip(_cycle_weights(cfg.cycle_weights, len(per_cycle)), per_cycle))

    return _fit(policy, loss_fn, len(idx), cfg.policy_steps, cfg, gen, ckpt, f"policy-{mode}", fingerprint)


# ---------------------------------------------------------------------------- the pipeline
@dataclass
class RecapLiberoRun:
    """A parsed ``recap_libero`` experiment and its run folder."""

    problem: RecapLiberoProblem
    generator: RecapLiberoGenerator
    training: RecapLiberoTraining
    model: dict
    out: Path

    @classmethod
    def from_experiment(cls, experiment, *, out=None, seed: int | None = None) -> "RecapLiberoRun":
        """Parse the sections; ``seed`` overrides both seeds.

        Raises
        ------
        ConfigError
            On invalid sections.
        """
        gen = experiment.generator
        tcfg = from_dict(RecapLiberoTraining, experiment.section("training"), "training")
        if seed is not None:
            gen = dataclasses.replace(gen, seed=check_seed(seed, "--seed"))
            tcfg.seed = gen.seed
        model = experiment.section("model")
        _model_config(model)
        return cls(experiment.problem, gen, tcfg, model, Path(out or tcfg.out or f"runs/{experiment.problem.name}"))

    def fingerprint(self) -> dict:
        """Everything that determines the run's arrays (``run.json``, checkpoints)."""
        gen = {k: v for k, v in asdict(self.generator).items() if k != "workers"}
        train = {k: v for k, v in asdict(self.training).items() if k not in ("out", "threads", "checkpoint_every")}
        return json.loads(json.dumps({"problem": self.problem.to_dict(), "generator": gen, "training": train,
                                      "model": self.model}))

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    def action_steps(self) -> int:
        chunk = _model_config(self.model).chunk
        steps = self.generator.action_steps or max(1, chunk // 2)
        if steps > chunk:
            raise ConfigError(f"generator.action_steps must be in 1..{chunk} (model.chunk), got {steps}")
        return steps

    def settings(self) -> dict:
        g = self.generator
        return {"patience": g.patience, "min_improvement": g.min_improvement, "budget": g.budget,
                "noise_std": g.noise_std, "action_steps": self.action_steps()}


def _instructions(problem: RecapLiberoProblem) -> dict:
    """Instruction -> frozen MiniLM embedding (384,), for every task of the suite."""
    langs = [t.language for t in suite_tasks(problem.inner.suite)]
    emb = SentenceEncoder().encode(langs)
    return {s: emb[i].numpy() for i, s in enumerate(langs)}


def _jobs(run: RecapLiberoRun, kind: str, stage: str, record) -> list[tuple]:
    g, settings = run.generator, run.settings()
    jobs = []
    for t in run.problem.inner.task_list():
        for j, s in enumerate(g.init_states(stage)):
            rec = record if isinstance(record, bool) else j < record
            jobs.append((kind, t, s, _seed(g.seed, stage, 1000 * t + s), rec, settings))
    return jobs


def _policy_state(run: RecapLiberoRun, policy: ConditionedVisuomotor) -> dict:
    return {"model": run.model, "training": asdict(run.training), "beta": run.training.beta,
            "weights": policy.state_dict()}


def evaluate_policy(run: RecapLiberoRun, policy: ConditionedVisuomotor, text: dict, folder: Path, *,
                    backend: str = "local", address: str | None = None, workers: int | None = None) -> tuple:
    """Held-out episodes of ``policy`` (guided with ``training.beta``), per-episode files in ``folder``.

    Returns
    -------
    metrics : dict
        ``success_rate``, ``success_ci95``, ``mean_steps_to_success``, ``per_task``,
        ``eval_success`` (0/1 per episode, tasks then init states: the pairing of McNemar tests).
    episodes : list of dict
        The episodes (the first ``calibration_episodes`` of each task with images).
    """
    jobs = _jobs(run, "eval", "eval", run.generator.calibration_episodes)
    eps = _run_episodes(folder, jobs, (run.problem.inner.worker_dict(), _policy_state(run, policy), text),
                        backend=backend, address=address, workers=workers or run.generator.workers,
                        desc="held-out episodes")
    succ = np.array([e["success"] for e in eps], dtype=bool)
    steps = np.array([e["length"] for e in eps])
    k = int(succ.sum())
    per_task = {}
    for t in run.problem.inner.task_list():
        sel = np.array([e["task_index"] == t for e in eps])
        kt = int(succ[sel].sum())
        per_task[str(t)] = {"episodes": int(sel.sum()), "successes": kt, "success_rate": kt / int(sel.sum()),
                            "success_ci95": list(wilson_interval(kt, int(sel.sum())))}
    metrics = {"episodes": len(eps), "successes": k, "success_rate": k / len(eps),
               "success_ci95": list(wilson_interval(k, len(eps))),
               "mean_steps_to_success": float(steps[succ].mean()) if k else None, "mean_steps": float(steps.mean()),
               "beta": run.training.beta, "per_task": per_task, "eval_success": succ.astype(int).tolist(),
               "eval_cpu_seconds": float(sum(e["cpu_seconds"] for e in eps))}
    return metrics, eps


def _value_targets(fr: LiberoFrames, problem: RecapLiberoProblem, gamma: float) -> np.ndarray:
    return normalize_returns(discounted_returns(fr.rewards, fr.episode_index, gamma), problem.max_steps, problem.c_fail)


def _labels(vnet, fr, text, problem, cfg):
    v = predict_values(vnet, fr, text)
    labels = label_advantages(fr.rewards / (problem.max_steps + problem.c_fail), v, fr.episode_index,
                              fr.task_index, fr.intervention, method=cfg.advantage, n=cfg.n_step, gamma=cfg.gamma,
                              lam=cfg.lam, positive_fraction=cfg.positive_fraction)
    return v, labels


def _write_stage_dataset(path: Path, run: RecapLiberoRun, stage: str, episodes: list[dict], v, labels) -> None:
    """The stage's own episodes as a LeRobot v3 data set (cameras at the recorded size)."""
    lengths = np.array([e["length"] for e in episodes])
    succ = np.array([e["success"] for e in episodes], dtype=bool)
    ep = np.repeat(np.arange(len(episodes)), lengths)
    done = np.zeros(len(ep), dtype=bool)
    done[np.cumsum(lengths) - 1] = True
    cols = {IMAGE_COLUMNS[cam]: np.concatenate([e["images"][cam] for e in episodes]) for cam in CAMERAS}
    cols.update({
        "observation.state": np.concatenate([_episode_arm_states(e) for e in episodes]).astype(np.float32),
        "action": np.concatenate([e["action"] for e in episodes]).astype(np.float32),
        "episode_index": ep.astype(np.int64),
        "frame_index": np.concatenate([np.arange(n) for n in lengths]).astype(np.int64),
        "task_index": np.repeat([e["task_index"] for e in episodes], lengths).astype(np.int64),
        "next.reward": recap_rewards(lengths, succ, run.problem.c_fail).astype(np.float32),
        "next.done": done,
        "complementary_info.is_intervention": np.concatenate([e["intervention"] for e in episodes]).astype(bool),
        "complementary_info.value": v.astype(np.float32),
        "complementary_info.advantage": labels.advantage.astype(np.float32),
        "complementary_info.indicator": labels.indicator.astype(bool),
    })
    tasks = [t.language for t in suite_tasks(run.problem.inner.suite)]
    lerobot.write_dataset(path, cols, tasks=tasks, fps=20, robot_type="panda",
                          episodes={"stage": np.array([stage] * len(episodes)), "success": succ,
                                    "init_state": np.array([e["init_state"] for e in episodes], dtype=np.int64)},
                          features={"observation.state": {"names": STATE_NAMES}},
                          overwrite=True)


def stage_episodes(run: RecapLiberoRun, stage: str) -> tuple[list, list]:
    """The collected episodes of ``stage`` and every earlier stage, and the stage index of each.

    Raises
    ------
    DatasetError
        If an episode file is missing or unreadable.
    """
    eps, stage_of = [], []
    for i, s in enumerate(STAGES[:STAGES.index(stage) + 1]):
        for j in _jobs(run, s, s, True):
            path = _episode_path(run.stage_dir(s) / "rollouts", j[1], j[2])
            if not path.is_file():
                raise DatasetError(f"stage {s!r} of {str(run.out)!r} lacks its episode file {path.name}")
            eps.append(_load_episode(path))
            stage_of.append(i)
    return eps, stage_of


def stage_training_data(run: RecapLiberoRun, stage: str) -> tuple:
    """What a finished stage trained its policy on: its frames, the advantage labels under its value,
    the instruction embeddings (by instruction, and as the ``(tasks, 384)`` table by task index).

    Returns
    -------
    frames : LiberoFrames
    labels : trc.recap.advantage.AdvantageLabels
    text : dict
    table : Tensor

    Raises
    ------
    ConfigError
        If the stage has not finished.
    """
    if not (run.stage_dir(stage) / "metrics.json").is_file():
        raise ConfigError(f"stage {stage!r} of {str(run.out)!r} has not finished")
    mcfg = _model_config(run.model)
    eps, stage_of = stage_episodes(run, stage)
    fr = build_frames(eps, stage_of, mcfg.chunk, mcfg.image_size, run.problem.c_fail)
    text = _instructions(run.problem)
    table = _text_table(run.problem, text)
    vnet = LiberoValueNet(mcfg, run.training.value_hidden)
    load_state(vnet, run.stage_dir(stage) / "value.pt", "value weights")
    return fr, _labels(vnet, fr, table, run.problem, run.training)[1], text, table


def _fit_arm(run: RecapLiberoRun, episodes: list[dict], chunk: int) -> LearnedArmDynamics:
    trajs = [(_episode_arm_states(e), e["executed"]) for e in episodes]
    arm, _ = fit(trajs, horizon=chunk, hidden_dim=run.training.arm_hidden_dim, epochs=run.training.arm_epochs,
                 batch_size=64, lr=2e-3, seed=run.training.seed)
    return arm


def run_libero_stage(experiment, stage: str, *, out=None, seed: int | None = None, backend: str = "local",
                     address: str | None = None, workers: int | None = None) -> dict:
    """Run (or resume, or skip when finished) one RECAP stage on LIBERO; returns its metrics.

    Parameters
    ----------
    experiment : trc.experiment.Experiment
        A ``kind: recap_libero`` configuration.
    stage : {"demos", "corrections", "autonomous"}
    out : path-like, optional
        Run folder; default ``training.out`` or ``runs/<problem name>``.
    seed : int, optional
        Overrides ``generator.seed`` and ``training.seed``.
    backend, address : see :mod:`trc.backends`
        Where the episodes run (one task per episode).
    workers : int, optional
        Episode processes (default ``generator.workers``).

    Returns
    -------
    dict
        The stage's ``metrics.json`` (``"skipped": true`` if it had finished before).

    Raises
    ------
    ConfigError
        On an unknown stage, a stage whose predecessor has not finished, a run folder of another
        configuration, a bad backend.
    CheckpointError, DatasetError
        On unreadable files of earlier stages.
    """
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of {list(STAGES)} for RECAP problems, got {stage!r}")
    check_backend(backend, address)
    run = RecapLiberoRun.from_experiment(experiment, out=out, seed=seed)
    cfg, problem = run.training, run.problem
    run.action_steps()
    folder = run.stage_dir(stage)
    done_path = folder / "metrics.json"
    finished = finished_stage(run, stage)
    if finished is not None:
        return finished
    k = STAGES.index(stage)
    _check_run_folder(run)
    torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    fp = {**run.fingerprint(), "stage": stage}
    mcfg = _model_config(run.model)
    text = _instructions(problem)
    table = _text_table(problem, text)
    workers = workers or run.generator.workers
    # the previous stage's networks: they act in this stage and, with finetune, continue training
    torch.manual_seed(_seed(cfg.seed, "train", k))
    policy = make_policy(run.model, cfg)
    vnet = LiberoValueNet(mcfg, cfg.value_hidden)
    actor = None
    if k:
        prev = run.stage_dir(STAGES[k - 1])
        actor = make_policy(run.model, cfg)
        load_state(actor, prev / "policy.pt", "policy weights")
        vprev = LiberoValueNet(mcfg, cfg.value_hidden)
        load_state(vprev, prev / "value.pt", "value weights")
        if cfg.finetune:
            policy.load_state_dict(actor.state_dict())
            vnet.load_state_dict(vprev.state_dict())
        elif actor.base.arm is not None:
            policy.base.arm.load_state_dict(actor.base.arm.state_dict())
    # 1. episodes of this stage, and of every earlier one
    jobs = _jobs(run, stage, stage, True)
    initargs = (problem.inner.worker_dict(), None if actor is None else _policy_state(run, actor), text)
    new_eps = _run_episodes(folder / "rollouts", jobs, initargs, backend=backend, address=address, workers=workers,
                            desc=f"{stage} episodes")
    all_eps, stage_of = stage_episodes(run, STAGES[k - 1]) if k else ([], [])
    all_eps, stage_of = all_eps + new_eps, stage_of + [k] * len(new_eps)
    fr = build_frames(all_eps, stage_of, mcfg.chunk, mcfg.image_size, problem.c_fail)
    if k == 0 or not cfg.finetune:
        policy.base.set_normalization(fr.actions[:, 0], fr.arm_state)
    policy_path = folder / "policy.pt"
    if k == 0 and mcfg.feedback and not policy_path.is_file():
        arm = _fit_arm(run, all_eps, mcfg.chunk)
        policy.base.arm.load_state_dict(arm.state_dict())
    ckpt = folder / "checkpoint.pt"
    # 2. value
    if k == 0 or not cfg.finetune:
        vnet.encoder.set_normalization(fr.actions[:, 0], fr.arm_state)
    vloss = trained(vnet, folder / "value.pt", "value_loss", lambda: train_value(
        vnet, fr, table, _value_targets(fr, problem, cfg.gamma), cfg,
        torch.Generator().manual_seed(_seed(cfg.seed, "train", 10 + k)), ckpt, fp))
    # 3. labels, the stage's LeRobot data set
    v, labels = _labels(vnet, fr, table, problem, cfg)
    new = fr.stage == k
    data_path = folder / "dataset"
    if not (data_path / "meta" / "info.json").is_file():
        sub = dataclasses.replace(labels, advantage=labels.advantage[new], indicator=labels.indicator[new])
        _write_stage_dataset(data_path, run, stage, new_eps, v[new], sub)
    # 4. policy
    ploss = trained(policy, policy_path, "policy_loss", lambda: train_policy(
        policy, fr, table, "recap", labels.advantage, labels.indicator, cfg,
        torch.Generator().manual_seed(_seed(cfg.seed, "train", 20 + k)), ckpt, fp))
    # 5. held-out evaluation and the value's calibration on the recorded held-out episodes
    metrics, eval_eps = evaluate_policy(run, policy, text, folder / "evaluation", backend=backend, address=address,
                                        workers=workers)
    rec = [e for e in eval_eps if "images" in e]
    calib = None
    if rec:
        efr = build_frames(rec, [k] * len(rec), mcfg.chunk, mcfg.image_size, problem.c_fail)
        calib = calibration(predict_values(vnet, efr, table), efr.episode_index,
                            np.array([e["success"] for e in rec]), problem.max_steps, problem.c_fail, cfg.gamma)
    lengths = np.array([e["length"] for e in new_eps])
    metrics.update({
        "stage": stage, "problem": problem.name, "plant": "libero", "value_loss": vloss, "policy_loss": ploss,
        "value_auroc": None if calib is None else calib.auroc_first_frame,
        "value_auroc_frames": None if calib is None else calib.auroc_frames,
        "value_steps_to_go_mae": None if calib is None else calib.steps_to_go_mae,
        "value_calibration": None if calib is None else calib.to_dict(),
        "calibration_episodes": len(rec),
        "advantage_mean": labels.advantage_mean, "positive_fraction": labels.positive_fraction,
        "thresholds": {str(t): e for t, e in labels.thresholds.items()},
        "collected_episodes": len(new_eps),
        "collected_success_rate": float(np.mean([e["success"] for e in new_eps])),
        "collected_mean_steps": float(lengths.mean()),
        "intervention_fraction": float(np.mean(np.concatenate([e["intervention"] for e in new_eps]))),
        "intervened_episodes": int(sum(e["takeover"] >= 0 for e in new_eps)),
        "collection_cpu_seconds": float(sum(e["cpu_seconds"] for e in new_eps)),
        "training_frames": len(fr), "seconds": time.monotonic() - t0, "seed": run.generator.seed,
    })
    atomic_write_text(done_path, json.dumps(metrics, indent=2))
    if ckpt.is_file():
        ckpt.unlink()
    return metrics


def load_stage_policy(run: RecapLiberoRun, stage: str) -> ConditionedVisuomotor:
    """The finished stage's policy (guided with ``training.beta``), its problem and instructions set.

    Raises
    ------
    CheckpointError
        If the stage's ``policy.pt`` is missing or does not fit.
    """
    policy = make_policy(run.model, run.training)
    load_state(policy, run.stage_dir(stage) / "policy.pt", "policy weights")
    policy.problem, policy.model_config = run.problem, dict(run.model)
    policy.metadata = {"text_embeddings": _instructions(run.problem), "beta": run.training.beta, "stage": stage,
                       "training": asdict(run.training), "generator": asdict(run.generator)}
    return policy.eval()
