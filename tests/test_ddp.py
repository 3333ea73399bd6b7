"""Data-parallel training: ``torchrun --nproc_per_node=2 -m trc.train`` on a tiny problem (gloo, CPU),
and two processes against one: the same global batches must give the same weights."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import trc
from trc.data import load_dataset
from trc.experiment import experiment_from_dict
from trc.generators.pipeline import generate
from trc.models import TinyRecursiveControl, TRCConfig
from trc.training import TrainConfig, Trainer
from trc.training.distributed import DistributedContext, init_distributed, shutdown_distributed

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "problem": {
        "name": "di_ddp",
        "plant": {"name": "double_integrator", "u_min": -10, "u_max": 10},
        "dt": 0.33,
        "horizon": 8,
        "Q": [10, 5],
        "R": [0.1],
        "Qf_scale": 20,
        "initial_state": {"low": [-1, -1], "high": [1, 1]},
        "target_state": {"low": [-1, -1], "high": [1, 1]},
        "tolerance": 0.1,
    },
    "generator": {"solver": "lqr", "num_samples": 160, "chunk_size": 160},
    "model": {"latent_dim": 16, "hidden_dim": 32, "H_cycles": 2, "L_cycles": 1},
    "training": {"epochs": 2, "batch_size": 32, "lr": 3e-3, "num_threads": 1, "tensorboard": False},
    "evaluation": {"latency_repeats": 3, "throughput_batch": 16, "throughput_repeats": 1, "plot_samples": 2},
}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_torchrun_two_processes(tmp_path):
    cfg = {**CONFIG, "generator": {**CONFIG["generator"], "out": str(tmp_path / "di_ddp.h5")}}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "trc.train", "--config", str(tmp_path / "ddp.yaml"), "--out", str(out), "--quiet", "--workers", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the data set was generated once (rank 0), then both processes trained
    assert (tmp_path / "di_ddp.h5").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["epochs_run"] == 2
    # only rank 0 wrote: one header and one row per epoch
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # 128 training samples, 64 per process, global batch 32 = 16 per process: 4 steps per epoch
    assert [int(r["step"]) for r in rows] == [4, 8]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # the generators of both ranks
    assert "success rate" in proc.stdout and proc.stdout.count("success rate") == 1

    model = trc.load(out / "model.pt")
    assert model(torch.zeros(3, 2), torch.ones(3, 2)).shape == (3, 8, 1)


# ----------------------------------------------------------------------------- 2 processes == 1 process
#: One epoch of 256 training samples in global batches of 32: 8 optimiser steps, with warm-up,
#: cosine schedule, gradient clipping and EMA. Two processes take 16 samples each per step.
EQUIVALENCE_TRAINING = {"epochs": 1, "batch_size": 32, "lr": 3e-3, "ema_decay": 0.9, "grad_clip": 1.0,
                        "warmup_fraction": 0.25, "num_threads": 1, "tensorboard": False, "seed": 3}
EQUIVALENCE_MODEL = TRCConfig(latent_dim=16, hidden_dim=32, H_cycles=2, L_cycles=1)


def _train_once(data_path: str, ctx=None) -> dict:
    """Train the seeded tiny model on the data set for one epoch; its raw and EMA weights (float64)."""
    data = load_dataset(data_path)
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(data.problem, EQUIVALENCE_MODEL)
    trainer = Trainer(model, data, TrainConfig.from_dict(EQUIVALENCE_TRAINING), ctx=ctx, progress=False)
    trainer.fit()
    return {"model": {k: v.detach().double().clone() for k, v in trainer.model.state_dict().items()},
            "ema": {k: v.detach().double().clone() for k, v in trainer.eval_model().state_dict().items()},
            "steps": trainer.step, "world_size": trainer.ctx.world_size}


def _ddp_worker(rank: int, world_size: int, port: int, data_path: str, out_dir: str) -> None:
    """One process of the group: the environment ``torchrun`` would set, the project's set-up."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        torch.save(_train_once(data_path, ctx), Path(out_dir) / f"rank{rank}.pt")
    finally:
        shutdown_distributed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lqr_data(tmp_path_factory) -> str:
    """A 320-sample LQR data set of the double integrator above (256 training samples)."""
    folder = tmp_path_factory.mktemp("ddp_data")
    cfg = {**CONFIG, "generator": {"solver": "lqr", "num_samples": 320, "chunk_size": 320, "seed": 0,
                                   "splits": [0.8, 0.1, 0.1], "out": str(folder / "di.h5")}}
    exp = experiment_from_dict(cfg)
    generate(exp.problem, exp.generator, workers=1, progress=False)
    assert len(load_dataset(folder / "di.h5").train) == 256
    return str(folder / "di.h5")


