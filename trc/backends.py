"""Where independent tasks run: worker processes on this machine (``local``) or a Ray cluster (``ray``).

A *task* is a plain picklable function applied to a small picklable argument (a dictionary
of numbers and names: a chunk index, a seed, a problem's dictionary). :class:`TaskPool`
runs tasks and gives back ``(task_index, result)`` in order of completion;
:func:`map_unordered` does so for a fixed list of tasks, with a progress bar.

``local``
    ``workers == 1``: in this process, one task after the other. ``workers > 1``: a
    :class:`concurrent.futures.ProcessPoolExecutor` of ``spawn`` processes, each of which
    exits when this process dies (no orphan keeps working after a ``kill -9``). A worker
    that dies ends the run with :class:`~dynamics.errors.SolverError`.
``ray``
    One Ray task per task (``ray.remote(...).options(num_cpus=1, max_retries=...)``),
    collected with ``ray.wait`` as they finish anywhere in the cluster. A task whose worker
    process dies (``kill -9``, out of memory, a lost node) is run again by Ray itself
    (``max_retries``); an exception raised by the task is not retried
    (``retry_exceptions=False``) and propagates as raised. With an ``address`` the pool
    joins that cluster (``ray.init(address=...)``: ``"host:port"`` of the head,
    ``"ray://host:port"`` for Ray Client, or ``"auto"`` for the cluster started by
    ``ray start`` on this machine); without, it starts a private Ray instance on this
    machine (``ray.init(address="local", num_cpus=workers)``) and stops it at the end. A
    Ray already initialised in this process (``ray.init`` called by the user) is used as it
    is and left running. The workers of the private instance run at normal priority
    (``RAY_worker_niceness=0`` unless set), like the local backend's processes; Ray's default
    (15) lets any other work on the machine slow them down, which matters on nodes shared with
    other work (set ``RAY_worker_niceness=0`` in the environment of ``ray start`` there).

Ray is an optional dependency (the ``ray`` extra), imported only when the ``ray`` backend is
used. Results are the same, bitwise, whatever the backend, when the task function is a pure
function of its argument; retried tasks then return the same result too.

Ray's token authentication (Ray >= 2.60) applies when joining a cluster by address: the
driver needs ``RAY_AUTH_MODE=token`` and the cluster's token (``RAY_AUTH_TOKEN``, or the file
``~/.ray/auth_token``), see https://docs.ray.io/en/latest/ray-security/token-auth.html.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator, Mapping

from tqdm.auto import tqdm

from dynamics.errors import ConfigError, SolverError

__all__ = [
    "BACKENDS",
    "RAY_INSTALL",
    "CONNECT_TIMEOUT",
    "MAX_RETRIES",
    "check_backend",
    "import_ray",
    "ray_runtime",
    "TaskPool",
    "map_unordered",
    "map_ordered",
]

#: The backends: worker processes on this machine, or a Ray cluster.
BACKENDS = ("local", "ray")
#: How to install the optional dependency of the ``ray`` backend.
RAY_INSTALL = 'pip install "tiny-recursive-control[ray]"'
#: Seconds an ``address`` has to accept a connection before the run is refused.
CONNECT_TIMEOUT = 30.0
#: Times Ray runs a task again after its worker process died (Ray's ``max_retries``).
MAX_RETRIES = 3
#: Ray's setting of the niceness of its worker processes (default 15).
NICENESS_ENV = "RAY_worker_niceness"


# ---------------------------------------------------------------------------- checks
def import_ray():
    """The ``ray`` module.

    Raises
    ------
    ConfigError
        If Ray cannot be imported; the message names the extra to install.
    """
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--backend ray needs Ray, which is not installed (import failed: {exc}); "
                          f"install the extra: {RAY_INSTALL}") from exc
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``"host:port"`` or ``"ray://host:port"``; None for ``"auto"``.

    Raises
    ------
    ConfigError
        If the address is neither.
    """
    text = address[len("ray://"):] if address.startswith("ray://") else address
    if text == "auto" and address == "auto":
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address must be 'host:port' (the Ray head's GCS address, e.g. 10.0.0.1:6379), "
                          f"'ray://host:port' or 'auto'; got {address!r}")
    return host, int(port)


