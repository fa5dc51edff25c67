"""Evaluation protocols: how a cell's models are retrained on its distilled set (docs/protocol.md).

``native`` retrains each method the way its own reference evaluates it, following the hints the
method leaves in the set's ``meta`` (a learned lr, ZCA whitening, a batch size, no DSA for DC,
soft labels). ``beard`` retrains every set the same way, as BEARD did for the published
numbers: the preset's DSA epoch budget, DSA, lr 0.01, batch 256, no ZCA layer, no learned lr,
hard labels. :func:`resolve_retrain` is the one place that turns a protocol into the settings
of a cell; the retraining stage and the run plan both call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rome_bench.core.catalog import METHODS
from rome_bench.core.registry import Registry
from rome_bench.data.distilled import DistilledSet
from rome_bench.pipeline.presets import Preset

DEFAULT_LR = 0.01
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: whether a set's retraining hints are followed."""

    name: str
    description: str
    # True: the set's meta hints (lr, zca, augment, retrain_batch_size) and soft labels apply
    follows_hints: bool


PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.add("native", Protocol(
    "native", "each method retrained as its own reference evaluates it (DC without DSA, "
    "MTT/DATM with ZCA and the learned lr, DATM with soft labels and batch 128)", True),
    description="each method's own evaluation (default)")
PROTOCOLS.add("beard", Protocol(
    "beard", "every method retrained as BEARD did for the published numbers: DSA, lr 0.01, "
    "batch 256, no ZCA, no learned lr, hard labels", False),
    description="BEARD's retraining, the same for every method (the published Table 1's)")

DEFAULT_PROTOCOL = "native"


@dataclass(frozen=True)
class RetrainSettings:
    """How the models of one cell are retrained.

    Without a distilled set (when the run is planned) the three flags say what the protocol
    does with a hint *if* the set carries it; with one they say what is applied to it.

    Attributes:
        epochs: retraining epochs (the preset's budget for the IPC).
        decay_epoch: the first epoch (0-based) trained at lr / 10 (the preset's schedule).
        lr: the learning rate used (the set's learned lr when ``use_learned_lr``).
        batch: the batch size.
        augment: DSA on every batch.
        use_zca: the set's ZCA whitening (``meta["zca"]``) goes inside the model.
        use_learned_lr: the set's learned lr (``meta["lr"]``) replaces 0.01.
        soft_labels: soft-label logits are the targets; False trains on their argmax.
    """

    epochs: int
    decay_epoch: int
    lr: float
    batch: int
    augment: bool
    use_zca: bool
    use_learned_lr: bool
    soft_labels: bool

    def summary(self) -> str:
        """One line for the run plan, e.g. ``1000 epochs, DSA, lr 0.01, batch 256``."""
        text = (f"{self.epochs} epochs (lr/10 from epoch {self.decay_epoch}), "
                f"{'DSA' if self.augment else 'no aug'}, lr {self.lr:g}, batch {self.batch}")
        if not self.use_zca:
            text += ", no ZCA"
        if not self.soft_labels:
            text += ", hard labels"
        return text


def resolve_retrain(protocol: str, method: str, ipc: int, preset: Preset,
                    distilled: DistilledSet | None = None) -> RetrainSettings:
    """The retraining settings of ``method``'s cell at ``ipc`` under ``protocol``.

    ``ipc`` is the requested IPC (the epoch budget follows it); ``distilled`` is the set to
    retrain on, whose hints ``native`` follows (None when planning: the method's declared
    defaults, each hint to be followed if present).

    >>> from rome_bench.pipeline.presets import PRESETS
    >>> resolve_retrain("beard", "dc", 10, PRESETS.get("paper")).summary()
    '1001 epochs (lr/10 from epoch 502), DSA, lr 0.01, batch 256, no ZCA, hard labels'
    """
    proto = PROTOCOLS.get(protocol)
    entry = METHODS.entry(method)
    hints: dict[str, Any] = dict(distilled.meta) if distilled is not None else {}
    if proto.follows_hints:
        augment = bool(hints.get("augment", entry.meta.get("retrain_augment", True)))
        learned = "lr" in hints if distilled is not None else True
        zca = isinstance(hints.get("zca"), dict) if distilled is not None else True
        soft = distilled.soft if distilled is not None else True
        lr = float(hints["lr"]) if "lr" in hints else DEFAULT_LR
        batch = int(hints.get("retrain_batch_size", DEFAULT_BATCH))
    else:
        # BEARD Code/train_model.py: dsa_strategy color_crop_cutout_flip_scale_rotate for every
        # set, lr_net 0.01, batch_train 256; sets loaded as raw tensors with hard labels
        augment = True
        learned = zca = soft = False
        lr, batch = DEFAULT_LR, DEFAULT_BATCH
        if entry.meta.get("ipc_independent"):
            augment = bool(entry.meta.get("retrain_augment", True))  # the whole training set
    if entry.meta.get("ipc_independent"):
        epochs = preset.retrain.full
    else:
        epochs = preset.retrain.for_ipc(ipc, augment)
    return RetrainSettings(epochs=epochs, decay_epoch=preset.retrain.decay_epoch(epochs), lr=lr,
                           batch=batch, augment=augment, use_zca=zca, use_learned_lr=learned,
                           soft_labels=soft)
