"""Two ``rome-bench run`` processes at once (issue #22, item 3): on one cache with different
--out folders both finish with the records of a run alone and leave an intact cache; on one
--out folder the second refuses in one line naming the folder and the pid that holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rome_bench.core.catalog import METHODS
from rome_bench.core.records import read_records
from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import FolderInUseError, hold_folder
from rome_bench.pipeline import runner as pipeline
from rome_bench.pipeline.stages import checked_measurement

REPO = Path(__file__).resolve().parents[1]
DM_UNIT = {"all": {"iterations": 3, "lr_img": 1.0, "momentum_img": 0.5, "batch_real": 8,
                   "init": "real"}}

# runs the CLI with the test-only 'unit' preset and a 3-iteration DM; with $GATE set, every cell
# waits until that file exists, so the test decides when the processes start computing
DRIVER = """
import os, sys, time
sys.path.insert(0, {tests!r})
import conftest  # registers the 'unit' preset
from rome_bench.core.catalog import METHODS
from rome_bench.pipeline import runner
METHODS.entry("dm").meta["budgets"]["unit"] = {dm!r}
gate, cell = os.environ.get("GATE"), runner.run_cell
def gated(*args, **kwargs):
    while gate and not os.path.exists(gate):
        time.sleep(0.02)
    return cell(*args, **kwargs)
runner.run_cell = gated
from rome_bench.cli import main
if __name__ == "__main__":
    main()
"""


def outcome(records) -> list[tuple]:
    return sorted((r.method, r.ipc, r.repeat, r.threat_model, r.attack, r.mode, r.eps, r.accuracy,
                   r.n_images, r.n_attacked, r.outcomes) for r in records)


@pytest.fixture
def cli(tmp_path):
    """Start ``rome-bench run ARGS`` in a process of its own; returns (Popen, out folder)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(REPO / "tests"), dm=DM_UNIT))
    procs = []

    def start(out: Path, *args: str, gate: Path | None = None) -> subprocess.Popen:
        env = {**os.environ, "ROME_BENCH_JOBS": "1", "GATE": str(gate or "")}
        proc = subprocess.Popen([sys.executable, str(driver), "run", "--preset", "unit",
                                 "--attacks", "FGSM", "--mode", "untargeted", "--quiet",
                                 "--out", str(out), *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # a failed assertion must not leave a run behind
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def assert_intact(cache: Path) -> None:
    """Every entry loads and is whole; no temporaries, set-aside files or checkpoints remain."""
    files = [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert files
    for p in files:
        assert p.suffix in (".pt", ".json"), p
        if p.suffix == ".pt":
            torch.load(p, weights_only=True)
        elif p.parent.name == "measurements":
            m = json.loads(p.read_text())
            checked_measurement(m, m["attack"], m["mode"], m["n_images"])
    assert not list((cache / "checkpoints").iterdir())


@pytest.mark.slow
def test_two_runs_share_one_cache(cli, tmp_path, monkeypatch):
    gate = tmp_path / "go"
    cache = Path(os.environ["ROME_BENCH_CACHE"])
    a = cli(tmp_path / "a", "--method", "random,dm", "--ipc", "1,2", gate=gate)
    b = cli(tmp_path / "b", "--method", "dm,random", "--ipc", "1,2,3", gate=gate)
    wait_for(tmp_path / "a" / ".rome-bench.lock", a)
    wait_for(tmp_path / "b" / ".rome-bench.lock", b)
    # both have started and cleaned the cache of orphans; a's in-flight temporary (its pid is
    # alive) survives b's cleanup, a dead writer's goes
    (cache / "models").mkdir(parents=True, exist_ok=True)
    live = cache / "models" / f".x.pt.{a.pid}.abc123.tmp"
    live.write_bytes(b"being written")
    orphan = cache / "models" / f".y.pt.{dead_pid()}.def456.tmp"
    orphan.write_bytes(b"left by a killed run")
    c = cli(tmp_path / "c", "--method", "random", "--ipc", "5", "--attacks", "none")
    assert c.wait(timeout=300) == 0, c.communicate()[1]
    assert live.exists() and not orphan.exists()
    live.unlink()

    gate.touch()  # both compute the same cells (random and DM at IPC 1 and 2) at the same time
    for proc in (a, b):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "warning" not in err and "Traceback" not in err
    assert_intact(cache)

    # each run's records are those of a run alone on an empty cache
    monkeypatch.setitem(METHODS.entry("dm").meta["budgets"], "unit", DM_UNIT)
    monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path / "alone"))
    _, alone = pipeline.run(pipeline.RunConfig(
        methods=["random", "dm"], ipcs=[1, 2, 3], preset="unit", attacks="FGSM",
        modes="untargeted", out=str(tmp_path / "alone-run"), show_progress=False, jobs=1),
        echo=lambda s: None)
    got_a = read_records([tmp_path / "a" / "records.jsonl"])
    got_b = read_records([tmp_path / "b" / "records.jsonl"])
    assert outcome(got_b) == outcome(alone)
    assert outcome(got_a) == outcome(r for r in alone if r.ipc in (1, 2))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        p.name for p in (tmp_path / "alone-run").iterdir())  # no lock file left behind


