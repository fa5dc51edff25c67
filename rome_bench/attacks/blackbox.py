"""Black-box settings: transfer attacks (craft on a surrogate, feed every victim) and query attacks.

Three settings, chosen with ``--setting`` (docs/design.md, "Attacks and threat models"):

``white-box``
    the attack sees the gradients of the model it attacks (the default suite).
``transfer``
    adversarial examples are crafted on a *surrogate* with a transferable attack (FGSM, PGD,
    PGD-L2, CW) and fed to every *victim*. Crafting is the expensive part, so it happens once
    per (surrogate, attack, mode, threat model) and every victim is evaluated on the same
    tensors: the cost grows with the number of surrogates, not surrogates x victims. The
    diagonal (surrogate == victim) is the white-box number of the same attack; the Table-2
    metrics leave it out so that they measure transfer only.
``query``
    Square (Linf 8/255, 5000 queries) and SPSA (8/255), targeted and untargeted; they only
    query the model's outputs. They run through the same cached measurement as white-box
    attacks and are recorded with ``setting=query``.

A transfer record is written for the *victim* (``method``), with ``source_model`` naming the
surrogate; its ``seconds`` are the surrogate's crafting time plus the victim's prediction time,
the cost an attacker pays for that one victim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from rome_bench.attacks.suite import AttackSpec, attack_view, build_attack
from rome_bench.attacks.timing import count_correct, input_gradients_only, timed_batches
from rome_bench.core.cache import Cache, CorruptEntry, code_version, content_key, read_cached, read_json_file
from rome_bench.core.catalog import ATTACKS
from rome_bench.core.records import SETTINGS
from rome_bench.core.registry import RomeBenchError, normalize_name
from rome_bench.core.storage import atomic_write_json
from rome_bench.core.version import __version__
from rome_bench.models.convnet import Classifier, Normalize

TRANSFER_DEFAULT = ("FGSM", "PGD", "PGD-L2", "CW")
QUERY_DEFAULT = ("Square", "SPSA")


class SettingError(RomeBenchError):
    """A black-box request that cannot be honoured."""


def parse_settings(text: str | Sequence[str] | None) -> list[str]:
    """``'white-box,transfer'`` -> ``['white-box', 'transfer']`` (strict, order kept, no repeats).

    >>> parse_settings("query, white-box")
    ['query', 'white-box']
    """
    items = ["white-box"] if text is None else (text.split(",") if isinstance(text, str)
                                                 else list(text))
    out: list[str] = []
    for raw in (i.strip() for i in items if i.strip()):
        key = normalize_name(raw).replace("_", "-")
        key = {"whitebox": "white-box", "white": "white-box", "all": "all"}.get(key, key)
        names = list(SETTINGS) if key == "all" else [key]
        for name in names:
            if name not in SETTINGS:
                raise SettingError(f"Unknown setting '{raw}'. Available: {', '.join(SETTINGS)}")
            if name not in out:
                out.append(name)
    if not out:
        raise SettingError(f"--setting names no setting. Available: {', '.join(SETTINGS)}")
    return out


def transfer_specs(attacks: list[AttackSpec], explicit: bool) -> list[AttackSpec]:
    """The transferable attacks among ``attacks`` (the run's ``--attacks``).

    Raises when the user named attacks explicitly and none of them can be transferred, so a
    ``--setting transfer`` run never silently measures nothing.
    """
    chosen = [a for a in attacks if a.transferable]
    if not chosen and explicit:
        allowed = ", ".join(e.obj.name for e in ATTACKS.entries() if e.obj.transferable)
        raise SettingError(f"--setting transfer needs a transferable attack in --attacks "
                           f"(one of {allowed})")
    return chosen


def query_specs(attacks: list[AttackSpec], settings: list[str]) -> list[AttackSpec]:
    """Query attacks to run: those named in ``--attacks``, else Square and SPSA under ``query``."""
    named = [a for a in attacks if a.setting == "query"]
    if named or "query" not in settings:
        return named
    return [ATTACKS.get(n) for n in QUERY_DEFAULT]


# -- crafting once, evaluating many ----------------------------------------------------------
@dataclass
class Crafted:
    """Adversarial examples in the attack's input space and the seconds crafting took."""

    inputs: torch.Tensor
    seconds: float
    normalize: Normalize | None  # set under beard-compat: the space the inputs live in


def craft(spec: AttackSpec, model: Classifier, images: torch.Tensor, labels: torch.Tensor, *,
          mode: str, threat_model: str = "standard", num_classes: int = 10,
          batch_size: int = 500, device: str | torch.device = "cpu", seed: int = 0,
          overrides: dict[str, Any] | None = None) -> Crafted:
    """Craft adversarial examples for ``images`` ([0,1], NCHW) on the surrogate ``model``.

    Follows :func:`rome_bench.attacks.run_attack` step for step (seeding, batching, targets),
    so the surrogate's accuracy on the result equals its white-box accuracy under ``spec``.

    >>> from rome_bench.models.convnet import build_model
    >>> m = build_model("convnet-w32", num_classes=10)
    >>> c = craft(ATTACKS.get("FGSM"), m, torch.rand(4, 3, 32, 32), torch.arange(4), mode="untargeted")
    >>> c.inputs.shape
    torch.Size([4, 3, 32, 32])
    """
    if mode == "targeted" and not spec.targeted:
        raise SettingError(f"{spec.name} has no targeted mode")
    device = torch.device(device)
    model = model.to(device).eval()
    view = attack_view(model, threat_model, num_classes)
    torch.manual_seed(seed)
    atk = build_attack(spec, view.model, threat_model=threat_model, num_classes=num_classes,
                       seed=seed, overrides=overrides)
    atk.set_device(device)
    if mode == "targeted":
        atk.set_mode_targeted_by_function(view.target, quiet=True)
    out: list[torch.Tensor] = []

    def craft_batch(b: slice) -> None:
        out.append(atk(view.to_input(images[b].to(device)), labels[b].to(device)).detach())

    with input_gradients_only(model):
        _, seconds = timed_batches(len(images), batch_size, device, craft_batch)
    normalize = view.to_input if isinstance(view.to_input, Normalize) else None
    return Crafted(torch.cat(out).cpu(), seconds, normalize)


def _same_normalize(a: Normalize, b: Normalize) -> bool:
    return (a.mean.shape == b.mean.shape and bool(torch.equal(a.mean.cpu(), b.mean.cpu()))
            and bool(torch.equal(a.std.cpu(), b.std.cpu())))


def victim_accuracy(crafted: Crafted, victim: Classifier, labels: torch.Tensor, *,
                    threat_model: str = "standard", num_classes: int = 10,
                    batch_size: int = 500, device: str | torch.device = "cpu"
                    ) -> tuple[float, float]:
    """Accuracy (%) of ``victim`` on crafted examples, and the seconds of that prediction.

    Under ``standard`` the crafted tensors are [0,1] images and go in as they are. Under
    ``beard-compat`` they live in the surrogate's normalized space; a victim with the same
    normalization takes them unchanged, any other gets them mapped back to pixels first.
    """
    device = torch.device(device)
    view = attack_view(victim.to(device).eval(), threat_model, num_classes)
    convert: Callable[[torch.Tensor], torch.Tensor] = lambda z: z  # noqa: E731
    if crafted.normalize is not None:
        target = view.to_input
        if not (isinstance(target, Normalize) and _same_normalize(crafted.normalize, target)):
            src = crafted.normalize.to(device)
            convert = lambda z: target(src.inverse(z))  # noqa: E731
    correct, seconds = timed_batches(len(labels), batch_size, device, lambda b: count_correct(
        view.model, convert(crafted.inputs[b].to(device)), labels[b].to(device)))
    return 100.0 * correct / max(len(labels), 1), seconds


@dataclass
class TransferModel:
    """A model taking part in a transfer study, as surrogate and as victim."""

    name: str  # the method label written in records
    key: str  # content key of the trained weights (cache keys build on it)
    model: Classifier
    ipc: int = 0
    repeat: int = 0


@dataclass
class TransferResult:
    """One (surrogate, victim, attack, mode, threat model) measurement."""

    surrogate: str
    victim: str
    attack: str
    mode: str
    threat_model: str
    eps: float | None
    accuracy: float
    seconds: float  # crafting on the surrogate + prediction by the victim
    craft_seconds: float
    n_images: int


def checked_transfer(m: Any, n_images: int) -> dict[str, Any]:
    """``m`` if it is a whole cached transfer measurement on ``n_images`` images;
    :class:`CorruptEntry` otherwise (a wrong number must never reach the records)."""
    if not isinstance(m, dict):
        raise CorruptEntry(f"expected a JSON object, got {type(m).__name__}")
    for name in ("accuracy", "seconds", "craft_seconds", "n_images"):
        value = m.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise CorruptEntry(f"'{name}' is missing or not a number")
    if m["n_images"] != n_images:
        raise CorruptEntry(f"measured on {m['n_images']} images, expected {n_images}")
    if not 0 <= m["accuracy"] <= 100 or m["seconds"] < 0 or m["craft_seconds"] < 0:
        raise CorruptEntry("accuracy or timings out of range")
    return m


def transfer_study(models: list[TransferModel], images: torch.Tensor, labels: torch.Tensor,
                   attacks: list[AttackSpec], modes: list[str], threat_models: list[str], *,
                   num_classes: int = 10, batch_size: int = 500,
                   device: str | torch.device = "cpu", seed: int = 0,
                   overrides: Callable[[str], dict[str, Any]] | None = None,
                   cache: Cache | None = None, context: dict[str, Any] | None = None,
                   fresh: bool = False, show_progress: bool = False,
                   surrogates: list[TransferModel] | None = None) -> list[TransferResult]:
    """Every model as surrogate x every model as victim, crafting once per surrogate.

    ``models`` are the victims and, unless ``surrogates`` is given, also the surrogates.

    With a ``cache``, each (crafting, victim) measurement is stored under a content key built
    from the surrogate's and victim's weight keys, the attack and its parameters, the mode, the
    threat model and ``context`` (test subset, dataset, seed...); when every victim of a
    crafting is cached the crafting is skipped altogether.

    >>> from rome_bench.models.convnet import build_model
    >>> ms = [TransferModel(n, n, build_model("convnet-w32", num_classes=10)) for n in "ab"]
    >>> rs = transfer_study(ms, torch.rand(4, 3, 32, 32), torch.arange(4), [ATTACKS.get("FGSM")],
    ...                     ["untargeted"], ["standard"])
    >>> sorted((r.surrogate, r.victim) for r in rs)
    [('a', 'a'), ('a', 'b'), ('b', 'a'), ('b', 'b')]
    """
    sources = models if surrogates is None else surrogates
    for group in (models, sources):
        names = [m.name for m in group]
        if len(set(names)) != len(names):
            raise SettingError(f"transfer models need distinct names, got {names}")
    if len(images) != len(labels) or len(images) == 0:
        raise SettingError("transfer needs a non-empty set of images with one label each")
    jobs = [(s, a, mode, t) for t in threat_models for s in sources for a in attacks
            for mode in modes if mode != "targeted" or a.targeted]
    results: list[TransferResult] = []
    code = code_version(craft)
    for surrogate, spec, mode, threat in tqdm(jobs, desc="transfer", leave=False,
                                               dynamic_ncols=True, disable=not show_progress):
        over = overrides(spec.name) if overrides else {}
        craft_key = content_key(stage="craft", model=surrogate.key, attack=spec.name,
                                params=spec.params, overrides=over, mode=mode, threat=threat,
                                context=context or {}, seed=seed, n=len(images), code=code,
                                version=__version__)
        found: dict[str, dict[str, Any]] = {}
        paths = {}
        for victim in models:
            if cache is None:
                continue
            paths[victim.name] = cache.measurement(content_key(stage="transfer", craft=craft_key,
                                                               victim=victim.key))
            hit = None if fresh else read_cached(
                paths[victim.name], lambda p: checked_transfer(read_json_file(p), len(labels)),
                "transfer measurement")
            if hit is not None:
                found[victim.name] = hit
        crafted = None
        if len(found) < len(models):
            crafted = craft(spec, surrogate.model, images, labels, mode=mode, threat_model=threat,
                            num_classes=num_classes, batch_size=batch_size, device=device,
                            seed=seed, overrides=over)
        for victim in models:
            m = found.get(victim.name)
            if m is None:
                assert crafted is not None
                acc, pred_s = victim_accuracy(crafted, victim.model, labels, threat_model=threat,
                                              num_classes=num_classes, batch_size=batch_size,
                                              device=device)
                m = {"accuracy": acc, "seconds": crafted.seconds + pred_s,
                     "craft_seconds": crafted.seconds, "n_images": len(labels)}
                if cache is not None:
                    atomic_write_json(paths[victim.name], m)
            results.append(TransferResult(surrogate.name, victim.name, spec.name, mode, threat,
                                          spec.eps, m["accuracy"], m["seconds"],
                                          m["craft_seconds"], m["n_images"]))
    return results
