"""End-to-end pipeline: records, determinism, cache, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rome_bench.cli import main
from rome_bench.core.cache import Cache
from rome_bench.core.records import read_records
from rome_bench.data.datasets import load_dataset
from rome_bench.models import training
from rome_bench.pipeline import config as plan_config
from rome_bench.pipeline import runner as pipeline
from rome_bench.pipeline import stages
from rome_bench.pipeline.config import PlanError, plan_run, resolve_jobs
from rome_bench.pipeline.stages import load_test_set, run_cell

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"run_id", "method", "dataset", "ipc", "seed", "repeat", "arch", "preset", "threat_model",
          "setting", "source_model", "mode", "attack", "eps", "accuracy", "seconds", "n_images",
          "protocol", "created", "versions", "outcomes", "n_attacked", "environment"}


def config(tmp_path, **kw):
    base = dict(methods=["random", "full"], preset="unit", attacks="FGSM,DeepFool",
                out=str(tmp_path / "run"), show_progress=False)
    base.update(kw)
    return pipeline.RunConfig(**base)


def test_records_have_the_design_fields_and_cover_every_cell(tmp_path):
    plan, records = pipeline.run(config(tmp_path), echo=lambda s: None)
    rows = [json.loads(line) for line in (plan.out / "records.jsonl").read_text().splitlines()]
    assert rows and all(set(r) == FIELDS for r in rows)
    for r in rows:  # every measurement says which images survived and how many were attacked
        survived = records[0].__class__.from_dict(r).outcome_mask()
        assert survived.sum() == round(r["accuracy"] * r["n_images"] / 100)
        clean = next(c for c in rows if c["mode"] == "clean" and c["method"] == r["method"]
                     and c["ipc"] == r["ipc"])
        assert r["n_attacked"] == (r["n_images"] if r["mode"] == "clean"
                                   else round(clean["accuracy"] * r["n_images"] / 100))
    cells = {(r["method"], r["ipc"]) for r in rows}
    assert cells == {("random", 1), ("random", 2), ("full", 0)}
    modes = {(r["attack"], r["mode"]) for r in rows if r["method"] == "random" and r["ipc"] == 1}
    # DeepFool has no targeted mode, so it is left out of targeted measurements
    assert modes == {("clean", "clean"), ("FGSM", "targeted"), ("FGSM", "untargeted"),
                     ("DeepFool", "untargeted")}
    assert all(r["preset"] == "unit" and r["threat_model"] == "standard" for r in rows)
    assert (plan.out / "tables.md").exists() and (plan.out / "table1_standard_unit.csv").exists()


def test_same_seed_same_records_and_cache_skips_work(tmp_path, monkeypatch):
    _, first = pipeline.run(config(tmp_path, methods=["random"], out=str(tmp_path / "a"), fresh=True),
                            echo=lambda s: None)
    _, again = pipeline.run(config(tmp_path, methods=["random"], out=str(tmp_path / "b"), fresh=True),
                            echo=lambda s: None)
    key = lambda r: (r.method, r.ipc, r.attack, r.mode)  # noqa: E731
    assert [(key(r), r.accuracy) for r in first] == [(key(r), r.accuracy) for r in again]

    def no_training(*a, **k):
        raise AssertionError("a cached run must not retrain")

    monkeypatch.setattr(training, "train_model", no_training)
    monkeypatch.setattr(stages, "run_attack", no_training)
    _, cached = pipeline.run(config(tmp_path, methods=["random"], out=str(tmp_path / "c")),
                             echo=lambda s: None)
    assert [(key(r), r.accuracy, r.seconds) for r in cached] == [
        (key(r), r.accuracy, r.seconds) for r in again]


def test_different_seed_changes_the_random_baseline(tmp_path):
    _, a = pipeline.run(config(tmp_path, methods=["random"], attacks="none", seed=0,
                               out=str(tmp_path / "a")), echo=lambda s: None)
    _, b = pipeline.run(config(tmp_path, methods=["random"], attacks="none", seed=1,
                               out=str(tmp_path / "b")), echo=lambda s: None)
    cache_sets = sorted((Path(os.environ["ROME_BENCH_CACHE"]) / "distilled").glob("*.pt"))
    assert len(cache_sets) == 4  # 2 IPCs x 2 seeds
    sets = [torch.load(p, weights_only=True)["images"] for p in cache_sets]
    assert not all(torch.equal(sets[0], s) for s in sets[1:] if s.shape == sets[0].shape)


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers the 'unit' preset
from rome_bench.cli import main
if __name__ == "__main__":  # worker processes (spawned) import this file again
    main()
"""


