"""Seconds per distillation iteration: rome-bench against a plain reference-style loop.

For every method in :data:`BENCHES` and every IPC, rome-bench's implementation and a plain loop
written here in the reference's structure run the same number of iterations on the same inputs:
training set, IPC, the method's registered budget for ``--preset``, initial images and seed.
The reference structures: DC/DSA (DatasetCondensation ``main.py``) one forward/backward per
class, gradients of every parameter, a DataLoader for the inner training; DM (``main_DM.py``)
per class one embedding pass of the real batch and one of the synthetic images through a fresh
frozen ConvNet, one image step per iteration; IDM (uitrbn/IDM ``IDM_cifar10.py``) per class the
expanded (4x) synthetic images, an embedding pass of the real batch through the sampled queue
net with its graph built and then detached, an embedding pass and a separate full forward (for
the CE logits) of the synthetic images, one image step per class, then the queue's net training
on real batches; BACON (zhouzhengqd/BACON ``BACON_cifar10.py``) IDM's structure with its
Gaussian NLL + 0.8 TV matching term. Runs alternate between the two and the median of
``--repeats`` is reported, as wall seconds and as process CPU seconds (steadier on a shared
machine), with their ratio (rome-bench / reference; goal <= 1.0, stretch 0.5). A correctness
column gives the relative difference of the two implementations' matching loss on one shared
batch.

    python benchmarks/distill_step.py                              # dc, dsa, dm, idm, bacon; quick; IPC 1, 10
    python benchmarks/distill_step.py --methods dm,idm --iterations 2 --repeats 3
    python benchmarks/distill_step.py --methods dsa --ipc 10 --iterations 1 --repeats 3
    python benchmarks/distill_step.py --preset cpu --dataset cifar10 --data-root DIR --ipc 1
    python benchmarks/distill_step.py --preset paper --ipc 1 --chunk 100000   # one pass per side, as on a GPU

To add a method, write its two runners and add one row to ``BENCHES``. DM, IDM and BACON run
the registered method (``METHODS``) with the benchmark's iterations; ``--chunk`` is passed to
them as ``max_batch``. The IDM and BACON checks compare the whole per-class loss (matching term
on the expanded images plus the accuracy-weighted CE) on a fresh net whose meter has seen one
real batch; the queue's training is timed but not checked.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from rome_bench.baselines.bacon import bacon_class_loss
from rome_bench.baselines.idm import idm_class_loss
from torch.utils.data import DataLoader, TensorDataset

from rome_bench.data.augment import DSA
from rome_bench.data.datasets import DATASETS, DatasetSpec, ImageSet, load_dataset
from rome_bench.methods.contract import METHODS, MethodConfig, resolve_budget
from rome_bench.methods.distribution_matching import (
    ClassTerms,
    QueueMatchingConfig,
    class_slices,
    dm_loss,
    embed_in_passes,
    embed_per_class,
)
from rome_bench.methods.factorized import expand
from rome_bench.methods.gradient_matching import (
    distill_gradient_matching,
    get_loops,
    gradient_matching_loss,
    init_synthetic,
)
from rome_bench.methods.network_queue import QueuedNet
from rome_bench.models.convnet import build_model


@dataclass
class Inputs:
    """What both implementations of one (method, IPC) cell receive."""

    train: ImageSet
    dataset: DatasetSpec
    ipc: int
    params: dict[str, Any]
    iterations: int
    seed: int = 0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def normalized_train(self) -> torch.Tensor:
        mean = torch.tensor(self.dataset.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.dataset.std).view(1, -1, 1, 1)
        return ((self.train.images - mean) / std).to(self.device)

    def method_config(self) -> MethodConfig:
        return MethodConfig(seed=self.seed, preset="benchmark", dataset=self.dataset,
                            params={**self.params, "iterations": self.iterations},
                            device=self.device, show_progress=False)


# -- gradient matching (DC / DSA) -----------------------------------------------------------
def _ours_gradient_matching(inp: Inputs, use_dsa: bool) -> None:
    distill_gradient_matching(inp.train, inp.ipc, inp.method_config(), use_dsa=use_dsa)


def _layer_distance(gs: torch.Tensor, gr: torch.Tensor) -> torch.Tensor:
    """The reference's per-parameter distance, one tensor at a time."""
    if gs.dim() == 1:
        return torch.zeros((), device=gs.device)
    gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
    return torch.sum(1 - torch.sum(gs * gr, -1) / (gs.norm(dim=-1) * gr.norm(dim=-1) + 1e-6))


