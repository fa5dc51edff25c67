"""``random``: IPC real images per class drawn at random (the sanity baseline).

Every distillation method must beat this at the same IPC and retraining protocol; the draw is
seeded, class-balanced and without replacement.
"""

from __future__ import annotations

import torch

from rome_bench import DistilledSet, register_method
from rome_bench.data.datasets import ImageSet, class_balanced_indices
from rome_bench.methods.contract import MethodConfig


@register_method("random", "real", display="Random", order=1,
                 description="random real images per class (sanity baseline)")
def random_real(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
    idx = class_balanced_indices(train.labels, ipc, train.num_classes, seed=cfg.seed)
    # class-contiguous order, like every distilled set
    idx = idx[torch.argsort(train.labels[idx], stable=True)]
    return DistilledSet(train.images[idx].clone(), train.labels[idx].clone())
