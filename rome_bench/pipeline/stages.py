"""The stages of a cell: distill (or load) -> retrain -> measure, each cached by a content key
of everything that determines its result, so a rerun skips finished work and a killed run
resumes where it stopped."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import torch
from tqdm.auto import tqdm

from rome_bench.attacks import blackbox
from rome_bench.attacks import suite as attacks_mod
from rome_bench.attacks.suite import AttackSpec, clean_accuracy, run_attack
from rome_bench.core.cache import Cache, content_key
from rome_bench.core.catalog import METHODS
from rome_bench.core.records import Record, RecordStore, pack_outcomes, unpack_outcomes, versions
from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import atomic_torch_save, atomic_write_json, load_tensor_file, read_json
from rome_bench.core.version import __version__
from rome_bench.data.augment import DSA
from rome_bench.data.datasets import (
    DataError,
    ImageSet,
    load_dataset,
    take_test_subset,
)
from rome_bench.data.distilled import DistilledSet
from rome_bench.methods.contract import MethodConfig
from rome_bench.models import training as train_mod
from rome_bench.models.convnet import Classifier, LinearTransform, build_model
from rome_bench.pipeline.config import Cell, Plan
from rome_bench.pipeline.protocol import resolve_retrain


def distill_key(cell: Cell, plan: Plan) -> str:
    """The cache key of ``cell``'s distilled set (and of its distillation checkpoint)."""
    entry = METHODS.entry(cell.method)
    return content_key(stage="distill", method=cell.method, dataset=plan.dataset.name,
                       ipc=cell.ipc, preset=plan.preset.name, seed=plan.config.seed,
                       params=cell.params, code=plan.code_of(f"method:{cell.method}", entry.obj),
                       version=__version__, data_root=str(plan.config.data_root or ""))


def cached_distilled(cell: Cell, plan: Plan, cache: Cache) -> tuple[DistilledSet, str] | None:
    """``cell``'s distilled set and its key when the cache holds it (and ``fresh`` is off).

    A task that retrains on a set distilled by another task (the Ray executor) loads it here,
    without needing the training data.
    """
    if METHODS.entry(cell.method).meta.get("ipc_independent") or plan.config.fresh:
        return None  # the whole training set is never cached
    key = distill_key(cell, plan)
    path = cache.distilled(key)
    return (DistilledSet.load(path), key) if path.exists() else None


def distill(cell: Cell, train: ImageSet, plan: Plan, cache: Cache, log: Callable[[str], None]
            ) -> tuple[DistilledSet, str]:
    """The distilled set of ``cell`` (from the cache when possible) and its cache key."""
    found = cached_distilled(cell, plan, cache)
    if found is not None:
        return found
    entry = METHODS.entry(cell.method)
    ipc = cell.ipc
    key = distill_key(cell, plan)
    path = cache.distilled(key)
    cacheable = not entry.meta.get("ipc_independent")
    if ipc > 0:
        for c in range(train.num_classes):
            have = int((train.labels == c).sum())
            if have < ipc:
                raise DataError(f"IPC {ipc} is larger than class {c}'s {have} training images")
    ckpt_path = cache.checkpoint(key)
    if plan.config.fresh and ckpt_path.exists():
        ckpt_path.unlink()

    started = time.perf_counter()
    total = cell.params.get("iterations")

    def save_checkpoint(state: dict[str, Any], iteration: int) -> None:
        atomic_torch_save({"state": state, "iteration": iteration}, ckpt_path)
        if plan.config.progress_lines:
            of = f"/{total}" if total else ""
            log(f"  {cell.label or cell.method} IPC {ipc}: iteration {iteration}{of} checkpointed "
                f"after {time.perf_counter() - started:.0f} s")

    def resume() -> tuple[dict[str, Any], int] | None:
        if not ckpt_path.exists():
            return None
        obj = load_tensor_file(ckpt_path, "distillation checkpoint")
        log(f"  resuming {cell.method} IPC {ipc} from iteration {obj['iteration']}")
        return obj["state"], int(obj["iteration"])

    cfg = MethodConfig(seed=plan.config.seed, preset=plan.preset.name, dataset=plan.dataset,
                       params=dict(cell.params), device=plan.device,
                       show_progress=plan.config.show_progress, checkpoint=save_checkpoint,
                       resume=resume)
    result = entry.obj(train, max(ipc, 0), cfg)
    if not isinstance(result, DistilledSet):
        raise RomeBenchError(f"method '{cell.method}' returned {type(result).__name__}, "
                             "not a DistilledSet")
    result.images = result.images.detach().cpu().float()
    result.labels = result.labels.detach().cpu()
    result.validate(plan.dataset.num_classes, plan.dataset.channels,
                    f"output of method '{cell.method}'")
    # synthetic images are not clamped to [0,1] (docs/design.md, "Conventions"): record how
    # much of the set lies outside it
    result.meta = {**result.meta, "out_of_range": result.out_of_range,
                   "method": cell.label or cell.method,
                   "dataset": plan.dataset.name, "ipc": result.ipc if ipc <= 0 else ipc,
                   "preset": plan.preset.name, "seed": plan.config.seed, "version": __version__,
                   "created": datetime.now().isoformat(timespec="seconds")}
    if cacheable:
        result.save(path)
        if ckpt_path.exists():
            ckpt_path.unlink()
    return result, key


