"""The numbers of a live frame's time panels (loss, metrics, learning rate): decimated series and
axis limits that stay fixed until the data leave them. Pure functions of a snapshot and the
previous frame's layout; :class:`~retrain_widgets.plots.live.LiveFigure` draws what they give."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.names import Meta, Series
from ._util import (
    ema,
    envelope,
    finite_range,
    fmt_value,
    linear_limits,
    log_nice_down,
    log_nice_up,
    nice_up,
    spans_decades,
    stride,
)

if TYPE_CHECKING:
    from ..core.history import HistorySnapshot

_UNIT_METRICS = {"f1", "auc", "roc_auc", "precision", "recall", "iou", "dice"}


def unit_metric(name: str | None) -> bool:
    """Metrics that live in [0, 1] (accuracy and friends): their axis is fixed to [0, 1.02]."""
    if not name:
        return False
    n = str(name).lower()
    return "acc" in n or n in _UNIT_METRICS


@dataclass(frozen=True)
class Layout:
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
    alignment: bool = False  # the "alignment with the old task" heatmap is laid out


def tf(t: tuple[float, float]) -> tuple[float, float]:
    return (float(t[0]), float(t[1]))


def as_int(x: Any) -> int:
    try:
        return int(x or 0)
    except (TypeError, ValueError):
        return 0


def x_limits(prev: Layout | None, last: float, total: int, final: bool) -> tuple[float, float]:
    """The step axis: fixed until the data leave it (to the run's total steps when known)."""
    if final:
        return (0.0, max(last, 1.0))
    want = float(total) if total > 0 and last <= total else None
    x1p = prev.xlim[1] if prev is not None else None
    if x1p is not None and last <= x1p and (want is None or x1p == want):
        return (0.0, x1p)
    return (0.0, want if want is not None else nice_up(max(last * 1.5, 10.0)))


def decimated(steps: np.ndarray, values: np.ndarray, x0: float, width: float, nb: int,
              max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """A line's points: as they are, or their min/max envelope in ``nb`` bins beyond ``max_points``."""
    values = np.asarray(values, np.float64)
    if len(steps) > max_points:
        xs, ys, _, _ = envelope(steps, values, x0, width, nb)
        return xs, ys
    return steps, values


def loss_lines(snap: HistorySnapshot, d: dict[str, Any], x0: float, width: float, nb: int, max_points: int,
               smooth: float) -> None:
    """Raw and smoothed training loss, validation loss and the old task's losses, into ``d``."""
    s_loss, v_loss = snap.series(Series.TRAIN_LOSS)
    v = np.where(np.isfinite(v_loss), v_loss, np.nan).astype(np.float64)
    if len(s_loss) > max_points:
        xs, ys, cx, means = envelope(s_loss, v, x0, width, nb)
        sm_x, sm_y = cx, ema(means, smooth)
    else:
        xs, ys = s_loss, v
        sm_x, sm_y = s_loss, ema(v, smooth)
    d["loss"] = (xs, ys)
    d["smooth"] = (sm_x, sm_y)
    d[Series.VAL_LOSS] = snap.series(Series.VAL_LOSS)
    d[Series.OLD_LOSS] = snap.series(Series.OLD_LOSS)
    d[Series.OLD_BATCH_LOSS] = decimated(*snap.series(Series.OLD_BATCH_LOSS), x0, width, nb, max_points)


def loss_limits(d: dict[str, Any], prev: Layout | None, waiting: bool, final: bool) -> tuple[bool, tuple[float, float]]:
    """``(log scale?, y limits)`` of the loss panel."""
    ys, sm_y = d["loss"][1], d["smooth"][1]
    others = (d[Series.VAL_LOSS][1], d[Series.OLD_LOSS][1], d[Series.OLD_BATCH_LOSS][1])
    raw_lo, raw_hi = finite_range(ys, *others)
    sig_lo, sig_hi = finite_range(sm_y, *others)
    # a positive loss is shown on a log scale from the start: a falling loss then stays inside
    # the axes for decades, and the frame stays a cheap blit (a scale change is a full redraw); the
    # final frame keeps that scale (a log axis while training and a linear one at the end read as
    # two different curves)
    loss_log = bool(sig_lo > 0)
    if waiting or not math.isfinite(raw_lo):
        return False, (0.0, 1.0)
    if loss_log:
        need_lo = max(raw_lo, sig_lo / 10) if raw_lo > 0 else sig_lo / 10
        if prev is not None and prev.loss_log and prev.loss_ylim[0] <= need_lo and prev.loss_ylim[1] >= raw_hi:
            return True, prev.loss_ylim
        # a falling loss keeps falling: start with two decades of room below the first values,
        # and when it leaves the bottom, leave it more room; half a decade above, so that an early
        # spike stays inside too (a full redraw costs about ten blitted frames)
        up = 1.05 if final else 3.0
        if final:
            down = 1.05
        elif prev is not None and prev.loss_log and need_lo < prev.loss_ylim[0]:
            down = 10.0
        else:
            down = 1000.0
        return True, (log_nice_down(need_lo / down), log_nice_up(raw_hi * up))
    if prev is not None and not prev.loss_log and prev.loss_ylim[0] <= raw_lo and prev.loss_ylim[1] >= raw_hi:
        return False, prev.loss_ylim
    return False, linear_limits(raw_lo, raw_hi, 0.03 if final else 0.1)


def metric_limits(prev: tuple[float, float] | None, name: str, values: np.ndarray,
                  more: np.ndarray | None, final: bool) -> tuple[float, float]:
    if unit_metric(name):
        return (0.0, 1.02)
    lo, hi = finite_range(values, more if more is not None else np.empty(0))
    if not math.isfinite(lo):
        return prev or (0.0, 1.0)
    if prev is not None and prev[0] <= lo and prev[1] >= hi:
        return prev
    return linear_limits(lo, hi, 0.05 if final else 0.25)


def metrics(snap: HistorySnapshot, d: dict[str, Any], prev: Layout | None, final: bool) -> dict[str, Any]:
    """The metrics panel: its series into ``d``; returns its layout fields."""
    meta: Mapping[str, Any] = d["meta"]
    d[Series.VAL_METRIC] = snap.series(Series.VAL_METRIC)
    d[Series.OLD_METRIC] = snap.series(Series.OLD_METRIC)
    metric_name = str(meta.get(Meta.METRIC) or "")
    has_old = len(d[Series.OLD_METRIC][0]) > 0
    old_name = str(meta.get(Meta.OLD_METRIC) or (metric_name if has_old else ""))
    old_axis = has_old or (bool(meta.get(Meta.HAS_OLD_VAL)) and bool(meta.get(Meta.OLD_METRIC)) and not final)
    same_axis = (not old_axis or old_name == metric_name or (unit_metric(old_name) and unit_metric(metric_name)))
    metric_ylim = metric_limits(prev.metric_ylim if prev else None, metric_name, d[Series.VAL_METRIC][1],
                                None if not same_axis else d[Series.OLD_METRIC][1], final)
    old_ylim = None
    if not same_axis:
        old_ylim = tf(metric_limits(prev.old_ylim if prev else None, old_name, d[Series.OLD_METRIC][1], None, final))
    return dict(metric_ylim=tf(metric_ylim), old_ylim=old_ylim, metric_name=metric_name, old_name=old_name)


def planned_lr(meta: Mapping[str, Any]) -> float:
    config = meta.get(Meta.CONFIG)
    lr = config.get("lr") if isinstance(config, Mapping) else None
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr) else 0.0


def learning_rates(snap: HistorySnapshot, d: dict[str, Any], x0: float, width: float, nb: int,
                   max_points: int) -> None:
    """The top group's LR, and the other groups' where they differ, into ``d``."""
    s_lr, v_lr = snap.series(Series.LR)
    g_steps, g_names, g_vals = snap.layer_series(Series.GROUP_LR)
    if not len(s_lr) and g_vals.size:
        s_lr, v_lr = g_steps, g_vals[:, -1]
    d[Series.LR] = decimated(s_lr, v_lr, x0, width, nb, max_points)
    groups = []
    if g_vals.ndim == 2 and g_vals.shape[1] > 1 and g_vals.shape[0]:
        top = g_vals[:, -1]
        tol = 1e-12 + 1e-6 * np.abs(top)
        rows = stride(g_vals.shape[0], max_points // 2)
        for j in range(g_vals.shape[1] - 1):
            col = g_vals[:, j]
            if np.any(np.abs(col - top) > tol):
                groups.append((g_names[j], g_steps[rows], col[rows].astype(np.float64)))
    d["groups"] = groups


def lr_limits(d: dict[str, Any], prev: Layout | None, final: bool) -> dict[str, Any]:
    """The LR panel's layout fields: log scale when the LRs span two decades, limits with room."""
    ly, groups = d[Series.LR][1], d["groups"]
    lr_lo, lr_hi = finite_range(ly, *[g[2] for g in groups], positive=True)
    planned = planned_lr(d["meta"])  # the configured (peak) LR: a warm-up then redraws nothing
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
    elif prev is not None and not prev.lr_log and prev.lr_ylim[1] >= lr_hi:
        lr_ylim = prev.lr_ylim
    else:
        lr_ylim = (0.0, nice_up(lr_hi * (1.08 if final else 1.5)))
    return dict(lr_log=lr_log, lr_ylim=tf(lr_ylim), groups=len(groups))


def present_series(d: dict[str, Any], final: bool) -> set[str]:
    """The time panels' series to lay out. Series the run will have (the engine says so in
    meta) are laid out from the first frame, so their first points do not force a full redraw."""
    meta = d["meta"]
    will_val, will_old = bool(meta.get(Meta.HAS_VAL)) and not final, bool(meta.get(Meta.HAS_OLD_VAL)) and not final
    will_probe = bool(meta.get(Meta.ALIGNMENT)) and not final
    return {k for k, ok in (
        (Series.VAL_LOSS, len(d[Series.VAL_LOSS][0]) or will_val), (Series.VAL_METRIC, len(d[Series.VAL_METRIC][0]) or will_val),
        (Series.OLD_METRIC, len(d[Series.OLD_METRIC][0]) or will_old), (Series.OLD_LOSS, len(d[Series.OLD_LOSS][0]) or will_old),
        (Series.OLD_BATCH_LOSS, len(d[Series.OLD_BATCH_LOSS][0]) or will_probe)) if ok}


def status_parts(d: dict[str, Any], layout: Layout) -> list[str]:
    """The status line, most important first (the figure keeps what fits)."""
    if layout.waiting:
        return ["step 0" + (f" / {d['total']:,}" if d["total"] else "")]
    last = int(d["last"])
    # steps done (the engine records step i after its i-th optimizer step, from 0): "92 / 92" at the
    # end, as the progress bar says, not "91 / 92"
    done = last + 1 if layout.final and d["total"] and last + 1 == d["total"] else last
    parts = [f"step {done:,}" + (f" / {d['total']:,}" if d["total"] else "")]
    sm = d["smooth"][1]
    if len(sm) and math.isfinite(sm[-1]):
        parts.append(f"loss {fmt_value(float(sm[-1]))}")
    vm = d[Series.VAL_METRIC][1]
    if len(vm):
        parts.append(f"val {layout.metric_name or 'metric'} {fmt_value(float(vm[-1]))}")
    om = d[Series.OLD_METRIC][1]
    if len(om):
        parts.append(f"old-task {layout.old_name or 'metric'} {fmt_value(float(om[-1]))}")
    return parts
