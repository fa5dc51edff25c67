"""The paper's Table 2 layout: I-RR per victim under transfer and query black-box attacks.

Columns: targeted transfer, targeted query, untargeted transfer, untargeted query I-RR, each
pooled exactly like the white-box metrics (:mod:`rome_bench.reporting.metrics`): per victim method and
repeat, ``C`` is its clean accuracy averaged over the IPCs, and the attacked accuracies are
flattened over attacks x IPCs x (for transfer) surrogates. Self-transfer records (surrogate ==
victim) are the white-box numbers of the same attack and are left out, so the transfer column
measures transfer only. Like the Table-1 renderer, one table never mixes threat models or
presets.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rome_bench.core.records import Record
from rome_bench.reporting import layout, naming
from rome_bench.reporting.metrics import metric_table

TABLE2_COLUMNS = ("targeted_transfer_I-RR", "targeted_query_I-RR", "untargeted_transfer_I-RR",
                  "untargeted_query_I-RR")
BLACKBOX_SETTINGS = ("transfer", "query")


def has_blackbox(records: list[Record]) -> bool:
    """Whether any attacked record is a transfer or query measurement."""
    return any(r.mode != "clean" and r.setting in BLACKBOX_SETTINGS for r in records)


def transfer_only(records: list[Record]) -> list[Record]:
    """Drop self-transfer rows (surrogate == victim): they are white-box measurements."""
    return [r for r in records if not (r.setting == "transfer" and r.source_model == r.method)]


@dataclass
class Table2Row:
    dataset: str
    method: str
    ipcs: list[int]
    clean: tuple[float | None, float | None]
    cells: dict[str, tuple[float | None, float | None]]
    repeats: int


def table2_rows(records: list[Record], alpha: float = 0.5) -> list[Table2Row]:
    """One row per (dataset, victim method); I-RR mean and std over repeats per column.

    >>> from rome_bench.core.records import Record
    >>> def rec(mode, acc, setting="transfer", src="B"):
    ...     return Record("r", "A", "cifar10", 50, 0, 0, "convnet", "paper", "standard", setting,
    ...                   src if setting == "transfer" else None, mode, "PGD", 8 / 255, acc, 1.0, 10)
    >>> rows = table2_rows([rec("clean", 50.0, "white-box"), rec("untargeted", 40.0),
    ...                     rec("untargeted", 20.0)])
    >>> round(rows[0].cells["untargeted_transfer_I-RR"][0], 2)  # 100 (1 - 20 * 30 / 50^2)
    76.0
    """
    rows: dict[tuple[str, str], Table2Row] = {}
    ipcs: dict[tuple[str, str], set[int]] = {}
    kept = transfer_only(records)
    for r in kept:
        ipcs.setdefault((r.dataset, r.method), set()).add(r.ipc)
    for setting in BLACKBOX_SETTINGS:
        for mr in metric_table(kept, alpha=alpha, setting=setting):
            k = (mr.key.dataset, mr.key.method)
            row = rows.setdefault(k, Table2Row(k[0], k[1], sorted(ipcs.get(k, ())), mr.clean, {},
                                               mr.repeats))
            row.cells[f"{mr.key.mode}_{setting}_I-RR"] = mr.values["I-RR"]
    return sorted(rows.values(), key=lambda r: (r.dataset, naming.method_order(r.method)))


def load_reference2(name: str = "paper") -> dict[tuple[str, str], dict[str, float]]:
    """Published Table 2 values keyed by (dataset, method) display names."""
    if name == "paper":
        text = (resources.files("rome_bench") / "assets" / "rome_table2_blackbox.csv").read_text()
    else:
        path = Path(name)
        if not path.is_file():
            raise layout.ReportError(f"reference table {path} does not exist (use 'paper' or a CSV path)")
        text = path.read_text()
    out: dict[tuple[str, str], dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        missing = [c for c in ("dataset", "method", *TABLE2_COLUMNS) if c not in row]
        if missing:
            raise layout.ReportError(f"reference {name} lacks the Table-2 columns {missing}")
        out[(row["dataset"], row["method"])] = {c: float(row[c]) for c in TABLE2_COLUMNS}
    return out


def format_table2(records: list[Record], fmt: str = "markdown", alpha: float = 0.5,
                  reference: str | None = None, threat_model: str | None = None,
                  preset: str | None = None, protocol: str | None = None) -> str:
    """Table 2 (rows = victim methods) in markdown, CSV or LaTeX, optionally beside the paper's."""
    if fmt not in layout.FORMATS:
        raise layout.ReportError(f"Unknown format '{fmt}'. Available: {', '.join(layout.FORMATS)}")
    if not has_blackbox(records):
        raise layout.ReportError("no transfer or query records: run with --setting transfer,query")
    groups = [g for g in layout.split_groups(records, threat_model, preset, protocol)
              if has_blackbox(g.records)]
    if not groups:
        raise layout.ReportError("no transfer or query records match the selected threat model / preset")
    if fmt == "csv":
        layout.one_group_for_csv(groups)
    ref = load_reference2(reference) if reference else None
    return "\n\n".join(_render(table2_rows(g.records, alpha), fmt, g, ref) for g in groups)


