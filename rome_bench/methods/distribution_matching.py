"""Distribution matching: the mean-embedding losses and loops shared by DM, IDM, BACON and ROME.

Losses (all on per-sample embeddings, (n, D); the real side is always detached):

* :func:`mean_embedding_loss`: DM's ``sum_d (mean(real)_d - mean(syn)_d)^2`` (Zhao & Bilen,
  WACV 2023), also IDM's matching term;
* :func:`total_variation`: ``0.5 * ||mean(real) - mean(syn)||_1`` (BACON), squared for ROME;
* :func:`gaussian_nll`: BACON's likelihood term with ``sigma = exp(std(real))``.

Helpers for the loops:

* :class:`RealSampler`: per-class random real batches (the reference ``get_images``);
* :func:`embed_per_class`: augments every class's batch with its own siamese DSA seed and
  embeds all classes together in passes of ``max_batch`` images, across class boundaries
  (4096 on GPUs, 64 on CPUs, where smaller passes are faster per image). Embeddings are per
  sample (the ConvNet's instance norm has no batch statistics), so this gives exactly the
  per-class reference result;
* :func:`dm_loss`: the whole DM objective for one network;
* :func:`update_images`: the image update of one :func:`queue_matching` iteration given its
  sampled network (what ``tests/test_reference_parity.py`` compares with the reference code);
* :func:`queue_matching`: the IDM-style distillation loop (queue of partially trained nets,
  factorized images, one image step per class) with a pluggable per-class loss, a pluggable
  transform of the real batch and a pluggable network-training batch. IDM and BACON are thin
  wrappers around it, and ROME plugs targeted PGD into the two hooks.

Space convention: the distillation variable is the *normalized* image ``z = (x - mean)/std``,
as in the reference code, so learning rates mean what they mean there; DSA runs in normalized
space (:meth:`rome_bench.data.augment.DSA.augment_normalized`) and networks are called through
``model.net`` (the ConvNet without its Normalize layer). Results are de-normalized to pixel
units when the :class:`~rome_bench.distilled.DistilledSet` is built, and not clamped: values
outside [0,1] stay, as in the reference's sets (docs/design.md, "Conventions").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench.data.augment import DSA
from rome_bench.data.datasets import ImageSet
from rome_bench.data.distilled import DistilledSet
from rome_bench.methods.factorized import expand, expanded_distilled_set, init_from_real
from rome_bench.methods.network_queue import BatchFn, NetworkQueue, QueuedNet, draw_seed
from rome_bench.models.convnet import Classifier, build_model

# -- losses --------------------------------------------------------------------------------


def mean_embedding_loss(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """DM's loss: squared L2 distance between the batch-mean embeddings (not normalised by D).

    >>> f = torch.randn(6, 4)
    >>> float(mean_embedding_loss(f, f))
    0.0
    """
    return (real.detach().mean(0) - syn.mean(0)).pow(2).sum()


def total_variation(real: torch.Tensor, syn: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """``0.5 * sum_d |mean(real)_d - mean(syn)_d|`` (BACON); its square when ``squared`` (ROME)."""
    tv = 0.5 * (real.detach().mean(0) - syn.mean(0)).abs().sum()
    return tv * tv if squared else tv


def gaussian_nll(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """BACON's negative log-likelihood of the synthetic mean under a per-dimension Gaussian.

    ``sigma_d = exp(std(real)_d)`` (unbiased std over the real batch, exponentiated as in the
    reference) and ``NLL = sum_d log(sqrt(2 pi) sigma_d) + 0.5 ((mean(syn)_d - mean(real)_d) /
    sigma_d)^2``; only the second part depends on the synthetic images.
    """
    real = real.detach()
    mu_r, mu_s = real.mean(0), syn.mean(0)
    std = real.std(0) if real.shape[0] > 1 else torch.zeros_like(mu_r)
    sigma = std.exp()
    return (torch.log(math.sqrt(2 * math.pi) * sigma) + 0.5 * ((mu_s - mu_r) / sigma).pow(2)).sum()


# -- data helpers --------------------------------------------------------------------------


class RealSampler:
    """Random real batches per class: ``n`` distinct images (the whole class when ``n`` >= its size).

    >>> s = RealSampler(torch.tensor([0, 1, 0, 1, 0]), 2, torch.Generator().manual_seed(0))
    >>> sorted(s.indices(0, 10).tolist())
    [0, 2, 4]
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> None:
        self.by_class = [torch.nonzero(labels.cpu() == c).flatten() for c in range(num_classes)]
        self.generator = generator

    def indices(self, cls: int, n: int) -> torch.Tensor:
        idx = self.by_class[cls]
        return idx[torch.randperm(len(idx), generator=self.generator)[:n]]


