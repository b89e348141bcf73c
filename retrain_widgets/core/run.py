"""The ``Run`` protocol: what the store, comparisons and views read of a run, whatever trained it.

The built-in :class:`~retrain_widgets.core.engine.Retrainer` is a ``Run``; so is any object with
these members (a watched user loop, a framework's callback, a run streamed from a remote worker).
Nothing that reads a ``Run`` imports the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch import nn

from .events import Event, EventInfo, State
from .history import History

__all__ = ["Run", "check_run"]


@runtime_checkable
class Run(Protocol):
    """A run as the store, comparisons and views see it.

    Attributes
    ----------
    name
        Its name, or ``None`` (the store and comparisons then name it).
    history
        Its :class:`~retrain_widgets.core.history.History` (series named by
        :class:`~retrain_widgets.core.names.Series`).
    state, global_step, total_steps, message
        Where it is: a :class:`~retrain_widgets.core.events.State`, the optimizer steps done and
        planned (0 when unknown), and what it said when it ended (``""`` before).
    progress
        Step, total, epoch, epochs, steps/s, ETA (seconds or ``None``), state, stage and stages:
        plain numbers, cheap to read.
    model, pretrained
        The model it trains, and the weights it started from (the store keeps the trained weights
        as the delta against ``pretrained``).
    head_name, head_out
        The head's module name (``None`` when unknown) and the new head's outputs (``None``: the
        model's own head was kept).
    started_at, thread
        ``time.perf_counter()`` when training began (0.0 before), and the thread that trains it
        (``None`` when unknown): the store closes that thread's connection when the run ends.
    """

    name: str | None
    history: History
    state: State
    total_steps: int
    message: str
    model: nn.Module
    pretrained: nn.Module
    head_name: str | None

    @property
    def global_step(self) -> int: ...

    @property
    def progress(self) -> dict[str, Any]: ...

    @property
    def head_out(self) -> int | None: ...

    @property
    def started_at(self) -> float: ...

    @property
    def thread(self) -> threading.Thread | None: ...

    def config_record(self) -> tuple[dict[str, Any], str]:
        """(what is known of its config as a JSON-able dict, a note on what could not be kept)."""
        ...

    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Any:
        """Call ``handler(info)`` on ``event`` (``PUBLISH``, ``EPOCH_END``, ``STATE_CHANGE``)."""
        ...

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None: ...


def check_run(run: Any, what: str) -> Run:
    """``run`` when it is a :class:`Run`; a ``ValueError`` naming what ``what`` takes otherwise."""
    if not isinstance(run, Run):
        missing = [m for m in ("name", "history", "state", "global_step", "total_steps", "message", "model", "pretrained",
                               "head_name", "head_out", "started_at", "thread", "config_record", "on", "off", "progress")
                   if not hasattr(run, m)]
        raise ValueError(f"{what} takes a run (a Retrainer, a watched loop, or any object of the Run protocol), "
                         f"got {type(run).__name__}" + (f" without {', '.join(missing)}" if missing else ""))
    return run
