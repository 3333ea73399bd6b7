"""Data-parallel planning (trc.export.parallel): the processes together give the single program's plans."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from dynamics.errors import DimensionError
from trc.export import export_controller, load_controller
from trc.models import TinyRecursiveControl, TRCConfig
from trc.export.parallel import ParallelController, _plan, default_processes, parallel_latency
from trc.problem import Problem


@pytest.fixture(scope="module")
def problem():
    return Problem(name="di", plant={"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}, dt=0.1, horizon=5,
                   initial_state={"low": [-1.0, -1.0], "high": [1.0, 1.0]},
                   target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]})


@pytest.fixture(scope="module")
def onnx_path(problem, tmp_path_factory):
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=8, hidden_dim=16, num_layers=1,
                                                                 H_cycles=1, L_cycles=1, feedback_channels=4)).eval()
    path = tmp_path_factory.mktemp("parallel") / "di.onnx"
    export_controller(model, path, format="onnx")
    return path


def test_two_processes_give_the_plans_of_one_program(problem, onnx_path):
    x0, target = (a.astype(np.float32) for a in problem.sample(7, seed=1))
    expected = load_controller(onnx_path)(x0, target)
    with ParallelController(onnx_path, processes=2) as planner:
        assert planner.batch is None
        assert planner._shares(7) == [(0, 3), (3, 7)]
        np.testing.assert_allclose(planner(x0, target), expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(planner(x0[:1], target[:1]), expected[:1], rtol=1e-6, atol=1e-6)  # one worker idle
        with pytest.raises(DimensionError, match="batch >= 1"):
            planner(x0[:0], target[:0])
        with pytest.raises(DimensionError):
            planner(x0, target[:3])
        with pytest.raises(DimensionError, match="plans for 2 states"):  # raised in a worker, re-raised here
            planner(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32))
        np.testing.assert_allclose(planner(x0, target), expected, rtol=1e-6, atol=1e-6)  # still serving
    with pytest.raises(RuntimeError, match="closed"):
        planner(x0, target)
    planner.close()  # idempotent


def test_plans_come_back_through_shared_memory_that_close_releases(problem, onnx_path):
    from multiprocessing import shared_memory

    x0, target = (a.astype(np.float32) for a in problem.sample(11, seed=2))
    expected = load_controller(onnx_path)(x0, target)
    with ParallelController(onnx_path, processes=2) as planner:
        first = planner(x0[:5], target[:5])  # through the pipes: the plans' shape is learned
        assert planner._plan_shape == expected.shape[1:] and "plans" not in planner._blocks
        second = planner(x0[:5], target[:5])  # through shared memory
        grown = planner(x0, target)  # more rows: larger blocks replace the first ones
        small = planner(x0[5:8], target[5:8])  # fewer rows: the large blocks serve
        for got, rows in ((first, slice(0, 5)), (second, slice(0, 5)), (grown, slice(None)), (small, slice(5, 8))):
            np.testing.assert_allclose(got, expected[rows], rtol=1e-6, atol=1e-6)
        assert {role: block.array.shape[0] for role, block in planner._blocks.items()} == {"x0": 11, "target": 11, "plans": 11}
        assert not np.shares_memory(small, planner._blocks["plans"].array)  # a copy: the next call keeps it
        names = [block.memory.name for block in planner._blocks.values()]
    for name in names:
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=name)


def test_parallel_latency_times_whole_calls(problem, onnx_path, monkeypatch):
    x0, target = (a.astype(np.float32) for a in problem.sample(6, seed=1))
    calls = []
    original = ParallelController.__call__

    def counted(self, *args):
        calls.append(len(args[0]))
        return original(self, *args)

    monkeypatch.setattr(ParallelController, "__call__", counted)
    ms = parallel_latency(onnx_path, x0, target, processes=2, repeats=4, warmup=2)
    assert np.isfinite(ms) and ms > 0
    assert calls == [6] * 6  # warmup + repeats, each on the whole batch
    with pytest.raises(DimensionError):
        parallel_latency(onnx_path, x0, target[:2], processes=2, repeats=1)


def test_a_dead_worker_fails_the_call(problem, onnx_path):
    x0, target = (a.astype(np.float32) for a in problem.sample(4, seed=1))
    planner = ParallelController(onnx_path, processes=2)
    os.kill(planner._workers[1].pid, signal.SIGKILL)
    planner._workers[1].join()
    with pytest.raises(RuntimeError, match=r"exit code -9\)$"):  # no start-up hint after the start
        planner(x0, target)
    with pytest.raises(RuntimeError, match="closed"):  # the pool is closed after a death
        planner(x0, target)


def test_a_worker_dying_at_start_names_the_main_module_guard(tmp_path):
    """A script that starts the workers at import time: each spawned worker imports it again and
    dies before it replies; the script gets the RuntimeError naming the cause, not an EOFError."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "unguarded.py"
    script.write_text(f"from trc.export import ParallelController\nParallelController({str(tmp_path / 'p.onnx')!r}, 2)\n")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and last.startswith("RuntimeError: a worker process"), run.stderr[-2000:]
    assert "__main__" in last


def test_load_errors_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ParallelController(tmp_path / "missing.onnx", processes=2)
    with pytest.raises(ValueError, match="at least 1"):
        ParallelController(tmp_path / "missing.onnx", processes=0)
    assert default_processes() >= 1


class FixedBatchProgram:
    """A stand-in for an AOTInductor program of fixed batch 4: refuses other sizes, plans = x0 + target."""

    batch = 4

    def __init__(self):
        self.calls = 0

    def __call__(self, x0, target):
        if len(x0) != self.batch:
            raise DimensionError(f"compiled for batch {self.batch}; got batch {len(x0)}")
        self.calls += 1
        return (x0 + target)[:, None, :]


def test_fixed_batch_programs_get_whole_chunks(onnx_path):
    x0 = np.arange(18, dtype=np.float32).reshape(9, 2)
    target = np.ones_like(x0)
    program = FixedBatchProgram()
    np.testing.assert_array_equal(_plan(program, x0, target), (x0 + target)[:, None, :])
    assert program.calls == 3  # 4 + 4 + 1 filled up to 4, the filling dropped
    out = np.full((9, 1, 2), np.nan, np.float32)
    assert _plan(program, x0, target, out=out) is out  # as a worker writes into shared memory
    np.testing.assert_array_equal(out, (x0 + target)[:, None, :])
    with ParallelController(onnx_path, processes=3) as planner:
        planner.batch = 4  # how the shares of a fixed-batch program are cut: whole chunks per worker
        assert planner._shares(9) == [(0, 4), (4, 8), (8, 9)]
        assert planner._shares(24) == [(0, 8), (8, 16), (16, 24)]
