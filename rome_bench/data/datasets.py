"""Real datasets: CIFAR-10, CIFAR-100 and the embedded CIFAR-10 subset.

Every loader returns an :class:`ImageSet` holding float32 NCHW images in **[0,1] pixel space**
and int64 labels. Normalization constants travel with the dataset spec and become the first
layer of every model (see :mod:`rome_bench.models.convnet`), so no tensor in rome-bench is ever stored
normalized.

Formats read:

* torchvision's official python folders (``cifar-10-batches-py``, ``cifar-100-python``), parsed
  with a restricted unpickler that only rebuilds numpy arrays (no arbitrary code runs);
* folders of ``.npz`` shards with ``x`` (N,32,32,3 uint8) and ``y`` (N,) keys, e.g.
  ``train_0.npz ... train_4.npz`` and ``test.npz`` (the layout of the JPEG-decoded copy used in
  CI);
* the package's embedded class-balanced subset ``cifar10-mini``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from rome_bench.core.registry import Registry, RomeBenchError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# DC's constants (VICO-UoE/DatasetCondensation utils.get_dataset); every published
# checkpoint of the DC family expects inputs normalized with exactly these.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

MINI_ASSET = "cifar10_mini.npz"


class DataError(RomeBenchError):
    """A dataset or distilled set that cannot be used as given."""


@dataclass
class ImageSet:
    """Images in [0,1] (N,C,H,W float32) with int64 labels and their class count.

    >>> s = ImageSet(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]), num_classes=10)
    >>> len(s), s.channels, s.image_size
    (2, 3, (32, 32))
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str = ""
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def indices_of(self, cls: int) -> torch.Tensor:
        """Indices of the images of class ``cls`` (in dataset order)."""
        return torch.nonzero(self.labels == cls).flatten()

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.num_classes, self.name,
                        self.class_names)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: shape, classes, normalization and how to load its splits."""

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Callable[[Path | None, str, bool], tuple[np.ndarray, np.ndarray]] = field(repr=False)
    needs_root: bool = True
    class_names: tuple[str, ...] = ()
    description: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def validate_images(images: torch.Tensor, labels: torch.Tensor, num_classes: int | None,
                    channels: int | None, where: str, soft_labels_ok: bool = False,
                    unit_range: bool = True, image_size: tuple[int, int] | None = None) -> None:
    """Raise :class:`DataError` unless images/labels have the shapes and ranges rome-bench needs.

    Checks rank (N,C,H,W), channel count, image size (when given), dtype, finite values, the
    [0,1] range (real images; ``unit_range=False`` for synthetic ones, which may lie outside
    it), matching lengths, label dtype and label range. ``where`` names the source in the
    message. Files from strangers end up here, so nothing is assumed about what they hold.
    """
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{where}: images and labels must be tensors")
    if images.dim() != 4:
        raise DataError(f"{where}: images must have shape (N,C,H,W), got {tuple(images.shape)}")
    if channels is not None and images.shape[1] != channels:
        raise DataError(f"{where}: expected {channels} channels, got {images.shape[1]} "
                        f"(shape {tuple(images.shape)})")
    if image_size is not None and tuple(images.shape[2:]) != tuple(image_size):
        raise DataError(f"{where}: expected {image_size[0]}x{image_size[1]} images, got "
                        f"{images.shape[2]}x{images.shape[3]}")
    if images.shape[0] == 0:
        raise DataError(f"{where}: no images")
    if not images.is_floating_point():
        raise DataError(f"{where}: images must be floating point, got {images.dtype}")
    if not torch.isfinite(images).all():
        raise DataError(f"{where}: images contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if unit_range and (lo < -1e-4 or hi > 1 + 1e-4):
        raise DataError(f"{where}: images must lie in [0,1] pixel space, got [{lo:.3f}, {hi:.3f}]")
    if labels.dim() == 0:
        raise DataError(f"{where}: labels must have shape (N,) or (N,K), got a scalar")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.dim() == 2 and soft_labels_ok:
        if num_classes is not None and labels.shape[1] != num_classes:
            raise DataError(f"{where}: soft labels have {labels.shape[1]} columns, "
                            f"expected {num_classes} classes")
        if not labels.is_floating_point():
            raise DataError(f"{where}: soft labels must be floating point, got {labels.dtype}")
        if not torch.isfinite(labels).all():
            raise DataError(f"{where}: soft labels contain NaN or inf")
        return
    if labels.dim() != 1:
        raise DataError(f"{where}: labels must have shape (N,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"{where}: hard labels must be integers, got {labels.dtype}")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{where}: labels must lie in [0,{num_classes - 1}], "
                        f"got [{int(labels.min())}, {int(labels.max())}]")


def _to_imageset(x: np.ndarray, y: np.ndarray, spec: DatasetSpec, where: str) -> ImageSet:
    """uint8 NHWC arrays -> validated float [0,1] NCHW :class:`ImageSet`."""
    if x.ndim != 4 or x.shape[-1] != spec.channels or tuple(x.shape[1:3]) != spec.image_size:
        raise DataError(f"{where}: expected images of shape (N,{spec.image_size[0]},"
                        f"{spec.image_size[1]},{spec.channels}), got {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels, got {x.dtype}")
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: expected integer labels, got {y.dtype}")
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    labels = torch.as_tensor(y.astype(np.int64).reshape(-1))
    validate_images(images, labels, spec.num_classes, spec.channels, where)
    return ImageSet(images.contiguous(), labels, spec.num_classes, spec.name, spec.class_names)


def load_dataset(name: str, split: str = "train", root: str | Path | None = None,
                 download: bool = False) -> ImageSet:
    """Load ``split`` ('train' or 'test') of the registered dataset ``name``.

    >>> test = load_dataset("cifar10-mini", "test")   # the embedded default, no root needed
    >>> test.images.shape[1:], test.num_classes
    (torch.Size([3, 32, 32]), 10)
    """
    spec = DATASETS.get(name)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got '{split}'")
    root_path = Path(root).expanduser() if root is not None else None
    if spec.needs_root:
        if root_path is None:
            raise DataError(f"dataset '{spec.name}' needs --data-root (a folder with the data)")
        if not root_path.exists() and not download:
            raise DataError(f"--data-root {root_path} does not exist")
    x, y = spec.loader(root_path, split, download)
    return _to_imageset(x, y, spec, f"{spec.name} {split} ({root_path or 'embedded'})")


def class_balanced_indices(labels: torch.Tensor, per_class: int, num_classes: int,
                           seed: int = 0) -> torch.Tensor:
    """A fixed, seeded choice of ``per_class`` indices of each class, sorted.

    Used for test subsets (``--test-subset``) and the ``random`` baseline; raises if a class
    has fewer images than asked.
    """
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {c} has {len(idx)} images, fewer than the {per_class} asked")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values


def take_test_subset(test: ImageSet, n: int | None, seed: int = 0) -> ImageSet:
    """The fixed class-balanced subset of ``n`` test images (all of them when ``n`` is None)."""
    if n is None or n >= len(test):
        return test
    if n < test.num_classes or n % test.num_classes:
        raise DataError(f"--test-subset must be a positive multiple of the class count "
                        f"({test.num_classes}), got {n}")
    return test.subset(class_balanced_indices(test.labels, n // test.num_classes,
                                              test.num_classes, seed))


# -- readers ------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR python files that can only rebuild numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except FileNotFoundError as exc:
        raise DataError(f"missing CIFAR file {path}") from exc
    except Exception as exc:
        raise DataError(f"cannot read CIFAR batch file {path}: {exc}") from exc


def _batch_arrays(batch: object, label_key: str, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """The NHWC images and the labels of one official batch (a dict; checked, not assumed)."""
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"{where}: not a CIFAR batch (needs 'data' and '{label_key}')")
    try:
        labels = np.asarray(batch[label_key])
    except ValueError as exc:  # ragged lists
        raise DataError(f"{where}: '{label_key}' is not a list of labels") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: '{label_key}' must be a list of integer labels, got "
                        f"{labels.dtype} of shape {labels.shape}")
    images = _rows_to_nhwc(batch["data"], where)
    if len(images) != len(labels):  # per batch, for the reason given in _read_npz_shards
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _rows_to_nhwc(data: np.ndarray, where: Path) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{where}: expected rows of 3072 pixels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _read_npz_shards(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    files = sorted(root.glob(f"{split}_*.npz")) + sorted(root.glob(f"{split}.npz"))
    if not files:
        raise DataError(f"no {split}*.npz shards in {root}")
    xs, ys = [], []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                x, y = z["x"], z["y"]
        except KeyError as exc:
            raise DataError(f"{f}: npz shard needs keys 'x' and 'y'") from exc
        except Exception as exc:
            raise DataError(f"{f}: cannot read npz shard: {exc}") from exc
        # checked per shard: two shards that are each off by one would add up to matching
        # totals and shift every label after the first
        if x.ndim == 0 or y.size != x.shape[0]:
            raise DataError(f"{f}: {x.shape[0] if x.ndim else 0} images but {y.size} labels")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{f}: expected integer labels, got {y.dtype}")
        xs.append(x)
        ys.append(y.reshape(-1))
    if len({(x.shape[1:], x.dtype) for x in xs}) > 1:
        raise DataError(f"the shards in {root} hold images of different shapes or types: "
                        + ", ".join(f"{f.name} {x.shape[1:]} {x.dtype}" for f, x in zip(files, xs)))
    return np.concatenate(xs), np.concatenate(ys)


def _find_folder(root: Path, folder: str) -> Path | None:
    """``root/folder`` or ``root`` itself when it holds the official python batches."""
    for candidate in (root / folder, root):
        if (candidate / "test_batch").is_file():
            return candidate
    return None


def _load_cifar10(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    assert root is not None
    folder = _find_folder(root, "cifar-10-batches-py")
    if folder is None and not any(root.glob("*.npz")) and download:
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=split == "train", download=True)
        folder = _find_folder(root, "cifar-10-batches-py")
    if folder is not None:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        arrays = [_batch_arrays(_read_cifar_pickle(folder / n), "labels", folder / n)
                  for n in names]
        return np.concatenate([x for x, _ in arrays]), np.concatenate([y for _, y in arrays])
    if any(root.glob("*.npz")):
        return _read_npz_shards(root, split)
    raise DataError(f"--data-root {root} holds neither 'cifar-10-batches-py' nor npz shards "
                    "(train_*.npz, test.npz); pass --download to fetch the official release")


def _load_cifar100(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    assert root is not None
    folder = root / "cifar-100-python" if (root / "cifar-100-python").exists() else root
    if not (folder / split).is_file() and download:
        import torchvision

        torchvision.datasets.CIFAR100(str(root), train=split == "train", download=True)
        folder = root / "cifar-100-python"
    if not (folder / split).is_file():
        raise DataError(f"--data-root {root} holds no 'cifar-100-python/{split}' file "
                        "(pass --download to fetch the official release)")
    return _batch_arrays(_read_cifar_pickle(folder / split), "fine_labels", folder / split)


def mini_asset_path() -> Path:
    """Where the embedded subset lives inside the installed package."""
    return Path(str(resources.files("rome_bench") / "assets" / MINI_ASSET))


def _load_cifar10_mini(root: Path | None, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    path = mini_asset_path()
    if not path.exists():
        raise DataError(f"embedded subset {path} is missing; regenerate it with "
                        "scripts/make_cifar10_mini.py")
    with np.load(path, allow_pickle=False) as z:
        return z[f"x_{split}"], z[f"y_{split}"]


DATASETS.add("cifar10", DatasetSpec("cifar10", 10, 3, (32, 32), CIFAR10_MEAN, CIFAR10_STD,
                                    _load_cifar10, class_names=CIFAR10_CLASSES,
                                    description="CIFAR-10 from --data-root (official folder or "
                                                "npz shards)"), "cifar-10",
             description="CIFAR-10 (50k train, 10k test) from --data-root")
DATASETS.add("cifar100", DatasetSpec("cifar100", 100, 3, (32, 32), CIFAR100_MEAN, CIFAR100_STD,
                                     _load_cifar100,
                                     description="CIFAR-100 from --data-root (official folder)"),
             "cifar-100", description="CIFAR-100 (50k train, 10k test) from --data-root")
DATASETS.add("cifar10-mini", DatasetSpec("cifar10-mini", 10, 3, (32, 32), CIFAR10_MEAN,
                                         CIFAR10_STD, _load_cifar10_mini, needs_root=False,
                                         class_names=CIFAR10_CLASSES,
                                         description="embedded class-balanced CIFAR-10 subset"),
             description="embedded CIFAR-10 subset (the default; no download)")
