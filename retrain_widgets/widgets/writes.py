"""The one place where the dashboard writes widget values from a background thread.

Two threads besides the kernel's write to the dashboard: the training thread (through the
:class:`~retrain_widgets.widgets.bridge.Bridge`: progress, frames, state) and the what-if
queue's thread (through the studio's topics: messages, errors, the runs table). Every such
write goes through :func:`write`. It

- serialises writes: one lock for the whole dashboard, so a frame written by the training
  thread and a message written by the queue (or a click handled by the kernel's thread) never
  interleave the traits of one update;
- sends the traits of one widget as one comm message (``hold_sync``), so the page never shows
  half an update (a progress bar's new ``max`` with its old ``value``);
- skips traits that already hold the value, so a throttled caller costs no message.

ipywidgets' own trait assignment is what sends the message; ipykernel's iopub thread makes
sending from any thread safe. The views' handlers of the studio's topics write through this
function whichever thread calls them, so the ordering holds for the kernel's thread too. Two
kinds of writes stay direct, because only the thread that changes the config makes them (the
kernel's, handling a control or running a cell): the controls showing a new config
(``show_config``) and the layer tree redrawing the working copy.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["write", "show", "together"]

_LOCK = threading.RLock()


def write(widget: Any, **traits: Any) -> None:
    """Set ``traits`` on ``widget`` together (``write(bar, max=100, value=3)``)."""
    with _LOCK:
        changed = {k: v for k, v in traits.items() if getattr(widget, k) != v}
        if not changed:
            return
        with widget.hold_sync():
            for name, value in changed.items():
                setattr(widget, name, value)


def show(widget: Any, visible: bool) -> None:
    """Show or hide ``widget`` (its layout's ``display``)."""
    write(widget.layout, display="" if visible else "none")


def together() -> threading.RLock:
    """The dashboard's write lock, for a view that reads state and then writes several widgets as one
    step (``with together(): ...``): no other write comes between, and two such steps never
    interleave. The same lock as :func:`write`'s (re-entrant), so no order of taking it can deadlock."""
    return _LOCK

