"""No import circle anywhere in tmafbench/, lazy imports included (docs/design.md section 1).

Every `import` and `from ... import` of a module counts, wherever it is written (module level, inside
a function, under TYPE_CHECKING), so a circle cannot hide behind a lazy import. An edge goes to the
module named: `from tmafbench.study import plan` is an edge to tmafbench.study.plan, `from
tmafbench.core import Ending` one to tmafbench.core. The package `__init__` a module sits in is not
an edge of its own (Python runs it first, whoever imports what).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tmafbench"

# Circles another change removes; each entry must still be a circle (delete it once it is not).
KNOWN: set[frozenset[str]] = {
    frozenset({"tmafbench.reports.render", "tmafbench.reports.tuning"}),  # `Section`: engineer R's part of issue 22
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, anywhere in its source."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                while target and target not in known:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_finder_sees_lazy_and_relative_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [frozenset({"a", "b", "c"})]
    built = import_graph()
    assert "tmafbench.core" in built["tmafbench.study.plan"]  # a module-level import
    assert "tmafbench.training.packed" in built["tmafbench.training.dispatch"]  # a lazy one, inside a function


def test_no_import_circle_in_the_package():
    found = set(circles(import_graph()))
    assert found - KNOWN == set(), "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in found - KNOWN)
    assert KNOWN - found == set(), f"no longer circles, delete them from KNOWN: {KNOWN - found}"
