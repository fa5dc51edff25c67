"""The accuracy table: clean and per-attack accuracy (%) per method and IPC, mean +- std over
the retrained models."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict

from tabulate import tabulate

from rome_bench.core.catalog import ATTACKS, SUITE
from rome_bench.core.records import Record
from rome_bench.reporting.layout import one_group_for_csv, split_groups
from rome_bench.reporting.naming import display_dataset, display_method, format_value, method_order


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
    for (ds, method, ipc), vals in sorted(cells.items(), key=lambda kv: (kv[0][0], method_order(
            kv[0][1]), kv[0][2])):
        n = len(vals.get(("clean", "clean"), []))
        row = [display_dataset(ds), display_method(method), "full" if ipc == 0 else str(ipc), str(n)]
        for key in cols:
            xs = vals.get(key)
            if not xs:
                row.append("N/A")
            else:
                row.append(format_value(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0,
                                len(xs)))
        body.append(row)
    return headers, body


def format_accuracy(records: list[Record], fmt: str = "markdown", threat_model: str | None = None,
                    preset: str | None = None, protocol: str | None = None) -> str:
    """The second table: clean and attacked accuracy (%) per method and IPC."""
    groups = split_groups(records, threat_model, preset, protocol)
    if fmt == "csv":
        one_group_for_csv(groups)
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


