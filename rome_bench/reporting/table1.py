"""The paper's Table 1 layout: per method, targeted and untargeted RR, CREI, I-RR and I-CREI,
pooled over IPCs (or one row per IPC), with the best and second-best marked and, on request,
the published value beside each cell and 95% bootstrap intervals (:mod:`.table1_ci`)."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rome_bench.core.records import Record
from rome_bench.reporting.layout import (
    FORMATS,
    ReportError,
    TableGroup,
    one_group_for_csv,
    render_table,
    split_groups,
)
from rome_bench.reporting.metrics import DEFAULT_AE_BASELINE, METRICS, MetricRow, metric_table
from rome_bench.reporting.naming import (
    display_dataset,
    display_method,
    format_value,
    method_order,
    reference_key,
)
from rome_bench.reporting.table1_ci import RowIntervals, lead_is_significant, table1_intervals
from rome_bench.reporting.uncertainty import IMAGES, MODELS, Bootstrap, number

TABLE1_COLUMNS = tuple(f"{mode}_{m}" for mode in ("targeted", "untargeted") for m in METRICS)
CSV_HEADER = ("dataset", "method") + TABLE1_COLUMNS
# with --ci, after the published columns (whose header stays the published table's)
CI_COLUMNS = tuple(f"{c}_ci_{end}" for c in TABLE1_COLUMNS for end in ("low", "high")) + (
    "ci_resampled",)
NOT_SIGNIFICANT = "†"


def load_reference(name: str = "paper") -> dict[tuple[str, str], dict[str, float]]:
    """Published Table 1 values keyed by (dataset, method) display names."""
    if name != "paper":
        path = Path(name)
        text = path.read_text()
    else:
        text = (resources.files("rome_bench") / "assets" / "rome_table1.csv").read_text()
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        out[(row["dataset"], row["method"])] = {c: float(row[c]) for c in TABLE1_COLUMNS}
    return out


@dataclass
class Table1Row:
    dataset: str
    method: str
    cells: dict[str, tuple[float | None, float | None]]
    repeats: int
    ipcs: list[int]


AE_BASELINE_NOTES = {
    "same-mode": "AE's clean time T0: the clean timing of the same mode (--ae-baseline same-mode).",
    "min": "AE's clean time T0: the smaller of the targeted and untargeted clean timings "
           "(--ae-baseline min, BEARD's released auto_metrics.py).",
}


def table1_rows(records: list[Record], alpha: float = 0.5, per_ipc: bool = False,
                ae_baseline: str = DEFAULT_AE_BASELINE) -> list[Table1Row]:
    """Metrics per (dataset, method), pooled over IPCs (or one row per IPC with ``per_ipc``)."""
    rows: dict[tuple, Table1Row] = {}
    metric_rows: list[MetricRow] = metric_table(records, alpha=alpha, per_ipc=per_ipc,
                                                ae_baseline=ae_baseline)
    ipcs: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in records:
        ipcs[(r.dataset, r.method)].add(r.ipc)
    for mr in metric_rows:
        k = (mr.key.dataset, mr.key.method, mr.key.ipc)
        shown = [mr.key.ipc] if per_ipc else sorted(ipcs[k[:2]])
        row = rows.setdefault(k, Table1Row(k[0], k[1], {}, mr.repeats, shown))
        for m in METRICS:
            row.cells[f"{mr.key.mode}_{m}"] = mr.values[m]
    return sorted(rows.values(), key=lambda r: (r.dataset, method_order(r.method), r.ipcs))


def _rank_marks(rows: list[Table1Row]) -> dict[tuple[int, str], str]:
    """'best' / 'second' per (row index, column), within each dataset."""
    return {k: v[0] for k, v in _ranked(rows).items()}


def _ranked(rows: list[Table1Row]) -> dict[tuple[int, str], tuple[str, int | None]]:
    """(mark, index of the first row holding the next lower value or None) per marked cell."""
    marks: dict[tuple[int, str], tuple[str, int | None]] = {}
    for col in TABLE1_COLUMNS:
        by_ds: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for i, r in enumerate(rows):
            v = r.cells.get(col, (None, None))[0]
            if v is not None:
                by_ds[r.dataset].append((round(v, 2), i))
        for vals in by_ds.values():
            distinct = sorted({v for v, _ in vals}, reverse=True)
            if len(vals) < 2:
                continue
            first_at = {v: min(i for w, i in vals if w == v) for v in distinct}
            for v, i in vals:
                rank = distinct.index(v)
                if rank > 1:
                    continue
                nxt = first_at[distinct[rank + 1]] if rank + 1 < len(distinct) else None
                marks[(i, col)] = ("best" if rank == 0 else "second", nxt)
    return marks


def format_table1(records: list[Record], fmt: str = "markdown", alpha: float = 0.5,
                  reference: str | None = None, threat_model: str | None = None,
                  preset: str | None = None, per_ipc: bool = False,
                  protocol: str | None = None, ci: Bootstrap | None = None,
                  ae_baseline: str = DEFAULT_AE_BASELINE) -> str:
    """The paper's Table 1 layout (rows = methods; targeted / untargeted RR, CREI, I-RR, I-CREI).

    ``ci`` adds 95% bootstrap intervals (CSV: ``*_ci_low``/``*_ci_high`` columns after the
    published ones) and a note on each mark whose lead is not significant.
    """
    if fmt not in FORMATS:
        raise ReportError(f"Unknown format '{fmt}'. Available: {', '.join(FORMATS)}")
    groups = split_groups(records, threat_model, preset, protocol)
    if fmt == "csv":
        one_group_for_csv(groups)
    ref = load_reference(reference) if reference else None
    parts = []
    for g in groups:
        rows = table1_rows(g.records, alpha, per_ipc, ae_baseline)
        if per_ipc and fmt != "csv":
            ref = None  # the published table is pooled over IPCs only
        intervals = None
        if ci is not None:
            found = table1_intervals(g.records, ci, alpha, per_ipc, ae_baseline=ae_baseline)
            intervals = [found.get((r.dataset, r.method, r.ipcs[0] if per_ipc else None))
                         for r in rows]
        parts.append(_render_table1(rows, fmt, g, ref, intervals, ci, ae_baseline))
    return "\n\n".join(parts)


def _render_table1(rows: list[Table1Row], fmt: str, group: TableGroup,
                   ref: dict[tuple[str, str], dict[str, float]] | None,
                   intervals: list[RowIntervals | None] | None = None,
                   boot: Bootstrap | None = None,
                   ae_baseline: str = DEFAULT_AE_BASELINE) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER + (CI_COLUMNS if intervals is not None else ())
                   + (tuple(f"paper_{c}" for c in TABLE1_COLUMNS) if ref else ()))
        for k, r in enumerate(rows):
            vals = [("" if r.cells.get(c, (None,))[0] is None else f"{r.cells[c][0]:.2f}")
                    for c in TABLE1_COLUMNS]
            if intervals is not None:
                vals += _ci_cells(intervals[k])
            extra = []
            if ref:
                p = ref.get(reference_key(r.dataset, r.method))
                extra = [f"{p[c]:.2f}" if p else "" for c in TABLE1_COLUMNS]
            w.writerow([display_dataset(r.dataset), display_method(r.method), *vals, *extra])
        return buf.getvalue().rstrip("\n")
    ranked = _ranked(rows)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for c in TABLE1_COLUMNS:
            mean, std = r.cells.get(c, (None, None))
            text = format_value(mean, std, r.repeats)
            cell_ci = intervals[i].cells.get(c) if intervals is not None and intervals[i] else None
            if cell_ci is not None and cell_ci.low is not None and mean is not None:
                text += f" [{number(cell_ci.low)}, {number(cell_ci.high)}]"
            mark, nxt = ranked.get((i, c), (None, None))
            if mark == "best":
                text = f"**{text}**" if fmt == "markdown" else f"\\textbf{{{text}}}"
            elif mark == "second":
                text = f"<u>{text}</u>" if fmt == "markdown" else f"\\underline{{{text}}}"
            if mark and intervals is not None and boot is not None and nxt is not None:
                other = intervals[nxt].cells.get(c) if intervals[nxt] else None
                if lead_is_significant(cell_ci, other, boot) is False:
                    text += NOT_SIGNIFICANT if fmt == "markdown" else "$^\\dagger$"
            if ref is not None:
                p = ref.get(reference_key(r.dataset, r.method))
                if p is not None and mean is not None:
                    text += f" (paper {p[c]:.2f}, {mean - p[c]:+.2f})"
                else:
                    text += " (paper N/A)"
            if fmt == "latex":
                text = text.replace("±", "$\\pm$")
            cells.append(text)
        ipcs = ",".join("full" if i == 0 else str(i) for i in r.ipcs)
        body.append([display_dataset(r.dataset), display_method(r.method), ipcs, *cells])
    headers = ["Dataset", "Method", "IPC"] + [
        f"{'T' if c.startswith('targeted') else 'U'} {c.split('_', 1)[1]}" for c in TABLE1_COLUMNS]
    note = ("T = targeted attacks (FGSM, PGD, PGD-L2, CW; DeepFool and AutoAttack have no "
            "targeted mode), U = untargeted (all attacks). Metrics pooled over the IPCs shown "
            "(flattened over attacks x IPCs); "
            "bold = best, underlined = second. " + AE_BASELINE_NOTES[ae_baseline])
    pooled = sorted({tuple(i for i in r.ipcs if i != 0) for r in rows} - {()})
    if len(pooled) > 1:
        # e.g. a method run at IPC 1 only beside methods pooled over IPC 1 and 10
        note += (" Rows pool different IPC sets (" + "; ".join(",".join(map(str, p)) for p in pooled)
                 + "): the marks compare them anyway; --per-ipc gives like-for-like rows.")
    if intervals is not None and boot is not None:
        note += " " + _ci_note(rows, intervals, boot)
    return render_table("Robustness (Table 1 layout)", group.title, body, headers, note, fmt)



def _ci_cells(row: RowIntervals | None) -> list[str]:
    cells = []
    for c in TABLE1_COLUMNS:
        ci = row.cells.get(c) if row else None
        cells += ["", ""] if ci is None or ci.low is None else [number(ci.low), number(ci.high)]
    return cells + [row.resampled if row else "none"]


def _ci_note(rows: list[Table1Row], intervals: list[RowIntervals | None], boot: Bootstrap) -> str:
    level = f"{100 * boot.level:g}%"
    names = [display_method(r.method) for r in rows]
    kinds = [iv.resampled if iv is not None else "none" for iv in intervals]
    models_only = [n for n, k in zip(names, kinds) if k == MODELS]
    nothing = [n for n, k in zip(names, kinds) if k not in (IMAGES, MODELS)]
    note = (f"[{level} interval]: percentile bootstrap, {boot.resamples} resamples (seed "
            f"{boot.seed}), ")
    if models_only and len(models_only) + len(nothing) == len(rows):
        note += ("over models only: the records carry no per-image outcomes (the models of a "
                 "row drawn with replacement)")
    else:
        note += ("over models and test images (the models of a row drawn with replacement, "
                 "then the test images from the records' per-image outcomes, one draw shared "
                 "by all rows)")
        if models_only:
            note += ("; over models only for rows without per-image outcomes ("
                     + ", ".join(models_only) + ")")
    if nothing:
        note += "; none for a single model without outcomes (" + ", ".join(nothing) + ")"
    return note + (f". {NOT_SIGNIFICANT} = the mark's lead over the next value is not significant "
                   f"(paired bootstrap: the {level} interval of the difference includes 0); "
                   "marks without intervals are not tested.")


def has_attacks(records: list[Record]) -> bool:
    """Whether the records hold white-box attacks (what Table 1 reports)."""
    return any(r.mode != "clean" and r.setting == "white-box" for r in records)


