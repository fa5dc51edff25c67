"""Gradient matching (DC/DSA): the distance, batched per-class gradients, the loop, resuming."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rome_bench.data.augment import DSA
from rome_bench.data.datasets import DATASETS, ImageSet, load_dataset
from rome_bench.methods.contract import METHODS, MethodConfig
from rome_bench.methods.gradient_matching import (
    LOOPS,
    class_gradients,
    distill_gradient_matching,
    get_loops,
    gradient_matching_loss,
    match_distance,
)
from rome_bench.models.convnet import ConvNet

MINI = DATASETS.get("cifar10-mini")


# -- the distance ---------------------------------------------------------------------------
def test_match_distance_hand_computed():
    # Linear weight, two output rows:
    #   row 0: s=(1,0,0), r=(1,1,0): cos = 1/sqrt(2)  -> 1 - 0.70711 = 0.29289
    #   row 1: s=(0,2,0), r=(0,-1,0): cos = -2/2 = -1 -> 2
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    r = torch.tensor([[1.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    expected = (1 - 1 / (math.sqrt(2) + 1e-6)) + (1 + 2 / (2 + 1e-6))
    assert float(match_distance([s], [r])) == pytest.approx(expected, abs=1e-6)
    assert float(match_distance([s], [r])) == pytest.approx(2.292893, abs=1e-5)


def test_match_distance_conv_rows_and_ignored_vectors():
    # A conv weight (out=2, in=1, 1, 2) is compared per output channel: rows (3,4) vs (4,3)
    # give cos 24/25, rows (1,0) vs (0,1) give cos 0.
    s = torch.tensor([[[[3.0, 4.0]]], [[[1.0, 0.0]]]])
    r = torch.tensor([[[[4.0, 3.0]]], [[[0.0, 1.0]]]])
    expected = (1 - 24 / (25 + 1e-6)) + 1.0
    bias_s, bias_r = torch.tensor([1.0, -1.0]), torch.tensor([-5.0, 2.0])  # 1-D: ignored
    d = match_distance([s, bias_s], [r, bias_r])
    assert float(d) == pytest.approx(expected, abs=1e-6)
    assert float(match_distance([bias_s], [bias_r])) == 0.0


def test_match_distance_batched_equals_sum_and_identical_is_zero():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4, 2, 3, 3, generator=gen)  # 3 stacked conv gradients
    r = torch.randn(3, 4, 2, 3, 3, generator=gen)
    batched = match_distance([s], [r], batch_dims=1)
    separate = sum(match_distance([s[c]], [r[c]]) for c in range(3))
    assert float(batched) == pytest.approx(float(separate), rel=1e-6)
    assert float(match_distance([s], [s], batch_dims=1)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        match_distance([s], [r[:2]])


def test_get_loops_reference_table():
    assert get_loops(1) == (1, 1)
    assert get_loops(10) == (10, 50)
    assert get_loops(50) == (50, 10)
    assert set(LOOPS) == {1, 10, 20, 30, 40, 50}
    with pytest.raises(ValueError, match="outer_loop"):
        get_loops(7)


# -- batched per-class gradients equal the per-class reference computation ----------------
def _tiny_net(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(3, 4, width=8, depth=2, image_size=(8, 8))


def _reference_loss(net, real, syn, aug=None, seeds=None):
    """The reference's structure: one forward/backward per class, every parameter."""
    params = list(net.parameters())
    loss = 0.0
    for c, (xr, xs) in enumerate(zip(real, syn)):
        if aug is not None:
            xr, xs = aug.augment_normalized(xr, seed=seeds[c]), aug.augment_normalized(xs, seed=seeds[c])
        lr = F.cross_entropy(net(xr), torch.full((len(xr),), c))
        g_real = [g.detach() for g in torch.autograd.grad(lr, params)]
        ls = F.cross_entropy(net(xs), torch.full((len(xs),), c))
        g_syn = torch.autograd.grad(ls, params, create_graph=True)
        loss = loss + match_distance(g_syn, g_real)
    return loss


def test_class_gradients_match_per_class_autograd():
    net = _tiny_net()
    gen = torch.Generator().manual_seed(1)
    counts = [3, 5, 2, 4]  # unequal class sizes
    x = torch.randn(sum(counts), 3, 8, 8, generator=gen)
    grads = class_gradients(net, x, counts)
    weights = [net.features[0].weight, net.features[4].weight, net.classifier.weight]
    assert [tuple(g.shape) for g in grads] == [(4, *w.shape) for w in weights]
    for c, part in enumerate(x.split(counts)):
        loss = F.cross_entropy(net(part), torch.full((len(part),), c))
        expected = torch.autograd.grad(loss, weights)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g[c], e, rtol=1e-4, atol=1e-6)
    # passes of 3 images (chunks straddle class boundaries) give the same gradients
    for g, h in zip(grads, class_gradients(net, x, counts, chunk=3)):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("use_dsa", [False, True])