def _reference_class_loss(net, real, syn, aug=None, seeds=None) -> torch.Tensor:
    """Per class: forward/backward on the real batch, then on the synthetic one."""
    params = list(net.parameters())
    loss = torch.zeros((), device=syn[0].device)
    for c, (img_real, img_syn) in enumerate(zip(real, syn)):
        if aug is not None:
            img_real = aug.augment_normalized(img_real, seed=seeds[c])
            img_syn = aug.augment_normalized(img_syn, seed=seeds[c])
        lab_real = torch.full((len(img_real),), c, device=img_real.device)
        lab_syn = torch.full((len(img_syn),), c, device=img_syn.device)
        gw_real = torch.autograd.grad(F.cross_entropy(net(img_real), lab_real), params)
        gw_real = [g.detach() for g in gw_real]
        gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), lab_syn), params, create_graph=True)
        for gs, gr in zip(gw_syn, gw_real):
            loss = loss + _layer_distance(gs, gr)
    return loss


def _reference_gradient_matching(inp: Inputs, use_dsa: bool) -> None:
    p, ipc, n_cls = inp.params, inp.ipc, inp.train.num_classes
    outer_loop, inner_loop = ((int(p["outer_loop"]), int(p["inner_loop"])) if "outer_loop" in p
                              else get_loops(ipc))
    gen = torch.Generator().manual_seed(inp.seed)
    train_z = inp.normalized_train()
    indices_class = [inp.train.indices_of(c) for c in range(n_cls)]

    def get_images(c: int, n: int) -> torch.Tensor:
        idx = indices_class[c][torch.randperm(len(indices_class[c]), generator=gen)[:n]]
        return train_z[idx.to(train_z.device)]

    image_syn = init_synthetic(train_z, indices_class, ipc, str(p.get("init", "real")), gen)
    image_syn.requires_grad_(True)
    label_syn = torch.arange(n_cls, device=train_z.device).repeat_interleave(ipc)
    optimizer_img = torch.optim.SGD([image_syn], lr=float(p["lr_img"]),
                                    momentum=float(p.get("momentum_img", 0.5)))
    aug = DSA(inp.dataset.mean, inp.dataset.std) if use_dsa else None
    for it in range(inp.iterations):
        net = _fresh_convnet(inp, inp.seed * 100003 + it).train()
        optimizer_net = torch.optim.SGD(net.parameters(), lr=float(p["lr_net"]))
        for ol in range(outer_loop):
            real = [get_images(c, int(p["batch_real"])) for c in range(n_cls)]
            syn = [image_syn[c * ipc:(c + 1) * ipc] for c in range(n_cls)]
            seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _ in range(n_cls)]
            loss = _reference_class_loss(net, real, syn, aug, seeds)
            optimizer_img.zero_grad()
            loss.backward()
            optimizer_img.step()
            if ol == outer_loop - 1:
                break
            loader = DataLoader(TensorDataset(image_syn.detach().clone(), label_syn.clone()),
                                batch_size=int(p.get("batch_train", 256)), shuffle=True)
            for _ in range(inner_loop):
                for img, lab in loader:
                    if aug is not None:
                        img = aug.augment_normalized(img)
                    loss_net = F.cross_entropy(net(img), lab)
                    optimizer_net.zero_grad()
                    loss_net.backward()
                    optimizer_net.step()


def _check_gradient_matching(inp: Inputs, use_dsa: bool) -> float:
    """Relative difference of the two matching losses on one shared batch and network."""
    gen = torch.Generator().manual_seed(inp.seed + 1)
    train_z = inp.normalized_train()
    n_cls, ipc, n = inp.train.num_classes, inp.ipc, int(inp.params["batch_real"])
    real = []
    for c in range(n_cls):
        idx = inp.train.indices_of(c)
        real.append(train_z[idx[torch.randperm(len(idx), generator=gen)[:n]].to(train_z.device)])
    syn = init_synthetic(train_z, [inp.train.indices_of(c) for c in range(n_cls)], ipc, "real", gen)
    torch.manual_seed(inp.seed)
    net = build_model(str(inp.params.get("net", "convnet")), num_classes=n_cls,
                      channels=inp.train.channels, image_size=inp.train.image_size).net.to(syn.device)
    aug = DSA(inp.dataset.mean, inp.dataset.std) if use_dsa else None
    seeds = list(range(n_cls))
    ours = float(gradient_matching_loss(net, real, syn.split(ipc), aug, seeds).detach())
    ref = float(_reference_class_loss(net, real, list(syn.split(ipc)), aug, seeds).detach())
    return abs(ours - ref) / max(abs(ref), 1e-12)


