"""LIBERO-layout HDF5 demonstrations: writer, loader, staging, the problem section."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from trc import kinds
from trc.experiment import load_experiment

from dynamics.errors import ConfigError, DatasetError
from trc.generators import libero_expert, libero_storage
from trc.generators.libero_expert import ExpertConfig, LiberoGeneratorConfig
from trc.generators.libero_storage import (
    OBS_KEYS,
    Episode,
    LiberoProblem,
    load_demos,
    load_staged,
    read_task_file,
    stage_episode,
    task_file_name,
    write_task_file,
)

ATTRS = {
    "problem_info": {"problem_name": "libero_tabletop_manipulation", "domain_name": "robosuite",
                     "language_instruction": "pick up the black bowl and place it on the plate"},
    "env_args": {"type": 1, "env_name": "Libero_Tabletop_Manipulation", "env_kwargs": {"control_freq": 20}},
    "bddl_file_name": "pick_up_the_black_bowl.bddl",
}


def episode(T: int, seed: int, size: int = 16, success: bool = True) -> Episode:
    rng = np.random.default_rng(seed)
    obs = {
        "agentview_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
        "eye_in_hand_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
        "ee_pos": rng.normal(size=(T, 3)),
        "ee_ori": rng.normal(size=(T, 3)),
        "gripper_states": rng.normal(size=(T, 2)),
        "joint_states": rng.normal(size=(T, 7)),
    }
    obs["ee_states"] = np.concatenate([obs["ee_pos"], obs["ee_ori"]], 1)
    actions = rng.uniform(-1, 1, (T, 7))
    rewards = np.zeros(T)
    dones = np.zeros(T, dtype=np.uint8)
    rewards[-1], dones[-1] = float(success), int(success)
    return Episode(obs=obs, actions=actions, executed_actions=actions + 0.01, rewards=rewards, dones=dones,
                   states=rng.normal(size=(T, 92)), success=success, init_state_id=seed, task_index=0, cpu_seconds=1.0)


def test_round_trip_and_libero_layout(tmp_path):
    eps = [episode(5, 0), episode(7, 1)]
    path = write_task_file(tmp_path / task_file_name("task_a"), eps, ATTRS)
    assert path.name == "task_a_demo.hdf5"
    with h5py.File(path, "r") as f:  # the layout of LIBERO's own files
        data = f["data"]
        assert {"problem_info", "env_args", "bddl_file_name", "num_demos", "total"} <= set(data.attrs)
        assert json.loads(data.attrs["problem_info"])["language_instruction"] == ATTRS["problem_info"]["language_instruction"]
        assert data.attrs["num_demos"] == 2 and data.attrs["total"] == 12
        assert sorted(data) == ["demo_0", "demo_1"]
        demo = data["demo_1"]
        assert {"actions", "rewards", "dones", "states", "robot_states", "obs"} <= set(demo)
        assert set(OBS_KEYS) <= set(demo["obs"]) and demo.attrs["num_samples"] == 7
        assert demo["obs/agentview_rgb"].dtype == np.uint8 and demo["robot_states"].shape == (7, 9)
    attrs, demos = read_task_file(path)
    assert attrs["problem_info"] == ATTRS["problem_info"] and attrs["env_args"] == ATTRS["env_args"]
    for ep, d in zip(eps, demos):
        assert d.language == ATTRS["problem_info"]["language_instruction"] and d.task_name == "task_a"
        np.testing.assert_array_equal(d.actions, ep.actions)
        np.testing.assert_array_equal(d.states, ep.states)
        np.testing.assert_array_equal(d.dones, ep.dones)
        for k in OBS_KEYS:
            np.testing.assert_array_equal(d.obs[k], ep.obs[k])
    # robot_states = (gripper, ee_pos, ee_quat) as LIBERO stores them
    from scipy.spatial.transform import Rotation

    with h5py.File(path, "r") as f:
        rs = f["data/demo_0/robot_states"][()]
    np.testing.assert_allclose(rs[:, :2], eps[0].obs["gripper_states"])
    np.testing.assert_allclose(Rotation.from_quat(rs[:, 5:]).as_rotvec(), Rotation.from_rotvec(eps[0].obs["ee_ori"]).as_rotvec(), atol=1e-9)


def test_load_demos_from_a_folder_and_selected_keys(tmp_path):
    write_task_file(tmp_path / "b_demo.hdf5", [episode(4, 2)], ATTRS)
    write_task_file(tmp_path / "a_demo.hdf5", [episode(3, 3), episode(6, 4)], ATTRS)
    demos = load_demos(tmp_path, obs_keys=("ee_pos",))
    assert [len(d) for d in demos] == [3, 6, 4] and set(demos[0].obs) == {"ee_pos"} and demos[0].states is None
    with pytest.raises(DatasetError, match="no \\*_demo.hdf5"):
        load_demos(tmp_path / "empty_dir_does_not_matter" if False else (tmp_path / "sub").mkdir() or tmp_path / "sub")


def test_malformed_files_raise(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_task_file(tmp_path / "missing_demo.hdf5")
    (tmp_path / "text_demo.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="cannot read"):
        read_task_file(tmp_path / "text_demo.hdf5")
    with h5py.File(tmp_path / "nodata_demo.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(DatasetError, match="no 'data' group"):
        read_task_file(tmp_path / "nodata_demo.hdf5")
    path = write_task_file(tmp_path / "x_demo.hdf5", [episode(3, 0)], {k: v for k, v in ATTRS.items() if k != "problem_info"})
    with pytest.raises(DatasetError, match="problem_info"):
        read_task_file(path)
    path = write_task_file(tmp_path / "y_demo.hdf5", [episode(3, 0)], ATTRS)
    with pytest.raises(DatasetError, match="has no 'depth'"):
        read_task_file(path, obs_keys=("depth",))
    bad = episode(3, 0)
    del bad.obs["ee_ori"]
    with pytest.raises(DatasetError, match="ee_ori"):
        write_task_file(tmp_path / "z_demo.hdf5", [bad], ATTRS)
    assert not (tmp_path / "z_demo.hdf5").exists()  # atomic: nothing half-written


def test_staging_round_trip(tmp_path):
    stage_episode(tmp_path, 3, 0, episode(4, 0, success=False))
    stage_episode(tmp_path, 3, 1, episode(5, 1))
    recs = load_staged(tmp_path, 3)
    assert [(r["attempt"], r["success"]) for r in recs] == [(0, False), (1, True)]
    full = load_staged(tmp_path, 3, with_data=True)
    ep = full[1]["episode"]
    ref = episode(5, 1)
    np.testing.assert_array_equal(ep.obs["agentview_rgb"], ref.obs["agentview_rgb"])
    np.testing.assert_array_equal(ep.executed_actions, ref.executed_actions)
    assert ep.success and ep.init_state_id == 1 and load_staged(tmp_path, 4) == []


def test_problem_and_generator_sections():
    p = LiberoProblem(tasks=[0, 3])
    assert p.max_steps == 220 and p.task_list() == [0, 3]
    assert LiberoProblem(suite="libero_object").max_steps == 280
    for bad in (dict(kind="ocp"), dict(suite="libero_x"), dict(tasks=[-1]), dict(tasks="some"), dict(render="nice"),
                dict(camera_size=4), dict(max_steps=0)):
        with pytest.raises(ConfigError):
            LiberoProblem(**bad)
    assert kinds.for_problem_kind("libero").name == "libero" and kinds.for_problem_kind(None).name != "libero"
    g = LiberoGeneratorConfig(expert={"kp": 2.0})
    assert isinstance(g.expert, ExpertConfig) and g.expert.kp == 2.0
    with pytest.raises(ConfigError, match="unknown key"):
        LiberoGeneratorConfig(expert={"gain": 2.0})
    with pytest.raises(ConfigError, match="demos_per_task"):
        LiberoGeneratorConfig(demos_per_task=0)
    for bad in (dict(first_init_state=-1), dict(first_init_state=1.5)):
        with pytest.raises(ConfigError, match="first_init_state"):
            LiberoGeneratorConfig(**bad)
    with pytest.raises(ConfigError, match="force_direction"):
        ExpertConfig(force_direction="up")
    with pytest.raises(ConfigError, match="max_reach"):
        ExpertConfig(max_reach=0.0)


def test_demonstrations_start_from_init_states_apart_from_the_evaluation_ones():
    """By default attempts 0..24 use init states 25..49; evaluation uses 0..episodes-1."""
    from trc.generators.libero_expert import init_state_of_attempt

    g = LiberoGeneratorConfig()
    ids = [init_state_of_attempt(g, k, 50) for k in range(25)]
    assert ids == list(range(25, 50))
    assert init_state_of_attempt(g, 25, 50) == 0  # cycles after the last one
    assert [init_state_of_attempt(LiberoGeneratorConfig(first_init_state=0), k, 50) for k in range(3)] == [0, 1, 2]
    with pytest.raises(ConfigError, match="attempt"):
        init_state_of_attempt(g, -1, 50)


def test_shipped_configuration_parses():
    from trc.config import from_dict, load_yaml
    from trc.models.visuomotor import VisuomotorConfig
    from trc.training.bc import BCConfig

    cfg = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "libero_spatial.yaml")
    assert load_experiment(Path(__file__).resolve().parents[1] / "configs" / "libero_spatial.yaml").kind == "libero"
    from_dict(LiberoProblem, cfg["problem"], "problem")
    from_dict(LiberoGeneratorConfig, cfg["generator"], "generator")
    m = from_dict(VisuomotorConfig, cfg["model"], "model")
    t = from_dict(BCConfig, cfg["training"], "training")
    assert m.feedback and t.mse_weight == 0.7 and t.l1_weight == 0.3


def _imported_modules(module) -> set[str]:
    """Modules a source file imports (absolute names; relative ones resolved against its package)."""
    tree = ast.parse(Path(module.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.__name__.split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_storage_does_not_import_the_expert():
    """The episode record lives with the storage; the expert imports the storage, never the reverse."""
    assert "trc.generators.libero_expert" not in _imported_modules(libero_storage)
    assert "trc.generators.libero_storage" in _imported_modules(libero_expert)
    assert libero_expert.Episode is libero_storage.Episode  # still importable from the expert
