"""Budgets: ``quick`` (the default), ``cpu`` and ``paper``, in one table.

``paper`` is the published protocol (a GPU job). ``cpu`` and ``quick`` keep every algorithm
and every attack but scale budgets; each preset states what it scales in ``scaled``, which
``rome-bench list presets`` prints and every record carries through its ``preset`` field.
Per-method budgets live in ``method_params`` (filled in by the methods' issues), keyed by method
name and then ``"all"`` or an IPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rome_bench.core.registry import Registry


@dataclass(frozen=True)
class Preset:
    """One column of the presets table."""

    name: str
    description: str
    scaled: str
    dataset: str
    ipcs: tuple[int, ...]
    repeats: int
    test_subset: int | None
    retrain_epochs: dict[int, int]
    retrain_epochs_noaug: dict[int, int]
    full_epochs: int
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_batch_size: int = 500
    method_params: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=dict)

    def epochs(self, ipc: int, augment: bool) -> int:
        """Retraining epochs for a set of ``ipc`` images per class (nearest listed IPC)."""
        table = self.retrain_epochs if augment else self.retrain_epochs_noaug
        if ipc in table:
            return table[ipc]
        nearest = min(table, key=lambda k: (abs(k - ipc), k))
        return table[nearest]

    def params_for(self, method: str, ipc: int) -> dict[str, Any]:
        """The method's hyperparameters at this preset: ``"all"`` merged with the IPC's entry."""
        table = self.method_params.get(method, {})
        out = dict(table.get("all", {}))
        out.update(table.get(ipc, {}))
        return out


PRESETS: Registry[Preset] = Registry("preset")

PRESETS.add("paper", Preset(
    name="paper",
    description="the published protocol: full test set, 1000 retraining epochs, every attack "
                "at its paper parameters (GPU)",
    scaled="nothing",
    dataset="cifar10",
    ipcs=(1, 10, 50),
    repeats=5,
    test_subset=None,
    retrain_epochs={1: 1000, 10: 1000, 50: 1000},
    retrain_epochs_noaug={1: 300, 10: 300, 50: 300},
    full_epochs=100,
    attack_batch_size=500,
), description="published protocol (GPU job)")

PRESETS.add("cpu", Preset(
    name="cpu",
    description="real CIFAR-10 from --data-root, faithful algorithms, budgets scaled for 2 CPU "
                "cores (hours for --method all at IPC 1 and 10)",
    scaled="retraining epochs 300 (IPC 1) / 150 (IPC 10) / 50 (IPC 50) instead of 1000 (DC: "
           "300/100/30 instead of 300); full-size 10 epochs; 3 models per cell; clean accuracy and "
           "attacks on a class-balanced subset of 200 test images (the clean-accuracy tables "
           "in README used --test-subset 1000); CW 30 steps, DeepFool 20 steps, AutoAttack "
           "with the 'standard' attacks but Square at 1000 queries; method budgets per method "
           "(printed in the run plan); query black-box: Square 1000 queries instead of 5000",
    dataset="cifar10",
    ipcs=(1, 10),
    repeats=3,
    # 200, not 1000: the white-box suite under both threat models costs about 2.5-4 CPU-s per
    # image per model here (beard-compat's weak attacks leave many images for AutoAttack's
    # Square), so --method all (63 models) at 1000 images would be ~68 CPU-hours of attacks.
    test_subset=200,
    retrain_epochs={1: 300, 10: 150, 50: 50},
    retrain_epochs_noaug={1: 300, 10: 100, 50: 30},
    full_epochs=10,
    attack_overrides={"CW": {"steps": 30}, "DeepFool": {"steps": 20},
                      "AutoAttack": {"square_queries": 1000}, "Square": {"n_queries": 1000}},
    attack_batch_size=500,
), description="scaled for 2 CPU cores (hours)")

PRESETS.add("quick", Preset(
    name="quick",
    description="the embedded cifar10-mini subset (2,000 train / 500 test images), IPC 1, "
                "scaled budgets, every method and attack kind, both modes: under 10 minutes on "
                "2 cores",
    # Measured on 2 cores (2 workers x 1 thread): an attack pass over 50 images takes ~25 s per
    # model, retraining ~125 images/s per worker. An IPC-10 cell of a factorized method (IDM,
    # BACON, ROME: 400 retraining images) alone costs ~2 min, so IPC 10 is left to --ipc.
    scaled="data: embedded 2,000-image train subset; IPC 1 only (add --ipc 1,10 for IPC 10, "
           "whose cells cost several CPU-minutes each); retraining epochs 150 (IPC 1) / 40 "
           "(IPC 10) / 15 (IPC 50) instead of 1000 (DC: 150/30/10 instead of 300); full-size "
           "5 epochs on the subset; 1 model per cell; attacks on a class-balanced subset of 50 "
           "test images; CW 10 steps, "
           "DeepFool 3 steps (torchattacks' DeepFool works image by image), AutoAttack with the "
           "'standard' attacks but Square at 500 queries; method budgets per method (printed in "
           "the run plan); query black-box: Square 200 queries instead of 5000, SPSA 32 samples "
           "per gradient estimate instead of 128",
    dataset="cifar10-mini",
    ipcs=(1,),
    repeats=1,
    test_subset=50,
    retrain_epochs={1: 150, 10: 40, 50: 15},
    retrain_epochs_noaug={1: 150, 10: 30, 50: 10},
    full_epochs=5,
    attack_overrides={"CW": {"steps": 10}, "DeepFool": {"steps": 3},
                      "AutoAttack": {"square_queries": 500}, "Square": {"n_queries": 200},
                      "SPSA": {"nb_sample": 32}},
    attack_batch_size=500,
), description="embedded subset, IPC 1, under 10 minutes (default)")

DEFAULT_PRESET = "quick"


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)
