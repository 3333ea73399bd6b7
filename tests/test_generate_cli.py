"""Configuration files (trc.experiment), the standard configs and ``python -m trc.generate``."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dynamics.errors import ConfigError, UnknownNameError
from trc.experiment import default_experiment, experiment_from_dict, load_experiment
from trc.generate import main
from trc.generators.config import GeneratorConfig
from trc.generators.pipeline import generate
from trc.generators.storage import read_attrs, read_dataset

REPO = Path(__file__).resolve().parent.parent
STANDARD = ("double_integrator", "van_der_pol", "pendulum", "cartpole", "rocket")

TINY = {
    "problem": {
        "name": "tiny",
        "plant": {"name": "double_integrator", "u_min": -4.0, "u_max": 4.0},
        "dt": 0.33,
        "horizon": 15,
        "Q": [10.0, 5.0],
        "R": [0.1],
        "Qf_scale": 20.0,
        "initial_state": {"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        "target_state": {"low": [-2.0, -2.0], "high": [2.0, 2.0]},
    },
    "generator": {"solver": "qp", "num_samples": 24, "chunk_size": 8},
    "training": {"epochs": 3},
}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


# ---------------------------------------------------------------------------- trc.experiment
def test_experiment_sections(tmp_path):
    exp = load_experiment(write_yaml(tmp_path / "c.yaml", TINY))
    assert exp.problem.horizon == 15 and exp.generator.solver == "qp" and exp.generator.num_samples == 24
    assert exp.section("training") == {"epochs": 3}
    assert exp.section("model") == {}
    assert exp.dataset_path() == Path("datasets/tiny.h5")

    @dataclasses.dataclass
    class Training:
        epochs: int = 1
        lr: float = 1e-3

    assert exp.parse("training", Training) == Training(epochs=3)
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        exp.section("optimizer")
    bad = load_experiment(write_yaml(tmp_path / "d.yaml", {**TINY, "training": {"epoch": 3}}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\] in section 'training'"):
        bad.parse("training", Training)
    assert experiment_from_dict(exp.to_dict()).to_dict() == exp.to_dict()


@pytest.mark.parametrize("section, key, name", [("problem", "plant", "warp_drive"), ("generator", "solver", "oracle")])
def test_unknown_plant_or_solver(tmp_path, section, key, name):
    """Unknown registry names in a config are ConfigErrors caused by UnknownNameError."""
    value = {"name": name} if key == "plant" else name
    data = {**TINY, section: {**TINY[section], key: value}}
    with pytest.raises(ConfigError, match=f"unknown {'plant' if key == 'plant' else 'solver'} '{name}'; choose one of") as info:
        experiment_from_dict(data)
    assert isinstance(info.value.__cause__, UnknownNameError)


# ---------------------------------------------------------------------------- standard configs
@pytest.mark.parametrize("name", STANDARD)
def test_standard_configs_load(name):
    exp = load_experiment(REPO / "configs" / f"{name}.yaml")
    assert exp.problem.name == name and exp.problem.plant["name"] == name
    assert exp.generator.splits == [0.8, 0.1, 0.1]
    assert exp.generator.out == f"datasets/{name}.h5"
    assert set(exp.sections) <= {"problem", "generator", "model", "training", "evaluation"}
    # the solver accepts the problem and its options
    exp.generator.make_solver(exp.problem)


def test_double_integrator_config_is_the_spec():
    exp = load_experiment(REPO / "configs" / "double_integrator.yaml")
    p, plant = exp.problem, exp.problem.make_plant()
    Q, R, Qf = p.weights
    assert (p.dt, p.horizon, p.tolerance, exp.generator.solver) == (0.33, 15, 0.1, "qp")
    np.testing.assert_array_equal(Q, np.diag([10.0, 5.0]))
    np.testing.assert_array_equal(R, [[0.1]])
    np.testing.assert_array_equal(Qf, 20 * Q)
    assert plant.u_min.tolist() == [-4.0] and plant.u_max.tolist() == [4.0]
    assert p.initial_state.low == p.target_state.low == [-2.0, -2.0]
    assert p.initial_state.high == p.target_state.high == [2.0, 2.0]
    vdp = load_experiment(REPO / "configs" / "van_der_pol.yaml").problem
    assert (vdp.dt, vdp.horizon, vdp.tolerance, vdp.make_plant().u_max.tolist()) == (0.05, 100, 0.2, [2.0])
    assert vdp.target_state.low == vdp.target_state.high == [0.0, 0.0]


def test_default_experiment():
    standard = default_experiment("double_integrator")
    assert standard.source.endswith("double_integrator.yaml") and standard.generator.solver == "qp"
    generic = default_experiment("double_integrator", "lqr")
    assert generic.generator.solver == "lqr" and generic.problem.horizon == 50
    assert math.isinf(generic.problem.make_plant().u_max.item())
    with pytest.raises(ConfigError, match="unknown plant 'nope'") as info:
        default_experiment("nope", "lqr")
    assert isinstance(info.value.__cause__, UnknownNameError)
    with pytest.raises(ConfigError, match="give a solver"):
        default_experiment("linear")


# ---------------------------------------------------------------------------- the command line
def test_cli_in_process(tmp_path, capsys):
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "double_integrator" in listing and "qp" in listing

    cfg = write_yaml(tmp_path / "c.yaml", TINY)
    out = tmp_path / "d.h5"
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "1", "--seed", "5", "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "24 stored" in summary and str(out) in summary and "failures" in summary
    data = read_dataset(out)
    assert data.num_samples == 24 and data.seed == 5 and data.solver == "qp"
    assert (np.abs(data.controls) <= 4 + 1e-6).all()
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "1", "--seed", "5", "--quiet"]) == 0
    assert "up to date" in capsys.readouterr().out
    # another seed is another data set: refused without --force, replaced with it
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "1", "--seed", "6", "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err and read_dataset(out).seed == 5
    assert main(["--config", str(cfg), "--out", str(out), "--workers", "1", "--seed", "6", "--quiet", "--force"]) == 0
    assert read_dataset(out).seed == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "d.h5"]  # no lock, parts or temporaries


# ---------------------------------------------------------------------------- bad inputs
OTHER_PROBLEM = {**TINY["problem"], "name": "other", "horizon": 10, "plant": {"name": "double_integrator"}}


def _dataset(problem: dict, solver: str, num_samples: int):
    """Setup: write a small data set of ``problem`` to ``{tmp}/existing.h5``."""
    def setup(tmp, monkeypatch):
        config = GeneratorConfig(solver=solver, num_samples=num_samples, chunk_size=8)
        generate(experiment_from_dict({"problem": problem}).problem, config, out=tmp / "existing.h5", workers=1,
                 progress=False)
    return setup


def _notes(tmp, monkeypatch):
    (tmp / "notes.txt").write_text("not a folder\n")


def _read_only(tmp, monkeypatch):
    """A folder this process may not write (faked: root may write anywhere; see test_io for chmod)."""
    import trc.io

    folder = tmp / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(trc.io.os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))


def _locked(tmp, monkeypatch):
    """Another process holds the writer lock of {tmp}/d.h5 (a bare flock on d.h5.lock)."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.write(fd, b'process %d on elsewhere' % os.getpid()); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp / "d.h5.lock")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return lambda: (proc.stdin.close(), proc.wait(60))


