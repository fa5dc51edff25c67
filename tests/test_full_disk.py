"""Full disks and read-only places (issue #22, item 4): a one-line error naming the path, a
non-zero exit status, and nothing half-written: every records file, table and cache entry left
behind is whole.

The full disk is a 1 MB tmpfs this test mounts (as root, where ``mount`` works; skipped with the
reason otherwise) and fills up to a few free pages. Read-only places are ``chmod 555`` folders
where file modes stop this process, and otherwise (root, which ignores them) a tmpfs mounted
``ro`` or a read-only bind mount.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rome_bench.cli import main
from rome_bench.core.records import read_records
from rome_bench.reporting.tables import write_tables

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@functools.cache
def modes_protect() -> bool:
    """Whether ``chmod 555`` keeps this process from writing into a folder (not for root with
    CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o555)
        try:
            Path(d, "probe").write_text("x")
        except PermissionError:
            return True
        finally:
            os.chmod(d, 0o755)
        return False


def mount(args: list[str], where: Path) -> None:
    """``mount ARGS WHERE``, or skip the test with the reason it failed."""
    where.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root (this test runs as an ordinary user)")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    res = subprocess.run(["mount", *args, str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[0]
        pytest.skip(f"cannot mount a tmpfs here ({why}): a container without CAP_SYS_ADMIN?")


@pytest.fixture
def mounts():
    """Mount helpers whose mounts are undone after the test."""
    done: list[Path] = []
    chmodded: list[Path] = []

    def tmpfs(where: Path, *options: str) -> Path:
        mount(["-t", "tmpfs", "-o", ",".join(["size=1m", *options]), "tmpfs"], where)
        done.append(where)
        return where

    def read_only(where: Path) -> Path:
        """``where`` (created if missing) read-only in place: chmod where that stops us."""
        where.mkdir(parents=True, exist_ok=True)
        if modes_protect():
            for sub in [where, *where.rglob("*")]:
                if sub.is_dir():
                    os.chmod(sub, 0o555)
            chmodded.append(where)
            return where
        mount(["--bind", str(where)], where)
        done.append(where)
        res = subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {res.stderr.strip()}")
        return where

    yield tmpfs, read_only
    for where in reversed(done):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
    for where in chmodded:  # so that pytest can delete its temporary folders
        for sub in [where, *where.rglob("*")]:
            if sub.is_dir():
                os.chmod(sub, 0o755)


def read_only_place(mounts, where: Path) -> tuple[Path, str]:
    """An empty read-only folder and the reason a write there fails with."""
    tmpfs, read_only = mounts
    if modes_protect():
        return read_only(where), "permission denied (EACCES)"
    return tmpfs(where, "ro"), "read-only file system (EROFS)"


def fill(folder: Path, free_pages: int) -> None:
    """Fill ``folder``'s filesystem until ``free_pages`` blocks are left."""
    st = os.statvfs(folder)
    (folder / "filler").write_bytes(b"\0" * ((st.f_bavail - free_pages) * st.f_bsize))
    assert os.statvfs(folder).f_bavail == free_pages


def run(out: Path, *extra: str):
    return CliRunner().invoke(main, ["run", "--method", "random", "--ipc", "1", "--preset", "unit",
                                     "--attacks", "FGSM", "--quiet", "--out", str(out), *extra])


def one_line_error(res, *needles: str) -> str:
    assert res.exit_code not in (0, None), res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert err[0].startswith("rome-bench: error: ") and "Traceback" not in res.output
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def assert_nothing_half_written(out: Path, cache: Path, scratch: Path) -> None:
    """No temporaries; records whole; each table written is the one its records give; each
    cache entry loads."""
    assert not [p for p in (*out.rglob("*"), *cache.rglob("*")) if p.name.endswith(".tmp")]
    if (out / "records.jsonl").exists():
        records = read_records([out / "records.jsonl"])  # raises on a cut line
        expected = scratch / "expected-tables"
        write_tables(records, expected)
        for table in expected.iterdir():
            if (out / table.name).exists():
                assert (out / table.name).read_text() == table.read_text()
    for p in cache.rglob("*"):
        if p.suffix == ".pt":
            torch.load(p, weights_only=True)
        elif p.suffix == ".json":
            json.loads(p.read_text())


