"""Factorized synthetic images: IDM's partition-and-expansion (Zhao et al., CVPR 2023).

Each stored image (C,H,W) holds ``factor**2`` sub-images of size (H/factor, W/factor). For use
(matching, retraining) every sub-image is upsampled back to (H,W) with bilinear interpolation
(``align_corners=False``), so N stored images become ``factor**2 * N`` training images while
the storage budget stays N images. IDM, BACON and ROME all use ``factor=2``.

Order (the reference's): sub-images are taken column by column, top to bottom within a
column; for ``factor=2`` that is top-left, bottom-left, top-right, bottom-right. The expanded
batch is ``[all top-left, all bottom-left, all top-right, all bottom-right]`` and the labels
are the stored labels repeated ``factor**2`` times in that order (``labels.repeat(4)``).

Initialisation from real data fills sub-image ``k`` of every stored image of class ``c`` with
a different real image of class ``c``, downscaled by ``1/factor`` (bilinear, which at 0.5 is
a 2x2 average), so each stored image starts as a mosaic of ``factor**2`` real images.

The functions are space-agnostic (bilinear resampling commutes with per-channel affine
normalization): pass normalized tensors during distillation and call
:func:`expanded_distilled_set` at the end to get images in pixel units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rome_bench.data.distilled import DistilledSet

DEFAULT_FACTOR = 2


def num_parts(factor: int = DEFAULT_FACTOR) -> int:
    """How many training images one stored image expands to (``factor**2``)."""
    return factor * factor


def _check(images: torch.Tensor, factor: int) -> tuple[int, int]:
    if images.dim() != 4:
        raise ValueError(f"images must be (N,C,H,W), got {tuple(images.shape)}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by factor {factor}")
    return h // factor, w // factor


def split(images: torch.Tensor, factor: int = DEFAULT_FACTOR) -> list[torch.Tensor]:
    """The ``factor**2`` sub-image batches (N,C,H/f,W/f), in expansion order (column-major).

    >>> parts = split(torch.zeros(3, 3, 32, 32))
    >>> len(parts), tuple(parts[0].shape)
    (4, (3, 3, 16, 16))
    """
    sh, sw = _check(images, factor)
    return [images[:, :, i * sh:(i + 1) * sh, j * sw:(j + 1) * sw]
            for j in range(factor) for i in range(factor)]


def assemble(parts: Sequence[torch.Tensor], factor: int = DEFAULT_FACTOR) -> torch.Tensor:
    """Inverse of :func:`split`: place ``factor**2`` sub-image batches into full images."""
    if len(parts) != factor * factor:
        raise ValueError(f"need {factor * factor} sub-image batches, got {len(parts)}")
    columns = [torch.cat(list(parts[j * factor:(j + 1) * factor]), dim=2) for j in range(factor)]
    return torch.cat(columns, dim=3)


def expand(images: torch.Tensor, labels: torch.Tensor | None = None,
           factor: int = DEFAULT_FACTOR) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stored (N,C,H,W) -> (factor**2 * N, C, H, W) upsampled sub-images, and repeated labels.

    Differentiable with respect to ``images``. ``labels`` (N,) or (N,K) come back as
    ``labels.repeat(factor**2)`` along the first dimension (None stays None).

    >>> x, y = expand(torch.rand(5, 3, 32, 32), torch.arange(5))
    >>> tuple(x.shape), y[:6].tolist()
    ((20, 3, 32, 32), [0, 1, 2, 3, 4, 0])
    """
    _check(images, factor)
    if factor == 1:
        return images, labels
    sub = torch.cat(split(images, factor), dim=0)
    up = F.interpolate(sub, scale_factor=factor, mode="bilinear", align_corners=False)
    if labels is not None:
        labels = labels.repeat(factor * factor, *([1] * (labels.dim() - 1)))
    return up, labels


def downscale(images: torch.Tensor, factor: int = DEFAULT_FACTOR) -> torch.Tensor:
    """Bilinear ``1/factor`` downscaling (``align_corners=False``; a 2x2 mean at factor 2)."""
    _check(images, factor)
    if factor == 1:
        return images
    return F.interpolate(images, scale_factor=1.0 / factor, mode="bilinear", align_corners=False)


def init_from_real(images: torch.Tensor, labels: torch.Tensor, ipc: int, num_classes: int,
                   generator: torch.Generator, factor: int = DEFAULT_FACTOR
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` stored images per class, each a mosaic of ``factor**2`` downscaled real images.

    The real images of a mosaic are distinct (drawn without replacement, ``factor**2 * ipc``
    per class) when the class has enough images; otherwise each sub-image position draws its
    own ``ipc`` images independently, as the reference does. Returns class-contiguous
    ``(images, labels)`` in the space of ``images``.

    >>> x = torch.rand(40, 3, 32, 32); y = torch.arange(40) % 2
    >>> s, t = init_from_real(x, y, 3, 2, torch.Generator().manual_seed(0))
    >>> tuple(s.shape), t.tolist()
    ((6, 3, 32, 32), [0, 0, 0, 1, 1, 1])
    """
    k = factor * factor
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) == 0:
            raise ValueError(f"class {c} has no images to initialise from")
        if len(idx) >= k * ipc:
            chosen = idx[torch.randperm(len(idx), generator=generator)[:k * ipc]].view(k, ipc)
        else:  # small class: independent draws per position (repeats allowed across positions)
            chosen = torch.stack([idx[torch.randperm(len(idx), generator=generator)[:ipc]]
                                  if len(idx) >= ipc else
                                  idx[torch.randint(len(idx), (ipc,), generator=generator)]
                                  for _ in range(k)])
        parts = [downscale(images[chosen[p].to(images.device)], factor) for p in range(k)]
        out.append(assemble(parts, factor))
    syn = torch.cat(out).contiguous()
    syn_labels = torch.arange(num_classes).repeat_interleave(ipc)
    return syn, syn_labels


def expanded_distilled_set(images: torch.Tensor, labels: torch.Tensor,
                           mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                           factor: int = DEFAULT_FACTOR, meta: dict[str, Any] | None = None
                           ) -> DistilledSet:
    """The retraining set of a factorized result: expanded and de-normalized to pixel units.

    Values outside [0,1] are kept (the references retrain on the unclamped tensors).

    ``images`` are the stored images, normalized with ``mean``/``std`` when given (else taken
    as [0,1]). ``meta`` gains ``factorized=True``, ``factor``, ``stored_images`` (the stored
    count, N) and ``stored_ipc``.

    >>> s = expanded_distilled_set(torch.rand(20, 3, 32, 32), torch.arange(10).repeat(2))
    >>> len(s.images), s.meta["stored_images"], s.meta["factorized"]
    (80, 20, True)
    """
    with torch.no_grad():
        x, y = expand(images.detach(), labels.detach(), factor)
        if mean is not None and std is not None:
            m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = x * s + m
        x = x.cpu().contiguous()
    stored = int(images.shape[0])
    hard = labels if labels.dim() == 1 else labels.argmax(1)
    info = {"factorized": True, "factor": factor, "stored_images": stored,
            "stored_ipc": int(torch.bincount(hard.cpu()).max()) if stored else 0}
    return DistilledSet(x, y.cpu(), {**(meta or {}), **info})
