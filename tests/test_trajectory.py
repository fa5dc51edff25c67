"""Trajectory matching (MTT, DATM), the expert buffer and ZCA whitening."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from rome_bench.baselines.datm import init_soft_labels, select_correct, start_window
from rome_bench.baselines.mtt import Trajectories, matching_loss, unrolled_student

from rome_bench.core.cache import Cache
from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, DATASETS, DatasetSpec, ImageSet, load_dataset
from rome_bench.methods.contract import MethodConfig
from rome_bench.methods.experts import (
    ExpertSettings,
    build_expert_net,
    flatten_params,
    functional_forward,
    get_experts,
    load_flat_params,
    to_network_space,
    unflatten_params,
)
from rome_bench.methods.zca import fit_zca, unwhiten, zca_matrix
from rome_bench.models.convnet import ConvNet, LinearTransform, Normalize, build_model
from rome_bench.models.training import TrainConfig, soft_cross_entropy, train_model

SPEC = DATASETS.get("cifar10-mini")


# An unregistered 8x8 dataset spec (passed explicitly) so buffer tests train in milliseconds.
TINY = DatasetSpec("unit-8px", 10, 3, (8, 8), CIFAR10_MEAN, CIFAR10_STD,
                   lambda root, split, download: None, needs_root=False)


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run tiny tensors, where a second thread only adds synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class NoAugment:
    """Stands in for DSA where a test needs the exact SGD step."""

    def augment_normalized(self, z, seed=None, generator=None):
        return z


def _tiny_net(seed=0, width=8, depth=2):
    torch.manual_seed(seed)
    return ConvNet(3, 10, width=width, depth=depth, image_size=(8, 8))


def _tiny_traj(net, experts=()):
    settings = ExpertSettings("unit-8px", 1, 1, zca=False, arch="convnet-d1")
    return Trajectories(list(experts), settings, net, None, NoAugment(),
                        torch.tensor(TINY.mean).view(1, -1, 1, 1),
                        torch.tensor(TINY.std).view(1, -1, 1, 1), "", TINY, "cpu")


def _tiny_train(per_class=2, seed=0):
    """Real CIFAR-10 images (the embedded subset) average-pooled to 8x8."""
    mini = load_dataset("cifar10-mini", "train")
    idx = torch.cat([mini.indices_of(c)[seed:seed + per_class] for c in range(10)])
    sub = mini.subset(idx)
    return ImageSet(F.avg_pool2d(sub.images, 4), sub.labels, 10, "unit-8px")


# -- flat parameters ---------------------------------------------------------------------------
def test_flatten_unflatten_and_functional_forward():
    net = _tiny_net()
    flat = flatten_params(net)
    assert flat.shape == (sum(p.numel() for p in net.parameters()),)
    for (name, p), v in zip(net.named_parameters(), unflatten_params(flat, net).values()):
        assert torch.equal(p.detach(), v), name
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(functional_forward(net, flat, x), net(x), atol=1e-6)
    other = _tiny_net(seed=1)
    load_flat_params(other, flat)
    assert torch.equal(flatten_params(other), flat)
    with pytest.raises(ValueError):
        unflatten_params(flat[:-1], net)


def test_layout_matches_the_reference_order():
    names = [n for n, _ in ConvNet(3, 10).named_parameters()]
    assert names == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                     "features.4.weight", "features.4.bias", "features.5.weight", "features.5.bias",
                     "features.8.weight", "features.8.bias", "features.9.weight", "features.9.bias",
                     "classifier.weight", "classifier.bias"]
    assert flatten_params(ConvNet(3, 10)).numel() == 320010


# -- the matching loss -------------------------------------------------------------------------
def test_trajectory_loss_is_zero_when_the_student_reproduces_the_expert():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, generator=g), torch.arange(6) % 3
    net = _tiny_net()
    lr, steps = 0.05, 3
    w0 = flatten_params(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr)  # the expert: plain full-batch SGD
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    target = flatten_params(net)
    traj = _tiny_traj(_tiny_net())
    syn_lr = torch.tensor(lr, requires_grad=True)
    images = x.clone().requires_grad_(True)
    student = unrolled_student(traj, images, y, syn_lr, w0, steps, None,
                               torch.Generator().manual_seed(0), torch.Generator())
    loss = matching_loss(student, w0, target)
    assert float(loss.detach()) < 1e-8
    # a different lr or images leave the expert's path, and the gradient reaches both
    off = matching_loss(unrolled_student(traj, images, y, syn_lr * 2, w0, steps, None,
                                         torch.Generator().manual_seed(0), torch.Generator()),
                        w0, target)
    assert float(off.detach()) > 1e-3
    off.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert syn_lr.grad is not None and syn_lr.grad != 0


def test_matching_loss_is_normalized_by_the_expert_displacement():
    start, target = torch.zeros(5), torch.full((5,), 2.0)
    assert float(matching_loss(start, start, target)) == pytest.approx(1.0)
    assert float(matching_loss(target, start, target)) == 0.0
    assert float(matching_loss(torch.ones(5), start, target)) == pytest.approx(0.25)


def test_soft_label_gradient_flows_through_the_unroll():
    net = _tiny_net()
    traj = _tiny_traj(net)
    images = torch.randn(4, 3, 8, 8, requires_grad=True)
    logits = torch.randn(4, 10, requires_grad=True)
    w0 = flatten_params(net)
    student = unrolled_student(traj, images, logits, torch.tensor(0.01), w0, 2, 2,
                               torch.Generator().manual_seed(0), torch.Generator())
    matching_loss(student, w0, w0 + 0.01).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# -- the expert buffer -------------------------------------------------------------------------
def _settings(**kw):
    base = dict(dataset="unit-8px", num_experts=2, epochs=2, zca=False, seed=3,
                preset="unit", arch="convnet-w32", batch_size=8)
    base.update(kw)
    return ExpertSettings(**base)


def test_buffer_round_trips_parameters_exactly(tmp_path):
    train = _tiny_train()
    settings = _settings(num_experts=1)
    experts = get_experts(train, settings, show_progress=False, cache=Cache(tmp_path), spec=TINY)
    assert len(experts) == 1 and experts[0].dtype == torch.float32
    assert experts[0].shape == (3, flatten_params(build_expert_net(settings, TINY)).numel())
    # the stored trajectory is bit-identical to the one training produces
    from rome_bench.data.augment import DSA
    from rome_bench.methods.experts import _expert_seed, train_expert

    seed = _expert_seed(settings, 0)
    torch.manual_seed(seed)
    net = build_expert_net(settings, TINY)
    x = to_network_space(train.images, TINY)
    fresh = train_expert(net, x, train.labels, settings, DSA(TINY.mean, TINY.std), seed)
    assert torch.equal(fresh, experts[0])
    assert torch.equal(flatten_params(net), experts[0][-1])
    loaded = load_flat_params(build_expert_net(settings, TINY), experts[0][-1])
    for a, b in zip(net.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    # a second call reads the cache and returns the same tensors
    again = get_experts(train, settings, show_progress=False, cache=Cache(tmp_path), spec=TINY)
    assert torch.equal(again[0], experts[0])


def test_buffer_resumes_per_expert_and_keys_by_settings(tmp_path, monkeypatch):
    import rome_bench.methods.experts as ex

    train = _tiny_train()
    settings = _settings()
    first = get_experts(train, settings, show_progress=False, cache=Cache(tmp_path), spec=TINY)
    assert not torch.equal(first[0][0], first[1][0])  # independent initialisations
    folder = ex.buffer_folder(settings, ex.data_fingerprint(train), Cache(tmp_path))
    (folder / "expert_001.pt").unlink()
    calls = []
    real_train = ex.train_expert
    monkeypatch.setattr(ex, "train_expert", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    resumed = get_experts(train, settings, show_progress=False, cache=Cache(tmp_path), spec=TINY)
    assert len(calls) == 1  # only the missing expert was trained
    assert all(torch.equal(a, b) for a, b in zip(first, resumed))
    get_experts(train, settings, show_progress=False, cache=Cache(tmp_path), spec=TINY)
    assert len(calls) == 1
    assert ex.buffer_key(settings, "x") != ex.buffer_key(_settings(seed=4), "x")
    assert ex.buffer_key(settings, "x") != ex.buffer_key(settings, "y")


def test_buffer_and_whitening_keys_follow_the_thread_count(tmp_path):
    """A CPU result changes with the thread count, so a buffer or a ZCA trained with one
    thread is not reused by a process computing with two (as the run plan's cache keys)."""
    import rome_bench.methods.experts as ex

    settings = _settings()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (ex.buffer_key(settings, "x"), ex.compute_tag("cpu"))
        torch.set_num_threads(2)
        two = (ex.buffer_key(settings, "x"), ex.compute_tag("cpu"))
    finally:
        torch.set_num_threads(before)
    assert one[1] == "cpu/1 threads" and two[1] == "cpu/2 threads"
    assert one[0] != two[0]
    assert ex.buffer_key(settings, "x", "cuda") != one[0]
    assert ex.compute_tag("meta") == "meta"


def test_settings_from_a_method_budget():
    s = ExpertSettings.from_params("cifar10", {"buffer_num_experts": 7, "buffer_epochs": 9,
                                               "buffer_flat": True, "zca": False, "lr_img": 1.0},
                                   seed=2, preset="cpu")
    assert (s.num_experts, s.epochs, s.flat, s.zca, s.seed, s.images_per_class) == \
        (7, 9, True, False, 2, 500)


def test_gsam_experts_differ_from_sgd_experts():
    from rome_bench.data.augment import DSA
    from rome_bench.methods.experts import train_expert

    train = _tiny_train()
    x = to_network_space(train.images, TINY)
    out = []
    for flat in (False, True):
        torch.manual_seed(0)
        net = build_expert_net(_settings(), TINY)
        out.append(train_expert(net, x, train.labels, _settings(flat=flat, epochs=1),
                                DSA(TINY.mean, TINY.std), 0))
    assert torch.equal(out[0][0], out[1][0]) and not torch.equal(out[0][1], out[1][1])
    assert torch.isfinite(out[1]).all()


# -- ZCA -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [60, 30])  # covariance route (N > D) and Gram route (N < D)
def test_zca_matches_the_kornia_formula(n):
    x = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(n))
    flat = x.flatten(1).double()
    xc = flat - flat.mean(0)
    u, s, _ = torch.linalg.svd(xc.T @ xc / (n - 1))
    expected = u @ torch.diag((s + 0.1).rsqrt()) @ u.T
    t, mu = zca_matrix(x, 0.1)
    assert torch.allclose(t, expected, atol=1e-10)
    w = fit_zca(x, 0.1, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    z = Normalize(CIFAR10_MEAN, CIFAR10_STD)(x)
    assert torch.allclose(w(z), (xc @ expected).float().view_as(x), atol=1e-5)
    assert torch.allclose(unwhiten(w, w(z)), z, atol=1e-4)


def test_zca_inside_the_model_keeps_attacks_in_pixel_space():
    train = _tiny_train(per_class=4)
    whitening = fit_zca(train.images, mean=SPEC.mean, std=SPEC.std)
    torch.manual_seed(0)
    model = build_model("convnet-w32", num_classes=10, mean=SPEC.mean, std=SPEC.std,
                        image_size=(8, 8), whitening=whitening).eval()
    x, y = train.images[:8], train.labels[:8]
    z = Normalize(SPEC.mean, SPEC.std)(x)
    assert torch.allclose(model(x), model.net(whitening(z)), atol=1e-5)
    for atk in (torchattacks.FGSM(model, eps=8 / 255),
                torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=3, random_start=False)):
        adv = atk(x, y)
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6
        assert (adv - x).abs().max() > 0  # the gradient passes through the whitening
    # the pipeline's recipe from a distilled set's meta rebuilds the same layer
    meta = {"matrix": whitening.matrix, "mean": whitening.offset}
    rebuilt = LinearTransform(meta["matrix"], meta["mean"])
    assert torch.equal(rebuilt(z), whitening(z))


