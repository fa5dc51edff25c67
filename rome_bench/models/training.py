"""Retraining a fresh network on a (distilled) set: the reference ``evaluate_synset``.

Protocol (VICO-UoE/DatasetCondensation ``utils.evaluate_synset``): SGD, lr 0.01, momentum 0.9,
weight decay 5e-4, batch 256, shuffled every epoch, the lr divided by 10 once (with a fresh
optimizer, which resets momentum, as the reference does), optional per-image DSA on every batch,
cross-entropy (against softmax targets for soft labels). Sets distilled in a whitened space (ZCA
inside the model) are augmented after the whitening, as MTT's reference does.

The epochs trained and the epoch the lr drops at are data (:class:`TrainConfig`), set by the
preset: the reference's ``epoch_eval_train = E`` trains ``E + 1`` epochs (``range(E + 1)``) and
drops the lr after epoch index ``E // 2 + 1``, i.e. ``epochs=E + 1, decay_epoch=E // 2 + 2``
(1001 and 502 for E = 1000), which the ``paper`` preset uses; the scaled presets train their
epochs with the drop at half (``decay_epoch=None``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.data.augment import DSA
from rome_bench.models.convnet import Normalize


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one retraining run (defaults: the reference's optimizer; the pipeline
    sets ``epochs`` and ``decay_epoch`` from the preset, see the module docstring)."""

    epochs: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    # the first epoch (0-based) trained at lr / 10; None: epochs // 2
    decay_epoch: int | None = None
    augment: bool = True

    @property
    def first_decayed_epoch(self) -> int:
        """The epoch index from which the lr is divided by 10 (0 would mean never)."""
        return self.epochs // 2 if self.decay_epoch is None else self.decay_epoch


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels (N,) or soft-label logits (N,K) turned into probabilities."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return -(F.softmax(targets, dim=1) * F.log_softmax(logits, dim=1)).sum(1).mean()


def train_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                *, augment: DSA | None = None, seed: int = 0, device: str | torch.device = "cpu",
                progress: Callable[[int], None] | None = None) -> nn.Module:
    """Train ``model`` in place on ``images`` ([0,1], N,C,H,W) and ``labels``; returns it in eval mode.

    ``seed`` drives the batch order and the augmentation draws through private generators, so
    the global RNG is untouched and the same seed gives the same model on CPU. ``progress`` is
    called with 1 after each epoch.

    >>> from rome_bench.models.convnet import build_model
    >>> m = build_model("convnet-w32", num_classes=2)
    >>> x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 0, 1, 1])
    >>> _ = train_model(m, x, y, TrainConfig(epochs=2, augment=False))
    """
    model.to(device).train()
    images, labels = images.to(device), labels.to(device)
    whitened = _has_whitening(model)
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    n = images.shape[0]
    lr = cfg.lr

    def make_optimizer(lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)

    optimizer = make_optimizer(lr)
    decay_epoch = cfg.first_decayed_epoch
    for epoch in range(cfg.epochs):
        if epoch == decay_epoch and epoch > 0:
            lr *= 0.1
            optimizer = make_optimizer(lr)
        perm = torch.randperm(n, generator=order_gen).to(device)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            x = images[idx]
            if augment is not None and cfg.augment and whitened:
                # sets distilled in a whitened space (MTT/DATM with ZCA) are augmented there, after
                # the whitening, as the reference retrains them (DSA on the ZCA'd tensors)
                z = augment.augment_normalized(model.input_transform(x), generator=aug_gen)
                logits = model.net(z)
            else:
                if augment is not None and cfg.augment:
                    x = augment(x, generator=aug_gen)
                logits = model(x)
            loss = soft_cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if progress is not None:
            progress(1)
    return model.eval()


def _has_whitening(model: nn.Module) -> bool:
    """True for a Classifier whose input transform goes beyond Normalize (e.g. ZCA after it)."""
    transform = getattr(model, "input_transform", None)
    return transform is not None and hasattr(model, "net") and not isinstance(transform, Normalize)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """Predicted classes for ``images`` ([0,1]) in eval mode."""
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
             device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in percent."""
    pred = predict(model, images, batch_size, device)
    return 100.0 * float((pred == labels.cpu()).float().mean())
