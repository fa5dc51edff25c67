"""Cells side by side in worker processes (``plan.threads`` torch threads each: one on a CPU
unless ``--threads`` says otherwise).

ConvNet work on a few hundred images barely scales across threads (a forward and backward pass
over 100 images took 0.655 s on one thread and 0.539 s on two on the 2-core development
machine), so two one-thread workers get more done than one two-thread process. Workers compute
with the same thread count as the serial loop (a CPU result changes with it) and return their
records; the parent appends them in plan order, so records files do not depend on ``jobs``.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from typing import Any

from tqdm.auto import tqdm

from rome_bench.core.cache import Cache
from rome_bench.core.records import Record, RecordStore
from rome_bench.data.datasets import (
    load_dataset,
)
from rome_bench.pipeline.config import Plan, available_cores
from rome_bench.pipeline.stages import CellOutcome, load_test_set, prepare_device, run_cell

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


def _init_worker(plan: Plan) -> None:
    """Load the data once per worker process; each worker uses ``plan.threads`` torch threads."""
    _die_with_parent()
    prepare_device(plan.device, worker_threads(plan))
    # bars from several processes collide: workers report progress as lines instead
    quiet = replace(plan.config, show_progress=False, progress_lines=plan.config.show_progress)
    _WORKER["plan"] = replace(plan, config=quiet)
    _WORKER["train"] = load_dataset(plan.dataset.name, "train", plan.config.data_root,
                                    plan.config.download)
    _WORKER["test"] = load_test_set(plan)


def worker_threads(plan: Plan) -> int:
    """``plan.threads``; where it is None (an accelerator, whose results do not depend on the
    host's threads) the cores shared out among the workers."""
    return plan.threads or max(1, available_cores() // plan.jobs)


def _worker_cell(index: int) -> CellOutcome:
    plan = _WORKER["plan"]
    return run_cell(plan.cells[index], _WORKER["train"], _WORKER["test"], plan, Cache(), print)


def run_parallel(plan: Plan, store: RecordStore, echo: Callable[[str], None]) -> list[Record]:
    """Run the cells in ``plan.jobs`` processes; records are appended in plan order."""
    threads = worker_threads(plan)
    done: dict[int, list[Record]] = {}
    started = time.perf_counter()
    flushed = 0
    ctx = multiprocessing.get_context("spawn")  # fork after OpenMP has started can hang
    with ProcessPoolExecutor(plan.jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(plan,)) as pool, \
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


