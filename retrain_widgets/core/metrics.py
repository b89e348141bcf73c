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

On an imbalanced task accuracy hides a model that misses the rare class (always answering "not
a 7" scores 0.9 when 10 % are sevens). Three scores that see it are computed from a whole
validation set at once, not summed over batches: :func:`balanced_accuracy` (the mean recall
over the classes), :func:`f1` (binary: of the positive class) and :func:`auroc` (binary: how
well the logits rank positives above negatives, whatever the threshold). :func:`collect`
gathers a model's outputs and targets over a loader for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .recipe import evaluation as recipe_eval
from .registry import closest

__all__ = ["Metric", "MULTICLASS_ACCURACY", "BINARY_ACCURACY", "MAE", "TASKS", "NAMES", "for_task", "select",
           "infer_task", "collect", "balanced_accuracy", "f1", "auroc"]


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


# ----------------------------------------------------------------------------- whole-set scores


@torch.no_grad()
def collect(model: torch.nn.Module, loader, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """``(outputs, targets)`` of ``model`` over every ``(x, target)`` batch of ``loader``, concatenated.

    The model runs in eval mode (dropout off, BatchNorm on its running statistics) and is put
    back in the mode it had; torch's RNG is as it was (iterating a shuffling loader draws from it).
    """
    rng = torch.get_rng_state()
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    try:
        for x, y in loader:
            outputs.append(model(x.to(device)).float().cpu())
            targets.append(y.cpu())
    finally:
        model.train(was_training)
        torch.set_rng_state(rng)
    if not outputs:
        raise ValueError("collect: the loader gave no batch; pass a loader with at least one (x, target) batch")
    return torch.cat(outputs), torch.cat(targets)


def _binary(outputs: Tensor, targets: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Logits (N,) and bool targets (N,) of a binary task (outputs (N,) or (N, 1))."""
    logits = recipe_eval.paired(outputs.detach().float(), targets, what)
    if logits.dim() != 1:
        raise ValueError(f"{what} is for one binary target per sample; got outputs of shape {tuple(outputs.shape)}")
    return logits, targets > 0.5


def _predictions(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted and true class ids of a binary (one logit) or multi-class (C logits) batch."""
    if outputs.dim() >= 2 and outputs.shape[1] >= 2 and not targets.is_floating_point():
        return outputs.detach().argmax(dim=1).flatten(), targets.flatten().long()
    logits, positive = _binary(outputs, targets, "balanced accuracy")
    return (logits > 0).long(), positive.long()


def balanced_accuracy(outputs: Tensor, targets: Tensor) -> float:
    """The mean over the classes present in ``targets`` of the share of that class predicted right.

    Binary (one logit per sample, a logit > 0 means 1, float 0/1 targets) or multi-class
    (``(N, C)`` logits against class ids). 0.5 for a binary model that always answers the
    same; 1 when every class is found.
    """
    preds, truth = _predictions(outputs, targets)
    if truth.numel() == 0:
        raise ValueError("balanced_accuracy needs at least one sample")
    classes = truth.unique()
    recalls = [(preds[truth == c] == c).float().mean() for c in classes]
    return float(torch.stack(recalls).mean())


def f1(outputs: Tensor, targets: Tensor) -> float:
    """F1 score of the positive class of a binary task: 2 TP / (2 TP + FP + FN); a logit > 0 means 1.

    0 when no positive is found (or none exists and none is predicted).
    """
    logits, positive = _binary(outputs, targets, "f1")
    predicted = logits > 0
    tp = int((predicted & positive).sum())
    wrong = int((predicted ^ positive).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def auroc(outputs: Tensor, targets: Tensor) -> float:
    """Area under the ROC curve of a binary task's logits: the chance that a random positive gets a
    higher logit than a random negative (ties count one half). 0.5 is chance, 1 a perfect ranking.

    Raises
    ------
    ValueError
        When the targets hold only one class (the area is then undefined).
    """
    logits, positive = _binary(outputs, targets, "auroc")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc needs both classes in the targets; got {n_pos} positive and {n_neg} negative")
    _, inverse, counts = torch.unique(logits, return_inverse=True, return_counts=True)  # sorted values
    ends = counts.cumsum(0).to(torch.float64)
    ranks = (ends - (counts - 1) / 2)[inverse]  # 1-based ranks; tied logits share their mean rank
    return (float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