def _with(**changes):
    return {**TINY, **changes}


CFG = ["--config", "{cfg}", "--quiet", "--workers", "1"]
SEED_RANGE = "[0, 2**63 - 1]"

#: The bad inputs of ``python -m trc.generate`` (argument lists: the expected exit status) and of
#: ``generate()`` (keyword dicts: the expected exception), with a fragment of the message. A row
#: may write its configuration (``{cfg}``, default TINY) and prepare files in ``{tmp}``.
BAD_INPUTS = [
    # configuration files
    ("yaml-syntax", "problem: [unclosed\n", None, CFG, 2, "not valid YAML"),
    ("yaml-list", "- just\n- a list\n", None, CFG, 2, "mapping at top level"),
    ("unknown-section", _with(optimiser={}), None, CFG, 2, "unknown section(s) ['optimiser']"),
    ("no-problem", {"generator": TINY["generator"]}, None, CFG, 2, "section 'problem' is required"),
    ("generator-list", _with(generator=[1, 2]), None, CFG, 2, "section 'generator' must be a mapping"),
    ("generator-key", _with(generator={**TINY["generator"], "samples": 5}), None, CFG, 2,
     "unknown key(s) ['samples'] in section 'generator'"),
    ("problem-key", _with(problem={**TINY["problem"], "horizont": 5}), None, CFG, 2,
     "unknown key(s) ['horizont'] in section 'problem'"),
    ("splits", _with(generator={**TINY["generator"], "splits": [0.9, 0.2, 0.1]}), None, CFG, 2, "sum to 1"),
    ("negative-dt", _with(problem={**TINY["problem"], "dt": -1}), None, CFG, 2, "dt must be a positive"),
    ("config-plant", _with(problem={**TINY["problem"], "plant": {"name": "warp_drive"}}), None, CFG, 2,
     "unknown plant 'warp_drive'"),
    ("config-solver", _with(generator={**TINY["generator"], "solver": "oracle"}), None, CFG, 2,
     "unknown solver 'oracle'"),
    ("config-seed", _with(generator={**TINY["generator"], "seed": 2**63}), None, CFG, 2, SEED_RANGE),
    ("config-out-empty", _with(generator={**TINY["generator"], "out": ""}), None, CFG, 2, "the empty path"),
    ("missing-config", TINY, None, ["--config", "{tmp}/nope.yaml"], 2, "does not exist"),
    # command-line arguments
    ("num-samples", TINY, None, CFG + ["--num-samples", "0"], 2, "positive integer"),
    ("workers", TINY, None, ["--config", "{cfg}", "--workers", "0"], 2, "positive integer"),
    ("solver", TINY, None, CFG + ["--solver", "oracle"], 2, "unknown solver 'oracle'"),
    ("plant", TINY, None, ["--plant", "warp_drive", "--solver", "lqr", "--quiet"], 2, "unknown plant 'warp_drive'"),
    ("config-and-plant", TINY, None, CFG + ["--plant", "double_integrator"], 2, "not allowed with argument"),
    ("seed-2**63", TINY, None, CFG + ["--seed", str(2**63)], 2, SEED_RANGE),
    ("seed-negative", TINY, None, CFG + ["--seed=-1"], 2, SEED_RANGE),
    ("out-empty", TINY, None, CFG + ["--out", ""], 2, "the empty path ''"),
    ("out-folder", TINY, None, CFG + ["--out", "{tmp}"], 2, "is a folder; expected a file path"),
    ("out-under-file", TINY, _notes, CFG + ["--out", "{tmp}/notes.txt/d.h5"], 2, "notes.txt' is not a folder"),
    ("out-read-only", TINY, _read_only, CFG + ["--out", "{tmp}/ro/d.h5"], 2, "ro' is not writable"),
    ("out-is-the-config", TINY, None, CFG + ["--out", "{cfg}"], 2,
     "c.yaml' already exists and is not this run's output (it is not an HDF5 file)"),
    ("out-other-problem", TINY, _dataset(OTHER_PROBLEM, "lqr", 8), CFG + ["--out", "{tmp}/existing.h5"], 2,
     "holds a data set of problem 'other'; this run generates problem 'tiny'"),
    ("out-other-settings", TINY, _dataset(TINY["problem"], "qp", 8), CFG + ["--out", "{tmp}/existing.h5"], 2,
     "a data set of problem 'tiny' with other settings: solver 'qp', 8 samples"),
    ("out-locked", TINY, _locked, CFG + ["--out", "{tmp}/d.h5"], 2, "d.h5' is being written by process"),
    # the library function: the same checks for every caller
    ("generate-out-empty", TINY, None, {"out": ""}, ConfigError, "the empty path ''"),
    ("generate-out-folder", TINY, None, {"out": "{tmp}"}, ConfigError, "is a folder"),
    ("generate-out-under-file", TINY, _notes, {"out": "{tmp}/notes.txt/d.h5"}, ConfigError, "is not a folder"),
    ("generate-out-read-only", TINY, _read_only, {"out": "{tmp}/ro/sub/d.h5"}, ConfigError, "is not writable"),
    ("generate-out-config", TINY, None, {"out": "{cfg}"}, ConfigError, "(it is not an HDF5 file)"),
    ("generate-out-other-problem", TINY, _dataset(OTHER_PROBLEM, "lqr", 8), {"out": "{tmp}/existing.h5"},
     ConfigError, "holds a data set of problem 'other'"),
    ("generate-out-other-settings", TINY, _dataset(TINY["problem"], "qp", 8), {"out": "{tmp}/existing.h5"},
     ConfigError, "with other settings"),
    ("generate-out-locked", TINY, _locked, {"out": "{tmp}/d.h5"}, ConfigError, "is being written by process"),
    ("generate-seed-2**63", TINY, None, {"out": "{tmp}/d.h5", "seed": 2**63}, ConfigError, SEED_RANGE),
    ("generate-seed-negative", TINY, None, {"out": "{tmp}/d.h5", "seed": -1}, ConfigError, SEED_RANGE),
    ("generate-workers", TINY, None, {"out": "{tmp}/d.h5", "workers": 0}, ConfigError, "workers must be a positive"),
    ("generate-options", TINY, None, {"out": "{tmp}/d.h5", "options": {"speed": 2}}, ConfigError,
     "unknown option(s) ['speed']"),
]


