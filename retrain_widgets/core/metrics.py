"""Validation metrics that accumulate over batches without a host sync per batch.

A :class:`Metric`'s ``fn(outputs, targets)`` returns ``(sum, count)``: ``sum`` a 0-d float32
tensor on the outputs' device, ``count`` a Python int taken from the shapes. Add the sums up
on the device, add the counts up on the host, and read ``total_sum.item() / total_count``
once at the end of the evaluation.

=================  ================  =================================================
metric             task              rule
=================  ================  =================================================
``accuracy``       multiclass        ``outputs.argmax(1) == targets`` (class ids), or
                                     ``== targets.argmax(1)`` for class probabilities
``accuracy``       binary            ``(outputs > 0) == (targets > 0.5)`` per target
``mae``            regression        ``|outputs - targets|`` per target
=================  ================  =================================================

Binary accuracy and MAE align outputs ``(N, 1)`` with targets ``(N,)`` as the losses do, and
raise ``ValueError`` on any other shape difference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .registry import closest

__all__ = ["Metric", "MULTICLASS_ACCURACY", "BINARY_ACCURACY", "MAE", "TASKS", "NAMES", "for_task", "select",
           "infer_task"]


@dataclass(frozen=True)
class Metric:
    """A metric that sums over a batch.

    Parameters
    ----------
    name
        ``"accuracy"`` or ``"mae"``.
    higher_is_better
        ``True`` for accuracy, ``False`` for errors.
    fn
        ``fn(outputs, targets) -> (sum, count)``: ``sum`` a 0-d float32 tensor on the
        outputs' device (no host sync), ``count`` the number of items it sums over.
    """

    name: str
    higher_is_better: bool
    fn: Callable[[Tensor, Tensor], tuple[Tensor, int]]

    def __call__(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
        return self.fn(outputs, targets)


def _align(outputs: Tensor, targets: Tensor, what: str) -> Tensor:
    if outputs.shape == targets.shape:
        return outputs
    if outputs.dim() == 2 and outputs.shape[1] == 1 and targets.dim() == 1 and outputs.shape[0] == targets.shape[0]:
        return outputs.squeeze(1)
    raise ValueError(
        f"{what}: outputs of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}; "
        f"it needs one output per target (the same shape, or outputs (N, 1) against targets (N,))"
    )


def _multiclass_accuracy(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    if outputs.dim() < 2:
        raise ValueError(f"multi-class accuracy needs outputs (N, C, ...), got shape {tuple(outputs.shape)}")
    preds = outputs.detach().argmax(dim=1)
    if targets.is_floating_point() and targets.shape == outputs.shape:  # class probabilities
        targets = targets.argmax(dim=1)
    if preds.shape != targets.shape:
        raise ValueError(
            f"multi-class accuracy: outputs of shape {tuple(outputs.shape)} need class ids of shape "
            f"{tuple(preds.shape)}, got targets of shape {tuple(targets.shape)}"
        )
    return (preds == targets).sum(dtype=torch.float32), preds.numel()


def _binary_accuracy(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    outputs = _align(outputs.detach(), targets, "binary accuracy")
    hits = (outputs > 0) == (targets.to(outputs.dtype) > 0.5)
    return hits.sum(dtype=torch.float32), hits.numel()


def _mae(outputs: Tensor, targets: Tensor) -> tuple[Tensor, int]:
    outputs = _align(outputs.detach(), targets, "MAE")
    err = (outputs.float() - targets.float()).abs()
    return err.sum(), err.numel()


MULTICLASS_ACCURACY = Metric("accuracy", True, _multiclass_accuracy)
BINARY_ACCURACY = Metric("accuracy", True, _binary_accuracy)
MAE = Metric("mae", False, _mae)

_BY_TASK = {"multiclass": MULTICLASS_ACCURACY, "binary": BINARY_ACCURACY, "regression": MAE}

#: The tasks a metric (and a loss) can be for.
TASKS = tuple(_BY_TASK)
_TASK_LIST = ", ".join(repr(t) for t in TASKS)


def _zero_one(t: Tensor) -> bool:
    return t.numel() > 0 and bool(((t == 0) | (t == 1)).all())


def infer_task(outputs: Tensor, targets: Tensor) -> str:
    """Guess the task from one batch (for a custom loss of unknown task).

    The rule, in order:

    1. integer or bool targets of shape ``(N, d...)`` against outputs ``(N, C, d...)`` with
       ``C >= 2``: ``"multiclass"``;
    2. float targets of the outputs' shape ``(N, C, ...)``, ``C >= 2``, non-negative, each
       row summing to 1 (one-hot or class probabilities): ``"multiclass"``;
    3. targets that pair with the outputs (the same shape, or outputs ``(N, 1)`` against
       targets ``(N,)``) and hold only 0 and 1: ``"binary"``;
    4. other targets that pair with the outputs: ``"regression"``.

    Raises
    ------
    ValueError
        When none applies.
    """
    o, t = outputs.detach(), targets.detach()
    per_sample = o.shape[:1] + o.shape[2:]
    if o.dim() >= 2 and o.shape[1] >= 2:
        if not t.is_floating_point() and t.shape == per_sample:
            return "multiclass"
        if t.is_floating_point() and t.shape == o.shape and t.numel():
            rows = t.sum(dim=1)
            if bool((t >= 0).all()) and bool(torch.allclose(rows, torch.ones_like(rows), atol=1e-4)):
                return "multiclass"
    try:
        _align(o, t, "")
    except ValueError:
        raise ValueError(
            f"cannot tell which metric fits outputs of shape {tuple(o.shape)} and targets of shape "
            f"{tuple(t.shape)} {t.dtype}: pass task= one of {_TASK_LIST}"
        ) from None
    return "binary" if _zero_one(t) else "regression"


def for_task(task: str | None, outputs: Tensor | None = None, targets: Tensor | None = None) -> Metric:
    """The metric of a task: multi-class or binary accuracy, or MAE for regression.

    Parameters
    ----------
    task
        ``"multiclass"``, ``"binary"``, ``"regression"``, or ``None`` / ``"any"`` to infer
        it from ``outputs`` and ``targets`` with :func:`infer_task`.
    outputs, targets
        One batch, needed only when the task is inferred.
    """
    if task is None or task == "any":
        if outputs is None or targets is None:
            raise ValueError(f"for_task(None) needs one batch of outputs and targets to infer the metric, "
                             f"or a task: one of {_TASK_LIST}")
        task = infer_task(outputs, targets)
    if task not in _BY_TASK:
        hint = closest(str(task), list(TASKS))
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"unknown task {task!r}{extra} (tasks: {', '.join(TASKS)}, or None to infer it)")
    return _BY_TASK[task]


def _accuracy(task: str | None, outputs: Tensor | None, targets: Tensor | None) -> Metric:
    if task is None or task == "any":
        if outputs is not None and targets is not None and infer_task(outputs, targets) == "binary":
            return BINARY_ACCURACY
        return MULTICLASS_ACCURACY
    if task == "regression":
        raise ValueError("metric 'accuracy' needs a classification loss; a regression loss is measured "
                         "with metric='mae' (or 'auto')")
    return BINARY_ACCURACY if task == "binary" else for_task(task)


_BY_NAME: dict[str, Callable[[str | None, Tensor | None, Tensor | None], Metric]] = {
    "auto": for_task,
    "accuracy": _accuracy,
    "mae": lambda task, outputs, targets: MAE,
}

#: The metric names a run configuration may give (``RunConfig.metric``).
NAMES = tuple(_BY_NAME)


def select(metric: str = "auto", task: str | None = None, outputs: Tensor | None = None,
           targets: Tensor | None = None) -> Metric:
    """The metric a run configuration names: ``"auto"``, ``"accuracy"`` or ``"mae"`` (:data:`NAMES`).

    ``"auto"`` is :func:`for_task`; ``"accuracy"`` is binary accuracy for a binary task and
    multi-class accuracy otherwise (inferred from the batch when ``task`` is unknown);
    ``"mae"`` is MAE whatever the task.
    """
    choose = _BY_NAME.get(metric) if isinstance(metric, str) else None
    if choose is None:
        hint = closest(str(metric), list(NAMES))
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"unknown metric {metric!r}{extra} (metrics: {', '.join(repr(n) for n in NAMES)})")
    return choose(task, outputs, targets)
