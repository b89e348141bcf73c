"""The live training dashboard: one reused matplotlib figure, drawn as PNG frames.

Frames are drawn from the training thread, so only matplotlib's object API is used (a
:class:`~matplotlib.figure.Figure` with an Agg canvas; pyplot is not thread-safe).

What keeps a frame cheap however long the run (see ``bench.frame_times``):

* one figure for the whole run: artists are created once and updated with ``set_data`` /
  ``set_array`` / ``set_verts``; the layout is fixed (no ``tight_layout`` per frame);
* decimation: lines are min/max envelopes in fixed step bins (at most ``max_points`` points and
  no more than two per pixel column), the heatmap is pooled to at most ``max_columns`` columns
  (and no more than its width in pixels), so cost does not grow with the history;
* blitting: everything that changes only with the axis limits (axes, ticks, labels, legends,
  markers, colourbar, frozen-layer bands) is a background drawn once and copied; a frame
  restores it and draws only the data artists. Limits stay fixed until data leave them and
  then grow with head-room (x to the run's ``total_steps`` or the next nice number above
  1.5x the last step; y to nice numbers), so full redraws are rare; ``full_redraws`` counts
  them;
* text that changes every frame (the status line) and the many layer names are drawn with
  Pillow (same font, ~5x cheaper per glyph than matplotlib's text), the heatmap cells are
  copied into their pixels with numpy (identical to ``interpolation="nearest"``), and the PNG
  is written directly at zlib level 1.

``LiveFigure.full_redraws`` and ``bench.frame_times`` keep the cost honest.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import LogNorm, to_rgba_array
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullLocator
from matplotlib.transforms import blended_transform_factory
from PIL import Image, ImageDraw, ImageFont

from ._util import (
    C_CHANGE,
    C_DRIFT,
    C_FROZEN,
    C_FROZEN_TEXT,
    C_GRID,
    C_LR,
    C_MUTED,
    C_OLD,
    C_STAGE,
    C_TEXT,
    C_TRAIN,
    C_VAL,
    HEAT_CMAP,
    bins_of,
    decade_ticks,
    ema,
    encode_png,
    envelope,
    finite_range,
    fmt_decade,
    fmt_plain,
    fmt_sci,
    fmt_value,
    linear_limits,
    log_nice_down,
    log_nice_up,
    nice_up,
    short_name,
    spans_decades,
    step_formatter,
    stride,
)

if TYPE_CHECKING:
    from ..core.history import HistorySnapshot

__all__ = ["LiveFigure"]

_UNIT_METRICS = {"f1", "auc", "roc_auc", "precision", "recall", "iou", "dice"}
_RECENT_GRAD_ROWS = 20
_DRIFT_DECADES = 4


def _unit_metric(name: str | None) -> bool:
    """Metrics that live in [0, 1] (accuracy and friends): their axis is fixed to [0, 1.02]."""
    if not name:
        return False
    n = str(name).lower()
    return "acc" in n or n in _UNIT_METRICS


@dataclass(frozen=True)
class _Layout:
    """Everything the static background depends on. A frame whose layout equals the previous
    one is blitted; any difference means a full redraw."""

    waiting: bool
    xlim: tuple[float, float]
    loss_log: bool = False
    loss_ylim: tuple[float, float] = (0.0, 1.0)
    metric_ylim: tuple[float, float] = (0.0, 1.02)
    old_ylim: tuple[float, float] | None = None  # a second y axis when the old metric differs
    metric_name: str = ""
    old_name: str = ""
    lr_log: bool = False
    lr_ylim: tuple[float, float] = (0.0, 1.0)
    groups: int = 0  # thin lines for other parameter groups
    layers: tuple[str, ...] = ()
    frozen: tuple[bool, ...] = ()
    norm: tuple[float, float] = (1e-4, 1.0)
    drift_lim: tuple[float, float] = (1e-4, 1.0)
    markers: tuple[tuple[float, str, str], ...] = ()
    present: frozenset[str] = field(default_factory=frozenset)
    title: str = ""
    final: bool = False


class _Rects:
    """The fixed layout, computed once from pixel margins (figure fractions)."""

    def __init__(self, w: float, h: float) -> None:
        def r(x0: float, y0: float, ww: float, hh: float) -> list[float]:
            return [x0 / w, y0 / h, max(ww, 1) / w, max(hh, 1) / h]

        top = h - 50  # title row + panel titles
        bottom = 44  # tick labels + axis label
        gap = 30  # panel title between stacked panels
        lx0 = 62
        lx1 = int(w * 0.445)
        avail = top - bottom - 2 * gap
        h_loss, h_met = avail * 0.47, avail * 0.31
        h_lr = avail - h_loss - h_met
        self.loss = r(lx0, top - h_loss, lx1 - lx0, h_loss)
        self.metric = r(lx0, bottom + h_lr + gap, lx1 - lx0, h_met)
        self.lr = r(lx0, bottom, lx1 - lx0, h_lr)
        self.top_px, self.bottom_px = top, bottom
        # right block: [labels | heatmap | grad bars | drift bars]
        right0 = lx1 + 54  # room for the old-metric axis on the right of the metrics panel
        self.label_w = max(80, int(w * 0.118))
        hx0 = right0 + self.label_w
        rest = (w - 14) - hx0
        bar_w = max(40, int(rest * 0.2))
        gap_heat, gapx = 16, 9  # the heatmap's last step label needs room beside the colourbar's
        heat_w = rest - 2 * bar_w - gap_heat - gapx
        self.label_x0 = right0
        self.heat = r(hx0, bottom, heat_w, top - bottom)
        self.gbar = r(hx0 + heat_w + gap_heat, bottom, bar_w, top - bottom)
        self.drift = r(hx0 + heat_w + gap_heat + gapx + bar_w, bottom, bar_w, top - bottom)
        self.cbar = r(hx0 + heat_w + gap_heat, bottom - 11, bar_w, 7)
        self.heat_px = (heat_w, top - bottom)
        self.line_px = lx1 - lx0
        self.w, self.h = w, h


class LiveFigure:
    """A dashboard of a retraining run, rendered as PNG frames from history snapshots.

    Panels: loss (raw, smoothed, validation; log scale when it spans more than 1.5 decades),
    validation and old-task metric, learning rate (per group when groups differ), a per-layer
    gradient-norm heatmap (layers x steps, input side at the bottom, frozen layers grey), and,
    aligned with its rows, bars of each layer's recent gradient norm and weight drift
    ``||w - w0|| / ||w0||``. Stage changes are dashed vertical lines, other changes (freeze,
    unfreeze, LR) dotted ones.

    Parameters
    ----------
    width_px, height_px, dpi
        Frame size in pixels and resolution (font sizes are in points, so ``dpi`` scales text).
    smooth
        EMA factor of the smoothed loss, computed on the decimated points.
    max_points
        Most points a line holds (min/max envelope beyond that).
    max_columns
        Most columns of the heatmap (step bins averaged).
    title
        Shown at the top left; the run's loss name is added.

    ``render`` is safe to call from any thread (one frame at a time); ``full_redraws`` counts the
    frames that redrew the background, ``last_frame_seconds`` is the wall time of the last frame.
    The data artists are attributes (``loss_line``, ``loss_smooth_line``, ``heatmap`` ...).
    """

    def __init__(self, width_px: int = 1000, height_px: int = 560, dpi: int = 100, smooth: float = 0.9,
                 max_points: int = 1000, max_columns: int = 500, title: str = "") -> None:
        if width_px < 400 or height_px < 260:
            raise ValueError(f"LiveFigure needs at least 400 x 260 pixels, got {width_px} x {height_px}")
        if not 0 <= smooth < 1:
            raise ValueError(f"smooth must be in [0, 1), got {smooth}")
        if max_points < 4 or max_columns < 1:
            raise ValueError(f"max_points must be >= 4 and max_columns >= 1, got {max_points}, {max_columns}")
        self.width_px, self.height_px, self.dpi = int(width_px), int(height_px), int(dpi)
        self.smooth = float(smooth)
        self.max_points = int(max_points)
        self.max_columns = int(max_columns)
        self.title = title
        self.full_redraws = 0
        self.frames = 0
        self.last_frame_seconds = 0.0
        self._lock = threading.RLock()
        self._build()
        self.reset()

    # ================================================================== public
    def reset(self) -> None:
        """Forget axis limits and the background (a new run starts from scratch)."""
        with self._lock:
            self._layout: _Layout | None = None
            self._background: Any = None
            self._last_step = -math.inf
            self._pooler = _Pooler()

    def render(self, snapshot: HistorySnapshot, frozen: Sequence[str] = ()) -> bytes:
        """PNG bytes of the current frame (blitted unless the background must change)."""
        with self._lock:
            t0 = time.perf_counter()
            layout, data = self._compute(snapshot, frozen, final=False)
            if layout != self._layout or self._background is None:
                self._full_draw(layout, data)
            else:
                self.canvas.restore_region(self._background)
                self._set_data(layout, data)
            self._draw_animated()
            png = encode_png(self.canvas, 1)
            self.frames += 1
            self.last_frame_seconds = time.perf_counter() - t0
            return png

    def render_final(self, snapshot: HistorySnapshot, frozen: Sequence[str] = ()) -> bytes:
        """A careful full redraw for the static output at the end of a run: limits fitted to the
        data, more layer labels, better PNG compression. The next ``render`` starts afresh."""
        with self._lock:
            t0 = time.perf_counter()
            layout, data = self._compute(snapshot, frozen, final=True)
            self._full_draw(layout, data)
            self._draw_animated()
            png = encode_png(self.canvas, 6)
            self._layout = None
            self._background = None
            self.last_frame_seconds = time.perf_counter() - t0
            return png

    # ================================================================== building (once)
    def _build(self) -> None:
        w, h, dpi = self.width_px, self.height_px, self.dpi
        # The layout is designed in "reference pixels" for 1000 x 560; another size scales fonts
        # and margins together (through the dpi), so a small frame is a smaller copy, not a jumble.
        self._scale = sc = min(w / 1000, h / 560)
        dpi_eff = dpi * sc
        self.fig = Figure(figsize=((w + 0.01) / dpi_eff, (h + 0.01) / dpi_eff), dpi=dpi_eff, facecolor="white")
        self.canvas = FigureCanvasAgg(self.fig)
        w, h = w / sc, h / sc
        self._rects = R = _Rects(w, h)
        fig = self.fig

        self.ax_loss = fig.add_axes(R.loss)
        self.ax_metric = fig.add_axes(R.metric, sharex=self.ax_loss)
        self.ax_lr = fig.add_axes(R.lr, sharex=self.ax_loss)
        self.ax_old = self.ax_metric.twinx()
        self.ax_heat = fig.add_axes(R.heat)
        self.ax_gbar = fig.add_axes(R.gbar, sharey=self.ax_heat)
        self.ax_drift = fig.add_axes(R.drift, sharey=self.ax_heat)
        self.cax = fig.add_axes(R.cbar)
        self._time_axes = (self.ax_loss, self.ax_metric, self.ax_lr)

        for ax in (*self._time_axes, self.ax_old, self.ax_heat, self.ax_gbar, self.ax_drift):
            ax.set_autoscale_on(False)
            ax.tick_params(labelsize=8.5, colors=C_TEXT, length=3, width=0.8)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            for spine in ax.spines.values():
                spine.set_color("#9a9a9a")
                spine.set_linewidth(0.8)
        for ax in self._time_axes:
            ax.grid(True, color=C_GRID, linewidth=0.7)
            ax.set_axisbelow(True)
            ax.xaxis.set_major_locator(MaxNLocator(6, integer=True, steps=[1, 2, 2.5, 5, 10]))
        self.ax_old.spines["right"].set_visible(True)
        self.ax_old.spines["left"].set_visible(False)
        self.ax_loss.tick_params(labelbottom=False)
        self.ax_metric.tick_params(labelbottom=False)
        self.ax_lr.set_xlabel("step", fontsize=9, color=C_TEXT, labelpad=2)
        self.ax_lr.yaxis.set_major_locator(MaxNLocator(3))

        title_kw = dict(loc="left", fontsize=10.5, fontweight="bold", color=C_TEXT, pad=5)
        self.ax_loss.set_title("Loss", **title_kw)
        self.ax_metric.set_title("Metrics", **title_kw)
        self.ax_lr.set_title("Learning rate", **title_kw)

        # ---- data artists (animated: drawn per frame over the cached background)
        anim: dict[str, Any] = dict(animated=True)
        self.loss_line, = self.ax_loss.plot([], [], color=C_TRAIN, lw=0.7, alpha=0.28, **anim)
        self.loss_smooth_line, = self.ax_loss.plot([], [], color=C_TRAIN, lw=2.0, **anim)
        self.val_loss_line, = self.ax_loss.plot([], [], color=C_VAL, lw=1.6, marker="o", ms=4.5, **anim)
        self.val_metric_line, = self.ax_metric.plot([], [], color=C_VAL, lw=1.6, marker="o", ms=4.5, **anim)
        self.old_metric_line, = self.ax_metric.plot([], [], color=C_OLD, lw=1.4, ls="--", marker="s", ms=4,
                                                    **anim)
        self.old_metric_line2, = self.ax_old.plot([], [], color=C_OLD, lw=1.4, ls="--", marker="s", ms=4,
                                                  **anim)
        self.lr_line, = self.ax_lr.plot([], [], color=C_LR, lw=2.0, **anim)
        self.group_lines: list[Any] = []

        self.cmap = colormaps[HEAT_CMAP].with_extremes(bad=C_FROZEN)
        self.norm = LogNorm(1e-4, 1.0)
        # colours are looked up here (a 256-entry table on log values), so the image and the bars
        # hold RGBA and matplotlib does no normalisation per frame
        self._lut = self.cmap(np.linspace(0, 1, 256), bytes=True)
        self._bad = np.array(to_rgba_array(C_FROZEN)[0] * 255, np.uint8)
        self.heatmap = self.ax_heat.imshow(np.zeros((1, 1, 4), np.uint8), origin="lower", aspect="auto",
                                           interpolation="nearest", extent=(0, 1, -0.5, 0.5), animated=True)
        self.ax_heat.set_xlabel("step", fontsize=9, color=C_TEXT, labelpad=2)
        self.ax_heat.xaxis.set_major_locator(MaxNLocator(4, integer=True, steps=[1, 2, 2.5, 5, 10]))
        self.ax_heat.tick_params(axis="y", length=0, pad=3)
        self.ax_heat.set_facecolor("#fafafa")

        # bars are placed in axes fractions (an affine transform: one fast collection draw)
        gb = self.ax_gbar.transAxes
        db = self.ax_drift.transAxes
        band_kw: dict[str, Any] = dict(facecolor="#f1f1f1", edgecolor="#c4c4c4", hatch="////", linewidth=0)
        self._frozen_gbar = PolyCollection([], transform=gb, **band_kw)
        self._frozen_drift = PolyCollection([], transform=db, **band_kw)
        self.ax_gbar.add_collection(self._frozen_gbar, autolim=False)
        self.ax_drift.add_collection(self._frozen_drift, autolim=False)
        self.grad_bars = PolyCollection([], transform=gb, linewidth=0, **anim)
        self.drift_bars = PolyCollection([], transform=db, facecolor=C_DRIFT, linewidth=0, **anim)
        self.ax_gbar.add_collection(self.grad_bars, autolim=False)
        self.ax_drift.add_collection(self.drift_bars, autolim=False)
        for ax in (self.ax_gbar, self.ax_drift):
            ax.set_xscale("log")
            ax.tick_params(axis="y", left=False, labelleft=False)
            ax.grid(True, axis="x", color=C_GRID, linewidth=0.7)
            ax.set_axisbelow(True)
        self.ax_gbar.tick_params(axis="x", labelbottom=False)

        self._cbar_map = ScalarMappable(norm=self.norm, cmap=self.cmap)
        self.colorbar = fig.colorbar(self._cbar_map, cax=self.cax, orientation="horizontal")
        self.colorbar.outline.set_linewidth(0.5)
        self.cax.tick_params(labelsize=7.5, length=2, pad=1)
        self.colorbar.set_label("")

        # ---- markers (static: part of the background)
        self._stage_lines = {}
        self._change_lines = {}
        for ax in self._time_axes:
            tr = blended_transform_factory(ax.transData, ax.transAxes)
            self._stage_lines[ax] = ax.add_collection(
                LineCollection([], transform=tr, colors=C_STAGE, linestyles=(0, (5, 3)), linewidths=1.1,
                               zorder=1.5), autolim=False)
            self._change_lines[ax] = ax.add_collection(
                LineCollection([], transform=tr, colors=C_CHANGE, linestyles=(0, (1, 2)), linewidths=1.0,
                               zorder=1.5), autolim=False)
        self._marker_texts: list[Any] = []

        # ---- texts
        px = 1 / w
        py = 1 / h
        self.title_text = fig.text(14 * px, 1 - 17 * py, "", ha="left", va="center", fontsize=12.5,
                                   fontweight="bold", color=C_TEXT)
        self._stamper = _Stamper(dpi_eff)
        self.row_labels: list[tuple[int, str, bool]] = []  # (row, text, frozen), drawn by Pillow
        self._row_fs = 7.0
        self._status_parts: list[str] = []
        self._title_right = 0.0
        self.status = ""
        ry = R.top_px + 5
        self.fig.text(R.label_x0 * px, ry * py, "Gradient norm per layer (log colour)", ha="left", va="bottom",
                      fontsize=10.5, fontweight="bold", color=C_TEXT)
        gx = R.gbar[0] + R.gbar[2] / 2
        dx = R.drift[0] + R.drift[2] / 2
        self.fig.text(gx, ry * py, "recent grad", ha="center", va="bottom", fontsize=9, fontweight="bold",
                      color=C_TEXT)
        self.fig.text(dx, ry * py, "drift", ha="center", va="bottom", fontsize=9, fontweight="bold",
                      color=C_TEXT)
        self.fig.text(R.label_x0 * px, (R.bottom_px - 20) * py, "▲ output  ▼ input\n❄ grey: frozen", ha="left", va="center",
                      fontsize=7.5, color=C_MUTED, linespacing=1.25)
        self.fig.text(dx, 5 * py, "‖w−w₀‖ / ‖w₀‖", ha="center", va="bottom", fontsize=7.5, color=C_MUTED)
        self.waiting_text = self.ax_loss.text(0.5, 0.5, "waiting for the first steps…", transform=self.ax_loss.transAxes,
                                              ha="center", va="center", fontsize=13, color=C_MUTED, visible=False)
        self._legends: list[Any] = []

    # ================================================================== per frame: numbers
    def _compute(self, snap: HistorySnapshot, frozen: Sequence[str], final: bool) -> tuple[_Layout, dict[str, Any]]:
        meta: Mapping[str, Any] = snap.meta or {}
        s_loss, v_loss = snap.series("train_loss")
        waiting = len(s_loss) == 0
        last = float(s_loss[-1]) if not waiting else 0.0
        prev = self._layout
        if last < self._last_step:  # a new run
            self._pooler = _Pooler()
        if final or prev is None or prev.final or last < self._last_step:
            prev = None
        self._last_step = last
        total = _int(meta.get("total_steps"))
        d: dict[str, Any] = {"last": last, "total": total, "meta": meta}

        # ---- x: fixed until the data leave it
        if final:
            x1 = max(last, 1.0)
        else:
            want = float(total) if total > 0 and last <= total else None
            x1p = prev.xlim[1] if prev is not None else None
            if x1p is not None and last <= x1p and (want is None or x1p == want):
                x1 = x1p
            else:
                x1 = want if want is not None else nice_up(max(last * 1.5, 10.0))
        x0 = 0.0
        xlim = (x0, x1)

        # ---- loss
        nb = max(2, min(self.max_points // 2, int(self._rects.line_px * self._scale)))
        width = (x1 - x0) / nb
        v = np.where(np.isfinite(v_loss), v_loss, np.nan).astype(np.float64)
        if len(s_loss) > self.max_points:
            xs, ys, cx, means = envelope(s_loss, v, x0, width, nb)
            sm_x, sm_y = cx, ema(means, self.smooth)
        else:
            xs, ys = s_loss, v
            sm_x, sm_y = s_loss, ema(v, self.smooth)
        d["loss"] = (xs, ys)
        d["smooth"] = (sm_x, sm_y)
        d["val_loss"] = snap.series("val_loss")
        d["val_metric"] = snap.series("val_metric")
        d["old_metric"] = snap.series("old_metric")

        raw_lo, raw_hi = finite_range(ys, d["val_loss"][1])
        sig_lo, sig_hi = finite_range(sm_y, d["val_loss"][1])
        # a positive loss is shown on a log scale from the start: a falling loss then stays inside
        # the axes for decades, and the frame stays a cheap blit (a scale change is a full redraw)
        loss_log = bool(sig_lo > 0 and (not final or sig_hi / sig_lo > 10 ** 1.5 or (prev is not None and prev.loss_log)))
        if waiting or not math.isfinite(raw_lo):
            loss_log, loss_ylim = False, (0.0, 1.0)
        elif loss_log:
            need_lo = max(raw_lo, sig_lo / 10) if raw_lo > 0 else sig_lo / 10
            if prev is not None and prev.loss_log and prev.loss_ylim[0] <= need_lo and prev.loss_ylim[1] >= raw_hi:
                loss_ylim = prev.loss_ylim
            else:
                f = 1.05 if final else 1.3
                # a falling loss keeps falling: start with two decades of room below the first values,
                # and when it leaves the bottom, leave it more room
                if final:
                    down = f
                elif prev is not None and prev.loss_log and need_lo < prev.loss_ylim[0]:
                    down = 10.0
                else:
                    down = 1000.0
                loss_ylim = (log_nice_down(need_lo / down), log_nice_up(raw_hi * f))
        else:
            if (prev is not None and not prev.loss_log and prev.loss_ylim[0] <= raw_lo
                    and prev.loss_ylim[1] >= raw_hi):
                loss_ylim = prev.loss_ylim
            else:
                loss_ylim = linear_limits(raw_lo, raw_hi, 0.03 if final else 0.1)

        # ---- metrics
        metric_name = str(meta.get("metric") or "")
        has_old = len(d["old_metric"][0]) > 0
        old_name = str(meta.get("old_metric") or (metric_name if has_old else ""))
        old_axis = has_old or (bool(meta.get("has_old_val")) and bool(meta.get("old_metric")) and not final)
        same_axis = (not old_axis or old_name == metric_name
                     or (_unit_metric(old_name) and _unit_metric(metric_name)))
        metric_ylim = self._metric_limits(prev.metric_ylim if prev else None, metric_name,
                                          d["val_metric"][1], None if not same_axis else d["old_metric"][1], final)
        old_ylim = None
        if not same_axis:
            old_ylim = self._metric_limits(prev.old_ylim if prev else None, old_name, d["old_metric"][1], None, final)

        # ---- learning rate (top group bold, others thin when they differ)
        s_lr, v_lr = snap.series("lr")
        g_steps, g_names, g_vals = snap.layer_series("group_lr")
        if not len(s_lr) and g_vals.size:
            s_lr, v_lr = g_steps, g_vals[:, -1]
        v_lr = np.asarray(v_lr, np.float64)
        if len(s_lr) > self.max_points:
            lx, ly, _, _ = envelope(s_lr, v_lr, x0, width, nb)
        else:
            lx, ly = s_lr, v_lr
        d["lr"] = (lx, ly)
        groups = []
        if g_vals.ndim == 2 and g_vals.shape[1] > 1 and g_vals.shape[0]:
            top = g_vals[:, -1]
            tol = 1e-12 + 1e-6 * np.abs(top)
            rows = stride(g_vals.shape[0], self.max_points // 2)
            for j in range(g_vals.shape[1] - 1):
                col = g_vals[:, j]
                if np.any(np.abs(col - top) > tol):
                    groups.append((g_names[j], g_steps[rows], col[rows].astype(np.float64)))
        d["groups"] = groups
        lr_lo, lr_hi = finite_range(ly, *[g[2] for g in groups], positive=True)
        planned = _planned_lr(meta)  # the configured (peak) LR: a warm-up then redraws nothing
        if planned and math.isfinite(lr_hi) and not final:
            lr_hi = max(lr_hi, planned)
        lr_log = bool(lr_lo > 0 and ((prev is not None and prev.lr_log)
                                     or spans_decades(ly, *[g[2] for g in groups], decades=2)))
        if not math.isfinite(lr_hi):
            lr_log, lr_ylim = False, (0.0, 1.0)
        elif lr_log:
            if prev is not None and prev.lr_log and prev.lr_ylim[0] <= lr_lo and prev.lr_ylim[1] >= lr_hi:
                lr_ylim = prev.lr_ylim
            else:
                f = 1.1 if final else 1.6
                lr_ylim = (log_nice_down(lr_lo / f), log_nice_up(lr_hi * f))
        else:
            if prev is not None and not prev.lr_log and prev.lr_ylim[1] >= lr_hi:
                lr_ylim = prev.lr_ylim
            else:
                lr_ylim = (0.0, nice_up(lr_hi * (1.08 if final else 1.5)))

        # ---- layers: heatmap, bars, frozen rows
        gs, names, G = snap.layer_series("grad_norm")
        if not names:
            names = tuple(str(n) for n in (meta.get("layers") or ()))
            G = np.empty((0, len(names)), np.float32)
            gs = np.empty(0)
        L = len(names)
        fz = set(frozen)
        last_row = G[-1] if len(G) else np.zeros(L)
        no_grad = (~np.isfinite(last_row)).tolist()
        frozen_flags = tuple(a or n in fz for a, n in zip(no_grad, names)) if fz else tuple(no_grad)
        d["names"] = names
        heat = None
        norm = prev.norm if prev is not None else (1e-4, 1.0)
        if len(gs) and L:
            ncol = max(1, min(self.max_columns, int(self._rects.heat_px[0] * self._scale)))
            hw = (x1 - x0) / ncol
            b, sums, counts = self._pooler.pool(gs, G, x0, hw, ncol)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            b0, b1 = int(b.min()), int(b.max())
            pos = np.full(b1 - b0 + 1, -1, np.int64)
            pos[b - b0] = np.arange(len(b))
            pos = np.maximum.accumulate(pos)  # an empty bin repeats its left neighbour
            img = means[pos].T  # layers x columns, input side first (origin="lower")
            flat = img.ravel()[::max(1, img.size // 20000)]  # a sample is plenty for two percentiles
            pos_vals = flat[np.isfinite(flat) & (flat > 0)]
            if pos_vals.size:
                p_lo, p_hi = np.percentile(pos_vals, [1, 99])
                p_lo, p_hi = float(p_lo), float(max(p_hi, p_lo * 1.0001))
                # live, the colour scale only widens (a change redraws the colour bar); the final
                # frame fits it to the data
                if (prev is None or p_lo < norm[0] or p_hi > norm[1]
                        or (final and (norm[0] < p_lo / 1e3 or norm[1] > p_hi * 1e3))):
                    k_lo, k_hi = math.floor(math.log10(p_lo)), math.ceil(math.log10(p_hi))
                    if prev is None and not final:  # gradients shrink as a run settles: room below
                        k_lo -= 2
                    elif prev is not None and not final:  # regrowing: one decade of room that way
                        k_lo -= p_lo < norm[0]
                        k_hi += p_hi > norm[1]
                    norm = (10.0 ** k_lo, 10.0 ** max(k_hi, k_lo + 1))
            img = np.where(img <= 0, norm[0] * 0.5, img)  # zero gradient: the lowest colour, not "frozen"
            heat = (img.astype(np.float32), (x0 + b0 * hw, x0 + (b1 + 1) * hw, -0.5, L - 0.5))
            rec = G[-_RECENT_GRAD_ROWS:]
            rf = np.isfinite(rec)
            with np.errstate(invalid="ignore", divide="ignore"):
                grad_recent = np.where(rf.any(0), np.where(rf, rec, 0).sum(0) / np.maximum(rf.sum(0), 1), np.nan)
        else:
            grad_recent = np.full(L, np.nan)
        d["heat"] = heat
        d["grad_recent"] = grad_recent

        ds, dnames, D = snap.layer_series("drift")
        drift = np.full(L, np.nan)
        if len(ds) and len(dnames):
            row = D[-1]
            if tuple(dnames) == tuple(names):
                drift = row.astype(np.float64)
            else:
                where = {n: i for i, n in enumerate(dnames)}
                drift = np.array([row[where[n]] if n in where else np.nan for n in names], np.float64)
        d["drift"] = drift
        drift_lim = prev.drift_lim if prev is not None else (1e-4, 1.0)
        _, dhi = finite_range(drift, positive=True)
        if math.isfinite(dhi) and (prev is None or dhi > drift_lim[1] or dhi < drift_lim[1] / 1e3):
            top = 10 ** math.ceil(math.log10(dhi * 1.05))
            drift_lim = (top / 10 ** _DRIFT_DECADES, top)

        markers = tuple(m for m in snap.markers if m[1] in ("stage", "change"))
        # series the run will have (the engine says so in meta) are laid out from the first frame, so
        # their first points do not force a full redraw
        will_val, will_old = bool(meta.get("has_val")) and not final, bool(meta.get("has_old_val")) and not final
        present = frozenset(k for k, ok in (
            ("val_loss", len(d["val_loss"][0]) or will_val), ("val_metric", len(d["val_metric"][0]) or will_val),
            ("old_metric", has_old or will_old), ("drift", len(ds)), ("grad", len(gs))) if ok)
        title = self.title
        loss_name = meta.get("loss")
        if loss_name:
            title = f"{title} · loss: {loss_name}" if title else f"loss: {loss_name}"
        layout = _Layout(waiting=waiting, xlim=xlim, loss_log=loss_log, loss_ylim=_tf(loss_ylim),
                         metric_ylim=_tf(metric_ylim), old_ylim=_tf(old_ylim) if old_ylim else None,
                         metric_name=metric_name, old_name=old_name, lr_log=lr_log, lr_ylim=_tf(lr_ylim),
                         groups=len(groups), layers=tuple(names), frozen=frozen_flags, norm=_tf(norm),
                         drift_lim=_tf(drift_lim), markers=markers, present=present, title=title, final=final)
        d["status"] = self._status(d, layout)
        return layout, d

    @staticmethod
    def _metric_limits(prev: tuple[float, float] | None, name: str, values: np.ndarray,
                       more: np.ndarray | None, final: bool) -> tuple[float, float]:
        if _unit_metric(name):
            return (0.0, 1.02)
        lo, hi = finite_range(values, more if more is not None else np.empty(0))
        if not math.isfinite(lo):
            return prev or (0.0, 1.0)
        if prev is not None and prev[0] <= lo and prev[1] >= hi:
            return prev
        return linear_limits(lo, hi, 0.05 if final else 0.25)

    def _status(self, d: dict[str, Any], layout: _Layout) -> list[str]:
        if layout.waiting:
            return ["step 0" + (f" / {d['total']:,}" if d["total"] else "")]
        last = int(d["last"])
        parts = [f"step {last:,}" + (f" / {d['total']:,}" if d["total"] else "")]
        sm = d["smooth"][1]
        if len(sm) and math.isfinite(sm[-1]):
            parts.append(f"loss {fmt_value(float(sm[-1]))}")
        vm = d["val_metric"][1]
        if len(vm):
            parts.append(f"val {layout.metric_name or 'metric'} {fmt_value(float(vm[-1]))}")
        om = d["old_metric"][1]
        if len(om):
            parts.append(f"old-task {layout.old_name or 'metric'} {fmt_value(float(om[-1]))}")
        return parts

    # ================================================================== full redraw
    def _full_draw(self, layout: _Layout, d: dict[str, Any]) -> None:
        self._apply_layout(layout, d)
        self._set_data(layout, d)
        self.canvas.draw()  # animated artists are skipped: this is the background
        self._title_right = self.title_text.get_window_extent(self.canvas.get_renderer()).x1 if layout.title else 0.0
        self._draw_row_labels(len(layout.layers))
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self._layout = layout
        self.full_redraws += 1

    def _apply_layout(self, lay: _Layout, d: dict[str, Any]) -> None:
        self.title_text.set_text(lay.title)
        steps_fmt = FuncFormatter(step_formatter(lay.xlim[1]))
        for ax in (*self._time_axes, self.ax_heat):
            ax.set_xlim(*lay.xlim)
            ax.xaxis.set_major_formatter(steps_fmt)

        # loss
        ax = self.ax_loss
        ax.set_yscale("log" if lay.loss_log else "linear")
        ax.set_ylim(*lay.loss_ylim)
        if lay.loss_log:  # 0.05, 0.1, 0.2, 0.5, 1, 2 ... as plain numbers (mathtext is slow)
            decades = math.log10(lay.loss_ylim[1] / lay.loss_ylim[0])
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades < 3.5 else (1.0,), numticks=12))
            ax.yaxis.set_major_formatter(FuncFormatter(fmt_plain))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.yaxis.set_major_locator(MaxNLocator(5))
        self.waiting_text.set_visible(lay.waiting)

        # metrics
        ax = self.ax_metric
        ax.set_ylim(*lay.metric_ylim)
        if _unit_metric(lay.metric_name):
            ax.yaxis.set_major_locator(FixedLocator([0, 0.25, 0.5, 0.75, 1.0]))
        else:
            ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.set_ylabel(lay.metric_name or "metric", fontsize=9, color=C_TEXT, labelpad=2)
        twin = lay.old_ylim is not None
        self.ax_old.set_visible(twin)
        if twin:
            self.ax_old.set_ylim(*lay.old_ylim)
            self.ax_old.yaxis.set_major_locator(MaxNLocator(4))
            self.ax_old.set_ylabel(f"old-task {lay.old_name}", fontsize=9, color=C_OLD, labelpad=2)
            self.ax_old.tick_params(axis="y", colors=C_OLD)

        # learning rate
        ax = self.ax_lr
        ax.set_yscale("log" if lay.lr_log else "linear")
        ax.set_ylim(*lay.lr_ylim)
        if lay.lr_log:
            ax.yaxis.set_major_locator(LogLocator(numticks=4))
            ax.yaxis.set_major_formatter(FuncFormatter(fmt_decade))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.yaxis.set_major_locator(MaxNLocator(3))
            ax.yaxis.set_major_formatter(FuncFormatter(fmt_sci))
        while len(self.group_lines) < lay.groups:
            line, = ax.plot([], [], color=C_LR, lw=0.9, alpha=0.55, animated=True)
            self.group_lines.append(line)
        for i, line in enumerate(self.group_lines):
            line.set_visible(i < lay.groups)

        # legends (above the axes, right-aligned, so data never hide them)
        for leg in self._legends:
            leg.remove()
        self._legends = []
        raw_proxy = Line2D([], [], color=C_TRAIN, lw=1.3, alpha=0.45)
        h_loss = [(raw_proxy, "train"), (self.loss_smooth_line, "train (smoothed)")]
        if "val_loss" in lay.present:
            h_loss.append((self.val_loss_line, "validation"))
        self._legend(self.ax_loss, h_loss)
        h_met = []
        if "val_metric" in lay.present:
            h_met.append((self.val_metric_line, f"val {lay.metric_name or 'metric'}"))
        if "old_metric" in lay.present:
            h_met.append((self.old_metric_line, f"old task {lay.old_name or 'metric'}"))
        if h_met:
            self._legend(self.ax_metric, h_met)
        if lay.groups:
            self._legend(self.ax_lr, [(self.lr_line, "top group"), (self.group_lines[0], "other groups")])

        # markers
        for t in self._marker_texts:
            t.remove()
        self._marker_texts = []
        stage_x = [m[0] for m in lay.markers if m[1] == "stage"]
        change_x = [m[0] for m in lay.markers if m[1] == "change"]
        for ax in self._time_axes:
            self._stage_lines[ax].set_segments([[(x, 0), (x, 1)] for x in stage_x])
            self._change_lines[ax].set_segments([[(x, 0), (x, 1)] for x in change_x])
        self._label_markers(lay)

        # heatmap rows and bars
        L = len(lay.layers)
        ylim = (-0.5, max(L, 1) - 0.5)
        self.ax_heat.set_ylim(*ylim)
        self.norm.vmin, self.norm.vmax = lay.norm
        self._set_row_labels(lay)
        band = [_quad(0, 1, (i + 0.5) / max(L, 1), 1 / max(L, 1)) for i, f in enumerate(lay.frozen) if f]
        self._frozen_gbar.set_verts(band)
        self._frozen_drift.set_verts(band)
        self.ax_gbar.set_xlim(*lay.norm)
        self.ax_drift.set_xlim(*lay.drift_lim)
        for axis, lim in ((self.cax.xaxis, lay.norm), (self.ax_gbar.xaxis, lay.norm),
                          (self.ax_drift.xaxis, lay.drift_lim)):
            axis.set_major_locator(FixedLocator(decade_ticks(*lim, most=2)))
            axis.set_major_formatter(FuncFormatter(fmt_decade))
            axis.set_minor_locator(NullLocator())
        colors = np.array([[0.62, 0.62, 0.62, 1.0] if f else [0.549, 0.337, 0.294, 1.0] for f in lay.frozen])
        self.drift_bars.set_facecolor(colors if L else C_DRIFT)

    def _legend(self, ax: Any, items: list[tuple[Any, str]]) -> None:
        leg = ax.legend([h for h, _ in items], [t for _, t in items], loc="lower right", bbox_to_anchor=(1.0, 1.0),
                        ncol=len(items), frameon=False, fontsize=8.5, borderaxespad=0.15, handlelength=1.6,
                        columnspacing=1.0, handletextpad=0.4)
        leg.set_animated(False)
        for h in leg.legend_handles:
            if h is not None:
                h.set_animated(False)
        self._legends.append(leg)

    def _label_markers(self, lay: _Layout) -> None:
        """Short labels at the top of the loss panel: stage changes (and, in the final frame,
        the other changes), skipping any that would overlap a label already placed."""
        ax = self.ax_loss
        x0, x1 = lay.xlim
        width_px = self._rects.line_px
        placed: list[float] = []
        kinds = ("stage", "change") if lay.final else ("stage",)
        tr = blended_transform_factory(ax.transData, ax.transAxes)
        for want in kinds:
            for step, kind, text in lay.markers:
                if kind != want or not x0 <= step <= x1:
                    continue
                px = (step - x0) / (x1 - x0) * width_px if x1 > x0 else 0.0
                if any(abs(px - q) < 13 for q in placed):
                    continue
                placed.append(px)
                label = text.split(":")[0] if kind == "stage" else text
                t = ax.text(step, 0.98, f"{short_name(label, 28)} ", transform=tr, rotation=90, ha="right",
                            va="top", fontsize=7.5, color=C_STAGE if kind == "stage" else C_MUTED, clip_on=True)
                self._marker_texts.append(t)

    def _set_row_labels(self, lay: _Layout) -> None:
        """Choose the layer names to show: all when rows are tall enough, else every k-th (from
        the top, so the head is always named), shortened to the label column, frozen ones grey."""
        R = self._rects
        L = len(lay.layers)
        self.ax_heat.set_yticks([])
        self.row_labels = []
        if not L:
            return
        row_px = R.heat_px[1] / L
        px_per_pt = self.dpi / 72
        fs = float(np.clip(row_px * 0.82 / px_per_pt, 5.0 if lay.final else 5.5, 8.5))
        k = max(1, math.ceil(fs * px_per_pt * 1.18 / row_px))
        max_chars = max(8, int((R.label_w - 8) / (fs * px_per_pt * 0.56)))
        for i in list(range(L - 1, -1, -k))[::-1]:
            name = lay.layers[i]
            if lay.frozen[i]:
                text = short_name(name, max(4, max_chars - 2)) + " ❄"
            else:
                text = short_name(name, max_chars)
            self.row_labels.append((i, text, lay.frozen[i]))
        self._row_fs = fs

    def _draw_row_labels(self, L: int) -> None:
        if not self.row_labels:
            return
        pixels = np.asarray(self.canvas.buffer_rgba())
        x0, y0, _, h = self.ax_heat.get_position().bounds
        W, H = self.width_px, self.height_px
        x = x0 * W - 4 * self._scale
        for i, text, frozen in self.row_labels:
            y = H - (y0 + (i + 0.5) / L * h) * H
            self._stamper.draw(pixels, text, x, y, size_pt=self._row_fs, italic=frozen,
                               color=C_FROZEN_TEXT if frozen else C_TEXT)

    # ================================================================== per frame: artists
    def _set_data(self, lay: _Layout, d: dict[str, Any]) -> None:
        self._status_parts = d["status"]
        if lay.waiting:
            for line in (self.loss_line, self.loss_smooth_line, self.val_loss_line, self.val_metric_line,
                         self.old_metric_line, self.old_metric_line2, self.lr_line, *self.group_lines):
                line.set_data([], [])
        else:
            self.loss_line.set_data(*d["loss"])
            self.loss_smooth_line.set_data(*d["smooth"])
            self.val_loss_line.set_data(*d["val_loss"])
            self.val_metric_line.set_data(*d["val_metric"])
            twin = lay.old_ylim is not None
            self.old_metric_line.set_data(*(([], []) if twin else d["old_metric"]))
            self.old_metric_line2.set_data(*(d["old_metric"] if twin else ([], [])))
            self.lr_line.set_data(*d["lr"])
            for line, (_, gx, gy) in zip(self.group_lines, d["groups"]):
                line.set_data(gx, gy)
        L = len(lay.layers)
        heat = d["heat"]
        if heat is not None:
            self.heatmap.set_data(self._colours(heat[0], *lay.norm))
            self.heatmap.set_extent(heat[1])
            self.heatmap.set_visible(True)
        else:
            self.heatmap.set_visible(False)
        lo, hi = lay.norm
        g = d["grad_recent"]
        with np.errstate(invalid="ignore", divide="ignore"):
            gf = np.clip((np.log10(g) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)), 0, 1)
        gf = np.where(np.isfinite(gf), gf, 0.0)
        self.grad_bars.set_verts(_bars(gf, L))
        self.grad_bars.set_facecolor(self._colours(g, lo, hi) / 255.0)
        dlo, dhi = lay.drift_lim
        dr = d["drift"]
        with np.errstate(invalid="ignore", divide="ignore"):
            df = np.clip((np.log10(dr) - math.log10(dlo)) / (math.log10(dhi) - math.log10(dlo)), 0, 1)
        df = np.where(np.isfinite(df), df, 0.0)
        self.drift_bars.set_verts(_bars(df, L))

    def _colours(self, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """RGBA (uint8) of ``values`` on the log colour scale ``[lo, hi]``; NaN -> frozen grey."""
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (np.log10(values) - math.log10(lo)) * (255.0 / (math.log10(hi) - math.log10(lo)))
        bad = ~np.isfinite(values)
        idx = np.clip(np.where(bad, 0, np.nan_to_num(t, nan=0.0, neginf=0.0, posinf=255.0)), 0, 255).astype(np.intp)
        out = self._lut[idx]
        out[bad] = self._bad
        return out

    def _blit_heatmap(self, pixels: np.ndarray) -> None:
        """Copy the heatmap's cells into its pixels, nearest neighbour: what the AxesImage with
        ``interpolation="nearest"`` draws, without matplotlib's general resampler (~5x faster).
        The cells are opaque RGBA, so they simply replace the background's pixels."""
        im = self.heatmap
        if not im.get_visible():
            return
        cells = np.asarray(im.get_array())
        rows, cols = cells.shape[:2]
        x_left, x_right, y_bottom, y_top = im.get_extent()
        (X0, Y0), (X1, Y1) = self.ax_heat.transData.transform([(x_left, y_bottom), (x_right, y_top)])
        box = self.ax_heat.bbox
        H, W = pixels.shape[:2]
        # pixel c (from the left) is covered when its centre c + 0.5 lies in the image and the axes
        c0 = max(math.ceil(X0 - 0.5), math.ceil(box.x0 - 0.5), 0)
        c1 = min(math.ceil(X1 - 0.5), math.ceil(box.x1 - 0.5), W)
        r0 = max(math.ceil(Y0 - 0.5), math.ceil(box.y0 - 0.5), 0)
        r1 = min(math.ceil(Y1 - 0.5), math.ceil(box.y1 - 0.5), H)
        if c1 <= c0 or r1 <= r0 or X1 <= X0 or Y1 <= Y0:
            return
        ci = ((np.arange(c0, c1) + 0.5 - X0) * (cols / (X1 - X0))).astype(np.intp)
        ri = ((np.arange(r0, r1) + 0.5 - Y0) * (rows / (Y1 - Y0))).astype(np.intp)
        np.clip(ci, 0, cols - 1, out=ci)
        np.clip(ri, 0, rows - 1, out=ri)
        # display rows count from the bottom, buffer rows from the top
        pixels[H - r1:H - r0, c0:c1] = cells[ri[::-1, None], ci[None, :]]

    def _draw_animated(self) -> None:
        renderer = self.canvas.get_renderer()
        pixels = np.asarray(self.canvas.buffer_rgba())
        self._blit_heatmap(pixels)
        for artist in (self.loss_line, self.loss_smooth_line, self.val_loss_line, self.val_metric_line,
                       self.old_metric_line, self.old_metric_line2, *self.group_lines, self.lr_line,
                       self.grad_bars, self.drift_bars):
            if artist.get_visible() and (artist.axes is None or artist.axes.get_visible()):
                artist.draw(renderer)
        # the status line changes every frame: Pillow draws it ~6x faster than a matplotlib Text
        sc = self._scale
        right = int(round(self.width_px - 14 * sc))
        room = right - self._title_right - 24 * sc
        parts = list(self._status_parts)
        font = self._stamper.font(10.0)
        while len(parts) > 1 and font.getlength("  ·  ".join(parts)) > room:
            parts.pop()  # keep what fits beside the title, most important first
        self.status = "  ·  ".join(parts)
        self._stamper.draw(pixels, self.status, right, 17 * sc, size_pt=10.0, color=C_TEXT)


