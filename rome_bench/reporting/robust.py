"""The robust accuracy table: per method and IPC, clean accuracy, AutoAttack accuracy, the worst
case over the suite and the effective robustness, each a mean over models with a 95% bootstrap
interval (docs/metrics.md, "Robust accuracy", "Intervals", "Effective robustness").

* **Worst case over the suite**: an image counts only if it is classified correctly clean and
  after every untargeted white-box attack of the suite measured on its model; it needs the
  records' per-image ``outcomes`` (N/A without them).
* **Effective robustness** (Taori et al., 2020, "Measuring Robustness to Natural Distribution
  Shifts in Image Classification", applied to adversarial robustness): random real subsets at
  several IPCs (method ``random``) give a baseline trend of AutoAttack accuracy against clean
  accuracy, a straight line in logit space fitted by least squares; a row's effective
  robustness is its AutoAttack accuracy minus the trend at its own clean accuracy, in
  percentage points.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from rome_bench.core.catalog import SUITE
from rome_bench.core.records import Record
from rome_bench.reporting.layout import FORMATS, ReportError, render_table, split_groups
from rome_bench.reporting.naming import display_dataset, display_method, method_order
from rome_bench.reporting.uncertainty import (
    IMAGES,
    MODELS,
    NOTHING,
    Bootstrap,
    Estimate,
    mean_estimate,
    number,
)

ROBUST_ATTACK = "AutoAttack"
BASELINE_METHOD = "random"
# a proportion is clipped to [CLIP / n, 1 - CLIP / n] before its logit (n = test images), so
# that 0% and 100% have a finite logit; 1/1000 stands in for n where a record does not say it
CLIP = 0.5
DEFAULT_N = 1000


@dataclass
class RobustRow:
    """One (dataset, method, IPC) of one (threat model, preset) group."""

    dataset: str
    method: str
    ipc: int
    models: int
    n_images: int
    clean: Estimate
    autoattack: Estimate
    worst: Estimate
    effective: Estimate = field(default_factory=lambda: Estimate(None))
    attacks: tuple[str, ...] = ()  # the untargeted suite attacks of the worst case

    @property
    def resampled(self) -> str:
        """What the row's intervals resampled: ``models+images``, ``models`` or ``none``."""
        kinds = {e.resampled for e in (self.clean, self.autoattack, self.worst, self.effective)
                 if e.value is not None}
        if not kinds or kinds == {NOTHING}:
            return NOTHING
        return IMAGES if kinds <= {IMAGES} else MODELS if kinds <= {MODELS, NOTHING} else "mixed"


@dataclass
class Trend:
    """``logit(robust) = slope * logit(clean) + intercept`` fitted on a dataset's random rows."""

    dataset: str
    slope: float
    intercept: float
    ipcs: list[int]
    slope_replicates: np.ndarray | None = None
    intercept_replicates: np.ndarray | None = None

    def predict(self, clean: float | np.ndarray, n: int = DEFAULT_N) -> float | np.ndarray:
        """The trend's robust accuracy (%) at clean accuracy ``clean`` (%)."""
        return 100.0 * _sigmoid(self.slope * logit(clean, n) + self.intercept)


