"""The shape and dtype rules of each loss task, and :class:`LossMismatchError`, the error that
says what does not fit and how to fix it.

The rules are described in :mod:`retrain_widgets.core.losses`. Each ``_*_problem`` function
returns a :class:`_Problem` (the message, the head size that would fit, whether to offer other
losses) or ``None``; :func:`_error` turns one into a :class:`LossMismatchError`, naming the
registered losses that fit the outputs and targets as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .loss_registry import _KNOWN_TASKS, REGISTRY

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