def _fill(value, tmp, cfg):
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp)).replace("{cfg}", str(cfg))
    return value


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.is_dir() or p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("config, setup, args, expected, fragment", [row[1:] for row in BAD_INPUTS],
                         ids=[row[0] for row in BAD_INPUTS])
def test_bad_input(tmp_path, monkeypatch, capsys, config, setup, args, expected, fragment):
    """Every bad input fails with a named error (CLI: exit status 2 and the message on stderr)
    before any solving starts, and leaves every file as it was."""
    from trc.generators import pipeline

    monkeypatch.chdir(tmp_path)  # default outputs (datasets/...) would land here
    cfg = write_yaml(tmp_path / "c.yaml", config)
    cleanup = setup(tmp_path, monkeypatch) if setup else None
    before = _snapshot(tmp_path)
    monkeypatch.setattr(pipeline, "solve_batch", lambda *a, **k: pytest.fail("solving started"))
    try:
        if isinstance(args, list):
            try:
                status = main([_fill(a, tmp_path, cfg) for a in args])
            except SystemExit as exc:  # argparse's own usage errors
                status = exc.code
            err = capsys.readouterr().err
            assert status == expected, err
            assert fragment in err
        else:
            kwargs = {k: _fill(v, tmp_path, cfg) for k, v in args.items()}
            problem = experiment_from_dict(TINY).problem
            config_obj = GeneratorConfig(**TINY["generator"], options=kwargs.pop("options", {}))
            if "seed" in kwargs:  # a config changed after its validation: generate() checks again
                config_obj.seed = kwargs.pop("seed")
            kwargs.setdefault("workers", 1)
            with pytest.raises(expected) as info:
                generate(problem, config_obj, progress=False, **kwargs)
            assert fragment in str(info.value)
    finally:
        if cleanup:
            cleanup()
    assert _snapshot(tmp_path) == before  # nothing written, replaced or left behind


