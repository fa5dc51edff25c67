"""Finding the built-in methods: every module of ``baselines/`` and ROME's own modules.

The method registry (``rome_bench.core.catalog.METHODS``) runs :func:`load_builtin_methods`
before its first lookup, so that ``rome-bench list methods`` and ``--method all`` see every
baseline without anyone importing it by hand. ``baselines/`` is installed as the subpackage
``rome_bench.baselines``; a new method is one more file there.
"""

from __future__ import annotations

import importlib
import pkgutil

# the methods that are part of the package itself rather than baselines
BUILTIN_MODULES = ("rome_bench.methods.file", "rome_bench.methods.planned", "rome_bench.methods.rome")
PLUGIN_PACKAGE = "rome_bench.baselines"


def load_builtin_methods() -> None:
    """Import every public module of ``baselines/`` (in name order) and the built-in modules."""
    try:
        package = importlib.import_module(PLUGIN_PACKAGE)
    except ModuleNotFoundError:
        package = None  # a stripped-down install without baselines
    if package is not None:
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{PLUGIN_PACKAGE}.{info.name}")
    for name in BUILTIN_MODULES:
        importlib.import_module(name)
