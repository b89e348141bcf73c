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

from torch import Tensor

from .recipe import evaluation as recipe_eval
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


# the formulas are the recipe's (an exported script evaluates with the same functions)
MULTICLASS_ACCURACY = Metric("accuracy", True, recipe_eval.multiclass_accuracy)
BINARY_ACCURACY = Metric("accuracy", True, recipe_eval.binary_accuracy)
MAE = Metric("mae", False, recipe_eval.absolute_error)

_BY_TASK = {"multiclass": MULTICLASS_ACCURACY, "binary": BINARY_ACCURACY, "regression": MAE}

#: The tasks a metric (and a loss) can be for.
TASKS = tuple(_BY_TASK)
_TASK_LIST = ", ".join(repr(t) for t in TASKS)


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
    return recipe_eval.infer_task(outputs, targets)


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
