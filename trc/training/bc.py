"""Behaviour cloning of the recursive visuomotor policy on LIBERO-layout demonstrations.

Recipe (``training:`` section, :class:`BCConfig`):

* demonstrations split **by demonstration** (``val_fraction`` of each task's demos held out);
* learned arm dynamics (:func:`dynamics.learned_arm.fit`) fitted on the training demos first,
  its open-loop error over the chunk horizon reported on the held-out ones;
* z-score normalisation of actions and arm states, stored in the checkpoint;
* images resized once to ``model.image_size``; augmentation per sample: brightness/contrast
  jitter and a random crop (pad by ``crop_pad`` pixels, crop back: random shifts, Yarats et
  al., DrQ, ICLR 2021);
* loss ``0.7 MSE + 0.3 L1`` on the normalised action chunk (padded steps past the end of a
  demonstration masked out), summed over refinement cycles with deep-supervision weights;
  optional halting loss;
* AdamW, linear warm-up then cosine decay, gradient clipping, early stopping on the
  validation loss, best weights kept.

A grid sweep over learning rate, width and recursion count (:func:`sweep`) writes a ranked
table (``sweep.md``, ``sweep.csv``).

The model file (written by the ``libero`` problem kind, :mod:`trc.kinds.libero`, in the format
of :mod:`trc.model_file`) holds the model configuration and weights, the normalisation, the
learned arm dynamics, the instruction embeddings and the problem section, so evaluation needs
nothing else.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tqdm import tqdm

from dynamics.errors import ConfigError, DatasetError
from dynamics.learned_arm import arm_states, fit

from ..config import check_choice, check_int, check_real
from ..generators.libero_storage import load_demos
from ..io import atomic_write_text
from ..models.halting import halting_loss
from ..models.visuomotor import CAMERAS, SentenceEncoder, VisuomotorPolicy

__all__ = [
    "BCConfig",
    "BCData",
    "build_data",
    "split_by_demo",
    "augment",
    "bc_loss",
    "train_bc",
    "train_libero",
    "sweep",
]


@dataclasses.dataclass
class BCConfig:
    """The ``training:`` section of a LIBERO configuration.

    Attributes
    ----------
    data : str
        Folder of ``*_demo.hdf5`` files (ours or LIBERO's official ones).
    epochs, batch_size : int
    lr, weight_decay : float
        AdamW settings.
    warmup_fraction : float
        Linear warm-up over this fraction of the optimiser steps, then cosine decay to 0.
    grad_clip : float
        Maximum global gradient norm.
    patience : int
        Early stopping: epochs without a lower validation loss.
    val_fraction : float
        Fraction of each task's demonstrations held out (at least one when a task has two).
    mse_weight, l1_weight : float
        Loss ``mse_weight * MSE + l1_weight * L1`` on normalised actions.
    cycle_weights : str
        Deep supervision over the chunks after each cycle: ``"last"``, ``"uniform"`` or ``"linear"``.
    halting_weight : float
        Weight of the halting loss (needs ``model.halting``).
    brightness, contrast : float
        Jitter amplitudes (multiplicative, uniform in ``1 +- value``).
    crop_pad : int
        Random-crop padding in pixels (0 disables).
    arm_epochs, arm_hidden_dim : int
        Learned arm dynamics training.
    max_demos_per_task : int, optional
        Use at most this many demonstrations per task.
    sweep : dict
        Grid for ``--sweep``: lists under ``lr``, ``latent_dim``, ``H_cycles``; ``epochs`` per run.
    """

    data: str = "datasets/libero_spatial"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    patience: int = 8
    val_fraction: float = 0.1
    mse_weight: float = 0.7
    l1_weight: float = 0.3
    cycle_weights: str = "linear"
    halting_weight: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    crop_pad: int = 4
    arm_epochs: int = 20
    arm_hidden_dim: int = 256
    max_demos_per_task: int | None = None
    num_threads: int | None = None
    sweep: dict = dataclasses.field(default_factory=lambda: {"lr": [3e-4, 1e-3], "latent_dim": [128, 192], "H_cycles": [1, 3], "epochs": 8})

    def __post_init__(self):
        for key in ("epochs", "batch_size", "patience", "arm_epochs", "arm_hidden_dim"):
            check_int(getattr(self, key), f"training.{key}", 1)
        check_real(self.lr, "training.lr (positive)", 0.0, low_open=True)
        check_real(self.val_fraction, "training.val_fraction", 0.0, 1.0, high_open=True)
        check_choice(self.cycle_weights, "training.cycle_weights", ("last", "uniform", "linear"))
        if self.mse_weight < 0 or self.l1_weight < 0 or self.mse_weight + self.l1_weight <= 0:
            raise ConfigError(f"training.mse_weight and l1_weight must be >= 0 and not both 0, got "
                              f"{self.mse_weight!r}, {self.l1_weight!r}")
        check_int(self.crop_pad, "training.crop_pad", 0)
        unknown = set(self.sweep) - {"lr", "latent_dim", "H_cycles", "epochs"}
        if unknown:
            raise ConfigError(f"training.sweep has unknown keys {sorted(unknown)}; allowed: lr, latent_dim, H_cycles, epochs")


# ---------------------------------------------------------------------- data
@dataclasses.dataclass
class BCData:
    """Frames of a set of demonstrations, ready for training (all tensors on CPU).

    Attributes
    ----------
    images : dict camera -> uint8 Tensor ``(N, 3, S, S)``
        Resized camera images of every frame.
    arm_state : Tensor ``(N, 14)``
    text : Tensor ``(N, 384)``
        Instruction embedding of each frame's task.
    actions : Tensor ``(N, chunk, 7)``
        Physical actions ``a[t : t + chunk]`` of each frame (repeating the last past the end).
    mask : Tensor ``(N, chunk)`` bool
        True for real (not padded) steps.
    demo : Tensor ``(N,)`` long
        Index of the frame's demonstration.
    trajectories : list of (x, u)
        Arm states ``(T, 14)`` and actions ``(T, 7)`` per demonstration (for the dynamics).
    """

    images: dict
    arm_state: torch.Tensor
    text: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    demo: torch.Tensor
    trajectories: list

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _resize(frames: np.ndarray, size: int) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, size, size)`` uint8, antialiased bilinear."""
    out = []
    for i in range(0, len(frames), 256):
        x = torch.as_tensor(np.ascontiguousarray(frames[i : i + 256])).permute(0, 3, 1, 2).float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def build_data(demos: Sequence, image_size: int, chunk: int, text_embeddings: dict) -> BCData:
    """Frames, chunks and arm states of demonstrations (:class:`~trc.generators.libero_storage.LiberoDemo`).

    Parameters
    ----------
    demos : sequence of LiberoDemo
    image_size : int
    chunk : int
        Action chunk length.
    text_embeddings : dict str -> array (384,)
        Embedding of every instruction.

    Raises
    ------
    DatasetError
        If ``demos`` is empty or an instruction has no embedding.
    """

    if not demos:
        raise DatasetError("no demonstrations to train on")
    imgs = {cam: [] for cam in CAMERAS}
    states, texts, acts, masks, ids, trajs = [], [], [], [], [], []
    for d_i, d in enumerate(demos):
        if d.language not in text_embeddings:
            raise DatasetError(f"no embedding for instruction {d.language!r}")
        T = len(d)
        x = arm_states(d.obs["ee_pos"], d.obs["ee_ori"], d.obs["gripper_states"])
        trajs.append((x, np.asarray(d.actions)))
        for cam in CAMERAS:
            imgs[cam].append(_resize(d.obs[cam], image_size))
        idx = np.minimum(np.arange(T)[:, None] + np.arange(chunk)[None, :], T - 1)
        acts.append(np.asarray(d.actions)[idx])
        masks.append((np.arange(T)[:, None] + np.arange(chunk)[None, :]) < T)
        states.append(x)
        texts.append(np.repeat(np.asarray(text_embeddings[d.language], dtype=np.float32)[None], T, 0))
        ids.append(np.full(T, d_i))
    return BCData(
        images={cam: torch.cat(v) for cam, v in imgs.items()},
        arm_state=torch.as_tensor(np.concatenate(states), dtype=torch.float32),
        text=torch.as_tensor(np.concatenate(texts)),
        actions=torch.as_tensor(np.concatenate(acts), dtype=torch.float32),
        mask=torch.as_tensor(np.concatenate(masks)),
        demo=torch.as_tensor(np.concatenate(ids)),
        trajectories=trajs,
    )


def split_by_demo(demos: Sequence, val_fraction: float, seed: int) -> tuple[list, list]:
    """Split demonstrations into train and validation sets, per task, by whole demonstrations."""
    rng = np.random.default_rng(seed)
    by_task: dict[str, list] = {}
    for d in demos:
        by_task.setdefault(d.language, []).append(d)
    train, val = [], []
    for lang in sorted(by_task):
        group = by_task[lang]
        order = rng.permutation(len(group))
        n_val = int(round(val_fraction * len(group)))
        if val_fraction > 0 and len(group) >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, len(group) - 1)
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def augment(images: torch.Tensor, brightness: float, contrast: float, crop_pad: int, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch ``(B, 3, S, S)`` float in ``[0, 1]``: brightness/contrast jitter and random crop.

    Each sample gets its own factors ``b ~ U(1 - brightness, 1 + brightness)``,
    ``c ~ U(1 - contrast, 1 + contrast)`` (``x <- clip(c (b x - m) + m)``, ``m`` the image mean)
    and its own shift of up to ``crop_pad`` pixels (replicate padding, then crop).
    """
    B = images.shape[0]
    dev = images.device
    if brightness > 0:
        b = 1 + brightness * (2 * torch.rand(B, 1, 1, 1, generator=generator) - 1)
        images = images * b.to(dev)
    if contrast > 0:
        c = 1 + contrast * (2 * torch.rand(B, 1, 1, 1, generator=generator) - 1)
        m = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - m) * c.to(dev) + m
    images = images.clamp(0, 1)
    if crop_pad > 0:
        S = images.shape[-1]
        padded = F.pad(images, (crop_pad,) * 4, mode="replicate")
        ox = torch.randint(0, 2 * crop_pad + 1, (B,), generator=generator)
        oy = torch.randint(0, 2 * crop_pad + 1, (B,), generator=generator)
        # gather crops without a Python loop: index with per-sample offset grids
        ar = torch.arange(S)
        rows = (oy[:, None] + ar[None, :]).to(dev)  # (B, S)
        cols = (ox[:, None] + ar[None, :]).to(dev)
        bidx = torch.arange(B, device=dev)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return images


def _cycle_weights(scheme: str, n: int) -> list[float]:
    """Weights of the ``n`` outputs after cycles ``1..n`` (the initial decode gets 0)."""
    if scheme == "last":
        w = [0.0] * (n - 1) + [1.0]
    elif scheme == "uniform":
        w = [1.0] * n
    else:
        w = [float(k + 1) for k in range(n)]
    s = sum(w)
    return [x / s for x in w]


def bc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, mse_weight: float = 0.7,
            l1_weight: float = 0.3, reduce: bool = True) -> torch.Tensor:
    """``mse_weight * MSE + l1_weight * L1`` of normalised chunks over the unmasked steps.

    ``pred``, ``target`` ``(B, chunk, 7)``, ``mask`` ``(B, chunk)`` bool. Returns a scalar, or
    ``(B,)`` per-sample losses with ``reduce=False``.
    """
    m = mask.unsqueeze(-1).to(pred.dtype)
    diff = pred - target
    per = (mse_weight * diff.pow(2) + l1_weight * diff.abs()) * m
    per_sample = per.sum((1, 2)) / (m.sum((1, 2)) * pred.shape[-1]).clamp_min(1)
    return per_sample.mean() if reduce else per_sample


# ---------------------------------------------------------------------- training
def _batch(data: BCData, idx: torch.Tensor, policy, cfg: BCConfig | None, gen: torch.Generator | None):

    imgs = {}
    for cam in CAMERAS:
        x = data.images[cam][idx].float() / 255.0
        if cfg is not None:
            x = augment(x, cfg.brightness, cfg.contrast, cfg.crop_pad, gen)
        imgs[cam] = x
    target = policy.normalize_actions(data.actions[idx])
    return imgs, data.text[idx], data.arm_state[idx], target, data.mask[idx]


def _loss(policy, out, target, mask, cfg: BCConfig) -> tuple[torch.Tensor, torch.Tensor]:

    n = len(out.all_actions) - 1
    weights = _cycle_weights(cfg.cycle_weights, n)
    per_cycle = torch.stack([bc_loss(a, target, mask, cfg.mse_weight, cfg.l1_weight, reduce=False) for a in out.all_actions])
    loss = sum(w * per_cycle[k + 1].mean() for k, w in enumerate(weights))
    if cfg.halting_weight > 0 and out.halt_logits is not None:
        loss = loss + cfg.halting_weight * halting_loss(out.halt_logits, per_cycle, threshold=0.02)
    return loss, per_cycle[-1].mean()


@torch.no_grad()
def _evaluate(policy, data: BCData, batch_size: int, cfg: BCConfig) -> float:
    policy.eval()
    total, n = 0.0, 0
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        imgs, text, arm, target, mask = _batch(data, idx, policy, None, None)
        out = policy(imgs, text, arm)
        total += float(bc_loss(out.actions, target, mask, cfg.mse_weight, cfg.l1_weight)) * len(idx)
        n += len(idx)
    policy.train()
    return total / max(n, 1)


def train_bc(policy, train: BCData, val: BCData | None, cfg: BCConfig, *, seed: int = 0, epochs: int | None = None,
             progress: bool = True, log=None) -> dict:
    """Train ``policy`` in place by behaviour cloning; keeps the weights of the best validation loss.

    Returns
    -------
    dict
        ``history`` (per epoch: ``train_loss``, ``val_loss``, ``lr``, ``seconds``),
        ``best_val_loss``, ``best_epoch``, ``cpu_seconds``, ``stopped_early``.
    """

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    epochs = cfg.epochs if epochs is None else int(epochs)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    total_steps = epochs * steps_per_epoch
    warm = max(1, int(cfg.warmup_fraction * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total_steps - warm)))
    )
    best, best_epoch, best_state, bad = math.inf, -1, None, 0
    history = []
    cpu0 = time.process_time()
    policy.train()
    for epoch in range(epochs):
        t0 = time.time()
        perm = torch.randperm(len(train), generator=gen)
        run, seen = 0.0, 0
        bar = tqdm(range(0, len(train), cfg.batch_size), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = perm[i : i + cfg.batch_size]
            imgs, text, arm, target, mask = _batch(train, idx, policy, cfg, gen)
            out = policy(imgs, text, arm)
            loss, final = _loss(policy, out, target, mask, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            run += float(final.detach()) * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{run / seen:.4f}")
        val_loss = _evaluate(policy, val, cfg.batch_size, cfg) if val is not None and len(val) else run / seen
        rec = {"epoch": epoch + 1, "train_loss": run / seen, "val_loss": val_loss, "lr": opt.param_groups[0]["lr"],
               "seconds": time.time() - t0}
        history.append(rec)
        if log is not None:
            log(rec)
        if val_loss < best - 1e-6:
            best, best_epoch, bad = val_loss, epoch + 1, 0
            best_state = copy.deepcopy(policy.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        policy.load_state_dict(best_state)
    policy.eval()
    return {"history": history, "best_val_loss": best, "best_epoch": best_epoch,
            "cpu_seconds": time.process_time() - cpu0, "stopped_early": len(history) < epochs}


# ---------------------------------------------------------------------- the whole pipeline
def _prepare(problem, model_cfg, cfg: BCConfig, seed: int, data_dir: str | None, log):

    folder = Path(data_dir or cfg.data)
    demos = load_demos(folder, obs_keys=("ee_pos", "ee_ori", "gripper_states", *CAMERAS))
    if cfg.max_demos_per_task is not None:
        kept, count = [], {}
        for d in demos:
            if count.get(d.language, 0) < cfg.max_demos_per_task:
                kept.append(d)
                count[d.language] = count.get(d.language, 0) + 1
        demos = kept
    train_demos, val_demos = split_by_demo(demos, cfg.val_fraction, seed)
    log(f"{len(demos)} demonstrations ({len(train_demos)} train, {len(val_demos)} validation) from {folder}")
    encoder = SentenceEncoder()
    langs = sorted({d.language for d in demos})
    emb = encoder.encode(langs)
    text_embeddings = {s: emb[i].numpy() for i, s in enumerate(langs)}
    train = build_data(train_demos, model_cfg.image_size, model_cfg.chunk, text_embeddings)
    val = build_data(val_demos, model_cfg.image_size, model_cfg.chunk, text_embeddings) if val_demos else None
    t0 = time.process_time()
    arm, arm_metrics = fit(train.trajectories, horizon=model_cfg.chunk, hidden_dim=cfg.arm_hidden_dim,
                           epochs=cfg.arm_epochs, batch_size=64, lr=2e-3, seed=seed,
                           validation=val.trajectories if val else None)
    arm_metrics["cpu_seconds"] = time.process_time() - t0
    if "validation" in arm_metrics:
        v = arm_metrics["validation"]
        log(f"learned arm dynamics: position error over {v['horizon']} steps "
            f"{v['position_mm'][0]:.2f} .. {v['position_mm'][-1]:.2f} mm (no-motion baseline "
            f"{v['baseline_position_mm'][-1]:.2f} mm), rotation {v['rotation_deg'][-1]:.2f} deg")
    return train, val, arm, arm_metrics, text_embeddings


def _make_policy(model_cfg, arm, train: BCData):

    policy = VisuomotorPolicy(model_cfg, copy.deepcopy(arm) if model_cfg.feedback else None)
    policy.set_normalization(train.actions[:, 0], train.arm_state)
    return policy


def train_libero(problem, model_cfg, cfg: BCConfig, out_dir: str | os.PathLike, *, seed: int = 0,
                 epochs: int | None = None, data_dir: str | None = None, progress: bool = True, log=print):
    """Train the visuomotor policy of a LIBERO configuration; write ``metrics.json`` and ``metrics.jsonl``.

    Parameters
    ----------
    problem : trc.generators.libero_storage.LiberoProblem
    model_cfg : trc.models.visuomotor.VisuomotorConfig
    cfg : BCConfig
    out_dir : path
        Run folder.
    seed : int
    epochs : int, optional
        Overrides ``training.epochs``.
    data_dir : path, optional
        Overrides ``training.data``.

    Returns
    -------
    policy : VisuomotorPolicy
        The trained policy (best weights, eval mode) with its ``problem`` and ``metadata``
        (``text_embeddings``: instruction to embedding, ``metrics``), ready for :func:`trc.save`.
    metrics : dict
        Training metrics (also in ``metrics.json``).
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu0 = time.process_time()
    train, val, arm, arm_metrics, text_embeddings = _prepare(problem, model_cfg, cfg, seed, data_dir, log)
    policy = _make_policy(model_cfg, arm, train)
    log(f"policy: {policy.num_parameters():,} trainable parameters ({model_cfg.encoder} encoder, random init)")
    lines = []

    def log_epoch(rec):
        lines.append(json.dumps(rec))
        log(f"epoch {rec['epoch']}: train {rec['train_loss']:.4f}  val {rec['val_loss']:.4f}  ({rec['seconds']:.0f} s)")

    result = train_bc(policy, train, val, cfg, seed=seed, epochs=epochs, progress=progress, log=log_epoch)
    metrics = {
        "train_frames": len(train), "val_frames": len(val) if val else 0,
        "parameters": policy.num_parameters(), "arm_dynamics": arm_metrics,
        "best_val_loss": result["best_val_loss"], "best_epoch": result["best_epoch"],
        "stopped_early": result["stopped_early"], "history": result["history"],
        "train_cpu_seconds": result["cpu_seconds"], "total_cpu_seconds": time.process_time() - cpu0,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    atomic_write_text(out / "metrics.jsonl", "\n".join(lines) + "\n")
    policy.problem = problem
    policy.metadata = {"text_embeddings": text_embeddings, "metrics": json.loads(json.dumps(metrics, default=float))}
    return policy, metrics


def sweep(problem, model_cfg, cfg: BCConfig, out_dir: str | os.PathLike, *, seed: int = 0,
          data_dir: str | None = None, progress: bool = False, log=print) -> list[dict]:
    """Grid search over ``training.sweep`` (lr x latent_dim x H_cycles), ranked by validation loss.

    Data and learned dynamics are prepared once. Writes ``sweep.csv`` and ``sweep.md`` in
    ``out_dir`` and returns the rows, best first. The arguments are those of :func:`train_libero`.
    """
    grid = cfg.sweep
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, val, arm, _, _ = _prepare(problem, model_cfg, cfg, seed, data_dir, log)
    rows = []
    for lr, width, H in itertools.product(grid.get("lr", [cfg.lr]), grid.get("latent_dim", [model_cfg.latent_dim]),
                                          grid.get("H_cycles", [model_cfg.H_cycles])):
        mc = dataclasses.replace(model_cfg, latent_dim=int(width), hidden_dim=2 * int(width), H_cycles=int(H))
        tc = dataclasses.replace(cfg, lr=float(lr))
        policy = _make_policy(mc, arm, train)
        t0 = time.process_time()
        res = train_bc(policy, train, val, tc, seed=seed, epochs=int(grid.get("epochs", cfg.epochs)), progress=progress)
        rows.append({"lr": lr, "latent_dim": width, "H_cycles": H, "parameters": policy.num_parameters(),
                     "best_val_loss": res["best_val_loss"], "best_epoch": res["best_epoch"],
                     "cpu_seconds": round(time.process_time() - t0, 1)})
        log(f"sweep lr={lr} latent_dim={width} H_cycles={H}: val {res['best_val_loss']:.4f}")
    rows.sort(key=lambda r: r["best_val_loss"])

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    md = ["| rank | lr | latent_dim | H_cycles | parameters | best val loss | best epoch | CPU s |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows, 1):
        md.append(f"| {i} | {r['lr']:g} | {r['latent_dim']} | {r['H_cycles']} | {r['parameters']:,} | "
                  f"{r['best_val_loss']:.4f} | {r['best_epoch']} | {r['cpu_seconds']} |")
    atomic_write_text(out / "sweep.md", "\n".join(md) + "\n")
    return rows
