"""Print every table of every committed ``results/*`` folder, for a byte-for-byte comparison.

A refactor that must not change any published number runs this before and after and diffs
the two outputs::

    python scripts/retabulate_results.py > before.txt     # on the old commit
    python scripts/retabulate_results.py > after.txt      # on the new one
    diff before.txt after.txt && echo identical

Each folder is tabulated through the command line (``rome-bench table``) in every kind and
format, with and without ``--reference paper`` and ``--per-ipc``; a table the records do not
support prints its one-line error, which is compared too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from rome_bench.cli import main

VARIANTS = [[], ["--per-ipc"], ["--reference", "paper"], ["--kind", "accuracy"],
            ["--kind", "blackbox"], ["--kind", "blackbox", "--reference", "paper"]]
FORMATS = ("markdown", "csv", "latex")


def folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.rglob("*.jsonl")))


def main_(root: str = "results") -> int:
    runner = CliRunner()
    for folder in folders(Path(root)):
        for variant in VARIANTS:
            for fmt in FORMATS:
                args = ["table", str(folder), "--format", fmt, *variant]
                result = runner.invoke(main, args)
                print(f"=== rome-bench {' '.join(args)} (exit {result.exit_code})")
                print(result.output.rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main_(*sys.argv[1:]))
