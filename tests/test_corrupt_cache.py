"""Corrupt cache entries: every artefact kind, truncated, garbage or well-formed but wrong, is
reported in one warning line naming the file, set aside beside it and recomputed, and the
records equal those of the run that filled the cache (issue #22, item 2)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rome_bench.core.cache import Cache, CorruptEntry, read_cached
from rome_bench.core.catalog import METHODS
from rome_bench.core.storage import set_aside
from rome_bench.pipeline import runner as pipeline
from rome_bench.pipeline.stages import checked_measurement, distill_key

# DM (a method that checkpoints and resumes) at 3 iterations: every stage in a few seconds
DM_UNIT = {"all": {"iterations": 3, "lr_img": 1.0, "momentum_img": 0.5, "batch_real": 8,
                   "init": "real"}}


def unit_config(out: Path) -> pipeline.RunConfig:
    return pipeline.RunConfig(methods=["dm"], ipcs=[1], preset="unit", attacks="FGSM",
                              modes="untargeted", out=str(out), show_progress=False, jobs=1)


def outcome(records) -> list[tuple]:
    """What a rerun must reproduce exactly (timings and run ids may differ)."""
    return sorted((r.method, r.ipc, r.repeat, r.threat_model, r.attack, r.mode, r.eps,
                   r.accuracy, r.n_images, r.n_attacked, r.outcomes) for r in records)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """One run that fills a cache; each test corrupts a copy of it."""
    budgets = METHODS.entry("dm").meta["budgets"]
    budgets["unit"] = DM_UNIT
    root = tmp_path_factory.mktemp("golden")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROME_BENCH_CACHE", str(root / "cache"))
        plan, records = pipeline.run(unit_config(root / "run"), echo=lambda s: None)
    yield root / "cache", plan, outcome(records)
    del budgets["unit"]


def artefact(cache: Path, plan, kind: str, which: str = "FGSM") -> Path:
    if kind == "distilled":
        return Cache(cache).distilled(distill_key(plan.cells[0], plan))
    if kind == "checkpoint":
        return Cache(cache).checkpoint(distill_key(plan.cells[0], plan))
    if kind == "model":
        [path] = (cache / "models").glob("*.pt")
        return path
    [path] = [p for p in (cache / "measurements").glob("*.json")
              if json.loads(p.read_text())["attack"] == which]
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(777))


def wrong_channels(path: Path) -> None:  # a valid distilled-set file for another dataset
    torch.save({"images": torch.rand(10, 1, 32, 32), "labels": torch.arange(10), "meta": {}}, path)


def missing_tensor(path: Path) -> None:  # a state dict that lost a layer
    state = torch.load(path, weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, path)


def missing_field(path: Path) -> None:
    m = json.loads(path.read_text())
    del m["outcomes"]
    path.write_text(json.dumps(m))


def wrong_accuracy(path: Path) -> None:  # parses, every field there, one number edited
    m = json.loads(path.read_text())
    m["accuracy"] = 100.0 - m["accuracy"] if m["accuracy"] != 50.0 else 0.0
    path.write_text(json.dumps(m))


def malformed_state(path: Path) -> None:  # loads and has the right keys; DM cannot use it
    torch.save({"state": {"syn": torch.zeros(1)}, "iteration": 1}, path)


CASES = [
    ("distilled", "", truncate), ("distilled", "", garbage), ("distilled", "", wrong_channels),
    ("checkpoint", "", garbage), ("checkpoint", "", truncate), ("checkpoint", "", malformed_state),
    ("model", "", truncate), ("model", "", garbage), ("model", "", missing_tensor),
    ("measurement", "FGSM", truncate), ("measurement", "FGSM", missing_field),
    ("measurement", "clean", wrong_accuracy), ("measurement", "clean", garbage),
]


@pytest.mark.parametrize("kind,which,corrupt", CASES,
                         ids=[f"{k}-{w or 'file'}-{c.__name__}" for k, w, c in CASES])
def test_corrupt_entry_is_reported_set_aside_and_recomputed(golden, tmp_path, monkeypatch, capsys,
                                                            kind, which, corrupt):
    golden_cache, plan, expected = golden
    cache = tmp_path / "cache"
    shutil.copytree(golden_cache, cache)
    monkeypatch.setenv("ROME_BENCH_CACHE", str(cache))
    monkeypatch.setattr(pipeline, "_write_figures", lambda *a: None)  # not the subject; ~1 s
    distilled = artefact(cache, plan, "distilled")
    original = torch.load(distilled, weights_only=True)
    path = artefact(cache, plan, kind, which)
    if kind == "checkpoint":
        # a run killed mid-distillation left a checkpoint and no set; this one went bad
        distilled.unlink()
        shutil.copy(artefact(cache, plan, "model"), path)  # any tensor file: corrupt() rewrites it
    corrupt(path)
    bad = path.read_bytes()
    capsys.readouterr()

    _, records = pipeline.run(unit_config(tmp_path / "rerun"), echo=lambda s: None)

    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"rome-bench: warning: corrupt cache entry {path} (")
    assert "Traceback" not in err
    [aside] = path.parent.glob(f"{path.name}.corrupt-*")
    assert aside.read_bytes() == bad and aside.name in warnings[0]  # kept for inspection
    assert outcome(records) == expected
    # the recomputed set is the one the first run distilled (the checkpoint case started over)
    again = torch.load(distilled, weights_only=True)
    assert torch.equal(again["images"], original["images"])
    assert not list(cache.rglob("*.tmp")) and not (kind == "checkpoint" and path.exists())
    # and the cache is whole again: a third run warns about nothing
    pipeline.run(unit_config(tmp_path / "third"), echo=lambda s: None)
    assert "warning" not in capsys.readouterr().err


def test_expert_trajectories_and_whitening_are_recomputed_when_corrupt(tmp_path, capsys):
    from rome_bench.data.datasets import DATASETS, load_dataset
    from rome_bench.methods.experts import ExpertSettings, get_experts, get_whitening

    mini = load_dataset("cifar10-mini", "train").subset(torch.arange(0, 2000, 100))
    settings = ExpertSettings("cifar10-mini", num_experts=2, epochs=1, zca=False,
                              arch="convnet-d1")
    cache = Cache(tmp_path / "cache")
    first = [t.clone() for t in get_experts(mini, settings, show_progress=False, cache=cache)]
    paths = sorted((tmp_path / "cache" / "experts").rglob("expert_*.pt"))
    truncate(paths[1])
    torch.save({"trajectory": torch.zeros(2, 5), "expert": 0, "key": "x"}, paths[0])  # wrong P
    capsys.readouterr()
    again = get_experts(mini, settings, show_progress=False, cache=cache)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert sorted(w.split(" (")[0] for w in warnings) == [
        f"rome-bench: warning: corrupt cache entry {p}" for p in paths]
    assert all(len(list(p.parent.glob(f"{p.name}.corrupt-*"))) == 1 for p in paths)
    assert all(torch.equal(a, b) for a, b in zip(first, again))

    spec = DATASETS.get("cifar10-mini")
    small = mini.subset(torch.arange(10))
    zca = get_whitening(small, spec, cache)
    [zpath] = (tmp_path / "cache" / "zca").glob("*.pt")
    garbage(zpath)
    capsys.readouterr()
    zca_again = get_whitening(small, spec, cache)
    assert capsys.readouterr().err.startswith(f"rome-bench: warning: corrupt cache entry {zpath}")
    assert torch.equal(zca.matrix, zca_again.matrix)


def test_corrupt_transfer_measurement_is_recomputed(tmp_path, capsys):
    from rome_bench.attacks.blackbox import TransferModel, transfer_study
    from rome_bench.core.catalog import ATTACKS
    from rome_bench.models.convnet import build_model

    torch.manual_seed(0)
    models = [TransferModel(n, n, build_model("convnet-w32", num_classes=10)) for n in "ab"]
    images, labels = torch.rand(6, 3, 32, 32), torch.arange(6)
    cache = Cache(tmp_path / "cache")

    def study():
        rs = transfer_study(models, images, labels, [ATTACKS.get("FGSM")], ["untargeted"],
                            ["standard"], cache=cache)
        return sorted((r.surrogate, r.victim, r.accuracy) for r in rs)

    first = study()
    paths = sorted((tmp_path / "cache" / "measurements").glob("*.json"))
    assert len(paths) == 4
    m = json.loads(paths[0].read_text())
    paths[0].write_text(json.dumps({**m, "n_images": 5}))  # parses; measured on other images
    truncate(paths[1])
    capsys.readouterr()
    assert study() == first
    warnings = capsys.readouterr().err.strip().splitlines()
    assert sorted(w.split(" (")[0] for w in warnings) == [
        f"rome-bench: warning: corrupt cache entry {p}" for p in paths[:2]]


def test_checked_measurement_refuses_what_would_be_a_wrong_number():
    good = {"attack": "FGSM", "mode": "untargeted", "accuracy": 25.0, "seconds": 0.5,
            "n_images": 4, "eps": 8 / 255, "n_attacked": 2, "outcomes": "10"}  # 1 of 4 survived
    assert checked_measurement(good, "FGSM", "untargeted", 4) is good
    bad = [({**good, "accuracy": 50.0}, "disagrees"), ({**good, "n_images": 5}, "expected"),
           ({**good, "mode": "targeted"}, "expected"), ({**good, "outcomes": "1"}, "hex digits"),
           ({**good, "seconds": "0.5"}, "wrong type"), ({**good, "accuracy": True}, "wrong type"),
           ({k: v for k, v in good.items() if k != "eps"}, "lacks 'eps'"), ([good], "JSON object"),
           ({**good, "n_attacked": 9}, "n_attacked"), ({**good, "seconds": -1.0}, "seconds")]
    for m, match in bad:
        with pytest.raises(Exception, match=match):
            checked_measurement(m, "FGSM", "untargeted", 4)


def test_read_cached_warns_once_and_sets_aside(tmp_path, capsys):
    path = tmp_path / "entry.json"
    assert read_cached(path, lambda p: 1, "thing") is None  # missing: not cached, no warning
    path.write_text("{")

    def load(p):
        return json.loads(p.read_text())

    assert read_cached(path, load, "thing") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rome-bench: warning: corrupt cache entry {path}")
    assert not path.exists() and len(list(tmp_path.glob("entry.json.corrupt-*"))) == 1

    path.write_text("[1]")

    def check(p):
        raise CorruptEntry("wrong shape\nsecond line never printed")

    assert read_cached(path, check, "thing") is None  # a second one gets a name of its own
    assert "second line" not in capsys.readouterr().err
    assert len(list(tmp_path.glob("entry.json.corrupt-*"))) == 2


def test_set_aside_never_moves_a_good_copy_another_process_wrote(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"corrupt")
    seen = os.stat(path)
    # meanwhile another process recomputed the entry and moved a good copy into place
    good = tmp_path / ".model.pt.123.abc.tmp"
    good.write_bytes(b"good")
    os.replace(good, path)
    assert set_aside(path, seen) is None
    assert path.read_bytes() == b"good" and not list(tmp_path.glob("*.corrupt-*"))
    assert set_aside(tmp_path / "gone.pt", seen) is None  # another process moved it already