def _rows(x: torch.Tensor) -> list:
    return sorted(map(tuple, x.tolist()))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_rank_shards_of_each_step_are_the_single_process_batch(lqr_data, tmp_path):
    """The premise of data-parallel equivalence, on the trainer's own loaders: in the first
    epoch the two ranks' batches of step ``k`` (16 samples each, disjoint) together are the
    single process's batch ``k`` of 32. (A one-process gloo group lets the trainer build its
    DDP wrapper for ``rank`` 0 and 1 of a declared world of 2 in this process.)"""
    data = load_dataset(lqr_data)
    cfg = TrainConfig.from_dict(EQUIVALENCE_TRAINING)

    def loader_batches(ctx):
        torch.manual_seed(0)
        model = TinyRecursiveControl.from_problem(data.problem, EQUIVALENCE_MODEL)
        trainer = Trainer(model, data, cfg, ctx=ctx, progress=False)
        return trainer.per_rank_batch, trainer.steps_per_epoch, [batch["x0"] for batch in trainer.loader]

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        size, steps, single = loader_batches(None)
        shards = [loader_batches(DistributedContext(rank=r, world_size=2)) for r in range(2)]
    finally:
        dist.destroy_process_group()
    assert (size, steps) == (32, 8)
    assert [(s[0], s[1]) for s in shards] == [(16, 8), (16, 8)]
    for k in range(steps):
        a, b = shards[0][2][k], shards[1][2][k]
        assert len(a) == len(b) == 16
        assert not set(_rows(a)) & set(_rows(b))
        assert _rows(torch.cat([a, b])) == _rows(single[k])


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_give_the_weights_of_one_process_with_the_same_global_batch(lqr_data, tmp_path):
    """DDP averages the two processes' gradients of their halves of each global batch; for a loss
    that is a mean over the batch that is the gradient of the whole batch, so after the same
    steps the weights (raw and EMA) must equal those of one process, to float32 rounding
    (relative 1e-5). In the first epoch both orders are the permutation of ``randperm`` seeded
    with ``training.seed`` (``DistributedSampler`` at epoch 0, the single process's
    ``RandomSampler``), and the two processes' shards of step ``k`` are the global batch ``k``
    (previous test). Two processes started by ``torch.multiprocessing.spawn`` (gloo)."""
    data_path = lqr_data
    mp.spawn(_ddp_worker, args=(2, _free_port(), data_path, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _train_once(data_path)  # training.num_threads = 1, as in each of the two processes

    assert [r["world_size"] for r in ranks] == [2, 2] and single["world_size"] == 1
    assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"] == 8
    for key in ("model", "ema"):
        for name, value in single[key].items():
            torch.testing.assert_close(ranks[1][key][name], ranks[0][key][name], rtol=0, atol=0)  # ranks in lockstep
            scale = max(float(value.abs().max()), 1e-3)
            torch.testing.assert_close(ranks[0][key][name], value, rtol=1e-5, atol=1e-5 * scale, msg=name)
    # and training moved the weights well beyond that tolerance (the comparison is not vacuous)
    torch.manual_seed(0)
    initial = TinyRecursiveControl.from_problem(load_dataset(data_path).problem, EQUIVALENCE_MODEL).state_dict()
    moved = max(float((single["model"][k] - v.double()).abs().max()) for k, v in initial.items()
                if v.is_floating_point())
    assert moved > 1e-3
