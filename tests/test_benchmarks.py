"""The benchmark scripts' own machinery (their numbers are in benchmarks/results, not tested)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from trc.models import TinyRecursiveControl, TRCConfig
from trc.problem import Problem

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def latency(monkeypatch):
    """benchmarks/latency.py as a module; on sys.path, so that spawned processes import it too."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("latency")


def test_exported_times_in_several_processes(latency, tmp_path):
    """``--processes 2``: the large batch runs in a ParallelController, one batch per process."""
    problem = Problem(name="di", plant={"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}, dt=0.1, horizon=5,
                      initial_state={"low": [-1.0, -1.0], "high": [1.0, 1.0]},
                      target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]})
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=8, hidden_dim=16, num_layers=1,
                                                                 H_cycles=1, L_cycles=1, feedback_channels=4)).eval()
    times = latency.exported_times(model, problem, repeats=5, batch=16, folder=tmp_path, fmt="onnx", processes=2,
                                   seconds=0.3)
    assert set(times) == {"b1", "bN", "bN_fast", "bN_slow"} and all(0.0 < ms < 1e4 for ms in times.values())
    assert times["bN_fast"] <= times["bN"] <= times["bN_slow"]  # the 10th and 90th percentiles of the calls
    assert list(tmp_path.glob("*.onnx"))


def test_gemm_rate_and_the_bound_it_gives(latency):
    """The measured matrix-product rate is a positive GFLOP/s figure, and the bound is
    processes x rate / FLOPs per plan."""
    rate = latency.gemm_rate(rows=64, size=32, seconds=0.05)
    assert 0.0 < rate < 1e5  # GFLOP/s (not FLOP/s); no lower bound: a loaded machine stalls such small products
    assert latency.gemm_bound(1.18e6, 96.0, processes=2) == pytest.approx(2 * 96e9 / 1.18e6)
