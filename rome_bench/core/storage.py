"""Atomic file writes: a killed process never leaves a truncated result, record or cache file.

Everything rome-bench persists goes through these helpers: write to a temporary file in the
same folder, flush and fsync, then ``os.replace`` (atomic on POSIX) over the destination. A
write that fails (a full disk, a read-only folder) removes its temporary and raises
:class:`StorageError`, whose one-line message names the destination; the file keeps its old
content or stays absent. :func:`set_aside` moves a corrupt file out of the way without losing
it, and :func:`hold_folder` keeps two runs from writing into the same output folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from rome_bench.core.registry import RomeBenchError


class CheckpointError(RomeBenchError):
    """A tensor file (checkpoint, distilled set, cache entry) that cannot be loaded as asked."""


class StorageError(RomeBenchError):
    """A file or folder that cannot be written (full disk, read-only place, no permission)."""


class FolderInUseError(RomeBenchError):
    """An output folder that another live rome-bench process is writing."""


def storage_error(exc: OSError, path: str | Path, verb: str = "write") -> StorageError:
    """``exc`` as a one-line :class:`StorageError` that names ``path`` (the file the user knows
    about, not the temporary that failed); ``errno`` is kept for callers that test it.

    >>> str(storage_error(OSError(28, "No space left on device"), "/out/records.jsonl"))
    'cannot write /out/records.jsonl: no space left on device (ENOSPC)'
    """
    reason = (exc.strerror or str(exc) or type(exc).__name__).strip().splitlines()[0]
    reason = reason[:1].lower() + reason[1:]
    code = errno.errorcode.get(exc.errno or 0)
    err = StorageError(f"cannot {verb} {path}: {reason}" + (f" ({code})" if code else ""))
    err.errno = exc.errno
    return err


# mkstemp creates files readable by their owner only; results and caches are meant to be shared
# like any other output, so finished files get the mode a plain open() would have given them.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file, then atomically move it to ``path``.

    Raises :class:`StorageError` naming ``path`` when the folder or the file cannot be written
    (ENOSPC, EROFS, EACCES, ...); the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    make_folder(path.parent)
    # the writer's pid is part of the name, so a later run can tell an orphan (its writer was
    # killed between this line and the rename) from a file another live process is writing
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                                   dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise storage_error(exc, path) from exc
        raise


def make_folder(folder: str | Path) -> Path:
    """``mkdir -p folder``, with a one-line :class:`StorageError` naming it when that fails."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, folder, "create folder") from exc
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_orphaned_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files below ``folder`` whose writer process no longer exists (a run
    killed in the middle of an atomic write leaves one); returns what was removed. Files of
    live writers, e.g. a second run sharing the cache, are left alone."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.rglob(f".*{TEMP_SUFFIX}"):
        parts = tmp.name.rsplit(".", 3)  # ".<name>", "<pid>", "<random>", "tmp"
        if len(parts) == 4 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:  # gone already, or a read-only place: nothing to clean there
                pass
    return removed


