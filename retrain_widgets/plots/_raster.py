"""Pixel-level pieces of the live figure: step-bin pooling kept from frame to frame, heatmap
cells copied into the frame, text stamped with Pillow, bar quads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.colors import to_rgba_array
from PIL import Image, ImageDraw, ImageFont

from ._util import bins_of

__all__ = ["Pooler", "Stamper", "pooled_image", "blit_cells", "quad", "bars"]


class Pooler:
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


class Stamper:
    """Draws text straight into an RGBA frame with Pillow: the same DejaVu Sans as matplotlib,
    about five times faster per glyph. Used for the status line (new every frame) and the
    layer names (up to a hundred labels in each full redraw)."""

    def __init__(self, dpi: float) -> None:
        self.dpi = dpi
        self._fonts: dict[tuple[float, bool], Any] = {}
        self._masks: dict[tuple[str, float, bool, str], np.ndarray] = {}

    def font(self, size_pt: float, italic: bool = False) -> Any:
        key = (size_pt, italic)
        font = self._fonts.get(key)
        if font is None:
            from matplotlib.font_manager import FontProperties, findfont

            path = findfont(FontProperties(family="DejaVu Sans", style="oblique" if italic else "normal"))
            font = self._fonts[key] = ImageFont.truetype(path, size=size_pt * self.dpi / 72)
        return font

    def _mask(self, text: str, size_pt: float, italic: bool, anchor: str, w: int, h: int, keep: bool) -> np.ndarray:
        """The glyphs' coverage (0..1); with ``keep``, kept for the next time (row labels, marks)."""
        key = (text, size_pt, italic, anchor)
        mask = self._masks.get(key) if keep else None
        if mask is None:
            image = Image.new("L", (w, h), 0)
            ImageDraw.Draw(image).text((w - 1 if anchor[0] == "r" else 1, h / 2), text, font=self.font(size_pt, italic),
                                       fill=255, anchor=anchor)
            mask = np.asarray(image, np.float32) * (1 / 255)
            if keep:
                if len(self._masks) >= 512:
                    self._masks.clear()
                self._masks[key] = mask
        return mask

    def draw(self, pixels: np.ndarray, text: str, x: float, y: float, *, size_pt: float, color: str,
             anchor: str = "rm", italic: bool = False, keep: bool = False) -> None:
        """Draw ``text`` with its ``anchor`` ("rm": right-middle, "lm": left-middle) at pixel
        ``(x, y)`` counted from the top left; ``keep`` keeps its glyphs for the next time."""
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
        alpha = self._mask(text, size_pt, italic, anchor, w, h, keep)[b0 - top:b1 - top, a0 - left:a1 - left, None]
        rgb = pixels[b0:b1, a0:a1, :3]
        ink = to_rgba_array(color)[0][:3] * 255
        rgb[...] = (rgb * (1 - alpha) + ink * alpha + 0.5).astype(np.uint8)



def pooled_image(pooler: Pooler, steps: np.ndarray, values: np.ndarray, x0: float, x1: float,
                 ncol: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Layers x columns of per-bin means of a steps x layers matrix over ``[x0, x1]`` in ``ncol``
    bins (input side first, for ``origin="lower"``; an empty bin repeats its left neighbour), and
    the image's extent."""
    hw = (x1 - x0) / ncol
    b, sums, counts = pooler.pool(steps, values, x0, hw, ncol)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    b0, b1 = int(b.min()), int(b.max())
    pos = np.full(b1 - b0 + 1, -1, np.int64)
    pos[b - b0] = np.arange(len(b))
    pos = np.maximum.accumulate(pos)
    return means[pos].T, (x0 + b0 * hw, x0 + (b1 + 1) * hw, -0.5, values.shape[1] - 0.5)


def blit_cells(pixels: np.ndarray, im: Any, ax: Any) -> None:
    """Copy an image's cells into its pixels, nearest neighbour: what the AxesImage with
    ``interpolation="nearest"`` draws, without matplotlib's general resampler (~5x faster).
    Opaque cells replace the background's pixels; fully transparent ones (alpha 0) leave them."""
    if not im.get_visible():
        return
    cells = np.asarray(im.get_array())
    rows, cols = cells.shape[:2]
    x_left, x_right, y_bottom, y_top = im.get_extent()
    (X0, Y0), (X1, Y1) = ax.transData.transform([(x_left, y_bottom), (x_right, y_top)])
    box = ax.bbox
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
    block = cells[ri[::-1, None], ci[None, :]]
    if block.shape[-1] == 4 and not block[..., 3].all():
        target = pixels[H - r1:H - r0, c0:c1]
        np.copyto(target, block, where=block[..., 3:4] > 0)
        return
    pixels[H - r1:H - r0, c0:c1] = block


def quad(a: float, b: float, y: float, h: float = 1.0) -> np.ndarray:
    return np.array([(a, y - h / 2), (b, y - h / 2), (b, y + h / 2), (a, y + h / 2)])


def bars(frac: np.ndarray, n: int, h: float = 0.78) -> np.ndarray:
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

