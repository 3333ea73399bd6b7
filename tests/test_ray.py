"""The Ray backend (trc.backends): same arrays as the local backend, Ray's retries after a killed
worker, resume after a killed driver, joining a cluster by address, and the named errors.

Real Ray: a private instance started here (``ray.init(address="local", num_cpus=2)``, shared by the
module's tests and shut down at the end), and one test that starts ``ray start --head`` on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from dynamics.errors import ConfigError, SolverError
from tests.conftest import HAVE_LIBERO_ASSETS
from trc.backends import CONNECT_TIMEOUT, RAY_INSTALL, TaskPool, check_backend, map_ordered, map_unordered
from trc.experiment import experiment_from_dict, load_experiment
from trc.generate import main
from trc.generators.pipeline import generate, parts_dir

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parent.parent

#: A small linear-quadratic problem (the QP solver): chunks solve in milliseconds.
TINY = {
    "problem": {
        "name": "tiny_ray",
        "plant": {"name": "double_integrator", "u_min": -4.0, "u_max": 4.0},
        "dt": 0.33, "horizon": 15, "Q": [10.0, 5.0], "R": [0.1], "Qf_scale": 20.0,
        "initial_state": {"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        "target_state": {"low": [-2.0, -2.0], "high": [2.0, 2.0]},
    },
    "generator": {"solver": "qp", "num_samples": 24, "chunk_size": 8, "seed": 3},
}

#: Arrays that are measurements, not results: wall-clock seconds of each solve.
TIMINGS = {"solve_time", "failures/solve_time"}


def dataset_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every data set of an HDF5 file, by its path in the file."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_data(a: Path, b: Path) -> None:
    """The two files hold the same arrays, bitwise (except the solve timings)."""
    x, y = dataset_arrays(a), dataset_arrays(b)
    assert sorted(x) == sorted(y)
    assert {"states", "controls", "initial_states", "target_states", "costs"} <= set(x)
    different = [k for k in x if k not in TIMINGS and not np.array_equal(x[k], y[k])]
    assert not different, different


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_local():
    """A private two-CPU Ray instance for the module (never a cluster of someone else)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Functions of this module run in Ray workers, which cannot import it by name.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------- task functions
def square_plus(task: dict) -> dict:
    """A pure function of its argument."""
    x = np.arange(task["n"], dtype=np.float64)
    return {"n": task["n"], "value": x ** 2 + task["n"]}


def fail_on_three(task: dict) -> int:
    if task == 3:
        raise SolverError("instance 3 has no solution")
    return task


def die_once(task: dict) -> int:
    """Kill the worker process (SIGKILL) the first time task 0 runs, then succeed."""
    flag = Path(task["flag"])
    if task["i"] == 0 and not flag.exists():
        flag.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return task["i"] * 10


#: Set by :func:`remember` in every process that runs :func:`scaled` tasks.
_FACTOR: dict = {}


def remember(factor: float) -> None:
    _FACTOR["value"] = factor


def scaled(task: int) -> float:
    return _FACTOR["value"] * task


def test_map_ordered_runs_the_initializer_where_the_tasks_run():
    _FACTOR.clear()
    assert map_ordered(scaled, [3, 1, 2], initializer=remember, initargs=(10.0,)) == [30.0, 10.0, 20.0]
    assert _FACTOR == {"value": 10.0}  # in this process: the tasks ran here
    assert map_ordered(scaled, [], initializer=remember, initargs=(2.0,)) == []


# ---------------------------------------------------------------------------- errors (no Ray start)
def test_backend_errors():
    with pytest.raises(ConfigError, match="one of local, ray; got 'dask'"):
        check_backend("dask")
    with pytest.raises(ConfigError, match="--backend ray only; got --backend local"):
        check_backend("local", "127.0.0.1:6379")
    with pytest.raises(ConfigError, match="must be 'host:port'.*got 'nohostport'"):
        check_backend("ray", "nohostport")
    with pytest.raises(ConfigError, match="workers must be a positive integer or None, got 0"):
        TaskPool(square_plus, workers=0)
    check_backend("local")  # no error


def test_ray_missing_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match="install the extra: " + RAY_INSTALL.replace("[", r"\[").replace("]", r"\]")):
        check_backend("ray")
    check_backend("local")  # the local backend works without Ray
    cfg = REPO / "configs" / "double_integrator.yaml"
    assert main(["--config", str(cfg), "--backend", "ray", "--quiet"]) == 2
    assert 'tiny-recursive-control[ray]' in capsys.readouterr().err


