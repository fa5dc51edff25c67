"""Is method A ahead of method B, or is it a tie? Paired bootstrap of their difference.

For two methods of one records file (or run folder), one threat model and preset, prints
clean accuracy and each Table 1 metric of both, their difference A - B and its 95% interval,
from the same two-level bootstrap ``rome-bench table --ci`` uses (models drawn per method,
test images drawn once per resample and shared by both methods, so the difference is paired
on the images). A difference whose interval includes 0 is reported as a tie.

    python scripts/paired_difference.py results/cpu-ipc10-equal-budget \
        --a rome@idm-budget --b idm --threat-model standard

Methods are named as the records name them (``rome-bench table`` shows their display names).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rome_bench.core.records import read_records
from rome_bench.reporting.metrics import metric_table
from rome_bench.reporting.table1_ci import table1_intervals
from rome_bench.reporting.uncertainty import Bootstrap, mean_estimate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", type=Path, nargs="+", help="records.jsonl files or run folders")
    ap.add_argument("--a", required=True, help="method A (as in the records)")
    ap.add_argument("--b", required=True, help="method B")
    ap.add_argument("--threat-model", required=True)
    ap.add_argument("--preset", default=None, help="only records of this preset")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    try:
        loaded = read_records(args.records)
    except Exception as exc:  # a missing or malformed records file: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    records = [r for r in loaded
               if r.threat_model == args.threat_model and r.setting == "white-box"
               and (args.preset is None or r.preset == args.preset)]
    by_method = {m: [r for r in records if r.method == m] for m in (args.a, args.b)}
    for m, rows in by_method.items():
        if not rows:
            found = sorted({r.method for r in records})
            print(f"error: no {args.threat_model} records of method '{m}' (found: "
                  f"{', '.join(found) or 'none'})", file=sys.stderr)
            return 2
    boot = Bootstrap(resamples=args.resamples, seed=args.seed)

    def clean(m: str):
        rows = sorted((r for r in by_method[m] if r.mode == "clean"), key=lambda r: r.repeat)
        return mean_estimate([r.outcome_mask() if r.outcomes is not None else r.accuracy
                              for r in rows], boot, f"clean|{m}"), len(rows)

    (ca, na), (cb, nb) = clean(args.a), clean(args.b)
    n_images = {r.n_images for r in records if r.method in by_method}
    print(f"{args.a} ({na} models) vs {args.b} ({nb} models), {args.threat_model}, test images "
          f"{'/'.join(str(n) for n in sorted(n_images))}; 95% intervals of A - B, paired "
          f"bootstrap, {args.resamples} resamples (seed {args.seed})")

    def line(name: str, a: float | None, b: float | None, reps_a, reps_b) -> None:
        if a is None or b is None:
            print(f"{name:<22} {'N/A':>8}")
            return
        verdict, span = "not tested", ""
        if reps_a is not None and reps_b is not None:
            low, high = boot.interval(np.asarray(reps_a) - np.asarray(reps_b))
            span = f"[{low:+.2f}, {high:+.2f}]"
            verdict = "tie" if low <= 0 <= high else ("A ahead" if low > 0 else "B ahead")
        print(f"{name:<22} {a:8.2f} {b:8.2f} {a - b:+8.2f}   {span:<19} {verdict}")

    chosen = [r for m in by_method.values() for r in m]
    intervals = table1_intervals(chosen, boot)
    means = {(row.key.method, row.key.mode): row.values for row in metric_table(chosen)}
    ia = next(v for (_, m, _), v in intervals.items() if m == args.a)
    ib = next(v for (_, m, _), v in intervals.items() if m == args.b)
    print(f"resampled: {args.a} {ia.resampled}, {args.b} {ib.resampled} (with few models a "
          "models-only bootstrap has few distinct draws: read its intervals as rough)")
    print(f"{'measure':<22} {'A':>8} {'B':>8} {'A - B':>8}   interval            verdict")
    line("clean accuracy", ca.value, cb.value, ca.replicates, cb.replicates)
    for column, cell in ia.cells.items():
        mode, metric = column.split("_", 1)
        other = ib.cells.get(column)
        line(f"{mode} {metric}", means.get((args.a, mode), {}).get(metric, (None,))[0],
             means.get((args.b, mode), {}).get(metric, (None,))[0], cell.replicates,
             other.replicates if other is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
