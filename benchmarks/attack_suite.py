"""The whole white-box suite: rome-bench's measurements against a bare torchattacks loop.

For each model, side by side in one run on the same real test images and the ``cpu`` preset's
attack parameters:

* ``standard``: rome-bench (clean predictions once, images lost on clean input not attacked,
  batched DeepFool, weights frozen during attacks) against the bare loop (every attack on
  every image, torchattacks' DeepFool). Goal: ratio <= 0.4.
* ``beard-compat``: rome-bench against the bare loop in BEARD's input space. Goal: ratio <= 1.0
  with identical accuracies (nothing is skipped there and DeepFool is torchattacks'; the
  weights are frozen, which saves CW's and FAB's weight gradients).
* DeepFool alone under ``standard``: batched against torchattacks'. Goal: >= 5x on a CPU.
* CW alone under ``standard``: torchattacks' CW with the weights frozen (as rome-bench runs
  it) against the bare call (which also differentiates every weight); same robust accuracy.

Models: BEARD's published BACON checkpoint, and a ``cpu``-preset model retrained on a random
IPC-10 set (trained once here, then read from the rome-bench cache).

    python benchmarks/attack_suite.py [--images 200] [--data-root ../shared/data/cifar10]
        [--threat-models standard,beard-compat|none] [--models bacon,cpu-ipc10]

``--threat-models none`` runs only the single-attack rows (DeepFool, CW).

Both sides are timed from outside the call, over the whole suite (every attack and mode),
alternating which goes first per model. One round: the suite takes minutes per model on a CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rome_bench.attacks.suite import (
    ATTACKS,
    attack_view,
    build_attack,
    clean_accuracy,
    parse_attacks,
    run_attack,
)
from rome_bench.data.datasets import CIFAR10_MEAN, CIFAR10_STD, load_dataset, take_test_subset
from rome_bench.models.convnet import Classifier, load_dc_checkpoint
from rome_bench.pipeline.config import RunConfig, plan_run
from rome_bench.pipeline.presets import PRESETS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PRESET = PRESETS.get("cpu")


def suite_jobs() -> list[tuple[str, str]]:
    return [(spec.name, mode) for spec in parse_attacks(None)
            for mode in ("targeted", "untargeted") if mode == "untargeted" or spec.targeted]


def ours(model: Classifier, x: torch.Tensor, y: torch.Tensor, threat: str) -> dict[str, float]:
    """rome-bench's measurements of one model: clean once, then every attack and mode."""
    clean = clean_accuracy(model, x, y, threat_model=threat, batch_size=len(x))
    out = {"clean": clean.accuracy}
    for name, mode in suite_jobs():
        spec = ATTACKS.get(name)
        res = run_attack(spec, model, x, y, mode=mode, threat_model=threat, batch_size=len(x),
                         overrides=PRESET.attacks.overrides.get(name, {}),
                         clean_correct=clean.outcomes)
        out[f"{name} {mode}"] = res.accuracy
    return out


def bare(model: Classifier, x: torch.Tensor, y: torch.Tensor, threat: str,
         deepfool: str = "DeepFool-ta") -> dict[str, float]:
    """The loop a researcher writes with torchattacks: every attack on every image."""
    view = attack_view(model.eval(), threat, 10)
    z = view.to_input(x)
    with torch.no_grad():
        out = {"clean": 100 * float((view.model(z).argmax(1) == y).float().mean())}
    for name, mode in suite_jobs():
        spec = ATTACKS.get(deepfool if name == "DeepFool" else name)
        torch.manual_seed(0)
        atk = build_attack(spec, view.model, threat_model=threat,
                           overrides=PRESET.attacks.overrides.get(name, {}))
        if mode == "targeted":
            atk.set_mode_targeted_by_function(view.target, quiet=True)
        adv = atk(z, y)
        with torch.no_grad():
            out[f"{name} {mode}"] = 100 * float((view.model(adv).argmax(1) == y).float().mean())
    return out


