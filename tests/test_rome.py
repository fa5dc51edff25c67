"""ROME: targeted PGD, the robust prior, the loss, the variants' wiring, distillation and resume.

Networks are narrow ConvNets on 16x16 downscaled cifar10-mini images so every test stays small.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks

from rome_bench.data.datasets import DATASETS, ImageSet, class_balanced_indices, load_dataset
from rome_bench.methods import rome as rome_mod
from rome_bench.methods.contract import METHODS, MethodConfig, resolve_budget
from rome_bench.methods.distribution_matching import ClassTerms, QueueMatchingConfig
from rome_bench.methods.network_queue import NetworkQueue
from rome_bench.models.convnet import Classifier, ConvNet, Normalize

SPEC = DATASETS.get("cifar10-mini")
SIZE = 16
EPS = 8 / 255


def small(images: torch.Tensor) -> torch.Tensor:
    return F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                         antialias=True).clamp(0, 1)


def narrow_net(num_classes: int = 10, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(ConvNet(3, num_classes, width=16, depth=2, image_size=(SIZE, SIZE)),
                      Normalize(SPEC.mean, SPEC.std))


@pytest.fixture(scope="module")
def data():
    train, test = load_dataset("cifar10-mini", "train"), load_dataset("cifar10-mini", "test")
    idx = class_balanced_indices(train.labels, 20, 10, seed=0)
    tidx = class_balanced_indices(test.labels, 50, 10, seed=0)
    return (small(train.images[idx]), train.labels[idx], small(test.images[tidx]),
            test.labels[tidx])


def train_queue_net(x, y, batch_fn=None, steps: int = 40) -> Classifier:
    """``steps`` SGD steps of one queue network (same init, same batches) on ``x``/``y``."""
    queue = NetworkQueue(narrow_net, capacity=1, initial=0, train_steps=steps, batch_size=32,
                         lr=0.05, batch_fn=batch_fn, seed=0)
    queue.push(1)
    queue.train_net(queue.nets[0], x, y)
    return queue.nets[0].model.eval()


def standard_pgd(seed: int = 1) -> rome_mod.RobustPGD:
    return rome_mod.RobustPGD(rome_mod.STANDARD_PGD, SPEC.mean, SPEC.std, 10,
                              torch.Generator().manual_seed(seed))


def targeted_eval(model, x, y, seed: int = 0) -> tuple[float, float]:
    """(accuracy on true labels, hit rate of the targets) under the 8/255 targeted PGD."""
    target = rome_mod.next_class_targets(y, 10)
    adv = rome_mod.targeted_pgd(model, x, target, eps=EPS, alpha=2 / 255, steps=10,
                                generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pred = model(adv).argmax(1)
    return float((pred == y).float().mean()), float((pred == target).float().mean())


# -- targeted PGD --------------------------------------------------------------------------


def test_pgd_matches_torchattacks_without_random_start():
    model = narrow_net()
    x, y = torch.rand(6, 3, SIZE, SIZE), torch.arange(6) % 10
    atk = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=10, random_start=False)
    atk.set_mode_targeted_by_function(lambda _x, lab: (lab + 1) % 10, quiet=True)
    expected = atk(x, y)
    ours = rome_mod.targeted_pgd(model, x, (y + 1) % 10, eps=EPS, alpha=2 / 255, steps=10,
                                 random_start=False)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_pgd_random_start_stays_in_the_ball_and_restores_the_mode():
    model = narrow_net().train()
    x = torch.rand(5, 3, SIZE, SIZE)
    a = rome_mod.targeted_pgd(model, x, torch.zeros(5, dtype=torch.long), eps=EPS, alpha=2 / 255,
                              steps=3, generator=torch.Generator().manual_seed(0))
    b = rome_mod.targeted_pgd(model, x, torch.zeros(5, dtype=torch.long), eps=EPS, alpha=2 / 255,
                              steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)  # seeded
    assert (a - x).abs().max() <= EPS + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert model.training and all(p.grad is None for p in model.parameters())


def test_targeted_pgd_hits_its_targets_far_more_often_than_chance(data):
    x, y, xt, yt = data
    model = train_queue_net(x, y)
    _, hit = targeted_eval(model, xt[:200], yt[:200])
    assert hit > 0.3  # chance is 0.1 (the target is never the true class)


# -- robust prior ----------------------------------------------------------------------------


@pytest.mark.slow
def test_robust_prior_is_more_robust_than_plain_training(data):
    x, y, xt, yt = data
    plain = train_queue_net(x, y)
    robust = train_queue_net(x, y, batch_fn=standard_pgd().pixels)
    plain_acc, plain_hit = targeted_eval(plain, xt, yt)
    robust_acc, robust_hit = targeted_eval(robust, xt, yt)
    # measured: 0.174 vs 0.072 accuracy, 0.38 vs 0.56 hit rate on 500 held-out images
    assert robust_acc > plain_acc + 0.05
    assert robust_hit < plain_hit - 0.05


def test_robust_prior_trains_on_adversarial_batches_with_true_labels():
    pgd = standard_pgd()
    model = narrow_net()
    x, y = torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 3, 9, 9])
    adv, lab = pgd.pixels(model, x, y)
    assert torch.equal(lab, y)
    assert 0 < (adv - x).abs().max() <= EPS + 1e-6


# -- the two threat models -------------------------------------------------------------------


class Recorder:
    """Stands in for ``targeted_pgd``: records what the attack is given, returns the input."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, x, target, **kw):
        self.calls.append({"model": model, "x": x.detach().clone(), "target": target.clone(), **kw})
        return x.detach()


