"""``full``: the whole real training set (the paper's Full-size row).

Not a distilled set: the "distilled set" is the training set itself, so the result does not
depend on the IPC and is computed once per run. Retraining uses the preset's ``full_epochs``
(plain SGD protocol, no augmentation) instead of the synthetic-set epochs.
"""

from __future__ import annotations

from rome_bench import DistilledSet, register_method
from rome_bench.data.datasets import ImageSet
from rome_bench.methods.contract import MethodConfig


@register_method("full", "full-size", display="Full-size", order=0,
                 description="whole real training set (Full-size row)",
                 retrain_augment=False, ipc_independent=True)
def full(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
    return DistilledSet(train.images, train.labels, {"whole_train_set": True})
