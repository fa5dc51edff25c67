"""Install rome-bench into this Python environment without torchattacks' stale requests pin.

torchattacks 3.5.1, its last release, declares ``requests~=2.25.1`` although its code never
imports requests (tests/test_dependencies.py checks that on the installed copy). A plain
``pip install -e .`` honours the declaration and downgrades requests to 2.25.1 and urllib3 to
1.26, releases with published security advisories; pip has no option that overrides a
dependency's declared requirement, and installing torchattacks with ``--no-deps`` next to a
newer requests leaves an environment that ``pip check`` rejects. So this script:

1. downloads the torchattacks 3.5.1 wheel from the package index, checks it against the
   release's sha256, and rewrites only its metadata: the requests requirement is dropped and
   the version becomes ``3.5.1+norequests`` (a local label, which still satisfies
   ``torchattacks==3.5.1``); every file of the package itself is the released one;
2. installs that wheel, then rome-bench (editable, with the extras asked for) under the
   minimum versions of ``constraints/advisories.txt``;
3. upgrades whatever is still installed below those minimums (e.g. requests left behind by an
   earlier plain ``pip install``), then runs ``pip check`` and the minimum-version check.

It uses the standard library only and the pip of the Python that runs it::

    python3 -m venv .venv && .venv/bin/python scripts/install.py --extra test

docs/install.md explains the choice and the manual equivalent.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADVISORIES = REPO / "constraints" / "advisories.txt"

TORCHATTACKS = "3.5.1"
TORCHATTACKS_WHEEL = f"torchattacks-{TORCHATTACKS}-py3-none-any.whl"
# sha256 of the released wheel (as served by the index since 2023-10-21)
TORCHATTACKS_SHA256 = "10c1b05f3a0b52869a91dfa9f9d5adf613750276a15f41fdbd361127cc6bd703"
DROPPED = {"requests"}
LOCAL_LABEL = "norequests"


class InstallError(Exception):
    """A step that failed; its message is printed as one line."""


# -- the wheel ----------------------------------------------------------------------------
def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str:
    """The project name of a ``Requires-Dist:`` value (``requests (~=2.25.1)`` -> requests)."""
    return _normalize(re.split(r"[\s;(\[<>=!~]", line.strip(), maxsplit=1)[0])


def rewrite_metadata(text: str, version: str, drop: set[str]) -> str:
    """``METADATA`` with ``version`` and without the ``Requires-Dist`` entries naming ``drop``.

    Only the header (up to the first blank line) is touched; the description stays as it is.
    """
    header, sep, body = text.partition("\n\n")
    lines = []
    for line in header.split("\n"):
        key, _, value = line.partition(":")
        if key == "Version":
            line = f"Version: {version}"
        elif key == "Requires-Dist" and _requirement_name(value) in {_normalize(d) for d in drop}:
            continue
        lines.append(line)
    return "\n".join(lines) + sep + body


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def rewrite_wheel(src: Path, out_dir: Path, drop: set[str], local_label: str) -> Path:
    """A copy of wheel ``src`` in ``out_dir`` whose metadata no longer requires ``drop``.

    The version gets ``+local_label`` (file name and ``.dist-info`` folder follow it) and
    ``RECORD`` is rebuilt with the new hashes; all other files are copied byte for byte.
    """
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        metas = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(metas) != 1:
            raise InstallError(f"{src.name}: expected one .dist-info/METADATA, found {len(metas)}")
        old_info = metas[0].split("/")[0]
        name, version = old_info.removesuffix(".dist-info").rsplit("-", 1)
        new_version = f"{version}+{local_label}"
        new_info = f"{name}-{new_version}.dist-info"
        files: dict[str, bytes] = {}
        for n in names:
            if n.endswith("/"):
                continue
            data = zin.read(n)
            if n == f"{old_info}/RECORD":
                continue
            if n == f"{old_info}/METADATA":
                data = rewrite_metadata(data.decode("utf-8"), new_version, drop).encode("utf-8")
            if n.startswith(f"{old_info}/"):
                n = new_info + n[len(old_info):]
            files[n] = data
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files.items())
    files[f"{new_info}/RECORD"] = (record + f"{new_info}/RECORD,,\n").encode("utf-8")
    prefix = f"{name}-{version}-"
    if not src.name.startswith(prefix):
        raise InstallError(f"{src.name}: wheel name does not start with {prefix}")
    out = out_dir / f"{name}-{new_version}-{src.name[len(prefix):]}"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for n, data in files.items():
            zout.writestr(n, data)
    return out


# -- the minimum versions -----------------------------------------------------------------
def read_minimums(path: Path = ADVISORIES) -> dict[str, str]:
    """``name -> minimum version`` from a constraints file of ``name>=version`` lines."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.+!-]*)", line)
        if m is None:
            raise InstallError(f"{path}: expected 'name>=version', got {line!r}")
        out[_normalize(m[1])] = m[2]
    return out


