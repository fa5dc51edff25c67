"""DM / IDM / BACON machinery: losses, factorized images, the network queue, short runs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, DATASETS, ImageSet, load_dataset
from rome_bench.methods.contract import METHODS, MethodConfig
from rome_bench.methods.distribution_matching import (
    ClassTerms,
    Normalizer,
    QueueMatchingConfig,
    RealSampler,
    dm_loss,
    embed_per_class,
    gaussian_nll,
    mean_embedding_loss,
    queue_matching,
    total_variation,
    weighted_ce,
)
from rome_bench.methods.factorized import (
    assemble,
    downscale,
    expand,
    expanded_distilled_set,
    init_from_real,
    split,
)
from rome_bench.methods.network_queue import AccuracyMeter, NetworkQueue, seeded
from rome_bench.models.convnet import build_model

# -- losses ----------------------------------------------------------------------------------


def _small_net(seed=0):
    torch.manual_seed(seed)
    return build_model("convnet-w32", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def test_dm_loss_is_zero_when_the_sets_coincide():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, 32, 32, generator=g)  # normalized space, 3 per class
    seeds = list(range(100, 110))
    net = _small_net()
    aug = MethodConfig(seed=0, preset="quick", dataset=DATASETS.get("cifar10")).dsa()

    def batch(c):
        return x[3 * c:3 * c + 3]

    assert float(dm_loss(net.net.embed, batch, batch, 10, seeds, aug).detach()) == 0.0
    other = x.flip(0).clone().requires_grad_(True)
    loss = dm_loss(net.net.embed, batch, lambda c: other[3 * c:3 * c + 3], 10, seeds, aug)
    assert float(loss) > 0
    (grad,) = torch.autograd.grad(loss, other)
    assert grad.abs().sum() > 0


def test_mean_embedding_losses_by_hand():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    syn = torch.tensor([[0.0, 0.0], [2.0, 2.0]])   # mean (1, 1)
    assert float(mean_embedding_loss(real, syn)) == pytest.approx(1 + 4)
    assert float(total_variation(real, syn)) == pytest.approx(0.5 * (1 + 2))
    assert float(total_variation(real, syn, squared=True)) == pytest.approx(1.5 ** 2)
    assert float(total_variation(real, real)) == 0.0
    # NLL: sigma = exp(unbiased std); the synthetic gradient vanishes when the means agree
    sigma = torch.exp(real.std(0))
    expected = (torch.log((2 * torch.pi) ** 0.5 * sigma) + 0.5 * ((torch.tensor([1.0, 1.0])
                - torch.tensor([2.0, 3.0])) / sigma) ** 2).sum()
    assert float(gaussian_nll(real, syn)) == pytest.approx(float(expected), rel=1e-5)
    s = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gaussian_nll(real, s), s)
    assert torch.allclose(grad, torch.zeros_like(grad))


def test_class_aware_ce_is_weighted_by_accuracy_in_percent():
    logits, labels = torch.randn(4, 10), torch.full((4,), 3)
    terms = ClassTerms(3, torch.zeros(1, 2), torch.zeros(4, 2), logits, labels, 40.0, None)
    assert float(weighted_ce(terms, 0.5)) == pytest.approx(0.5 * 40.0 * float(
        F.cross_entropy(logits, labels)))
    terms.accuracy = 0.0
    assert float(weighted_ce(terms, 0.5)) == 0.0


def test_batched_class_embedding_equals_one_class_at_a_time():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 3, 32, 32, generator=g)
    net = _small_net()
    aug = MethodConfig(seed=0, preset="quick", dataset=DATASETS.get("cifar10")).dsa()
    seeds = list(range(10))
    together = embed_per_class(net.net.embed, lambda c: x[2 * c:2 * c + 2], 10, seeds, aug,
                               max_batch=4096)
    alone = embed_per_class(net.net.embed, lambda c: x[2 * c:2 * c + 2], 10, seeds, aug,
                            max_batch=1)
    for a, b in zip(together, alone, strict=True):
        assert a.shape == (2, 32 * 4 * 4)
        assert torch.allclose(a, b, atol=1e-5)


def test_real_sampler_draws_distinct_images_of_the_class():
    labels = torch.arange(50) % 5
    s = RealSampler(labels, 5, torch.Generator().manual_seed(0))
    idx = s.indices(2, 6)
    assert len(set(idx.tolist())) == 6 and bool((labels[idx] == 2).all())
    assert sorted(s.indices(2, 1000).tolist()) == list(range(2, 50, 5))


# -- factorized images -----------------------------------------------------------------------


def test_factorization_round_trips_shapes_and_order():
    x = torch.rand(5, 3, 32, 32)
    parts = split(x)
    assert [tuple(p.shape) for p in parts] == [(5, 3, 16, 16)] * 4
    assert torch.equal(assemble(parts), x)
    # the reference order: top-left, bottom-left, top-right, bottom-right
    assert torch.equal(parts[1], x[:, :, 16:, :16]) and torch.equal(parts[2], x[:, :, :16, 16:])
    y = torch.arange(5)
    big, big_y = expand(x, y)
    assert big.shape == (20, 3, 32, 32)
    assert big_y.tolist() == y.repeat(4).tolist()
    # a constant quadrant upsamples to a constant image, in expansion order
    q = torch.zeros(1, 1, 32, 32)
    q[:, :, 16:, :16] = 1.0  # bottom-left
    out, _ = expand(q)
    assert [float(v.mean()) for v in out] == [0.0, 1.0, 0.0, 0.0]
    # downscaling by 2 is a 2x2 mean, and expansion is differentiable
    assert torch.allclose(downscale(x), F.avg_pool2d(x, 2), atol=1e-6)
    z = x.clone().requires_grad_(True)
    expand(z)[0].sum().backward()
    assert z.grad.shape == x.shape and z.grad.abs().sum() > 0


def test_init_from_real_builds_mosaics_of_distinct_images_of_the_class():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 32, 32, generator=g)
    labels = torch.arange(40) % 4
    syn, syn_y = init_from_real(real, labels, 2, 4, torch.Generator().manual_seed(1))
    assert syn.shape == (8, 3, 32, 32) and syn_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    small = downscale(real)
    for i in range(8):
        sources = []
        for part in split(syn[i:i + 1]):
            match = [j for j in range(40) if torch.allclose(small[j], part[0], atol=1e-6)]
            assert len(match) == 1 and int(labels[match[0]]) == int(syn_y[i])
            sources.append(match[0])
        assert len(set(sources)) == 4


def test_expanded_distilled_set_is_in_pixel_space_with_meta():
    # normalized values far outside [0,1] after inversion (seeded: the share is a sample)
    z = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.arange(10).repeat_interleave(2)
    out = expanded_distilled_set(z, labels, CIFAR10_MEAN, CIFAR10_STD, meta={"iterations": 3})
    out.validate(10, 3)
    assert out.images.shape == (80, 3, 32, 32)
    assert out.meta["factorized"] is True and out.meta["stored_images"] == 20
    assert out.meta["stored_ipc"] == 2 and out.meta["iterations"] == 3
    assert out.ipc == 8
    # values outside [0,1] are kept, as the references keep them
    assert out.out_of_range > 0.1 and float(out.images.min()) < 0


# -- the network queue -----------------------------------------------------------------------


def _toy_queue(**kw):
    opts = dict(capacity=3, initial=1, push_every=2, fetch_num=2, train_steps=3, batch_size=8,
                seed=0)
    opts.update(kw)
    return NetworkQueue(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), **opts)


def test_queue_capacity_and_oldest_dropped():
    q = _toy_queue()
    assert len(q) == 1
    for it in range(6):  # pushes at 0, 2, 4
        q.step(it)
    assert len(q) == 3
    assert [n.uid for n in q.nets] == [1, 2, 3]  # uid 0, the oldest, was dropped
    q.push(2)
    assert [n.uid for n in q.nets] == [3, 4, 5]
    picked = q.sample(3)
    assert sorted(n.uid for n in picked) == [3, 4, 5]


def test_new_nets_are_random_and_reproducible():
    a, b = _toy_queue(initial=2), _toy_queue(initial=2)
    wa = [n.model[1].weight for n in a.nets]
    assert torch.equal(wa[0], b.nets[0].model[1].weight)
    assert not torch.equal(wa[0], wa[1])
    before = torch.get_rng_state()
    _toy_queue()
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is untouched


def test_accuracy_meter_is_in_percent_and_resets():
    m = AccuracyMeter()
    assert m.value == 0.0
    m.add(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1, 1, 1]))
    assert m.value == 50.0 and m.count == 4
    m.reset()
    assert m.value == 0.0 and m.count == 0

    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    q = _toy_queue(initial=1, train_steps=40, batch_size=16)
    net = q.nets[0]
    q.train_net(net, x, y)
    assert net.steps == 40 and net.meter.count == 40 * 16
    assert 50.0 < net.accuracy <= 100.0  # percent, not a fraction
    q.reset_meters()
    assert net.accuracy == 0.0


def test_queue_training_uses_the_pluggable_batch():
    seen = []

    def flip_labels(model, x, y):
        seen.append((x.shape[0], model))
        return x * 0, 1 - y

    q = _toy_queue(initial=3, batch_fn=flip_labels, fetch_num=2, train_steps=2, batch_size=5)
    x, y = torch.randn(20, 4), torch.zeros(20, dtype=torch.long)
    trained = q.train(x, y)
    assert len(trained) == 2 and len(seen) == 4 and all(n == 5 for n, _ in seen)
    assert {id(m) for _, m in seen} == {id(n.model) for n in trained}
    assert all(n.meter.count == 10 for n in trained)
    untouched = [n for n in q.nets if n not in trained]
    assert untouched[0].steps == 0


def test_queue_state_round_trip_continues_identically():
    x, y = torch.randn(32, 4), (torch.arange(32) % 2)
    a = _toy_queue(initial=2)
    a.train(x, y)
    b = _toy_queue(initial=1, seed=5)
    b.load_state_dict(a.state_dict())
    for q in (a, b):
        q.step(2)
        q.train(x, y)
    assert [n.uid for n in a.nets] == [n.uid for n in b.nets]
    for na, nb in zip(a.nets, b.nets, strict=True):
        assert torch.equal(na.model[1].weight, nb.model[1].weight)
        assert na.accuracy == nb.accuracy


def test_seeded_build_is_deterministic():
    a = seeded(lambda: nn.Linear(3, 3), 7)
    b = seeded(lambda: nn.Linear(3, 3), 7)
    assert torch.equal(a.weight, b.weight)


# -- short distillation runs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_train():
    train = load_dataset("cifar10-mini", "train")
    idx = torch.cat([train.indices_of(c)[:12] for c in range(10)])
    return ImageSet(train.images[idx], train.labels[idx], 10, train.name)


TINY = {"iterations": 3, "batch_real": 4, "arch": "convnet-w32", "net_num": 2, "initial_nets": 1,
        "net_generate_interval": 1, "fetch_net_num": 1, "model_train_steps": 1, "trained_bs": 8,
        "meter_reset_interval": 2}


def _cfg(params, **kw):
    return MethodConfig(seed=0, preset="quick", dataset=DATASETS.get("cifar10-mini"),
                        params=params, show_progress=False, **kw)


@pytest.mark.parametrize("method", ["dm", "idm", "bacon"])
def test_short_runs_return_valid_distilled_sets(method, tiny_train):
    params = {**METHODS.entry(method).meta["budgets"]["quick"]["all"], **TINY}
    out = METHODS.get(method)(tiny_train, 2, _cfg(params))
    out.validate(10, 3)
    assert out.labels.dtype == torch.long
    if method == "dm":
        assert out.images.shape == (20, 3, 32, 32) and out.ipc == 2
    else:  # stored factorized, returned expanded
        assert out.images.shape == (80, 3, 32, 32) and out.ipc == 8
        assert out.meta["factorized"] is True and out.meta["stored_images"] == 20
    assert torch.bincount(out.labels).tolist() == [out.ipc] * 10


def test_distillation_changes_the_images(tiny_train):
    params = {**METHODS.entry("dm").meta["budgets"]["quick"]["all"], **TINY}
    start = {**params, "iterations": 0}
    before = METHODS.get("dm")(tiny_train, 1, _cfg(start)).images
    after = METHODS.get("dm")(tiny_train, 1, _cfg(params)).images
    assert (before - after).abs().max() > 1e-3


def test_queue_matching_resumes_to_the_same_result(tiny_train):
    params = {**METHODS.entry("idm").meta["budgets"]["quick"]["all"], **TINY, "iterations": 4}
    settings = QueueMatchingConfig.from_params(params)
    saved = {}

    def loss(terms, s):
        return mean_embedding_loss(terms.real, terms.syn) + weighted_ce(terms, s.ce_weight)

    full = queue_matching(tiny_train, 1, _cfg(params), loss, settings=settings)

    def keep(state, it):
        saved.setdefault(it, state)

    queue_matching(tiny_train, 1, _cfg(params, checkpoint=keep), loss, settings=settings)
    assert set(saved) == {1, 2, 3}
    resumed = queue_matching(tiny_train, 1, _cfg(params, resume=lambda: (saved[2], 2)), loss,
                             settings=settings)
    assert torch.allclose(full.images, resumed.images, atol=1e-6)


def test_normalizer_round_trip():
    n = Normalizer(CIFAR10_MEAN, CIFAR10_STD, "cpu")
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(n.inverse(n(x)), x, atol=1e-6)
