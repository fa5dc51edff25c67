"""The Ray executor on a real local Ray instance (no mocks): same records as the local
executor, a worker killed mid-retraining, a driver killed mid-run, the shared cache and its lock.

Tests that need Ray skip with a reason when it is not installed (``pip install -e ".[ray]"``;
CI installs it). A CPU task uses one torch thread, so the local runs it is compared with use
one thread too: on a CPU, floating-point sums depend on how many threads share them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rome_bench.cli import main
from rome_bench.core.records import read_records
from rome_bench.pipeline import runner as pipeline
from rome_bench.pipeline.config import PlanError, plan_run
from rome_bench.pipeline.ray_executor import (
    RAY_MISSING,
    ExecutorError,
    blind_nodes_message,
    reachable,
    task_graph,
)

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='ray is not installed: pip install -e ".[ray]" '
                               "to test the Ray executor")
# what may differ between two runs of the same measurement: the run, when, how long it took
VOLATILE = {"run_id", "created", "seconds"}


def grid(tmp_path: Path, name: str, **kw) -> pipeline.RunConfig:
    """The small grid of the tests: quick preset, IPC 1, FGSM on 50 test images."""
    base = dict(methods=["random", "dm"], preset="quick", ipcs=[1], repeats=2, attacks="FGSM",
                test_subset=50, out=str(tmp_path / name), show_progress=False)
    base.update(kw)
    return pipeline.RunConfig(**base)


def measurements(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh local Ray instance with 2 CPUs for the module's tests."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The undisturbed run of the grid (with transfer) by the local executor, in this process
    with one torch thread like a Ray CPU task, on a cache of its own: its measurements."""
    folder = tmp_path_factory.mktemp("reference")
    before_threads, before_cache = torch.get_num_threads(), os.environ.get("ROME_BENCH_CACHE")
    torch.set_num_threads(1)
    os.environ["ROME_BENCH_CACHE"] = str(folder / "cache")
    try:
        plan, _ = pipeline.run(grid(folder, "local", jobs=1, settings="white-box,transfer"),
                               echo=lambda s: None)
    finally:
        torch.set_num_threads(before_threads)
        if before_cache is None:
            os.environ.pop("ROME_BENCH_CACHE", None)
        else:
            os.environ["ROME_BENCH_CACHE"] = before_cache
    return measurements(plan.out / "records.jsonl")


def white_box(rows: list[dict], method: str) -> list[dict]:
    return [r for r in rows if r["setting"] == "white-box" and r["method"] == method]


# -- without Ray ------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", [["run", "--method", "random"],
                                  ["evaluate", "--distilled", "x.pt"]])