def test_unreachable_address_fails_fast(tmp_path, capsys):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at --address {address} within"):
        check_backend("ray", address)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "tiny.h5"
    assert main(["--config", str(cfg), "--out", str(out), "--backend", "ray", "--address", address, "--quiet"]) == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err
    assert time.perf_counter() - t0 < CONNECT_TIMEOUT
    assert not out.exists() and not parts_dir(out).exists()  # nothing written
    # --address needs --backend ray
    assert main(["--config", str(cfg), "--out", str(out), "--address", address, "--quiet"]) == 2
    assert "--backend ray only" in capsys.readouterr().err


def test_address_refused_for_other_kinds(capsys):
    assert main(["--config", str(REPO / "configs" / "maze.yaml"), "--backend", "ray", "--quiet"]) == 2
    assert "--backend: not used for discrete problems" in capsys.readouterr().err


# ---------------------------------------------------------------------------- Ray, private instance
@pytest.mark.slow
def test_map_unordered_same_results(ray_local):
    tasks = [{"n": n} for n in (3, 1, 4, 1, 5)]
    local = dict(map_unordered(square_plus, tasks, backend="local", workers=1))
    remote = dict(map_unordered(square_plus, tasks, backend="ray", workers=2))
    assert sorted(remote) == list(range(5))
    for i, task in enumerate(tasks):
        expected = np.arange(task["n"]) ** 2 + task["n"]  # hand-computed
        assert np.array_equal(local[i]["value"], expected) and np.array_equal(remote[i]["value"], expected)
    assert ray.is_initialized()  # the caller's Ray is left running
    # An exception raised by a task propagates with its type and is not retried.
    with pytest.raises(SolverError, match="instance 3 has no solution"):
        list(map_unordered(fail_on_three, range(5), backend="ray"))


@pytest.mark.slow
def test_pipeline_ray_equals_local(ray_local, tmp_path):
    exp = experiment_from_dict(TINY)
    a, b = tmp_path / "local.h5", tmp_path / "ray.h5"
    ra = generate(exp.problem, exp.generator, out=a, workers=1, progress=False)
    rb = generate(exp.problem, exp.generator, out=b, workers=2, backend="ray", progress=False)
    assert ra.num_samples == rb.num_samples == 24 and rb.backend == "ray" and rb.chunks_solved == 3
    assert_same_data(a, b)
    assert not parts_dir(b).exists()
    # the same run again is up to date on either backend
    assert generate(exp.problem, exp.generator, out=b, backend="ray", progress=False).up_to_date


@pytest.mark.slow
def test_killed_task_worker_is_retried_by_ray(ray_local, tmp_path):
    flag = tmp_path / "killed"
    results = dict(map_unordered(die_once, [{"i": i, "flag": str(flag)} for i in range(4)], backend="ray"))
    assert flag.exists()  # the first attempt of task 0 killed its worker
    assert results == {0: 0, 1: 10, 2: 20, 3: 30}
    with pytest.raises(SolverError, match=r"Ray worker died in all 1 attempt\(s\)"):
        flag.unlink()
        list(map_unordered(die_once, [{"i": 0, "flag": str(flag)}], backend="ray", max_retries=0))


def vdp_experiment(num_samples: int, chunk_size: int):
    """The Van der Pol configuration (nonlinear SQP) with fewer samples and smaller chunks."""
    exp = load_experiment(REPO / "configs" / "van_der_pol.yaml")
    return exp.problem, dataclasses.replace(exp.generator, num_samples=num_samples, chunk_size=chunk_size)


@pytest.mark.slow
def test_pipeline_survives_a_killed_worker(ray_local, tmp_path):
    """kill -9 a Ray worker while it solves a chunk: Ray runs the chunk again, the arrays are the same."""
    problem, config = vdp_experiment(60, 10)
    killed = []
    stop = threading.Event()

    def killer():
        me = psutil.Process()
        while not stop.is_set() and not killed:
            for proc in me.children(recursive=True):
                try:
                    if any("solve_chunk" in part for part in proc.cmdline()):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                        break
                except psutil.Error:
                    continue
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        report = generate(problem, config, out=tmp_path / "ray.h5", workers=2, backend="ray", progress=False)
    finally:
        stop.set()
        thread.join()
    assert killed, "no Ray worker was seen solving a chunk"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert report.num_samples == 60 and report.chunks_solved == 6
    generate(problem, config, out=tmp_path / "local.h5", workers=1, progress=False)
    assert_same_data(tmp_path / "local.h5", tmp_path / "ray.h5")


def _cli(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trc.generate", "--config", str(cfg), "--out", str(out), "--seed", "7",
            "--num-samples", "80", "--chunk-size", "10", "--quiet", *extra]


