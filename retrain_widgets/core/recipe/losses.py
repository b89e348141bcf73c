"""The built-in losses and the distillation loss, in plain PyTorch.

These are the formulas the engine trains with (``retrain_widgets.core.losses`` registers them
and adds the shape checks) and the ones an exported script contains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def align(outputs, targets):
    """A one-unit head gives outputs (N, 1) against targets (N,): squeeze them to (N,), or
    F.mse_loss and friends would broadcast the pair to (N, N) and train on nonsense."""
    return outputs.squeeze(-1) if outputs.shape != targets.shape else outputs


def reduce_loss(loss, reduction):
    """``"mean"``, ``"sum"`` or ``"none"`` of per-element losses."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def cross_entropy(logits, targets, label_smoothing=0.0):
    """Cross entropy: one logit per class, integer class ids (or class probabilities). With
    label smoothing the target keeps 1 - label_smoothing of its weight and the rest is spread
    over all classes, so an over-confident model pays for it."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def softmax_focal_loss(logits, targets, gamma=2.0, alpha=None, reduction="mean", ignore_index=-100):
    """Softmax focal loss: -alpha_t * (1 - p_t) ** gamma * log(p_t). Samples the model already
    gets right (p_t near 1) count little, so the rare and hard ones drive the training; with
    gamma=0 and alpha=None it is cross entropy.

    ``targets``: class ids (``ignore_index`` marks samples to skip) or class probabilities of
    the logits' shape. ``alpha``: None, one factor, or one weight per class (the mean is over
    samples, not normalised by the weights)."""
    log_p = F.log_softmax(logits, dim=1)
    if alpha is not None and not isinstance(alpha, (int, float)):
        alpha = torch.as_tensor(alpha, dtype=log_p.dtype, device=log_p.device)
        if alpha.dim() != 1 or alpha.numel() != logits.shape[1]:
            raise ValueError(f"softmax_focal_loss: alpha needs one weight per class ({logits.shape[1]}), "
                             f"got shape {tuple(alpha.shape)}")
    if targets.is_floating_point():  # class probabilities
        weight = (1 - log_p.exp()) ** gamma
        if isinstance(alpha, torch.Tensor):
            weight = weight * alpha.view([1, -1] + [1] * (logits.dim() - 2))
        elif alpha is not None:
            weight = weight * alpha
        return reduce_loss(-(targets * weight * log_p).sum(dim=1), reduction)
    valid = targets != ignore_index
    ids = torch.where(valid, targets, torch.zeros_like(targets))
    log_pt = log_p.gather(1, ids.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if isinstance(alpha, torch.Tensor):
        loss = loss * alpha[ids]
    elif alpha is not None:
        loss = loss * alpha
    loss = loss * valid
    if reduction == "mean":
        return loss.sum() / valid.sum().clamp(min=1)
    return reduce_loss(loss, reduction)


def binary_cross_entropy(logits, targets, pos_weight=None):
    """Binary cross entropy on logits (float 0/1 targets). With pos_weight, positive targets
    weigh pos_weight (what BCEWithLogitsLoss(pos_weight=...) computes; softplus(-x) is
    -log(sigmoid(x)))."""
    x = align(logits, targets)
    if pos_weight is None:
        return F.binary_cross_entropy_with_logits(x, targets)
    return (pos_weight * targets * F.softplus(-x) + (1 - targets) * F.softplus(x)).mean()


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="mean"):
    """Sigmoid focal loss (Lin et al. 2017; torchvision.ops.sigmoid_focal_loss's formula): BCE
    scaled by (1 - p_t) ** gamma, so the many easy negatives of an imbalanced task stop drowning
    the few positives. Positives weigh alpha and negatives 1 - alpha (alpha < 0: no weighting)."""
    x = align(inputs, targets)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)  # the probability given to the right answer
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return reduce_loss(loss, reduction)


def mean_squared_error(outputs, targets):
    """Mean squared error."""
    return F.mse_loss(align(outputs, targets), targets)


def huber(outputs, targets, delta=1.0):
    """Huber loss: squared below delta, linear beyond (outliers pull less)."""
    return F.huber_loss(align(outputs, targets), targets, delta=delta)


def smooth_l1(outputs, targets, beta=1.0):
    """Smooth L1 loss: the Huber loss divided by beta."""
    return F.smooth_l1_loss(align(outputs, targets), targets, beta=beta)


def mean_absolute_error(outputs, targets):
    """Mean absolute error (L1)."""
    return F.l1_loss(align(outputs, targets), targets)


def distillation_loss(student_logits, teacher_logits, temperature=2.0, dim=1):
    """Hinton et al. (2015): T^2 * KL(teacher || student) on temperature-softened
    distributions, summed over classes and averaged over the batch ("batchmean": KLDivLoss's
    default "mean" would also divide by the number of classes); T^2 keeps the gradients' size
    independent of T. The teacher is detached: only the student learns."""
    t = float(temperature)
    teacher = teacher_logits.detach().to(student_logits.dtype)
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=dim), F.log_softmax(teacher / t, dim=dim),
                  reduction="batchmean", log_target=True)
    return kl * (t * t)
