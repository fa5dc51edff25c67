"""Kill a benchmark run anywhere, many times, and check that nothing is lost or changed.

Runs a small grid once undisturbed, then again in a second cache and run folder while
SIGKILLing its whole process group (the run and its worker processes) at seeded random moments,
restarting the same command after each kill (alternately with ``--jobs 1`` and ``--jobs 2``),
and finally lets it finish. It then checks that

* ``records.jsonl`` holds the same rows in the same order as the undisturbed run's, except for
  the fields that say when and how fast (``run_id``, ``created``, ``seconds``);
* the accuracy tables are identical, the time-independent Table 1 columns (RR, I-RR) are
  identical, and every table file is exactly what ``write_tables`` makes of the run's records;
* the cache holds the same entries: bit-identical distilled sets and models, the same
  measurements (but their seconds), and no distillation checkpoint;
* no temporary file of an interrupted write is left in the cache or the run folder.

Run it directly (the documented full check, about 7 minutes on 2 busy cores)::

    python tests/kill_anywhere.py --kills 12 --seed 0

A failure prints what differs and the seed, so it reproduces; ``--keep DIR`` keeps the run
folders, caches and per-attempt logs. ``tests/test_kill_anywhere.py`` runs a reduced count in
CI.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# what a rerun legitimately changes in a record: when it was made and how long it took
TIME_FIELDS = ("run_id", "created", "seconds")
# Table 1 columns computed from accuracies only (CREI and I-CREI include the attack times)
TIMING_FREE = ("RR", "I-RR")


@dataclass
class Grid:
    """The run the test disturbs: ``quick``, three methods, IPC 1, two models, two attacks."""

    methods: str = "random,dm,dc"
    attacks: str = "FGSM,PGD"
    repeats: int = 2
    test_subset: int = 50

    def args(self, out: Path, jobs: int) -> list[str]:
        return [sys.executable, "-m", "rome_bench.cli", "run", "--preset", "quick", "--method",
                self.methods, "--ipc", "1", "--repeats", str(self.repeats), "--attacks",
                self.attacks, "--test-subset", str(self.test_subset), "--quiet",
                "--out", str(out), "--jobs", str(jobs)]


@dataclass
class Attempt:
    """One start of the run: how long it was left alone and what happened."""

    jobs: int
    delay: float
    killed: bool
    returncode: int | None
    log: Path


@dataclass
class Report:
    """The outcome: the attempts made and every difference found (empty = passed)."""

    seed: int
    attempts: list[Attempt] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    removed_temporaries: int = 0
    resumed_distillations: int = 0

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)

    def summary(self) -> str:
        lines = [f"seed {self.seed}: {self.kills} kills in {len(self.attempts)} attempts "
                 f"(jobs {'/'.join(str(a.jobs) for a in self.attempts)}); "
                 f"{self.resumed_distillations} distillation(s) resumed from a checkpoint, "
                 f"{self.removed_temporaries} orphaned temporary file(s) removed on restart"]
        for i, a in enumerate(self.attempts):
            what = (f"killed after {a.delay:.1f} s" if a.killed else
                    "the last start, run to the end" if a.delay == 0 else
                    f"exited {a.returncode} before the kill at {a.delay:.1f} s")
            lines.append(f"  attempt {i}: jobs {a.jobs}, {what}")
        lines += ["PASSED"] if not self.problems else ["FAILED:", *("  " + p for p in self.problems)]
        return "\n".join(lines)


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ROME_BENCH_JOBS"}
    env["ROME_BENCH_CACHE"] = str(cache)
    return env


def _start(args: list[str], cache: Path, log: Path) -> tuple[subprocess.Popen, list[float]]:
    """Start ``args`` as the leader of a new process group; its output goes to ``log``. The
    returned list receives the time of the first output line (the plan: startup is over)."""
    out = log.open("wb")
    proc = subprocess.Popen(args, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    first: list[float] = []

    def copy() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not first:
                first.append(time.monotonic())
            out.write(line)
        out.close()

    threading.Thread(target=copy, daemon=True).start()
    return proc, first


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    # workers die with their group; wait until none is left so the next attempt starts clean
    for _ in range(400):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def run_to_end(grid: Grid, out: Path, cache: Path, jobs: int, log: Path) -> tuple[float, float]:
    """Run the grid undisturbed; returns (startup seconds, total seconds). Raises on failure."""
    started = time.monotonic()
    proc, first = _start(grid.args(out, jobs), cache, log)
    code = proc.wait()
    total = time.monotonic() - started
    time.sleep(0.2)  # let the copying thread finish the log
    if code != 0:
        raise RuntimeError(f"run exited {code}; see {log}:\n{log.read_text()[-2000:]}")
    startup = (first[0] - started) if first else 0.0
    return startup, total


def disturb(grid: Grid, out: Path, cache: Path, logs: Path, kills: int, seed: int,
            startup: float, work: float, report: Report) -> None:
    """Start, kill and restart the grid until ``kills`` kills landed, then let it finish.

    Each attempt is killed after a delay drawn from ``[0.2, startup + 2 * work / kills]``
    seconds: some kills land while the process starts, most while it computes, spread so that
    ``kills`` attempts together cover about the whole run.
    """
    rng = random.Random(seed)
    high = startup + 2.0 * work / kills
    attempt = 0
    while report.kills < kills and attempt < 4 * kills:
        jobs = 1 + attempt % 2
        delay = rng.uniform(0.2, high)
        log = logs / f"attempt_{attempt:02d}.log"
        proc, _ = _start(grid.args(out, jobs), cache, log)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        alive = proc.poll() is None
        _kill_group(proc)
        report.attempts.append(Attempt(jobs, delay, alive, None if alive else proc.returncode, log))
        if not alive and proc.returncode != 0:
            report.problems.append(f"attempt {attempt} (jobs {jobs}) failed with exit status "
                                   f"{proc.returncode}; see {log}")
            return
        attempt += 1
    jobs = 1 + attempt % 2
    log = logs / "final.log"
    run_to_end(grid, out, cache, jobs, log)
    report.attempts.append(Attempt(jobs, 0.0, False, 0, log))
    texts = [p.read_text(errors="replace") for p in logs.glob("attempt_*.log")]
    texts.append(log.read_text(errors="replace"))
    report.removed_temporaries = sum(t.count("left by an interrupted write") for t in texts)
    report.resumed_distillations = sum(t.count("  resuming ") for t in texts)


# -- comparisons ---------------------------------------------------------------------------

def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def _label(row: dict) -> str:
    return (f"{row.get('method')} ipc {row.get('ipc')} model {row.get('repeat')} "
            f"{row.get('attack')} {row.get('mode')} ({row.get('threat_model')})")


def compare_records(ref: Path, got: Path, show: int = 6) -> list[str]:
    """The rows that differ (their first ``show``, and how many), ignoring TIME_FIELDS."""
    a, b = _rows(ref), _rows(got)
    problems = []
    if len(a) != len(b):
        problems.append(f"records.jsonl: {len(b)} rows, the undisturbed run has {len(a)}")
    differing = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            diff = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            detail = ", ".join(f"{k}: {x.get(k)!r} -> {y.get(k)!r}" for k in diff
                               if k not in ("outcomes", "versions", "environment"))
            differing.append(f"records.jsonl row {i} ({_label(x)}) differs in {diff}"
                             + (f": {detail}" if detail else ""))
    problems += differing[:show]
    if len(differing) > show:
        problems.append(f"... {len(differing) - show} more differing rows")
    return problems


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def compare_tables(ref: Path, got: Path) -> list[str]:
    """Accuracy tables equal; Table 1's RR and I-RR equal; every table file regenerates
    exactly from the run's own records (so the tables describe the final records)."""
    from rome_bench.core.records import read_records
    from rome_bench.reporting.tables import write_tables

    problems = []
    names = sorted(p.name for p in ref.glob("*.csv"))
    got_names = sorted(p.name for p in got.glob("*.csv"))
    if names != got_names:
        problems.append(f"table files {got_names}, the undisturbed run wrote {names}")
    for name in set(names) & set(got_names):
        a, b = _csv(ref / name), _csv(got / name)
        if name.startswith("table1_"):
            cols = [c for c in (a[0] if a else {}) if c.split("_", 1)[-1] in TIMING_FREE
                    or c in ("dataset", "method")]
            a = [{c: r[c] for c in cols} for r in a]
            b = [{c: r.get(c) for c in cols} for r in b]
        if a != b:
            problems.append(f"{name} differs from the undisturbed run's:\n    {a}\n    {b}")
    with tempfile.TemporaryDirectory() as tmp:
        write_tables(read_records([got / "records.jsonl"]), Path(tmp))
        for fresh in sorted(Path(tmp).iterdir()):
            written = got / fresh.name
            if not written.exists() or written.read_bytes() != fresh.read_bytes():
                problems.append(f"{written} is not what the run's records give")
    return problems


