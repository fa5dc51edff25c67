"""The attack suite over torchattacks 3.5.1, its threat models and targeting.

Each attack is registered once with its paper parameters (docs/design.md, "Attacks and threat
models"); a small wrapper, :func:`run_attack`, owns eval mode, the input space of the threat
model, targeting and timing, so an attack entry only says how to build its torchattacks object
and which modes it supports.

Threat models:

``standard`` (default)
    The attack sees [0,1] images and ``eps`` is in pixel units; the model normalizes inside.
``beard-compat``
    Reproduces the protocol behind the published BEARD/ROME numbers, quirks included: the
    attack is given the DC-*normalized* tensor and the bare network, so torchattacks clamps
    normalized values to [0,1] and ``eps`` is in normalized units; PGD steps by 2/225; targeted
    labels are ``(y + 1) % 10`` whatever the class count. Never the default, and never mixed
    with ``standard`` in one table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchattacks
from torch import nn

from rome_bench.attacks.deepfool import BatchedDeepFool
from rome_bench.attacks.timing import correct_mask, input_gradients_only, timed_batches, to_device
from rome_bench.core.catalog import ATTACKS, SUITE, SWEEP
from rome_bench.core.registry import RomeBenchError, normalize_name
from rome_bench.models.convnet import Classifier, Normalize

THREAT_MODELS = ("standard", "beard-compat")
ATTACK_MODES = ("targeted", "untargeted")


class AttackError(RomeBenchError):
    """An attack request that cannot be honoured."""


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack.

    Attributes:
        name: the name written in records (as docs/design.md spells it).
        factory: ``factory(model, **params) -> torchattacks.Attack``.
        params: the paper parameters (pixel units).
        targeted: whether the attack has a targeted mode.
        eps: the budget written in records (None for unbounded attacks such as CW, DeepFool).
        suite: part of the default white-box suite.
        transferable: used by transfer black-box attacks.
        setting: 'white-box' or 'query'.
    """

    name: str
    factory: Callable[..., torchattacks.Attack]
    params: dict[str, Any]
    targeted: bool
    eps: float | None
    suite: bool = True
    transferable: bool = False
    setting: str = "white-box"
    compat_params: dict[str, Any] = field(default_factory=dict)
    # the implementation under beard-compat when it differs (None: ``factory``)
    compat_factory: Callable[..., torchattacks.Attack] | None = None


def _autoattack(model: nn.Module, *, square_queries: int | None = None, **params: Any):
    atk = torchattacks.AutoAttack(model, **params)
    if square_queries is not None:  # reduced presets only; the preset says so
        for sub in atk._autoattack.attacks:
            if isinstance(sub, torchattacks.Square):
                sub.n_queries = square_queries
    return atk


class TargetedSPSA(torchattacks.SPSA):
    """torchattacks' SPSA with its targeted mode repaired.

    torchattacks 3.5.1's ``SPSA.forward`` never asks for the target labels, so in targeted
    mode it minimizes the margin towards the *true* class and raises accuracy instead of
    lowering it. This subclass maps the labels through the attack's target function first;
    untargeted mode is unchanged.
    """

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.targeted:
            labels = self.get_target_label(images, labels)
        return super().forward(images, labels)


def _add(spec: AttackSpec, *aliases: str, description: str = "") -> None:
    ATTACKS.add(spec.name, spec, *aliases, description=description)


_add(AttackSpec("FGSM", torchattacks.FGSM, {"eps": 8 / 255}, True, 8 / 255, transferable=True),
     description="FGSM, eps 8/255")
_add(AttackSpec("PGD", torchattacks.PGD,
                {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "random_start": False}, True, 8 / 255,
                transferable=True, compat_params={"alpha": 2 / 225}),
     "pgd-linf", description="PGD-Linf, eps 8/255, step 2/255, 10 steps, no random start")
_add(AttackSpec("PGD-L2", torchattacks.PGDL2,
                {"eps": 128 / 255, "alpha": 15 / 255, "steps": 10, "random_start": False}, True,
                128 / 255, transferable=True),
     "pgdl2", description="PGD-L2, eps 128/255, step 15/255, 10 steps")
_add(AttackSpec("CW", torchattacks.CW, {"c": 1, "kappa": 0, "steps": 100, "lr": 0.01}, True, None,
                transferable=True),
     "cw-l2", description="Carlini-Wagner L2, c 1, kappa 0, 100 steps, lr 0.01")
# DeepFool is rome-bench's batched implementation (attacks/deepfool.py: torchattacks' algorithm,
# vectorised over the batch). beard-compat keeps torchattacks' own, image by image, as BEARD ran
# it: DeepFool leaves many images on an exact float32 tie, and which side such an image is then
# classified on depends on the implementation's rounding, so only the same code reproduces the
# published numbers. DeepFool-ta is torchattacks' under both threat models, for comparison.
_add(AttackSpec("DeepFool", BatchedDeepFool, {"steps": 50, "overshoot": 0.02}, False, None,
                compat_factory=torchattacks.DeepFool),
     description="DeepFool, 50 steps, overshoot 0.02 (untargeted only; batched; beard-compat: "
                 "torchattacks')")