def retrain(distilled: DistilledSet, distill_key: str, cell: Cell, repeat: int, plan: Plan,
            cache: Cache, log: Callable[[str], None] | None = None) -> tuple[Classifier, str]:
    """A freshly trained model on ``distilled`` (cached by everything that determines it).

    With ``plan.config.progress_lines``, a finished training is reported through ``log``.
    """
    # the budget follows the requested IPC, not the stored image count (factorized sets such as
    # IDM's hold 4 sub-images per stored image)
    budget_ipc = cell.ipc if cell.ipc > 0 else distilled.ipc
    settings = resolve_retrain(plan.protocol, cell.method, budget_ipc, plan.preset, distilled)
    epochs = settings.epochs
    cfg = train_mod.TrainConfig(epochs=epochs, lr=settings.lr, decay_epoch=settings.decay_epoch,
                                augment=settings.augment, batch_size=settings.batch)
    seed = plan.config.seed * 1000 + repeat
    # TrainConfig holds epochs, lr, batch and augmentation; what else a protocol changes (the
    # whitening layer, soft or hard labels) enters the key when it differs from what ``native``
    # resolves for the same set, so native keys stay those of runs made before protocols existed
    native = resolve_retrain("native", cell.method, budget_ipc, plan.preset, distilled)
    extra = {} if settings == native else {"retrain": asdict(settings)}
    key = content_key(stage="retrain", distilled=distill_key, arch=plan.config.arch, cfg=cfg,
                      seed=seed, code=plan.code_of("train", train_mod), version=__version__,
                      **extra)
    path = cache.model(key)

    zca = distilled.meta.get("zca") if settings.use_zca else None
    labels = distilled.labels if settings.soft_labels else distilled.hard_labels

    def fresh_model() -> Classifier:
        # sets distilled in a whitened space (MTT/DATM with ZCA) keep the whitening inside the
        # model, after Normalize, so attacks still see [0,1] images
        whitening = (LinearTransform(zca["matrix"], zca["mean"])
                     if isinstance(zca, dict) else None)
        torch.manual_seed(seed)
        return build_model(plan.config.arch, num_classes=plan.dataset.num_classes,
                           channels=plan.dataset.channels, image_size=plan.dataset.image_size,
                           mean=plan.dataset.mean, std=plan.dataset.std, whitening=whitening)

    model = fresh_model()
    if path.exists() and not plan.config.fresh:
        model.load_state_dict(load_tensor_file(path, "cached model"))
        return model.eval(), key
    dsa = DSA(plan.dataset.mean, plan.dataset.std) if settings.augment else None
    label = cell.label or cell.method
    ipc_txt = "full" if cell.ipc == 0 else f"ipc{budget_ipc}"
    started = time.perf_counter()
    with tqdm(total=epochs, desc=f"retrain {label} {ipc_txt} #{repeat}", leave=False,
              disable=not plan.config.show_progress, dynamic_ncols=True) as bar:
        train_mod.train_model(model, distilled.images, labels, cfg, augment=dsa,
                              seed=seed, device=plan.device, progress=bar.update)
    atomic_torch_save(model.cpu().state_dict(), path)
    if plan.config.progress_lines and log is not None:
        where = "full-size" if cell.ipc == 0 else f"IPC {budget_ipc}"
        log(f"  {label} {where}: model {repeat + 1}/{plan.repeats} retrained in "
            f"{time.perf_counter() - started:.0f} s")
    return model.eval(), key