# -- DATM pieces -------------------------------------------------------------------------------
def test_start_window_grows_then_stays():
    p = {"sequential": True, "min_start_epoch": 0, "current_max_start_epoch": 10,
         "max_start_epoch": 20, "expansion_end_epoch": 1000}
    assert [start_window(p, it)[1] for it in (0, 100, 999, 1000, 10**6)] == [10, 11, 19, 20, 20]
    assert start_window({**p, "sequential": False}, 0) == (0, 20)


def test_datm_init_selects_correct_images_and_averages_correct_experts():
    train = _tiny_train(per_class=6)
    net = _tiny_net(width=8, depth=1)
    # two "experts" whose final snapshots are fixed random networks
    experts = [torch.stack([flatten_params(_rand_net(s))] * 2) for s in (0, 1)]
    traj = _tiny_traj(net, experts)
    idx = select_correct(train, 2, traj, torch.Generator().manual_seed(0))
    assert idx.shape == (20,) and torch.equal(train.labels[idx], torch.arange(10).repeat_interleave(2))
    images = to_network_space(train.images[idx], TINY)
    hard = train.labels[idx]
    soft = init_soft_labels(traj, images, hard)
    logits = [functional_forward(net, e[-1], images).detach() for e in experts]
    ok = [(z.argmax(1) == hard) for z in logits]
    for i in range(20):
        right = [z[i] for z, k in zip(logits, ok) if k[i]]
        expected = torch.stack(right).mean(0) if right else torch.stack([z[i] for z in logits]).mean(0)
        assert torch.allclose(soft[i], expected, atol=1e-5)
    # the first expert's correct predictions are taken first, as many as the class offers
    x_all = to_network_space(train.images, TINY)
    pred0 = functional_forward(net, experts[0][-1], x_all).argmax(1)
    for c in range(10):
        offered = int(((pred0 == c) & (train.labels == c)).sum())
        taken = int((logits[0].argmax(1)[hard == c] == c).sum())
        assert taken >= min(2, offered)


