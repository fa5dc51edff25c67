"""The stages of a cell: distill (or load) -> retrain -> measure, each cached by a content key
of everything that determines its result, so a rerun skips finished work and a killed run
resumes where it stopped."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rome_bench.attacks import blackbox
from rome_bench.attacks import suite as attacks_mod
from rome_bench.attacks.suite import AttackSpec, clean_accuracy, run_attack
from rome_bench.core.cache import (
    Cache,
    CorruptEntry,
    content_key,
    read_cached,
    read_json_file,
    report_corrupt,
)
from rome_bench.core.catalog import METHODS
from rome_bench.core.records import (
    Record,
    RecordStore,
    environment,
    pack_outcomes,
    unpack_outcomes,
    versions,
)
from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import atomic_torch_save, atomic_write_json, file_lock, load_tensor_file
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
                       version=__version__, data_root=str(plan.config.data_root or ""),
                       **plan.compute_key)


def cached_distilled(cell: Cell, plan: Plan, cache: Cache) -> tuple[DistilledSet, str] | None:
    """``cell``'s distilled set and its key when the cache holds it (and ``fresh`` is off).

    A task that retrains on a set distilled by another task (the Ray executor) loads it here,
    without needing the training data.
    """
    if METHODS.entry(cell.method).meta.get("ipc_independent") or plan.config.fresh:
        return None  # the whole training set is never cached
    key = distill_key(cell, plan)

    def load_set(p: Path) -> DistilledSet:
        found = DistilledSet.load(p)
        found.validate(plan.dataset.num_classes, plan.dataset.channels, str(p))
        return found

    cached = read_cached(cache.distilled(key), load_set, "distilled set")
    if cached is None:
        return None
    # a run killed between saving the set and deleting its checkpoint left the checkpoint; a
    # read-only cache keeps it (nothing reads a checkpoint beside a finished set)
    with contextlib.suppress(OSError):
        cache.checkpoint(key).unlink(missing_ok=True)
    return cached, key


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
    ckpt_path = cache.checkpoint(key)
    cacheable = not entry.meta.get("ipc_independent")
    if ipc > 0:
        for c in range(train.num_classes):
            have = int((train.labels == c).sum())
            if have < ipc:
                raise DataError(f"IPC {ipc} is larger than class {c}'s {have} training images")
    if plan.config.fresh:
        # missing_ok: another process on the same cache may finish this cell at the same time
        ckpt_path.unlink(missing_ok=True)

    started = time.perf_counter()
    total = cell.params.get("iterations")
    # the stat of the checkpoint this attempt resumed from, until the method saves a new one: a
    # method that fails in between was most likely fed a checkpoint that loads but is malformed
    resumed_from: list[os.stat_result | None] = []

    def save_checkpoint(state: dict[str, Any], iteration: int) -> None:
        resumed_from.clear()
        atomic_torch_save({"state": state, "iteration": iteration}, ckpt_path)
        if plan.config.progress_lines:
            of = f"/{total}" if total else ""
            log(f"  {cell.label or cell.method} IPC {ipc}: iteration {iteration}{of} checkpointed "
                f"after {time.perf_counter() - started:.0f} s")

    def resume() -> tuple[dict[str, Any], int] | None:
        seen = None
        with contextlib.suppress(FileNotFoundError):
            seen = os.stat(ckpt_path)
        found = read_cached(ckpt_path, load_checkpoint, "distillation checkpoint")
        if found is None:
            return None
        resumed_from[:] = [seen]
        log(f"  resuming {cell.method} IPC {ipc} from iteration {found[1]}")
        return found

    def attempt() -> Any:
        cfg = MethodConfig(seed=plan.config.seed, preset=plan.preset.name, dataset=plan.dataset,
                           params=dict(cell.params), device=plan.device,
                           show_progress=plan.config.show_progress, checkpoint=save_checkpoint,
                           resume=resume)
        return entry.obj(train, max(ipc, 0), cfg)

    try:
        result = attempt()
    except Exception as exc:
        if not resumed_from:
            raise
        # set aside, so the second attempt starts from scratch (and a third never meets it)
        report_corrupt(ckpt_path, "distillation checkpoint", exc, resumed_from[0])
        resumed_from.clear()
        result = attempt()
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
    ckpt_path.unlink(missing_ok=True)
    return result, key


@contextlib.contextmanager
def distill_lock(cell: Cell, plan: Plan, cache: Cache, log: Callable[[str], None]
                 ) -> Iterator[None]:
    """Hold the cache's lock on ``cell``'s distillation unless its set is already cached.

    Two runs sharing a cache (or two workers) that reach the same cell would otherwise distill
    it twice side by side, each resuming from checkpoints the other is still writing; with the
    lock the second waits and then finds the set in the cache.
    """
    key = distill_key(cell, plan)
    if METHODS.entry(cell.method).meta.get("ipc_independent") or (
            cache.distilled(key).exists() and not plan.config.fresh):
        yield
        return
    label = cell.label or cell.method
    with file_lock(cache.root / "locks" / f"distill-{key}.lock",
                   on_wait=lambda: log(f"  {label} IPC {cell.ipc}: another process is distilling "
                                       "this set; waiting for it")):
        yield


def load_checkpoint(path: Path) -> tuple[dict[str, Any], int]:
    """A distillation checkpoint's method state and iteration (CorruptEntry if malformed)."""
    obj = load_tensor_file(path, "distillation checkpoint")
    if not (isinstance(obj, dict) and isinstance(obj.get("state"), dict)
            and isinstance(obj.get("iteration"), int) and obj["iteration"] >= 0):
        raise CorruptEntry("not a {'state': dict, 'iteration': int} checkpoint")
    return obj["state"], obj["iteration"]


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
                      **plan.compute_key, **extra)
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

    if not plan.config.fresh:
        def load_model(p: Path) -> Classifier:
            cached = fresh_model()  # strict: a missing, extra or misshapen tensor is corrupt
            cached.load_state_dict(load_tensor_file(p, "cached model"))
            if not all(torch.isfinite(t).all() for t in cached.state_dict().values()
                       if t.is_floating_point()):
                raise CorruptEntry("weights contain NaN or inf")
            return cached

        cached_model = read_cached(path, load_model, "trained model")
        if cached_model is not None:
            return cached_model.eval(), key
    model = fresh_model()
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
                      code=plan.code_of("attacks", attacks_mod), version=__version__,
                      **plan.compute_key)
    path = cache.measurement(key)
    name = attack.name if attack is not None else "clean"
    n = len(test.labels)
    cached = None if plan.config.fresh else read_cached(
        path, lambda p: checked_measurement(read_json_file(p), name, mode, n), "measurement")
    if cached is not None:
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


