"""A notebook with a dashboard, saved and reopened with a fresh kernel (issue 27, item 7), in JupyterLab 4
and Notebook 7: the widget state is saved with it (as ``./dev lab`` sets it up), so the reopened notebook
shows the dashboard's last state (its tabs, its status line, the run's final figure alone) instead of
"Error displaying widget: model not found", and the console has no error. Screenshots in test-artifacts/browser/.

Saved without widget state (the default of a user's own JupyterLab or Notebook 7), the reopened notebook shows,
in the dashboard's place, the studio's note instead of the front end's error text, above the run's final figure;
another library's widget in the same cell keeps the front end's own text (the note is the studio's alone)."""

from __future__ import annotations

import time

import nbformat
import pytest

from retrain_widgets.widgets.reopen import STUDIO_NOTE_FIGURE

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


# the same dashboard, after another library's widget in the same cell (the note must leave that one alone)
CELLS_WITH_OTHER_WIDGET = [
    CELLS[0].removesuffix("\nstudio") + "\nimport ipywidgets\ndisplay(ipywidgets.Label(\"another library's widget\"))\nstudio",
]

# the studio's widget output, the note's own output after it, the other widget's output, the cell's figures
_NOTE_JS = """() => {
    const marker = document.querySelector('.rw-reopen-studio');
    if (!marker) return null;
    const own = marker.closest('.jp-OutputArea-child');
    const widget = own.previousElementSibling.querySelector('.jp-OutputArea-output');
    const cell = own.closest('.jp-Cell');
    const outputs = [...cell.querySelectorAll('.jp-OutputArea-output')];
    const seen = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    const after = getComputedStyle(widget, '::after');
    return {note: after.content, noteVisibility: after.visibility, text: widget.innerText,
            height: widget.getBoundingClientRect().height, ownShown: own.getClientRects().length > 0,
            studio: !!widget.querySelector('.rw-studio'), other: outputs[0] === widget ? null : outputs[0].innerText,
            images: [...cell.querySelectorAll('.jp-RenderedImage img')].filter(seen).length, cell: cell.innerText};
}"""


def _saved_figure(path) -> bool:
    cell = nbformat.read(str(path), as_version=4).cells[0]
    return any("image/png" in o.get("data", {}) for o in cell.outputs)


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_a_dashboard_saved_without_widget_state_reopens_with_a_note(notebook_file, open_notebook, jupyter_root,
                                                                   frontend):
    name = notebook_file(CELLS_WITH_OTHER_WIDGET)
    nb = open_notebook(name, frontend)
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_all_cells_done(timeout=60)
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"^finished after 92 steps", timeout=120)
    wait_static_final(nb)
    live = nb.page.evaluate(_NOTE_JS)
    # live: the dashboard in its output, no note, the note's own output takes no space
    assert live["studio"] and live["note"] == "none" and not live["ownShown"], live
    assert live["other"] == "another library's widget", live
    nb.page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})  # focus the notebook, not a widget
    deadline = time.monotonic() + 30
    while not (_saved_figure(jupyter_root / name) and _widget_state(jupyter_root / name)) \
            and time.monotonic() < deadline:
        nb.page.keyboard.press("Control+s")
        time.sleep(1.0)
    assert _saved_figure(jupyter_root / name), "the notebook was not saved with the run's final figure"

    # a front end that does not save widget state: the same file without it, saved (and signed, so trusted,
    # as the user's own save is) through the server, as the front end saves
    saved = nbformat.read(str(jupyter_root / name), as_version=4)
    assert saved.metadata.pop("widgets", None) is not None
    for cell in saved.cells:
        cell.metadata["trusted"] = True
    nb.server.api("PUT", f"api/contents/{name}", {"type": "notebook", "format": "json", "content": saved})
    assert not _widget_state(jupyter_root / name)

    again = open_notebook(name, frontend)  # the old kernel is shut down first: no widget model anywhere
    again.page.wait_for_function(f"() => (s => !!s && s.note !== 'none')(({_NOTE_JS})())", timeout=60_000)
    again.page.locator(".rw-reopen-studio").first.evaluate(
        "el => el.closest('.jp-Cell').scrollIntoView({block: 'start'})")
    again.page.wait_for_timeout(1000)
    state = again.page.evaluate(_NOTE_JS)
    assert not state["studio"] and state["note"] == f'"{STUDIO_NOTE_FIGURE}"', state
    assert state["noteVisibility"] == "visible" and state["height"] >= 16, state  # the note takes its line
    assert state["text"] == "", state  # the front end's error text hidden
    # the other widget keeps the front end's own text: the only "model not found" of the cell
    assert state["other"] == "Error displaying widget: model not found", state
    assert state["cell"].count("model not found") == state["cell"].count("Error displaying widget") == 1, state
    assert state["images"] == 1, state  # the run's final figure, below the note
    again.screenshot("reopened-without-widget-state")
    # the front end logs "widget model not found" once per widget output it cannot show: the two here
    errors = again.unexpected_errors()
    assert len(errors) == 2 and all("widget model not found" in e for e in errors), errors
