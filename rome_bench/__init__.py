"""rome-bench: the adversarial-robustness benchmark for distilled datasets.

Public API::

    from rome_bench import register_method, DistilledSet

    @register_method("mybase", description="one line shown by `rome-bench list methods`")
    def mybase(train, ipc, cfg):
        ...
        return DistilledSet(images=..., labels=...)
"""

import os

# OpenMP threads that spin while waiting slow every CPU job ~3x on a busy 2-core machine
# (measured on DM's quick distillation); users can still override this before importing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rome_bench.core.registry import Registry, RomeBenchError  # noqa: E402
from rome_bench.core.version import __version__  # noqa: E402
from rome_bench.data.distilled import DistilledSet  # noqa: E402
from rome_bench.methods.contract import METHODS, MethodConfig, register_method  # noqa: E402

__all__ = ["DistilledSet", "METHODS", "MethodConfig", "Registry", "RomeBenchError",
           "__version__", "register_method"]
