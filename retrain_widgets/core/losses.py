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

Where the code lives
--------------------
This module makes the losses (:func:`make`, :func:`resolve`, :class:`CheckedLoss`) and runs
:func:`check_compatibility`; it re-exports the rest of its public names from
:mod:`.loss_registry` (:class:`LossSpec`, the registry and the built-in losses),
:mod:`.loss_checks` (the shape and dtype rules, :class:`LossMismatchError`) and
:mod:`.loss_preflight` (running the loss once on a batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .loss_checks import (
    _IGNORE_INDEX,
    LossMismatchError,
    _common_problem,
    _error,
    _raise_problem,
    _task_problem,
)
from .loss_preflight import _check_result, _probe_broadcast, _run_once
from .loss_registry import (
    _BUILTIN,
    _KNOWN_TASKS,
    _MODULE_SPECS,
    REGISTRY,
    TASKS,
    LossFn,
    LossSpec,
    available,
    get,
    register,
)
from .recipe import losses as recipe_losses
from .registry import Registry

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


# --------------------------------------------------------------------------- formulas
# The formulas are the recipe's plain-PyTorch functions (an exported script contains the same
# source); :mod:`.loss_registry` registers them and gives them their parameters' checks, and
# here the losses of a known task are wrapped in the shape checks of their task (:class:`CheckedLoss`).

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


# --------------------------------------------------------------------------- making and resolving losses


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
