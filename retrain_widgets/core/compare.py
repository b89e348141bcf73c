"""Deprecated alias of :mod:`retrain_widgets.core.comparison` (and of
:func:`retrain_widgets.comparison.table_html`, which builds HTML and so left the core).
Kept only until the widgets import the new paths; do not use in new code."""

from __future__ import annotations

import importlib
from typing import Any

from .comparison import *  # noqa: F403
from .comparison import __all__ as _names

__all__ = [*_names, "table_html"]  # noqa: F405 - table_html: module __getattr__


def __getattr__(name: str) -> Any:
    if name == "table_html":
        return importlib.import_module("retrain_widgets.comparison").table_html
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
