"""Reading records: a measurement stored in two run folders counts once; per-image outcomes
round-trip through their hex form."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from rome_bench.core.records import (
    Record,
    RecordError,
    RecordStore,
    pack_outcomes,
    read_records,
    unpack_outcomes,
)


def _record(attack: str, accuracy: float, created: str, repeat: int = 0) -> Record:
    mode = "clean" if attack == "clean" else "untargeted"
    return Record(run_id="r", method="rome", dataset="cifar10", ipc=1, seed=0, repeat=repeat,
                  arch="convnet", preset="cpu", threat_model="beard-compat", setting="white-box",
                  source_model=None, mode=mode, attack=attack, eps=None, accuracy=accuracy,
                  seconds=1.0, n_images=200, created=created)


def test_nested_rerun_does_not_count_a_model_twice(tmp_path):
    # the main run, and a later diagnostic run on the same cached model stored inside it
    RecordStore(tmp_path / "records.jsonl").append(
        [_record("clean", 27.0, "2026-11-27T02:00:00"), _record("PGD", 14.0, "2026-11-27T02:01:00")])
    RecordStore(tmp_path / "clamp" / "records.jsonl").append(
        [_record("clean", 27.5, "2026-11-29T10:00:00"), _record("FGSM-eps0", 24.0, "2026-11-29T10:00:01")])
    rows = read_records([tmp_path])
    clean = [r for r in rows if r.attack == "clean"]
    assert [r.accuracy for r in clean] == [27.5]  # one clean row, the newest
    assert sorted(r.attack for r in rows) == ["FGSM-eps0", "PGD", "clean"]


def test_rows_of_one_file_are_kept_as_written(tmp_path):
    path = tmp_path / "records.jsonl"
    RecordStore(path).append([_record("clean", 27.0, "2026-11-27T02:00:00", repeat=0),
                              _record("clean", 30.0, "2026-11-27T02:00:00", repeat=1),
                              _record("clean", 31.0, "2026-11-27T03:00:00", repeat=1)])
    assert [r.accuracy for r in read_records([path])] == [27.0, 30.0, 31.0]


# -- per-image outcomes -------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 8, 9, 200, 1001])
def test_outcomes_round_trip(n):
    mask = np.random.default_rng(n).random(n) < 0.4
    text = pack_outcomes(mask)
    assert len(text) == 2 * ((n + 7) // 8)
    assert text == np.packbits(mask, bitorder="big").tobytes().hex()
    assert unpack_outcomes(text, n).tolist() == mask.tolist()


def test_outcomes_are_big_endian_bits_in_test_subset_order():
    assert pack_outcomes([True] + [False] * 7) == "80"
    assert pack_outcomes([False] * 7 + [True]) == "01"
    assert pack_outcomes([True] * 9) == "ff80"


def test_outcomes_of_the_wrong_length_or_not_hex_are_errors():
    with pytest.raises(RecordError, match="do not describe 9 images"):
        unpack_outcomes("ff", 9)
    with pytest.raises(RecordError, match="not a hex string"):
        unpack_outcomes("zz", 8)


def test_record_outcomes_are_stored_and_older_rows_read_without_them(tmp_path):
    rec = _record("clean", 50.0, "2026-11-27T02:00:00")
    rec.n_images = 10
    rec.outcomes = pack_outcomes([True, False] * 5)
    old = json.loads(_record("PGD", 14.0, "2026-11-27T02:01:00").to_json())
    del old["outcomes"]  # a row written before the field existed
    path = tmp_path / "records.jsonl"
    path.write_text(rec.to_json() + "\n" + json.dumps(old) + "\n")
    new_row, old_row = read_records([path])
    assert new_row.outcome_mask().tolist() == [True, False] * 5
    assert old_row.outcomes is None and old_row.outcome_mask() is None


def test_records_without_the_newer_fields_still_read(tmp_path):
    row = {"run_id": "r", "method": "dc", "dataset": "cifar10", "ipc": 1, "seed": 0, "repeat": 0,
           "arch": "convnet", "preset": "quick", "threat_model": "standard",
           "setting": "white-box", "source_model": None, "mode": "clean", "attack": "clean",
           "eps": None, "accuracy": 50.0, "seconds": 1.0, "n_images": 10}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (rec,) = read_records([path])
    assert rec.n_attacked is None and rec.outcomes is None


def test_the_newest_row_wins_whichever_file_sorts_first(tmp_path):
    # the newer measurement is in the file that sorts LAST: a reader that lets the first file
    # win (or the last file, or the smallest value) fails one of the two layouts
    for newer_first in (False, True):
        root = tmp_path / str(newer_first)
        older, newer = ("b", "a") if newer_first else ("a", "b")
        RecordStore(root / older / "records.jsonl").append([_record("PGD", 30.0, "2026-11-01T00:00:00")])
        RecordStore(root / newer / "records.jsonl").append([_record("PGD", 20.0, "2026-11-02T00:00:00")])
        assert [r.accuracy for r in read_records([root])] == [20.0]


def test_within_a_file_the_latest_row_decides_which_file_is_newest(tmp_path):
    # file a holds the measurement twice (early and late), file b once in between: a holds the
    # newest row, so its rows are kept as written; keeping the smallest time per file would
    # let b win
    RecordStore(tmp_path / "a" / "records.jsonl").append(
        [_record("PGD", 30.0, "2026-11-01T00:00:00"), _record("PGD", 31.0, "2026-11-03T00:00:00")])
    RecordStore(tmp_path / "b" / "records.jsonl").append([_record("PGD", 20.0, "2026-11-02T00:00:00")])
    assert [r.accuracy for r in read_records([tmp_path])] == [30.0, 31.0]


def test_a_rerun_supersedes_the_earlier_runs_rows_of_the_same_measurements(tmp_path):
    # a run killed after its first model, restarted with the same --out: the restart writes the
    # first model's rows again (from the cache) and then the rest
    path = tmp_path / "records.jsonl"
    store = RecordStore(path)
    first = [_record("clean", 27.0, "2026-11-27T02:00:00"), _record("PGD", 14.0, "2026-11-27T02:00:01")]
    store.append(first)
    path.write_text(path.read_text() + "not a record, kept as it is\n")
    again = [replace(r, run_id="restart", created="2026-11-27T03:00:00") for r in first]
    store.append(again)
    store.append([replace(_record("clean", 30.0, "2026-11-27T03:00:02", repeat=1),
                          run_id="restart")])
    lines = path.read_text().splitlines()
    assert lines[0] == "not a record, kept as it is"
    rows = [json.loads(line) for line in lines[1:]]
    assert [(r["run_id"], r["attack"], r["repeat"]) for r in rows] == [
        ("restart", "clean", 0), ("restart", "PGD", 0), ("restart", "clean", 1)]
    # rows of one run are never dropped, even for the same measurement
    store.append([replace(again[0], accuracy=28.0)])
    assert sum(json.loads(line).get("attack") == "clean" and json.loads(line)["repeat"] == 0
               for line in path.read_text().splitlines()[1:]) == 2
