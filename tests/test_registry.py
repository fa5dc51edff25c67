import os
import subprocess
import sys
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


PROBE = """
import torch
from rome_bench import DistilledSet, register_method

@register_method("{method}", display="Probe {tag}", order=0, description="first images")
def probe(train, ipc, cfg):
    idx = torch.cat([train.indices_of(c)[:ipc] for c in range(train.num_classes)])
    return DistilledSet(images=train.images[idx], labels=train.labels[idx])
"""


def _probe(folder: Path) -> tuple[str, str, str]:
    """A one-file method module in ``folder``: (module name, method name, display tag)."""
    module = f"zz_probe_{uuid.uuid4().hex[:6]}"
    method, tag = module.replace("_", "-"), module[-6:]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(PROBE.format(method=method, tag=tag))
    return module, method, tag


def test_one_file_plugin_package_is_discovered_and_tabulated(tmp_path):
    """A method in another package, found through its ``rome_bench.methods`` entry point
    (checked through the real CLI): it is listed, and its row in the run's table carries its
    display name at its declared place. Everything lives under tmp_path (the package and its
    metadata on PYTHONPATH), so the test passes on a read-only checkout."""
    site = tmp_path / "site"
    module, method, tag = _probe(site)
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[rome_bench.methods]\n{method} = {module}\n")
    env = {**os.environ, "ROME_BENCH_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "rome_bench.cli", "list", "methods"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout
    assert method in out and "first images" in out
    run = subprocess.run([sys.executable, "-m", "rome_bench.cli", "run", "--method",
                          f"random,{method}", "--attacks", "FGSM", "--quiet", "--jobs", "1",
                          "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    rows = [line for line in (tmp_path / "run" / "tables.md").read_text().splitlines()
            if line.startswith("| CIFAR-10-mini")]
    table1 = rows[:2]  # the Table-1 layout comes first, then the accuracy table
    assert [r.split("|")[2].strip() for r in table1] == [f"Probe {tag}", "Random"]


def test_every_module_of_the_baselines_package_is_registered(tmp_path, monkeypatch):
    """A contributor's only edit is a new file in baselines/: discovery imports every public
    module of the package's folders. A temporary folder is added to the package's path instead
    of writing into the checkout's baselines/ (which may be read-only)."""
    import rome_bench.baselines

    from rome_bench.core.catalog import METHODS
    from rome_bench.methods.discovery import PLUGIN_PACKAGE, load_builtin_methods

    module, method, tag = _probe(tmp_path / "extra")
    (tmp_path / "extra" / "_private_helper.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.setattr(rome_bench.baselines, "__path__",
                        [*rome_bench.baselines.__path__, str(tmp_path / "extra")])
    try:
        load_builtin_methods()
        entry = METHODS.entry(method)
        assert entry.meta["display"] == f"Probe {tag}" and entry.meta["order"] == 0
    finally:
        found = METHODS.find(method)
        if found is not None:
            METHODS.remove(found)
        sys.modules.pop(f"{PLUGIN_PACKAGE}.{module}", None)
