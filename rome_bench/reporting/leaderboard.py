"""The leaderboard page: one self-contained HTML file (inline CSS and JavaScript, the scatter as
a base64 PNG, no external asset, no server) with, per (threat model, preset), a sortable table
of robust accuracy, effective robustness and the Table 1 metrics with their 95% intervals,
the clean-vs-robust scatter, the preset, the measurement protocol and the command that
regenerates the page (docs/cli.md, "rome-bench leaderboard").

Sorting: click a column header (again for the other direction), or open the page with
``#sort=COLUMN`` (ascending) or ``#sort=-COLUMN`` (descending); COLUMN is a header's
``data-col`` (``clean``, ``autoattack``, ``worst``, ``er``, ``untargeted_I-RR``, ...). Rows
without a value go last either way.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path

from rome_bench.core.records import Record
from rome_bench.core.storage import atomic_write_text
from rome_bench.core.version import __version__
from rome_bench.reporting.layout import TableGroup, split_groups
from rome_bench.reporting.naming import display_dataset, display_method
from rome_bench.reporting.robust import RobustRow, Trend, robust_rows
from rome_bench.reporting.table1 import TABLE1_COLUMNS, table1_rows
from rome_bench.reporting.table1_ci import table1_intervals
from rome_bench.reporting.uncertainty import Bootstrap, Estimate, number

PAGE = "leaderboard.html"
THREAT_MODELS = {
    "standard": "images in [0,1], the model normalizes its input, eps in pixel units",
    "beard-compat": "the published numbers' protocol: attacks on normalized tensors, quirks "
                    "included (eps acts in normalized units)",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;
background:#fff;max-width:1400px}
h1{font-size:1.5em;margin:0 0 4px}h2{font-size:1.15em;margin:28px 0 6px;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}code,pre{background:#f4f4f6;border-radius:4px;padding:2px 5px}
pre{padding:8px;overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #d6d6da;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#eef0f5;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.t,th.t{text-align:left}tbody tr:nth-child(even){background:#fafafc}
.ci{color:#777;font-size:.88em}.na{color:#aaa}
img.scatter{max-width:640px;width:100%;border:1px solid #eee;margin:8px 0}
.note{font-size:.85em;color:#444;max-width:1100px}
"""

