"""The quickstart as a new user runs it (issue 14, item 9): notebooks/01_quickstart.ipynb opened in
JupyterLab 4 and in Notebook 7 (issue 27; its saved outputs cleared, a folder of its own per front end), Run All, wait for the end; no console error, no error
output, and one figure per run: the dashboard's cell never shows two figures (sampled while its
runs train) and ends with the last run's final figure alone; the comparison cell shows its one.
Issue 27: nothing scrolls sideways at 1280 px after Run All (the dashboard, its Runs tab and its table
included), and the notebook saved and reopened with a fresh kernel (widget state saved, as ./dev lab
does) shows the dashboard's last state: no "model not found", no console error.
Screenshots go to test-artifacts/browser/ (named after the test, its front end included)."""

from __future__ import annotations

import nbformat
import pytest

from .browser_harness import REPO_ROOT
from .figures import dashboard_cell_shot, wait_static_final, watch_figures
from .test_choices_browser import _OVERFLOW_JS

pytestmark = pytest.mark.browser

QUICKSTART = REPO_ROOT / "notebooks" / "01_quickstart.ipynb"


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_quickstart_runs_all_with_one_figure_per_run(jupyter_root, open_notebook, frontend):
    nb_file = nbformat.read(str(QUICKSTART), as_version=4)
    for cell in nb_file.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb_file.metadata.pop("widgets", None)
    # its own folder per front end: its .retrain_runs/ holds only its runs
    folder = jupyter_root / f"walkthrough-{frontend}"
    folder.mkdir(exist_ok=True)
    nbformat.write(nb_file, str(folder / QUICKSTART.name))
    path = f"{folder.name}/{QUICKSTART.name}"

    nb = open_notebook(path, frontend)
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=120)
    texts = lambda: " ".join(nb.output_texts())  # noqa: E731
    watch_figures(nb, lambda: "What we measured" in texts(), timeout=300)
    nb.wait_all_cells_done(timeout=60)
    wait_static_final(nb)
    dashboard_cell_shot(nb, "dashboard")

    assert nb.page.locator("[data-mime-type='application/vnd.jupyter.error']").count() == 0
    # every output's text, on screen or not: JupyterLab skips rendering cells outside the viewport
    # (windowingMode contentVisibility), and what the page shows depends on where Run All scrolled it
    done = " ".join(nb.page.locator(".jp-OutputArea-output").all_text_contents())
    for loss in ("bce", "focal"):  # the what-if: both losses, three seeds each, every run to its end
        assert all(f"{loss}, seed {seed}: finished after" in done for seed in (0, 1, 2)), done
    comparison = nb.page.locator(".jp-Cell", has=nb.page.locator(".jp-RenderedHTMLCommon[data-mime-type='text/html'] table"))
    assert comparison.locator(".jp-RenderedImage img").count() == 1
    nb.page.set_viewport_size({"width": 1280, "height": 3000})
    nb.screenshot("end")
    nb.assert_no_console_errors()

    # issue 27: nothing wider than the window at 1280 px, the Runs tab's table of all 7 runs included
    nb.page.set_viewport_size({"width": 1280, "height": 900})
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    _assert_fits(nb, "dashboard after Run All")
    nb.page.locator(".rw-tabs .lm-TabBar-tab", has_text="Runs").first.click()
    nb.page.locator(".rw-studio table").first.wait_for(timeout=15_000)
    _assert_fits(nb, "Runs tab after Run All")
    nb.screenshot("runs-tab-1280")

    # issue 27: saved (widget state with it), reopened with a fresh kernel: the dashboard's last state
    nb.save()  # Ctrl+S; in JupyterLab its tab's dirty marker gone too
    saved = nbformat.read(str(folder / QUICKSTART.name), as_version=4)
    assert saved.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state")
    again = open_notebook(path, frontend)  # the old kernel is shut down first
    again.page.locator(".rw-studio").first.wait_for(timeout=60_000)
    again.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    again.page.wait_for_timeout(2000)
    assert "model not found" not in again.page.locator(".jp-Notebook").inner_text()
    again.screenshot("reopened-saved-state")
    again.assert_no_console_errors()


def _assert_fits(nb, where: str) -> None:
    nb.page.wait_for_timeout(300)  # the layout settles
    found = nb.page.evaluate(_OVERFLOW_JS)
    assert not found["wide"] and not found["beyond"] and not found["cut"], (where, found)
