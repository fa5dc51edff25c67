"""What every table shares: the formats, the split into (threat model, preset, protocol)
groups, and the rendering of a table with its note.

Like lm-eval's ``make_table``: fixed columns, value and +- side by side, deterministic row
order, ``N/A`` for missing values, markdown / CSV / LaTeX from the same rows. One table never
mixes threat models, presets or evaluation protocols: records holding several are split into
one titled table each (markdown, LaTeX) or rejected with a message (CSV, whose header is fixed).
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
    """The records of one (threat model, preset, protocol): the unit a table may cover."""

    threat_model: str
    preset: str
    records: list[Record]
    protocol: str = "native"
    # whether the title names the protocol: when any record of the table's input is not native
    # (all-native records keep the titles they had before protocols existed)
    show_protocol: bool = False

    @property
    def title(self) -> str:
        text = f"threat model: {self.threat_model} | preset: {self.preset}"
        return text + (f" | protocol: {self.protocol}" if self.show_protocol else "")

    @property
    def stem(self) -> str:
        """The file-name stem of the group's CSV and LaTeX tables."""
        stem = f"{self.threat_model}_{self.preset}"
        return stem + (f"_{self.protocol}" if self.protocol != "native" else "")


def split_groups(records: list[Record], threat_model: str | None = None,
                 preset: str | None = None, protocol: str | None = None) -> list[TableGroup]:
    """The records split by (threat model, preset, protocol), optionally only one of each.

    A table never pools two threat models, presets or evaluation protocols: their numbers
    are not comparable.
    """
    groups: dict[tuple[str, str, str], list[Record]] = defaultdict(list)
    for r in records:
        if threat_model and r.threat_model != threat_model:
            continue
        if preset and r.preset != preset:
            continue
        if protocol and r.protocol != protocol:
            continue
        groups[(r.threat_model, r.preset, r.protocol)].append(r)
    if not groups:
        what = "threat model / preset" + (" / protocol" if protocol else "")
        raise ReportError(f"no records match the selected {what}")
    show = any(p != "native" for _, _, p in groups)
    return [TableGroup(t, p, rs, proto, show) for (t, p, proto), rs in sorted(groups.items())]


def one_group_for_csv(groups: list[TableGroup]) -> None:
    """Raise unless ``groups`` is one group: a CSV table (fixed header, no title) holds one."""
    if len(groups) <= 1:
        return
    options = "--threat-model / --preset"
    if len({g.protocol for g in groups}) > 1:
        options += " / --protocol"
    raise ReportError("the records mix " + ", ".join(g.title for g in groups) +
                      f"; a CSV table holds one: choose with {options}")


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


