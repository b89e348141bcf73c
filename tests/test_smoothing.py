"""The one exponential moving average (core/smoothing.py) that the plots use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrain_widgets.core.smoothing import ema


def test_ema_is_bias_corrected_and_skips_nans():
    values = [4.0, float("nan"), 2.0, 1.0]
    out = ema(values, 0.9)
    assert out[0] == 4.0 and out[1] == 4.0  # a NaN holds the average
    avg = 0.0
    for n, x in enumerate([4.0, 2.0, 1.0], start=1):  # the LR finder's online form
        avg = 0.9 * avg + 0.1 * x
        expected = avg / (1 - 0.9**n)
    assert out[3] == pytest.approx(expected, rel=1e-12)
    assert math.isnan(ema([float("nan"), 1.0], 0.5)[0])
    np.testing.assert_array_equal(ema([3.0, 1.0, 2.0], 0.0), [3.0, 1.0, 2.0])


def test_ema_refuses_a_factor_outside_0_1():
    with pytest.raises(ValueError, match=r"smooth must be in \[0, 1\), got 1.0"):
        ema([1.0], 1.0)


def test_the_plots_use_the_core_ema():
    from retrain_widgets.plots import _util

    assert _util.ema is ema
