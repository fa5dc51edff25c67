"""Tidy records: one JSON line per measurement (model x attack x mode); the schema is in
docs/design.md, "Records".

Tables and plots are derived from records only, so any table can be regenerated from a run
folder. Appends are atomic (the file is rewritten to a temporary file and moved into place),
so a run killed at any moment leaves either the old file or the new one, never half a line.
"""

from __future__ import annotations

import functools
import json
import math
import platform
import subprocess
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import atomic_write_text

SETTINGS = ("white-box", "transfer", "query")
MODES = ("clean", "targeted", "untargeted")


# fields a record may lack (older files): they take their defaults
OPTIONAL_FIELDS = ("created", "versions", "outcomes", "n_attacked", "protocol", "environment")


class RecordError(RomeBenchError):
    """A records file that cannot be read."""


def pack_outcomes(mask: Any) -> str:
    """Per-image survival as the hex string stored in ``Record.outcomes``.

    ``mask`` is one bool per test image, in the order of the run's test subset (True = the image
    was classified correctly: clean, or still after the attack). The text is
    ``numpy.packbits(mask, bitorder="big")`` in hex, ``2 * ceil(n / 8)`` characters.

    >>> pack_outcomes([True, False, True, True, False, False, False, False, True])
    'b080'
    """
    bits = np.asarray(mask, dtype=bool).reshape(-1)
    return np.packbits(bits, bitorder="big").tobytes().hex()


def unpack_outcomes(text: str, n: int) -> np.ndarray:
    """The ``n`` booleans of an ``outcomes`` string (see :func:`pack_outcomes`).

    >>> unpack_outcomes("b080", 9).astype(int).tolist()
    [1, 0, 1, 1, 0, 0, 0, 0, 1]
    """
    if n < 0 or len(text) != 2 * math.ceil(n / 8):
        raise RecordError(f"outcomes of {len(text)} hex digits do not describe {n} images "
                          f"(expected {2 * math.ceil(max(n, 0) / 8)})")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise RecordError(f"outcomes are not a hex string ({exc})") from exc
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n, bitorder="big").astype(bool)


def versions() -> dict[str, Any]:
    """Versions of the software that produced a measurement: rome-bench's version and, when it
    runs from a git checkout, the commit (``git_commit``, None otherwise) and whether tracked
    files differ from it (``git_dirty``); torch, torchattacks and Python."""
    import torch
    import torchattacks

    from rome_bench.core.version import __version__

    commit, dirty = git_revision()
    return {"rome_bench": __version__, "git_commit": commit, "git_dirty": dirty,
            "torch": torch.__version__, "torchattacks": torchattacks.__version__,
            "python": platform.python_version()}


@functools.cache
def git_revision() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout rome-bench runs from, or ``(None, None)``.

    Only a checkout whose top folder holds this ``rome_bench`` package counts (an installed
    copy inside some other repository is not that repository's code). Never fails: without
    git, outside a checkout or when git refuses, the answer is ``(None, None)``.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None, None
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != root:
            return None, None
        commit = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None, None
    if commit is None:
        return None, None
    return commit, (bool(status) if status is not None else None)


def _git(root: Path, *args: str) -> str | None:
    """The stripped output of ``git -C root ARGS``, or None when it fails."""
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=10, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def environment(device: str) -> dict[str, Any]:
    """Where a measurement is computed: the torch ``device``, its name (the GPU's, or the CPU
    model) and torch's intra-op thread count (a CPU result is bit-identical only at the same
    count; docs/design.md, "Reproducibility")."""
    import torch

    return {"device": str(device), "device_name": _device_name(str(device)),
            "threads": torch.get_num_threads()}


@functools.cache
def _device_name(device: str) -> str | None:
    import torch

    try:
        if torch.device(device).type == "cuda":
            return torch.cuda.get_device_name(torch.device(device))
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
        return platform.processor() or None
    except Exception:  # noqa: BLE001 - a name is a courtesy, never a reason to fail
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Record:
    """One measurement. ``accuracy`` is in percent; ``seconds`` covers generation + prediction;
    ``outcomes`` (when present) says which of the ``n_images`` test images survived
    (:func:`pack_outcomes`)."""

    run_id: str
    method: str
    dataset: str
    ipc: int
    seed: int
    repeat: int
    arch: str
    preset: str
    threat_model: str
    setting: str
    source_model: str | None
    mode: str
    attack: str
    eps: float | None
    accuracy: float
    seconds: float
    n_images: int
    # how the model was retrained (native | beard); rows written before protocols existed
    # lack the field and read as native
    protocol: str = "native"
    created: str = field(default_factory=now)
    versions: dict[str, Any] = field(default_factory=dict)
    outcomes: str | None = None
    # images the attack ran on (None in records that predate it): under ``standard``, images the
    # model misclassifies on clean input count as lost without being attacked
    n_attacked: int | None = None
    # where it was computed (``environment()``: device, device name, torch threads); empty in
    # records that predate it and in imported BEARD logs
    environment: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)

    def outcome_mask(self) -> np.ndarray | None:
        """The per-image survival mask (``n_images`` bools), or None for a record without it."""
        return None if self.outcomes is None else unpack_outcomes(self.outcomes, self.n_images)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """A record from its JSON object, every field checked against its declared type (a
        records file may come from anywhere; a wrong type would otherwise surface later as a
        crash, or a wrong number, in a table)."""
        if not isinstance(d, dict):
            raise RecordError(f"expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names if n not in d and n not in OPTIONAL_FIELDS)
        if missing:
            raise RecordError(f"record lacks fields {missing}")
        record = cls(**{k: _checked(k, v) for k, v in d.items() if k in names})
        _check_values(record)
        return record


def _checked(name: str, value: Any) -> Any:
    """``value`` of field ``name`` if it has the field's type (ints accepted for floats)."""
    kind = _FIELD_TYPES.get(name, "")
    if value is None and kind.endswith("| None"):
        return value
    base = kind.removesuffix(" | None")
    if base == "str" and isinstance(value, str):
        return value
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if (base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)):
        return float(value)
    if base.startswith("dict") and isinstance(value, dict):
        return value
    if base not in ("str", "int", "float") and not base.startswith("dict"):
        return value  # a field of another type is not checked here
    raise RecordError(f"field '{name}' must be {kind.replace('| None', 'or null')}, "
                      f"got {json.dumps(value)[:40]}")


