"""One run at a time in a studio: a start refused while another is starting, a run is going or
what-ifs run; a ``KeyboardInterrupt`` while waiting stops the run (as ``Retrainer.wait`` does).

The studio holds a :class:`~retrain_widgets.core.runslot.RunSlot` while a start is under way
(building the run, checking its first batch, starting its thread), so "is anything running? then
start one" is one step even when two threads (two clicks, a cell and the what-if queue) race.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .core.engine import Retrainer
from .core.runslot import RunBusy, RunSlot

__all__ = ["Studio", "interrupted", "one_start_at_a_time", "plain_wait_while", "quiesce", "refused_quietly", "settle",
           "start_refusal", "wait_or_stop"]


class Studio(Protocol):
    """What these functions read of a studio (``HeadlessStudio`` is one)."""

    run: Retrainer | None
    queue: Any  # its ``thread`` runs the what-ifs
    slot: RunSlot
    stops: int  # how many times ``stop()`` was called

    def status(self, text: str, error: bool = False) -> None: ...

    def stop(self) -> None: ...

    def busy(self) -> bool: ...

    def wait_while(self, busy: Callable[[], bool], timeout: float | None) -> bool: ...


def start_refusal(studio: Studio, queue_too: bool = False) -> str:
    """Why ``studio`` cannot start a run now (``""``: it can): a run is going, or what-ifs are queued
    (their own thread starts each of their runs; ``queue_too``: not even it)."""
    run, thread = studio.run, studio.queue.thread
    if queue_too and ((run is not None and run.state.active) or (thread is not None and thread.is_alive())):
        return "a run is going: stop it before starting what-ifs"
    if run is not None and run.state.active:
        return "a run is already going: Stop it first (one run at a time)."
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        return "what-ifs are running: Stop them first (one run at a time)."
    return ""


def settle(run: Retrainer | None) -> None:
    """Wait (up to 10 s) for ``run``'s last handlers: a stopped run's training thread still draws its final
    frame on the studio's one figure after Stop has enabled Reset, Start and the Runs tab's Restore, so those
    wait for it rather than draw on the figure at the same time. At once for a run long ended."""
    if run is not None and run.thread is not threading.current_thread():
        run.join(10)


def quiesce(studio: Studio) -> None:
    """Stop ``studio``'s run and queued what-ifs, and wait (up to 10 s each) until they have ended, their
    last handlers too: nothing of them starts or draws after this returns (Reset, a re-run cell)."""
    if studio.busy():
        studio.stop()
    thread = studio.queue.thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(10)
    settle(studio.run)


def plain_wait_while(busy: Callable[[], bool], timeout: float | None = None, interval: float = 0.05,
                     poll: Callable[[], Any] | None = None) -> bool:
    """Wait while ``busy()``, calling ``poll()`` (if given) every ``interval`` seconds; True when it
    became false within ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while busy():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if poll is not None:
            poll()
        time.sleep(interval)
    return True


def one_start_at_a_time(start: Callable[..., Retrainer | None]) -> Callable[..., Retrainer | None]:
    """A studio's ``start``, one at a time: refused while another start holds the studio's slot, a run
    is going or what-ifs run — said on the status line (where a click on Start shows it) and raised as
    :class:`~retrain_widgets.core.runslot.RunBusy` (a ``ValueError``); a run that ``stop()`` was called on
    while it was being built or checked is stopped as soon as it started."""

    @functools.wraps(start)
    def guarded(studio: Studio, config: Any = None, name: str | None = None) -> Retrainer | None:
        try:
            with studio.slot.claim(lambda: start_refusal(studio)):
                stops = studio.stops
                run = start(studio, config, name)
                if run is not None and studio.stops != stops:
                    run.stop()
                return run
        except RunBusy as exc:
            studio.status(f"✗ {exc}", error=True)
            raise

    return guarded


def wait_or_stop(studio: Studio, timeout: float | None) -> bool:
    """``studio.wait_while(studio.busy, timeout)``; a ``KeyboardInterrupt`` meanwhile stops the run (see
    :func:`interrupted`) and is raised again."""
    try:
        return studio.wait_while(studio.busy, timeout)
    except KeyboardInterrupt:
        raise interrupted(studio) from None


def interrupted(studio: Studio) -> KeyboardInterrupt:
    """A ``KeyboardInterrupt`` while waiting on ``studio``: stop its run and queue, wait until they end,
    and say where the run stopped (as ``Retrainer.wait`` does)."""
    studio.stop()
    while studio.busy():
        time.sleep(0.05)
    run = studio.run
    where = f" at step {run.step} of {run.total_steps}" if run is not None else ""
    return KeyboardInterrupt(f"interrupted: training stopped{where} (and any queued what-ifs); the trained model "
                             f"(.model) and the history (.history) are kept")


def refused_quietly(start: Callable[[], Any]) -> Callable[[], Any]:
    """``start`` for a button: a refusal is already on the status line, so it is not raised again into
    the kernel's log."""

    @functools.wraps(start)
    def click() -> Any:
        try:
            return start()
        except RunBusy:
            return None

    return click
