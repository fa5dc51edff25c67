"""The paper's Table 1 layout: per method, targeted and untargeted RR, CREI, I-RR and I-CREI,
pooled over IPCs (or one row per IPC), with the best and second-best marked and, on request,
the published value beside each cell."""

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
from rome_bench.reporting.metrics import METRICS, MetricRow, metric_table
from rome_bench.reporting.naming import (
    display_dataset,
    display_method,
    format_value,
    method_order,
    reference_key,
)

TABLE1_COLUMNS = tuple(f"{mode}_{m}" for mode in ("targeted", "untargeted") for m in METRICS)
CSV_HEADER = ("dataset", "method") + TABLE1_COLUMNS
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


def table1_rows(records: list[Record], alpha: float = 0.5, per_ipc: bool = False) -> list[Table1Row]:
    """Metrics per (dataset, method), pooled over IPCs (or one row per IPC with ``per_ipc``)."""
    rows: dict[tuple, Table1Row] = {}
    metric_rows: list[MetricRow] = metric_table(records, alpha=alpha, per_ipc=per_ipc)
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
    marks: dict[tuple[int, str], str] = {}
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
            for v, i in vals:
                if v == distinct[0]:
                    marks[(i, col)] = "best"
                elif len(distinct) > 1 and v == distinct[1]:
                    marks[(i, col)] = "second"
    return marks


def format_table1(records: list[Record], fmt: str = "markdown", alpha: float = 0.5,
                  reference: str | None = None, threat_model: str | None = None,
                  preset: str | None = None, per_ipc: bool = False,
                  protocol: str | None = None) -> str:
    """The paper's Table 1 layout (rows = methods; targeted / untargeted RR, CREI, I-RR, I-CREI)."""
    if fmt not in FORMATS:
        raise ReportError(f"Unknown format '{fmt}'. Available: {', '.join(FORMATS)}")
    groups = split_groups(records, threat_model, preset, protocol)
    if fmt == "csv":
        one_group_for_csv(groups)
    ref = load_reference(reference) if reference else None
    parts = []
    for g in groups:
        rows = table1_rows(g.records, alpha, per_ipc)
        if per_ipc and fmt != "csv":
            ref = None  # the published table is pooled over IPCs only
        parts.append(_render_table1(rows, fmt, g, ref))
    return "\n\n".join(parts)


def _render_table1(rows: list[Table1Row], fmt: str, group: TableGroup,
                   ref: dict[tuple[str, str], dict[str, float]] | None) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER + (tuple(f"paper_{c}" for c in TABLE1_COLUMNS) if ref else ()))
        for r in rows:
            vals = [("" if r.cells.get(c, (None,))[0] is None else f"{r.cells[c][0]:.2f}")
                    for c in TABLE1_COLUMNS]
            extra = []
            if ref:
                p = ref.get(reference_key(r.dataset, r.method))
                extra = [f"{p[c]:.2f}" if p else "" for c in TABLE1_COLUMNS]
            w.writerow([display_dataset(r.dataset), display_method(r.method), *vals, *extra])
        return buf.getvalue().rstrip("\n")
    marks = _rank_marks(rows)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for c in TABLE1_COLUMNS:
            mean, std = r.cells.get(c, (None, None))
            text = format_value(mean, std, r.repeats)
            mark = marks.get((i, c))
            if mark == "best":
                text = f"**{text}**" if fmt == "markdown" else f"\\textbf{{{text}}}"
            elif mark == "second":
                text = f"<u>{text}</u>" if fmt == "markdown" else f"\\underline{{{text}}}"
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
            "bold = best, underlined = second.")
    pooled = sorted({tuple(i for i in r.ipcs if i != 0) for r in rows} - {()})
    if len(pooled) > 1:
        # e.g. a method run at IPC 1 only beside methods pooled over IPC 1 and 10
        note += (" Rows pool different IPC sets (" + "; ".join(",".join(map(str, p)) for p in pooled)
                 + "): the marks compare them anyway; --per-ipc gives like-for-like rows.")
    return render_table("Robustness (Table 1 layout)", group.title, body, headers, note, fmt)



def has_attacks(records: list[Record]) -> bool:
    """Whether the records hold white-box attacks (what Table 1 reports)."""
    return any(r.mode != "clean" and r.setting == "white-box" for r in records)


