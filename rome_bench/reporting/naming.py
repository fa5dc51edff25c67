"""How methods and datasets are shown in tables and figures, and in which order rows go.

A method's display name, row order and published row are declared where the method is
registered (``register_method(..., display=..., order=..., published_as=...)``), so a plugin
in ``baselines/`` shows up right with no edit here. Records name methods by their registry
name, by a display name (BEARD logs) or by a free label (``file:`` sets, checkpoints); the
latter are shown as written and sorted after the known baselines.
"""

from __future__ import annotations

from rome_bench.core.catalog import DEFAULT_ROW_ORDER, METHODS
from rome_bench.core.registry import Entry, normalize_name

DISPLAY_DATASET = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cifar10-mini": "CIFAR-10-mini"}
# Which published dataset a run's rows are compared with (--reference paper).
REFERENCE_DATASET = {"cifar10-mini": "CIFAR-10"}


def _method_entry(name: str) -> Entry | None:
    """The registered method ``name`` refers to, by registry name, alias or display name."""
    found = METHODS.find(name) if name in METHODS else None
    if found is not None:
        return found
    key = normalize_name(name)
    for entry in METHODS.entries():
        if str(entry.meta.get("display", "")).lower() == key:
            return entry
    return None


def display_method(name: str) -> str:
    """The table name of ``name``; ``rome@idm-budget`` (``run --budget-of``) reads
    "ROME (idm budget)"."""
    base, sep, tag = name.partition("@")
    if sep and base:
        return f"{display_method(base)} ({tag.replace('-', ' ')})"
    entry = _method_entry(name)
    return entry.meta.get("display") or name if entry is not None else name


def display_dataset(name: str) -> str:
    return DISPLAY_DATASET.get(name, name)


def method_order(name: str) -> tuple[int, str]:
    """Sort key of a method's row: its declared order, then its name (a ``--budget-of`` row
    right after its method's)."""
    entry = _method_entry(name.partition("@")[0] or name)
    order = entry.meta.get("order", DEFAULT_ROW_ORDER) if entry is not None else DEFAULT_ROW_ORDER
    return (order, normalize_name(name))


def reference_key(dataset: str, method: str) -> tuple[str, str]:
    """The (dataset, method) row of a published table that a measured row compares with."""
    ds = display_dataset(REFERENCE_DATASET.get(dataset, dataset))
    entry = _method_entry(method)
    published = entry.meta.get("published_as") if entry is not None else None
    return ds, published or display_method(method)


def format_value(mean: float | None, std: float | None, repeats: int) -> str:
    """``mean ± std`` over repeats (the mean alone for one repeat), ``N/A`` when missing."""
    if mean is None:
        return "N/A"
    return f"{mean:.2f}" if repeats <= 1 or std is None else f"{mean:.2f} ± {std:.2f}"