@pytest.mark.parametrize("free_pages", [0, 2, 3, 12])
def test_full_output_folder(tmp_path, mounts, free_pages):
    tmpfs, _ = mounts
    disk = tmpfs(tmp_path / "tiny")
    fill(disk, free_pages)
    out = disk / "run"
    res = run(out)
    line = one_line_error(res, "no space left on device (ENOSPC)", f"cannot write {out}/")
    assert_nothing_half_written(out, Path(os.environ["ROME_BENCH_CACHE"]), tmp_path)
    if free_pages == 0:  # refused before any work: the lock file needs a page
        assert line.endswith(f"{out}/.rome-bench.lock: no space left on device (ENOSPC)")
    else:  # the records made it; a table or figure did not
        assert len(read_records([out / "records.jsonl"])) == 3
    assert not (out / ".rome-bench.lock").exists()


@pytest.mark.parametrize("sub", ["", "new-folder"])
def test_read_only_output_folder(tmp_path, mounts, sub):
    folder, reason = read_only_place(mounts, tmp_path / "ro")
    out = folder / sub if sub else folder
    res = run(out)
    # refused by the check that runs before the data is read (tests/test_fail_fast.py)
    one_line_error(res, f"cannot write to the output folder {out}: {reason}")
    assert not list(Path(os.environ["ROME_BENCH_CACHE"]).rglob("*.pt"))  # refused before work


def test_read_only_cache(tmp_path, mounts, monkeypatch):
    _, read_only = mounts
    # an empty read-only cache: the first entry cannot be written
    cache, reason = read_only_place(mounts, tmp_path / "ro-cache")
    monkeypatch.setenv("ROME_BENCH_CACHE", str(cache))
    one_line_error(run(tmp_path / "a"), f"{cache}/", reason)
    assert not (tmp_path / "a").exists()  # nothing was written there: the folder is gone too

    # a read-only cache that holds every result serves the run without writing a byte
    filled = tmp_path / "filled"
    monkeypatch.setenv("ROME_BENCH_CACHE", str(filled))
    first = run(tmp_path / "b")
    assert first.exit_code == 0, first.output
    read_only(filled)
    before = {p: p.stat().st_mtime_ns for p in filled.rglob("*")}
    again = run(tmp_path / "c")
    assert again.exit_code == 0, again.output
    key = lambda r: (r.attack, r.mode, r.accuracy, r.outcomes)  # noqa: E731
    assert sorted(map(key, read_records([tmp_path / "c"]))) == sorted(
        map(key, read_records([tmp_path / "b"])))
    assert {p: p.stat().st_mtime_ns for p in filled.rglob("*")} == before


def test_full_cache(tmp_path, mounts, monkeypatch):
    tmpfs, _ = mounts
    cache = tmpfs(tmp_path / "tiny-cache")
    (cache / "distilled").mkdir()
    fill(cache, 0)
    monkeypatch.setenv("ROME_BENCH_CACHE", str(cache))
    one_line_error(run(tmp_path / "out"), f"cannot write {cache}/distilled/",
                   "no space left on device (ENOSPC)")
    assert not (tmp_path / "out").exists()
    assert_nothing_half_written(tmp_path / "out", cache, tmp_path)


def test_write_errors_name_the_destination_not_the_temporary(tmp_path, monkeypatch):
    """Without a mount: a write that fails with ENOSPC half-way through the data."""
    import errno

    from rome_bench.core.storage import StorageError, atomic_torch_save

    target = tmp_path / "entry.pt"
    torch.save({"old": torch.zeros(1)}, target)
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError) as info:
        atomic_torch_save({"new": torch.ones(1000)}, target)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert str(info.value) == f"cannot write {target}: no space left on device (ENOSPC)"
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == [target]
    assert torch.equal(torch.load(target, weights_only=True)["old"], torch.zeros(1))
