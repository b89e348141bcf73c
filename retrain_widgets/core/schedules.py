"""Learning-rate schedule shapes, looked up by name.

Every schedule here is stepped once per *optimizer step* (not per epoch); a run has
``total_steps`` optimizer steps. Each shape scales every parameter group relative to that
group's own learning rate, so discriminative (per-group) learning rates survive, and the
schedule never needs a param group to be added later: the project builds its groups once for
all parameters, frozen ones included, so unfreezing only flips ``requires_grad`` and the newly
trainable parameters follow the schedule from wherever it is.

Usage::

    from retrain_widgets.core import schedules

    sched = schedules.make("one_cycle", optimizer, total_steps=1000)
    for batch in loader:
        ...
        optimizer.step()
        sched.step()

    curve = schedules.preview("slanted_triangular", 1000, lr=1e-3)  # LR of each step

``reduce_on_plateau`` is the one metric-driven shape (:attr:`ScheduleSpec.metric_driven`):
step it with a validation metric, ``sched.step(val_loss)``, after each validation instead.

The shapes themselves (their parameters, defaults and checks) are in :mod:`.schedule_shapes`;
:class:`ScheduleSpec`, the registry and :func:`register` in :mod:`.schedule_registry`, re-exported here.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from typing import Any

import torch
from torch.optim import Optimizer

from .schedule_registry import REGISTRY, ScheduleSpec, available, get, register
from .schedule_shapes import parse_milestones

__all__ = [
    "ScheduleSpec",
    "REGISTRY",
    "available",
    "get",
    "register",
    "resolve_kwargs",
    "make",
    "preview",
    "parse_milestones",
]

# The warning torch gives when a scheduler is stepped before its optimizer ever was.
_STEP_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")


def _check_total_steps(total_steps: Any) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
        raise ValueError(f"total_steps must be a whole number >= 1, got {total_steps!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    return int(total_steps)


def resolve_kwargs(name: str, total_steps: int, **kwargs: Any) -> dict[str, Any]:
    """Validate ``kwargs`` for schedule ``name`` and fill in every default.

    Parameters
    ----------
    name
        Schedule name.
    total_steps
        Number of optimizer steps in the run (>= 1).
    **kwargs
        Parameters to override; a value of ``None`` means "use the default".

    Returns
    -------
    dict
        Every parameter of the schedule, converted to its kind, with the ``None`` defaults
        derived from ``total_steps``. This is exactly what ``build`` receives.

    Raises
    ------
    ValueError
        Unknown schedule, unknown parameter, a value of the wrong kind or out of range, or
        ``total_steps < 1``; the message names the offending value.
    """
    spec = get(name)
    total = _check_total_steps(total_steps)
    given = REGISTRY.validate_kwargs(name, kwargs)
    out = {key: param.default for key, param in spec.params.items()}
    out.update({key: value for key, value in given.items() if value is not None})
    if spec.resolve is not None:
        out = dict(spec.resolve(total, out))
    return out


def make(name: str, optimizer: Optimizer, total_steps: int, **kwargs: Any) -> Any:
    """Build the scheduler ``name`` for ``optimizer`` over a run of ``total_steps`` steps.

    Each param group's *current* ``lr`` is its base learning rate: an ``initial_lr`` left in
    the groups by an earlier scheduler is discarded, so build a fresh optimizer (or restore
    its learning rates) before making a second scheduler for it.

    Parameters
    ----------
    name
        Schedule name (see :func:`available`).
    optimizer
        Any torch optimizer; it may have several param groups with different learning rates
        and groups whose parameters are frozen.
    total_steps
        Number of optimizer steps in the run.
    **kwargs
        Schedule parameters (see ``get(name).params``).

    Returns
    -------
    torch.optim.lr_scheduler.LRScheduler
        Call ``step()`` after every ``optimizer.step()``; for a metric-driven schedule call
        ``step(metric)`` after each validation.
    """
    spec = get(name)
    resolved = resolve_kwargs(name, total_steps, **kwargs)
    for group in optimizer.param_groups:
        group.pop("initial_lr", None)
    return spec.build(optimizer, int(total_steps), **resolved)


def preview(name: str, total_steps: int, lr: float = 1e-3, **kwargs: Any) -> list[float]:
    """Learning rate of each optimizer step of a run, for a group whose base LR is ``lr``.

    The schedule is built on a throwaway optimizer holding one dummy parameter, so no model
    is needed and nothing is trained.

    Parameters
    ----------
    name
        Schedule name.
    total_steps
        Number of optimizer steps.
    lr
        Base learning rate of the group (> 0).
    **kwargs
        Schedule parameters, as for :func:`make`.

    Returns
    -------
    list of float
        ``total_steps`` values; item ``i`` is the LR in effect when optimizer step ``i`` runs.
        For a metric-driven schedule (``reduce_on_plateau``) this is a flat line at ``lr``:
        its drops depend on the validation metric, which a preview does not have.
    """
    spec = get(name)
    total = _check_total_steps(total_steps)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    resolved = resolve_kwargs(name, total, **kwargs)
    dummy = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([dummy], lr=float(lr))
    group = optimizer.param_groups[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_STEP_ORDER_WARNING, category=UserWarning)
        scheduler = spec.build(optimizer, total, **resolved)
        if spec.metric_driven:
            return [float(group["lr"])] * total
        out = [0.0] * total
        for i in range(total):
            out[i] = float(group["lr"])
            if i + 1 < total:
                scheduler.step()
    return out
