"""``rome-bench reproduce table1``: the published Table 1 grid as one resumable command.

The grid is the paper's: every method with a row in the published table, CIFAR-10 and
CIFAR-100, IPC 1, 10 and 50, 5 retrained models per cell, the ``paper`` preset, both threat
models (``beard-compat``, under which the published numbers were measured, and ``standard``) on
the same models, and BEARD's retraining protocol. Each dataset is one ``run`` into a fixed
folder, so running the command again after a kill recomputes nothing the cache holds.

The dry run prints the task graph and an *estimate* of its GPU-hours. Its per-stage costs are
named below with where they come from: the attack costs are BEARD's own logged GPU times; the
distillation and retraining costs are assumptions, labelled as such, until they are measured.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rome_bench.core.catalog import METHODS
from rome_bench.core.records import Record
from rome_bench.pipeline import runner
from rome_bench.pipeline.config import Plan, PlanError, RunConfig, plan_run
from rome_bench.pipeline.protocol import resolve_retrain
from rome_bench.pipeline.ray_executor import task_graph
from rome_bench.reporting.naming import reference_key
from rome_bench.reporting.table1 import load_reference

DATASETS = ("cifar10", "cifar100")
IPCS = (1, 10, 50)
THREAT_MODELS = "beard-compat,standard"
PRESET = "paper"
PROTOCOL = "beard"
DEFAULT_OUT = Path("results") / "table1"
# CIFAR-10 and CIFAR-100 alike: the sizes the estimate scales with
TRAIN_IMAGES = 50_000
TEST_IMAGES = 10_000


def table1_methods(dataset: str) -> list[str]:
    """Registry names of the methods with a row for ``dataset`` in the published Table 1
    (both ROME variants answer to its ROME row), in the registry's order."""
    published = load_reference("paper")
    return [e.name for e in METHODS.entries()
            if e.meta.get("implemented", True) and e.name != "file"
            and reference_key(dataset, e.name) in published]


def parse_datasets(text: str) -> list[str]:
    names = [d.strip().lower() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DATASETS]
    if not names or bad:
        raise PlanError(f"--dataset takes {' and/or '.join(DATASETS)}, got '{text}'")
    return list(dict.fromkeys(names))


def table1_config(dataset: str, *, data_root: str | None = None, download: bool = False,
                  out: str | Path = DEFAULT_OUT, executor: str = "local",
                  address: str | None = None, gpus_per_task: float = 1.0,
                  device: str | None = None, show_progress: bool = True) -> RunConfig:
    """The run of one dataset's part of the grid. ``data_root`` is the folder that holds one
    folder per dataset (``cifar10/``, ``cifar100/``); results go to ``out/<dataset>``."""
    return RunConfig(methods=table1_methods(dataset), dataset=dataset,
                     data_root=str(Path(data_root) / dataset) if data_root else None,
                     download=download, ipcs=list(IPCS), preset=PRESET,
                     threat_models=THREAT_MODELS, protocol=PROTOCOL, out=str(Path(out) / dataset),
                     device=device, show_progress=show_progress, jobs=None, executor=executor,
                     address=address, gpus_per_task=gpus_per_task)


def reproduce_table1(configs: list[RunConfig], echo: Callable[[str], None] = print
                     ) -> list[Record]:
    """Run every dataset's part of the grid; all records, in order.

    A dataset's folder holds the records of the last invocation only: the records file of an
    earlier (possibly killed) one is kept beside it as ``records.jsonl.previous``, and what it
    measured comes back from the cache.
    """
    for config in configs:  # every dataset's part checked before the first one starts
        plan_run(config)
        root = Path(config.data_root) if config.data_root else None
        if root is not None and not config.download and not root.exists():
            raise PlanError(f"no {config.dataset} data at {root} (--data-root DIR holds one "
                            "folder per dataset; --download fetches the official release)")
    records: list[Record] = []
    for config in configs:
        path = Path(str(config.out)) / "records.jsonl"
        if path.exists():
            os.replace(path, path.with_name("records.jsonl.previous"))
        _, recs = runner.run(config, echo)
        records.extend(recs)
    return records


# -- the estimate -------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    """A per-stage cost and where it comes from."""

    what: str
    source: str


