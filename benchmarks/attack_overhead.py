"""Attack-suite overhead: rome-bench's ``run_attack`` against bare torchattacks calls.

Same published ConvNet (BEARD's DC checkpoint), same test images, same attack objects and
parameters; the bare loop builds each torchattacks attack itself, attacks the batch and
predicts. Both are timed from outside the call (setup included); per row, the order alternates
over ``--rounds`` rounds after a warm-up and the medians are compared; the ratio of the summed
medians is printed. Goal: <= 1.05.

    python benchmarks/attack_overhead.py [--images 100] [--rounds 5] [--attacks FGSM,PGD,CW,...]

CW and DeepFool use the quick preset's reduced steps and AutoAttack's Square 500 queries unless
``--paper`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from rome_bench.attacks.suite import ATTACKS, build_attack, run_attack
from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, load_dataset, take_test_subset
from rome_bench.models.convnet import load_dc_checkpoint
from rome_bench.pipeline.presets import PRESETS

POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beard_model_pool"


def bare(spec, model, x, y, mode, overrides):
    torch.manual_seed(0)
    start = time.perf_counter()
    atk = build_attack(spec, model, overrides=overrides)
    if mode == "targeted":
        atk.set_mode_targeted_by_function(lambda _x, lab: (lab + 1) % 10, quiet=True)
    adv = atk(x, y)
    with torch.no_grad():
        acc = float((model(adv).argmax(1) == y).float().mean()) * 100
    return time.perf_counter() - start, acc


def timed_ours(spec, model, x, y, mode, overrides):
    """Wall time of the whole ``run_attack`` call, setup included, timed from outside."""
    start = time.perf_counter()
    res = run_attack(spec, model, x, y, mode=mode, batch_size=len(x), seed=0, overrides=overrides)
    return time.perf_counter() - start, res.accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--attacks", default="FGSM,PGD,PGD-L2,CW,DeepFool,AutoAttack")
    ap.add_argument("--rounds", type=int, default=5,
                    help="timed rounds per row (median; order alternates), after one warm-up")
    ap.add_argument("--checkpoint", type=Path, default=next(POOL.glob("DC_*.pth"), None))
    ap.add_argument("--paper", action="store_true", help="paper parameters (slow on CPU)")
    args = ap.parse_args()
    model = load_dc_checkpoint(args.checkpoint, "convnet", num_classes=10, mean=CIFAR10_MEAN,
                               std=CIFAR10_STD)
    test = take_test_subset(load_dataset("cifar10-mini", "test"), args.images)
    x, y = test.images, test.labels
    overrides_by_name = {} if args.paper else PRESETS.get("quick").attacks.overrides
    total_ours = total_bare = 0.0
    print(f"{len(x)} images, checkpoint {args.checkpoint.name}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} alternating rounds per row")
    print(f"  {'attack':<22}{'rome-bench s':>13}{'bare s':>9}{'ratio':>8}  acc ours/bare")
    for name in args.attacks.split(","):
        spec = ATTACKS.get(name)
        overrides = overrides_by_name.get(spec.name, {})
        for mode in ("targeted", "untargeted"):
            if mode == "targeted" and not spec.targeted:
                continue
            timed_ours(spec, model, x, y, mode, overrides)  # warm-up, not counted
            ours, bare_times = [], []
            for r in range(args.rounds):
                first, second = (timed_ours, bare) if r % 2 == 0 else (bare, timed_ours)
                a = first(spec, model, x, y, mode, overrides)
                b = second(spec, model, x, y, mode, overrides)
                (t_ours, acc), (t_bare, acc_bare) = (a, b) if first is timed_ours else (b, a)
                ours.append(t_ours)
                bare_times.append(t_bare)
            m_ours, m_bare = statistics.median(ours), statistics.median(bare_times)
            total_ours += m_ours
            total_bare += m_bare
            print(f"  {spec.name + ' ' + mode:<22}{m_ours:13.2f}{m_bare:9.2f}"
                  f"{m_ours / m_bare:8.3f}  {acc:.1f}/{acc_bare:.1f}")
    print(f"  {'total':<22}{total_ours:13.2f}{total_bare:9.2f}{total_ours / total_bare:8.3f}"
          "   (goal <= 1.05)")


if __name__ == "__main__":
    main()
