"""A notebook with a dashboard, saved and reopened with a fresh kernel (issue 27, item 7), in JupyterLab 4
and Notebook 7: the widget state is saved with it (as ``./dev lab`` sets it up), so the reopened notebook
shows the dashboard's last state (its tabs, its status line, the run's final figure alone) instead of
"Error displaying widget: model not found", and the console has no error. Screenshots in test-artifacts/browser/.

Saved without widget state (the default of a user's own JupyterLab or Notebook 7), the reopened notebook shows,
in the dashboard's place, the studio's note instead of the front end's error text, above the run's final figure;
another library's widget in the same cell keeps the front end's own text (the note is the studio's alone). A
watched loop's dashboard shows its own note the same way."""

from __future__ import annotations

import time

import nbformat
import pytest

from retrain_widgets.widgets.reopen import STUDIO_NOTE_FIGURE, WATCH_NOTE

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


def _run_to_the_end(nb):
    """Run All, then Start the dashboard's run and wait until its final figure replaced the live plot
    (what a saved notebook must show)."""
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_all_cells_done(timeout=60)
    nb.page.locator(".rw-studio").first.scroll_into_view_if_needed()
    nb.click_widget("rw-start")
    nb.wait_widget_text("rw-status", r"^finished after 92 steps", timeout=120)
    wait_static_final(nb)
    return nb


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_a_saved_dashboard_reopens_without_a_broken_widget(notebook_file, open_notebook, jupyter_root, frontend):
    name = notebook_file(CELLS)
    nb = _run_to_the_end(open_notebook(name, frontend))
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

# the widget output before the note's own output (marker: .rw-reopen-studio or -watch), that own output, the
# cell's first output (another widget's, when it is not that one) and the cell's figures
_NOTE_JS = """marker => {
    const mark = document.querySelector('.' + marker);
    if (!mark) return null;
    const own = mark.closest('.jp-OutputArea-child');
    const widget = own.previousElementSibling.querySelector('.jp-OutputArea-output');
    const cell = own.closest('.jp-Cell');
    const outputs = [...cell.querySelectorAll('.jp-OutputArea-output')];
    const seen = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    const after = getComputedStyle(widget, '::after');
    return {note: after.content, noteVisibility: after.visibility, text: widget.innerText,
            height: widget.getBoundingClientRect().height, ownShown: own.getClientRects().length > 0,
            live: !!widget.querySelector('.rw-studio, .rw-watch'), other: outputs[0] === widget ? null : outputs[0].innerText,
            images: [...cell.querySelectorAll('.jp-RenderedImage img')].filter(seen).length, cell: cell.innerText};
}"""


def _note(page, marker: str) -> dict | None:
    return page.evaluate(_NOTE_JS, marker)


def _errors(page, count: int, timeout: float = 10.0) -> list[str]:
    """The page's unexpected console errors once ``count`` have come (the front end logs one per widget
    output it cannot show, each when that output renders), or those there are after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while len(errors := page.unexpected_errors()) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return errors


def _saved_figure(path) -> bool:
    cell = nbformat.read(str(path), as_version=4).cells[0]
    return any("image/png" in o.get("data", {}) for o in cell.outputs)


def _reopen_without_widget_state(nb, open_notebook, jupyter_root, name: str, marker: str):
    """Save (Ctrl+S), then do what a front end that does not save widget state would have done: the same file
    without it, saved (and signed, so trusted, as the user's own save is) through the server as the front end
    saves; reopened with a fresh kernel (no widget model anywhere), once the note shows."""
    nb.save()
    saved = nbformat.read(str(jupyter_root / name), as_version=4)
    assert saved.metadata.pop("widgets", None) is not None, "the harness saves widget state: it should be there"
    for cell in saved.cells:
        cell.metadata["trusted"] = True
    nb.server.api("PUT", f"api/contents/{name}", {"type": "notebook", "format": "json", "content": saved})
    assert not _widget_state(jupyter_root / name)
    again = open_notebook(name, nb.frontend)  # the old kernel is shut down first
    again.page.wait_for_function(f"m => (s => !!s && s.note !== 'none')(({_NOTE_JS})(m))", arg=marker,
                                 timeout=60_000)
    again.page.locator(f".{marker}").first.evaluate("el => el.closest('.jp-Cell').scrollIntoView({block: 'start'})")
    again.page.wait_for_timeout(1000)
    return again


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_a_dashboard_saved_without_widget_state_reopens_with_a_note(notebook_file, open_notebook, jupyter_root,
                                                                   frontend):
    name = notebook_file(CELLS_WITH_OTHER_WIDGET)
    nb = _run_to_the_end(open_notebook(name, frontend))
    live = _note(nb.page, "rw-reopen-studio")
    # live: the dashboard in its output, no note, the note's own output takes no space
    assert live["live"] and live["note"] == "none" and not live["ownShown"], live
    assert live["other"] == "another library's widget", live

    again = _reopen_without_widget_state(nb, open_notebook, jupyter_root, name, "rw-reopen-studio")
    assert _saved_figure(jupyter_root / name), "the notebook was not saved with the run's final figure"
    state = _note(again.page, "rw-reopen-studio")
    assert not state["live"] and state["note"] == f'"{STUDIO_NOTE_FIGURE}"', state
    assert state["noteVisibility"] == "visible" and state["height"] >= 16, state  # the note takes its line
    assert state["text"] == "", state  # the front end's error text hidden
    # the other widget keeps the front end's own text: the only "model not found" of the cell
    assert state["other"] == "Error displaying widget: model not found", state
    assert state["cell"].count("model not found") == state["cell"].count("Error displaying widget") == 1, state
    assert state["images"] == 1, state  # the run's final figure, below the note
    again.screenshot("reopened-without-widget-state")
    # the front end logs "widget model not found" once per widget output it cannot show: the two here
    errors = _errors(again, 2)
    assert len(errors) == 2 and all("widget model not found" in e for e in errors), errors


WATCHED_LOOP = ["""\
import torch
from torch import nn
import retrain_widgets as rw

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
opt = torch.optim.SGD(net.parameters(), lr=0.1)
run = rw.watch(net, opt, store=False, name="tiny loop", total_steps=20, alignment_every=None)
display(run)
for _ in range(20):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(net(torch.randn(5, 4)), torch.randint(0, 3, (5,)))
    loss.backward()
    opt.step()
    run.step(loss)
run.finish()"""]


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_a_watched_loop_saved_without_widget_state_reopens_with_a_note(notebook_file, open_notebook, jupyter_root,
                                                                      frontend):
    name = notebook_file(WATCHED_LOOP)
    nb = open_notebook(name, frontend)
    nb.run_all()
    nb.wait_widget("rw-watch", timeout=60)
    nb.wait_all_cells_done(timeout=60)
    live = _note(nb.page, "rw-reopen-watch")
    assert live["live"] and live["note"] == "none" and not live["ownShown"] and live["other"] is None, live

    again = _reopen_without_widget_state(nb, open_notebook, jupyter_root, name, "rw-reopen-watch")
    state = _note(again.page, "rw-reopen-watch")
    assert not state["live"] and state["note"] == f'"{WATCH_NOTE}"', state
    assert state["noteVisibility"] == "visible" and state["height"] >= 16 and state["text"] == "", state
    assert "model not found" not in state["cell"] and "Error displaying widget" not in state["cell"], state
    again.screenshot("reopened-without-widget-state")
    errors = _errors(again, 1)
    assert len(errors) == 1 and "widget model not found" in errors[0], errors
