"""Losses by name, and the checks that catch a loss that does not fit the model and the data.

Registered losses
-----------------
=====================  ==============  ==================================================
name                   task            what it is
=====================  ==============  ==================================================
``ce``                 multiclass      cross entropy on one logit per class
``label_smoothing``    multiclass      cross entropy with label smoothing (``smoothing``)
``focal_multiclass``   multiclass      softmax focal loss (``gamma``)
``bce``                binary          binary cross entropy on logits (``pos_weight``)
``focal``              binary          sigmoid focal loss (``alpha``, ``gamma``)
``mse``                regression      mean squared error
``huber``              regression      Huber loss (``delta``)
``smooth_l1``          regression      smooth L1 loss (``beta``)
``l1``                 regression      mean absolute error
=====================  ==============  ==================================================

Shapes and dtypes
-----------------
Plain PyTorch losses let several mistakes through: ``MSELoss`` on outputs ``(N, 1)`` and
targets ``(N,)`` broadcasts to ``(N, N)`` with only a warning, cross entropy on a one-unit
head returns 0 or raises ``IndexError``, float targets reach cross entropy, BCE on ``(N, 3)``
logits against ``(N,)`` targets raises a cryptic error. The callables made here check shapes
and dtypes on every call (cheap: no host-device synchronisation unless something is wrong)
and raise :class:`LossMismatchError`, which says what is wrong and how to fix it.

Exactly one shape difference is aligned on purpose: for binary and regression losses,
outputs ``(N, 1)`` (a one-unit head) against targets ``(N,)`` are squeezed to ``(N,)``. Any
other shape difference is an error, never a broadcast.

* multiclass: outputs ``(N, C)`` float with ``C >= 2`` and targets ``(N,)`` integer class ids
  in ``[0, C)`` (``-100``, PyTorch's ``ignore_index``, marks ignored samples), or
  ``(N, C, d1, ...)`` with targets ``(N, d1, ...)`` (segmentation), or float targets of the
  outputs' shape (class probabilities).
* binary: outputs ``(N,)`` or ``(N, 1)`` against float targets ``(N,)`` in ``[0, 1]``, or any
  outputs against float targets of the same shape (multi-label ``(N, K)``).
* regression: outputs ``(N,)`` or ``(N, 1)`` against float targets ``(N,)``, or any outputs
  against float targets of the same shape.

:func:`check_compatibility` runs the same checks plus the ones that need the values (class
ids in range, targets in ``[0, 1]``, no NaN) on one batch before training, and runs the loss
once to make sure it returns a finite scalar with a gradient. Out-of-range class ids in later
batches are not checked per step: that would cost a device synchronisation every step.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .errors import note_user_error
from .recipe import losses as recipe_losses
from .registry import Param, Registry, closest

__all__ = [
    "LossMismatchError",
    "LossSpec",
    "CheckedLoss",
    "REGISTRY",
    "TASKS",
    "available",
    "get",
    "register",
    "make",
    "resolve",
    "task_of",
    "check_compatibility",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "distillation_loss",
]

LossFn = Callable[[Tensor, Tensor], Tensor]

#: The tasks a loss can declare. ``"any"`` means "unknown": no shape rules apply.
TASKS = ("multiclass", "binary", "regression", "any")
_KNOWN_TASKS = ("multiclass", "binary", "regression")
_IGNORE_INDEX = -100  # PyTorch's default ignore_index for cross entropy


class LossMismatchError(ValueError):
    """The outputs, the targets and the loss do not fit together.

    Raised before training (by :func:`check_compatibility`) or by a loss made here when it
    is called on outputs and targets that do not fit. The message says what is wrong and how
    to fix it; the attributes let a user interface offer the fix.

    Attributes
    ----------
    loss
        The loss's registered name, or a short description of a custom loss.
    outputs_shape, targets_shape
        Shapes of the outputs and the targets (``None`` when not a tensor).
    outputs_dtype, targets_dtype
        Their dtypes (``None`` when not a tensor).
    head_out
        The number of head outputs that would fit this loss and these targets (e.g. ``1``
        for ``'bce'`` on ``(N,)`` targets, ``C`` for ``'ce'`` on class ids up to ``C - 1``),
        or ``None`` when a new head would not fix the problem.
    suggested_losses
        Registered losses that fit the outputs and targets as they are.
    """

    def __init__(
        self,
        message: str,
        *,
        loss: str | None = None,
        outputs_shape: tuple[int, ...] | None = None,
        targets_shape: tuple[int, ...] | None = None,
        outputs_dtype: torch.dtype | None = None,
        targets_dtype: torch.dtype | None = None,
        head_out: int | None = None,
        suggested_losses: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.loss = loss
        self.outputs_shape = outputs_shape
        self.targets_shape = targets_shape
        self.outputs_dtype = outputs_dtype
        self.targets_dtype = targets_dtype
        self.head_out = head_out
        self.suggested_losses = tuple(suggested_losses)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Parameters
    ----------
    name
        The name it is registered under.
    factory
        ``factory(**kwargs)`` returns the loss callable ``(outputs, targets) -> scalar``.
    task
        ``"multiclass"``, ``"binary"``, ``"regression"`` or ``"any"`` (unknown: no shape
        rules, no alignment).
    params
        The keyword parameters ``factory`` accepts.
    description
        One line for the user interface.
    """

    name: str
    factory: Callable[..., LossFn]
    task: str
    params: dict[str, Param] = field(default_factory=dict)
    description: str = ""


