import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from rome_bench.core.registry import DuplicateNameError, Registry, UnknownNameError

REPO = Path(__file__).resolve().parents[1]


def make():
    reg = Registry("attack")

    @reg.register("spsa", "spsa-attack", description="query attack")
    def spsa():
        return 1

    @reg.register("square")
    def square():
        return 2

    return reg


def test_get_is_case_insensitive_and_follows_aliases():
    reg = make()
    assert reg.get("SPSA")() == 1
    assert reg.get("Spsa_Attack")() == 1
    assert "Square" in reg
    assert reg.list() == ["spsa", "square"]
    assert reg.list("sp*") == ["spsa"]
    assert reg.entry("spsa").description == "query attack"


def test_unknown_name_suggests_closest_and_lists_known():
    with pytest.raises(UnknownNameError) as err:
        make().get("spas")
    msg = str(err.value)
    assert "Unknown attack 'spas'" in msg
    assert "Did you mean: spsa" in msg
    assert "Available: spsa, square" in msg


def test_duplicate_registration_names_both_definitions():
    reg = make()
    with pytest.raises(DuplicateNameError) as err:
        reg.add("spsa", lambda: 3)
    assert "registered twice" in str(err.value)
    assert "test_registry" in str(err.value)


def test_entry_point_discovery(monkeypatch):
    loaded = []

    class FakeEP:
        name, value = "plugin", "pkg:mod"

        def load(self):
            loaded.append(True)
            reg.add("from-plugin", object())

    reg = Registry("method", entry_point_group="rome_bench.methods")
    monkeypatch.setattr("rome_bench.core.registry.metadata.entry_points",
                        lambda group: [FakeEP()] if group == "rome_bench.methods" else [])
    assert "from-plugin" in reg.list()
    assert loaded == [True]


def test_one_file_plugin_in_baselines_is_discovered_and_tabulated(tmp_path):
    """A contributor's only edit is a new file in baselines/ (checked through the real CLI): it is
    listed, and its row in the run's table carries its display name at its declared place."""
    name = f"zz_probe_{uuid.uuid4().hex[:6]}"
    plugin = REPO / "baselines" / f"{name}.py"
    plugin.write_text(textwrap.dedent(f'''
        import torch
        from rome_bench import DistilledSet, register_method

        @register_method("{name.replace('_', '-')}", display="Probe {name[-6:]}", order=0,
                         description="first images")
        def probe(train, ipc, cfg):
            idx = torch.cat([train.indices_of(c)[:ipc] for c in range(train.num_classes)])
            return DistilledSet(images=train.images[idx], labels=train.labels[idx])
    '''))
    env = {**os.environ, "ROME_BENCH_CACHE": str(tmp_path / "cache")}
    try:
        out = subprocess.run([sys.executable, "-m", "rome_bench.cli", "list", "methods"],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout
        assert name.replace("_", "-") in out
        assert "first images" in out
        run = subprocess.run([sys.executable, "-m", "rome_bench.cli", "run", "--method",
                              f"random,{name.replace('_', '-')}", "--attacks", "FGSM", "--quiet",
                              "--jobs", "1", "--out", str(tmp_path / "run")],
                             capture_output=True, text=True, cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr
    finally:
        plugin.unlink()
    rows = [line for line in (tmp_path / "run" / "tables.md").read_text().splitlines()
            if line.startswith("| CIFAR-10-mini")]
    table1 = rows[:2]  # the Table-1 layout comes first, then the accuracy table
    assert [r.split("|")[2].strip() for r in table1] == [f"Probe {name[-6:]}", "Random"]
