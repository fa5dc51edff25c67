import torch

from rome_bench.augment import DSA
from rome_bench.data import CIFAR10_MEAN, CIFAR10_STD
from rome_bench.models import build_model
from rome_bench.train import TrainConfig, accuracy, soft_cross_entropy, train_model


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("convnet-w32", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def test_training_fits_a_tiny_set_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 3, 32, 32, generator=g), torch.arange(20) % 10
    cfg = TrainConfig(epochs=30, batch_size=10)
    a = train_model(_model(), x, y, cfg, augment=DSA(CIFAR10_MEAN, CIFAR10_STD), seed=1)
    b = train_model(_model(), x, y, cfg, augment=DSA(CIFAR10_MEAN, CIFAR10_STD), seed=1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    fit = train_model(_model(), x, y, TrainConfig(epochs=30, batch_size=10, augment=False))
    assert accuracy(fit, x, y) == 100.0
    assert not fit.training


def test_soft_labels_are_accepted():
    x = torch.rand(10, 3, 32, 32)
    logits = torch.randn(10, 10)
    model = train_model(_model(), x, logits, TrainConfig(epochs=2, augment=False))
    assert model(x).shape == (10, 10)
    hard = torch.arange(10)
    out = torch.randn(10, 10)
    onehot_logits = torch.nn.functional.one_hot(hard, 10).float() * 1e4
    assert torch.allclose(soft_cross_entropy(out, onehot_logits),
                          torch.nn.functional.cross_entropy(out, hard), atol=1e-4)