# -- distribution matching (DM / IDM) -------------------------------------------------------
def _ours_registered(inp: Inputs, name: str) -> None:
    """The registered method through its MethodConfig; ``--chunk`` maps to its ``max_batch``."""
    cfg = inp.method_config()
    if "chunk" in cfg.params:
        cfg.params.setdefault("max_batch", cfg.params["chunk"])
    METHODS.get(name)(inp.train, inp.ipc, cfg)


def _class_pool(inp: Inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The normalized training images and each class's indices into them."""
    return inp.normalized_train(), [inp.train.indices_of(c) for c in range(inp.train.num_classes)]


def _draw(index: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    return index[torch.randperm(len(index), generator=gen)[:n]]


def _fresh_convnet(inp: Inputs, seed: int) -> torch.nn.Module:
    """A randomly initialised ConvNet without its input normalization (inputs are normalized)."""
    torch.manual_seed(seed)
    return build_model(str(inp.params.get("arch", "convnet")), num_classes=inp.train.num_classes,
                       channels=inp.train.channels, image_size=inp.train.image_size).net.to(inp.device)


def _mean_gap(out_real: torch.Tensor, out_syn: torch.Tensor) -> torch.Tensor:
    """Squared distance of the two batch-mean embeddings, written out as the reference does."""
    return torch.sum((torch.mean(out_real, dim=0) - torch.mean(out_syn, dim=0)) ** 2)


def _reference_dm_loss(net, real, syn, aug, seeds) -> torch.Tensor:
    """Per class: augment both batches with the class's seed, embed each on its own, compare means."""
    loss = torch.zeros((), device=syn[0].device)
    for c, (img_real, img_syn) in enumerate(zip(real, syn)):
        img_real = aug.augment_normalized(img_real, seed=seeds[c])
        img_syn = aug.augment_normalized(img_syn, seed=seeds[c])
        loss = loss + _mean_gap(net.embed(img_real).detach(), net.embed(img_syn))
    return loss


def _reference_dm(inp: Inputs) -> None:
    p, ipc, n_cls = inp.params, inp.ipc, inp.train.num_classes
    gen = torch.Generator().manual_seed(inp.seed)
    train_z, indices_class = _class_pool(inp)
    image_syn = init_synthetic(train_z, indices_class, ipc, str(p.get("init", "real")), gen)
    image_syn.requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=float(p["lr_img"]),
                                    momentum=float(p.get("momentum_img", 0.5)))
    aug = DSA(inp.dataset.mean, inp.dataset.std)
    for it in range(inp.iterations):
        net = _fresh_convnet(inp, inp.seed * 100003 + it).train()
        for weight in net.parameters():
            weight.requires_grad_(False)
        real = [train_z[_draw(indices_class[c], int(p["batch_real"]), gen).to(train_z.device)]
                for c in range(n_cls)]
        syn = [image_syn[c * ipc:(c + 1) * ipc] for c in range(n_cls)]
        seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _ in range(n_cls)]
        loss = _reference_dm_loss(net, real, syn, aug, seeds)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()


