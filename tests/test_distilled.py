import pickle

import pytest
import torch

from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, DATASETS, DataError
from rome_bench.data.distilled import DistilledSet, import_distilled
from rome_bench.models.convnet import CheckpointError

SPEC = DATASETS.get("cifar10")


def _normalize(x):
    return (x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


def test_own_format_round_trip(tmp_path):
    s = DistilledSet(torch.rand(20, 3, 32, 32), torch.arange(20) % 10, {"method": "x", "lr": 0.02})
    s.save(tmp_path / "s.pt")
    back = import_distilled(str(tmp_path / "s.pt"), SPEC)
    assert torch.equal(back.images, s.images) and torch.equal(back.labels, s.labels)
    assert back.meta["lr"] == 0.02 and back.ipc == 2


def test_dc_format_is_denormalized_and_experiment_selectable(tmp_path):
    pixels = [torch.rand(10, 3, 32, 32) for _ in range(2)]
    labels = torch.arange(10)
    torch.save({"data": [[_normalize(p), labels] for p in pixels], "accs_all_exps": []},
               tmp_path / "res_DC.pt")
    s0 = import_distilled(str(tmp_path / "res_DC.pt"), SPEC)
    s1 = import_distilled(f"{tmp_path / 'res_DC.pt'}#1", SPEC)
    assert torch.allclose(s0.images, pixels[0], atol=1e-5)
    assert torch.allclose(s1.images, pixels[1], atol=1e-5)
    with pytest.raises(DataError, match="experiment #5 does not exist"):
        import_distilled(f"{tmp_path / 'res_DC.pt'}#5", SPEC)


def test_mtt_folder_with_soft_labels_and_lr(tmp_path):
    pixels = torch.rand(10, 3, 32, 32)
    torch.save(_normalize(pixels), tmp_path / "images_best.pt")
    torch.save(torch.randn(10, 10), tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0123), tmp_path / "lr_best.pt")
    s = import_distilled(str(tmp_path), SPEC)
    assert s.soft and s.labels.shape == (10, 10)
    assert s.meta["lr"] == pytest.approx(0.0123)
    assert torch.allclose(s.images, pixels, atol=1e-5)


def test_empty_truncated_and_garbage_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        import_distilled(str(tmp_path / "empty.pt"), SPEC)
    DistilledSet(torch.rand(10, 3, 32, 32), torch.arange(10)).save(tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot load .*corrupt or truncated"):
        import_distilled(str(tmp_path / "trunc.pt"), SPEC)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match="cannot load .*not a PyTorch file"):
        import_distilled(str(tmp_path / "junk.pt"), SPEC)
    with pytest.raises(CheckpointError, match="does not exist"):
        import_distilled(str(tmp_path / "missing.pt"), SPEC)


class Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED_MARKER', 'w').write('x')",))


def test_pickle_payload_is_refused_without_executing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"images": Payload(), "labels": [0]}, f)
    torch.save({"images": torch.rand(1, 3, 32, 32), "labels": torch.tensor([0]),
                "meta": {"x": Payload()}}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(CheckpointError, match="cannot load .*objects other than tensors"):
            import_distilled(str(tmp_path / name), SPEC)
    assert not (tmp_path / "PWNED_MARKER").exists()


@pytest.mark.parametrize("images,labels,match", [
    (torch.full((10, 3, 32, 32), float("nan")), torch.arange(10), "NaN"),
    (torch.full((10, 3, 32, 32), float("inf")), torch.arange(10), "NaN or inf"),
    (torch.rand(10, 32, 32), torch.arange(10), "shape"),
    (torch.rand(10, 1, 32, 32), torch.arange(10), "channels"),
    (torch.rand(10, 3, 32, 32), torch.arange(10) + 5, "labels must lie"),
])
def test_invalid_contents(tmp_path, images, labels, match):
    torch.save({"images": images, "labels": labels, "meta": {}}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=match):
        import_distilled(str(tmp_path / "bad.pt"), SPEC)


def test_unknown_format(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(DataError, match="unknown distilled-set format"):
        import_distilled(str(tmp_path / "x.pt"), SPEC)


# -- synthetic images are not clamped to [0,1] (docs/design.md, "Conventions") -------------------
def test_out_of_range_synthetic_images_are_accepted_and_counted(tmp_path):
    images = torch.rand(10, 3, 32, 32) * 3 - 1  # about 2/3 of the values outside [0,1]
    s = DistilledSet(images, torch.arange(10))
    s.validate(10, 3)
    s.save(tmp_path / "s.pt")
    back = import_distilled(str(tmp_path / "s.pt"), SPEC)
    assert torch.equal(back.images, images)
    assert back.out_of_range == pytest.approx(float(((images < 0) | (images > 1)).float().mean()))
    assert DistilledSet(torch.rand(10, 3, 32, 32), torch.arange(10)).out_of_range == 0.0


def test_imported_dc_and_mtt_sets_are_not_clamped(tmp_path):
    pixels = torch.rand(10, 3, 32, 32) * 1.6 - 0.3
    torch.save({"data": [[_normalize(pixels), torch.arange(10)]]}, tmp_path / "res_DC.pt")
    assert torch.allclose(import_distilled(str(tmp_path / "res_DC.pt"), SPEC).images, pixels,
                          atol=1e-5)
    folder = tmp_path / "mtt"
    folder.mkdir()
    torch.save(_normalize(pixels), folder / "images_best.pt")
    torch.save(torch.arange(10), folder / "labels_best.pt")
    assert torch.allclose(import_distilled(str(folder), SPEC).images, pixels, atol=1e-5)


def test_factorized_sets_keep_out_of_range_values():
    from rome_bench.methods.factorized import expanded_distilled_set

    z = torch.full((10, 3, 32, 32), 4.0)  # normalized: far above 1 in pixels
    s = expanded_distilled_set(z, torch.arange(10), CIFAR10_MEAN, CIFAR10_STD)
    assert float(s.images.min()) > 1.2 and s.out_of_range == 1.0  # 4 * std + mean


def test_retraining_and_drawing_take_out_of_range_sets():
    from rome_bench.data.augment import DSA
    from rome_bench.models.convnet import build_model
    from rome_bench.models.training import TrainConfig, train_model
    from rome_bench.reporting.figures import image_grid

    images, labels = torch.rand(4, 3, 32, 32) * 4 - 2, torch.tensor([0, 0, 1, 1])
    model = build_model("convnet-w32", num_classes=2, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    train_model(model, images, labels, TrainConfig(epochs=1, batch_size=2),
                augment=DSA(CIFAR10_MEAN, CIFAR10_STD))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    grid = image_grid(images, labels)
    assert grid.min() >= 0 and grid.max() <= 1
