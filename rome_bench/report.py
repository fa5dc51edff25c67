"""Tables from records: the paper's Table 1 layout and the per-IPC accuracy table.

Like lm-eval's ``make_table``: fixed columns, value and +- side by side, deterministic row
order, ``N/A`` for missing values, markdown / CSV / LaTeX from the same rows. One table never
mixes threat models or presets: records holding several are split into one titled table each
(markdown, LaTeX) or rejected with a message (CSV, whose header is fixed).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tabulate import tabulate

from rome_bench.attacks import ATTACKS, SUITE
from rome_bench.metrics import METRICS, MetricRow, metric_table
from rome_bench.records import Record
from rome_bench.registry import RomeBenchError, normalize_name

TABLE1_COLUMNS = tuple(f"{mode}_{m}" for mode in ("targeted", "untargeted") for m in METRICS)
CSV_HEADER = ("dataset", "method") + TABLE1_COLUMNS
FORMATS = ("markdown", "csv", "latex")

DISPLAY_METHOD = {"full": "Full-size", "random": "Random", "dc": "DC", "dsa": "DSA", "mtt": "MTT",
                  "dm": "DM", "idm": "IDM", "bacon": "BACON", "datm": "DATM", "rome": "ROME",
                  "rome-compat": "ROME-compat", "rome-no-rpm": "ROME w/o RPM",
                  "rome-no-ap": "ROME w/o AP"}
DISPLAY_DATASET = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cifar10-mini": "CIFAR-10-mini"}
# Which published row a method is compared with (--reference paper).
REFERENCE_METHOD = {"rome-compat": "ROME", "full": "Full-size"}
REFERENCE_DATASET = {"cifar10-mini": "CIFAR-10"}
ROW_ORDER = ["full", "random", "dc", "dsa", "mtt", "dm", "idm", "bacon", "datm", "rome-no-rpm",
             "rome-no-ap", "rome", "rome-compat"]


class ReportError(RomeBenchError):
    """A table that cannot be made from the given records."""


def display_method(name: str) -> str:
    return DISPLAY_METHOD.get(normalize_name(name), name)


def display_dataset(name: str) -> str:
    return DISPLAY_DATASET.get(name, name)


def _method_order(name: str) -> tuple[int, str]:
    key = normalize_name(name)
    for i, known in enumerate(ROW_ORDER):
        if key == known or display_method(known).lower() == key:
            return (i if known not in ("rome", "rome-compat") else 1000 + i, key)
    return (500, key)


def _fmt(mean: float | None, std: float | None, repeats: int) -> str:
    if mean is None:
        return "N/A"
    return f"{mean:.2f}" if repeats <= 1 or std is None else f"{mean:.2f} ± {std:.2f}"


@dataclass
class TableGroup:
    """The records of one (threat model, preset): the unit a table may cover."""

    threat_model: str
    preset: str
    records: list[Record]

    @property
    def title(self) -> str:
        return f"threat model: {self.threat_model} | preset: {self.preset}"


def split_groups(records: list[Record], threat_model: str | None = None,
                 preset: str | None = None) -> list[TableGroup]:
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        if threat_model and r.threat_model != threat_model:
            continue
        if preset and r.preset != preset:
            continue
        groups[(r.threat_model, r.preset)].append(r)
    if not groups:
        raise ReportError("no records match the selected threat model / preset")
    return [TableGroup(t, p, rs) for (t, p), rs in sorted(groups.items())]


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


def _reference_key(dataset: str, method: str) -> tuple[str, str]:
    ds = display_dataset(REFERENCE_DATASET.get(dataset, dataset))
    m = REFERENCE_METHOD.get(normalize_name(method))
    return ds, m if m else display_method(method)


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
    return sorted(rows.values(), key=lambda r: (r.dataset, _method_order(r.method), r.ipcs))


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
                  preset: str | None = None, per_ipc: bool = False) -> str:
    """The paper's Table 1 layout (rows = methods; targeted / untargeted RR, CREI, I-RR, I-CREI)."""
    if fmt not in FORMATS:
        raise ReportError(f"Unknown format '{fmt}'. Available: {', '.join(FORMATS)}")
    groups = split_groups(records, threat_model, preset)
    if fmt == "csv" and len(groups) > 1:
        raise ReportError("the records mix " + ", ".join(g.title for g in groups) +
                          "; a CSV table holds one: choose with --threat-model / --preset")
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
                p = ref.get(_reference_key(r.dataset, r.method))
                extra = [f"{p[c]:.2f}" if p else "" for c in TABLE1_COLUMNS]
            w.writerow([display_dataset(r.dataset), display_method(r.method), *vals, *extra])
        return buf.getvalue().rstrip("\n")
    marks = _rank_marks(rows)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for c in TABLE1_COLUMNS:
            mean, std = r.cells.get(c, (None, None))
            text = _fmt(mean, std, r.repeats)
            mark = marks.get((i, c))
            if mark == "best":
                text = f"**{text}**" if fmt == "markdown" else f"\\textbf{{{text}}}"
            elif mark == "second":
                text = f"<u>{text}</u>" if fmt == "markdown" else f"\\underline{{{text}}}"
            if ref is not None:
                p = ref.get(_reference_key(r.dataset, r.method))
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


