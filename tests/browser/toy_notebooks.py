"""Cells of the toy notebooks used by the browser tests (and the headless nbclient check)."""

from __future__ import annotations

import time

import pytest

# A thread counts every 20 ms into an IntProgress until the Stop button (or LIMIT steps) stops it;
# traits are assigned from the thread. The label tells who stopped it.
_TOY = """\
import threading, time
import ipywidgets as widgets
from IPython.display import display

LIMIT = {limit}
stop = widgets.Button(description="Stop")
stop.add_class("toy-stop")
progress = widgets.IntProgress(value=0, min=0, max=LIMIT)
progress.add_class("toy-progress")
label = widgets.Label("running")
label.add_class("toy-label")
stop_flag = threading.Event()
reason = {{"by": "limit"}}

def on_stop(_):
    reason["by"] = "click"
    stop_flag.set()

stop.on_click(on_stop)

def work():
    n = 0
    while not stop_flag.is_set() and n < LIMIT:
        n += 1
        progress.value = n
        time.sleep(0.02)
    stop_flag.set()
    label.value = f"stopped at {{n}} by {{reason['by']}}"

thread = threading.Thread(target=work, daemon=True)
thread.start()
display(widgets.VBox([stop, progress, label]))
"""

# Cells that block until the thread has stopped, each with a way to handle widget events meanwhile.
_WAIT_SYNC = """\
from {module} import ui_events
kernel = get_ipython().kernel
print("kernel has do_one_iteration:", hasattr(kernel, "do_one_iteration"))
t0 = time.monotonic()
print("waiting", flush=True)
with ui_events() as poll:
    while not stop_flag.is_set():
        poll(10)
        time.sleep(0.05)
print(f"wait ended after {{time.monotonic() - t0:.1f}} s, stopped by {{reason['by']}}")
"""

_WAIT_ASYNC = """\
import asyncio
t0 = time.monotonic()
print("waiting", flush=True)
while not stop_flag.is_set():
    await asyncio.sleep(0.05)
print(f"wait ended after {time.monotonic() - t0:.1f} s, stopped by {reason['by']}")
"""

AFTER_CELL = 'print("the cell after the wait ran")'

WAITS = {
    "uipoll": _WAIT_SYNC.format(module="retrain_widgets.widgets.uipoll"),
    "async": _WAIT_ASYNC,
}
# jupyter_ui_poll itself, to see what it does on the kernel at hand (not a way the package waits)
JUPYTER_UI_POLL_WAIT = _WAIT_SYNC.format(module="jupyter_ui_poll")


def toy_cell(limit: int = 2500) -> str:
    return _TOY.format(limit=limit)


def waiting_notebook(wait: str, limit: int = 2500) -> list[str]:
    """Toy cell, a cell that waits for the thread (``wait`` in WAITS), then one more cell."""
    return [toy_cell(limit), WAITS[wait], AFTER_CELL]


def wait_progress_advances(nb, css_class: str = "toy-progress", timeout: float = 10.0) -> tuple[float, float]:
    """Two readings of the bar's width, the second larger; fails if it does not move."""
    nb.wait_widget(css_class)
    deadline = time.monotonic() + timeout
    first = nb.progress_percent(css_class)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = nb.progress_percent(css_class)
        if 0 < first < now:
            return first, now
        if first == 0:
            first = now
    pytest.fail(f"progress did not advance in {timeout} s (width {nb.progress_percent(css_class)}%)")
