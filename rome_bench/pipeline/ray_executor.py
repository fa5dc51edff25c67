"""A plan's work as Ray tasks, on one machine or on a cluster (``--executor ray``).

A cell becomes one distillation task followed by one task per retrained model (retrain, then
every attack on that model), so the models of a cell run side by side; a transfer study becomes
one task per surrogate. Each task says what it needs, a GPU (or ``--gpus-per-task`` of one)
when the plan's device is CUDA and one CPU otherwise, and Ray places it: a multi-GPU server and
a multi-node cluster are the same code path.

Tasks compute with the stage functions of :mod:`rome_bench.pipeline.stages` and read and write
the same content-addressed cache as the local executor, so that cache must be a folder every
node mounts at the same path (checked when the executor starts). The driver alone writes
records, in plan order, so a records file does not depend on the executor. A worker killed in
the middle of a task is replaced and the task retried (``MAX_RETRIES``); the retry finds what
the cache holds (the method's last distillation checkpoint, finished models, measurements), and
a driver killed and started again finds the same.

Ray is imported only when the executor starts: nothing else in rome-bench needs it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rome_bench.attacks import blackbox
from rome_bench.core.cache import Cache
from rome_bench.core.catalog import METHODS
from rome_bench.core.records import Record, RecordStore
from rome_bench.core.registry import RomeBenchError
from rome_bench.core.storage import atomic_write_text
from rome_bench.data.datasets import ImageSet
from rome_bench.models.convnet import Classifier
from rome_bench.pipeline.config import Plan, resolve_threads
from rome_bench.pipeline.stages import (
    CellOutcome,
    cached_distilled,
    distill,
    distill_lock,
    evaluate_model,
    prepare_device,
    run_model,
)
from rome_bench.pipeline.transfer import TransferStudy, merge_pieces, run_study

RAY_MISSING = 'the Ray executor needs Ray: pip install -e ".[ray]"'
# a task whose worker died (killed, out of memory, node lost) runs again up to this many times;
# an exception raised by rome-bench itself (bad input, a bug) is not retried
MAX_RETRIES = 3
# how long the workers may take to answer the shared-cache check (they may first start Python)
CHECK_TIMEOUT_S = 300


class ExecutorError(RomeBenchError):
    """The Ray executor cannot start or a task failed for good."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(RAY_MISSING) from exc
    return ray


@dataclass(frozen=True)
class TaskGraph:
    """The tasks a plan becomes: cells with a distillation task, (cell, model) pairs, and how
    many transfer crafting tasks (one per surrogate) follow them."""

    distill: list[int]
    models: list[tuple[int, int]]
    transfer: int


def task_graph(plan: Plan) -> TaskGraph:
    """The task graph of ``plan`` (the local executor runs the same stages, cell by cell).

    The whole training set (``full``) is not distilled, so its cell has no distillation task.
    """
    distilled = [i for i, cell in enumerate(plan.cells)
                 if not METHODS.entry(cell.method).meta.get("ipc_independent")]
    models = [(i, r) for i in range(len(plan.cells)) for r in plan.repeat_indices]
    transfer = 0
    if "transfer" in plan.settings and blackbox.transfer_specs(plan.attacks,
                                                               plan.config.attacks is not None):
        transfer = len(models)  # every model is the surrogate of its study once
    return TaskGraph(distilled, models, transfer)


def task_resources(plan: Plan) -> dict[str, float]:
    """What one task asks Ray for: a GPU or a share of one on CUDA, one CPU either way."""
    if plan.device.startswith("cuda"):
        return {"num_cpus": 1, "num_gpus": plan.config.gpus_per_task}
    # as many CPUs as the run's torch threads: a task computes exactly as a local worker does
    # (CPU results depend on the thread count, which is part of the cache keys)
    return {"num_cpus": plan.threads or 1}


# -- inside a worker ------------------------------------------------------------------------
@dataclass(frozen=True)
class Shared:
    """What every task of a run receives: object-store references to the plan and the data
    (fetched once per worker process, only by tasks that need them), and the driver's cache
    folder and working directory."""

    plan: Any
    train: Any
    test: Any
    cache_root: str
    cwd: str


_FETCHED: dict[str, Any] = {}


