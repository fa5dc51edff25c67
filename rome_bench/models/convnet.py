"""The ConvNet family of the distillation literature, with normalization as its first layer.

``ConvNet`` reproduces the reference network (VICO-UoE/DatasetCondensation ``networks.ConvNet``)
layer for layer, so the published checkpoints load by key: ``depth`` blocks of
conv3x3(width) -> norm -> ReLU -> AvgPool2d(2) in ``features`` and one ``classifier`` Linear.
With width 128, depth 3 and instance norm (``GroupNorm(128, 128, affine=True)``) it has
320,010 parameters for CIFAR-10.

Every model rome-bench trains or attacks is a :class:`Classifier`: an input transform
(:class:`Normalize`, optionally followed by a fixed whitening) and then the network. Attacks
therefore always see [0,1] images and epsilons are in pixel units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rome_bench.core.registry import Registry
from rome_bench.core.storage import CheckpointError, load_tensor_file


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the first layer of every rome-bench model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class LinearTransform(nn.Module):
    """A fixed affine map over flattened images, ``(x_flat - mean) @ matrix.T`` (e.g. ZCA)."""

    def __init__(self, matrix: torch.Tensor, mean: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix.float())
        self.register_buffer("offset", mean.float().flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1) - self.offset
        return (flat @ self.matrix.T).view_as(x)


def _norm_layer(kind: str, channels: int, hw: tuple[int, int]) -> nn.Module | None:
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "layernorm":
        return nn.LayerNorm([channels, hw[0], hw[1]], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if kind == "none":
        return None
    raise ValueError(f"unknown norm '{kind}' (instancenorm, batchnorm, layernorm, groupnorm, none)")


class ConvNet(nn.Module):
    """DC-style ConvNet operating on already-normalized inputs (wrap it in :class:`Classifier`).

    Args:
        channels: input channels.
        num_classes: outputs.
        width, depth, norm: ``net_width``, ``net_depth``, ``net_norm`` of the reference.
        image_size: input H, W (the classifier's input size follows from it).

    >>> sum(p.numel() for p in ConvNet(3, 10).parameters())
    320010
    """

    def __init__(self, channels: int, num_classes: int, width: int = 128, depth: int = 3,
                 norm: str = "instancenorm", image_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, hw = channels, image_size
        for d in range(depth):
            # The reference pads MNIST's 28x28 first layer by 3 so the features stay 32-like.
            pad = 3 if channels == 1 and d == 0 and hw == (28, 28) else 1
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=pad))
            if pad == 3:
                hw = (hw[0] + 4, hw[1] + 4)
            norm_layer = _norm_layer(norm, width, hw)
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(nn.ReLU(inplace=True))
            layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            in_ch, hw = width, (hw[0] // 2, hw[1] // 2)
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * hw[0] * hw[1]
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier (the embedding DM/IDM/ROME match)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class Classifier(nn.Module):
    """``input_transform`` then ``net``: takes [0,1] images, returns logits.

    The attribute names are deliberately not ``mean``/``std``: torchattacks would otherwise
    pick them up and normalize a second time.
    """

    def __init__(self, net: ConvNet, input_transform: nn.Module) -> None:
        super().__init__()
        self.input_transform = input_transform
        self.net = net

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(self.input_transform(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_transform(x))


@dataclass(frozen=True)
class ArchSpec:
    """Hyperparameters of a registered architecture (parameters as data, not in names)."""

    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"


ARCHS: Registry[ArchSpec] = Registry("architecture")
ARCHS.add("convnet", ArchSpec(), "convnet-d3", "convnet-w128",
          description="ConvNet-3, width 128, instance norm (the paper's network)")
for _d in (1, 2, 4):
    ARCHS.add(f"convnet-d{_d}", ArchSpec(depth=_d), description=f"ConvNet depth {_d}")
for _w in (32, 64, 256):
    ARCHS.add(f"convnet-w{_w}", ArchSpec(width=_w), description=f"ConvNet width {_w}")
for _n, _label in (("batchnorm", "bn"), ("layernorm", "ln"), ("groupnorm", "gn"), ("none", "nn")):
    ARCHS.add(f"convnet-{_label}", ArchSpec(norm=_n), description=f"ConvNet with {_n}")


def build_model(name: str, *, num_classes: int, channels: int = 3,
                image_size: tuple[int, int] = (32, 32), mean: Sequence[float] = (0.0, 0.0, 0.0),
                std: Sequence[float] = (1.0, 1.0, 1.0), whitening: nn.Module | None = None) -> Classifier:
    """Build architecture ``name`` with normalization (and optional whitening) as input layers.

    No RNG reseeding happens here: seed the global generator before calling for a
    reproducible initialization.

    >>> m = build_model("convnet", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> m(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    spec = ARCHS.get(name)
    net = ConvNet(channels, num_classes, spec.width, spec.depth, spec.norm, image_size)
    transform: nn.Module = Normalize(mean, std)
    if whitening is not None:
        transform = nn.Sequential(transform, whitening)
    return Classifier(net, transform)


def load_dc_checkpoint(path: str | Path, arch: str, *, num_classes: int, mean: Sequence[float],
                       std: Sequence[float], channels: int = 3,
                       image_size: tuple[int, int] = (32, 32)) -> Classifier:
    """Load a DC-style ConvNet ``state_dict`` (inputs normalized with ``mean``/``std``).

    Used for published checkpoints such as BEARD's model pool. The file is read with
    ``weights_only=True`` so a pickle payload cannot execute; mismatching keys or shapes raise
    :class:`CheckpointError` naming the first differences.
    """
    state = load_tensor_file(path, "checkpoint")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if (not isinstance(state, dict) or not all(isinstance(k, str) for k in state)
            or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise CheckpointError(f"{path}: expected a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build_model(arch, num_classes=num_classes, channels=channels, image_size=image_size,
                        mean=mean, std=std)
    expected = model.net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:4]}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:3]}")
        raise CheckpointError(f"{path} does not fit architecture '{arch}' with {num_classes} "
                              f"classes: {'; '.join(parts)}")
    # load_state_dict would cast integer tensors into float weights and take NaN as it is:
    # either gives a model that silently measures nonsense
    for k, v in expected.items():
        if v.is_floating_point() and not state[k].is_floating_point():
            raise CheckpointError(f"{path}: {k} holds {state[k].dtype} values, expected floats")
        if v.is_floating_point() and not torch.isfinite(state[k]).all():
            raise CheckpointError(f"{path}: {k} contains NaN or inf")
    model.net.load_state_dict(state)
    return model.eval()