def render_table(kind: str, title: str, body: list[list[str]], headers: list[str], note: str,
                 fmt: str) -> str:
    """A table with its note: a markdown section headed ``kind — title``, or LaTeX with the
    title and note as comments (CSV is written elsewhere, without decoration)."""
    if fmt == "markdown":
        return (f"### {kind} — {title}\n\n"
                + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
                + f"\n\n{note}")
    latex = tabulate(body, headers=headers, tablefmt="latex_raw", disable_numparse=True)
    return f"% {title}\n% {note}\n{latex}"


def accuracy_rows(records: list[Record]) -> tuple[list[str], list[list[str]]]:
    """Clean and per-attack accuracy (mean +- std over repeats) per method x IPC.

    Transfer records are left out: they hold one accuracy per surrogate, which the transfer
    heatmap and Table 2 show.
    """
    records = [r for r in records if r.setting != "transfer"]
    present = {r.attack for r in records if r.mode != "clean"}
    order = [a for a in SUITE if a in present] + sorted(present - set(SUITE))
    cols = [("clean", "clean")]
    for a in order:
        spec = ATTACKS.get(a) if a in ATTACKS else None
        if spec is None or spec.targeted:
            cols.append((a, "targeted"))
        cols.append((a, "untargeted"))
    cells: dict[tuple[str, str, int], dict[tuple[str, str], list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for r in records:
        cells[(r.dataset, r.method, r.ipc)][(r.attack if r.mode != "clean" else "clean", r.mode)].append(
            r.accuracy)
    headers = ["Dataset", "Method", "IPC", "models"] + [
        "Clean" if a == "clean" else f"{a} ({'T' if m == 'targeted' else 'U'})" for a, m in cols]
    body = []
    for (ds, method, ipc), vals in sorted(cells.items(), key=lambda kv: (kv[0][0], _method_order(
            kv[0][1]), kv[0][2])):
        n = len(vals.get(("clean", "clean"), []))
        row = [display_dataset(ds), display_method(method), "full" if ipc == 0 else str(ipc), str(n)]
        for key in cols:
            xs = vals.get(key)
            if not xs:
                row.append("N/A")
            else:
                row.append(_fmt(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0,
                                len(xs)))
        body.append(row)
    return headers, body


def format_accuracy(records: list[Record], fmt: str = "markdown", threat_model: str | None = None,
                    preset: str | None = None) -> str:
    """The second table: clean and attacked accuracy (%) per method and IPC."""
    groups = split_groups(records, threat_model, preset)
    if fmt == "csv" and len(groups) > 1:
        raise ReportError("the records mix " + ", ".join(g.title for g in groups) +
                          "; a CSV table holds one: choose with --threat-model / --preset")
    parts = []
    for g in groups:
        headers, body = accuracy_rows(g.records)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(headers)
            w.writerows(body)
            parts.append(buf.getvalue().rstrip("\n"))
        elif fmt == "latex":
            parts.append(f"% accuracy (%) — {g.title}\n" + tabulate(
                body, headers=headers, tablefmt="latex", disable_numparse=True))
        else:
            parts.append(f"### Accuracy (%) — {g.title}\n\n" + tabulate(
                body, headers=headers, tablefmt="github", disable_numparse=True))
    return "\n\n".join(parts)


def has_attacks(records: list[Record]) -> bool:
    """Whether the records hold white-box attacks (what Table 1 reports)."""
    return any(r.mode != "clean" and r.setting == "white-box" for r in records)


def write_tables(records: list[Record], folder: Path, alpha: float = 0.5) -> list[Path]:
    """Write every table of a run folder (markdown, CSV per group, LaTeX); returns the paths."""
    from rome_bench.storage import atomic_write_text

    written = []
    md = [format_accuracy(records, "markdown")]
    if has_attacks(records):
        md.insert(0, format_table1(records, "markdown", alpha))
    from rome_bench import table2

    if table2.has_blackbox(records):
        md.insert(1 if has_attacks(records) else 0, table2.format_table2(records, "markdown", alpha))
        written.extend(table2.write_table2(records, folder, alpha))
    atomic_write_text(folder / "tables.md", "\n\n".join(md) + "\n")
    written.append(folder / "tables.md")
    for g in split_groups(records):
        stem = f"{g.threat_model}_{g.preset}"
        if has_attacks(g.records):
            p = folder / f"table1_{stem}.csv"
            atomic_write_text(p, format_table1(g.records, "csv", alpha) + "\n")
            written.append(p)
            p = folder / f"table1_{stem}.tex"
            atomic_write_text(p, format_table1(g.records, "latex", alpha) + "\n")
            written.append(p)
        p = folder / f"accuracy_{stem}.csv"
        atomic_write_text(p, format_accuracy(g.records, "csv") + "\n")
        written.append(p)
    return written
