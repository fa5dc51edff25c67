"""``mtt``: Matching Training Trajectories (Cazenavette et al., CVPR 2022).

Synthetic images (initialised with random real images of each class) and a learnable student
learning rate (initialised with ``lr_teacher``) are optimised so that a student network,
started from an expert's parameters at a random epoch ``t < max_start_epoch`` and trained for
``syn_steps`` unrolled SGD steps on DSA-augmented minibatches of the synthetic set, lands close
to where the expert was ``expert_epochs`` later:

    loss = ||w_student - w*_{t+M}||^2 / ||w*_t - w*_{t+M}||^2

Gradients flow through every unrolled step (the whole graph is kept) into the images and the
learning rate; both are updated with SGD, momentum 0.5 (``lr_img``, ``lr_lr``). Experts come from
the shared, cached buffer of :mod:`rome_bench.methods.experts` (generated on demand).

Spaces and the [0,1] convention. The reference learns its images in the space the network
sees: normalized pixels, or ZCA-whitened pixels when ``zca`` is on (kornia eps 0.1, fitted on
the real training set), and its ``lr_img`` acts on that space. We do the same: the learnable
tensor is ``Normalize(x)`` (then ZCA-whitened if ``zca``), DSA acts on it
(:meth:`DSA.augment_normalized`, as the reference augments normalized/whitened tensors), and
``lr_img`` is exactly the reference's. At the end the images are mapped back to pixels (inverse
ZCA, then ``x = z*std + mean``) and, like the reference's sets, not clamped: values outside
[0,1] stay (the pipeline records their fraction in ``meta['out_of_range']``).

Output: hard labels, ``meta['lr']`` = the learned student lr (the pipeline retrains with it), and
with ZCA ``meta['zca'] = {'matrix', 'mean'}``: the arguments of
``rome_bench.models.LinearTransform(matrix, mean)``, the whitening layer that must follow
``Normalize`` in the retrained model (``build_model(..., whitening=LinearTransform(**meta['zca']))``)
so that it sees the images the way they were distilled. ``meta['buffer']`` names the expert buffer.

Not reproduced, on purpose: the reference evaluates every ``eval_it`` iterations and keeps the
images with the best *test* accuracy (selection on the test set); we return the final iterate,
and the run plan says so.

Paper hyperparameters (CIFAR-10, ConvNet, 50-epoch experts, 5000 iterations; the issue's table,
which matches MTT's README):

=====  =========  =============  ===============  ======  =====  ==========  ===
IPC    syn_steps  expert_epochs  max_start_epoch  lr_img  lr_lr  lr_teacher  zca
=====  =========  =============  ===============  ======  =====  ==========  ===
1      50         2              2                100     1e-7   0.01        yes
10     30         2              20               100     1e-5   0.001       yes
50     30         2              40               1000    1e-5   0.001       no
=====  =========  =============  ===============  ======  =====  ==========  ===

CIFAR-100 has its own row per IPC at the paper preset (the ``"datasets"`` entry of ``BUDGETS``).

Iterations. The reference loops ``range(Iteration + 1)``, evaluating (and saving) at the top of
a pass and updating after it, so every saved set has at most ``Iteration`` updates: the paper
preset's 5000 iterations are the reference's last saved iterate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rome_bench import DistilledSet, register_method
from rome_bench.core.cache import Cache
from rome_bench.data.augment import DSA
from rome_bench.data.datasets import DatasetSpec, ImageSet, class_balanced_indices
from rome_bench.methods.contract import MethodConfig
from rome_bench.methods.experts import (
    ExpertSettings,
    buffer_key,
    build_expert_net,
    compute_tag,
    data_fingerprint,
    functional_forward,
    get_experts,
    get_whitening,
    to_network_space,
)
from rome_bench.methods.zca import unwhiten
from rome_bench.models.convnet import LinearTransform

BUDGETS = {
    "paper": {
        "all": {"iterations": 5000, "lr_teacher": 0.01, "batch_syn": None,
                "buffer_num_experts": 100, "buffer_epochs": 50, "buffer_arch": "convnet",
                "buffer_images_per_class": None},
        1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100.0,
            "lr_lr": 1e-7, "lr_teacher": 0.01, "zca": True},
        10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 100.0,
             "lr_lr": 1e-5, "lr_teacher": 0.001, "zca": True},
        50: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40, "lr_img": 1000.0,
             "lr_lr": 1e-5, "lr_teacher": 0.001, "zca": False},
        # MTT README values for CIFAR-100
        "datasets": {"cifar100": {
            1: {"syn_steps": 20, "expert_epochs": 3, "max_start_epoch": 20, "lr_img": 1000.0,
                "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": True},
            10: {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 1000.0,
                 "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": False},
            50: {"syn_steps": 80, "expert_epochs": 2, "max_start_epoch": 40, "lr_img": 1000.0,
                 "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": True, "batch_syn": 125}}},
    },
    # cpu scales (not yet measured on real CIFAR-10; see the report): the shared cpu buffer (5
    # experts x 12 epochs on 500 images per class at batch 64, see
    # rome_bench.experts.EXPERT_PRESETS), 200 iterations instead of 5000, syn_steps 12 (IPC 1) /
    # 10 (IPC 10) instead of 50 / 30, minibatches of 50 synthetic images at IPC 10 instead of
    # all 100, max_start_epoch inside the 12-epoch buffer, lr_img 10 at IPC 1 (ten images get
    # much larger gradients; see the quick preset) and lr_teacher 0.01 at IPC 10 (the learned
    # lr has 25x fewer iterations to grow from 0.001).
    "cpu": {
        "all": {"iterations": 200, "expert_epochs": 2, "lr_teacher": 0.01, "zca": True,
                "buffer_num_experts": 5, "buffer_epochs": 12, "buffer_arch": "convnet",
                "buffer_images_per_class": 500, "buffer_batch_size": 64},
        1: {"syn_steps": 12, "max_start_epoch": 4, "lr_img": 10.0, "lr_lr": 1e-7,
            "batch_syn": None},
        10: {"syn_steps": 10, "max_start_epoch": 10, "lr_img": 100.0, "lr_lr": 1e-5,
             "batch_syn": 50},
    },
    # quick scales: the shared quick buffer (2 experts x 10 epochs, ConvNet width 32, batch 32,
    # embedded 2,000-image subset; see rome_bench.experts.EXPERT_PRESETS), 10 / 6 iterations
    # instead of 5000, syn_steps 5 instead of 50 / 30, max_start_epoch inside the buffer,
    # lr_lr 1e-7 at IPC 1 and 1e-5 at IPC 10, lr_teacher 0.01 at IPC 10 (the learned lr has no
    # time to grow from 0.001) and lr_img 1000 instead of 100 at IPC 10: the normalized loss's
    # gradients are ~10x smaller on this buffer and six steps must move the images (measured:
    # lr_img 100 left MTT at random's accuracy, 1000 beats it by ~5 points).
    "quick": {
        "all": {"expert_epochs": 2, "lr_teacher": 0.01, "zca": True, "batch_syn": None,
                "buffer_num_experts": 2, "buffer_epochs": 10, "buffer_arch": "convnet-w32",
                "buffer_images_per_class": None, "buffer_batch_size": 32},
        1: {"iterations": 10, "syn_steps": 5, "max_start_epoch": 2, "lr_img": 100.0,
            "lr_lr": 1e-7},
        10: {"iterations": 6, "syn_steps": 5, "max_start_epoch": 4, "lr_img": 1000.0,
             "lr_lr": 1e-5},
    },
}

@dataclass
class Trajectories:
    """Everything the unrolled matching needs: experts, the student template and the spaces."""

    experts: list[torch.Tensor]
    settings: ExpertSettings
    net: nn.Module
    whitening: LinearTransform | None
    augment: DSA
    mean: torch.Tensor
    std: torch.Tensor
    key: str
    spec: DatasetSpec | None = None
    device: str = "cpu"

    def to_network(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] images -> network space (normalized, whitened with ZCA) on the method's device."""
        w = self.whitening.to(self.device) if self.whitening is not None else None
        return to_network_space(images.to(self.device), self.spec, w)

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Network-space images -> pixel units (not clamped to [0,1])."""
        z = images.detach().cpu()
        if self.whitening is not None:
            z = unwhiten(self.whitening.cpu(), z)
        return z * self.std + self.mean

    def meta(self, lr: float) -> dict[str, Any]:
        out: dict[str, Any] = {"lr": lr, "buffer": self.key,
                               "distill_arch": self.settings.arch}
        if self.whitening is not None:
            out["zca"] = {"matrix": self.whitening.matrix.detach().cpu().clone(),
                          "mean": self.whitening.offset.detach().cpu().clone()}
        return out


def load_trajectories(train: ImageSet, cfg: MethodConfig, params: dict[str, Any],
                      flat: bool = False) -> Trajectories:
    """The expert buffer for ``params`` (trained on demand), the ZCA and the student template."""
    spec = cfg.dataset
    settings = ExpertSettings.from_params(spec.name, {**params, "buffer_flat": flat},
                                          seed=cfg.seed, preset=cfg.preset)
    cache = Cache()
    fingerprint = data_fingerprint(train)
    whitening = get_whitening(train, spec, cache, fingerprint=fingerprint) if settings.zca else None
    experts = get_experts(train, settings, device=cfg.device, show_progress=cfg.show_progress,
                          cache=cache, whitening=whitening, spec=spec)
    epochs = experts[0].shape[0] - 1
    last_start = int(params["max_start_epoch"]) - 1 + int(params["expert_epochs"])
    if last_start > epochs:
        raise ValueError(f"max_start_epoch {params['max_start_epoch']} and expert_epochs "
                         f"{params['expert_epochs']} need expert epoch {last_start}, but the buffer "
                         f"has {epochs} epochs")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_expert_net(settings, spec).to(cfg.device).train()
    return Trajectories(experts, settings, net, whitening, cfg.dsa(),
                        torch.tensor(spec.mean).view(1, -1, 1, 1),
                        torch.tensor(spec.std).view(1, -1, 1, 1),
                        buffer_key(settings, fingerprint, compute_tag(cfg.device)), spec,
                        cfg.device)


def unrolled_student(traj: Trajectories, images: torch.Tensor, labels: torch.Tensor,
                     syn_lr: torch.Tensor, start: torch.Tensor, syn_steps: int,
                     batch_syn: int | None, batch_gen: torch.Generator,
                     aug_gen: torch.Generator) -> torch.Tensor:
    """``syn_steps`` differentiable SGD steps of a student from flat parameters ``start``.

    Minibatches walk through random permutations of the synthetic set in chunks of
    ``batch_syn`` (the reference's ``indices_chunks``: the last chunk is used first, a new
    permutation is drawn when they run out); each minibatch gets fresh per-image DSA. ``labels``
    are hard (N,) or soft-label logits (N,K) (DATM). Returns the final parameters, whose graph
    reaches ``images``, ``labels`` (if they require grad) and ``syn_lr``.
    """
    n = images.shape[0]
    batch = n if not batch_syn else min(int(batch_syn), n)
    w = start.detach().clone().requires_grad_(True)
    chunks: list[torch.Tensor] = []
    for _ in range(syn_steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=batch_gen).to(images.device).split(batch))
        idx = chunks.pop()
        x = traj.augment.augment_normalized(images[idx], generator=aug_gen)
        out = functional_forward(traj.net, w, x)
        y = labels[idx]
        ce = F.cross_entropy(out, y) if y.dim() == 1 else \
            -(F.softmax(y, 1) * F.log_softmax(out, 1)).sum(1).mean()
        grad = torch.autograd.grad(ce, w, create_graph=True)[0]
        w = w - syn_lr * grad
    return w


def matching_loss(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||student - target||^2 / ||start - target||^2`` (MTT's normalized parameter distance)."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()


def momentum_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Momentum buffers of a one-tensor SGD optimizer (empty before its first step)."""
    p = opt.param_groups[0]["params"][0]
    buf = opt.state.get(p, {}).get("momentum_buffer")
    return [] if buf is None else [buf.detach().cpu().clone()]