def measure(model: Classifier, model_key: str, test: ImageSet, attack: AttackSpec | None, mode: str,
            threat_model: str, plan: Plan, cache: Cache,
            clean: dict[str, Any] | None = None) -> dict[str, Any]:
    """One measurement (clean when ``attack`` is None), cached by model, attack and test set.

    ``clean`` is the clean measurement of the same model and threat model: under ``standard``
    its per-image outcomes decide which images are attacked (see ``run_attack``).
    """
    overrides = plan.preset.attacks.overrides.get(attack.name, {}) if attack else {}
    key = content_key(stage="measure", model=model_key, attack=attack.name if attack else "clean",
                      params=attack.params if attack else None, overrides=overrides, mode=mode,
                      threat=threat_model, test=plan.test_subset, dataset=plan.dataset.name,
                      data_root=str(plan.config.data_root or ""), seed=plan.config.seed,
                      code=plan.code_of("attacks", attacks_mod), version=__version__)
    path = cache.measurement(key)
    cached = None if plan.config.fresh else read_json(path)
    if cached is not None and "outcomes" in cached:
        return cached
    batch_size = plan.preset.attacks.batch_size_on(plan.device)
    if attack is None:
        res = clean_accuracy(model, test.images, test.labels, threat_model=threat_model,
                             batch_size=batch_size, device=plan.device)
    else:
        clean_correct = None
        if clean is not None:
            clean_correct = torch.from_numpy(unpack_outcomes(clean["outcomes"], len(test.labels)))
        res = run_attack(attack, model, test.images, test.labels, mode=mode,
                         threat_model=threat_model, num_classes=plan.dataset.num_classes,
                         batch_size=batch_size, device=plan.device, seed=plan.config.seed,
                         overrides=overrides, clean_correct=clean_correct)
    out = {"attack": res.attack, "mode": res.mode, "accuracy": res.accuracy,
           "seconds": res.seconds, "n_images": res.n_images, "eps": res.eps,
           "n_attacked": res.n_attacked, "outcomes": pack_outcomes(res.outcomes.numpy())}
    atomic_write_json(path, out)
    return out


