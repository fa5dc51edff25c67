"""Transfer and query black-box attacks: craft once, the diagonal is white-box, records, SPSA."""

import pytest
import torch

from rome_bench.attacks import blackbox
from rome_bench.attacks.blackbox import SettingError, TransferModel, parse_settings, transfer_study
from rome_bench.attacks.suite import ATTACKS, TargetedSPSA, run_attack
from rome_bench.core.cache import Cache
from rome_bench.core.records import Record
from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, load_dataset, take_test_subset
from rome_bench.models.convnet import load_dc_checkpoint
from rome_bench.pipeline import runner as pipeline
from rome_bench.pipeline.presets import PRESETS, AttackBudget, Preset, RetrainBudget
from rome_bench.reporting.figures import transfer_matrix

POOL_METHODS = ("DC", "DM", "MTT")

if "unit-bb" not in PRESETS:  # the unit preset with query budgets small enough for a test
    PRESETS.add("unit-bb", Preset(
        name="unit-bb", description="test-only", scaled="everything (tests)",
        dataset="cifar10-mini", ipcs=(1,), repeats=1,
        retrain=RetrainBudget(epochs={1: 2}, epochs_noaug={1: 2}, full=1),
        attacks=AttackBudget(test_subset=20, overrides={
            "CW": {"steps": 2}, "Square": {"n_queries": 10}, "SPSA": {"nb_sample": 8}})))


def pool_path(pool_dir, method):
    return str(next(pool_dir.glob(f"{method}_ConvNet_CIFAR10_50_*.pth")))


@pytest.fixture(scope="module")
def pool_models(pool_dir):
    return [TransferModel(m, f"key-{m}", load_dc_checkpoint(
        pool_path(pool_dir, m), "convnet", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD), 50)
        for m in POOL_METHODS]


@pytest.fixture(scope="module")
def real_images(cifar10_root):
    test = take_test_subset(load_dataset("cifar10", "test", cifar10_root), 20)
    return test.images, test.labels


def test_settings_are_strict():
    assert parse_settings(None) == ["white-box"]
    assert parse_settings("query,whitebox,query") == ["query", "white-box"]
    assert parse_settings("all") == ["white-box", "transfer", "query"]
    with pytest.raises(SettingError, match="Unknown setting 'transfr'. Available: white-box"):
        parse_settings("transfr")
    with pytest.raises(SettingError, match="transferable"):
        blackbox.transfer_specs([ATTACKS.get("DeepFool")], explicit=True)
    assert [a.name for a in blackbox.query_specs([], ["query"])] == ["Square", "SPSA"]
    assert blackbox.query_specs([], ["white-box"]) == []


def test_crafts_once_per_surrogate_and_caches(pool_models, real_images, monkeypatch, tmp_path):
    x, y = real_images
    calls = []
    real_craft = blackbox.craft

    def counting(spec, model, *a, **kw):
        calls.append((spec.name, kw["mode"]))
        return real_craft(spec, model, *a, **kw)

    monkeypatch.setattr(blackbox, "craft", counting)
    cache = Cache(tmp_path / "c")
    args = (pool_models, x, y, [ATTACKS.get("FGSM")], ["targeted", "untargeted"], ["standard"])
    first = transfer_study(*args, cache=cache, context={"test": 20})
    assert len(calls) == 3 * 2  # surrogates x modes, not surrogates x victims x modes
    assert len(first) == 3 * 3 * 2
    assert all(r.seconds >= r.craft_seconds > 0 for r in first)
    calls.clear()
    again = transfer_study(*args, cache=cache, context={"test": 20})
    assert calls == []  # every victim cached: nothing crafted
    assert [r.accuracy for r in again] == [r.accuracy for r in first]
    calls.clear()
    transfer_study(*args, cache=cache, context={"test": 20}, fresh=True)
    assert len(calls) == 6


@pytest.mark.parametrize("threat", ["standard", "beard-compat"])
def test_diagonal_equals_white_box_accuracy(pool_models, real_images, threat):
    x, y = real_images
    spec = ATTACKS.get("PGD" if threat == "standard" else "FGSM")
    results = transfer_study(pool_models, x, y, [spec], ["untargeted"], [threat])
    records = [Record("r", r.victim, "cifar10", 50, 0, 0, "convnet", "paper", threat, "transfer",
                      r.surrogate, r.mode, r.attack, r.eps, r.accuracy, r.seconds, r.n_images)
               for r in results]
    m = transfer_matrix(records, mode="untargeted", value="accuracy", attack=spec.name)
    assert m.sources == m.victims == ["DC", "MTT", "DM"]  # the paper's row order
    for tm in pool_models:
        i = m.sources.index(tm.name)
        white = run_attack(spec, tm.model, x, y, mode="untargeted", threat_model=threat)
        assert m.values[i, i] == pytest.approx(white.accuracy)
    off = [m.values[i, j] for i in range(3) for j in range(3) if i != j]
    assert max(off) > max(m.values[i, i] for i in range(3))  # transfer is weaker than white-box