def _shared_batch(inp: Inputs, n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One fixed real batch per class and real-initialised synthetic images, for the checks."""
    gen = torch.Generator().manual_seed(inp.seed + 1)
    train_z, indices_class = _class_pool(inp)
    real = [train_z[_draw(idx, n, gen).to(train_z.device)] for idx in indices_class]
    return real, init_synthetic(train_z, indices_class, inp.ipc, "real", gen)


def _check_dm(inp: Inputs) -> float:
    """Relative difference of the two DM losses on one shared batch, network and DSA seeds."""
    real, syn = _shared_batch(inp, int(inp.params["batch_real"]))
    net = _fresh_convnet(inp, inp.seed).train()
    aug = DSA(inp.dataset.mean, inp.dataset.std)
    seeds = list(range(inp.train.num_classes))
    with torch.no_grad():
        ours = float(dm_loss(net.embed, lambda c: real[c], class_slices(syn, inp.ipc),
                             inp.train.num_classes, seeds, aug,
                             max_batch=int(inp.params.get("max_batch", inp.params.get("chunk", 0)))))
        ref = float(_reference_dm_loss(net, real, list(syn.split(inp.ipc)), aug, seeds))
    return abs(ours - ref) / max(abs(ref), 1e-12)


def _reference_expand(stored: torch.Tensor) -> torch.Tensor:
    """Cut every stored image into its four quadrants and upsample each back to full size."""
    h, w = stored.shape[-2] // 2, stored.shape[-1] // 2
    quads = [stored[:, :, :h, :w], stored[:, :, h:, :w], stored[:, :, :h, w:], stored[:, :, h:, w:]]
    return F.interpolate(torch.cat(quads), scale_factor=2, mode="bilinear", align_corners=False)


def _reference_bacon_match(out_real: torch.Tensor, out_syn: torch.Tensor) -> torch.Tensor:
    """BACON's matching term: Gaussian NLL of the synthetic mean plus 0.8 x total variation."""
    mu_real, mu_syn = out_real.mean(dim=0), out_syn.mean(dim=0)
    sigma = torch.exp(torch.std(out_real, dim=0))
    nll = torch.sum(torch.log((2 * torch.pi) ** 0.5 * sigma) + 0.5 * ((mu_syn - mu_real) / sigma) ** 2)
    return nll + 0.8 * 0.5 * torch.sum(torch.abs(mu_real - mu_syn))


def _reference_idm_class_loss(net, img_real, stored_c, c, seed, aug, weight, ce_weight,
                              match=_mean_gap):
    """One class of IDM (``match`` = DM's gap) or BACON (``match`` = NLL + 0.8 TV) on the
    expanded images, plus the accuracy-weighted CE.

    As in the reference, the real batch goes through the (trainable) network and is detached
    afterwards, and the logits come from a second, full forward of the synthetic images.
    """
    img_syn = _reference_expand(stored_c)
    img_real = aug.augment_normalized(img_real, seed=seed)
    img_syn = aug.augment_normalized(img_syn, seed=seed)
    loss_c = match(net.embed(img_real).detach(), net.embed(img_syn))
    lab_syn = torch.full((img_syn.shape[0],), c, dtype=torch.long, device=img_syn.device)
    logits_syn = net(img_syn)
    return loss_c + ce_weight * weight * F.cross_entropy(logits_syn, lab_syn)


def _reference_idm(inp: Inputs, match=_mean_gap) -> None:
    p, ipc, n_cls = inp.params, inp.ipc, inp.train.num_classes
    gen = torch.Generator().manual_seed(inp.seed)
    train_z, indices_class = _class_pool(inp)
    labels_all = inp.train.labels.to(inp.device)
    h, w = train_z.shape[-2] // 2, train_z.shape[-1] // 2
    image_syn = torch.empty((n_cls * ipc, *train_z.shape[1:]), device=inp.device)
    for c in range(n_cls):  # each quadrant: ipc real images of the class, averaged down 2x2
        for rows, cols in ((slice(0, h), slice(0, w)), (slice(h, None), slice(0, w)),
                           (slice(0, h), slice(w, None)), (slice(h, None), slice(w, None))):
            pick = train_z[_draw(indices_class[c], ipc, gen).to(train_z.device)]
            image_syn[c * ipc:(c + 1) * ipc, :, rows, cols] = F.avg_pool2d(pick, 2)
    image_syn.requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=float(p["lr_img"]),
                                    momentum=float(p.get("momentum_img", 0.5)))
    aug = DSA(inp.dataset.mean, inp.dataset.std)
    nets: list[torch.nn.Module] = []
    optimizers: list[torch.optim.Optimizer] = []
    meters: list[list[int]] = []  # [correct, seen] per net
    torch.manual_seed(inp.seed)

    def push() -> None:
        if len(nets) == int(p["net_num"]):
            del nets[0], optimizers[0], meters[0]
        net = build_model(str(p.get("arch", "convnet")), num_classes=n_cls, channels=inp.train.channels,
                          image_size=inp.train.image_size).net.to(inp.device).train()
        nets.append(net)
        optimizers.append(torch.optim.SGD(net.parameters(), lr=float(p["lr_net"]), momentum=0.9,
                                          weight_decay=0.0005))
        meters.append([0, 0])

    for _ in range(int(p["initial_nets"])):
        push()
    reset_every = int(p.get("meter_reset_interval", 0))
    for it in range(inp.iterations):
        if reset_every and it > 0 and it % reset_every == 0:
            for m in meters:
                m[0] = m[1] = 0
        if it % int(p["net_generate_interval"]) == 0:
            for _ in range(int(p["net_push_num"])):
                push()
        pick = int(torch.randint(len(nets), (1,), generator=gen))
        net = nets[pick].eval()
        weight = 100.0 * meters[pick][0] / meters[pick][1] if meters[pick][1] else 0.0
        for c in range(n_cls):
            img_real = train_z[_draw(indices_class[c], int(p["batch_real"]), gen).to(train_z.device)]
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            loss_c = _reference_idm_class_loss(net, img_real, image_syn[c * ipc:(c + 1) * ipc], c,
                                               seed, aug, weight, float(p["ce_weight"]), match)
            optimizer_img.zero_grad()
            loss_c.backward()
            optimizer_img.step()
        order = torch.randperm(len(nets), generator=gen)[:int(p["fetch_net_num"])]
        for j in order.tolist():
            nets[j].train()
            for _ in range(int(p["model_train_steps"])):
                idx = torch.randperm(len(train_z), generator=gen)[:int(p["trained_bs"])]
                idx = idx.to(train_z.device)
                logits = nets[j](train_z[idx])
                loss_net = F.cross_entropy(logits, labels_all[idx])
                optimizers[j].zero_grad()
                loss_net.backward()
                optimizers[j].step()
                meters[j][0] += int((logits.detach().argmax(1) == labels_all[idx]).sum())
                meters[j][1] += len(idx)