def alone(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor, overrides: dict,
          bare_call: bool = False) -> float:
    """Robust accuracy (untargeted, ``standard``, every image attacked) under one attack, run
    through rome-bench's ``run_attack`` (weights frozen) or, with ``bare_call``, called as a
    researcher calls torchattacks (weights not frozen)."""
    if not bare_call:
        return run_attack(ATTACKS.get(name), model, x, y, mode="untargeted", batch_size=len(x),
                          overrides=overrides).accuracy
    atk = build_attack(ATTACKS.get(name), model.eval(), overrides=overrides)
    adv = atk(x, y)
    with torch.no_grad():
        return 100 * float((model(adv).argmax(1) == y).float().mean())


def timed(fn, *args) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def cpu_model(data_root: Path) -> Classifier:
    """A cpu-preset model retrained on random real images, IPC 10 (cached after the first run)."""
    from rome_bench.core.cache import Cache
    from rome_bench.pipeline.stages import distill, retrain

    plan = plan_run(RunConfig(methods=["random"], dataset="cifar10", data_root=str(data_root),
                              ipcs=[10], preset="cpu", repeats=1, attacks="none",
                              show_progress=False))
    train = load_dataset("cifar10", "train", data_root)
    cell = plan.cells[0]
    distilled, key = distill(cell, train, plan, Cache(), print)
    model, _ = retrain(distilled, key, cell, 0, plan, Cache(), print)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--data-root", type=Path, default=SHARED / "cifar10")
    ap.add_argument("--pool", type=Path, default=SHARED / "beard_model_pool")
    ap.add_argument("--threat-models", default="standard,beard-compat")
    ap.add_argument("--models", default="bacon,cpu-ipc10")
    args = ap.parse_args()
    test = take_test_subset(load_dataset("cifar10", "test", args.data_root), args.images)
    x, y = test.images, test.labels
    models = {}
    for name in args.models.split(","):
        if name == "bacon":
            models["BACON (BEARD)"] = load_dc_checkpoint(
                next(args.pool.glob("BACON_*.pth")), "convnet", num_classes=10,
                mean=CIFAR10_MEAN, std=CIFAR10_STD)
        elif name == "cpu-ipc10":
            models["random IPC 10 (cpu)"] = cpu_model(args.data_root)
    print(f"{len(x)} real test images, {torch.get_num_threads()} thread(s), cpu preset attack "
          f"parameters {PRESET.attacks.overrides}")
    for label, model in models.items():
        model.eval()
        threats = [t for t in args.threat_models.split(",") if t and t != "none"]
        for i, threat in enumerate(threats):
            order = [(ours, "ours"), (bare, "bare")]
            runs = {}
            for fn, who in order if i % 2 == 0 else order[::-1]:
                runs[who] = timed(fn, model, x, y, threat)
            (t_ours, a_ours), (t_bare, a_bare) = runs["ours"], runs["bare"]
            same = all(abs(a_ours[k] - a_bare[k]) < 1e-9 for k in a_ours)
            worst = max(abs(a_ours[k] - a_bare[k]) for k in a_ours)
            print(f"  {label:<22} {threat:<13} suite rome-bench {t_ours:8.1f} s  bare "
                  f"{t_bare:8.1f} s  ratio {t_ours / t_bare:5.2f}  "
                  f"{t_ours / len(x):.2f} vs {t_bare / len(x):.2f} s/image  accuracies "
                  + ("identical" if same else f"differ by up to {worst:.1f} points"))
            if not same:
                for k in a_ours:
                    if abs(a_ours[k] - a_bare[k]) >= 1e-9:
                        print(f"      {k:<24} {a_ours[k]:6.2f} vs {a_bare[k]:6.2f}")
        # DeepFool: batched (rome-bench) against torchattacks' called bare; CW: the same
        # torchattacks CW with the weights frozen (rome-bench) and not (bare call)
        for name, bare_name, ours_text, bare_text in (
                ("DeepFool", "DeepFool-ta", "batched", "torchattacks"),
                ("CW", "CW", "weights frozen", "bare")):
            params = PRESET.attacks.overrides.get(name, {})
            t_o, acc_o = timed(alone, name, model, x, y, params)
            t_b, acc_b = timed(alone, bare_name, model, x, y, params, True)
            print(f"  {label:<22} {name} alone ({params or 'paper steps'}): {ours_text} "
                  f"{t_o:.1f} s, {bare_text} {t_b:.1f} s, speed-up {t_b / t_o:.2f}x; robust "
                  f"accuracy {acc_o:.1f} vs {acc_b:.1f}")


if __name__ == "__main__":
    main()