def check_writable(folder: str | Path, what: str = "folder") -> None:
    """Raise a one-line error naming ``folder`` unless a file can be written in it.

    Folders that do not exist yet are created for the test and removed again, so a check leaves
    nothing behind; a run that could not save its results stops before it computes anything.
    """
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # named like an atomic write's temporary file: if the process dies right here, the next
        # run's orphan sweep removes it
        fd, probe = tempfile.mkstemp(prefix=f".write-check.{os.getpid()}.", suffix=TEMP_SUFFIX,
                                     dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise storage_error(exc, folder, f"write to the {what}") from exc
    finally:
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    # serialised in memory first: torch's zip writer turns an OSError of the file (ENOSPC) into
    # a RuntimeError without its errno, and the plain write below keeps it
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (treated as not cached)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def set_aside(path: str | Path, seen: os.stat_result | None = None) -> Path | None:
    """Rename a corrupt ``path`` to ``<name>.corrupt-<timestamp>`` beside it; returns the new
    path, or None when there was nothing to move (another process moved or replaced it first).

    ``seen`` is the ``stat`` of the file as it was read: when another process has meanwhile
    replaced the bad file with a good one, that good file is put back instead of set aside.
    Raises OSError when the rename is impossible (e.g. a read-only cache).
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    if seen is not None:
        now = os.stat(aside)
        if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
            with contextlib.suppress(OSError):  # FileExistsError: a newer good copy is there
                os.link(aside, path)
            os.unlink(aside)
            return None
    return aside


class _FolderLock:
    """An exclusive ``flock`` on ``<folder>/.rome-bench.lock`` that holds the owner's pid."""

    NAME = ".rome-bench.lock"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
            except OSError as exc:
                raise storage_error(exc, self.path) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderInUseError(
                    f"output folder {self.path.parent} is in use by another rome-bench run "
                    f"(pid {holder}, lock {self.path}); wait for it to end or choose another "
                    "--out") from None
            # the lock file may have been removed (and recreated) by its previous owner between
            # our open and our flock: only a lock on the file that is there now counts
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            self.fd = fd
            self.release()
            raise storage_error(exc, self.path) from exc
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still locked: nobody else can be holding this file
        os.close(self.fd)  # closing drops the flock
        self.fd = None


@contextlib.contextmanager
def hold_folder(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process for the block.

    A second process asking for the same folder gets :class:`FolderInUseError` naming the
    folder and the pid that holds it. The lock is an ``flock``, so the kernel drops it when its
    owner dies however it dies: a lock file left by a killed run holds nothing.
    """
    folder = Path(folder)
    created = not folder.exists()
    make_folder(folder)
    lock = _FolderLock(folder)
    try:
        lock.acquire()
        try:
            yield folder
        finally:
            lock.release()
    finally:
        if created:  # a run that stopped before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Parallel workers that need the same expensive artefact (e.g. MTT's and DATM's shared expert
    buffer) take the lock: the first builds it, the others wait and then find it in the cache.
    ``on_wait`` is called once when another process holds the lock, before waiting for it. In a
    read-only place no lock can be taken, and none is needed (nothing can be written there):
    the block runs unlocked.

    The lock belongs to the open file, so it excludes other processes (the ``--jobs`` workers,
    Ray workers) and is released when its holder dies, even by SIGKILL. Across machines it
    holds only where the shared filesystem passes ``flock`` locks between its clients: NFS
    does (Linux clients turn ``flock`` into NFS byte-range locks; NFSv3 needs the lock daemon,
    a ``nolock`` mount keeps locks local to each machine), Lustre only when mounted with
    ``flock`` (``localflock`` is per node); see the README's "Scale out on Ray".
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+b")  # closed by the with below
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise storage_error(exc, path) from exc
        f = None
    if f is None:
        yield
        return
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def load_tensor_file(path: str | Path, what: str = "file"):
    """``torch.load(path, weights_only=True)`` with one-line errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"cannot load {what} {path}: not a PyTorch file (neither "
                              "torch.save's zip archive nor a legacy pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle payloads, truncation and garbage all end up here
        text = str(exc).strip()
        first = text.splitlines()[0].split(". ")[0] if text else ""  # torch's first sentence
        reason = f"corrupt or truncated ({type(exc).__name__}{': ' + first if first else ''})"
        if "Unsupported global" in text or "Unsupported operand" in text:
            reason = "it contains objects other than tensors (refused: weights_only=True)"
        raise CheckpointError(f"cannot load {what} {path}: {reason}") from exc


def _looks_like_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a file ``torch.save`` writes: a zip archive (the format since
    torch 1.6) or a pickle (protocol 2 and up start with 0x80). Garbage otherwise reaches
    ``torch.load`` and fails with an error that names a dictionary key, not the problem."""
    with path.open("rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
