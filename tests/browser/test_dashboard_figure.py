"""The README's picture of the dashboard: a short run trained to the end in JupyterLab.

Checks that a run started from the dashboard finishes with its plots drawn, and screenshots the
whole dashboard into test-artifacts/browser/. With ``RW_UPDATE_FIGURES=1`` the screenshot also
becomes ``docs/figures/dashboard.png`` (the README's first picture)::

    RW_UPDATE_FIGURES=1 PYTHONPATH=$PWD .venv/bin/python -m pytest tests/browser/test_dashboard_figure.py
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from .browser_harness import REPO_ROOT
from .figures import dashboard_cell_shot, wait_static_final

pytestmark = pytest.mark.browser

FIGURE = REPO_ROOT / "docs" / "figures" / "dashboard.png"
UPDATE = os.environ.get("RW_UPDATE_FIGURES") == "1"

# The README's picture shows 30 epochs (enough alignment samples to read); the checks below hold for any run trained to its end, so a
# plain test run trains 2.
CELLS = [
    f"""\
import torch
torch.set_num_threads(1)
from retrain_widgets import RetrainStudio, RunConfig, examples

model = examples.pretrained_digits_cnn()
task = examples.task("is_seven")
config = RunConfig(loss="focal", head_out=1, frozen=["features.0", "features.1"], lr=3e-3, schedule="cosine",
                   epochs={30 if UPDATE else 2})
studio = RetrainStudio(model, task.train, task.val, task.old_val, config=config, store=False)
studio""",
]


def test_dashboard_of_a_finished_run(notebook_file, open_notebook):
    nb = open_notebook(notebook_file(CELLS), "lab")
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_image_loaded("rw-plot")
    nb.wait_all_cells_done(timeout=60)
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"finished", timeout=300)
    assert nb.progress_percent("rw-progress") == 100
    nb.page.set_viewport_size({"width": 1280, "height": 2000})  # the whole dashboard in one picture
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    time.sleep(2.0 if UPDATE else 0.3)  # the layout settles before the picture
    width, height = nb.wait_image_loaded("rw-plot")
    assert width > 600 and height > 300, (width, height)
    wait_static_final(nb)  # the run's final figure replaced the live plot
    shot = dashboard_cell_shot(nb, "dashboard")  # the dashboard and its final figure below it
    nb.assert_no_console_errors()
    if UPDATE:
        shutil.copyfile(shot, FIGURE)
