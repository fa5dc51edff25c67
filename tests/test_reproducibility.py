"""Every record says what reproduces it, and a rerun at the same seed and threads reproduces it.

A CPU result is bit-identical only at the same torch thread count (float sums are split across
threads), so runs compute with a fixed count (``--threads``, default 1) in one process and in
workers alike; the count, the device and the torch/torchattacks versions enter the cache keys.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from rome_bench.core import records as records_mod
from rome_bench.core.records import Record, environment, git_revision, versions
from rome_bench.pipeline import runner as pipeline
from rome_bench.pipeline.config import RunConfig, plan_run
from rome_bench.pipeline.stages import distill_key

TIME_FIELDS = ("run_id", "created", "seconds")


def config(tmp_path, **kw) -> RunConfig:
    base = dict(methods=["random"], preset="unit", ipcs=[1], attacks="FGSM",
                out=str(tmp_path / "run"), show_progress=False)
    base.update(kw)
    return RunConfig(**base)


def rows(path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out.append({k: v for k, v in row.items() if k not in TIME_FIELDS})
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_a_rerun_with_the_same_seed_and_threads_gives_identical_records(tmp_path, monkeypatch,
                                                                        threads):
    before = torch.get_num_threads()
    for name in ("a", "b"):  # a fresh cache each time: everything is computed twice
        monkeypatch.setenv("ROME_BENCH_CACHE", str(tmp_path / f"cache-{name}"))
        pipeline.run(config(tmp_path, out=str(tmp_path / name), threads=threads),
                     echo=lambda s: None)
    first, second = rows(tmp_path / "a" / "records.jsonl"), rows(tmp_path / "b" / "records.jsonl")
    assert first == second and len(first) == 3  # clean, FGSM targeted and untargeted
    env = first[0]["environment"]
    assert env["device"] == "cpu" and env["threads"] == threads
    assert set(first[0]["versions"]) >= {"rome_bench", "git_commit", "torch", "torchattacks"}
    assert torch.get_num_threads() == before  # a run leaves its caller's setting alone


def test_the_cache_keys_follow_threads_device_and_torch_but_never_jobs(tmp_path, monkeypatch):
    def key(**kw):
        plan = plan_run(config(tmp_path, **kw))
        return distill_key(plan.cells[0], plan), plan.compute_key

    base, compute = key(jobs=1)
    assert compute["compute"] == "cpu/1 threads"  # the default on a CPU, whatever the cores
    assert key(jobs=2) == (base, compute)
    assert key(threads=2)[0] != base
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert key()[0] != base


def test_records_carry_versions_and_environment_and_old_rows_still_read():
    v = versions()
    assert v["torch"] == torch.__version__ and v["rome_bench"]
    assert v["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", v["git_commit"])
    env = environment("cpu")
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
    old = {"run_id": "r", "method": "dc", "dataset": "cifar10", "ipc": 1, "seed": 0, "repeat": 0,
           "arch": "convnet", "preset": "cpu", "threat_model": "standard",
           "setting": "white-box", "source_model": None, "mode": "clean", "attack": "clean",
           "eps": None, "accuracy": 27.0, "seconds": 1.0, "n_images": 200,
           "versions": {"rome_bench": "0.1.0", "torch": "2.3.0"}}
    rec = Record.from_dict(old)
    assert rec.environment == {} and rec.versions["torch"] == "2.3.0"


def test_git_revision_never_fails_without_git(monkeypatch):
    git_revision.cache_clear()
    monkeypatch.setenv("PATH", "")  # no git executable to be found
    try:
        assert git_revision() == (None, None)
    finally:
        git_revision.cache_clear()


def test_git_revision_ignores_a_repository_the_package_merely_sits_in(tmp_path, monkeypatch):
    # an installed copy below some other checkout: that checkout's commit is not our code's
    git_revision.cache_clear()
    fake = tmp_path / "site-packages" / "rome_bench" / "core" / "records.py"
    fake.parent.mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr(records_mod, "__file__", str(fake))
    calls = []
    monkeypatch.setattr(records_mod, "_git", lambda root, *a: calls.append(a) or str(tmp_path))
    try:
        assert git_revision() == (None, None) and calls == []
    finally:
        git_revision.cache_clear()


def test_a_distilled_file_replaced_under_the_same_name_is_a_new_set(tmp_path):
    path = tmp_path / "set.pt"
    keys = []
    for seed in (0, 1):
        torch.save({"images": torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),
                    "labels": torch.arange(10)}, path)
        plan = plan_run(config(tmp_path, methods=[f"file:{path}"]))
        pipeline.check_inputs(plan)
        keys.append(distill_key(plan.cells[0], plan))
    assert keys[0] != keys[1]