def test_compat_attack_sees_normalized_tensors_the_bare_net_step_2_225_and_mod_10(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(rome_mod, "targeted_pgd", rec)
    mean, std = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
    pgd = rome_mod.RobustPGD(rome_mod.COMPAT_PGD, mean, std, 100, torch.Generator())
    model = Classifier(ConvNet(3, 100, width=8, depth=1, image_size=(SIZE, SIZE)),
                       Normalize(mean, std))
    x, y = torch.rand(3, 3, SIZE, SIZE), torch.tensor([9, 57, 99])
    z = pgd.norm(x)
    pgd.normalized(model, z, y)          # the robustness-aligned term's hook
    back, lab = pgd.pixels(model, x, y)  # the robust prior's hook
    for call in rec.calls:
        assert call["model"] is model.net
        assert call["alpha"] == 2 / 225 and call["eps"] == 8 / 255 and call["steps"] == 10
        assert call["random_start"] is True
        assert call["target"].tolist() == [0, 8, 0]  # (y + 1) % 10 with 100 classes
        assert torch.allclose(call["x"], z, atol=1e-6)
    assert torch.allclose(back, x, atol=1e-6) and torch.equal(lab, y)


def test_standard_attack_sees_pixels_through_the_classifier_and_mod_c(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(rome_mod, "targeted_pgd", rec)
    pgd = rome_mod.RobustPGD(rome_mod.STANDARD_PGD, SPEC.mean, SPEC.std, 100, torch.Generator())
    model = Classifier(ConvNet(3, 100, width=8, depth=1, image_size=(SIZE, SIZE)),
                       Normalize(SPEC.mean, SPEC.std))
    x, y = torch.rand(3, 3, SIZE, SIZE), torch.tensor([9, 57, 99])
    out = pgd.normalized(model, pgd.norm(x), y)
    pgd.pixels(model, x, y)
    for call in rec.calls:
        assert call["model"] is model and call["alpha"] == 2 / 255
        assert call["target"].tolist() == [10, 58, 0]
        assert torch.allclose(call["x"], x, atol=1e-6)
    assert torch.allclose(out, pgd.norm(x), atol=1e-6)


# -- loss ------------------------------------------------------------------------------------


def terms(real, syn, accuracy=0.0, logits=None):
    logits = torch.zeros(syn.shape[0], 10) if logits is None else logits
    return ClassTerms(0, real, syn, logits, torch.zeros(syn.shape[0], dtype=torch.long),
                      accuracy, None)


def test_tv_term_is_zero_for_identical_embeddings():
    f = torch.randn(6, 32, requires_grad=True)
    loss = rome_mod.rome_class_loss(terms(f.detach(), f), QueueMatchingConfig())
    assert float(loss.detach()) == 0.0
    (g,) = torch.autograd.grad(loss, f)
    assert float(g.abs().max()) == 0.0


def test_loss_is_alpha_tv_squared_plus_weighted_ce():
    real, syn = torch.zeros(4, 3), torch.ones(2, 3)  # TV = 0.5 * 3 = 1.5
    logits = torch.tensor([[2.0, 0.0] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8])
    s = QueueMatchingConfig(ce_weight=0.5)
    ce = float(F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)))
    loss = rome_mod.rome_class_loss(terms(real, syn, 40.0, logits), s)
    assert float(loss) == pytest.approx(0.2 * 1.5 ** 2 + 0.8 * 0.5 * 40.0 * ce, rel=1e-6)
    # accuracy 0 (an empty meter): the CE term is off
    assert float(rome_mod.rome_class_loss(terms(real, syn, 0.0, logits), s)) == pytest.approx(0.45)


# -- registration, budgets, wiring -----------------------------------------------------------