def set_momentum_state(opt: torch.optim.Optimizer, state: list[torch.Tensor]) -> None:
    if state:
        p = opt.param_groups[0]["params"][0]
        opt.state[p]["momentum_buffer"] = state[0].to(p.device).clone()


@dataclass
class LoopState:
    """What an MTT-style distillation checkpoints and restores: the synthetic tensors (restored
    in place), the learned lr, the optimizers' momenta, the random generators and the expert
    sampler. DATM adds its labels and counters through the same object."""

    tensors: dict[str, torch.Tensor]
    syn_lr: torch.Tensor
    optimizers: tuple[torch.optim.Optimizer, ...]
    generators: tuple[torch.Generator, ...]
    sampler: ExpertSampler

    def snapshot(self, **counters: int) -> dict[str, Any]:
        return {**{k: t.detach().cpu().clone() for k, t in self.tensors.items()},
                "syn_lr": float(self.syn_lr.detach()),
                "momentum": [momentum_state(o) for o in self.optimizers],
                "generators": [g.get_state() for g in self.generators],
                "sampler": self.sampler.state(), **counters}

    def restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, t in self.tensors.items():
                t.copy_(state[k].to(t.device))
            self.syn_lr.fill_(float(state["syn_lr"]))
        for opt, mom in zip(self.optimizers, state["momentum"]):
            set_momentum_state(opt, mom)
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        self.sampler.load(state["sampler"])

    def segment_loss(self, traj: Trajectories, labels: torch.Tensor, window: tuple[int, int],
                     params: dict[str, Any]) -> torch.Tensor:
        """One matching step's loss: draw an expert and a start epoch in ``window`` (``[low,
        high)``), unroll the student from that snapshot on the synthetic images for
        ``syn_steps``, and compare it with the expert ``expert_epochs`` later."""
        sample_gen, batch_gen, aug_gen = self.generators
        device = self.syn_lr.device
        expert = traj.experts[self.sampler.next()]
        t = int(torch.randint(window[0], window[1], (1,), generator=sample_gen))
        start = expert[t].to(device)
        target = expert[t + int(params["expert_epochs"])].to(device)
        student = unrolled_student(traj, self.tensors["images"], labels, self.syn_lr, start,
                                   int(params["syn_steps"]), params.get("batch_syn"), batch_gen,
                                   aug_gen)
        return matching_loss(student, start, target)

    def resume(self, cfg: MethodConfig, counter: str) -> tuple[int, int]:
        """Restore the last checkpoint if there is one: (iteration to resume at, ``counter``)."""
        resumed = cfg.resume()
        if resumed is None:
            return 0, 0
        saved, start = resumed
        self.restore(saved)
        return start, int(saved[counter])


