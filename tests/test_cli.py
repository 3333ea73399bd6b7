"""The shared CLI layer and the bad-input tables of ``trc-train`` and ``trc-evaluate``.

One table per command: each row is a command line that must fail with a given exit status and
a message naming the problem, and must leave the files it was given as they were. The table of
``trc-generate`` is in ``tests/test_generate_cli.py``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
from pathlib import Path

import pytest
import yaml

import trc
from dynamics.errors import (CheckpointError, ConfigError, DatasetError, DimensionError, SolverError, TRCError,
                             UnknownNameError)
from trc import kinds
from trc.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, exit_code, run
from trc.evaluate import main as evaluate_main
from trc.train import main as train_main

CONFIG = {
    "problem": {
        "name": "di_cli",
        "plant": {"name": "double_integrator", "u_min": -10, "u_max": 10},
        "dt": 0.33,
        "horizon": 8,
        "Q": [10, 5],
        "R": [0.1],
        "initial_state": {"low": [-1, -1], "high": [1, 1]},
        "target_state": {"low": [0, 0], "high": [0, 0]},
        "tolerance": 0.1,
    },
    "generator": {"solver": "lqr", "num_samples": 64, "seed": 0},
    "model": {"latent_dim": 16, "hidden_dim": 32, "H_cycles": 2, "L_cycles": 1},
    "training": {"epochs": 1, "batch_size": 32, "num_threads": 1, "tensorboard": False},
    "evaluation": {"latency_repeats": 2, "throughput_repeats": 1, "throughput_batch": 16},
}


def _digest(folder: Path) -> dict:
    """SHA-256 of every file below ``folder`` (to show that a refused command changed nothing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished one-epoch run: (config path, run folder)."""
    root = tmp_path_factory.mktemp("cli")
    cfg = copy.deepcopy(CONFIG)
    cfg["generator"]["out"] = str(root / "di.h5")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / "run"
    assert train_main(["--config", str(path), "--out", str(out), "--quiet"]) == 0
    return path, out


def _variant(root: Path, name: str, change) -> Path:
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    change(cfg)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("exc, status", [
    (ConfigError("x"), EXIT_USAGE), (UnknownNameError("x"), EXIT_USAGE), (DimensionError("x"), EXIT_USAGE),
    (CheckpointError("x"), EXIT_FAILURE), (DatasetError("x"), EXIT_FAILURE), (SolverError("x"), EXIT_FAILURE),
    (TRCError("x"), EXIT_FAILURE), (KeyboardInterrupt(), EXIT_INTERRUPTED),
])
def test_one_exit_status_per_error(exc, status, capsys):
    assert exit_code(exc) == status
    parser = argparse.ArgumentParser(prog="trc-x")

    def command(args):
        raise exc

    assert run(parser, command, []) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("trc-x: error: x" in err or "interrupted" in err)


def test_a_bug_is_not_mapped_to_an_exit_status():
    with pytest.raises(TypeError):
        exit_code(ValueError("a bug"))


@pytest.mark.parametrize("main, argv", [
    (train_main, ["--config", "configs/double_integrator.yaml", "--seed", str(2**63)]),
    (train_main, ["--config", "configs/double_integrator.yaml", "--epochs", "0"]),
    (evaluate_main, ["--checkpoint", "x.pt", "--threads", "0"]),
    (evaluate_main, ["--checkpoint", "x.pt", "--seed", "-1"]),
])
def test_argument_types_are_refused_by_argparse(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE and "error:" in capsys.readouterr().err


def test_the_kinds_are_registered_once():
    assert kinds.names() == ["continuous", "discrete", "libero", "recap", "recap_libero"]
    assert kinds.for_problem_kind(None).name == "continuous" and kinds.for_problem_kind("sudoku").name == "discrete"
    with pytest.raises(UnknownNameError, match="did you mean 'maze'"):
        kinds.for_problem_kind("mazes")
    with pytest.raises(ConfigError, match="already registered"):
        kinds.register(kinds.get("discrete"))


# ---------------------------------------------------------------------------- trc-train
TRAIN_CASES = {
    # name: (argv after --config, extra setup of the config, exit status, message fragment)
    "missing config": (lambda root: ["--config", str(root / "none.yaml")], EXIT_USAGE, "does not exist"),
    "unknown section": (lambda root: ["--config", str(_variant(root, "sec", lambda c: c.update(extra={})))],
                        EXIT_USAGE, "unknown section"),
    "unknown plant": (lambda root: ["--config", str(_variant(root, "plant", lambda c: c["problem"]["plant"].update(
        name="pendulumm")))], EXIT_USAGE, "did you mean 'pendulum'"),
    "unknown kind": (lambda root: ["--config", str(_variant(root, "kind", lambda c: c["problem"].update(
        kind="mazes")))], EXIT_USAGE, "problem.kind"),
    "option of another kind": (lambda root: ["--config", str(root / "config.yaml"), "--sweep"], EXIT_USAGE,
                               "--sweep: not used for continuous problems"),
    "existing run without --resume": (lambda root: ["--config", str(root / "config.yaml"), "--out",
                                                    str(root / "run")], EXIT_USAGE, "--resume"),
    "resume another problem": (lambda root: ["--config", str(_variant(root, "other", lambda c: c["model"].update(
        latent_dim=8))), "--out", str(root / "run"), "--resume"], EXIT_FAILURE, "cannot resume"),
    "overwrite with a foreign data set": (lambda root: ["--config", str(_variant(root, "foreign", lambda c: c[
        "problem"].update(horizon=9))), "--out", str(root / "run"), "--overwrite"], EXIT_USAGE,
        "another problem"),
    "run folder is a file": (lambda root: ["--config", str(root / "config.yaml"), "--out", str(root / "config.yaml"),
                                           "--overwrite"], EXIT_USAGE, "not a folder"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_bad_inputs(case, run_folder, capsys):
    """Every refused command names the problem, exits with its status and changes no file."""
    config, out = run_folder
    root = config.parent
    argv_of, status, fragment = TRAIN_CASES[case]
    argv = argv_of(root)
    before = _digest(root)
    assert train_main([*argv, "--quiet"]) == status
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    after = _digest(root)
    changed = {k for k in before.keys() & after.keys() if before[k] != after[k]} | (before.keys() - after.keys())
    assert not changed, f"{case} changed {sorted(changed)}"


# ---------------------------------------------------------------------------- trc-evaluate
EVALUATE_CASES = {
    "missing model file": (lambda run: ["--checkpoint", str(run / "none.pt")], EXIT_FAILURE, "does not exist"),
    "not a model file": (lambda run: ["--checkpoint", str(run / "config.yaml")], EXIT_FAILURE, "cannot be read"),
    "training state instead": (lambda run: ["--checkpoint", str(run / "checkpoint.pt")], EXIT_FAILURE, "format"),
    "option of another kind": (lambda run: ["--checkpoint", str(run / "model.pt"), "--tasks", "3"], EXIT_USAGE,
                               "--tasks: not used for continuous problems"),
    "closed-loop option alone": (lambda run: ["--checkpoint", str(run / "model.pt"), "--episodes", "3"], EXIT_USAGE,
                                 "--episodes: options of --closed-loop"),
    "missing data set": (lambda run: ["--checkpoint", str(run / "model.pt"), "--data", str(run / "none.h5")],
                         EXIT_FAILURE, "does not exist"),
}


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_bad_inputs(case, run_folder, capsys):
    _, out = run_folder
    argv_of, status, fragment = EVALUATE_CASES[case]
    before = _digest(out)
    assert evaluate_main(argv_of(out)) == status
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert _digest(out) == before


def test_resume_of_a_finished_run_keeps_its_weights(run_folder):
    config, out = run_folder
    before = trc.load(out / "model.pt").state_dict()
    assert train_main(["--config", str(config), "--out", str(out), "--resume", "--quiet"]) == 0
    after = trc.load(out / "model.pt").state_dict()
    assert all(before[k].equal(after[k]) for k in before)


def test_console_scripts_name_the_commands(capsys):
    """setup.cfg's console scripts point at each command's main; each prints its help."""
    import configparser
    import importlib

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    lines = [line.split("=") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines()]
    scripts = {name.strip(): target.strip() for name, target in lines}
    assert set(scripts) == {"trc-generate", "trc-train", "trc-evaluate", "trc-export", "trc-convert"}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        main = getattr(importlib.import_module(module), function)
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("plant, solver, kind, source", [
    ("van_der_pol", None, "continuous", "van_der_pol.yaml"),
    ("maze", None, "discrete", "maze.yaml"),
    ("double_integrator", "lqr", "continuous", "<generic double_integrator problem for lqr>"),
])
def test_plant_option_finds_the_standard_configuration(plant, solver, kind, source):
    from trc.experiment import default_experiment

    experiment = default_experiment(plant, solver)
    assert experiment.kind == kind and experiment.source.endswith(source)
