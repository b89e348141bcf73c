"""The metrics, the old task and the evaluation loop, in plain PyTorch.

The loop sums the loss and the metric over a validation loader without a host sync per batch.

A metric returns ``(sum, count)``: a 0-d float32 tensor on the outputs' device and the number
of items it sums over. The engine (``retrain_widgets.core.metrics`` names these) and an
exported script both evaluate with these functions.
"""

from __future__ import annotations

import torch

from .losses import binary_cross_entropy, cross_entropy, mean_squared_error
from .training import autocast


def paired(outputs, targets, what):
    """The outputs as they pair with the targets: the same shape, or (N, 1) against (N,)
    squeezed to (N,); anything else is a ValueError (never a broadcast)."""
    if outputs.shape == targets.shape:
        return outputs
    if outputs.dim() == 2 and outputs.shape[1] == 1 and targets.dim() == 1 and outputs.shape[0] == targets.shape[0]:
        return outputs.squeeze(1)
    raise ValueError(
        f"{what}: outputs of shape {tuple(outputs.shape)} do not match targets of shape {tuple(targets.shape)}; "
        f"it needs one output per target (the same shape, or outputs (N, 1) against targets (N,))")


def multiclass_accuracy(logits, targets):
    """(right answers, samples): the top logit against the class id (or the top class of class
    probabilities)."""
    if logits.dim() < 2:
        raise ValueError(f"multi-class accuracy needs outputs (N, C, ...), got shape {tuple(logits.shape)}")
    preds = logits.detach().argmax(dim=1)
    if targets.is_floating_point() and targets.shape == logits.shape:  # class probabilities
        targets = targets.argmax(dim=1)
    if preds.shape != targets.shape:
        raise ValueError(f"multi-class accuracy: outputs of shape {tuple(logits.shape)} need class ids of shape "
                         f"{tuple(preds.shape)}, got targets of shape {tuple(targets.shape)}")
    return (preds == targets).sum(dtype=torch.float32), preds.numel()


def binary_accuracy(logits, targets):
    """(right answers, targets): a logit > 0 means 1."""
    logits = paired(logits.detach(), targets, "binary accuracy")
    hits = (logits > 0) == (targets.to(logits.dtype) > 0.5)
    return hits.sum(dtype=torch.float32), hits.numel()


def absolute_error(outputs, targets):
    """(sum of |error|, targets): the mean absolute error's parts."""
    outputs = paired(outputs.detach(), targets, "MAE")
    err = (outputs.float() - targets.float()).abs()
    return err.sum(), err.numel()


def infer_task(outputs, targets):
    """The task of a batch: "multiclass" for class ids against (N, C, ...) outputs (C >= 2) or
    for class probabilities of the outputs' shape; else, for targets that pair with the outputs,
    "binary" when they hold only 0 and 1, "regression" otherwise."""
    o, t = outputs.detach(), targets.detach()
    if o.dim() >= 2 and o.shape[1] >= 2:
        if not t.is_floating_point() and t.shape == o.shape[:1] + o.shape[2:]:
            return "multiclass"
        if t.is_floating_point() and t.shape == o.shape and t.numel():
            rows = t.sum(dim=1)
            if bool((t >= 0).all()) and bool(torch.allclose(rows, torch.ones_like(rows), atol=1e-4)):
                return "multiclass"
    try:
        paired(o, t, "")
    except ValueError:
        raise ValueError(
            f"cannot tell which metric fits outputs of shape {tuple(o.shape)} and targets of shape "
            f"{tuple(t.shape)} {t.dtype}: pass task='multiclass', 'binary' or 'regression'") from None
    zero_one = t.numel() > 0 and bool(((t == 0) | (t == 1)).all())
    return "binary" if zero_one else "regression"


#: The loss and the metric each task is measured with on the old task.
OLD_TASK = {
    "multiclass": (cross_entropy, multiclass_accuracy),
    "binary": (binary_cross_entropy, binary_accuracy),
    "regression": (mean_squared_error, absolute_error),
}


def old_task(logits, targets):
    """The original task's loss and metric, told from its outputs and targets (see infer_task):
    cross entropy and accuracy, BCE and accuracy, or MSE and MAE."""
    return OLD_TASK[infer_task(logits, targets)]


def batch_size(targets):
    """Number of samples in a batch, from its targets."""
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0]) if targets.ndim else 1
    try:
        return len(targets)
    except TypeError:
        return 1


@torch.no_grad()
def evaluation_sums(model, loader, run, choose, device, amp_dtype=None):
    """Loss and metric summed over ``loader`` in eval mode, as one tensor: (loss sum, metric sum,
    samples, metric count); divide, after summing them across processes under DDP.

    ``run(model, batch) -> (logits, targets)``; ``choose(logits, targets) -> (loss, metric)``
    on the first batch; ``amp_dtype``: see autocast. Dropout is off and BatchNorm uses its
    running statistics; the model's mode and torch's RNG are as they were afterwards (iterating
    a loader draws a seed, and measuring must not change training)."""
    rng = torch.get_rng_state()
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    metric_sum = torch.zeros((), device=device)
    n = count = 0
    loss_of = metric_of = None
    try:
        for batch in loader:
            with autocast(amp_dtype):
                logits, targets = run(model, batch)
            logits = logits.float()
            if loss_of is None:
                loss_of, metric_of = choose(logits, targets)
            size = batch_size(targets)
            loss_sum += loss_of(logits, targets).float() * size
            batch_sum, batch_count = metric_of(logits, targets)
            metric_sum += batch_sum
            n += size
            count += batch_count
    finally:
        model.train(was_training)
        torch.set_rng_state(rng)
    return torch.stack([loss_sum, metric_sum, torch.tensor(float(n), device=device),
                        torch.tensor(float(count), device=device)])


def means(totals):
    """(mean loss, mean metric) of evaluation_sums' totals."""
    return (totals[0] / totals[2]).item(), (totals[1] / totals[3].clamp(min=1)).item()
