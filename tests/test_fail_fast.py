"""Inputs that can be checked without the data are checked before the data is read.

Reading a real training set takes seconds to minutes; a bad file, name, device or output folder
must be reported at once, not after that. Each test gives a data root that does not exist and
makes reading any data fail loudly: the error must be about the bad input, never the data.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from rome_bench.cli import main
from rome_bench.data.datasets import DATASETS
from rome_bench.models.convnet import build_model
from rome_bench.pipeline import runner, stages

NO_DATA = ["--dataset", "cifar10", "--data-root", "/nonexistent/cifar10"]


@pytest.fixture(autouse=True)
def data_must_not_be_read(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the data was read before the inputs were checked")

    monkeypatch.setattr(runner, "load_dataset", refuse)
    monkeypatch.setattr(stages, "load_dataset", refuse)


def invoke(args: list[str], out) -> tuple[int, str]:
    res = CliRunner().invoke(main, [*args, "--out", str(out), "--quiet"])
    return res.exit_code, res.stderr


def truncated(tmp_path, name: str, obj) -> str:
    path = tmp_path / name
    torch.save(obj, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def assert_reported_first(code: int, err: str, *expected: str) -> None:
    assert code != 0
    assert "data was read" not in err and "/nonexistent/cifar10" not in err, err
    line = err.strip().splitlines()[-1]
    assert all(e in line for e in expected), line


def test_a_truncated_distilled_file_is_reported_before_the_data(tmp_path):
    bad = truncated(tmp_path, "set.pt", {"images": torch.rand(10, 3, 32, 32),
                                         "labels": torch.arange(10)})
    code, err = invoke(["run", "--method", f"file:{bad}", "--attacks", "none", *NO_DATA],
                       tmp_path / "out")
    assert_reported_first(code, err, "cannot load distilled set", bad)
    assert not (tmp_path / "out").exists()


def test_a_missing_or_unfitting_distilled_file_is_reported_before_the_data(tmp_path):
    code, err = invoke(["run", "--method", f"file:{tmp_path / 'missing.pt'}", *NO_DATA],
                       tmp_path / "out")
    assert_reported_first(code, err, "missing.pt", "does not exist")
    gray = tmp_path / "gray.pt"
    torch.save({"images": torch.rand(10, 1, 32, 32), "labels": torch.arange(10)}, gray)
    code, err = invoke(["evaluate", "--distilled", str(gray), *NO_DATA], tmp_path / "out")
    assert_reported_first(code, err, "gray.pt", "expected 3 channels")


def test_a_truncated_checkpoint_is_reported_before_the_data(tmp_path):
    bad = truncated(tmp_path, "DC.pth", {"features.0.weight": torch.rand(128, 3, 3, 3)})
    code, err = invoke(["evaluate", "--checkpoint", f"DC={bad}", "--attacks", "none", *NO_DATA],
                       tmp_path / "out")
    assert_reported_first(code, err, "cannot load checkpoint", bad)


def test_an_unwritable_output_folder_is_reported_before_the_data(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = invoke(["run", "--method", "random", *NO_DATA], blocker / "run")
    assert_reported_first(code, err, "cannot write to the output folder", str(blocker / "run"))
    good = tmp_path / "DC.pth"
    spec = DATASETS.get("cifar10")
    torch.save(build_model("convnet", num_classes=10, mean=spec.mean, std=spec.std).net
               .state_dict(), good)
    code, err = invoke(["evaluate", "--checkpoint", f"DC={good}", *NO_DATA], blocker / "run")
    assert_reported_first(code, err, "cannot write to the output folder", str(blocker / "run"))


def test_an_unwritable_cache_is_reported_before_the_data(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ROME_BENCH_CACHE", str(blocker / "cache"))
    code, err = invoke(["run", "--method", "random", *NO_DATA], tmp_path / "out")
    assert_reported_first(code, err, "cannot write to the cache folder", str(blocker / "cache"))
    assert not (tmp_path / "out").exists()  # the check left no empty run folder behind


@pytest.mark.parametrize("args,expected", [
    (["--method", "random", "--attacks", "FSGM"], "Did you mean: fgsm"),
    (["--method", "rnadom"], "Did you mean: random"),
    (["--method", "random", "--device", "cuda:7"], "cuda:7"),
    (["--method", "random", "--device", "tpu"], "not a torch device"),
])
def test_bad_names_and_devices_are_reported_before_the_data(tmp_path, args, expected):
    if "cuda:7" in args and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code, err = invoke(["run", *args, *NO_DATA], tmp_path / "out")
    assert_reported_first(code, err, expected)


def test_a_dry_run_plans_for_a_gpu_this_machine_lacks(tmp_path):
    # planning is allowed anywhere; only a run that would start needs the device
    res = CliRunner().invoke(main, ["run", "--method", "random", "--device", "cuda:7",
                                    "--dry-run", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0 and "device cuda:7" in res.output