def test_batched_loss_and_image_gradient_equal_reference(use_dsa):
    net = _tiny_net(2)
    gen = torch.Generator().manual_seed(3)
    real = [torch.randn(n, 3, 8, 8, generator=gen) for n in (6, 4, 6, 5)]
    syn = torch.randn(8, 3, 8, 8, generator=gen, requires_grad=True)
    aug = DSA(MINI.mean, MINI.std) if use_dsa else None
    seeds = [11, 12, 13, 14] if use_dsa else None
    ours = gradient_matching_loss(net, real, syn.split(2), aug, seeds, chunk=5)
    (g_ours,) = torch.autograd.grad(ours, syn)
    ref = _reference_loss(net, real, syn.split(2), aug, seeds)
    (g_ref,) = torch.autograd.grad(ref, syn)
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-3, atol=1e-6)


# -- the loop -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_train() -> ImageSet:
    """6 real images per class, average-pooled to 8x8 to keep the loop fast."""
    full = load_dataset("cifar10-mini", "train")
    idx = torch.cat([full.indices_of(c)[:6] for c in range(full.num_classes)])
    small = full.subset(idx)
    return ImageSet(F.avg_pool2d(small.images, 4), small.labels, small.num_classes)


def _cfg(**params) -> MethodConfig:
    base = {"iterations": 2, "lr_img": 0.1, "lr_net": 0.01, "batch_real": 4, "batch_train": 256,
            "outer_loop": 2, "inner_loop": 1, "init": "real", "net": "convnet-w32"}
    return MethodConfig(seed=0, preset="quick", dataset=MINI, params={**base, **params},
                        show_progress=False)


@pytest.mark.parametrize("use_dsa", [False, True])
def test_short_distillation_shapes_labels_and_moves_images(tiny_train, use_dsa):
    out = distill_gradient_matching(tiny_train, 2, _cfg(), use_dsa=use_dsa)
    assert out.images.shape == (20, 3, 8, 8)
    assert out.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert torch.isfinite(out.images).all()  # pixel units, not clamped to [0,1]
    out.validate(10, 3)
    # init 'real' picks real images of the right class; the updates moved them
    start = distill_gradient_matching(tiny_train, 2, _cfg(lr_img=0.0), use_dsa=use_dsa).images
    assert (out.images - start).abs().max() > 1e-3
    for img, c in zip(start, out.labels):
        own = tiny_train.images[tiny_train.labels == c]
        assert ((own - img).flatten(1).abs().max(1).values < 1e-5).any()


def test_resume_from_checkpoint_equals_uninterrupted(tiny_train, tmp_path):
    def run(resume_from=None, stop_after=None):
        saved = {}

        def checkpoint(state, it):
            torch.save({"state": state, "iteration": it}, tmp_path / f"ckpt{it}.pt")
            saved[it] = state
            if stop_after is not None and it >= stop_after:
                raise KeyboardInterrupt

        def resume():
            if resume_from is None:
                return None
            obj = torch.load(tmp_path / f"ckpt{resume_from}.pt", weights_only=True)
            return obj["state"], obj["iteration"]

        cfg = _cfg(iterations=3, outer_loop=2, inner_loop=1)
        cfg.checkpoint, cfg.resume = checkpoint, resume
        return distill_gradient_matching(tiny_train, 1, cfg, use_dsa=True), saved

    full, saved = run()
    assert sorted(saved) == [1, 2]  # every iteration (10% of 3 rounds up to 1), not the last
    with pytest.raises(KeyboardInterrupt):
        run(stop_after=1)
    resumed, _ = run(resume_from=1)
    torch.testing.assert_close(resumed.images, full.images, rtol=0, atol=1e-6)


def test_registered_methods_and_budgets():
    dc, dsa = METHODS.entry("dc"), METHODS.entry("dsa")
    assert dc.meta["retrain_augment"] is False and dsa.meta["retrain_augment"] is True
    for entry in (dc, dsa):
        paper = entry.meta["budgets"]["paper"]
        # range(Iteration + 1) with an update per pass; DC from noise, DSA from real images
        assert paper["all"]["iterations"] == 1001 and paper["all"]["lr_img"] == 0.1
        assert paper["all"]["batch_real"] == 256
        assert paper["all"]["init"] == ("noise" if entry is dc else "real")
        assert (paper[10]["outer_loop"], paper[10]["inner_loop"]) == (10, 50)
        for preset in ("quick", "cpu"):
            for ipc in (1, 10):
                assert entry.meta["budgets"][preset][ipc]["iterations"] >= 1
