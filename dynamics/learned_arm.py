"""Learned arm dynamics: a differentiable model of the LIBERO Panda arm under its OSC controller.

The MuJoCo simulation of LIBERO (:class:`dynamics.libero.LiberoPlant`) gives no gradients. This
plant is its differentiable surrogate for the arm alone, learned from demonstrations: it
predicts the next end-effector and gripper state from the current one and the 7-DoF delta
action,

    x[k+1] = x[k] + S * g((x[k] - m) / s, u[k]),

with ``g`` a small MLP, ``m, s`` the state normalisation and ``S`` the scale of the one-step
changes (all estimated from data by :func:`fit`). The 6D rotation part is re-orthonormalised
by Gram-Schmidt after each step (Zhou et al., "On the Continuity of Rotation Representations in
Neural Networks", CVPR 2019), which avoids the discontinuity of LIBERO's axis-angle ``ee_ori``
near the gripper-down orientation (a rotation of pi).

State ``x`` (14): ``ee_pos`` (3, m), ``rot6d`` (6, first two columns of the end-effector
rotation matrix), ``gripper_states`` (2, m), ``ee_vel`` (3, m/s, finite difference of
``ee_pos``; the controller has lag, so the position alone is not a state). Control ``u`` (7):
LIBERO's action in ``[-1, 1]``. Discrete time, ``dt = 0.05`` s.

``dynamics.make("learned_arm", checkpoint=path)`` loads a fitted model; without a checkpoint
the network is untrained (random), which is only useful for tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch import nn

from .errors import CheckpointError, DimensionError
from .plant import Plant
from .registry import register

__all__ = ["LearnedArmDynamics", "arm_states", "rot6d_from_axis_angle", "fit", "rollout_errors"]

STATE_NAMES = ("x", "y", "z", "r11", "r21", "r31", "r12", "r22", "r32", "g1", "g2", "vx", "vy", "vz")
STATE_UNITS = ("m", "m", "m", "1", "1", "1", "1", "1", "1", "m", "m", "m/s", "m/s", "m/s")


def rot6d_from_axis_angle(ee_ori: np.ndarray) -> np.ndarray:
    """First two columns of the rotation matrix of axis-angle vectors.

    Parameters
    ----------
    ee_ori : ndarray, shape ``(..., 3)``
        Axis-angle vectors (rad).

    Returns
    -------
    ndarray, shape ``(..., 6)``
        ``(R[:, 0], R[:, 1])`` concatenated.
    """
    ee_ori = np.asarray(ee_ori, dtype=np.float64)
    R = Rotation.from_rotvec(ee_ori.reshape(-1, 3)).as_matrix()
    out = np.concatenate([R[:, :, 0], R[:, :, 1]], axis=1)
    return out.reshape(*ee_ori.shape[:-1], 6)


def arm_states(ee_pos: np.ndarray, ee_ori: np.ndarray, gripper_states: np.ndarray, dt: float = 0.05,
               prev_ee_pos: np.ndarray | None = None) -> np.ndarray:
    """Arm states of a trajectory from LIBERO observations.

    Parameters
    ----------
    ee_pos : ndarray, shape ``(T, 3)``
    ee_ori : ndarray, shape ``(T, 3)``
        Axis-angle (LIBERO's ``ee_ori``).
    gripper_states : ndarray, shape ``(T, 2)``
    dt : float
        Sample time in seconds.
    prev_ee_pos : ndarray, shape ``(3,)``, optional
        Position before the first sample; the first velocity is zero without it.

    Returns
    -------
    ndarray, shape ``(T, 14)``
        See the module notes; ``ee_vel[t] = (ee_pos[t] - ee_pos[t-1]) / dt``.
    """
    ee_pos = np.asarray(ee_pos, dtype=np.float64)
    prev = ee_pos[:1] if prev_ee_pos is None else np.asarray(prev_ee_pos, dtype=np.float64).reshape(1, 3)
    vel = np.diff(np.concatenate([prev, ee_pos]), axis=0) / dt
    return np.concatenate([ee_pos, rot6d_from_axis_angle(ee_ori), np.asarray(gripper_states, dtype=np.float64), vel], axis=1)


def _gram_schmidt(r6: torch.Tensor) -> torch.Tensor:
    a, b = r6[..., :3], r6[..., 3:]
    c1 = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    b = b - (c1 * b).sum(-1, keepdim=True) * c1
    c2 = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return torch.cat([c1, c2], dim=-1)


@register("learned_arm")
class LearnedArmDynamics(Plant):
    """Differentiable learned model of the LIBERO arm; see the module notes.

    Parameters
    ----------
    hidden_dim : int
        Width of the MLP ``g``.
    num_layers : int
        Hidden layers of ``g``.
    checkpoint : path or dict, optional
        A file written by :meth:`save`, or the dict of :meth:`checkpoint_dict`; loads weights
        and normalisation.
    dt : float
        Sample time in seconds (LIBERO: 0.05).

    Raises
    ------
    CheckpointError
        If the checkpoint is missing or does not match ``hidden_dim``/``num_layers``.
    """

    discrete = True
    state_names = STATE_NAMES
    state_units = STATE_UNITS
    control_names = ("dx", "dy", "dz", "dax", "day", "daz", "gripper")
    control_units = ("1",) * 7

    def __init__(self, hidden_dim: int = 256, num_layers: int = 3, checkpoint: str | os.PathLike | None = None,
                 *, seed: int = 0, dt: float = 0.05, **kwargs):
        kwargs.setdefault("u_min", -1.0)
        kwargs.setdefault("u_max", 1.0)
        super().__init__(dt=dt, **kwargs)
        if checkpoint is not None:
            if isinstance(checkpoint, dict):
                saved = _check_checkpoint(checkpoint, "the checkpoint dict")
            else:
                saved = _read_checkpoint(checkpoint)
            hidden_dim, num_layers = saved["hidden_dim"], saved["num_layers"]
        self.hidden_dim, self.num_layers = int(hidden_dim), int(num_layers)
        n, m = self.state_dim, self.control_dim
        layers: list[nn.Module] = []
        width = n + m
        for _ in range(self.num_layers):
            layers += [nn.Linear(width, self.hidden_dim), nn.GELU()]
            width = self.hidden_dim
        layers.append(nn.Linear(width, n))
        self.net = nn.Sequential(*layers)
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(self.seed)  # the same seed gives the same network
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)  # PyTorch's default nn.Linear range
                    layer.weight.uniform_(-bound, bound, generator=gen)
                    layer.bias.uniform_(-bound, bound, generator=gen)
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()
        self.register_buffer("x_mean", torch.zeros(n))
        self.register_buffer("x_std", torch.ones(n))
        self.register_buffer("dx_scale", torch.full((n,), 0.01))
        #: The file the model was loaded from (None: untrained, or loaded from a dict).
        self.checkpoint = None if checkpoint is None or isinstance(checkpoint, dict) else str(checkpoint)
        if checkpoint is not None:
            source = "the checkpoint dict" if isinstance(checkpoint, dict) else f"checkpoint {str(checkpoint)!r}"
            try:
                self.load_state_dict(saved["state_dict"])
            except RuntimeError as exc:
                raise CheckpointError(f"{source} does not match the model: {exc}") from exc

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(hidden_dim=self.hidden_dim, num_layers=self.num_layers, seed=self.seed)
        if self.checkpoint:
            cfg["checkpoint"] = self.checkpoint
        return cfg

    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x[k+1] = x[k] + S g((x[k] - m) / s, u[k])``; ``x`` ``(batch, 14)``, ``u`` ``(batch, 7)``."""
        u = torch.clamp(u, -1.0, 1.0)
        inp = torch.cat([(x - self.x_mean.to(x)) / self.x_std.to(x), u.to(x)], dim=-1)
        x_next = x + self.dx_scale.to(x) * self.net(inp)
        return torch.cat([x_next[..., :3], _gram_schmidt(x_next[..., 3:9]), x_next[..., 9:]], dim=-1)

    def rollout_chunk(self, x0: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
        """Differentiable rollout without input checks (for use inside models).

        ``x0`` ``(batch, 14)``, ``controls`` ``(batch, horizon, 7)`` -> ``(batch, horizon + 1, 14)``.
        """
        states = [x0]
        for k in range(controls.shape[1]):
            states.append(self.discrete_step(states[-1], controls[:, k]))
        return torch.stack(states, dim=1)

    # -------------------------------------------------------------- persistence
    def checkpoint_dict(self, metrics: dict | None = None) -> dict:
        """Weights, normalisation and size as plain data and CPU tensors.

        ``torch.save`` of this dict is what :meth:`save` writes; ``LearnedArmDynamics(checkpoint=d)``
        rebuilds the model from it, so a caller can store it in its own files.

        Parameters
        ----------
        metrics : dict, optional
            Plain data stored alongside (e.g. the validation errors of :func:`fit`).

        Returns
        -------
        dict
            ``kind`` (``"learned_arm"``), ``hidden_dim``, ``num_layers``, ``dt``, ``state_dict``,
            ``metrics``.
        """
        return {"kind": "learned_arm", "hidden_dim": self.hidden_dim, "num_layers": self.num_layers, "dt": self.dt,
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
                "metrics": dict(metrics or {})}

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> None:
        """Write :meth:`checkpoint_dict` to ``path`` atomically (``torch.save``).

        The file is written beside ``path`` under a temporary name, flushed to disk and renamed
        over ``path``: a reader sees the old file or the complete new one, never half of it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(self.checkpoint_dict(metrics), fh)
                fh.flush()
                os.fsync(fh.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the permissions of a new file
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _check_checkpoint(saved, source: str) -> dict:
    """``saved`` if it is a learned arm checkpoint dict, else :class:`CheckpointError` naming ``source``."""
    if not isinstance(saved, dict) or saved.get("kind") != "learned_arm":
        kind = saved.get("kind") if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"{source} is not a learned arm checkpoint (kind={kind!r}, expected 'learned_arm')")
    missing = [k for k in ("hidden_dim", "num_layers", "state_dict") if k not in saved]
    if missing:
        raise CheckpointError(f"{source} lacks {missing}; a learned arm checkpoint has hidden_dim, num_layers and "
                              "state_dict")
    return saved


def _read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"learned arm checkpoint {str(path)!r} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types on corrupt files
        raise CheckpointError(f"cannot read learned arm checkpoint {str(path)!r}: {exc}") from exc
    return _check_checkpoint(saved, repr(str(path)))


def _windows(trajectories: list[tuple[np.ndarray, np.ndarray]], horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows ``(x[t : t + H + 1], u[t : t + H])`` of the trajectories."""
    xs, us = [], []
    for x, u in trajectories:
        T = len(u)
        if T < horizon or len(x) < T:
            continue
        # x has T states (before each action); windows need x[t + H] with t + H <= T - 1
        for t in range(0, T - horizon):
            xs.append(x[t : t + horizon + 1])
            us.append(u[t : t + horizon])
    if not xs:
        raise DimensionError(f"no trajectory is longer than the horizon {horizon}")
    return torch.as_tensor(np.stack(xs), dtype=torch.float32), torch.as_tensor(np.stack(us), dtype=torch.float32)


def rollout_errors(model: LearnedArmDynamics, trajectories: list[tuple[np.ndarray, np.ndarray]], horizon: int) -> dict:
    """Open-loop prediction errors over ``horizon`` steps on held-out trajectories.

    Parameters
    ----------
    model : LearnedArmDynamics
    trajectories : list of (x, u)
        ``x`` ``(T, 14)`` arm states before each action, ``u`` ``(T, 7)`` actions.
    horizon : int

    Returns
    -------
    dict
        ``position_mm`` (list over steps ``1..horizon``: RMS position error in mm),
        ``rotation_deg`` (mean angle between predicted and true gripper axes), ``gripper_mm``
        (RMS finger error), ``baseline_position_mm`` (error of predicting no motion).
    """
    x, u = _windows(trajectories, horizon)
    with torch.no_grad():
        pred = model.rollout_chunk(x[:, 0], u)
    err = (pred[:, 1:, :3] - x[:, 1:, :3]).norm(dim=-1)
    base = (x[:, :1, :3] - x[:, 1:, :3]).norm(dim=-1)
    z_pred = torch.cross(pred[:, 1:, 3:6], pred[:, 1:, 6:9], dim=-1)
    z_true = torch.cross(x[:, 1:, 3:6], x[:, 1:, 6:9], dim=-1)
    cos = (z_pred * z_true).sum(-1).clamp(-1, 1)
    return {
        "horizon": horizon,
        "windows": int(x.shape[0]),
        "position_mm": (1000 * err.pow(2).mean(0).sqrt()).tolist(),
        "baseline_position_mm": (1000 * base.pow(2).mean(0).sqrt()).tolist(),
        "rotation_deg": torch.rad2deg(torch.acos(cos)).mean(0).tolist(),
        "gripper_mm": (1000 * (pred[:, 1:, 9:11] - x[:, 1:, 9:11]).pow(2).mean((0, 2)).sqrt()).tolist(),
    }


def fit(trajectories: list[tuple[np.ndarray, np.ndarray]], *, horizon: int = 8, hidden_dim: int = 256,
        num_layers: int = 3, epochs: int = 30, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
        validation: list[tuple[np.ndarray, np.ndarray]] | None = None, progress: bool = False) -> tuple[LearnedArmDynamics, dict]:
    """Fit :class:`LearnedArmDynamics` to trajectories by multi-step rollout error.

    The loss is the mean squared normalised error of the open-loop rollout over ``horizon``
    steps (the length of the policy's action chunk), so errors that compound over the chunk
    are penalised, not only one-step errors.

    Parameters
    ----------
    trajectories : list of (x, u)
        ``x`` ``(T, 14)`` arm states (see :func:`arm_states`), ``u`` ``(T, 7)`` actions.
    horizon : int
        Rollout length of the loss (steps).
    hidden_dim, num_layers : int
        Size of the MLP.
    epochs, batch_size, lr : training settings (AdamW, cosine schedule).
    seed : int
    validation : list of (x, u), optional
        Held-out trajectories for :func:`rollout_errors`.

    Returns
    -------
    model : LearnedArmDynamics
        In eval mode, with ``requires_grad`` off.
    metrics : dict
        ``train_loss`` per epoch and, with ``validation``, the :func:`rollout_errors`.
    """
    torch.manual_seed(seed)
    x, u = _windows(trajectories, horizon)
    model = LearnedArmDynamics(hidden_dim=hidden_dim, num_layers=num_layers)
    flat = x.reshape(-1, x.shape[-1])
    step = (x[:, 1:] - x[:, :-1]).reshape(-1, x.shape[-1])
    model.x_mean.copy_(flat.mean(0))
    model.x_std.copy_(flat.std(0).clamp_min(1e-3))
    model.dx_scale.copy_(step.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = x.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            pred = model.rollout_chunk(x[idx, 0], u[idx])
            loss = (((pred[:, 1:] - x[idx, 1:]) / model.x_std) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    model.eval()
    model.requires_grad_(False)
    metrics = {"train_loss": history}
    if validation:
        metrics["validation"] = rollout_errors(model, validation, horizon)
    return model, metrics
