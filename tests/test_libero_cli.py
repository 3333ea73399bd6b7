"""The LIBERO branches of ``python -m trc.generate``, ``trc.train`` and ``trc.evaluate``, end to end.

Runs ``configs/libero_tiny.yaml`` (one task, two demonstrations, a tiny policy, one epoch).
Commands whose closing of the simulators matters run in a subprocess, so that what the
interpreter prints at exit (robosuite's ``EGLError`` tracebacks when a rendering context outlives
EGL) is checked. The fast test trains on two synthetic demonstrations in LIBERO's layout; the
slow one generates them with the scripted expert first. Needs LIBERO and its assets, like
``test_libero.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

pytest.importorskip("robosuite", reason="LIBERO needs robosuite 1.4.0")
from dynamics import libero as L  # noqa: E402
from tests.conftest import HAVE_LIBERO_ASSETS  # noqa: E402
from trc import generate as generate_cli  # noqa: E402
from trc import train as train_cli  # noqa: E402
from trc.evaluation_libero import load_policy  # noqa: E402
from trc.generators.libero_storage import (  # noqa: E402
    Episode,
    LiberoProblem,
    read_task_file,
    task_file_name,
    write_task_file,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.skipif(not HAVE_LIBERO_ASSETS, reason="LIBERO assets not found (../shared/libero-assets)"),
              pytest.mark.usefixtures("libero_config")]


def tiny_config(tmp_path: Path) -> tuple[Path, dict]:
    """``configs/libero_tiny.yaml`` with its data folder in ``tmp_path``; returns its path and content."""
    config = yaml.safe_load((REPO / "configs" / "libero_tiny.yaml").read_text())
    data = str(tmp_path / "data")
    config["generator"]["output"] = data
    config["training"]["data"] = data
    path = tmp_path / "libero_tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python args`` in a fresh interpreter (its exit is part of what is tested)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": "egl"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=1800, cwd=cwd,
                          stdin=subprocess.DEVNULL)


#: ``trc.evaluate``'s command line, then the number of simulators left open for the exit hook.
EVALUATE_AND_COUNT = ("import sys, dynamics.libero as L, trc.evaluate as E; rc = E.main(sys.argv[1:]); "
                      "print('OPEN SIMULATORS', len(L._OPEN_SIMULATORS)); sys.exit(rc)")


def assert_clean_exit(out: subprocess.CompletedProcess) -> None:
    """Exit status 0 and no traceback from rendering contexts torn down after EGL."""
    assert out.returncode == 0, out.stderr[-3000:]
    for text in ("Exception ignored", "EGLError", "Traceback"):
        assert text not in out.stderr, out.stderr[-3000:]


def synthetic_demos(problem: LiberoProblem, folder: Path, n: int = 2, T: int = 10) -> Path:
    """``n`` demonstrations of task 0 in LIBERO's layout with the task's real attributes.

    The arm moves along a straight line with the action ``(0.5, 0, ...)``; the images are noise.
    """
    rng = np.random.default_rng(0)
    size = problem.camera_size
    episodes = []
    for i in range(n):
        ee_pos = np.array([-0.2, 0.0, 1.1]) + 0.01 * np.arange(T)[:, None] * np.array([1.0, 0.0, 0.0])
        obs = {
            "agentview_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
            "ee_pos": ee_pos, "ee_ori": np.tile([np.pi, 0.0, 0.0], (T, 1)),
            "gripper_states": np.tile([0.04, -0.04], (T, 1)), "joint_states": np.zeros((T, 7)),
        }
        obs["ee_states"] = np.concatenate([obs["ee_pos"], obs["ee_ori"]], axis=1)
        actions = np.tile([0.5, 0, 0, 0, 0, 0, -1.0], (T, 1))
        episodes.append(Episode(obs=obs, actions=actions, executed_actions=actions, rewards=np.zeros(T),
                                dones=np.zeros(T, dtype=np.uint8), states=np.zeros((T, 92)), success=True,
                                init_state_id=25 + i, task_index=0))
    task = L.get_task(problem.suite, 0)
    return write_task_file(folder / task_file_name(task.name), episodes, problem.file_attrs(0))


def check_model_file(path: Path, config: dict) -> None:
    """The model file holds the configured tiny policy of task 0 and the embedding of its instruction."""
    policy = load_policy(path)
    assert policy.problem.tasks == [0] and policy.problem.camera_size == config["problem"]["camera_size"]
    assert policy.config.chunk == config["model"]["chunk"] and policy.config.latent_dim == config["model"]["latent_dim"]
    language = L.get_task("libero_spatial", 0).language
    assert len(policy.metadata["text_embeddings"][language]) == 384


def check_report(folder: Path, episodes: int, max_steps: int) -> dict:
    report = json.loads((folder / "report.json").read_text())
    task = report["per_task"]["0"]
    assert report["episodes_per_task"] == episodes and task["episodes"] == episodes
    assert report["max_steps"] == max_steps and 1 <= report["mean_length"] <= max_steps
    assert (folder / "report.md").is_file() and (folder / "figures" / "latent_norm.png").is_file()
    return report


def test_train_then_evaluate_from_the_command_line(tmp_path):
    """``trc.train`` on two demonstrations writes a model file; ``trc.evaluate`` runs it closed loop
    in LIBERO and the process exits without EGL tracebacks."""
    path, config = tiny_config(tmp_path)
    problem = LiberoProblem(**config["problem"])
    synthetic_demos(problem, tmp_path / "data")
    run = tmp_path / "run"
    assert train_cli.main(["--config", str(path), "--out", str(run), "--seed", "0", "--quiet"]) == 0
    assert (run / "model.pt").is_file() and json.loads((run / "metrics.json").read_text())["history"]
    check_model_file(run / "model.pt", config)

    out = run_python("-c", EVALUATE_AND_COUNT, "--checkpoint", str(run / "model.pt"), "--episodes", "1",
                     "--max-steps", "3", "--videos", "0", "--out", str(tmp_path / "eval"), "--quiet", cwd=tmp_path)
    assert_clean_exit(out)
    assert "OPEN SIMULATORS 0" in out.stdout  # closed by the evaluation itself, not left to the exit hook
    report = check_report(tmp_path / "eval", episodes=1, max_steps=3)
    assert report["mean_length"] == 3 and report["success_rate"] == 0.0  # nothing is solved in 3 steps
    assert "# LIBERO evaluation" in out.stdout


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    """A missing data folder and an option LIBERO does not use end with an error status and a
    message naming them, not a traceback."""
    path, _ = tiny_config(tmp_path)
    assert train_cli.main(["--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and str(tmp_path / "data") in err and "does not exist" in err
    assert not (tmp_path / "run" / "model.pt").exists()
    assert generate_cli.main(["--config", str(path), "--solver", "lqr", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--solver" in err and "libero" in err
    assert not (tmp_path / "data").exists()  # refused before any work


@pytest.mark.slow
def test_generate_train_evaluate_from_the_command_line(tmp_path):
    """The whole pipeline: the scripted expert's two demonstrations, training, evaluation with two
    worker processes; generation and evaluation exit without EGL tracebacks."""
    path, config = tiny_config(tmp_path)
    out = run_python("-m", "trc.generate", "--config", str(path), "--seed", "0", "--quiet", cwd=tmp_path)
    assert_clean_exit(out)
    data = tmp_path / "data"
    summary = json.loads((data / "generation.json").read_text())["tasks"]["0"]
    assert summary["successes"] == 2 and summary["attempts"] >= 2
    _, demos = read_task_file(data / task_file_name(L.get_task("libero_spatial", 0).name))
    assert len(demos) == 2 and all(d.dones[-1] == 1 for d in demos)
    with h5py.File(demos[0].file, "r") as f:
        assert [int(f[f"data/{d.key}"].attrs["init_state_id"]) for d in demos] == [25, 26]

    run = tmp_path / "run"
    assert train_cli.main(["--config", str(path), "--out", str(run), "--seed", "0", "--quiet"]) == 0
    check_model_file(run / "model.pt", config)

    out = run_python("-m", "trc.evaluate", "--checkpoint", str(run / "model.pt"), "--episodes", "2", "--max-steps",
                     "6", "--workers", "2", "--videos", "1", "--quiet", cwd=tmp_path)
    assert_clean_exit(out)
    check_report(run / "evaluation", episodes=2, max_steps=6)
    assert len(list((run / "evaluation" / "videos").glob("*.mp4"))) == 1
    # the same episodes as Ray tasks (a private Ray on this machine): the same outcomes
    out = run_python("-m", "trc.evaluate", "--checkpoint", str(run / "model.pt"), "--episodes", "2", "--max-steps",
                     "6", "--backend", "ray", "--workers", "2", "--videos", "0", "--out", str(tmp_path / "ray"),
                     "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    local, remote = (json.loads((folder / "report.json").read_text())
                     for folder in (run / "evaluation", tmp_path / "ray"))
    for key in ("success_rate", "mean_length", "per_task"):
        assert local[key] == remote[key], key
