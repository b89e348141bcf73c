"""Optimizer parameter groups built once for all parameters, and the optimizer registry.

Every parameter of the model is in exactly one group, frozen ones included (fastai's
approach): unfreezing later only flips ``requires_grad``, so it never adds a group and never
breaks or bypasses the LR scheduler (``add_param_group`` after a scheduler exists makes
``LambdaLR`` raise, ``OneCycleLR`` fail with ``KeyError: 'initial_lr'`` and
``CosineAnnealingLR`` silently ignore the new group).

Frozen parameters have no gradient (``None``), so PyTorch's optimizers skip them entirely:
neither weight decay nor momentum moves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .recipe import training as recipe_training
from .registry import Registry
from .tree import LayerGroup, layer_groups

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = ["param_groups", "module_names", "make_optimizer", "OPTIMIZER_REGISTRY", "group_lrs", "scale_lrs"]


def param_groups(model: nn.Module, config: RunConfig, groups: list[LayerGroup] | None = None) -> list[dict[str, Any]]:
    """Build optimizer parameter groups for *all* parameters of ``model``.

    One group per layer group (:func:`~retrain_widgets.core.tree.layer_groups`) and per
    decay setting: weight decay applies to weight matrices and kernels, not to biases and
    normalisation layers. The top (head) group gets ``config.lr``; each group below gets
    ``config.lr_decay`` times the LR of the one above (discriminative learning rates).

    Returns
    -------
    list of dict
        Torch param-group dicts with the extra keys ``"name"`` (e.g. ``"features.0"`` or
        ``"features.0 (no decay)"``) and ``"layer_group"``.
    """
    groups = layer_groups(model) if groups is None else groups
    return recipe_training.param_groups(model, module_names(groups), config.lr, config.lr_decay,
                                        config.weight_decay)


def module_names(groups: list[LayerGroup]) -> list[list[str]]:
    """The layer groups as lists of dotted names (modules, the root as ``""``, and parameters a
    module holds itself, such as ``"cls_token"``), as the recipe takes them."""
    return [["" if name == "(model)" else name for name in group.modules] for group in groups]


OPTIMIZER_REGISTRY: Registry[Callable[[list[dict[str, Any]], RunConfig], torch.optim.Optimizer]] = Registry(
    kind="optimizer"
)
OPTIMIZER_REGISTRY.register(
    "adamw", lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
)
OPTIMIZER_REGISTRY.register(
    "adam", lambda groups, c: torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)
)
OPTIMIZER_REGISTRY.register(
    "sgd", lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
)


def make_optimizer(model: nn.Module, config: RunConfig, groups: list[LayerGroup] | None = None) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over :func:`param_groups`."""
    return OPTIMIZER_REGISTRY.get(config.optimizer)(param_groups(model, config, groups), config)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current LR of each layer group (the decay / no-decay halves share one)."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        out.setdefault(g.get("layer_group", g.get("name", str(len(out)))), float(g["lr"]))
    return out


def scale_lrs(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """Scale every group's LR, and the schedule's base LRs, so that the top group's LR is ``lr``
    (the groups keep their ratios; the schedule goes on from where it is)."""
    top = optimizer.param_groups[-1]["lr"]
    f = lr / top if top > 0 else 1.0
    for g in optimizer.param_groups:
        g["lr"] *= f
        for key in ("initial_lr", "max_lr", "min_lr"):
            if key in g:
                g[key] *= f
    for attr in ("base_lrs", "max_lrs", "min_lrs"):
        values = getattr(scheduler, attr, None)
        if isinstance(values, list):
            setattr(scheduler, attr, [v * f for v in values])
