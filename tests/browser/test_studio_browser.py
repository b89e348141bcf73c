"""RetrainStudio in a real browser: JupyterLab 4 and Notebook 7 in headless Chromium.

Ticks a layer to freeze, picks focal loss (and replaces the head the check asks for), picks the
cosine schedule and sees its LR preview, starts, sees the plots change and the progress advance,
stops and sees training stop within 2 s; screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.browser

CELLS = [
    """\
import torch
torch.set_num_threads(1)
from retrain_widgets import RetrainStudio, RunConfig, examples

model = examples.pretrained_digits_cnn()
task = examples.task("is_seven")
studio = RetrainStudio(model, task.train, task.val, task.old_val, config=RunConfig(epochs=200), store=False)
studio""",
]


def _img_src(nb, css_class: str) -> str:
    return nb.page.locator(f".{css_class} img, img.{css_class}").first.get_attribute("src") or ""


def _wait_src_change(nb, css_class: str, before: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _img_src(nb, css_class)
        if now and now != before:
            return now
        time.sleep(0.1)
    pytest.fail(f"the image .{css_class} did not change within {timeout} s")


def _tab(nb, title: str) -> None:
    nb.page.locator(".rw-tabs .lm-TabBar-tab", has_text=re.compile(rf"^\s*{title}\s*$")).first.click()


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_studio_freeze_loss_schedule_start_stop(notebook_file, open_notebook, frontend):
    nb = open_notebook(notebook_file(CELLS), frontend)
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_image_loaded("rw-plot")
    nb.wait_all_cells_done(timeout=60)

    # Layers: tick "features" to freeze it
    totals_before = nb.widget_text("rw-tree-totals")
    nb.page.locator(".rw-node-features input[type=checkbox]").check()
    nb.wait_widget_text("rw-tree-totals", r"frozen \((?!0 %)\d+ %\)", timeout=5)
    assert nb.widget_text("rw-tree-totals") != totals_before
    nb.screenshot("layers-frozen")

    # Loss: focal on a 10-logit head is refused with the fix; Replace head applies it
    _tab(nb, "Loss")
    nb.page.locator(".rw-loss select").select_option("focal")
    nb.wait_widget_text("rw-loss-check", r"✗.*10 logits.*1", timeout=5)
    nb.screenshot("loss-mismatch")
    nb.click_widget("rw-replace-head")
    nb.wait_widget_text("rw-loss-check", r"✓ 'focal' fits", timeout=5)

    # Schedule: cosine, and its LR preview redraws before anything trains
    _tab(nb, "Schedule")
    preview = _img_src(nb, "rw-lr-preview")
    nb.page.locator(".rw-schedule select").select_option("cosine")
    _wait_src_change(nb, "rw-lr-preview", preview)
    nb.wait_image_loaded("rw-lr-preview")
    nb.screenshot("schedule-preview")

    # Start: the progress advances and the plots change
    plot = _img_src(nb, "rw-plot")
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"running", timeout=10)
    first = _wait_src_change(nb, "rw-plot", plot, timeout=15)
    _wait_src_change(nb, "rw-plot", first, timeout=15)
    p1 = nb.progress_percent("rw-progress")
    deadline = time.monotonic() + 1.0  # the bar advances within 1 s (read as soon as it moved)
    while (p2 := nb.progress_percent("rw-progress")) <= p1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < p1 < p2 < 100, (p1, p2)
    nb.wait_widget_text("rw-progress-label", r"steps/s", timeout=5)
    nb.screenshot("training")
    _tab(nb, "Layers")
    nb.page.set_viewport_size({"width": 1280, "height": 2000})  # the whole dashboard in one picture
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    nb.wait_image_loaded("rw-plot")
    time.sleep(0.3)  # the layout settles before the picture
    nb.screenshot("dashboard", css_class="rw-studio")
    nb.page.set_viewport_size({"width": 1280, "height": 900})

    # Stop: training stops within 2 s of the click
    clicked = nb.click_widget("rw-stop")
    seen = nb.wait_widget_text("rw-status", r"stopped at step", timeout=2.0)
    assert seen - clicked < 2.0
    stopped = nb.progress_percent("rw-progress")
    time.sleep(0.5)
    assert nb.progress_percent("rw-progress") == stopped
    nb.wait_image_loaded("rw-plot")
    nb.screenshot("stopped")
    nb.assert_no_console_errors()
