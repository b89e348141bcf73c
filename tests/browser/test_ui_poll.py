"""Can a cell that *blocks* until a run ends still receive widget events (a Stop click)?

- ``jupyter_ui_poll`` 1.1.0 cannot on ipykernel 7: it calls ``kernel.do_one_iteration()``, which
  ipykernel 7 removed, and swallows the AttributeError; the click waits until the cell ends.
- ``retrain_widgets.widgets.uipoll.ui_events`` (same API) reads the main shell socket itself, handles comm messages
  and gives the rest back to the kernel when the wait ends: the click stops the run at once, and the
  cells queued behind the waiting one (Run All) still run, in order.
- A top-level ``await asyncio.sleep()`` loop works without help: ipykernel 7 dispatches comm
  messages while an async cell awaits.
- Headless (nbclient) every variant just waits for the thread and finishes.
"""

from __future__ import annotations

import time

import pytest

from .toy_notebooks import AFTER_CELL, WAITS, toy_cell, wait_progress_advances, waiting_notebook


def click_stop_while_waiting(nb, wait: str) -> float:
    """Run All, see the run advance with the wait cell running, click Stop; returns the click time."""
    nb.run_all()
    wait_progress_advances(nb)
    prompts = nb.prompts()
    assert prompts[1] == "[*]:", f"the wait cell should be running: {prompts}"
    assert prompts[2] == "[*]:", f"the next cell should be queued: {prompts}"
    nb.screenshot(f"waiting-{wait}")
    return nb.click_widget("toy-stop")


@pytest.mark.browser
@pytest.mark.parametrize(
    "wait,frontend", [("uipoll", "lab"), ("uipoll", "notebook7"), ("async", "lab"), ("async", "notebook7")]
)
def test_stop_click_ends_a_blocking_wait(notebook_file, open_notebook, wait, frontend):
    name = notebook_file(waiting_notebook(wait))
    nb = open_notebook(name, frontend)
    clicked = click_stop_while_waiting(nb, wait)
    # The kernel handles the click while the cell blocks (the cell's own output says so); the label's
    # round trip back to the page can lag on a loaded 2-core machine, so it gets a little longer.
    # (The dashboard's Stop-within-2-s requirement is checked in test_studio_browser.py.)
    nb.wait_output(r"wait ended after [0-9.]+ s, stopped by click", timeout=3.0)
    seen = nb.wait_widget_text("toy-label", r"^stopped at \d+ by click$", timeout=5.0)
    assert seen - clicked < 5.0
    nb.wait_output(r"the cell after the wait ran", timeout=5.0)
    nb.wait_all_cells_done(timeout=10)
    assert [p for p in nb.prompts()] == ["[1]:", "[2]:", "[3]:"]
    nb.screenshot("done")
    nb.assert_no_console_errors()


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
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    elapsed = time.monotonic() - t0
    texts = ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]
    assert "stopped by limit" in texts[1], texts
    assert "the cell after the wait ran" in texts[2], texts
    assert elapsed < 30, elapsed
