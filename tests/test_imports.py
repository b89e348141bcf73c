"""Imports run one way: the package's import graph (late, in-function imports included;
``if TYPE_CHECKING:`` imports aside) has no circle, and the telemetry imports no engine."""

from __future__ import annotations

import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "retrain_widgets"


def _module_name(path: pathlib.Path, package: pathlib.Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside |= {id(n) for n in ast.walk(stmt)}
    return inside


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports, at module level or in a function."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_blocks(tree)
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        out: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    stem = base[:len(base) - (node.level - 1)]
                    mod = ".".join(stem + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # ``from pkg import mod`` imports the module; ``from mod import name`` the module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                # the longest prefix that is one of the package's modules
                parts = t.split(".")
                for k in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:k])
                    if candidate in modules and candidate != name:
                        out.add(candidate)
                        break
        graph[name] = out
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle_late_imports_included():
    graph = import_graph()
    assert "retrain_widgets.core.engine" in graph and graph["retrain_widgets.core.engine"]
    assert circles(graph) == []


def test_the_circle_finder_finds_a_late_import_circle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_telemetry_store_and_comparisons_import_no_engine():
    graph = import_graph()
    engine = "retrain_widgets.core.engine"
    for module in ("core.telemetry", "core.run", "core.store", "core.store.store", "core.store.recorder",
                   "core.comparison", "core.alignment", "core.feature_cache", "core.lr_finder", "core.validation"):
        assert engine not in _reaches(graph, f"retrain_widgets.{module}"), module