JS = """
(function () {
  "use strict";
  function value(td) {
    var v = td.getAttribute("data-v");
    if (v === null || v === "") { return null; }
    var x = Number(v);
    return isNaN(x) ? v : x;
  }
  function compare(x, y, desc) {
    if (x === null && y === null) { return 0; }
    if (x === null) { return 1; }
    if (y === null) { return -1; }
    var c = (typeof x === "number" && typeof y === "number") ? x - y
      : String(x).localeCompare(String(y));
    return desc ? -c : c;
  }
  function sortTable(table, col, desc) {
    var heads = table.tHead.rows[0].cells, index = -1, i;
    for (i = 0; i < heads.length; i++) {
      heads[i].removeAttribute("aria-sort");
      if (heads[i].getAttribute("data-col") === col) { index = i; }
    }
    if (index < 0) { return false; }
    heads[index].setAttribute("aria-sort", desc ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) { return compare(value(a.cells[index]), value(b.cells[index]), desc); });
    rows.forEach(function (r) { body.appendChild(r); });
    return true;
  }
  function tables() { return Array.prototype.slice.call(document.querySelectorAll("table.board")); }
  function fromHash() {
    var m = /(?:^#|&)sort=(-?)([^&]+)/.exec(window.location.hash);
    if (!m) { return; }
    var col = decodeURIComponent(m[2]);
    tables().forEach(function (t) { sortTable(t, col, m[1] === "-"); });
  }
  tables().forEach(function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        var desc = th.getAttribute("aria-sort") === "ascending";
        sortTable(t, th.getAttribute("data-col"), desc);
      });
    });
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
  document.documentElement.setAttribute("data-ready", "1");
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(e: Estimate | None) -> str:
    if e is None or e.value is None:
        return '<td data-v="" class="na">N/A</td>'
    ci = (f' <span class="ci">[{number(e.low)}, {number(e.high)}]</span>'
          if e.low is not None and e.high is not None else "")
    return f'<td data-v="{e.value:.6g}">{number(e.value)}{ci}</td>'


def _scatter_png(rows: list[RobustRow], trends: dict[str, Trend | None], title: str) -> str | None:
    from rome_bench.reporting.figures import PlotError, robust_scatter_figure

    try:
        fig = robust_scatter_figure(rows, trends, title)
    except PlotError:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _protocol(group: TableGroup) -> list[str]:
    rs = group.records
    lines = []
    declared = sorted({str(p) for p in (getattr(r, "protocol", None) for r in rs) if p})
    if declared:
        lines.append("protocol: " + ", ".join(declared))
    datasets = ", ".join(display_dataset(d) for d in sorted({r.dataset for r in rs}))
    images = "/".join(str(n) for n in sorted({r.n_images for r in rs}))
    models: dict[tuple[str, str, int], set[tuple[int, int]]] = defaultdict(set)
    for r in rs:
        models[(r.dataset, r.method, r.ipc)].add((r.seed, r.repeat))
    counts = sorted({len(v) for v in models.values()})
    lines.append(f"dataset: {datasets}; test images: {images or 'unknown'}; models per row: "
                 f"{'/'.join(map(str, counts))}; architecture: "
                 f"{', '.join(sorted({r.arch for r in rs}))}; seeds: "
                 f"{', '.join(map(str, sorted({r.seed for r in rs})))}")
    for mode in ("untargeted", "targeted"):
        attacks = sorted({r.attack for r in rs if r.mode == mode and r.setting == "white-box"})
        if attacks:
            lines.append(f"{mode} white-box attacks: {', '.join(attacks)}")
    black = sorted({f"{r.setting} {r.attack}" for r in rs if r.setting != "white-box"})
    if black:
        lines.append("black-box: " + ", ".join(black))
    with_outcomes = sum(r.outcomes is not None for r in rs)
    lines.append(f"per-image outcomes: {with_outcomes} of {len(rs)} records")
    return lines


def _section(group: TableGroup, boot: Bootstrap, alpha: float, index: int) -> str:
    rows, trends = robust_rows(group.records, boot)
    t1 = {(r.dataset, r.method, r.ipcs[0]): r for r in table1_rows(group.records, alpha, True)}
    t1_ci = table1_intervals(group.records, boot, alpha, per_ipc=True)
    heads = [("dataset", "Dataset", "t"), ("method", "Method", "t"), ("ipc", "IPC", ""),
             ("models", "models", ""), ("clean", "Clean", ""), ("autoattack", "AutoAttack", ""),
             ("worst", "Worst case", ""), ("er", "Eff. robustness", "")]
    heads += [(c, f"{'T' if c.startswith('targeted') else 'U'} {c.split('_', 1)[1]}", "")
              for c in TABLE1_COLUMNS]
    out = [f'<section id="group-{index}"><h2>threat model: {_e(group.threat_model)} | preset: '
           f'{_e(group.preset)}</h2>',
           f'<p class="meta">threat model <b>{_e(group.threat_model)}</b>: '
           f'{_e(THREAT_MODELS.get(group.threat_model, "as recorded"))}<br>preset '
           f'<b>{_e(group.preset)}</b><br>' + "<br>".join(_e(x) for x in _protocol(group))
           + "</p>",
           '<table class="board"><thead><tr>' + "".join(
               f'<th data-col="{_e(col)}" class="{cls}">{_e(label)}</th>'
               for col, label, cls in heads) + "</tr></thead><tbody>"]
    for r in rows:
        ipc = "full" if r.ipc == 0 else str(r.ipc)
        cells = [f'<td class="t" data-v="{_e(display_dataset(r.dataset))}">'
                 f'{_e(display_dataset(r.dataset))}</td>',
                 f'<td class="t" data-v="{_e(display_method(r.method))}">'
                 f'{_e(display_method(r.method))}</td>',
                 f'<td data-v="{r.ipc}">{ipc}</td>', f'<td data-v="{r.models}">{r.models}</td>',
                 _cell(r.clean), _cell(r.autoattack), _cell(r.worst), _cell(r.effective)]
        metrics = t1.get((r.dataset, r.method, r.ipc))
        ci = t1_ci.get((r.dataset, r.method, r.ipc))
        for c in TABLE1_COLUMNS:
            mean = metrics.cells.get(c, (None, None))[0] if metrics else None
            iv = ci.cells.get(c) if ci else None
            cells.append(_cell(Estimate(mean, iv.low if iv else None, iv.high if iv else None)))
        out.append(f'<tr data-method="{_e(r.method)}" data-ipc="{r.ipc}">' + "".join(cells)
                   + "</tr>")
    out.append("</tbody></table>")
    trend_text = []
    for ds, trend in sorted(trends.items()):
        if trend is None:
            trend_text.append(f"{display_dataset(ds)}: no random trend (method random at two "
                              "IPCs or more is needed), so no effective robustness.")
        else:
            trend_text.append(
                f"{display_dataset(ds)}: random trend over IPC {', '.join(map(str, trend.ipcs))}"
                f": logit(AA) = {trend.slope:.3f} logit(clean) {trend.intercept:+.3f}.")
    out.append('<p class="note">Accuracies in %, mean over the models of a row, with 95% '
               f"percentile-bootstrap intervals in brackets ({boot.resamples} resamples, seed "
               f"{boot.seed}; over models and test images where the records carry per-image "
               "outcomes, over models only where they do not, none for a single model without "
               "outcomes). AutoAttack: untargeted. Worst case: an image counts only if it "
               "survives every untargeted attack measured (N/A without per-image outcomes). "
               "Eff. robustness: AutoAttack accuracy minus the trend of random real subsets at "
               "the row's clean accuracy, in points (a line in logit space, Taori et al. 2020). "
               f"{_e(' '.join(trend_text))} T/U RR, CREI, I-RR, I-CREI: the published "
               f"metrics (alpha {alpha:g}), per IPC; T = targeted, U = untargeted. Click a "
               "header to sort.</p>")
    png = _scatter_png(rows, trends, f"clean vs AutoAttack accuracy\n{group.title}")
    if png:
        out.append(f'<img class="scatter" alt="clean vs AutoAttack accuracy, {_e(group.title)}" '
                   f'src="data:image/png;base64,{png}">')
    out.append("</section>")
    return "\n".join(out)


def leaderboard_html(records: list[Record], command: str, boot: Bootstrap | None = None,
                     alpha: float = 0.5) -> str:
    """The page for ``records``; ``command`` is shown as the one that regenerates it."""
    boot = boot or Bootstrap()
    groups = split_groups(records)
    newest = max((r.created for r in records if r.created), default="")
    sections = "\n".join(_section(g, boot, alpha, i) for i, g in enumerate(groups))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>rome-bench leaderboard</title>
<style>{CSS}</style>
<script>
window.addEventListener("error", function (e) {{
  document.documentElement.setAttribute("data-js-error", String(e.message));
}});
</script>
</head>
<body>
<h1>rome-bench leaderboard</h1>
<p class="meta">rome-bench {_e(__version__)}; {len(records)} records
{f"up to {_e(newest)}" if newest else ""}; {len(groups)} table(s), one per (threat model,
preset).</p>
<p class="meta">Regenerate with:</p>
<pre><code>{_e(command)}</code></pre>
{sections}
<script>{JS}</script>
</body>
</html>
"""


def write_leaderboard(records: list[Record], folder: str | Path, command: str,
                      boot: Bootstrap | None = None, alpha: float = 0.5) -> Path:
    """Write ``folder/leaderboard.html`` and return its path."""
    path = Path(folder) / PAGE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, leaderboard_html(records, command, boot, alpha))
    return path
