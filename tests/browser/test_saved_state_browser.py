"""A notebook with a dashboard, saved and reopened with a fresh kernel (issue 27, item 7), in JupyterLab 4
and Notebook 7: the widget state is saved with it (as ``./dev lab`` sets it up), so the reopened notebook
shows the dashboard's last state (its tabs, its status line, the run's final figure alone) instead of
"Error displaying widget: model not found", and the console has no error. Screenshots in test-artifacts/browser/."""

from __future__ import annotations

import time

import nbformat
import pytest

from .figures import figures_on_screen, wait_static_final

pytestmark = pytest.mark.browser

CELLS = [
    """\
import torch
torch.set_num_threads(1)
from retrain_widgets import RetrainStudio, examples

task = examples.task("is_seven")
studio = RetrainStudio(examples.pretrained_digits_cnn(), task.train, task.val, task.old_val, config=task.config,
                       store=False)
studio""",
]


def _widget_state(path) -> dict:
    meta = nbformat.read(str(path), as_version=4).metadata
    return meta.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_a_saved_dashboard_reopens_without_a_broken_widget(notebook_file, open_notebook, jupyter_root, frontend):
    name = notebook_file(CELLS)
    nb = open_notebook(name, frontend)
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_all_cells_done(timeout=60)
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"^finished after 92 steps", timeout=120)
    wait_static_final(nb)  # the final figure replaced the live plot: what the saved notebook must show
    nb.page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})  # focus the notebook, not a widget
    deadline = time.monotonic() + 30
    while not _widget_state(jupyter_root / name) and time.monotonic() < deadline:
        nb.page.keyboard.press("Control+s")
        time.sleep(1.0)
    assert _widget_state(jupyter_root / name), "the widget state was not saved with the notebook"

    again = open_notebook(name, frontend)  # the old kernel is shut down first: the state comes from the file
    again.page.locator(".rw-studio").first.wait_for(timeout=60_000)
    again.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    again.page.wait_for_timeout(2000)
    text = again.page.locator(".jp-Notebook").first.inner_text()
    assert "model not found" not in text and "finished after 92 steps" in text
    assert figures_on_screen(again) == (0, 1)  # the run's final figure alone, the live plot hidden as it was
    again.screenshot("reopened")
    again.assert_no_console_errors()