class Normalizer:
    """``(x - mean)/std`` and back, on a given device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: str | torch.device) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.device) - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def default_max_batch(device: str | torch.device) -> int:
    """Images per forward pass: 4096 on GPUs, 16 on CPUs.

    On CPUs the ConvNet runs faster per image in small passes whose activations stay in cache.
    Measured on this project's idle 2-core machine with ``benchmarks/distill_step.py --methods
    dm --iterations 10 --repeats 3 --chunk N`` (seconds per DM iteration, quick budget, IPC 1 /
    IPC 10): 1 thread 0.56 / 1.12 (N=16), 0.65 / 1.13 (32), 0.69 / 1.26 (64); 2 threads 0.34 /
    0.69 (16) against 0.46 / 0.82 (64); at the cpu budget (IPC 10, batch_real 64) 2.75 s (16)
    against 3.13 s (64). An earlier measurement on a loaded machine had favoured 64.
    """
    return 4096 if torch.device(device).type == "cuda" else 16


def embed_per_class(embed: Callable[[torch.Tensor], torch.Tensor],
                    get_batch: Callable[[int], torch.Tensor], num_classes: int,
                    seeds: Sequence[int], aug: DSA | None, *, max_batch: int = 0,
                    grad: bool = False,
                    transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                    ) -> list[torch.Tensor]:
    """Per-class embeddings of siamese-augmented batches, several classes per forward pass.

    Args:
        embed: maps a normalized batch (n,C,H,W) to per-sample features (n,D).
        get_batch: ``c -> normalized batch of class c`` (called once per class, in order).
        seeds: one DSA seed per class; use the same seeds for the real and synthetic side.
        aug: the DSA augmenter (None: no augmentation).
        max_batch: the classes' batches are concatenated and embedded in passes of at most
            this many images (per-sample embeddings, so the split does not change the
            result); 0: the device's :func:`default_max_batch`.
        grad: build the autograd graph through ``embed`` (synthetic side) or not (real side).
        transform: optional ``(z, labels) -> z`` applied to each pass's augmented images
            before embedding, outside the no-grad context (ROME crafts PGD examples here); its
            output is detached when ``grad`` is False.

    Returns:
        ``num_classes`` tensors (n_c, D).
    """
    feats: list[torch.Tensor] = []
    sizes: list[int] = []
    pending: list[torch.Tensor] = []
    pending_labels: list[torch.Tensor] = []

    def run(z: torch.Tensor, labels: torch.Tensor) -> None:
        if transform is not None:
            z = transform(z, labels)
            if not grad:
                z = z.detach()
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            feats.append(embed(z))

    def flush(limit: int, final: bool) -> None:
        z = torch.cat(pending) if len(pending) > 1 else pending[0]
        labels = torch.cat(pending_labels) if len(pending_labels) > 1 else pending_labels[0]
        n = z.shape[0] if final else z.shape[0] // limit * limit
        for i in range(0, n, limit):
            run(z[i:i + limit], labels[i:i + limit])
        pending.clear()
        pending_labels.clear()
        if n < z.shape[0]:
            pending.append(z[n:])
            pending_labels.append(labels[n:])

    limit = max_batch
    for c in range(num_classes):
        batch = get_batch(c)
        if limit <= 0:
            limit = default_max_batch(batch.device)
        if aug is not None:
            batch = aug.augment_normalized(batch, seed=int(seeds[c]))
        sizes.append(int(batch.shape[0]))
        pending.append(batch)
        pending_labels.append(torch.full((batch.shape[0],), c, dtype=torch.long,
                                         device=batch.device))
        if sum(p.shape[0] for p in pending) >= limit:
            flush(limit, final=False)
    if pending:
        flush(limit, final=True)
    return list(torch.cat(feats).split(sizes))


def embed_in_passes(embed: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                    max_batch: int = 0) -> torch.Tensor:
    """``embed(z)`` computed in passes of at most ``max_batch`` images (0: device default)."""
    limit = max_batch or default_max_batch(z.device)
    if z.shape[0] <= limit:
        return embed(z)
    return torch.cat([embed(z[i:i + limit]) for i in range(0, z.shape[0], limit)])


def dm_loss(embed: Callable[[torch.Tensor], torch.Tensor],
            real: Callable[[int], torch.Tensor], syn: Callable[[int], torch.Tensor],
            num_classes: int, seeds: Sequence[int], aug: DSA | None,
            max_batch: int = 0) -> torch.Tensor:
    """DM's objective for one network: ``sum_c mean_embedding_loss(real_c, syn_c)``.

    ``real``/``syn`` give class ``c``'s normalized batch; each class's two batches share the
    DSA seed ``seeds[c]``. Differentiable with respect to the synthetic images.
    """
    f_real = embed_per_class(embed, real, num_classes, seeds, aug, max_batch=max_batch, grad=False)
    f_syn = embed_per_class(embed, syn, num_classes, seeds, aug, max_batch=max_batch, grad=True)
    return sum((mean_embedding_loss(r, s) for r, s in zip(f_real, f_syn, strict=True)),
               start=torch.zeros((), device=f_syn[0].device))


def indexed_batches(images: torch.Tensor, index: Sequence[torch.Tensor],
                    norm: Normalizer) -> Callable[[int], torch.Tensor]:
    """``c -> norm(images[index[c]])``: the normalized real batch of class ``c``."""
    return lambda c: norm(images[index[c].to(images.device)])


def class_slices(z: torch.Tensor, ipc: int) -> Callable[[int], torch.Tensor]:
    """``c -> z[c*ipc:(c+1)*ipc]`` for a class-contiguous synthetic tensor."""
    return lambda c: z[c * ipc:(c + 1) * ipc]


def image_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, z: torch.Tensor) -> None:
    """One optimizer step on the image tensor ``z`` only (no gradients for network weights)."""
    (g,) = torch.autograd.grad(loss, z)
    optimizer.zero_grad(set_to_none=True)
    z.grad = g
    optimizer.step()


# -- the IDM-style loop --------------------------------------------------------------------


@dataclass
class ClassTerms:
    """What a per-class loss of :func:`queue_matching` receives.

    Attributes:
        cls: the class.
        real: (n, D) detached embeddings of the class's augmented (and transformed) real batch.
        syn: (m, D) embeddings of the class's augmented expanded synthetic images (with grad).
        logits: (m, K) the sampled network's logits on the same synthetic images.
        labels: (m,) the class, repeated.
        accuracy: the sampled network's running training accuracy in percent (0 when empty).
        net: the sampled queue entry.
    """

    cls: int
    real: torch.Tensor
    syn: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    accuracy: float
    net: QueuedNet


ClassLoss = Callable[[ClassTerms, "QueueMatchingConfig"], torch.Tensor]
RealTransform = Callable[[Classifier, torch.Tensor, torch.Tensor], torch.Tensor]


# The per-IPC settings of IDM's reference commands on CIFAR-10 (IDM's command.txt), which
# ROME's command.txt repeats: ce_weight 0.5/0.5/0.1; IPC 1 matches against the whole class
# (batch_real 5000) with a new net every 5 iterations; the meter reset follows eval_interval
# (100, or 500 at IPC 50). As a budgets table: ``{"all": ..., **PAPER_PER_IPC}``. The
# CIFAR-100 commands differ per method (see each method's ``"datasets"`` budget entry).
PAPER_PER_IPC: dict[int, dict[str, Any]] = {
    1: {"ce_weight": 0.5, "batch_real": 5000, "net_generate_interval": 5},
    10: {"ce_weight": 0.5},
    50: {"ce_weight": 0.1, "meter_reset_interval": 500}}


@dataclass(frozen=True)
class QueueMatchingConfig:
    """Hyperparameters of :func:`queue_matching` (defaults: IDM/BACON/ROME CIFAR-10 IPC 10).

    Names follow the reference's command-line flags. ``meter_reset_interval`` reproduces the
    reference's accuracy-meter reset at every evaluation point (``eval_interval``: 100, or
    500 at IPC 50); 0 never resets.
    """

    iterations: int = 20000
    lr_img: float = 0.2
    momentum_img: float = 0.5
    batch_real: int = 256
    ce_weight: float = 0.5
    net_num: int = 100
    initial_nets: int = 3
    net_generate_interval: int = 30
    net_push_num: int = 1
    fetch_net_num: int = 2
    model_train_steps: int = 10
    trained_bs: int = 256
    lr_net: float = 0.01
    meter_reset_interval: int = 100
    factor: int = 2
    arch: str = "convnet"
    max_batch: int = 0  # images per forward pass; 0: auto (see default_max_batch)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> QueueMatchingConfig:
        """The known keys of ``params`` (a method's resolved budget); other keys are ignored."""
        names = {f.name: f.type for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def queue_matching(train: ImageSet, ipc: int, cfg: Any, class_loss: ClassLoss, *,
                   desc: str = "distill", settings: QueueMatchingConfig | None = None,
                   real_transform: RealTransform | None = None,
                   net_batch_fn: BatchFn | None = None) -> DistilledSet:
    """IDM's distillation loop with pluggable loss; returns the expanded set (pixel units).

    Per iteration ``it`` (the reference order): reset the accuracy meters every
    ``meter_reset_interval`` iterations (not at 0); push a new network when
    ``it % net_generate_interval == 0``; sample one queue network; draw ``batch_real`` real
    images and one DSA seed per class and embed all real batches (``real_transform(model, z,
    labels)`` may replace the augmented real images first); then for each class in order:
    expand its stored images, augment them with the class's seed, embed, compute
    ``class_loss(terms, settings)`` and take one SGD step on the stored images (so the
    momentum of earlier classes keeps moving their images, as in the reference); finally
    train ``fetch_net_num`` queue networks on real batches (``net_batch_fn`` plugs in there).

    Args:
        train: real training set ([0,1]).
        ipc: stored images per class (the returned set has ``factor**2`` times as many).
        cfg: the method's :class:`~rome_bench.methods.MethodConfig` (seed, device, progress,
            checkpoint/resume, dataset constants); ``cfg.params`` gives the settings unless
            ``settings`` is passed.
    """
    s = settings or QueueMatchingConfig.from_params(cfg.params)
    device = cfg.device
    spec = cfg.dataset
    num_classes = train.num_classes
    norm = Normalizer(spec.mean, spec.std, device)
    aug = cfg.dsa()
    g_init, g = cfg.generator(0), cfg.generator(1)
    x_train = train.images.to(device)
    y_train = train.labels.to(device)
    sampler = RealSampler(train.labels, num_classes, g)

    def build() -> Classifier:
        return build_model(s.arch, num_classes=num_classes, channels=train.channels,
                           image_size=train.image_size, mean=spec.mean, std=spec.std)

    queue = NetworkQueue(build, capacity=s.net_num, initial=s.initial_nets,
                         push_every=s.net_generate_interval, push_num=s.net_push_num,
                         fetch_num=s.fetch_net_num, train_steps=s.model_train_steps,
                         batch_size=s.trained_bs, lr=s.lr_net, batch_fn=net_batch_fn,
                         seed=cfg.seed * 1000 + 2, device=device, max_batch=s.max_batch)
    resumed = cfg.resume()
    if resumed is not None:
        state, start = resumed
        z0 = state["syn"]
        g.set_state(state["generator"])
        queue.load_state_dict(state["queue"])
    else:
        start = 0
        x0, _ = init_from_real(train.images, train.labels, ipc, num_classes, g_init, s.factor)
        z0 = norm(x0)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    z = z0.detach().to(device).clone().requires_grad_(True)
    opt = torch.optim.SGD([z], lr=s.lr_img, momentum=s.momentum_img)
    if resumed is not None and state["momentum"].numel():
        opt.state[z]["momentum_buffer"] = state["momentum"].to(device).clone()

    def snapshot() -> dict[str, Any]:
        buf = opt.state[z].get("momentum_buffer")
        return {"syn": z.detach().cpu().clone(),
                "momentum": buf.detach().cpu().clone() if buf is not None else torch.empty(0),
                "generator": g.get_state(), "queue": queue.state_dict()}

    t0 = time.perf_counter()
    for it in cfg.loop(s.iterations, desc, start=start, snapshot=snapshot):
        if s.meter_reset_interval and it > 0 and it % s.meter_reset_interval == 0:
            queue.reset_meters()
        queue.step(it)
        (net,) = queue.sample(1)
        seeds = [draw_seed(g) for _ in range(num_classes)]
        idx = [sampler.indices(c, s.batch_real) for c in range(num_classes)]
        update_images(net, z, opt, indexed_batches(x_train, idx, norm), seeds, aug,
                      class_loss, s, real_transform)
        queue.train(x_train, y_train)
    return expanded_distilled_set(z, labels, spec.mean, spec.std, s.factor,
                                  meta={"iterations": s.iterations,
                                        "seconds": round(time.perf_counter() - t0, 2)})


def update_images(net: QueuedNet, z: torch.Tensor, opt: torch.optim.Optimizer,
                  real_batch: Callable[[int], torch.Tensor], seeds: Sequence[int],
                  aug: DSA | None, class_loss: ClassLoss, s: QueueMatchingConfig,
                  real_transform: RealTransform | None = None) -> torch.Tensor:
    """The image update of one :func:`queue_matching` iteration, given its sampled network.

    Embeds every class's augmented real batch (``real_batch(c)``: normalized, augmented with
    ``seeds[c]``, then ``real_transform`` if given) with ``net``'s model, then for each class
    in order expands its stored images (``len(seeds)`` classes, ``z`` class-contiguous),
    augments them with the same seed, computes ``class_loss`` and takes one ``opt`` step on
    ``z``. ``aug`` None skips the augmentation.

    Returns:
        The detached per-class losses, shape (num_classes,).
    """
    num_classes = len(seeds)
    ipc = z.shape[0] // num_classes
    model = net.model.eval()
    transform = None
    if real_transform is not None:
        def transform(zb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return real_transform(model, zb, yb)
    real = embed_per_class(model.net.embed, real_batch, num_classes, seeds, aug,
                           max_batch=s.max_batch, grad=False, transform=transform)
    losses = []
    for c in range(num_classes):
        syn_c, _ = expand(z[c * ipc:(c + 1) * ipc], None, s.factor)
        if aug is not None:
            syn_c = aug.augment_normalized(syn_c, seed=int(seeds[c]))
        feats = embed_in_passes(model.net.embed, syn_c, s.max_batch)
        logits = model.net.classifier(feats)
        lab = torch.full((feats.shape[0],), c, dtype=torch.long, device=feats.device)
        loss = class_loss(ClassTerms(c, real[c], feats, logits, lab, net.accuracy, net), s)
        image_step(opt, loss, z)
        losses.append(loss.detach())
    return torch.stack(losses)


def weighted_ce(terms: ClassTerms, ce_weight: float) -> torch.Tensor:
    """IDM's class-aware term: ``ce_weight * accuracy% * CE(logits, labels)`` (0 when accuracy is 0)."""
    if terms.accuracy == 0:
        return torch.zeros((), device=terms.logits.device)
    return ce_weight * terms.accuracy * F.cross_entropy(terms.logits, terms.labels)


def frozen(model: nn.Module) -> nn.Module:
    """``model`` with ``requires_grad=False`` on every parameter (DM's random embedders)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model
