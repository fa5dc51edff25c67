"""``dc``: Dataset Condensation with gradient matching (Zhao, Mopuri & Bilen, ICLR 2021).

Learns ``ipc`` synthetic images per class (initialised from random real images) whose
cross-entropy gradients on fresh, partly trained ConvNets match those of real batches, layer by
layer (see :mod:`rome_bench.gradient_matching` for the loop and the normalized-space
convention). Retraining follows the DC protocol: no augmentation (300 epochs at ``paper``).
Output: (ipc * classes, C, H, W) images in [0,1], class-contiguous hard labels.
"""

from __future__ import annotations

from rome_bench import DistilledSet, register_method
from rome_bench.data import ImageSet
from rome_bench.gradient_matching import LOOPS, distill_gradient_matching
from rome_bench.methods import MethodConfig

_PAPER_LOOPS = {ipc: {"outer_loop": o, "inner_loop": i} for ipc, (o, i) in LOOPS.items()}

BUDGETS = {
    # VICO-UoE/DatasetCondensation main.py defaults for CIFAR-10 / ConvNet.
    "paper": {"all": {"iterations": 1000, "lr_img": 0.1, "momentum_img": 0.5, "lr_net": 0.01,
                      "batch_real": 256, "batch_train": 256, "init": "real"},
              **_PAPER_LOOPS},
    # cpu: same algorithm and learning rates on full CIFAR-10; scales the iterations
    # (1000 -> 200 at IPC 1, 1000 -> 25 at IPC 10), batch_real (256 -> 64 per class at IPC 10)
    # and the IPC 10 loops (10/50 -> 5/10) so each IPC distils in under ~20 min on 2 cores.
    "cpu": {"all": {"lr_img": 0.1, "momentum_img": 0.5, "lr_net": 0.01, "batch_train": 256,
                    "init": "real"},
            1: {"iterations": 200, "batch_real": 256, "outer_loop": 1, "inner_loop": 1},
            10: {"iterations": 25, "batch_real": 64, "outer_loop": 5, "inner_loop": 10}},
    # quick: the embedded 2,000-image subset; scales the iterations (1000 -> 10), batch_real
    # (256 -> 16 per class) and the IPC 10 loops (10/50 -> 5/10) for ~10-20 s per IPC.
    "quick": {"all": {"lr_img": 0.1, "momentum_img": 0.5, "lr_net": 0.01, "batch_train": 256,
                      "init": "real"},
              1: {"iterations": 40, "batch_real": 16, "outer_loop": 1, "inner_loop": 1},
              10: {"iterations": 10, "batch_real": 16, "outer_loop": 5, "inner_loop": 10}},
}


@register_method("dc", description="DC: gradient matching (Zhao et al., ICLR 2021)",
                 budgets=BUDGETS, retrain_augment=False)
def dc(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
    return distill_gradient_matching(train, ipc, cfg, use_dsa=False)
