"""What every table shares: the formats, the split into (threat model, preset) groups, and
the rendering of a table with its note.

Like lm-eval's ``make_table``: fixed columns, value and +- side by side, deterministic row
order, ``N/A`` for missing values, markdown / CSV / LaTeX from the same rows. One table never
mixes threat models or presets: records holding several are split into one titled table each
(markdown, LaTeX) or rejected with a message (CSV, whose header is fixed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tabulate import tabulate

from rome_bench.core.records import Record
from rome_bench.core.registry import RomeBenchError

FORMATS = ("markdown", "csv", "latex")
class ReportError(RomeBenchError):
    """A table that cannot be made from the given records."""


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