MEASUREMENT_FIELDS = {"attack": str, "mode": str, "accuracy": (int, float),
                      "seconds": (int, float), "n_images": int, "eps": (int, float, type(None)),
                      "n_attacked": (int, type(None)), "outcomes": str}


def checked_measurement(m: Any, attack: str, mode: str, n_images: int) -> dict[str, Any]:
    """``m`` if it is a whole measurement of ``attack``/``mode`` on ``n_images`` images whose
    accuracy agrees with its per-image outcomes; :class:`CorruptEntry` otherwise.

    A cached measurement that parses but lacks a field or disagrees with itself would become a
    silently wrong number in the records, so it counts as corrupt.
    """
    if not isinstance(m, dict):
        raise CorruptEntry(f"expected a JSON object, got {type(m).__name__}")
    for name, kind in MEASUREMENT_FIELDS.items():
        if name not in m:
            raise CorruptEntry(f"lacks '{name}'")
        if not isinstance(m[name], kind) or isinstance(m[name], bool):
            raise CorruptEntry(f"'{name}' has the wrong type ({type(m[name]).__name__})")
    if (m["attack"], m["mode"], m["n_images"]) != (attack, mode, n_images):
        raise CorruptEntry(f"holds {m['attack']}/{m['mode']} on {m['n_images']} images, expected "
                           f"{attack}/{mode} on {n_images}")
    survived = unpack_outcomes(m["outcomes"], n_images)  # RecordError on a bad length or digit
    if not (math.isfinite(m["seconds"]) and m["seconds"] >= 0):
        raise CorruptEntry(f"'seconds' is {m['seconds']}")
    if not math.isclose(m["accuracy"], 100.0 * survived.sum() / n_images, abs_tol=1e-9):
        raise CorruptEntry(f"accuracy {m['accuracy']} disagrees with its outcomes "
                           f"({int(survived.sum())}/{n_images} images)")
    if m["n_attacked"] is not None and not 0 <= m["n_attacked"] <= n_images:
        raise CorruptEntry(f"'n_attacked' is {m['n_attacked']} for {n_images} images")
    return m


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
    vers, env = versions(), environment(plan.device)
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
            versions=vers, n_attacked=m["n_attacked"], outcomes=m["outcomes"], environment=env))
    return records


def prepare_device(device: str, threads: int | None = None) -> None:
    """Set up this process for a run's computations: ``threads`` torch threads (None: leave
    torch's default), and on CUDA let cuDNN pick the fastest convolution kernels for the fixed
    shapes of a run (the same arithmetic, in full precision; attacks never use mixed
    precision)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if str(device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def computing(plan: Plan) -> Iterator[None]:
    """:func:`prepare_device` for the plan's device and threads while the block runs, then the
    process's settings as before (a run called as a library leaves its caller's threads)."""
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    prepare_device(plan.device, plan.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


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
    with distill_lock(cell, plan, cache, log):
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
