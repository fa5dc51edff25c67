"""The benchmark pipeline: distill -> retrain -> attack -> records, cached and resumable.

Each stage is a plain function over small dataclasses. :func:`run` plans every cell first
(validating all names and inputs before any computation), then walks the cells; finished
distilled sets, models and measurements come from the cache, and records are appended after
every model, so a killed run loses at most the model in progress. On a CPU the cells can run
side by side in worker processes (:mod:`rome_bench.pipeline.pool`); with ``executor="ray"``
they run as Ray tasks on one machine or a cluster (:mod:`rome_bench.pipeline.ray_executor`).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from rome_bench.attacks import blackbox
from rome_bench.core.cache import Cache, content_key
from rome_bench.core.catalog import METHODS
from rome_bench.core.records import Record, RecordStore
from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import (
    StorageError,
    check_writable,
    hold_folder,
    remove_orphaned_temporaries,
)
from rome_bench.core.version import __version__
from rome_bench.data.datasets import (
    DATASETS,
    ImageSet,
    load_dataset,
)
from rome_bench.data.distilled import DistilledSet, import_distilled
from rome_bench.models.convnet import load_dc_checkpoint
from rome_bench.pipeline.config import Plan, PlanError, RunConfig, plan_run
from rome_bench.pipeline.pool import run_parallel
from rome_bench.pipeline.ray_executor import RayExecutor, import_ray, ray_executor
from rome_bench.pipeline.stages import (
    computing,
    distill,
    distill_key,
    evaluate_model,
    load_test_set,
    retrain,
    run_cell,
)
from rome_bench.pipeline.transfer import StudyRunner, transfer_records
from rome_bench.reporting import figures
from rome_bench.reporting.metrics import DEFAULT_AE_BASELINE
from rome_bench.reporting.tables import write_tables


def run(config: RunConfig, echo: Callable[[str], None] = print, *, alpha: float = 0.5,
        ae_baseline: str = DEFAULT_AE_BASELINE) -> tuple[Plan, list[Record]]:
    """Run the benchmark; returns the plan and all records (also written to ``plan.out``).

    ``alpha`` and ``ae_baseline`` are the table options (CREI's weight, AE's clean time): the
    tables are written with them while the run still holds its folder.

    Records are appended after every model (after every cell with several workers); the tables
    (markdown, CSV, LaTeX) are written to ``plan.out`` at the end. The run holds ``plan.out``
    for its whole length: a second run given the same folder stops with a one-line error
    (:func:`~rome_bench.core.storage.hold_folder`). With ``executor="ray"`` the cells run as
    Ray tasks (:mod:`rome_bench.pipeline.ray_executor`), with the same records.
    """
    plan = plan_run(config)
    check_inputs(plan)
    with hold_folder(plan.out):
        with executor_for(plan, echo) as executor, computing(plan):
            echo(plan.describe())
            remove_orphans(plan)
            store = RecordStore(plan.out / "records.jsonl")
            # loaded once here: the serial loop, transfer and the figures use it, and with
            # workers it fetches/verifies the data (download, clear errors) before any starts
            train = load_dataset(plan.dataset.name, "train", config.data_root, config.download)
            test = load_test_set(plan)
            if executor is not None:
                all_records = executor.run_cells(train, test, store)
            elif plan.jobs > 1:
                all_records = run_parallel(plan, store, echo)
            else:
                all_records = _run_serial(plan, train, test, store, echo)
            if all_records:
                all_records.extend(_transfer_after_cells(plan, train, test, store, echo,
                                                         executor))
        # after the executor is released: the figures reload the sets from the cache here
        if all_records:
            write_tables(all_records, plan.out, alpha, ae_baseline)
            _write_figures(all_records, plan, _distilled_sets(plan, train, echo), echo)
    return plan, all_records


def check_inputs(plan: Plan) -> None:
    """Check what can be checked without the data, before the (slow) data is read.

    Every ``file:`` set is loaded and validated against the dataset, and its content hash
    enters its cache key (``params["sha256"]``: a file replaced under the same name is a new
    set); the run folder must be writable, and the cache folder must exist or be creatable (a
    read-only cache that already holds every result still serves a run, so its writes are
    checked when they happen). A missing Ray is reported first (it is an option's problem).
    """
    if plan.config.executor == "ray":
        import_ray()
    for cell in plan.cells:
        if cell.method == "file":
            path = str(cell.params["path"])
            import_distilled(path, plan.dataset)
            cell.params["sha256"] = content_sha256(path.partition("#")[0])
    check_writable(plan.out, "output folder")
    if not Cache().root.is_dir():
        check_writable(Cache().root, "cache folder (ROME_BENCH_CACHE)")


def executor_for(plan: Plan, echo: Callable[[str], None]
                 ) -> contextlib.AbstractContextManager[RayExecutor | None]:
    """The Ray executor when the plan asks for it (connected for the block), else None."""
    if plan.config.executor == "ray":
        return ray_executor(plan, echo)
    return contextlib.nullcontext()


def _run_serial(plan: Plan, train: ImageSet, test: ImageSet, store: RecordStore,
                echo: Callable[[str], None]) -> list[Record]:
    cache = Cache()
    records: list[Record] = []
    with tqdm(plan.cells, desc="cells", disable=not plan.config.show_progress,
              dynamic_ncols=True) as bar:
        for cell in bar:
            outcome = run_cell(cell, train, test, plan, cache, echo, store)
            if plan.config.show_progress:
                bar.write(outcome.summary(cell))
            records.extend(outcome.records)
    return records


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
                          echo: Callable[[str], None], executor: RayExecutor | None = None
                          ) -> list[Record]:
    """Transfer records among the run's models (same IPC and repeat), appended to ``store``."""
    if "transfer" not in plan.settings:
        return []
    models = [blackbox.TransferModel(cell.label or cell.method, key, model, ipc, repeat)
              for cell, ipc, _, trained in _cell_models(plan, train, echo, with_models=True)
              for repeat, model, key in trained]
    recs = transfer_records(plan, Cache(), test.images, test.labels, models,
                            _study_runner(executor, test))
    store.append(recs)
    return recs


def _study_runner(executor: RayExecutor | None, test: ImageSet) -> StudyRunner | None:
    """Transfer studies as Ray tasks (one per surrogate), or None to run them here."""
    if executor is None:
        return None
    return lambda studies: executor.run_studies(test, studies)


def _distilled_sets(plan: Plan, train: ImageSet, echo: Callable[[str], None]
                    ) -> dict[str, DistilledSet]:
    """The run's distilled sets by ``<method>_ipc<N>`` (the whole training set is not drawn)."""
    return {f"{cell.label or cell.method}_ipc{ipc}": distilled
            for cell, ipc, distilled, _ in _cell_models(plan, train, echo, with_models=False)
            if ipc > 0}


def _write_figures(records: list[Record], plan: Plan, distilled: dict[str, DistilledSet],
                   echo: Callable[[str], None]) -> None:
    """The figures the records support, next to them (a plotting failure never loses records)."""
    try:
        figures.write_figures(records, plan.out, distilled=image_grids(distilled), echo=echo)
    except StorageError:
        raise  # a full disk or a read-only folder is the user's to know, not a plotting glitch
    except Exception as exc:  # noqa: BLE001 - the records and tables are already written
        warn(f"rome-bench: figures not written: {type(exc).__name__}: {exc}")


def image_grids(distilled: dict[str, DistilledSet]) -> dict[str, figures.ImageGrid]:
    """Distilled sets as the image grids the figures draw (title, hard labels, class names)."""
    grids = {}
    for name, ds in distilled.items():
        dataset = ds.meta.get("dataset", "")
        names = (DATASETS.get(dataset).class_names
                 if isinstance(dataset, str) and dataset in DATASETS else ())
        title = f"{ds.meta.get('method', name)} — IPC {ds.ipc}, {dataset}"
        grids[name] = figures.ImageGrid(ds.images, ds.hard_labels, title, names)
    return grids


def find_distilled(folder: Path) -> dict[str, DistilledSet]:
    """rome-bench distilled-set files (``*.pt`` with images and labels) below ``folder``."""
    found: dict[str, DistilledSet] = {}
    for path in sorted(folder.rglob("*.pt")) if folder.is_dir() else []:
        try:
            found[path.stem] = DistilledSet.load(path)
        except RomeBenchError:
            continue  # other tensors (models, caches) live in run folders too
    return found


def remove_orphans(plan: Plan) -> None:
    """Delete temporary files that a killed earlier run left in the cache or the run folder."""
    for folder in (Cache().root, plan.out):
        for path in remove_orphaned_temporaries(folder):
            warn(f"rome-bench: removed {path}, left by an interrupted write")


def checkpoint_ipc(path: str) -> int:
    """IPC from a published checkpoint name such as ``DC_ConvNet_CIFAR10_50_None.pth`` (0 if none)."""
    m = re.search(r"_CIFAR1?0{1,2}_(\d+)_", Path(path).name, re.IGNORECASE)
    return int(m.group(1)) if m else 0


def evaluate_checkpoints(config: RunConfig, checkpoints: list[tuple[str, str]],
                         ipc: int | None = None, echo: Callable[[str], None] = print, *,
                         alpha: float = 0.5, ae_baseline: str = DEFAULT_AE_BASELINE
                         ) -> tuple[Plan, list[Record]]:
    """Evaluate published trained models (``NAME=PATH``) without retraining (table options as
    in :func:`run`)."""
    plan = plan_run(replace(config, methods=["random"]))
    plan.cells = []
    cache = Cache()
    names = [name for name, _ in checkpoints]
    if "transfer" in plan.settings and len(set(names)) != len(names):
        raise PlanError(f"--setting transfer needs distinct checkpoint names, got {names}")
    models = []
    for name, path in checkpoints:  # validate every file before the data and the first pass
        model = load_dc_checkpoint(path, config.arch, num_classes=plan.dataset.num_classes,
                                   mean=plan.dataset.mean, std=plan.dataset.std,
                                   channels=plan.dataset.channels,
                                   image_size=plan.dataset.image_size)
        key = content_key(stage="checkpoint", sha=content_sha256(path), arch=config.arch)
        models.append((name, path, model, key))
    check_inputs(plan)
    with hold_folder(plan.out):
        with executor_for(plan, echo) as executor, computing(plan):
            echo(f"rome-bench {__version__}: evaluating {len(models)} checkpoint(s) on "
                 f"{plan.dataset.name} ({plan.test_subset or 'all'} test images), preset "
                 f"{plan.preset.name}, threat {', '.join(plan.threat_models)}, settings "
                 f"{', '.join(plan.settings)}, {plan.executor_text}, output {plan.out}")
            test = load_test_set(plan)
            remove_orphans(plan)
            store = RecordStore(plan.out / "records.jsonl")
            given = [(name, key, model, ipc if ipc is not None else checkpoint_ipc(path))
                     for name, path, model, key in models]
            if executor is not None:
                records = executor.evaluate_models(test, given, store)
            else:
                records = []
                for name, key, model, model_ipc in given:
                    recs = evaluate_model(model, key, test, plan, cache, method=name,
                                          ipc=model_ipc, repeat=0)
                    store.append(recs)
                    records.extend(recs)
            if "transfer" in plan.settings:
                transfer_models = [blackbox.TransferModel(name, key, model, model_ipc, 0)
                                   for name, key, model, model_ipc in given]
                recs = transfer_records(plan, cache, test.images, test.labels, transfer_models,
                                        _study_runner(executor, test))
                store.append(recs)
                records.extend(recs)
        if records:
            write_tables(records, plan.out, alpha, ae_baseline)
            _write_figures(records, plan, {}, echo)
    return plan, records


def evaluate_distilled(config: RunConfig, paths: list[str], echo: Callable[[str], None] = print,
                       *, alpha: float = 0.5, ae_baseline: str = DEFAULT_AE_BASELINE
                       ) -> tuple[Plan, list[Record]]:
    """Retrain on given distilled-set files and evaluate (same as ``run --method file:PATH``)."""
    return run(replace(config, methods=[f"file:{p}" for p in paths]), echo, alpha=alpha,
               ae_baseline=ae_baseline)


def content_sha256(path: str) -> str:
    """SHA-256 of a file, or of a folder's files (an MTT/DATM set: name and hash of each)."""
    import hashlib

    p = Path(path).expanduser()
    if p.is_dir():
        parts = [f"{f.name}:{hashlib.sha256(f.read_bytes()).hexdigest()}"
                 for f in sorted(p.iterdir()) if f.is_file()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def warn(msg: str) -> None:
    print(msg, file=sys.stderr)
