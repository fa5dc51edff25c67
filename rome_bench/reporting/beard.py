"""Import BEARD's evaluation logs as records, so their metrics can be recomputed here.

BEARD writes one line per attack, for example::

    ... - INFO - PGD attack on DC: final acc is:  target_attack: 41.20 +- 0.00, attack time is
    8.10; non_target_attack: 25.40 +- 0.00, attack time is 8.20, dataset: CIFAR10, IPC: 10, ...

The method and IPC come from each line. A ``Clean`` line becomes two clean records, its
targeted and its untargeted timing, each naming its pass in ``versions["clean_pass"]`` (AE's
baseline uses the timing of the mode it scores, or with ``--ae-baseline min`` the smaller).
Targeted entries of DeepFool and AutoAttack only repeat the clean numbers in BEARD's logs and are dropped.
Everything imported carries ``threat_model='beard-compat'`` and ``preset='beard-log'``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from rome_bench.core.records import Record, now
from rome_bench.core.registry import RomeBenchError
from rome_bench.reporting.metrics import CLEAN_PASS

LINE = re.compile(
    r"(?P<attack>[\w\-\+]+) attack on (?P<method>[^:]+?): final acc is:\s*"
    r"target_attack:\s*(?P<t_acc>-?[\d.]+)\s*\+-\s*(?P<t_std>[\d.]+),\s*attack time is\s*(?P<t_time>[\d.]+);"
    r"\s*non_target_attack:\s*(?P<u_acc>-?[\d.]+)\s*\+-\s*(?P<u_std>[\d.]+),\s*attack time is\s*"
    r"(?P<u_time>[\d.]+),\s*dataset:\s*(?P<dataset>\w+),\s*IPC:\s*(?P<ipc>\d+)")

# BEARD's spellings -> rome-bench's attack names (docs/design.md, "Attacks and threat models")
ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "pgdl2": "PGD-L2", "pgd-l2": "PGD-L2", "cw": "CW",
                "deepfool": "DeepFool", "autoattack": "AutoAttack", "aa": "AutoAttack",
                "mifgsm": "MIFGSM", "square": "Square", "spsa": "SPSA", "clean": "clean"}  # '_' read as '-'
UNTARGETED_ONLY = {"DeepFool", "AutoAttack"}
DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100"}


class BeardLogError(RomeBenchError):
    """A BEARD log line that cannot be parsed."""


def _number(m: re.Match, group: str, where: str, at_most: float = math.inf) -> float:
    """Field ``group`` of a result line as a finite number in [0, at_most] (the pattern lets
    through digits and dots in any order, e.g. '1.2.3', so the value is checked here)."""
    text = m[group]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= at_most:
        bounds = f" in [0, {at_most:g}]" if math.isfinite(at_most) else " >= 0"
        raise BeardLogError(f"{where}: {group} '{text[:20]}' is not a finite number{bounds}")
    return value


def parse_beard_logs(paths: list[str | Path], run_id: str = "beard-import") -> list[Record]:
    """Records from BEARD log files; raises :class:`BeardLogError` naming file:line on bad lines.

    Lines without ``attack on`` (other log output) are skipped; lines that look like results
    but do not parse are errors, so no measurement is silently lost.
    """
    records: list[Record] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise BeardLogError(f"no log file at {path}")
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if "attack on" not in line:
                continue
            m = LINE.search(line)
            if m is None:
                raise BeardLogError(f"{path}:{lineno}: malformed BEARD result line: {line.strip()[:120]}")
            raw_attack = m["attack"]
            key = raw_attack.lower().replace("_", "-")
            sweep = re.fullmatch(r"pgd-e(\d+)", key)
            attack = f"PGD-eps{sweep.group(1)}" if sweep else ATTACK_NAMES.get(key)
            if attack is None:
                raise BeardLogError(f"{path}:{lineno}: unknown attack '{raw_attack}'")
            dataset = DATASETS.get(m["dataset"].lower(), m["dataset"].lower())
            common = dict(run_id=run_id, method=m["method"].strip(), dataset=dataset,
                          ipc=int(m["ipc"]), seed=0, repeat=0, arch="ConvNet", preset="beard-log",
                          threat_model="beard-compat", setting="white-box", source_model=None,
                          eps=None, n_images=0, protocol="beard", created=now(),
                          versions={"source": f"{path.name}:{lineno}"})
            where = f"{path}:{lineno}"
            t_acc, u_acc = (_number(m, g, where, 100.0) for g in ("t_acc", "u_acc"))
            t_time, u_time = (_number(m, g, where) for g in ("t_time", "u_time"))
            if attack == "clean":
                for acc, secs, pass_ in ((t_acc, t_time, "targeted"), (u_acc, u_time, "untargeted")):
                    records.append(Record(**{**common, "versions": {**common["versions"],
                                                                    CLEAN_PASS: pass_}},
                                          mode="clean", attack="clean", accuracy=acc, seconds=secs))
                continue
            if attack not in UNTARGETED_ONLY:
                records.append(Record(**common, mode="targeted", attack=attack, accuracy=t_acc,
                                      seconds=t_time))
            records.append(Record(**common, mode="untargeted", attack=attack, accuracy=u_acc,
                                  seconds=u_time))
    if not records:
        raise BeardLogError("no BEARD result lines found in " + ", ".join(map(str, paths)))
    return records
