"""The parts the engine builds around a run: the history's description of it, its feature cache
and its alignment probe (each reads what it needs of the run here, once)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

from .alignment import AlignmentProbe, OldTask
from .config import RunConfig
from .feature_cache import FeatureCache
from .names import Meta, Series
from .recipe import training as recipe
from .tree import parameterised_layers

if TYPE_CHECKING:
    from .engine import Retrainer

__all__ = ["describe", "new_feature_cache", "alignment_probe", "config_record", "progress_of", "start_refusal",
           "validate"]


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
    cached = (lambda ld: run.feature_cache.batches(ld, "old_val")) if loader is run.old_val_loader else None
    task = OldTask(run.model, run.forward, lambda o, t: run.validation.fns(o, t, old=True)[0], run.head_name,
                   run.original_head, lambda: recipe.autocast(run.amp_dtype), cached)
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


def progress_of(run: Retrainer) -> dict[str, Any]:
    """Step, total, epoch, steps/s and ETA in seconds, state and stage (plain numbers, cheap)."""
    sps = run.telemetry.steps_per_second
    left = max(0, run.total_steps - run.step)
    return {"step": run.step, "total": run.total_steps, "epoch": run.epoch, "epochs": run.config.epochs,
            "steps_per_second": sps, "eta": left / sps if sps > 0 else None, "state": run.state.value,
            "stage": run.stage, "stages": run.n_stages}


def start_refusal(run: Retrainer) -> str:
    """Why ``run`` cannot start (``""``: it can): it is going, or it has ended."""
    if run.state.active:
        return f"this run is already {run.state.value}; stop() it or wait() for it first"
    return (f"this run has ended ({run.state.value}); make a new Retrainer to train again from the "
            f"pretrained weights (its trained model is kept in .model)") if run.state.final else ""


def validate(run: Retrainer) -> None:
    """The epoch's measurements (the new task on ``val``, the old one on ``old_val``) into the
    telemetry, with the stage's summary when unfreezing gradually."""
    run.telemetry.publish(force=True)
    data: dict[str, float] = {}
    if run.val_loader is not None:
        vloss, vmetric = run.validation.evaluate(run.val_loader, old=False)
        data.update({Series.VAL_LOSS: vloss, Series.VAL_METRIC: vmetric})
    if run.old_val_loader is not None:
        oloss, ometric = run.validation.evaluate(run.old_val_loader, old=True)
        data.update({Series.OLD_LOSS: oloss, Series.OLD_METRIC: ometric})
    if run._metric_driven:
        run.scheduler.step(data.get(Series.VAL_LOSS, float(run.history.series(Series.TRAIN_LOSS)[1][-1])))
    if run.config.gradual:
        run.history.meta.setdefault(Meta.STAGES, []).append(
            {"stage": run.stage, "epoch": run.epoch, "step": run.step,
             "group": run.groups[len(run.groups) - 1 - run.stage].name, **data})
    run.telemetry.epoch_end(run.step, run.epoch, data)