class ExpertSampler:
    """Walks the experts in a random order, reshuffling after every full pass (seeded)."""

    def __init__(self, count: int, gen: torch.Generator) -> None:
        self.count, self.gen = count, gen
        self.order = torch.randperm(count, generator=gen)
        self.pos = 0

    def next(self) -> int:
        if self.pos >= self.count:
            self.order, self.pos = torch.randperm(self.count, generator=self.gen), 0
        self.pos += 1
        return int(self.order[self.pos - 1])

    def state(self) -> dict[str, Any]:
        return {"order": self.order.clone(), "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.order, self.pos = state["order"].clone(), int(state["pos"])


FINAL_ITERATE_NOTE = ("returns the final iterate; the reference keeps the iterate with the best "
                      "test accuracy (selection on the test set), which rome-bench does not do")


def real_init(train: ImageSet, ipc: int, seed: int) -> torch.Tensor:
    """Indices of ``ipc`` random real images per class, class-contiguous (the ``random`` draw)."""
    idx = class_balanced_indices(train.labels, ipc, train.num_classes, seed=seed)
    return idx[torch.argsort(train.labels[idx], stable=True)]


@register_method("mtt", display="MTT", order=4,
                 description="MTT, matching training trajectories (Cazenavette et al. 2022)",
                 budgets=BUDGETS, retrain_augment=True, plan_note=FINAL_ITERATE_NOTE)
def mtt(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
    params = cfg.params
    traj = load_trajectories(train, cfg, params)
    device = cfg.device
    iterations = int(params["iterations"])
    max_start = int(params["max_start_epoch"])

    idx = real_init(train, ipc, cfg.seed)
    images = traj.to_network(train.images[idx]).detach().clone().requires_grad_(True)
    labels = train.labels[idx].to(device)
    syn_lr = torch.tensor(float(params["lr_teacher"]), device=device, requires_grad=True)
    opt_img = torch.optim.SGD([images], lr=float(params["lr_img"]), momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=float(params["lr_lr"]), momentum=0.5)
    sample_gen, batch_gen, aug_gen = cfg.generator(1), cfg.generator(2), cfg.generator(3)
    sampler = ExpertSampler(len(traj.experts), sample_gen)

    state = LoopState({"images": images}, syn_lr, (opt_img, opt_lr),
                      (sample_gen, batch_gen, aug_gen), sampler)
    start_it, skipped = state.resume(cfg, "skipped")
    loop = cfg.loop(iterations, f"mtt ipc{ipc}", start=start_it,
                    snapshot=lambda: state.snapshot(skipped=skipped))
    for _ in loop:
        loss = state.segment_loss(traj, labels, (0, max_start), params)
        opt_img.zero_grad(set_to_none=True)
        opt_lr.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            opt_img.step()
            opt_lr.step()
        else:  # a diverged unroll would poison both tensors; the reference has no guard
            skipped += 1
        loop.postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{float(syn_lr.detach()):.4g}")
    pixels = traj.to_pixels(images)
    meta = traj.meta(float(syn_lr.detach()))
    meta["skipped_iterations"] = skipped
    return DistilledSet(pixels, labels.cpu(), meta)