class _Pooler:
    """Per-bin sums and counts (NaN-aware) of a steps x layers matrix in fixed step bins, kept
    from frame to frame: bins before the last one are complete (rows only ever arrive later),
    so while the history's rows are unchanged a frame pools only the rows of its last bin and
    the new ones. When the history folds old rows (the steps differ) it starts over."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.k = 0

    def _same_rows(self, key: tuple[Any, ...], steps: np.ndarray, values: np.ndarray) -> bool:
        k = self.k
        return (self.key == key and 0 < k <= len(steps) and np.array_equal(steps[:k], self.steps)
                and np.array_equal(values[0], self.first, equal_nan=True)
                and np.array_equal(values[k - 1], self.last, equal_nan=True))

    def pool(self, steps: np.ndarray, values: np.ndarray, x0: float, width: float,
             nbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (x0, width, nbins, values.shape[1])
        if self._same_rows(key, steps, values):
            start, b_old, s_old, c_old = self.tail, self.b, self.sums, self.counts
        else:
            start = 0
            b_old = np.empty(0, np.int64)
            s_old = np.empty((0, values.shape[1]))
            c_old = np.empty((0, values.shape[1]), np.int32)
        part = values[start:]
        st, b_new = bins_of(steps[start:], x0, width, nbins)
        finite = np.isfinite(part)
        s_new = np.add.reduceat(np.where(finite, part, 0.0), st, axis=0, dtype=np.float64)
        c_new = np.add.reduceat(finite, st, axis=0, dtype=np.int32)
        b = np.concatenate([b_old, b_new])
        sums = np.concatenate([s_old, s_new])
        counts = np.concatenate([c_old, c_new])
        self.key, self.k = key, len(steps)
        self.steps = steps.copy()
        self.first, self.last = values[0].copy(), values[-1].copy()
        self.tail = start + int(st[-1])  # first row of the last bin, pooled again next time
        self.b, self.sums, self.counts = b[:-1], sums[:-1], counts[:-1]
        return b, sums, counts


class _Stamper:
    """Draws text straight into an RGBA frame with Pillow: the same DejaVu Sans as matplotlib,
    about five times faster per glyph. Used for the status line (new every frame) and the
    layer names (up to a hundred labels in each full redraw)."""

    def __init__(self, dpi: float) -> None:
        self.dpi = dpi
        self._fonts: dict[tuple[float, bool], Any] = {}

    def font(self, size_pt: float, italic: bool = False) -> Any:
        key = (size_pt, italic)
        font = self._fonts.get(key)
        if font is None:
            from matplotlib.font_manager import FontProperties, findfont

            path = findfont(FontProperties(family="DejaVu Sans", style="oblique" if italic else "normal"))
            font = self._fonts[key] = ImageFont.truetype(path, size=size_pt * self.dpi / 72)
        return font

    def draw(self, pixels: np.ndarray, text: str, x: float, y: float, *, size_pt: float, color: str,
             anchor: str = "rm", italic: bool = False) -> None:
        """Draw ``text`` with its ``anchor`` ("rm": right-middle, "lm": left-middle) at pixel
        ``(x, y)`` counted from the top left."""
        if not text:
            return
        font = self.font(size_pt, italic)
        w = int(math.ceil(font.getlength(text))) + 3
        h = int(math.ceil(size_pt * self.dpi / 72 * 1.7))
        left = int(round(x)) - (w if anchor[0] == "r" else 0)
        top = int(round(y)) - h // 2
        H, W = pixels.shape[:2]
        a0, a1 = max(0, left), min(W, left + w)
        b0, b1 = max(0, top), min(H, top + h)
        if a0 >= a1 or b0 >= b1:
            return
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).text((w - 1 if anchor[0] == "r" else 1, h / 2), text, font=font, fill=255,
                                  anchor=anchor)
        alpha = np.asarray(mask, np.float32)[b0 - top:b1 - top, a0 - left:a1 - left, None] * (1 / 255)
        rgb = pixels[b0:b1, a0:a1, :3]
        ink = to_rgba_array(color)[0][:3] * 255
        rgb[...] = (rgb * (1 - alpha) + ink * alpha + 0.5).astype(np.uint8)


def _planned_lr(meta: Mapping[str, Any]) -> float:
    config = meta.get("config")
    lr = config.get("lr") if isinstance(config, Mapping) else None
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr) else 0.0


def _int(x: Any) -> int:
    try:
        return int(x or 0)
    except (TypeError, ValueError):
        return 0


def _tf(t: tuple[float, float]) -> tuple[float, float]:
    return (float(t[0]), float(t[1]))


def _quad(a: float, b: float, y: float, h: float = 1.0) -> np.ndarray:
    return np.array([(a, y - h / 2), (b, y - h / 2), (b, y + h / 2), (a, y + h / 2)])


def _bars(frac: np.ndarray, n: int, h: float = 0.78) -> np.ndarray:
    """Quads in axes fractions for horizontal bars of length ``frac`` on rows 0..n-1 (row ``i``
    centred at ``(i + 0.5) / n``, matching the heatmap's rows)."""
    v = np.empty((n, 4, 2))
    y = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    h = h / max(n, 1)
    v[:, 0, 0] = v[:, 3, 0] = 0.0
    v[:, 1, 0] = v[:, 2, 0] = frac
    v[:, 0, 1] = v[:, 1, 1] = y - h / 2
    v[:, 2, 1] = v[:, 3, 1] = y + h / 2
    return v

