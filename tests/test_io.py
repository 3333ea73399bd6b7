"""trc.io: atomic writes, stale temporaries, the writer lock and the output checks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import trc.io
from dynamics.errors import ConfigError
from trc.io import (
    atomic_path,
    atomic_write_text,
    check_output_file,
    check_output_name,
    check_output_path,
    lock_path,
    output_lock,
    remove_stale_temporaries,
)

FORK = multiprocessing.get_context("fork")  # children share the imported modules: no second start-up


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_or_keeps(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_path(path) as tmp:
            tmp.write_text("two, half")
            raise RuntimeError("half way")
    assert path.read_text() == "one"
    assert temporaries(path.parent) == []
    atomic_write_text(path, "three")
    assert path.read_text() == "three" and os.listdir(path.parent) == ["a.txt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    """The file is fsynced before the rename, its folder after it (the rename is durable)."""
    path = tmp_path / "a.txt"
    synced = []
    real = os.fsync

    def spy(fd):
        info = os.fstat(fd)
        synced.append(("folder" if stat.S_ISDIR(info.st_mode) else "file", path.exists()))
        return real(fd)

    monkeypatch.setattr(trc.io.os, "fsync", spy)
    atomic_write_text(path, "x")
    assert synced == [("file", False), ("folder", True)]


def _write_and_die(path, ready):
    with atomic_path(path) as tmp:
        tmp.write_text("unfinished")
        ready.set()
        os.kill(os.getpid(), signal.SIGKILL)


def _write_and_wait(path, ready, release):
    with atomic_path(path) as tmp:
        tmp.write_text("in progress")
        ready.set()
        release.wait(60)


def test_stale_temporaries_are_removed(tmp_path):
    """A temporary left by kill -9 goes on the next write of the file; a live writer's stays."""
    path = tmp_path / "d.h5"
    ready = FORK.Event()
    killed = FORK.Process(target=_write_and_die, args=(path, ready))
    killed.start()
    killed.join(60)
    assert killed.exitcode == -signal.SIGKILL
    orphan = temporaries(tmp_path)
    assert len(orphan) == 1 and orphan[0].startswith(f".d.h5.{killed.pid}-")

    ready, release = FORK.Event(), FORK.Event()
    live = FORK.Process(target=_write_and_wait, args=(path, ready, release))
    live.start()
    try:
        assert ready.wait(60)
        live_tmp = [name for name in temporaries(tmp_path) if name.startswith(f".d.h5.{live.pid}-")]
        assert len(live_tmp) == 1
        atomic_write_text(path, "done")  # removes the orphan, keeps the live writer's file
        assert temporaries(tmp_path) == live_tmp
    finally:
        release.set()
        live.join(60)
    assert live.exitcode == 0 and temporaries(tmp_path) == []
    assert path.read_text() == "in progress"  # the last rename wins


def test_stale_rule_by_name(tmp_path):
    """Which temporaries count as stale: a reused pid (other start time) does, other hosts,
    other files and names not written by atomic_path do not."""
    path = tmp_path / "d.h5"
    host = trc.io._host_tag()
    start = trc.io._proc_stat(os.getpid())[1]
    names = {
        f".d.h5.{os.getpid()}-{start}-{host}-abc_123.tmp": True,     # this process: alive
        f".d.h5.{os.getpid()}-{start + 1}-{host}-abc_123.tmp": False,  # the pid of another, older process
        f".d.h5.{os.getpid()}-0-{host}-abc_123.tmp": True,           # start unknown: the pid decides
        f".d.h5.{os.getpid()}-{start + 1}-0000000g-x.tmp": True,     # not a host tag
        f".d.h5.{os.getpid()}-{start + 1}-{'0' * 8 if host != '0' * 8 else '1' * 8}-x.tmp": True,  # another host
        f".d.h5.x.{os.getpid()}-{start + 1}-{host}-x.tmp": True,     # the temporary of 'd.h5.x'
        ".d.h5.abcdefgh.tmp": True,                                    # no writer recorded
        f"d.h5.{os.getpid()}-{start + 1}-{host}-x.tmp": True,         # not hidden: not ours
    }
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(path)
    assert [p.name for p in removed] == [name for name, keep in names.items() if not keep]
    assert sorted(os.listdir(tmp_path)) == sorted(name for name, keep in names.items() if keep)
    assert remove_stale_temporaries(tmp_path / "missing" / "d.h5") == []


# ---------------------------------------------------------------------------- the writer lock
def _hold(path, ready, release):
    with output_lock(path):
        ready.set()
        release.wait(60)


