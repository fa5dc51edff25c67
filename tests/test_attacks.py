import pytest
import torch
import torchattacks

from rome_bench.attacks.suite import (
    ATTACKS,
    AttackError,
    attack_view,
    build_attack,
    clean_accuracy,
    parse_attacks,
    parse_modes,
    parse_threat_models,
    run_attack,
)
from rome_bench.core.registry import UnknownNameError
from rome_bench.data.datasets import load_dataset, take_test_subset
from rome_bench.models.convnet import build_model


@pytest.fixture(scope="module")
def images():
    test = take_test_subset(load_dataset("cifar10-mini", "test"), 50)
    return test.images, test.labels


def test_suite_names_and_parameters_are_the_papers():
    names = [a.name for a in parse_attacks(None)]
    assert names == ["FGSM", "PGD", "PGD-L2", "CW", "DeepFool", "AutoAttack"]
    pgd = ATTACKS.get("pgd")
    assert pgd.params == {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "random_start": False}
    assert ATTACKS.get("PGD-L2").params["eps"] == 128 / 255
    assert ATTACKS.get("cw").params == {"c": 1, "kappa": 0, "steps": 100, "lr": 0.01}
    assert not ATTACKS.get("deepfool").targeted and not ATTACKS.get("autoattack").targeted
    assert parse_attacks("none") == []
    assert [a.name for a in parse_attacks("sweep")] == [f"PGD-eps{k}" for k in (2, 4, 6, 8, 10)]


def test_strict_names_and_modes():
    with pytest.raises(UnknownNameError, match="Did you mean: spsa"):
        parse_attacks("FGSM,Spssa")
    with pytest.raises(AttackError, match="Unknown mode"):
        parse_modes("targetted")
    with pytest.raises(AttackError, match="Unknown threat model"):
        parse_threat_models("beard")
    assert parse_threat_models("beard-compat,standard") == ["beard-compat", "standard"]


def test_targets_follow_class_count_except_in_beard_compat():
    model = build_model("convnet-w32", num_classes=100)
    y = torch.tensor([0, 9, 42, 99])
    assert attack_view(model, "standard", 100).target(None, y).tolist() == [1, 10, 43, 0]
    assert attack_view(model, "beard-compat", 100).target(None, y).tolist() == [1, 0, 3, 0]


def test_beard_compat_attacks_the_normalized_tensor_with_its_step(dc_model):
    view = attack_view(dc_model, "beard-compat", 10)
    x = torch.rand(2, 3, 32, 32)
    z = view.to_input(x)
    assert torch.allclose(view.model(z), dc_model(x), atol=1e-5)
    assert float(z.min()) < 0  # the attack sees normalized values (and clamps them to [0,1])
    atk = build_attack(ATTACKS.get("PGD"), view.model, threat_model="beard-compat")
    assert atk.alpha == pytest.approx(2 / 225)
    assert build_attack(ATTACKS.get("PGD"), dc_model).alpha == pytest.approx(2 / 255)


def test_standard_fgsm_is_far_stronger_than_beard_compat(dc_model, images):
    x, y = images
    clean = clean_accuracy(dc_model, x, y)
    std = run_attack(ATTACKS.get("FGSM"), dc_model, x, y, mode="untargeted")
    compat = run_attack(ATTACKS.get("FGSM"), dc_model, x, y, mode="untargeted",
                        threat_model="beard-compat")
    assert clean.accuracy > 40
    assert std.accuracy < 15 < compat.accuracy
    assert std.seconds > 0 and std.n_images == 50 and std.eps == pytest.approx(8 / 255)
    assert not dc_model.training


def test_fgsm_eps0_is_clean_under_standard_and_the_bare_clamp_under_compat(dc_model, images):
    x, y = images
    zero = ATTACKS.get("FGSM-eps0")
    assert zero.name not in [a.name for a in parse_attacks(None)]  # never in the metrics' suite
    std = run_attack(zero, dc_model, x, y, mode="untargeted")
    assert std.accuracy == pytest.approx(clean_accuracy(dc_model, x, y).accuracy)
    compat = run_attack(zero, dc_model, x, y, mode="untargeted", threat_model="beard-compat")
    view = attack_view(dc_model, "beard-compat", 10)
    with torch.no_grad():
        clamped = view.model(view.to_input(x).clamp(0, 1)).argmax(1)
    assert compat.accuracy == pytest.approx(100 * float((clamped == y).float().mean()))
    assert compat.accuracy < std.accuracy  # the clamp alone costs this checkpoint accuracy


def test_targeted_pgd_hits_its_target_more_often_than_chance(dc_model, images):
    x, y = images
    view = attack_view(dc_model, "standard", 10)
    atk = build_attack(ATTACKS.get("PGD"), dc_model)
    atk.set_mode_targeted_by_function(view.target, quiet=True)
    adv = atk(x, y)
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert 0 <= float(adv.min()) and float(adv.max()) <= 1
    hit = (dc_model(adv).argmax(1) == (y + 1) % 10).float().mean()
    assert hit > 0.5  # chance is 0.1


def test_untargeted_only_attacks_refuse_targeted_mode(dc_model, images):
    x, y = images
    with pytest.raises(AttackError, match="no targeted mode"):
        run_attack(ATTACKS.get("DeepFool"), dc_model, x[:2], y[:2], mode="targeted")


def test_standard_attacks_only_the_images_the_model_gets_right(dc_model, images):
    x, y = images
    clean = clean_accuracy(dc_model, x, y)
    assert clean.outcomes.sum() == round(clean.accuracy * len(y) / 100) and clean.n_attacked == 50
    full = run_attack(ATTACKS.get("FGSM"), dc_model, x, y, mode="untargeted")
    skip = run_attack(ATTACKS.get("FGSM"), dc_model, x, y, mode="untargeted",
                      clean_correct=clean.outcomes)
    assert skip.n_attacked == int(clean.outcomes.sum()) < full.n_attacked == len(y)
    assert not skip.outcomes[~clean.outcomes].any()  # lost before the attack: not robust
    # untargeted: an image the model gets wrong stays wrong, so the result is the same
    assert skip.accuracy == full.accuracy
    assert torch.equal(skip.outcomes, full.outcomes)
    assert skip.accuracy == pytest.approx(100 * float(skip.outcomes.float().mean()))


def test_beard_compat_attacks_every_image(dc_model, images):
    x, y = images
    clean = clean_accuracy(dc_model, x, y, threat_model="beard-compat")
    res = run_attack(ATTACKS.get("FGSM"), dc_model, x, y, mode="untargeted",
                     threat_model="beard-compat", clean_correct=clean.outcomes)
    plain = run_attack(ATTACKS.get("FGSM"), dc_model, x, y, mode="untargeted",
                       threat_model="beard-compat")
    assert res.n_attacked == len(y) and res.accuracy == plain.accuracy


def test_deepfool_is_batched_under_standard_and_torchattacks_under_compat(dc_model):
    from rome_bench.attacks.deepfool import BatchedDeepFool

    spec = ATTACKS.get("DeepFool")
    assert isinstance(build_attack(spec, dc_model), BatchedDeepFool)
    view = attack_view(dc_model, "beard-compat", 10)
    compat = build_attack(spec, view.model, threat_model="beard-compat")
    assert type(compat) is torchattacks.DeepFool
    assert type(build_attack(ATTACKS.get("DeepFool-ta"), dc_model)) is torchattacks.DeepFool
    assert "DeepFool-ta" not in [a.name for a in parse_attacks(None)]  # not in the suite
