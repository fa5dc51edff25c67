"""The one timed, batched pass that every measurement makes (clean, attacked, crafted, transfer).

The AE metric compares wall-clock seconds of whole passes over the test images, so every
measurement must time the same thing the same way: all batches, generation and prediction
included, with the device synchronised at both ends (CUDA work is asynchronous).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a timer read afterwards covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[nn.Module]:
    """Run an attack with ``requires_grad=False`` on every parameter of ``model``, then restore
    each parameter's flag.

    Why: an attack needs gradients with respect to its input only, but some torchattacks
    attacks call ``loss.backward()`` (CW, FAB inside AutoAttack, torchattacks' DeepFool), which
    also computes, and accumulates into ``.grad``, the gradient of every weight, work thrown
    away (CW alone runs 1.23x faster without it, ``benchmarks/README.md``). With the weights
    frozen autograd skips it. The input gradient is computed by the same kernels either way, so the
    adversarial examples are bit for bit the same (``tests/test_attack_speed.py``). Attacks that
    use ``torch.autograd.grad(loss, x)`` (FGSM, PGD, APGD) already skip the weight gradients.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def correct_mask(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which of ``inputs`` ``model`` classifies as ``labels`` (a bool tensor on the CPU; no
    autograd graph)."""
    with torch.no_grad():
        return (model(inputs).argmax(1) == labels).cpu()


def count_correct(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> int:
    """How many of ``inputs`` ``model`` classifies as ``labels``."""
    return int(correct_mask(model, inputs, labels).sum())


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` on ``device``; on CUDA from pinned memory without blocking, so the copy of the
    next batch overlaps the work on this one."""
    if device.type == "cuda" and batch.device.type == "cpu":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def timed_batches(n: int, batch_size: int, device: torch.device,
                  step: Callable[[slice], int | None]) -> tuple[int, float]:
    """Call ``step`` on consecutive slices of ``range(n)``; returns the sum of what the steps
    return (e.g. correct predictions) and the seconds of the whole pass."""
    total = 0
    synchronize(device)
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        total += step(slice(i, i + batch_size)) or 0
    synchronize(device)
    return total, time.perf_counter() - start
