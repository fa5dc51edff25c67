"""Gradient matching: the machinery of DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

Synthetic images are learned so that, on many randomly initialised and partly trained ConvNets,
the gradient of the cross-entropy on each class's synthetic images points the same way, layer
by layer and output unit by output unit, as the gradient on a batch of that class's real images.

The loop (reference: VICO-UoE/DatasetCondensation ``main.py``; see :func:`distill_gradient_matching`):

* every outer iteration builds a fresh randomly initialised ConvNet;
* ``outer_loop`` times: per class, the CE gradient on ``batch_real`` real images of the class
  (detached) and on the class's synthetic images (kept in the graph) are compared with
  :func:`match_distance`; the distances of all classes are summed and the images take ONE SGD
  step (lr ``lr_img``, momentum 0.5);
* between outer steps (not after the last) the network trains ``inner_loop`` epochs on the
  synthetic set (SGD ``lr_net``, no momentum, batch ``batch_train``);
* DSA (``use_dsa``): each class's real and synthetic batches go through the same differentiable
  augmentation (one fresh seed per class, shared: siamese), and the inner training augments each
  image independently.

**Normalized space.** The reference stores its synthetic images normalized with the dataset's
mean/std and its ``lr_img`` acts on those values. To keep the published learning rates
meaningful, the learnable tensor here is ``z = (x - mean) / std``, the network used for matching
is the bare ConvNet (``Classifier.net``) fed normalized tensors, and DSA runs in normalized space
(:meth:`~rome_bench.data.augment.DSA.augment_normalized`), exactly as the reference does. The result
returned is ``x = z * std + mean``: pixel units, rome-bench's storage convention, not clamped
to [0,1] (the reference retrains on the unclamped tensors).

**Batched classes.** The reference runs one forward/backward per class. Because every layer of
the instance-norm ConvNet treats each image independently, the gradient of the *sum* of the
per-class mean losses with respect to a layer's output, restricted to class ``c``'s rows, is
exactly the gradient of class ``c``'s loss. :func:`class_gradients` therefore pushes the images
of all classes through the network in passes of a size chosen for the device (all at once on
a GPU; chunks of 32 on CPU, where small batches run fastest per image), takes one backward pass
to every weight layer's output, and forms the per-class weight gradients from each class's
slice of the layer inputs and output gradients. Only weight matrices are formed: 1-D
parameters (biases, norm affine) carry no weight in the distance, and the image update
backpropagates to the images only. The results equal the per-class reference computation up
to float rounding (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.data.datasets import ImageSet
from rome_bench.data.distilled import DistilledSet
from rome_bench.methods.contract import MethodConfig
from rome_bench.models.convnet import ConvNet, build_model

#: IPC -> (outer_loop, inner_loop) of the reference ``get_loops``.
LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20),
                                     40: (40, 15), 50: (50, 10)}

#: The reference's stabiliser in the cosine's denominator.
COSINE_EPS = 1e-6


def get_loops(ipc: int) -> tuple[int, int]:
    """``(outer_loop, inner_loop)`` of the reference for ``ipc`` images per class.

    >>> get_loops(10)
    (10, 50)
    """
    if ipc not in LOOPS:
        raise ValueError(f"the reference defines outer/inner loops only for IPC {sorted(LOOPS)}, "
                         f"not {ipc}; pass outer_loop/inner_loop explicitly")
    return LOOPS[ipc]


# -- the distance ---------------------------------------------------------------------------
def match_distance(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor],
                   batch_dims: int = 0) -> torch.Tensor:
    """Layer-wise gradient distance of DC: ``sum over tensors, over output rows, of 1 - cos``.

    Each gradient tensor is viewed as rows, one per output unit (a conv weight (out,in,h,w)
    becomes (out, in*h*w); a linear weight stays (out, in)), and contributes
    ``sum_i 1 - <s_i, r_i> / (|s_i| |r_i| + 1e-6)``. Tensors of parameters with one dimension
    (biases, normalisation affine) are ignored, as in the reference.

    Args:
        g_syn, g_real: matching sequences of gradients, one per parameter.
        batch_dims: leading dimensions that stack several gradients (e.g. 1 for per-class
            gradients of shape (C, *weight.shape)); the result is summed over them too.

    >>> s = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.ones(2)]
    >>> r = [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), -torch.ones(2)]
    >>> round(float(match_distance(s, r)), 4)   # row 1: cos 1, row 2: cos 0; the bias is ignored
    1.0
    """
    if len(g_syn) != len(g_real):
        raise ValueError(f"{len(g_syn)} synthetic gradients against {len(g_real)} real ones")
    total = None
    for s, r in zip(g_syn, g_real, strict=True):
        if s.shape != r.shape:
            raise ValueError(f"gradient shapes differ: {tuple(s.shape)} vs {tuple(r.shape)}")
        if s.dim() - batch_dims <= 1:
            continue
        rows = s.shape[:batch_dims + 1].numel()
        s2, r2 = s.reshape(rows, -1), r.reshape(rows, -1)
        cos = (s2 * r2).sum(-1) / (s2.norm(dim=-1) * r2.norm(dim=-1) + COSINE_EPS)
        term = (1 - cos).sum()
        total = term if total is None else total + term
    return total if total is not None else g_syn[0].new_zeros(())


# -- per-class gradients in one batched pass ------------------------------------------------
@contextlib.contextmanager
def _record_layers(layers: Sequence[nn.Module]) -> Iterator[tuple[list, list]]:
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def hook(module, args, out):
        inputs.append(args[0])
        outputs.append(out)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


def weight_layers(net: nn.Module) -> list[nn.Module]:
    """The Conv2d/Linear layers of ``net`` in forward order (the ones the distance sees)."""
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def default_chunk(device: torch.device | str) -> int | None:
    """Images per forward pass: 32 on CPU (measured among the fastest per image: activations stay in
    cache), everything at once on an accelerator."""
    return 32 if torch.device(device).type == "cpu" else None


def _weight_grad(layer: nn.Module, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Gradient of ``layer``'s weight from its input ``a`` and output gradient ``d``."""
    if isinstance(layer, nn.Conv2d):
        return torch.nn.grad.conv2d_weight(a, layer.weight.shape, d, stride=layer.stride,
                                           padding=layer.padding, dilation=layer.dilation,
                                           groups=layer.groups)
    return d.flatten(0, -2).T @ a.flatten(0, -2)


