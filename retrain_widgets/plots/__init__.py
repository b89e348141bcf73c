"""Plots of a retraining run: the live dashboard frame and small LR previews.

matplotlib's object API only (``Figure`` + Agg canvas, never pyplot): frames are drawn from
the training thread. Nothing here imports ipywidgets or IPython.
"""

from __future__ import annotations

from .bench import frame_times
from .live import LiveFigure
from .small import lr_finder_png, lr_preview_png

__all__ = ["LiveFigure", "frame_times", "lr_finder_png", "lr_preview_png"]
