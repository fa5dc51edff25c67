"""Placeholders for methods other issues deliver.

Each raises a NotImplementedError naming its issue and is excluded from ``--method all``; a
real ``@register_method`` with the same name replaces it.
"""

from rome_bench.methods.contract import not_implemented_method

not_implemented_method("dc", 4, "DC, gradient matching")
not_implemented_method("dsa", 4, "DSA, gradient matching with siamese augmentation")
not_implemented_method("dm", 4, "DM, distribution matching")
not_implemented_method("idm", 4, "IDM, improved distribution matching")
not_implemented_method("bacon", 4, "BACON, Bayesian optimal condensation")
not_implemented_method("mtt", 5, "MTT, matching training trajectories")
not_implemented_method("datm", 5, "DATM, difficulty-aligned trajectory matching")
not_implemented_method("rome", 7, "ROME, robust distillation via the information bottleneck")
not_implemented_method("rome-compat", 7, "ROME with the reference code's normalized-PGD quirk")