def _rand_net(seed):
    return _tiny_net(seed, width=8, depth=1)


def test_soft_label_retraining_accepts_logits():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 8, 8, generator=g)
    logits = torch.randn(10, 10, generator=g) * 3
    whitening = fit_zca(x, mean=SPEC.mean, std=SPEC.std)
    torch.manual_seed(0)
    model = build_model("convnet-w32", num_classes=10, mean=SPEC.mean, std=SPEC.std,
                        image_size=(8, 8), whitening=whitening)
    with torch.no_grad():
        before = float(soft_cross_entropy(model(x), logits))
    train_model(model, x, logits, TrainConfig(epochs=60, lr=0.05, augment=False))
    with torch.no_grad():
        after = float(soft_cross_entropy(model(x), logits))
    assert after < 0.9 * before  # it moves towards softmax(logits)


# -- the methods end to end ----------------------------------------------------------------------
def _cfg(tmp_path, method_params, seed=0):
    saved = {}

    def checkpoint(state, it):
        saved["ckpt"] = (state, it)

    return MethodConfig(seed=seed, preset="unit", dataset=SPEC, params=method_params,
                        show_progress=False, checkpoint=checkpoint,
                        resume=lambda: saved.get("resume")), saved


UNIT = {"iterations": 3, "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1,
        "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "batch_syn": None, "zca": True,
        "buffer_num_experts": 1, "buffer_epochs": 2, "buffer_arch": "convnet-w32",
        "buffer_images_per_class": None, "buffer_batch_size": 8}