def _driver(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(tests=str(REPO / "tests")))
    return path


def test_killed_run_resumes_from_the_cache(tmp_path):
    env = {**os.environ, "ROME_BENCH_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, str(_driver(tmp_path)), "run", "--method", "random", "--ipc",
            "1,2,3,4,5,6", "--preset", "unit", "--attacks", "FGSM", "--quiet"]
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "killed" / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (records.exists() and records.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = read_records([records])  # whole lines only, never a truncated record
    done_cells = {r.ipc for r in killed}
    assert 1 in done_cells and len(done_cells) < 6, "the kill should land mid-run"
    models_before = set((tmp_path / "cache" / "models").glob("*.pt"))
    subprocess.run(args + ["--out", str(tmp_path / "resumed")], env=env, check=True,
                   capture_output=True)
    resumed = read_records([tmp_path / "resumed" / "records.jsonl"])
    assert {r.ipc for r in resumed} == {1, 2, 3, 4, 5, 6}
    # finished cells came from the cache: identical measurements, including the timings
    same = {(r.ipc, r.attack, r.mode): (r.accuracy, r.seconds) for r in killed}
    for r in resumed:
        if (r.ipc, r.attack, r.mode) in same:
            assert same[(r.ipc, r.attack, r.mode)] == (r.accuracy, r.seconds)
    models_after = set((tmp_path / "cache" / "models").glob("*.pt"))
    assert models_before <= models_after and len(models_after) == 6
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_csv_table_refuses_mixed_threat_models(tmp_path):
    plan, _ = pipeline.run(config(tmp_path, methods=["random"], ipcs=[1], attacks="FGSM",
                                  threat_models="standard,beard-compat"), echo=lambda s: None)
    res = CliRunner().invoke(main, ["table", str(plan.out), "--format", "csv"])
    assert res.exit_code != 0 and "choose with --threat-model" in res.stderr
    md = CliRunner().invoke(main, ["table", str(plan.out)]).output
    assert "threat model: standard" in md and "threat model: beard-compat" in md
    res = CliRunner().invoke(main, ["table", str(plan.out), "--format", "csv", "--threat-model",
                                    "standard"])
    assert res.exit_code == 0 and res.output.startswith("dataset,method,targeted_RR")


@pytest.mark.slow
def test_default_preset_end_to_end_and_rerun_from_cache(tmp_path):
    """The README's main job on the default preset and data (with its default worker count),
    for a representative subset of methods; `--method all` itself is timed in the README."""
    args = [sys.executable, "-m", "rome_bench.cli", "run", "--method", "random,full,dm", "--quiet"]
    env = {**os.environ, "ROME_BENCH_JOBS": "auto"}
    res = subprocess.run(args + ["--out", str(tmp_path / "run")], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Robustness (Table 1 layout)" in res.stdout and "Full-size" in res.stdout
    assert "DM" in res.stdout
    cache = Path(os.environ["ROME_BENCH_CACHE"])

    def snapshot():
        return {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}

    before = snapshot()
    assert any(p.parent.name == "models" for p in before)
    res2 = subprocess.run(args + ["--out", str(tmp_path / "run2")], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert res2.returncode == 0
    assert snapshot() == before  # the rerun recomputed and rewrote nothing: all from the cache
    first = read_records([tmp_path / "run" / "records.jsonl"])
    second = read_records([tmp_path / "run2" / "records.jsonl"])
    assert [(r.method, r.ipc, r.attack, r.mode, r.accuracy) for r in first] == [
        (r.method, r.ipc, r.attack, r.mode, r.accuracy) for r in second]


def test_code_version_covers_shared_helper_modules():
    from rome_bench.core.cache import code_version, own_dependencies
    from rome_bench.methods.contract import METHODS

    fn = METHODS.get("idm")
    deps = own_dependencies(__import__(fn.__module__, fromlist=["x"]))
    assert "rome_bench.methods.network_queue" in deps and "rome_bench.methods.factorized" in deps
    assert code_version(fn) and code_version(fn) != code_version(METHODS.get("random"))



def test_code_version_ignores_sibling_methods_registered_by_the_package():
    # rome_bench.methods imports its submodules (rome, ...) to register them; that must not make
    # the random baseline's cache depend on ROME's or the DM helpers' source
    from rome_bench.core.cache import own_dependencies
    from rome_bench.methods.contract import METHODS

    fn = METHODS.get("random")
    deps = own_dependencies(__import__(fn.__module__, fromlist=["x"]))
    assert "rome_bench.methods.contract" in deps and "rome_bench.data.datasets" in deps
    assert "rome_bench.methods.rome" not in deps
    assert "rome_bench.methods.distribution_matching" not in deps

def test_parallel_workers_write_the_same_records_as_one_process(tmp_path):
    # two worker processes (spawned: the 'unit' preset travels inside the pickled plan)
    _, serial = pipeline.run(config(tmp_path, methods=["random", "full"], attacks="FGSM",
                                    out=str(tmp_path / "serial"), jobs=1), echo=lambda s: None)
    plan, parallel = pipeline.run(config(tmp_path, methods=["random", "full"], attacks="FGSM",
                                         out=str(tmp_path / "parallel"), jobs=2, fresh=True),
                                  echo=lambda s: None)
    assert plan.jobs == 2
    key = lambda r: (r.method, r.ipc, r.attack, r.mode)  # noqa: E731
    # same cells in the same (plan) order, same numbers, bit for bit (the per-image outcomes):
    # workers compute with the serial loop's thread count, so jobs never changes results
    assert [key(r) for r in parallel] == [key(r) for r in serial]
    untimed = lambda r: {k: v for k, v in vars(r).items()  # noqa: E731
                         if k not in ("run_id", "created", "seconds")}
    assert [untimed(r) for r in parallel] == [untimed(r) for r in serial]
    assert {r.environment["threads"] for r in parallel} == {plan.threads} == {1}
    on_disk = read_records([plan.out / "records.jsonl"])
    assert [key(r) for r in on_disk] == [key(r) for r in serial]


def test_jobs_auto_is_one_per_core_on_cpu_and_one_on_gpu():
    assert resolve_jobs(None, "cuda", 10) == 1
    assert 1 <= resolve_jobs(None, "cpu", 10) <= 4
    assert resolve_jobs(None, "cpu", 1) == 1
    assert resolve_jobs(3, "cpu", 2) == 2
    with pytest.raises(PlanError):
        resolve_jobs(0, "cpu", 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PDEATHSIG")
def test_killing_a_parallel_run_leaves_no_worker_behind(tmp_path):
    env = {**os.environ, "ROME_BENCH_CACHE": str(tmp_path / "cache"), "ROME_BENCH_JOBS": "2"}
    # random's cell ends within seconds (its records are then written: plan order); full-size
    # training on the mini set keeps the other worker busy for about a minute
    args = [sys.executable, str(_driver(tmp_path)), "run", "--method", "random,full", "--attacks",
            "none", "--quiet", "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = tmp_path / "killed" / "records.jsonl"
    for _ in range(3000):  # up to ~150 s on a loaded machine
        if (records.exists() and records.read_text().strip()) or proc.poll() is not None:
            break
        time.sleep(0.05)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    workers = [int(c) for c in children
               if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert proc.poll() is None and workers, "the kill should land while full-size trains"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    for _ in range(200):  # ~10 s: far less than the cell in progress would take
        if not any(alive(p) for p in workers):
            break
        time.sleep(0.05)
    assert not any(alive(p) for p in workers)


def test_worker_style_runs_report_progress_as_lines(tmp_path):
    # worker processes cannot draw bars, so they log each checkpoint and each retrained model
    from rome_bench import DistilledSet
    from rome_bench.methods.contract import METHODS, register_method

    @register_method("test-checkpointing", description="first images, checkpointed twice",
                     in_all=False, budgets={"unit": {"all": {"iterations": 4}}})
    def first_images(train, ipc, cfg):
        for it in (2, 4):
            cfg.checkpoint({"step": torch.tensor(it)}, it)
        idx = torch.cat([train.indices_of(c)[:ipc] for c in range(train.num_classes)])
        return DistilledSet(train.images[idx], train.labels[idx])

    lines: list[str] = []
    try:
        plan = plan_run(config(tmp_path, methods=["test-checkpointing"], ipcs=[1],
                                        attacks="none", progress_lines=True))
        train = load_dataset(plan.dataset.name, "train", None, False)
        test = load_test_set(plan)
        run_cell(plan.cells[0], train, test, plan, Cache(tmp_path / "cache"),
                          lines.append)
    finally:
        METHODS.remove(METHODS.entry("test-checkpointing"))
    assert [line.split(" checkpointed")[0] for line in lines[:2]] == [
        "  test-checkpointing IPC 1: iteration 2/4", "  test-checkpointing IPC 1: iteration 4/4"]
    retrained = [line for line in lines if "retrained in" in line]  # none came from a cache
    assert len(retrained) == plan.repeats
    assert retrained[0].startswith("  test-checkpointing IPC 1: model 1/")


def test_code_hashes_are_taken_once_per_run(tmp_path, monkeypatch):
    # a source file edited while a long run goes on must not send its later stages (workers,
    # the figures) to other cache keys: here every fresh hash differs from the last
    import itertools

    fresh_hashes = itertools.count()
    monkeypatch.setattr(plan_config, "code_version", lambda obj: f"edited-{next(fresh_hashes)}")
    plan, records = pipeline.run(config(tmp_path, methods=["random"], attacks="none"),
                                 echo=lambda s: None)
    assert {r.ipc for r in records} == {1, 2}
    sets = list((Path(os.environ["ROME_BENCH_CACHE"]) / "distilled").glob("*.pt"))
    assert len(sets) == 2  # one per IPC: the figures found them instead of distilling again
    assert plan.code_versions["method:random"].startswith("edited-")


def test_first_repeat_trains_only_the_later_models_with_their_own_seeds(tmp_path, monkeypatch):
    whole_cfg = config(tmp_path, methods=["random"], ipcs=[1], attacks="FGSM", repeats=3,
                       out=str(tmp_path / "whole"))
    _, whole = pipeline.run(whole_cfg, echo=lambda s: None)
    # a separate cache: model #2 must be trained again here, not read back
    monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path / "other-cache"))
    split_cfg = config(tmp_path, methods=["random"], ipcs=[1], attacks="FGSM", repeats=3,
                       first_repeat=2, out=str(tmp_path / "split"))
    plan, split = pipeline.run(split_cfg, echo=lambda s: None)
    assert "models #2 of 3 per cell" in plan.describe()
    assert {r.repeat for r in whole} == {0, 1, 2} and {r.repeat for r in split} == {2}
    same = {(r.attack, r.mode): r.accuracy for r in whole if r.repeat == 2}
    assert {(r.attack, r.mode): r.accuracy for r in split} == same
    assert len(list((tmp_path / "other-cache" / "models").glob("*.pt"))) == 1


def test_first_repeat_outside_the_cell_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["run", "--method", "random", "--preset", "unit", "--repeats",
                                    "2", "--first-repeat", "2", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert res.stderr.strip() == ("rome-bench: error: --first-repeat must be in 0..1 (the cell "
                                  "has 2 model(s)), got 2")
    assert not (tmp_path / "r").exists()


def test_one_cache_shared_by_threat_models_overrides_and_test_subsets(tmp_path, monkeypatch):
    """Each measurement is keyed by its threat model, attack parameters and test subset: a run
    that shares a cache with a different one makes its own measurements (the shared cache grows
    by exactly them) and records what a run on an empty cache records."""
    from rome_bench.pipeline.presets import PRESETS

    def records_of(cache: str, **kw):
        monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path / cache))
        _, recs = pipeline.run(config(tmp_path, methods=["random"], ipcs=[1], attacks="PGD",
                                      modes="untargeted", out=str(tmp_path / cache / "out"), **kw),
                               echo=lambda s: None)
        return sorted((r.threat_model, r.attack, r.n_images, r.n_attacked, r.accuracy)
                      for r in recs)

    def measurements() -> int:
        return len(list((tmp_path / "shared" / "measurements").glob("*.json")))

    records_of("shared", threat_models="standard")
    assert measurements() == 2  # clean and PGD
    assert records_of("shared", threat_models="beard-compat") == records_of(
        "alone-compat", threat_models="beard-compat")
    assert measurements() == 4  # the compat clean pass and PGD are measurements of their own
    assert records_of("shared", threat_models="standard", test_subset=10) == records_of(
        "alone-10", threat_models="standard", test_subset=10)
    assert measurements() == 6
    monkeypatch.setitem(PRESETS.get("unit").attacks.overrides, "PGD", {"steps": 1, "alpha": 8 / 255})
    assert records_of("shared", threat_models="standard") == records_of(
        "alone-override", threat_models="standard")
    assert measurements() == 7  # only PGD has new parameters; the clean pass is reused


def test_a_100_class_run_passes_its_class_count_to_every_attack(tmp_path, monkeypatch):
    """CIFAR-100's pipeline end to end on a tiny fake release: targets come from 100 classes."""
    import numpy as np
    from conftest import write_cifar_batch

    from rome_bench.pipeline import stages as stages_mod

    folder = tmp_path / "c100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 2), ("test", 1)):
        y = np.repeat(np.arange(100), per_class)
        x = rng.integers(0, 256, size=(len(y), 32, 32, 3), dtype=np.uint8)
        write_cifar_batch(folder / split, x, y, key="fine_labels")
    seen = []
    real = stages_mod.run_attack

    def spy(*a, **kw):
        seen.append((kw["mode"], kw["num_classes"]))
        return real(*a, **kw)

    monkeypatch.setattr(stages_mod, "run_attack", spy)
    plan, recs = pipeline.run(config(tmp_path, methods=["random"], ipcs=[1], attacks="FGSM",
                                     dataset="cifar100", data_root=str(tmp_path / "c100"),
                                     test_subset=100), echo=lambda s: None)
    assert plan.dataset.num_classes == 100
    assert seen and all(n == 100 for _, n in seen) and {m for m, _ in seen} == {"targeted",
                                                                              "untargeted"}
    assert {r.dataset for r in recs} == {"cifar100"} and all(r.n_images == 100 for r in recs)


def test_transfer_studies_pair_models_of_the_same_ipc_and_repeat(tmp_path):
    """Several IPCs and repeats: each (IPC, repeat) is its own study, surrogate x victim."""
    from collections import Counter

    from rome_bench.attacks.blackbox import TransferModel
    from rome_bench.models.convnet import build_model

    plan = plan_run(config(tmp_path, methods=["random"], attacks="FGSM", modes="untargeted",
                           settings="transfer"))
    torch.manual_seed(0)
    models = [TransferModel(name, f"{name}-{ipc}-{rep}", build_model("convnet-w32", num_classes=10),
                            ipc, rep)
              for name in ("a", "b") for ipc in (1, 2) for rep in (0, 1)]
    images, labels = torch.rand(6, 3, 32, 32), torch.arange(6)
    recs = pipeline.transfer_records(plan, Cache(tmp_path / "cache"), images, labels, models)
    assert Counter((r.ipc, r.repeat) for r in recs) == {g: 4 for g in
                                                       [(1, 0), (1, 1), (2, 0), (2, 1)]}
    pairs = {(r.ipc, r.repeat, r.source_model, r.method) for r in recs}
    assert len(pairs) == 16  # a->a, a->b, b->a, b->b in each of the four studies


def test_table_options_are_written_while_the_run_holds_its_folder(tmp_path, monkeypatch):
    """``--alpha`` / ``--ae-baseline`` reach the tables the run writes, inside its folder lock
    (earlier the CLI rewrote them after the lock was released, racing a next run)."""
    from rome_bench.core import storage
    from rome_bench.reporting import tables

    held = []
    real_hold = storage.hold_folder

    def watching_hold(folder):
        held.append(True)
        ctx = real_hold(folder)

        class Watch:
            def __enter__(self):
                return ctx.__enter__()

            def __exit__(self, *exc):
                held.pop()
                return ctx.__exit__(*exc)
        return Watch()

    written = []
    real_write = tables.write_tables

    def spy(records, folder, alpha=0.5, ae_baseline="same-mode"):
        written.append((alpha, ae_baseline, bool(held)))
        return real_write(records, folder, alpha, ae_baseline)

    monkeypatch.setattr(pipeline, "hold_folder", watching_hold)
    monkeypatch.setattr(pipeline, "write_tables", spy)
    plan, records = pipeline.run(config(tmp_path, methods=["random"], ipcs=[1],
                                        attacks="FGSM"), echo=lambda s: None,
                                 alpha=0.2, ae_baseline="min")
    assert written == [(0.2, "min", True)]
    expected = tables.format_tables(records, tables.tables_for(records), "markdown", 0.2,
                                    ae_baseline="min")
    assert (plan.out / "tables.md").read_text().strip() == expected.strip()
    assert expected != tables.format_tables(records, tables.tables_for(records), "markdown", 0.5)
