"""HDF5 storage, the generation pipeline (determinism, failures, resume, workers) and trc.data.

The pipeline is exercised with :class:`DenseLQR`, a small solver defined here: the
unconstrained finite-horizon tracking LQR of a linear plant, solved by dense least squares
over the stacked controls (independent of the Riccati recursion of ``trc.generators.lqr``).
Instances whose optimal controls leave the plant's bounds are reported as failures, which
gives the pipeline a realistic, deterministic failure rate (about a third with |u| <= 6).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import control as ct
import h5py
import numpy as np
import pytest
import torch

from dynamics.errors import ConfigError, DatasetError, SolverError, UnknownNameError
from trc.generators import base
from trc.generators.base import Solution, Solver
from trc.generators.config import GeneratorConfig
from trc.generators.pipeline import (
    SAMPLE_BLOCK,
    generate,
    parts_dir,
    run_hash,
    sample_instances,
    split_indices,
)
from trc.generators.storage import REQUIRED_ATTRS, GeneratedDataset, read_attrs, read_dataset, write_dataset
from trc.problem import Problem

REPO = Path(__file__).resolve().parent.parent


class DenseLQR(Solver):
    """Unconstrained tracking LQR by dense least squares (a test solver, see the module doc).

    With the stacked controls ``U`` and ``x_k = A^k x0 + sum_j A^(k-1-j) B u_j`` the cost is
    quadratic in ``U``; the minimiser solves ``H U = -G' W (Phi x0 - x*)``.

    Options: none. The environment variable ``TRC_TEST_SOLVE_DELAY`` (seconds per batch)
    slows it down for the interruption test without changing its results.
    """

    name = "dense_lqr"

    def __init__(self, problem, **options):
        if options:
            raise TypeError(f"dense_lqr takes no options, got {sorted(options)}")
        super().__init__(problem)
        self.plant = problem.make_plant(torch.float64)
        n, m, N, dt = problem.state_dim, problem.control_dim, problem.horizon, problem.dt
        sysd = ct.c2d(self.plant.linearize(np.zeros(n), np.zeros(m)), dt, "zoh")
        A, B = np.asarray(sysd.A), np.asarray(sysd.B)
        self.Phi = np.concatenate([np.linalg.matrix_power(A, k) for k in range(N + 1)])
        G = np.zeros(((N + 1) * n, N * m))
        for k in range(1, N + 1):
            for j in range(k):
                G[k * n:(k + 1) * n, j * m:(j + 1) * m] = np.linalg.matrix_power(A, k - 1 - j) @ B
        Q, R, Qf = problem.weights
        W = np.kron(np.diag([dt] * N + [0.0]), Q)
        W[N * n:, N * n:] = Qf
        self.G, self.W = G, W
        self.H = G.T @ W @ G + dt * np.kron(np.eye(N), R)

    def solve(self, x0, target):
        t0 = time.perf_counter()
        time.sleep(float(os.environ.get("TRC_TEST_SOLVE_DELAY", "0")))
        p = self.problem
        B, N, m = x0.shape[0], p.horizon, p.control_dim
        free = x0 @ self.Phi.T - np.tile(target, N + 1)
        U = -np.linalg.solve(self.H, self.G.T @ self.W @ free.T).T.reshape(B, N, m)
        with torch.no_grad():
            states = self.plant.rollout(torch.as_tensor(x0), torch.as_tensor(U))
            costs = p.cost_of(states, torch.as_tensor(U), torch.as_tensor(target)).numpy()
        lo, hi = self.plant.u_min.double().numpy(), self.plant.u_max.double().numpy()
        ok = ((U >= lo) & (U <= hi)).all(axis=(1, 2))
        status = np.where(ok, "optimal", "control_bounds: |u| above its bound")
        seconds = np.full(B, (time.perf_counter() - t0) / max(B, 1))
        return Solution(states.numpy(), U, costs, ok, status, np.ones(B, np.int64), seconds)


class PickySolver(DenseLQR):
    """Raises SolverError for a whole batch that contains an instance with x0[0] > 1.5."""

    name = "picky"

    def solve(self, x0, target):
        if (x0[:, 0] > 1.5).any():
            raise SolverError(f"picky: cannot start from position {x0[:, 0].max():.3f} > 1.5")
        return super().solve(x0, target)


class BadShapeSolver(DenseLQR):
    name = "bad_shape"

    def solve(self, x0, target):
        sol = super().solve(x0, target)
        sol.controls = sol.controls[:, :-1]
        return sol


PROBLEM = dict(
    name="di_test",
    plant={"name": "double_integrator", "u_min": -6.0, "u_max": 6.0},
    dt=0.33,
    horizon=15,
    Q=[10.0, 5.0],
    R=[0.1],
    Qf_scale=20.0,
    initial_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]},
    target_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]},
)


@pytest.fixture
def solvers(monkeypatch):
    """Register the test solvers for one test only (the registry is left as it was)."""
    for cls in (DenseLQR, PickySolver, BadShapeSolver):
        monkeypatch.setitem(base.SOLVERS._items, cls.name, cls)  # registry has no removal


@pytest.fixture
def problem():
    return Problem.from_dict(PROBLEM)


def config(**kw):
    kw = {"solver": "dense_lqr", "num_samples": 40, "chunk_size": 16, **kw}
    return GeneratorConfig(**kw)


def run(problem, path, **kw):
    workers = kw.pop("workers", 1)
    return generate(problem, config(**kw), out=path, workers=workers, progress=False)


ARRAYS = ("states", "controls", "initial_states", "target_states", "costs", "status", "iterations", "instance_index")


def assert_same_data(a: GeneratedDataset, b: GeneratedDataset):
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in a.splits:
        np.testing.assert_array_equal(a.splits[name], b.splits[name], err_msg=f"splits/{name}")
    for name in ("initial_states", "status", "instance_index"):
        np.testing.assert_array_equal(a.failures[name], b.failures[name], err_msg=f"failures/{name}")


# ---------------------------------------------------------------------------- the test solver
def test_dense_lqr_is_a_minimum(problem):
    """The test solver's controls minimise the problem's cost (random perturbations only add)."""
    solver = DenseLQR(problem)
    x0, target = sample_instances(problem, 0, 0, 4)
    sol = solver.solve(x0, target)
    plant = problem.make_plant(torch.float64)
    rng = np.random.default_rng(1)
    for scale in (1e-3, 1e-1):
        U = sol.controls + scale * rng.standard_normal(sol.controls.shape)
        with torch.no_grad():
            states = plant.rollout(torch.as_tensor(x0), torch.as_tensor(U))
            J = problem.cost_of(states, torch.as_tensor(U), torch.as_tensor(target)).numpy()
        assert (J > sol.costs).all()
    with torch.no_grad():
        J0 = problem.cost_of(torch.as_tensor(sol.states), torch.as_tensor(sol.controls), torch.as_tensor(target))
    np.testing.assert_allclose(J0.numpy(), sol.costs, rtol=1e-12)


# ---------------------------------------------------------------------------- determinism helpers
def test_instance_stream_is_prefix_stable(problem):
    x_all, t_all = sample_instances(problem, 7, 0, 2 * SAMPLE_BLOCK + 10)
    x_mid, t_mid = sample_instances(problem, 7, SAMPLE_BLOCK - 5, SAMPLE_BLOCK + 20)
    np.testing.assert_array_equal(x_mid, x_all[SAMPLE_BLOCK - 5:SAMPLE_BLOCK + 20])
    np.testing.assert_array_equal(t_mid, t_all[SAMPLE_BLOCK - 5:SAMPLE_BLOCK + 20])
    lo, hi = np.array(PROBLEM["initial_state"]["low"]), np.array(PROBLEM["initial_state"]["high"])
    assert ((x_all >= lo) & (x_all <= hi)).all()
    assert not np.array_equal(sample_instances(problem, 8, 0, 10)[0], x_all[:10])


@pytest.mark.parametrize("M", [0, 1, 7, 100, 1001])
def test_split_indices_partition(M):
    splits = split_indices(M, [0.8, 0.1, 0.1], seed=3)
    allidx = np.concatenate(list(splits.values()))
    np.testing.assert_array_equal(np.sort(allidx), np.arange(M))
    assert len(splits["train"]) == round(0.8 * M)
    assert split_indices(M, [0.8, 0.1, 0.1], seed=3)["val"].tolist() == splits["val"].tolist()
    if M > 100:
        assert split_indices(M, [0.8, 0.1, 0.1], seed=4)["val"].tolist() != splits["val"].tolist()


# ---------------------------------------------------------------------------- writing and reading
def random_dataset(problem, M=12, F=3, seed=0) -> GeneratedDataset:
    rng = np.random.default_rng(seed)
    N, n, m = problem.horizon, problem.state_dim, problem.control_dim
    return GeneratedDataset(
        problem=problem, solver="dense_lqr", solver_options={"alpha": 1, "nested": {"b": [1, 2]}}, seed=5,
        states=rng.standard_normal((M, N + 1, n)), controls=rng.standard_normal((M, N, m)),
        initial_states=rng.standard_normal((M, n)), target_states=rng.standard_normal((M, n)),
        costs=rng.random(M), status=np.array(["optimal"] * (M - 1) + ["optimal (inaccurate) é"]),
        iterations=rng.integers(1, 9, M), solve_time=rng.random(M), instance_index=np.arange(M) * 2,
        splits=split_indices(M, [0.5, 0.25, 0.25], 5),
        failures={
            "initial_states": rng.standard_normal((F, n)), "target_states": rng.standard_normal((F, n)),
            "status": np.array(["solver: infeasible"] * F), "iterations": np.zeros(F, np.int64),
            "solve_time": rng.random(F), "instance_index": np.arange(F) * 2 + 1,
        },
        attrs={"note": "round trip", "numbers": [1.0, 2.5], "mixed": ["a", 1]},
    )


def test_round_trip(problem, tmp_path):
    data = random_dataset(problem)
    path = write_dataset(tmp_path / "sub" / "d.h5", data)
    back = read_dataset(path)
    assert_same_data(data, back)
    np.testing.assert_array_equal(back.solve_time, data.solve_time)
    assert back.problem.to_dict() == problem.to_dict()
    assert back.solver == "dense_lqr" and back.seed == 5
    assert back.solver_options == {"alpha": 1, "nested": {"b": [1, 2]}}
    assert back.attrs["note"] == "round trip" and back.attrs["mixed"] == ["a", 1]
    np.testing.assert_array_equal(back.attrs["numbers"], [1.0, 2.5])
    assert back.status[-1] == "optimal (inaccurate) é"
    assert back.states.dtype == np.float64 and back.iterations.dtype == np.int64
    split = back.split("val")
    np.testing.assert_array_equal(split["states"], data.states[data.splits["val"]])
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["d.h5"]  # no temporary left


def test_schema_attributes(problem, tmp_path):
    path = write_dataset(tmp_path / "d.h5", random_dataset(problem))
    attrs = read_attrs(path)
    assert set(REQUIRED_ATTRS) <= set(attrs)
    Q, R, Qf = problem.weights
    np.testing.assert_array_equal(attrs["Q"], Q)
    np.testing.assert_array_equal(attrs["R"], R)
    np.testing.assert_array_equal(attrs["Qf"], Qf)
    np.testing.assert_array_equal(attrs["u_max"], [6.0])
    np.testing.assert_array_equal(attrs["x_max"], [np.inf, np.inf])
    assert attrs["plant"] == "double_integrator"
    assert attrs["plant_config"] == problem.make_plant().config()
    assert attrs["problem"] == problem.to_dict()
    assert (attrs["dt"], attrs["N"], attrs["state_dim"], attrs["control_dim"]) == (0.33, 15, 2, 1)
    assert attrs["state_names"] == ["position", "velocity"]
    import trc

    assert attrs["trc_version"] == trc.__version__
    with h5py.File(path) as f:
        assert f["states"].fletcher32 and f["splits/train"].dtype == np.int64
        assert f["failures/status"].shape == (3,)


def test_write_rejects_inconsistent_arrays(problem, tmp_path):
    data = random_dataset(problem)
    data.controls = data.controls[:, :-1]
    with pytest.raises(DatasetError, match=r"controls.*expected \(12, 15, 1\)"):
        write_dataset(tmp_path / "d.h5", data)
    assert not (tmp_path / "d.h5").exists()


# ---------------------------------------------------------------------------- damaged files
@pytest.fixture
def written(problem, tmp_path):
    data = random_dataset(problem, M=200)
    return write_dataset(tmp_path / "d.h5", data)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    path = tmp_path / "d.h5"
    path.write_text("states: not an HDF5 file\n")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        read_dataset(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_file(written, keep):
    size = written.stat().st_size
    with open(written, "r+b") as fh:
        fh.truncate(int(size * keep))
    with pytest.raises(DatasetError, match=str(written.name)):
        read_dataset(written)


def test_corrupted_bytes_fail_the_checksum(written):
    with h5py.File(written) as f:
        info = f["states"].id.get_chunk_info(0)
        offset = info.byte_offset + info.size // 2
    with open(written, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DatasetError, match="cannot read 'states'"):
        read_dataset(written)


@pytest.mark.parametrize("name", ["states", "splits/val", "failures/status"])
def test_missing_array(written, name):
    with h5py.File(written, "a") as f:
        del f[name]
    with pytest.raises(DatasetError, match=name.split("/")[-1]):
        read_dataset(written)


@pytest.mark.parametrize("name", ["problem", "dt", "schema_version"])
def test_missing_attribute(written, name):
    with h5py.File(written, "a") as f:
        del f.attrs[name]
    with pytest.raises(DatasetError, match=f"lacks the attribute.*{name}"):
        read_dataset(written)


def test_newer_schema_and_unknown_plant(written):
    with h5py.File(written, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DatasetError, match="schema_version 99"):
        read_dataset(written)
    with h5py.File(written, "a") as f:
        f.attrs["schema_version"] = 1
        f.attrs["problem"] = f.attrs["problem"].replace('"double_integrator"', '"warp_drive"')
    with pytest.raises(DatasetError, match="warp_drive"):
        read_dataset(written)


def test_inconsistent_shapes_and_nan(written):
    with h5py.File(written, "a") as f:
        f.attrs["N"] = 16
    with pytest.raises(DatasetError, match="N=16"):
        read_dataset(written)
    with h5py.File(written, "a") as f:
        f.attrs["N"] = 15
        f["costs"][3] = np.nan
    with pytest.raises(DatasetError, match="'costs' contains NaN"):
        read_dataset(written)


# ---------------------------------------------------------------------------- generation
def test_generate_is_deterministic_and_keeps_failures_apart(problem, solvers, tmp_path):
    report = run(problem, tmp_path / "a.h5")
    a = read_dataset(tmp_path / "a.h5")
    assert report.num_samples == a.num_samples == 40
    # failures: counted, reported, stored apart, never in the training arrays
    assert report.num_failures == len(a.failures["status"]) > 0
    assert report.failure_reasons == {"control_bounds": report.num_failures}
    assert report.num_attempts == a.attrs["num_attempts"] == 40 + report.num_failures
    assert (np.abs(a.controls) <= 6.0).all() and (a.status == "optimal").all()
    assert (np.abs(DenseLQR(problem).solve(a.failures["initial_states"], a.failures["target_states"]).controls) > 6).any(axis=(1, 2)).all()
    idx = np.sort(np.concatenate([a.instance_index, a.failures["instance_index"]]))
    np.testing.assert_array_equal(idx, np.arange(report.num_attempts))  # a prefix of the stream
    x0, target = sample_instances(problem, 0, 0, report.num_attempts)
    np.testing.assert_array_equal(a.initial_states, x0[a.instance_index])
    np.testing.assert_array_equal(a.target_states, target[a.instance_index])
    assert sorted(len(v) for v in a.splits.values()) == [4, 4, 32]
    assert not parts_dir(tmp_path / "a.h5").exists()
    assert "control_bounds" in report.summary() and str(tmp_path / "a.h5") in report.summary()

    auto = run(problem, tmp_path / "b.h5", workers=None)  # same seed: same arrays
    assert auto.workers == 1  # default workers: this small run stays in this process
    assert_same_data(a, read_dataset(tmp_path / "b.h5"))
    run(problem, tmp_path / "c.h5", seed=1)  # another seed: other instances
    c = read_dataset(tmp_path / "c.h5")
    assert not np.array_equal(a.initial_states, c.initial_states)
    assert not np.array_equal(a.splits["train"], c.splits["train"])
    # a larger data set starts with the same instances
    run(problem, tmp_path / "d.h5", num_samples=60)
    d = read_dataset(tmp_path / "d.h5")
    np.testing.assert_array_equal(d.instance_index[:40], a.instance_index)


def test_up_to_date_force_and_stale_parts(problem, solvers, tmp_path):
    path = tmp_path / "a.h5"
    first = run(problem, path)
    before = read_dataset(path)
    created = read_attrs(path)["created"]
    again = run(problem, path)
    assert again.up_to_date and "up to date" in again.summary()
    assert read_attrs(path)["created"] == created
    # stale parts of another configuration and a corrupt part of this one are not used
    folder = parts_dir(path)
    folder.mkdir()
    (folder / f"{'0' * 16}-000000.npz").write_bytes(b"stale")
    tag = run_hash(problem, config())
    (folder / f"{tag}-000001.npz").write_bytes(b"corrupt")
    (folder / f".{tag}-000002.npz.x.tmp").write_bytes(b"unfinished")
    forced = generate(problem, config(), out=path, workers=1, progress=False, force=True)
    assert not forced.up_to_date and forced.chunks_resumed == 0
    assert not folder.exists()
    assert_same_data(before, read_dataset(path))
    assert forced.num_failures == first.num_failures


def test_absurd_failure_rate_raises(solvers, tmp_path):
    tight = Problem.from_dict({**PROBLEM, "plant": {"name": "double_integrator", "u_min": -0.5, "u_max": 0.5}})
    with pytest.raises(SolverError, match=r"solves failed.*control_bounds"):
        run(tight, tmp_path / "a.h5")
    assert not (tmp_path / "a.h5").exists()
    # 25 % failures are fine by default but not with max_failure_rate 0.1
    with pytest.raises(SolverError, match="max_failure_rate 0.1"):
        run(Problem.from_dict(PROBLEM), tmp_path / "b.h5", max_failure_rate=0.1)


def test_batch_errors_fall_back_to_single_instances(problem, solvers, tmp_path):
    report = run(problem, tmp_path / "a.h5", solver="picky", num_samples=20)
    a = read_dataset(tmp_path / "a.h5")
    assert (a.initial_states[:, 0] <= 1.5).all()
    assert "SolverError" in report.failure_reasons
    picky = a.failures["status"][np.char.startswith(a.failures["status"], "SolverError")]
    assert len(picky) == report.failure_reasons["SolverError"]
    assert (a.failures["initial_states"][:, 0] > 1.5).sum() == len(picky) > 0


def test_wrong_shape_is_a_solver_error(problem, solvers, tmp_path):
    """A malformed solution is a bug of the solver (bad options and workers: see the table of
    bad inputs in test_generate_cli.py)."""
    with pytest.raises(SolverError, match=r"controls of shape \(16, 14, 1\); expected \(16, 15, 1\)"):
        run(problem, tmp_path / "a.h5", solver="bad_shape")
    assert not (tmp_path / "a.h5").exists()


def test_generator_config_validation(solvers):
    with pytest.raises(ConfigError, match="unknown solver 'nope'") as info:
        GeneratorConfig(solver="nope")
    assert isinstance(info.value.__cause__, UnknownNameError)
    for bad in ({"splits": [0.5, 0.5]}, {"splits": [0.8, 0.3, -0.1]}, {"splits": [0.8, 0.1, 0.2]},
                {"num_samples": 0}, {"num_samples": 2.5}, {"seed": -1}, {"seed": 2**63}, {"seed": 1.0},
                {"chunk_size": 0},
                {"max_failure_rate": 1.0}, {"options": [1]}):
        with pytest.raises(ConfigError):
            GeneratorConfig(solver="dense_lqr", **bad)


RESUME_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {repo!r}]
from test_storage import DenseLQR, PROBLEM, config
from trc.generators import base
from trc.generators.pipeline import generate
from trc.problem import Problem

base.SOLVERS.add("dense_lqr", DenseLQR)
if __name__ == "__main__":
    generate(Problem.from_dict(PROBLEM), config(num_samples=80, chunk_size=8), out={out!r}, workers=1, progress=False)
"""


