import pytest
from click.testing import CliRunner
from test_metrics import RECORDS

from rome_bench.cli import main
from rome_bench.core.records import read_records
from rome_bench.reporting.beard import BeardLogError, parse_beard_logs
from rome_bench.reporting.metrics import metrics_for

TAIL = "dataset: CIFAR10, IPC: {ipc}, DSA:True, num_eval: 0, aug:False , model: ConvNet"


def line(attack, t_acc, t_time, u_acc, u_time, ipc, method="DC"):
    return (f"2025-01-01 10:00:00,000 - INFO - {attack} attack on {method}: final acc is:  "
            f"target_attack: {t_acc:.2f} +- 0.00, attack time is {t_time:.2f}; non_target_attack: "
            f"{u_acc:.2f} +- 0.00, attack time is {u_time:.2f}, " + TAIL.format(ipc=ipc))


def write_log(path):
    """The same measurements as test_metrics.RECORDS, in BEARD's log format."""
    lines = [
        line("Clean", 50, 2.0, 50, 2.5, 1), line("FGSM", 30, 3, 20, 3, 1),
        line("PGD", 25, 9, 10, 9, 1),
        line("DeepFool", 50, 2.0, 5, 20, 1),  # BEARD's targeted DeepFool repeats clean numbers
        "2025-01-01 10:00:00,000 - INFO - some unrelated progress message",
        line("Clean", 60, 4.0, 60, 3.0, 10), line("FGSM", 40, 5, 30, 5, 10),
        line("PGD", 35, 10, 20, 11, 10),
    ]
    path.write_text("\n".join(lines) + "\n")


def test_parse_and_recompute_matches_hand_values(tmp_path):
    write_log(tmp_path / "log.txt")
    recs = parse_beard_logs([tmp_path / "log.txt"])
    assert {r.method for r in recs} == {"DC"} and {r.ipc for r in recs} == {1, 10}
    assert not any(r.attack == "DeepFool" and r.mode == "targeted" for r in recs)
    assert all(r.threat_model == "beard-compat" for r in recs)
    for mode in ("targeted", "untargeted"):
        got, want = metrics_for(recs, mode=mode), metrics_for(RECORDS, mode=mode)
        assert got.RR == pytest.approx(want.RR) and got.I_RR == pytest.approx(want.I_RR)
        # RECORDS' clean rows do not say which pass they timed: same-mode falls back to the min
        assert metrics_for(recs, mode=mode, ae_baseline="min").AE == pytest.approx(want.AE)
    # same-mode: targeted T0 = mean(2.0, 4.0) = 3, untargeted T0 = mean(2.5, 3.0) = 2.75
    assert metrics_for(recs, mode="targeted").AE == pytest.approx(100 * (6.75 - 3) / (10 - 3))
    assert metrics_for(recs, mode="untargeted").AE == pytest.approx(100 * (9.6 - 2.75) / (20 - 2.75))
    # hand values (see test_metrics): targeted RR 25, untargeted RR 24
    assert metrics_for(recs, mode="targeted").RR == pytest.approx(25.0)
    assert metrics_for(recs, mode="untargeted").RR == pytest.approx(24.0)


def test_cli_import_then_table(tmp_path):
    write_log(tmp_path / "log.txt")
    runner = CliRunner()
    res = runner.invoke(main, ["import-beard", str(tmp_path / "log.txt"), "--out",
                               str(tmp_path / "r.jsonl")])
    assert res.exit_code == 0, res.output
    assert len(read_records([tmp_path / "r.jsonl"])) == 13
    res = runner.invoke(main, ["table", str(tmp_path / "r.jsonl"), "--format", "csv"])
    header, row = res.output.strip().splitlines()
    assert header.startswith("dataset,method,targeted_RR,targeted_CREI,targeted_I-RR")
    assert row.startswith("CIFAR-10,DC,25.00,")


