"""The method registry and the contract every distillation method follows.

A method is a function ``fn(train, ipc, cfg) -> DistilledSet`` registered with
:func:`register_method`. ``train`` is the real training set (an :class:`~rome_bench.data.ImageSet`
in [0,1]); ``cfg`` is a :class:`MethodConfig` carrying the seed, the preset, the method's budget
for that preset and helpers for progress and checkpointing.

Built-ins live in ``baselines/`` (one file each, imported automatically, see
:mod:`rome_bench.methods.discovery`) and ``rome_bench/methods/``; third-party packages register
through the entry-point group ``rome_bench.methods``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from rome_bench.core.catalog import DEFAULT_ROW_ORDER, METHODS
from rome_bench.data.augment import DSA
from rome_bench.data.datasets import DATASETS, DatasetSpec, ImageSet
from rome_bench.data.distilled import DistilledSet

MethodFn = Callable[[ImageSet, int, "MethodConfig"], DistilledSet]

Budgets = dict[str, dict[Any, Any]]

DATASETS_KEY = "datasets"  # the per-dataset layer of a preset's budget table


def register_method(name: str, *aliases: str, description: str = "", display: str | None = None,
                    order: int = DEFAULT_ROW_ORDER, published_as: str | None = None,
                    retrain_augment: bool = True, ipc_independent: bool = False,
                    in_all: bool = True, implemented: bool = True,
                    budgets: Budgets | None = None, plan_note: str | None = None
                    ) -> Callable[[MethodFn], MethodFn]:
    """Register a distillation method.

    Args:
        name: the name used on the command line (case-insensitive).
        description: one line shown by ``rome-bench list methods``.
        display: the name shown in tables and figures (default: ``name`` as written).
        order: where the method's row goes in tables (smaller first; baselines use 0-99,
            ROME 1000 and up so that it closes the table as in the paper).
        published_as: the published Table-1 row it is compared with (``--reference paper``)
            when that row has another name (``rome-compat`` -> ``ROME``).
        retrain_augment: retrain on the result with DSA (the DSA/DM/IDM/MTT/ROME protocol);
            False for plain DC, whose reference retraining has no augmentation.
        ipc_independent: the result does not depend on the IPC (``full``); built once.
        in_all: part of ``--method all``.
        implemented: False for placeholders that raise NotImplementedError; never in ``all``.
        budgets: hyperparameters per preset: ``{preset: {"all": {...}, ipc: {...},
            "datasets": {dataset: {"all": {...}, ipc: {...}}}}}``, where the optional
            ``"datasets"`` layer holds what differs on one dataset (its IPC rows must be IPCs
            the preset lists). The pipeline resolves them for the run's preset, dataset and
            IPC (:func:`resolve_budget`) into ``cfg.params`` and prints them in the run plan.
            The ``paper`` entry holds the published values.
        plan_note: one line the run plan prints for the method: a deliberate departure from
            the reference that no budget value shows.

    >>> @register_method("doc-first-images", description="first ipc images per class")
    ... def first_images(train, ipc, cfg):
    ...     idx = torch.cat([train.indices_of(c)[:ipc] for c in range(train.num_classes)])
    ...     return DistilledSet(train.images[idx], train.labels[idx])
    >>> "doc-first-images" in METHODS
    True
    """
    check_budgets(name, budgets or {})
    existing = METHODS.find(name)
    if existing is not None and not existing.meta.get("implemented", True):
        METHODS.remove(existing)  # a real implementation replaces its placeholder
    return METHODS.register(name, *aliases, description=description, display=display or name,
                            order=order, published_as=published_as,
                            retrain_augment=retrain_augment, ipc_independent=ipc_independent,
                            in_all=in_all and implemented, implemented=implemented,
                            budgets=budgets or {}, plan_note=plan_note)


def resolve_budget(budgets: Budgets, preset: str, ipc: int, dataset: str | None = None
                   ) -> dict[str, Any]:
    """A method's hyperparameters for one preset, IPC and dataset.

    The preset's table gives ``"all"`` updated with the row of ``ipc`` (the nearest listed IPC
    when ``ipc`` is not listed); its ``"datasets"`` entry for ``dataset`` (a canonical dataset
    name), if any, then applies its own ``"all"`` and its row of that same IPC. One IPC row is
    chosen for both layers, so a dataset never changes which IPC's values apply.

    >>> b = {"paper": {"all": {"steps": 10, "w": 0.5}, 1: {}, 10: {"w": 0.1},
    ...                "datasets": {"cifar100": {10: {"steps": 50}}}}}
    >>> resolve_budget(b, "paper", 10), resolve_budget(b, "paper", 10, "cifar100")
    ({'steps': 10, 'w': 0.1}, {'steps': 50, 'w': 0.1})
    >>> resolve_budget(b, "paper", 1, "cifar100")
    {'steps': 10, 'w': 0.5}
    """
    table = budgets.get(preset, {})
    row = _ipc_row(table, ipc)
    out = dict(table.get("all", {}))
    if row is not None:
        out.update(table[row])
    per_dataset = table.get(DATASETS_KEY, {}).get(dataset, {}) if dataset else {}
    out.update(per_dataset.get("all", {}))
    if row is not None and row in per_dataset:
        out.update(per_dataset[row])
    return out


def _ipc_row(table: dict[Any, Any], ipc: int) -> int | None:
    """``ipc`` if the table lists it, else the nearest listed IPC (the smaller on a tie)."""
    keys = [k for k in table if isinstance(k, int)]
    if ipc in keys:
        return ipc
    return min(keys, key=lambda k: (abs(k - ipc), k)) if keys else None


def check_budgets(name: str, budgets: Budgets) -> None:
    """Reject a budgets table :func:`resolve_budget` would read wrongly: unknown keys, unknown
    datasets, or a dataset row for an IPC the preset does not list (it would never apply)."""
    for preset, table in budgets.items():
        ipcs = {k for k in table if isinstance(k, int)}
        bad = [k for k in table if not isinstance(k, int) and k not in ("all", DATASETS_KEY)]
        for ds, sub in table.get(DATASETS_KEY, {}).items():
            if ds != DATASETS.get(ds).name:
                raise ValueError(f"method '{name}': budgets['{preset}']['{DATASETS_KEY}'] must "
                                 f"use canonical dataset names ('{DATASETS.get(ds).name}', not "
                                 f"'{ds}')")
            bad += [f"{ds}:{k}" for k in sub if k != "all" and k not in ipcs]
        if bad:
            raise ValueError(f"method '{name}': budgets['{preset}'] has keys {bad} that are "
                             f"neither 'all', '{DATASETS_KEY}' nor an IPC the preset lists "
                             f"({sorted(ipcs)})")


def not_implemented_method(name: str, issue: int, what: str) -> None:
    """Register ``name`` as a clear placeholder for work tracked in ``issue``."""

    def placeholder(train: ImageSet, ipc: int, cfg: MethodConfig) -> DistilledSet:
        raise NotImplementedError(f"method '{name}' ({what}) is not implemented yet: see issue #{issue}")

    if METHODS.find(name) is not None:  # already implemented: keep the real one
        return
    placeholder.__qualname__ = f"placeholder_{name.replace('-', '_')}"
    register_method(name, description=f"{what} (not implemented yet, issue #{issue})",
                    implemented=False)(placeholder)


@dataclass
class MethodConfig:
    """What a method gets besides the data: seed, preset, budget and run-time helpers.

    Attributes:
        seed: the distillation seed; methods draw all randomness from generators seeded by it.
        preset: the preset name ('quick', 'cpu', 'paper').
        dataset: the dataset spec (normalization constants, class count).
        params: the method's hyperparameters for this preset and IPC (from the preset table).
        device: torch device for the work.
        checkpoint: ``checkpoint(state, iteration)`` persists a resumable state; ``resume()``
            returns the last ``(state, iteration)`` or None.
    """

    seed: int
    preset: str
    dataset: DatasetSpec
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    show_progress: bool = True
    checkpoint: Callable[[dict[str, Any], int], None] = lambda state, it: None
    resume: Callable[[], tuple[dict[str, Any], int] | None] = lambda: None

    def dsa(self) -> DSA:
        """The DSA augmenter for this dataset (normalized-space, reference parameters)."""
        return DSA(self.dataset.mean, self.dataset.std)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A private torch generator seeded from the method seed."""
        return torch.Generator().manual_seed(self.seed * 1000 + offset)

    def progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, disable=not self.show_progress, leave=False,
                    dynamic_ncols=True)

    def loop(self, total: int, desc: str, *, start: int = 0,
             snapshot: Callable[[], dict[str, Any]]) -> ResumableLoop:
        """The iterations ``start..total-1`` of a long method, with a progress bar and a
        checkpoint (``snapshot()`` passed to :attr:`checkpoint`) about every 10% of them.

        The method restores its state from :attr:`resume` before the loop and passes the
        iteration it resumed at as ``start``; the loop does the rest the same way for every
        method (the resume is exact only if ``snapshot`` holds everything the next iteration
        reads, random generators included).
        """
        return ResumableLoop(self, total, desc, start, snapshot)


@dataclass
class ResumableLoop:
    """Iterate with :meth:`MethodConfig.loop`; :meth:`postfix` annotates the progress bar."""

    cfg: MethodConfig
    total: int
    desc: str
    start: int
    snapshot: Callable[[], dict[str, Any]]
    _bar: tqdm | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[int]:
        every = max(1, self.total // 10)
        with self.cfg.progress(self.total, self.desc) as bar:
            self._bar = bar
            bar.update(self.start)
            for it in range(self.start, self.total):
                yield it
                bar.update(1)
                done = it + 1
                if done % every == 0 and done < self.total:
                    self.cfg.checkpoint(self.snapshot(), done)

    def postfix(self, **values: Any) -> None:
        """Show ``values`` (e.g. the current loss) next to the progress bar."""
        if self._bar is not None:
            self._bar.set_postfix(**values)
