"""A notebook saved without widget state (the default of JupyterLab and Notebook 7) and reopened must not
show "Error displaying widget: model not found" where a dashboard was (issue 27): each dashboard is
displayed with an output of its own that holds a ``<style>`` rule putting a note of ours in place of that
error text. Here: what the displays emit. In a real browser: ``tests/browser/test_saved_state_browser.py``."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import retrain_widgets as rw
from retrain_widgets import RetrainStudio, RunConfig, examples
from retrain_widgets.widgets.reopen import STUDIO_NOTE, STUDIO_NOTE_FIGURE, WATCH_NOTE, note_bundle
from retrain_widgets.widgets.watch import DashboardSlot

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def shown(monkeypatch):
    """What IPython's ``display`` is given: (object, raw, display_id) each time; an object with an
    ``_ipython_display_`` displays itself, as in IPython."""
    import IPython.display

    seen: list[tuple[object, bool, str | None]] = []

    def display(obj, raw=False, display_id=None):
        if not raw and hasattr(obj, "_ipython_display_"):
            obj._ipython_display_()
        else:
            seen.append((obj, raw, display_id))

    monkeypatch.setattr(IPython.display, "display", display)
    return seen


def _style(bundle: dict) -> str:
    match = re.fullmatch(r"<style>\n(.*)\n</style><div class=\"(rw-reopen-\w+)\" hidden></div>",
                         bundle["text/html"], re.S)
    assert match, bundle["text/html"]
    return match.group(1)


def test_the_studio_is_displayed_with_its_note_before_its_final_figure(cnn, shown):
    task = examples.task("is_seven", batch_size=64)
    studio = RetrainStudio(cnn, task.train, task.val, task.old_val, store=False,
                           config=RunConfig(loss="bce", head_out=1, max_steps=8, epochs=1))
    studio._ipython_display_()
    assert len(shown) == 3, shown
    (widget, raw_w, id_w), (note, raw_n, id_n), (final, raw_f, id_f) = shown
    assert raw_w and id_w is None and widget[WIDGET]["model_id"] == studio.model_id
    # the note's own output, not the final figure's (whose update_display replaces that one's content)
    assert raw_n and id_n is None and note == note_bundle("studio", STUDIO_NOTE, STUDIO_NOTE_FIGURE)
    assert raw_f and id_f == studio.display_id and final == {"text/plain": ""}
    css = _style(note)
    assert f'content: "{STUDIO_NOTE}"' in css and f'content: "{STUDIO_NOTE_FIGURE}"' in css
    assert note["text/plain"] == ""  # front ends without HTML show nothing

    shown.clear()
    studio._ipython_display_()  # shown again: the widget and its note, the final figure stays where it was
    assert [d[2] for d in shown] == [None, None] and shown[1][0] == note


def test_the_note_applies_only_to_the_widget_output_just_before_it_and_only_to_its_error():
    css = _style(note_bundle("x", 'say "hi" \\ there', "with a figure"))
    rules = [r for r in css.splitlines() if r]
    own, hide_text, after, figure = rules
    assert own == ".jp-OutputArea-child:has(.rw-reopen-x) { display: none; }"  # takes no space
    error = ".jp-OutputArea-child:has(+ .jp-OutputArea-child .rw-reopen-x) > .jp-OutputArea-output.jupyter-widgets:not(:has(*))"
    assert hide_text.startswith(error + " {") and "visibility: hidden; font-size: 0;" in hide_text
    assert after.startswith(error + "::after {") and r'content: "say \"hi\" \\ there"; visibility: visible;' in after
    assert figure.startswith(".jp-OutputArea-child:has(+ .jp-OutputArea-child .rw-reopen-x)"
                             ":has(+ .jp-OutputArea-child + .jp-OutputArea-child .jp-RenderedImage) > ")
    assert figure.endswith('::after { content: "with a figure"; }')
    assert len(_style(note_bundle("x", "n")).splitlines()) == 3  # no figure rule when none is given


def test_a_watched_loops_dashboard_is_displayed_with_its_note(shown):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    run = rw.watch(net, torch.optim.SGD(net.parameters(), lr=0.1), store=False, alignment_every=None)
    run._ipython_display_()  # the cell's last expression: its dashboard
    assert [(sorted(obj), raw) for obj, raw, _ in shown] == [([WIDGET, "text/plain"], True),
                                                             (["text/html", "text/plain"], True)]
    assert shown[0][0][WIDGET]["model_id"] == run.dashboard().model_id
    assert shown[1][0] == note_bundle("watch", WATCH_NOTE)
    run.finish()

    shown.clear()
    slot = DashboardSlot()  # a framework's callback shown before training began
    slot._ipython_display_()
    assert shown[0][0][WIDGET]["model_id"] == slot.model_id and shown[1][0] == note_bundle("watch", WATCH_NOTE)