def _fetch(ref: Any) -> Any:
    """``ray.get(ref)``, kept for the worker's next tasks (the data sets are large)."""
    import ray

    key = ref.hex()
    if key not in _FETCHED:
        _FETCHED[key] = ray.get(ref)
    return _FETCHED[key]


def _enter(shared: Shared) -> tuple[Plan, Cache]:
    """Set a worker up like the driver: its cache folder (also for code that finds the cache
    through ``ROME_BENCH_CACHE``, e.g. MTT's expert buffer), its working directory (relative
    paths such as ``file:`` sets), the run's torch threads (``--threads``, which the task's
    CPU request matches)."""
    os.environ["ROME_BENCH_CACHE"] = shared.cache_root
    if os.path.isdir(shared.cwd):
        os.chdir(shared.cwd)
    plan = _fetch(shared.plan)
    prepare_device(plan.device, plan.threads)
    return plan, Cache(Path(shared.cache_root))


def _distill_task(shared: Shared, index: int) -> float:
    """Distill cell ``index`` into the cache (resuming from its checkpoint); the seconds spent."""
    plan, cache = _enter(shared)
    start = time.perf_counter()
    cell = plan.cells[index]
    with distill_lock(cell, plan, cache, print):  # another run may share the cache
        distill(cell, _fetch(shared.train), plan, cache, print)
    return time.perf_counter() - start


def _model_task(shared: Shared, index: int, repeat: int, *_distilled: float
                ) -> tuple[list[Record], dict[str, float]]:
    """Retrain and attack model ``repeat`` of cell ``index`` (after its distillation task)."""
    plan, cache = _enter(shared)
    cell = plan.cells[index]
    # the distillation task has just computed the set (--fresh included): load, do not redo
    loading = replace(plan, config=replace(plan.config, fresh=False))
    found = cached_distilled(cell, loading, cache)
    distilled, dkey = found or distill(cell, _fetch(shared.train), loading, cache, print)
    return run_model(cell, distilled, dkey, repeat, _fetch(shared.test), plan, cache, print)


def _evaluate_task(shared: Shared, model: Classifier, key: str, name: str, ipc: int
                   ) -> list[Record]:
    """Attack a given trained model (``evaluate --checkpoint``)."""
    plan, cache = _enter(shared)
    return evaluate_model(model, key, _fetch(shared.test), plan, cache, method=name, ipc=ipc,
                          repeat=0)


def _transfer_task(shared: Shared, study: TransferStudy, surrogate: int
                   ) -> list[blackbox.TransferResult]:
    """One surrogate's crafting in ``study``, fed to every victim of the study."""
    plan, cache = _enter(shared)
    test = _fetch(shared.test)
    return run_study(plan, cache, test.images, test.labels, study,
                     surrogates=[study.models[surrogate]], show_progress=False)


def _sees_marker(path: str, token: str) -> tuple[bool, str]:
    """Whether this node reads ``token`` in ``path`` (the driver wrote it), and its host name."""
    try:
        ok = Path(path).read_text() == token
    except OSError:
        ok = False
    return ok, socket.gethostname()


