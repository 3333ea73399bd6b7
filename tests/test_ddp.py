"""Data-parallel training: ``torchrun --nproc_per_node=2 -m trc.train`` on a tiny problem (gloo, CPU)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

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

    import trc

    model = trc.load(out / "model.pt")
    assert model(torch.zeros(3, 2), torch.ones(3, 2)).shape == (3, 8, 1)
