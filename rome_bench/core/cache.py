"""Content-addressed cache of distilled sets, trained models and measurements.

Keys are hashes of everything that determines a result (method, dataset, IPC, preset, seed,
hyperparameters and a hash of the code that computes it), so a rerun skips finished work, an
interrupted run resumes where it stopped, and editing a method's file invalidates only its
own entries. The root is ``$ROME_BENCH_CACHE`` (default ``~/.cache/rome-bench``). Every write is
atomic (see :mod:`rome_bench.core.storage`), and every read goes through :func:`read_cached`: an
entry that cannot be loaded or does not have the expected shape (a disk that filled up, a copy
interrupted, a file edited by hand) is reported in one line, set aside and recomputed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import types
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import make_folder, set_aside

T = TypeVar("T")


def cache_root() -> Path:
    return Path(os.environ.get("ROME_BENCH_CACHE", "~/.cache/rome-bench")).expanduser()


def content_key(**parts: Any) -> str:
    """A short stable hash of ``parts`` (JSON-serialised with sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@cache
def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


_OWN_PACKAGES = ("rome_bench",)  # baselines/ is installed as rome_bench.baselines


def own_dependencies(module: types.ModuleType) -> set[str]:
    """Names of rome-bench/baselines modules that ``module`` uses, transitively.

    A package's own submodules are not followed through the package: importing
    ``rome_bench.methods.rome`` sets it as an attribute of ``rome_bench.methods``, and following
    that attribute would make every method depend on ROME's code (and every edit of the
    distribution-matching helpers invalidate the random baseline's cache). What a package
    really uses from a submodule is still found, through the functions and classes it holds.
    """
    seen: set[str] = set()
    todo = [module.__name__]
    while todo:
        name = todo.pop()
        if name in seen or name not in sys.modules:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            if isinstance(value, types.ModuleType):
                dep = value.__name__
                if dep.startswith(name + "."):
                    continue
            else:
                dep = getattr(value, "__module__", None)
            if isinstance(dep, str) and dep.split(".")[0] in _OWN_PACKAGES and dep not in seen:
                todo.append(dep)
    return seen


def code_version(obj: Any) -> str:
    """Hash of the source of ``obj``'s module and every rome-bench module it uses (transitively).

    Editing a shared helper (e.g. the IDM network queue) therefore invalidates the cached
    results of every method built on it, not only of the file that registers the method.
    Only the files' contents count, not the modules' names or paths, so moving a module
    without editing it keeps every cached result valid.
    """
    module = obj if isinstance(obj, types.ModuleType) else inspect.getmodule(obj)
    if module is None:
        return ""
    parts = []
    for name in sorted(own_dependencies(module)):
        try:
            path = inspect.getsourcefile(sys.modules[name])
        except TypeError:
            path = None
        if path and os.path.exists(path):
            parts.append(_file_hash(path))
    return hashlib.sha256("|".join(sorted(parts)).encode()).hexdigest()[:12] if parts else ""


class CorruptEntry(RomeBenchError):
    """A cache entry that loads but does not hold what its kind must hold."""


def read_json_file(path: Path) -> Any:
    """The JSON in ``path`` (raises on bad UTF-8 or bad JSON, unlike ``storage.read_json``)."""
    return json.loads(Path(path).read_bytes().decode("utf-8"))


def read_cached(path: Path, load: Callable[[Path], T], what: str) -> T | None:
    """``load(path)``, or None when ``path`` is not cached or is corrupt.

    ``load`` reads and validates the entry; any exception it raises marks the entry corrupt:
    the file is renamed to ``<name>.corrupt-<timestamp>`` beside it (kept for inspection, never
    read again) with one warning line on stderr naming it, and None tells the caller to
    recompute. A PermissionError is not corruption and propagates.
    """
    path = Path(path)
    try:
        seen = os.stat(path)
    except FileNotFoundError:
        return None
    try:
        return load(path)
    except FileNotFoundError:  # removed between the stat and the load: not cached
        return None
    except PermissionError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncation, garbage and wrong shapes all land here
        report_corrupt(path, what, exc, seen)
        return None


def report_corrupt(path: Path, what: str, exc: BaseException, seen: os.stat_result | None = None
                   ) -> Path | None:
    """Set a corrupt cache entry aside and say so in one warning line that names it; returns
    where it went (None if another process moved or replaced it first, or it cannot move)."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    reason = reason.rpartition(f"{path}: ")[2]  # the warning names the file once, up front
    if not isinstance(exc, RomeBenchError) and text:
        reason = f"{type(exc).__name__}: {reason}"
    if len(reason) > 120:  # torch's zip reader explains itself at length
        reason = reason.split(". ")[0][:200]
    aside = None
    try:
        aside = set_aside(path, seen)
        where = (f"moved to {aside.name}" if aside is not None
                 else "already replaced by another process")
    except OSError as move_exc:
        where = f"could not move it aside ({move_exc.strerror or move_exc})"
    print(f"rome-bench: warning: corrupt cache entry {path} ({what}: {reason}); {where}, "
          "recomputing", file=sys.stderr, flush=True)
    return aside


class Cache:
    """Paths of cached artefacts under ``root`` (created on first use)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return make_folder(self.root / kind) / f"{key}{suffix}"

    def distilled(self, key: str) -> Path:
        return self.path("distilled", key, ".pt")

    def checkpoint(self, key: str) -> Path:
        return self.path("checkpoints", key, ".pt")

    def model(self, key: str) -> Path:
        return self.path("models", key, ".pt")

    def measurement(self, key: str) -> Path:
        return self.path("measurements", key, ".json")
