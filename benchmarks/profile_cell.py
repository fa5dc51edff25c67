"""Where a ``cpu`` cell spends its time: cProfile of distillation and of retraining.

For each method in ``--methods`` this runs the registered method on real CIFAR-10 at the
``cpu`` preset's budget for ``--ipc`` (every hyperparameter as the run plan resolves it) under
:mod:`cProfile`, timed by process CPU time (steadier than wall time on a shared machine), and
prints the functions with the largest own time, with their share of the total. The
iterations can be cut with ``--iterations`` (a prefix of the cell: every iteration of these
methods does the same work, so the shares carry over; the setup, e.g. loading the data, is
outside the profile). ``retrain`` profiles the retraining of one model on a random real set of
the same IPC at the preset's settings (``--epochs`` cuts its epochs the same way).

MTT needs its expert buffer: when the ``cpu`` buffer is not in the rome-bench cache it is
trained first, outside the profile (about 10-15 CPU-minutes), so the MTT rows are the
distillation alone.

    python benchmarks/profile_cell.py --data-root ../shared/data/cifar10 --methods idm,rome,retrain,mtt \
        --ipc 10 --iterations 20 --threads 1
    python benchmarks/profile_cell.py --methods rome --budget-of idm --ipc 10 --iterations 5

C++ work (convolutions, autograd's backward) appears under the Python call that launched it:
``run_backward`` is every backward pass, ``conv2d`` the forward convolutions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rome_bench.data.augment import DSA
from rome_bench.data.datasets import DATASETS, load_dataset
from rome_bench.methods.contract import METHODS, MethodConfig, resolve_budget
from rome_bench.models.convnet import build_model
from rome_bench.models.training import TrainConfig, train_model
from rome_bench.pipeline.config import Cell, borrow_budget
from rome_bench.pipeline.presets import PRESETS

Row = tuple[str, float, float]  # (function, CPU seconds, share of the total)


def profile(fn: Callable[[], object], top: int) -> tuple[float, list[Row], list[Row]]:
    """Total CPU seconds of ``fn``; its ``top`` functions by own time; and rome-bench's own
    functions by cumulative time (which stage of the method the time goes to)."""
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    own, stages = [], []
    for (path, line, name), (_, _, tt, ct, _) in stats.items():
        where = f"{Path(path).name}:{line}" if path != "~" else "built-in"
        own.append((f"{name} ({where})", tt, tt / total if total else 0.0))
        if ("rome_bench" in path or "baselines" in path) and name != "<lambda>":
            stages.append((f"{name} ({where})", ct, ct / total if total else 0.0))
    own.sort(key=lambda r: -r[1])
    stages.sort(key=lambda r: -r[1])
    return total, own[:top], stages[:top]


def distill_job(name: str, train, ipc: int, iterations: int | None,
                budget_of: str | None = None) -> Callable[[], object]:
    spec = DATASETS.get("cifar10")
    entry = METHODS.entry(name)
    params = resolve_budget(entry.meta["budgets"], "cpu", ipc, "cifar10")
    if budget_of:  # as `rome-bench run --budget-of`
        params = borrow_budget(Cell(name, ipc, params), budget_of, "cpu", "cifar10").params
    if iterations is not None:
        params["iterations"] = iterations
    cfg = MethodConfig(seed=0, preset="cpu", dataset=spec, params=params, show_progress=False)
    return lambda: METHODS.get(name)(train, ipc, cfg)


def retrain_job(train, ipc: int, epochs: int | None) -> Callable[[], object]:
    preset = PRESETS.get("cpu")
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat([train.indices_of(c)[torch.randperm(len(train.indices_of(c)), generator=gen)[:ipc]]
                     for c in range(train.num_classes)])
    images, labels = train.images[idx], train.labels[idx]
    cfg = TrainConfig(epochs=epochs or preset.retrain.for_ipc(ipc, augment=True))
    spec = DATASETS.get("cifar10")
    model = build_model("convnet", num_classes=10, mean=spec.mean, std=spec.std)
    return lambda: train_model(model, images, labels, cfg, augment=DSA(spec.mean, spec.std), seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="../shared/data/cifar10")
    ap.add_argument("--methods", default="idm,rome,mtt,retrain")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=None,
                    help="distillation iterations to profile (default: the whole cpu budget)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="retraining epochs to profile (default: the cpu preset's)")
    ap.add_argument("--budget-of", default=None, metavar="METHOD",
                    help="distill with METHOD's budget for the shared hyperparameters, as "
                         "`rome-bench run --budget-of`")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = load_dataset("cifar10", "train", args.data_root)
    print(f"cpu preset, CIFAR-10, IPC {args.ipc}, {args.threads} thread(s); own CPU time per "
          "function (cProfile, process time)")
    for name in args.methods.split(","):
        if name == "retrain":
            job, label = retrain_job(train, args.ipc, args.epochs), (
                f"retrain (random IPC {args.ipc}, {args.epochs or 'all'} epochs)")
        else:
            if name in ("mtt", "datm"):  # the buffer is shared by cells: build it unprofiled
                distill_job(name, train, args.ipc, 1)()  # one iteration loads (or trains) it
            job = distill_job(name, train, args.ipc, args.iterations, args.budget_of)
            label = (f"{name}{'@' + args.budget_of + '-budget' if args.budget_of else ''} "
                     f"({args.iterations or 'all'} iterations)")
        total, own, stages = profile(job, args.top)
        print(f"\n{label}: {total:.1f} CPU-s\n  own time:")
        for fn, seconds, share in own:
            print(f"  {share:6.1%}  {seconds:8.2f} s  {fn}")
        print("  rome-bench functions, cumulative (nested calls overlap):")
        for fn, seconds, share in stages:
            print(f"  {share:6.1%}  {seconds:8.2f} s  {fn}")


if __name__ == "__main__":
    main()
