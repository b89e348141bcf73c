"""A teacher's first run, second pass (issue 27), clicked in JupyterLab 4 and Notebook 7 at 1280 px.

The loss the teacher picks does not fit ('ce' on the task's 1-logit head and float 0/1 targets): Start
is off and the status line says what is wrong (never "ready"); the fix the Loss tab offers ends in a
loss that fits ("Use 'bce'"), and Start comes back. Then the task's suggested run (features frozen
and cached, 92 steps) draws the alignment panel with data: at least 3 samples, the first where the
direction exists (step 1, not the zero head's step 0). Then a run to watch (every layer trains): its
live plot changes several times, Pause answers, and once its alignment probe has 3 samples Stop
ends it with the panel holding data too (a run long enough that no machine finishes it before Pause:
a 345-step one once did on a fast CI machine). Screenshots in test-artifacts/browser/.
"""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.browser

CELLS = [
    """\
import numpy as np
import torch
import ipywidgets as W
torch.set_num_threads(1)
from retrain_widgets import RetrainStudio, examples
from retrain_widgets.core.events import Event

model = examples.pretrained_digits_cnn()
task = examples.task("is_seven")
studio = RetrainStudio(model, task.train, task.val, task.old_val, config=task.config.replace(loss="ce"),
                       store=False)

# what each run's alignment probe took, written when the run ends (read by the test)
probe = W.HTML()
probe.add_class("t-probe")
# how many alignment samples the running run has, written at each publish (read by the test)
sampled = W.HTML("0")
sampled.add_class("t-sampled")


def watch(run):
    def published(info):
        sampled.value = str(len(run.history.layer_series("grad_alignment")[0]))

    run.on(Event.PUBLISH, published)

    def ended(info):
        if run.state.final:
            steps, names, cos = run.history.layer_series("grad_alignment")
            with_data = int(np.isfinite(cos).any(axis=1).sum()) if len(steps) else 0
            first = int(steps[0]) if len(steps) else -1
            probe.value = f"run {run.step} steps: {len(steps)} samples, {with_data} with data, first at {first}"
    run.on(Event.STATE_CHANGE, ended)


studio.headless.on("run", watch)
display(probe, sampled)
studio""",
]


def _tab(nb, title: str) -> None:
    nb.page.locator(".rw-tabs .lm-TabBar-tab", has_text=re.compile(rf"^\s*{title}\s*$")).first.click()


def _status_red(nb) -> bool:
    return nb.page.locator(".rw-status span[style*='#cf222e']").count() > 0


def _probe(nb, steps: int | str, timeout: float) -> tuple[int, int, int, int]:
    nb.page.locator(".t-probe").first.scroll_into_view_if_needed()  # rendered: its text can be read
    nb.wait_widget_text("t-probe", rf"^run {steps} steps", timeout=timeout)
    m = re.match(r"run (\d+) steps: (\d+) samples, (\d+) with data, first at (-?\d+)", nb.widget_text("t-probe"))
    assert m, nb.widget_text("t-probe")
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def _img_src(nb) -> str:
    return nb.page.locator(".rw-plot img, img.rw-plot").first.get_attribute("src") or ""


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_a_teachers_first_run(notebook_file, open_notebook, frontend):
    nb = open_notebook(notebook_file(CELLS), frontend)
    nb.page.set_viewport_size({"width": 1280, "height": 900})
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_image_loaded("rw-plot")
    nb.wait_all_cells_done(timeout=60)

    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()  # rendered: read its texts

    # item 2: the check fails -> Start off, the status says what is wrong, the fix ends in a fit
    nb.wait_widget_text("rw-status", r"^not ready: the loss does not fit: .*'ce' needs", timeout=10)
    assert _status_red(nb) and "ready: pick" not in nb.widget_text("rw-status")
    assert nb.page.locator(".rw-start").is_disabled()
    _tab(nb, "Loss")
    nb.wait_widget("rw-replace-head", timeout=5)
    assert nb.widget_text("rw-replace-head") == "Use 'bce'"
    nb.screenshot("ce-on-one-logit-start-off")
    nb.click_widget("rw-replace-head")
    nb.wait_widget_text("rw-loss-check", r"✓ 'bce' fits", timeout=10)
    nb.wait_widget_text("rw-status", r"^ready", timeout=5)
    assert not _status_red(nb) and nb.page.locator(".rw-start").is_enabled()
    assert nb.page.locator(".rw-replace-head").is_hidden() and nb.widget_text("rw-error") == ""

    # item 1: the cached 92-step run draws the alignment panel with data
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"^finished after 92 steps", timeout=120)
    steps, samples, with_data, first = _probe(nb, 92, timeout=30)
    assert steps == 92 and samples >= 3 and with_data == samples and first == 1, (samples, with_data, first)
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    time.sleep(0.5)
    nb.screenshot("cached-run-alignment-with-data")

    # item 3: a run to watch (every layer trains): the plot moves, Pause answers, the panel has data
    _tab(nb, "Optimisation")
    nb.page.locator(".rw-strategy button", has_text=re.compile(r"^\s*full\s*$")).click()
    _tab(nb, "Schedule")
    preview = lambda: nb.page.locator(".rw-lr-preview img, img.rw-lr-preview").first.get_attribute("src")  # noqa: E731
    before = preview()
    epochs = nb.page.locator(".rw-epochs input")
    epochs.fill("100")  # 2,300 steps of the whole model: a run to watch, stopped once it has shown enough
    epochs.press("Enter")
    deadline = time.monotonic() + 10
    while preview() == before and time.monotonic() < deadline:  # the config took the 15 epochs
        time.sleep(0.1)
    assert preview() != before
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"running", timeout=20)
    seen = {_img_src(nb)}
    deadline = time.monotonic() + 20
    while len(seen) < 4 and time.monotonic() < deadline:  # frames keep coming while it trains
        seen.add(_img_src(nb))
        time.sleep(0.1)
    assert len(seen) >= 4, f"only {len(seen)} distinct frames in 20 s"
    nb.click_widget("rw-pause")
    nb.wait_widget_text("rw-status", r"^paused", timeout=5)
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    nb.screenshot("full-run-paused")
    nb.click_widget("rw-pause")  # Resume
    nb.wait_widget_text("rw-status", r"^running", timeout=5)
    nb.page.locator(".t-sampled").first.scroll_into_view_if_needed()
    deadline = time.monotonic() + 180
    while int(nb.widget_text("t-sampled") or 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    nb.click_widget("rw-stop")
    nb.wait_widget_text("rw-status", r"^stopped at step [\d,]+ of 2,300", timeout=20)
    steps, samples, with_data, first = _probe(nb, r"\d+", timeout=30)
    assert 0 < steps < 2300 and samples >= 3 and with_data == samples, (steps, samples, with_data)
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    time.sleep(0.5)
    nb.screenshot("full-run-stopped")
    nb.assert_no_console_errors()
