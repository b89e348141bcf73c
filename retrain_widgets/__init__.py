"""retrain_widgets: retrain a pretrained PyTorch model with a different loss, interactively.

The core (freezing, losses, schedules, the training engine) is plain PyTorch and usable from
any Python; the notebook dashboard :class:`RetrainStudio` is imported on first use, so
``import retrain_widgets`` does not pull in ipywidgets or matplotlib.
"""

from __future__ import annotations

from typing import Any

from .core import (
    Event,
    EventInfo,
    History,
    HistorySnapshot,
    LayerGroup,
    LayerInfo,
    LossMismatchError,
    LRFinderResult,
    Retrainer,
    RunConfig,
    RunStore,
    State,
    TrainingFailed,
    check_compatibility,
    default_forward,
    export_script,
    find_head,
    fingerprint,
    freeze,
    freeze_all_but,
    frozen_names,
    layer_groups,
    layer_tree,
    logits_of,
    losses,
    lr_find,
    make_optimizer,
    metrics,
    param_groups,
    replace_head,
    schedules,
    split_batch,
    trainable_count,
    unfreeze,
)

__version__ = "0.1.0"

_LAZY = {"RetrainStudio": ".widgets", "LayerTreeView": ".widgets", "compare": ".comparison", "Comparison": ".comparison"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    if name == "examples":
        import importlib

        return importlib.import_module(".examples", __name__)
    raise AttributeError(f"module 'retrain_widgets' has no attribute {name!r}")


__all__ = [
    "export_script",
    "RetrainStudio",
    "compare",
    "Comparison",
    "RunStore",
    "fingerprint",
    "RunConfig",
    "Retrainer",
    "TrainingFailed",
    "LRFinderResult",
    "lr_find",
    "Event",
    "EventInfo",
    "State",
    "History",
    "HistorySnapshot",
    "LayerInfo",
    "LayerGroup",
    "layer_tree",
    "layer_groups",
    "freeze",
    "unfreeze",
    "freeze_all_but",
    "frozen_names",
    "trainable_count",
    "find_head",
    "replace_head",
    "losses",
    "metrics",
    "schedules",
    "LossMismatchError",
    "check_compatibility",
    "param_groups",
    "make_optimizer",
    "split_batch",
    "logits_of",
    "default_forward",
    "__version__",
]
