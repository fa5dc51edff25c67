"""The benchmark pipeline: distill -> retrain -> attack -> records, cached and resumable.

Each stage is a plain function over small dataclasses. :func:`run` plans every cell first
(validating all names and inputs before any computation), then walks the cells; finished
distilled sets, models and measurements come from the cache, and records are appended after
every model, so a killed run loses at most the model in progress.

On a CPU the cells are independent jobs run by ``jobs`` worker processes, one thread each:
ConvNet work on a few hundred images barely scales across threads (a forward and backward pass
over 100 images took 0.655 s on one thread and 0.539 s on two on the 2-core development
machine), so two one-thread workers get more done than one two-thread process. Workers return their
records; the parent appends them in plan order, so records files do not depend on ``jobs``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rome_bench import __version__, blackbox, report
from rome_bench import attacks as attacks_mod
from rome_bench import train as train_mod
from rome_bench.attacks import AttackSpec, clean_accuracy, run_attack
from rome_bench.augment import DSA
from rome_bench.cache import Cache, code_version, content_key
from rome_bench.data import DATASETS, DataError, DatasetSpec, ImageSet, load_dataset, take_test_subset
from rome_bench.distilled import DistilledSet
from rome_bench.methods import METHODS, MethodConfig, resolve_budget
from rome_bench.models import ARCHS, Classifier, LinearTransform, build_model, load_tensor_file
from rome_bench.presets import DEFAULT_PRESET, PRESETS, Preset
from rome_bench.records import Record, RecordStore, versions
from rome_bench.registry import RomeBenchError
from rome_bench.storage import atomic_torch_save, atomic_write_json, read_json


class PlanError(RomeBenchError):
    """A run that cannot start as requested."""


@dataclass
class RunConfig:
    """Everything a run needs; the CLI maps flags to these fields one to one."""

    methods: list[str]
    dataset: str | None = None
    data_root: str | None = None
    download: bool = False
    ipcs: list[int] | None = None
    preset: str = DEFAULT_PRESET
    repeats: int | None = None
    # models 0..first_repeat-1 of every cell are skipped (measured by another process or machine)
    first_repeat: int = 0
    seed: int = 0
    arch: str = "convnet"
    out: str | None = None
    fresh: bool = False
    attacks: str | None = None
    modes: str | None = None
    threat_models: str | None = None
    test_subset: int | None = None
    device: str | None = None
    show_progress: bool = True
    # progress as log lines instead of bars (set in worker processes, whose bars would collide)
    progress_lines: bool = False
    jobs: int | None = 1  # worker processes; None = auto (see resolve_jobs)
    settings: str | None = None  # white-box | transfer | query, comma-separated


@dataclass
class Cell:
    """One (method, IPC) of the plan."""

    method: str
    ipc: int
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class Plan:
    """A validated run: resolved preset, dataset, cells, attacks and output folder."""

    config: RunConfig
    preset: Preset
    dataset: DatasetSpec
    cells: list[Cell]
    attacks: list[AttackSpec]
    modes: list[str]
    threat_models: list[str]
    test_subset: int | None
    repeats: int
    device: str
    out: Path
    run_id: str
    jobs: int = 1
    settings: list[str] = field(default_factory=lambda: ["white-box"])
    # code hashes taken once when the run is planned (see code_versions_for): every cache key of
    # the run uses them, so editing a file while a long run is going on cannot make a later
    # stage (a worker, the figures) look for the run's own results under another key
    code_versions: dict[str, str] = field(default_factory=dict)

    @property
    def repeat_indices(self) -> range:
        """The model indices this run trains and measures in every cell (seeds follow them)."""
        return range(self.config.first_repeat, self.repeats)

    def code_of(self, name: str, obj: Any) -> str:
        """The hash of ``obj``'s code taken when the run was planned (computed now if absent)."""
        if name not in self.code_versions:
            self.code_versions[name] = code_version(obj)
        return self.code_versions[name]

    def describe(self) -> str:
        lines = [f"rome-bench {__version__} run {self.run_id}",
                 f"  preset     {self.preset.name}: {self.preset.description}",
                 f"  scaled     {self.preset.scaled}",
                 f"  dataset    {self.dataset.name}" + (f" from {self.config.data_root}"
                                                        if self.config.data_root else ""),
                 f"  arch       {self.config.arch}, {self._models_text()}, seed "
                 f"{self.config.seed}, device {self.device}, {self.jobs} worker(s)",
                 f"  attacks    {', '.join(a.name for a in self.attacks) or 'none (clean only)'}"
                 f" | modes {', '.join(self.modes)} | threat {', '.join(self.threat_models)}",
                 f"  settings   {', '.join(self.settings)}",
                 f"  test       {self.test_subset or 'all'} images",
                 f"  output     {self.out}",
                 "  cells:"]
        for c in self.cells:
            ipc = "whole train set" if c.ipc == 0 else f"IPC {c.ipc}"
            entry = METHODS.entry(c.method)
            epochs = (self.preset.full_epochs if entry.meta.get("ipc_independent")
                      else self.preset.epochs(c.ipc, entry.meta.get("retrain_augment", True)))
            budget = ", ".join(f"{k}={v}" for k, v in sorted(c.params.items()) if k != "path")
            lines.append(f"    {c.label or c.method:<14} {ipc:<16} retrain {epochs} epochs"
                         + (f" | {budget}" if budget else ""))
        return "\n".join(lines)

    def _models_text(self) -> str:
        first, last = self.config.first_repeat, self.repeats - 1
        if first == 0:
            return f"{self.repeats} model(s) per cell"
        which = f"#{last}" if first == last else f"#{first}-#{last}"
        return f"models {which} of {self.repeats} per cell"


