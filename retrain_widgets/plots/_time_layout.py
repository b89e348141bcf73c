"""The live figure's time panels (loss, metrics, LR) set to a frame's layout: scales, limits,
ticks, legends above the axes, stage and change markers with their labels. A mixin of
:class:`~retrain_widgets.plots.live.LiveFigure`, which owns the axes and artists it sets."""

from __future__ import annotations

import math
from typing import Any

from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

from ..core.names import Series
from . import _frame
from ._frame import Layout as _Layout
from ._util import C_LR, C_MUTED, C_OLD, C_STAGE, C_TEXT, C_TRAIN, fmt_decade, fmt_plain, fmt_sci, short_name

__all__ = ["TimePanelLayout"]


class TimePanelLayout:
    """How a :class:`~retrain_widgets.plots._frame.Layout` is applied to the time panels (the
    attributes used here are made by ``LiveFigure._build``)."""

    ax_loss: Any
    ax_metric: Any
    ax_old: Any
    ax_lr: Any
    waiting_text: Any
    group_lines: list[Any]
    lr_line: Any
    loss_smooth_line: Any
    val_loss_line: Any
    old_batch_line: Any
    old_loss_line: Any
    val_metric_line: Any
    old_metric_line: Any
    _legends: list[Any]
    _marker_texts: list[Any]
    _time_axes: list[Any]
    _stage_lines: dict[Any, Any]
    _change_lines: dict[Any, Any]
    _rects: Any

    def _layout_loss(self, lay: _Layout) -> None:
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

    def _layout_metrics(self, lay: _Layout) -> None:
        ax = self.ax_metric
        ax.set_ylim(*lay.metric_ylim)
        if _frame.unit_metric(lay.metric_name):
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

    def _layout_lr(self, lay: _Layout) -> None:
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

    def _layout_legends(self, lay: _Layout) -> None:
        """Legends above the axes, right-aligned, so data never hide them."""
        for leg in self._legends:
            leg.remove()
        self._legends = []
        raw_proxy = Line2D([], [], color=C_TRAIN, lw=1.3, alpha=0.45)
        old_handle = (self.old_batch_line if Series.OLD_BATCH_LOSS in lay.present
                      else self.old_loss_line if Series.OLD_LOSS in lay.present else None)
        if old_handle is None:
            h_loss = [(raw_proxy, "train"), (self.loss_smooth_line, "train (smoothed)")]
            if Series.VAL_LOSS in lay.present:
                h_loss.append((self.val_loss_line, "validation"))
        else:
            h_loss = [(raw_proxy, "train"), (self.loss_smooth_line, "smoothed")]
            if Series.VAL_LOSS in lay.present:
                h_loss.append((self.val_loss_line, "val"))
            if Series.OLD_LOSS in lay.present and old_handle is self.old_batch_line:  # per epoch (dashed), per sample (dots)
                old_handle = (Line2D([], [], color=C_OLD, lw=1.4, ls="--", marker="s", ms=4), Line2D(
                    [], [], color=C_OLD, ls="none", marker="o", ms=3.2, alpha=0.8))
            h_loss.append((old_handle, "old task"))
        self._legend(self.ax_loss, h_loss)
        h_met = []
        if Series.VAL_METRIC in lay.present:
            h_met.append((self.val_metric_line, f"val {lay.metric_name or 'metric'}"))
        if Series.OLD_METRIC in lay.present:
            h_met.append((self.old_metric_line, f"old task {lay.old_name or 'metric'}"))
        if h_met:
            self._legend(self.ax_metric, h_met)
        if lay.groups:
            self._legend(self.ax_lr, [(self.lr_line, "top group"), (self.group_lines[0], "other groups")])

    def _legend(self, ax: Any, items: list[tuple[Any, str]]) -> None:
        leg = ax.legend([h for h, _ in items], [t for _, t in items], loc="lower right", bbox_to_anchor=(1.0, 1.0),
                        ncol=len(items), frameon=False, fontsize=8.5, borderaxespad=0.15, handlelength=1.6,
                        columnspacing=1.0, handletextpad=0.4)
        leg.set_animated(False)
        for h in leg.legend_handles:
            if h is not None:
                h.set_animated(False)
        self._legends.append(leg)

    def _layout_markers(self, lay: _Layout) -> None:
        for t in self._marker_texts:
            t.remove()
        self._marker_texts = []
        stage_x = [m[0] for m in lay.markers if m[1] == "stage"]
        change_x = [m[0] for m in lay.markers if m[1] == "change"]
        for ax in self._time_axes:
            self._stage_lines[ax].set_segments([[(x, 0), (x, 1)] for x in stage_x])
            self._change_lines[ax].set_segments([[(x, 0), (x, 1)] for x in change_x])
        self._label_markers(lay)

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
                            va="top", fontsize=7.5, color=C_STAGE if kind == "stage" else C_MUTED, clip_on=True,
                            parse_math=False)  # layer names as they are: never mathtext
                self._marker_texts.append(t)
