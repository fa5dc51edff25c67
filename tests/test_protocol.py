"""Evaluation protocols (docs/protocol.md): the resolved retraining settings, records that carry
the protocol, tables that never pool two protocols, and the plan that prints them."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from rome_bench import DistilledSet, register_method
from rome_bench.cli import main
from rome_bench.core.records import Record, RecordStore, read_records
from rome_bench.core.registry import RomeBenchError
from rome_bench.models import training
from rome_bench.pipeline import runner as pipeline
from rome_bench.pipeline.config import RunConfig, plan_run
from rome_bench.pipeline.presets import PRESETS
from rome_bench.pipeline.protocol import RetrainSettings, resolve_retrain
from rome_bench.reporting.layout import ReportError, split_groups
from rome_bench.reporting.tables import format_tables

PAPER = PRESETS.get("paper")
ZCA = {"matrix": torch.eye(3 * 32 * 32), "mean": torch.zeros(3 * 32 * 32)}


def distilled(soft: bool = False, **meta) -> DistilledSet:
    labels = torch.randn(10, 10) if soft else torch.arange(10)
    return DistilledSet(torch.rand(10, 3, 32, 32), labels, meta)


# -- the resolver ----------------------------------------------------------------------------
def test_native_retrains_each_method_as_its_reference():
    # planned (no set yet): the method's declared defaults, each hint followed if present
    assert resolve_retrain("native", "dc", 10, PAPER) == RetrainSettings(
        epochs=301, decay_epoch=152, lr=0.01, batch=256, augment=False, use_zca=True, use_learned_lr=True,
        soft_labels=True)
    assert resolve_retrain("native", "dsa", 10, PAPER).augment is True
    assert resolve_retrain("native", "dsa", 10, PAPER).epochs == 1001
    # with the set: what MTT and DATM leave in meta is applied
    dc = resolve_retrain("native", "dc", 10, PAPER, distilled())
    assert (dc.epochs, dc.augment, dc.lr, dc.batch) == (301, False, 0.01, 256)
    assert not (dc.use_zca or dc.use_learned_lr or dc.soft_labels)
    dsa = resolve_retrain("native", "dsa", 10, PAPER, distilled())
    assert (dsa.epochs, dsa.augment, dsa.lr, dsa.batch) == (1001, True, 0.01, 256)
    mtt = resolve_retrain("native", "mtt", 10, PAPER, distilled(lr=0.0123, zca=ZCA))
    assert (mtt.epochs, mtt.augment, mtt.lr, mtt.batch) == (1001, True, 0.0123, 256)
    assert mtt.use_zca and mtt.use_learned_lr and not mtt.soft_labels
    datm = resolve_retrain("native", "datm", 10, PAPER,
                           distilled(soft=True, lr=0.02, zca=ZCA, retrain_batch_size=128))
    assert (datm.epochs, datm.augment, datm.lr, datm.batch) == (1001, True, 0.02, 128)
    assert datm.use_zca and datm.use_learned_lr and datm.soft_labels


@pytest.mark.parametrize("method", ["dc", "dsa", "mtt", "datm"])
def test_beard_retrains_every_method_alike(method):
    hints = distilled(soft=True, lr=0.02, zca=ZCA, retrain_batch_size=128, augment=False)
    expected = RetrainSettings(epochs=1001, decay_epoch=502, lr=0.01, batch=256, augment=True, use_zca=False,
                               use_learned_lr=False, soft_labels=False)
    assert resolve_retrain("beard", method, 10, PAPER) == expected
    assert resolve_retrain("beard", method, 10, PAPER, hints) == expected
    # the epochs are the preset's DSA budget for the IPC
    assert resolve_retrain("beard", method, 1, PRESETS.get("cpu")).epochs == 300
    assert resolve_retrain("beard", method, 10, PRESETS.get("cpu")).epochs == 150


def test_the_whole_training_set_is_retrained_alike_under_both():
    full = DistilledSet(torch.rand(20, 3, 32, 32), torch.arange(20) % 10)
    assert resolve_retrain("beard", "full", 0, PAPER, full) == resolve_retrain(
        "native", "full", 0, PAPER, full)


def test_unknown_protocol_is_a_one_line_error():
    with pytest.raises(RomeBenchError, match="Did you mean: beard"):
        resolve_retrain("bread", "dc", 10, PAPER)
    with pytest.raises(RomeBenchError, match="Unknown protocol"):
        plan_run(RunConfig(methods=["random"], protocol="nope"))


# -- the plan --------------------------------------------------------------------------------
def test_plan_prints_the_protocol_and_each_cells_settings():
    text = plan_run(RunConfig(methods=["dc", "random"], protocol="BEARD")).describe()
    assert "protocol   beard:" in text
    assert ("retrain 150 epochs (lr/10 from epoch 75), DSA, lr 0.01, batch 256, no ZCA, "
            "hard labels") in text
    native = plan_run(RunConfig(methods=["dc"])).describe()
    assert "protocol   native:" in native
    assert "retrain 150 epochs (lr/10 from epoch 75), no aug, lr 0.01" in native


def test_paper_table_path_says_which_protocol_the_published_table_used():
    cfg = dict(methods=["random"], preset="paper", data_root="x", threat_models="beard-compat")
    assert "add --protocol beard" in plan_run(RunConfig(**cfg)).describe()
    beard = plan_run(RunConfig(**cfg, protocol="beard")).describe()
    assert "BEARD's protocol, as here" in beard and "add --protocol" not in beard
    assert "note" not in plan_run(RunConfig(methods=["random"], preset="paper",
                                            data_root="x")).describe()


# -- records ---------------------------------------------------------------------------------
def _record(protocol: str | None, accuracy: float, mode: str = "clean", attack: str = "clean",
            method: str = "dc") -> Record:
    extra = {} if protocol is None else {"protocol": protocol}
    return Record(run_id="r", method=method, dataset="cifar10", ipc=10, seed=0, repeat=0,
                  arch="convnet", preset="cpu", threat_model="standard", setting="white-box",
                  source_model=None, mode=mode, attack=attack, eps=None, accuracy=accuracy,
                  seconds=1.0, n_images=200, **extra)


def test_records_carry_the_protocol_and_old_rows_read_as_native(tmp_path):
    row = json.loads(_record("beard", 50.0).to_json())
    assert row["protocol"] == "beard"
    old = {k: v for k, v in json.loads(_record(None, 40.0).to_json()).items() if k != "protocol"}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    assert read_records([tmp_path / "old.jsonl"])[0].protocol == "native"


def test_one_model_measured_under_two_protocols_is_two_measurements(tmp_path):
    RecordStore(tmp_path / "a" / "records.jsonl").append([_record("native", 40.0)])
    RecordStore(tmp_path / "b" / "records.jsonl").append([_record("beard", 50.0)])
    assert sorted(r.accuracy for r in read_records([tmp_path])) == [40.0, 50.0]


def test_a_run_records_its_protocol_and_retrains_accordingly(tmp_path, monkeypatch):
    @register_method("unit-hinted", description="test-only: a set with retraining hints",
                     in_all=False)
    def hinted(train, ipc, cfg):
        n = ipc * train.num_classes
        images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 0.5
        labels = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float() * 5
        return DistilledSet(images, labels, {"lr": 0.05, "retrain_batch_size": 4})

    seen = []
    real_train = training.train_model

    def spy(model, images, labels, cfg, **kw):
        seen.append((cfg.lr, cfg.batch_size, cfg.augment, labels.dim()))
        return real_train(model, images, labels, cfg, **kw)

    monkeypatch.setattr(training, "train_model", spy)
    runs = {}
    for protocol in ("native", "beard"):
        cfg = RunConfig(methods=["unit-hinted"], preset="unit", ipcs=[1], attacks="none",
                        out=str(tmp_path / protocol), show_progress=False, protocol=protocol)
        runs[protocol] = pipeline.run(cfg, echo=lambda s: None)
    assert seen == [(0.05, 4, True, 2), (0.01, 256, True, 1)]
    for protocol, (plan, records) in runs.items():
        assert records and all(r.protocol == protocol for r in records)
        rows = [json.loads(x) for x in (plan.out / "records.jsonl").read_text().splitlines()]
        assert {r["protocol"] for r in rows} == {protocol}
    assert (tmp_path / "beard" / "accuracy_standard_unit_beard.csv").exists()
    assert (tmp_path / "native" / "accuracy_standard_unit.csv").exists()
    # two models in the cache: the protocol's settings are part of the retraining key
    models = list((tmp_path / "cache" / "models").glob("*.pt"))
    assert len(models) == 2
    # the set keeps its out-of-range values and says how many there are
    sets = list((tmp_path / "cache" / "distilled").glob("*.pt"))
    meta = DistilledSet.load(sets[0]).meta
    assert 0.4 < meta["out_of_range"] < 0.6


# -- tables ----------------------------------------------------------------------------------
def _mixed() -> list[Record]:
    return [_record(p, acc, mode, attack, method)
            for p in ("native", "beard") for method in ("dc", "dsa")
            for mode, attack, acc in (("clean", "clean", 50.0), ("untargeted", "PGD", 10.0))]


def test_tables_split_mixed_protocols_and_csv_refuses_them():
    groups = split_groups(_mixed())
    assert [(g.protocol, g.title) for g in groups] == [
        ("beard", "threat model: standard | preset: cpu | protocol: beard"),
        ("native", "threat model: standard | preset: cpu | protocol: native")]
    md = format_tables(_mixed(), ["table1", "accuracy"])
    assert md.count("protocol: beard") == 2 and md.count("protocol: native") == 2
    with pytest.raises(ReportError, match="choose with --threat-model / --preset / --protocol"):
        format_tables(_mixed(), ["table1"], "csv")
    one = format_tables(_mixed(), ["table1"], "csv", protocol="beard")
    assert one.startswith("dataset,method,targeted_RR") and len(one.splitlines()) == 3


def test_all_native_titles_do_not_name_the_protocol():
    native = [r for r in _mixed() if r.protocol == "native"]
    assert [g.title for g in split_groups(native)] == ["threat model: standard | preset: cpu"]
    assert "protocol" not in format_tables(native, ["table1", "accuracy"])


def test_table_command_filters_by_protocol(tmp_path):
    RecordStore(tmp_path / "records.jsonl").append(_mixed())
    res = CliRunner().invoke(main, ["table", str(tmp_path), "--format", "csv"])
    assert res.exit_code != 0 and "--protocol" in res.stderr
    res = CliRunner().invoke(main, ["table", str(tmp_path), "--format", "csv", "--protocol",
                                    "native", "--kind", "accuracy"])
    assert res.exit_code == 0 and res.output.startswith("Dataset,Method,IPC")
