"""Pure-PyTorch core of retrain_widgets: no widget or plotting import here (a test enforces it).

Everything the widgets do is callable from here: freezing, parameter groups, losses and
their compatibility checks, scheduler shapes, the run builder, the training engine and its
history; the telemetry any loop feeds (:class:`Telemetry`), a watched user loop
(:class:`WatchedRun`) and the :class:`Run` protocol the store and comparisons read. The recipe itself (:mod:`.recipe`) is plain PyTorch, run by the engine and copied into
exported scripts.
"""

from __future__ import annotations

from . import losses, metrics, recipe, schedules
from .batches import default_forward, logits_of, split_batch
from .builder import BuiltModel, build_model, build_run, count_steps
from .config import RunConfig
from .control import Control
from .engine import LRFinderResult, Retrainer, TrainingFailed, lr_find, resolve_device
from .events import Event, EventInfo, State
from .export import export_script
from .history import History, HistorySnapshot
from .losses import LossMismatchError, check_compatibility
from .names import Meta, Series
from .params import make_optimizer, param_groups
from .registry import Param
from .run import Run
from .store import RunRecord, RunStore, fingerprint
from .telemetry import Telemetry
from .tree import (
    LayerGroup,
    LayerInfo,
    find_head,
    freeze,
    freeze_all_but,
    frozen_names,
    layer_groups,
    layer_tree,
    replace_head,
    trainable_count,
    unfreeze,
)
from .watch import WatchedRun

__all__ = [
    "Run",
    "Telemetry",
    "WatchedRun",
    "Control",
    "Series",
    "Meta",
    "Param",
    "BuiltModel",
    "build_model",
    "build_run",
    "count_steps",
    "recipe",
    "export_script",
    "RunStore",
    "RunRecord",
    "fingerprint",
    "RunConfig",
    "Retrainer",
    "TrainingFailed",
    "LRFinderResult",
    "lr_find",
    "resolve_device",
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
]
