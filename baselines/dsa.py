"""``dsa``: gradient matching with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

DC's gradient matching (:mod:`rome_bench.methods.gradient_matching`) where, for every class, the real
and the synthetic batch pass through the same random DSA transform (one fresh seed per class,
shared by both batches; strategy ``color_crop_cutout_flip_scale_rotate``), and the inner network
training augments every synthetic image independently. Initialised from random real images.
Retraining uses DSA (1000 epochs at ``paper``).
Output: (ipc * classes, C, H, W) images in pixel units (not clamped to [0,1]), class-contiguous
hard labels.
"""

from __future__ import annotations

from rome_bench.baselines.dc import BUDGETS as DC_BUDGETS

from rome_bench import DistilledSet, register_method
from rome_bench.data.datasets import ImageSet
from rome_bench.methods.contract import MethodConfig
from rome_bench.methods.gradient_matching import distill_gradient_matching

# The reference runs DSA with DC's budget (README: main.py --method DSA --init real): paper, cpu
# and quick entries are DC's (see baselines/dc.py for what cpu/quick scale), with real-image
# init at every preset (DC's paper entry starts from noise).
BUDGETS = {preset: {k: dict(v) for k, v in table.items()} for preset, table in DC_BUDGETS.items()}
BUDGETS["paper"]["all"]["init"] = "real"


@register_method("dsa", display="DSA", order=3,
                 description="DSA: gradient matching with siamese augmentation "
                                    "(Zhao & Bilen, ICML 2021)",
                 budgets=BUDGETS, retrain_augment=True)
def dsa(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
    return distill_gradient_matching(train, ipc, cfg, use_dsa=True)