def test_force_replaces_another_file(tmp_path):
    """With force an existing file that is not this run's output is replaced."""
    cfg = write_yaml(tmp_path / "c.yaml", TINY)
    out = write_yaml(tmp_path / "notes.h5", "not a data set\n")
    assert main(["--config", str(cfg), "--quiet", "--workers", "1", "--out", str(out), "--force"]) == 0
    assert read_dataset(out).num_samples == 24


def test_cli_subprocess_two_workers_match_one(tmp_path):
    """`python -m trc.generate` end to end with 2 spawned workers equals an in-process run."""
    out = tmp_path / "di.h5"
    cmd = [sys.executable, "-m", "trc.generate", "--plant", "double_integrator", "--solver", "lqr",
           "--num-samples", "120", "--chunk-size", "40", "--seed", "3", "--workers", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "120 stored" in proc.stdout and "2 worker(s)" in proc.stdout and str(out) in proc.stdout
    a = read_dataset(out)
    attrs = read_attrs(out)
    assert attrs["workers"] == 2 and attrs["solver"] == "lqr" and "--solver lqr" in attrs["command"]

    exp = default_experiment("double_integrator", "lqr")
    config = dataclasses.replace(exp.generator, num_samples=120, chunk_size=40, seed=3)
    generate(exp.problem, config, out=tmp_path / "one.h5", workers=1, progress=False)
    b = read_dataset(tmp_path / "one.h5")
    for name in ("states", "controls", "initial_states", "target_states", "costs", "status", "instance_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in a.splits:
        np.testing.assert_array_equal(a.splits[name], b.splits[name])
    assert GeneratorConfig(solver="lqr").output_path(exp.problem) == Path("datasets/double_integrator_lqr.h5")


def test_fast_van_der_pol_config_is_the_fast_preset():
    """configs/van_der_pol_fast.yaml: the Van der Pol problem and data set, the `fast` preset's model."""
    from trc.models import TRCConfig
    from trc.models.presets import preset_config

    fast = load_experiment(REPO / "configs" / "van_der_pol_fast.yaml")
    base = load_experiment(REPO / "configs" / "van_der_pol.yaml")
    assert fast.problem.to_dict() == base.problem.to_dict() and fast.generator.out == base.generator.out
    assert TRCConfig.from_dict(fast.sections["model"]) == preset_config("fast")


def test_fast_rocket_config_is_the_fast_tiny_preset():
    """configs/rocket_fast.yaml: the rocket problem and data set, the `fast_tiny` preset's model with
    the inference-time correction of rocket.yaml."""
    from trc.models import TRCConfig
    from trc.models.presets import preset_config

    fast = load_experiment(REPO / "configs" / "rocket_fast.yaml")
    base = load_experiment(REPO / "configs" / "rocket.yaml")
    assert fast.problem.to_dict() == base.problem.to_dict() and fast.generator.out == base.generator.out
    inference = {k: base.sections["model"][k] for k in ("detach_feedback", "correction_steps", "correction_tol")}
    assert TRCConfig.from_dict(fast.sections["model"]) == preset_config("fast_tiny", **inference)
