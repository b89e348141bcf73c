"""One figure per run: when a run ends its final figure becomes a static output that replaces the
live plot (never both on screen), and a saved notebook keeps it (issue 14, item 3).

The on-screen side is checked in a real browser by ``tests/browser/test_one_figure_browser.py``."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from retrain_widgets import RetrainStudio, RunConfig, examples


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


@pytest.fixture
def updates(monkeypatch):
    """The display updates the studio makes (IPython's ``update_display`` replaced)."""
    import IPython.display

    seen: list[tuple[object, str, bool]] = []
    monkeypatch.setattr(IPython.display, "update_display",
                        lambda obj, display_id, raw=False: seen.append((obj, display_id, raw)))
    return seen


def _studio(cnn, seven, **kw):
    return RetrainStudio(cnn, seven.train, seven.val, seven.old_val, store=False,
                         config=RunConfig(loss="bce", head_out=1, max_steps=8, epochs=1, **kw))


def _plot_shown(studio) -> bool:
    return studio.plot.layout.display != "none"


def test_the_final_figure_replaces_the_live_plot(cnn, seven, updates):
    studio = _studio(cnn, seven)
    studio.display_id = "final-id"  # as _ipython_display_ sets it
    studio.start()
    studio.wait(60)
    assert not _plot_shown(studio), "the live plot must give way to the static final figure"
    obj, display_id, raw = updates[-1]
    assert display_id == "final-id" and not raw and obj.data == studio.plot.value  # the same final frame
    first_final = obj.data

    studio.set(lr=3e-3)
    studio.start()  # the next run: the static copy goes, the live plot comes back
    assert updates[-1] == ({"text/plain": ""}, "final-id", True)
    assert _plot_shown(studio)
    studio.wait(60)
    assert not _plot_shown(studio) and updates[-1][0].data[:4] == b"\x89PNG"
    assert len([u for u in updates if not u[2]]) == 2 and updates[-1][0].data != first_final

    studio.reset()  # a reset draws an empty live plot: the static copy goes too
    assert _plot_shown(studio) and updates[-1] == ({"text/plain": ""}, "final-id", True)


def test_without_a_display_the_live_plot_stays(cnn, seven, updates):
    studio = _studio(cnn, seven)  # never displayed by IPython (e.g. inside another box)
    studio.start()
    studio.wait(60)
    assert _plot_shown(studio) and not updates


def test_without_ipython_display_the_live_plot_stays(cnn, seven, monkeypatch):
    import IPython.display

    def broken(*args, **kwargs):
        raise RuntimeError("no display here")

    monkeypatch.setattr(IPython.display, "update_display", broken)
    studio = _studio(cnn, seven)
    studio.display_id = "final-id"
    studio.start()
    studio.wait(60)
    assert _plot_shown(studio)


_CELLS = [
    """\
import hashlib, torch
torch.set_num_threads(1)
from retrain_widgets import RetrainStudio, RunConfig, examples
task = examples.task("is_seven")
studio = RetrainStudio(examples.pretrained_digits_cnn(), task.train, task.val, task.old_val, store=False,
                       config=RunConfig(loss="bce", head_out=1, max_steps=10, epochs=1))
studio""",
    "studio.start(); studio.wait(120)",
    "studio.set(lr=3e-3); studio.start(); studio.wait(120)",
    "print('final', hashlib.sha1(studio.plot.value).hexdigest())",
]


def _widget_state(nb) -> dict:
    return nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]


def test_a_saved_notebook_holds_one_final_figure(tmp_path: Path):
    """Executed headless and saved with its widget state (as nbval and "save widget state" do): the
    studio's cell holds the dashboard and exactly one static figure, the last run's final one; the
    saved live plot is hidden, so a reopened notebook shows one figure with or without widgets."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in _CELLS])
    path = tmp_path / "one_figure.ipynb"
    NotebookClient(nb, timeout=180, kernel_name="python3", store_widget_state=True, shutdown_kernel="immediate",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, str(path))
    nb = nbformat.read(str(path), as_version=4)  # what the saved file holds

    studio_cell = nb.cells[0].outputs
    kinds = [sorted(o.get("data", {})) for o in studio_cell if o.output_type == "display_data"]
    assert ["application/vnd.jupyter.widget-view+json", "text/plain"] in kinds
    images = [o for o in studio_cell if "image/png" in o.get("data", {})]
    assert len(images) == 1, kinds
    for cell in nb.cells[1:3]:
        assert not [o for o in cell.outputs if "image/png" in o.get("data", {})]
    final_sha = nb.cells[3].outputs[0]["text"].split()[1]
    assert hashlib.sha1(base64.b64decode(images[0]["data"]["image/png"])).hexdigest() == final_sha

    state = _widget_state(nb)
    plots = [m for m in state.values() if "rw-plot" in m["state"].get("_dom_classes", ())]
    assert len(plots) == 1
    layout_id = plots[0]["state"]["layout"].removeprefix("IPY_MODEL_")
    assert state[layout_id]["state"].get("display") == "none"