def _load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def compare_caches(ref: Path, got: Path) -> list[str]:
    """Same cache entries; distilled sets and models bit-identical; measurements equal but for
    their seconds; no distillation checkpoint left."""
    import torch

    problems = []
    leftovers = sorted(p.name for p in (got / "checkpoints").glob("*")) \
        if (got / "checkpoints").is_dir() else []
    if leftovers:
        problems.append(f"distillation checkpoints left in the cache: {leftovers}")
    for kind in ("distilled", "models", "measurements"):
        a = {p.name for p in (ref / kind).glob("*")}
        b = {p.name for p in (got / kind).glob("*")}
        if a != b:
            problems.append(f"cache/{kind}: extra {sorted(b - a)}, missing {sorted(a - b)}")
        for name in sorted(a & b):
            x, y = ref / kind / name, got / kind / name
            if kind == "measurements":
                same = ({k: v for k, v in json.loads(x.read_text()).items() if k != "seconds"}
                        == {k: v for k, v in json.loads(y.read_text()).items() if k != "seconds"})
            elif kind == "distilled":
                dx, dy = _load(x), _load(y)
                same = all(torch.equal(dx[k], dy[k]) for k in ("images", "labels"))
            else:
                mx, my = _load(x), _load(y)
                same = mx.keys() == my.keys() and all(torch.equal(mx[k], my[k]) for k in mx)
            if not same:
                problems.append(f"cache/{kind}/{name} differs from the undisturbed run's")
    return problems


