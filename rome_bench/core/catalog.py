"""The registries that several layers read: methods and attacks, and the attack-suite names.

They live in ``core`` so that reporting (which reads records and must not import the pipeline,
the methods or torchattacks) can still ask how a method is displayed and where its row goes,
or whether an attack has a targeted mode. The entries are registered by the layers that own
them (``rome_bench.methods``, ``rome_bench.attacks``); each registry imports its owner lazily,
by module name, on its first lookup.
"""

from __future__ import annotations

from typing import Any

from rome_bench.core.registry import Registry

# A method is ``fn(train, ipc, cfg) -> DistilledSet`` (see rome_bench.methods.contract); its
# entry's meta holds how it is run (budgets, retraining) and shown (display name, row order).
METHODS: Registry[Any] = Registry("method", entry_point_group="rome_bench.methods")
METHODS.add_loader("rome_bench.methods.discovery:load_builtin_methods")

# An attack is an ``AttackSpec`` (see rome_bench.attacks.suite).
ATTACKS: Registry[Any] = Registry("attack")
ATTACKS.add_loader("rome_bench.attacks.suite")

# The white-box suite of the ROME/BEARD protocol, in the paper's column order, and the PGD
# sweep behind the accuracy-vs-eps curves.
SUITE = ("FGSM", "PGD", "PGD-L2", "CW", "DeepFool", "AutoAttack")
SWEEP = tuple(f"PGD-eps{k}" for k in (2, 4, 6, 8, 10))

# Where a method without a declared row order goes: after the baselines, before ROME.
DEFAULT_ROW_ORDER = 500
