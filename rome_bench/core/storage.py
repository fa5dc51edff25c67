"""Atomic file writes: a killed process never leaves a truncated result, record or cache file.

Everything rome-bench persists goes through these helpers: write to a temporary file in the
same folder, flush and fsync, then ``os.replace`` (atomic on POSIX) over the destination.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from rome_bench.core.registry import RomeBenchError


class CheckpointError(RomeBenchError):
    """A tensor file (checkpoint, distilled set, cache entry) that cannot be loaded as asked."""


# mkstemp creates files readable by their owner only; results and caches are meant to be shared
# like any other output, so finished files get the mode a plain open() would have given them.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file, then atomically move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid is part of the name, so a later run can tell an orphan (its writer was
    # killed between this line and the rename) from a file another live process is writing
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
            except FileNotFoundError:
                pass
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (treated as not cached)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Parallel workers that need the same expensive artefact (e.g. MTT's and DATM's shared expert
    buffer) take the lock: the first builds it, the others wait and then find it in the cache.
    The lock belongs to the open file, so it excludes other processes (the ``--jobs`` workers,
    Ray workers) and is released when its holder dies, even by SIGKILL. Across machines it
    holds only where the shared filesystem passes ``flock`` locks between its clients: NFS
    does (Linux clients turn ``flock`` into NFS byte-range locks; NFSv3 needs the lock daemon,
    a ``nolock`` mount keeps locks local to each machine), Lustre only when mounted with
    ``flock`` (``localflock`` is per node); see the README's "Scale out on Ray".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle payloads, truncation and garbage all end up here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains objects other than tensors (refused: weights_only=True)"
        raise CheckpointError(f"cannot load {what} {path}: {reason}") from exc