@pytest.mark.slow
def test_resume_after_killed_driver(tmp_path):
    """kill -9 the command while it runs on Ray: no output file, finished parts kept, a rerun resumes."""
    cfg = REPO / "configs" / "van_der_pol.yaml"
    out = tmp_path / "vdp.h5"
    proc = subprocess.Popen(_cli(cfg, out, "--backend", "ray", "--workers", "2"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(parts_dir(out).glob("*.npz"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    parts = sorted(parts_dir(out).glob("*.npz"))
    assert 2 <= len(parts) < 8 and not out.exists()
    rerun = subprocess.run(_cli(cfg, out, "--backend", "ray", "--workers", "2"), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from an earlier run" in rerun.stdout
    reference = tmp_path / "reference.h5"
    undisturbed = subprocess.run(_cli(cfg, reference, "--workers", "1"), cwd=REPO, capture_output=True, text=True,
                                 timeout=600)
    assert undisturbed.returncode == 0, undisturbed.stderr[-2000:]
    assert_same_data(reference, out)


@pytest.mark.slow
def test_cluster_by_address(tmp_path):
    """`ray start --head` on 127.0.0.1 (token authentication), the command joins it with --address."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="trc-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head = subprocess.Popen(
        ["ray", "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp), "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start --head exited"
            time.sleep(0.5)
        cfg = tmp_path / "tiny.yaml"
        cfg.write_text(yaml.safe_dump(TINY))
        out = tmp_path / "cluster.h5"
        run = subprocess.run(
            [sys.executable, "-m", "trc.generate", "--config", str(cfg), "--out", str(out), "--backend", "ray",
             "--address", f"127.0.0.1:{port}", "--quiet"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "on Ray" in run.stdout
        # without the cluster's token Ray refuses the connection, with a named error
        wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        refused = subprocess.run(
            [sys.executable, "-m", "trc.generate", "--config", str(cfg), "--out", str(tmp_path / "x.h5"),
             "--backend", "ray", "--address", f"127.0.0.1:{port}", "--quiet"],
            cwd=REPO, env=wrong, capture_output=True, text=True, timeout=600)
        assert refused.returncode == 2 and "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-2000:]
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
        shutil.rmtree(temp, ignore_errors=True)
    local = tmp_path / "local.h5"
    exp = experiment_from_dict(TINY)
    generate(exp.problem, exp.generator, out=local, workers=1, progress=False)
    assert_same_data(local, out)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LIBERO_ASSETS, reason="LIBERO and its assets (../shared/libero-assets) are needed")
def test_libero_expert_ray_equals_local(tmp_path, libero_config):
    """The scripted expert's demonstrations of configs/libero_tiny.yaml, one worker on each backend: the same
    actions, states and proprioception on Ray as locally.

    Camera images are left out: they are not reproducible between processes even on the local backend, and
    episodes depend on the episodes a worker's simulator ran before (two local runs with 1 and 2 workers
    differ), so both runs use one worker.
    """
    config = yaml.safe_load((REPO / "configs" / "libero_tiny.yaml").read_text())
    path = tmp_path / "libero_tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "MUJOCO_GL": "egl"}
    files = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        run = subprocess.run([sys.executable, "-m", "trc.generate", "--config", str(path), "--out", str(out),
                              "--seed", "0", "--workers", "1", "--backend", backend, "--quiet"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
        assert run.returncode == 0, run.stderr[-3000:]
        files[backend] = sorted(out.glob("*.hdf5"))
    assert [f.name for f in files["local"]] == [f.name for f in files["ray"]] and files["local"]
    for a, b in zip(files["local"], files["ray"]):
        x, y = dataset_arrays(a), dataset_arrays(b)
        assert sorted(x) == sorted(y) and any(k.endswith("/actions") for k in x)
        compared = [k for k in x if not k.endswith("_rgb")]
        assert not [k for k in compared if not np.array_equal(x[k], y[k])]


# ---------------------------------------------------------------------------- closed-loop evaluation
def closed_loop_case():
    """A small closed-loop comparison: the double integrator with an untrained TRC model, the LQR and MPC."""
    import torch

    from trc import Problem
    from trc import closed_loop as cl
    from trc.models import TinyRecursiveControl, TRCConfig

    problem = Problem(task="double_integrator", horizon=12)
    torch.manual_seed(0)
    model = TinyRecursiveControl.from_problem(problem, TRCConfig(latent_dim=16, hidden_dim=32, H_cycles=1, L_cycles=1))
    controllers = [cl.TRCController(model), cl.LQRController(problem), cl.MPCController(problem)]
    config = cl.ClosedLoopConfig(episodes=5, steps=8, perturbation="perturbed", timing_repeats=2)
    return problem, controllers, config


def assert_same_closed_loop(a: dict, b: dict) -> None:
    assert list(a) == list(b) == ["trc", "lqr", "mpc", "optimum"]
    for name in a:
        for f in ("states", "controls", "cost", "cost_ratio", "success", "violation", "steady_state_error"):
            assert np.array_equal(getattr(a[name], f), getattr(b[name], f), equal_nan=True), (name, f)
        assert a[name].failures == b[name].failures


def test_closed_loop_ray_equals_local(ray_local):
    from trc import closed_loop as cl

    problem, controllers, config = closed_loop_case()
    local = cl.compare(problem, controllers, config, episodes_per_task=2)
    remote = cl.compare(problem, controllers, config, episodes_per_task=2, backend="ray", workers=2)
    assert_same_closed_loop(local, remote)
    assert len(local["lqr"].success) == 5 and np.isfinite(local["mpc"].cost_ratio).all()
    assert local["mpc"].ms_per_step > 0 and remote["trc"].ms_per_step > 0


@pytest.mark.slow
def test_closed_loop_processes_equal_in_process():
    from trc import closed_loop as cl

    problem, controllers, config = closed_loop_case()
    assert_same_closed_loop(cl.compare(problem, controllers, config, episodes_per_task=2),
                            cl.compare(problem, controllers, config, episodes_per_task=2, workers=2))


@pytest.mark.slow
def test_evaluate_closed_loop_on_ray(ray_local, tmp_path):
    import json

    import torch

    from trc import save
    from trc.evaluate import main as evaluate

    problem, controllers, _ = closed_loop_case()
    model_path = tmp_path / "model.pt"
    save(controllers[0].model, model_path)
    out = {}
    for backend in ("local", "ray"):
        folder = tmp_path / backend
        argv = ["--checkpoint", str(model_path), "--closed-loop", "--episodes", "3", "--steps", "5", "--no-mpc",
                "--perturbation", "noise", "--out", str(folder), "--backend", backend, "--quiet"]
        assert evaluate(argv) == 0
        out[backend] = json.loads((folder / "closed_loop.json").read_text())["results"]["noise"]
    for name in ("trc", "lqr", "optimum"):
        for key in ("success_rate", "cost_ratio_median", "steady_state_error_mean"):
            assert out["local"][name][key] == out["ray"][name][key], (name, key)
    assert torch.get_num_threads() >= 1


def test_evaluate_backend_options_need_closed_loop(tmp_path, capsys):
    from trc import save
    from trc.evaluate import main as evaluate

    problem, controllers, _ = closed_loop_case()
    save(controllers[0].model, tmp_path / "model.pt")
    assert evaluate(["--checkpoint", str(tmp_path / "model.pt"), "--backend", "ray", "--quiet"]) == 2
    assert "--backend: options of --closed-loop" in capsys.readouterr().err
    address = f"127.0.0.1:{free_port()}"
    assert evaluate(["--checkpoint", str(tmp_path / "model.pt"), "--closed-loop", "--backend", "ray",
                     "--address", address, "--quiet"]) == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err
    assert not (tmp_path / "evaluation").exists()


# ---------------------------------------------------------------------------- RECAP rollouts
@pytest.mark.slow
def test_recap_rollouts_ray_equal_local(ray_local, tmp_path):
    from tests.test_recap import TINY_MAZE
    from trc import lerobot
    from trc.train import main as train

    data = {**TINY_MAZE, "generator": {**TINY_MAZE["generator"], "episodes_per_task": 5}}  # tasks of 5, 5, 2
    cfg = tmp_path / "recap.yaml"
    cfg.write_text(yaml.safe_dump(data))
    for backend in ("local", "ray"):
        for stage in ("demos", "corrections"):
            argv = ["--config", str(cfg), "--out", str(tmp_path / backend), "--stage", stage, "--backend", backend,
                    "--quiet"]
            assert train(argv) == 0
    for stage in ("demos", "corrections"):
        a, b = (np.load(tmp_path / backend / stage / "rollouts.npz") for backend in ("local", "ray"))
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert np.array_equal(a[key], b[key]), (stage, key)
        frames = lerobot.read_dataset(tmp_path / "local" / stage / "dataset").frames
        assert np.array_equal(frames["episode_index"], np.repeat(np.arange(12), a["lengths"]))
    corrections = np.load(tmp_path / "local" / "corrections" / "rollouts.npz")
    assert corrections["frames/complementary_info.is_intervention"].any()
