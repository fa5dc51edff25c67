"""Every ``paper`` hyperparameter, as the reference repositories set it, against the plan.

One row per (method, dataset, IPC) holds the values read from the reference code, in
rome-bench's parameter names; the test plans ``run --preset paper --dataset X --ipc Y
--dry-run`` (no data is loaded) and compares. A value the references set and the plan resolves
differently fails the test.

Reference snapshots (repo @ commit, the files cited per row):

* DC   VICO-UoE/DatasetCondensation @ 53f63a672eab9ade02aabe6432706ef56f317d64
* MTT  GeorgeCazenavette/mtt-distillation @ 50dccea47ba48b9cfb3b9c59375d7da92e4e603b
* DATM NUS-HPC-AI-Lab/DATM @ 97ae5109d98e749e897bd1af29bccd0515f8137e
* IDM  uitrbn/IDM @ fe23bbcd26f664f7f27479e298866a2ff1cc5005 (command.txt also read @ 9acccfd)
* BACON zhouzhengqd/BACON @ 9c3f7afde8417abccfb853b8e2a4f8af244c969f (Code/command.txt also
  read @ 1461e14)
* ROME zhouzhengqd/ROME @ 2ceed90354e8bfb9cbb9dc5352e0c6ebef55c487

Conventions: every reference loops ``for it in range(Iteration + 1)`` with an image update in
each pass, and DC/DSA/DM/IDM/BACON/ROME save the set after the last one, so ``iterations`` is
``Iteration + 1`` for them. MTT and DATM save at the top of a pass (before its update), so their
last saved iterate has ``Iteration`` updates. ``meter_reset_interval`` is IDM's
``eval_interval`` (the accuracy meters reset at every evaluation point).
"""

from __future__ import annotations

import pytest

from rome_bench.pipeline.config import RunConfig, plan_run

DATASETS = ("cifar10", "cifar100")
IPCS = (1, 10, 50)


def _same(d: dict, **changes) -> dict:
    return {**d, **changes}


# -- DC / DSA: DatasetCondensation main.py defaults (main.py:20-32), SGD momentum 0.5 on the
# images (main.py:100), loops from utils.py get_loops (utils.py:275-293). Nothing depends on the
# dataset. DC's README Table-1 command (readme.md:20) passes no --init: 'noise' (main.py:28).
# DSA's README command (readme.md:110) passes --init real.
DC = {"iterations": 1000 + 1, "lr_img": 0.1, "momentum_img": 0.5, "lr_net": 0.01,
      "batch_real": 256, "batch_train": 256, "init": "noise"}
DC_LOOPS = {1: {"outer_loop": 1, "inner_loop": 1}, 10: {"outer_loop": 10, "inner_loop": 50},
            50: {"outer_loop": 50, "inner_loop": 10}}

# -- DM: DatasetCondensation main_DM.py defaults (Iteration 20000 main_DM.py:22, batch_real 256
# :25, init real :27, SGD momentum 0.5 :102) and README command (readme.md:176-177: lr_img 1 for
# IPC 1/10/50, CIFAR-10 and CIFAR-100).
DM = {"iterations": 20000 + 1, "lr_img": 1.0, "momentum_img": 0.5, "batch_real": 256,
      "init": "real"}

# -- IDM: IDM command.txt (lines 2, 5, 8 for CIFAR-10; 11, 14, 17 for CIFAR-100) over the
# argparse defaults of IDM_cifar10.py / IDM_cifar100.py (Iteration 20000 :31, batch_real 256
# :34, trained_bs 256 :45, model_train_steps 10 :49, net_num 100 :50, net_generate_interval 30
# :56, fetch_net_num 2 :57, net_push_num 1 :67, lr_net 0.01 :33); 3 initial nets (:167);
# momentum 0.5 on the images (:154); factorization 2x2 (--aug, :142-145).
IDM = {"iterations": 20000 + 1, "lr_img": 0.2, "momentum_img": 0.5, "batch_real": 256,
       "net_num": 100, "initial_nets": 3, "net_generate_interval": 30, "net_push_num": 1,
       "fetch_net_num": 2, "model_train_steps": 10, "trained_bs": 256, "lr_net": 0.01,
       "factor": 2}
IDM_IPC = {  # --ce_weight, --batch_real/--net_generate_interval (IPC 1), --eval_interval
    1: {"ce_weight": 0.5, "batch_real": 5000, "net_generate_interval": 5,
        "meter_reset_interval": 100},
    10: {"ce_weight": 0.5, "meter_reset_interval": 100},
    50: {"ce_weight": 0.1, "meter_reset_interval": 500}}
IDM_CIFAR100 = {  # command.txt:11/14/17 (IPC 50 sets no --model_train_steps: default 10)
    1: {},
    10: {"ce_weight": 0.1, "model_train_steps": 50},
    50: {}}
