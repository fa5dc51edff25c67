"""Seconds per distillation iteration: rome-bench against a plain reference-style loop.

For every method in :data:`BENCHES` and every IPC, rome-bench's implementation and a plain
loop written here in the reference's structure (one forward/backward per class, gradients of
every parameter, a DataLoader for the inner training) run the same number of iterations on the
same inputs: training set, IPC, the method's registered budget for ``--preset``, initial images
and seed. Runs alternate between the two and the median of ``--repeats`` is reported, as wall
seconds and as process CPU seconds (steadier on a shared machine), with their ratio
(rome-bench / reference; goal <= 1.0, stretch 0.5). A correctness column gives the relative
difference of the two implementations' matching loss on one shared batch.

    python benchmarks/distill_step.py                              # dc, dsa; quick budgets; IPC 1, 10
    python benchmarks/distill_step.py --methods dsa --ipc 10 --iterations 1 --repeats 3
    python benchmarks/distill_step.py --preset cpu --dataset cifar10 --data-root DIR --ipc 1
    python benchmarks/distill_step.py --preset paper --ipc 1 --chunk 100000   # one pass per side, as on a GPU

To add a method (dm, idm, ...), write its two runners and add one row to ``BENCHES``.
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
from torch.utils.data import DataLoader, TensorDataset

from rome_bench.augment import DSA
from rome_bench.data import DATASETS, DatasetSpec, ImageSet, load_dataset
from rome_bench.gradient_matching import (
    distill_gradient_matching,
    get_loops,
    gradient_matching_loss,
    init_synthetic,
)
from rome_bench.methods import METHODS, MethodConfig, resolve_budget
from rome_bench.models import build_model


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
        torch.manual_seed(inp.seed * 100003 + it)
        net = build_model(str(p.get("net", "convnet")), num_classes=n_cls,
                          channels=inp.train.channels, image_size=inp.train.image_size).net
        net = net.to(train_z.device).train()
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
    # "dm": Bench(..., ...),  "idm": Bench(..., ...)
}


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
            row["budget"] = ", ".join(f"{k}={params[k]}" for k in ("batch_real", "outer_loop",
                                                                    "inner_loop") if k in params)
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
