"""retrain_widgets: retrain a pretrained PyTorch model with a different loss, interactively.

The core (freezing, losses, schedules, the training engine, the run store) is plain PyTorch and
usable from any Python; it is re-exported here. The notebook dashboard :class:`RetrainStudio`
, :func:`compare` and :func:`watch` (the dashboard on the user's own loop) are imported on first use, so ``import retrain_widgets`` does not pull in
ipywidgets or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import core
from .core import *  # noqa: F403 - the core's public names are the package's

__version__ = "0.1.0"

_LAZY = {"RetrainStudio": ".widgets", "LayerTreeView": ".widgets", "HeadlessStudio": ".headless",
         "compare": ".comparison", "Comparison": ".comparison", "watch": ".watching", "WatchedLoop": ".watching",
         "RayExecutor": ".executors", "ThreadExecutor": ".executors", "Executor": ".executors",
         "run_grid": ".executors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name == "examples":
        return importlib.import_module(".examples", __name__)
    raise AttributeError(f"module 'retrain_widgets' has no attribute {name!r}")


__all__ = [*core.__all__, *_LAZY, "examples", "__version__"]  # noqa: F405 - lazy names (__getattr__)