def _check_reachable(address: str, timeout: float) -> None:
    """Open (and close) a TCP connection to ``address`` within ``timeout`` seconds.

    Ray's own connection attempts to an address where nothing listens retry for minutes;
    this check fails at once on a refused connection and after ``timeout`` on a silent host.
    """
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at --address {address} within {timeout:g} s ({exc}); "
                          "expected the address printed by `ray start --head` on the head node (host:port of "
                          "its GCS, default port 6379), reachable from this machine") from exc


def check_backend(backend: str, address: str | None = None, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """Check a backend choice before any work: the name, Ray's presence, the address.

    Parameters
    ----------
    backend : {"local", "ray"}
    address : str, optional
        Ray cluster address (``ray`` only), see the module notes.
    timeout : float
        Seconds the address has to accept a TCP connection.

    Raises
    ------
    ConfigError
        If ``backend`` is not one of :data:`BACKENDS`; an ``address`` is given with the
        ``local`` backend; Ray cannot be imported (the message names the extra); or the
        address is malformed or does not accept a connection within ``timeout`` seconds.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "local":
        if address is not None:
            raise ConfigError(f"--address {address} applies to --backend ray only; got --backend local")
        return
    import_ray()
    if address is not None:
        if not isinstance(address, str) or not address.strip():
            raise ConfigError(f"--address must be a non-empty 'host:port'; got {address!r}")
        _check_reachable(address, timeout)


@contextlib.contextmanager
def ray_runtime(address: str | None = None, workers: int | None = None, *, timeout: float = CONNECT_TIMEOUT):
    """Ray, initialised for the block: joined at ``address``, or a private local instance.

    A Ray already initialised in this process is used as it is and left running; one
    initialised here is shut down at the end of the block.

    Parameters
    ----------
    address : str, optional
        Cluster to join (see the module notes); None: start Ray on this machine with
        ``num_cpus=workers`` (all cores if None), no dashboard, worker output not forwarded,
        workers at normal priority (niceness 0, unless ``RAY_worker_niceness`` is set).
    workers : int, optional
    timeout : float
        Seconds the address has to accept a connection.

    Yields
    ------
    module
        ``ray``.

    Raises
    ------
    ConfigError
        If Ray is missing, the address cannot be reached, or Ray refuses the connection
        (e.g. token authentication, see the module notes).
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address is not None:
        _check_reachable(address, timeout)
        kwargs = {"address": address}
    else:
        kwargs = {"address": "local", "num_cpus": workers, "include_dashboard": False}
    # The workers of a private instance run at the priority of this process, like the local
    # backend's (Ray's default, niceness 15, lets any other work on the machine slow them down).
    env = {} if address is not None or NICENESS_ENV in os.environ else {NICENESS_ENV: "0"}
    try:
        with _environment(env):
            ray.init(log_to_driver=False, logging_level="WARNING", **kwargs)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        raise ConfigError(
            f"Ray could not {'join the cluster at ' + address if address else 'start on this machine'}: {exc}. "
            "A cluster with token authentication needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
            "~/.ray/auth_token) in the environment of this command"
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------- worker side
def _watch_parent(parent_pid: int) -> None:  # pragma: no cover - runs in worker processes
    """Exit the worker when the parent dies (e.g. ``kill -9``), so no orphan keeps working."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


def _init_local_worker(parent_pid: int, initializer, initargs) -> None:  # pragma: no cover - worker processes
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


#: Initializers already run in this (Ray worker) process.
_INITIALIZED: set = set()


def _ray_call(key: str, shared: tuple, task):
    """Body of a Ray task: ``shared = (fn, initializer, initargs)`` (put in Ray's object store once
    per pool, identified by ``key``), the ``initializer`` once per process and pool, then ``fn(task)``."""
    fn, initializer, initargs = shared
    if initializer is not None and key not in _INITIALIZED:
        initializer(*initargs)
        _INITIALIZED.add(key)
    return fn(task)


@contextlib.contextmanager
def _environment(values: Mapping[str, str] | None):
    values = dict(values or {})
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------- the pool
class TaskPool:
    """Runs tasks ``fn(task)`` on a backend; results come back in order of completion.

    Tasks may be submitted while results are being collected (e.g. a further attempt after
    a failed one). Use as a context manager, or call :meth:`close`.

    Parameters
    ----------
    fn : callable
        A module-level function of one picklable argument, returning a picklable result.
    backend : {"local", "ray"}
    address : str, optional
        Ray cluster address (``ray`` only); see :func:`ray_runtime`.
    workers : int, optional
        ``local``: processes (default: 1, in this process unless ``inline`` is False).
        ``ray``: most tasks running at once (default: as many as the cluster schedules,
        one CPU each); with no address, also the CPUs of the private Ray instance.
    inline : bool
        ``local`` with one worker: run in this process (True) or in one worker process.
    initializer : callable, optional
        Run once in every worker process before its first task (``initializer(*initargs)``;
        not in this process). ``initargs`` travel once per process (``local``) or once per pool
        through Ray's object store (``ray``): the place for large shared arguments, such as a model.
    initargs : tuple
    env : mapping, optional
        Environment variables of the ``local`` worker processes (set while they start;
        Ray workers get ``OMP_NUM_THREADS=1`` from Ray).
    max_retries : int
        ``ray``: times a task is run again after its worker died.
    timeout : float
        ``ray``: seconds the address has to accept a connection.

    Raises
    ------
    ConfigError
        Bad backend, workers or address (see :func:`check_backend`), Ray missing.
    SolverError
        While collecting: a ``local`` worker process died, or a Ray task's worker died more
        than ``max_retries`` times.
    """

    def __init__(self, fn: Callable, *, backend: str = "local", address: str | None = None,
                 workers: int | None = None, inline: bool = True, initializer: Callable | None = None,
                 initargs: tuple = (), env: Mapping[str, str] | None = None, max_retries: int = MAX_RETRIES,
                 timeout: float = CONNECT_TIMEOUT):
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers must be a positive integer or None, got {workers!r}")
        if backend == "local" and address is not None:
            raise ConfigError(f"--address {address} applies to --backend ray only; got --backend local")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be a non-negative integer, got {max_retries!r}")
        self.fn, self.backend, self.workers, self.max_retries = fn, backend, workers, max_retries
        self.initializer, self.initargs, self.env = initializer, tuple(initargs), env
        self._count = 0
        self._queue: list[tuple[int, Any]] = []  # submitted, not yet started (inline, or ray over the limit)
        self._pending: dict = {}  # future / object ref -> task index
        self._pool = None
        self._runtime = None
        self._closed = False
        if backend == "local":
            self._inline = inline and (workers or 1) == 1
        else:
            self._inline = False
            self._runtime = ray_runtime(address, workers, timeout=timeout)
            self._ray = self._runtime.__enter__()
            self._remote = self._ray.remote(_ray_call).options(
                num_cpus=1, max_retries=max_retries, retry_exceptions=False, name=getattr(fn, "__name__", "task"))
            # the function and the initializer's arguments (e.g. a model) go to the object store once,
            # not with every task; Ray passes the stored value to each task
            self._shared = self._ray.put((fn, initializer, self.initargs))
            self._key = self._shared.hex()

    def __enter__(self) -> "TaskPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    @property
    def remote(self) -> bool:
        """True if tasks run in other processes."""
        return not self._inline

    def capacity(self) -> int:
        """Most tasks that run at once: the local workers, or Ray's ``workers`` or CPUs."""
        if self.backend == "local" or self.workers is not None:
            return self.workers or 1
        return max(int(self._ray.cluster_resources().get("CPU", 1)), 1)

    def submit(self, task) -> int:
        """Queue ``fn(task)``; returns its index (0, 1, ... in order of submission)."""
        index = self._count
        self._count += 1
        if self._inline:
            self._queue.append((index, task))
        elif self.backend == "local":
            # spawn: workers start clean (no forked torch/OpenMP state); the executor starts its
            # processes on submit, so they start inside the environment block.
            with _environment(self.env):
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(
                        self.workers or 1, mp_context=multiprocessing.get_context("spawn"),
                        initializer=_init_local_worker, initargs=(os.getpid(), self.initializer, self.initargs))
                self._pending[self._pool.submit(self.fn, task)] = index
        else:
            self._queue.append((index, task))
            self._launch()
        return index

    def _launch(self) -> None:
        """Ray: start queued tasks while fewer than ``workers`` run."""
        while self._queue and (self.workers is None or len(self._pending) < self.workers):
            index, task = self._queue.pop(0)
            ref = self._remote.remote(self._key, self._shared, task)
            self._pending[ref] = index

    def as_completed(self) -> Iterator[tuple[int, Any]]:
        """Yield ``(task_index, result)`` as tasks finish, until none is left (including the
        tasks submitted meanwhile). An exception raised by a task propagates."""
        if self._inline:
            while self._queue:
                index, task = self._queue.pop(0)
                yield index, self.fn(task)
        elif self.backend == "local":
            while self._pending:
                done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
                for future in done:
                    index = self._pending.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool as exc:
                        raise SolverError(
                            "a worker process died (killed, out of memory, or a crash in native code); finished "
                            "work is kept, rerun to resume. When calling from a script, guard the call with "
                            f"`if __name__ == '__main__':` (workers are spawned and import the main module). "
                            f"Cause: {exc}") from exc
                    yield index, result
        else:
            ray = self._ray
            while self._pending or self._queue:
                self._launch()
                done, _ = ray.wait(list(self._pending), num_returns=1)
                for ref in done:
                    index = self._pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                            ray.exceptions.ObjectLostError) as exc:
                        raise SolverError(
                            f"task {index} failed: its Ray worker died in all {self.max_retries + 1} attempt(s) or "
                            f"its node was lost; finished work is kept, rerun to resume. Cause: {exc}") from exc
                    yield index, result

    def close(self, ok: bool = True) -> None:
        """Stop the workers; with ``ok`` False, cancel the tasks not finished."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=ok, cancel_futures=not ok)
        if self._runtime is not None:
            if not ok:
                for ref in list(self._pending):
                    with contextlib.suppress(Exception):
                        self._ray.cancel(ref, force=True)
            self._pending.clear()
            self._runtime.__exit__(None, None, None)
        self._pending.clear()


def map_unordered(fn: Callable, tasks: Iterable, *, backend: str = "local", address: str | None = None,
                  workers: int | None = None, progress: bool = False, desc: str | None = None,
                  **options) -> Iterator[tuple[int, Any]]:
    """Run ``fn`` on every task; yield ``(task_index, result)`` as tasks finish.

    Parameters
    ----------
    fn : callable
        A module-level function of one picklable argument.
    tasks : iterable
        The arguments, small and picklable (indices, seeds, dictionaries of settings).
    backend, address, workers
        See :class:`TaskPool`.
    progress : bool
        Show a tqdm bar (on stderr) of the finished tasks, wherever they ran.
    desc : str, optional
        Label of the bar.
    **options
        Further :class:`TaskPool` options (``inline``, ``initializer``, ``initargs``, ``env``,
        ``max_retries``, ``timeout``).

    Yields
    ------
    (int, object)
        The task's position in ``tasks`` and ``fn(task)``.

    Raises
    ------
    ConfigError, SolverError
        See :class:`TaskPool`; an exception raised by ``fn`` propagates.
    """
    tasks = list(tasks)
    bar = tqdm(total=len(tasks), unit="task", desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    ok = False
    pool = TaskPool(fn, backend=backend, address=address, workers=workers, **options)
    try:
        for task in tasks:
            pool.submit(task)
        for index, result in pool.as_completed():
            bar.update(1)
            yield index, result
        ok = True
    finally:
        bar.close()
        pool.close(ok)


def map_ordered(fn: Callable, tasks: Iterable, *, backend: str = "local", address: str | None = None,
                workers: int | None = None, initializer: Callable | None = None, initargs: tuple = (),
                **options) -> list:
    """``[fn(task) for task in tasks]`` on a backend, in the order of ``tasks``.

    Unlike :func:`map_unordered`, ``initializer(*initargs)`` also runs in this process when the
    tasks run here (``local`` with one worker), so ``fn`` finds the same shared state wherever it
    runs: the way to give every task a large shared argument (a model, controllers) once per
    process instead of once per task.

    Parameters
    ----------
    fn, tasks, backend, address, workers
        See :func:`map_unordered`.
    initializer : callable, optional
    initargs : tuple
    **options
        Further :func:`map_unordered` options (``progress``, ``desc``, ``max_retries``, ...).

    Raises
    ------
    ConfigError, SolverError
        See :class:`TaskPool`; an exception raised by ``fn`` propagates.
    """
    here = backend == "local" and (workers or 1) == 1 and options.get("inline", True)
    if here and initializer is not None:
        initializer(*initargs)
    out = dict(map_unordered(fn, tasks, backend=backend, address=address, workers=workers,
                             initializer=None if here else initializer, initargs=initargs, **options))
    return [out[i] for i in range(len(out))]
