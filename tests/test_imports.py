"""No import cycles inside randsae.

The graph is read from the source with ``ast``, not from ``sys.modules``: a cycle hidden behind
a function-level import (one that only bites when that function runs first) counts as much as a
module-level one, because it still ties the two modules into one unit that cannot be read, tested
or replaced alone. ``if TYPE_CHECKING:`` imports are left out: they never run.

Edges go from a module to the module it names. ``from randsae.a import b`` is an edge to
``randsae.a.b`` when ``b`` is a submodule, else to ``randsae.a``. A package's ``__init__`` is not
implied by importing one of its submodules: Python initialises it first, but that only orders
initialisation; it is not a dependency of the importing module on the package's other modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Where each top-level package lives (randsae.kernels is kernels/ beside the package, see
#: pyproject.toml's package-dir).
ROOTS = {"randsae": REPO / "src" / "randsae", "randsae.kernels": REPO / "kernels"}


def discover_modules(roots: dict[str, Path] = ROOTS) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under each root."""
    modules: dict[str, Path] = {}
    for prefix, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([prefix, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions, methods, try blocks), except those
    under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _import_nodes(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve_base(module, path, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    graph[module].add(owner)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), each
    written as a closed path so the message shows which import closes it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in components:
        if len(comp) < 2:
            continue
        start = min(comp)
        # shortest path back to start inside the component (BFS)
        parents: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w == start:
                        found = v
                        break
                    if w not in parents:
                        parents[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = parents.get(v)
        cycles.append([*path, start])
    return sorted(cycles)


def test_the_graph_sees_real_edges():
    """Guards the test itself: an import graph that finds nothing would pass vacuously."""
    graph = import_graph(discover_modules())
    assert "randsae.autointerp.types" in graph["randsae.autointerp.prompts"]
    # function-level import (local_client loads the model sources lazily)
    assert "randsae.models.sources" in graph["randsae.autointerp.local_client"]
    # the kernels package resolves to kernels/
    assert any(m.startswith("randsae.kernels.") for m in discover_modules())


def test_find_cycles_reports_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_resolves_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "sub" / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n"
                              "from pkg.sub import a\n")
    graph = import_graph(discover_modules({"pkg": pkg}))
    assert graph["pkg.sub"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.sub.a"}
    assert graph["pkg.sub.a"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.sub.a"}  # the TYPE_CHECKING import is left out
    assert find_cycles(graph) == [["pkg.c", "pkg.sub.a", "pkg.c"]]


def test_no_import_cycles_in_randsae():
    cycles = find_cycles(import_graph(discover_modules()))
    if cycles:
        pytest.fail("import cycles in randsae (one shortest cycle per group of mutually importing modules):\n"
                    + "\n".join("  " + " -> ".join(c) for c in cycles))