@pytest.mark.slow
def test_a_second_run_on_the_same_out_folder_refuses(cli, tmp_path):
    gate = tmp_path / "go"
    out = tmp_path / "run"
    first = cli(out, "--method", "random", "--ipc", "1", gate=gate)
    wait_for(out / ".rome-bench.lock", first)
    second = cli(out, "--method", "random", "--ipc", "1")
    _, err = second.communicate(timeout=300)
    assert second.returncode != 0
    assert err.strip() == (f"rome-bench: error: output folder {out} is in use by another "
                           f"rome-bench run (pid {first.pid}, lock {out / '.rome-bench.lock'}); "
                           "wait for it to end or choose another --out")
    gate.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    records = read_records([out / "records.jsonl"])
    assert len(records) == 2 and not (out / ".rome-bench.lock").exists()  # clean + FGSM, once

    # the folder is free again; a lock file left by a killed run (dead pid, no flock) holds nothing
    (out / ".rome-bench.lock").write_text(f"{dead_pid()}\n")
    third = cli(out, "--method", "random", "--ipc", "1")
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    # the third run's rows replace the first run's for the same measurements (records.py)
    again = read_records([out / "records.jsonl"])
    assert len(again) == 2 and {r.run_id for r in again} != {r.run_id for r in records}
    assert not (out / ".rome-bench.lock").exists()


def test_hold_folder_is_exclusive_and_released(tmp_path):
    folder = tmp_path / "out"
    with hold_folder(folder):
        assert (folder / ".rome-bench.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderInUseError, match=f"pid {os.getpid()}"):
            with hold_folder(folder):
                pass
        assert isinstance(FolderInUseError("x"), RomeBenchError)
    assert not folder.exists()  # created for the block and left empty: removed
    folder.mkdir()
    (folder / "records.jsonl").write_text("")
    with hold_folder(folder):
        pass
    assert [p.name for p in folder.iterdir()] == ["records.jsonl"]


def test_file_lock_says_when_it_waits(tmp_path):
    import fcntl
    import threading

    from rome_bench.core.storage import file_lock

    path = tmp_path / "locks" / "x.lock"
    path.parent.mkdir()
    waited = []
    with open(path, "a+b") as held:  # another process's hold, as far as flock can tell
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)

        def on_wait():
            waited.append(True)
            threading.Timer(0.05, fcntl.flock, (held.fileno(), fcntl.LOCK_UN)).start()

        with file_lock(path, on_wait):
            pass
    assert waited == [True]
    with file_lock(path, on_wait=lambda: waited.append(False)):  # free: no waiting
        pass
    assert waited == [True]
