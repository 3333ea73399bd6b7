"""Data-parallel training under ``torchrun``: process group set-up and small collectives.

``torchrun --nproc_per_node=W -m trc.train ...`` starts ``W`` processes and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed`
reads them and joins the process group (``gloo`` on CPU, ``nccl`` on CUDA). Without those
variables everything runs in one process and the helpers here are no-ops, so the trainer has
one code path.

Only the main process (rank 0) writes files; every process computes the validation metrics
on the full validation split, so early-stopping decisions agree without communication.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dynamics.errors import ConfigError

__all__ = ["DistributedContext", "init_distributed", "shutdown_distributed", "all_reduce_mean"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes
    ----------
    rank : int
        Global rank, 0 for the main process.
    world_size : int
        Number of processes ``W`` (1 without ``torchrun``).
    local_rank : int
        Rank on this machine (selects the CUDA device).
    device : torch.device
        Device of this process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for all processes (no-op in a single process)."""
        if self.distributed:
            dist.barrier()


def _select_device(device: str, local_rank: int) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("training.device is 'cuda' but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group started by ``torchrun``, or describe a single process.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        Device preference (``training.device``).

    Returns
    -------
    DistributedContext

    Notes
    -----
    The backend is ``nccl`` on CUDA and ``gloo`` on CPU. Calling this twice in a process
    that already joined the group returns the same context.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _select_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float], ctx: DistributedContext) -> dict[str, float]:
    """Average a dict of floats over all processes (identity in a single process).

    Every process must pass the same keys in the same order.
    """
    if not ctx.distributed or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= ctx.world_size
    return dict(zip(keys, t.tolist()))
