"""Atomic writes: whole files or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from rome_bench.core.storage import atomic_write, atomic_write_text


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    atomic_write_text(atomic, "x")
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "records.jsonl"
    target.write_text("old\n")

    def explode(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


def test_orphaned_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from rome_bench.core.storage import remove_orphaned_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = tmp_path / "models" / f".abc.pt.{dead}.x1y2z3.tmp"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half a file")
    live = tmp_path / f".records.jsonl.{os.getpid()}.q9w8e7.tmp"  # this process is alive
    live.write_bytes(b"being written")
    other = tmp_path / "notes.tmp"  # not one of ours: no writer pid in the name
    other.write_bytes(b"x")
    assert remove_orphaned_temporaries(tmp_path) == [orphan]
    assert not orphan.exists() and live.exists() and other.exists()