def test_four_variants_are_registered_with_dsa_retraining_and_paper_budgets():
    for name in ("rome", "rome-compat", "rome-no-rpm", "rome-no-ap"):
        entry = METHODS.entry(name)
        assert entry.meta["implemented"] and entry.meta["retrain_augment"]
        # the ablations run on request (--method rome,rome-no-rpm,rome-no-ap,idm), not in `all`
        assert entry.meta["in_all"] == (name in ("rome", "rome-compat"))
    budgets = METHODS.entry("rome").meta["budgets"]
    p1, p10, p50 = (resolve_budget(budgets, "paper", i) for i in (1, 10, 50))
    assert p10["iterations"] == 20001 and p10["alpha"] == 0.2 and p10["lr_img"] == 0.2
    assert (p1["ce_weight"], p1["batch_real"], p1["net_generate_interval"]) == (0.5, 5000, 5)
    assert (p10["ce_weight"], p10["batch_real"], p10["model_train_steps"]) == (0.5, 256, 10)
    assert p50["ce_weight"] == 0.1


def test_cifar100_paper_values_come_from_the_budgets_dataset_layer():
    p10 = resolve_budget(rome_mod.BUDGETS, "paper", 10, "cifar100")
    assert (p10["ce_weight"], p10["model_train_steps"]) == (0.1, 50)
    assert resolve_budget(rome_mod.BUDGETS, "paper", 10, "cifar10")["ce_weight"] == 0.5
    # the scaled presets have no CIFAR-100 entry
    assert resolve_budget(rome_mod.BUDGETS, "quick", 10, "cifar100") == \
        resolve_budget(rome_mod.BUDGETS, "quick", 10)


@pytest.mark.parametrize("name, transform, prior, compat", [
    ("rome", True, True, False), ("rome-compat", True, True, True),
    ("rome-no-rpm", True, False, False), ("rome-no-ap", False, True, False)])
def test_variants_plug_the_right_hooks(monkeypatch, name, transform, prior, compat):
    seen = {}

    def fake_queue_matching(train, ipc, cfg, class_loss, **kw):
        seen.update(kw)
        return rome_mod.DistilledSet(torch.zeros(10, 3, SIZE, SIZE), torch.arange(10))

    monkeypatch.setattr(rome_mod, "queue_matching", fake_queue_matching)
    train = ImageSet(torch.rand(20, 3, SIZE, SIZE), torch.arange(20) % 10, 10)
    result = METHODS.get(name)(train, 1, MethodConfig(seed=0, preset="quick", dataset=SPEC))
    assert (seen["real_transform"] is not None) == transform
    assert (seen["net_batch_fn"] is not None) == prior
    hook = seen["real_transform"] or seen["net_batch_fn"]
    assert hook.__self__.spec == (rome_mod.COMPAT_PGD if compat else rome_mod.STANDARD_PGD)
    assert result.meta["robust_prior"] == prior and result.meta["adversarial_alignment"] == transform


# -- distillation and resume -----------------------------------------------------------------

TINY = {"iterations": 4, "batch_real": 4, "net_num": 2, "initial_nets": 1,
        "net_generate_interval": 2, "fetch_net_num": 1, "model_train_steps": 1, "trained_bs": 8,
        "meter_reset_interval": 0, "arch": "convnet-w32"}


@pytest.fixture(scope="module")
def tiny_train(data):
    x, y, _, _ = data
    keep = torch.cat([torch.nonzero(y == c).flatten()[:8] for c in range(10)])
    return ImageSet(x[keep], y[keep], 10, "cifar10-mini")


def config(**kw) -> MethodConfig:
    params = {**resolve_budget(rome_mod.BUDGETS, "quick", 1), **TINY}
    return MethodConfig(seed=3, preset="quick", dataset=SPEC, params=params, show_progress=False,
                        **kw)


def test_short_distillation_returns_a_valid_expanded_set(tiny_train):
    cfg = config()
    cfg.params["iterations"] = 2
    result = METHODS.get("rome")(tiny_train, 1, cfg)
    assert result.images.shape == (40, 3, SIZE, SIZE)
    assert torch.isfinite(result.images).all()  # pixel units, not clamped to [0,1]
    assert result.labels.tolist() == list(range(10)) * 4
    assert result.meta["factorized"] and result.meta["stored_images"] == 10
    assert result.meta["pgd_space"] == "pixel" and result.meta["alpha"] == 0.2
    result.validate(10, 3)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_result(tiny_train, tmp_path):
    saved = {}

    def checkpoint(state, it):
        torch.save({"state": state, "iteration": it}, tmp_path / f"{it}.pt")
        saved[it] = True

    full = METHODS.get("rome-compat")(tiny_train, 1, config(checkpoint=checkpoint))
    assert sorted(saved) == [1, 2, 3]

    def resume():
        obj = torch.load(tmp_path / "2.pt", weights_only=True)  # as the pipeline loads it
        assert "pgd_generator" in obj["state"]
        return obj["state"], obj["iteration"]

    resumed = METHODS.get("rome-compat")(tiny_train, 1, config(resume=resume))
    assert torch.allclose(resumed.images, full.images, atol=1e-6)
    assert torch.equal(resumed.labels, full.labels)
