"""Side-by-side table: BEARD's logged accuracies vs rome-bench under both threat models.

Usage (the records come from ``rome-bench evaluate`` on the six published checkpoints with
``--threat-model beard-compat,standard``; see README, "Results")::

    python scripts/compare_beard_pool.py RECORDS_OR_RUN_FOLDER [--logged results/paper/beard_logged_ipc50.csv]

Prints a markdown table: model, attack, mode, BEARD's logged accuracy (white-box where BEARD
logged it, otherwise its transfer log), ours under beard-compat, ours under standard, and the
difference logged - beard-compat.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

from rome_bench.core.records import RecordError, read_records

ORDER = ["DC", "DSA", "MTT", "DM", "IDM", "BACON"]
ATTACK_ORDER = ["clean", "FGSM", "PGD", "PGD-L2", "CW", "DeepFool", "AutoAttack"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--logged", type=Path,
                    default=Path(__file__).resolve().parents[1] / "results" / "paper"
                    / "beard_logged_ipc50.csv")
    args = ap.parse_args()
    logged = {}
    for row in csv.DictReader(args.logged.open()):
        logged[(row["method"], row["attack"], row["mode"])] = (float(row["accuracy"]),
                                                               row["setting"])
    ours: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    n_images = set()
    for r in read_records(args.records):
        ours[(r.method, r.attack, r.mode, r.threat_model)].append(r.accuracy)
        n_images.add(r.n_images)
    keys = sorted({k[:3] for k in ours}, key=lambda k: (
        ORDER.index(k[0]) if k[0] in ORDER else 99,
        ATTACK_ORDER.index(k[1]) if k[1] in ATTACK_ORDER else 99, k[2]))
    body = []
    def mean_of(key):
        v = ours.get(key)
        return sum(v) / len(v) if v else None

    for method, attack, mode in keys:
        compat = mean_of((method, attack, mode, "beard-compat"))
        standard = mean_of((method, attack, mode, "standard"))
        log, setting = logged.get((method, attack, mode), (None, ""))
        body.append([method, attack, mode if attack != "clean" else "",
                     "N/A" if log is None else f"{log:.2f}" + (" (transfer)" if "transfer" in setting
                                                               else ""),
                     "N/A" if compat is None else f"{compat:.2f}",
                     "N/A" if standard is None else f"{standard:.2f}",
                     "" if log is None or compat is None else f"{log - compat:+.2f}"])
    print(tabulate(body, headers=["model", "attack", "mode", "BEARD logged", "beard-compat",
                                  "standard", "logged - compat"], tablefmt="github",
                   disable_numparse=True))
    print(f"\nrome-bench measured on {', '.join(map(str, sorted(n_images)))} test images "
          "(JPEG-decoded CIFAR-10); BEARD logged on the official 10,000.")


if __name__ == "__main__":
    try:
        main()
    except RecordError as err:  # a bad path or file: one line, not a traceback
        raise SystemExit(f"error: {err}") from None
