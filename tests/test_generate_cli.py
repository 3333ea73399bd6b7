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
from trc.experiment import SECTIONS, default_experiment, experiment_from_dict, load_experiment
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


@pytest.mark.parametrize(
    "content, match",
    [
        ("problem: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping at top level"),
        ({**TINY, "optimiser": {}}, r"unknown section\(s\) \['optimiser'\]; allowed sections: " + str(list(SECTIONS)).replace("[", r"\[").replace("]", r"\]")),
        ({"generator": TINY["generator"]}, "section 'problem' is required"),
        ({**TINY, "generator": [1, 2]}, "section 'generator' must be a mapping"),
        ({**TINY, "generator": {**TINY["generator"], "samples": 5}}, r"unknown key\(s\) \['samples'\] in section 'generator'"),
        ({**TINY, "problem": {**TINY["problem"], "horizont": 5}}, r"unknown key\(s\) \['horizont'\] in section 'problem'"),
        ({**TINY, "generator": {**TINY["generator"], "splits": [0.9, 0.2, 0.1]}}, "sum to 1"),
        ({**TINY, "problem": {**TINY["problem"], "dt": -1}}, "dt must be a positive"),
    ],
)
def test_bad_configs_raise_config_error(tmp_path, content, match):
    path = write_yaml(tmp_path / "c.yaml", content)
    with pytest.raises(ConfigError, match=match):
        load_experiment(path)
    assert main(["--config", str(path), "--quiet"]) == 2


@pytest.mark.parametrize("section, key, name", [("problem", "plant", "warp_drive"), ("generator", "solver", "oracle")])
def test_unknown_plant_or_solver(tmp_path, section, key, name):
    """Unknown registry names in a config are ConfigErrors caused by UnknownNameError."""
    value = {"name": name} if key == "plant" else name
    data = {**TINY, section: {**TINY[section], key: value}}
    with pytest.raises(ConfigError, match=f"unknown {'plant' if key == 'plant' else 'solver'} '{name}'; choose one of") as info:
        experiment_from_dict(data)
    assert isinstance(info.value.__cause__, UnknownNameError)


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


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

    assert main(["--config", str(cfg), "--num-samples", "0", "--quiet"]) == 2
    assert "num_samples must be a positive integer" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--solver", "oracle", "--quiet"]) == 2
    assert "unknown solver 'oracle'" in capsys.readouterr().err
    assert main(["--plant", "warp_drive", "--solver", "lqr", "--quiet"]) == 2
    assert "unknown plant 'warp_drive'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(cfg), "--plant", "double_integrator"])  # mutually exclusive


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
