"""The LR preview, decimated: the learning rate at a bounded number of steps of a run, whatever its
length (a preview of 10⁹ steps costs what one of 1,000 does).

The registered shapes have closed forms: ``LambdaLR`` (a factor of the step), ``OneCycleLR`` and
``CyclicLR`` (computed from the step), ``StepLR`` / ``MultiStepLR`` / ``ExponentialLR`` (torch's
``_get_closed_form_lr``). A scheduler with none (a custom shape) is stepped through the run, as
:func:`~retrain_widgets.core.schedules.preview` does, when the run has at most
:data:`STEPPED_LIMIT` steps; longer ones are refused with a ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from . import schedules

__all__ = ["MAX_POINTS", "STEPPED_LIMIT", "sampled"]

MAX_POINTS = 800
STEPPED_LIMIT = 200_000


def sample_steps(total: int, max_points: int = MAX_POINTS) -> list[int]:
    """At most ``max_points`` steps from 0 to ``total - 1``, evenly spread, both ends included."""
    if total <= max_points:
        return list(range(total))
    return sorted({int(round(v)) for v in np.linspace(0, total - 1, max_points)})


def _closed_form(scheduler: Any) -> Any:
    """``lr_at(step)`` for a scheduler with a closed form, else ``None``."""
    sched = torch.optim.lr_scheduler
    base = float(scheduler.base_lrs[0])
    if isinstance(scheduler, sched.LambdaLR):
        factor = scheduler.lr_lambdas[0]
        return lambda i: base * float(factor(i))

    def at(i: int, read: Any) -> float:
        scheduler.last_epoch = i
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(read()[0])

    if isinstance(scheduler, (sched.OneCycleLR, sched.CyclicLR)):
        return lambda i: at(i, scheduler.get_lr)
    if type(scheduler) in (sched.StepLR, sched.MultiStepLR, sched.ExponentialLR):
        return lambda i: at(i, scheduler._get_closed_form_lr)
    return None


def sampled(name: str, total_steps: int, lr: float = 1e-3, max_points: int = MAX_POINTS,
            **kwargs: Any) -> tuple[list[int], list[float]]:
    """``(steps, lrs)``: the LR in effect at each of at most ``max_points`` steps of a run of
    ``total_steps`` steps (checks as :func:`~retrain_widgets.core.schedules.preview`)."""
    spec = schedules.get(name)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a whole number >= 1, got {total_steps!r}")
    total = total_steps
    steps = sample_steps(total, max_points)
    if total <= max_points or spec.metric_driven:
        lrs = schedules.preview(name, min(total, max_points) if spec.metric_driven else total, lr, **kwargs)
        return steps, [lrs[0]] * len(steps) if spec.metric_driven else lrs
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float(lr))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = spec.build(optimizer, total, **schedules.resolve_kwargs(name, total, **kwargs))
    lr_at = _closed_form(scheduler)
    if lr_at is not None:
        return steps, [lr_at(i) for i in steps]
    if total > STEPPED_LIMIT:
        raise ValueError(f"schedule {name!r} has no closed form, so its preview steps through the run; "
                         f"{total:,} steps is more than {STEPPED_LIMIT:,}: set max_steps lower to preview it")
    lrs = schedules.preview(name, total, lr, **kwargs)
    return steps, [lrs[i] for i in steps]