def _plan_passes(counts: Sequence[int], chunk: int | None) -> list[list[tuple[int, int]]]:
    """Group class-contiguous images into passes of at most ``chunk`` images.

    Returns, per pass, its pieces as ``(class, size)`` in order. Whole classes are kept together
    where they fit, so a class's gradient is usually formed in one piece.
    """
    limit = chunk or sum(counts)
    passes: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    filled = 0
    for c, n in enumerate(counts):
        while n > 0:
            if filled == limit or (filled and filled + min(n, limit) > limit):
                passes.append(current)
                current, filled = [], 0
            take = min(n, limit - filled)
            current.append((c, take))
            filled += take
            n -= take
    if current:
        passes.append(current)
    return passes


def class_gradients(net: nn.Module, x: torch.Tensor, counts: Sequence[int],
                    create_graph: bool = False, chunk: int | None = None) -> list[torch.Tensor]:
    """Per-class gradients of each class's mean CE w.r.t. the weights of ``net``'s Conv2d/Linear layers.

    ``x`` holds the (already normalized, possibly augmented) images of all classes, class by
    class: the first ``counts[0]`` are class 0, and so on. A forward and a backward pass over a
    group of images serve every class in it (valid because every layer treats images
    independently: no BatchNorm); ``chunk`` bounds the images per pass (None: all at once).
    Returns one tensor per layer, shaped ``(num_classes, *weight.shape)``; with
    ``create_graph`` they stay differentiable with respect to ``x``.
    """
    counts = [int(n) for n in counts]
    if min(counts) < 1 or sum(counts) != x.shape[0]:
        raise ValueError(f"counts {counts} do not partition a batch of {x.shape[0]} images")
    layers = weight_layers(net)
    n_cls = len(counts)
    inv_count = 1.0 / torch.as_tensor(counts, dtype=x.dtype, device=x.device)
    sums: list[list[torch.Tensor | None]] = [[None] * n_cls for _ in layers]
    lo = 0
    for pieces in _plan_passes(counts, chunk):
        classes = torch.tensor([c for c, _ in pieces], device=x.device)
        sizes = [n for _, n in pieces]
        labels = torch.repeat_interleave(classes, torch.as_tensor(sizes, device=x.device))
        hi = lo + sum(sizes)
        with _record_layers(layers) as (inputs, outputs):
            logits = net(x[lo:hi])
        loss = (F.cross_entropy(logits, labels, reduction="none") * inv_count[labels]).sum()
        deltas = torch.autograd.grad(loss, outputs, create_graph=create_graph)
        for k, (layer, a, d) in enumerate(zip(layers, inputs, deltas, strict=True)):
            a_parts = a.split(sizes) if len(sizes) > 1 else (a,)
            d_parts = d.split(sizes) if len(sizes) > 1 else (d,)
            for (c, _), a_c, d_c in zip(pieces, a_parts, d_parts, strict=True):
                g = _weight_grad(layer, a_c, d_c)
                sums[k][c] = g if sums[k][c] is None else sums[k][c] + g
        lo = hi
    return [torch.stack(per_class) for per_class in sums]


