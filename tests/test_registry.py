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


def test_one_file_plugin_in_baselines_is_discovered():
    """A contributor's only edit is a new file in baselines/ (checked through the real CLI)."""
    name = f"zz_probe_{uuid.uuid4().hex[:6]}"
    plugin = REPO / "baselines" / f"{name}.py"
    plugin.write_text(textwrap.dedent(f'''
        import torch
        from rome_bench import DistilledSet, register_method

        @register_method("{name.replace('_', '-')}", description="first images")
        def probe(train, ipc, cfg):
            idx = torch.cat([train.indices_of(c)[:ipc] for c in range(train.num_classes)])
            return DistilledSet(images=train.images[idx], labels=train.labels[idx])
    '''))
    try:
        out = subprocess.run([sys.executable, "-m", "rome_bench.cli", "list", "methods"],
                             capture_output=True, text=True, cwd=REPO, check=True).stdout
        assert name.replace("_", "-") in out
        assert "first images" in out
    finally:
        plugin.unlink()
