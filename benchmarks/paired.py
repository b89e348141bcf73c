"""Paired, interleaved measurement, shared by the benchmarks.

The bare loop (A) and the measured code (B) run alternately in ABBA order (A B, B A, A B, ...),
so that the slow phases of a shared machine hit both alike; each pair gives one ratio of rates,
``A steps/s / B steps/s``. Two estimates come out:

* the **median of the paired ratios**: the headline ``... overhead ratio: X`` of every benchmark;
* the **best-runs ratio**, best A rate / best B rate (as ``timeit`` reports the minimum: noise only
  ever slows a run down), printed on its own line ``... best-runs ratio: Y``.

When the two disagree by more than a target's margin, the machine was too noisy to tell.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["interleave", "ratios"]

A = TypeVar("A")
B = TypeVar("B")


def interleave(run_a: Callable[[], A], run_b: Callable[[], B], repeats: int) -> list[tuple[A, B]]:
    """``repeats`` pairs ``(run_a(), run_b())``, run in ABBA order."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    pairs: list[tuple[A, B]] = []
    for rep in range(repeats):
        if rep % 2 == 0:
            a = run_a()
            b = run_b()
        else:
            b = run_b()
            a = run_a()
        pairs.append((a, b))
    return pairs


def ratios(rates: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(median of the paired ratios ``a / b``, best-runs ratio ``max(a) / max(b)``) of pairs of
    rates (steps/s: higher is faster)."""
    if not rates:
        raise ValueError("no pairs of rates to compare")
    median = statistics.median(a / b for a, b in rates)
    best = max(a for a, _ in rates) / max(b for _, b in rates)
    return median, best