def matching_net(num_classes: int, channels: int, image_size: tuple[int, int], seed: int,
                 arch: str = "convnet") -> ConvNet:
    """A freshly initialised ConvNet (operating on normalized inputs) for matching.

    The global CPU RNG is seeded with ``seed`` for the initialisation only and restored after.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(arch, num_classes=num_classes, channels=channels,
                          image_size=image_size).net
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError("gradient matching batches the classes and needs a network without "
                             "BatchNorm (the reference ConvNet uses instance norm)")
        if isinstance(m, nn.ReLU):
            m.inplace = False  # the recorded layer outputs must not be overwritten
    return net


# -- the distillation loop ------------------------------------------------------------------
def _draw_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def init_synthetic(train_z: torch.Tensor, class_index: list[torch.Tensor], ipc: int, init: str,
                   gen: torch.Generator) -> torch.Tensor:
    """Initial normalized synthetic images, class-contiguous: ``ipc`` random real images per
    class (``init='real'``) or standard normal noise (``'noise'``, the DC readme's default)."""
    if init == "real":
        picks = [idx[torch.randperm(len(idx), generator=gen)[:ipc]] for idx in class_index]
        return train_z[torch.cat(picks).to(train_z.device)].clone()
    if init == "noise":
        shape = (len(class_index) * ipc, *train_z.shape[1:])
        return torch.randn(shape, generator=gen).to(train_z.device)
    raise ValueError(f"init must be 'real' or 'noise', got '{init}'")


def _real_batches(train_z: torch.Tensor, class_index: list[torch.Tensor], batch_real: int,
                  gen: torch.Generator) -> list[torch.Tensor]:
    """``batch_real`` random images of each class without replacement (all when fewer)."""
    picks = [idx[torch.randperm(len(idx), generator=gen)[:batch_real]] for idx in class_index]
    return [train_z[pick.to(train_z.device)] for pick in picks]


def gradient_matching_loss(net: nn.Module, real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor],
                           aug=None, seeds: Sequence[int] | None = None,
                           chunk: int | None = None) -> torch.Tensor:
    """Sum over classes of :func:`match_distance` between real and synthetic CE gradients.

    ``real[c]`` and ``syn[c]`` are class ``c``'s normalized images; with ``aug`` (a
    :class:`~rome_bench.data.augment.DSA`) both batches of class ``c`` are augmented with
    ``seeds[c]`` (siamese). Differentiable with respect to the synthetic images.
    """
    if aug is not None:
        real = [aug.augment_normalized(r, seed=s) for r, s in zip(real, seeds, strict=True)]
        syn = [aug.augment_normalized(x, seed=s) for x, s in zip(syn, seeds, strict=True)]
    g_real = class_gradients(net, torch.cat(list(real)), [len(r) for r in real], chunk=chunk)
    g_syn = class_gradients(net, torch.cat(list(syn)), [len(s) for s in syn], create_graph=True,
                            chunk=chunk)
    return match_distance(g_syn, [g.detach() for g in g_real], batch_dims=1)


