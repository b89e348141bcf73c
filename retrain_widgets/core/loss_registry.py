"""The loss registry: :class:`LossSpec`, the tasks a loss can declare, the built-in losses and
:func:`register` / :func:`get` / :func:`available`.

The built-in losses' formulas are the recipe's plain-PyTorch functions (an exported script
contains the same source); here they are registered and given their parameters' checks.
:mod:`retrain_widgets.core.losses` wraps the losses of a known task in the shape checks of that
task and re-exports everything public here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .recipe import losses as recipe_losses
from .registry import Param, Registry, closest

LossFn = Callable[[Tensor, Tensor], Tensor]

#: The tasks a loss can declare. ``"any"`` means "unknown": no shape rules apply.
TASKS = ("multiclass", "binary", "regression", "any")
_KNOWN_TASKS = ("multiclass", "binary", "regression")


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

