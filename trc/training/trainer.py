"""The training loop of TRC: AdamW, warm-up + cosine schedule, EMA, deep supervision, resume, DDP.

One :class:`Trainer` trains one model on one data set::

    trainer = Trainer(model, data, TrainConfig(epochs=100), out_dir="runs/di")
    result = trainer.fit()          # result.model holds the best EMA weights

Per optimiser step: a forward pass with ``return_all_iterations=True``, the loss of
:class:`~trc.training.losses.TRCLoss` over every refinement cycle, backward, gradient
clipping (``clip_grad_norm_``), an AdamW step (Loshchilov & Hutter, ICLR 2019), a scheduler
step (linear warm-up from 1 % of ``lr``, then cosine to ``lr * min_lr_ratio``:
``torch.optim.lr_scheduler.SequentialLR`` of ``LinearLR`` and ``CosineAnnealingLR``) and an
update of the exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``
with the warm-up decay ``min(decay, (1 + t) / (10 + t))`` of TensorFlow's
``ExponentialMovingAverage``, so early averages do not remember the random initialisation).

Per epoch: validation of the EMA model on the validation split (median cost gap
``J_TRC / J_opt - 1`` and success rate, :func:`trc.evaluation.evaluate_model`), early stopping
on the monitored metric, a row of metrics appended to ``metrics.csv`` and ``metrics.jsonl``
(and TensorBoard when installed), and an atomic checkpoint ``checkpoint.pt`` with everything
needed to resume: weights, EMA, optimiser, scheduler, epoch, history, early-stopping state and
the random generators of every process. A run resumed after ``kill -9`` continues from the last
finished epoch and ends with the same weights as an uninterrupted run.

Under ``torchrun`` the model is wrapped in ``DistributedDataParallel``, each process takes a
shard of every epoch from ``DistributedSampler``, and only rank 0 writes files.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from dynamics.errors import CheckpointError, ConfigError

from ..data import suffix_split
from ..evaluation import evaluate_model, split_data
from ..io import atomic_write_text
from .checkpoint import (
    read_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
)
from .config import TrainConfig
from .distributed import DistributedContext, all_reduce_mean
from .losses import TRCLoss, control_scale, state_scale

__all__ = ["Trainer", "TrainResult", "ema_multi_avg_fn", "build_optimizer", "build_scheduler", "CHECKPOINT_NAME"]

#: File name of the resumable training state inside a run folder.
CHECKPOINT_NAME = "checkpoint.pt"


def ema_multi_avg_fn(decay: float):
    """EMA update for :class:`torch.optim.swa_utils.AveragedModel` with a warm-up decay.

    ``w_ema <- d_t w_ema + (1 - d_t) w`` with ``d_t = min(decay, (1 + t) / (10 + t))``, ``t``
    the number of updates so far (TensorFlow ``tf.train.ExponentialMovingAverage`` with
    ``num_updates``). The first call copies the weights (``AveragedModel`` does that itself).
    """

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        t = float(num_averaged)
        d = min(decay, (1.0 + t) / (10.0 + t))
        torch._foreach_lerp_(list(ema_params), list(params), 1.0 - d)

    return update


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases, norms and 1-D parameters undecayed)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warm-up over ``warmup_fraction`` of ``total_steps``, then cosine decay (per step)."""
    warm = int(round(cfg.warmup_fraction * total_steps))
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warm, 1), eta_min=cfg.lr * cfg.min_lr_ratio)
    if warm == 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warm)
    return SequentialLR(optimizer, [linear, cosine], milestones=[warm])


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes
    ----------
    model : torch.nn.Module
        The trained model (not DDP-wrapped) holding the best EMA weights, in eval mode.
    history : list of dict
        One row of metrics per epoch.
    best_epoch : int
        Epoch (1-based) whose validation metric was best.
    best_metric : float
        Its value.
    epochs_run : int
        Epochs finished (including those of an interrupted run that was resumed).
    stop_reason : str
        ``"epochs"``, ``"early_stopping"`` or ``"time_budget"``.
    train_seconds : float
        Wall time of the training loop, summed over interrupted and resumed parts.
    """

    model: torch.nn.Module
    history: list
    best_epoch: int
    best_metric: float
    epochs_run: int
    stop_reason: str
    train_seconds: float


class Trainer:
    """Train a :class:`~trc.models.TinyRecursiveControl` on a generated data set.

    Parameters
    ----------
    model : TinyRecursiveControl
        Built for ``data.problem`` (it carries the plant used for the rollouts).
    data : trc.data.TrajectoryData
        The data set (train and val splits are used).
    config : TrainConfig
        Optimisation settings.
    out_dir : path-like, optional
        Run folder for ``checkpoint.pt``, ``metrics.csv``, ``metrics.jsonl``. ``None`` writes
        nothing (and cannot resume).
    ctx : DistributedContext, optional
        Process-group information; default a single process on ``config.device``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` if it exists.
    run_config : dict, optional
        The full configuration of the run, stored in checkpoints; a resumed run must have the
        same ``problem`` and ``model`` sections.
    progress : bool
        Show a tqdm progress bar (rank 0).
    callbacks : sequence of callable, optional
        ``callback(trainer, row)`` after every epoch, once the checkpoint is written (e.g. to
        report progress, or to simulate an interruption in tests by raising).

    Raises
    ------
    ConfigError
        If the halting loss is requested for a model without a halting head.
    CheckpointError
        When resuming from a checkpoint of another run (other problem or model) or an
        unreadable one.
    """

    def __init__(self, model, data, config: TrainConfig, *, out_dir=None, ctx: DistributedContext | None = None,
                 resume: bool = False, run_config: dict | None = None, progress: bool = True, callbacks=()):
        self.cfg = config
        self.ctx = ctx or DistributedContext(device=torch.device("cpu"))
        self.data = data
        self.problem = data.problem
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.resume = resume
        self.run_config = run_config or {}
        self.progress = progress and self.ctx.is_main
        self.callbacks = list(callbacks)
        if config.loss.halting > 0 and getattr(model, "halting", None) is None:
            raise ConfigError("training.loss.halting > 0 needs a model with a halting head; set model.act: true")

        device = self.ctx.device
        self.model = model.to(device)
        train = data.train
        self.time_to_go = bool(getattr(model.config, "time_to_go", False))
        if self.time_to_go:  # the model plans with the time left: train on suffixes
            train = suffix_split(train, self.problem)
        plant = model.plant if model.plant is not None else self.problem.make_plant().to(device)
        # Loss scales: control half-ranges, the model's own state normalisation (or the data's
        # spread), and the floor of J* in the cost ratio from the median optimal cost.
        self.u_scale = control_scale(plant, train.controls).to(device)
        x_scale = getattr(model, "state_scale", None)
        self.x_scale = (x_scale if x_scale is not None else state_scale(train.states)).to(device)
        floor = config.loss.cost_floor * float(train.cost.double().median()) if len(train) else 0.0
        traj_scale = state_scale(train.states).to(device)
        if getattr(model, "trajectory_scale", None) is not None:  # the state head predicts in these units
            model.trajectory_scale.copy_(traj_scale)
        self.loss_fn = TRCLoss(
            self.problem, plant, config.loss, model.config.H_cycles, self.u_scale, self.x_scale,
            cost_floor=max(floor, 1e-12), halt_threshold=model.config.halt_threshold,
            reuse_rollouts=not model.config.detach_feedback, traj_scale=traj_scale,
        )
        if self.ctx.distributed:
            unused = getattr(model, "halting", None) is not None and config.loss.halting == 0
            # Buffers (plant parameters, normalisation) are constants: synced once at construction,
            # not before every forward (the keyword was renamed in recent PyTorch).

            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else "broadcast_buffers")
            self.ddp = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                           find_unused_parameters=unused, **{no_sync: False})
        else:
            self.ddp = self.model
        self.ema = None
        if config.ema_decay is not None:
            self.ema = AveragedModel(self.model, multi_avg_fn=ema_multi_avg_fn(config.ema_decay))
            self.ema.module.eval()

        # ---- data order: one generator, saved in checkpoints
        self.loader_generator = torch.Generator().manual_seed(config.seed)
        self.per_rank_batch = math.ceil(config.batch_size / self.ctx.world_size)
        if self.ctx.distributed:
            self.sampler = DistributedSampler(train, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                              shuffle=True, seed=config.seed, drop_last=False)
        else:
            self.sampler = RandomSampler(train, generator=self.loader_generator)
        self.loader = DataLoader(train, sampler=BatchSampler(self.sampler, self.per_rank_batch, drop_last=False),
                                 batch_size=None)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_steps)

        # ---- state
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.best_metric = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict | None = None
        self.train_seconds = 0.0
        self.stop_reason = ""
        self.writer = None
        self._val = None
        self._u0_val = None  # the validation plans of _first_control_error (suffixed once)

    # ------------------------------------------------------------------ helpers
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_NAME

    def eval_model(self) -> torch.nn.Module:
        """The model that is validated and exported: the EMA model when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def _validate(self) -> dict[str, Any]:
        if self._val is None:
            self._val = split_data(self.data, "val")
        if len(self._val) == 0:  # no validation split: no early stopping, the final weights are exported
            return {}
        model = self.eval_model()
        ev = evaluate_model(model, self.problem, self._val, batch_size=self.cfg.eval_batch_size,
                            plot_samples=0, timing=False)
        u0_error = self._first_control_error(model)
        self.model.train()
        m = ev.metrics
        return {
            "val_first_control_error": u0_error,
            "val_cost_gap_median": m["cost_gap_median"],
            "val_cost_gap_p95": m["cost_gap_p95"],
            "val_cost_gap_mean": m["cost_gap_mean"],
            "val_success_rate": m["success_rate"],
            "val_failure_rate": 1.0 - m["success_rate"],
            "val_terminal_error_mean": m["terminal_error_mean"],
            "val_gap_per_cycle": m["gap_per_cycle"],
        }

    def _first_control_error(self, model) -> float:
        """RMS of ``(u_0 - u*_0) / s_u`` over the validation plans (their suffixes for a model with
        ``time_to_go``): the control a receding-horizon controller applies."""
        if self._u0_val is None:
            self._u0_val = suffix_split(self.data.val, self.problem) if self.time_to_go else self.data.val
        val, device, total = self._u0_val, self.ctx.device, 0.0
        model.eval()
        with torch.inference_mode():
            for batch in val.batches(self.cfg.eval_batch_size, shuffle=False):
                batch = {k: v.to(device) for k, v in batch.items()}
                k = {"steps_to_go": batch["steps_to_go"]} if self.time_to_go else {}
                u0 = model(batch["x0"], batch["target"], **k)[:, 0]
                total += float((((u0 - batch["controls"][:, 0]) / self.u_scale) ** 2).sum())
        return math.sqrt(total / (max(len(val), 1) * self.problem.control_dim))

    def _state(self) -> dict:
        rng = rng_state(self.loader_generator)
        if self.ctx.distributed:
            gathered = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "history": self.history,
            "config": _plain(self.run_config),
            "train_config": self.cfg.to_dict(),
            "early_stopping": {"best_metric": self.best_metric, "best_epoch": self.best_epoch,
                               "bad_epochs": self.bad_epochs},
            "best_state": self.best_state,
            "train_seconds": self.train_seconds,
            "stop_reason": self.stop_reason,
            "world_size": self.ctx.world_size,
        }

    def check_resume(self) -> None:
        """Check, without changing anything, that this run can resume from its checkpoint.

        Called before a run writes any file, so that a refused ``--resume`` leaves the run
        folder as it was. Does nothing when not resuming or when there is no checkpoint.

        Raises
        ------
        CheckpointError
            If the checkpoint is unreadable or belongs to another run (problem, model or
            training settings differ).
        """
        path = self.checkpoint_path
        if self.resume and path is not None and path.exists():
            self._check_state(read_training_state(path), path)

    def _check_state(self, state: dict, path: Path) -> None:
        saved = state.get("config") or {}
        for section in ("problem", "model"):
            if section in saved and section in self.run_config and saved[section] != _plain(self.run_config[section]):
                raise CheckpointError(
                    f"cannot resume from {str(path)!r}: its {section!r} section {saved[section]!r} differs from "
                    f"this run's {_plain(self.run_config[section])!r}; use another --out or the same config"
                )
        # The optimisation must be the same run; settings that do not change the weights may differ.
        free = {"max_minutes", "num_threads", "tensorboard", "eval_batch_size", "device"}
        old = {k: v for k, v in (state.get("train_config") or {}).items() if k not in free}
        new = {k: v for k, v in self.cfg.to_dict().items() if k not in free}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if old and changed:
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: training settings {changed} differ from the checkpoint's "
                f"({ {k: old.get(k) for k in changed} } vs now { {k: new.get(k) for k in changed} }); a resumed run "
                f"must repeat the interrupted one (only {sorted(free)} may change)"
            )

    def _load_state(self, path: Path) -> None:
        state = read_training_state(path)
        self._check_state(state, path)
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            elif self.ema is not None and self.epoch == 0:
                raise CheckpointError(f"checkpoint {str(path)!r} has no EMA weights but training.ema_decay is set")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model/optimiser: {exc}") from exc
        rngs = state["rng"]
        rng = rngs[self.ctx.rank] if len(rngs) == self.ctx.world_size else rngs[0]
        set_rng_state(rng, self.loader_generator)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        es = state["early_stopping"]
        self.best_metric = float(es["best_metric"])
        self.best_epoch, self.bad_epochs = int(es["best_epoch"]), int(es["bad_epochs"])
        self.best_state = state.get("best_state")
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.stop_reason = state.get("stop_reason", "")

    def _log(self, row: dict) -> None:
        """Rewrite metrics.csv / metrics.jsonl from the history (atomic) and log to TensorBoard."""
        if self.out_dir is None or not self.ctx.is_main:
            return
        atomic_write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        columns: list[str] = []
        for r in self.history:
            columns += [k for k, v in r.items() if k not in columns and not isinstance(v, (list, dict))]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v):
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()

    def _open_tensorboard(self) -> None:
        if self.out_dir is None or not self.ctx.is_main or not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    # ------------------------------------------------------------------ main loop
    def fit(self) -> TrainResult:
        """Train until ``epochs``, early stopping or the time budget; see the module doc.

        Returns
        -------
        TrainResult
        """
        threads = torch.get_num_threads()
        if self.cfg.num_threads is not None:
            torch.set_num_threads(self.cfg.num_threads)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads)

    def _fit(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        if self.out_dir is not None and ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.checkpoint_path
        if self.resume and ckpt is not None and ckpt.exists():
            self._load_state(ckpt)
        self._open_tensorboard()
        done = bool(self.stop_reason) or self.epoch >= cfg.epochs
        bar = None
        if self.progress and not done:
            bar = tqdm(total=cfg.epochs, initial=self.epoch, desc=f"train {self.problem.name}", unit="epoch",
                       dynamic_ncols=True)
        self.model.train()
        while not done:
            t0 = time.perf_counter()
            if isinstance(self.sampler, DistributedSampler):
                self.sampler.set_epoch(self.epoch)
            sums: dict[str, float] = {}
            count = 0
            for batch in self.loader:
                batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
                k = {"steps_to_go": batch["steps_to_go"]} if "steps_to_go" in batch else {}
                out = self.ddp(batch["x0"], batch["target"], return_all_iterations=True, **k)
                loss, parts = self.loss_fn(out, batch["x0"], batch["target"], batch["controls"], batch["cost"],
                                           batch.get("states"), **k)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                b = batch["x0"].shape[0]
                count += b
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * b
                if not math.isfinite(parts["loss"]):
                    raise FloatingPointError(
                        f"training loss became {parts['loss']} at epoch {self.epoch + 1}, step {self.step}; "
                        f"lower training.lr (now {cfg.lr}) or set training.grad_clip"
                    )
            self.epoch += 1
            train_metrics = all_reduce_mean({f"train_{k}": v / max(count, 1) for k, v in sorted(sums.items())}, ctx)
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                                   **train_metrics}
            if self.epoch % cfg.val_every == 0 or self.epoch >= cfg.epochs:
                row.update(self._validate())
            if f"val_{cfg.monitor}" in row:
                metric = row[f"val_{cfg.monitor}"]
                if metric < self.best_metric - cfg.early_stopping_min_delta or self.best_state is None:
                    self.best_metric = metric if math.isfinite(metric) else self.best_metric
                    self.best_epoch = self.epoch
                    self.bad_epochs = 0
                    self.best_state = {k: v.detach().clone() for k, v in self.eval_model().state_dict().items()}
                else:
                    self.bad_epochs += 1
            self.train_seconds += time.perf_counter() - t0
            row["epoch_seconds"] = time.perf_counter() - t0
            row["train_seconds"] = self.train_seconds
            self.history.append(row)
            # ---- stopping decisions (agreed by all processes)
            stop = ""
            if cfg.early_stopping_patience is not None and self.bad_epochs >= cfg.early_stopping_patience:
                stop = "early_stopping"
            elif self.epoch >= cfg.epochs:
                stop = "epochs"
            elif cfg.max_minutes is not None:
                over = all_reduce_mean({"over": float(self.train_seconds > 60 * cfg.max_minutes)}, ctx)["over"]
                if over > 0:
                    stop = "time_budget"
            self.stop_reason = stop
            done = bool(stop)
            state = self._state() if ckpt is not None else None  # collective under DDP: all ranks call it
            if ctx.is_main and state is not None:
                save_training_state(ckpt, state)
            self._log(row)
            for callback in self.callbacks:
                callback(self, row)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{row.get('train_loss', math.nan):.4g}"}
                if "val_cost_gap_median" in row:
                    post["val_gap"] = f"{row['val_cost_gap_median']:.4f}"
                    post["val_succ"] = f"{row['val_success_rate']:.3f}"
                bar.set_postfix(post)
        if bar is not None:
            bar.close()
        if self.writer is not None:
            self.writer.close()
        final = self.model
        if self.best_state is not None:
            final = copy.deepcopy(self.model)
            final.load_state_dict(self.best_state)
        elif self.ema is not None:
            final = copy.deepcopy(self.ema.module)
        final.eval()
        return TrainResult(model=final, history=self.history, best_epoch=self.best_epoch, best_metric=self.best_metric,
                           epochs_run=self.epoch, stop_reason=self.stop_reason, train_seconds=self.train_seconds)


def _plain(obj):
    """Nested data as plain Python (tuples to lists, dataclasses to dicts) for checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