# BEARD's white-box evaluation log of its BACON ConvNet (CIFAR-10, IPC 50), GPU seconds per
# model over the 10,000 test images, (targeted, untargeted); rome-bench keeps the rows in
# results/paper/beard_logged_ipc50.csv. DeepFool and AutoAttack have no targeted mode.
BEARD_ATTACK_SECONDS: dict[str, tuple[float | None, float]] = {
    "FGSM": (3.01, 3.68), "PGD": (11.96, 12.21), "PGD-L2": (12.22, 9.18), "CW": (75.82, 76.49),
    "DeepFool": (None, 2374.80), "AutoAttack": (None, 968.53)}
ATTACK_COST = Cost(
    "attacks: BEARD's logged GPU seconds per model over the 10,000 test images (BACON, CIFAR-10 "
    "IPC 50): FGSM 3.0/3.7, PGD 12.0/12.2, PGD-L2 12.2/9.2, CW 75.8/76.5 (targeted/untargeted), "
    "DeepFool 2,374.8, AutoAttack 968.5; counted once per threat model",
    "BEARD Code/metrics/white_box/BACON/ConvNet_CIFAR10_50_evaluation_log.txt (rows in "
    "results/paper/beard_logged_ipc50.csv). An upper bound for `standard`, whose DeepFool is "
    "batched and which skips images lost on clean input; ASSUMPTION for CIFAR-100: DeepFool x10 "
    "(a gradient per class), the other attacks as on CIFAR-10")
CIFAR100_DEEPFOOL_FACTOR = 10.0

# ASSUMPTION (not measured): GPU seconds of one retraining step of the ConvNet (batch 256 with
# DSA on every batch), on a current datacenter GPU
RETRAIN_STEP_SECONDS = 0.01
RETRAIN_COST = Cost(
    f"retraining: {RETRAIN_STEP_SECONDS * 1000:.0f} ms per step (ConvNet-3, batch 256, DSA) x "
    "epochs x batches per epoch (factorized sets of IDM, BACON and ROME retrain on factor^2 "
    "images per stored image)",
    "ASSUMPTION, not measured: replace with a measured step time")

# ASSUMPTION (not measured): GPU-hours of one distillation at the paper budgets on CIFAR-10
DISTILL_HOURS: dict[str, dict[int, float]] = {
    "dc": {1: 0.5, 10: 5.0, 50: 20.0}, "dsa": {1: 0.5, 10: 5.0, 50: 20.0},
    "dm": {1: 0.5, 10: 1.0, 50: 2.0}, "mtt": {1: 1.0, 10: 3.0, 50: 6.0},
    "idm": {1: 3.0, 10: 5.0, 50: 8.0}, "bacon": {1: 3.0, 10: 5.0, 50: 8.0},
    "rome": {1: 6.0, 10: 10.0, 50: 16.0}, "rome-compat": {1: 6.0, 10: 10.0, 50: 16.0}}
# MTT's expert buffer, trained once per dataset (100 experts x 50 epochs)
EXPERT_BUFFER_HOURS = 11.0
CIFAR100_DISTILL_FACTOR = 5.0
DISTILL_COST = Cost(
    "distillation: GPU-hours per distillation on CIFAR-10 at the paper budgets, DC/DSA "
    "0.5/5/20 (IPC 1/10/50), DM 0.5/1/2, MTT 1/3/6 plus 11 for its expert buffer once per "
    "dataset, IDM/BACON 3/5/8, ROME/ROME-compat 6/10/16; CIFAR-100 x5",
    "ASSUMPTION, not measured: replace with measured distillation times")


