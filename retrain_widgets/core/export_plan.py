"""What a config's exported script contains: the checks that it can be written out, and the
engine's own loss, metric and schedule functions with the config's settings."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import losses as losses_mod
from . import metrics as metrics_mod
from . import schedules as schedules_mod
from .config import RunConfig

__all__ = ["SUPPORTED_LOSSES", "SUPPORTED_SCHEDULES"]


# ============================================================================== what the config uses
#: The losses :func:`export_script` can write out (the built-in ones).
SUPPORTED_LOSSES = ("ce", "label_smoothing", "focal_multiclass", "bce", "focal", "mse", "huber", "smooth_l1", "l1")
#: The schedules :func:`export_script` can write out (the built-in ones).
SUPPORTED_SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "cosine_warm_restarts",
                       "one_cycle", "cyclic", "warmup_cosine", "slanted_triangular", "reduce_on_plateau")
_BUILTIN_SCHEDULES = {name: schedules_mod.get(name) for name in SUPPORTED_SCHEDULES}


@dataclass(frozen=True)
class _Plan:
    """What a config's script contains: the engine's own functions and their settings."""

    cfg: RunConfig
    loss_call: str  # the loss formula called with the config's settings
    metric: Callable[..., Any]  # the validation metric's recipe function
    metric_name: str
    schedule_call: str  # the schedule builder called with the config's settings
    plateau: bool

    @property
    def gradual(self) -> bool:
        return self.cfg.gradual

    @property
    def distill(self) -> bool:
        return self.cfg.distill is not None

    @property
    def new_head(self) -> bool:
        return self.cfg.head_out is not None

    @property
    def need_head(self) -> bool:
        return self.new_head or self.cfg.l2sp > 0 or self.cfg.lora_r is not None

    @property
    def groups(self) -> bool:
        # Layer groups: for discriminative LRs and gradual unfreezing, and for clipping, whose global norm
        # sums the parameters in the optimizer's order: the same order as the notebook's run gives the same
        # bits, and a run amplifies a last-bit difference.
        return self.gradual or self.cfg.lr_decay < 1 or self.cfg.grad_clip is not None

    @property
    def freeze_fn(self) -> str:
        return "freeze_keep_norms" if self.cfg.train_bn else "freeze"


def _call(fn: Callable[..., Any], args: str, kwargs: dict[str, Any], prefix: str = "", width: int = 100) -> str:
    """``prefix + fn(args, key=value, ...)`` as source, the arguments wrapped under the parenthesis."""
    items = [args, *(f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}" for k, v in kwargs.items())]
    lines, indent = [f"{prefix}{fn.__name__}("], " " * (len(prefix) + len(fn.__name__) + 1)
    for i, item in enumerate(items):
        text = item + (", " if i < len(items) - 1 else ")")
        if len(lines[-1]) + len(text.rstrip()) > width and lines[-1].strip():
            lines[-1] = lines[-1].rstrip()
            lines.append(indent)
        lines[-1] += text
    return "\n".join(lines)


def _plan(config: RunConfig) -> _Plan:
    """Check that ``config`` can be written out; find the functions the engine would call for it."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"export_script needs a RunConfig, got {type(config).__name__}")
    cfg = copy.copy(config).validate()
    if not isinstance(cfg.loss, str) or cfg.loss not in SUPPORTED_LOSSES or \
            losses_mod.get(cfg.loss) is not losses_mod._BUILTIN.get(cfg.loss):
        label = cfg.loss if isinstance(cfg.loss, str) else getattr(cfg.loss, "__name__", "a callable")
        raise ValueError(
            f"export_script writes out the built-in losses only ({', '.join(SUPPORTED_LOSSES)}); the loss "
            f"{label!r} is custom: export with a built-in loss and replace loss_fn() in the script by hand"
        )
    spec = schedules_mod.get(cfg.schedule)
    if spec is not _BUILTIN_SCHEDULES.get(cfg.schedule):
        raise ValueError(
            f"export_script writes out the built-in schedules only ({', '.join(SUPPORTED_SCHEDULES)}); "
            f"{cfg.schedule!r} is custom: export with one of those and replace the scheduler in the script"
        )
    loss = losses_mod.make(cfg.loss, **cfg.loss_kwargs).fn  # what the engine calls (inside its shape checks)
    formula = getattr(loss, "func", loss)
    try:
        metric = metrics_mod.select(cfg.metric, losses_mod.get(cfg.loss).task)
    except ValueError as exc:
        raise ValueError(f"RunConfig.metric={cfg.metric!r}: {exc}") from None
    given = {k: p.default for k, p in spec.params.items()}
    given.update({k: v for k, v in cfg.schedule_kwargs.items() if v is not None})
    if given.get("milestones") is not None:
        given["milestones"] = sorted(schedules_mod.parse_milestones(given["milestones"]))
    given = {k: v for k, v in given.items() if v is not None}  # None: derived from total_steps by the builder
    return _Plan(cfg, _call(formula, "outputs, targets", getattr(loss, "keywords", {})), metric.fn, metric.name,
                 _call(spec.build, "optimizer, total_steps", given, "scheduler = "), spec.metric_driven)
