"""The benchmark scripts' own machinery (their numbers are in benchmarks/results, not tested)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from trc.export import export_controller
from trc.models import TinyRecursiveControl, TRCConfig
from trc.problem import Problem

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def latency(monkeypatch):
    """benchmarks/latency.py as a module; on sys.path, so that spawned processes import it too."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("latency")


def test_parallel_times_runs_the_program_in_every_process(latency, tmp_path):
    problem = Problem(name="di", plant={"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}, dt=0.1, horizon=5,
                      initial_state={"low": [-1.0, -1.0], "high": [1.0, 1.0]},
                      target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]})
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=8, hidden_dim=16, num_layers=1,
                                                                 H_cycles=1, L_cycles=1, feedback_channels=4)).eval()
    path = tmp_path / "di.onnx"
    export_controller(model, path, format="onnx")
    x0, target = (a.astype(np.float32) for a in problem.sample(16, seed=1))
    times = latency.parallel_times(path, x0, target, calls=3, processes=2)
    assert len(times) == 2 and all(0.0 < ms < 1e4 for ms in times)
    # a process that fails is reported with its exit code (it also breaks the start barrier)
    with pytest.raises(RuntimeError, match="exit codes"):
        latency.parallel_times(tmp_path / "missing.onnx", x0, target, calls=1, processes=2)