REGISTRY: Registry[LossSpec] = Registry(kind="loss")


# --------------------------------------------------------------------------- formulas
# The formulas are the recipe's plain-PyTorch functions (an exported script contains the same
# source); here they are registered, given their parameters' checks, and wrapped in the shape
# checks of their task (:class:`CheckedLoss`).

sigmoid_focal_loss = recipe_losses.sigmoid_focal_loss
softmax_focal_loss = recipe_losses.softmax_focal_loss


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0,
                      dim: int = 1) -> Tensor:
    """Knowledge distillation loss of Hinton et al. (2015): ``T² · KL(p_teacher ‖ p_student)``.

    ``T**2 * F.kl_div(log_softmax(s / T), log_softmax(t / T), reduction="batchmean",
    log_target=True)`` (:func:`retrain_widgets.core.recipe.losses.distillation_loss`): the KL
    divergence summed over classes and averaged over the batch (``KLDivLoss``'s default
    ``reduction="mean"`` would also divide by the number of classes, which is not the KL
    divergence), scaled by ``T²`` so that its gradients keep their size when the temperature
    changes. The teacher's logits are detached: only the student learns.

    Parameters
    ----------
    student_logits, teacher_logits
        Logits of the same shape, classes on dimension ``dim``.
    temperature
        Softening temperature ``T > 0``.
    dim
        The class dimension (1, as for cross entropy; use -1 for ``(N, L, C)`` token logits).

    Raises
    ------
    LossMismatchError
        When the shapes differ (e.g. the head was replaced with a different number of
        outputs than the teacher's).
    """
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
        raise ValueError(f"distillation_loss: temperature must be a number > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise LossMismatchError(
            f"distillation needs student and teacher logits of the same shape (N, C, ...); the student "
            f"gives {tuple(student_logits.shape)} and the teacher {tuple(teacher_logits.shape)}. A head "
            f"replaced with a different number of outputs cannot be distilled from the original head: "
            f"turn distillation off or keep the head's size",
            loss="distillation",
            outputs_shape=tuple(student_logits.shape),
            targets_shape=tuple(teacher_logits.shape),
            outputs_dtype=student_logits.dtype,
            targets_dtype=teacher_logits.dtype,
            head_out=teacher_logits.shape[dim] if teacher_logits.dim() >= 2 else None,
        )
    return recipe_losses.distillation_loss(student_logits, teacher_logits, temperature, dim)


# --------------------------------------------------------------------------- factories


def _positive(name: str, key: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"loss {name!r}: parameter {key!r} must be > 0, got {value!r}")


def _with(formula: LossFn, **kwargs: Any) -> LossFn:
    return functools.partial(formula, **kwargs) if kwargs else formula


def _ce() -> LossFn:
    return recipe_losses.cross_entropy


def _label_smoothing(smoothing: float = 0.1) -> LossFn:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"loss 'label_smoothing': parameter 'smoothing' must be in [0, 1), got {smoothing!r}")
    return _with(recipe_losses.cross_entropy, label_smoothing=smoothing)


def _bce(pos_weight: float | None = None) -> LossFn:
    if pos_weight is None:
        return recipe_losses.binary_cross_entropy
    _positive("bce", "pos_weight", pos_weight)
    return _with(recipe_losses.binary_cross_entropy, pos_weight=float(pos_weight))


def _focal(alpha: float = 0.25, gamma: float = 2.0) -> LossFn:
    return _with(recipe_losses.sigmoid_focal_loss, alpha=alpha, gamma=gamma)


def _focal_multiclass(gamma: float = 2.0) -> LossFn:
    return _with(recipe_losses.softmax_focal_loss, gamma=gamma)


def _mse() -> LossFn:
    return recipe_losses.mean_squared_error


def _huber(delta: float = 1.0) -> LossFn:
    _positive("huber", "delta", delta)
    return _with(recipe_losses.huber, delta=delta)


def _smooth_l1(beta: float = 1.0) -> LossFn:
    return _with(recipe_losses.smooth_l1, beta=beta)


def _l1() -> LossFn:
    return recipe_losses.mean_absolute_error