def test_output_lock_between_processes(tmp_path):
    out = tmp_path / "sub" / "d.h5"
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(out, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        assert lock_path(out) == out.with_name("d.h5.lock") and lock_path(out).exists()
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=rf"output '.*d\.h5' is being written by process {holder.pid} on"):
            with output_lock(out):
                pytest.fail("the lock was taken twice")
        assert time.perf_counter() - t0 < 5  # at once, no waiting
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    assert not lock_path(out).exists()  # removed by its holder
    with output_lock(out) as lock:
        assert lock == lock_path(out) and lock.exists()
    assert not lock_path(out).exists()


def test_output_lock_is_released_by_kill(tmp_path):
    """The kernel drops the flock of a killed holder; its lock file is taken over."""
    out = tmp_path / "d.h5"
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(out, ready, release))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(60)
    assert lock_path(out).exists()  # left behind by kill -9
    with output_lock(out):
        assert f"process {os.getpid()}" in lock_path(out).read_text()


def test_output_lock_against_a_plain_flock(tmp_path):
    """Any process holding flock(LOCK_EX) on <out>.lock (here a bare Python) blocks the writer."""
    out = tmp_path / "d.h5"
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock_path(out))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="is being written by another process"):
            with output_lock(out):
                pass
    finally:
        proc.stdin.close()
        proc.wait(60)
    with output_lock(out):
        pass


def test_output_lock_reentrant_in_one_thread_only(tmp_path):
    out = tmp_path / "d.h5"
    errors = []

    def other_thread():
        try:
            with output_lock(out):
                pass
        except ConfigError as exc:
            errors.append(str(exc))

    with output_lock(out):
        with output_lock(tmp_path / "." / "d.h5"):  # the same file: re-entered
            assert lock_path(out).exists()
        assert lock_path(out).exists()  # still held by the outer block
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "is being written by process" in errors[0]
    assert not lock_path(out).exists()


# ---------------------------------------------------------------------------- output checks
def _unwritable(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(trc.io.os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    return str(folder / "d.h5")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda tmp, mp: "", "the empty path ''"),
        (lambda tmp, mp: "   ", "the empty path"),
        (lambda tmp, mp: 3, "must be a file path"),
        (lambda tmp, mp: b"d.h5", "must be a file path"),
        (lambda tmp, mp: None, "must be a file path"),
        (lambda tmp, mp: str(tmp) + "/", "names a folder"),
        (lambda tmp, mp: str(tmp / ".."), "names a folder"),
        (lambda tmp, mp: tmp, "is a folder; expected a file path"),
        (lambda tmp, mp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt" / "d.h5", "is not a folder"),
        (lambda tmp, mp: (tmp / "notes.txt").write_text("x") and tmp / "notes.txt" / "a" / "d.h5", "is not a folder"),
        (lambda tmp, mp: os.mkfifo(tmp / "pipe") or tmp / "pipe", "not a regular file"),
        (_unwritable, "is not writable"),
    ],
    ids=["empty", "blank", "int", "bytes", "none", "trailing-slash", "dotdot", "folder", "under-file",
         "deep-under-file", "fifo", "unwritable"],
)
def test_check_output_path_rejects(tmp_path, monkeypatch, make, fragment):
    out = make(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=fragment):
        check_output_path(out, what="output file")
    with pytest.raises(ConfigError, match=fragment):
        check_output_file(out, force=True)  # force never allows these


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_check_output_path_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            check_output_path(folder / "new" / "d.h5")
    finally:
        folder.chmod(0o700)


def test_check_output_path_accepts(tmp_path):
    assert check_output_path(tmp_path / "new" / "deeper" / "d.h5") == tmp_path / "new" / "deeper" / "d.h5"
    (tmp_path / "d.h5").write_text("x")
    assert check_output_path(str(tmp_path / "d.h5")) == tmp_path / "d.h5"
    assert check_output_name(Path("a/b.h5")) == "a/b.h5"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_check_output_file(tmp_path):
    path = tmp_path / "d.h5"
    calls = []

    def is_own(verdict):
        def judge(p):
            calls.append(p)
            return verdict
        return judge

    assert check_output_file(path, is_own=is_own(True)) is False and calls == []  # nothing to judge
    path.write_text("problem: {}\n")
    assert check_output_file(path, is_own=is_own(True)) is True and calls == [path]
    with pytest.raises(ConfigError, match=r"already exists and is not this run's output \(a YAML file\); "
                                          r"refusing to replace it.*force=True"):
        check_output_file(path, is_own=is_own("a YAML file"))
    with pytest.raises(ConfigError, match=r"not this run's output; refusing"):
        check_output_file(path, is_own=is_own(False))
    with pytest.raises(ConfigError, match="refusing to replace it"):
        check_output_file(path)
    calls.clear()
    assert check_output_file(path, force=True, is_own=is_own("never asked")) is False and calls == []
    assert path.read_text() == "problem: {}\n"  # checks never touch the file