_add(AttackSpec("DeepFool-ta", torchattacks.DeepFool, {"steps": 50, "overshoot": 0.02}, False, None,
                suite=False),
     description="torchattacks' DeepFool, image by image (for comparison with DeepFool)")
_add(AttackSpec("AutoAttack", _autoattack,
                {"norm": "Linf", "eps": 8 / 255, "version": "standard"}, False, 8 / 255),
     "aa", description="AutoAttack standard, Linf eps 8/255 (untargeted only)")
_add(AttackSpec("MIFGSM", torchattacks.MIFGSM,
                {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "decay": 1.0}, True, 8 / 255,
                suite=False, transferable=True),
     description="MI-FGSM, eps 8/255, step 2/255, 10 steps (optional extra)")
for _k in (2, 4, 6, 8, 10):
    _add(AttackSpec(f"PGD-eps{_k}", torchattacks.PGD,
                    {"eps": _k / 255, "alpha": 2 / 255, "steps": 10, "random_start": False}, True,
                    _k / 255, suite=False, compat_params={"alpha": 2 / 225}),
         description=f"PGD-Linf at eps {_k}/255 (the eps sweep, optional extra)")
# A diagnostic, not an attack: FGSM with a zero budget returns its input, clamped to [0,1] in
# the attack's input space. Under ``standard`` that is the clean accuracy (a sanity check);
# under ``beard-compat`` the clamp acts on DC-normalized values, so this isolates how much of
# every compat attack's effect comes from the clamp alone, before any perturbation.
_add(AttackSpec("FGSM-eps0", torchattacks.FGSM, {"eps": 0.0}, False, 0.0, suite=False),
     description="FGSM at eps 0: no perturbation, only the attack's [0,1] clamp (diagnostic "
                 "for beard-compat; run it on its own, --attacks FGSM-eps0, so it stays out of the metrics)")
_add(AttackSpec("Square", torchattacks.Square,
                {"norm": "Linf", "eps": 8 / 255, "n_queries": 5000, "n_restarts": 1}, True, 8 / 255,
                suite=False, setting="query"),
     description="Square (query black-box), Linf eps 8/255, 5000 queries")
_add(AttackSpec("SPSA", TargetedSPSA, {"eps": 8 / 255}, True, 8 / 255, suite=False,
                setting="query"),
     description="SPSA (query black-box), eps 8/255")

def parse_attacks(text: str | Sequence[str] | None) -> list[AttackSpec]:
    """``'FGSM,PGD'`` / ``'suite'`` / ``'sweep'`` / ``'none'`` -> attack specs (strict lookup)."""
    if text is None:
        names: list[str] = list(SUITE)
    else:
        items = text.split(",") if isinstance(text, str) else list(text)
        names = []
        for item in (i.strip() for i in items if i.strip()):
            key = normalize_name(item)
            if key == "none":
                continue
            if key in ("suite", "all", "white-box"):
                names.extend(SUITE)
            elif key == "sweep":
                names.extend(SWEEP)
            else:
                names.append(ATTACKS.entry(item).name)
    seen: dict[str, AttackSpec] = {}
    for n in names:
        seen.setdefault(normalize_name(n), ATTACKS.get(n))
    return list(seen.values())


def parse_modes(text: str | Sequence[str] | None) -> list[str]:
    items = ATTACK_MODES if text is None else (text.split(",") if isinstance(text, str) else text)
    modes = []
    for m in (i.strip().lower() for i in items if i.strip()):
        if m not in ATTACK_MODES:
            raise AttackError(f"Unknown mode '{m}'. Available: {', '.join(ATTACK_MODES)}")
        if m not in modes:
            modes.append(m)
    return modes


def parse_threat_models(text: str | Sequence[str] | None) -> list[str]:
    items = ("standard",) if text is None else (text.split(",") if isinstance(text, str) else text)
    out = []
    for t in (normalize_name(i) for i in items if i.strip()):
        if t not in THREAT_MODELS:
            raise AttackError(f"Unknown threat model '{t}'. Available: {', '.join(THREAT_MODELS)}")
        if t not in out:
            out.append(t)
    return out


@dataclass
class AttackView:
    """The model and input space an attack operates in under a threat model."""

    model: nn.Module
    to_input: Callable[[torch.Tensor], torch.Tensor]
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def attack_view(model: Classifier, threat_model: str, num_classes: int) -> AttackView:
    """How ``model`` is presented to torchattacks under ``threat_model``."""
    if threat_model == "standard":
        return AttackView(model, lambda x: x, lambda _x, y: (y + 1) % num_classes)
    if threat_model == "beard-compat":
        transform = model.input_transform
        if isinstance(transform, nn.Sequential):  # Normalize followed by a whitening
            normalize, rest = transform[0], nn.Sequential(*list(transform)[1:])
            bare: nn.Module = nn.Sequential(rest, model.net)
        else:
            normalize, bare = transform, model.net
        if not isinstance(normalize, Normalize):
            raise AttackError("beard-compat needs a model whose first layer is Normalize")
        return AttackView(bare.eval(), normalize, lambda _x, y: (y + 1) % 10)
    raise AttackError(f"Unknown threat model '{threat_model}'. Available: {', '.join(THREAT_MODELS)}")