_BUILTIN: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("ce", _ce, "multiclass", {}, "Cross entropy: one logit per class, integer class ids."),
        LossSpec(
            "label_smoothing",
            _label_smoothing,
            "multiclass",
            {"smoothing": Param(0.1, "float", 0.0, 1.0, help="share of the target spread over all classes, in [0, 1)")},
            "Cross entropy with label smoothing (Szegedy et al. 2016).",
        ),
        LossSpec(
            "bce",
            _bce,
            "binary",
            {"pos_weight": Param(None, "log", 0.0, None, help="weight of positive targets (> 0; empty: 1)")},
            "Binary cross entropy on logits: one logit per target, float 0/1 targets.",
        ),
        LossSpec(
            "focal",
            _focal,
            "binary",
            {
                "alpha": Param(0.25, "float", -1.0, 1.0, help="weight of positives in [0, 1]; negative: no weighting"),
                "gamma": Param(2.0, "float", 0.0, 10.0, help="focusing exponent; 0 = BCE"),
            },
            "Sigmoid focal loss for binary / multi-label logits (Lin et al. 2017, torchvision's formula).",
        ),
        LossSpec(
            "focal_multiclass",
            _focal_multiclass,
            "multiclass",
            {"gamma": Param(2.0, "float", 0.0, 10.0, help="focusing exponent; 0 = cross entropy")},
            "Softmax focal loss: cross entropy that down-weights easy samples.",
        ),
        LossSpec("mse", _mse, "regression", {}, "Mean squared error."),
        LossSpec(
            "huber",
            _huber,
            "regression",
            {"delta": Param(1.0, "log", 0.0, None, help="where the loss turns from squared to linear (> 0)")},
            "Huber loss: squared near 0, linear beyond delta.",
        ),
        LossSpec(
            "smooth_l1",
            _smooth_l1,
            "regression",
            {"beta": Param(1.0, "float", 0.0, None, help="where the loss turns from squared to linear (0: L1)")},
            "Smooth L1 loss (Huber loss divided by beta).",
        ),
        LossSpec("l1", _l1, "regression", {}, "Mean absolute error."),
    )
}

for _spec in _BUILTIN.values():
    REGISTRY.register(_spec.name, _spec)

# torch loss modules that behave like a registered loss (exact types: a subclass may differ).
_MODULE_SPECS: dict[type, str] = {
    nn.CrossEntropyLoss: "ce",
    nn.BCEWithLogitsLoss: "bce",
    nn.MSELoss: "mse",
    nn.HuberLoss: "huber",
    nn.SmoothL1Loss: "smooth_l1",
    nn.L1Loss: "l1",
}


# --------------------------------------------------------------------------- shape rules


@dataclass
class _Problem:
    text: str
    head_out: int | None = None
    offer_others: bool = True  # append the losses that fit as they are


