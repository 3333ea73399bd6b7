"""Safe output files: atomic writes, stale temporaries, one writer per output, output checks.

* :func:`atomic_path` writes a file so that it is either the old version or the complete new
  one, never half: the content goes to a temporary file beside it
  (``.<name>.<pid>-<start>-<host>-<random>.tmp``), which is fsynced, renamed over the file,
  and the folder is fsynced so that the rename survives a power loss.
* Temporaries orphaned by a killed writer (``kill -9``, power loss) are removed by the next
  :func:`atomic_path` of the same file (:func:`remove_stale_temporaries`): the name records
  the writer's process id, its start time and a hash of the host name, so a temporary is
  removed only when that process no longer runs on this host.
* :func:`output_lock` makes a second writer of one output fail at once, before any work, with
  a :class:`~dynamics.errors.ConfigError` (an advisory ``flock`` on ``<output>.lock``).
* :func:`check_output_path` and :func:`check_output_file` refuse, before any work, an output
  that cannot be written (empty path, a directory, a folder that is a file or read-only) and
  an existing file that is not this run's own output (unless ``force``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from dynamics.errors import ConfigError

try:  # POSIX only; without it output_lock does not lock (see its docstring)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "atomic_path",
    "atomic_directory",
    "atomic_write_text",
    "atomic_torch_save",
    "remove_stale_temporaries",
    "output_lock",
    "lock_path",
    "check_output_name",
    "check_output_path",
    "check_output_file",
]

log = logging.getLogger("trc.io")

# <pid>-<process start time in clock ticks, 0 if unknown>-<8 hex digits of the host name's hash>-<mkstemp's random part>
_TMP_RE = re.compile(r"^(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{8})-[A-Za-z0-9_]+$")
_TMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------------------- processes
def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks)`` of process ``pid`` from ``/proc``, or None if
    there is no such entry (the process is gone, or there is no procfs)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    fields = text[text.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _has_procfs() -> bool:
    return os.path.isdir("/proc/self")


def _process_token() -> str:
    pid = os.getpid()
    info = _proc_stat(pid)
    return f"{pid}-{info[1] if info else 0}-{_host_tag()}"


def _writer_alive(pid: int, start: int) -> bool:
    """Whether the process that made a temporary (``pid``, started at ``start``) still runs
    on this host. Unknown cases count as alive (the temporary is kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    except OSError:
        return True
    info = _proc_stat(pid)
    if info is None:
        return not _has_procfs()  # procfs but no entry: it ended just now
    state, started = info
    if state in ("Z", "X"):  # killed, not yet reaped
        return False
    return start == 0 or started == start  # another start time: the pid was reused


def remove_stale_temporaries(path: str | os.PathLike, suffixes: tuple[str, ...] = (_TMP_SUFFIX,)) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` (or :func:`atomic_directory`) for ``path``
    whose writer is gone.

    A temporary ``.<name>.<pid>-<start>-<host>-<random><suffix>`` is removed when it was made on
    this host by a process that no longer runs (``kill -9``, a crash). Temporaries of live
    writers, of other hosts, and files of other names are left alone.

    Parameters
    ----------
    path : str or PathLike
        The file or folder whose temporaries to clean (it need not exist).
    suffixes : tuple of str
        Suffixes of the temporaries (files or folders).

    Returns
    -------
    list of pathlib.Path
        The temporaries removed.
    """
    path = Path(path)
    prefix = f".{path.name}."
    host = _host_tag()
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        suffix = next((x for x in suffixes if name.endswith(x)), None)
        if not name.startswith(prefix) or suffix is None:
            continue
        match = _TMP_RE.match(name[len(prefix):-len(suffix)])
        if match is None or match["host"] != host:
            continue
        if _writer_alive(int(match["pid"]), int(match["start"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
            log.info("removed %s, left by writer process %s that no longer runs", entry.path, match["pid"])
    return removed


# ---------------------------------------------------------------------------- atomic writes
def _fsync_dir(folder: Path) -> None:
    """fsync a folder so that a rename in it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # file systems that do not sync folders
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success fsync it, rename it over ``path``
    and fsync the folder.

    On an exception the temporary file is removed and ``path`` is left untouched. The folder
    is created if needed, and temporaries of ``path`` left by writers that were killed are
    removed first (:func:`remove_stale_temporaries`).

    Yields
    ------
    pathlib.Path
        ``.<name>.<pid>-<start>-<host>-<random>.tmp`` in the folder of ``path``; write it
        (and close it) inside the ``with`` block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_process_token()}-", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_DIR_SUFFIXES = (".tmpdir", ".olddir")


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder``, deepest first."""
    for dirpath, _, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            with open(Path(dirpath) / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary folder beside ``path``; on success fsync its tree and rename it to ``path``.

    An existing ``path`` is replaced only with ``overwrite``: it is moved aside, the new folder
    renamed in, then the old one removed (a failed rename puts it back). On an exception the
    temporary folder is removed and ``path`` is left untouched; temporaries of writers that were
    killed are removed first (:func:`remove_stale_temporaries`).

    Raises
    ------
    ConfigError
        If ``path`` exists (or appears while writing) and ``overwrite`` is false, or the final
        rename fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path, _DIR_SUFFIXES)
    if path.exists() and not overwrite:
        raise ConfigError(f"{str(path)!r} exists; refusing to replace it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_process_token()}-", suffix=".tmpdir", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        _fsync_tree(tmp)
        old = None
        if path.exists():
            if not overwrite:
                raise ConfigError(f"{str(path)!r} appeared while writing; refusing to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_process_token()}-", suffix=".olddir", dir=path.parent))
            os.rmdir(old)
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except OSError as exc:
            if old is not None:
                os.rename(old, path)
            raise ConfigError(f"cannot rename the new folder to {str(path)!r}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------- one writer per output
_HELD: dict = {}  # (lock file, thread id) -> depth, for re-entry in one thread
_HELD_GUARD = threading.Lock()


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``<path>.lock`` (absolute)."""
    path = Path(os.path.abspath(path))
    return path.with_name(path.name + ".lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def _acquire(lock: Path, path: Path) -> int:
    """Open and flock ``lock``; return its descriptor. The lock file is removed by its holder
    on release, so a lock taken on a file that was meanwhile removed or replaced is retried."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {str(lock)!r} of output {str(path)!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(
                f"output {str(path)!r} is being written by {holder} (lock file {str(lock)!r} is held); "
                "wait for that run to finish or choose another output path"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {str(lock)!r} (file system without flock?): {exc}") from exc
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # the previous holder removed it after we opened it: take the new one
    raise ConfigError(f"could not lock {str(lock)!r}: it was replaced 100 times in a row")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike):
    """Hold the exclusive writer lock of output ``path`` for the ``with`` block.

    The lock is an advisory ``flock(LOCK_EX | LOCK_NB)`` on ``<path>.lock``; the file is
    removed on release. The kernel releases the lock when its holder dies (even by
    ``kill -9``), so a crashed writer never blocks the next one. The lock is re-entrant in
    one thread (a writer may call another function that takes it); another thread or process
    fails at once. Without ``fcntl`` (Windows) nothing is locked.

    Parameters
    ----------
    path : str or PathLike
        The output file (its folder is created if needed).

    Yields
    ------
    pathlib.Path
        The lock file.

    Raises
    ------
    ConfigError
        If another process (or thread) holds the lock of ``path`` (the message names it), or
        the lock file cannot be created or locked.
    """
    lock = lock_path(path)
    key = (str(lock), threading.get_ident())
    with _HELD_GUARD:
        depth = _HELD.get(key, 0)
        if depth:
            _HELD[key] = depth + 1
    if depth or fcntl is None:
        try:
            yield lock
        finally:
            if depth:
                with _HELD_GUARD:
                    _HELD[key] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, Path(os.path.abspath(path)))
    with _HELD_GUARD:
        _HELD[key] = 1
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still holding it: see _acquire
        os.close(fd)


# ---------------------------------------------------------------------------- output checks
def _stat(path: Path, text: str, what: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigError(f"{what} {text!r} cannot be accessed: {exc}") from exc


def check_output_name(out, *, what: str = "output file") -> str:
    """Check that ``out`` is the name of a file (without looking at the file system).

    Returns
    -------
    str
        ``os.fspath(out)``.

    Raises
    ------
    ConfigError
        If ``out`` is not a str or PathLike, is empty, ends with a path separator or names
        ``.`` or ``..``.
    """
    if isinstance(out, bytes) or not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"{what} must be a file path (str or os.PathLike), got {out!r}")
    text = os.fspath(out)
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a file path (str or os.PathLike), got {out!r}")
    if not text.strip():
        raise ConfigError(f"{what} must be a file path, got the empty path {text!r}")
    if text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        raise ConfigError(f"{what} {text!r} names a folder; expected a file path such as "
                          f"{str(Path(text) / 'data.h5')!r}")
    return text


def check_output_path(out, *, what: str = "output file") -> Path:
    """Check that ``out`` names a file this process can create or replace, before any work.

    Parameters
    ----------
    out : str or PathLike
        The output file. Missing folders are fine (writers create them).
    what : str
        How error messages name it (e.g. ``"generator.out"``).

    Returns
    -------
    pathlib.Path
        ``out`` as a path.

    Raises
    ------
    ConfigError
        If ``out`` is not a file name (:func:`check_output_name`), is an existing folder or
        another non-regular file, lies under an existing file (``notes.txt/d.h5``) or in a
        folder this process may not write.
    """
    text = check_output_name(out, what=what)
    path = Path(text)
    info = _stat(path, text, what)
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {text!r} is a folder; expected a file path such as {str(path / 'data.h5')!r}")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} {text!r} exists and is not a regular file; expected a file path")
    folder = Path(os.path.abspath(text)).parent
    while True:  # the nearest existing ancestor is where the first file or folder will be created
        found = _stat(folder, text, what)
        if found is not None or folder.parent == folder:
            break
        folder = folder.parent
    if found is None or not stat.S_ISDIR(found.st_mode):
        raise ConfigError(f"{what} {text!r} cannot be created: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {text!r} cannot be written: the folder {str(folder)!r} is not writable")
    return path


def check_output_file(
    out,
    *,
    force: bool = False,
    is_own: Callable[[Path], bool | str] | None = None,
    what: str = "output file",
) -> bool:
    """Check an output file before any work: writable (:func:`check_output_path`) and not
    another file that would be lost.

    Parameters
    ----------
    out : str or PathLike
        The output file.
    force : bool
        Allow replacing an existing file that is not this run's own output.
    is_own : callable, optional
        ``is_own(path)`` for an existing file: ``True`` if it is this run's own output (the
        same data from the same settings, e.g. a finished earlier run of the same command),
        otherwise ``False`` or a short description of what it holds (quoted in the error).
        Without it every existing file counts as another file.
    what : str
        How error messages name the output.

    Returns
    -------
    bool
        True if ``out`` exists and is this run's own output (never with ``force``); the
        caller may then skip the work.

    Raises
    ------
    ConfigError
        If ``out`` cannot be written (see :func:`check_output_path`), or exists and is not
        this run's own output and ``force`` is False (the message says what it holds).
    """
    path = check_output_path(out, what=what)
    if not path.exists() or force:
        return False
    verdict = is_own(path) if is_own is not None else False
    if verdict is True:
        return True
    held = f" ({verdict})" if isinstance(verdict, str) and verdict else ""
    raise ConfigError(
        f"{what} {str(path)!r} already exists and is not this run's output{held}; refusing to replace it. "
        "Choose another output path, remove the file, or pass force=True (--force on the command line)"
    )
