"""A distillation resumed from a checkpoint continues exactly as an uninterrupted one.

Each method's checkpoint holds everything its next iteration reads (images, optimizer momentum,
random generators, network queues); the tests save it the way the pipeline does (torch.save,
then loaded with weights_only=True), resume from the middle and compare bit for bit.
"""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import pytest
import torch

from rome_bench.core.cache import Cache
from rome_bench.core.catalog import METHODS
from rome_bench.data.datasets import DATASETS, load_dataset
from rome_bench.methods.contract import MethodConfig, resolve_budget
from rome_bench.pipeline import stages
from rome_bench.pipeline.config import Cell, RunConfig, plan_run

# methods whose loop checkpoints through cfg.loop and needs no expert buffer, at a few
# iterations of their quick IPC-1 budget (DC and DSA with two outer loops, so a checkpoint
# also carries the state of the inner network training)
METHOD_PARAMS = {
    "dm": {"iterations": 6, "batch_real": 4},
    "dc": {"iterations": 4, "batch_real": 2, "outer_loop": 2, "inner_loop": 1},
    "dsa": {"iterations": 4, "batch_real": 2, "outer_loop": 2, "inner_loop": 1},
    "idm": {"iterations": 4, "batch_real": 4},
    "rome": {"iterations": 4, "batch_real": 2},
}


@pytest.fixture(scope="module")
def train():
    return load_dataset("cifar10-mini", "train")


def _params(method: str) -> dict[str, Any]:
    budgets = METHODS.entry(method).meta.get("budgets", {})
    return {**resolve_budget(budgets, "quick", 1, "cifar10-mini"), **METHOD_PARAMS[method]}


def _distill(train, method: str, checkpoints: dict[int, bytes] | None = None,
             resume_from: tuple[dict[str, Any], int] | None = None):
    def checkpoint(state: dict[str, Any], iteration: int) -> None:
        if checkpoints is not None:
            buf = io.BytesIO()
            torch.save(state, buf)  # saved at once, as the pipeline does
            checkpoints[iteration] = buf.getvalue()

    cfg = MethodConfig(seed=3, preset="quick", dataset=DATASETS.get("cifar10-mini"),
                       params=_params(method), show_progress=False, checkpoint=checkpoint,
                       resume=lambda: resume_from)
    return METHODS.get(method)(train, 1, cfg)


@pytest.mark.parametrize("method", [m if m == "dm" else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(METHOD_PARAMS)])
def test_resuming_from_a_checkpoint_equals_the_uninterrupted_distillation(train, method):
    checkpoints: dict[int, bytes] = {}
    whole = _distill(train, method, checkpoints)
    assert checkpoints, f"{method} never checkpointed"
    iteration = sorted(checkpoints)[len(checkpoints) // 2]
    state = torch.load(io.BytesIO(checkpoints[iteration]), weights_only=True)
    resumed = _distill(train, method, resume_from=(state, iteration))
    assert torch.equal(resumed.images, whole.images), f"{method} resumed at {iteration}"
    assert torch.equal(resumed.labels, whole.labels)


def test_a_distillation_killed_in_the_pipeline_resumes_bit_identically(tmp_path, monkeypatch, train):
    # the pipeline's own checkpoint file and resume: the run dies right after its second
    # checkpoint is written (as under SIGKILL, nothing after it runs), the rerun resumes
    plan = plan_run(RunConfig(methods=["dm"], preset="quick", ipcs=[1], show_progress=False,
                              out=str(tmp_path / "run")))
    cell = replace(plan.cells[0], params=_params("dm"))
    whole, _ = stages.distill(cell, train, plan, Cache(tmp_path / "a"), lambda s: None)

    class Killed(BaseException):
        pass

    saved: list[int] = []
    real_save = stages.atomic_torch_save

    def save_then_die(obj, path):
        real_save(obj, path)
        if isinstance(obj, dict) and "iteration" in obj:
            saved.append(obj["iteration"])
            if len(saved) == 2:
                raise Killed

    cache = Cache(tmp_path / "b")
    monkeypatch.setattr(stages, "atomic_torch_save", save_then_die)
    with pytest.raises(Killed):
        stages.distill(cell, train, plan, cache, lambda s: None)
    monkeypatch.setattr(stages, "atomic_torch_save", real_save)
    log: list[str] = []
    resumed, key = stages.distill(cell, train, plan, cache, log.append)
    assert any(f"from iteration {saved[-1]}" in line for line in log), log
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.labels, whole.labels)
    assert not cache.checkpoint(key).exists()


def test_a_checkpoint_left_beside_a_finished_set_is_removed(tmp_path, train):
    # killed after the set was saved but before its checkpoint was deleted
    plan = plan_run(RunConfig(methods=["random"], preset="quick", ipcs=[1], show_progress=False,
                              out=str(tmp_path / "run")))
    cache = Cache(tmp_path / "cache")
    cell: Cell = plan.cells[0]
    _, key = stages.distill(cell, train, plan, cache, lambda s: None)
    cache.checkpoint(key).write_bytes(b"left over")
    stages.distill(cell, train, plan, cache, lambda s: None)
    assert not cache.checkpoint(key).exists()