def build_attack(spec: AttackSpec, model: nn.Module, *, threat_model: str = "standard",
                 num_classes: int = 10, seed: int = 0,
                 overrides: dict[str, Any] | None = None) -> torchattacks.Attack:
    """The torchattacks object for ``spec`` with paper parameters (+ preset overrides)."""
    params = dict(spec.params)
    factory = spec.factory
    if threat_model == "beard-compat":
        params.update(spec.compat_params)
        factory = spec.compat_factory or spec.factory
    if spec.name == "AutoAttack":
        params.update(n_classes=num_classes, seed=seed)
    if spec.name == "Square":
        params.update(seed=seed)
    params.update(overrides or {})
    return factory(model, **params)


@dataclass
class AttackResult:
    """Accuracy (%) under one attack and mode, and the wall-clock seconds of the whole pass."""

    attack: str
    mode: str
    accuracy: float
    seconds: float
    n_images: int
    eps: float | None
    # per image: correctly classified after the attack (clean: on the clean input)
    outcomes: torch.Tensor | None = None
    # images the attack ran on (all of them, except under ``standard``, where images the model
    # already misclassifies on clean input count as lost and are not attacked)
    n_attacked: int | None = None


def clean_accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, *,
                   threat_model: str = "standard", batch_size: int = 500,
                   device: str | torch.device = "cpu") -> AttackResult:
    """Clean accuracy through the same input path the attacks use (timed like an attack)."""
    view = attack_view(model.eval(), threat_model, 10)
    device = torch.device(device)
    outcomes = torch.zeros(len(images), dtype=torch.bool)

    def clean_batch(b: slice) -> int:
        hits = correct_mask(view.model, view.to_input(to_device(images[b], device)),
                            to_device(labels[b], device))
        outcomes[b] = hits
        return int(hits.sum())

    correct, seconds = timed_batches(len(images), batch_size, device, clean_batch)
    return AttackResult("clean", "clean", 100.0 * correct / len(images), seconds, len(images), None,
                        outcomes, len(images))


def run_attack(spec: AttackSpec, model: Classifier, images: torch.Tensor, labels: torch.Tensor, *,
               mode: str, threat_model: str = "standard", num_classes: int = 10,
               batch_size: int = 500, device: str | torch.device = "cpu", seed: int = 0,
               overrides: dict[str, Any] | None = None,
               clean_correct: torch.Tensor | None = None) -> AttackResult:
    """Attack ``images`` ([0,1]) and return the attacked accuracy and the time of the whole pass.

    The timer covers adversarial generation and the prediction on the adversarial images of
    every batch, as the AE metric requires. Targeted mode aims at ``(y + 1) mod C`` (``% 10`` under
    beard-compat).

    Under ``standard``, ``clean_correct`` (the clean outcomes of the same model and images) marks
    the images worth attacking: one the model already gets wrong counts as not robust and is not
    attacked (the AutoAttack / RobustBench convention). Accuracy stays a share of all images.
    Under ``beard-compat`` every image is attacked, as BEARD did: its clamp in normalized space
    can turn a wrong prediction into a right one, so skipping would change its numbers.
    """
    if mode == "targeted" and not spec.targeted:
        raise AttackError(f"{spec.name} has no targeted mode")
    if mode not in ATTACK_MODES:
        raise AttackError(f"Unknown mode '{mode}'. Available: {', '.join(ATTACK_MODES)}")
    device = torch.device(device)
    model = model.to(device).eval()
    view = attack_view(model, threat_model, num_classes)
    torch.manual_seed(seed)  # attacks with random starts draw from the global generator
    atk = build_attack(spec, view.model, threat_model=threat_model, num_classes=num_classes,
                       seed=seed, overrides=overrides)
    atk.set_device(device)
    if mode == "targeted":
        atk.set_mode_targeted_by_function(view.target, quiet=True)

    attacked = torch.arange(len(images))
    if clean_correct is not None and threat_model == "standard":
        attacked = torch.nonzero(clean_correct.cpu()).flatten()
    outcomes = torch.zeros(len(images), dtype=torch.bool)

    def attack_batch(b: slice) -> int:
        idx = attacked[b]
        y = to_device(labels[idx], device)
        hits = correct_mask(view.model, atk(view.to_input(to_device(images[idx], device)), y), y)
        outcomes[idx] = hits
        return int(hits.sum())

    with input_gradients_only(model):
        correct, seconds = timed_batches(len(attacked), batch_size, device, attack_batch)
    return AttackResult(spec.name, mode, 100.0 * correct / len(images), seconds, len(images),
                        spec.eps, outcomes, len(attacked))
