"""One run at a time: the claim that makes "is anything running? then start one" atomic.

A :class:`RunSlot` is held while a start is under way (building the run, checking its first
batch, starting its thread). A second start from another thread meanwhile, or once the first
run is going, gets :class:`RunBusy` at once instead of a second training thread on the same
model (or a check that swaps the head under the first one).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["RunBusy", "RunSlot"]


class RunBusy(RuntimeError, ValueError):
    """A start refused because a run is already starting or going (a ``ValueError``, and the
    ``RuntimeError`` earlier versions raised)."""


class RunSlot:
    """``with slot.claim(busy):`` holds the slot for the block; ``busy()`` (called under the slot's
    lock) returns why starting is refused now, or ``""``."""

    def __init__(self, what: str = "a run") -> None:
        self.what = what
        self._lock = threading.Condition()
        self._holder: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._holder is not None

    @contextlib.contextmanager
    def claim(self, busy: Callable[[], str] = lambda: "") -> Iterator[None]:
        with self._lock:
            holder = self._holder
            if holder is not None:
                who = "this thread" if holder is threading.current_thread() else f"thread {holder.name!r}"
                raise RunBusy(f"{self.what} is being started by {who} now: one run at a time. Stop it or "
                              f"wait for it, then start again")
            reason = busy()
            if reason:
                raise RunBusy(reason)
            self._holder = threading.current_thread()
        try:
            yield
        finally:
            with self._lock:
                self._holder = None
                self._lock.notify_all()

    def wait_free(self, timeout: float | None = None) -> bool:
        """Wait until no start holds the slot (a thread that the holder started, before its own start)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._holder is None, timeout)