def logit(percent: float | np.ndarray, n: int | np.ndarray = DEFAULT_N) -> float | np.ndarray:
    """``log(p / (1 - p))`` of an accuracy in percent, clipped to [0.5/n, 1 - 0.5/n].

    ``n`` (test images; 0 = unknown) broadcasts against ``percent``.

    >>> round(float(logit(50.0)), 6), round(float(logit(0.0, 100)), 3)
    (0.0, -5.293)
    """
    n = np.asarray(n, float)
    eps = CLIP / np.where(n > 0, n, DEFAULT_N)
    p = np.clip(np.asarray(percent, float) / 100.0, eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def _sigmoid(x: float | np.ndarray) -> float | np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def fit_trend(clean: np.ndarray, robust: np.ndarray, n: np.ndarray | int = DEFAULT_N
              ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line of ``logit(robust)`` on ``logit(clean)`` over axis 0.

    ``clean`` and ``robust`` are accuracies in percent, (points,) or (points, resamples); ``n``
    the test images behind each point (for the clip of :func:`logit`). Returns (slope,
    intercept), NaN where the clean accuracies do not vary.

    >>> x = np.array([20.0, 40.0, 60.0])
    >>> y = 100 / (1 + np.exp(-(0.5 * logit(x) - 1.0)))
    >>> [round(float(v), 6) for v in fit_trend(x, y)]
    [0.5, -1.0]
    """
    n = np.asarray(n).reshape(-1, *([1] * (np.ndim(clean) - 1))) if np.ndim(n) else n
    lx, ly = logit(clean, n), logit(robust, n)
    mx, my = lx.mean(axis=0), ly.mean(axis=0)
    sxx = ((lx - mx) ** 2).sum(axis=0)
    sxy = ((lx - mx) * (ly - my)).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 1e-12, sxy / np.where(sxx > 1e-12, sxx, 1.0), np.nan)
    return slope, my - slope * mx


def effective_robustness(clean: float | np.ndarray, robust: float | np.ndarray,
                         slope: float | np.ndarray, intercept: float | np.ndarray,
                         n: int = DEFAULT_N) -> float | np.ndarray:
    """Robust accuracy minus the trend's at the same clean accuracy, in percentage points.

    The robust accuracy is clipped as :func:`logit` clips it (by less than half an image), so
    a point the trend passes through has exactly 0.

    >>> round(float(effective_robustness(50.0, 30.0, 1.0, 0.0)), 6)
    -20.0
    """
    robust_clipped = 100.0 * _sigmoid(logit(robust, n))
    return robust_clipped - 100.0 * _sigmoid(
        np.asarray(slope) * logit(clean, n) + np.asarray(intercept))


# -- the rows --------------------------------------------------------------------------------
def _model_measure(rows: list[Record]) -> np.ndarray | float | None:
    """One model's measure from its rows: the images kept by all of them when every row has
    outcomes, else the mean accuracy; None without rows."""
    if not rows:
        return None
    masks = [r.outcome_mask() for r in rows]
    if all(m is not None for m in masks) and len({len(m) for m in masks}) == 1:
        return np.logical_and.reduce(masks)
    return float(np.mean([r.accuracy for r in rows]))


def _worst_mask(clean: list[Record], attacked: dict[str, list[Record]], attacks: tuple[str, ...]
                ) -> np.ndarray | None:
    """Images correct clean and after every attack in ``attacks``; None without outcomes."""
    rows = list(clean) + [r for a in attacks for r in attacked.get(a, [])]
    if not clean or not attacks or any(not attacked.get(a) for a in attacks):
        return None
    masks = [r.outcome_mask() for r in rows]
    if any(m is None for m in masks) or len({len(m) for m in masks}) != 1:
        return None
    return np.logical_and.reduce(masks)


def worst_case_mask(records: list[Record]) -> np.ndarray | None:
    """The images one model keeps under every untargeted white-box suite attack (and clean).

    An image lost to any attack is lost. ``records`` are one model's rows; None when a row
    lacks outcomes or no suite attack was measured.
    """
    clean = [r for r in records if r.mode == "clean" and r.setting != "transfer"]
    attacked: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.mode == "untargeted" and r.setting == "white-box" and r.attack in SUITE:
            attacked[r.attack].append(r)
    return _worst_mask(clean, attacked, tuple(a for a in SUITE if a in attacked))


def robust_rows(records: list[Record], boot: Bootstrap | None = None
                ) -> tuple[list[RobustRow], dict[str, Trend | None]]:
    """The rows of one group's robust table and the random trend per dataset.

    ``records`` should hold one threat model and preset (see ``layout.split_groups``). Models
    of a row are told apart by (seed, repeat); transfer rows are left out.
    """
    boot = boot or Bootstrap()
    cells: dict[tuple[str, str, int], dict[tuple[int, int], list[Record]]] = defaultdict(
        lambda: defaultdict(list))
    for r in records:
        if r.setting == "transfer":
            continue
        cells[(r.dataset, r.method, r.ipc)][(r.seed, r.repeat)].append(r)
    rows: list[RobustRow] = []
    for (dataset, method, ipc), models in sorted(
            cells.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]), kv[0][2])):
        key = f"{dataset}|{method}|{ipc}"
        clean_by, aa_by, attacked_by = [], [], []
        for _, rs in sorted(models.items()):
            clean = [r for r in rs if r.mode == "clean"]
            attacked: dict[str, list[Record]] = defaultdict(list)
            for r in rs:
                if r.mode == "untargeted" and r.setting == "white-box" and r.attack in SUITE:
                    attacked[r.attack].append(r)
            clean_by.append(clean)
            aa_by.append(attacked.get(ROBUST_ATTACK, []))
            attacked_by.append(attacked)
        suite = tuple(a for a in SUITE if any(a in att for att in attacked_by))
        clean_models = [m for m in (_model_measure(c) for c in clean_by) if m is not None]
        worst = [_worst_mask(c, att, suite) for c, att in zip(clean_by, attacked_by)]
        n = max((r.n_images for rs in models.values() for r in rs), default=0)
        rows.append(RobustRow(
            dataset, method, ipc, len(clean_models), n,
            mean_estimate(clean_models, boot, key + "|models"),
            mean_estimate([_model_measure(a) for a in aa_by], boot, key + "|models"),
            (mean_estimate(worst, boot, key + "|models")
             if worst and all(w is not None for w in worst) else Estimate(None)),
            attacks=suite))
    trends = {ds: fit_random_trend([r for r in rows if r.dataset == ds], boot)
              for ds in sorted({r.dataset for r in rows})}
    for r in rows:
        trend = trends.get(r.dataset)
        if trend is not None:
            r.effective = _effective_estimate(r, trend, boot)
    return rows, trends


def _baseline_points(rows: list[RobustRow]) -> list[RobustRow]:
    return [r for r in rows if r.method == BASELINE_METHOD and r.clean.value is not None
            and r.autoattack.value is not None]


def _replicates(e: Estimate, boot: Bootstrap) -> np.ndarray:
    return e.replicates if e.replicates is not None else np.full(boot.resamples, e.value, float)


def fit_random_trend(rows: list[RobustRow], boot: Bootstrap) -> Trend | None:
    """The trend of one dataset's random rows (None with fewer than two random IPCs)."""
    points = _baseline_points(rows)
    if len({r.ipc for r in points}) < 2:
        return None
    n = np.array([r.n_images for r in points])
    slope, intercept = fit_trend(np.array([r.clean.value for r in points]),
                                 np.array([r.autoattack.value for r in points]), n)
    if not np.isfinite(slope):
        return None
    slope_reps = intercept_reps = None
    if any(r.clean.replicates is not None or r.autoattack.replicates is not None for r in points):
        slope_reps, intercept_reps = fit_trend(
            np.stack([_replicates(r.clean, boot) for r in points]),
            np.stack([_replicates(r.autoattack, boot) for r in points]), n)
    return Trend(rows[0].dataset, float(slope), float(intercept), sorted({r.ipc for r in points}),
                 slope_reps, intercept_reps)


def _effective_estimate(row: RobustRow, trend: Trend, boot: Bootstrap) -> Estimate:
    if row.clean.value is None or row.autoattack.value is None:
        return Estimate(None)
    n = row.n_images or DEFAULT_N
    value = float(effective_robustness(row.clean.value, row.autoattack.value, trend.slope,
                                       trend.intercept, n))
    has_reps = (trend.slope_replicates is not None or row.clean.replicates is not None
                or row.autoattack.replicates is not None)
    if not has_reps:
        return Estimate(value)
    slope = trend.slope_replicates if trend.slope_replicates is not None else trend.slope
    intercept = (trend.intercept_replicates if trend.intercept_replicates is not None
                 else trend.intercept)
    reps = np.asarray(effective_robustness(_replicates(row.clean, boot),
                                           _replicates(row.autoattack, boot), slope, intercept, n))
    low, high = boot.interval(reps)
    kinds = {row.clean.resampled, row.autoattack.resampled}
    resampled = IMAGES if kinds <= {IMAGES} else MODELS
    return Estimate(value, low, high, resampled, reps)


# -- the table -------------------------------------------------------------------------------
HEADERS = ["Dataset", "Method", "IPC", "models", "Clean", "AutoAttack", "Worst case",
           "Eff. robustness", "CI over"]
CSV_HEADER = ["dataset", "method", "ipc", "models"] + [
    f"{name}{suffix}" for name in ("clean", "autoattack", "worst_case", "effective_robustness")
    for suffix in ("", "_ci_low", "_ci_high")] + ["ci_resampled"]


def _note(rows: list[RobustRow], trends: dict[str, Trend | None], boot: Bootstrap) -> str:
    n = sorted({r.n_images for r in rows if r.n_images})
    images = f"the {'/'.join(map(str, n))} test images" if n else "the test images"
    level = f"{100 * boot.level:g}%"
    suite = sorted({a for r in rows for a in r.attacks}, key=lambda a: SUITE.index(a))
    parts = [
        f"Accuracy (%) on {images}, mean over the models of a row, [{level} interval]: "
        f"percentile bootstrap, {boot.resamples} resamples (seed {boot.seed}), two-level where "
        "the records carry per-image outcomes (the models of a row drawn with replacement, then "
        "the test images, one draw shared by the models); 'CI over' = models where they do not "
        "(models only), none where a row has one model and no outcomes.",
        "AutoAttack: untargeted.",
        "Worst case: an image counts only if it is classified correctly clean and after every "
        f"untargeted attack measured ({', '.join(suite) if suite else 'none'}); N/A without "
        "per-image outcomes.",
    ]
    for ds, trend in sorted(trends.items()):
        where = f" ({display_dataset(ds)})" if len(trends) > 1 else ""
        if trend is None:
            parts.append(f"Eff. robustness{where}: N/A, it needs method random at two IPCs or "
                         "more.")
        else:
            parts.append(
                f"Eff. robustness{where}: AutoAttack accuracy minus the trend of random real "
                f"subsets (IPC {', '.join(map(str, trend.ipcs))}) at the row's clean accuracy, "
                "in points; the trend is a least-squares line in logit space (Taori et al., "
                f"2020): logit(AA) = {trend.slope:.3f} logit(clean) {trend.intercept:+.3f}.")
    return " ".join(parts)


def format_robust(records: list[Record], fmt: str = "markdown", threat_model: str | None = None,
                  preset: str | None = None, boot: Bootstrap | None = None) -> str:
    """The robust accuracy table, one per (threat model, preset) group."""
    if fmt not in FORMATS:
        raise ReportError(f"Unknown format '{fmt}'. Available: {', '.join(FORMATS)}")
    boot = boot or Bootstrap()
    groups = split_groups(records, threat_model, preset)
    if fmt == "csv" and len(groups) > 1:
        raise ReportError("the records mix " + ", ".join(g.title for g in groups) +
                          "; a CSV table holds one: choose with --threat-model / --preset")
    parts = []
    for g in groups:
        rows, trends = robust_rows(g.records, boot)
        if fmt == "csv":
            parts.append(_csv(rows))
            continue
        body = [[display_dataset(r.dataset), display_method(r.method), _ipc(r.ipc), str(r.models),
                 r.clean.text(), r.autoattack.text(), r.worst.text(), r.effective.text(),
                 r.resampled] for r in rows]
        parts.append(render_table("Robust accuracy", g.title, body, HEADERS,
                                  _note(rows, trends, boot), fmt))
    return "\n\n".join(parts)


def _ipc(ipc: int) -> str:
    return "full" if ipc == 0 else str(ipc)


def _csv(rows: list[RobustRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for r in rows:
        cells: list[str] = []
        for e in (r.clean, r.autoattack, r.worst, r.effective):
            cells += [_num(e.value), _num(e.low), _num(e.high)]
        w.writerow([display_dataset(r.dataset), display_method(r.method), _ipc(r.ipc), r.models,
                    *cells, r.resampled])
    return buf.getvalue().rstrip("\n")


def _num(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else number(x)


def has_robust(records: list[Record]) -> bool:
    """Whether the records hold clean accuracies (the least a robust table shows)."""
    return any(r.mode == "clean" for r in records)
