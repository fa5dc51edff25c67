"""Bootstrap intervals for the Table 1 metrics and the significance of its marks
(docs/metrics.md, "Intervals").

Each resample recomputes every model's RR, CREI, I-RR and I-CREI from resampled accuracies
(the records' per-image outcomes weighted by one draw of the test images; times are not
resampled) and averages the models the resample draws. A row whose records lack outcomes
resamples its models only. Rows with the same test images share the image draws, so the
difference of two rows' replicates is a paired bootstrap of their difference.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from rome_bench.core.records import Record
from rome_bench.reporting.metrics import (
    DEFAULT_AE_BASELINE,
    METRICS,
    clean_seconds,
    compute_replicates,
)
from rome_bench.reporting.uncertainty import (
    IMAGES,
    MODELS,
    NOTHING,
    Bootstrap,
    image_replicates,
    model_replicates,
    significant_lead,
)


@dataclass
class Interval:
    """A Table 1 cell's interval and the replicates it comes from (None: nothing to resample)."""

    low: float | None
    high: float | None
    replicates: np.ndarray | None


@dataclass
class RowIntervals:
    """The intervals of one Table 1 row, by column (``targeted_RR``, ...)."""

    cells: dict[str, Interval]
    resampled: str  # IMAGES, MODELS or NOTHING


def _uses_images(records: list[Record]) -> bool:
    return bool(records) and all(r.outcomes is not None for r in records) and len(
        {r.n_images for r in records}) == 1


def table1_intervals(records: list[Record], boot: Bootstrap, alpha: float = 0.5,
                     per_ipc: bool = False, setting: str = "white-box",
                     ae_baseline: str = DEFAULT_AE_BASELINE
                     ) -> dict[tuple[str, str, int | None], RowIntervals]:
    """Intervals per (dataset, method, IPC or None when pooled), grouped as
    ``metrics.metric_table`` groups (one threat model and preset expected)."""
    groups: dict[tuple[str, str], dict[int, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.setting != setting and r.mode != "clean":
            continue
        groups[(r.dataset, r.method)][r.repeat].append(r)
    out: dict[tuple[str, str, int | None], RowIntervals] = {}
    for (dataset, method), by_repeat in groups.items():
        all_ipcs = sorted({r.ipc for rs in by_repeat.values() for r in rs})
        for ipc in (all_ipcs if per_ipc else [None]):
            rows_by_repeat = [[r for r in rs if ipc is None or r.ipc == ipc]
                              for _, rs in sorted(by_repeat.items())]
            flat = [r for rs in rows_by_repeat for r in rs]
            images = _uses_images(flat)
            if not images and len(rows_by_repeat) < 2:
                out[(dataset, method, ipc)] = RowIntervals({}, NOTHING)
                continue
            acc = _accuracy_replicates(flat, boot, images)
            key = f"table1|{dataset}|{method}|{ipc}"
            cells: dict[str, Interval] = {}
            for mode in ("targeted", "untargeted"):
                per_model = [_model_metrics(rs, mode, acc, alpha, boot, ae_baseline)
                             for rs in rows_by_repeat]
                for m in METRICS:
                    stack = np.stack([np.full(boot.resamples, np.nan) if pm is None else pm[m]
                                      for pm in per_model])
                    if np.isnan(stack).all():
                        cells[f"{mode}_{m}"] = Interval(None, None, None)
                        continue
                    reps = model_replicates(stack, boot, f"{key}|{mode}")
                    low, high = boot.interval(reps)
                    cells[f"{mode}_{m}"] = Interval(low, high, reps)
            out[(dataset, method, ipc)] = RowIntervals(cells, IMAGES if images else MODELS)
    return out


def _accuracy_replicates(rows: list[Record], boot: Bootstrap, images: bool
                         ) -> dict[int, np.ndarray]:
    """id(record) -> (resamples,) accuracy: resampled images, or the accuracy repeated."""
    if not images:
        return {id(r): np.full(boot.resamples, r.accuracy, float) for r in rows}
    reps = image_replicates(np.stack([r.outcome_mask() for r in rows]), boot)
    return {id(r): reps[i] for i, r in enumerate(rows)}


def _model_metrics(rows: list[Record], mode: str, acc: dict[int, np.ndarray], alpha: float,
                   boot: Bootstrap, ae_baseline: str = DEFAULT_AE_BASELINE
                   ) -> dict[str, np.ndarray] | None:
    """``metrics.metrics_for`` of one model on every resample."""
    by_ipc_clean: dict[int, list[Record]] = defaultdict(list)
    for r in rows:
        if r.mode == "clean":
            by_ipc_clean[r.ipc].append(r)
    present = sorted(by_ipc_clean)
    clean_acc = np.array([np.mean([acc[id(x)] for x in by_ipc_clean[i]], axis=0)
                          for i in present]).reshape(len(present), boot.resamples)
    clean_time = [clean_seconds(by_ipc_clean[i], mode, ae_baseline) for i in present]
    attacked = [r for r in rows if r.mode == mode and r.ipc in by_ipc_clean]
    if not attacked:
        return None
    return compute_replicates(clean_acc, clean_time, np.stack([acc[id(r)] for r in attacked]),
                              [r.seconds for r in attacked], alpha)


def lead_is_significant(better: Interval | None, worse: Interval | None, boot: Bootstrap
                        ) -> bool | None:
    """Whether a marked cell leads the next one significantly (None: cannot tell)."""
    if better is None or worse is None:
        return None
    return significant_lead(better.replicates, worse.replicates, boot)
