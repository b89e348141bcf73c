"""The recipe's source, for the exported script: the definitions a piece of code uses, with
everything they use in turn, read from the recipe modules with :func:`inspect.getsource`."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from types import ModuleType

from .recipe import evaluation, freezing, losses, schedules, training

__all__ = ["RECIPE_MODULES", "definitions", "free_names", "needed", "sections"]

#: The recipe modules, each after the ones it uses.
RECIPE_MODULES: tuple[ModuleType, ...] = (freezing, losses, schedules, training, evaluation)


def free_names(source: str) -> set[str]:
    """Names ``source`` reads without binding them itself (its globals)."""
    tree = ast.parse(textwrap.dedent(source))
    loads: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return loads - bound


def _with_decorators(text: str, node: ast.FunctionDef | ast.ClassDef) -> str:
    lines = text.splitlines(keepends=True)
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return "".join(lines[first - 1:node.end_lineno])


@functools.cache
def definitions() -> dict[str, tuple[ModuleType, str, frozenset[str]]]:
    """Every module-level function, class and constant of the recipe, in module order:
    name -> (module, source, the recipe names it uses)."""
    out: dict[str, tuple[ModuleType, str, frozenset[str]]] = {}
    for module in RECIPE_MODULES:
        text = inspect.getsource(module)
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                # from the module's text, not the module's attribute: one replaced at run time (a
                # test's spy) must not become the script's source
                name, source = node.name, _with_decorators(text, node)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                name, source = node.targets[0].id, ast.get_source_segment(text, node) or ""
            else:
                continue
            out[name] = (module, source.strip("\n"), frozenset())
    names = set(out)
    return {name: (module, source, frozenset((free_names(source) & names) - {name}))
            for name, (module, source, _) in out.items()}


def needed(code: str) -> list[str]:
    """The recipe definitions ``code`` uses, directly or through others, in module order."""
    defs = definitions()
    todo = list(free_names(code) & set(defs))
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo.extend(defs[name][2])
    return [name for name in defs if name in found]


def sections(code: str) -> list[tuple[ModuleType, list[str]]]:
    """:func:`needed` grouped by module: ``[(module, [source, ...]), ...]``."""
    defs = definitions()
    out: dict[ModuleType, list[str]] = {}
    for name in needed(code):
        module, source, _ = defs[name]
        out.setdefault(module, []).append(source)
    return list(out.items())
