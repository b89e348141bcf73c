"""Timers around named methods, for the benchmarks' breakdowns (``--breakdown``).

::

    with timed(((StepProbes, "record_gradients", "gradient norms"),)) as (totals, calls):
        run_the_loop()
    totals["gradient norms"]   # seconds inside it, calls["gradient norms"] times

Each method is wrapped for the ``with`` block and put back after it. A piece called from inside
another is in both totals. Only calls from the thread named ``thread`` count, when one is named.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["timed"]


@contextlib.contextmanager
def timed(pieces: Sequence[tuple[Any, str, str]], thread: str | None = None
          ) -> Iterator[tuple[collections.Counter, collections.Counter]]:
    """``(totals, calls)`` by label of ``pieces`` (``(class, method name, label)``) while the block runs."""
    totals: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in pieces]

    def wrap(fn: Any, label: str) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if thread is not None and threading.current_thread().name != thread:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - t0
                calls[label] += 1
        return wrapper

    for (cls, name, label), (_, _, fn) in zip(pieces, saved):
        setattr(cls, name, wrap(fn, label))
    try:
        yield totals, calls
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
