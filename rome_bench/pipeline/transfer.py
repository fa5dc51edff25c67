"""The transfer setting of a run: its studies, how one runs, and their records.

Models of the same IPC and repeat attack each other (one study per group, as in the paper,
whose heatmap is one IPC). A study crafts once per surrogate, so it splits into one piece per
surrogate: the local executor runs each study whole, the Ray executor runs the pieces as
separate tasks and :func:`merge_pieces` puts their results back in the order a whole study
gives, so records do not depend on the executor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rome_bench.attacks import blackbox
from rome_bench.attacks.suite import AttackSpec
from rome_bench.core.cache import Cache
from rome_bench.core.records import Record, environment, versions
from rome_bench.pipeline.config import Plan


@dataclass
class TransferStudy:
    """One study: the models of one (IPC, repeat), each surrogate and victim."""

    ipc: int
    repeat: int
    models: list[blackbox.TransferModel]
    specs: list[AttackSpec]


def transfer_studies(plan: Plan, models: list[blackbox.TransferModel]) -> list[TransferStudy]:
    """The run's studies in the order their records are written (by IPC, then repeat)."""
    specs = blackbox.transfer_specs(plan.attacks, plan.config.attacks is not None)
    if not specs or not models:
        return []
    groups: dict[tuple[int, int], list[blackbox.TransferModel]] = {}
    for m in models:
        groups.setdefault((m.ipc, m.repeat), []).append(m)
    return [TransferStudy(ipc, repeat, group, specs)
            for (ipc, repeat), group in sorted(groups.items())]


def run_study(plan: Plan, cache: Cache, images: torch.Tensor, labels: torch.Tensor,
              study: TransferStudy, surrogates: list[blackbox.TransferModel] | None = None,
              show_progress: bool | None = None) -> list[blackbox.TransferResult]:
    """``study`` (or only the crafting on ``surrogates``) with the plan's budgets and cache."""
    context = {"test": plan.test_subset, "dataset": plan.dataset.name,
               "data_root": str(plan.config.data_root or ""), **plan.compute_key}
    return blackbox.transfer_study(
        study.models, images, labels, study.specs, plan.modes, plan.threat_models,
        num_classes=plan.dataset.num_classes,
        batch_size=plan.preset.attacks.batch_size_on(plan.device), device=plan.device,
        seed=plan.config.seed,
        overrides=lambda name: plan.preset.attacks.overrides.get(name, {}), cache=cache,
        context=context, fresh=plan.config.fresh,
        show_progress=plan.config.show_progress if show_progress is None else show_progress,
        surrogates=surrogates)


def merge_pieces(plan: Plan, pieces: list[list[blackbox.TransferResult]]
                 ) -> list[blackbox.TransferResult]:
    """Per-surrogate results (in the study's surrogate order) in the order of a whole study.

    A whole study walks threat model, then surrogate, then attack, mode and victim; a piece
    holds one surrogate's results in (threat model, attack, mode, victim) order.
    """
    return [r for threat in plan.threat_models for piece in pieces for r in piece
            if r.threat_model == threat]


def study_records(plan: Plan, study: TransferStudy, results: list[blackbox.TransferResult]
                  ) -> list[Record]:
    vers, env = versions(), environment(plan.device)
    return [Record(
        run_id=plan.run_id, method=r.victim, dataset=plan.dataset.name, ipc=study.ipc,
        seed=plan.config.seed, repeat=study.repeat, arch=plan.config.arch, preset=plan.preset.name,
        threat_model=r.threat_model, setting="transfer", source_model=r.surrogate,
        mode=r.mode, attack=r.attack, eps=r.eps, accuracy=r.accuracy, seconds=r.seconds,
        n_images=r.n_images, protocol=plan.protocol, versions=vers, environment=env)
        for r in results]


StudyRunner = Callable[[list[TransferStudy]], list[list[blackbox.TransferResult]]]


def transfer_records(plan: Plan, cache: Cache, images: torch.Tensor, labels: torch.Tensor,
                     models: list[blackbox.TransferModel],
                     run_studies: StudyRunner | None = None) -> list[Record]:
    """Transfer records for a run: models of the same IPC and repeat attack each other.

    ``run_studies`` computes the results of every study (the Ray executor's tasks); by default
    they run here, one after the other.
    """
    studies = transfer_studies(plan, models)
    if run_studies is None:
        results = [run_study(plan, cache, images, labels, s) for s in studies]
    else:
        results = run_studies(studies)
    return [r for study, res in zip(studies, results) for r in study_records(plan, study, res)]