def test_without_ray_the_executor_is_a_one_line_error(verb, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = CliRunner().invoke(main, [*verb, "--executor", "ray", "--attacks", "none",
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert res.stderr == f"rome-bench: error: {RAY_MISSING}\n"
    assert 'pip install -e ".[ray]"' in res.stderr
    assert not (tmp_path / "run").exists()


def test_executor_options_are_checked_when_planning(tmp_path):
    with pytest.raises(PlanError, match="unknown executor 'dask'"):
        plan_run(grid(tmp_path, "x", executor="dask"))
    for bad in (0, -1, 1.5):
        with pytest.raises(PlanError, match="--gpus-per-task"):
            plan_run(grid(tmp_path, "x", executor="ray", gpus_per_task=bad))
    plan = plan_run(grid(tmp_path, "x", executor="ray", device="cpu"))
    assert "Ray tasks (1 CPU each)" in plan.describe()
    plan = plan_run(grid(tmp_path, "x", executor="ray", device="cuda", gpus_per_task=0.25))
    assert "Ray tasks (0.25 GPU each)" in plan.describe()


def test_task_graph_has_a_distillation_per_cell_and_a_task_per_model(tmp_path):
    plan = plan_run(grid(tmp_path, "x", methods=["random", "full", "dm"], ipcs=[1, 10],
                         repeats=3, settings="white-box,transfer"))
    graph = task_graph(plan)
    # full (the whole training set) is not distilled; 5 cells x 3 models; a surrogate per model
    assert len(plan.cells) == 5 and len(graph.distill) == 4
    assert len(graph.models) == 15 and graph.transfer == 15
    assert graph.models[:3] == [(0, 0), (0, 1), (0, 2)]  # plan order: cell, then model
    assert task_graph(plan_run(grid(tmp_path, "x", first_repeat=1))).models == [(0, 1), (1, 1)]


def test_an_unreachable_or_malformed_address_fails_at_once(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ExecutorError, match=f"cannot reach Ray at 127.0.0.1:{port}"):
            reachable(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ExecutorError, match="--address takes auto, local or HOST:PORT"):
        reachable("head-node")
    for fine in (None, "auto", "local", "ray://head:10001"):
        reachable(fine)  # left to Ray


def test_blind_nodes_error_names_the_hosts_and_the_fix():
    msg = blind_nodes_message(Path("/scratch/cache"), ["node2", "node3", "node2"])
    assert "node2, node3" in msg and "/scratch/cache" in msg and "ROME_BENCH_CACHE" in msg
    assert "\n" not in msg


# -- on a real local Ray instance ------------------------------------------------------------
@needs_ray
@pytest.mark.slow
def test_ray_and_local_executors_write_the_same_records(ray_cluster, reference, tmp_path):
    settings = "white-box,transfer"  # transfer: one task per surrogate, merged back in order
    plan, records = pipeline.run(grid(tmp_path, "ray", executor="ray", settings=settings),
                                 echo=lambda s: None)
    got = measurements(plan.out / "records.jsonl")
    assert got == reference
    assert {r["setting"] for r in got} == {"white-box", "transfer"}
    assert {(r["method"], r["repeat"]) for r in got} == {(m, k) for m in ("random", "dm")
                                                         for k in (0, 1)}
    assert len(records) == len(got)
    # the tasks filled the run's cache (the test's own): two distilled sets and four models
    cache = Path(os.environ["ROME_BENCH_CACHE"])
    assert len(list((cache / "distilled").glob("*.pt"))) == 2
    assert len(list((cache / "models").glob("*.pt"))) == 4


def ray_processes(title: str) -> list[int]:
    """Pids of Ray workers whose process title starts with ``ray::<title>``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(f"ray::{title}".encode()):
            pids.append(int(entry.name))
    return pids


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers through /proc")
def test_a_worker_killed_while_retraining_is_retried_with_the_same_records(
        ray_cluster, reference, tmp_path):
    cache = Path(os.environ["ROME_BENCH_CACHE"])
    killed: dict[str, int] = {}

    def kill_first_retraining() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = ray_processes("retrain+attack random")
            if pids:
                # retraining takes seconds: no model may be finished when the kill lands
                killed["models"] = len(list((cache / "models").glob("*.pt")))
                os.kill(pids[0], signal.SIGKILL)
                killed["pid"] = pids[0]
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_first_retraining, daemon=True)
    watcher.start()
    plan, _ = pipeline.run(grid(tmp_path, "ray", methods=["random"], executor="ray"),
                           echo=lambda s: None)
    watcher.join()
    assert killed.get("pid"), "no retraining task was seen running"
    assert killed["models"] == 0, "the kill should land while retraining"
    assert measurements(plan.out / "records.jsonl") == white_box(reference, "random")
    assert len(list((cache / "models").glob("*.pt"))) == 2
    assert not list(cache.rglob("*.tmp"))


def checkpoint_iteration(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True)["iteration"])
    except Exception:  # noqa: BLE001 - missing, or replaced while being read
        return None


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers through /proc")
def test_a_worker_killed_while_distilling_resumes_from_the_checkpoint(ray_cluster, reference,
                                                                       tmp_path):
    cache = Path(os.environ["ROME_BENCH_CACHE"])
    seen: dict[str, object] = {"after": []}

    def kill_then_watch() -> None:
        deadline = time.time() + 180
        while time.time() < deadline and "killed_at" not in seen:
            pids = ray_processes("distill dm")
            ckpt = next(iter((cache / "checkpoints").glob("*.pt")), None)
            done = checkpoint_iteration(ckpt) if ckpt is not None and pids else None
            if done is not None and done >= 6:  # several checkpoints in: a restart would show
                os.kill(pids[0], signal.SIGKILL)
                seen["killed_at"], seen["path"] = done, ckpt
            time.sleep(0.01)
        last = seen.get("killed_at")
        while time.time() < deadline and Path(str(seen.get("path"))).exists():
            now = checkpoint_iteration(Path(str(seen["path"])))
            if now is not None and now != last:
                seen["after"].append(now)  # the retried task's checkpoints
                last = now
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_then_watch, daemon=True)
    watcher.start()
    plan, _ = pipeline.run(grid(tmp_path, "ray", methods=["dm"], executor="ray"),
                           echo=lambda s: None)
    watcher.join()
    assert "killed_at" in seen, "the distillation was not caught between two checkpoints"
    # the retry went on from the checkpoint (a restart would write a lower iteration first)
    assert seen["after"] and min(seen["after"]) > seen["killed_at"], seen
    assert measurements(plan.out / "records.jsonl") == white_box(reference, "dm")
    assert not list((cache / "checkpoints").glob("*.pt"))  # removed once the set was saved


def descendants(pid: int) -> set[int]:
    """Pids of every process below ``pid`` (through /proc parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through /proc")
def test_a_driver_killed_mid_run_resumes_from_the_cache(reference, tmp_path):
    cache = Path(os.environ["ROME_BENCH_CACHE"])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # one cell, four models: their tasks wait on one distillation, then start in plan order;
    # --address local: a Ray instance of the driver's own, which dies with it
    args = [sys.executable, "-m", "rome_bench.cli", "run", "--method", "random", "--ipc", "1",
            "--repeats", "4", "--preset", "quick", "--attacks", "FGSM", "--test-subset", "50",
            "--executor", "ray", "--address", "local", "--quiet"]
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    records = tmp_path / "killed" / "records.jsonl"
    below: set[int] = set()
    deadline = time.time() + 180
    while time.time() < deadline and not (records.exists() and records.read_text()):
        below |= descendants(proc.pid)
        time.sleep(0.05)
    below |= descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    models = cache / "models"
    finished = {p: p.stat().st_mtime_ns for p in models.glob("*.pt")}
    # the driver's Ray instance (its own processes and its workers) goes down with it
    deadline = time.time() + 60
    while time.time() < deadline and any(alive(p) for p in below):
        time.sleep(0.2)
    left = [p for p in below if alive(p)]
    for p in left:  # clean up before failing: these are this test's processes
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes of the killed driver still running: {left}"

    killed = read_records([records])  # whole lines only, never a truncated record
    assert killed and len(finished) < 4, "the kill should land mid-run"
    res = subprocess.run(args + ["--out", str(tmp_path / "resumed")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = measurements(tmp_path / "resumed" / "records.jsonl")
    assert [r["repeat"] for r in resumed] == [k for k in range(4) for _ in range(3)]
    # models #0 and #1 are those of the undisturbed reference run
    assert resumed[:6] == white_box(reference, "random")
    # what the killed run finished came from the cache: identical, timings included
    before = {(r.repeat, r.attack, r.mode): (r.accuracy, r.seconds) for r in killed}
    again = read_records([tmp_path / "resumed" / "records.jsonl"])
    assert all(before[(r.repeat, r.attack, r.mode)] == (r.accuracy, r.seconds)
               for r in again if (r.repeat, r.attack, r.mode) in before)
    # models finished before the kill were not trained again; the others were trained once
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())
    assert len(list(models.glob("*.pt"))) == 4
    assert not list(cache.rglob("*.tmp"))


@needs_ray
@pytest.mark.slow
def test_the_expert_buffer_lock_excludes_other_ray_workers(ray_cluster, tmp_path):
    def hold_lock(path: str, log: str, seconds: float) -> None:
        # defined here so that Ray ships it by value (workers cannot import tests/)
        from rome_bench.core.storage import file_lock

        with file_lock(path):
            start = time.time()
            time.sleep(seconds)
            end = time.time()
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {start} {end}\n")

    lock, log = tmp_path / "experts" / ".lock", tmp_path / "held.txt"
    task = ray_cluster.remote(hold_lock).options(num_cpus=1)
    ray_cluster.get([task.remote(str(lock), str(log), 0.5) for _ in range(3)])
    rows = [line.split() for line in log.read_text().splitlines()]
    spans = sorted((float(start), float(end)) for _, start, end in rows)
    assert len(spans) == 3 and len({pid for pid, _, _ in rows}) >= 2  # several processes
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans


@needs_ray
@pytest.mark.slow
def test_evaluate_checkpoints_on_ray_gives_the_local_records(ray_cluster, tmp_path, pool_dir,
                                                             cifar10_root):
    """Given models: one attack task per checkpoint and one transfer task per surrogate."""
    pairs = [(m, str(next(pool_dir.glob(f"{m}_ConvNet_CIFAR10_50_*.pth")))) for m in ("DC", "DM")]

    def evaluate(executor: str) -> list[dict]:
        config = pipeline.RunConfig(methods=[], dataset="cifar10", data_root=str(cifar10_root),
                                    preset="unit", attacks="FGSM", test_subset=10,
                                    settings="white-box,transfer", device="cpu",
                                    out=str(tmp_path / executor), show_progress=False,
                                    executor=executor)
        plan, _ = pipeline.evaluate_checkpoints(config, pairs, echo=lambda s: None)
        return measurements(plan.out / "records.jsonl")

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = evaluate("local")
    finally:
        torch.set_num_threads(before)
    assert evaluate("ray") == local
    assert {(r["source_model"], r["method"]) for r in local if r["setting"] == "transfer"} == {
        ("DC", "DC"), ("DC", "DM"), ("DM", "DC"), ("DM", "DM")}
