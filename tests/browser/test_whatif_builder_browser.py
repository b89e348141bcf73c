"""The what-if builder of the Runs tab (issue 14, item 6) in JupyterLab 4 and Notebook 7: after one
run has measured the speed, tick "loss", pick two losses, see "2 runs" and a time estimate, run
them and see both in the runs list. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import re

import pytest

from .figures import studio_cells

pytestmark = pytest.mark.browser

CELLS = studio_cells(epochs=2)


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_whatif_builder(notebook_file, open_notebook, frontend):
    nb = open_notebook(notebook_file(CELLS), frontend)
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_all_cells_done(timeout=60)
    nb.click_widget("rw-start")  # one run measures the studio's speed
    nb.wait_widget_text("rw-status", r"finished", timeout=60)

    nb.page.locator(".rw-tabs .lm-TabBar-tab", has_text=re.compile(r"^\s*Runs\s*$")).first.click()
    nb.wait_widget_text("rw-whatif-summary", r"tick at least one field", timeout=5)
    nb.page.locator(".rw-whatif-vary-loss input[type=checkbox]").check()
    nb.wait_widget_text("rw-whatif-summary", r"^1 run × \d+ steps each: about", timeout=5)
    nb.page.locator(".rw-whatif-values-loss select").select_option(["bce", "focal"])
    nb.wait_widget_text("rw-whatif-summary", r"^2 runs × \d+ steps each: about (\d+\.\d s|\d+ s|\d+ min) in all, at [\d.]+ ms a step",
                        timeout=5)
    nb.wait_widget_text("rw-whatif-build-run", r"^Run 2 what-ifs$", timeout=5)
    nb.page.locator(".rw-whatif-vary-lr input[type=checkbox]").check()
    nb.page.locator(".rw-whatif-values-lr input").fill("1e-3, fast")
    nb.page.locator(".rw-whatif-values-lr input").press("Enter")
    nb.wait_widget_text("rw-whatif-summary", r"LR: 'fast' is not a value; write numbers", timeout=5)
    assert nb.widget("rw-whatif-build-run").is_disabled()
    nb.page.locator(".rw-whatif-vary-lr input[type=checkbox]").uncheck()
    nb.wait_widget_text("rw-whatif-build-run", r"^Run 2 what-ifs$", timeout=5)
    nb.screenshot("builder", css_class="rw-whatif-builder")

    nb.click_widget("rw-whatif-build-run")
    nb.wait_widget_text("rw-runs-message", r"done: 2 of 2", timeout=120)
    options = nb.page.locator(".rw-runs-select option").all_inner_texts()
    shown = {o.replace("\xa0", " ") for o in options}  # the list pads with no-break spaces
    # the first run, then the two what-ifs, numbered on and named by the loss they vary
    assert len(options) == 3 and {"#2 bce · finished", "#3 focal · finished"} <= shown, options
    nb.page.set_viewport_size({"width": 1280, "height": 2000})
    nb.page.locator(".rw-runs").first.scroll_into_view_if_needed()
    nb.screenshot("runs-tab", css_class="rw-runs")
    nb.assert_no_console_errors()
