"""The per-layer block of the live figure: one row per parameterised layer (input side at the
bottom), in columns [names | gradient-norm heatmap | alignment heatmap | recent grad | drift].

The heatmaps hold RGBA cells looked up in 256-entry colour tables (log gradient norm: viridis;
alignment with the old task: ``RdBu`` from −1, red, pulling against it, to +1, blue, helping it),
frozen rows grey; in the alignment heatmap a cell with no value on a trainable layer (a new head the
old task does not reach, the steps before the first sample) lets the panel's dotted background show,
so "no data" never reads as "frozen"; their cells are copied into the frame's pixels with numpy
(what ``interpolation="nearest"`` draws). Bars are quads in axes fractions (one collection draw).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import LogNorm, Normalize, to_rgba_array
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator
from matplotlib.transforms import Bbox

from ..core.alignment import pulling_against
from ..core.names import Meta, Series
from ._frame import Layout, tf
from ._raster import Pooler, Stamper, bars, blit_cells, pooled_image, quad
from ._util import (
    ALIGN_CMAP,
    C_DRIFT,
    C_FROZEN,
    C_FROZEN_TEXT,
    C_GRID,
    C_HINT,
    C_MUTED,
    C_NO_DATA,
    C_TEXT,
    HEAT_CMAP,
    decade_ticks,
    finite_range,
    fmt_decade,
    short_name,
    style_axes,
)

if TYPE_CHECKING:
    from ..core.history import HistorySnapshot

_RECENT_GRAD_ROWS = 20
_DRIFT_DECADES = 4
_HINT_SAMPLES = 5


def _aligned(names: Sequence[str], cols: Sequence[str], values: np.ndarray) -> np.ndarray:
    """``values`` (rows x ``cols``) with its columns in the order of ``names`` (NaN where absent)."""
    if tuple(cols) == tuple(names):
        return values
    where = {n: i for i, n in enumerate(cols)}
    out = np.full((values.shape[0], len(names)), np.nan, np.float32)
    for j, n in enumerate(names):
        if n in where:
            out[:, j] = values[:, where[n]]
    return out


class LayerView:
    """The layer block's axes and artists; :meth:`compute` gives its numbers, :meth:`apply_layout`
    its background, :meth:`set_data` and :meth:`draw` its per-frame pixels."""

    def __init__(self, fig: Figure, all_rects: Mapping[bool, Any], dpi: float, scale: float, stamper: Stamper,
                 max_columns: int) -> None:
        self.fig, self.dpi, self.scale, self.stamper, self.max_columns = fig, dpi, scale, stamper, max_columns
        self.all_rects = all_rects  # the figure's ``_Rects`` without and with the alignment heatmap
        self.rects = self.target = all_rects[False]
        self.ax_heat = fig.add_axes([0, 0, 1, 1])
        self.ax_align = fig.add_axes([0, 0, 1, 1], sharey=self.ax_heat)
        self.ax_gbar = fig.add_axes([0, 0, 1, 1], sharey=self.ax_heat)
        self.ax_drift = fig.add_axes([0, 0, 1, 1], sharey=self.ax_heat)
        self.cax = fig.add_axes([0, 0, 1, 1])
        self.cax_align = fig.add_axes([0, 0, 1, 1])
        for ax in (self.ax_heat, self.ax_align, self.ax_gbar, self.ax_drift):
            style_axes(ax)
        self._build_heatmaps()
        self._build_bars()
        self._build_texts()
        self.row_labels: list[tuple[int, str, bool]] = []  # (row, text, frozen), drawn by Pillow
        self.hint_names: tuple[str, ...] = ()
        self._row_fs = 7.0
        self.reset()

    def reset(self) -> None:
        self._pooler = Pooler()
        self._align_pooler = Pooler()

    # ------------------------------------------------------------------ building (once)
    def _build_heatmaps(self) -> None:
        self.cmap = colormaps[HEAT_CMAP].with_extremes(bad=C_FROZEN)
        self.norm = LogNorm(1e-4, 1.0)
        # colours are looked up here (a 256-entry table), so the images and the bars hold RGBA
        # and matplotlib does no normalisation per frame
        self.lut = self.cmap(np.linspace(0, 1, 256), bytes=True)
        self.align_cmap = colormaps[ALIGN_CMAP].with_extremes(bad=C_FROZEN)
        self.align_lut = self.align_cmap(np.linspace(0, 1, 256), bytes=True)
        self.bad = np.array(to_rgba_array(C_FROZEN)[0] * 255, np.uint8)
        self.heatmap = self._image(self.ax_heat)
        self.align_map = self._image(self.ax_align)
        for ax in (self.ax_heat, self.ax_align):
            ax.xaxis.set_major_locator(MaxNLocator(4, integer=True, steps=[1, 2, 2.5, 5, 10]))
            ax.tick_params(axis="y", length=0, pad=3)
            ax.set_facecolor("#fafafa")
        # no value yet / none on this layer: dots, where frozen is solid grey (see align_colours)
        self.ax_align.add_patch(Rectangle((0, 0), 1, 1, transform=self.ax_align.transAxes, facecolor="#ffffff",
                                          edgecolor=C_NO_DATA, hatch="..", linewidth=0, zorder=0))
        self.ax_heat.set_xlabel("step", fontsize=9, color=C_TEXT, labelpad=2)
        self.ax_align.tick_params(axis="x", labelbottom=False)
        self.ax_align.tick_params(axis="y", left=False, labelleft=False)
        self.colorbar = self._colorbar(self.cax, ScalarMappable(norm=self.norm, cmap=self.cmap))
        self.align_colorbar = self._colorbar(self.cax_align, ScalarMappable(norm=Normalize(-1, 1),
                                                                            cmap=self.align_cmap))
        self.cax_align.xaxis.set_major_locator(FixedLocator([-1, 0, 1]))
        self.cax_align.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: {-1: "−1 against", 0: "0", 1: "+1 with"}.get(int(round(v)), "")))
        self.cax_align.tick_params(axis="x", labelsize=7)

    @staticmethod
    def _image(ax: Any) -> Any:
        return ax.imshow(np.zeros((1, 1, 4), np.uint8), origin="lower", aspect="auto", interpolation="nearest",
                         extent=(0, 1, -0.5, 0.5), animated=True)

    def _colorbar(self, cax: Any, mappable: ScalarMappable) -> Any:
        bar = self.fig.colorbar(mappable, cax=cax, orientation="horizontal")
        bar.outline.set_linewidth(0.5)
        cax.tick_params(labelsize=7.5, length=2, pad=1)
        bar.set_label("")
        return bar

    def _build_bars(self) -> None:
        gb, db = self.ax_gbar.transAxes, self.ax_drift.transAxes
        band_kw: dict[str, Any] = dict(facecolor="#f1f1f1", edgecolor="#c4c4c4", hatch="////", linewidth=0)
        # frozen rows of the alignment panel: grey over its whole width, above its "no data" dots
        self.frozen_align = PolyCollection([], transform=self.ax_align.transAxes, facecolor=C_FROZEN, linewidth=0,
                                           zorder=0.5)
        self.ax_align.add_collection(self.frozen_align, autolim=False)
        self.frozen_gbar = PolyCollection([], transform=gb, **band_kw)
        self.frozen_drift = PolyCollection([], transform=db, **band_kw)
        self.ax_gbar.add_collection(self.frozen_gbar, autolim=False)
        self.ax_drift.add_collection(self.frozen_drift, autolim=False)
        self.grad_bars = PolyCollection([], transform=gb, linewidth=0, animated=True)
        self.drift_bars = PolyCollection([], transform=db, facecolor=C_DRIFT, linewidth=0, animated=True)
        self.ax_gbar.add_collection(self.grad_bars, autolim=False)
        self.ax_drift.add_collection(self.drift_bars, autolim=False)
        for ax in (self.ax_gbar, self.ax_drift):
            ax.set_xscale("log")
            ax.tick_params(axis="y", left=False, labelleft=False)
            ax.grid(True, axis="x", color=C_GRID, linewidth=0.7)
            ax.set_axisbelow(True)
        self.ax_gbar.tick_params(axis="x", labelbottom=False)

    def _build_texts(self) -> None:
        bold: dict[str, Any] = dict(va="bottom", fontweight="bold", color=C_TEXT)
        muted: dict[str, Any] = dict(fontsize=7.5, color=C_MUTED)
        self.texts = {
            "grad": self.fig.text(0, 0, "Gradient norm per layer (log colour)", ha="left", fontsize=10.5, **bold),
            "align": self.fig.text(0, 0, "Old-task alignment", ha="left", fontsize=8.5, **bold),
            "gbar": self.fig.text(0, 0, "recent grad", ha="center", fontsize=9, **bold),
            "drift": self.fig.text(0, 0, "drift", ha="center", fontsize=9, **bold),
            "rows": self.fig.text(0, 0, "▲ output  ▼ input\n❄ grey: frozen", ha="left", va="center",
                                  linespacing=1.25, **muted),
            "drift_unit": self.fig.text(0, 0, "‖w−w₀‖ / ‖w₀‖", ha="center", va="bottom", **muted),
            "hint": self.fig.text(0, 0, "◀ keeps pulling against: freeze?", ha="left", va="bottom", fontsize=7,
                                  color=C_HINT),
        }

    def place(self, R: Any, alignment: bool) -> None:
        """Put the axes and texts where the layout ``R`` (a ``_Rects``) says."""
        self.rects = R
        for ax, rect in ((self.ax_heat, R.heat), (self.ax_align, R.align), (self.ax_gbar, R.gbar),
                         (self.ax_drift, R.drift), (self.cax, R.cbar), (self.cax_align, R.acbar)):
            ax.set_position(rect)
        for ax in (self.ax_align, self.cax_align):
            ax.set_visible(alignment)
        px, py = 1 / R.w, 1 / R.h
        ry = (R.top_px + 5) * py
        t = self.texts
        t["grad"].set_position((R.label_x0 * px, ry))
        t["grad"].set_text("Gradient norm (log colour)" if alignment else "Gradient norm per layer (log colour)")
        t["align"].set_position((R.align[0], ry))
        t["align"].set_visible(alignment)
        t["rows"].set_text("▲ output  ▼ input\n❄ grey: frozen" + ("\ndots: no value" if alignment else ""))
        t["gbar"].set_position((R.gbar[0] + R.gbar[2] / 2, ry))
        t["gbar"].set_text("grad" if alignment else "recent grad")  # beside "Old-task alignment": no run-on
        t["drift"].set_position((R.drift[0] + R.drift[2] / 2, ry))
        t["rows"].set_position((R.label_x0 * px, (R.bottom_px - 20) * py))
        t["drift_unit"].set_position((R.drift[0] + R.drift[2] / 2, 5 * py))
        t["hint"].set_position((R.align[0], 5 * py))
        t["hint"].set_visible(alignment)

    # ------------------------------------------------------------------ per frame: numbers
    def compute(self, snap: HistorySnapshot, frozen: Sequence[str], d: dict[str, Any], prev: Layout | None,
                final: bool) -> dict[str, Any]:
        """Heatmaps, bars and drift into ``d``; returns the block's layout fields."""
        meta: Mapping[str, Any] = d["meta"]
        gs, names, G = snap.layer_series(Series.GRAD_NORM)
        if not names:
            names = tuple(str(n) for n in (meta.get(Meta.LAYERS) or ()))
            G = np.empty((0, len(names)), np.float32)
            gs = np.empty(0)
        L = len(names)
        fz = set(frozen)
        no_grad = (~np.isfinite(G[-1] if len(G) else np.zeros(L))).tolist()
        frozen_flags = tuple(a or n in fz for a, n in zip(no_grad, names)) if fz else tuple(no_grad)
        d["names"] = names
        a_steps, a_cols, A = snap.layer_series(Series.GRAD_ALIGNMENT)
        alignment = bool(len(a_steps)) or (bool(meta.get(Meta.ALIGNMENT)) and not final)
        self.target = self.all_rects[alignment]  # the layout this frame will have
        norm = self._grad_heatmap(gs, G, d, prev, final)
        drift_lim = self._drift(snap, names, d, prev)
        d["hint_rows"] = self._alignment(a_steps, a_cols, A, names, d)
        present = {k for k, ok in (("drift", len(snap.layer_series(Series.DRIFT)[0])), ("grad", len(gs))) if ok}
        return dict(layers=tuple(names), frozen=frozen_flags, norm=tf(norm), drift_lim=tf(drift_lim),
                    alignment=alignment, present=present)

    def _columns(self, width_px: float) -> int:
        return max(1, min(self.max_columns, int(width_px * self.scale)))

    def _grad_heatmap(self, gs: np.ndarray, G: np.ndarray, d: dict[str, Any], prev: Layout | None,
                      final: bool) -> tuple[float, float]:
        x0, x1 = d["xlim"]
        L = G.shape[1]
        norm = prev.norm if prev is not None else (1e-4, 1.0)
        d["heat"] = None
        d["grad_recent"] = np.full(L, np.nan)
        if not (len(gs) and L):
            return norm
        img, extent = pooled_image(self._pooler, gs, G, x0, x1, self._columns(self.target.heat_px[0]))
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
        d["heat"] = (img.astype(np.float32), extent)
        rec = G[-_RECENT_GRAD_ROWS:]
        rf = np.isfinite(rec)
        with np.errstate(invalid="ignore", divide="ignore"):
            d["grad_recent"] = np.where(rf.any(0), np.where(rf, rec, 0).sum(0) / np.maximum(rf.sum(0), 1), np.nan)
        return norm

    def _drift(self, snap: HistorySnapshot, names: tuple[str, ...], d: dict[str, Any],
               prev: Layout | None) -> tuple[float, float]:
        ds, dnames, D = snap.layer_series(Series.DRIFT)
        drift = np.full(len(names), np.nan)
        if len(ds) and len(dnames):
            drift = _aligned(names, dnames, D[-1:])[0].astype(np.float64)
        d["drift"] = drift
        drift_lim = prev.drift_lim if prev is not None else (1e-4, 1.0)
        _, dhi = finite_range(drift, positive=True)
        if math.isfinite(dhi) and (prev is None or dhi > drift_lim[1] or dhi < drift_lim[1] / 1e3):
            top = 10 ** math.ceil(math.log10(dhi * 1.05))
            drift_lim = (top / 10 ** _DRIFT_DECADES, top)
        return drift_lim

    def _alignment(self, steps: np.ndarray, cols: Sequence[str], A: np.ndarray, names: tuple[str, ...],
                   d: dict[str, Any]) -> list[int]:
        """The alignment heatmap into ``d``; returns the rows of the layers where the new loss
        keeps pulling against the old task (marked beside the panel: a hint to freeze them)."""
        d["align"] = None
        if not (len(steps) and len(names)):
            return []
        A = _aligned(names, cols, A)
        x0, x1 = d["xlim"]
        img, extent = pooled_image(self._align_pooler, steps, A, x0, x1, self._columns(self.target.align_px))
        d["align"] = (img, extent)
        against = set(pulling_against(steps, names, A, samples=_HINT_SAMPLES))
        return [i for i, n in enumerate(names) if n in against]

    # ------------------------------------------------------------------ background
    def apply_layout(self, lay: Layout, steps_fmt: Any) -> None:
        for ax in (self.ax_heat, self.ax_align):
            ax.set_xlim(*lay.xlim)
            ax.xaxis.set_major_formatter(steps_fmt)
        L = len(lay.layers)
        self.ax_heat.set_ylim(-0.5, max(L, 1) - 0.5)
        self.norm.vmin, self.norm.vmax = lay.norm
        self._set_row_labels(lay)
        band = [quad(0, 1, (i + 0.5) / max(L, 1), 1 / max(L, 1)) for i, f in enumerate(lay.frozen) if f]
        self.frozen_gbar.set_verts(band)
        self.frozen_align.set_verts(band)
        self.frozen_drift.set_verts(band)
        self.ax_gbar.set_xlim(*lay.norm)
        self.ax_drift.set_xlim(*lay.drift_lim)
        for axis, lim in ((self.cax.xaxis, lay.norm), (self.ax_gbar.xaxis, lay.norm),
                          (self.ax_drift.xaxis, lay.drift_lim)):
            axis.set_major_locator(FixedLocator(decade_ticks(*lim, most=2)))
            axis.set_major_formatter(FuncFormatter(fmt_decade))
            axis.set_minor_locator(NullLocator())
        colors = np.array([[0.62, 0.62, 0.62, 1.0] if f else [0.549, 0.337, 0.294, 1.0] for f in lay.frozen])
        self.drift_bars.set_facecolor(colors if L else C_DRIFT)

    def _set_row_labels(self, lay: Layout) -> None:
        """Choose the layer names to show: all when rows are tall enough, else every k-th (from
        the top, so the head is always named), shortened to the label column, frozen ones grey."""
        R = self.rects
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

    def row_label_box(self, W: float, H: float) -> Bbox:
        """Where :meth:`draw_row_labels` may draw (display pixels of a ``W`` x ``H`` frame)."""
        x0, y0, _, h = self.ax_heat.get_position().bounds
        margin = 10 * self.scale  # half a row label's height, and then some
        return Bbox.from_extents(self.rects.label_x0 / self.rects.w * W - margin, y0 * H - margin,
                                 x0 * W, (y0 + h) * H + margin)

    def draw_row_labels(self, pixels: np.ndarray, L: int) -> None:
        x0, y0, _, h = self.ax_heat.get_position().bounds
        H, W = pixels.shape[:2]
        x = x0 * W - 4 * self.scale
        for i, text, frozen in self.row_labels:
            y = H - (y0 + (i + 0.5) / L * h) * H
            self.stamper.draw(pixels, text, x, y, size_pt=self._row_fs, italic=frozen,
                              color=C_FROZEN_TEXT if frozen else C_TEXT, keep=True)

    # ------------------------------------------------------------------ per frame: artists
    def _mark_rows(self, pixels: np.ndarray, rows: Sequence[int]) -> None:
        """A red ◀ right of the alignment heatmap on each row where the new loss keeps pulling
        against the old task (drawn per frame: a hint that changes does not redraw the background)."""
        if not rows:
            return
        x0, y0, w, h = self.ax_align.get_position().bounds
        H, W = pixels.shape[:2]
        L = len(self.hint_names)
        for i in rows:
            y = H - (y0 + (i + 0.5) / max(L, 1) * h) * H
            self.stamper.draw(pixels, "◀", (x0 + w) * W + 1, y, size_pt=6.5, color=C_HINT, anchor="lm", keep=True)

    def set_data(self, lay: Layout, d: dict[str, Any]) -> None:
        self.hint_names = lay.layers
        L = len(lay.layers)
        for image, cells, colours in ((self.heatmap, d["heat"], lambda v: self.log_colours(v, *lay.norm)),
                                      (self.align_map, d["align"] if lay.alignment else None,
                                       lambda v: self.align_colours(v, lay.frozen))):
            if cells is not None:
                image.set_data(colours(cells[0]))
                image.set_extent(cells[1])
            image.set_visible(cells is not None)
        lo, hi = lay.norm
        g = d["grad_recent"]
        self.grad_bars.set_verts(bars(_log_fraction(g, lo, hi), L))
        self.grad_bars.set_facecolor(self.log_colours(g, lo, hi) / 255.0)
        self.drift_bars.set_verts(bars(_log_fraction(d["drift"], *lay.drift_lim), L))

    def log_colours(self, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """RGBA (uint8) of ``values`` on the log colour scale ``[lo, hi]``; NaN -> frozen grey."""
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (np.log10(values) - math.log10(lo)) * (255.0 / (math.log10(hi) - math.log10(lo)))
        return self._lookup(self.lut, values, t)

    def align_colours(self, values: np.ndarray, frozen: Sequence[bool] = ()) -> np.ndarray:
        """RGBA (uint8) of alignments (layers x columns) on ``RdBu`` from −1 to +1; NaN on a
        ``frozen`` row -> grey, NaN elsewhere (no value) -> transparent: the dotted background."""
        out = self._lookup(self.align_lut, values, (values + 1.0) * 127.5)
        rows = np.zeros(values.shape[0], bool)
        rows[:len(frozen)] = np.asarray(frozen, bool)[:values.shape[0]]
        out[~np.isfinite(values) & ~rows[:, None]] = 0
        return out

    def _lookup(self, lut: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(values)
        idx = np.clip(np.where(bad, 0, np.nan_to_num(t, nan=0.0, neginf=0.0, posinf=255.0)), 0, 255).astype(np.intp)
        out = lut[idx]
        out[bad] = self.bad
        return out

    def draw(self, pixels: np.ndarray, renderer: Any, hint_rows: Sequence[int] = ()) -> None:
        blit_cells(pixels, self.heatmap, self.ax_heat)
        if self.ax_align.get_visible():
            blit_cells(pixels, self.align_map, self.ax_align)
            self._mark_rows(pixels, hint_rows)
        for artist in (self.grad_bars, self.drift_bars):
            if artist.get_visible():
                artist.draw(renderer)


def _log_fraction(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.clip((np.log10(values) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)), 0, 1)
    return np.where(np.isfinite(f), f, 0.0)
