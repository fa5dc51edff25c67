import pytest
import torch

from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from rome_bench.models.convnet import CheckpointError, build_model, load_dc_checkpoint


def test_convnet_matches_reference_shape_and_keys():
    model = build_model("convnet", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 320_010
    keys = {k.rsplit(".", 1)[0] for k in model.net.state_dict()}
    assert keys == {"features.0", "features.1", "features.4", "features.5", "features.8",
                    "features.9", "classifier"}
    assert isinstance(model.net.features[1], torch.nn.GroupNorm)
    assert model.net.features[1].num_groups == 128  # instance norm with affine


def test_normalize_is_the_first_layer():
    model = build_model("convnet", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD).eval()
    x = torch.rand(2, 3, 32, 32)
    z = (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(model(x), model.net(z), atol=1e-5)
    assert not hasattr(model, "mean")  # torchattacks would otherwise normalize twice


def test_variants_are_registry_entries():
    assert build_model("convnet-d4", num_classes=10).net.feature_dim == 128 * 2 * 2
    assert build_model("convnet-w64", num_classes=100).net.classifier.out_features == 100
    with pytest.raises(KeyError, match="Did you mean"):
        build_model("convnt", num_classes=10)


def test_published_checkpoint_loads(pool_dir):
    path = next(pool_dir.glob("DC_*.pth"))
    model = load_dc_checkpoint(path, "convnet", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert not model.training
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_checkpoint_that_does_not_fit(tmp_path, pool_dir):
    path = next(pool_dir.glob("DC_*.pth"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_dc_checkpoint(path, "convnet", num_classes=100, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_dc_checkpoint(path, "convnet-d4", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_dc_checkpoint(tmp_path / "x.pth", "convnet", num_classes=10, mean=CIFAR10_MEAN,
                           std=CIFAR10_STD)
