"""Execute the tutorial notebooks in place and export their main figures for the README.

Each notebook in ``notebooks/`` is run top to bottom with nbclient (widget state stored, so a
saved notebook shows its dashboards), written back with its outputs, and the first image output
of the cell tagged ``main-figure`` is saved as ``docs/figures/<notebook>.png``.

Run: ``.venv/bin/python scripts/execute_notebooks.py [NAME ...]`` (all notebooks by default).
The test suite runs the same notebooks under ``pytest --nbval-lax``; cells marked
``# NBVAL_CHECK_OUTPUT`` must then reproduce the outputs saved here exactly.
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIGURES = ROOT / "docs" / "figures"


def execute(path: Path) -> float:
    nb = nbformat.read(str(path), as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - t0
    nbformat.write(nb, str(path))
    for cell in nb.cells:
        if "main-figure" in cell.get("metadata", {}).get("tags", []):
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "image/png" in data:
                    FIGURES.mkdir(parents=True, exist_ok=True)
                    (FIGURES / f"{path.stem}.png").write_bytes(base64.b64decode(data["image/png"]))
                    break
    return elapsed


def main(names: list[str]) -> None:
    paths = [NOTEBOOKS / (n if n.endswith(".ipynb") else f"{n}.ipynb") for n in names] if names else sorted(
        NOTEBOOKS.glob("[0-9]*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
