"""Shared settings and helpers of the property-based tests (test_fuzz_*.py).

The fuzz tests must be deterministic in CI and fast on a loaded 2-core machine:

* ``derandomize=True`` makes Hypothesis derive its examples from each test's name, so every
  run tries the same inputs and a failure reproduces;
* ``database=None``, and Hypothesis' other caches sent to a temporary folder, keep it from
  writing ``.hypothesis/`` into the checkout (the suite must pass on a read-only one);
* ``deadline=None``: tests never fail on wall time; a loader that *hangs* is caught instead by
  :func:`no_hang`, whose limit is two orders of magnitude above the slowest example;
* a bounded ``max_examples`` per test (set with ``fuzz_settings(n)``).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import tempfile
from collections.abc import Iterator

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis caches constants it finds in the code under .hypothesis/ in the working directory
_HOME = tempfile.mkdtemp(prefix="rome-bench-hypothesis-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
set_hypothesis_home_dir(_HOME)

# examples per test: small loaders take a few ms per example, torch.load a few tens
DEFAULT_EXAMPLES = 40
HANG_SECONDS = 30


def fuzz_settings(max_examples: int = DEFAULT_EXAMPLES) -> settings:
    """The settings of every fuzz test: derandomized, no database, no deadline."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    """A loader that did not return within :data:`HANG_SECONDS`."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Raise :class:`Hang` (failing the example) if the block runs longer than ``seconds``."""

    def alarm(signum, frame):
        raise Hang(f"the loader did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def flip_bytes(data: bytes, positions: list[int], xor: int) -> bytes:
    """``data`` with the bytes at ``positions`` (taken modulo its length) XORed with ``xor``."""
    if not data:
        return data
    out = bytearray(data)
    for p in positions:
        out[p % len(out)] ^= xor or 0xFF
    return bytes(out)
