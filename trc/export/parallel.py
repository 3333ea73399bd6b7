"""Data-parallel planning: one exported controller in several processes, each on a share of the batch.

An exported program (:mod:`trc.export`) runs on one core best with one thread: at batch 1024
two intra-op threads gained only 1.3x, and Python threads calling one AOTInductor program
gain nothing (the call holds the GIL). :class:`ParallelController` therefore starts one
process per core, each with its own copy of the program and one thread, splits every batch
between them and joins the plans, as data generation or a sampling-based planner would use a
multi-core CPU::

    >>> from trc.export import ParallelController
    >>> with ParallelController("exported/van_der_pol_1024.aoti.pt2", processes=2) as planner:  # doctest: +SKIP
    ...     controls = planner(x0, target)  # (2048, N, m) for 2048 states: 1024 per process

Programs compiled for a fixed batch size (AOTInductor ``batch=``) take the batch in chunks of
that size; the last chunk is filled up with copies of its last row, whose plans are dropped.
The states go to the processes and the plans come back through shared memory
(:mod:`multiprocessing.shared_memory`, one block each for the states, the targets and the
plans, grown when a call needs more rows); the pipes carry only the row ranges and the
replies. Pickled through the pipes instead (about 1 MB per call for 2 x 1024 rocket plans), the same calls
took 3 % longer (the rocket's ``fast_tiny`` batch-1024 program in two processes, calls of the
two kinds interleaved for 15 s: 18.2 against 17.6 ms per 2048 plans, 2026-12-02). The plans of
the first call go through the pipes, which tells the controller their shape.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
from multiprocessing import shared_memory

import numpy as np
import torch

from dynamics.errors import DimensionError

from ..evaluation import call_times
from .controller import load_controller, planner_inputs

__all__ = ["ParallelController", "default_processes", "parallel_call_times", "parallel_latency"]


def default_processes() -> int:
    """Cores this process may run on (``os.sched_getaffinity`` where available, else ``os.cpu_count``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ParallelController:
    """An exported controller run in ``processes`` worker processes: ``planner(x0, target) -> controls``.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`trc.export.export_controller` (any format). Each worker loads
        it with :func:`~trc.export.controller.load_controller`, which executes code from an
        AOTInductor or TorchScript file: only load files you trust.
    processes : int, optional
        Worker processes (default: :func:`default_processes`, one per core).
    threads : int
        Torch / onnxruntime intra-op threads per worker (default 1).
    format : str, optional
        As in :class:`~trc.export.controller.ExportedController`.

    Attributes
    ----------
    batch : int or None
        The program's fixed batch size (chunk size of the workers), or None for a free one.

    Raises
    ------
    ValueError
        If ``processes`` or ``threads`` is below 1.
    FileNotFoundError, ConfigError
        If a worker cannot load the file (the workers' error, raised here).

    Notes
    -----
    The workers are spawned (not forked: the parent may hold torch threads), so a script that
    creates the controller must do so under ``if __name__ == "__main__":`` (the workers import
    the script's main module). They stop with :meth:`close`, at the end of a ``with`` block or
    when the controller is garbage-collected.
    A worker that dies (a crash, a kill) makes the call fail with a ``RuntimeError`` naming
    its exit code; a worker's Python exception is raised in the caller.
    """

    def __init__(self, path: str | os.PathLike, processes: int | None = None, threads: int = 1,
                 format: str | None = None):
        self._workers, self._conns = [], []
        self._started = False  # every worker has loaded its program and replied
        self._blocks: dict[str, _SharedArray] = {}  # "x0", "target" (rows, n) and "plans" (rows, N, m)
        self._plan_shape: tuple[int, ...] | None = None  # (N, m), from the first call's plans
        processes = default_processes() if processes is None else int(processes)
        if processes < 1 or threads < 1:
            raise ValueError(f"processes ({processes}) and threads ({threads}) must be at least 1")
        self.path, self.processes = path, processes
        ctx = multiprocessing.get_context("spawn")
        try:
            for _ in range(processes):
                parent, child = ctx.Pipe()
                worker = ctx.Process(target=_serve, args=(str(path), format, int(threads), child), daemon=True)
                worker.start()
                child.close()
                self._workers.append(worker)
                self._conns.append(parent)
            self.batch = self._gather()[0]
            self._started = True
        except BaseException:
            self.close()
            raise

    def __call__(self, current_state, target_state) -> np.ndarray:
        """Controls ``(B, horizon, control_dim)`` (float32) of ``(B, state_dim)`` states and targets,
        in the order of the inputs.

        Raises
        ------
        DimensionError
            If the inputs are not 2-D arrays of equal shape with at least one row.
        RuntimeError
            If the controller is closed or a worker died.
        """
        if not self._conns:
            raise RuntimeError(f"ParallelController of {self.path} is closed")
        x0, xt = planner_inputs(current_state, target_state)
        if len(x0) == 0:
            raise DimensionError(f"states {x0.shape} and targets {xt.shape} must both be (batch >= 1, state_dim)")
        rows = len(x0)
        for role, values in (("x0", x0), ("target", xt)):
            self._block(role, values.shape).array[:rows] = values
        plans = None if self._plan_shape is None else self._block("plans", (rows, *self._plan_shape))
        specs = {role: block.spec for role, block in self._blocks.items() if role != "plans" or plans is not None}
        busy = []
        for conn, worker, (start, stop) in zip(self._conns, self._workers, self._shares(rows)):
            if stop > start:
                try:
                    conn.send((specs, start, stop))
                except OSError:  # BrokenPipeError: the worker is gone
                    self._died(worker)
                busy.append(conn)
        replies = self._gather(busy)
        if plans is None:  # the first call: the plans came through the pipes
            joined = np.concatenate(replies)
            self._plan_shape = joined.shape[1:]
            return joined
        return plans.array[:rows].copy()

    def _block(self, role: str, shape: tuple[int, ...]) -> "_SharedArray":
        """The shared block of ``role`` with at least ``shape[0]`` rows of ``shape[1:]``; a new,
        larger block replaces a too small one."""
        block = self._blocks.pop(role, None)
        rows = shape[0]
        if block is not None:
            if block.array.shape[1:] == shape[1:] and block.array.shape[0] >= rows:
                self._blocks[role] = block
                return block
            rows = max(rows, block.array.shape[0])
            block.release()
        self._blocks[role] = block = _SharedArray.create((rows, *shape[1:]))
        return block

    def _shares(self, batch: int) -> list[tuple[int, int]]:
        """Row ranges of the workers: whole chunks of the fixed batch size, else equal shares."""
        unit = self.batch or 1
        chunks = math.ceil(batch / unit)
        bounds = [min(batch, unit * (chunks * i // self.processes)) for i in range(self.processes + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def _gather(self, conns=None) -> list:
        """The replies of ``conns`` (default: all workers), in their order; raises a worker's error."""
        conns = list(self._conns if conns is None else conns)
        replies = {}
        sentinels = {w.sentinel: w for w in self._workers}
        while len(replies) < len(conns):
            for ready in multiprocessing.connection.wait([c for c in conns if c not in replies] + list(sentinels)):
                if ready in sentinels:
                    worker = sentinels[ready]
                    if worker.exitcode is not None and not any(c.poll() for c in conns if c not in replies):
                        self._died(worker)
                    continue
                try:
                    replies[ready] = ready.recv()
                except EOFError:  # the worker closed its pipe without a reply: it is exiting
                    self._died(self._workers[self._conns.index(ready)])
        errors = [reply for reply in replies.values() if isinstance(reply, BaseException)]
        if errors:
            raise errors[0]
        return [replies[c] for c in conns]

    def _died(self, worker) -> None:
        """Close the pool after ``worker`` died (or is exiting: waited for up to 5 s) and raise the
        error naming its exit code."""
        worker.join(timeout=5)
        code = worker.exitcode
        self.close()
        message = f"a worker process of ParallelController({self.path}) died (exit code {code})"
        if not self._started:  # the usual cause of a death before the first reply
            message += ("; the workers are started with 'spawn', which imports the main module again: a script "
                        "must create the controller under `if __name__ == '__main__':`")
        raise RuntimeError(message)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        for conn in self._conns:
            conn.close()
        self._workers, self._conns = [], []
        for block in self._blocks.values():
            block.release()
        self._blocks = {}

    def __enter__(self) -> "ParallelController":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the modules may be gone
            pass


def parallel_call_times(path: str | os.PathLike, current_state, target_state, processes: int | None = None,
                        repeats: int = 20, threads: int = 1, warmup: int = 3, seconds: float = 0.0) -> np.ndarray:
    """Wall times (ms), shape ``(calls,)``, of calls of a :class:`ParallelController` of ``path``
    on the whole batch ``current_state``, ``target_state`` ``(B, state_dim)``, after ``warmup``
    calls: at least ``repeats`` calls, for at least ``seconds`` seconds
    (:func:`trc.evaluation.call_times`).

    The processes are started (and their programs loaded) before the timing and stopped after it.

    Raises
    ------
    DimensionError
        If the inputs are not 2-D arrays of equal shape with at least one row.
    ValueError, FileNotFoundError, ConfigError
        As :class:`ParallelController` (bad ``processes`` or ``threads``, an unloadable file).
    """
    with ParallelController(path, processes, threads=threads) as planner:
        return call_times(lambda: planner(current_state, target_state), repeats, warmup=warmup, seconds=seconds)


def parallel_latency(path: str | os.PathLike, current_state, target_state, processes: int | None = None,
                     repeats: int = 20, threads: int = 1, warmup: int = 3, seconds: float = 0.0) -> float:
    """Median of :func:`parallel_call_times` (ms per call of the whole batch); the same arguments and errors."""
    return float(np.median(parallel_call_times(path, current_state, target_state, processes, repeats, threads,
                                               warmup, seconds)))


def _serve(path: str, format: str | None, threads: int, conn) -> None:
    """Worker loop: load the program, reply its fixed batch size, then plan each share sent
    until ``None`` arrives; exceptions are sent back instead of plans.

    A share is ``(specs, start, stop)``: the specs (:attr:`_SharedArray.spec`) of the shared
    blocks by role, ``"x0"``, ``"target"`` and ``"plans"`` (no ``"plans"`` on the first call,
    whose plans are sent back through the pipe), and the rows to plan."""
    torch.set_num_threads(threads)
    try:
        program = load_controller(path, format)
    except Exception as exc:  # noqa: BLE001 - handed to the caller
        conn.send(exc)
        return
    conn.send(program.batch)
    attached: dict[str, _SharedArray] = {}  # by role, as the controller's blocks
    try:
        while (message := conn.recv()) is not None:
            try:
                conn.send(_plan_share(program, attached, *message))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                conn.send(exc)
    finally:
        for block in attached.values():
            block.release()


def _plan_share(program, attached: dict, specs: dict, start: int, stop: int):
    """Plan rows ``start:stop`` of the shared states and targets into the shared plans
    (returns None), or, without shared plans, return them. ``attached`` holds the blocks by
    role; a block that the controller replaced is closed here."""
    for role, spec in specs.items():
        if role not in attached or attached[role].spec != spec:
            if role in attached:
                attached.pop(role).release()
            attached[role] = _SharedArray.attach(spec)
    rows = slice(start, stop)
    x0, target = attached["x0"].array[rows], attached["target"].array[rows]
    if "plans" not in specs:
        return _plan(program, x0, target)
    _plan(program, x0, target, out=attached["plans"].array[rows])
    return None


def _plan(program, x0: np.ndarray, target: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Plans of ``program`` for the rows of ``x0`` and ``target``, in chunks of its fixed batch
    size (the last one filled up with copies of its last row); written into ``out`` if given."""
    if program.batch is None:
        plans = program(x0, target)
        if out is None:
            return plans
        out[...] = plans
        return out
    size, chunks = program.batch, []
    for start in range(0, len(x0), size):
        rows = slice(start, start + size)
        chunk, goal = x0[rows], target[rows]
        fill = size - len(chunk)
        if fill:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fill, axis=0)])
            goal = np.concatenate([goal, np.repeat(goal[-1:], fill, axis=0)])
        plans = program(chunk, goal)[:size - fill]
        if out is None:
            chunks.append(plans)
        else:
            out[rows] = plans
    return out if out is not None else np.concatenate(chunks)


class _SharedArray:
    """A float32 array in a :class:`multiprocessing.shared_memory.SharedMemory` block.

    The creating process (the controller) unlinks the block on :meth:`release`; an attached
    one (a worker) only closes it. Its ``spec`` ``(name, shape)`` is what a worker attaches by.
    """

    def __init__(self, memory: shared_memory.SharedMemory, shape: tuple[int, ...], owner: bool):
        self.memory, self.owner = memory, owner
        self.spec = (memory.name, tuple(int(d) for d in shape))
        self.array = np.ndarray(shape, dtype=np.float32, buffer=memory.buf)

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> "_SharedArray":
        nbytes = max(1, int(np.prod(shape)) * np.dtype(np.float32).itemsize)
        return cls(shared_memory.SharedMemory(create=True, size=nbytes), shape, owner=True)

    @classmethod
    def attach(cls, spec: tuple) -> "_SharedArray":
        name, shape = spec
        return cls(shared_memory.SharedMemory(name=name), shape, owner=False)

    def release(self) -> None:
        """Close the block (and unlink it, in its creator); idempotent."""
        if self.array is None:
            return
        self.array = None  # the buffer must have no exported views when the block closes
        self.memory.close()
        if self.owner:
            self.memory.unlink()
