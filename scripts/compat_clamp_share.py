"""How much of each beard-compat attack is the clamp alone: attacked accuracy minus clamp-only.

Under ``beard-compat`` torchattacks receives the DC-normalized tensor and clamps it to [0,1]
before the model sees it, whatever the perturbation. ``FGSM-eps0`` measures that clamp alone
(no perturbation). This script pairs, per model (method, IPC, repeat), every beard-compat
attack's accuracy with the same model's FGSM-eps0 accuracy on the same test images.

Usage (two run folders or records files over the same models and test subset)::

    rome-bench run ... --threat-model beard-compat,standard --out SUITE_RUN
    rome-bench run ... --threat-model beard-compat --attacks FGSM-eps0 --mode untargeted --out CLAMP_RUN
    python scripts/compat_clamp_share.py SUITE_RUN CLAMP_RUN
    # several runs pooled (e.g. IPC 1 and IPC 10 folders): suites first, clamp runs after --clamp
    python scripts/compat_clamp_share.py SUITE_A SUITE_B --clamp CLAMP_A CLAMP_B

Prints a markdown table (mean over the models of each cell): clean, clamp-only, and per attack
and mode the attacked accuracy minus the clamp-only accuracy (0 = the attack added nothing
to the clamp), then the lowest such gap per attack over all cells, and how closely each cell's
targeted I-RR under beard-compat follows the clamp's cost (clean minus clamp-only accuracy):
Spearman's rank correlation over the cells.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import pandas as pd
from tabulate import tabulate

from rome_bench.attacks.suite import SUITE
from rome_bench.core.records import RecordError, read_records
from rome_bench.reporting.metrics import metric_table


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks (ties share their mean rank)."""
    return statistics.correlation(pd.Series(xs).rank().tolist(), pd.Series(ys).rank().tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="+",
                    help="run folders or records files with the attack suite (without --clamp, "
                         "the last path is the clamp run)")
    ap.add_argument("--clamp", nargs="+", default=None,
                    help="run folders or records files with FGSM-eps0 under beard-compat")
    args = ap.parse_args()
    if args.clamp is None:
        # the original two-path form: SUITE CLAMP
        if len(args.suite) != 2:
            ap.error("give SUITE CLAMP, or SUITE [SUITE ...] --clamp CLAMP [CLAMP ...]")
        args.suite, args.clamp = args.suite[:1], args.suite[1:]

    def key(r) -> tuple:
        return (r.method, r.ipc, r.repeat, r.n_images)

    clamp = {key(r): r.accuracy for r in read_records(args.clamp)
             if r.threat_model == "beard-compat" and r.attack == "FGSM-eps0"}
    if not clamp:
        raise SystemExit(f"error: no beard-compat FGSM-eps0 records in {', '.join(args.clamp)}")
    per_cell: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    order: list[tuple] = []
    suite = read_records(args.suite)
    for r in suite:
        if r.threat_model != "beard-compat" or r.setting != "white-box" or key(r) not in clamp:
            continue
        cell = (r.method, r.ipc)
        if cell not in order:
            order.append(cell)
        if r.mode == "clean":
            per_cell[cell]["clean"].append(r.accuracy)
            per_cell[cell]["clamp"].append(clamp[key(r)])
        elif r.attack in SUITE:
            per_cell[cell][f"{r.attack} ({r.mode[0].upper()})"].append(r.accuracy - clamp[key(r)])
    if not order:
        raise SystemExit("error: no beard-compat suite records match the clamp records' models")
    cols = [c for a in SUITE for c in (f"{a} (T)", f"{a} (U)")
            if any(c in per_cell[cell] for cell in order)]
    rows: list[list] = []
    lowest: dict[str, float] = {}
    for cell in order:
        vals = per_cell[cell]
        row = [cell[0], cell[1] or "full", statistics.fmean(vals["clean"]),
               statistics.fmean(vals["clamp"])]
        for c in cols:
            if vals.get(c):
                gap = statistics.fmean(vals[c])
                lowest[c] = min(lowest.get(c, gap), gap)
                row.append(f"{gap:+.2f}")
            else:
                row.append("")
        rows.append(row)
    print(tabulate(rows, headers=["method", "IPC", "clean", "clamp only", *cols],
                   tablefmt="github", floatfmt=".2f"))
    print()
    # The lowest cell mean per attack: negative = the attack's largest drop below the clamp alone;
    # positive = every cell stayed above the clamp-only accuracy.
    print("lowest gap to the clamp-only accuracy over the cells: "
          + ", ".join(f"{c} {lowest[c]:+.2f}" for c in cols if c in lowest))

    # the same models as the gaps above: only those with a clamp-only measurement
    compat = [r for r in suite if r.threat_model == "beard-compat" and key(r) in clamp]
    t_irr = {(row.key.method, row.key.ipc): row.values["I-RR"][0]
             for row in metric_table(compat, per_ipc=True) if row.key.mode == "targeted"}
    pairs = [(statistics.fmean(per_cell[c]["clean"]) - statistics.fmean(per_cell[c]["clamp"]), t_irr[c])
             for c in order if t_irr.get(c) is not None]
    if len(pairs) >= 3:
        cost, irr = zip(*pairs)
        print(f"targeted I-RR (beard-compat) vs clamp cost over {len(pairs)} cells: "
              f"Spearman {spearman(list(cost), list(irr)):+.2f}")


if __name__ == "__main__":
    try:
        main()
    except RecordError as err:  # a bad path or file: one line, not a traceback
        raise SystemExit(f"error: {err}") from None