def evaluate_model(model: Classifier, model_key: str, test: ImageSet, plan: Plan, cache: Cache, *,
                   method: str, ipc: int, repeat: int, source_note: str = "") -> list[Record]:
    """Clean accuracy and every (attack, mode) under every threat model, as records."""
    jobs: list[tuple[AttackSpec | None, str, str]] = []
    white = [a for a in plan.attacks if a.setting != "query"] if "white-box" in plan.settings else []
    for threat in plan.threat_models:
        jobs.append((None, "clean", threat))
        for atk in white + blackbox.query_specs(plan.attacks, plan.settings):
            for mode in plan.modes:
                if mode == "targeted" and not atk.targeted:
                    continue  # no targeted mode: left out of targeted tables, as published
                jobs.append((atk, mode, threat))
    vers = versions()
    records = []
    clean: dict[str, dict[str, Any]] = {}  # per threat model, measured once for all its attacks
    desc = f"attack {method} " + ("full" if ipc == 0 else f"ipc{ipc}") + f" #{repeat}"
    for atk, mode, threat in tqdm(jobs, desc=desc, leave=False, dynamic_ncols=True,
                                  disable=not plan.config.show_progress):
        m = measure(model, model_key, test, atk, mode, threat, plan, cache, clean.get(threat))
        if atk is None:
            clean[threat] = m
        records.append(Record(
            run_id=plan.run_id, method=method, dataset=plan.dataset.name, ipc=ipc,
            seed=plan.config.seed, repeat=repeat, arch=plan.config.arch, preset=plan.preset.name,
            threat_model=threat, setting=atk.setting if atk else "white-box", source_model=None,
            mode=mode, attack=m["attack"], eps=m["eps"], accuracy=m["accuracy"],
            seconds=m["seconds"], n_images=m["n_images"], protocol=plan.protocol,
            versions=vers, n_attacked=m["n_attacked"], outcomes=m["outcomes"]))
    return records


def prepare_device(device: str) -> None:
    """On CUDA let cuDNN pick the fastest convolution kernels for the fixed shapes of a run (the
    same arithmetic, in full precision; attacks never use mixed precision)."""
    if str(device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True


def load_test_set(plan: Plan) -> ImageSet:
    test = load_dataset(plan.dataset.name, "test", plan.config.data_root, plan.config.download)
    return take_test_subset(test, plan.test_subset, seed=0)


@dataclass
class CellOutcome:
    """A finished cell: its records and the wall-clock seconds of each stage (cache hits ~0)."""

    records: list[Record]
    seconds: dict[str, float]

    def summary(self, cell: Cell) -> str:
        clean = [r.accuracy for r in self.records if r.mode == "clean"]
        where = "(whole train set)" if cell.ipc == 0 else f"IPC {cell.ipc}"
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        return (f"  done {cell.label or cell.method} {where} in {sum(self.seconds.values()):.0f} s"
                f" ({stages})" + (f": clean {sum(clean) / len(clean):.1f}%" if clean else ""))


def run_model(cell: Cell, distilled: DistilledSet, distill_key: str, repeat: int, test: ImageSet,
              plan: Plan, cache: Cache, log: Callable[[str], None]
              ) -> tuple[list[Record], dict[str, float]]:
    """Retrain model ``repeat`` of ``cell`` on its distilled set and attack it: its records and
    the seconds of both stages. One model is the unit of work the executors share out."""
    start = time.perf_counter()
    model, mkey = retrain(distilled, distill_key, cell, repeat, plan, cache, log)
    retrained = time.perf_counter()
    ipc = cell.ipc if cell.ipc >= 0 else distilled.ipc
    recs = evaluate_model(model, mkey, test, plan, cache, method=cell.label or cell.method,
                          ipc=ipc, repeat=repeat)
    return recs, {"retrain": retrained - start, "attacks": time.perf_counter() - retrained}


def run_cell(cell: Cell, train: ImageSet, test: ImageSet, plan: Plan, cache: Cache,
             log: Callable[[str], None], store: RecordStore | None = None) -> CellOutcome:
    """Distill (or load) one cell, retrain its models (``plan.repeat_indices``), attack each.

    With ``store``, each model's records are appended as soon as they exist.
    """
    seconds = {"distill": 0.0, "retrain": 0.0, "attacks": 0.0}
    start = time.perf_counter()
    distilled, dkey = distill(cell, train, plan, cache, log)
    seconds["distill"] = time.perf_counter() - start
    records: list[Record] = []
    for repeat in plan.repeat_indices:
        recs, spent = run_model(cell, distilled, dkey, repeat, test, plan, cache, log)
        for stage, s in spent.items():
            seconds[stage] += s
        if store is not None:
            store.append(recs)
        records.extend(recs)
    return CellOutcome(records, seconds)
