"""The layout the architecture note (docs/architecture.md) promises: stages import only downward,
no import cycles, variants see only the plugin contract and the cost helpers, small modules, every
module named in the note, the core naming no benchmark kind, no side effects at import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# harness stages, lowest first: a module may import its own stage and the ones before it.
STAGES = ("common", "plugins", "measure", "inputs", "config", "results", "regress", "kinds", "execute", "cli")
SOFT_MAX_LINES = 500  # a soft cap: a longer module needs a reason in LONG_MODULES
LONG_MODULES: dict[str, str] = {}  # "path": why it is one module
KIND_NAMES = ("mqar", "e2e")  # built-in kinds other than kernel: the core never names them


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
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > SOFT_MAX_LINES
        and str(p.relative_to(ROOT)) not in LONG_MODULES
    }
    assert not big, f"modules over {SOFT_MAX_LINES} lines (split them, or say why in LONG_MODULES): {big}"


def test_every_module_is_in_the_architecture_note() -> None:
    """docs/architecture.md names every module of harness/ (by file name within its package)."""
    note = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in sorted((ROOT / "harness").rglob("*.py")):
        rel = path.relative_to(ROOT / "harness")
        if path.name == "__init__.py" and path.stat().st_size == 0:
            continue
        if f"`{path.name}`" not in note and f"`{rel.as_posix()}`" not in note and path.name != "__init__.py":
            missing.append(rel.as_posix())
    assert not missing, f"modules docs/architecture.md does not mention: {missing}"


def test_core_names_no_kind() -> None:
    """Outside harness/kinds/ no module names a built-in kind other than kernel (code or text)."""
    found = []
    for path in (ROOT / "harness").rglob("*.py"):
        if "kinds" in path.relative_to(ROOT / "harness").parts:
            continue
        text = path.read_text(encoding="utf-8").lower()
        found += [f"{path.relative_to(ROOT)}: {k}" for k in KIND_NAMES if k in text]
    assert not found, "kind-specific names in the core:\n" + "\n".join(found)


def test_no_side_effects_at_import() -> None:
    """No module switches matplotlib's backend or registers an atexit hook when imported."""
    bad = []
    for path in (ROOT / "harness").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: inside a function it runs when asked
            text = ast.unparse(node)
            if "matplotlib.use(" in text or "atexit.register" in text:
                bad.append(f"{path.relative_to(ROOT)}: {text.splitlines()[0]}")
    assert not bad, "\n".join(bad)