# -- BACON: Code/command.txt lines 15, 18, 21 (CIFAR-10) and 24, 27, 30 (CIFAR-100) pass IDM's
# flags, except --model_train_steps 50 at CIFAR-100 IPC 10 and 50; argparse defaults as IDM's
# (Code/BACON_cifar10.py, Code/BACON_cifar100.py).
BACON_CIFAR100 = {1: {}, 10: {"ce_weight": 0.1, "model_train_steps": 50},
                  50: {"model_train_steps": 50}}
# -- ROME (and ROME-compat, which changes only the PGD): Code/command.txt lines 6-21, the same
# flags as BACON's per dataset and IPC; alpha 0.2 hard-coded (Code/ROME_cifar10.py:320,
# Code/ROME_cifar100.py:302).
ROME_CIFAR100 = BACON_CIFAR100

# -- MTT: distill.py defaults (Iteration 5000 :431, batch_syn None = all :440) and the README's
# table of hyperparameters (readme.md:93-95, an image; the CIFAR-100 IPC 1 row is also the text
# command at readme.md:88); buffer: readme.md:80-82 (100 experts x 50 epochs).
MTT = {"iterations": 5000, "batch_syn": None, "buffer_num_experts": 100, "buffer_epochs": 50}
MTT_ROWS = {
    ("cifar10", 1): {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100.0,
                     "lr_lr": 1e-7, "lr_teacher": 0.01, "zca": True},
    ("cifar10", 10): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20,
                      "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.001, "zca": True},
    ("cifar10", 50): {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 40,
                      "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.001, "zca": False},
    ("cifar100", 1): {"syn_steps": 20, "expert_epochs": 3, "max_start_epoch": 20,
                      "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": True},
    ("cifar100", 10): {"syn_steps": 20, "expert_epochs": 2, "max_start_epoch": 20,
                       "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": False},
    ("cifar100", 50): {"syn_steps": 80, "expert_epochs": 2, "max_start_epoch": 40,
                       "lr_img": 1000.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": True,
                       "batch_syn": 125},
}

# -- DATM: configs/CIFAR-10/ConvIN/IPC{1,10,50}.yaml and configs/CIFAR-100/ConvIN/
# IPC{1,10,50}.yaml; Sequential_Generation defaults to True (utils/cfg.py:116); buffer from
# README.md:31 (buffer_FTD.py, 100 experts x 100 epochs, GSAM). ema_decay is in the configs but
# DATM.py never reads it (checked below: no EMA at the paper preset).
DATM = {"iterations": 10000, "lr_teacher": 0.01, "zca": True, "momentum_y": 0.9,
        "buffer_num_experts": 100, "buffer_epochs": 100, "buffer_flat": True}
DATM_ROWS = {
    ("cifar10", 1): {"syn_steps": 80, "expert_epochs": 2, "lr_img": 100.0, "lr_lr": 1e-7,
                     "batch_syn": 10, "lr_y": 5.0, "threshold": 1.1,
                     "pix_init": "samples_predicted_correctly", "sequential": False,
                     "min_start_epoch": 0, "max_start_epoch": 4},
    ("cifar10", 10): {"syn_steps": 80, "expert_epochs": 2, "lr_img": 100.0, "lr_lr": 1e-5,
                      "batch_syn": 100, "lr_y": 2.0, "threshold": 1.0,
                      "pix_init": "samples_predicted_correctly", "sequential": True,
                      "min_start_epoch": 0, "current_max_start_epoch": 10,
                      "max_start_epoch": 20, "expansion_end_epoch": 1000},
    ("cifar10", 50): {"syn_steps": 80, "expert_epochs": 2, "lr_img": 1000.0, "lr_lr": 1e-5,
                      "batch_syn": 500, "lr_y": 2.0, "threshold": 1.0,
                      "pix_init": "samples_predicted_correctly", "sequential": True,
                      "min_start_epoch": 0, "current_max_start_epoch": 20,
                      "max_start_epoch": 40, "expansion_end_epoch": 2000},
    ("cifar100", 1): {"syn_steps": 40, "expert_epochs": 3, "lr_img": 1000.0, "lr_lr": 1e-5,
                      "batch_syn": 1000, "lr_y": 10.0, "threshold": 1.0,
                      "pix_init": "samples_predicted_correctly", "sequential": True,
                      "min_start_epoch": 0, "current_max_start_epoch": 10,
                      "max_start_epoch": 20, "expansion_end_epoch": 1000},
    ("cifar100", 10): {"syn_steps": 80, "expert_epochs": 2, "lr_img": 1000.0, "lr_lr": 1e-5,
                       "batch_syn": 1000, "lr_y": 10.0, "threshold": 1.0,
                       "pix_init": "samples_predicted_correctly", "sequential": True,
                       "min_start_epoch": 0, "current_max_start_epoch": 30,
                       "max_start_epoch": 50, "expansion_end_epoch": 2000},
    ("cifar100", 50): {"syn_steps": 80, "expert_epochs": 2, "lr_img": 1000.0, "lr_lr": 1e-5,
                       "batch_syn": 1000, "lr_y": 10.0, "threshold": 1.0, "pix_init": "real",
                       "sequential": False, "min_start_epoch": 20, "max_start_epoch": 70},
}


def reference(method: str, dataset: str, ipc: int) -> dict:
    """The reference's value of every hyperparameter it sets, in rome-bench's names."""
    if method in ("dc", "dsa"):
        row = {**DC, **DC_LOOPS[ipc]}
        return _same(row, init="real") if method == "dsa" else row
    if method == "dm":
        return dict(DM)
    if method in ("idm", "bacon", "rome", "rome-compat"):
        c100 = {"idm": IDM_CIFAR100, "bacon": BACON_CIFAR100}.get(method, ROME_CIFAR100)
        row = {**IDM, **IDM_IPC[ipc], **(c100[ipc] if dataset == "cifar100" else {})}
        return _same(row, alpha=0.2) if method.startswith("rome") else row
    if method == "mtt":
        return {**MTT, **MTT_ROWS[dataset, ipc]}
    if method == "datm":
        return {**DATM, **DATM_ROWS[dataset, ipc]}
    raise KeyError(method)


METHODS_UNDER_TEST = ("dc", "dsa", "dm", "idm", "mtt", "datm", "bacon", "rome", "rome-compat")


def planned(method: str, dataset: str) -> dict[int, dict]:
    """``rome-bench run --method M --preset paper --dataset D --ipc 1,10,50 --dry-run``."""
    plan = plan_run(RunConfig(methods=[method], dataset=dataset, ipcs=list(IPCS),
                              preset="paper"), require_data=False)
    return {c.ipc: c.params for c in plan.cells}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS_UNDER_TEST)
