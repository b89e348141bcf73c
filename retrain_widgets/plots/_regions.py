"""Partial redraws of the live figure's background: when only some panels' limits changed, only
those panels are redrawn into the cached background.

A full redraw of the live figure costs ~10x a blitted frame, and most of them used to come from
one panel whose limits had to grow (the loss axis reaching a new decade, the drift scale). A
panel's *region* is what its axes drew (their tight box: ticks, tick labels, axis labels, title,
legend) before and after the change. It is cleared to the figure's face colour and the panel's
axes, and every other artist whose box touches the region, are drawn again in the figure's
order; pixels outside the regions are kept. So the frame is the one a full redraw would give
(``tests/test_plots.py`` compares them byte for byte). Only a region that touches what
matplotlib did not draw (the layer names, drawn with Pillow) is refused: then the caller
redraws everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
from matplotlib.transforms import Bbox

__all__ = ["PANEL_FIELDS", "Regions", "changed_panels"]

#: The layout fields that only one panel's background depends on (see ``_frame.Layout``).
#: A change in any other field redraws the whole figure.
PANEL_FIELDS: dict[str, tuple[str, ...]] = {
    "loss": ("loss_log", "loss_ylim"),
    "metric": ("metric_ylim", "old_ylim", "metric_name", "old_name"),
    "lr": ("lr_log", "lr_ylim", "groups"),
    "norm": ("norm",),
    "drift": ("drift_lim",),
}

_PAD_PX = 2  # antialiasing reaches a pixel past an artist's box; regions keep this much apart


def changed_panels(prev: Any, new: Any) -> frozenset[str] | None:
    """The panels whose fields differ between two layouts; ``None`` when a field outside every
    panel differs (a full redraw)."""
    changed = {f.name for f in fields(new) if getattr(prev, f.name) != getattr(new, f.name)}
    panels = frozenset(p for p, names in PANEL_FIELDS.items() if changed.intersection(names))
    covered = {name for p in panels for name in PANEL_FIELDS[p]}
    return panels if changed <= covered else None


def _union(boxes: Iterable[Bbox | None]) -> Bbox | None:
    boxes = [b for b in boxes if b is not None and b.width > 0 and b.height > 0]
    return Bbox.union(boxes) if boxes else None


def _padded(box: Bbox) -> tuple[int, int, int, int]:
    """Whole pixels (x0, y0, x1, y1) around ``box``, display coordinates (origin bottom left)."""
    return (math.floor(box.x0) - _PAD_PX, math.floor(box.y0) - _PAD_PX,
            math.ceil(box.x1) + _PAD_PX, math.ceil(box.y1) + _PAD_PX)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class Regions:
    """What each panel and everything else drew into the background, to redraw panels alone.

    Parameters
    ----------
    fig
        The figure (its axes, then its texts, are the drawing order, as in ``Figure.draw``).
    panels
        Panel name -> the axes that draw it (a twin axes belongs to its host's panel).
    extra
        Called with the renderer after a full redraw: boxes of things drawn into the background
        outside matplotlib (display coordinates); a region that touches one is refused.
    face
        RGBA bytes of the figure's face colour.
    """

    def __init__(self, fig: Any, panels: Mapping[str, Sequence[Any]],
                 extra: Callable[[Any], Iterable[Bbox]], face: Sequence[int]) -> None:
        self.fig, self.panels, self.extra = fig, dict(panels), extra
        self.face = np.asarray(face, np.uint8)
        self._boxes: dict[str, Bbox | None] = {}
        self._others: list[tuple[Any, tuple[int, int, int, int]]] = []
        self._extra: list[tuple[int, int, int, int]] = []
        self.stale = True  # set after a full redraw: :meth:`measure` before the next :meth:`redraw`

    def _panel_box(self, name: str, renderer: Any) -> Bbox | None:
        return _union(ax.get_tightbbox(renderer) for ax in self.panels[name] if ax.get_visible())

    def _artists(self) -> list[Any]:
        """Top-level artists in the order ``Figure.draw`` draws them (stable sort by zorder)."""
        return sorted([*self.fig.axes, *self.fig.texts], key=lambda a: a.get_zorder())

    def measure(self, renderer: Any) -> None:
        """The box of every panel and of everything else drawn, while the artists still hold
        the layout of the last full redraw."""
        self._boxes = {name: self._panel_box(name, renderer) for name in self.panels}
        mine = {id(ax) for axes in self.panels.values() for ax in axes}
        self._others = []
        for artist in self._artists():
            if id(artist) in mine or not artist.get_visible() or (hasattr(artist, "get_text")
                                                                   and not artist.get_text()):
                continue
            box = artist.get_tightbbox(renderer)  # a Text's is its window extent
            if box is not None and box.width > 0 and box.height > 0:
                self._others.append((artist, _padded(box)))
        self._extra = [_padded(b) for b in self.extra(renderer) if b.width > 0 and b.height > 0]
        self.stale = False

    def redraw(self, names: Iterable[str], renderer: Any, pixels: np.ndarray) -> bool:
        """Redraw the panels ``names`` (their layout already applied) into ``pixels`` (the
        canvas' RGBA buffer, holding the old background): each region is cleared and everything
        that drew into it is drawn again; pixels outside the regions are kept. ``False``, with
        nothing drawn, when a region touches an extra box (pixels matplotlib cannot redraw)."""
        names = [n for n in self.panels if n in set(names)]
        new = {n: self._panel_box(n, renderer) for n in names}
        regions = [_padded(box) for n in names if (box := _union((self._boxes.get(n), new[n]))) is not None]
        if any(_overlap(r, e) for r in regions for e in self._extra):
            return False
        draw = {id(ax) for n in names for ax in self.panels[n]}
        boxes = [(ax, _padded(b)) for m, b in self._boxes.items() if m not in names and b is not None
                 for ax in self.panels[m]]
        draw |= {id(a) for a, box in (*self._others, *boxes) if any(_overlap(r, box) for r in regions)}
        before = pixels.copy()
        H, W = pixels.shape[:2]
        cuts = [np.s_[max(0, H - y1):max(0, H - y0), max(0, x0):max(0, x1)] for x0, y0, x1, y1 in regions]
        for cut in cuts:
            pixels[cut] = self.face
        for artist in self._artists():
            if id(artist) in draw and artist.get_visible():
                artist.draw(renderer)
        for cut in cuts:  # what was drawn outside the regions was already right
            before[cut] = pixels[cut]
        pixels[...] = before
        self._boxes.update(new)
        return True
