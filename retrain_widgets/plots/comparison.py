"""Overlay of several runs in one figure with a shared legend."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from ..core.names import Series
from ..core.smoothing import ema
from ._util import encode_png, short_name

__all__ = ["comparison_figure", "comparison_png", "gradient_rows"]

_LOCK = threading.Lock()
_COLOURS = ("#1f77b4", "#e8710a", "#2ca02c", "#d62728", "#8e44ad", "#8c564b", "#e377c2", "#17becf",
            "#7f7f7f", "#bcbd22")


def _series(summary: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    h = summary.history
    if h is None:
        return np.empty(0), np.empty(0)
    return h.series(name)


def _median_grad(history: Any) -> dict[str, float]:
    """Median gradient norm of each layer that has any (frozen layers have none: left out)."""
    if history is None:
        return {}
    _, cols, g = history.layer_series(Series.GRAD_NORM)
    if not len(cols) or not g.size:
        return {}
    finite = np.where(np.isfinite(g), g, np.nan)
    has = np.isfinite(finite).any(axis=0)
    return dict(zip((c for c, h in zip(cols, has) if h), np.nanmedian(finite[:, has], axis=0).tolist()))


def gradient_rows(summaries: Sequence[Any]) -> tuple[list[str], list[dict[str, float]]]:
    """The gradient panel's rows: the layers that have a gradient in at least one run, in the
    model's order (a layer frozen in every run has no data and no row), and each run's medians."""
    grads = [_median_grad(s.history) for s in summaries]
    orders = [list(s.history.layer_series(Series.GRAD_NORM)[1]) for s in summaries if s.history is not None]
    order = list(dict.fromkeys([*max(orders, key=len, default=[]), *(n for g in grads for n in g)]))
    return [n for n in order if any(n in g for g in grads)], grads


def _legend(fig: Figure, handles: list[Any], panels: tuple[Any, ...]) -> None:
    """One legend over the panels, in as many columns (at most 5) as fit the figure's width; the
    panels move down to make room for its rows."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(min(len(handles), 5), 0, -1):
        legend = fig.legend(handles=handles, loc="upper center", ncol=ncol, fontsize=9, frameon=False,
                            bbox_to_anchor=(0.5, 0.995))
        box = legend.get_window_extent(renderer).transformed(fig.transFigure.inverted())
        if ncol == 1 or (box.x0 >= 0.005 and box.x1 <= 0.995):
            break
        legend.remove()
    top = min(0.84, box.y0 - 0.07)  # room for the panels' titles under it
    panels[0].get_subplotspec().get_gridspec().update(top=top)
    for ax in panels[:-1]:  # update() moves only pyplot's figures' axes
        ax.set_position(ax.get_subplotspec().get_position(fig))
    grad = panels[-1].get_position()
    panels[-1].set_position((grad.x0, grad.y0, grad.width, top - grad.y0))


def _label(name: str, limit: int = 90) -> str:
    """A run's name for the legend, cut to ``limit`` characters; its ``$`` escaped, so that it is shown as it
    is (never read as mathtext)."""
    return (name if len(name) <= limit else name[: limit - 1] + "…").replace("$", r"\$")


def _axes(fig: Figure, metric: str, old_metric: str) -> tuple[Any, Any, Any, Any, Any]:
    """The five panels, titled: train loss, validation loss, metric, old-task metric, gradients."""
    grid = fig.add_gridspec(2, 2, left=0.06, right=0.56, bottom=0.1, top=0.84, wspace=0.3, hspace=0.45)
    panels = (fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 0]),
              fig.add_subplot(grid[1, 1]), fig.add_axes((0.74, 0.1, 0.245, 0.74)))  # room for layer names
    titles = ("train loss (smoothed)", "validation loss", f"validation {metric}",
              f"old task {old_metric} (forgetting)", "median ‖grad‖ per layer")
    for ax, title in zip(panels, titles):
        ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
        ax.grid(True, color="#e4e4e4", linewidth=0.8)
        ax.tick_params(labelsize=8)
    return panels


