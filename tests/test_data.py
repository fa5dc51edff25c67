import pickle

import numpy as np
import pytest
import torch
from conftest import write_cifar_batch

from rome_bench.data.datasets import (
    DataError,
    class_balanced_indices,
    load_dataset,
    take_test_subset,
    validate_images,
)


def test_embedded_default_is_class_balanced_and_in_unit_range():
    train = load_dataset("cifar10-mini", "train")
    test = load_dataset("cifar10-mini", "test")
    assert train.images.shape == (2000, 3, 32, 32) and test.images.shape == (500, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [200] * 10
    assert torch.bincount(test.labels).tolist() == [50] * 10
    assert train.images.dtype == torch.float32
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0


def test_npz_shards(tmp_path, tiny_images):
    x, y = tiny_images
    np.savez(tmp_path / "train_0.npz", x=x[:10], y=y[:10])
    np.savez(tmp_path / "train_1.npz", x=x[10:], y=y[10:])
    np.savez(tmp_path / "test.npz", x=x[:10], y=y[:10])
    train = load_dataset("cifar10", "train", tmp_path)
    assert len(train) == 20
    # NHWC uint8 -> NCHW [0,1]: pixel (0, row 1, col 2, channel 0) keeps its place
    assert train.images[0, 0, 1, 2] == pytest.approx(x[0, 1, 2, 0] / 255)
    assert load_dataset("cifar10", "test", tmp_path).labels.tolist() == y[:10].tolist()


def test_official_cifar10_layout(tmp_path, tiny_images):
    x, y = tiny_images
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", x[:4], y[:4])
    write_cifar_batch(folder / "test_batch", x, y)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert len(train) == 20 and len(test) == 20
    assert test.images[3, 2, 5, 7] == pytest.approx(x[3, 5, 7, 2] / 255)


def test_official_cifar100_layout(tmp_path, tiny_images):
    x, _ = tiny_images
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    labels = np.arange(20) * 5  # up to 95: needs the 100-class range
    write_cifar_batch(folder / "train", x, labels, key="fine_labels")
    write_cifar_batch(folder / "test", x, labels, key="fine_labels")
    train = load_dataset("cifar100", "train", tmp_path)
    assert train.num_classes == 100 and int(train.labels.max()) == 95


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", "test", tmp_path)


def test_bad_roots_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", "train", tmp_path / "nope")
    with pytest.raises(DataError, match="holds neither"):
        load_dataset("cifar10", "train", tmp_path)
    with pytest.raises(DataError, match="needs --data-root"):
        load_dataset("cifar10", "train", None)


def test_npz_with_wrong_shape_or_labels(tmp_path, tiny_images):
    x, y = tiny_images
    np.savez(tmp_path / "test.npz", x=x[:, :, :, :1], y=y)
    with pytest.raises(DataError, match="expected images of shape"):
        load_dataset("cifar10", "test", tmp_path)
    np.savez(tmp_path / "test.npz", x=x, y=y + 5)
    with pytest.raises(DataError, match=r"labels must lie in \[0,9\]"):
        load_dataset("cifar10", "test", tmp_path)


@pytest.mark.parametrize("images,labels,match", [
    (torch.rand(2, 3, 32), torch.tensor([0, 1]), "shape"),
    (torch.rand(2, 1, 32, 32), torch.tensor([0, 1]), "channels"),
    (torch.full((2, 3, 4, 4), float("nan")), torch.tensor([0, 1]), "NaN"),
    (torch.rand(2, 3, 4, 4) * 3, torch.tensor([0, 1]), r"\[0,1\]"),
    (torch.rand(2, 3, 4, 4), torch.tensor([0, 10]), "labels must lie"),
    (torch.rand(2, 3, 4, 4), torch.tensor([0]), "2 images but 1 labels"),
])
def test_validate_images(images, labels, match):
    with pytest.raises(DataError, match=match):
        validate_images(images, labels, 10, 3, "x")


def test_class_balanced_subset_is_fixed():
    test = load_dataset("cifar10-mini", "test")
    a = take_test_subset(test, 100)
    b = take_test_subset(test, 100)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert torch.bincount(a.labels).tolist() == [10] * 10
    with pytest.raises(DataError, match="multiple of the class count"):
        take_test_subset(test, 15)
    with pytest.raises(DataError, match="fewer than"):
        class_balanced_indices(test.labels, 51, 10)