def _check_idm(inp: Inputs, method: str = "idm") -> float:
    """Relative difference of the two IDM losses (DM gap on the expanded images plus weighted CE),
    summed over classes, on one shared batch, network and DSA seeds. The network is a fresh
    one whose accuracy meter has seen one real batch (the CE weight is its measured accuracy)."""
    real, stored = _shared_batch(inp, int(inp.params["batch_real"]))
    n_cls, ipc = inp.train.num_classes, inp.ipc
    ours_loss = bacon_class_loss if method == "bacon" else idm_class_loss
    match = _reference_bacon_match if method == "bacon" else _mean_gap
    torch.manual_seed(inp.seed)
    model = build_model(str(inp.params.get("arch", "convnet")), num_classes=n_cls,
                        channels=inp.train.channels, image_size=inp.train.image_size,
                        mean=inp.dataset.mean, std=inp.dataset.std).to(inp.device).eval()
    queued = QueuedNet(model, float(inp.params["lr_net"]), 0.9, 5e-4, uid=0)
    with torch.no_grad():
        queued.meter.add(model.net(torch.cat(real)),
                         torch.arange(n_cls, device=inp.device).repeat_interleave(real[0].shape[0]))
    s = QueueMatchingConfig.from_params({**inp.params, "max_batch": int(inp.params.get(
        "max_batch", inp.params.get("chunk", 0)))})
    aug = DSA(inp.dataset.mean, inp.dataset.std)
    seeds = list(range(n_cls))
    feats_real = embed_per_class(model.net.embed, lambda c: real[c], n_cls, seeds, aug,
                                 max_batch=s.max_batch, grad=False)
    ours = ref = 0.0
    for c in range(n_cls):  # losses only: no graph needed
        stored_c = stored[c * ipc:(c + 1) * ipc]
        syn_c, _ = expand(stored_c, None, s.factor)
        feats = embed_in_passes(model.net.embed, aug.augment_normalized(syn_c, seed=seeds[c]),
                                s.max_batch)
        lab = torch.full((feats.shape[0],), c, dtype=torch.long, device=feats.device)
        terms = ClassTerms(c, feats_real[c], feats, model.net.classifier(feats), lab,
                           queued.accuracy, queued)
        ours += float(ours_loss(terms, s).detach())
        ref += float(_reference_idm_class_loss(model.net, real[c], stored_c, c, seeds[c], aug,
                                               queued.accuracy, s.ce_weight,
                                               match).detach())
    return abs(ours - ref) / max(abs(ref), 1e-12)


@dataclass(frozen=True)
class Bench:
    """One row of the benchmark table: how to run each side and check they agree."""

    ours: Callable[[Inputs], None]
    reference: Callable[[Inputs], None]
    check: Callable[[Inputs], float] | None = None
    budget_of: str = ""  # registered method whose budget is used (default: the row's name)