def _check_values(r: Record) -> None:
    if r.mode not in MODES:
        raise RecordError(f"mode '{r.mode}' is not one of {', '.join(MODES)}")
    if r.setting not in SETTINGS:
        raise RecordError(f"setting '{r.setting}' is not one of {', '.join(SETTINGS)}")
    if not 0 <= r.accuracy <= 100:
        raise RecordError(f"accuracy {r.accuracy} is not a percentage")
    for name in ("seconds", "ipc", "n_images", "n_attacked", "eps"):
        value = getattr(r, name)
        if value is not None and value < 0:
            raise RecordError(f"field '{name}' is negative ({value})")
    r.outcome_mask()  # raises RecordError unless ``outcomes`` describes n_images images


_FIELD_TYPES = {f.name: str(f.type) for f in fields(Record)}


class RecordStore:
    """JSONL file of :class:`Record` rows, appended to as a run goes.

    A row supersedes the rows of *earlier runs* (another ``run_id``) that hold the same
    measurement (:data:`MEASUREMENT_KEY`): they are dropped and the new row goes at the end. A
    run restarted after a kill (the same command, the same ``--out``) replays its finished cells
    from the cache and writes their rows again; without this the folder would count those
    models twice, and its tables would no longer be the undisturbed run's. Rows of the same
    run are never dropped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, records: list[Record]) -> None:
        if not records:
            return
        old = self.path.read_text() if self.path.exists() else ""
        newer: dict[tuple[Any, ...], set[str]] = {}
        for r in records:
            newer.setdefault(_measurement_key(r), set()).add(r.run_id)
        kept = [line for line in old.splitlines()
                if line.strip() and not _superseded(line, newer)]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept)
                          + "".join(r.to_json() + "\n" for r in records))

    def read(self) -> list[Record]:
        return read_records([self.path])


def read_records(paths: list[str | Path]) -> list[Record]:
    """Records from JSONL files or run folders (every ``*.jsonl`` below a folder)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*.jsonl") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise RecordError(f"no records file or folder at {p}")
    per_file: list[list[Record]] = []
    for f in files:
        rows_here: list[Record] = []
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"{f}: not a records file (not UTF-8 text: {exc.reason} at byte "
                              f"{exc.start})") from exc
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows_here.append(Record.from_dict(json.loads(line)))
            except (ValueError, TypeError, RecursionError, RecordError) as exc:
                raise RecordError(f"{f}:{lineno}: not a rome-bench record ({exc})") from exc
        per_file.append(rows_here)
    rows = _drop_repeated_measurements(per_file)
    if not rows:
        raise RecordError(f"no records in {', '.join(map(str, paths))}")
    return rows


MEASUREMENT_KEY = ("method", "dataset", "ipc", "seed", "repeat", "arch", "preset", "threat_model",
                   "setting", "source_model", "mode", "attack", "eps", "n_images", "protocol")


def _measurement_key(record: Record) -> tuple[Any, ...]:
    return tuple(getattr(record, name) for name in MEASUREMENT_KEY)


def _superseded(line: str, newer: dict[tuple[Any, ...], set[str]]) -> bool:
    """Whether the stored ``line`` is a row of a measurement in ``newer`` (measurement key ->
    the run ids writing it now) made by another run. A line that does not parse as a record
    is kept as it is."""
    try:
        old = Record.from_dict(json.loads(line))
        runs = newer.get(_measurement_key(old), set())
    except Exception:  # noqa: BLE001 - not a record this version reads: never ours to drop
        return False
    return bool(runs - {old.run_id})


def _drop_repeated_measurements(per_file: list[list[Record]]) -> list[Record]:
    """Rows of all files, a measurement found in several files counted once (its newest row).

    A rerun of a cached model (say an extra attack on the same models) records the model's clean
    accuracy again; reading both run folders, or a folder holding the other, must not count
    that model twice. Rows within one file are kept as written.
    """
    newest: dict[tuple[Any, ...], tuple[str, int]] = {}
    for index, rows in enumerate(per_file):
        latest_here: dict[tuple[Any, ...], str] = {}
        for r in rows:
            key = _measurement_key(r)
            latest_here[key] = max(latest_here.get(key, r.created), r.created)
        for key, created in latest_here.items():
            if key not in newest or created >= newest[key][0]:
                newest[key] = (created, index)
    return [r for index, rows in enumerate(per_file) for r in rows
            if newest[_measurement_key(r)][1] == index]
