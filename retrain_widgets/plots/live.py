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
  them. When only some panels' limits changed (a y axis, a colour or drift scale), only those
  panels are redrawn into the background (:mod:`._regions`, the same pixels; counted by
  ``partial_redraws``), at a fraction of a full redraw's cost;
* text that changes every frame (the status line) and the many layer names are drawn with
  Pillow (same font, ~5x cheaper per glyph than matplotlib's text), the heatmap cells are
  copied into their pixels with numpy (identical to ``interpolation="nearest"``), and the PNG
  is written directly at zlib level 1.

``LiveFigure.full_redraws`` and ``bench.frame_times`` keep the cost honest. The time panels'
numbers come from :mod:`._frame`, the per-layer block (heatmaps, bars, names) is a
:class:`._layers.LayerView`, pixel-level pieces live in :mod:`._raster`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory

from ..core.names import Meta, Series
from . import _frame
from ._frame import Layout as _Layout
from ._layers import LayerView
from ._raster import Stamper
from ._regions import Regions, changed_panels
from ._time_layout import TimePanelLayout
from ._util import (
    C_CHANGE,
    C_GRID,
    C_LR,
    C_MUTED,
    C_OLD,
    C_STAGE,
    C_TEXT,
    C_TRAIN,
    C_VAL,
    encode_png,
    step_formatter,
    style_axes,
)

if TYPE_CHECKING:
    from ..core.history import HistorySnapshot

__all__ = ["LiveFigure"]


class _Rects:
    """The fixed layout, computed once from pixel margins (figure fractions). With ``alignment``
    the time panels give up some width and the heatmap column holds two heatmaps side by side."""

    def __init__(self, w: float, h: float, alignment: bool = False) -> None:
        def r(x0: float, y0: float, ww: float, hh: float) -> list[float]:
            return [x0 / w, y0 / h, max(ww, 1) / w, max(hh, 1) / h]

        top = h - 50  # title row + panel titles
        bottom = 44  # tick labels + axis label
        gap = 30  # panel title between stacked panels
        lx0 = 62
        lx1 = int(w * (0.395 if alignment else 0.445))
        avail = top - bottom - 2 * gap
        h_loss, h_met = avail * 0.47, avail * 0.31
        h_lr = avail - h_loss - h_met
        self.loss = r(lx0, top - h_loss, lx1 - lx0, h_loss)
        self.metric = r(lx0, bottom + h_lr + gap, lx1 - lx0, h_met)
        self.lr = r(lx0, bottom, lx1 - lx0, h_lr)
        self.top_px, self.bottom_px = top, bottom
        # right block: [labels | heatmap | (alignment) | grad bars | drift bars]
        right0 = lx1 + 54  # room for the old-metric axis on the right of the metrics panel
        self.label_w = max(80, int(w * 0.118))
        hx0 = right0 + self.label_w
        rest = (w - 14) - hx0
        bar_w = max(40, int(rest * (0.15 if alignment else 0.2)))
        gap_heat, gapx = 16, 9  # the heatmap's last step label needs room beside the colourbar's
        heat_all = rest - 2 * bar_w - gap_heat - gapx
        gap_align = 10 if alignment else 0
        heat_w = (heat_all - gap_align) // 2 if alignment else heat_all
        align_w = heat_all - gap_align - heat_w
        self.label_x0 = right0
        self.heat = r(hx0, bottom, heat_w, top - bottom)
        ax0 = hx0 + heat_w + gap_align
        self.align = r(ax0, bottom, align_w, top - bottom)
        self.acbar = r(ax0 + 26, bottom - 11, max(align_w - 52, 1), 7)  # room for its end labels
        self.gbar = r(hx0 + heat_all + gap_heat, bottom, bar_w, top - bottom)
        self.drift = r(hx0 + heat_all + gap_heat + gapx + bar_w, bottom, bar_w, top - bottom)
        self.cbar = r(hx0 + heat_all + gap_heat, bottom - 11, bar_w, 7)
        self.heat_px = (heat_w, top - bottom)
        self.align_px = align_w
        self.line_px = lx1 - lx0
        self.w, self.h = w, h


class LiveFigure(TimePanelLayout):
    """A dashboard of a retraining run, rendered as PNG frames from history snapshots.

    Panels: loss (raw, smoothed, validation, and the old task's: per epoch on ``old_val`` and
    per alignment sample on one old batch; log scale when it spans more than 1.5 decades),
    validation and old-task metric, learning rate (per group when groups differ), a per-layer
    gradient-norm heatmap (layers x steps, input side at the bottom, frozen layers grey), when
    the run has the alignment probe the alignment of each layer's gradient with the old task's
    (−1 red: the new loss pulls against the old task; +1 blue: it helps it; frozen grey) with a
    hint where it keeps pulling against it, and, aligned with the rows, bars of each layer's
    recent gradient norm and weight drift ``||w - w0|| / ||w0||``. Stage changes are dashed
    vertical lines, other changes (freeze, unfreeze, LR) dotted ones.

    Parameters
    ----------
    width_px, height_px, dpi
        Frame size in pixels and resolution (font sizes are in points, so ``dpi`` scales text).
    smooth
        EMA factor of the smoothed loss, computed on the decimated points.
    max_points
        Most points a line holds (min/max envelope beyond that).
    max_columns
        Most columns of a heatmap (step bins averaged).
    title
        Shown at the top left; the run's loss name is added.

    ``render`` is safe to call from any thread (one frame at a time); ``full_redraws`` counts the
    frames that redrew the whole background, ``partial_redraws`` those that redrew some panels
    of it, ``last_frame_seconds`` is the wall time of the last frame.
    The data artists are attributes (``loss_line``, ``loss_smooth_line``, ``heatmap`` ...); the
    layer block is :attr:`layers`.
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
        self.partial_redraws = 0
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
            self.layers.reset()

    def render(self, snapshot: HistorySnapshot, frozen: Sequence[str] = ()) -> bytes:
        """PNG bytes of the current frame (blitted unless the background must change)."""
        with self._lock:
            t0 = time.perf_counter()
            layout, data = self._compute(snapshot, frozen, final=False)
            if self._background is None or self._layout is None:
                self._full_draw(layout, data)
            elif layout != self._layout:
                panels = changed_panels(self._layout, layout)
                if panels is None or not self._partial_draw(layout, data, panels):
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

    @property
    def heatmap(self) -> Any:
        """The gradient-norm heatmap (an ``AxesImage`` of RGBA cells)."""
        return self.layers.heatmap

    @property
    def ax_heat(self) -> Any:
        return self.layers.ax_heat

    @property
    def row_labels(self) -> list[tuple[int, str, bool]]:
        """``(row, text, frozen)`` of the layer names drawn in the last full redraw."""
        return self.layers.row_labels

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
        self._all_rects = {False: _Rects(w, h, False), True: _Rects(w, h, True)}
        self._stamper = Stamper(dpi_eff)
        self._build_time_axes()
        self._build_lines()
        self.layers = LayerView(self.fig, self._all_rects, dpi=self.dpi, scale=sc, stamper=self._stamper, max_columns=self.max_columns)
        self._build_markers()
        self.title_text = self.fig.text(14 / w, 1 - 17 / h, "", ha="left", va="center", fontsize=12.5,
                                        fontweight="bold", color=C_TEXT, parse_math=False)
        self._status_parts: list[str] = []
        self._hint_rows: list[int] = []
        self._title_right = 0.0
        self.status = ""
        self.waiting_text = self.ax_loss.text(0.5, 0.5, "waiting for the first steps…", transform=self.ax_loss.transAxes,
                                              ha="center", va="center", fontsize=13, color=C_MUTED, visible=False)
        self._legends: list[Any] = []
        self._place(False)
        self._regions = Regions(self.fig, {
            "loss": (self.ax_loss,), "metric": (self.ax_metric, self.ax_old), "lr": (self.ax_lr,),
            "norm": (self.layers.ax_gbar, self.layers.cax), "drift": (self.layers.ax_drift,),
        }, extra=lambda _renderer: [self.layers.row_label_box(self.width_px, self.height_px)],
            face=(255, 255, 255, 255))

    def _build_time_axes(self) -> None:
        fig = self.fig
        self.ax_loss = fig.add_axes([0, 0, 1, 1])
        self.ax_metric = fig.add_axes([0, 0, 1, 1], sharex=self.ax_loss)
        self.ax_lr = fig.add_axes([0, 0, 1, 1], sharex=self.ax_loss)
        self.ax_old = self.ax_metric.twinx()
        self._time_axes = (self.ax_loss, self.ax_metric, self.ax_lr)
        for ax in (*self._time_axes, self.ax_old):
            style_axes(ax)
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
        title_kw: dict[str, Any] = dict(loc="left", fontsize=10.5, fontweight="bold", color=C_TEXT, pad=5, y=1.0)
        self.ax_loss.set_title("Loss", **title_kw)
        self.ax_metric.set_title("Metrics", **title_kw)
        self.ax_lr.set_title("Learning rate", **title_kw)

    def _build_lines(self) -> None:
        """The data artists of the time panels (animated: drawn per frame over the background)."""
        anim: dict[str, Any] = dict(animated=True)
        old: dict[str, Any] = dict(color=C_OLD, lw=1.4, ls="--", marker="s", ms=4, **anim)
        self.loss_line, = self.ax_loss.plot([], [], color=C_TRAIN, lw=0.7, alpha=0.28, **anim)
        self.loss_smooth_line, = self.ax_loss.plot([], [], color=C_TRAIN, lw=2.0, **anim)
        self.val_loss_line, = self.ax_loss.plot([], [], color=C_VAL, lw=1.6, marker="o", ms=4.5, **anim)
        # one point per alignment sample: a line through a few sparse samples would read as a trend
        self.old_batch_line, = self.ax_loss.plot([], [], color=C_OLD, ls="none", marker="o", ms=3.2, alpha=0.8, **anim)
        self.old_loss_line, = self.ax_loss.plot([], [], **old)
        self.val_metric_line, = self.ax_metric.plot([], [], color=C_VAL, lw=1.6, marker="o", ms=4.5, **anim)
        self.old_metric_line, = self.ax_metric.plot([], [], **old)
        self.old_metric_line2, = self.ax_old.plot([], [], **old)
        self.lr_line, = self.ax_lr.plot([], [], color=C_LR, lw=2.0, **anim)
        self.group_lines: list[Any] = []

    def _build_markers(self) -> None:
        """Stage and change markers (static: part of the background)."""
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

    def _place(self, alignment: bool) -> None:
        """Lay the panels out with or without the alignment heatmap."""
        self._alignment_placed = alignment
        self._rects = R = self._all_rects[alignment]
        for ax, rect in ((self.ax_loss, R.loss), (self.ax_metric, R.metric), (self.ax_lr, R.lr)):
            ax.set_position(rect)
        self.ax_old.set_position(R.metric)
        self.layers.place(R, alignment)

    # ================================================================== per frame: numbers
    def _compute(self, snap: HistorySnapshot, frozen: Sequence[str], final: bool) -> tuple[_Layout, dict[str, Any]]:
        meta = snap.meta or {}
        s_loss = snap.series(Series.TRAIN_LOSS)[0]
        waiting = len(s_loss) == 0
        last = float(s_loss[-1]) if not waiting else 0.0
        prev = self._layout
        if last < self._last_step:  # a new run
            self.layers.reset()
        if final or prev is None or prev.final or last < self._last_step:
            prev = None
        self._last_step = last
        total = _frame.as_int(meta.get(Meta.TOTAL_STEPS))
        xlim = _frame.x_limits(prev, last, total, final)
        d: dict[str, Any] = {"last": last, "total": total, "meta": meta, "xlim": xlim}
        nb = max(2, min(self.max_points // 2, int(self._rects.line_px * self._scale)))
        width = (xlim[1] - xlim[0]) / nb
        _frame.loss_lines(snap, d, xlim[0], width, nb, self.max_points, self.smooth)
        loss_log, loss_ylim = _frame.loss_limits(d, prev, waiting, final)
        fields = _frame.metrics(snap, d, prev, final)
        _frame.learning_rates(snap, d, xlim[0], width, nb, self.max_points)
        fields.update(_frame.lr_limits(d, prev, final))
        fields.update(self.layers.compute(snap, frozen, d, prev, final))
        present = frozenset(_frame.present_series(d, final) | fields.pop("present"))
        title = self.title
        loss_name = meta.get(Meta.LOSS)
        if loss_name:
            title = f"{title} · loss: {loss_name}" if title else f"loss: {loss_name}"
        markers = tuple(m for m in snap.markers if m[1] in ("stage", "change"))
        layout = _Layout(waiting=waiting, xlim=xlim, loss_log=loss_log, loss_ylim=_frame.tf(loss_ylim),
                         markers=markers, present=present, title=title, final=final, **fields)
        d["status"] = _frame.status_parts(d, layout)
        return layout, d

    # ================================================================== full redraw
    def _full_draw(self, layout: _Layout, d: dict[str, Any]) -> None:
        self._apply_layout(layout)
        self._set_data(layout, d)
        self.canvas.draw()  # animated artists are skipped: this is the background
        self._title_right = self.title_text.get_window_extent(self.canvas.get_renderer()).x1 if layout.title else 0.0
        if layout.layers:
            self.layers.draw_row_labels(np.asarray(self.canvas.buffer_rgba()), len(layout.layers))
        self._regions.stale = True  # measured when a partial redraw first needs it
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self._layout = layout
        self.full_redraws += 1

    def _partial_draw(self, layout: _Layout, d: dict[str, Any], panels: frozenset[str]) -> bool:
        """Redraw only ``panels`` into the background (see :mod:`._regions`); ``False`` when
        that cannot give a full redraw's pixels."""
        if self._regions.stale:  # the artists still hold the background's layout
            self._regions.measure(self.canvas.get_renderer())
        self.canvas.restore_region(self._background)
        self._apply_layout(layout)
        self._set_data(layout, d)
        pixels = np.asarray(self.canvas.buffer_rgba())
        if not self._regions.redraw(panels, self.canvas.get_renderer(), pixels):
            return False
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self._layout = layout
        self.partial_redraws += 1
        return True

    def _apply_layout(self, lay: _Layout) -> None:
        if lay.alignment != self._alignment_placed:
            self._place(lay.alignment)
        self.title_text.set_text(lay.title)
        steps_fmt = FuncFormatter(step_formatter(lay.xlim[1]))
        for ax in self._time_axes:
            ax.set_xlim(*lay.xlim)
            ax.xaxis.set_major_formatter(steps_fmt)
        self._layout_loss(lay)
        self._layout_metrics(lay)
        self._layout_lr(lay)
        self._layout_legends(lay)
        self._layout_markers(lay)
        self.layers.apply_layout(lay, steps_fmt)

    # ================================================================== per frame: artists
    def _lines(self) -> tuple[Any, ...]:
        return (self.loss_line, self.loss_smooth_line, self.val_loss_line, self.old_batch_line, self.old_loss_line,
                self.val_metric_line, self.old_metric_line, self.old_metric_line2, *self.group_lines, self.lr_line)

    def _set_data(self, lay: _Layout, d: dict[str, Any]) -> None:
        self._status_parts = d["status"]
        self._hint_rows = d["hint_rows"] if lay.alignment else []
        if lay.waiting:
            for line in self._lines():
                line.set_data([], [])
        else:
            twin = lay.old_ylim is not None
            empty = ([], [])
            for line, key in ((self.loss_line, "loss"), (self.loss_smooth_line, "smooth"),
                              (self.val_loss_line, Series.VAL_LOSS), (self.old_batch_line, Series.OLD_BATCH_LOSS),
                              (self.old_loss_line, Series.OLD_LOSS), (self.val_metric_line, Series.VAL_METRIC),
                              (self.lr_line, Series.LR)):
                line.set_data(*d[key])
            self.old_metric_line.set_data(*(empty if twin else d[Series.OLD_METRIC]))
            self.old_metric_line2.set_data(*(d[Series.OLD_METRIC] if twin else empty))
            for line, (_, gx, gy) in zip(self.group_lines, d["groups"]):
                line.set_data(gx, gy)
        self.layers.set_data(lay, d)

    def _draw_animated(self) -> None:
        renderer = self.canvas.get_renderer()
        pixels = np.asarray(self.canvas.buffer_rgba())
        self.layers.draw(pixels, renderer, self._hint_rows)
        for artist in self._lines():
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
