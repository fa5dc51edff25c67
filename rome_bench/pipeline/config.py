"""A run's configuration and its validated plan: every name, option and input is resolved and
checked here, before any data is loaded or any computation starts."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from rome_bench.attacks import blackbox
from rome_bench.attacks import suite as attacks_mod
from rome_bench.attacks.suite import AttackSpec
from rome_bench.core.cache import code_version
from rome_bench.core.catalog import METHODS
from rome_bench.core.registry import RomeBenchError
from rome_bench.core.version import __version__
from rome_bench.data.datasets import (
    DATASETS,
    DatasetSpec,
)
from rome_bench.methods.contract import resolve_budget
from rome_bench.models import training as train_mod
from rome_bench.models.convnet import ARCHS
from rome_bench.pipeline.presets import DEFAULT_PRESET, PRESETS, Preset
from rome_bench.pipeline.protocol import DEFAULT_PROTOCOL, PROTOCOLS, resolve_retrain


class PlanError(RomeBenchError):
    """A run that cannot start as requested."""


# Torch threads per computation on a CPU unless --threads says otherwise. One, and never a
# function of --jobs or of the core count: a CPU result is bit-identical only at the same
# thread count (docs/design.md, "Reproducibility"), and workers of a pool run one thread each.
DEFAULT_CPU_THREADS = 1


@dataclass
class RunConfig:
    """Everything a run needs; the CLI maps flags to these fields one to one."""

    methods: list[str]
    dataset: str | None = None
    data_root: str | None = None
    download: bool = False
    ipcs: list[int] | None = None
    preset: str = DEFAULT_PRESET
    repeats: int | None = None
    # models 0..first_repeat-1 of every cell are skipped (measured by another process or machine)
    first_repeat: int = 0
    seed: int = 0
    arch: str = "convnet"
    out: str | None = None
    fresh: bool = False
    attacks: str | None = None
    modes: str | None = None
    threat_models: str | None = None
    test_subset: int | None = None
    device: str | None = None
    show_progress: bool = True
    # progress as log lines instead of bars (set in worker processes, whose bars would collide)
    progress_lines: bool = False
    jobs: int | None = 1  # worker processes; None = auto (see resolve_jobs)
    # torch threads of every computation on a CPU; None = DEFAULT_CPU_THREADS (see Plan.threads)
    threads: int | None = None
    settings: str | None = None  # white-box | transfer | query, comma-separated
    # how models are retrained on the distilled sets: native | beard (pipeline/protocol.py)
    protocol: str = DEFAULT_PROTOCOL
    # distill every method with this method's budget for the hyperparameters both declare
    # (an equal-budget comparison); the cells are labelled "<method>@<budget_of>-budget"
    budget_of: str | None = None
    # where the work runs: local (this process or --jobs workers) | ray (pipeline/ray_executor.py)
    executor: str = "local"
    # the Ray cluster: None = start or join a local one; "auto", "local" or HOST:PORT
    address: str | None = None
    # GPUs each Ray task asks for when the device is CUDA (a fraction packs small ConvNets)
    gpus_per_task: float = 1.0


@dataclass
class Cell:
    """One (method, IPC) of the plan."""

    method: str
    ipc: int
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass
class Plan:
    """A validated run: resolved preset, dataset, cells, attacks and output folder."""

    config: RunConfig
    preset: Preset
    dataset: DatasetSpec
    cells: list[Cell]
    attacks: list[AttackSpec]
    modes: list[str]
    threat_models: list[str]
    test_subset: int | None
    repeats: int
    device: str
    out: Path
    run_id: str
    jobs: int = 1
    settings: list[str] = field(default_factory=lambda: ["white-box"])
    # code hashes taken once when the run is planned (see code_versions_for): every cache key of
    # the run uses them, so editing a file while a long run is going on cannot make a later
    # stage (a worker, the figures) look for the run's own results under another key
    code_versions: dict[str, str] = field(default_factory=dict)
    # torch threads of every computation (serial loop and workers alike); None on an
    # accelerator without --threads: torch's default (the device's results do not depend on it)
    threads: int | None = DEFAULT_CPU_THREADS

    @property
    def compute_key(self) -> dict[str, str]:
        """What changes a CPU or GPU result besides its inputs and code, for the cache keys.

        The device type; on a CPU the thread count too (float sums are split across threads, so
        1 and 2 threads train different models); and the torch and torchattacks versions. The
        thread count never follows ``--jobs``: every cell computes with :attr:`threads` in the
        serial loop and in worker processes alike, so records do not depend on ``--jobs``.
        """
        kind = torch.device(self.device).type
        compute = f"cpu/{self.threads} threads" if kind == "cpu" else kind
        return {"compute": compute, "torch": torch.__version__,
                "torchattacks": _torchattacks_version()}

    @property
    def repeat_indices(self) -> range:
        """The model indices this run trains and measures in every cell (seeds follow them)."""
        return range(self.config.first_repeat, self.repeats)

    def code_of(self, name: str, obj: Any) -> str:
        """The hash of ``obj``'s code taken when the run was planned (computed now if absent)."""
        if name not in self.code_versions:
            self.code_versions[name] = code_version(obj)
        return self.code_versions[name]

    def describe(self) -> str:
        lines = [f"rome-bench {__version__} run {self.run_id}",
                 f"  preset     {self.preset.name}: {self.preset.description}",
                 f"  scaled     {self.preset.scaled}",
                 f"  dataset    {self.dataset.name}" + self._data_text(),
                 f"  arch       {self.config.arch}, {self._models_text()}, seed "
                 f"{self.config.seed}, device {self.device}, {self.executor_text}",
                 f"  attacks    {', '.join(a.name for a in self.attacks) or 'none (clean only)'}"
                 f" | modes {', '.join(self.modes)} | threat {', '.join(self.threat_models)}",
                 f"  settings   {', '.join(self.settings)}",
                 *self._protocol_lines(),
                 f"  test       {self.test_subset or 'all'} images",
                 f"  output     {self.out}",
                 "  cells:"]
        for c in self.cells:
            ipc = "whole train set" if c.ipc == 0 else f"IPC {c.ipc}"
            retrain = resolve_retrain(self.protocol, c.method, c.ipc, self.preset).summary()
            budget = ", ".join(f"{k}={v}" for k, v in sorted(c.params.items()) if k != "path")
            lines.append(f"    {c.label or c.method:<14} {ipc:<16} retrain {retrain}"
                         + (f" | {budget}" if budget else ""))
        notes = {c.method: METHODS.entry(c.method).meta.get("plan_note") for c in self.cells}
        lines += [f"  note       {m}: {n}" for m, n in notes.items() if n]
        return "\n".join(lines)

    @property
    def executor_text(self) -> str:
        """Where the work runs, as the plan prints it."""
        threads = f" x {self.threads} thread(s)" if self.threads else ""
        if self.config.executor != "ray":
            return f"{self.jobs} worker(s){threads}"
        per_task = (f"{self.config.gpus_per_task:g} GPU" if self.device.startswith("cuda")
                    else "1 CPU")
        return f"Ray tasks ({per_task} each){threads}"

    def _data_text(self) -> str:
        if self.config.data_root:
            return f" from {self.config.data_root}"
        return " (no --data-root: a plan only)" if self.dataset.needs_root else ""

    @property
    def protocol(self) -> str:
        """The evaluation protocol's registry name (``native`` or ``beard``)."""
        return PROTOCOLS.entry(self.config.protocol).name

    def _protocol_lines(self) -> list[str]:
        proto = PROTOCOLS.get(self.protocol)
        lines = [f"  protocol   {proto.name}: {proto.description}"]
        if proto.follows_hints:
            lines.append("             (the hints a distilled set carries, a learned lr, ZCA, a batch "
                         "size, soft labels, replace the cells' retraining settings below)")
        if self.preset.name == "paper" and "beard-compat" in self.threat_models:
            if proto.name == "beard":
                lines.append("  note       the published Table 1 was measured on models retrained "
                             "with BEARD's protocol, as here")
            else:
                lines.append("  note       the published Table 1 was measured on models retrained "
                             "with BEARD's protocol: add --protocol beard to compare with it")
        return lines

    def _models_text(self) -> str:
        first, last = self.config.first_repeat, self.repeats - 1
        if first == 0:
            return f"{self.repeats} model(s) per cell"
        which = f"#{last}" if first == last else f"#{first}-#{last}"
        return f"models {which} of {self.repeats} per cell"


