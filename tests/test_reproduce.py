"""``rome-bench reproduce table1``: the grid, its dry run (no data, no Ray) and resuming."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from rome_bench.cli import main
from rome_bench.core.records import read_records
from rome_bench.data import datasets
from rome_bench.pipeline import reproduce as rep
from rome_bench.pipeline import runner
from rome_bench.pipeline.config import PlanError, RunConfig, plan_run
from rome_bench.pipeline.ray_executor import task_graph
from rome_bench.reporting.naming import reference_key
from rome_bench.reporting.table1 import load_reference


def test_the_grid_covers_every_row_of_the_published_table():
    published = load_reference("paper")
    for dataset, display in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        methods = rep.table1_methods(dataset)
        rows = {m for d, m in published if d == display}
        assert {reference_key(dataset, m)[1] for m in methods} == rows
        assert "random" not in methods and "datm" not in methods  # no published row
    config = rep.table1_config("cifar100", data_root="/data", out="res")
    assert config.data_root == "/data/cifar100" and config.out == "res/cifar100"
    plan = plan_run(config, require_data=False)
    assert plan.preset.name == "paper" and plan.protocol == "beard" and plan.repeats == 5
    assert plan.threat_models == ["beard-compat", "standard"]
    assert {c.ipc for c in plan.cells} == {0, 1, 10, 50} and plan.test_subset is None
    assert [a.name for a in plan.attacks] == ["FGSM", "PGD", "PGD-L2", "CW", "DeepFool",
                                              "AutoAttack"]


def test_dry_run_prints_both_datasets_without_data_or_ray(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a dry run must not load data")

    monkeypatch.setattr(datasets, "load_dataset", no_loading)
    monkeypatch.setattr(runner, "load_dataset", no_loading)
    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(main, ["reproduce", "table1", "--dry-run", "--executor", "ray"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "ESTIMATE of GPU-hours" in out and "ASSUMPTION" in out and "BEARD" in out
    graphs = [task_graph(plan_run(rep.table1_config(d), require_data=False))
              for d in ("cifar10", "cifar100")]
    for name, g in zip(("cifar10", "cifar100"), graphs):
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [name])
        assert row[1:] == [str(len(g.models) // 5), str(len(g.distill)), str(len(g.models)),
                           str(g.transfer)]
    total = next(line.split() for line in out.splitlines() if line.split()[:1] == ["total"])
    assert total[3] == str(sum(len(g.models) for g in graphs))


def test_the_estimate_follows_the_named_costs(tmp_path):
    config = RunConfig(methods=["dm"], dataset="cifar10", ipcs=[1], preset="paper", repeats=2,
                       attacks="FGSM,DeepFool", threat_models="beard-compat,standard",
                       protocol="beard", test_subset=5000, out=str(tmp_path))
    cost = rep.estimate_seconds(plan_run(config, require_data=False))
    fgsm_t, fgsm_u = rep.BEARD_ATTACK_SECONDS["FGSM"]
    deepfool = rep.BEARD_ATTACK_SECONDS["DeepFool"][1]
    # 2 models x 2 threat models x half the test set
    assert cost["attacks"] == pytest.approx(2 * 2 * 0.5 * (fgsm_t + fgsm_u + deepfool))
    assert cost["distillation"] == pytest.approx(rep.DISTILL_HOURS["dm"][1] * 3600)
    # IPC 1 on CIFAR-10: 10 images, one batch per epoch, 1001 epochs at the paper preset
    assert cost["retraining"] == pytest.approx(2 * 1001 * rep.RETRAIN_STEP_SECONDS)
    c100 = rep.estimate_seconds(plan_run(RunConfig(**{**vars(config), "dataset": "cifar100"}),
                                         require_data=False))
    assert c100["attacks"] == pytest.approx(
        2 * 2 * 0.5 * (fgsm_t + fgsm_u + rep.CIFAR100_DEEPFOOL_FACTOR * deepfool))


def test_bad_dataset_list_is_a_plan_error():
    assert rep.parse_datasets("CIFAR100, cifar10,cifar100") == ["cifar100", "cifar10"]
    for bad in ("", "cifar10,mnist"):
        with pytest.raises(PlanError, match="--dataset takes cifar10"):
            rep.parse_datasets(bad)


def test_a_rerun_rewrites_the_records_from_the_cache_and_keeps_the_old_file(tmp_path):
    config = RunConfig(methods=["random"], preset="unit", ipcs=[1], attacks="none",
                       out=str(tmp_path / "cifar10"), show_progress=False)
    first = rep.reproduce_table1([config], echo=lambda s: None)
    again = rep.reproduce_table1([config], echo=lambda s: None)
    folder = tmp_path / "cifar10"
    assert [r.accuracy for r in read_records([folder / "records.jsonl"])] == [
        r.accuracy for r in again] == [r.accuracy for r in first]
    old = (folder / "records.jsonl.previous").read_text().splitlines()
    assert len(old) == len(first)  # the earlier invocation's rows, kept beside, not appended


def test_every_dataset_is_checked_before_the_first_starts(tmp_path):
    (tmp_path / "cifar10").mkdir()
    configs = [rep.table1_config(d, data_root=str(tmp_path), out=tmp_path / "out")
               for d in ("cifar10", "cifar100")]
    with pytest.raises(PlanError, match="no cifar100 data at"):
        rep.reproduce_table1(configs, echo=lambda s: None)
    assert not (tmp_path / "out").exists()
