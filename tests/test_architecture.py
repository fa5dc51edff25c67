"""The package's shape, checked from its source (ast): dependencies point one way, no import
cycles (deferred imports included), and no module reaches into another's underscore names.

Layers (docs/design.md, "Architecture"): cli -> pipeline -> methods / attacks -> models / data
-> core; reporting depends on core only. ``baselines/`` is installed as ``rome_bench.baselines``
and belongs to the methods layer; baselines may use the public API (``from rome_bench import
...``), which is the plugin contract.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"rome_bench": REPO / "rome_bench", "rome_bench.baselines": REPO / "baselines"}

# what each layer may import (besides itself)
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "models": {"core", "data"},
    "methods": {"core", "data", "models", "api"},
    "attacks": {"core", "data", "models"},
    "reporting": {"core"},
    "pipeline": {"core", "data", "models", "methods", "attacks", "reporting"},
    "api": {"core", "data", "methods"},
    "cli": {"core", "data", "models", "methods", "attacks", "reporting", "pipeline"},
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for the package and the baselines folder."""
    out: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


MODULES = module_files()


def layer(module: str) -> str:
    if module == "rome_bench":
        return "api"
    if module.startswith("rome_bench.baselines"):
        return "methods"
    part = module.split(".")[1]
    return part if part in ALLOWED else "cli" if part == "cli" else part


def resolve(name: str) -> str | None:
    """The own module ``name`` refers to (the longest known prefix), or None if foreign."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> tuple[set[str], list[str]]:
    """Own modules ``module`` imports anywhere in its file, and the underscore names it takes
    from other own modules (``from m import _x`` or ``m._x`` on an imported module)."""
    tree = ast.parse(MODULES[module].read_text())
    deps: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = resolve(a.name)
                if target:
                    deps.add(target)
                    aliases[a.asname or a.name.split(".")[0]] = target
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                target = full if full in MODULES else resolve(node.module)
                if target is None:
                    continue
                deps.add(target)
                if target == full:
                    aliases[a.asname or a.name] = target
                elif a.name.startswith("_") and not a.name.startswith("__") and target != module:
                    private.append(f"{module} imports {a.name} from {target}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__") and aliases[node.value.id] != module):
            private.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
    deps.discard(module)
    return deps, private


GRAPH = {m: imports_of(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_the_whole_package():
    assert "rome_bench.core.registry" in MODULES and "rome_bench.baselines.dc" in MODULES
    deps, _ = GRAPH["rome_bench.pipeline.runner"]
    assert "rome_bench.pipeline.stages" in deps and "rome_bench.reporting.tables" in deps


def test_no_import_cycles_deferred_imports_included():
    cycle = find_cycle({m: deps for m, (deps, _) in GRAPH.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_cycle():  # the checker itself, on a graph with a known cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_uses_another_modules_underscore_names():
    found = [p for _, (_, private) in GRAPH.items() for p in private]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_dependencies_point_one_way(module):
    own = layer(module)
    deps, _ = GRAPH[module]
    wrong = sorted(d for d in deps if layer(d) != own and layer(d) not in ALLOWED[own])
    assert not wrong, f"{module} ({own}) imports {wrong}"