def _release(version: str) -> tuple[int, tuple[int, ...], int]:
    """Epoch, numeric release and 0 for a pre-release (1 otherwise) of a version:
    ``2.32.4.post1`` -> (0, (2, 32, 4), 1), ``2.32.4rc1`` -> (0, (2, 32, 4), 0). Enough to
    compare against the plain floors of the advisories file without third-party packages."""
    m = re.match(r"(?:(\d+)!)?(\d+(?:\.\d+)*)([-_.]?(?:a|b|c|rc|alpha|beta|pre|preview|dev))?",
                 version.strip().lower())
    if m is None:
        return 0, (), 0
    return int(m[1] or 0), tuple(int(p) for p in m[2].split(".")), 0 if m[3] else 1


def _at_least(version: str, floor: str) -> bool:
    (e1, have, final1), (e2, want, final2) = _release(version), _release(floor)
    width = max(len(have), len(want))
    have, want = have + (0,) * (width - len(have)), want + (0,) * (width - len(want))
    return (e1, have, final1) >= (e2, want, final2)


def below_minimum(minimums: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Installed packages below their floor: ``name -> (installed, floor)``."""
    low = {}
    for dist in metadata.distributions():
        name = _normalize(dist.metadata["Name"] or "")
        if name in minimums and not _at_least(dist.version, minimums[name]):
            low[name] = (dist.version, minimums[name])
    return low


# -- the steps ----------------------------------------------------------------------------
def run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise InstallError(f"failed: {' '.join(cmd)}")


def torchattacks_wheel(tmp: Path, given: Path | None) -> Path:
    """The released wheel (downloaded unless ``given``), checked against its sha256."""
    if given is None:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--dest", str(tmp), f"torchattacks=={TORCHATTACKS}"])
        given = tmp / TORCHATTACKS_WHEEL
    if not given.is_file():
        raise InstallError(f"no wheel at {given}")
    sha = hashlib.sha256(given.read_bytes()).hexdigest()
    if sha != TORCHATTACKS_SHA256:
        raise InstallError(f"{given} has sha256 {sha}, not the released wheel's "
                           f"{TORCHATTACKS_SHA256}")
    return given


def install(extras: list[str], wheel: Path | None) -> None:
    pip = [sys.executable, "-m", "pip"]
    minimums = read_minimums()
    if "pip" in below_minimum(minimums):  # an older pip first, so the rest runs with the new one
        run(pip + ["install", "--upgrade", "-c", str(ADVISORIES), "pip"])
    with tempfile.TemporaryDirectory() as tmp:
        released = torchattacks_wheel(Path(tmp), wheel)
        fixed = rewrite_wheel(released, Path(tmp), DROPPED, LOCAL_LABEL)
        run(pip + ["install", "--no-deps", str(fixed)])
    target = f".[{','.join(extras)}]" if extras else "."
    run(pip + ["install", "-c", str(ADVISORIES), "-e", target])
    low = below_minimum(minimums)
    if low:  # left by an earlier install: nothing requires the old release any more
        run(pip + ["install", "-c", str(ADVISORIES)]
            + [f"{name}>={floor}" for name, (_, floor) in sorted(low.items())])
    run(pip + ["check"])
    low = below_minimum(minimums)
    if low:
        raise InstallError("still below the minimums of constraints/advisories.txt: "
                           + ", ".join(f"{n} {v} < {f}" for n, (v, f) in sorted(low.items())))
    print("rome-bench installed; pip check passed and no package is below "
          "constraints/advisories.txt", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", default=[],
                        help="an extra of setup.cfg to install as well (e.g. test); repeatable")
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"use this {TORCHATTACKS_WHEEL} instead of downloading it")
    args = parser.parse_args(argv)
    try:
        install(args.extra, args.wheel)
    except InstallError as exc:
        print(f"install.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
