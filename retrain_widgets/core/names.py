"""One name, one owner: the history's series names and ``history.meta`` keys.

Every module that writes or reads a run's :class:`~retrain_widgets.core.history.History` names
its series and meta keys through these constants, so a reader finds every use of one with a
search for its constant. The values are the strings stored in histories (JSON, the run store):
they never change.
"""

from __future__ import annotations

from typing import Final

__all__ = ["Series", "Meta"]


class Series:
    """Names of the history's series (``history.series(name)`` / ``layer_series(name)``)."""

    # per step, published in chunks
    TRAIN_LOSS: Final = "train_loss"
    LR: Final = "lr"  # the top (head) group's LR
    GROUP_LR: Final = "group_lr"  # layer series: one column per LR group
    GRAD_NORM: Final = "grad_norm"  # layer series: one column per parameterised layer
    # when their budget allows
    DRIFT: Final = "drift"  # layer series
    GRAD_ALIGNMENT: Final = "grad_alignment"  # layer series (the alignment probe)
    OLD_BATCH_LOSS: Final = "old_batch_loss"  # the alignment probe's old-task batch loss
    # per epoch
    VAL_LOSS: Final = "val_loss"
    VAL_METRIC: Final = "val_metric"
    OLD_LOSS: Final = "old_loss"
    OLD_METRIC: Final = "old_metric"
    # marks (``history.mark``)
    FREEZING: Final = "freezing"

    EPOCH: Final = (VAL_LOSS, VAL_METRIC, OLD_LOSS, OLD_METRIC)
    #: the scalar and the per-layer series a run's history knows (others may be added by name)
    SCALAR: Final = (TRAIN_LOSS, LR, VAL_LOSS, VAL_METRIC, OLD_LOSS, OLD_METRIC, OLD_BATCH_LOSS)
    LAYER: Final = (GRAD_NORM, DRIFT, GROUP_LR, GRAD_ALIGNMENT)


class Meta:
    """Keys of ``history.meta``: what is known of the run beside its series."""

    CONFIG: Final = "config"
    DEVICE: Final = "device"
    TOTAL_STEPS: Final = "total_steps"
    LAYERS: Final = "layers"
    GROUPS: Final = "groups"
    HEAD: Final = "head"
    HEAD_REPLACED: Final = "head_replaced"
    LOSS: Final = "loss"
    HAS_VAL: Final = "has_val"
    HAS_OLD_VAL: Final = "has_old_val"
    NOTE: Final = "note"
    METRIC: Final = "metric"
    HIGHER_IS_BETTER: Final = "higher_is_better"
    OLD_METRIC: Final = "old_metric"
    STAGES: Final = "stages"
    ERROR: Final = "error"
    TRACEBACK: Final = "traceback"
    FEATURE_CACHE: Final = "feature_cache"
    ALIGNMENT: Final = "alignment"
    ALIGNMENT_ERROR: Final = "alignment_error"
    SOURCE: Final = "source"  # what trained the run: "engine", or the loop a telemetry client names
