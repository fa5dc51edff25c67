"""RR, AE, CREI, I-RR and I-CREI exactly as the published tables compute them (docs/design.md, "Metrics").

Per (dataset, method, threat model, mode) and per repeat, pooled over the IPCs present:

* ``C``  = mean clean accuracy over the IPCs;
* attack accuracies ``a_i`` and times ``t_i`` are flattened over all attacks x all IPCs;
* ``T0`` = mean over IPCs of the clean time. BEARD times the clean pass once per mode (its
  imported clean records say which in ``versions["clean_pass"]``); with the default
  ``ae_baseline="same-mode"`` an IPC's clean time for a mode is its clean timing of that mode
  (a clean record without a pass, as every rome-bench run writes, serves both modes), which
  reproduces every published BACON CREI and I-CREI of ROME's Table 1 from BEARD's logs;
  ``"min"`` takes the smaller of all the IPC's clean timings, the rule of BEARD's released
  ``auto_metrics.py``. With several timings of one kind, the smallest is used;
* ``mean ASR = C - mean(a)``, ``max ASR = C - min(a)``;

then ``RR = 100 (1 - mean ASR / max ASR)`` (0 when max ASR is 0), ``I-RR = 100 (1 - mean ASR *
max ASR / C^2)``, ``AE = 100 (mean(t) - T0) / (max(t) - T0)``, ``CREI = a RR + (1-a) AE`` and
``I-CREI = a I-RR + (1-a) AE``. With repeats, each repeat gives one value and tables show mean
+- std. Degenerate inputs give defined values: no attack -> every metric None (shown N/A);
C = 0 -> I-RR 0; max(t) = T0 -> AE 0.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rome_bench.core.records import Record
from rome_bench.core.registry import RomeBenchError

METRICS = ("RR", "CREI", "I-RR", "I-CREI")
ALL_METRICS = ("RR", "AE", "CREI", "I-RR", "I-CREI")
# AE's clean-time baseline T0 per IPC: the clean timing of the same mode, or the smaller of all
AE_BASELINES = ("same-mode", "min")
DEFAULT_AE_BASELINE = "same-mode"
# the key of an imported clean record's ``versions`` that names the mode its pass was timed in
CLEAN_PASS = "clean_pass"


class MetricsError(RomeBenchError):
    """An unknown metrics option."""


def check_ae_baseline(name: str) -> str:
    if name not in AE_BASELINES:
        raise MetricsError(f"Unknown AE baseline '{name}'. Available: {', '.join(AE_BASELINES)}")
    return name


def clean_seconds(clean: list[Record], mode: str, ae_baseline: str = DEFAULT_AE_BASELINE) -> float:
    """One IPC's clean time for ``mode`` (see the module docstring).

    >>> from rome_bench.core.records import Record
    >>> def c(s, p): return Record("r", "M", "cifar10", 1, 0, 0, "convnet", "beard-log",
    ...                            "beard-compat", "white-box", None, "clean", "clean", None,
    ...                            50.0, s, 0, versions={"clean_pass": p})
    >>> rows = [c(2.5, "targeted"), c(2.25, "untargeted")]
    >>> clean_seconds(rows, "targeted"), clean_seconds(rows, "targeted", "min")
    (2.5, 2.25)
    """
    check_ae_baseline(ae_baseline)
    times = [r.seconds for r in clean]
    if ae_baseline == "same-mode":
        times = [r.seconds for r in clean if r.versions.get(CLEAN_PASS, mode) == mode] or times
    return min(times)


@dataclass(frozen=True)
class MetricValues:
    """One evaluation of the five metrics plus the quantities they come from."""

    clean: float
    mean_asr: float | None
    max_asr: float | None
    RR: float | None
    AE: float | None
    CREI: float | None
    I_RR: float | None
    I_CREI: float | None
    n_attacks: int

    def get(self, name: str) -> float | None:
        return getattr(self, name.replace("-", "_"))


def compute(clean_acc: Iterable[float], clean_time: Iterable[float], attack_acc: list[float],
            attack_time: list[float], alpha: float = 0.5) -> MetricValues:
    """Metrics from per-IPC clean accuracy/time and flattened attack accuracies/times.

    >>> m = compute([50.0], [2.0], [30.0, 10.0], [3.0, 9.0])
    >>> round(m.RR, 2), round(m.I_RR, 2), round(m.AE, 2)
    (25.0, 52.0, 57.14)
    """
    clean_acc, clean_time = list(clean_acc), list(clean_time)
    c = statistics.fmean(clean_acc) if clean_acc else 0.0
    if not attack_acc:
        return MetricValues(c, None, None, None, None, None, None, None, 0)
    t0 = statistics.fmean(clean_time) if clean_time else 0.0
    mean_asr = c - statistics.fmean(attack_acc)
    max_asr = c - min(attack_acc)
    rr = 0.0 if max_asr == 0 else 100.0 * (1.0 - mean_asr / max_asr)
    # (mean/C)(max/C) rather than mean*max/C**2: C**2 underflows to 0 for a tiny C
    i_rr = 0.0 if c == 0 else 100.0 * (1.0 - (mean_asr / c) * (max_asr / c))
    t_span = max(attack_time) - t0
    ae = 0.0 if t_span == 0 else 100.0 * (statistics.fmean(attack_time) - t0) / t_span
    return MetricValues(c, mean_asr, max_asr, rr, ae, alpha * rr + (1 - alpha) * ae, i_rr,
                        alpha * i_rr + (1 - alpha) * ae, len(attack_acc))


def compute_replicates(clean_acc: np.ndarray, clean_time: list[float], attack_acc: np.ndarray,
                       attack_time: list[float], alpha: float = 0.5) -> dict[str, np.ndarray] | None:
    """:func:`compute` on many resamples at once (the bootstrap of docs/metrics.md, "Intervals").

    ``clean_acc`` is (IPCs, B) and ``attack_acc`` (attacks x IPCs, B): column ``b`` holds the
    accuracies of resample ``b``; times are not resampled. Returns metric name -> (B,) array
    (``RR``, ``AE``, ``CREI``, ``I-RR``, ``I-CREI``), or None without attacks, like
    :func:`compute`, whose value every column reproduces.

    >>> r = compute_replicates(np.array([[50.0, 40.0]]), [2.0], np.array([[30.0, 30.0],
    ...                        [10.0, 10.0]]), [3.0, 9.0])
    >>> [round(float(x), 2) for x in r["RR"]], [round(float(x), 2) for x in r["I-RR"]]
    ([25.0, 33.33], [52.0, 62.5])
    """
    if len(attack_acc) == 0:
        return None
    clean_acc, attack_acc = np.asarray(clean_acc, float), np.asarray(attack_acc, float)
    c = clean_acc.mean(axis=0) if len(clean_acc) else np.zeros(attack_acc.shape[1])
    t0 = statistics.fmean(clean_time) if clean_time else 0.0
    mean_asr = c - attack_acc.mean(axis=0)
    max_asr = c - attack_acc.min(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rr = np.where(max_asr == 0, 0.0, 100.0 * (1.0 - mean_asr / max_asr))
        i_rr = np.where(c == 0, 0.0, 100.0 * (1.0 - (mean_asr / c) * (max_asr / c)))
    t_span = max(attack_time) - t0
    ae = 0.0 if t_span == 0 else 100.0 * (statistics.fmean(attack_time) - t0) / t_span
    ae_arr = np.full_like(c, ae)
    return {"RR": rr, "AE": ae_arr, "CREI": alpha * rr + (1 - alpha) * ae_arr, "I-RR": i_rr,
            "I-CREI": alpha * i_rr + (1 - alpha) * ae_arr}


@dataclass(frozen=True)
class GroupKey:
    dataset: str
    method: str
    threat_model: str
    preset: str
    setting: str
    mode: str
    ipc: int | None  # None = pooled over the IPCs


def metrics_for(records: list[Record], *, mode: str, ipcs: list[int] | None = None,
                alpha: float = 0.5, ae_baseline: str = DEFAULT_AE_BASELINE) -> MetricValues:
    """Metrics for one model family (one method, one repeat) in ``mode``, pooled over ``ipcs``."""
    rows = [r for r in records if ipcs is None or r.ipc in ipcs]
    by_ipc_clean: dict[int, list[Record]] = defaultdict(list)
    for r in rows:
        if r.mode == "clean":
            by_ipc_clean[r.ipc].append(r)
    present = sorted(by_ipc_clean)
    clean_acc = [statistics.fmean(x.accuracy for x in by_ipc_clean[i]) for i in present]
    clean_time = [clean_seconds(by_ipc_clean[i], mode, ae_baseline) for i in present]
    attacked = [r for r in rows if r.mode == mode and r.ipc in by_ipc_clean]
    return compute(clean_acc, clean_time, [r.accuracy for r in attacked],
                   [r.seconds for r in attacked], alpha)


@dataclass
class MetricRow:
    """Mean and std over repeats of each metric for one group."""

    key: GroupKey
    values: dict[str, tuple[float | None, float | None]]  # metric -> (mean, std)
    clean: tuple[float, float]
    repeats: int


def _mean_std(xs: list[float | None]) -> tuple[float | None, float | None]:
    # a value that overflowed (an absurdly small clean accuracy in a hand-made records file)
    # is left out like a NaN rather than crashing the table
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def metric_table(records: list[Record], *, alpha: float = 0.5, per_ipc: bool = False,
                 setting: str = "white-box", ae_baseline: str = DEFAULT_AE_BASELINE
                 ) -> list[MetricRow]:
    """One :class:`MetricRow` per (dataset, method, threat model, preset, mode[, IPC])."""
    groups: dict[tuple, dict[int, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.setting != setting and r.mode != "clean":
            continue
        base = (r.dataset, r.method, r.threat_model, r.preset)
        groups[base][r.repeat].append(r)
    rows: list[MetricRow] = []
    for (dataset, method, threat, preset), by_repeat in groups.items():
        all_ipcs = sorted({r.ipc for rs in by_repeat.values() for r in rs})
        ipc_sets: list[int | None] = list(all_ipcs) if per_ipc else [None]
        for ipc in ipc_sets:
            for mode in ("targeted", "untargeted"):
                vals = [metrics_for(rs, mode=mode, ipcs=None if ipc is None else [ipc], alpha=alpha,
                                    ae_baseline=ae_baseline)
                        for rs in by_repeat.values()]
                key = GroupKey(dataset, method, threat, preset, setting, mode, ipc)
                rows.append(MetricRow(
                    key, {m: _mean_std([v.get(m) for v in vals]) for m in ALL_METRICS},
                    _mean_std([v.clean for v in vals]),  # type: ignore[arg-type]
                    len(vals)))
    return rows
