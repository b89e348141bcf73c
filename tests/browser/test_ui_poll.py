"""Can a cell that *blocks* until a run ends still receive widget events (a Stop click)?

- ``jupyter_ui_poll`` 1.1.0 cannot on ipykernel 7: it calls ``kernel.do_one_iteration()``, which
  ipykernel 7 removed, and swallows the AttributeError; the click waits until the cell ends
  (``test_jupyter_ui_poll_on_ipykernel_7`` checks that this is still so, when it is installed).
- ``retrain_widgets.widgets.uipoll.ui_events`` (same API) reads the main shell socket itself on
  ipykernel 7, handles comm messages and gives the rest back to the kernel when the wait ends: the
  click stops the run at once, and the cells queued behind the waiting one (Run All) still run, in
  order. On ipykernel 6 it is ``jupyter_ui_poll``'s, checked on a second kernel when
  ``RETRAIN_WIDGETS_IPYKERNEL6`` names a folder with ipykernel 6 (see ``browser_harness.py``).
- A top-level ``await asyncio.sleep()`` loop works without help: ipykernel 7 dispatches comm
  messages while an async cell awaits.
- Headless (nbclient) every variant just waits for the thread and finishes.
"""

from __future__ import annotations

import time

import pytest

from .browser_harness import IPYKERNEL6, IPYKERNEL6_DIR
from .toy_notebooks import (
    AFTER_CELL,
    JUPYTER_UI_POLL_WAIT,
    WAITS,
    toy_cell,
    wait_progress_advances,
    waiting_notebook,
)

_NEEDS_IPYKERNEL6 = pytest.mark.skipif(not IPYKERNEL6_DIR, reason="RETRAIN_WIDGETS_IPYKERNEL6 is not set")


def click_stop_while_waiting(nb, wait: str) -> float:
    """Run All, see the run advance with the wait cell waiting, click Stop; returns the click time."""
    nb.run_all()
    wait_progress_advances(nb)
    # the wait cell's imports (torch, for the uipoll one) take seconds on a loaded machine: click once
    # it waits, so that the times below measure the wait's handling of the click
    nb.wait_output(r"(?m)^waiting$", timeout=60.0)
    prompts = nb.prompts()
    assert prompts[1] == "[*]:", f"the wait cell should be running: {prompts}"
    assert prompts[2] == "[*]:", f"the next cell should be queued: {prompts}"
    nb.screenshot(f"waiting-{wait}")
    return nb.click_widget("toy-stop")


@pytest.mark.browser
@pytest.mark.parametrize(
    "wait,frontend,kernel",
    [("uipoll", "lab", "python3"), ("uipoll", "notebook7", "python3"), ("async", "lab", "python3"),
     ("async", "notebook7", "python3"), pytest.param("uipoll", "lab", IPYKERNEL6, marks=_NEEDS_IPYKERNEL6)],
)
def test_stop_click_ends_a_blocking_wait(notebook_file, open_notebook, wait, frontend, kernel):
    name = notebook_file(waiting_notebook(wait), kernel=kernel)
    nb = open_notebook(name, frontend)
    clicked = click_stop_while_waiting(nb, wait)
    # The kernel handles the click while the cell blocks (the cell's own output says so); the label's
    # round trip back to the page can lag on a loaded 2-core machine, so it gets a little longer.
    # (The dashboard's Stop-within-2-s requirement is checked in test_studio_browser.py.)
    nb.wait_output(r"wait ended after [0-9.]+ s, stopped by click", timeout=3.0)
    if wait == "uipoll":  # ipykernel 6 has it, 7 does not: the kernel is the one meant
        nb.wait_output(f"kernel has do_one_iteration: {kernel == IPYKERNEL6}", timeout=1.0)
    seen = nb.wait_widget_text("toy-label", r"^stopped at \d+ by click$", timeout=5.0)
    assert seen - clicked < 5.0
    nb.wait_output(r"the cell after the wait ran", timeout=5.0)
    nb.wait_all_cells_done(timeout=10)
    assert [p for p in nb.prompts()] == ["[1]:", "[2]:", "[3]:"]
    nb.screenshot("done")
    nb.assert_no_console_errors()


@pytest.mark.browser
def test_jupyter_ui_poll_on_ipykernel_7(notebook_file, open_notebook):
    """Why ``uipoll`` does not use ``jupyter_ui_poll`` on ipykernel 7: the click is not handled while
    its poll loop runs; the wait ends only when the thread stops by itself. If this starts failing, a
    ``jupyter_ui_poll`` release handles ipykernel 7: ``uipoll.ui_events`` should then use it there."""
    pytest.importorskip("jupyter_ui_poll")
    nb = open_notebook(notebook_file([toy_cell(limit=400), JUPYTER_UI_POLL_WAIT, AFTER_CELL]), "lab")
    nb.run_all()
    wait_progress_advances(nb)
    nb.wait_output(r"(?m)^waiting$", timeout=60.0)
    nb.click_widget("toy-stop")
    nb.wait_output(r"wait ended after [0-9.]+ s, stopped by limit", timeout=30.0)
    nb.wait_output(r"kernel has do_one_iteration: False", timeout=1.0)
    nb.wait_output(r"the cell after the wait ran", timeout=10.0)
    nb.wait_all_cells_done(timeout=10)


@pytest.mark.parametrize("wait", sorted(WAITS))
def test_waiting_cell_headless_nbclient(tmp_path, wait):
    """Headless nothing clicks: the waiting cell waits for the thread's own end, then the notebook
    goes on (no browser; not marked ``browser``)."""
    import nbformat
    from nbclient import NotebookClient

    from .browser_harness import write_notebook

    path = write_notebook(tmp_path / "wait.ipynb", [toy_cell(limit=50), WAITS[wait], AFTER_CELL])
    nb = nbformat.read(str(path), as_version=4)
    t0 = time.monotonic()
    NotebookClient(
        nb, timeout=60, kernel_name="python3", shutdown_kernel="immediate",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    elapsed = time.monotonic() - t0
    texts = ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]
    assert "stopped by limit" in texts[1], texts
    assert "the cell after the wait ran" in texts[2], texts
    assert elapsed < 30, elapsed
