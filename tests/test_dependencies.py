"""Dependency hygiene of the environment the tests run in (issue 22, item 8).

CI installs with the README's command (scripts/install.py), so these tests fail CI when the
environment holds a package below the floors of constraints/advisories.txt, when ``pip check``
finds a broken requirement, or when torchattacks starts importing requests (the reason its
pin may be dropped). Locally, an environment installed with a plain ``pip install -e .``
fails the first test with the command that repairs it.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import importlib.util
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _load_install_script():
    spec = importlib.util.spec_from_file_location("rome_bench_install", REPO / "scripts" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install = _load_install_script()


def test_no_installed_package_is_below_its_advisory_minimum():
    minimums = install.read_minimums()
    assert {"requests", "urllib3", "torch", "pip"} <= set(minimums)
    low = []
    for dist in metadata.distributions():
        name = install._normalize(dist.metadata["Name"] or "")
        if name in minimums and Version(dist.version) < Version(minimums[name]):
            low.append(f"{name} {dist.version} < {minimums[name]}")
    assert not low, (f"below constraints/advisories.txt: {', '.join(sorted(low))}; reinstall "
                     f"with `{sys.executable} scripts/install.py --extra test`")


def test_pip_check_finds_no_broken_requirement():
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_torchattacks_never_imports_requests():
    """Why dropping torchattacks' ``requests~=2.25.1`` is safe: no file of the installed
    package imports it (or mentions it at all)."""
    spec = importlib.util.find_spec("torchattacks")
    folders = [Path(p) for p in spec.submodule_search_locations]
    sources = [f for folder in folders for f in folder.rglob("*.py")]
    assert len(sources) > 20  # the package, not a stub
    users = [f for f in sources if re.search(r"\brequests\b", f.read_text(errors="replace"))]
    assert users == []


def test_the_install_script_installs_the_torchattacks_that_setup_cfg_pins():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requires = cfg["options"]["install_requires"].split()
    assert f"torchattacks=={install.TORCHATTACKS}" in requires
    assert install.TORCHATTACKS_WHEEL == f"torchattacks-{install.TORCHATTACKS}-py3-none-any.whl"


def _wheel(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


METADATA = (b"Metadata-Version: 2.1\nName: probe\nVersion: 1.0\nRequires-Dist: numpy (>=1.19)\n"
            b"Requires-Dist: requests (~=2.25.1)\nRequires-Dist: requests-toolbelt\n"
            b"Requires-Dist: Requests[socks] ; extra == 'x'\n\nRequires-Dist: requests in the text\n")


def test_rewritten_wheel_drops_only_the_requirement_and_keeps_the_code(tmp_path):
    code = b"import numpy\nVALUE = 3\n"
    src = tmp_path / "probe-1.0-py3-none-any.whl"
    _wheel(src, {"probe/__init__.py": code, "probe-1.0.dist-info/METADATA": METADATA,
                 "probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n",
                 "probe-1.0.dist-info/RECORD": b"stale\n"})
    (tmp_path / "out").mkdir()
    out = install.rewrite_wheel(src, tmp_path / "out", {"requests"}, "norequests")
    assert out.name == "probe-1.0+norequests-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        files = {n: z.read(n) for n in z.namelist()}
    info = "probe-1.0+norequests.dist-info"
    assert set(files) == {"probe/__init__.py", f"{info}/METADATA", f"{info}/WHEEL", f"{info}/RECORD"}
    assert files["probe/__init__.py"] == code
    meta = files[f"{info}/METADATA"].decode()
    assert "Version: 1.0+norequests\n" in meta
    assert "Requires-Dist: numpy (>=1.19)" in meta and "requests-toolbelt" in meta
    assert "requests (~=" not in meta and "Requests[socks]" not in meta
    assert meta.endswith("\n\nRequires-Dist: requests in the text\n")  # the description stays
    record = files[f"{info}/RECORD"].decode().splitlines()
    assert f"{info}/RECORD,," in record
    for line in record:
        name, digest, size = line.rsplit(",", 2)
        if digest:
            want = base64.urlsafe_b64encode(hashlib.sha256(files[name]).digest()).rstrip(b"=")
            assert digest == "sha256=" + want.decode() and int(size) == len(files[name])
    # a local label still satisfies the exact pin of setup.cfg
    from packaging.specifiers import SpecifierSet

    assert Version("3.5.1+norequests") in SpecifierSet("==3.5.1")


@pytest.mark.parametrize("version,floor,ok", [
    ("2.32.4", "2.32.4", True), ("2.32.10", "2.32.4", True), ("2.32.3", "2.32.4", False),
    ("2.6", "2.6.0", True), ("26.3", "25.3", True), ("2024.7.4", "2024.7.4", True),
    ("2026.10.19.post1", "2024.7.4", True), ("2.25.1", "2.32.4", False),
    ("3.5.1+norequests", "3.5.1", True), ("1!0.1", "3.0", True), ("2.32.4rc1", "2.32.4", False),
    ("2.32.5.dev0", "2.32.4", True), ("2.6.0b1", "2.5.0", True)])
def test_the_scripts_version_comparison_agrees_with_packaging(version, floor, ok):
    assert install._at_least(version, floor) is ok
    assert (Version(version) >= Version(floor)) is ok


def test_advisories_file_is_a_valid_constraints_file():
    from packaging.requirements import Requirement

    for raw in (REPO / "constraints" / "advisories.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert [s.operator for s in req.specifier] == [">="], line
