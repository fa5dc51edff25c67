"""The six published BEARD checkpoints score their recorded clean accuracy on the real test set.

This proves data orientation, normalization and the architecture end to end. The shared copy
of CIFAR-10 is JPEG-decoded, so accuracies may run up to 2.5 points below the MANIFEST.
"""

import re

import pytest

from rome_bench.pipeline import runner as pipeline


def manifest_accuracies(pool_dir):
    text = (pool_dir / "MANIFEST").read_text()
    line = re.search(r"\(its black-box evaluation log\):\s*(.+?)\(%\)", text, re.S).group(1)
    return {m: float(v) for m, v in re.findall(r"(\w+) ([\d.]+)", line)}


@pytest.mark.slow
def test_published_checkpoints_score_their_recorded_clean_accuracy(tmp_path, pool_dir, cifar10_root):
    expected = manifest_accuracies(pool_dir)
    assert set(expected) == {"DC", "DSA", "MTT", "DM", "IDM", "BACON"}
    checkpoints = [(m, str(next(pool_dir.glob(f"{m}_ConvNet_CIFAR10_50_*.pth")))) for m in expected]
    config = pipeline.RunConfig(methods=[], dataset="cifar10", data_root=str(cifar10_root),
                                preset="paper", attacks="none", out=str(tmp_path / "pool"),
                                show_progress=False, device="cpu")
    _, records = pipeline.evaluate_checkpoints(config, checkpoints, echo=lambda s: None)
    measured = {r.method: r.accuracy for r in records if r.mode == "clean"}
    assert all(r.n_images == 10_000 and r.ipc == 50 for r in records)
    for method, acc in expected.items():
        assert abs(measured[method] - acc) <= 2.5, (method, measured[method], acc)
