"""The parts the engine builds around a run: the history's description of it, its feature cache
and its alignment probe (each reads what it needs of the run here, once)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

from .alignment import AlignmentProbe, OldTask
from .config import RunConfig
from .feature_cache import FeatureCache
from .names import Meta
from .recipe import training as recipe
from .tree import parameterised_layers

if TYPE_CHECKING:
    from .engine import Retrainer

__all__ = ["describe", "new_feature_cache", "alignment_probe", "config_record"]


def describe(run: Retrainer) -> None:
    """The history's meta: what the run is."""
    cfg, meta = run.config, run.history.meta
    meta.update({
        Meta.CONFIG: config_record(cfg)[0], Meta.DEVICE: str(run.device), Meta.TOTAL_STEPS: run.total_steps,
        Meta.LAYERS: list(run.layer_names), Meta.GROUPS: [g.name for g in run.groups],
        Meta.HEAD: run.head_name, Meta.HEAD_REPLACED: run.original_head is not None,
        Meta.LOSS: run.loss_spec.name if run.loss_spec else getattr(cfg.loss, "__name__", "custom"),
        Meta.HAS_VAL: run.val_loader is not None, Meta.HAS_OLD_VAL: run.old_val_loader is not None,
    })
    if cfg.amp and run.device.type != "cuda":
        meta[Meta.NOTE] = f"amp=True has no effect on {run.device.type}; training in float32"


def new_feature_cache(run: Retrainer, pretrained: nn.Module) -> FeatureCache:
    """The run's frozen-feature cache: the frozen part's outputs computed once per sample when
    that is safe, its state in ``history.meta["feature_cache"]``; ``run.forward`` becomes its forward."""
    return FeatureCache(run.model, run.config.cache_features, run.forward, run.device,
                        autocast=lambda: recipe.autocast(run.amp_dtype), teacher=run.teacher, pretrained=pretrained,
                        max_mb=run.config.cache_max_mb, meta=run.history.meta, stop=lambda: run.control.should_stop)


def alignment_probe(run: Retrainer, loader: Iterable[Any]) -> AlignmentProbe:
    """The alignment probe on ``run``'s telemetry: the old task measured as the run's old-task
    evaluation measures it (:meth:`~retrain_widgets.core.validation.Validation.fns`), through the
    original head, on batches of ``loader``."""
    task = OldTask(run.model, run.forward, lambda o, t: run.validation.fns(o, t, old=True)[0], run.head_name,
                   run.original_head, lambda: recipe.autocast(run.amp_dtype))
    cfg = run.config
    probe = AlignmentProbe(parameterised_layers(run.model), task, loader,
                           run.history, every=cfg.alignment_every or 1, budget=cfg.alignment_budget, device=run.device)
    return probe.attach(run.telemetry)


def config_record(cfg: RunConfig) -> tuple[dict[str, Any], str]:
    """(the config as a dict, a note saying what could not be stored: a custom loss is kept by name)."""
    try:
        return cfg.to_dict(), ""
    except ValueError:
        name = getattr(cfg.loss, "__name__", type(cfg.loss).__name__)
        return {"loss": name}, (
            f"config not stored in full: the loss is a custom callable ({name}); register it with "
            f"retrain_widgets.losses.register(name, fn) and use its name to store the whole config")