def test_paper_budget_is_the_reference(method, dataset):
    got = planned(method, dataset)
    for ipc in IPCS:
        want = reference(method, dataset, ipc)
        wrong = {k: (got[ipc].get(k, "<unset>"), v) for k, v in want.items()
                 if got[ipc].get(k, "<unset>") != v}
        assert not wrong, f"{method} {dataset} IPC {ipc}: (plan, reference) {wrong}"


@pytest.mark.parametrize("dataset", DATASETS)
def test_datm_returns_the_images_without_ema(dataset):
    # DATM.py (:365-404) saves and evaluates the raw image_syn; no preset turns the EMA on
    for ipc, params in planned("datm", dataset).items():
        assert float(params.get("ema_decay", 0.0)) == 0.0, (dataset, ipc)


@pytest.mark.parametrize("method, epochs, decay", [("dc", 301, 152), ("dsa", 1001, 502),
                                                   ("idm", 1001, 502), ("datm", 1001, 502)])
def test_paper_retraining_is_the_references_loop(method, epochs, decay):
    # DatasetCondensation utils.evaluate_synset (utils.py:337-361): Epoch = epoch_eval_train
    # (300 for DC without augmentation, main.py:116-123; 1000 with DSA), range(Epoch + 1), the lr
    # x0.1 after epoch index Epoch // 2 + 1, so epoch Epoch // 2 + 2 is the first at lr / 10
    plan = plan_run(RunConfig(methods=[method], dataset="cifar100", ipcs=[10], preset="paper"),
                    require_data=False)
    retrain = plan.preset.retrain
    assert retrain.for_ipc(10, method != "dc") == epochs
    assert retrain.decay_epoch(epochs) == decay
    assert f"retrain {epochs} epochs (lr/10 from epoch {decay})" in plan.describe()


def test_mtt_and_datm_plans_say_they_keep_the_final_iterate():
    plan = plan_run(RunConfig(methods=["mtt", "datm"], dataset="cifar10", ipcs=[1],
                              preset="paper"), require_data=False)
    text = plan.describe()
    assert "note       mtt: returns the final iterate" in text
    assert "note       datm: returns the final iterate" in text


def test_a_dataset_row_for_an_ipc_the_preset_does_not_list_is_refused():
    from rome_bench.methods.contract import check_budgets

    check_budgets("ok", {"paper": {"all": {}, 10: {}, "datasets": {"cifar100": {10: {}}}}})
    with pytest.raises(ValueError, match="cifar100:50"):
        check_budgets("bad", {"paper": {10: {}, "datasets": {"cifar100": {50: {"x": 1}}}}})
    with pytest.raises(Exception, match="cifar-1000|Unknown|unknown"):
        check_budgets("bad", {"paper": {10: {}, "datasets": {"cifar-1000": {10: {}}}}})
