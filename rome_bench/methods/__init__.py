"""Distillation methods: the contract every method follows (:mod:`.contract`), their discovery
(:mod:`.discovery`), ROME (:mod:`.rome`), and the machinery the methods share (gradient and
distribution matching, the network queue, factorized images, expert trajectories, ZCA)."""

from rome_bench.methods.contract import (
    METHODS,
    MethodConfig,
    not_implemented_method,
    register_method,
    resolve_budget,
)

__all__ = ["METHODS", "MethodConfig", "not_implemented_method", "register_method", "resolve_budget"]
