"""Steering a training loop from any thread: stop, pause and resume, and queued changes, all
applied by the loop at its step boundaries (the seam HF's ``TrainerControl`` is for Trainer).

Any thread calls :meth:`Control.stop`, :meth:`Control.pause`, :meth:`Control.resume` or
:meth:`Control.queue`; the loop calls :meth:`Control.boundary` between two steps, where queued
changes are applied, a pause waits (applying changes queued meanwhile) and a stop is reported.
The model is consistent at a boundary: no step is half done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Control"]


class Control:
    """Flags and a queue of changes, read by the loop at step boundaries."""

    POLL_S = 0.05  # how often a paused loop looks for queued changes and resume/stop

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self.while_paused: list[Callable[[], None]] = []  # called every POLL_S while paused (UI events)

    # ------------------------------------------------------------------ any thread
    def stop(self) -> None:
        """Stop at the next boundary (a paused loop stops too)."""
        self._stop.set()
        self._resume.set()

    def pause(self) -> None:
        """Wait at the next boundary until :meth:`resume` or :meth:`stop`."""
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def queue(self, action: Callable[[], None]) -> None:
        """Apply ``action`` at the next boundary (also while paused)."""
        with self._lock:
            self._pending.append(action)

    @property
    def should_stop(self) -> bool:
        """Whether a stop was asked for."""
        return self._stop.is_set()

    @property
    def pause_requested(self) -> bool:
        return not self._resume.is_set() and not self._stop.is_set()

    def reset(self) -> None:
        """Before (re)starting: no stop, no pause."""
        self._stop.clear()
        self._resume.set()

    # ------------------------------------------------------------------ the loop
    def apply_pending(self) -> None:
        """Apply the queued changes, oldest first."""
        with self._lock:
            todo, self._pending = self._pending, []
        for action in todo:
            action()

    def boundary(self, on_pause: Callable[[], None] = lambda: None,
                 on_resume: Callable[[], None] = lambda: None) -> bool:
        """Between two steps: apply queued changes; when paused, ``on_pause()``, wait (applying
        changes queued meanwhile) until resumed or stopped, then ``on_resume()``. Returns
        whether the loop must stop."""
        if self._pending:
            self.apply_pending()
        if self.pause_requested:
            on_pause()
            while not self._resume.wait(self.POLL_S):
                for fn in self.while_paused:
                    fn()
                if self._pending:
                    self.apply_pending()
            on_resume()
        return self._stop.is_set()
