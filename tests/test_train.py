import torch

from rome_bench.data.augment import DSA
from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from rome_bench.models.convnet import build_model
from rome_bench.models.training import TrainConfig, accuracy, soft_cross_entropy, train_model


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


class RecordingDSA(DSA):
    """DSA that remembers what it was asked to augment (and how)."""

    def __init__(self) -> None:
        super().__init__(CIFAR10_MEAN, CIFAR10_STD)
        self.seen: list[tuple[str, torch.Tensor]] = []

    def __call__(self, x, seed=None, generator=None):
        self.seen.append(("pixels", x.detach().clone()))
        return super().__call__(x, seed=seed, generator=generator)

    def augment_normalized(self, z, seed=None, generator=None):
        self.seen.append(("network", z.detach().clone()))
        return super().augment_normalized(z, seed=seed, generator=generator)


def test_whitened_sets_are_augmented_after_the_whitening():
    # MTT/DATM with ZCA: the reference applies DSA to the whitened tensors, so the augmentation
    # must see model.input_transform(x), not the pixels
    from rome_bench.models.convnet import LinearTransform

    torch.manual_seed(0)
    matrix = torch.eye(3 * 32 * 32) * 2.0
    zca = LinearTransform(matrix, torch.zeros(3 * 32 * 32))
    model = build_model("convnet-w32", num_classes=2, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                        whitening=zca)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 0, 1, 1])
    aug = RecordingDSA()
    train_model(model, x, y, TrainConfig(epochs=1, batch_size=4), augment=aug, seed=0)
    kinds = [k for k, _ in aug.seen]
    assert kinds == ["network"]
    expected = model.input_transform(x).detach()
    seen = aug.seen[0][1]
    # the same images (in some batch order), in the whitened space
    assert torch.allclose(seen.sum(0), expected.sum(0), atol=1e-4)
    assert not torch.allclose(seen.sum(0), x.sum(0), atol=1e-2)

    # a plain model keeps augmenting [0,1] pixels (normalization happens inside DSA)
    plain = build_model("convnet-w32", num_classes=2, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    aug = RecordingDSA()
    train_model(plain, x, y, TrainConfig(epochs=1, batch_size=4), augment=aug, seed=0)
    assert [k for k, _ in aug.seen][0] == "pixels"
