"""The layout the architecture note (docs/architecture.md) promises: stages import only downward,
no import cycles, variants see only the plugin contract and the cost helpers, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# harness stages, lowest first: a module may import its own stage and the ones before it.
STAGES = ("common", "plugins", "measure", "inputs", "config", "results", "regress", "kinds", "execute", "cli")
MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports (top level and inside functions), as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _project_graph() -> dict[str, set[str]]:
    files = [p for d in ("harness", "attentions") for p in (ROOT / d).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "harness" or len(parts) < 2:
        return None
    return STAGES.index(parts[1]) if parts[1] in STAGES else None


def test_every_harness_module_belongs_to_a_stage() -> None:
    strays = [m for m in _project_graph() if m.startswith("harness.") and _stage(m) is None]
    assert not strays, f"modules outside the stage packages {STAGES}: {strays}"


def test_stages_import_only_downward() -> None:
    upward = []
    for module, deps in _project_graph().items():
        own = _stage(module)
        if own is None:
            continue
        upward += [f"{module} -> {dep}" for dep in deps if (s := _stage(dep)) is not None and s > own]
    assert not upward, "imports against the stage order:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = _project_graph()
    # a package's __init__ is imported by its submodules implicitly; only explicit edges count
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_variants_import_only_the_contract_and_cost_helpers() -> None:
    allowed = ("harness.plugins", "harness.measure.costs")
    bad = []
    for module, deps in _project_graph().items():
        if module.startswith("attentions."):
            bad += [f"{module} -> {d}" for d in deps if d.startswith("harness") and not d.startswith(allowed)]
    assert not bad, "\n".join(sorted(bad))


def test_fast_paths_do_not_import_naive_references() -> None:
    """naive.py is the reference the tests compare against; a fast path sharing it hides its bugs."""
    bad = []
    for module, deps in _project_graph().items():
        if module.startswith("attentions.") and not module.endswith(".naive"):
            bad += [f"{module} -> {d}" for d in deps if d.endswith(".naive")]
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize("package", ["harness", "attentions"])
def test_modules_stay_small(package: str) -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"
