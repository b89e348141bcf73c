"""Deprecated alias of :mod:`retrain_widgets.plots.comparison`, kept only until the widgets
import the new path; do not use in new code."""

from __future__ import annotations

from .comparison import *  # noqa: F403
from .comparison import __all__  # noqa: F401
