"""Budgets: ``quick`` (the default), ``cpu`` and ``paper``, in one table.

``paper`` is the published protocol (a GPU job). ``cpu`` and ``quick`` keep every algorithm
and every attack but scale budgets; each preset states what it scales in ``scaled``, which
``rome-bench list presets`` prints and every record carries through its ``preset`` field.
Per-method distillation budgets are declared where each method is registered (its
``budgets``); a preset holds what every method shares: the retraining and attack budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rome_bench.core.registry import Registry


@dataclass(frozen=True)
class RetrainBudget:
    """Retraining epochs per IPC (the nearest listed IPC when one is missing), with DSA
    augmentation and without it (plain DC), and for the whole training set; and when the lr
    drops.

    ``decay_epochs`` maps a number of epochs trained to the first epoch (0-based) trained at
    lr / 10; a number it does not list drops at half (``epochs // 2``). The reference's
    ``epoch_eval_train = E`` trains ``E + 1`` epochs and drops after epoch ``E // 2 + 1``:
    ``{1001: 502, 301: 152}`` for E = 1000 and 300.
    """

    epochs: dict[int, int]
    epochs_noaug: dict[int, int]
    full: int
    decay_epochs: dict[int, int] = field(default_factory=dict)

    def for_ipc(self, ipc: int, augment: bool) -> int:
        table = self.epochs if augment else self.epochs_noaug
        if ipc in table:
            return table[ipc]
        return table[min(table, key=lambda k: (abs(k - ipc), k))]

    def decay_epoch(self, epochs: int) -> int:
        """The first epoch trained at lr / 10 in a training of ``epochs`` epochs."""
        return self.decay_epochs.get(epochs, epochs // 2)


@dataclass(frozen=True)
class AttackBudget:
    """Which test images are attacked and how hard: a class-balanced subset (None = all), the
    per-attack parameter overrides of scaled presets, and the attack batch size."""

    test_subset: int | None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_size: int = 500
    # on a GPU, larger batches keep the device busy (attacks hold a few copies of a batch and its
    # gradients: 2,000 CIFAR images are well under 1 GB for a ConvNet)
    gpu_batch_size: int = 2000

    def batch_size_on(self, device: str) -> int:
        return self.gpu_batch_size if str(device).startswith("cuda") else self.batch_size


@dataclass(frozen=True)
class Preset:
    """One column of the presets table."""

    name: str
    description: str
    scaled: str
    dataset: str
    ipcs: tuple[int, ...]
    repeats: int
    retrain: RetrainBudget
    attacks: AttackBudget


PRESETS: Registry[Preset] = Registry("preset")

PRESETS.add("paper", Preset(
    name="paper",
    description="the published protocol: full test set, the reference's 1000 (+1) retraining "
                "epochs, every attack at its paper parameters (GPU)",
    scaled="nothing",
    dataset="cifar10",
    ipcs=(1, 10, 50),
    repeats=5,
    # the reference's epoch_eval_train 1000 (DSA) / 300 (DC, no augmentation) loops range(E + 1)
    # and drops the lr after epoch E // 2 + 1 (DatasetCondensation utils.evaluate_synset)
    retrain=RetrainBudget(epochs={1: 1001, 10: 1001, 50: 1001},
                          epochs_noaug={1: 301, 10: 301, 50: 301}, full=100,
                          decay_epochs={1001: 502, 301: 152}),
    attacks=AttackBudget(test_subset=None),
), description="published protocol (GPU job)")

PRESETS.add("cpu", Preset(
    name="cpu",
    description="real CIFAR-10 from --data-root, faithful algorithms, budgets scaled for 2 CPU "
                "cores (hours for --method all at IPC 1 and 10)",
    scaled="retraining epochs 300 (IPC 1) / 150 (IPC 10) / 50 (IPC 50) instead of 1000 (DC: "
           "300/100/30 instead of 300); full-size 10 epochs; 3 models per cell; clean accuracy and "
           "attacks on a class-balanced subset of 200 test images (the clean-accuracy tables "
           "in results/README.md used --test-subset 1000); CW 30 steps, DeepFool 20 steps, AutoAttack "
           "with the 'standard' attacks but Square at 1000 queries; method budgets per method "
           "(printed in the run plan); query black-box: Square 1000 queries instead of 5000",
    dataset="cifar10",
    ipcs=(1, 10),
    repeats=3,
    # 200, not 1000: the white-box suite under both threat models costs about 2.5-4 CPU-s per
    # image per model here (beard-compat's weak attacks leave many images for AutoAttack's
    # Square), so --method all (63 models) at 1000 images would be ~68 CPU-hours of attacks.
    retrain=RetrainBudget(epochs={1: 300, 10: 150, 50: 50},
                          epochs_noaug={1: 300, 10: 100, 50: 30}, full=10),
    attacks=AttackBudget(test_subset=200, overrides={
        "CW": {"steps": 30}, "DeepFool": {"steps": 20}, "AutoAttack": {"square_queries": 1000},
        "Square": {"n_queries": 1000}}),
), description="scaled for 2 CPU cores (hours)")

PRESETS.add("quick", Preset(
    name="quick",
    description="the embedded cifar10-mini subset (2,000 train / 500 test images), IPC 1, "
                "scaled budgets, every method and attack kind, both modes: under 10 minutes on "
                "2 cores",
    # Measured on 2 cores (2 workers x 1 thread): retraining runs at ~125 images/s per worker; an
    # IPC-10 cell of a factorized method (IDM, BACON, ROME: 400 retraining images) alone costs
    # ~2 min, so IPC 10 is left to --ipc. 200 test images (50 before the attack suite skipped
    # images lost on clean input and DeepFool was batched): at IPC 1 most images are lost before
    # any attack, so the suite costs about what 50 images did, with 4x the statistical power.
    scaled="data: embedded 2,000-image train subset; IPC 1 only (add --ipc 1,10 for IPC 10, "
           "whose cells cost several CPU-minutes each); retraining epochs 150 (IPC 1) / 40 "
           "(IPC 10) / 15 (IPC 50) instead of 1000 (DC: 150/30/10 instead of 300); full-size "
           "5 epochs on the subset; 1 model per cell; attacks on a class-balanced subset of 200 "
           "test images; CW 10 steps, "
           "DeepFool 3 steps, AutoAttack with the "
           "'standard' attacks but Square at 500 queries; method budgets per method (printed in "
           "the run plan); query black-box: Square 200 queries instead of 5000, SPSA 32 samples "
           "per gradient estimate instead of 128",
    dataset="cifar10-mini",
    ipcs=(1,),
    repeats=1,
    retrain=RetrainBudget(epochs={1: 150, 10: 40, 50: 15},
                          epochs_noaug={1: 150, 10: 30, 50: 10}, full=5),
    attacks=AttackBudget(test_subset=200, overrides={
        "CW": {"steps": 10}, "DeepFool": {"steps": 3}, "AutoAttack": {"square_queries": 500},
        "Square": {"n_queries": 200}, "SPSA": {"nb_sample": 32}}),
), description="embedded subset, IPC 1, under 10 minutes (default)")

DEFAULT_PRESET = "quick"


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)