def _sh(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _is_int(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _n(x: float) -> str:
    return f"{x:g}"


def _whole_range(t: Tensor) -> tuple[bool, float, float] | None:
    """``(all whole numbers, min, max)`` of a non-empty tensor (one device sync), else None."""
    if t.numel() == 0:
        return None
    v = t.detach()
    if v.dtype == torch.bool:
        v = v.to(torch.uint8)
    if v.is_floating_point():
        if not bool(torch.isfinite(v).all()):
            return None
        whole = bool((v == v.round()).all())
    else:
        whole = True
    lo, hi = torch.aminmax(v)
    return whole, float(lo), float(hi)


def _class_ids_max(t: Tensor, ignore_index: int = _IGNORE_INDEX) -> int | None:
    """The largest class id when ``t`` holds non-negative whole numbers, else None."""
    if t.dtype == torch.bool:
        return None
    v = t.detach()
    if _is_int(v):
        v = v[v != ignore_index]
    info = _whole_range(v)
    if info is None or not info[0] or info[1] < 0:
        return None
    return int(info[2])


def _common_problem(label: str, outputs: Any, targets: Any, *, targets_tensor: bool = True) -> _Problem | None:
    if not isinstance(outputs, Tensor):
        return _Problem(
            f"the outputs are a {type(outputs).__name__}, not a tensor; {label} needs the model's logits "
            f"as a tensor (for a Hugging Face model: outputs.logits)",
            offer_others=False,
        )
    if not (outputs.is_floating_point() or outputs.is_complex()):
        return _Problem(
            f"the outputs are {outputs.dtype}; {label} needs float outputs (logits or values) to train: "
            f"does the model end in argmax() or round()? Return the raw logits instead",
            offer_others=False,
        )
    if outputs.dim() == 0:
        return _Problem(f"the outputs are a single number (shape ()); {label} needs one row per sample (N, ...)",
                        offer_others=False)
    if not isinstance(targets, Tensor):
        if targets_tensor:
            return _Problem(
                f"the targets are a {type(targets).__name__}, not a tensor; {label} needs a tensor of targets",
                offer_others=False,
            )
        return None
    if targets.dim() == 0:
        return _Problem(f"the targets are a single number (shape ()); {label} needs one target per sample",
                        offer_others=False)
    if outputs.shape[0] != targets.shape[0]:
        return _Problem(
            f"the outputs hold {outputs.shape[0]} samples but the targets {targets.shape[0]}: the batch sizes "
            f"must agree (are the targets transposed, flattened, or from another batch?)",
            offer_others=False,
        )
    return None


def _multiclass_problem(label: str, o: Tensor, t: Tensor, values: bool, ignore_index: int) -> _Problem | None:
    n_classes = o.shape[1] if o.dim() >= 2 else 1
    if n_classes < 2:
        text = (f"the model gives 1 output per sample (outputs of shape {_sh(o)}); {label} needs one logit "
                f"per class (at least 2)")
        top = _class_ids_max(t, ignore_index)
        if top is None:
            return _Problem(text + ": replace the head with one output per class, or, for real-valued targets, "
                            "use a regression loss such as 'mse'")
        k = max(2, top + 1)
        text += f": replace the head with {k} outputs (the targets hold class ids 0..{top})"
        if top <= 1 and not t.is_floating_point():
            text += " or use 'bce' with float targets (targets.float())"
        return _Problem(text, head_out=k)
    per_sample = o.shape[:1] + o.shape[2:]
    if t.is_floating_point():
        if t.shape == o.shape:  # class probabilities
            if values:
                info = _whole_range(t)
                if info is None:
                    return _Problem(f"the soft targets (class probabilities) contain NaN or infinity; {label} "
                                    f"needs finite probabilities", offer_others=False)
                if info[1] < 0:
                    return _Problem(f"the soft targets of shape {_sh(t)} hold negative values (down to "
                                    f"{_n(info[1])}); {label} reads float targets of the outputs' shape as class "
                                    f"probabilities, which must be >= 0")
            return None
        if t.shape == per_sample:
            top = _class_ids_max(t)
            if top is not None:
                text = (f"the targets are {t.dtype}, but {label} needs integer class ids (torch.int64): pass "
                        f"targets.long() (they hold whole numbers 0..{top}), or for real-valued targets use 'mse'")
                return _Problem(text, head_out=top + 1 if top >= n_classes else None)
            return _Problem(
                f"the targets are {t.dtype} and not class ids (not whole numbers >= 0), but {label} needs integer "
                f"class ids: pass targets.long() if they are class ids; for 0/1 labels or probabilities use 'bce' "
                f"(1 output per target), for real values 'mse' / 'huber' / 'l1' (1 output per target)",
                head_out=None,
            )
        return _Problem(
            f"the targets have shape {_sh(t)}; with outputs of shape {_sh(o)}, {label} needs integer class ids "
            f"of shape {tuple(per_sample)} or class probabilities of shape {_sh(o)}"
        )
    if t.dtype == torch.bool:
        return _Problem(f"the targets are torch.bool; {label} needs integer class ids: pass targets.long()")
    if not _is_int(t):
        return _Problem(f"the targets are {t.dtype}; {label} needs integer class ids (torch.int64)")
    if t.shape != per_sample:
        if t.shape == o.shape:
            text = (f"the targets have the outputs' shape {_sh(o)}, like one-hot labels; {label} needs one class "
                    f"id per sample, shape {tuple(per_sample)}: pass targets.argmax(1), or targets.float() as "
                    f"class probabilities")
        elif t.numel() == per_sample.numel():
            text = (f"the targets have shape {_sh(t)}; {label} needs class ids of shape {tuple(per_sample)}: "
                    f"pass targets.reshape({'-1' if len(per_sample) == 1 else ', '.join(map(str, per_sample))})")
        else:
            text = (f"the targets have shape {_sh(t)}; with outputs of shape {_sh(o)}, {label} needs class ids of "
                    f"shape {tuple(per_sample)}")
        return _Problem(text)
    if values and t.numel():
        kept = t[t != ignore_index]
        if not kept.numel():
            return _Problem(f"every target in this batch is {ignore_index} (the ignore_index), so {label} is "
                            f"undefined (NaN) on it: check the labels", offer_others=False)
        lo, hi = (int(x) for x in torch.aminmax(kept))
        if hi >= n_classes:
            return _Problem(
                f"the targets hold class ids up to {hi}, but the model gives {n_classes} logits per sample "
                f"(ids 0..{n_classes - 1}) and {label} needs one logit per class: replace the head with "
                f"{hi + 1} outputs",
                head_out=hi + 1,
            )
        if lo < 0:
            return _Problem(
                f"the targets hold a negative class id ({lo}); {label} needs ids in 0..{n_classes - 1} "
                f"({ignore_index} marks samples to ignore)",
                offer_others=False,
            )
    return None


def _aligned(o: Tensor, t: Tensor) -> bool:
    return o.shape == t.shape or (o.dim() == 2 and o.shape[1] == 1 and t.dim() == 1)


def _width_problem(label: str, o: Tensor, t: Tensor, what: str) -> _Problem:
    """Outputs and targets of different shapes for a binary or regression loss."""
    if o.dim() == 2 and t.dim() == 1:
        k = o.shape[1]
        text = (f"the model gives {k} {what} per sample; {label} needs 1 (one per target; the targets have shape "
                f"{_sh(t)}): replace the head with 1 output")
        if not t.is_floating_point():
            text += " and pass targets.float()"
        return _Problem(text, head_out=1)
    if o.dim() == 1 and t.dim() == 2 and t.shape[1] == 1:
        return _Problem(f"the targets have shape {_sh(t)} and the outputs {_sh(o)}; {label} needs the same shape: "
                        f"pass targets.squeeze(1)", offer_others=False)
    head = t.shape[1] if t.dim() == 2 and o.dim() in (1, 2) else None
    text = (f"outputs of shape {_sh(o)} do not match targets of shape {_sh(t)}; {label} needs one output per "
            f"target (the same shape, or outputs (N, 1) against targets (N,))")
    if head is not None:
        text += f": replace the head with {head} outputs"
    return _Problem(text, head_out=head)


def _binary_problem(label: str, o: Tensor, t: Tensor, values: bool) -> _Problem | None:
    if not _aligned(o, t):
        return _width_problem(label, o, t, "logits")
    if not t.is_floating_point():
        return _Problem(f"the targets are {t.dtype}, but {label} needs float targets (0/1 labels or probabilities): "
                        f"pass targets.float()")
    if values and t.numel():
        info = _whole_range(t)
        if info is None:
            return _Problem(f"the targets contain NaN or infinity; {label} needs targets in [0, 1]",
                            offer_others=False)
        whole, lo, hi = info
        if lo < 0 or hi > 1:
            text = (f"the targets range from {_n(lo)} to {_n(hi)}, but {label} needs values in [0, 1] "
                    f"(labels or probabilities)")
            if whole and lo >= 0:
                text += (f"; they look like class ids: use a multi-class loss such as 'ce' with a head of "
                         f"{int(hi) + 1} outputs and targets.long()")
            else:
                text += "; for real-valued targets use 'mse', 'huber' or 'l1'"
            return _Problem(text, offer_others=False)
    return None


def _regression_problem(label: str, o: Tensor, t: Tensor, values: bool) -> _Problem | None:
    if not _aligned(o, t):
        return _width_problem(label, o, t, "outputs")
    if not t.is_floating_point():
        return _Problem(f"the targets are {t.dtype}, but {label} needs float targets: pass targets.float()")
    if values and t.numel() and not bool(torch.isfinite(t).all()):
        return _Problem(f"the targets contain NaN or infinity; {label} needs finite targets", offer_others=False)
    return None


def _task_problem(task: str, label: str, o: Tensor, t: Tensor, *, values: bool,
                  ignore_index: int = _IGNORE_INDEX) -> _Problem | None:
    if task == "multiclass":
        return _multiclass_problem(label, o, t, values, ignore_index)
    if task == "binary":
        return _binary_problem(label, o, t, values)
    if task == "regression":
        return _regression_problem(label, o, t, values)
    return None


def _fitting_losses(outputs: Any, targets: Any, exclude: str | None = None) -> tuple[str, ...]:
    """Registered losses of a known task whose rules accept these outputs and targets as they are."""
    if _common_problem("", outputs, targets) is not None:
        return ()
    fits: dict[str, bool] = {}
    names = []
    for name in REGISTRY:
        if name == exclude:
            continue
        task = REGISTRY.get(name).task
        if task not in _KNOWN_TASKS:
            continue
        if task not in fits:
            fits[task] = _task_problem(task, "", outputs, targets, values=True) is None
        if fits[task]:
            names.append(name)
    return tuple(names)


def _or_list(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _context(outputs: Any, targets: Any) -> str:
    def one(x: Any) -> str:
        return f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__

    return f" (outputs {one(outputs)}, targets {one(targets)})"


def _error(
    text: str,
    loss_name: str | None,
    outputs: Any,
    targets: Any,
    *,
    head_out: int | None = None,
    offer_others: bool = False,
) -> LossMismatchError:
    suggested = _fitting_losses(outputs, targets, exclude=loss_name)
    if offer_others and suggested:
        fit = "fits" if len(suggested) == 1 else "fit"
        text += f"; or use {_or_list(suggested)}, which {fit} these outputs and targets as they are"
    o_is, t_is = isinstance(outputs, Tensor), isinstance(targets, Tensor)
    return LossMismatchError(
        text + _context(outputs, targets),
        loss=loss_name,
        outputs_shape=tuple(outputs.shape) if o_is else None,
        targets_shape=tuple(targets.shape) if t_is else None,
        outputs_dtype=outputs.dtype if o_is else None,
        targets_dtype=targets.dtype if t_is else None,
        head_out=head_out,
        suggested_losses=suggested,
    )


def _raise_problem(problem: _Problem, loss_name: str | None, outputs: Any, targets: Any) -> None:
    raise _error(problem.text, loss_name, outputs, targets, head_out=problem.head_out,
                 offer_others=problem.offer_others)


# --------------------------------------------------------------------------- checked callables


def _signature(outputs: Any, targets: Any) -> tuple[Any, ...] | None:
    """What the shape checks read of a call (``values=False``): shapes and dtypes; ``None``
    unless both are tensors (then every call is checked)."""
    if isinstance(outputs, Tensor) and isinstance(targets, Tensor):
        return outputs.shape, outputs.dtype, targets.shape, targets.dtype
    return None


class CheckedLoss:
    """A loss callable of a known task that checks shapes and dtypes on every call.

    Aligns outputs ``(N, 1)`` with targets ``(N,)`` for binary and regression losses and
    raises :class:`LossMismatchError` on any other mismatch. The checks read only shapes and
    dtypes, so they add no device synchronisation, and a signature (shapes and dtypes of outputs
    and targets) that passed once is not checked again: a run's batches repeat a few.
    """

    MAX_SIGNATURES = 16  # passed signatures kept (the full batch, a last smaller one, validation's)

    def __init__(self, fn: LossFn, spec: LossSpec, label: str, ignore_index: int = _IGNORE_INDEX) -> None:
        self.fn = fn
        self.spec = spec
        self.name = spec.name
        self.task = spec.task
        self.label = label
        self.ignore_index = ignore_index
        self._passed: set[tuple[Any, ...]] = set()

    def align(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Check ``outputs`` against ``targets``; return the outputs as the loss will see them."""
        signature = _signature(outputs, targets)
        if signature is None or signature not in self._passed:
            problem = _common_problem(self.label, outputs, targets) or _task_problem(
                self.task, self.label, outputs, targets, values=False, ignore_index=self.ignore_index)
            if problem is not None:
                _raise_problem(problem, self.name, outputs, targets)
            if signature is not None:
                if len(self._passed) >= self.MAX_SIGNATURES:
                    self._passed.clear()
                self._passed.add(signature)
        if self.task != "multiclass":
            outputs = recipe_losses.align(outputs, targets)  # (N, 1) against (N,): the one alignment made
        return outputs

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.fn(self.align(outputs, targets), targets)

    def __repr__(self) -> str:
        return f"CheckedLoss({self.label}, task={self.task!r})"


# --------------------------------------------------------------------------- registry API


def available() -> list[str]:
    """Names of the registered losses."""
    return REGISTRY.available()


def get(name: str) -> LossSpec:
    """The :class:`LossSpec` registered as ``name`` (``ValueError`` with the closest names if unknown)."""
    return REGISTRY.get(name)


def _check_task(task: str) -> str:
    if task not in TASKS:
        hint = closest(str(task), list(TASKS))
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"a loss task must be one of {list(TASKS)}, got {task!r}{extra}")
    return task


def _is_plain_loss(fn: Callable[..., Any]) -> bool:
    """True for a callable taking ``(outputs, targets)``; False for a factory of such."""
    if isinstance(fn, nn.Module):
        return True
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    positional = [
        p for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2


def register(
    name: str,
    factory_or_fn: Callable[..., Any],
    *,
    task: str = "any",
    params: Mapping[str, Param] | None = None,
    description: str = "",
    overwrite: bool = False,
) -> LossSpec:
    """Register a loss under ``name`` so that configurations can refer to it.

    Parameters
    ----------
    name
        The new name.
    factory_or_fn
        Either a factory ``factory(**kwargs) -> loss`` (any callable without two required
        positional parameters, e.g. the class ``nn.MSELoss``), or a loss itself
        ``(outputs, targets) -> scalar`` (a function or a loss module instance). A loss given
        with ``params`` receives them as keyword arguments on every call.
    task
        ``"multiclass"``, ``"binary"`` or ``"regression"`` to get that task's shape checks,
        alignment and metric; ``"any"`` (default) for none.
    params
        The keyword parameters, described with :class:`~retrain_widgets.core.registry.Param`.
    description
        One line for the user interface.
    overwrite
        Replace an existing entry of that name.

    Returns
    -------
    LossSpec
    """
    if not callable(factory_or_fn):
        raise ValueError(f"register({name!r}, ...): the loss must be callable, got {factory_or_fn!r}")
    _check_task(task)
    params = dict(params or {})
    for key, value in params.items():
        if not isinstance(value, Param):
            raise ValueError(f"register({name!r}, ...): params[{key!r}] must be a Param, got {value!r}")
    if _is_plain_loss(factory_or_fn):
        fn = factory_or_fn

        def factory(**kwargs: Any) -> LossFn:
            return functools.partial(fn, **kwargs) if kwargs else fn

        factory.__name__ = f"{name}_factory"
    else:
        factory = factory_or_fn
    spec = LossSpec(name=name, factory=factory, task=task, params=params, description=description)
    return REGISTRY.register(name, spec, overwrite=overwrite)


def _validated_kwargs(spec: LossSpec, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if spec.name in REGISTRY and REGISTRY.get(spec.name) is spec:
        checked = REGISTRY.validate_kwargs(spec.name, kwargs)
    else:
        scratch: Registry[LossSpec] = Registry(kind="loss")
        scratch.register(spec.name, spec)
        checked = scratch.validate_kwargs(spec.name, kwargs)
    return {k: v for k, v in checked.items() if v is not None}  # None: the factory's default


def _from_spec(spec: LossSpec, kwargs: Mapping[str, Any]) -> LossFn:
    fn = spec.factory(**_validated_kwargs(spec, kwargs))
    if not callable(fn):
        raise ValueError(f"the factory of loss {spec.name!r} returned {fn!r}, which is not callable")
    if spec.task in _KNOWN_TASKS:
        return CheckedLoss(fn, spec, repr(spec.name))
    return fn


def make(name: str, **kwargs: Any) -> LossFn:
    """Build the registered loss ``name`` with ``kwargs`` (checked against its parameters).

    Losses of a known task come back as :class:`CheckedLoss`, which checks shapes and dtypes
    on every call.
    """
    return _from_spec(REGISTRY.get(name), kwargs)


def _label_of(loss: Any) -> str:
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, LossSpec):
        return repr(loss.name)
    if isinstance(loss, CheckedLoss):
        return loss.label
    if isinstance(loss, nn.Module):
        return f"nn.{type(loss).__name__}()" if type(loss).__module__.startswith("torch.") else repr(loss)
    name = getattr(loss, "__name__", None) or getattr(getattr(loss, "func", None), "__name__", None)
    return f"the loss {name!r}" if name and name != "<lambda>" else "the custom loss"


def _name_of(loss: Any) -> str:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, (LossSpec, CheckedLoss)):
        return loss.name
    name = getattr(loss, "__name__", None)
    return name if name and name != "<lambda>" else repr(loss)


def resolve(loss: str | LossSpec | Callable[..., Any], **kwargs: Any) -> tuple[LossFn, LossSpec | None]:
    """Turn what a user gives as a loss into ``(callable, spec)``.

    Parameters
    ----------
    loss
        A registered name; a :class:`LossSpec`; a torch loss module instance that matches a
        registered loss (``nn.CrossEntropyLoss``, ``nn.BCEWithLogitsLoss``, ``nn.MSELoss``,
        ``nn.HuberLoss``, ``nn.SmoothL1Loss``, ``nn.L1Loss``: the module keeps its own
        settings and is wrapped in the same checks and alignment as the registered loss, so
        ``nn.MSELoss()`` on ``(N, 1)`` against ``(N,)`` does not broadcast); or any callable
        ``(outputs, targets) -> scalar``, which is returned as it is with spec ``None``.
    kwargs
        Parameters of a registered loss (not allowed with a module or a custom callable).

    Returns
    -------
    tuple
        The loss callable and its spec (``None`` for a custom callable).
    """
    if isinstance(loss, str):
        spec = REGISTRY.get(loss)
        return _from_spec(spec, kwargs), spec
    if isinstance(loss, LossSpec):
        return _from_spec(loss, kwargs), loss
    if isinstance(loss, CheckedLoss):
        if kwargs:
            raise ValueError(f"resolve: {loss!r} is already built; pass its parameters to make() instead")
        return loss, loss.spec
    if not callable(loss):
        raise ValueError(
            f"a loss must be a registered name ({', '.join(available())}), a torch loss module or a "
            f"callable (outputs, targets) -> scalar tensor; got {loss!r}"
        )
    if kwargs:
        raise ValueError(
            f"resolve: loss parameters {sorted(kwargs)} apply to registered losses only; configure "
            f"{_label_of(loss)} itself (e.g. nn.HuberLoss(delta=0.5) or functools.partial)"
        )
    name = _MODULE_SPECS.get(type(loss))
    if name is not None:
        spec = _BUILTIN[name]
        ignore_index = getattr(loss, "ignore_index", _IGNORE_INDEX)
        return CheckedLoss(loss, spec, _label_of(loss), ignore_index=ignore_index), spec
    return loss, None


def task_of(loss: Any) -> str | None:
    """``"multiclass"``, ``"binary"`` or ``"regression"`` for a loss of a known task, else None."""
    if isinstance(loss, str):
        task = REGISTRY.get(loss).task
    elif isinstance(loss, (LossSpec, CheckedLoss)):
        task = loss.task
    elif type(loss) in _MODULE_SPECS:
        task = _BUILTIN[_MODULE_SPECS[type(loss)]].task
    else:
        return None
    return task if task in _KNOWN_TASKS else None


# --------------------------------------------------------------------------- the pre-flight check

_BROADCAST_WARNING = re.compile(r"broadcast|target size", re.IGNORECASE)


def _run_once(fn: LossFn, outputs: Tensor, targets: Any, name: str | None, label: str,
              user_code: bool = False) -> Tensor:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.enable_grad():
                result = fn(outputs, targets)
        except LossMismatchError:
            raise
        except Exception as exc:
            if user_code:  # the user's own bug, not a mismatch: their exception, with a note
                note_user_error(exc, f"the loss {label}", outputs=outputs, targets=targets)
                raise
            raise _error(f"{label} raised {type(exc).__name__} on these outputs and targets: {exc}",
                         name, outputs, targets) from exc
    bad = [w for w in caught if issubclass(w.category, UserWarning) and _BROADCAST_WARNING.search(str(w.message))]
    for w in caught:
        if w not in bad:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if bad:
        raise _error(
            f"{label} broadcasts the outputs against the targets instead of pairing them (PyTorch warned: "
            f"{bad[0].message}); make the outputs and the targets the same shape, e.g. outputs.squeeze(1) "
            f"for a 1-unit head, or use a registered loss, which aligns (N, 1) with (N,)",
            name, outputs, targets, head_out=_one_per_target(outputs, targets),
        )
    return result


def _one_per_target(outputs: Any, targets: Any) -> int | None:
    if isinstance(outputs, Tensor) and isinstance(targets, Tensor) and outputs.dim() == 2 and targets.dim() == 1:
        return 1
    return None


def _check_result(result: Any, outputs: Tensor, targets: Any, name: str | None, label: str) -> None:
    if not isinstance(result, Tensor):
        raise _error(
            f"{label} returned a {type(result).__name__} ({result!r}); a loss must return a 0-d tensor computed "
            f"from the outputs (no .item(), float() or numpy)", name, outputs, targets)
    if result.dim() != 0:
        raise _error(
            f"{label} returned a tensor of shape {tuple(result.shape)}; a loss must return one number (a 0-d "
            f"tensor): reduce it with .mean() or .sum()", name, outputs, targets)
    if not (result.is_floating_point() or result.is_complex()):
        raise _error(f"{label} returned a {result.dtype} tensor; a loss must return a float tensor",
                     name, outputs, targets)
    if not bool(torch.isfinite(result.detach())):
        raise _error(f"{label} returned {result.item()} on this batch; a loss must be finite",
                     name, outputs, targets)
    if outputs.requires_grad and not result.requires_grad:
        raise _error(
            f"{label} returned a tensor without a gradient (requires_grad=False) although the outputs have one: "
            f"it does not depend on the outputs (a .detach(), .item(), numpy or torch.no_grad inside?)",
            name, outputs, targets)


def _probe_broadcast(fn: LossFn, result: Tensor, outputs: Tensor, targets: Any, name: str | None,
                     label: str) -> None:
    """A custom loss on (N, 1) against (N,) must give what it gives on (N,) against (N,)."""
    if not (isinstance(targets, Tensor) and outputs.dim() == 2 and outputs.shape[1] == 1
            and targets.dim() == 1 and targets.shape[0] > 1):
        return
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            other = fn(outputs.squeeze(1), targets)
    except Exception:
        return
    if not isinstance(other, Tensor) or other.shape != result.shape:
        return
    a, b = result.detach().double(), other.detach().double()
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-6):
        raise _error(
            f"{label} gives {a.item():.6g} on outputs of shape {tuple(outputs.shape)} but {b.item():.6g} on the "
            f"same outputs squeezed to {(outputs.shape[0],)}: it probably broadcasts (N, 1) against the targets "
            f"(N,) into (N, N). Squeeze the outputs inside the loss (outputs.squeeze(1)) or use a registered loss",
            name, outputs, targets, head_out=None,
        )


def check_compatibility(outputs: Tensor, targets: Any, loss: Any, **loss_kwargs: Any) -> None:
    """Check, on one batch, that ``loss`` can train ``outputs`` against ``targets``.

    Checks the batch sizes, NaN in the outputs, the task's shape and dtype rules (with
    their value checks: class ids in range, binary targets in ``[0, 1]``, finite targets),
    then runs the loss once: it must not broadcast (a PyTorch broadcasting / "target size"
    warning, or a custom loss that gives another value on ``(N, 1)`` outputs than on the
    same outputs squeezed to ``(N,)``), and must return a finite 0-d tensor that has a
    gradient when the outputs have one. An exception raised by a built-in loss is wrapped in a
    :class:`LossMismatchError`; one raised by the user's own loss (a callable, or a loss they
    registered) is re-raised as it is, with a note naming the loss and the shapes
    (:func:`~retrain_widgets.core.errors.note_user_error`). The inputs are not modified.

    Parameters
    ----------
    outputs
        The model's outputs on one batch (a tensor; take ``.logits`` first).
    targets
        The batch's targets (any object for a custom loss; a tensor otherwise).
    loss
        Anything :func:`resolve` accepts.
    loss_kwargs
        Parameters of a registered loss.

    Raises
    ------
    LossMismatchError
        With ``head_out`` and ``suggested_losses`` describing the fixes.
    ValueError
        For an unknown loss name or bad parameters.
    """
    fn, spec = resolve(loss, **loss_kwargs)
    task = spec.task if spec is not None and spec.task in _KNOWN_TASKS else None
    name = spec.name if spec is not None else _name_of(loss)
    label = fn.label if isinstance(fn, CheckedLoss) else (repr(spec.name) if spec is not None else _label_of(loss))
    problem = _common_problem(label, outputs, targets, targets_tensor=task is not None)
    if problem is not None:
        _raise_problem(problem, name, outputs, targets)
    if outputs.is_floating_point() and outputs.numel() and bool(torch.isnan(outputs.detach()).any()):
        raise _error("the outputs contain NaN: the model or its inputs are broken (check the data for NaN, and "
                     "the learning rate if the model was trained before)", name, outputs, targets)
    if task is not None:
        ignore_index = fn.ignore_index if isinstance(fn, CheckedLoss) else _IGNORE_INDEX
        problem = _task_problem(task, label, outputs, targets, values=True, ignore_index=ignore_index)
        if problem is not None:
            _raise_problem(problem, name, outputs, targets)
    user_code = spec is None or _BUILTIN.get(spec.name) is not spec  # a callable or a loss registered by the user
    result = _run_once(fn, outputs, targets, name, label, user_code)
    _check_result(result, outputs, targets, name, label)
    if task is None:
        _probe_broadcast(fn, result, outputs, targets, name, label)
