"""Content-addressed cache of distilled sets, trained models and measurements.

Keys are hashes of everything that determines a result (method, dataset, IPC, preset, seed,
hyperparameters and a hash of the code that computes it), so a rerun skips finished work, an
interrupted run resumes where it stopped, and editing a method's file invalidates only its
own entries. The root is ``$ROME_BENCH_CACHE`` (default ``~/.cache/rome-bench``). Every write is
atomic (see :mod:`rome_bench.storage`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from functools import cache
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    return Path(os.environ.get("ROME_BENCH_CACHE", "~/.cache/rome-bench")).expanduser()


def content_key(**parts: Any) -> str:
    """A short stable hash of ``parts`` (JSON-serialised with sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@cache
def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def code_version(obj: Any) -> str:
    """Hash of the source file defining ``obj`` (a function or module); '' when unavailable."""
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        path = None
    return _file_hash(path) if path and os.path.exists(path) else ""


class Cache:
    """Paths of cached artefacts under ``root`` (created on first use)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    def path(self, kind: str, key: str, suffix: str) -> Path:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}{suffix}"

    def distilled(self, key: str) -> Path:
        return self.path("distilled", key, ".pt")

    def checkpoint(self, key: str) -> Path:
        return self.path("checkpoints", key, ".pt")

    def model(self, key: str) -> Path:
        return self.path("models", key, ".pt")

    def measurement(self, key: str) -> Path:
        return self.path("measurements", key, ".json")
