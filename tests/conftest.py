"""Shared fixtures: real data from ../shared (never downloaded), an isolated cache per test.

Tests that need the real CIFAR-10 copy or BEARD's published checkpoints take the
``cifar10_root`` / ``pool_dir`` fixtures. Where the data is absent (a clone without the shared
folder beside it) they skip with a one-line reason naming the path and ``ROME_BENCH_SHARED``;
with ``ROME_BENCH_REQUIRE_SHARED=1`` (set by CI, which has the data) a missing path fails
instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROME_BENCH_SHARED", REPO.parent / "shared"))
CIFAR10 = SHARED / "data" / "cifar10"
POOL = SHARED / "data" / "beard_model_pool"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache so nothing leaks between tests or into ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROME_BENCH_CACHE", str(cache))
    # CLI tests run in-process (monkeypatches, test-only presets): one worker unless a test asks
    monkeypatch.setenv("ROME_BENCH_JOBS", "1")
    return cache


def require_shared(folder: Path, marker: str, what: str) -> Path:
    """``folder`` if it holds ``marker``; otherwise skip (or fail under
    ROME_BENCH_REQUIRE_SHARED=1) with a one-line reason that says how to provide it."""
    if (folder / marker).exists():
        return folder
    reason = (f"{what} not found at {folder}: set ROME_BENCH_SHARED to the folder that holds "
              "data/cifar10 and data/beard_model_pool")
    if os.environ.get("ROME_BENCH_REQUIRE_SHARED") == "1":
        pytest.fail(reason + " (ROME_BENCH_REQUIRE_SHARED=1: CI must not skip these tests)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    return require_shared(CIFAR10, "test.npz", "real CIFAR-10")


@pytest.fixture(scope="session")
def pool_dir() -> Path:
    return require_shared(POOL, "MANIFEST", "BEARD's model pool")


@pytest.fixture(scope="module")
def dc_model(pool_dir):
    """BEARD's published DC ConvNet (IPC 50), loaded behind its Normalize layer."""
    from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD
    from rome_bench.models.convnet import load_dc_checkpoint

    path = next(pool_dir.glob("DC_*.pth"))
    return load_dc_checkpoint(path, "convnet", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def write_cifar_batch(path: Path, x: np.ndarray, labels: np.ndarray, key: str = "labels") -> None:
    """A file in the official CIFAR python layout (rows of 3072 uint8, channel-major)."""
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    with open(path, "wb") as f:
        pickle.dump({"data": rows, key: [int(v) for v in labels],
                     "batch_label": "test batch"}, f)


@pytest.fixture
def tiny_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10


def register_unit_preset() -> None:
    """A tiny preset for pipeline tests (3 epochs, 20 test images): exercises every stage fast."""
    from rome_bench.pipeline.presets import PRESETS, AttackBudget, Preset, RetrainBudget

    if "unit" in PRESETS:
        return
    PRESETS.add("unit", Preset(
        name="unit", description="test-only", scaled="everything (tests)", dataset="cifar10-mini",
        ipcs=(1, 2), repeats=1, retrain=RetrainBudget(epochs={1: 3}, epochs_noaug={1: 3}, full=1),
        attacks=AttackBudget(test_subset=20, overrides={
            "CW": {"steps": 2}, "DeepFool": {"steps": 2}, "AutoAttack": {"square_queries": 10}})))


register_unit_preset()