@pytest.mark.slow
def test_mtt_and_datm_run_resume_and_return_what_the_pipeline_needs(tmp_path):
    from rome_bench.baselines.datm import datm
    from rome_bench.baselines.mtt import mtt

    mini = load_dataset("cifar10-mini", "train")
    train = mini.subset(torch.cat([mini.indices_of(c)[:3] for c in range(10)]))
    cfg, saved = _cfg(tmp_path, UNIT)
    out = mtt(train, 1, cfg)
    out.validate(10, 3)
    assert out.labels.tolist() == list(range(10))
    assert set(out.meta) >= {"lr", "zca", "buffer"} and out.meta["lr"] > 0
    assert out.meta["zca"]["matrix"].shape == (3072, 3072)
    # resuming from the checkpoint at iteration k gives the same result as running through
    cfg2, saved2 = _cfg(tmp_path, UNIT)
    saved2["resume"] = saved["ckpt"]
    again = mtt(train, 1, cfg2)
    assert torch.allclose(again.images, out.images, atol=1e-6)
    assert again.meta["lr"] == pytest.approx(out.meta["lr"], rel=1e-6)

    dparams = {**UNIT, "pix_init": "samples_predicted_correctly", "lr_y": 2.0, "momentum_y": 0.9,
               "threshold": 10.0, "sequential": True, "min_start_epoch": 0,
               "current_max_start_epoch": 1, "max_start_epoch": 1, "expansion_end_epoch": 2,
               "ema_decay": 0.5, "buffer_flat": False}
    cfg3, _ = _cfg(tmp_path, dparams)
    soft = datm(train, 1, cfg3)
    soft.validate(10, 3)
    assert soft.labels.shape == (10, 10) and soft.labels.is_floating_point()
    assert soft.meta["updates"] == 3 and "zca" in soft.meta
    # the shared buffer was trained once: MTT and DATM ask for the same settings
    assert len(list((Cache().root / "experts").iterdir())) == 1
