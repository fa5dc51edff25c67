"""``DistilledSet``: the output of every method, its own file format and importers.

Own format: ``torch.save({"images", "labels", "meta"})`` with images in pixel units (N,C,H,W;
real images lie in [0,1], synthetic ones may lie outside it and are never clamped), labels
(N,) int64 or (N,K) soft-label logits, and ``meta`` a dict of plain values. Files are always
loaded with ``weights_only=True``.

Importers convert the reference repositories' formats (docs/design.md, "Conventions"):

* DC/DSA/DM/BEARD ``{'data': [[images, labels], ...], ...}`` with *normalized* images: pick the
  experiment with ``PATH#k`` (default 0), de-normalize with the dataset constants (no clamp:
  BEARD retrains on these tensors as they are);
* MTT/DATM folders with ``images_best.pt`` (+ ``labels_best.pt``, ``lr_best.pt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rome_bench.core.storage import atomic_torch_save, load_tensor_file
from rome_bench.data.datasets import DataError, DatasetSpec, validate_images


@dataclass
class DistilledSet:
    """A small synthetic training set.

    Args:
        images: (N,C,H,W) float tensor in pixel units; values outside [0,1] are allowed (the
            references retrain on unclamped synthetic images), NaN and inf are not.
        labels: (N,) int64 class labels, or (N,K) soft-label logits.
        meta: provenance (method, dataset, ipc, preset, seed, ...) and retraining hints:
            ``lr`` (a learned retraining lr), ``augment`` (DSA during retraining),
            ``zca`` (a whitening to apply inside the model).

    >>> s = DistilledSet(torch.rand(10, 3, 32, 32), torch.arange(10))
    >>> s.ipc
    1
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def soft(self) -> bool:
        return self.labels.dim() == 2

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def out_of_range(self) -> float:
        """The fraction of pixel values outside [0,1] (the pipeline stores it in ``meta``).

        >>> x = torch.tensor([-0.5, 0.2, 0.7, 1.5]).view(1, 1, 2, 2)
        >>> DistilledSet(x, torch.tensor([0])).out_of_range
        0.5
        """
        x = self.images
        return float(((x < 0) | (x > 1)).float().mean()) if x.numel() else 0.0

    @property
    def ipc(self) -> int:
        """Images per class (of the most frequent class)."""
        return int(torch.bincount(self.hard_labels).max())

    def validate(self, num_classes: int | None, channels: int | None,
                 where: str = "distilled set", image_size: tuple[int, int] | None = None) -> None:
        """Raise :class:`DataError` unless the set can be retrained on (None: not checked)."""
        validate_images(self.images, self.labels, num_classes, channels, where,
                        soft_labels_ok=True, unit_range=False, image_size=image_size)

    def save(self, path: str | Path) -> None:
        """Write atomically in rome-bench's own format."""
        atomic_torch_save({"images": self.images.detach().cpu().float().contiguous(),
                           "labels": self.labels.detach().cpu().contiguous(),
                           "meta": _plain(self.meta)}, path)

    @classmethod
    def load(cls, path: str | Path) -> DistilledSet:
        """Read a file in rome-bench's own format (see :func:`import_distilled` for the others).

        The set is checked for what every consumer relies on (shapes, dtypes, finite values);
        the dataset it belongs to is not known here, so classes and channels are not.
        """
        obj = load_tensor_file(path, "distilled set")
        if not (isinstance(obj, dict) and "images" in obj and "labels" in obj):
            raise DataError(f"{path}: not a rome-bench distilled set (needs 'images' and 'labels')")
        result = _from_own_format(obj, path)
        result.validate(None, None, str(path))
        return result


def _from_own_format(obj: dict, path: Path | str) -> DistilledSet:
    """The set in a ``{'images', 'labels', 'meta'}`` dict, with dtypes made canonical (float32
    images, int64 hard labels); whatever else it holds is left to :meth:`DistilledSet.validate`."""
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise DataError(f"{path}: 'meta' must be a dict, got {type(meta).__name__}")
    return _canonical(DistilledSet(obj["images"], obj["labels"], dict(meta)), path)


def _canonical(result: DistilledSet, path: Path | str) -> DistilledSet:
    images, labels = result.images, result.labels
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{path}: images and labels must be tensors")
    if images.is_floating_point():
        result.images = images.float()
    if labels.dim() == 1 and not (labels.is_floating_point() or labels.is_complex()
                                  or labels.dtype == torch.bool):
        result.labels = labels.long()
    return result


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep only values ``weights_only`` loading accepts (tensors, numbers, strings, containers)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool, type(None), torch.Tensor)):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
        elif isinstance(v, dict):
            out[k] = _plain(v)
        else:
            out[k] = str(v)
    return out