BENCHES: dict[str, Bench] = {
    "dc": Bench(lambda i: _ours_gradient_matching(i, False),
                lambda i: _reference_gradient_matching(i, False),
                lambda i: _check_gradient_matching(i, False)),
    "dsa": Bench(lambda i: _ours_gradient_matching(i, True),
                 lambda i: _reference_gradient_matching(i, True),
                 lambda i: _check_gradient_matching(i, True)),
    "dm": Bench(lambda i: _ours_registered(i, "dm"), _reference_dm, _check_dm),
    "idm": Bench(lambda i: _ours_registered(i, "idm"), _reference_idm, _check_idm),
    "bacon": Bench(lambda i: _ours_registered(i, "bacon"),
                   lambda i: _reference_idm(i, _reference_bacon_match),
                   lambda i: _check_idm(i, "bacon")),
}


# budget entries that set the cost of one iteration, shown in the table when a method has them
BUDGET_KEYS = ("batch_real", "outer_loop", "inner_loop", "fetch_net_num", "model_train_steps",
               "trained_bs")


def _timed(fn: Callable[[Inputs], None], inp: Inputs) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(inp)
    return time.perf_counter() - wall, time.process_time() - cpu


def run_bench(name: str, inp: Inputs, repeats: int) -> dict[str, Any]:
    bench = BENCHES[name]
    ours, ref = [], []
    for r in range(repeats):  # alternate, so load changes hit both sides alike
        pair = [("ours", bench.ours), ("ref", bench.reference)]
        for side, fn in (pair if r % 2 == 0 else pair[::-1]):
            (ours if side == "ours" else ref).append(_timed(fn, inp))
    k = inp.iterations
    ow, oc = (statistics.median(t[i] for t in ours) / k for i in (0, 1))
    rw, rc = (statistics.median(t[i] for t in ref) / k for i in (0, 1))
    return {"method": name, "ipc": inp.ipc, "ours_wall": ow, "ref_wall": rw, "ratio_wall": ow / rw,
            "ours_cpu": oc, "ref_cpu": rc, "ratio_cpu": oc / rc,
            "loss_rel_diff": bench.check(inp) if bench.check else float("nan")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(BENCHES))
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--preset", default="quick", help="whose registered budget to use")
    ap.add_argument("--dataset", default="cifar10-mini")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--iterations", type=int, default=1, help="iterations per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-real", type=int, default=None, help="override the budget's")
    ap.add_argument("--outer-loop", type=int, default=None)
    ap.add_argument("--inner-loop", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=None,
                    help="rome-bench's images per pass (default: its device default)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = DATASETS.get(args.dataset)
    train = load_dataset(spec.name, "train", args.data_root)
    overrides = {k: v for k, v in (("batch_real", args.batch_real), ("outer_loop", args.outer_loop),
                                   ("inner_loop", args.inner_loop), ("chunk", args.chunk))
                 if v is not None}
    rows = []
    print(f"distill_step: {args.dataset}, preset '{args.preset}' budgets {overrides or ''}, "
          f"{args.iterations} iteration(s) x median of {args.repeats}, device {args.device}, "
          f"{torch.get_num_threads()} thread(s)")
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if name not in BENCHES:
            raise SystemExit(f"unknown method '{name}'; benchmarked: {', '.join(BENCHES)}")
        budget_name = BENCHES[name].budget_of or name
        for ipc in [int(x) for x in args.ipc.split(",")]:
            params = resolve_budget(METHODS.entry(budget_name).meta["budgets"], args.preset, ipc)
            params = {**params, **overrides}
            inp = Inputs(train, spec, ipc, params, args.iterations, device=args.device)
            row = run_bench(name, inp, args.repeats)
            row["budget"] = ", ".join(f"{k}={params[k]}" for k in BUDGET_KEYS if k in params)
            rows.append(row)
            print(_format_row(row), flush=True)
    print()
    print("| method | IPC | budget | rome-bench s/it | reference s/it | ratio (wall) | "
          "rome-bench CPU s/it | reference CPU s/it | ratio (CPU) | loss rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['ipc']} | {r['budget']} | {r['ours_wall']:.2f} | "
              f"{r['ref_wall']:.2f} | {r['ratio_wall']:.2f} | {r['ours_cpu']:.2f} | "
              f"{r['ref_cpu']:.2f} | {r['ratio_cpu']:.2f} | {r['loss_rel_diff']:.1e} |")


def _format_row(r: dict[str, Any]) -> str:
    return (f"  {r['method']:<5} IPC {r['ipc']:<3} {r['budget']}: rome-bench {r['ours_wall']:.2f} s/it, "
            f"reference {r['ref_wall']:.2f} s/it, ratio {r['ratio_wall']:.2f} (CPU {r['ratio_cpu']:.2f})")


if __name__ == "__main__":
    main()
