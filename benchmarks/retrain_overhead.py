"""Retraining overhead: rome-bench's ``train_model`` against a bare PyTorch loop.

Both train the same freshly initialised ConvNet on the same distilled-size set for the same
epochs (SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, lr decay at half, no augmentation so
only the harness is compared). Runs alternate to share machine noise; the median ratio is
printed. Goal: ratio <= 1.1.

    python benchmarks/retrain_overhead.py [--ipc 10] [--epochs 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, class_balanced_indices, load_dataset
from rome_bench.models.convnet import build_model
from rome_bench.models.training import TrainConfig, train_model


def bare_loop(model, images, labels, epochs, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    for epoch in range(epochs):
        if epoch == epochs // 2:
            opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), 256):
            idx = perm[i:i + 256]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def fresh():
    torch.manual_seed(0)
    return build_model("convnet", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    train = load_dataset("cifar10-mini", "train")
    idx = class_balanced_indices(train.labels, args.ipc, 10, seed=0)
    images, labels = train.images[idx], train.labels[idx]
    cfg = TrainConfig(epochs=args.epochs, augment=False)
    ours, bare = [], []
    for _ in range(args.rounds):
        m = fresh()
        t = time.perf_counter()
        train_model(m, images, labels, cfg, seed=0)
        ours.append(time.perf_counter() - t)
        m = fresh()
        t = time.perf_counter()
        bare_loop(m, images, labels, args.epochs, seed=0)
        bare.append(time.perf_counter() - t)
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"retraining {len(images)} images x {args.epochs} epochs, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"  rome-bench train_model  {o:8.3f} s (median)")
    print(f"  bare PyTorch loop       {b:8.3f} s (median)")
    print(f"  ratio                   {o / b:8.3f}   (goal <= 1.1)")


if __name__ == "__main__":
    main()