def parse_ipcs(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ipcs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise PlanError(f"--ipc must be comma-separated integers, got '{text}'") from exc
    if not ipcs or any(i <= 0 for i in ipcs):
        raise PlanError(f"--ipc values must be positive, got '{text}'")
    return ipcs


def expand_methods(names: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """``all`` / names / ``file:PATH`` -> (registry name, params, label) with strict lookup."""
    out: list[tuple[str, dict[str, Any], str]] = []
    for raw in names:
        raw = raw.strip()
        if not raw:
            continue
        if raw.lower() == "all":
            out.extend((e.name, {}, e.name) for e in METHODS.entries() if e.meta.get("in_all"))
            continue
        if raw.lower().startswith("file:"):
            path = raw[5:]
            if not path:
                raise PlanError("--method file:PATH needs a path")
            out.append(("file", {"path": path}, Path(path.partition("#")[0]).stem or "file"))
            continue
        entry = METHODS.entry(raw)
        if not entry.meta.get("implemented", True):
            entry.obj(None, 0, None)  # raises the placeholder's NotImplementedError
        out.append((entry.name, {}, entry.name))
    seen, unique = set(), []
    for item in out:
        key = (item[0], str(item[1]))
        if key not in seen:
            seen.add(key)
            unique.append(item)
    if not unique:
        raise PlanError("no method selected")
    return unique


def plan_run(config: RunConfig) -> Plan:
    """Resolve and validate every option (no computation yet)."""
    preset = PRESETS.get(config.preset)
    dataset = DATASETS.get(config.dataset or preset.dataset)
    if dataset.needs_root and not config.data_root:
        raise PlanError(f"dataset '{dataset.name}' needs --data-root (the '{preset.name}' preset "
                        "reads real CIFAR from disk)")
    ARCHS.get(config.arch)
    ipcs = config.ipcs or list(preset.ipcs)
    if any(i <= 0 for i in ipcs):
        raise PlanError("--ipc values must be positive")
    repeats = config.repeats if config.repeats is not None else preset.repeats
    if repeats <= 0:
        raise PlanError("--repeats must be positive")
    if not 0 <= config.first_repeat < repeats:
        raise PlanError(f"--first-repeat must be in 0..{repeats - 1} (the cell has {repeats} "
                        f"model(s)), got {config.first_repeat}")
    cells: list[Cell] = []
    for name, params, label in expand_methods(config.methods):
        entry = METHODS.entry(name)
        if entry.meta.get("ipc_independent"):
            cells.append(Cell(name, 0, params, label))
        elif name == "file":
            cells.append(Cell(name, -1, params, label))  # IPC read from the file
        else:
            cells.extend(Cell(name, ipc, {**resolve_budget(entry.meta.get("budgets", {}),
                                                            preset.name, ipc),
                                          **preset.params_for(name, ipc), **params}, label)
                         for ipc in ipcs)
    attack_specs = attacks_mod.parse_attacks(config.attacks)
    modes = attacks_mod.parse_modes(config.modes)
    threats = attacks_mod.parse_threat_models(config.threat_models)
    settings = blackbox.parse_settings(config.settings)
    if "transfer" in settings:
        blackbox.transfer_specs(attack_specs, config.attacks is not None)
    n_test = config.test_subset if config.test_subset is not None else preset.test_subset
    if n_test is not None and n_test <= 0:
        raise PlanError("--test-subset must be positive")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    out = Path(config.out) if config.out else Path("results") / "runs" / run_id
    jobs = resolve_jobs(config.jobs, device, len(cells))
    return Plan(config, preset, dataset, cells, attack_specs, modes, threats, n_test, repeats,
                device, out, run_id, jobs, settings, code_versions_for(cells))


def code_versions_for(cells: list[Cell]) -> dict[str, str]:
    """Code hashes of the cells' methods, of retraining and of the attacks, at planning time."""
    versions = {f"method:{c.method}": code_version(METHODS.entry(c.method).obj) for c in cells}
    versions["train"] = code_version(train_mod)
    versions["attacks"] = code_version(attacks_mod)
    return versions


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None, device: str, n_cells: int) -> int:
    """Worker processes for a run: ``None`` (auto) = one per core (at most 4, at most one per
    cell) on a CPU and 1 on a GPU, where one process already keeps the device busy."""
    if jobs is not None:
        if jobs <= 0:
            raise PlanError(f"--jobs must be positive or 'auto', got {jobs}")
        return max(1, min(jobs, n_cells or 1))
    if not str(device).startswith("cpu"):
        return 1
    return max(1, min(available_cores(), 4, n_cells or 1))


# -- stages --------------------------------------------------------------------------------
def distill_key(cell: Cell, plan: Plan) -> str:
    """The cache key of ``cell``'s distilled set (and of its distillation checkpoint)."""
    entry = METHODS.entry(cell.method)
    return content_key(stage="distill", method=cell.method, dataset=plan.dataset.name,
                       ipc=cell.ipc, preset=plan.preset.name, seed=plan.config.seed,
                       params=cell.params, code=plan.code_of(f"method:{cell.method}", entry.obj),
                       version=__version__, data_root=str(plan.config.data_root or ""))


def distill(cell: Cell, train: ImageSet, plan: Plan, cache: Cache, log: Callable[[str], None]
            ) -> tuple[DistilledSet, str]:
    """The distilled set of ``cell`` (from the cache when possible) and its cache key."""
    entry = METHODS.entry(cell.method)
    ipc = cell.ipc
    key = distill_key(cell, plan)
    path = cache.distilled(key)
    cacheable = not entry.meta.get("ipc_independent")
    if cacheable and path.exists() and not plan.config.fresh:
        return DistilledSet.load(path), key
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
    result.meta = {**result.meta, "method": cell.label or cell.method,
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
    entry = METHODS.entry(cell.method)
    augment = bool(distilled.meta.get("augment", entry.meta.get("retrain_augment", True)))
    # the budget follows the requested IPC, not the stored image count (factorized sets such as
    # IDM's hold 4 sub-images per stored image)
    budget_ipc = cell.ipc if cell.ipc > 0 else distilled.ipc
    if entry.meta.get("ipc_independent"):
        epochs = plan.preset.full_epochs
    else:
        epochs = plan.preset.epochs(budget_ipc, augment)
    cfg = train_mod.TrainConfig(epochs=epochs, lr=float(distilled.meta.get("lr", 0.01)),
                                augment=augment,
                                batch_size=int(distilled.meta.get("retrain_batch_size", 256)))
    seed = plan.config.seed * 1000 + repeat
    key = content_key(stage="retrain", distilled=distill_key, arch=plan.config.arch, cfg=cfg,
                      seed=seed, code=plan.code_of("train", train_mod), version=__version__)
    path = cache.model(key)

    zca = distilled.meta.get("zca")

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
    dsa = DSA(plan.dataset.mean, plan.dataset.std) if augment else None
    label = cell.label or cell.method
    ipc_txt = "full" if cell.ipc == 0 else f"ipc{budget_ipc}"
    started = time.perf_counter()
    with tqdm(total=epochs, desc=f"retrain {label} {ipc_txt} #{repeat}", leave=False,
              disable=not plan.config.show_progress, dynamic_ncols=True) as bar:
        train_mod.train_model(model, distilled.images, distilled.labels, cfg, augment=dsa,
                              seed=seed, device=plan.device, progress=bar.update)
    atomic_torch_save(model.cpu().state_dict(), path)
    if plan.config.progress_lines and log is not None:
        where = "full-size" if cell.ipc == 0 else f"IPC {budget_ipc}"
        log(f"  {label} {where}: model {repeat + 1}/{plan.repeats} retrained in "
            f"{time.perf_counter() - started:.0f} s")
    return model.eval(), key


def measure(model: Classifier, model_key: str, test: ImageSet, attack: AttackSpec | None, mode: str,
            threat_model: str, plan: Plan, cache: Cache) -> dict[str, Any]:
    """One measurement (clean when ``attack`` is None), cached by model, attack and test set."""
    overrides = plan.preset.attack_overrides.get(attack.name, {}) if attack else {}
    key = content_key(stage="measure", model=model_key, attack=attack.name if attack else "clean",
                      params=attack.params if attack else None, overrides=overrides, mode=mode,
                      threat=threat_model, test=plan.test_subset, dataset=plan.dataset.name,
                      data_root=str(plan.config.data_root or ""), seed=plan.config.seed,
                      code=plan.code_of("attacks", attacks_mod), version=__version__)
    path = cache.measurement(key)
    cached = None if plan.config.fresh else read_json(path)
    if cached is not None:
        return cached
    if attack is None:
        res = clean_accuracy(model, test.images, test.labels, threat_model=threat_model,
                             batch_size=plan.preset.attack_batch_size, device=plan.device)
    else:
        res = run_attack(attack, model, test.images, test.labels, mode=mode,
                         threat_model=threat_model, num_classes=plan.dataset.num_classes,
                         batch_size=plan.preset.attack_batch_size, device=plan.device,
                         seed=plan.config.seed, overrides=overrides)
    out = {"attack": res.attack, "mode": res.mode, "accuracy": res.accuracy,
           "seconds": res.seconds, "n_images": res.n_images, "eps": res.eps}
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
    desc = f"attack {method} " + ("full" if ipc == 0 else f"ipc{ipc}") + f" #{repeat}"
    for atk, mode, threat in tqdm(jobs, desc=desc, leave=False, dynamic_ncols=True,
                                  disable=not plan.config.show_progress):
        m = measure(model, model_key, test, atk, mode, threat, plan, cache)
        records.append(Record(
            run_id=plan.run_id, method=method, dataset=plan.dataset.name, ipc=ipc,
            seed=plan.config.seed, repeat=repeat, arch=plan.config.arch, preset=plan.preset.name,
            threat_model=threat, setting=atk.setting if atk else "white-box", source_model=None,
            mode=mode, attack=m["attack"], eps=m["eps"], accuracy=m["accuracy"],
            seconds=m["seconds"], n_images=m["n_images"], versions=vers))
    return records


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


def run_cell(cell: Cell, train: ImageSet, test: ImageSet, plan: Plan, cache: Cache,
             log: Callable[[str], None], store: RecordStore | None = None) -> CellOutcome:
    """Distill (or load) one cell, retrain its models (``plan.repeat_indices``), attack each.

    With ``store``, each model's records are appended as soon as they exist.
    """
    seconds = {"distill": 0.0, "retrain": 0.0, "attacks": 0.0}
    start = time.perf_counter()
    distilled, dkey = distill(cell, train, plan, cache, log)
    seconds["distill"] = time.perf_counter() - start
    ipc = cell.ipc if cell.ipc >= 0 else distilled.ipc
    records: list[Record] = []
    for repeat in plan.repeat_indices:
        start = time.perf_counter()
        model, mkey = retrain(distilled, dkey, cell, repeat, plan, cache, log)
        seconds["retrain"] += time.perf_counter() - start
        start = time.perf_counter()
        recs = evaluate_model(model, mkey, test, plan, cache, method=cell.label or cell.method,
                              ipc=ipc, repeat=repeat)
        seconds["attacks"] += time.perf_counter() - start
        if store is not None:
            store.append(recs)
        records.extend(recs)
    return CellOutcome(records, seconds)


def run(config: RunConfig, echo: Callable[[str], None] = print) -> tuple[Plan, list[Record]]:
    """Run the benchmark; returns the plan and all records (also written to ``plan.out``).

    Records are appended after every model (after every cell with several workers); the tables
    (markdown, CSV, LaTeX) are written to ``plan.out`` at the end.
    """
    plan = plan_run(config)
    echo(plan.describe())
    store = RecordStore(plan.out / "records.jsonl")
    # loaded once here: the serial loop, transfer and the figures use it, and with workers it
    # fetches/verifies the data (download, clear errors) before any worker starts
    train = load_dataset(plan.dataset.name, "train", config.data_root, config.download)
    test = load_test_set(plan)
    if plan.jobs > 1:
        all_records = _run_parallel(plan, store, echo)
    else:
        cache = Cache()
        all_records = []
        with tqdm(plan.cells, desc="cells", disable=not config.show_progress,
                  dynamic_ncols=True) as bar:
            for cell in bar:
                outcome = run_cell(cell, train, test, plan, cache, echo, store)
                if config.show_progress:
                    bar.write(outcome.summary(cell))
                all_records.extend(outcome.records)
    if all_records:
        all_records.extend(_transfer_after_cells(plan, train, test, store, echo))
        report.write_tables(all_records, plan.out)
        _write_figures(all_records, plan, _distilled_sets(plan, train, echo), echo)
    return plan, all_records


def _cell_models(plan: Plan, train: ImageSet, echo: Callable[[str], None], with_models: bool):
    """Each cell's distilled set (and trained models) again, from the cache the cells filled.

    Transfer needs every model of a run at once and the figures need the distilled sets, while
    cells may have run in worker processes; reloading cached artefacts is cheap. ``fresh`` is
    switched off here: the cells have just recomputed everything.
    """
    plan = replace(plan, config=replace(plan.config, fresh=False))
    cache = Cache()
    for cell in plan.cells:
        if not with_models and METHODS.entry(cell.method).meta.get("ipc_independent"):
            continue  # the whole training set: no grid to draw
        if not with_models and not cache.distilled(distill_key(cell, plan)).exists():
            # never distill again just to draw a figure (hours at the cpu preset)
            echo(f"  no figure of {cell.label or cell.method}'s images: its distilled set is not "
                 "in the cache")
            continue
        distilled, dkey = distill(cell, train, plan, cache, echo)
        ipc = cell.ipc if cell.ipc >= 0 else distilled.ipc
        models = [(repeat, *retrain(distilled, dkey, cell, repeat, plan, cache))
                  for repeat in plan.repeat_indices] if with_models else []
        yield cell, ipc, distilled, models


def _transfer_after_cells(plan: Plan, train: ImageSet, test: ImageSet, store: RecordStore,
                          echo: Callable[[str], None]) -> list[Record]:
    """Transfer records among the run's models (same IPC and repeat), appended to ``store``."""
    if "transfer" not in plan.settings:
        return []
    models = [blackbox.TransferModel(cell.label or cell.method, key, model, ipc, repeat)
              for cell, ipc, _, trained in _cell_models(plan, train, echo, with_models=True)
              for repeat, model, key in trained]
    recs = blackbox.run_transfer(plan, Cache(), test.images, test.labels, models)
    store.append(recs)
    return recs


def _distilled_sets(plan: Plan, train: ImageSet, echo: Callable[[str], None]
                    ) -> dict[str, DistilledSet]:
    """The run's distilled sets by ``<method>_ipc<N>`` (the whole training set is not drawn)."""
    return {f"{cell.label or cell.method}_ipc{ipc}": distilled
            for cell, ipc, distilled, _ in _cell_models(plan, train, echo, with_models=False)
            if ipc > 0}


def _write_figures(records: list[Record], plan: Plan, distilled: dict[str, DistilledSet],
                   echo: Callable[[str], None]) -> None:
    """The figures the records support, next to them (a plotting failure never loses records)."""
    from rome_bench import plots

    try:
        plots.write_figures(records, plan.out, distilled=distilled, echo=echo)
    except Exception as exc:  # noqa: BLE001 - the records and tables are already written
        warn(f"rome-bench: figures not written: {type(exc).__name__}: {exc}")


# -- parallel cells ---------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Ask Linux to end this worker when the run's process dies (e.g. killed with SIGTERM), so
    no orphaned worker keeps computing; elsewhere workers end when their queue closes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_worker(plan: Plan, threads: int) -> None:
    """Load the data once per worker process; each worker uses ``threads`` torch threads."""
    _die_with_parent()
    torch.set_num_threads(threads)
    # bars from several processes collide: workers report progress as lines instead
    quiet = replace(plan.config, show_progress=False, progress_lines=plan.config.show_progress)
    _WORKER["plan"] = replace(plan, config=quiet)
    _WORKER["train"] = load_dataset(plan.dataset.name, "train", plan.config.data_root,
                                    plan.config.download)
    _WORKER["test"] = load_test_set(plan)


def _worker_cell(index: int) -> CellOutcome:
    plan = _WORKER["plan"]
    return run_cell(plan.cells[index], _WORKER["train"], _WORKER["test"], plan, Cache(), print)


def _run_parallel(plan: Plan, store: RecordStore, echo: Callable[[str], None]) -> list[Record]:
    """Run the cells in ``plan.jobs`` processes; records are appended in plan order."""
    threads = max(1, available_cores() // plan.jobs)
    done: dict[int, list[Record]] = {}
    started = time.perf_counter()
    flushed = 0
    ctx = multiprocessing.get_context("spawn")  # fork after OpenMP has started can hang
    with ProcessPoolExecutor(plan.jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(plan, threads)) as pool, \
            tqdm(total=len(plan.cells), desc=f"cells ({plan.jobs} workers)",
                 disable=not plan.config.show_progress, dynamic_ncols=True) as bar:
        pending: dict[Future, int] = {pool.submit(_worker_cell, i): i
                                      for i in range(len(plan.cells))}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = pending.pop(fut)
                    outcome = fut.result()  # a worker's error stops the run here
                    done[i] = outcome.records
                    bar.write(outcome.summary(plan.cells[i]))
                    bar.update(1)
                while flushed in done:
                    store.append(done[flushed])
                    flushed += 1
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            # keep what finished, even out of plan order: the cache has it anyway
            for i in sorted(done):
                if i >= flushed:
                    store.append(done[i])
            raise
    echo(f"{len(plan.cells)} cells in {time.perf_counter() - started:.0f} s with {plan.jobs} "
         f"workers x {threads} thread(s)")
    return [r for i in range(len(plan.cells)) for r in done[i]]


def checkpoint_ipc(path: str) -> int:
    """IPC from a published checkpoint name such as ``DC_ConvNet_CIFAR10_50_None.pth`` (0 if none)."""
    m = re.search(r"_CIFAR1?0{1,2}_(\d+)_", Path(path).name, re.IGNORECASE)
    return int(m.group(1)) if m else 0


def evaluate_checkpoints(config: RunConfig, checkpoints: list[tuple[str, str]],
                         ipc: int | None = None, echo: Callable[[str], None] = print
                         ) -> tuple[Plan, list[Record]]:
    """Evaluate published trained models (``NAME=PATH``) without retraining."""
    from rome_bench.models import load_dc_checkpoint

    plan = plan_run(replace(config, methods=["random"]))
    plan.cells = []
    cache = Cache()
    names = [name for name, _ in checkpoints]
    if "transfer" in plan.settings and len(set(names)) != len(names):
        raise PlanError(f"--setting transfer needs distinct checkpoint names, got {names}")
    models = []
    for name, path in checkpoints:  # validate every file before the first forward pass
        model = load_dc_checkpoint(path, config.arch, num_classes=plan.dataset.num_classes,
                                   mean=plan.dataset.mean, std=plan.dataset.std,
                                   channels=plan.dataset.channels,
                                   image_size=plan.dataset.image_size)
        key = content_key(stage="checkpoint", sha=_sha256(path), arch=config.arch)
        models.append((name, path, model, key))
    echo(f"rome-bench {__version__}: evaluating {len(models)} checkpoint(s) on {plan.dataset.name} "
         f"({plan.test_subset or 'all'} test images), preset {plan.preset.name}, threat "
         f"{', '.join(plan.threat_models)}, settings {', '.join(plan.settings)}, output {plan.out}")
    test = load_test_set(plan)
    store = RecordStore(plan.out / "records.jsonl")
    records: list[Record] = []
    transfer_models: list[blackbox.TransferModel] = []
    for name, path, model, key in models:
        model_ipc = ipc if ipc is not None else checkpoint_ipc(path)
        recs = evaluate_model(model, key, test, plan, cache, method=name, ipc=model_ipc, repeat=0)
        store.append(recs)
        records.extend(recs)
        if "transfer" in plan.settings:
            transfer_models.append(blackbox.TransferModel(name, key, model, model_ipc, 0))
    if transfer_models:
        recs = blackbox.run_transfer(plan, cache, test.images, test.labels, transfer_models)
        store.append(recs)
        records.extend(recs)
    if records:
        report.write_tables(records, plan.out)
        _write_figures(records, plan, {}, echo)
    return plan, records


def evaluate_distilled(config: RunConfig, paths: list[str], echo: Callable[[str], None] = print
                       ) -> tuple[Plan, list[Record]]:
    """Retrain on given distilled-set files and evaluate (same as ``run --method file:PATH``)."""
    return run(replace(config, methods=[f"file:{p}" for p in paths]), echo)


def _sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def warn(msg: str) -> None:
    print(msg, file=sys.stderr)