def parse_ipcs(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ipcs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise PlanError(f"--ipc must be comma-separated integers, got '{text}'") from exc
    if not ipcs or any(i <= 0 for i in ipcs):
        raise PlanError(f"--ipc values must be positive, got '{text}'")
    return ipcs


def expand_methods(names: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """``all`` / names / ``file:PATH`` -> (registry name, params, label) with strict lookup."""
    out: list[tuple[str, dict[str, Any], str]] = []
    for raw in names:
        raw = raw.strip()
        if not raw:
            continue
        if raw.lower() == "all":
            out.extend((e.name, {}, e.name) for e in METHODS.entries() if e.meta.get("in_all"))
            continue
        if raw.lower().startswith("file:"):
            path = raw[5:]
            if not path:
                raise PlanError("--method file:PATH needs a path")
            out.append(("file", {"path": path}, Path(path.partition("#")[0]).stem or "file"))
            continue
        entry = METHODS.entry(raw)
        if not entry.meta.get("implemented", True):
            entry.obj(None, 0, None)  # raises the placeholder's NotImplementedError
        out.append((entry.name, {}, entry.name))
    seen, unique = set(), []
    for item in out:
        key = (item[0], str(item[1]))
        if key not in seen:
            seen.add(key)
            unique.append(item)
    if not unique:
        raise PlanError("no method selected")
    return unique


def plan_run(config: RunConfig, *, require_data: bool = True) -> Plan:
    """Resolve and validate every option (no computation yet).

    ``require_data=False`` plans a run that will not start (``run --dry-run``): a dataset that
    reads from disk may then lack ``--data-root``; nothing is loaded either way.
    """
    preset = PRESETS.get(config.preset)
    dataset = DATASETS.get(config.dataset or preset.dataset)
    if require_data and dataset.needs_root and not config.data_root:
        raise PlanError(f"dataset '{dataset.name}' needs --data-root (the '{preset.name}' preset "
                        "reads real CIFAR from disk)")
    ARCHS.get(config.arch)
    ipcs = config.ipcs or list(preset.ipcs)
    if any(i <= 0 for i in ipcs):
        raise PlanError("--ipc values must be positive")
    repeats = config.repeats if config.repeats is not None else preset.repeats
    if repeats <= 0:
        raise PlanError("--repeats must be positive")
    if not 0 <= config.first_repeat < repeats:
        raise PlanError(f"--first-repeat must be in 0..{repeats - 1} (the cell has {repeats} "
                        f"model(s)), got {config.first_repeat}")
    cells: list[Cell] = []
    for name, params, label in expand_methods(config.methods):
        entry = METHODS.entry(name)
        if entry.meta.get("ipc_independent"):
            cells.append(Cell(name, 0, params, label))
        elif name == "file":
            cells.append(Cell(name, -1, params, label))  # IPC read from the file
        else:
            budgets = entry.meta.get("budgets", {})
            cells.extend(Cell(name, ipc, {**resolve_budget(budgets, preset.name, ipc,
                                                            dataset.name), **params}, label)
                         for ipc in ipcs)
    if config.budget_of:
        borrowed = [borrow_budget(c, config.budget_of, preset.name, dataset.name) for c in cells]
        if all(b is c for b, c in zip(borrowed, cells)):
            raise PlanError(f"--budget-of {config.budget_of} changes no method of the run (none "
                            "declares its hyperparameters, or all have its values already)")
        cells = borrowed
    attack_specs = attacks_mod.parse_attacks(config.attacks)
    modes = attacks_mod.parse_modes(config.modes)
    threats = attacks_mod.parse_threat_models(config.threat_models)
    settings = blackbox.parse_settings(config.settings)
    PROTOCOLS.get(config.protocol)  # an unknown name fails here, listing the known ones
    check_executor(config)
    if "transfer" in settings:
        blackbox.transfer_specs(attack_specs, config.attacks is not None)
    n_test = config.test_subset if config.test_subset is not None else preset.attacks.test_subset
    if n_test is not None and n_test <= 0:
        raise PlanError("--test-subset must be positive")
    # with Ray the GPUs may be on the workers only: the cluster's resources decide there
    device = resolve_device(config.device,
                            check_available=require_data and config.executor != "ray")
    threads = resolve_threads(config.threads, device)
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    out = Path(config.out) if config.out else Path("results") / "runs" / run_id
    jobs = resolve_jobs(config.jobs, device, len(cells), threads or 1)
    return Plan(config, preset, dataset, cells, attack_specs, modes, threats, n_test, repeats,
                device, out, run_id, jobs, settings, code_versions_for(cells), threads)


def resolve_device(device: str | None, check_available: bool = True) -> str:
    """``device`` checked (a torch device name; with ``check_available`` one this machine has,
    so a run on a missing GPU stops before any data is read), or cuda when present, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise PlanError(f"--device '{device}' is not a torch device (cpu, cuda, cuda:N)") from exc
    if parsed.type == "cuda" and check_available:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise PlanError(f"--device {device}: no CUDA device is available here")
        if parsed.index is not None and parsed.index >= count:
            raise PlanError(f"--device {device}: this machine has {count} CUDA device(s)")
    return device


def resolve_threads(threads: int | None, device: str) -> int | None:
    """Torch threads for a run: ``threads``, or :data:`DEFAULT_CPU_THREADS` on a CPU (None on
    an accelerator: torch's default, which only runs bookkeeping there)."""
    if threads is not None:
        if threads <= 0:
            raise PlanError(f"--threads must be positive, got {threads}")
        return threads
    return DEFAULT_CPU_THREADS if torch.device(device).type == "cpu" else None


def _torchattacks_version() -> str:
    import torchattacks

    return str(torchattacks.__version__)


def borrow_budget(cell: Cell, source: str, preset: str, dataset: str) -> Cell:
    """``cell`` distilled with method ``source``'s budget for every hyperparameter both methods
    declare (iterations, real batch, queue settings, ...); its own other hyperparameters stay.

    The cell is relabelled ``<method>@<source>-budget`` so its records never pool with the
    method's own-budget records. Cells without a budget (``file:``, ``full``), cells whose
    method shares no hyperparameter with ``source`` (``random``) or has its values already, and
    the source's own cells are returned as they are.

    >>> c = borrow_budget(Cell("rome", 10, {"iterations": 100, "alpha": 0.2}), "idm", "cpu",
    ...                   "cifar10")
    >>> c.label, c.params["iterations"], c.params["alpha"]
    ('rome@idm-budget', 240, 0.2)
    """
    src = METHODS.entry(source)
    if cell.method in ("file",) or cell.ipc <= 0 or src.name == cell.method:
        return cell
    if not src.meta.get("budgets"):
        raise PlanError(f"--budget-of {src.name}: that method declares no budget to borrow")
    borrowed = resolve_budget(src.meta["budgets"], preset, cell.ipc, dataset)
    shared = {k: v for k, v in borrowed.items() if k in cell.params}
    if all(cell.params[k] == v for k, v in shared.items()):
        return cell  # nothing shared, or the same budget already (BACON's is IDM's)
    label = f"{cell.label or cell.method}@{src.name}-budget"
    return Cell(cell.method, cell.ipc, {**cell.params, **shared}, label)


EXECUTORS = ("local", "ray")


def check_executor(config: RunConfig) -> None:
    """The executor's options, checked when the run is planned (Ray itself is imported only
    when the run starts, so a dry run never needs it)."""
    if config.executor not in EXECUTORS:
        raise PlanError(f"unknown executor '{config.executor}'; available: {', '.join(EXECUTORS)}")
    share = config.gpus_per_task
    if not share > 0 or (share > 1 and share != int(share)):
        raise PlanError(f"--gpus-per-task must be a fraction in (0, 1] or a whole number, "
                        f"got {share:g}")


def code_versions_for(cells: list[Cell]) -> dict[str, str]:
    """Code hashes of the cells' methods, of retraining and of the attacks, at planning time."""
    versions = {f"method:{c.method}": code_version(METHODS.entry(c.method).obj) for c in cells}
    versions["train"] = code_version(train_mod)
    versions["attacks"] = code_version(attacks_mod)
    return versions


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_jobs(jobs: int | None, device: str, n_cells: int, threads: int = 1) -> int:
    """Worker processes for a run: ``None`` (auto) = one per ``threads`` cores (at most 4, at
    most one per cell) on a CPU and 1 on a GPU, where one process already keeps the device
    busy."""
    if jobs is not None:
        if jobs <= 0:
            raise PlanError(f"--jobs must be positive or 'auto', got {jobs}")
        return max(1, min(jobs, n_cells or 1))
    if not str(device).startswith("cpu"):
        return 1
    return max(1, min(available_cores() // max(threads, 1), 4, n_cells or 1))


