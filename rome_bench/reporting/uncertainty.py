"""Bootstrap intervals over models and test images (docs/metrics.md, "Intervals").

A table value is a mean over the models of a cell, each measured on the same fixed test
subset. Its 95% interval comes from a two-level percentile bootstrap: each resample draws the
cell's models with replacement and the test images with replacement, and recomputes the value
from the records' per-image ``outcomes``. The image draw of a resample is one multiset of image
indices shared by every model and every cell with that many images (the images are one shared
sample, not one per model), so a comparison of two cells is paired on the images, and models
are drawn independently per cell (different cells hold different models). Where outcomes are
missing the bootstrap resamples models only, and where a cell has one model and no outcomes
there is nothing to resample and the interval is N/A.

Everything is deterministic: image draws come from a generator seeded with ``(seed, n)`` and
model draws from one seeded with ``(seed, hash of the cell)``, so a cell's interval does not
depend on which other cells a table holds.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
LEVEL = 0.95

IMAGES = "models+images"  # what a resample drew, as tables say it
MODELS = "models"
NOTHING = "none"


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: ``resamples`` draws from generators seeded with ``seed``.

    >>> boot = Bootstrap(resamples=1000)
    >>> boot.image_weights(4).shape, boot.image_weights(4).sum(axis=1)[:3].tolist()
    ((1000, 4), [4.0, 4.0, 4.0])
    """

    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    level: float = LEVEL

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"the bootstrap needs at least one resample, got {self.resamples}")
        if not 0 < self.level < 1:
            raise ValueError(f"the interval level must be in (0, 1), got {self.level}")

    def image_weights(self, n: int) -> np.ndarray:
        """(resamples, n) float32: how often each of ``n`` test images is drawn in each resample."""
        return _image_weights(self.seed, self.resamples, n)

    def model_draws(self, m: int, key: str) -> np.ndarray:
        """(resamples, m) indices of the ``m`` models a cell draws in each resample."""
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode()), m])
        return rng.integers(0, m, size=(self.resamples, m))

    def interval(self, replicates: np.ndarray | None) -> tuple[float | None, float | None]:
        """The percentile interval of ``replicates`` (NaNs left out), or (None, None)."""
        if replicates is None:
            return None, None
        finite = np.asarray(replicates, float)
        finite = finite[np.isfinite(finite)]
        if finite.size == 0:
            return None, None
        tail = (1 - self.level) / 2
        low, high = np.quantile(finite, [tail, 1 - tail])
        return float(low), float(high)


@functools.lru_cache(maxsize=8)
def _image_weights(seed: int, resamples: int, n: int) -> np.ndarray:
    rng = np.random.default_rng([seed, n])
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float32)
    weights.flags.writeable = False
    return weights


def image_replicates(masks: np.ndarray, boot: Bootstrap) -> np.ndarray:
    """(M, resamples) percent of images kept by each of ``masks`` (M, n) in each image resample.

    >>> image_replicates(np.ones((2, 5), bool), Bootstrap(resamples=3)).tolist()
    [[100.0, 100.0, 100.0], [100.0, 100.0, 100.0]]
    """
    masks = np.asarray(masks, dtype=np.float32)
    n = masks.shape[1]
    return (masks @ boot.image_weights(n).T).astype(float) * (100.0 / n)


def model_replicates(per_model: np.ndarray, boot: Bootstrap, key: str) -> np.ndarray:
    """(resamples,) mean over a resample of the models of per-model values (M, resamples).

    Row ``j`` of ``per_model`` holds model ``j``'s value in each image resample (a constant row
    for a model measured without outcomes); each resample averages the models it draws. NaN
    entries (a model without a value) are left out of the mean.
    """
    per_model = np.asarray(per_model, float)
    m = per_model.shape[0]
    draws = boot.model_draws(m, key)
    picked = per_model[draws, np.arange(boot.resamples)[:, None]]
    with np.errstate(invalid="ignore"):
        return np.nanmean(picked, axis=1) if np.isnan(picked).any() else picked.mean(axis=1)


@dataclass
class Estimate:
    """A mean over models with its bootstrap interval and what the bootstrap resampled.

    ``replicates`` keeps the (resamples,) values, so derived quantities (differences, effective
    robustness) are bootstrapped on the same draws; None when nothing could be resampled.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    resampled: str = NOTHING
    replicates: np.ndarray | None = None

    def text(self, digits: int = 2) -> str:
        """``value [low, high]``, the value alone without an interval, ``N/A`` without a value."""
        if self.value is None:
            return "N/A"
        if self.low is None or self.high is None:
            return number(self.value, digits)
        return (f"{number(self.value, digits)} [{number(self.low, digits)}, "
                f"{number(self.high, digits)}]")


def number(x: float, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals, never ``-0.00``.

    >>> number(-0.001), number(1.234)
    ('0.00', '1.23')
    """
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def mean_estimate(per_model: list[np.ndarray | float | None], boot: Bootstrap, key: str
                  ) -> Estimate:
    """The mean over models of one measure, with its interval.

    ``per_model`` holds, per model, its per-image mask (bool array of the test images) or, for a
    model without outcomes, its value. With masks for every model (of one length) the bootstrap
    draws models and images; otherwise models only; with one model and no masks, nothing.

    >>> e = mean_estimate([np.ones(50, bool), np.ones(50, bool)], Bootstrap(resamples=200), "c")
    >>> e.text(), e.resampled
    ('100.00 [100.00, 100.00]', 'models+images')
    """
    present = [x for x in per_model if x is not None]
    if not present:
        return Estimate(None)
    masks = [x for x in present if isinstance(x, np.ndarray) and x.dtype == bool]
    if len(masks) == len(present) and len({len(x) for x in masks}) == 1:
        stack = np.stack(masks)
        value = float(stack.mean(axis=1).mean() * 100.0)
        reps = model_replicates(image_replicates(stack, boot), boot, key)
        return _estimate(value, reps, IMAGES, boot)
    values = np.array([float(x.mean() * 100.0) if isinstance(x, np.ndarray) else float(x)
                       for x in present])
    if len(values) < 2:
        return Estimate(float(values.mean()))
    per_model_const = np.repeat(values[:, None], boot.resamples, axis=1)
    return _estimate(float(values.mean()), model_replicates(per_model_const, boot, key), MODELS,
                     boot)


def _estimate(value: float, reps: np.ndarray, resampled: str, boot: Bootstrap) -> Estimate:
    low, high = boot.interval(reps)
    return Estimate(value, low, high, resampled, reps)


def significant_lead(better: np.ndarray | None, worse: np.ndarray | None, boot: Bootstrap
                     ) -> bool | None:
    """Whether ``better`` leads ``worse`` significantly: the interval of the paired differences
    of their replicates lies above 0. None when either has no replicates.

    >>> boot = Bootstrap(resamples=100)
    >>> significant_lead(np.full(100, 2.0), np.full(100, 1.0), boot)
    True
    >>> significant_lead(np.linspace(0, 2, 100), np.full(100, 1.0), boot)
    False
    """
    if better is None or worse is None:
        return None
    low, _ = boot.interval(np.asarray(better) - np.asarray(worse))
    return None if low is None else low > 0
