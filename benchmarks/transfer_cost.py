"""Transfer cost: one surrogate against K victims, crafting once, versus K single-victim studies.

Crafting adversarial examples on the surrogate dominates; each extra victim only adds one
prediction pass over the crafted tensors. For each K, the script times (side by side, runs
alternating, best of ``--repeats``) ``transfer_study`` with one surrogate and K victims, and
the same study with a single victim; it prints the K-victim time next to K x the single-victim
time (what crafting per (surrogate, victim) pair would cost). Goal: the ratio falls towards 1/K.

    python benchmarks/transfer_cost.py [--images 100] [--attacks FGSM,PGD] [--repeats 2] [--max-victims 6]

Uses BEARD's published checkpoints (../shared/data/beard_model_pool) and the embedded
cifar10-mini test images; CW runs the quick preset's 10 steps unless ``--paper`` is given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rome_bench.attacks.blackbox import TransferModel, transfer_study
from rome_bench.attacks.suite import ATTACKS
from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, load_dataset, take_test_subset
from rome_bench.models.convnet import load_dc_checkpoint
from rome_bench.pipeline.presets import PRESETS

POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beard_model_pool"


def timed(surrogate, victims, x, y, specs, overrides) -> float:
    start = time.perf_counter()
    transfer_study(victims, x, y, specs, ["untargeted"], ["standard"], surrogates=[surrogate],
                   overrides=lambda n: overrides.get(n, {}))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--attacks", default="FGSM,PGD,PGD-L2,CW")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-victims", type=int, default=None, help="largest K (default: all)")
    ap.add_argument("--pool", type=Path, default=POOL)
    ap.add_argument("--paper", action="store_true", help="paper parameters (CW 100 steps)")
    args = ap.parse_args()
    paths = sorted(args.pool.glob("*_ConvNet_CIFAR10_50_*.pth"))
    if len(paths) < 2:
        raise SystemExit(f"need the BEARD model pool at {args.pool}")
    models = [TransferModel(p.name.split("_")[0], p.name, load_dc_checkpoint(
        p, "convnet", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD), 50) for p in paths]
    test = take_test_subset(load_dataset("cifar10-mini", "test"), args.images)
    x, y = test.images, test.labels
    specs = [ATTACKS.get(a) for a in args.attacks.split(",")]
    overrides = {} if args.paper else PRESETS.get("quick").attacks.overrides
    surrogate = models[0]
    print(f"{len(x)} images, surrogate {surrogate.name}, attacks {args.attacks} (untargeted), "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"  {'K victims':>9}{'K-victim s':>12}{'1-victim s':>12}{'K x 1-victim s':>16}{'ratio':>8}")
    for k in range(1, min(len(models), args.max_victims or len(models)) + 1):
        many, single = [], []
        for _ in range(args.repeats):  # alternate so drifting machine load hits both alike
            single.append(timed(surrogate, models[:1], x, y, specs, overrides))
            many.append(timed(surrogate, models[:k], x, y, specs, overrides))
        t_k, t_1 = min(many), min(single)
        print(f"  {k:>9}{t_k:>12.2f}{t_1:>12.2f}{k * t_1:>16.2f}{t_k / (k * t_1):>8.2f}")


if __name__ == "__main__":
    main()
