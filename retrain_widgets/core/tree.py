"""The module tree of a model; freezing, BatchNorm handling, heads and layer groups re-exported.

Everything is keyed by dotted ``named_modules()`` names (``"features.0"``,
``"bert.encoder.layer.1"``); the root module is ``""``. A parameter that a module holds
itself next to parameterised children (timm's ``cls_token`` / ``pos_embed`` on the root,
torchvision's ``encoder.pos_embedding``, CLIP's ``logit_scale``) is addressed by its dotted
``named_parameters()`` name, wherever a module name is accepted. Parameters are matched by
identity, so tied weights are counted and frozen once.

The pieces live in modules of their own, and every name stays importable from here:

* :mod:`~retrain_widgets.core.dotted_names`: dotted names, their lookup and covers;
* :mod:`~retrain_widgets.core.freezing`: freezing, unfreezing, what is frozen;
* :mod:`~retrain_widgets.core.heads`: the head, found and replaced;
* :mod:`~retrain_widgets.core.layer_grouping`: the blocks for discriminative LRs and gradual unfreezing.

This module holds the tree itself: :func:`layer_tree` and :func:`parameterised_layers`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from torch import nn

from .dotted_names import (
    _is_holder,
    _join,
    _unique_params,
    check_names,
    cover,
    get_module,
    held_parameters,
    input_order,
    names_up_to,
    parameters_of,
)
from .freezing import (
    freeze,
    freeze_all_but,
    frozen_complement,
    frozen_names,
    is_locked_norm,
    is_norm_layer,
    trainable_count,
    unfreeze,
)
from .heads import find_head, find_head_or_none, replace_head  # noqa: F401  (find_head_or_none: imported from here)
from .layer_grouping import LayerGroup, layer_groups, matcher_groups

__all__ = [
    "LayerInfo",
    "held_parameters",
    "parameters_of",
    "check_names",
    "LayerGroup",
    "layer_tree",
    "get_module",
    "freeze",
    "unfreeze",
    "frozen_names",
    "trainable_count",
    "is_norm_layer",
    "is_locked_norm",
    "find_head",
    "replace_head",
    "layer_groups",
    "parameterised_layers",
    "freeze_all_but",
    "frozen_complement",
    "names_up_to",
    "matcher_groups",
    "cover",
    "input_order",
]


@dataclass(frozen=True)
class LayerInfo:
    """One node of the module tree.

    Attributes
    ----------
    name
        Dotted name (``""`` for the root).
    type
        Class name of the module.
    depth
        0 for the root, 1 for its children, ...
    own_params, total_params
        Parameters owned directly / in the whole subtree (tied weights counted once).
    trainable_params
        Parameters of the subtree with ``requires_grad=True``.
    children
        Dotted names of the direct children: the parameters the module holds itself (when it
        also has parameterised children, see :func:`held_parameters`) first, then its modules.
    kind
        ``"module"``, or ``"parameter"`` for a directly held parameter (``type`` is then
        ``"Parameter"`` and ``shape`` its shape).
    """

    name: str
    type: str
    depth: int
    own_params: int
    total_params: int
    trainable_params: int
    children: tuple[str, ...]
    kind: str = "module"
    shape: tuple[int, ...] = ()

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def label(self) -> str:
        return self.name.rsplit(".", 1)[-1] if self.name else "(model)"


def _param_info(name: str, depth: int, p: nn.Parameter, trains: bool) -> LayerInfo:
    n = p.numel()
    return LayerInfo(name=name, type="Parameter", depth=depth, own_params=n, total_params=n,
                     trainable_params=n if trains else 0, children=(), kind="parameter",
                     shape=tuple(p.shape))


def layer_tree(model: nn.Module, frozen: Collection[int] | None = None) -> dict[str, LayerInfo]:
    """Describe every module of ``model``, in ``named_modules()`` order, and every parameter a
    module holds next to parameterised children (:func:`held_parameters`) as a node of its own.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    frozen
        The ``id()`` of the parameters to count as frozen (a freezing the model takes later), or
        ``None``: those whose ``requires_grad`` is False.

    Returns
    -------
    dict
        Dotted name -> :class:`LayerInfo`. The root is under ``""``; a held parameter's node
        follows its holder's.
    """
    out: dict[str, LayerInfo] = {}
    trains = (lambda p: p.requires_grad) if frozen is None else (lambda p: id(p) not in frozen)  # noqa: E731
    modules = dict(model.named_modules())
    for name, module in modules.items():
        params = _unique_params(module)
        own = _unique_params(module, recurse=False)
        depth = 0 if not name else name.count(".") + 1
        held = [(_join(name, pname), p) for pname, p in module.named_parameters(recurse=False)] \
            if _is_holder(module) else []
        children = tuple(_join(name, child) for child, m in module.named_children() if m is not None)
        children = tuple(n for n, _ in held) + tuple(c for c in children if c in modules)
        out[name] = LayerInfo(
            name=name,
            type=type(module).__name__,
            depth=depth,
            own_params=sum(p.numel() for p in own.values()),
            total_params=sum(p.numel() for p in params.values()),
            trainable_params=sum(p.numel() for p in params.values() if trains(p)),
            children=children,
        )
        for pname, p in held:
            out[pname] = _param_info(pname, depth + 1, p, trains(p))
    return out


def parameterised_layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Modules that own parameters directly, with those parameters (each parameter once).

    These are the "layers" of per-layer probes (gradient norms, drift).
    """
    seen: set[int] = set()
    out: list[tuple[str, list[nn.Parameter]]] = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        if own:
            seen.update(id(p) for p in own)
            out.append((name or "(model)", own))
    return out
