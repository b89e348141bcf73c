"""Small static plots: the LR schedule preview and the LR range test.

Each size keeps one cached figure (cheap to redraw); a lock makes them safe to call from any
thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from ._util import (
    C_CHANGE,
    C_GRID,
    C_LR,
    C_MUTED,
    C_TEXT,
    C_TRAIN,
    C_VAL,
    encode_png,
    envelope,
    finite_range,
    fmt_decade,
    fmt_sci,
    log_nice_down,
    log_nice_up,
    spans_decades,
    step_formatter,
    style_axes,
)

__all__ = ["lr_preview_png", "lr_finder_png"]

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int, int], tuple[Figure, FigureCanvasAgg, Any]] = {}
_DPI = 100


def _axes(kind: str, width_px: int, height_px: int) -> tuple[Figure, FigureCanvasAgg, Any]:
    """The cached figure of this kind and size, its axes cleared and styled."""
    width_px, height_px = max(160, int(width_px)), max(100, int(height_px))
    key = (kind, width_px, height_px)
    if key not in _CACHE:
        fig = Figure(figsize=((width_px + 0.01) / _DPI, (height_px + 0.01) / _DPI), dpi=_DPI, facecolor="white")
        canvas = FigureCanvasAgg(fig)
        left, bottom, right, top = 58, 34, 12, 26
        ax = fig.add_axes((left / width_px, bottom / height_px, 1 - (left + right) / width_px,
                           1 - (bottom + top) / height_px))
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = (fig, canvas, ax)
    fig, canvas, ax = _CACHE[key]
    ax.clear()
    ax.set_xscale("linear")
    ax.set_yscale("linear")
    style_axes(ax, labelsize=8, fixed=False)
    ax.grid(True, color=C_GRID, linewidth=0.7)
    ax.set_axisbelow(True)
    return fig, canvas, ax


def lr_preview_png(lrs: Sequence[float], *, title: str = "", width_px: int = 420, height_px: int = 200,
                   marker_step: int | None = None, steps: Sequence[int] | None = None) -> bytes:
    """PNG of a learning-rate schedule: ``lrs[i]`` is the LR at step ``i``, or at ``steps[i]`` when given
    (a decimated schedule, :func:`~retrain_widgets.core.lr_preview.sampled`); log y when it spans
    more than two decades. ``marker_step`` marks a step (e.g. where a run is now)."""
    y = np.asarray(lrs, np.float64).reshape(-1)
    at = np.arange(len(y), dtype=np.float64) if steps is None else np.asarray(steps, np.float64).reshape(-1)
    with _LOCK:
        fig, canvas, ax = _axes("lr_preview", width_px, height_px)
        ax.set_title(title or "Learning rate schedule", loc="left", fontsize=9.5, fontweight="bold",
                     color=C_TEXT, pad=5)
        n = len(y)
        lo, hi = finite_range(y, positive=True)
        if n == 0 or not math.isfinite(hi):
            return _empty_png(ax, canvas, "no schedule to show")
        x, last = at, int(at[-1])
        nb = max(2, int(width_px))
        if n > 2 * nb:
            x, y_plot, _, _ = envelope(x, y, 0.0, max(last, 1) / nb * (1 + 1e-9), nb)
        else:
            y_plot = y
        if spans_decades(y, decades=2):
            ax.set_yscale("log")
            bottom = log_nice_down(max(lo, hi * 1e-9) / 1.5)
            ax.set_ylim(bottom, log_nice_up(hi * 1.5))
            ax.yaxis.set_major_locator(LogLocator(numticks=4))
            ax.yaxis.set_major_formatter(FuncFormatter(fmt_decade))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            bottom = 0.0
            ax.set_ylim(0, hi * 1.12)
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_formatter(FuncFormatter(fmt_sci))
        ax.fill_between(x, np.maximum(y_plot, bottom), bottom, color=C_LR, alpha=0.12, linewidth=0)
        ax.plot(x, y_plot, color=C_LR, lw=1.8)
        ax.set_xlim(0, max(last, 1))
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(step_formatter(last)))
        ax.set_xlabel("step", fontsize=8.5, color=C_TEXT, labelpad=1)
        ax.annotate(f"max {fmt_sci(hi)} · end {fmt_sci(float(y[-1]))}", (1.0, 0.0), xycoords="axes fraction",
                    xytext=(0, -17), textcoords="offset points", ha="right", va="top", fontsize=8, color=C_MUTED)
        if marker_step is not None and 0 <= marker_step <= last:
            ax.axvline(marker_step, color=C_VAL, lw=1.2, ls=(0, (4, 2)))
            ax.plot([marker_step], [y[min(int(np.searchsorted(at, marker_step)), n - 1)]], "o", color=C_VAL, ms=5)
        canvas.draw()
        return encode_png(canvas, 6)


def lr_finder_png(result: Any, width_px: int = 420, height_px: int = 220) -> bytes:
    """PNG of an LR range test (:class:`~retrain_widgets.core.engine.LRFinderResult`): loss
    against LR on a log axis, raw as faint dots, smoothed as a line, the suggestion marked."""
    lrs = np.asarray(getattr(result, "lrs", ()), np.float64)
    raw = np.asarray(getattr(result, "losses", ()), np.float64)
    smooth = np.asarray(getattr(result, "smoothed", ()), np.float64)
    suggestion = float(getattr(result, "suggestion", math.nan) or math.nan)
    div10 = float(getattr(result, "min_lr_div10", math.nan) or math.nan)
    diverged = bool(getattr(result, "diverged", False))
    with _LOCK:
        fig, canvas, ax = _axes("lr_finder", width_px, height_px)
        ax.set_title("LR range test" + (" · stopped when the loss diverged" if diverged else ""), loc="left",
                     fontsize=9.5, fontweight="bold", color=C_TEXT, pad=5)
        ok = np.isfinite(lrs) & (lrs > 0)
        if ok.sum() < 2:
            return _empty_png(ax, canvas, "no LR range test yet")
        if len(smooth) != len(lrs):
            smooth = raw
        ax.set_xscale("log")
        ax.set_xlim(lrs[ok].min(), lrs[ok].max())
        ax.xaxis.set_major_locator(LogLocator(numticks=6))
        ax.xaxis.set_major_formatter(FuncFormatter(fmt_decade))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("learning rate", fontsize=8.5, color=C_TEXT, labelpad=1)
        ax.set_ylabel("loss", fontsize=8.5, color=C_TEXT, labelpad=2)
        # y: from the smoothed minimum to the highest smoothed loss before it, with room; the
        # divergent tail leaves the plot instead of squashing the useful part
        s_ok = np.isfinite(smooth) & ok
        if s_ok.any():
            sm = np.where(s_ok, smooth, np.inf)
            i_min = int(np.argmin(sm))
            lo = float(smooth[i_min])
            hi = float(np.nanmax(np.where(s_ok[: i_min + 1], smooth[: i_min + 1], -np.inf)))
            if not math.isfinite(hi) or hi <= lo:
                hi = lo + max(abs(lo), 1e-3)
            pad = (hi - lo) * 0.12
            ax.set_ylim(lo - 1.5 * pad, hi + 3 * pad)
        ax.plot(lrs, raw, ".", color=C_TRAIN, alpha=0.3, ms=3, label="loss")
        ax.plot(lrs, smooth, "-", color=C_TRAIN, lw=1.9, label="smoothed")
        if math.isfinite(div10) and div10 > 0:
            ax.axvline(div10, color=C_CHANGE, lw=1.0, ls=(0, (1, 2)), label=f"min / 10: {fmt_sci(div10)}")
        if math.isfinite(suggestion) and suggestion > 0:
            ax.axvline(suggestion, color=C_VAL, lw=1.4, ls=(0, (4, 2)))
            ys = float(np.interp(math.log(suggestion), np.log(lrs[ok]), smooth[ok]))
            ax.plot([suggestion], [ys], "o", color=C_VAL, ms=6, zorder=3)
            ax.annotate(f"suggested {fmt_sci(suggestion)}", (suggestion, ys), xytext=(7, 9),
                        textcoords="offset points", fontsize=8.5, color=C_VAL, fontweight="bold")
        ax.legend(loc="lower left", fontsize=7.5, frameon=False, handlelength=1.4, borderaxespad=0.2,
                  labelcolor=C_MUTED)
        canvas.draw()
        return encode_png(canvas, 6)


def _empty_png(ax: Any, canvas: Any, text: str) -> bytes:
    """A panel that says there is nothing to draw yet, as PNG bytes."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color=C_MUTED)
    ax.set_xticks([])
    ax.set_yticks([])
    canvas.draw()
    return encode_png(canvas, 6)
