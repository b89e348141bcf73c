"""One figure per run (issue 14, item 3), in JupyterLab 4 and Notebook 7: while a run trains the
live plot is the only figure; when it ends its final figure replaces it as a static output; the
next run brings the live plot back and the static copy goes; the notebook saved from the browser
holds that one static figure. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import time

import nbformat
import pytest

from .figures import dashboard_cell_shot, figures_on_screen, studio_cells, wait_static_final, watch_figures

pytestmark = pytest.mark.browser

CELLS = studio_cells(epochs=15)


def _one_run(nb, shot: str) -> list[tuple[int, int]]:
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"running", timeout=10)
    samples = watch_figures(nb, lambda: "finished" in nb.widget_text("rw-status"), timeout=120)
    assert (1, 0) in samples, samples  # the live plot, alone, while it trained
    wait_static_final(nb)
    nb.screenshot(shot)
    return samples


def _saved_images(path) -> list[dict]:
    """The saved notebook's images ([] while the server is still writing the file: it can be empty then)."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except nbformat.reader.NotJSONError:
        return []
    return [o for o in nb.cells[0].outputs if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_one_figure_per_run(notebook_file, open_notebook, jupyter_root, frontend):
    name = notebook_file(CELLS)
    nb = open_notebook(name, frontend)
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_image_loaded("rw-plot")
    nb.wait_all_cells_done(timeout=60)
    assert figures_on_screen(nb) == (1, 0)

    _one_run(nb, "first-run-ended")
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    _one_run(nb, "second-run-ended")  # the first run's figure never sits under the live one
    dashboard_cell_shot(nb, "dashboard")

    before = (jupyter_root / name).stat().st_mtime
    nb.page.keyboard.press("Control+s")
    deadline = time.monotonic() + 15
    while (jupyter_root / name).stat().st_mtime == before or not _saved_images(jupyter_root / name):
        if time.monotonic() > deadline:
            pytest.fail("the notebook was not saved with its final figure within 15 s")
        time.sleep(0.2)
    assert len(_saved_images(jupyter_root / name)) == 1  # reopened without a kernel: the final figure
    nb.assert_no_console_errors()
