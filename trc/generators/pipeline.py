"""A generation run: seeded instances, chunks solved by parallel workers, resume, HDF5 output.

How a run is organised (see :func:`generate`):

1. **Instances.** Instance ``i`` (initial state, target state) is a pure function of the seed
   and ``i``: the instance stream is cut into blocks of :data:`SAMPLE_BLOCK` instances, block
   ``b`` drawn by :meth:`Problem.sample <trc.problem.Problem.sample>` from
   ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(0, b)))``. Any prefix of the
   stream is therefore the same whatever the sample count, chunk size or number of workers.
2. **Chunks.** Instances ``[c * chunk_size, (c + 1) * chunk_size)`` form chunk ``c``, solved
   as one batch by one worker: this process, a ``spawn`` process (``backend="local"``) or a
   Ray task anywhere in a cluster (``backend="ray"``, see :mod:`trc.backends`); a task gets
   only the problem's dictionary, the solver, its options, the seed and the chunk's range,
   and returns the chunk's arrays. Every chunk is solved
   by a solver built afresh for it, from the problem's dictionary and the options, with one
   torch and one BLAS/OpenMP thread (``torch.set_num_threads(1)`` and
   ``threadpoolctl.threadpool_limits(1)``, restored afterwards): solvers that keep state
   between calls (cvxpy's warm starts keep the backend's factorisation) would otherwise make
   a chunk depend on the chunks the same worker solved before it. A chunk's arrays are
   therefore a function of the configuration and the chunk index only, bitwise, whatever the
   backend, the number of workers or the chunks resumed from an earlier run. A Ray task whose
   worker dies is run again by Ray (``max_retries``) and returns the same arrays.
3. **Parts.** Every solved chunk is written at once, atomically, by this process to
   ``<out>.parts/<tag>-<c>.npz``. The ``tag`` hashes the problem, solver, solver options,
   seed, chunk size and TRC version, so a rerun with the same configuration skips finished
   chunks (resume after a crash or ``kill -9``) and a changed configuration never reuses
   stale parts.
4. **Top-up.** Failed solves are counted with their status and kept apart. If the first
   ``ceil(num_samples / chunk_size)`` chunks hold fewer than ``num_samples`` successes,
   further chunks of the same stream are solved, up to
   ``num_samples / (1 - max_failure_rate)`` instances; a failure rate above
   ``max_failure_rate`` raises :class:`~dynamics.errors.SolverError` with the reasons.
5. **Assembly.** The data set holds the first ``num_samples`` successes in stream order and
   the failures before the last of them; the train/val/test permutation is drawn from
   ``SeedSequence(seed, spawn_key=(1,))``. The HDF5 file is written to a temporary file and
   renamed, then the parts are removed.

The same configuration and seed therefore give identical arrays; only ``solve_time`` and the
creation attributes differ between runs.

Before any work, the output is checked (:func:`trc.io.check_output_file`): it must be a
writable file path, and an existing file is replaced only if it is this run's own output
(then the run is up to date and does nothing) or with ``force``. The run holds the writer
lock of the output (:func:`trc.io.output_lock`) from the check to the final rename, so a
second run writing the same file fails at once.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from dynamics.errors import ConfigError, DatasetError, SolverError, TRCError
from trc.problem import Problem

from ..backends import TaskPool, check_backend
from ..io import atomic_path, check_output_file, check_output_path, output_lock
from ..version import __version__
from .checks import failure_counts
from .config import SPLIT_NAMES, GeneratorConfig, check_seed
from .storage import SCHEMA_VERSION, GeneratedDataset, read_attrs, write_dataset

__all__ = [
    "SAMPLE_BLOCK",
    "POOL_MIN_SECONDS",
    "GenerationReport",
    "generate",
    "sample_instances",
    "split_indices",
    "run_hash",
    "parts_dir",
    "default_workers",
    "chunk_tasks",
    "solve_chunk",
    "chunk_pool",
]

log = logging.getLogger("trc.generate")

#: Instances per block of the seeded instance stream (fixed: changing it changes the data).
SAMPLE_BLOCK = 1024

#: With the default number of workers, worker processes are started only when the remaining
#: chunks would take longer than this many seconds in one process (estimated from the first
#: chunk): starting a worker (spawn, import torch and the solvers) costs seconds.
POOL_MIN_SECONDS = 10.0

_STATUS_MAX = 200  # characters of a failure status kept
_PART_KEYS = ("instance_index", "initial_states", "target_states", "states", "controls", "costs",
              "success", "status", "iterations", "solve_time")


# ---------------------------------------------------------------------------- determinism
def sample_instances(problem, seed: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Instances ``start .. stop - 1`` of the seeded instance stream.

    Parameters
    ----------
    problem : trc.problem.Problem
    seed : int
    start, stop : int
        Half-open range of instance indices, ``0 <= start <= stop``.

    Returns
    -------
    x0, target : ndarray, shape ``(stop - start, state_dim)``, float64
        Initial and target states drawn from the problem's boxes.
    """
    if not 0 <= start <= stop:
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    x0, target = [], []
    for block in range(start // SAMPLE_BLOCK, -(-stop // SAMPLE_BLOCK)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, block)))
        xb, tb = problem.sample(SAMPLE_BLOCK, rng)
        lo = max(start - block * SAMPLE_BLOCK, 0)
        hi = min(stop - block * SAMPLE_BLOCK, SAMPLE_BLOCK)
        x0.append(xb[lo:hi])
        target.append(tb[lo:hi])
    n = problem.state_dim
    if not x0:
        return np.zeros((0, n)), np.zeros((0, n))
    return np.concatenate(x0), np.concatenate(target)


def split_indices(num_samples: int, fractions, seed: int) -> dict[str, np.ndarray]:
    """Seeded train/val/test row indices (sorted int64 arrays) of a data set of ``num_samples``.

    Split sizes are ``round(f * M)`` for train and val, the rest for test.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    perm = rng.permutation(num_samples)
    n_train = int(round(fractions[0] * num_samples))
    n_val = min(int(round(fractions[1] * num_samples)), num_samples - n_train)
    cuts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    return {name: np.sort(cuts[name]).astype(np.int64) for name in SPLIT_NAMES}


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_hash(problem, config: GeneratorConfig) -> str:
    """Hash of everything that determines the solved chunks (not the sample count or splits)."""
    return _digest({
        "schema": SCHEMA_VERSION,
        "block": SAMPLE_BLOCK,
        "problem": problem.to_dict(),
        "solver": config.solver,
        "options": config.options,
        "seed": config.seed,
        "chunk_size": config.chunk_size,
        "trc_version": __version__,
    })


def _dataset_hash(tag: str, config: GeneratorConfig) -> str:
    return _digest({"run": tag, "num_samples": config.num_samples, "splits": config.splits})


def parts_dir(out: str | os.PathLike) -> Path:
    """The folder of finished chunks of a run writing ``out``: ``<out>.parts``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def default_workers() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------- solving
def _failure_status(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"``; the type is the failure category (``";"`` separates
    categories in status strings, so it is replaced in the message)."""
    return f"{type(exc).__name__}: {str(exc).replace(';', ',')}"[:_STATUS_MAX]


def _validate_solution(sol, B: int, N: int, n: int, m: int, solver_name: str) -> dict:
    expected = {
        "states": (B, N + 1, n), "controls": (B, N, m), "costs": (B,), "success": (B,),
        "status": (B,), "iterations": (B,), "solve_time": (B,),
    }
    out = {}
    for key, shape in expected.items():
        value = np.asarray(getattr(sol, key))
        if value.shape != shape:
            raise SolverError(
                f"solver {solver_name!r} returned {key} of shape {value.shape}; expected {shape} "
                f"(batch {B}, N={N}, n={n}, m={m})"
            )
        out[key] = value
    out["states"] = out["states"].astype(np.float64)
    out["controls"] = out["controls"].astype(np.float64)
    out["costs"] = out["costs"].astype(np.float64)
    out["success"] = out["success"].astype(bool)
    out["status"] = np.array([str(s)[:_STATUS_MAX] for s in out["status"]], dtype=str).reshape(B)
    out["iterations"] = out["iterations"].astype(np.int64)
    out["solve_time"] = out["solve_time"].astype(np.float64)
    # A reported success whose numbers are not finite is a failure, never training data.
    finite = (
        np.isfinite(out["states"]).all(axis=(1, 2))
        & np.isfinite(out["controls"]).all(axis=(1, 2))
        & np.isfinite(out["costs"])
    )
    bad = out["success"] & ~finite
    if bad.any():
        out["status"] = out["status"].astype(object)
        out["status"][bad] = "non-finite solution reported as success"
        out["status"] = out["status"].astype(str)
        out["success"] = out["success"] & finite
    return out


def _failed(B: int, N: int, n: int, m: int, status: str, seconds: float) -> dict:
    return {
        "states": np.full((B, N + 1, n), np.nan), "controls": np.full((B, N, m), np.nan),
        "costs": np.full((B,), np.nan), "success": np.zeros(B, bool),
        "status": np.array([status] * B, dtype=str).reshape(B), "iterations": np.zeros(B, np.int64),
        "solve_time": np.full((B,), seconds),
    }


def solve_batch(solver, problem, x0: np.ndarray, target: np.ndarray) -> dict:
    """Solve a batch with ``solver`` and return validated arrays (failures marked, not raised).

    If the batch call raises an error of the TRC hierarchy (e.g. ``SolverError``), the
    instances are solved one at a time so that one bad instance fails alone. Any other
    exception is a bug and propagates. A solution of the wrong shape raises ``SolverError``.

    Returns
    -------
    dict
        ``states (B, N+1, n)``, ``controls (B, N, m)``, ``costs``, ``success`` (bool),
        ``status`` (str), ``iterations``, ``solve_time`` (all ``(B,)``).
    """
    B = x0.shape[0]
    N, n, m = problem.horizon, problem.state_dim, problem.control_dim
    name = getattr(solver, "name", type(solver).__name__)
    t0 = time.perf_counter()
    try:
        solution = solver.solve(x0, target)
    except TRCError as exc:
        if B == 1:
            return _failed(1, N, n, m, _failure_status(exc), time.perf_counter() - t0)
        log.debug("batch solve failed (%s); solving its %d instances one by one", exc, B)
    else:  # a malformed solution is a bug of the solver: it propagates
        return _validate_solution(solution, B, N, n, m, name)
    rows = [solve_batch(solver, problem, x0[i:i + 1], target[i:i + 1]) for i in range(B)]
    return {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}


# ---------------------------------------------------------------------------- parts
def _part_path(folder: Path, tag: str, chunk: int) -> Path:
    return folder / f"{tag}-{chunk:06d}.npz"


_PART_RE = re.compile(r"^(?P<tag>[0-9a-f]{16})-(?P<chunk>\d{6})\.npz$")


def _save_part(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _load_part(path: Path, start: int, stop: int, keys=_PART_KEYS) -> dict | None:
    """A finished chunk, or None if the file is unreadable or does not match (then redo it)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            part = {key: npz[key] for key in keys}
            index = npz["instance_index"]
    except Exception as exc:  # zip/npz errors of all kinds: treat the part as missing
        log.warning("ignoring unreadable part %s (%s); it will be solved again", path, exc)
        return None
    if index.shape != (stop - start,) or (index.size and (index[0] != start or index[-1] != stop - 1)):
        log.warning("ignoring part %s: it holds instances %s, expected [%d, %d)", path, index[[0, -1]], start, stop)
        return None
    return part


# ---------------------------------------------------------------------------- workers
_WORKER_CACHE: dict = {}

#: One BLAS/OpenMP thread in local worker processes, read when a worker imports NumPy/torch.
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _init_worker() -> None:  # pragma: no cover - runs in worker processes
    torch.set_num_threads(1)


def chunk_tasks(problem, config: GeneratorConfig, chunks, tag: str | None = None, solver_cls=None) -> list[dict]:
    """The task arguments of :func:`solve_chunk` for ``chunks`` of a run: small plain values
    (the problem's dictionary, the solver class, its options, the seed, the chunk's range).

    Parameters
    ----------
    problem : trc.problem.Problem
    config : GeneratorConfig
    chunks : iterable of int
        Chunk indices.
    tag : str, optional
        :func:`run_hash` of the run (computed if not given).
    solver_cls : type, optional
        The solver's class (default: of ``config.make_solver(problem)``).

    Returns
    -------
    list of dict
    """
    tag = run_hash(problem, config) if tag is None else tag
    solver_cls = type(config.make_solver(problem)) if solver_cls is None else solver_cls
    size = config.chunk_size
    return [
        {"tag": tag, "problem": problem.to_dict(), "solver_cls": solver_cls, "options": config.options,
         "seed": config.seed, "chunk": c, "start": c * size, "stop": (c + 1) * size}
        for c in chunks
    ]


def chunk_pool(backend: str = "local", workers: int | None = 1, address: str | None = None) -> TaskPool:
    """The :class:`~trc.backends.TaskPool` that solves :func:`solve_chunk` tasks.

    Parameters
    ----------
    backend : {"local", "ray"}
    workers : int, optional
        ``local``: processes (1: this process). ``ray``: most chunks at once (None: the cluster's CPUs).
    address : str, optional
        Ray cluster address (``ray`` only).

    Returns
    -------
    trc.backends.TaskPool
        Local worker processes run with one torch and one BLAS/OpenMP thread.
    """
    if backend == "ray":
        return TaskPool(solve_chunk, backend="ray", address=address, workers=workers)
    return TaskPool(solve_chunk, backend=backend, address=address, workers=workers, initializer=_init_worker,
                    env=_WORKER_ENV)


def solve_chunk(task: dict) -> dict:
    """Solve chunk ``task['chunk']``; return its part arrays (:data:`_PART_KEYS`).

    The same code runs in this process, in local worker processes and in Ray tasks: the
    problem is rebuilt from its dictionary (once per run and process), the solver is built
    afresh for the chunk, and both run with one thread (:func:`_single_threaded`), so the
    chunk's arrays do not depend on where, after which other chunks, or with how many threads
    of the calling process it is solved.
    """
    key = task["tag"]
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = Problem.from_dict(task["problem"])
    problem = _WORKER_CACHE[key]
    start, stop = task["start"], task["stop"]
    with _single_threaded():
        solver = task["solver_cls"](problem, **task["options"])
        x0, target = sample_instances(problem, task["seed"], start, stop)
        arrays = solve_batch(solver, problem, x0, target)
    arrays.update(instance_index=np.arange(start, stop, dtype=np.int64), initial_states=x0, target_states=target)
    return arrays


def _summary(chunk: int, part: dict) -> dict:
    success = part["success"]
    return {
        "chunk": chunk,
        "attempts": int(success.size),
        "successes": int(success.sum()),
        "reasons": collections.Counter(failure_counts(part["status"], success)),
    }


@contextlib.contextmanager
def _single_threaded():
    """One torch thread and one thread in every BLAS/OpenMP pool (threadpoolctl) for the
    block, then the previous numbers: reductions then add in the same order wherever a chunk
    is solved, so its arrays do not depend on the threads of the calling process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- the run
@dataclass
class GenerationReport:
    """What a generation run did.

    Attributes
    ----------
    path : pathlib.Path
        The HDF5 file written.
    num_samples : int
        Successful trajectories stored.
    num_failures : int
        Failed solves among the instances used (stored in the ``failures`` group).
    failure_reasons : dict of str to int
        Failed instances per failure category (the part of the status before ``":"``, see
        :mod:`trc.generators.checks`), most frequent first; an instance may count twice.
    failure_examples : dict of str to str
        One full status string per category.
    num_attempts : int
        Instances of the stream used: ``num_samples + num_failures``.
    elapsed : float
        Wall-clock seconds of this run.
    workers : int
        Processes that solved chunks (1: in this process; Ray: the tasks run at once).
    backend : str
        ``local`` or ``ray`` (:mod:`trc.backends`).
    chunks_solved, chunks_resumed : int
        Chunks solved in this run and chunks taken from the parts of an earlier run.
    up_to_date : bool
        True when the file already held this data set and nothing was done.
    """

    path: Path
    num_samples: int
    num_failures: int
    failure_reasons: dict
    num_attempts: int
    elapsed: float
    workers: int
    chunks_solved: int = 0
    chunks_resumed: int = 0
    up_to_date: bool = False
    failure_examples: dict = None
    solver: str = ""
    problem: str = ""
    backend: str = "local"

    def summary(self) -> str:
        """A human-readable multi-line summary."""
        if self.up_to_date:
            return f"{self.path} is up to date ({self.num_samples} samples of {self.problem!r}, solver {self.solver!r}); nothing to do"
        lines = [
            f"problem      {self.problem} (solver {self.solver})",
            f"samples      {self.num_samples} stored",
            f"failures     {self.num_failures} of {self.num_attempts} instances "
            f"({100 * self.num_failures / max(self.num_attempts, 1):.1f} %), kept apart in failures/"
            + (", by reason:" if self.failure_reasons else ""),
        ]
        examples = self.failure_examples or {}
        for reason, count in list(self.failure_reasons.items())[:10]:
            example = examples.get(reason, "")
            example = f"   e.g. {example[:100]!r}" if example and example != reason else ""
            lines.append(f"  {count:7d}  {reason}{example}")
        if len(self.failure_reasons) > 10:
            lines.append(f"  ... and {len(self.failure_reasons) - 10} more reasons")
        lines.append(
            f"time         {self.elapsed:.2f} s with {self.workers} worker(s)"
            + (" on Ray" if self.backend == "ray" else "")
            + (f", {self.num_attempts / self.elapsed:.0f} instances/s" if self.elapsed > 0 else "")
            + (f"; {self.chunks_resumed} chunk(s) resumed from an earlier run" if self.chunks_resumed else "")
        )
        lines.append(f"output       {self.path}")
        return "\n".join(lines)


def _clean_parts(folder: Path, tag: str) -> dict[int, Path]:
    """Remove stale parts (other tags) and temporaries; return this run's finished parts."""
    mine = {}
    for path in folder.iterdir():
        match = _PART_RE.match(path.name)
        if match and match["tag"] == tag:
            mine[int(match["chunk"])] = path
        elif path.is_file() and (match or path.name.endswith(".tmp")):
            log.info("removing stale part %s (different configuration or unfinished write)", path.name)
            path.unlink(missing_ok=True)
    return mine


def generate(
    problem,
    config: GeneratorConfig,
    *,
    out: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    backend: str = "local",
    address: str | None = None,
) -> GenerationReport:
    """Generate (or resume, or confirm) the data set of ``config`` for ``problem``.

    Parameters
    ----------
    problem : trc.problem.Problem
    config : GeneratorConfig
        Solver, sample count, seed, splits, chunk size.
    out : str or PathLike, optional
        Output HDF5 file; default :meth:`GeneratorConfig.output_path`. An existing file is
        replaced only if it is this run's own output (then nothing is done, see ``force``)
        or with ``force``; its folder is created if needed.
    workers : int, optional
        ``backend="local"``: worker processes. Default: all cores (:func:`default_workers`)
        if the work is worth it, i.e. if the remaining chunks would take more than
        :data:`POOL_MIN_SECONDS` in one process (estimated by solving the first chunk here),
        else this process. An explicit ``workers > 1`` always starts that many processes (at
        most one per chunk); ``1`` solves in this process. ``backend="ray"``: most chunks
        solved at once (default: as many as the cluster's CPUs). The arrays do not depend
        on it.
    progress : bool
        Show a tqdm progress bar on stderr.
    force : bool
        Regenerate even if ``out`` already holds this exact data set, and replace an existing
        ``out`` that holds anything else (another data set, another file).
    backend : {"local", "ray"}
        Where chunks are solved (:mod:`trc.backends`): worker processes on this machine, or
        one Ray task per chunk. The arrays do not depend on it.
    address : str, optional
        ``backend="ray"``: the cluster to join (``host:port`` of the head, ``auto``); default:
        a Ray already initialised in this process, else a private Ray on this machine.

    Returns
    -------
    GenerationReport

    Raises
    ------
    ConfigError
        Before any solving: if the solver rejects its options; ``workers`` is not a positive
        integer; the seed is outside ``[0, 2**63 - 1]``; ``out`` is empty, a folder, under a
        file, or in a folder that cannot be written (:func:`trc.io.check_output_path`);
        ``out`` exists and is not this run's own output (a file that is not a TRC data set,
        e.g. the configuration file, or a data set of another problem or other settings)
        and ``force`` is False; another process is writing ``out``
        (:func:`trc.io.output_lock`); ``backend`` is not ``local`` or ``ray``, ``address``
        is given with ``local``, Ray is not installed (the message names the ``ray`` extra),
        or ``address`` does not accept a connection within
        :data:`trc.backends.CONNECT_TIMEOUT` seconds.
    SolverError
        If more than ``config.max_failure_rate`` of the solves fail (the message lists the
        most frequent reasons), a solver returns arrays of the wrong shape, or a worker
        process dies (local; Ray runs the chunk again, up to :data:`trc.backends.MAX_RETRIES`
        times).
    """
    t_start = time.perf_counter()
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = check_output_path(out if out is not None else config.output_path(problem))
    auto = workers is None
    workers = default_workers() if auto else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    check_seed(config.seed)  # the config may have been changed since it was validated
    check_backend(backend, address)
    solver = config.make_solver(problem)  # validates the options before any work starts
    tag = run_hash(problem, config)
    dataset_id = _dataset_hash(tag, config)
    with output_lock(path):
        existing: dict = {}
        own = functools.partial(_is_own_output, problem=problem, config=config, dataset_id=dataset_id, found=existing)
        if check_output_file(path, force=force, is_own=own):
            attrs = existing["attrs"]
            return GenerationReport(
                path=path, num_samples=int(attrs["num_samples"]), num_failures=int(attrs.get("num_failures", 0)),
                failure_reasons=dict(attrs.get("failure_reasons", {})), num_attempts=int(attrs.get("num_attempts", 0)),
                failure_examples=dict(attrs.get("failure_examples", {})),
                elapsed=time.perf_counter() - t_start, workers=0, up_to_date=True,
                solver=config.solver, problem=problem.name,
            )
        return _generate_locked(problem, config, path, auto, workers, progress, type(solver), tag, dataset_id,
                                created, t_start, backend, address)


def _is_own_output(path: Path, problem, config: GeneratorConfig, dataset_id: str, found: dict) -> bool | str:
    """True if ``path`` holds the data set of this configuration (its attributes then go to
    ``found['attrs']``); otherwise what it holds, for the error message."""
    try:
        if not h5py.is_hdf5(path):
            return "it is not an HDF5 file"
    except OSError as exc:
        return f"it cannot be read: {exc}"
    try:
        attrs = read_attrs(path)
    except DatasetError as exc:
        return f"it is not a data set of trajectories: {exc}"
    if attrs.get("dataset_hash") == dataset_id:
        found["attrs"] = attrs
        return True
    if attrs.get("problem") != json.loads(json.dumps(problem.to_dict())):
        return (f"it holds a data set of problem {attrs.get('problem_name')!r}; "
                f"this run generates problem {problem.name!r}")
    splits = attrs.get("split_fractions")
    splits = np.asarray(splits).tolist() if splits is not None else None
    return (
        f"it holds a data set of problem {problem.name!r} with other settings: solver {attrs.get('solver')!r}, "
        f"{attrs.get('num_samples')} samples, seed {attrs.get('seed')}, chunk_size {attrs.get('chunk_size')}, "
        f"splits {splits}, TRC {attrs.get('trc_version')}; this run: solver {config.solver!r}, "
        f"{config.num_samples} samples, seed {config.seed}, chunk_size {config.chunk_size}, splits {config.splits}"
    )


def _generate_locked(problem, config: GeneratorConfig, path: Path, auto: bool, workers: int, progress: bool,
                     solver_cls, tag: str, dataset_id: str, created: str, t_start: float, backend: str,
                     address: str | None) -> GenerationReport:
    """The run of :func:`generate` once the output is checked and locked."""
    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    done = _clean_parts(folder, tag)
    size = config.chunk_size

    def bounds(c):
        return c * size, (c + 1) * size

    summaries: dict[int, dict] = {}
    for c, part_path in sorted(done.items()):
        part = _load_part(part_path, *bounds(c), keys=("success", "status"))
        if part is None:
            part_path.unlink(missing_ok=True)
        else:
            summaries[c] = _summary(c, part)
    resumed = len(summaries)
    if resumed:
        log.info("resuming: %d finished chunk(s) found in %s", resumed, folder)

    cap = math.ceil(config.num_samples / (1.0 - config.max_failure_rate))
    max_chunks = max(math.ceil(cap / size), 1)
    planned = math.ceil(config.num_samples / size)
    pool = None
    solved = 0
    n_workers = 1
    bar = tqdm(total=planned * size, unit="inst", desc=f"{problem.name}/{config.solver}", disable=not progress,
               dynamic_ncols=True, file=sys.stderr,
               initial=sum(s["attempts"] for c, s in summaries.items() if c < planned))
    failures = sum(s["attempts"] - s["successes"] for s in summaries.values())

    def record(chunk, arrays):
        nonlocal solved, failures
        _save_part(_part_path(folder, tag, chunk), arrays)
        summary = _summary(chunk, arrays)
        summaries[chunk] = summary
        solved += 1
        failures += summary["attempts"] - summary["successes"]
        bar.update(summary["attempts"])
        bar.set_postfix(failed=failures, refresh=False)

    ok = False
    try:
        while True:
            todo = [c for c in range(planned) if c not in summaries]
            tasks = chunk_tasks(problem, config, todo, tag, solver_cls)
            if tasks and pool is None:
                if backend == "ray":
                    pool = chunk_pool("ray", None if auto else workers, address)
                    n_workers = min(pool.capacity(), len(tasks))
                else:
                    n_workers = max(1, min(workers, len(tasks)))
                    if auto and n_workers > 1:
                        # Probe: solve one chunk here; start worker processes only if the rest
                        # would take long enough to repay their start-up (imports of torch etc.).
                        t0 = time.perf_counter()
                        record(tasks[0]["chunk"], solve_chunk(tasks[0]))
                        rest = (time.perf_counter() - t0) * (len(tasks) - 1)
                        tasks = tasks[1:]
                        if rest <= POOL_MIN_SECONDS:
                            n_workers = 1
                            log.info("solving in this process: the remaining %d chunk(s) take about %.1f s",
                                     len(tasks), rest)
                    pool = chunk_pool("local", n_workers)
            if tasks:
                chunk_of = {pool.submit(task): task["chunk"] for task in tasks}
                for index, arrays in pool.as_completed():
                    record(chunk_of[index], arrays)
            used = [summaries[c] for c in range(planned)]
            attempts = sum(s["attempts"] for s in used)
            successes = sum(s["successes"] for s in used)
            if successes >= config.num_samples:
                break
            if (attempts - successes) > config.max_failure_rate * attempts or planned >= max_chunks:
                reasons = sum((s["reasons"] for s in used), collections.Counter())
                top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5))
                raise SolverError(
                    f"{attempts - successes} of {attempts} solves failed with solver {config.solver!r} on problem "
                    f"{problem.name!r} (max_failure_rate {config.max_failure_rate}); most frequent reasons: {top}. "
                    f"Finished chunks are kept in {folder}."
                )
            rate = successes / attempts
            extra = math.ceil((config.num_samples - successes) / max(rate, 1e-3) / size)
            more = min(planned + max(extra, 1), max_chunks)
            log.info("%d of %d solves failed; solving %d more chunk(s) for %d samples",
                     attempts - successes, attempts, more - planned, config.num_samples)
            bar.total = more * size
            bar.update(sum(s["attempts"] for c, s in summaries.items() if planned <= c < more))
            planned = more
        ok = True
    finally:
        bar.close()
        if pool is not None:
            pool.close(ok)
        _WORKER_CACHE.clear()

    data = _assemble(problem, config, folder, tag, planned, bounds)
    info = data.attrs
    info.update(
        created=created, run_hash=tag, dataset_hash=dataset_id, chunk_size=size,
        split_fractions=list(config.splits), max_failure_rate=config.max_failure_rate,
        workers=n_workers, generation_time_s=time.perf_counter() - t_start, command=" ".join(sys.argv),
    )
    write_dataset(path, data)
    shutil.rmtree(folder, ignore_errors=True)
    return GenerationReport(
        path=path, num_samples=data.num_samples, num_failures=len(data.failures["status"]),
        failure_reasons=info["failure_reasons"], failure_examples=info["failure_examples"],
        num_attempts=int(info["num_attempts"]),
        elapsed=time.perf_counter() - t_start, workers=n_workers, chunks_solved=solved,
        chunks_resumed=resumed, solver=config.solver, problem=problem.name, backend=backend,
    )