# -- the driver -----------------------------------------------------------------------------
class RayExecutor:
    """Submits a plan's tasks to a connected Ray instance and collects their results."""

    def __init__(self, ray: Any, plan: Plan, echo: Callable[[str], None]) -> None:
        self.ray = ray
        self.plan = plan
        self.echo = echo
        self.cache_root = shared_cache_root()
        self.options = {**task_resources(plan), "max_retries": MAX_RETRIES,
                        "retry_exceptions": False}
        # workers report progress as log lines (Ray forwards them), never as bars
        quiet = replace(plan.config, show_progress=False, progress_lines=plan.config.show_progress)
        self._plan_ref = ray.put(replace(plan, config=quiet))
        self._data: dict[str, Any] = {}

    def _shared(self, train: ImageSet | None, test: ImageSet) -> Shared:
        for name, data in (("train", train), ("test", test)):
            if name not in self._data:
                self._data[name] = self.ray.put(data)
        return Shared(self._plan_ref, self._data["train"], self._data["test"],
                      str(self.cache_root), os.getcwd())

    def _remote(self, fn: Callable[..., Any], name: str) -> Any:
        return self.ray.remote(fn).options(name=name, **self.options)

    def check_cache(self) -> None:
        """Fail clearly unless a task on every node reads a file the driver just wrote into the
        cache folder (the cache must be one folder shared by all nodes)."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = secrets.token_hex(8)
        marker = self.cache_root / ".ray-check" / f"{token}.txt"
        atomic_write_text(marker, token)
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            check = ray.remote(_sees_marker)
            refs = [check.options(num_cpus=0, name="check the shared cache",
                                  scheduling_strategy=NodeAffinitySchedulingStrategy(
                                      n["NodeID"], soft=False)).remote(str(marker), token)
                    for n in nodes]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=CHECK_TIMEOUT_S)
            if len(ready) < len(refs):
                raise ExecutorError(f"{len(refs) - len(ready)} of {len(refs)} Ray node(s) did not "
                                    f"answer the shared-cache check within {CHECK_TIMEOUT_S} s")
            answers = self._get(refs)
        finally:
            marker.unlink(missing_ok=True)
        blind = [host for ok, host in answers if not ok]
        if blind:
            raise ExecutorError(blind_nodes_message(self.cache_root, blind))

    def run_cells(self, train: ImageSet, test: ImageSet, store: RecordStore) -> list[Record]:
        """Every cell of the plan as tasks; records appended to ``store`` in plan order."""
        plan = self.plan
        graph = task_graph(plan)
        shared = self._shared(train, test)
        distill_refs = {i: self._remote(_distill_task, f"distill {_label(plan, i)}")
                        .remote(shared, i) for i in graph.distill}
        model_refs = {}
        for i, repeat in graph.models:
            after = [distill_refs[i]] if i in distill_refs else []
            model_refs[(i, repeat)] = self._remote(
                _model_task, f"retrain+attack {_label(plan, i)} #{repeat}").remote(
                shared, i, repeat, *after)
        order = list(model_refs)
        pending = {ref: pair for pair, ref in model_refs.items()}
        done: dict[tuple[int, int], tuple[list[Record], dict[str, float]]] = {}
        flushed = 0
        started = time.perf_counter()
        with tqdm(total=len(order), desc="models (Ray tasks)", dynamic_ncols=True,
                  disable=not plan.config.show_progress) as bar:
            try:
                while pending:
                    ready, _ = self.ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        pair = pending.pop(ref)
                        done[pair] = self._get(ref)
                        bar.update(1)
                        self._cell_summary(pair[0], done, distill_refs, bar.write)
                    while flushed < len(order) and order[flushed] in done:
                        store.append(done[order[flushed]][0])
                        flushed += 1
            except BaseException:
                self._cancel(list(pending))
                # keep what finished, even out of plan order: the cache has it anyway
                for pair in order[flushed:]:
                    if pair in done:
                        store.append(done[pair][0])
                raise
        self.echo(f"{len(plan.cells)} cells ({len(graph.distill)} distillation and "
                  f"{len(order)} model tasks) in {time.perf_counter() - started:.0f} s on Ray")
        return [r for pair in order for r in done[pair][0]]

    def _cell_summary(self, index: int, done: dict[tuple[int, int], Any],
                      distill_refs: dict[int, Any], write: Callable[[str], None]) -> None:
        """The local executor's line for a cell, once all its models are in."""
        pairs = [(index, r) for r in self.plan.repeat_indices]
        if not all(p in done for p in pairs):
            return
        seconds = {"distill": self._get(distill_refs[index]) if index in distill_refs else 0.0,
                   "retrain": sum(done[p][1]["retrain"] for p in pairs),
                   "attacks": sum(done[p][1]["attacks"] for p in pairs)}
        records = [r for p in pairs for r in done[p][0]]
        write(CellOutcome(records, seconds).summary(self.plan.cells[index]))

    def evaluate_models(self, test: ImageSet, models: list[tuple[str, str, Classifier, int]],
                        store: RecordStore) -> list[Record]:
        """One task per given model (name, cache key, model, IPC); records in the given order."""
        shared = self._shared(None, test)
        refs = [self._remote(_evaluate_task, f"attack {name}").remote(shared, model, key, name, ipc)
                for name, key, model, ipc in models]
        records: list[Record] = []
        try:
            for ref in refs:
                recs = self._get(ref)
                store.append(recs)
                records.extend(recs)
        except BaseException:
            self._cancel(refs)
            raise
        return records

    def run_studies(self, test: ImageSet, studies: list[TransferStudy]
                    ) -> list[list[blackbox.TransferResult]]:
        """Every study's crafting as one task per surrogate, all submitted at once."""
        shared = self._shared(None, test)
        refs = []
        for study in studies:
            study_ref = self.ray.put(study)
            refs.append([self._remote(_transfer_task, f"transfer from {m.name} ipc{m.ipc} "
                                                      f"#{m.repeat}").remote(shared, study_ref, j)
                         for j, m in enumerate(study.models)])
        try:
            return [merge_pieces(self.plan, [self._get(ref) for ref in pieces]) for pieces in refs]
        except BaseException:
            self._cancel([ref for pieces in refs for ref in pieces])
            raise

    def _get(self, ref: Any) -> Any:
        """``ray.get`` with the task's own error re-raised as it was (one line at the CLI)."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, RomeBenchError | NotImplementedError | ValueError | OSError):
                raise cause from None
            text = str(cause).strip().splitlines()
            raise ExecutorError(f"a Ray task failed: {type(cause).__name__}: "
                                f"{text[0] if text else ''}") from exc
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError,
                exceptions.OutOfMemoryError) as exc:
            text = str(exc).strip().splitlines()
            raise ExecutorError(f"a Ray task's worker died {MAX_RETRIES + 1} times, giving up: "
                                f"{text[0] if text else type(exc).__name__}") from exc

    def _cancel(self, refs: list[Any]) -> None:
        for ref in refs:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref)


def shared_cache_root() -> Path:
    """The cache folder as every node must find it: absolute, links kept (a link may lead to
    a mount point named differently on each node)."""
    return Path(os.path.abspath(Cache().root.expanduser()))


def blind_nodes_message(root: Path, hosts: list[str]) -> str:
    """The error when some nodes cannot read the driver's cache folder."""
    return (f"the Ray worker(s) on {', '.join(sorted(set(hosts)))} cannot see the cache folder "
            f"{root}: put the cache on a filesystem every node mounts at the same path and set "
            "ROME_BENCH_CACHE to it on the driver")