def _scale_and_label(panels: tuple[Any, ...], metric: str, old_metric: str, layer_names: list[str]) -> None:
    ax_loss, ax_val, ax_metric, ax_old, ax_grad = panels
    for ax in (ax_loss, ax_val):
        lo_hi = [v for line in ax.get_lines() for v in np.asarray(line.get_ydata(), float) if np.isfinite(v)
                 and v > 0]
        if lo_hi and max(lo_hi) / min(lo_hi) > 30:
            ax.set_yscale("log")
            # a few plain labels (1-2-5 within two decades, decades beyond): minor labels ("5 × 10⁻¹",
            # "4 × 10⁻¹" ...) overlapped and ran out of the panel
            subs = (1.0, 2.0, 5.0) if max(lo_hi) / min(lo_hi) < 100 else (1.0,)
            ax.yaxis.set_major_locator(LogLocator(subs=subs, numticks=12))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax_metric, ax_old):
        ax.set_xlabel("step", fontsize=8)
        if "accuracy" in (metric, old_metric):
            ax.set_ylim(-0.02, 1.02)
    ax_grad.set_xscale("log")
    ax_grad.xaxis.set_major_locator(LogLocator(numticks=6))
    ax_grad.xaxis.set_minor_locator(NullLocator())
    ax_grad.xaxis.set_minor_formatter(NullFormatter())
    ax_grad.set_yticks(np.arange(len(layer_names)))
    # long dotted names (bert.encoder.layer.0.attention.self.query) keep their informative end
    ax_grad.set_yticklabels([short_name(n, 24) for n in layer_names], fontsize=7 if len(layer_names) < 30 else 5,
                            parse_math=False)
    ax_grad.set_xlabel("‖grad‖ (frozen layers absent)", fontsize=8)
    for ax in (ax_val, ax_metric, ax_old):
        if not ax.get_lines():
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes,
                    color="#6b6b6b", fontsize=9)


def comparison_png(summaries: Sequence[Any], width_px: int = 1000, height_px: int = 560, dpi: int = 100) -> bytes:
    """PNG of train loss (smoothed), validation loss, validation metric, old-task metric and
    the median gradient norm per layer, one colour per run, one legend for all panels.

    ``summaries`` are :class:`~retrain_widgets.core.comparison.RunSummary` objects (anything with
    ``name``, ``metrics`` and ``history``).
    """
    with _LOCK:
        fig = comparison_figure(summaries, width_px, height_px, dpi)
        return encode_png(fig.canvas)


def comparison_figure(summaries: Sequence[Any], width_px: int = 1000, height_px: int = 560,
                      dpi: int = 100) -> Figure:
    """The figure of :func:`comparison_png`, drawn."""
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    metric = next((s.metrics.get("metric") for s in summaries if s.metrics.get("metric")), "metric")
    old_metric = next((s.metrics.get("old_metric_name") for s in summaries if s.metrics.get("old_metric_name")),
                      "metric")
    panels = _axes(fig, metric, old_metric)
    ax_loss, ax_val, ax_metric, ax_old, ax_grad = panels
    handles = []
    layer_names, grads = gradient_rows(summaries)
    for i, s in enumerate(summaries):
        colour = _COLOURS[i % len(_COLOURS)]
        steps, loss = _series(s, "train_loss")
        (line,) = ax_loss.plot(steps, ema(loss, 0.9), color=colour, linewidth=1.6, label=_label(s.name))
        handles.append(line)
        for ax, name in ((ax_val, Series.VAL_LOSS), (ax_metric, Series.VAL_METRIC), (ax_old, Series.OLD_METRIC)):
            st, v = _series(s, name)
            if len(st):
                ax.plot(st, v, color=colour, marker="o", markersize=3.5, linewidth=1.4)
        if grads[i]:
            # points, not a line: a line from layer to layer read as a trend across layers
            ax_grad.plot([grads[i].get(n, np.nan) for n in layer_names], np.arange(len(layer_names)),
                         color=colour, marker="o", markersize=4, linestyle="none")
    _scale_and_label(panels, metric, old_metric, layer_names)
    if handles:
        _legend(fig, handles, panels)
    else:
        fig.text(0.5, 0.95, "no runs to compare yet", ha="center", fontsize=11, color="#6b6b6b")
    fig.canvas.draw()
    return fig
