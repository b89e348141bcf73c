"""The core stays pure PyTorch: no widget, plotting or notebook import, directly or indirectly."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

CORE = pathlib.Path(__file__).resolve().parents[1] / "retrain_widgets" / "core"
ALLOWED = {"torch", "numpy"}
OPTIONAL_IN_FUNCTIONS = {"pandas", "peft"}  # History.to_dataframe(), LoRA adapters (core/lora.py): only when called
FORBIDDEN = {"ipywidgets", "matplotlib", "IPython", "PIL", "traitlets"}


def _imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions)."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    inner: set[str] = set()

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {a.name.split(".")[0] for a in node.names}
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            return {node.module.split(".")[0]}
        return set()

    for node in tree.body:
        top |= names(node)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                inner |= names(sub)
    return top, inner


def test_core_files_import_only_torch_numpy_and_stdlib():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = {}
    for path in CORE.rglob("*.py"):
        top, inner = _imports(path)
        extra = {m for m in top if m not in stdlib and m not in ALLOWED}
        extra |= {m for m in inner if m not in stdlib and m not in ALLOWED | OPTIONAL_IN_FUNCTIONS}
        extra |= (top | inner) & FORBIDDEN
        if extra:
            bad[path.name] = sorted(extra)
    assert not bad, f"core modules import {bad}"


def test_importing_the_package_pulls_no_widgets_or_matplotlib():
    code = (
        "import sys, retrain_widgets, retrain_widgets.core, retrain_widgets.core.engine;"
        "bad=[m for m in ('ipywidgets','matplotlib','IPython') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
