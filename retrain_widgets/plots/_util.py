"""Small helpers shared by the plots: colours, nice limits, decimation, smoothing, PNG encoding."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ..core.smoothing import ema  # noqa: F401 - the one EMA, used by the plots through here

# One colour per meaning, used by every panel: blue = training, orange = new-task validation,
# purple = old task (forgetting), green = learning rate, brown = weight drift.
C_TRAIN = "#1f77b4"
C_VAL = "#e8710a"
C_OLD = "#8e44ad"
C_LR = "#2ca02c"
C_DRIFT = "#8c564b"
C_FROZEN = "#d2d2d2"
C_NO_DATA = "#b8b8b8"  # the dots of the alignment panel's cells with no value (not frozen)
C_FROZEN_TEXT = "#9a9a9a"
C_STAGE = "#3c3c3c"
C_CHANGE = "#8a8a8a"
C_GRID = "#e4e4e4"
C_TEXT = "#222222"
C_MUTED = "#6b6b6b"
C_HINT = "#b2182b"  # the alignment panel's "pulling against the old task" marks
HEAT_CMAP = "viridis"
ALIGN_CMAP = "RdBu"  # alignment with the old task: red -1 (against it) ... blue +1 (with it)

_NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
_LOG_NICE = (1.0, 2.0, 5.0, 10.0)


def style_axes(ax: Any, labelsize: float = 8.5, fixed: bool = True) -> None:
    """The house style of an axes: small grey spines on the left and bottom; with ``fixed`` no
    autoscaling (the live figure sets every limit itself)."""
    if fixed:
        ax.set_autoscale_on(False)
    ax.tick_params(labelsize=labelsize, colors=C_TEXT, length=3, width=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for spine in ax.spines.values():
        spine.set_color("#9a9a9a")
        spine.set_linewidth(0.8)


def nice_up(x: float, grid: tuple[float, ...] = _NICE) -> float:
    """The smallest "nice" number (``grid`` times a power of ten) at least ``x`` (``x > 0``)."""
    if not math.isfinite(x) or x <= 0:
        return 1.0
    e = 10.0 ** math.floor(math.log10(x))
    m = x / e
    for n in grid:
        if n >= m * (1 - 1e-9):
            return n * e
    return 10 * e


def nice_down(x: float, grid: tuple[float, ...] = _NICE) -> float:
    """The largest "nice" number at most ``x`` (``x > 0``)."""
    if not math.isfinite(x) or x <= 0:
        return 1.0
    e = 10.0 ** math.floor(math.log10(x))
    m = x / e
    for n in reversed(grid):
        if n <= m * (1 + 1e-9):
            return n * e
    return e


def log_nice_up(x: float) -> float:
    return nice_up(x, _LOG_NICE)


def log_nice_down(x: float) -> float:
    return nice_down(x, _LOG_NICE)


def linear_limits(lo: float, hi: float, head: float, floor_zero: bool = True) -> tuple[float, float]:
    """Nice linear limits around ``[lo, hi]`` with ``head`` (a share of the span) of head-room;
    the bottom is 0 when the data are non-negative and ``floor_zero``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    span = hi - min(lo, 0.0) if floor_zero else hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    top = hi + head * span
    top = nice_up(top) if top > 0 else -nice_down(-top) if top < 0 else span * head
    if floor_zero and lo >= 0:
        bottom = 0.0
    else:
        b = lo - head * span
        bottom = -nice_up(-b) if b < 0 else nice_down(b) if b > 0 else 0.0
    if top <= bottom:
        top = bottom + 1.0
    return bottom, top


def step_formatter(x_max: float) -> Callable[[float, object], str]:
    """Tick labels for steps on an axis reaching ``x_max``: 1,500 below 10k, else 25k, 1.5M."""

    def fmt(x: float, _pos: object = None) -> str:
        if x_max >= 1e6 and abs(x) >= 1e6:
            return f"{x / 1e6:g}M"
        if x_max >= 1e4 and x != 0:
            return f"{x / 1e3:g}k"
        return f"{x:,.0f}" if x == int(x) else f"{x:g}"

    return fmt


def fmt_sci(x: float, _pos: object = None) -> str:
    """Compact scientific labels for learning rates: 0, 1e-3, 2.5e-4."""
    if x == 0:
        return "0"
    m, e = f"{x:.1e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return f"{m}e{int(e)}"


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt_decade(x: float, _pos: object = None) -> str:
    """A log-axis label: ``10⁻³`` for powers of ten (Unicode, not the much slower mathtext),
    compact scientific otherwise."""
    if x > 0:
        k = math.log10(x)
        if abs(k - round(k)) < 1e-9:
            return "10" + str(int(round(k))).translate(_SUPERSCRIPT)
    return fmt_sci(x)


def fmt_plain(x: float, _pos: object = None) -> str:
    """Labels for a log axis of losses: plain numbers from 0.001 to 10,000 (0.05, 0.2, 500),
    powers of ten beyond (10⁻⁵, 2e-6)."""
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:g}"
    return fmt_decade(x)


