"""The exponential moving average used wherever a noisy series is smoothed: the dashboard's
train-loss curve, the comparison figure and the LR finder's loss."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["ema"]


def ema(values: Iterable[float], smooth: float) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing and the LR
    finder of fastai): ``e = smooth * e + (1 - smooth) * x``, divided by ``1 - smooth ** n``
    over the ``n`` values seen. NaNs are skipped (the average holds; NaN before the first
    finite value). ``smooth`` in ``[0, 1)``: 0 is no smoothing."""
    a = float(smooth)
    if not 0.0 <= a < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth!r}")
    data = np.asarray(values, np.float64).reshape(-1)
    out = np.empty(len(data))
    e = 0.0
    w = 0.0
    b = 1.0 - a
    for i, x in enumerate(data.tolist()):
        if x == x:
            e = a * e + b * x
            w = a * w + b
        out[i] = e / w if w > 0 else math.nan
    return out
