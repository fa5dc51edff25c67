"""Bootstrap intervals, the worst case over attacks, effective robustness and the tables that
show them (docs/metrics.md, "Robust accuracy", "Intervals", "Effective robustness")."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from rome_bench.core.records import Record, pack_outcomes
from rome_bench.reporting.metrics import compute, compute_replicates
from rome_bench.reporting.robust import (
    CSV_HEADER,
    effective_robustness,
    fit_trend,
    format_robust,
    logit,
    robust_rows,
    worst_case_mask,
)
from rome_bench.reporting.table1 import CI_COLUMNS, format_table1
from rome_bench.reporting.table1 import CSV_HEADER as TABLE1_HEADER
from rome_bench.reporting.uncertainty import IMAGES, MODELS, Bootstrap, mean_estimate

PUBLISHED_HEADER = ("dataset,method,targeted_RR,targeted_CREI,targeted_I-RR,targeted_I-CREI,"
                    "untargeted_RR,untargeted_CREI,untargeted_I-RR,untargeted_I-CREI")


def rec(method: str, ipc: int, repeat: int, mode: str, attack: str, mask=None,
        accuracy: float | None = None, seconds: float = 1.0, n: int | None = None) -> Record:
    """A record; with ``mask`` its accuracy and outcomes come from the mask."""
    if mask is not None:
        mask = np.asarray(mask, bool)
        n, accuracy = len(mask), 100.0 * mask.mean()
    return Record("t", method, "cifar10", ipc, 0, repeat, "convnet", "cpu", "standard",
                  "white-box", None, mode, attack, None, float(accuracy), seconds, n or 100,
                  outcomes=None if mask is None else pack_outcomes(mask))


# -- the bootstrap ---------------------------------------------------------------------------
def test_zero_variance_gives_a_zero_width_interval():
    boot = Bootstrap(resamples=500)
    same = np.array([True, False] * 50)
    e = mean_estimate([same, same, same], boot, "cell")
    assert e.value == pytest.approx(50.0) and e.resampled == IMAGES
    # every model keeps the same images, but the images themselves vary: only all-equal
    # outcomes (or all-equal model values without outcomes) have no variance at all
    flat = mean_estimate([np.ones(80, bool)] * 3, boot, "cell")
    assert (flat.low, flat.high) == (100.0, 100.0)
    models_only = mean_estimate([42.0, 42.0, 42.0], boot, "cell")
    assert (models_only.value, models_only.low, models_only.high) == (42.0, 42.0, 42.0)
    assert models_only.resampled == MODELS


def test_bernoulli_interval_matches_the_normal_approximation():
    n, p = 20000, 0.3
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(1).permutation(n)[: int(p * n)]] = True
    e = mean_estimate([mask], Bootstrap(resamples=2000), "bernoulli")
    half = 100 * 1.959964 * math.sqrt(p * (1 - p) / n)
    assert e.value == pytest.approx(100 * p)
    assert e.low == pytest.approx(100 * p - half, abs=0.1 * half)
    assert e.high == pytest.approx(100 * p + half, abs=0.1 * half)


def test_models_only_without_outcomes_and_nothing_for_one_model():
    boot = Bootstrap(resamples=1000)
    e = mean_estimate([10.0, 20.0, 30.0], boot, "cell")
    assert e.value == pytest.approx(20.0) and e.resampled == MODELS
    assert 10.0 <= e.low < 20.0 < e.high <= 30.0
    one = mean_estimate([25.0], boot, "cell")
    assert one.value == 25.0 and one.low is None and one.text() == "25.00"


def test_the_bootstrap_is_deterministic_and_its_size_configurable():
    masks = [np.random.default_rng(k).random(150) < 0.5 for k in range(3)]
    a = mean_estimate(masks, Bootstrap(resamples=300, seed=7), "c")
    b = mean_estimate(masks, Bootstrap(resamples=300, seed=7), "c")
    c = mean_estimate(masks, Bootstrap(resamples=300, seed=8), "c")
    assert (a.low, a.high) == (b.low, b.high) != (c.low, c.high)
    assert a.replicates.shape == (300,)
    with pytest.raises(ValueError, match="at least one resample"):
        Bootstrap(resamples=0)


def test_vectorised_metrics_reproduce_compute():
    rng = np.random.default_rng(0)
    clean = rng.uniform(20, 60, size=(2, 5))
    attacks = rng.uniform(0, 20, size=(6, 5))
    reps = compute_replicates(clean, [1.0, 1.5], attacks, [2.0, 3.0, 5.0, 2.0, 3.0, 5.0])
    for b in range(5):
        one = compute(clean[:, b], [1.0, 1.5], list(attacks[:, b]), [2.0, 3.0, 5.0, 2.0, 3.0, 5.0])
        for m in ("RR", "AE", "CREI", "I-RR", "I-CREI"):
            assert reps[m][b] == pytest.approx(one.get(m))


# -- worst case over attacks -------------------------------------------------------------------
def test_an_image_lost_to_any_attack_is_lost():
    clean = [1, 1, 1, 1, 0, 1]
    fgsm = [1, 0, 1, 1, 0, 1]
    pgd = [1, 1, 0, 1, 1, 1]  # image 4 "survives" PGD but was wrong clean: still lost
    aa = [1, 1, 1, 0, 0, 1]
    rows = [rec("dc", 1, 0, "clean", "clean", clean), rec("dc", 1, 0, "untargeted", "FGSM", fgsm),
            rec("dc", 1, 0, "untargeted", "PGD", pgd),
            rec("dc", 1, 0, "untargeted", "AutoAttack", aa),
            rec("dc", 1, 0, "targeted", "PGD", [0] * 6)]  # targeted rows do not count
    assert worst_case_mask(rows).astype(int).tolist() == [1, 0, 0, 0, 0, 1]
    (row,), _ = robust_rows(rows, Bootstrap(resamples=200))
    assert row.worst.value == pytest.approx(100 * 2 / 6)
    assert row.autoattack.value == pytest.approx(100 * 4 / 6)
    assert row.attacks == ("FGSM", "PGD", "AutoAttack")


def test_worst_case_is_na_without_outcomes():
    rows = [rec("dc", 1, 0, "clean", "clean", accuracy=50.0),
            rec("dc", 1, 0, "untargeted", "AutoAttack", accuracy=10.0)]
    assert worst_case_mask(rows) is None
    (row,), trends = robust_rows(rows, Bootstrap(resamples=200))
    assert row.worst.value is None and row.autoattack.value == 10.0
    assert trends == {"cifar10": None} and row.effective.value is None
    table = format_robust(rows, boot=Bootstrap(resamples=200))
    assert "| N/A " in table and "needs method random at two IPCs" in table


# -- effective robustness --------------------------------------------------------------------
def _on_line(clean: float, slope: float = 0.8, intercept: float = -1.5) -> float:
    return 100.0 / (1.0 + math.exp(-(slope * float(logit(clean)) + intercept)))


def test_the_trend_fit_recovers_a_logit_linear_line():
    x = np.array([15.0, 25.0, 40.0, 55.0])
    slope, intercept = fit_trend(x, np.array([_on_line(c) for c in x]))
    assert float(slope) == pytest.approx(0.8) and float(intercept) == pytest.approx(-1.5)
    assert float(effective_robustness(30.0, _on_line(30.0), slope, intercept)) == pytest.approx(
        0.0, abs=1e-9)
    assert float(effective_robustness(30.0, _on_line(30.0) + 4.0, slope, intercept)
                 ) == pytest.approx(4.0)
    # the same fit on resamples, one column each
    cols = np.stack([x, x + 1.0], axis=1)
    s2, i2 = fit_trend(cols, np.vectorize(_on_line)(cols))
    assert s2 == pytest.approx([0.8, 0.8]) and i2 == pytest.approx([-1.5, -1.5])


def _cell(method: str, ipc: int, clean: float, robust: float, models: int = 3) -> list[Record]:
    return [r for k in range(models) for r in (
        rec(method, ipc, k, "clean", "clean", accuracy=clean, n=1000),
        rec(method, ipc, k, "untargeted", "AutoAttack", accuracy=robust, n=1000))]


def test_effective_robustness_in_the_table_recovers_known_offsets():
    records = []
    for ipc, clean in ((1, 15.0), (10, 30.0), (50, 50.0)):
        records += _cell("random", ipc, clean, _on_line(clean))
    records += _cell("dc", 10, 40.0, _on_line(40.0) + 3.0)
    records += _cell("dm", 10, 45.0, _on_line(45.0) - 2.0)
    rows, trends = robust_rows(records, Bootstrap(resamples=200))
    assert trends["cifar10"].slope == pytest.approx(0.8)
    er = {(r.method, r.ipc): r.effective for r in rows}
    for ipc in (1, 10, 50):
        assert er[("random", ipc)].value == pytest.approx(0.0, abs=1e-9)
    assert er[("dc", 10)].value == pytest.approx(3.0)
    assert er[("dm", 10)].value == pytest.approx(-2.0)
    # identical models: nothing varies, so the intervals have zero width
    assert er[("dc", 10)].low == pytest.approx(3.0) and er[("dc", 10)].high == pytest.approx(3.0)


def test_effective_robustness_needs_two_random_ipcs():
    records = _cell("random", 1, 15.0, 2.0) + _cell("dc", 10, 40.0, 5.0)
    rows, trends = robust_rows(records, Bootstrap(resamples=100))
    assert trends == {"cifar10": None}
    assert all(r.effective.value is None for r in rows)


# -- the tables ------------------------------------------------------------------------------
def _noisy_run(n: int = 200, outcomes: bool = True) -> list[Record]:
    """Two methods x 3 models x (clean + FGSM + PGD + AutoAttack) at IPC 1 and 10, plus random."""
    rng = np.random.default_rng(0)
    out = []
    for method, base in (("random", 0.2), ("dc", 0.4), ("dm", 0.41)):
        for ipc in (1, 10):
            for k in range(3):
                clean = rng.random(n) < base + 0.01 * ipc
                rows = [("clean", "clean", clean)]
                for attack, keep in (("FGSM", 0.5), ("PGD", 0.3), ("AutoAttack", 0.2)):
                    for mode in ("targeted", "untargeted"):
                        if mode == "targeted" and attack == "AutoAttack":
                            continue
                        rows.append((mode, attack, clean & (rng.random(n) < keep)))
                for mode, attack, mask in rows:
                    r = rec(method, ipc, k, mode, attack, mask, seconds=1.0 + len(attack))
                    if not outcomes:
                        r.outcomes = None
                    out.append(r)
    return out


def test_robust_table_formats_and_csv_columns():
    records = _noisy_run()
    boot = Bootstrap(resamples=200)
    text = format_robust(records, "csv", boot=boot)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == CSV_HEADER
    assert len(rows) == 1 + 3 * 2
    by = {(r[1], r[2]): dict(zip(rows[0], r)) for r in rows[1:]}
    assert by[("DC", "10")]["ci_resampled"] == IMAGES
    assert float(by[("DC", "10")]["worst_case"]) <= float(by[("DC", "10")]["autoattack"])
    assert by[("Random", "1")]["effective_robustness"] != ""
    md = format_robust(records, "markdown", boot=boot)
    assert md.startswith("### Robust accuracy — threat model: standard | preset: cpu")
    assert "Taori et al., 2020" in md and "two-level" in md
    assert format_robust(records, "latex", boot=boot).startswith("% threat model: standard")


def test_table1_ci_keeps_the_published_header_first():
    records = _noisy_run()
    boot = Bootstrap(resamples=200)
    plain = format_table1(records, "csv")
    with_ci = format_table1(records, "csv", ci=boot)
    header = with_ci.splitlines()[0].split(",")
    assert plain.splitlines()[0] == PUBLISHED_HEADER
    assert ",".join(header[:len(TABLE1_HEADER)]) == PUBLISHED_HEADER
    assert tuple(header[len(TABLE1_HEADER):]) == CI_COLUMNS
    for line_plain, line_ci in zip(plain.splitlines()[1:], with_ci.splitlines()[1:]):
        cells = line_ci.split(",")
        assert ",".join(cells[:len(TABLE1_HEADER)]) == line_plain  # the values are unchanged
        assert cells[-1] == IMAGES
        lows, highs = cells[len(TABLE1_HEADER):-1:2], cells[len(TABLE1_HEADER) + 1:-1:2]
        values = cells[2:len(TABLE1_HEADER)]
        for v, lo, hi in zip(values, lows, highs):
            assert float(lo) <= float(v) + 1e-6 and float(v) - 1e-6 <= float(hi)


def test_table1_ci_flags_marks_whose_lead_is_not_significant():
    # dc and dm differ by one point of clean accuracy on 200 images: no lead is significant
    md = format_table1(_noisy_run(), "markdown", ci=Bootstrap(resamples=300))
    assert "†" in md and "paired bootstrap" in md
    assert "[" in md.splitlines()[4]
    # without outcomes the note says models only
    md_models = format_table1(_noisy_run(outcomes=False), "markdown",
                              ci=Bootstrap(resamples=300))
    assert "over models only: the records carry no per-image outcomes" in md_models


def test_a_clear_lead_is_not_flagged():
    records = []
    for method, keep in (("dc", 0.9), ("dm", 0.1)):
        for k in range(3):
            clean = np.ones(400, bool)
            rng = np.random.default_rng(k)
            records.append(rec(method, 1, k, "clean", "clean", clean))
            for attack, scale in (("FGSM", 1.0), ("PGD", 0.5)):
                for mode in ("targeted", "untargeted"):
                    records.append(rec(method, 1, k, mode, attack,
                                       rng.random(400) < keep * scale))
    md = format_table1(records, "markdown", ci=Bootstrap(resamples=300))
    dc_line = next(line for line in md.splitlines() if "| DC " in line)
    assert "**" in dc_line and "†" not in dc_line


def test_the_scatter_is_drawn_with_the_random_trend(tmp_path):
    from rome_bench.reporting.figures import plot_robust_scatter, write_figures

    records = _noisy_run()
    paths = plot_robust_scatter(records, tmp_path, "scatter", "t", Bootstrap(resamples=100))
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    written = write_figures(records, tmp_path, echo=lambda _: None)
    assert any(p.name == "robust_scatter_standard_cpu.png" for p in written)


def test_cli_robust_kind_ci_flag_and_the_end_of_run_tables(tmp_path, capsys):
    from types import SimpleNamespace

    from click.testing import CliRunner

    from rome_bench.cli import _finish, main
    from rome_bench.core.records import RecordStore

    records = _noisy_run()
    RecordStore(tmp_path / "records.jsonl").append(records)
    runner = CliRunner()
    robust = runner.invoke(main, ["table", str(tmp_path), "--kind", "robust", "--format", "csv",
                                  "--resamples", "100"])
    assert robust.exit_code == 0, robust.output
    assert robust.output.splitlines()[0] == ",".join(CSV_HEADER)
    plain = runner.invoke(main, ["table", str(tmp_path), "--format", "csv"])
    with_ci = runner.invoke(main, ["table", str(tmp_path), "--format", "csv", "--ci",
                                   "--resamples", "100", "--bootstrap-seed", "3"])
    assert plain.output.splitlines()[0] == PUBLISHED_HEADER
    assert with_ci.output.splitlines()[0].startswith(PUBLISHED_HEADER + ",targeted_RR_ci_low,")
    # run and evaluate print Table 1 with intervals; the files they write stay the published ones
    _finish(SimpleNamespace(out=tmp_path), records, 0.5)
    shown = capsys.readouterr().out
    assert "percentile bootstrap" in shown and "[" in shown.split("| DC ")[1].splitlines()[0]
    assert not (tmp_path / "tables.md").exists()


def _paired_difference_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "paired_difference.py"
    spec = importlib.util.spec_from_file_location("paired_difference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_difference_calls_a_clear_lead_and_a_tie(tmp_path, capsys):
    """scripts/paired_difference.py: A classifies B's correct images plus about half of the
    rest, on every model, so A's clean lead is significant; a method against itself is a tie
    on every measure; an unknown method is a one-line error."""
    rng = np.random.default_rng(0)
    rows = []
    for repeat in range(3):
        base = rng.random(200) < 0.6
        for method, clean in (("a", base | (rng.random(200) < 0.5)), ("b", base)):
            rows.append(rec(method, 10, repeat, "clean", "clean", clean))
            for mode in ("targeted", "untargeted"):
                rows.append(rec(method, 10, repeat, mode, "FGSM", clean & (rng.random(200) < 0.5),
                                seconds=2.0))
    path = tmp_path / "records.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in rows))
    script = _paired_difference_script()
    assert script.main([str(path), "--a", "a", "--b", "b", "--threat-model", "standard",
                        "--resamples", "500"]) == 0
    out = capsys.readouterr().out
    clean_line = next(line for line in out.splitlines() if line.startswith("clean accuracy"))
    assert clean_line.rstrip().endswith("A ahead")
    assert "models+images" in out
    assert script.main([str(path), "--a", "a", "--b", "a", "--threat-model", "standard",
                        "--resamples", "200"]) == 0
    verdicts = [line.split()[-1] for line in capsys.readouterr().out.splitlines()
                if line.split() and line.split()[0] in ("clean", "targeted", "untargeted")]
    assert verdicts and set(verdicts) == {"tie"}
    assert script.main([str(path), "--a", "a", "--b", "zz", "--threat-model", "standard"]) == 2
    assert "no standard records of method 'zz'" in capsys.readouterr().err
