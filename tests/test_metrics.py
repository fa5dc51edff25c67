import pytest

from rome_bench.core.records import Record
from rome_bench.reporting.metrics import compute, metric_table, metrics_for


def rec(ipc, mode, attack, acc, sec, method="M", repeat=0, threat="standard"):
    return Record(run_id="t", method=method, dataset="cifar10", ipc=ipc, seed=0, repeat=repeat,
                  arch="convnet", preset="quick", threat_model=threat, setting="white-box",
                  source_model=None, mode=mode, attack=attack, eps=None, accuracy=acc, seconds=sec,
                  n_images=100)


# Two IPCs; BEARD-style two clean timings per IPC; DeepFool untargeted only.
RECORDS = [
    rec(1, "clean", "clean", 50, 2.0), rec(1, "clean", "clean", 50, 2.5),
    rec(1, "targeted", "FGSM", 30, 3), rec(1, "untargeted", "FGSM", 20, 3),
    rec(1, "targeted", "PGD", 25, 9), rec(1, "untargeted", "PGD", 10, 9),
    rec(1, "untargeted", "DeepFool", 5, 20),
    rec(10, "clean", "clean", 60, 4.0), rec(10, "clean", "clean", 60, 3.0),
    rec(10, "targeted", "FGSM", 40, 5), rec(10, "untargeted", "FGSM", 30, 5),
    rec(10, "targeted", "PGD", 35, 10), rec(10, "untargeted", "PGD", 20, 11),
]


def test_targeted_pooled_by_hand():
    # C = 55; a = [30, 25, 40, 35] flattened over attacks x IPCs; T0 = mean(min(2, 2.5), min(4, 3))
    m = metrics_for(RECORDS, mode="targeted")
    assert m.clean == 55
    assert m.mean_asr == pytest.approx(22.5) and m.max_asr == pytest.approx(30)
    assert m.RR == pytest.approx(25.0)
    assert m.I_RR == pytest.approx(100 * (1 - 22.5 * 30 / 55**2))
    assert m.AE == pytest.approx(100 * (6.75 - 2.5) / (10 - 2.5))
    assert m.CREI == pytest.approx(0.5 * 25 + 0.5 * m.AE)
    assert m.I_CREI == pytest.approx(0.5 * m.I_RR + 0.5 * m.AE)
    assert m.n_attacks == 4  # DeepFool has no targeted entry


def test_untargeted_pooled_by_hand():
    m = metrics_for(RECORDS, mode="untargeted")
    assert m.RR == pytest.approx(100 * (1 - 38 / 50))
    assert m.I_RR == pytest.approx(100 * (1 - 38 * 50 / 3025))
    assert m.AE == pytest.approx(100 * (9.6 - 2.5) / (20 - 2.5))
    assert m.n_attacks == 5


def test_flattening_is_not_per_ipc_averaging():
    # Averaging per-IPC RR values would give a different number than the published pooling.
    pooled = metrics_for(RECORDS, mode="targeted").RR
    per_ipc = [metrics_for(RECORDS, mode="targeted", ipcs=[i]).RR for i in (1, 10)]
    assert pooled != pytest.approx(sum(per_ipc) / 2)


def test_single_ipc_and_alpha():
    m = compute([50.0], [2.0], [30.0, 10.0], [3.0, 9.0], alpha=0.2)
    assert m.RR == pytest.approx(25.0) and m.I_RR == pytest.approx(52.0)
    assert m.CREI == pytest.approx(0.2 * 25 + 0.8 * m.AE)


def test_rr_exceeds_100_when_attacked_accuracy_exceeds_clean():
    # a = [60, 45]: mean ASR = -2.5 (negative), max ASR = 5
    m = compute([50.0], [1.0], [60.0, 45.0], [2.0, 3.0])
    assert m.RR == pytest.approx(150.0) and m.RR > 100


def test_edge_cases_are_defined():
    none = compute([50.0], [1.0], [], [])
    assert none.RR is None and none.I_RR is None and none.n_attacks == 0
    flat = compute([50.0], [1.0], [50.0, 50.0], [1.0, 1.0])  # max ASR = 0, no extra time
    assert flat.RR == 0.0 and flat.AE == 0.0 and flat.I_RR == 100.0
    zero = compute([0.0], [1.0], [0.0], [2.0])
    assert zero.I_RR == 0.0


def test_repeats_give_mean_and_std():
    recs = [rec(1, "clean", "clean", 50, 1, repeat=r) for r in (0, 1)] + [
        rec(1, "targeted", "FGSM", 30, 2, repeat=0), rec(1, "targeted", "PGD", 10, 2, repeat=0),
        rec(1, "targeted", "FGSM", 40, 2, repeat=1), rec(1, "targeted", "PGD", 20, 2, repeat=1)]
    rows = [r for r in metric_table(recs) if r.key.mode == "targeted"]
    assert len(rows) == 1 and rows[0].repeats == 2
    # repeat 0: RR = 100(1 - 30/40) = 25; repeat 1: RR = 100(1 - 20/30) = 33.33
    mean, std = rows[0].values["RR"]
    assert mean == pytest.approx((25 + 100 / 3) / 2)
    assert std == pytest.approx(((25 - mean) ** 2 + (100 / 3 - mean) ** 2) ** 0.5)


def test_per_ipc_rows():
    rows = metric_table(RECORDS, per_ipc=True)
    ipcs = sorted({r.key.ipc for r in rows})
    assert ipcs == [1, 10]


def test_table_says_when_rows_pool_different_ipc_sets():
    from rome_bench.reporting.table1 import format_table1

    only_one = [rec(r.ipc, r.mode, r.attack, r.accuracy, r.seconds, method="N")
                for r in RECORDS if r.ipc == 1]
    mixed = format_table1(RECORDS + only_one)
    assert "Rows pool different IPC sets (1; 1,10)" in mixed
    alike = format_table1(RECORDS + [rec(r.ipc, r.mode, r.attack, r.accuracy, r.seconds,
                                         method="N") for r in RECORDS])
    assert "different IPC sets" not in alike and "bold = best" in alike
