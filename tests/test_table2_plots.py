"""Table 2 from hand-made records, and figures that open as real, non-blank images."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rome_bench.cli import main
from rome_bench.core.records import Record
from rome_bench.data.distilled import DistilledSet
from rome_bench.pipeline.runner import image_grids
from rome_bench.reporting import figures as plots
from rome_bench.reporting import table2
from rome_bench.reporting.accuracy import format_accuracy
from rome_bench.reporting.layout import ReportError
from rome_bench.reporting.table1 import has_attacks


def rec(method, mode, acc, *, setting="white-box", src=None, attack="PGD", eps=8 / 255, ipc=50,
        repeat=0, seconds=1.0, threat="standard"):
    return Record("r", method, "cifar10", ipc, 0, repeat, "convnet", "paper", threat, setting,
                  src, mode, attack if mode != "clean" else "clean", eps, acc, seconds, 100)


def study():
    """Two victims (DC, ROME), both surrogates, transfer + query, both modes."""
    rows = [rec("DC", "clean", 50.0), rec("ROME", "clean", 40.0)]
    for mode, bump in (("untargeted", 0.0), ("targeted", 10.0)):
        rows += [
            rec("DC", mode, 50.0 - 40 + bump, setting="transfer", src="DC"),  # self: left out
            rec("DC", mode, 30.0 + bump, setting="transfer", src="ROME", attack="FGSM"),
            rec("DC", mode, 20.0 + bump, setting="transfer", src="ROME", attack="PGD"),
            rec("ROME", mode, 38.0, setting="transfer", src="DC", attack="FGSM"),
            rec("ROME", mode, 36.0, setting="transfer", src="DC", attack="PGD"),
            rec("ROME", mode, 5.0, setting="transfer", src="ROME"),
            rec("DC", mode, 10.0 + bump, setting="query", attack="Square"),
            rec("ROME", mode, 30.0, setting="query", attack="Square"),
            rec("ROME", mode, 34.0, setting="query", attack="SPSA"),
        ]
    return rows


def irr(clean, accs):
    mean_asr, max_asr = clean - np.mean(accs), clean - min(accs)
    return 100 * (1 - mean_asr * max_asr / clean**2)


def test_table2_values_by_hand():
    rows = {r.method: r for r in table2.table2_rows(study())}
    assert list(rows) == ["DC", "ROME"]
    dc, rome = rows["DC"], rows["ROME"]
    assert dc.cells["untargeted_transfer_I-RR"][0] == pytest.approx(irr(50, [30, 20]))
    assert dc.cells["targeted_transfer_I-RR"][0] == pytest.approx(irr(50, [40, 30]))
    assert dc.cells["untargeted_query_I-RR"][0] == pytest.approx(irr(50, [10]))
    assert rome.cells["untargeted_transfer_I-RR"][0] == pytest.approx(irr(40, [38, 36]))
    assert rome.cells["targeted_query_I-RR"][0] == pytest.approx(irr(40, [30, 34]))
    assert dc.clean[0] == 50.0


def test_table2_formats_and_reference():
    md = table2.format_table2(study(), "markdown", reference="paper")
    assert "Table 2 layout" in md and "(paper 85.84" in md  # DC targeted transfer, published
    assert "ROME" in md and "paper 99.90" in md
    csv = table2.format_table2(study(), "csv", reference="paper").splitlines()
    assert csv[0].startswith("dataset,ipc,method,clean,targeted_transfer_I-RR")
    assert csv[0].endswith("paper_untargeted_query_I-RR") and len(csv) == 3
    assert "\\begin{tabular}" in table2.format_table2(study(), "latex")
    with pytest.raises(ReportError, match="no transfer or query records"):
        table2.format_table2([rec("DC", "clean", 50.0), rec("DC", "untargeted", 10.0)])
    mixed = study() + [rec("DC", "untargeted", 1.0, setting="query", threat="beard-compat")]
    with pytest.raises(ReportError, match="CSV table holds one"):
        table2.format_table2(mixed, "csv")


def test_transfer_rows_stay_out_of_white_box_tables():
    rows = study()
    assert not has_attacks(rows)  # transfer/query only: no Table 1
    acc = format_accuracy(rows)
    assert "Square (U)" in acc and "FGSM" not in acc


def test_cli_table_kind_blackbox(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in study()))
    res = CliRunner().invoke(main, ["table", str(path), "--kind", "blackbox", "--format", "csv"])
    assert res.exit_code == 0 and res.output.startswith("dataset,ipc,method,clean")
    res = CliRunner().invoke(main, ["table", str(path)])  # black-box records only: Table 2
    assert res.exit_code == 0 and "Table 2 layout" in res.output
    res = CliRunner().invoke(main, ["table", str(path), "--kind", "blackbox", "--reference",
                                    str(tmp_path / "missing.csv")])
    assert res.exit_code != 0 and len(res.stderr.strip().splitlines()) == 1


def sweep_and_white_box():
    rows = []
    for method, clean in (("DC", 50.0), ("ROME", 40.0)):
        for k in (2, 4, 6, 8, 10):
            for mode in ("untargeted", "targeted"):
                rows.append(rec(method, mode, clean - 3 * k, attack=f"PGD-eps{k}", eps=k / 255))
        rows += [rec(method, m, clean / 2, attack="FGSM") for m in ("untargeted", "targeted")]
    return rows


def open_png(path):
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 150 and img.shape[1] > 150, img.shape
    rgb = img[..., :3]
    assert float(rgb.std()) > 0.05  # not blank
    assert float((rgb < 0.9).mean()) > 0.02  # some ink, not only white background
    return img


def test_figures_open_and_are_not_blank(tmp_path):
    records = study() + sweep_and_white_box()
    ds = DistilledSet(torch.rand(20, 3, 32, 32), torch.arange(20) % 10,
                      {"method": "dc", "dataset": "cifar10"})
    written = plots.write_figures(records, tmp_path, distilled=image_grids({"dc_ipc2": ds}),
                                 echo=lambda s: None)
    pngs = {p.name for p in written if p.suffix == ".png"}
    pdfs = [p for p in written if p.suffix == ".pdf"]
    assert len(pdfs) == len(pngs) and all(p.stat().st_size > 1000 for p in pdfs)
    expected = {"transfer_irr_untargeted_ipc50_standard_paper.png",
                "transfer_irr_targeted_ipc50_standard_paper.png",
                "transfer_accuracy_untargeted_ipc50_standard_paper.png",
                "robustness_curves_standard_paper.png", "table1_bars_standard_paper.png",
                "distilled_dc_ipc2.png"}
    assert expected <= pngs
    for name in pngs:
        open_png(tmp_path / "figures" / name)


def test_heatmap_and_curve_numbers():
    m = plots.transfer_matrix(study(), mode="untargeted", value="I-RR")
    assert m.sources == m.victims == ["DC", "ROME"]
    assert m.values[1, 0] == pytest.approx(irr(50, [30, 20]))  # ROME -> DC
    assert m.values[0, 1] == pytest.approx(irr(40, [38, 36]))  # DC -> ROME
    acc = plots.transfer_matrix(study(), mode="untargeted", value="accuracy", attack="PGD")
    assert acc.values.tolist() == [[10.0, 36.0], [20.0, 5.0]]
    curves = plots.robustness_curves(study() + sweep_and_white_box())
    assert curves[("DC", 50, "untargeted")][0] == (0.0, 50.0)
    assert curves[("DC", 50, "untargeted")][-1] == (10.0, 20.0)
    grid = plots.image_grid(torch.rand(20, 3, 32, 32), torch.arange(20) % 10)
    assert grid.shape == (10 * 33 + 1, 2 * 33 + 1, 3)  # a class per row, 2 images each


def test_plot_cli(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(r.to_json() + "\n" for r in study()))
    res = CliRunner().invoke(main, ["plot", str(path), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert "skipped robustness curves" in res.output
    open_png(tmp_path / "figs" / "figures" / "transfer_irr_untargeted_ipc50_standard_paper.png")
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "nothing.jsonl")])
    assert res.exit_code != 0 and len(res.stderr.strip().splitlines()) == 1