def estimate_seconds(plan: Plan) -> dict[str, float]:
    """GPU seconds per stage of ``plan``'s grid (an ESTIMATE from the costs above)."""
    cifar100 = plan.dataset.num_classes == 100
    hours = 0.0
    for cell in plan.cells:
        table = DISTILL_HOURS.get(cell.method)
        if table:
            hours += table[min(table, key=lambda k: abs(k - cell.ipc))]
    if any(c.method == "mtt" for c in plan.cells):
        hours += EXPERT_BUFFER_HOURS
    distill = hours * 3600 * (CIFAR100_DISTILL_FACTOR if cifar100 else 1.0)

    models = len(plan.repeat_indices)
    retrain = 0.0
    for cell in plan.cells:
        settings = resolve_retrain(plan.protocol, cell.method, cell.ipc, plan.preset)
        if cell.ipc == 0:
            images = TRAIN_IMAGES
        else:
            factor = int(cell.params.get("factor", 1))
            images = cell.ipc * plan.dataset.num_classes * factor * factor
        steps = settings.epochs * math.ceil(images / settings.batch)
        retrain += models * steps * RETRAIN_STEP_SECONDS

    per_model = 0.0
    for atk in plan.attacks:
        targeted, untargeted = BEARD_ATTACK_SECONDS.get(atk.name, (None, 0.0))
        seconds = sum(s for mode, s in (("targeted", targeted), ("untargeted", untargeted))
                      if mode in plan.modes and s is not None)
        if atk.name == "DeepFool" and cifar100:
            seconds *= CIFAR100_DEEPFOOL_FACTOR
        per_model += seconds
    share = (plan.test_subset or TEST_IMAGES) / TEST_IMAGES
    attacks = len(plan.cells) * models * len(plan.threat_models) * per_model * share
    return {"distillation": distill, "retraining": retrain, "attacks": attacks}


def describe_table1(configs: list[RunConfig]) -> str:
    """The dry run's text: the grid, its task graph per dataset and the GPU-hour estimate.

    Plans only: nothing is loaded, so it needs neither the data nor Ray.
    """
    plans = [plan_run(c, require_data=False) for c in configs]
    graphs = [task_graph(p) for p in plans]
    costs = [estimate_seconds(p) for p in plans]
    first = plans[0]
    attacks = ", ".join(a.name for a in first.attacks)
    lines = ["rome-bench reproduce table1 (dry run): the published Table 1 grid",
             f"  preset {first.preset.name}, protocol {first.protocol}, threat models "
             f"{', '.join(first.threat_models)} (measured on the same models), IPC "
             f"{', '.join(map(str, IPCS))}, {first.repeats} models per cell",
             f"  attacks {attacks} | modes {', '.join(first.modes)} | test "
             f"{first.test_subset or 'all'} images",
             f"  executor {first.config.executor} (the same tasks either way; --executor ray "
             "spreads them over GPUs and machines)", "",
             "task graph:"]
    rows = [(p.dataset.name, str(len(p.cells)), str(len(g.distill)), str(len(g.models)),
             str(g.transfer)) for p, g in zip(plans, graphs)]
    if len(plans) > 1:
        rows.append(("total", *(str(sum(int(r[i]) for r in rows)) for i in range(1, 5))))
    lines += _table(("dataset", "cells", "distillation tasks", "model tasks", "transfer tasks"),
                    rows)
    lines += [f"  {p.dataset.name}: {', '.join(dict.fromkeys(c.method for c in p.cells))}"
              for p in plans]
    lines += ["  (a model task retrains one ConvNet and runs every attack on it under both",
              "  threat models; Table 1 is white-box only, so there are no transfer tasks)", "",
              "ESTIMATE of GPU-hours (not a measurement: built from the per-stage costs below):"]
    stages = ("distillation", "retraining", "attacks")
    est_rows = [(s, *(f"{c[s] / 3600:,.0f}" for c in costs),
                 *((f"{sum(c[s] for c in costs) / 3600:,.0f}",) if len(costs) > 1 else ()))
                for s in stages]
    est_rows.append(("total", *(f"{sum(c.values()) / 3600:,.0f}" for c in costs),
                     *((f"{sum(sum(c.values()) for c in costs) / 3600:,.0f}",)
                       if len(costs) > 1 else ())))
    header = ("stage", *(p.dataset.name for p in plans), *(("total",) if len(plans) > 1 else ()))
    lines += _table(header, est_rows)
    lines += ["", "per-stage costs behind the estimate:"]
    for cost in (ATTACK_COST, RETRAIN_COST, DISTILL_COST):
        lines += textwrap.wrap(cost.what, 100, initial_indent="  - ", subsequent_indent="    ")
        lines += textwrap.wrap(cost.source, 100, initial_indent="    source: ",
                               subsequent_indent="    ")
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header)] + [fmt.format(*r) for r in rows]