def train_net_on(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float,
                 batch_size: int, gen: torch.Generator, aug=None, chunk: int | None = None) -> None:
    """The inner loop: ``epochs`` of plain SGD (no momentum, no weight decay) on a detached copy
    of the synthetic set, shuffled each epoch; per-image DSA with ``aug``. Each batch's gradient
    is accumulated over chunks of at most ``chunk`` images (the same step, computed in pieces)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    images, n = images.detach(), images.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(images.device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            x, y = images[idx], labels[idx]
            if aug is not None:
                x = aug.augment_normalized(x, generator=gen)
            opt.zero_grad(set_to_none=True)
            step = chunk or len(idx)
            for lo in range(0, len(idx), step):
                loss = F.cross_entropy(net(x[lo:lo + step]), y[lo:lo + step], reduction="sum")
                (loss / len(idx)).backward()
            opt.step()


def distill_gradient_matching(train: ImageSet, ipc: int, cfg: MethodConfig, use_dsa: bool) -> DistilledSet:
    """DC (``use_dsa=False``) or DSA (``use_dsa=True``) distillation of ``train``.

    Reads from ``cfg.params``: ``iterations``, ``lr_img``, ``momentum_img`` (0.5), ``lr_net``,
    ``batch_real``, ``batch_train`` (256), ``init`` ('real' or 'noise'), and optionally
    ``outer_loop``/``inner_loop`` (default :func:`get_loops`), ``net`` (the matching
    architecture, default the reference ``convnet``) and ``chunk`` (images per forward pass, a
    speed setting that leaves the mathematics unchanged; default :func:`default_chunk`).
    Checkpoints about every 10% of the iterations and resumes from ``cfg.resume()``. Returns
    class-contiguous images in pixel units (not clamped to [0,1]).

    >>> from rome_bench.data.datasets import DATASETS, load_dataset
    >>> train = load_dataset("cifar10-mini", "train")
    >>> cfg = MethodConfig(seed=0, preset="quick", dataset=DATASETS.get("cifar10-mini"),
    ...                    params={"iterations": 1, "lr_img": 0.1, "lr_net": 0.01,
    ...                            "batch_real": 4, "init": "real"}, show_progress=False)
    >>> distill_gradient_matching(train, 1, cfg, use_dsa=True).images.shape
    torch.Size([10, 3, 32, 32])
    """
    p = cfg.params
    iterations = int(p["iterations"])
    lr_img, lr_net = float(p["lr_img"]), float(p["lr_net"])
    momentum_img = float(p.get("momentum_img", 0.5))
    batch_real, batch_train = int(p["batch_real"]), int(p.get("batch_train", 256))
    if "outer_loop" in p or "inner_loop" in p:
        outer_loop, inner_loop = int(p["outer_loop"]), int(p["inner_loop"])
    else:
        outer_loop, inner_loop = get_loops(ipc)
    if min(iterations, outer_loop, batch_real, batch_train, ipc) < 1 or inner_loop < 0:
        raise ValueError(f"invalid gradient-matching budget {dict(p)} for IPC {ipc}")

    arch = str(p.get("net", "convnet"))
    device = torch.device(cfg.device)
    chunk = int(p["chunk"]) if p.get("chunk") else default_chunk(device)
    n_cls = train.num_classes
    mean = torch.tensor(cfg.dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
    train_z = ((train.images.float() - mean) / std).to(device)
    class_index = [train.indices_of(c) for c in range(n_cls)]
    if any(len(idx) < ipc for idx in class_index):
        raise ValueError(f"every class needs at least {ipc} training images")
    gen = cfg.generator(0)
    aug = cfg.dsa() if use_dsa else None

    syn = init_synthetic(train_z, class_index, ipc, str(p.get("init", "real")), gen)
    syn.requires_grad_(True)
    labels = torch.arange(n_cls, device=device).repeat_interleave(ipc)
    opt_img = torch.optim.SGD([syn], lr=lr_img, momentum=momentum_img)

    start, loss = 0, torch.zeros(())
    resumed = cfg.resume()
    if resumed is not None:
        state, start = resumed
        with torch.no_grad():
            syn.copy_(state["syn"].to(device))
        if "momentum" in state:
            opt_img.state[syn]["momentum_buffer"] = state["momentum"].to(device)
        gen.set_state(state["generator"])

    def snapshot() -> dict[str, Any]:
        state: dict[str, Any] = {"syn": syn.detach().cpu().clone(), "generator": gen.get_state()}
        buf = opt_img.state[syn].get("momentum_buffer")
        if buf is not None:
            state["momentum"] = buf.detach().cpu().clone()
        return state

    loop = cfg.loop(iterations, "DSA" if use_dsa else "DC", start=start, snapshot=snapshot)
    for _ in loop:
        net = matching_net(n_cls, train.channels, train.image_size, _draw_seed(gen),
                           arch).to(device)
        net.train()
        for ol in range(outer_loop):
            real = _real_batches(train_z, class_index, batch_real, gen)
            seeds = [_draw_seed(gen) for _ in range(n_cls)] if use_dsa else None
            loss = gradient_matching_loss(net, real, syn.split(ipc), aug, seeds, chunk)
            opt_img.zero_grad(set_to_none=True)
            loss.backward(inputs=[syn])
            opt_img.step()
            if ol == outer_loop - 1:
                break
            train_net_on(net, syn, labels, inner_loop, lr_net, batch_train, gen, aug, chunk)
        loop.postfix(loss=f"{float(loss.detach()):.2f}")
    images = syn.detach().cpu() * std + mean
    return DistilledSet(images, labels.cpu(), {"final_loss": float(loss.detach()),
                                               "outer_loop": outer_loop, "inner_loop": inner_loop})
