"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021).

A faithful re-implementation of the reference DSA used by DSA, DM, IDM, MTT, ROME and their
retraining: strategy ``color_crop_cutout_flip_scale_rotate``, one transform *group* chosen per
call ('S' mode; the ``color`` group applies brightness, saturation and contrast), and the
reference parameter ranges (flip 0.5, scale 1.2, rotate 15 deg, crop pad 0.125, cutout 0.5,
brightness 1.0, saturation 2.0, contrast 0.5).

Two details matter for faithfulness and are handled here:

* **Siamese sharing.** Called with a ``seed``, one parameter set is drawn from a generator
  seeded with it and shared by every image of the batch, so a real and a synthetic batch
  augmented with the same seed undergo the same transform. Without a seed, every image gets
  its own parameters (the reference's ``seed=-1`` mode used while retraining).
* **Normalized space.** The reference applies DSA to *normalized* tensors: brightness shifts,
  crop padding and cutout fill (zero = the dataset-mean colour) are in normalized units. Our
  images live in [0,1], so :class:`DSA` normalizes, augments and de-normalizes, which
  reproduces the reference transform exactly while keeping [0,1] as the storage convention.

Every operation is differentiable with respect to the input images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAConfig:
    """The reference ``ParamDiffAug`` values."""

    strategy: str = DEFAULT_STRATEGY
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


def _uniform(n: int, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=gen)


def _randint(low: int, high: int, n: int, gen: torch.Generator | None) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=gen)


class DSA:
    """Callable DSA augmenter working on [0,1] images.

    Args:
        mean, std: the dataset's normalization constants (augmentation happens in normalized
            space, like the reference).
        config: DSA hyperparameters.

    >>> aug = DSA((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    >>> real, syn = torch.rand(8, 3, 32, 32), torch.rand(2, 3, 32, 32)
    >>> aug(real, seed=7).shape, aug(syn, seed=7).shape   # same seed: same transform
    (torch.Size([8, 3, 32, 32]), torch.Size([2, 3, 32, 32]))
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float],
                 config: DSAConfig | None = None) -> None:
        self.config = config or DSAConfig()
        self.groups = [g for g in self.config.strategy.split("_") if g]
        unknown = set(self.groups) - set(_GROUPS)
        if unknown:
            raise ValueError(f"unknown DSA transforms {sorted(unknown)}; known: {sorted(_GROUPS)}")
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, seed: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` (N,C,H,W in [0,1]); ``seed`` makes the batch share one parameter set."""
        if not self.groups:
            return x
        mean, std = self._mean.to(x.device, x.dtype), self._std.to(x.device, x.dtype)
        z = (x - mean) / std
        z = self.augment_normalized(z, seed=seed, generator=generator)
        return z * std + mean

    def augment_normalized(self, z: torch.Tensor, seed: int | None = None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """The reference transform on an already-normalized batch."""
        shared = seed is not None
        gen = torch.Generator().manual_seed(int(seed)) if shared else generator
        group = self.groups[int(_randint(0, len(self.groups), 1, gen))]
        n = 1 if shared else z.shape[0]
        for fn in _GROUPS[group]:
            z = fn(z, n, gen, self.config)
        return z


def _expand(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample (n,) parameters -> shape (N,1,1,1) on z's device; n == 1 broadcasts (Siamese)."""
    return p.to(z.device, z.dtype).view(-1, 1, 1, 1).expand(z.shape[0], 1, 1, 1)


def _affine(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(z.device, z.dtype).expand(z.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(z.shape), align_corners=False)
    return F.grid_sample(z, grid, align_corners=False)


def _scale(z, n, gen, cfg: DSAConfig):
    r = cfg.ratio_scale
    sx = _uniform(n, gen) * (r - 1.0 / r) + 1.0 / r
    sy = _uniform(n, gen) * (r - 1.0 / r) + 1.0 / r
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(z, theta)


def _rotate(z, n, gen, cfg: DSAConfig):
    a = (_uniform(n, gen) - 0.5) * 2 * cfg.ratio_rotate / 180 * math.pi
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), zero], 1),
                         torch.stack([a.sin(), a.cos(), zero], 1)], 1)
    return _affine(z, theta)


def _flip(z, n, gen, cfg: DSAConfig):
    u = _expand(_uniform(n, gen), z)
    return torch.where(u < cfg.prob_flip, z.flip(3), z)


def _brightness(z, n, gen, cfg: DSAConfig):
    return z + (_expand(_uniform(n, gen), z) - 0.5) * cfg.brightness


def _saturation(z, n, gen, cfg: DSAConfig):
    m = z.mean(dim=1, keepdim=True)
    return (z - m) * (_expand(_uniform(n, gen), z) * cfg.saturation) + m


def _contrast(z, n, gen, cfg: DSAConfig):
    m = z.mean(dim=[1, 2, 3], keepdim=True)
    return (z - m) * (_expand(_uniform(n, gen), z) + cfg.contrast) + m


def _crop(z, n, gen, cfg: DSAConfig):
    """Integer translation by up to ``ratio_crop_pad`` of the size, zero fill."""
    _, _, h, w = z.shape
    sx, sy = int(h * cfg.ratio_crop_pad + 0.5), int(w * cfg.ratio_crop_pad + 0.5)
    tx = _randint(-sx, sx + 1, n, gen).to(z.device).expand(z.shape[0])
    ty = _randint(-sy, sy + 1, n, gen).to(z.device).expand(z.shape[0])
    padded = F.pad(z, (1, 1, 1, 1))
    rows = (torch.arange(h, device=z.device).view(1, h) + tx.view(-1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=z.device).view(1, w) + ty.view(-1, 1) + 1).clamp(0, w + 1)
    batch = torch.arange(z.shape[0], device=z.device).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]
    return out.permute(0, 3, 1, 2)


def _cutout(z, n, gen, cfg: DSAConfig):
    """Zero a square of side ``ratio_cutout`` * size centred at a random (clipped) position."""
    _, _, h, w = z.shape
    size = int(h * cfg.ratio_cutout + 0.5), int(w * cfg.ratio_cutout + 0.5)
    ox = _randint(0, h + (1 - size[0] % 2), n, gen).to(z.device).expand(z.shape[0]).view(-1, 1)
    oy = _randint(0, w + (1 - size[1] % 2), n, gen).to(z.device).expand(z.shape[0]).view(-1, 1)
    r = torch.arange(h, device=z.device).view(1, h)
    c = torch.arange(w, device=z.device).view(1, w)
    in_rows = (r >= ox - size[0] // 2) & (r < ox - size[0] // 2 + size[0])
    in_cols = (c >= oy - size[1] // 2) & (c < oy - size[1] // 2 + size[1])
    keep = ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))
    return z * keep.unsqueeze(1).to(z.dtype)


_GROUPS = {
    "color": (_brightness, _saturation, _contrast),
    "crop": (_crop,),
    "cutout": (_cutout,),
    "flip": (_flip,),
    "scale": (_scale,),
    "rotate": (_rotate,),
}