def test_malformed_line_reports_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_text(line("FGSM", 1, 1, 1, 1, 1) + "\n"
                                      "x - INFO - PGD attack on DC: final acc is: garbled\n")
    with pytest.raises(BeardLogError, match=r"bad.txt:2: malformed"):
        parse_beard_logs([tmp_path / "bad.txt"])
    res = CliRunner().invoke(main, ["import-beard", str(tmp_path / "bad.txt"), "--out",
                                    str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0 and "bad.txt:2" in res.output
    assert not (tmp_path / "o.jsonl").exists()


# BACON's white-box numbers as BEARD logged them (Code/metrics/white_box/BACON/, IPC 1/10/50):
# attack -> (targeted acc, targeted s, untargeted acc, untargeted s); DeepFool/AA targeted = clean.
BACON_LOGS = {
    1: {"Clean": (44.95, 2.50, 44.95, 2.25), "FGSM": (29.59, 3.01, 24.51, 3.12),
        "PGD": (30.61, 8.52, 20.78, 8.79), "PGD_L2": (33.73, 8.71, 33.72, 8.77),
        "Deepfool": (44.95, 2.50, 11.49, 1647.63), "CW": (36.58, 73.94, 13.68, 74.66),
        "AA": (44.95, 2.50, 17.64, 762.71)},
    10: {"Clean": (61.73, 3.06, 61.73, 2.29), "FGSM": (39.13, 2.85, 33.27, 2.84),
         "PGD": (40.10, 8.32, 26.45, 8.29), "PGD_L2": (44.06, 8.50, 44.05, 8.46),
         "Deepfool": (61.73, 3.06, 16.11, 2102.68), "CW": (44.93, 73.75, 11.84, 73.91),
         "AA": (61.73, 3.06, 23.85, 1086.94)},
    50: {"Clean": (69.95, 3.04, 69.95, 2.31), "FGSM": (44.68, 3.01, 38.16, 3.68),
         "PGD": (45.59, 11.96, 28.86, 12.21), "PGD_L2": (50.81, 12.22, 50.80, 9.18),
         "Deepfool": (69.95, 3.04, 18.28, 2374.80), "CW": (44.71, 75.82, 8.31, 76.49),
         "AA": (69.95, 3.04, 27.00, 968.53)},
}


def bacon_records(tmp_path):
    for ipc, rows in BACON_LOGS.items():
        (tmp_path / f"ConvNet_CIFAR10_{ipc}_evaluation_log.txt").write_text("\n".join(
            line(a, *v, ipc, method="BACON") for a, v in rows.items()) + "\n")
    return parse_beard_logs(sorted(tmp_path.glob("*.txt")))


def test_bacon_published_row_is_recomputed_from_its_logs(tmp_path):
    """ROME's Table 1 BACON row, all eight cells, from BEARD's own logs: RR 36.83 / 32.87,
    CREI 33.05 / 27.20, I-RR 84.37 / 50.49, I-CREI 56.82 / 36.01 (targeted / untargeted), with
    AE's clean time taken from the same mode's clean pass (the default)."""
    recs = bacon_records(tmp_path)
    t, u = metrics_for(recs, mode="targeted"), metrics_for(recs, mode="untargeted")
    assert round(t.RR, 2) == 36.83 and round(u.RR, 2) == 32.87
    assert round(t.I_RR, 2) == 84.37 and round(u.I_RR, 2) == 50.49
    assert round(t.CREI, 2) == 33.05 and round(u.CREI, 2) == 27.20
    assert round(t.I_CREI, 2) == 56.82 and round(u.I_CREI, 2) == 36.01


def test_bacon_with_the_released_scripts_min_rule(tmp_path):
    """BEARD's released auto_metrics.py takes the smaller clean timing of either mode as T0: AE
    29.83 / 21.53, which misses the published targeted CREI and I-CREI (33.33 / 57.10)."""
    recs = bacon_records(tmp_path)
    t = metrics_for(recs, mode="targeted", ae_baseline="min")
    u = metrics_for(recs, mode="untargeted", ae_baseline="min")
    assert round(t.AE, 2) == 29.83 and round(u.AE, 2) == 21.53
    assert round(t.CREI, 2) == 33.33 and round(t.I_CREI, 2) == 57.10
    assert round(u.CREI, 2) == 27.20 and round(u.I_CREI, 2) == 36.01  # untargeted T0 is the min
    res = CliRunner().invoke(main, ["import-beard", *map(str, sorted(tmp_path.glob("*.txt"))),
                                    "--out", str(tmp_path / "r.jsonl")])
    assert res.exit_code == 0, res.output
    for rule, crei in (("same-mode", "33.05"), ("min", "33.33")):
        out = CliRunner().invoke(main, ["table", str(tmp_path / "r.jsonl"), "--ae-baseline",
                                        rule]).output
        assert crei in out and f"--ae-baseline {rule}" in out


def test_table_per_ipc_and_reference(tmp_path):
    for ipc, rows in BACON_LOGS.items():
        (tmp_path / f"log_{ipc}.txt").write_text("\n".join(
            line(a, *v, ipc, method="BACON") for a, v in rows.items()) + "\n")
    runner = CliRunner()
    runner.invoke(main, ["import-beard", *map(str, sorted(tmp_path.glob("*.txt"))), "--out",
                         str(tmp_path / "r.jsonl")])
    per_ipc = runner.invoke(main, ["table", str(tmp_path / "r.jsonl"), "--per-ipc", "--format",
                                   "csv"]).output.strip().splitlines()
    assert len(per_ipc) == 4  # header + IPC 1, 10, 50
    ref = runner.invoke(main, ["table", str(tmp_path / "r.jsonl"), "--reference", "paper"]).output
    assert "36.83 (paper 36.83, +0.00)" in ref  # targeted RR equals the published BACON row
