"""Reading records: a measurement stored in two run folders counts once."""

from __future__ import annotations

from rome_bench.core.records import Record, RecordStore, read_records


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