def _render(rows: list[Table2Row], fmt: str, group: layout.TableGroup,
            ref: dict[tuple[str, str], dict[str, float]] | None) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("dataset", "ipc", "method", "clean", *TABLE2_COLUMNS)
                   + (tuple(f"paper_{c}" for c in TABLE2_COLUMNS) if ref else ()))
        for r in rows:
            vals = [("" if r.cells.get(c, (None,))[0] is None else f"{r.cells[c][0]:.2f}")
                    for c in TABLE2_COLUMNS]
            extra = []
            if ref is not None:
                p = ref.get(naming.reference_key(r.dataset, r.method))
                extra = [f"{p[c]:.2f}" if p else "" for c in TABLE2_COLUMNS]
            clean = "" if r.clean[0] is None else f"{r.clean[0]:.2f}"
            w.writerow([naming.display_dataset(r.dataset), ",".join(map(str, r.ipcs)),
                        naming.display_method(r.method), clean, *vals, *extra])
        return buf.getvalue().rstrip("\n")
    body = []
    for r in rows:
        cells = []
        for c in TABLE2_COLUMNS:
            mean, std = r.cells.get(c, (None, None))
            text = naming.format_value(mean, std, r.repeats)
            if ref is not None:
                p = ref.get(naming.reference_key(r.dataset, r.method))
                if p is None:
                    text += " (paper N/A)"
                else:
                    text += (f" (paper {p[c]:.2f}, {mean - p[c]:+.2f})" if mean is not None
                             else f" (paper {p[c]:.2f})")
            cells.append(text.replace("±", "$\\pm$") if fmt == "latex" else text)
        clean = naming.format_value(r.clean[0], r.clean[1], r.repeats)
        body.append([naming.display_dataset(r.dataset), naming.display_method(r.method),
                     ",".join("full" if i == 0 else str(i) for i in r.ipcs), clean, *cells])
    headers = ["Dataset", "Victim", "IPC", "Clean", "T transfer I-RR", "T query I-RR",
               "U transfer I-RR", "U query I-RR"]
    note = ("I-RR per victim, pooled like Table 1 (flattened over attacks x IPCs, and over "
            f"surrogates for transfer). Transfer: {_attacks(group, 'transfer')} crafted on every "
            f"other model (self-transfer left out); query: {_attacks(group, 'query')}. "
            "T = targeted, U = untargeted.")
    if ref is not None and group.threat_model != "beard-compat":
        note += (" The paper's numbers were measured under the beard-compat threat model: "
                 "compare them with --threat-model beard-compat records.")
    return layout.render_table("Black-box robustness (Table 2 layout)", group.title, body, headers, note,
                        fmt)


def _attacks(group: layout.TableGroup, setting: str) -> str:
    names = sorted({r.attack for r in group.records if r.setting == setting and r.mode != "clean"})
    return ", ".join(names) if names else "none"