def test_resume_after_kill(problem, solvers, tmp_path):
    """kill -9 during generation leaves no output file; the rerun resumes and matches a clean run."""
    out = tmp_path / "killed.h5"
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(tests=str(REPO / "tests"), repo=str(REPO), out=str(out)))
    env = {**os.environ, "TRC_TEST_SOLVE_DELAY": "0.25"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    folder = parts_dir(out)
    deadline = time.monotonic() + 180
    try:
        while len(list(folder.glob("*.npz"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no parts were written in time"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait()
    assert proc.returncode == -9
    assert not out.exists()
    n_parts = len(list(folder.glob("*.npz")))
    assert 3 <= n_parts < 12

    resumed = generate(problem, config(num_samples=80, chunk_size=8), out=out, workers=1, progress=False)
    assert resumed.chunks_resumed == n_parts
    assert not folder.exists()
    run(problem, tmp_path / "clean.h5", num_samples=80, chunk_size=8)
    assert_same_data(read_dataset(out), read_dataset(tmp_path / "clean.h5"))


# ---------------------------------------------------------------------------- trc.data
def test_load_dataset_for_training(problem, solvers, tmp_path):
    from trc.data import FIELDS, load_dataset

    run(problem, tmp_path / "a.h5", num_samples=50)
    data = load_dataset(tmp_path / "a.h5")
    raw = read_dataset(tmp_path / "a.h5")
    assert data.problem.to_dict() == problem.to_dict()
    assert (data.state_dim, data.control_dim, data.horizon) == (2, 1, 15)
    assert (len(data.train), len(data.val), len(data.test)) == (40, 5, 5)
    assert data.train.states.dtype == torch.float32 and data.train.states.shape == (40, 16, 2)
    np.testing.assert_allclose(data.val.controls.numpy(), raw.controls[raw.splits["val"]], rtol=1e-6)
    sample = data.test[2]
    assert set(sample) == set(FIELDS) and sample["controls"].shape == (15, 1) and sample["cost"].shape == ()
    # batches: every sample exactly once, reproducible with a seeded generator
    batches = list(data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    assert [len(b["x0"]) for b in batches] == [16, 16, 8]
    seen = torch.cat([b["cost"] for b in batches])
    torch.testing.assert_close(seen.sort().values, data.train.cost.sort().values)
    again = list(data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(again[0]["states"], batches[0]["states"])
    assert [len(b["x0"]) for b in data.train.batches(16, shuffle=False, drop_last=True)] == [16, 16]
    loader = torch.utils.data.DataLoader(data.val, batch_size=4)
    assert next(iter(loader))["states"].shape == (4, 16, 2)
    double = load_dataset(tmp_path / "a.h5", dtype=torch.float64)
    np.testing.assert_array_equal(double.train.controls.numpy(), raw.controls[raw.splits["train"]])
    with pytest.raises(DatasetError):
        load_dataset(tmp_path / "missing.h5")


# ---------------------------------------------------------------------------- bitwise determinism
TINY_QP = {**PROBLEM, "name": "tiny_qp", "plant": {"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}}


def vdp_problem(horizon=30):
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "van_der_pol.yaml").read_text())
    return Problem.from_dict({**raw["problem"], "horizon": horizon})


def interrupted_then_resumed(problem, cfg, out, monkeypatch, after=1):
    """A run stopped (as by Ctrl-C) after ``after`` chunks, then the same run again."""
    solver_cls = base.SOLVERS.get(cfg.solver)
    real = solver_cls.solve
    calls = []

    def stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(solver_cls, "solve", stop)
    with pytest.raises(KeyboardInterrupt):
        generate(problem, cfg, out=out, workers=1, progress=False)
    monkeypatch.setattr(solver_cls, "solve", real)
    assert not out.exists() and len(list(parts_dir(out).glob("*.npz"))) == after
    report = generate(problem, cfg, out=out, workers=1, progress=False)
    assert report.chunks_resumed == after
    return read_dataset(out)


def test_resume_is_bitwise_with_a_stateful_solver(tmp_path, monkeypatch):
    """The qp solver keeps cvxpy's warm-start state between calls; a resumed run (whose solver
    never saw the first chunks) still gives the same bits, because every chunk gets a fresh
    solver. (With one solver for all chunks the costs differed by up to 6e-14.)"""
    problem = Problem.from_dict(TINY_QP)
    cfg = GeneratorConfig(solver="qp", num_samples=24, chunk_size=8, seed=0)
    generate(problem, cfg, out=tmp_path / "one.h5", workers=1, progress=False)
    one = read_dataset(tmp_path / "one.h5")
    resumed = interrupted_then_resumed(problem, cfg, tmp_path / "resumed.h5", monkeypatch)
    assert_same_data(one, resumed)
    for name in ("states", "controls", "costs"):  # bitwise, not close
        assert np.array_equal(getattr(one, name), getattr(resumed, name)), name


def test_chunks_run_single_threaded_and_restore(problem, solvers, tmp_path, monkeypatch):
    """Every chunk is solved with one torch thread and one BLAS thread; afterwards the caller's
    numbers of threads are back."""
    from threadpoolctl import threadpool_info

    seen = []
    real = DenseLQR.solve

    def spy(self, x0, target):
        seen.append((torch.get_num_threads(), {p["num_threads"] for p in threadpool_info()}))
        return real(self, x0, target)

    monkeypatch.setattr(DenseLQR, "solve", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(problem, tmp_path / "a.h5", num_samples=20, chunk_size=8)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(seen) >= 3 and all(entry == (1, {1}) for entry in seen)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["qp", "nonlinear"])
def test_workers_and_resume_are_bitwise(tmp_path, monkeypatch, solver):
    """1 worker, 2 spawned workers and an interrupted-then-resumed run: the same bits."""
    if solver == "qp":
        problem, cfg = Problem.from_dict(TINY_QP), GeneratorConfig(solver="qp", num_samples=24, chunk_size=8, seed=2)
    else:
        problem, cfg = vdp_problem(), GeneratorConfig(solver="nonlinear", num_samples=12, chunk_size=4, seed=2)
    runs = {}
    for workers in (1, 2):
        report = generate(problem, cfg, out=tmp_path / f"w{workers}.h5", workers=workers, progress=False)
        assert report.workers == workers
        runs[workers] = read_dataset(tmp_path / f"w{workers}.h5")
    runs["resumed"] = interrupted_then_resumed(problem, cfg, tmp_path / "resumed.h5", monkeypatch, after=2)
    for key in (2, "resumed"):
        assert_same_data(runs[1], runs[key])
        for name in ("states", "controls", "costs"):
            assert np.array_equal(getattr(runs[1], name), getattr(runs[key], name)), (key, name)


# ---------------------------------------------------------------------------- output safety
def hold_lock(path):
    """A second process that holds the writer lock of ``path`` (a bare flock, no TRC import)."""
    from trc.io import lock_path

    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.write(fd, b'process %d on elsewhere' % os.getpid()); print('locked', flush=True); sys.stdin.read()")
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_at_once(problem, solvers, tmp_path, monkeypatch):
    out = tmp_path / "a.h5"
    real_solve = DenseLQR.solve
    proc = hold_lock(out)
    try:
        monkeypatch.setattr(DenseLQR, "solve", lambda *a: pytest.fail("solving started"))
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=rf"'{out}' is being written by process {proc.pid} on elsewhere"):
            run(problem, out)
        assert time.perf_counter() - t0 < 10
        with pytest.raises(ConfigError, match="is being written by process"):
            write_dataset(out, random_dataset(problem))
        assert not out.exists() and not parts_dir(out).exists()
    finally:
        proc.stdin.close()
        proc.wait(60)
    monkeypatch.setattr(DenseLQR, "solve", real_solve)
    assert run(problem, out).num_samples == 40  # the lock is free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]  # no lock, parts or temporaries left


def test_existing_outputs(problem, solvers, tmp_path):
    """Own output: up to date. Anything else: refused before solving, unless force."""
    path = tmp_path / "a.h5"
    run(problem, path)
    assert run(problem, path).up_to_date
    created = read_attrs(path)["created"]
    cases = [
        (dict(num_samples=20), r"a data set of problem 'di_test' with other settings: solver 'dense_lqr', 40 samples"),
        (dict(seed=3), r"seed 0, .*this run: .*seed 3"),
        (dict(chunk_size=8), r"chunk_size 16, .*this run: .*chunk_size 8"),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=message):
            run(problem, path, **changes)
        assert read_attrs(path)["created"] == created
    other = Problem.from_dict({**PROBLEM, "name": "other", "horizon": 10})
    with pytest.raises(ConfigError, match="holds a data set of problem 'di_test'; this run generates problem 'other'"):
        run(other, path)
    assert read_attrs(path)["created"] == created
    forced = generate(problem, config(num_samples=20), out=path, workers=1, progress=False, force=True)
    assert not forced.up_to_date and read_dataset(path).num_samples == 20


def test_discrete_writer_checks_its_output(tmp_path):
    from trc.discrete import problem_from_dict
    from trc.generators.discrete import check_discrete_output, generate_discrete, write_discrete_dataset

    maze = problem_from_dict(dict(kind="maze", name="maze5", height=5, width=5, loop_probability=0.3, max_steps=30))
    data = generate_discrete(maze, 12, seed=1)
    path = tmp_path / "maze.h5"
    assert check_discrete_output(path, maze, 12, 1) == path
    write_discrete_dataset(path, data)
    write_discrete_dataset(path, data)  # the same data set: replaced
    check_discrete_output(path, maze, 12, 1)
    with pytest.raises(ConfigError, match=r"other settings: 12 samples, seed 1, .*this run: 12 samples, seed 2"):
        check_discrete_output(path, maze, 12, 2)
    other = generate_discrete(maze, 10, seed=1)
    with pytest.raises(ConfigError, match=r"other settings: 12 samples"):
        write_discrete_dataset(path, other)
    yaml_file = tmp_path / "maze.yaml"
    yaml_file.write_text("problem: {kind: maze}\n")
    with pytest.raises(ConfigError, match=r"'.*maze\.yaml' already exists .*\(it is not an HDF5 file\)"):
        write_discrete_dataset(yaml_file, data)
    assert yaml_file.read_text() == "problem: {kind: maze}\n"
    continuous = write_dataset(tmp_path / "c.h5", random_dataset(Problem.from_dict(PROBLEM)))
    with pytest.raises(ConfigError, match="it is not a discrete data set"):
        write_discrete_dataset(continuous, data)
    for bad, message in (("", "empty path"), (tmp_path, "is a folder"), (yaml_file / "d.h5", "is not a folder")):
        with pytest.raises(ConfigError, match=message):
            write_discrete_dataset(bad, data)
        with pytest.raises(ConfigError, match=message):
            check_discrete_output(bad, maze, 12, 1)
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\], got 9223372036854775808"):
        check_discrete_output(tmp_path / "new.h5", maze, 12, 2**63)
    write_discrete_dataset(path, other, force=True)
    assert read_discrete_dataset_samples(path) == 10
    proc = hold_lock(path)
    try:
        with pytest.raises(ConfigError, match="is being written by process"):
            write_discrete_dataset(path, data, force=True)
    finally:
        proc.stdin.close()
        proc.wait(60)
    assert read_discrete_dataset_samples(path) == 10


def read_discrete_dataset_samples(path) -> int:
    from trc.generators.discrete import read_discrete_dataset

    return read_discrete_dataset(path).num_samples