def _label(plan: Plan, index: int) -> str:
    cell = plan.cells[index]
    where = "full" if cell.ipc == 0 else f"ipc{cell.ipc}" if cell.ipc > 0 else "file"
    return f"{cell.label or cell.method} {where}"


def reachable(address: str | None, timeout: float = 10.0) -> None:
    """Fail at once, in one line, when a HOST:PORT address does not answer (Ray itself retries
    an unreachable head for minutes before it gives up)."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--address takes auto, local or HOST:PORT, got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach Ray at {address}: {exc.strerror or exc} (is "
                            "`ray start --head` running there?)") from exc


@contextlib.contextmanager
def ray_executor(plan: Plan, echo: Callable[[str], None]) -> Iterator[RayExecutor]:
    """Connect to Ray (``plan.config.address``), check the shared cache, yield the executor.

    An already connected Ray (a notebook, a test) is used as it is. A Ray instance this call
    started is shut down at the end. Without ``--device``, the device follows the cluster:
    CUDA when it has GPUs.
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        address = plan.config.address
        reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            text = str(exc).strip().splitlines()
            raise ExecutorError(f"cannot start or reach Ray at "
                                f"{address or 'the local machine'}: "
                                f"{text[0] if text else type(exc).__name__}") from exc
    try:
        resources = ray.cluster_resources()
        if plan.config.device is None:
            plan.device = "cuda" if resources.get("GPU", 0) > 0 else "cpu"
            # the threads follow the device (and enter the cache keys through compute_key)
            plan.threads = resolve_threads(plan.config.threads, plan.device)
        echo(f"Ray: {int(resources.get('CPU', 0))} CPU(s), {int(resources.get('GPU', 0))} GPU(s) "
             f"on {len([n for n in ray.nodes() if n.get('Alive')])} node(s); cache "
             f"{shared_cache_root()}")
        executor = RayExecutor(ray, plan, echo)
        executor.check_cache()
        yield executor
    finally:
        if started:
            ray.shutdown()
