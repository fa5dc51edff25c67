"""The batched DeepFool against torchattacks.DeepFool (3.5.1) on real CIFAR-10 and a BEARD model.

Label agreement is asserted on the images that are not on a float32 decision boundary:
torchattacks' DeepFool applies its overshoot per step, so iterates that do not cross converge
onto the boundary until the top two logits tie in float32 (5-10% of images here). Which side of
the tie such an image is classified on depends on the evaluation batch and kernels, not on the
attack: torchattacks disagrees with itself on them between a batched and a per-image
evaluation. ``test_disagreements_are_ties`` checks that every label disagreement is such a tie.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

from rome_bench.attacks.deepfool import BatchedDeepFool, deepfool, deepfool_with_targets
from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from rome_bench.models.convnet import load_dc_checkpoint

PER_CLASS = 10  # 100 images
TOL = 1e-5  # ~10 float32 rounding units of a logit of magnitude 8-16


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return logits.gather(1, labels[:, None]).squeeze(1) - others.max(1).values


@pytest.fixture(scope="module")
def attacked(cifar10_root, pool_dir):
    """(model, images, labels, torchattacks adv, batched adv) on the first 10 test images per class."""
    data = np.load(cifar10_root / "test.npz")
    idx = np.concatenate([np.nonzero(data["y"] == c)[0][:PER_CLASS] for c in range(10)])
    images = torch.from_numpy(data["x"][idx]).permute(0, 3, 1, 2).float().div(255).contiguous()
    labels = torch.from_numpy(data["y"][idx]).long()
    checkpoint = next(pool_dir.glob("BACON_ConvNet_CIFAR10_50_*.pth"))
    model = load_dc_checkpoint(checkpoint, "convnet", num_classes=10, mean=CIFAR10_MEAN,
                               std=CIFAR10_STD).eval()
    ref = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(images, labels)
    ours = deepfool(model, images, labels, steps=50, overshoot=0.02)
    return model, images, labels, ref, ours


def test_same_adversarial_images(attacked):
    _, images, _, ref, ours = attacked
    assert ours.shape == images.shape and ours.dtype == images.dtype
    assert 0 <= float(ours.min()) and float(ours.max()) <= 1
    per_image = (ref - ours).abs().flatten(1).amax(1)
    assert float((per_image <= 1e-3).float().mean()) >= 0.99, per_image.topk(3)


def test_same_labels_and_robust_accuracy(attacked):
    model, _, labels, ref, ours = attacked
    with torch.no_grad():
        ref_pred, ours_pred = model(ref).argmax(1), model(ours).argmax(1)
        ref_single = torch.cat([model(ref[i:i + 1]) for i in range(len(ref))])
        ours_single = torch.cat([model(ours[i:i + 1]) for i in range(len(ours))])
    decided = (_margin(ref_single, labels).abs() > TOL) & (_margin(ours_single, labels).abs() > TOL)
    agree = float((ref_pred == ours_pred)[decided].float().mean())
    ref_rob = 100 * float(((ref_pred == labels) & decided).sum()) / len(labels)
    ours_rob = 100 * float(((ours_pred == labels) & decided).sum()) / len(labels)
    print(f"agreement off boundary {100 * agree:.1f}% ({int(decided.sum())} images), all "
          f"{100 * float((ref_pred == ours_pred).float().mean()):.1f}%; robust acc "
          f"torchattacks {100 * float((ref_pred == labels).float().mean()):.1f} "
          f"batched {100 * float((ours_pred == labels).float().mean()):.1f}")
    assert int(decided.sum()) >= 0.8 * len(labels)
    assert agree >= 0.99
    assert abs(ref_rob - ours_rob) <= 0.5


def test_disagreements_are_ties(attacked):
    """Every image on which the two attacks' labels differ ends on a float32 tie in one of them."""
    model, _, labels, ref, ours = attacked
    with torch.no_grad():
        differ = model(ref).argmax(1) != model(ours).argmax(1)
        ref_m = _margin(torch.cat([model(ref[i:i + 1]) for i in range(len(ref))]), labels)
        ours_m = _margin(torch.cat([model(ours[i:i + 1]) for i in range(len(ours))]), labels)
    tie = (ref_m.abs() <= TOL) | (ours_m.abs() <= TOL)
    assert bool(tie[differ].all()), (ref_m[differ & ~tie], ours_m[differ & ~tie])


def test_attack_class_matches_function_and_restores_mode(attacked):
    model, images, labels, _, ours = attacked
    atk = BatchedDeepFool(model, steps=50, overshoot=0.02)
    model.train()
    try:
        adv = atk(images[:20], labels[:20])
        assert model.training  # torchattacks' __call__ evaluates in eval mode, then restores
    finally:
        model.eval()
    torch.testing.assert_close(adv, ours[:20], rtol=0, atol=1e-5)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(8, 8), nn.ReLU(),
                                 nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_synthetic_matches_torchattacks_with_normalization():
    """No data needed: a small random net, 5 classes, torchattacks' normalization path."""
    torch.manual_seed(0)
    model = _Tiny().eval()
    images, labels = torch.rand(20, 3, 8, 8), torch.randint(0, 5, (20,))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    ref_atk = torchattacks.DeepFool(model, steps=50, overshoot=0.02)
    ref_atk.set_normalization_used(mean, std)
    ours_atk = BatchedDeepFool(model, steps=50, overshoot=0.02)
    ours_atk.set_normalization_used(mean, std)
    # with normalization set, __call__ takes and returns normalized images
    normalized = ref_atk.normalize(images)
    torch.testing.assert_close(ours_atk(normalized, labels), ref_atk(normalized, labels),
                               rtol=0, atol=1e-4)
    # called directly (the model then sees raw inputs), adv images and target labels as well
    ref_adv, ref_tgt = ref_atk.forward_return_target_labels(images, labels)
    adv, tgt = ours_atk.forward_return_target_labels(images, labels)
    torch.testing.assert_close(adv, ref_adv, rtol=0, atol=1e-4)
    assert float((tgt == ref_tgt).float().mean()) >= 0.95


def test_edge_cases():
    torch.manual_seed(1)
    model = _Tiny().eval()
    images = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        pred = model(images).argmax(1)
    # already misclassified: returned unchanged, target label = prediction
    wrong = (pred + 1) % 5
    adv, tgt = deepfool_with_targets(model, images, wrong)
    assert torch.equal(adv, images) and torch.equal(tgt, pred)
    # zero steps: unchanged; empty batch: empty
    assert torch.equal(deepfool(model, images, pred, steps=0), images)
    assert deepfool(model, images[:0], pred[:0]).shape == (0, 3, 8, 8)
    # chunking changes nothing but speed
    torch.testing.assert_close(deepfool(model, images, pred, chunk_size=2),
                               deepfool(model, images, pred, chunk_size=None), rtol=0, atol=1e-5)