def stray_temporaries(*folders: Path) -> list[str]:
    """Temporary files of atomic writes (``core/storage.py``: ``.<name>.<pid>.<random>.tmp``)
    or any other ``*.tmp`` left below ``folders``."""
    return [f"stray temporary file {p}" for folder in folders for p in sorted(folder.rglob("*.tmp"))]


def kill_anywhere(kills: int, seed: int, workdir: Path, grid: Grid | None = None,
                  echo=print) -> Report:
    """The whole check in ``workdir``; returns the report (``report.problems`` empty = passed)."""
    grid = grid or Grid()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report = Report(seed)
    echo(f"undisturbed run (jobs 1) in {workdir / 'reference'} ...")
    startup, total = run_to_end(grid, workdir / "reference", workdir / "cache-reference", 1,
                                logs / "reference.log")
    echo(f"  {total:.0f} s ({startup:.1f} s to the plan); now {kills} kills ...")
    disturb(grid, workdir / "disturbed", workdir / "cache-disturbed", logs, kills, seed,
            startup, max(total - startup, 1.0), report)
    if report.problems:
        return report
    if report.kills < kills:
        report.problems.append(f"only {report.kills} of {kills} kills landed while the run was "
                               "alive")
    report.problems += compare_records(workdir / "reference" / "records.jsonl",
                                       workdir / "disturbed" / "records.jsonl")
    report.problems += compare_tables(workdir / "reference", workdir / "disturbed")
    report.problems += compare_caches(workdir / "cache-reference", workdir / "cache-disturbed")
    report.problems += stray_temporaries(workdir / "disturbed", workdir / "cache-disturbed")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12, help="kills that must land (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--test-subset", type=int, default=Grid.test_subset,
                        help="test images attacked (default %(default)s)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    grid = Grid(test_subset=args.test_subset)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = kill_anywhere(args.kills, args.seed, args.keep, grid)
    else:
        with tempfile.TemporaryDirectory(prefix="kill-anywhere-") as tmp:
            report = kill_anywhere(args.kills, args.seed, Path(tmp), grid)
    print(report.summary())
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
