import pytest
import torch

from rome_bench.data.augment import DSA, DSAConfig

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


@pytest.mark.parametrize("group", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_siamese_same_seed_same_transform(group):
    aug = DSA(MEAN, STD, DSAConfig(strategy=group))
    x = torch.rand(6, 3, 32, 32)
    for seed in range(5):
        both = aug(torch.cat([x, x]), seed=seed)
        # a batch of 12 and a batch of 3 get the same transform with the same seed
        assert torch.allclose(both[:6], both[6:], atol=1e-6)
        assert torch.allclose(aug(x[:3], seed=seed), both[:3], atol=1e-6)


def test_transform_is_differentiable_for_every_group():
    for group in ["color", "crop", "cutout", "flip", "scale", "rotate"]:
        aug = DSA(MEAN, STD, DSAConfig(strategy=group))
        x = torch.rand(4, 3, 32, 32, requires_grad=True)
        aug(x, seed=3).square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_per_image_mode_draws_different_parameters():
    aug = DSA(MEAN, STD, DSAConfig(strategy="color"))
    x = torch.rand(1, 3, 32, 32).expand(8, 3, 32, 32)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])


def test_crop_is_an_integer_shift_with_mean_colour_fill():
    aug = DSA(MEAN, STD, DSAConfig(strategy="crop"))
    x = torch.rand(1, 3, 32, 32)
    out = aug(x, seed=11)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    matches = []
    for dx in range(-4, 5):
        for dy in range(-4, 5):
            shifted = mean.expand(3, 32, 32).clone()
            src = x[0, :, max(dx, 0):32 + min(dx, 0), max(dy, 0):32 + min(dy, 0)]
            shifted[:, max(-dx, 0):32 + min(-dx, 0), max(-dy, 0):32 + min(-dy, 0)] = src
            matches.append(torch.allclose(out[0], shifted, atol=1e-5))
    assert sum(matches) == 1


def test_cutout_blanks_at_most_a_16px_square_with_mean_colour():
    aug = DSA(MEAN, STD, DSAConfig(strategy="cutout"))
    x = torch.rand(16, 3, 32, 32)
    out = aug(x, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    blank = torch.isclose(out, mean.expand_as(out), atol=1e-6).all(1)
    per_image = blank.flatten(1).sum(1)
    assert int(per_image.max()) <= 16 * 16 and int(per_image.max()) > 0


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown DSA transforms"):
        DSA(MEAN, STD, DSAConfig(strategy="color_blur"))
