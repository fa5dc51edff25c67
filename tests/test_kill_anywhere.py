"""CI's share of the kill-anywhere check (tests/kill_anywhere.py): fewer kills, same checks.

The documented full check is ``python tests/kill_anywhere.py --kills 12 --seed 0``.
"""

from __future__ import annotations

import sys

import pytest
from kill_anywhere import Grid, kill_anywhere  # tests/ is on sys.path under pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL")]


def test_a_run_killed_again_and_again_ends_as_an_undisturbed_one(tmp_path):
    report = kill_anywhere(kills=5, seed=1, workdir=tmp_path, grid=Grid(test_subset=20),
                           echo=lambda s: None)
    assert not report.problems, report.summary()
    assert report.kills == 5
    # both ways of running took part: one process and a pool of two workers
    assert {a.jobs for a in report.attempts if a.killed} == {1, 2}
