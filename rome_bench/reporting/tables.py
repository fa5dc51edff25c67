"""The one dispatcher that decides which tables a set of records supports, formats them and
writes them: ``run``, ``evaluate`` and ``table`` all go through it.

Four tables exist: Table 1 (white-box robustness metrics, :mod:`.table1`), Table 2 (black-box
I-RR per victim, :mod:`.table2`), the accuracy table (:mod:`.accuracy`), which every set of
records supports, and the robust accuracy table (:mod:`.robust`), on request only.
"""

from __future__ import annotations

from pathlib import Path

from rome_bench.core.records import Record
from rome_bench.core.storage import atomic_write_text
from rome_bench.reporting.accuracy import format_accuracy
from rome_bench.reporting.layout import split_groups
from rome_bench.reporting.metrics import DEFAULT_AE_BASELINE, check_ae_baseline
from rome_bench.reporting.robust import format_robust
from rome_bench.reporting.table1 import format_table1, has_attacks
from rome_bench.reporting.table2 import format_table2, has_blackbox
from rome_bench.reporting.uncertainty import Bootstrap

TABLE1, TABLE2, ACCURACY, ROBUST = "table1", "table2", "accuracy", "robust"
# what `rome-bench table --kind` accepts: the Table-1 layout, the accuracy table, Table 2, the
# robust accuracy table
KINDS = ("robustness", "accuracy", "blackbox", "robust")


def tables_for(records: list[Record], kind: str | None = None) -> list[str]:
    """The tables to show for ``records``.

    ``None`` means every table the records support (what a run prints and writes): Table 1
    when they hold white-box attacks, Table 2 when they hold black-box ones, and the accuracy
    table always. A ``kind`` asks for one table; ``robustness`` falls back to Table 2 for
    black-box-only records and to the accuracy table for clean-only ones.
    """
    white, black = has_attacks(records), has_blackbox(records)
    if kind is None:
        return [name for name, ok in ((TABLE1, white), (TABLE2, black), (ACCURACY, True)) if ok]
    if kind == "blackbox":
        return [TABLE2]
    if kind == "robust":
        return [ROBUST]
    if kind == "robustness" and white:
        return [TABLE1]
    if kind == "robustness" and black:
        return [TABLE2]
    return [ACCURACY]


def format_tables(records: list[Record], names: list[str], fmt: str = "markdown",
                  alpha: float = 0.5, reference: str | None = None,
                  threat_model: str | None = None, preset: str | None = None,
                  per_ipc: bool = False, protocol: str | None = None,
                  ci: Bootstrap | None = None, bootstrap: Bootstrap | None = None,
                  ae_baseline: str = DEFAULT_AE_BASELINE) -> str:
    """The named tables (see :func:`tables_for`) in ``fmt``, separated by blank lines.

    ``protocol`` keeps only records of that evaluation protocol; ``ci`` adds bootstrap
    intervals to Table 1; ``bootstrap`` sets the robust table's (default: ``ci``, else 2000
    resamples, seed 0).
    """
    check_ae_baseline(ae_baseline)
    parts = []
    for name in names:
        if name == TABLE1:
            parts.append(format_table1(records, fmt, alpha, reference, threat_model, preset,
                                       per_ipc, protocol, ci, ae_baseline))
        elif name == ROBUST:
            chosen = [r for r in records if protocol is None or r.protocol == protocol]
            parts.append(format_robust(chosen, fmt, threat_model, preset,
                                       bootstrap or ci or Bootstrap()))
        elif name == TABLE2:
            parts.append(format_table2(records, fmt, alpha, reference, threat_model, preset,
                                       protocol))
        else:
            parts.append(format_accuracy(records, fmt, threat_model, preset, protocol))
    return "\n\n".join(parts)


def write_tables(records: list[Record], folder: Path, alpha: float = 0.5,
                 ae_baseline: str = DEFAULT_AE_BASELINE) -> list[Path]:
    """Write every table of a run folder: ``tables.md`` with all of them, and CSV and LaTeX per
    (threat model, preset, protocol) group; returns the paths."""
    names = tables_for(records)
    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        atomic_write_text(path, text)
        written.append(path)

    for g in split_groups(records):
        stem = g.stem
        if TABLE2 in names and has_blackbox(g.records):
            for ext, fmt in (("csv", "csv"), ("tex", "latex")):
                write(folder / f"table2_{stem}.{ext}", format_table2(g.records, fmt, alpha) + "\n")
    write(folder / "tables.md",
          format_tables(records, names, "markdown", alpha, ae_baseline=ae_baseline) + "\n")
    for g in split_groups(records):
        stem = g.stem
        if has_attacks(g.records):
            for ext, fmt in (("csv", "csv"), ("tex", "latex")):
                write(folder / f"table1_{stem}.{ext}",
                      format_table1(g.records, fmt, alpha, ae_baseline=ae_baseline) + "\n")
        write(folder / f"accuracy_{stem}.csv", format_accuracy(g.records, "csv") + "\n")
    return written
