"""The short form and the runs' names in a real browser: JupyterLab 4 and Notebook 7, headless Chromium.

The notebook opens ``RetrainStudio(model, task.train, task.val, task.old_val)`` on ``is_seven``
with no config: the Loss tab is green with 'bce' on a 1-logit head and says why it was chosen, and
Start works. Its folder's run store already holds a run of the same notebook made by an earlier
kernel (``#1``) and one of another notebook: the new runs continue at ``#2``, what-ifs are named by
the LR they vary (3 significant digits), the Runs tab lists this notebook's runs and switches to
every notebook's, and Restore reports the run's name. Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser

CELLS = [
    """\
import torch
torch.set_num_threads(1)
from retrain_widgets import RetrainStudio, examples

model = examples.pretrained_digits_cnn()
task = examples.task("is_seven")
studio = RetrainStudio(model, task.train, task.val, task.old_val)
studio""",
    "studio.set(max_steps=6)\nrun = studio.start()\nstudio.wait(120)",
    "studio.what_if({'lr': [0.00159228, 0.01]}, wait=True)\nprint('notebook:', studio.headless.book.notebook)",
]


def _earlier_runs(folder, notebook: str) -> None:
    """A run of this notebook by an earlier kernel, and one of another notebook, in the folder's store."""
    from retrain_widgets import Retrainer, RunConfig, examples
    from retrain_widgets.core.store import RunStore

    task = examples.task("is_seven")
    with RunStore(folder / ".retrain_runs") as store:
        for name, book in (("#1 before the restart", notebook), ("#1 another notebook's run", "other.ipynb")):
            run = Retrainer(examples.pretrained_digits_cnn(), RunConfig(loss="bce", head_out=1, max_steps=1),
                            task.train, task.val, task.old_val)
            store.record(run, name=name, notebook=book)
            run.fit()


def _tab(nb, title: str) -> None:
    nb.page.locator(".rw-tabs .lm-TabBar-tab", has_text=re.compile(rf"^\s*{title}\s*$")).first.click()


@pytest.mark.parametrize("frontend", ["lab", "notebook7"])
def test_short_form_opens_ready_and_runs_are_told_apart(notebook_file, open_notebook, jupyter_root, frontend):
    folder = jupyter_root / f"naming_{frontend}"
    folder.mkdir(exist_ok=True)
    _earlier_runs(folder, "runs.ipynb")
    nb = open_notebook(notebook_file(CELLS, name=f"naming_{frontend}/runs.ipynb"), frontend)
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=60)
    nb.wait_all_cells_done(timeout=180)
    nb.wait_output(r"notebook: runs\.ipynb", timeout=10)

    # item 4: the Loss tab is green, with the choice and its reason
    _tab(nb, "Loss")
    nb.wait_widget_text("rw-loss-check", r"✓ 'bce' fits: outputs \(64, 1\)", timeout=5)
    note = nb.wait_widget_text("rw-loss-choice", r"Chosen at open: 'bce' with a new head of 1 output, because the "
                                                 r"targets are float32 0/1 values", timeout=5)
    assert note and nb.page.locator(".rw-loss select").input_value() == "bce"
    nb.screenshot("loss-chosen-at-open")

    # item 5: this notebook's runs, numbered on from the store, what-ifs by the LR they vary
    _tab(nb, "Runs")
    nb.wait_widget_text("rw-runs-select", r"#4\slr\s0\.01\s·", timeout=10)  # options use no-break spaces
    listed = nb.widget_text("rw-runs-select").replace("\xa0", " ")
    for name in ("#1 before the restart", "#2 bce · full · lr 0.001 · constant", "#3 lr 0.00159 ·", "#4 lr 0.01 ·"):
        assert name in listed, listed
    assert "another notebook" not in listed and "what-if" not in listed and "0.00159228" not in listed
    nb.screenshot("runs-this-notebook", css_class="rw-runs")

    nb.page.locator(".rw-runs-scope button", has_text="every notebook").click()
    nb.wait_widget_text("rw-runs-select", r"another\snotebook's\srun", timeout=10)
    table = nb.widget_text("rw-runs-table")
    assert "notebook" in table and "other.ipynb" in table and "runs.ipynb" in table
    nb.screenshot("runs-every-notebook", css_class="rw-runs")

    nb.page.locator(".rw-runs-select select").select_option(label="#3 lr 0.00159 · finished")
    nb.click_widget("rw-runs-restore")
    nb.wait_widget_text("rw-runs-message", r"restored #3 lr 0\.00159", timeout=10)
    nb.wait_widget_text("rw-status", r"restored #3 lr 0\.00159:", timeout=10)
    nb.screenshot("restored-by-name")
    nb.assert_no_console_errors()
