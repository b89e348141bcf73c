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
from typing import Any

import torch
from torch import nn

from .config import RunConfig
from .registry import Registry
from .tree import LayerGroup, is_norm_layer, layer_groups, parameters_of

__all__ = ["param_groups", "make_optimizer", "OPTIMIZER_REGISTRY", "group_lrs"]


def _no_decay(module: nn.Module, pname: str, p: nn.Parameter) -> bool:
    return p.ndim < 2 or is_norm_layer(module) or pname == "bias"


def _told_no_decay(model: nn.Module) -> set[int]:
    """Parameters the model names in its own ``no_weight_decay()`` (timm's convention: a ViT's
    ``pos_embed`` and ``cls_token``), by identity."""
    names = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else ()
    wanted = set(names or ())
    return {id(p) for n, p in model.named_parameters() if n in wanted}


def param_groups(model: nn.Module, config: RunConfig, groups: list[LayerGroup] | None = None) -> list[dict[str, Any]]:
    """Build optimizer parameter groups for *all* parameters of ``model``.

    One group per layer group (:func:`~retrain_widgets.core.tree.layer_groups`) and per
    decay setting: weight decay applies to weight matrices and kernels, not to biases,
    normalisation layers and the parameters a model names in its ``no_weight_decay()`` (timm). The top (head) group gets ``config.lr``; each group below gets
    ``config.lr_decay`` times the LR of the one above (discriminative learning rates).

    Returns
    -------
    list of dict
        Torch param-group dicts with the extra keys ``"name"`` (e.g. ``"features.0"`` or
        ``"features.0 (no decay)"``) and ``"layer_group"``.
    """
    groups = layer_groups(model) if groups is None else groups
    seen: set[int] = set()
    told = _told_no_decay(model)
    out: list[dict[str, Any]] = []
    n = len(groups)
    for i, group in enumerate(groups):
        lr = config.lr * config.lr_decay ** (n - 1 - i)
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for mname in group.modules:
            for sub, pname, p in parameters_of(model, "" if mname == "(model)" else mname):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                (no_decay if id(p) in told or _no_decay(sub, pname, p) else decay).append(p)
        if decay:
            out.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay,
                        "name": group.name, "layer_group": group.name})
        if no_decay:
            out.append({"params": no_decay, "lr": lr, "weight_decay": 0.0,
                        "name": f"{group.name} (no decay)", "layer_group": group.name})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:  # only with groups given by hand that miss some: they join the top group's LR
        out.append({"params": rest, "lr": config.lr, "weight_decay": config.weight_decay,
                    "name": "(other)", "layer_group": "(other)"})
    return out


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
