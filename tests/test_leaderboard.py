"""The leaderboard page: self-contained, and in a real headless browser it loads without
console errors, sorts on a header (driven through ``#sort=COLUMN``) and renders non-blank.

The browser tests need Debian's Chromium (``apt-get install chromium``) and skip without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rome_bench.cli import main
from rome_bench.core.records import Record, RecordStore, pack_outcomes
from rome_bench.reporting.leaderboard import leaderboard_html, write_leaderboard
from rome_bench.reporting.robust import robust_rows
from rome_bench.reporting.uncertainty import Bootstrap

BOOT = Bootstrap(resamples=200)


def _records(n: int = 120) -> list[Record]:
    """random at IPC 1, 10, 50 and two methods, 2 models each, clean + FGSM + AutoAttack."""
    rng = np.random.default_rng(3)
    out = []
    cells = [("random", 1, 0.2), ("random", 10, 0.35), ("random", 50, 0.5), ("dc", 10, 0.45),
             ("dm", 10, 0.6)]
    for method, ipc, acc in cells:
        for k in range(2):
            clean = rng.random(n) < acc
            for mode, attack, mask in (
                    ("clean", "clean", clean),
                    ("untargeted", "FGSM", clean & (rng.random(n) < 0.4)),
                    ("targeted", "FGSM", clean & (rng.random(n) < 0.6)),
                    ("untargeted", "AutoAttack", clean & (rng.random(n) < 0.1 + acc / 4))):
                out.append(Record("t", method, "cifar10", ipc, 0, k, "convnet", "cpu", "standard",
                                  "white-box", None, mode, attack, None, 100.0 * mask.mean(),
                                  1.0 + len(attack), n, created="2026-12-01T00:00:00+00:00",
                                  outcomes=pack_outcomes(mask)))
    return out


def _rows_in_dom(dom: str) -> list[tuple[str, int]]:
    return [(m, int(i)) for m, i in re.findall(r'<tr data-method="([^"]+)" data-ipc="(\d+)"', dom)]


def test_the_page_is_self_contained_and_says_what_it_shows():
    page = leaderboard_html(_records(), "rome-bench leaderboard runs/x --out site", BOOT)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external asset of any kind
    assert "<script src" not in page and "stylesheet" not in page
    assert "data:image/png;base64," in page
    assert "rome-bench leaderboard runs/x --out site" in page
    assert "threat model: standard | preset: cpu" in page
    assert "untargeted white-box attacks: AutoAttack, FGSM" in page
    assert "random trend over IPC 1, 10, 50" in page
    for col in ("clean", "autoattack", "worst", "er", "targeted_RR", "untargeted_I-CREI"):
        assert f'data-col="{col}"' in page
    assert len(_rows_in_dom(page)) == 5


def test_leaderboard_command_writes_one_file(tmp_path):
    RecordStore(tmp_path / "run" / "records.jsonl").append(_records())
    result = CliRunner().invoke(main, ["leaderboard", str(tmp_path / "run"), "--out",
                                       str(tmp_path / "site"), "--resamples", "100"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "site").iterdir()] == ["leaderboard.html"]
    page = (tmp_path / "site" / "leaderboard.html").read_text()
    assert f"rome-bench leaderboard {tmp_path / 'run'} --out {tmp_path / 'site'} --resamples 100" \
        in page


# -- in a browser ----------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary on PATH (apt-get install chromium) to test the page in")


def _browse(binary: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url],
        capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    """The page's console messages (uncaught errors included) in Chromium's log."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
def test_the_page_in_a_headless_browser(tmp_path):
    binary = _chromium()
    records = _records()
    page = write_leaderboard(records, tmp_path, "rome-bench leaderboard x --out y", BOOT)
    url = page.resolve().as_uri()

    # the harness sees console errors: a page that throws is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    assert any("Uncaught" in line for line in _console(
        _browse(binary, bad.resolve().as_uri(), tmp_path / "p0", "--dump-dom").stderr))

    # loads without console errors, and the script ran to its end
    loaded = _browse(binary, url, tmp_path / "p1", "--dump-dom")
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert _console(loaded.stderr) == []
    html_tag = re.search(r"<html[^>]*>", loaded.stdout).group(0)
    assert 'data-ready="1"' in html_tag and "data-js-error" not in html_tag
    written_order = _rows_in_dom(loaded.stdout)
    assert len(written_order) == 5

    # sorting a column reorders the rows
    rows, _ = robust_rows(records, BOOT)
    clean = {(r.method, r.ipc): r.clean.value for r in rows}
    for hash_, descending in (("#sort=clean", False), ("#sort=-clean", True)):
        sorted_dom = _browse(binary, url + hash_, tmp_path / "p2", "--dump-dom")
        assert _console(sorted_dom.stderr) == []
        order = _rows_in_dom(sorted_dom.stdout)
        assert order == sorted(clean, key=clean.get, reverse=descending)
        direction = "descending" if descending else "ascending"
        assert f'data-col="clean" class="" aria-sort="{direction}"' in sorted_dom.stdout
    assert _rows_in_dom(_browse(binary, url + "#sort=-clean", tmp_path / "p2", "--dump-dom")
                        .stdout) != written_order

    # a screenshot is not blank
    shot = tmp_path / "shot.png"
    taken = _browse(binary, url, tmp_path / "p3", f"--screenshot={shot}", "--window-size=1200,900")
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (900, 1200)
    assert float(pixels[..., :3].std()) > 0.05
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50