def decade_ticks(lo: float, hi: float, most: int = 3) -> list[float]:
    """Powers of ten strictly inside ``(lo, hi)`` (at most ``most``, evenly thinned), or the
    geometric middle when there is none: labels never stick out of a narrow axis."""
    if not (lo > 0 and hi > lo):
        return []
    k0 = math.floor(math.log10(lo)) + 1
    k1 = math.ceil(math.log10(hi)) - 1
    ks = [k for k in range(k0, k1 + 1) if lo * (1 + 1e-9) < 10.0 ** k < hi * (1 - 1e-9)]
    if not ks:
        return [math.sqrt(lo * hi)]
    step = math.ceil(len(ks) / most)
    ks = ks[len(ks) % step // 2::step] if step > 1 else ks
    return [10.0 ** k for k in ks]


def fmt_value(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.4g}"


def finite_range(*arrays: np.ndarray, positive: bool = False) -> tuple[float, float]:
    """(min, max) of the finite (and, if asked, positive) values of all arrays; NaNs if none."""
    lo, hi = math.inf, -math.inf
    for a in arrays:
        if a is None or not len(a):
            continue
        a = np.asarray(a)
        m = np.isfinite(a)
        if positive:
            m &= a > 0
        if m.all():
            sel = a
        elif m.any():
            sel = a[m]
        else:
            continue
        lo = min(lo, float(sel.min()))
        hi = max(hi, float(sel.max()))
    if lo > hi:
        return math.nan, math.nan
    return lo, hi


def spans_decades(*arrays: np.ndarray, decades: float) -> bool:
    """Whether the positive values span more than ``decades`` from their 10th percentile to their
    maximum: a schedule that ends at 0 (cosine) stays linear, a geometric one (one-cycle) is log."""
    parts = [np.asarray(a, np.float64).reshape(-1) for a in arrays if a is not None and len(a)]
    if not parts:
        return False
    v = np.concatenate(parts)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 2:
        return False
    return float(v.max()) / float(np.percentile(v, 10)) > 10.0 ** decades


def bins_of(steps: np.ndarray, x0: float, width: float, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ascending ``steps`` into fixed bins of ``width`` from ``x0``: the index where each
    non-empty bin starts and the bin numbers of those bins."""
    idx = ((steps - x0) / width).astype(np.int64)
    np.clip(idx, 0, nbins - 1, out=idx)
    change = np.empty(len(idx), bool)
    change[0] = True
    np.not_equal(idx[1:], idx[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    return starts, idx[starts]


def envelope(steps: np.ndarray, values: np.ndarray, x0: float, width: float,
             nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Min/max envelope of a line in fixed step bins (at most ``2 * nbins`` points), plus each
    bin's centre and mean (for smoothing). Fixed bins keep old bins identical from frame to
    frame, so a growing line does not shimmer; extremes (loss spikes) always survive."""
    starts, _ = bins_of(steps, x0, width, nbins)
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1] = len(steps) - 1
    lo = np.fmin.reduceat(values, starts)
    hi = np.fmax.reduceat(values, starts)
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), starts)
    counts = np.add.reduceat(finite, starts, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    n = len(starts)
    xs = np.empty(2 * n)
    ys = np.empty(2 * n)
    xs[0::2] = steps[starts]
    xs[1::2] = steps[ends]
    ys[0::2] = lo
    ys[1::2] = hi
    keep = np.ones(2 * n, bool)
    keep[1::2] = starts != ends
    centres = 0.5 * (steps[starts] + steps[ends])
    return xs[keep], ys[keep], centres, means


def stride(n: int, most: int) -> slice:
    """A slice taking at most ``most`` of ``n`` rows, always including the last one."""
    if n <= most:
        return slice(None)
    k = math.ceil(n / most)
    return slice((n - 1) % k, None, k)


def encode_png(canvas: FigureCanvasAgg, compress_level: int = 1) -> bytes:
    """The canvas as an RGB PNG.

    Written directly (rows with filter type 0, one zlib stream): at level 1 this takes about
    half the time of Pillow's encoder (which tries a filter per row) and the file is smaller
    for a mostly flat dashboard."""
    rgba = np.asarray(canvas.buffer_rgba())
    return png_bytes(rgba, compress_level)


def png_bytes(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG of an ``h x w x 3`` or ``h x w x 4`` uint8 array (alpha is dropped: frames are opaque)."""
    h, w = pixels.shape[:2]
    rows = np.empty((h, 1 + 3 * w), np.uint8)
    rows[:, 0] = 0  # filter type "None"
    rows[:, 1:].reshape(h, w, 3)[...] = pixels[..., :3]
    data = zlib.compress(rows.data, compress_level)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def short_name(name: str, most: int) -> str:
    """``name`` cut to ``most`` characters, keeping its end (the informative part of a path)."""
    if len(name) <= most:
        return name
    return "…" + name[-(most - 1):]
