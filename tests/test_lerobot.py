"""LeRobot v3 data sets (trc.lerobot) and the converter (trc.convert).

Conformance is checked against the published v3 layout (Hugging Face LeRobot,
src/lerobot/datasets/utils.py: DEFAULT_DATA_PATH, DEFAULT_EPISODES_PATH, DEFAULT_VIDEO_PATH,
INFO_PATH, STATS_PATH, DEFAULT_TASKS_PATH, the DatasetInfo fields; utils/constants.py:
DEFAULT_FEATURES; feature_utils.py: get_hf_features_from_features; compute_stats.py: the stats
keys), restated here as literals, and by reading the files with pandas and Hugging Face
``datasets`` when they are installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dynamics.discrete_env import maze_transition
from dynamics.errors import ConfigError, DatasetError, DimensionError, NonFiniteError
from trc import convert, lerobot
from trc import io as trc_io
from trc.discrete import problem_from_dict
from trc.experiment import default_experiment
from trc.generators.discrete import generate_discrete, read_discrete_dataset, write_discrete_dataset
from trc.generators.libero_storage import Episode, read_task_file, task_file_name, write_task_file
from trc.generators.pipeline import generate
from trc.generators.storage import read_dataset as read_continuous
from trc.lerobot import read_dataset, write_dataset

# ---------------------------------------------------------------------------- the published v3 schema
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_INFO_KEYS = {"codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks",
                "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "data_path", "video_path",
                "robot_type", "splits"}
V3_DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
V3_EPISODE_COLUMNS = {"episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index",
                      "data/chunk_index", "data/file_index", "meta/episodes/chunk_index", "meta/episodes/file_index"}
V3_STATS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}


def make_frames(lengths=(3, 5, 2), seed=0, image=(6, 4)):
    rng = np.random.default_rng(seed)
    F = sum(lengths)
    frames = {
        "episode_index": np.repeat(np.arange(len(lengths)), lengths),
        "frame_index": np.concatenate([np.arange(n) for n in lengths]),
        "task_index": np.repeat(np.arange(len(lengths)) % 2, lengths),
        "action": rng.standard_normal((F, 2)).astype(np.float32),
        "observation.state": rng.standard_normal((F, 4)).astype(np.float32),
        "next.reward": rng.standard_normal(F).astype(np.float32),
        "complementary_info.value": rng.uniform(-1, 0, F).astype(np.float32),
        "complementary_info.advantage": rng.standard_normal(F).astype(np.float32),
        "complementary_info.indicator": rng.random(F) < 0.3,
        "complementary_info.is_intervention": rng.random(F) < 0.2,
    }
    if image:
        frames["observation.images.cam"] = rng.integers(0, 256, (F, *image, 3), dtype=np.uint8)
    return frames


EPISODES = {"stage": np.array(["demos", "corrections", "autonomous"]), "success": np.array([True, False, True])}
TASKS = ["pick up the bowl", "open the drawer"]


def write(root, frames=None, **kw):
    kw = {"tasks": TASKS, "fps": 10, "episodes": EPISODES, **kw}
    return write_dataset(root, make_frames() if frames is None else frames, **kw)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------- writer and reader
def test_round_trip_and_layout(tmp_path):
    frames = make_frames()
    root = write(tmp_path / "ds", frames, metadata={"source": "test", "x": [1, 2]})
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temporary folder or lock file left
    assert tree(root) == {"meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/trc.json",
                          "meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet"}
    ds = read_dataset(root)
    for name, value in frames.items():
        np.testing.assert_array_equal(ds.frames[name], value, err_msg=name)
        assert ds.frames[name].dtype == value.dtype, name
    F = len(frames["action"])
    np.testing.assert_array_equal(ds.frames["index"], np.arange(F))
    np.testing.assert_allclose(ds.frames["timestamp"], [0, .1, .2, 0, .1, .2, .3, .4, 0, .1], rtol=1e-6)
    assert ds.frames["timestamp"].dtype == np.float32
    np.testing.assert_array_equal(ds.frames["next.done"], [0, 0, 1, 0, 0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(ds.episodes["stage"], EPISODES["stage"])
    np.testing.assert_array_equal(ds.episodes["success"], EPISODES["success"])
    np.testing.assert_array_equal(ds.episodes["length"], [3, 5, 2])
    np.testing.assert_array_equal(ds.episodes["dataset_from_index"], [0, 3, 8])
    np.testing.assert_array_equal(ds.episodes["dataset_to_index"], [3, 8, 10])
    assert [list(t) for t in ds.episodes["tasks"]] == [[TASKS[0]], [TASKS[1]], [TASKS[0]]]
    assert ds.tasks == TASKS and ds.metadata == {"source": "test", "x": [1, 2]}
    np.testing.assert_array_equal(ds.episode(1)["action"], frames["action"][3:8])
    with pytest.raises(DatasetError, match="episode 3 does not exist"):
        ds.episode(3)


def test_info_conforms_to_the_v3_schema(tmp_path):
    root = write(tmp_path / "ds", robot_type="panda")
    info = json.loads((root / "meta/info.json").read_text())
    assert set(info) == V3_INFO_KEYS
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and isinstance(info["fps"], int)
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 10, 2)
    assert info["data_path"] == V3_DATA_PATH and info["video_path"] is None
    assert info["splits"] == {"train": "0:3"} and info["robot_type"] == "panda"
    assert (root / info["data_path"].format(chunk_index=0, file_index=0)).is_file()
    feats = info["features"]
    for name, spec in V3_DEFAULT_FEATURES.items():
        assert feats[name] == spec
    assert feats["action"] == {"dtype": "float32", "shape": [2], "names": ["action_0", "action_1"]}
    assert feats["observation.images.cam"] == {"dtype": "image", "shape": [6, 4, 3],
                                               "names": ["height", "width", "channels"]}
    assert feats["next.done"]["dtype"] == "bool" and feats["next.reward"] == {"dtype": "float32", "shape": [1],
                                                                               "names": None}
    for name in ("complementary_info.value", "complementary_info.advantage"):
        assert feats[name]["dtype"] == "float32"
    assert feats["complementary_info.indicator"]["dtype"] == "bool"
    # data parquet: LeRobot's arrow types (datasets.Value, List(length=d), Image) and the huggingface metadata
    schema = pq.read_schema(root / "data/chunk-000/file-000.parquet")
    assert schema.field("action").type == pa.list_(pa.float32(), 2)
    assert schema.field("episode_index").type == pa.int64() and schema.field("timestamp").type == pa.float32()
    assert schema.field("observation.images.cam").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    hf = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.images.cam"] == {"_type": "Image"}
    assert hf["action"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 2, "_type": "List"}
    assert set(hf) == set(feats)
    # meta/episodes: LeRobot's columns and the per-episode stats
    ep = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    assert V3_EPISODE_COLUMNS <= set(ep.column_names)
    assert {f"stats/action/{k}" for k in V3_STATS} <= set(ep.column_names)
    assert ep.column("tasks").type == pa.list_(pa.string())
    # meta/stats.json: every non-string feature, LeRobot's keys
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == set(feats) and all(set(s) == V3_STATS for s in stats.values())
    assert np.shape(stats["observation.images.cam"]["mean"]) == (3, 1, 1)
    assert np.shape(stats["next.reward"]["mean"]) == (1,) and stats["action"]["count"] == [10]
    # meta/tasks.parquet: indexed by the task text, column task_index
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == TASKS and tasks.column("task_index").to_pylist() == [0, 1]


def test_pandas_and_datasets_read_the_files_as_lerobot_does(tmp_path):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    frames = make_frames()
    root = write(tmp_path / "ds", frames)
    tasks = pd.read_parquet(root / "meta/tasks.parquet")  # LeRobot's load_tasks
    assert tasks.index.name == "task" and list(tasks.index) == TASKS and list(tasks["task_index"]) == [0, 1]
    info = json.loads((root / "meta/info.json").read_text())
    features = {}  # LeRobot's get_hf_features_from_features
    for key, ft in info["features"].items():
        if ft["dtype"] == "image":
            features[key] = datasets.Image()
        elif ft["shape"] == [1]:
            features[key] = datasets.Value(dtype=ft["dtype"])
        else:
            features[key] = datasets.Sequence(length=ft["shape"][0], feature=datasets.Value(dtype=ft["dtype"]))
    hf = datasets.Dataset.from_parquet(str(root / "data/chunk-000/file-000.parquet"),
                                       features=datasets.Features(features), cache_dir=str(tmp_path / "cache"))
    row = hf[4]
    np.testing.assert_array_equal(np.asarray(row["observation.images.cam"]), frames["observation.images.cam"][4])
    np.testing.assert_array_equal(np.asarray(row["action"], dtype=np.float32), frames["action"][4])
    assert row["episode_index"] == 1 and row["frame_index"] == 1
    plain = datasets.Dataset.from_parquet(str(root / "data/chunk-000/file-000.parquet"),
                                          cache_dir=str(tmp_path / "cache2"))
    assert isinstance(plain.features["observation.images.cam"], datasets.Image)  # from the schema metadata


def test_stats_against_numpy(tmp_path):
    frames = make_frames()
    root = write(tmp_path / "ds", frames)
    stats = read_dataset(root).stats
    x = frames["observation.state"].astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["observation.state"]["std"], np.sqrt(((x - x.mean(0)) ** 2).mean(0)), rtol=1e-12)
    np.testing.assert_array_equal(stats["observation.state"]["min"], x.min(0))
    np.testing.assert_array_equal(stats["observation.state"]["max"], x.max(0))
    np.testing.assert_allclose(stats["observation.state"]["q50"], np.median(x, 0), rtol=1e-12)
    # q10 by hand: linear interpolation at position 0.1 * (n - 1) of the sorted values
    s = np.sort(x, 0)
    pos = 0.1 * (len(x) - 1)
    lo = int(np.floor(pos))
    np.testing.assert_allclose(stats["observation.state"]["q10"], s[lo] + (pos - lo) * (s[lo + 1] - s[lo]), rtol=1e-12)
    np.testing.assert_array_equal(stats["observation.state"]["count"], [10])
    r = frames["next.reward"].astype(np.float64)
    np.testing.assert_allclose(stats["next.reward"]["mean"], [r.mean()], rtol=1e-12)
    np.testing.assert_allclose(stats["complementary_info.indicator"]["mean"],
                               [frames["complementary_info.indicator"].mean()])
    im = frames["observation.images.cam"].astype(np.float64) / 255
    np.testing.assert_allclose(stats["observation.images.cam"]["mean"][:, 0, 0], im.mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(stats["observation.images.cam"]["max"][:, 0, 0], im.max((0, 1, 2)))
    pixels = im.reshape(-1, 3)  # the uint8 histogram route gives numpy's numbers on the pixels
    np.testing.assert_allclose(stats["observation.images.cam"]["std"][:, 0, 0], pixels.std(0), rtol=1e-12)
    for q in (0.01, 0.1, 0.5, 0.9, 0.99):
        np.testing.assert_allclose(stats["observation.images.cam"][f"q{round(q * 100):02d}"][:, 0, 0],
                                   np.quantile(pixels, q, axis=0), rtol=1e-12, atol=1e-15)
    # per-episode stats of episode 1 (frames 3..7)
    ep = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    np.testing.assert_allclose(ep.column("stats/observation.state/mean").to_pylist()[1], x[3:8].mean(0), rtol=1e-12)
    assert ep.column("stats/observation.state/count").to_pylist() == [[3], [5], [2]]
    for e, (a, b) in enumerate([(0, 3), (3, 8), (8, 10)]):  # every per-episode stat against numpy on the slice
        for name in ("observation.state", "next.reward", "complementary_info.indicator"):
            x = frames[name][a:b].astype(np.float64).reshape(b - a, -1)
            want = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": [b - a],
                    **{f"q{round(q * 100):02d}": np.quantile(x, q, axis=0) for q in (0.01, 0.1, 0.5, 0.9, 0.99)}}
            for key, value in want.items():
                np.testing.assert_allclose(ep.column(f"stats/{name}/{key}").to_pylist()[e], value, rtol=1e-12,
                                           atol=1e-15, err_msg=f"{name} {key} episode {e}")
    assert np.shape(ep.column("stats/observation.images.cam/mean").to_pylist()) == (3, 3, 1, 1)


def test_image_stats_use_spread_frames():
    images = np.zeros((1000, 2, 2, 3), dtype=np.uint8)
    images[::2] = 255
    s = lerobot.feature_stats(images[lerobot._spread(1000, 5)], image=True)
    np.testing.assert_array_equal(lerobot._spread(1000, 5), [0, 250, 500, 749, 999])
    assert s["count"].tolist() == [5] and s["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(s["mean"][:, 0, 0], [0.6] * 3)  # frames 0, 250, 500 white; 749, 999 black


def _drop(frames, name):
    return {k: v for k, v in frames.items() if k != name}


def _with(frames, **kw):
    return {**frames, **{k.replace("__", "."): v for k, v in kw.items()}}


F0 = make_frames()
BAD_FRAMES = {
    "missing action": (_drop(F0, "action"), DatasetError, "lack the required column"),
    "missing task_index": (_drop(F0, "task_index"), DatasetError, "task_index"),
    "ragged": (_with(F0, observation__state=F0["observation.state"][:-1]), DimensionError, "disagree on the number"),
    "starts at 1": (_with(F0, episode_index=F0["episode_index"] + 1), DatasetError, "must start at 0"),
    "unordered": (_with(F0, episode_index=np.array([0, 0, 0, 2, 2, 2, 2, 2, 1, 1])), DatasetError,
                  "contiguous and in order"),
    "not contiguous": (_with(F0, episode_index=np.array([0, 0, 0, 1, 1, 0, 1, 1, 2, 2])), DatasetError,
                       "contiguous and in order"),
    "frame_index": (_with(F0, frame_index=np.array([0, 1, 2, 0, 1, 2, 4, 3, 0, 1])), DatasetError,
                    "frame 6 .*frame_index 4, expected 3"),
    "frame_index offset": (_with(F0, frame_index=np.array([1, 2, 3, 0, 1, 2, 3, 4, 0, 1])), DatasetError,
                           "frame_index must be 0 .. length - 1"),
    "unknown task": (_with(F0, task_index=np.array([0, 0, 0, 2, 2, 2, 2, 2, 0, 0])), DatasetError,
                     "task_index 2 .* is unknown"),
    "negative task": (_with(F0, task_index=-np.ones(10, int)), DatasetError, "task_index -1"),
    "1-D action": (_with(F0, action=np.zeros(10)), DimensionError, "action has shape"),
    "NaN action": (_with(F0, action=np.full((10, 2), np.nan)), NonFiniteError, "action"),
    "2-D reward": (_with(F0, next__reward=np.zeros((10, 1))), DimensionError, "next.reward"),
    "float episode_index": (_with(F0, episode_index=F0["episode_index"] * 1.0), DatasetError, "integer"),
    "bad index": (_with(F0, index=np.arange(10) + 1), DatasetError, "global frame index"),
    "bad name": (_with(F0, **{"observation/x": np.zeros(10)}), DatasetError, "no '/'"),
    "grey image": (_with(F0, observation__images__cam=np.zeros((10, 4, 4, 1), np.uint8)), DimensionError, "RGB"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frames_raise_and_write_nothing(tmp_path, case):
    frames, error, match = BAD_FRAMES[case]
    with pytest.raises(error, match=match):
        write(tmp_path / "ds", frames)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kw,error,match", [
    ({"episodes": {"stage": np.array(["demos", "bad", "autonomous"])}}, DatasetError, "stage"),
    ({"episodes": {"success": np.array([1, 0, 1])}}, DatasetError, "success"),
    ({"episodes": {"stage": np.array(["demos", "demos"])}}, DimensionError, r"expected \(3, ...\)"),
    ({"episodes": {"length": np.ones(3)}}, DatasetError, "written by write_dataset"),
    ({"tasks": ["a", "a"]}, DatasetError, "unique"),
    ({"tasks": ["only one"]}, DatasetError, "task_index 1"),
    ({"tasks": []}, DatasetError, "non-empty list"),
    ({"fps": 0}, ConfigError, "fps"),
    ({"fps": float("nan")}, ConfigError, "fps"),
    ({"features": {"action": {"shape": [3]}}}, DimensionError, "features gives"),
    ({"features": {"action": {"dtype": "int64"}}}, DatasetError, "cannot be stored"),
    ({"features": {"nope": {"dtype": "float32"}}}, DatasetError, "frames do not have"),
    ({"metadata": {"x": object()}}, DatasetError, "JSON"),
])
def test_bad_arguments_raise_and_write_nothing(tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        write(tmp_path / "ds", **kw)
    assert os.listdir(tmp_path) == []


def test_existing_root_is_refused_without_overwrite(tmp_path):
    root = write(tmp_path / "ds")
    before = {p: (root / p).read_bytes() for p in tree(root)}
    with pytest.raises(ConfigError, match="already exists"):
        write(root, make_frames(seed=1))
    assert {p: (root / p).read_bytes() for p in tree(root)} == before
    write(root, make_frames(seed=1), overwrite=True)
    np.testing.assert_array_equal(read_dataset(root).frames["action"], make_frames(seed=1)["action"])
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="non-empty folder without meta/info.json"):
        write(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        write(tmp_path / "file")


def test_stale_temporary_of_a_killed_writer_is_removed(tmp_path):
    pid = os.getpid()
    while True:  # a process id that does not run
        pid += 1
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    stale = tmp_path / f".ds.{pid}-0-{trc_io._host_tag()}-abc.tmpdir"
    (stale / "data").mkdir(parents=True)
    live = tmp_path / f".ds.{trc_io._process_token()}-abc.tmpdir"
    live.mkdir()
    write(tmp_path / "ds")
    assert not stale.exists() and live.exists()


def test_video_round_trip(tmp_path):
    if not lerobot.video_available():
        pytest.skip("no MP4 encoder (imageio-ffmpeg) here")
    frames = make_frames(image=None)
    F = len(frames["action"])
    xx = np.broadcast_to(np.arange(16)[None, :, None], (16, 16, 3))
    frames["observation.images.cam"] = np.stack([20 * k + 4 * xx for k in range(F)]).astype(np.uint8)  # grey ramps
    root = write(tmp_path / "ds", frames, video=True)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["video_path"] == V3_VIDEO_PATH
    feat = info["features"]["observation.images.cam"]
    assert feat["dtype"] == "video" and feat["info"]["video.codec"] == "h264" and feat["info"]["video.fps"] == 10
    assert "videos/observation.images.cam/chunk-000/file-000.mp4" in tree(root)
    ep = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    np.testing.assert_allclose(ep["videos/observation.images.cam/from_timestamp"], [0.0, 0.3, 0.8])
    np.testing.assert_allclose(ep["videos/observation.images.cam/to_timestamp"], [0.3, 0.8, 1.0])
    assert "observation.images.cam" not in pq.read_schema(root / "data/chunk-000/file-000.parquet").names
    back = read_dataset(root).frames["observation.images.cam"]
    assert back.shape == frames["observation.images.cam"].shape
    err = np.abs(back.astype(int) - frames["observation.images.cam"])
    assert err.mean() < 2.0 and err.max() <= 10  # lossy H.264 at CRF 10
    levels = back.reshape(F, -1).mean(1)  # frames in order: brightness rises 20 per frame
    np.testing.assert_allclose(levels, frames["observation.images.cam"].reshape(F, -1).mean(1), atol=2)


def test_video_refused_without_an_encoder_or_with_odd_frames(tmp_path, monkeypatch):
    frames = make_frames(image=(5, 4))
    if lerobot.video_available():
        with pytest.raises(DimensionError, match="even height and width"):
            write(tmp_path / "ds", frames, video=True)
    monkeypatch.setattr(lerobot, "video_available", lambda: False)
    with pytest.raises(ConfigError, match="video=True needs imageio"):
        write(tmp_path / "ds", frames, video=True)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- reader errors
@pytest.fixture
def written(tmp_path):
    return write(tmp_path / "ds")


def _rewrite(path: Path, table: pa.Table):
    pq.write_table(table, path)


EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
DATA_FILE = "data/chunk-000/file-000.parquet"


@pytest.mark.parametrize("name", ["meta/info.json", "meta/stats.json", "meta/tasks.parquet", EPISODES_FILE, DATA_FILE])
def test_missing_file(written, name):
    (written / name).unlink()
    with pytest.raises(DatasetError, match="lacks|has no"):
        read_dataset(written)


def test_reader_errors(written, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nothing")
    info_path = written / "meta/info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match="codebase_version 'v2.1'"):
        read_dataset(written)
    info_path.write_text(json.dumps({k: v for k, v in info.items() if k != "codebase_version"}))
    with pytest.raises(DatasetError, match="codebase_version None"):
        read_dataset(written)
    info_path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_dataset(written)
    info_path.write_text(json.dumps({**info, "total_frames": 11}))
    with pytest.raises(DatasetError, match="11 frames"):
        read_dataset(written)
    info_path.write_text(json.dumps(info))
    read_dataset(written)


def _edit_table(path: Path, **columns):
    table = pq.read_table(path)
    for name, value in columns.items():
        name = name.replace("__", "/").replace("_DOT_", ".")
        if value is None:
            table = table.drop_columns([name])
        else:
            column = pa.array(value, table.schema.field(name).type)
            table = table.set_column(table.column_names.index(name), name, column)
    _rewrite(path, table)


@pytest.mark.parametrize("edit,match", [
    ({"episode_index": [0, 2, 1]}, "episodes 0 .. 2 in order"),
    ({"length": [3, 4, 2]}, "episode 1 has length 4"),
    ({"dataset_from_index": [0, 4, 8], "dataset_to_index": [4, 8, 10], "length": [4, 4, 2]},
     "frame 3 of data has episode_index 1; meta/episodes places it in episode 0"),
    ({"dataset_from_index": [0, 4, 9], "dataset_to_index": [4, 9, 11], "length": [4, 5, 2]}, "lengths sum to 11"),
    ({"dataset_from_index": [0, 2, 7], "dataset_to_index": [2, 7, 9], "length": [2, 5, 2]}, "do not tile"),
    ({"data__file_index": [0, 1, 0]}, "episode 1 is listed in data file chunk 0 file 1"),
    ({"tasks": None}, "lacks the column"),
])
def test_inconsistent_episodes(written, edit, match):
    _edit_table(written / EPISODES_FILE, **edit)
    with pytest.raises(DatasetError, match=match):
        read_dataset(written)


@pytest.mark.parametrize("edit,match", [
    ({"action": None}, r"lacks the column\(s\) \['action'\]"),
    ({"episode_index": [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]}, "frame 7 of data has episode_index 2"),
    ({"frame_index": [0, 1, 2, 0, 1, 2, 3, 5, 0, 1]}, "frame 7 of data has frame_index 5"),
])
def test_inconsistent_data(written, edit, match):
    _edit_table(written / DATA_FILE, **edit)
    with pytest.raises(DatasetError, match=match):
        read_dataset(written)


def test_reader_reads_every_data_file(written):
    """Episodes 2.. moved to data/chunk-000/file-001.parquet (LeRobot's size-based chunking)."""
    table = pq.read_table(written / DATA_FILE)
    _rewrite(written / DATA_FILE, table.slice(0, 8))
    _rewrite(written / "data/chunk-000/file-001.parquet", table.slice(8))
    with pytest.raises(DatasetError, match="episode 2 is listed in data file chunk 0 file 0"):
        read_dataset(written)
    _edit_table(written / EPISODES_FILE, data__file_index=[0, 0, 1])
    ds = read_dataset(written)
    np.testing.assert_array_equal(ds.frames["action"], make_frames()["action"])


# ---------------------------------------------------------------------------- converter
@pytest.fixture(scope="module")
def continuous_h5(tmp_path_factory):
    exp = default_experiment("double_integrator", "lqr")
    config = dataclasses.replace(exp.generator, num_samples=12, chunk_size=12, seed=3)
    path = tmp_path_factory.mktemp("cont") / "di.h5"
    generate(exp.problem, config, out=path, workers=1, progress=False)
    return path


MAZE = {"kind": "maze", "name": "maze5", "height": 5, "width": 5, "layout": "backtracker", "loop_probability": 0.3,
        "max_steps": 50, "rewards": {"goal": 1.0, "step": -0.01, "invalid": -0.1}}


@pytest.fixture(scope="module")
def maze_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("maze") / "maze.h5"
    write_discrete_dataset(path, generate_discrete(problem_from_dict(MAZE), 30, seed=1))
    return path


def _same_continuous(a, b):
    for name in ("states", "controls", "initial_states", "target_states", "costs", "status", "iterations",
                 "solve_time", "instance_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    for name in a.splits:
        np.testing.assert_array_equal(a.splits[name], b.splits[name])
    for name in a.failures:
        np.testing.assert_array_equal(a.failures[name], b.failures[name])
    assert a.problem.to_dict() == b.problem.to_dict() and a.solver == b.solver and a.seed == b.seed
    assert a.attrs["created"] == b.attrs["created"]


def test_continuous_round_trip_through_the_command_line(continuous_h5, tmp_path):
    out = tmp_path / "lr"
    assert convert.main(["--to", "lerobot", str(continuous_h5), str(out), "--quiet"]) == 0
    data = read_continuous(continuous_h5)
    ds = read_dataset(out)
    M, N, n = data.states.shape
    assert ds.num_episodes == M and ds.num_frames == M * (N - 1) and ds.tasks == ["double_integrator"]
    assert ds.info["fps"] == pytest.approx(1 / data.attrs["dt"])
    assert ds.info["features"]["observation.state"]["names"] == ["position", "velocity"]
    np.testing.assert_array_equal(ds.frames["observation.state"], data.states[:, :-1].reshape(-1, n))
    np.testing.assert_array_equal(ds.frames["action"], data.controls.reshape(M * (N - 1), -1))
    # rewards: minus the stage costs, the terminal cost on the last step: they sum to -J
    np.testing.assert_allclose(ds.frames["next.reward"].reshape(M, -1).sum(1), -data.costs, rtol=1e-5)
    Q, R = np.asarray(data.attrs["Q"]), np.asarray(data.attrs["R"])
    e, u = data.states[0, 1] - data.target_states[0], data.controls[0, 1]
    assert ds.frames["next.reward"][1] == pytest.approx(-data.attrs["dt"] * (e @ Q @ e + u @ R @ u), rel=1e-6)
    assert (ds.episodes["stage"] == "demos").all() and ds.episodes["success"].all()
    back = tmp_path / "back.h5"
    assert convert.main(["--to", "hdf5", str(out), str(back), "--quiet"]) == 0
    _same_continuous(data, read_continuous(back))


def test_maze_round_trip(maze_h5, tmp_path):
    out = convert.to_lerobot(maze_h5, tmp_path / "lr")
    data = read_discrete_dataset(maze_h5)
    ds = read_dataset(out)
    assert ds.num_episodes == 30 and ds.num_frames == data.lengths.sum() and ds.info["fps"] == 1
    assert ds.frames["action"].shape == (ds.num_frames, 1) and ds.frames["action"].dtype == np.int64
    # every frame's state is the plant's step from the previous one; every episode ends on the goal
    plant = data.problem.make_plant()
    x = torch.as_tensor(ds.frames["observation.state"])
    a = torch.as_tensor(ds.frames["action"][:, 0])
    x_next, reward, reached, invalid = maze_transition(plant, x, a)
    inner = ~ds.frames["next.done"]
    np.testing.assert_array_equal(x_next.numpy()[inner], ds.frames["observation.state"][1:][inner[:-1]])
    assert reached.numpy()[ds.frames["next.done"]].all() and not invalid.any()
    # the environment's rewards: -0.01 per move, +1 at the goal, so an episode of L moves earns 1 - 0.01 L
    sums = np.add.reduceat(ds.frames["next.reward"].astype(np.float64), ds.episodes["dataset_from_index"])
    np.testing.assert_allclose(sums, 1 - 0.01 * data.lengths, atol=1e-6)
    back = convert.to_hdf5(out, tmp_path / "back.h5")
    again = read_discrete_dataset(back)
    for name, value in data.arrays().items():
        np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)
    for name in data.splits:
        np.testing.assert_array_equal(again.splits[name], data.splits[name])
    assert again.problem.to_dict() == data.problem.to_dict()


LIBERO_ATTRS = {
    "problem_info": {"problem_name": "libero_tabletop_manipulation", "domain_name": "robosuite",
                     "language_instruction": "pick up the black bowl and place it on the plate"},
    "env_args": {"type": 1, "env_name": "Libero_Tabletop_Manipulation", "env_kwargs": {"control_freq": 20}},
    "bddl_file_name": "pick_up_the_black_bowl.bddl",
    "task_index": 0,
}


def libero_episode(T, seed, state_dim, size=8):
    rng = np.random.default_rng(seed)
    obs = {"agentview_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
           "eye_in_hand_rgb": rng.integers(0, 256, (T, size, size, 3), dtype=np.uint8),
           "ee_pos": rng.normal(size=(T, 3)), "ee_ori": rng.normal(size=(T, 3)),
           "gripper_states": rng.normal(size=(T, 2)), "joint_states": rng.normal(size=(T, 7))}
    obs["ee_states"] = np.concatenate([obs["ee_pos"], obs["ee_ori"]], 1)
    rewards, dones = np.zeros(T), np.zeros(T, dtype=np.uint8)
    rewards[-1], dones[-1] = 1.0, 1
    actions = rng.uniform(-1, 1, (T, 7))
    return Episode(obs=obs, actions=actions, executed_actions=actions + rng.normal(0, 0.01, (T, 7)), rewards=rewards,
                   dones=dones, states=rng.normal(size=(T, state_dim)), success=True, init_state_id=seed + 40,
                   task_index=0)


@pytest.fixture
def libero_folder(tmp_path):
    folder = tmp_path / "libero"
    second = {**LIBERO_ATTRS, "task_index": 1,
              "problem_info": {**LIBERO_ATTRS["problem_info"], "language_instruction": "open the top drawer"}}
    write_task_file(folder / task_file_name("task_a"), [libero_episode(4, 0, 30), libero_episode(6, 1, 30)],
                    LIBERO_ATTRS)
    write_task_file(folder / task_file_name("task_b"), [libero_episode(5, 2, 25)], second)
    return folder


def _libero_arrays(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*_demo.hdf5")):
        attrs, demos = read_task_file(path)
        with h5py.File(path) as f:
            for d in demos:
                g = f["data"][d.key]
                out[(path.name, d.key)] = {**{f"obs/{k}": v for k, v in d.obs.items()}, "actions": d.actions,
                                           "states": d.states, "rewards": d.rewards, "dones": d.dones,
                                           "executed": g["executed_actions"][()], "robot": g["robot_states"][()],
                                           "init": g.attrs["init_state_id"], "language": d.language}
        out[path.name] = {k: v for k, v in attrs.items() if k not in ("num_demos", "total")}
    return out


def test_libero_round_trip(libero_folder, tmp_path):
    out = tmp_path / "lr"
    assert convert.main(["--to", "lerobot", str(libero_folder), str(out), "--quiet"]) == 0
    ds = read_dataset(out)
    assert ds.tasks == ["pick up the black bowl and place it on the plate", "open the top drawer"]
    assert ds.num_episodes == 3 and ds.num_frames == 15 and ds.info["fps"] == 20
    np.testing.assert_array_equal(ds.frames["task_index"], [0] * 10 + [1] * 5)
    assert ds.info["features"]["observation.images.agentview"]["dtype"] == "image"
    assert ds.info["features"]["observation.state"]["shape"] == [8]
    np.testing.assert_array_equal(ds.episodes["sim_state_dim"], [30, 30, 25])
    np.testing.assert_array_equal(ds.episodes["init_state_id"], [40, 41, 42])
    first = read_task_file(libero_folder / task_file_name("task_a"))[1][0]
    np.testing.assert_array_equal(ds.frames["observation.images.agentview"][:4], first.obs["agentview_rgb"])
    np.testing.assert_allclose(ds.frames["observation.state"][:4], np.concatenate(
        [first.obs["ee_pos"], first.obs["ee_ori"], first.obs["gripper_states"]], 1), rtol=1e-6)
    back = tmp_path / "back"
    assert convert.main(["--to", "hdf5", str(out), str(back), "--quiet"]) == 0
    a, b = _libero_arrays(libero_folder), _libero_arrays(back)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(key, str):
            assert a[key] == b[key], key
            continue
        for name in a[key]:
            np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key} {name}")


def test_libero_video(libero_folder, tmp_path):
    if not lerobot.video_available():
        pytest.skip("no MP4 encoder here")
    convert.to_lerobot(libero_folder, tmp_path / "lr", video=True)
    ds = read_dataset(tmp_path / "lr")
    assert ds.info["features"]["observation.images.eye_in_hand"]["dtype"] == "video"
    assert ds.frames["observation.images.eye_in_hand"].shape == (15, 8, 8, 3)


def test_command_line_errors(continuous_h5, tmp_path, capsys):
    out = tmp_path / "lr"
    assert convert.main(["--to", "lerobot", str(continuous_h5), str(out), "--seed", "1", "--quiet"]) == 0
    first = read_dataset(out).frames
    assert convert.main(["--to", "lerobot", str(continuous_h5), str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert convert.main(["--to", "lerobot", str(continuous_h5), str(out), "--force", "--seed", "2", "--quiet"]) == 0
    for name, value in read_dataset(out).frames.items():  # the same arrays whatever the seed
        np.testing.assert_array_equal(value, first[name])
    assert convert.main(["--to", "lerobot", str(tmp_path / "missing.h5"), str(tmp_path / "x"), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert convert.main(["--to", "hdf5", str(out), str(tmp_path / "b.h5"), "--fps", "5", "--quiet"]) == 2
    assert convert.main(["--to", "lerobot", str(continuous_h5), str(tmp_path / "v"), "--video", "--quiet"]) == 2
    plain = write(tmp_path / "plain")
    assert convert.main(["--to", "hdf5", str(plain), str(tmp_path / "b.h5"), "--quiet"]) == 1
    assert "not written by trc.convert" in capsys.readouterr().err
    (tmp_path / "taken.h5").write_text("mine")
    assert convert.main(["--to", "hdf5", str(out), str(tmp_path / "taken.h5"), "--quiet"]) == 2
    assert (tmp_path / "taken.h5").read_text() == "mine"
    assert convert.main(["--to", "lerobot", str(out), str(tmp_path / "again"), "--quiet"]) == 2
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "x").exists() and not (tmp_path / "v").exists()


def test_sudoku_round_trip(tmp_path):
    problem = problem_from_dict({"kind": "sudoku", "name": "sudoku4", "size": 4, "givens": [4, 10],
                                 "on_mistake": "terminate", "rewards": {"goal": 1.0, "step": -0.01, "invalid": -0.1}})
    data = generate_discrete(problem, 8, seed=2)
    write_discrete_dataset(tmp_path / "s.h5", data)
    ds = read_dataset(convert.to_lerobot(tmp_path / "s.h5", tmp_path / "lr"))
    sums = np.add.reduceat(ds.frames["next.reward"].astype(np.float64), ds.episodes["dataset_from_index"])
    np.testing.assert_allclose(sums, 1 - 0.01 * data.lengths, atol=1e-6)  # every placement right, solved at the end
    np.testing.assert_array_equal(ds.frames["observation.state"][ds.episodes["dataset_from_index"]],
                                  data.initial_states)
    again = read_discrete_dataset(convert.to_hdf5(tmp_path / "lr", tmp_path / "back.h5"))
    for name, value in data.arrays().items():
        np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)


def test_a_write_that_fails_midway_leaves_nothing(tmp_path, monkeypatch):
    def broken(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(lerobot, "_write_json", broken)  # after the data and episode files are written
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path / "ds")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    root = write(tmp_path / "ds")
    monkeypatch.setattr(lerobot, "_write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        write(root, make_frames(seed=4), overwrite=True)
    np.testing.assert_array_equal(read_dataset(root).frames["action"], make_frames()["action"])  # old one kept
    assert sorted(os.listdir(tmp_path)) == ["ds"]


@pytest.mark.slow
def test_a_writer_killed_with_sigkill_leaves_no_data_set(tmp_path):
    """kill -9 while the files are being written: no root; the next write removes the leftovers."""
    script = (
        "import sys, time, numpy as np\n"
        "sys.path.insert(0, %r)\n"
        "from trc import lerobot\n"
        "from test_lerobot import make_frames, TASKS\n"
        "def stuck(path, obj):\n"
        "    print('writing', flush=True); time.sleep(600)\n"
        "lerobot._write_json = stuck\n"
        "lerobot.write_dataset(%r, make_frames(), tasks=TASKS, fps=10)\n"
    ) % (str(Path(__file__).parent), str(tmp_path / "ds"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.1)
    left = os.listdir(tmp_path)
    assert "ds" not in left and any(name.endswith(".tmpdir") for name in left)
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "ds")
    write(tmp_path / "ds")
    assert sorted(os.listdir(tmp_path)) == ["ds"]