def test_targeted_spsa_aims_at_the_target_class(monkeypatch):
    seen = {}

    def spy(self, x, labels):
        seen["labels"] = labels.clone()
        return x

    monkeypatch.setattr(TargetedSPSA, "spsa_perturb", spy)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    atk = TargetedSPSA(model, eps=8 / 255)
    atk.set_mode_targeted_by_function(lambda _x, y: (y + 1) % 10, quiet=True)
    atk(torch.rand(3, 3, 2, 2), torch.tensor([0, 4, 9]))
    assert seen["labels"].tolist() == [1, 5, 0]
    atk.set_mode_default()
    atk(torch.rand(3, 3, 2, 2), torch.tensor([0, 4, 9]))
    assert seen["labels"].tolist() == [0, 4, 9]


def test_evaluate_checkpoints_transfer_and_query(tmp_path, pool_dir, cifar10_root):
    config = pipeline.RunConfig(methods=[], dataset="cifar10", data_root=str(cifar10_root),
                                preset="unit-bb", attacks="FGSM", test_subset=10,
                                settings="transfer,query", out=str(tmp_path / "run"),
                                show_progress=False, device="cpu")
    pairs = [(m, pool_path(pool_dir, m)) for m in ("DC", "DM")]
    plan, records = pipeline.evaluate_checkpoints(config, pairs, echo=lambda s: None)
    settings = {(r.setting, r.mode) for r in records}
    assert ("white-box", "clean") in settings
    assert not any(r.setting == "white-box" and r.mode != "clean" for r in records)
    transfer = [r for r in records if r.setting == "transfer"]
    assert {(r.source_model, r.method) for r in transfer} == {
        ("DC", "DC"), ("DC", "DM"), ("DM", "DC"), ("DM", "DM")}
    query = {(r.method, r.attack, r.mode) for r in records if r.setting == "query"}
    assert len(query) == 2 * 2 * 2 and all(r.source_model is None for r in records
                                           if r.setting == "query")
    out = plan.out
    assert (out / "table2_standard_unit-bb.csv").exists()
    assert "Table 2 layout" in (out / "tables.md").read_text()
    assert (out / "figures" / "transfer_irr_untargeted_ipc50_standard_unit-bb.png").exists()


def test_beard_compat_victim_with_other_normalization_gets_pixels(pool_models, real_images):
    from rome_bench.models.convnet import build_model

    x, y = real_images
    a = pool_models[0].model
    b = build_model("convnet", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    b.net.load_state_dict(a.net.state_dict())
    crafted = blackbox.craft(ATTACKS.get("FGSM"), a, x, y, mode="untargeted",
                             threat_model="beard-compat")
    assert crafted.normalize is not None and float(crafted.inputs.min()) >= 0  # normalized space
    acc, _ = blackbox.victim_accuracy(crafted, b.eval(), y, threat_model="beard-compat")
    with torch.no_grad():
        pixels = crafted.normalize.inverse(crafted.inputs)
        expected = 100 * float((b(pixels).argmax(1) == y).float().mean())
    assert acc == pytest.approx(expected)


def test_run_writes_transfer_records_grids_and_bars(tmp_path):
    config = pipeline.RunConfig(methods=["random"], ipcs=[1], preset="unit-bb", attacks="FGSM",
                                settings="white-box,transfer", out=str(tmp_path / "run"),
                                show_progress=False, device="cpu")
    plan, records = pipeline.run(config, echo=lambda s: None)
    transfer = [r for r in records if r.setting == "transfer"]
    white = {(r.mode, r.accuracy) for r in records if r.setting == "white-box" and r.mode != "clean"}
    assert {(r.source_model, r.method) for r in transfer} == {("random", "random")}
    assert {(r.mode, r.accuracy) for r in transfer} == white  # self-transfer is white-box
    figures = plan.out / "figures"
    for name in ("distilled_random_ipc1.png", "table1_bars_standard_unit-bb.png",
                 "transfer_irr_untargeted_ipc1_standard_unit-bb.pdf"):
        assert (figures / name).stat().st_size > 1000, name