def _assemble(problem, config: GeneratorConfig, folder: Path, tag: str, planned: int, bounds) -> GeneratedDataset:
    """The first ``num_samples`` successes of chunks ``0 .. planned - 1``, and the failures before."""
    parts = []
    for c in range(planned):
        part = _load_part(_part_path(folder, tag, c), *bounds(c))
        if part is None:
            raise DatasetError(f"part {c} of {folder} vanished or is unreadable during assembly; rerun to resume")
        parts.append(part)
    cat = {key: np.concatenate([p[key] for p in parts]) for key in _PART_KEYS}
    success_rows = np.flatnonzero(cat["success"])[: config.num_samples]
    last = int(success_rows[-1])
    failed_rows = np.flatnonzero(~cat["success"][: last + 1])
    ok = {key: cat[key][success_rows] for key in _PART_KEYS}
    failures = {
        key: cat[key][failed_rows]
        for key in ("initial_states", "target_states", "status", "iterations", "solve_time", "instance_index")
    }
    reasons = collections.Counter(failure_counts(failures["status"], np.zeros(failed_rows.size, bool)))
    examples = {}
    for status in failures["status"].tolist():
        for category in {part.split(":", 1)[0].strip() for part in status.split(";")}:
            examples.setdefault(category, status)
    M = int(success_rows.size)
    return GeneratedDataset(
        problem=problem, solver=config.solver, solver_options=dict(config.options), seed=config.seed,
        states=ok["states"], controls=ok["controls"], initial_states=ok["initial_states"],
        target_states=ok["target_states"], costs=ok["costs"], status=ok["status"],
        iterations=ok["iterations"], solve_time=ok["solve_time"], instance_index=ok["instance_index"],
        splits=split_indices(M, config.splits, config.seed), failures=failures,
        attrs={
            "num_attempts": last + 1,
            "failure_reasons": dict(reasons.most_common()),
            "failure_examples": {k: examples[k] for k, _ in reasons.most_common()},
        },
    )
