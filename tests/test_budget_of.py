"""``run --budget-of``: an equal-budget comparison distills each method with another method's
budget for the hyperparameters both declare, under a label that never pools with its own rows."""

from __future__ import annotations

import pytest

from rome_bench.core.catalog import METHODS
from rome_bench.methods.contract import resolve_budget
from rome_bench.pipeline.config import PlanError, RunConfig, plan_run
from rome_bench.reporting.naming import display_method, method_order


def _cells(**kw):
    config = RunConfig(methods=kw.pop("methods"), preset="cpu", ipcs=[10], **kw)
    return {c.label or c.method: c for c in plan_run(config, require_data=False).cells}


def test_rome_gets_idms_cpu_budget_and_keeps_its_own_extras():
    idm = resolve_budget(METHODS.entry("idm").meta["budgets"], "cpu", 10, "cifar10")
    cells = _cells(methods=["rome", "rome-compat", "idm", "random"], budget_of="idm")
    assert set(cells) == {"rome@idm-budget", "rome-compat@idm-budget", "idm", "random"}
    for name in ("rome@idm-budget", "rome-compat@idm-budget"):
        params = cells[name].params
        assert {k: params[k] for k in idm} == idm  # every IDM hyperparameter, IDM's value
        assert params["alpha"] == 0.2  # ROME's own prior weight stays
    assert cells["idm"].params == idm  # the source itself is untouched
    assert cells["random"].params == {}  # nothing shared: left as it is
    own = _cells(methods=["rome"])["rome"].params
    assert own["iterations"] != idm["iterations"]  # the test would be vacuous otherwise


def test_a_budget_that_changes_nothing_is_refused():
    with pytest.raises(PlanError, match="changes no method of the run"):
        _cells(methods=["random"], budget_of="idm")  # random has no hyperparameters
    with pytest.raises(PlanError, match="changes no method of the run"):
        _cells(methods=["bacon"], budget_of="idm")  # BACON's cpu budget is IDM's already


def test_labels_read_as_the_method_with_its_budget():
    assert display_method("rome@idm-budget") == "ROME (idm budget)"
    assert method_order("rome@idm-budget")[0] == method_order("rome")[0]