def import_distilled(spec: str, dataset: DatasetSpec) -> DistilledSet:
    """Load ``spec`` = ``PATH`` or ``PATH#k`` in any supported format, validated for ``dataset``.

    Raises :class:`DataError`/:class:`CheckpointError` with a one-line reason on bad input.
    """
    path_str, _, exp = spec.partition("#")
    path = Path(path_str).expanduser()
    if exp and not exp.isdigit():
        raise DataError(f"{spec}: the experiment after '#' must be a number (e.g. {path_str}#0)")
    if path.is_dir():
        result = _import_mtt_folder(path, dataset)
    else:
        obj = load_tensor_file(path, "distilled set")
        if isinstance(obj, dict) and "images" in obj and "labels" in obj:
            result = _from_own_format(obj, path)
        elif isinstance(obj, dict) and "data" in obj:
            result = _import_dc(obj, path, int(exp or 0), dataset)
        else:
            raise DataError(f"{path}: unknown distilled-set format (expected rome-bench's "
                            "{'images','labels','meta'}, DC's {'data': [[x, y], ...]} or an MTT "
                            "folder with images_best.pt)")
    result = _canonical(result, path)
    result.meta.setdefault("source", str(path))
    result.validate(dataset.num_classes, dataset.channels, str(path), dataset.image_size)
    return result


def _import_dc(obj: dict, path: Path, exp: int, dataset: DatasetSpec) -> DistilledSet:
    data = obj["data"]
    if not isinstance(data, (list, tuple)) or not data:
        raise DataError(f"{path}: 'data' must be a non-empty list of [images, labels] pairs")
    if not 0 <= exp < len(data):
        raise DataError(f"{path}: experiment #{exp} does not exist (the file has {len(data)})")
    pair = data[exp]
    if not isinstance(pair, (list, tuple)) or len(pair) < 2:
        raise DataError(f"{path}: data[{exp}] must be [images, labels]")
    images, labels = pair[0], pair[1]
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise DataError(f"{path}: data[{exp}][0] must be an (N,C,H,W) floating-point tensor")
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"{path}: data[{exp}][1] must be a tensor of labels")
    if images.shape[1] != len(dataset.mean):
        raise DataError(f"{path}: images have {images.shape[1]} channels, dataset "
                        f"'{dataset.name}' has {len(dataset.mean)}")
    if not torch.isfinite(images).all():
        raise DataError(f"{path}: images contain NaN or inf")
    return DistilledSet(_denormalize(images, dataset), labels, {"format": "dc", "experiment": exp})


def _denormalize(images: torch.Tensor, dataset: DatasetSpec) -> torch.Tensor:
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    return images.float() * std + mean


def _import_mtt_folder(folder: Path, dataset: DatasetSpec) -> DistilledSet:
    """MTT/DATM output folder. Images are stored normalized with the dataset constants.

    ZCA-whitened sets (MTT's ``--zca``) are not normalized this way and need the whitening
    fitted on the real data to invert; that support belongs to the MTT work (issue 5).
    """
    img_path = folder / "images_best.pt"
    label_path = folder / "labels_best.pt"
    if not img_path.exists() or not label_path.exists():
        raise DataError(f"{folder}: an MTT/DATM folder needs images_best.pt and labels_best.pt")
    images = load_tensor_file(img_path, "images")
    labels = load_tensor_file(label_path, "labels")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise DataError(f"{img_path}: expected an (N,C,H,W) floating-point tensor")
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"{label_path}: expected a tensor")
    if images.shape[1] != len(dataset.mean):
        raise DataError(f"{img_path}: images have {images.shape[1]} channels, dataset "
                        f"'{dataset.name}' has {len(dataset.mean)}")
    meta: dict[str, Any] = {"format": "mtt"}
    lr_path = folder / "lr_best.pt"
    if lr_path.exists():
        meta["lr"] = _learned_lr(load_tensor_file(lr_path, "learned lr"), lr_path)
    if not torch.isfinite(images).all():
        raise DataError(f"{img_path}: images contain NaN or inf")
    if (labels.dim() == 1 and labels.is_floating_point() and torch.isfinite(labels).all()
            and bool((labels == labels.round()).all())):
        labels = labels.long()  # hard labels saved as floats: whole numbers only
    return DistilledSet(_denormalize(images, dataset), labels, meta)


def _learned_lr(lr: Any, path: Path) -> float:
    """The retraining lr of ``lr_best.pt``: one positive finite number (a tensor or a float)."""
    if isinstance(lr, torch.Tensor) and lr.numel() == 1 and lr.is_floating_point():
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        shown = tuple(lr.shape) if isinstance(lr, torch.Tensor) else repr(lr)[:40]
        raise DataError(f"{path}: the learned lr must be one positive finite number, got {shown}")
    return float(lr)
