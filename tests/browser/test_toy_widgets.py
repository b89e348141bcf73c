"""A toy notebook proves the browser harness: a thread drives widgets, a Stop button stops it."""

from __future__ import annotations

import time

import pytest

from .toy_notebooks import toy_cell, wait_progress_advances

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_thread_updates_widgets_and_stop_button_stops_it(notebook_file, open_notebook, frontend):
    nb = open_notebook(notebook_file([toy_cell()]), frontend)
    nb.run_all()
    nb.wait_widget("toy-stop")
    before, after = wait_progress_advances(nb)
    assert 0 < before < after < 100
    assert nb.widget_text("toy-label") == "running"
    nb.wait_all_cells_done()  # the cell returned at once; the thread goes on
    nb.screenshot("running")

    clicked = nb.click_widget("toy-stop")
    seen = nb.wait_widget_text("toy-label", r"^stopped at \d+ by click$", timeout=2.0)
    assert seen - clicked < 2.0
    stopped_at = nb.progress_percent("toy-progress")
    time.sleep(0.3)
    assert nb.progress_percent("toy-progress") == stopped_at  # the thread is gone
    nb.screenshot("stopped")
    nb.assert_no_console_errors()
