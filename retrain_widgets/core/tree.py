"""The module tree of a model: freezing, BatchNorm handling, heads and layer groups.

Everything is keyed by dotted ``named_modules()`` names (``"features.0"``,
``"bert.encoder.layer.1"``); the root module is ``""``. A parameter that a module holds
itself next to parameterised children (timm's ``cls_token`` / ``pos_embed`` on the root,
torchvision's ``encoder.pos_embedding``, CLIP's ``logit_scale``) is addressed by its dotted
``named_parameters()`` name, wherever a module name is accepted. Parameters are matched by
identity, so tied weights are counted and frozen once.

Two traps of the field are handled here:

* ``requires_grad=False`` alone does not freeze BatchNorm: in ``model.train()`` its running
  statistics still change, and ``bn.eval()`` is undone by the parent's next ``.train()``.
  :func:`freeze` locks the normalisation layers inside frozen modules in inference mode
  (unless ``train_bn=True``, fastai's meaning: their affine parameters keep training and
  their statistics keep updating).
* a frozen parameter must have no gradient at all (``None``, not zeros), or AdamW's weight
  decay and SGD's momentum keep moving it. :func:`freeze` drops existing gradients.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .recipe import freezing as recipe_freezing
from .registry import closest

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

_NORMS = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


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


@dataclass(frozen=True)
class LayerGroup:
    """A block of the model used for discriminative LRs and gradual unfreezing.

    ``name`` is the first member's dotted name; ``modules`` are the dotted names of its
    member modules, bottom (input side) first.
    """

    name: str
    modules: tuple[str, ...]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unique_params(module: nn.Module, recurse: bool = True) -> dict[int, nn.Parameter]:
    return {id(p): p for p in module.parameters(recurse=recurse)}


def held_parameters(model: nn.Module) -> list[str]:
    """Dotted names of the parameters held directly by a module that also has parameterised
    children (e.g. a ViT's ``cls_token`` and ``pos_embed`` on the root). A leaf layer's
    ``weight`` and ``bias`` are not listed: the layer's own name covers them."""
    return [_join(name, pname) for name, module in model.named_modules() if _is_holder(module)
            for pname, _ in module.named_parameters(recurse=False)]


def _is_holder(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) and any(
        any(True for _ in child.parameters()) for child in module.children())


def _param_info(name: str, depth: int, p: nn.Parameter) -> LayerInfo:
    n = p.numel()
    return LayerInfo(name=name, type="Parameter", depth=depth, own_params=n, total_params=n,
                     trainable_params=n if p.requires_grad else 0, children=(), kind="parameter",
                     shape=tuple(p.shape))


def layer_tree(model: nn.Module) -> dict[str, LayerInfo]:
    """Describe every module of ``model``, in ``named_modules()`` order, and every parameter a
    module holds next to parameterised children (:func:`held_parameters`) as a node of its own.

    Parameters
    ----------
    model
        Any ``nn.Module``.

    Returns
    -------
    dict
        Dotted name -> :class:`LayerInfo`. The root is under ``""``; a held parameter's node
        follows its holder's.
    """
    out: dict[str, LayerInfo] = {}
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
            trainable_params=sum(p.numel() for p in params.values() if p.requires_grad),
            children=children,
        )
        for pname, p in held:
            out[pname] = _param_info(pname, depth + 1, p)
    return out


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name``, or raise a ``ValueError`` with suggestions."""
    if name == "":
        return model
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    hint = closest(name, [n for n in modules if n])
    extra = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    tops = ", ".join(repr(n) for n, _ in model.named_children())
    raise ValueError(
        f"the model has no module named {name!r}.{extra} Names are dotted named_modules() names; "
        f"the top-level ones are {tops}."
    )


def _lookup_parameter(model: nn.Module, name: str) -> nn.Parameter | None:
    holder, _, pname = name.rpartition(".")
    try:
        module = model.get_submodule(holder)
    except AttributeError:
        return None
    return dict(module.named_parameters(recurse=False)).get(pname) if pname else None


def parameters_of(model: nn.Module, name: str) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """``(holder, parameter name, parameter)`` of everything that ``name`` covers: a module's
    whole subtree, or one dotted parameter name (``"cls_token"``, ``"encoder.pos_embedding"``).

    Raises a ``ValueError`` with suggestions for a name that is neither."""
    modules = dict(model.named_modules())
    if name in modules:
        return [(sub, pname, p) for sub in modules[name].modules() for pname, p in sub.named_parameters(recurse=False)]
    p = _lookup_parameter(model, name)
    if p is not None:
        return [(model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2], p)]
    choices = [n for n in modules if n] + [n for n, _ in model.named_parameters()]
    hint = closest(name, choices)
    extra = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    tops = ", ".join(repr(n) for n, _ in model.named_children())
    raise ValueError(
        f"the model has no module named {name!r}, nor a parameter of that name.{extra} Names are dotted named_modules() or "
        f"named_parameters() names; the top-level modules are {tops}."
    )


def check_names(model: nn.Module, names: str | Iterable[str] | None) -> list[str]:
    """The names as a list, each checked to be a module or a parameter of ``model``."""
    out = _as_names(names)
    for n in out:
        parameters_of(model, n)
    return out


def _as_names(names: str | Iterable[str] | None) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    out = list(names)
    for n in out:
        if not isinstance(n, str):
            raise ValueError(f"module names must be strings, got {n!r}")
    return out


def is_norm_layer(module: nn.Module) -> bool:
    """True for BatchNorm / InstanceNorm / LayerNorm / GroupNorm layers."""
    return isinstance(module, _NORMS)


def is_locked_norm(module: nn.Module) -> bool:
    """True when ``module`` is a normalisation layer locked in inference mode by :func:`freeze`."""
    return isinstance(module.__dict__.get("train"), recipe_freezing.LockedEval)


def _unlock_norm(module: nn.Module, mode: bool) -> None:
    if is_locked_norm(module):
        del module.__dict__["train"]
    module.train(mode)


def _stat_norm(module: nn.Module) -> bool:
    """Normalisation layers whose behaviour differs between train and eval (running stats)."""
    return isinstance(module, _NormBase)


def freeze(model: nn.Module, names: str | Iterable[str], train_bn: bool = False) -> list[str]:
    """Freeze the modules called ``names`` (and everything inside them).

    Parameters
    ----------
    model
        The model, changed in place.
    names
        Dotted module names, or dotted names of parameters held directly by a module
        (``"cls_token"``). A name that does not exist raises a ``ValueError`` that suggests the
        closest names.
    train_bn
        ``False`` (default): BatchNorm-like layers inside the frozen modules are frozen too
        and locked in inference mode, so neither their affine parameters nor their running
        statistics change, even after ``model.train()``. ``True`` (fastai's meaning): their
        affine parameters stay trainable and they keep normalising with batch statistics.

    Returns
    -------
    list of str
        The names that were frozen.

    Raises
    ------
    ValueError
        For unknown names, or when nothing trainable would be left.
    """
    wanted = _as_names(names)
    to_freeze: dict[int, nn.Parameter] = {}
    norms: list[nn.Module] = []
    modules = dict(model.named_modules())
    for name in wanted:
        if name not in modules:  # a directly held parameter: just that one
            to_freeze.update((id(p), p) for _, _, p in parameters_of(model, name))
            continue
        for sub in modules[name].modules():
            if _stat_norm(sub) or (train_bn and is_norm_layer(sub)):
                norms.append(sub)
                if train_bn:
                    continue
            for p in sub.parameters(recurse=False):
                to_freeze[id(p)] = p
    remaining = [p for p in model.parameters() if p.requires_grad and id(p) not in to_freeze]
    if not remaining and to_freeze:
        raise ValueError(
            f"freezing {wanted} would leave no trainable parameter in the model: nothing could learn "
            f"the new loss. Leave at least the head trainable (e.g. freeze everything but "
            f"{find_head_or_none(model)!r})."
        )
    if train_bn:
        recipe_freezing.freeze_keep_norms(model, wanted)
        for norm in norms:  # a norm locked before follows the model's mode again
            _unlock_norm(norm, model.training)
    else:
        recipe_freezing.freeze(model, wanted)
    recipe_freezing.follow_frozen(model)  # RunConfig.frozen_eval: the modes follow at once
    return wanted


def unfreeze(model: nn.Module, names: str | Iterable[str] | None = None) -> list[str]:
    """Make the modules (or held parameters) called ``names`` trainable again (all modules when
    ``names`` is None).

    Normalisation layers inside them leave inference mode and follow ``model.training``.
    Returns the names that were unfrozen.
    """
    wanted = [""] if names is None else check_names(model, names)
    recipe_freezing.unfreeze(model, wanted)
    recipe_freezing.follow_frozen(model)
    return wanted


def frozen_names(model: nn.Module) -> list[str]:
    """Top-most modules whose parameters are all frozen (modules without parameters are
    skipped), and the frozen parameters held directly by a module that is not (see
    :func:`held_parameters`). A child of a listed module is not listed again."""
    out: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f + ".") or f == "" for f in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
        elif _is_holder(module):
            out += [_join(name, n) for n, p in module.named_parameters(recurse=False) if not p.requires_grad]
    return out


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, frozen)`` parameter counts (tied weights counted once)."""
    params = _unique_params(model)
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in params.values()) - trainable


def find_head_or_none(model: nn.Module) -> str | None:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name:
            last = name
    return last


def find_head(model: nn.Module) -> str:
    """Return the dotted name of the model's head: its last ``nn.Linear`` in registration order."""
    name = find_head_or_none(model)
    if name is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer to use as its head; pass the head's "
            f"dotted name explicitly (name=...)"
        )
    return name


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(get_module(model, parent_name), child, new)


def replace_head(model: nn.Module, out_features: int, name: str | None = None, *, bias: bool | None = None) -> str:
    """Replace the model's final ``Linear`` with a fresh one giving ``out_features`` outputs.

    Parameters
    ----------
    model
        Changed in place (work on a copy to keep the original).
    out_features
        Number of outputs of the new head (e.g. 1 for BCE / focal / regression).
    name
        Dotted name of the layer to replace; found automatically (the last ``nn.Linear``)
        when ``None``.
    bias
        Whether the new head has a bias; by default the same as the old one.

    Returns
    -------
    str
        The dotted name of the new head, which is trainable. The new weights use PyTorch's
        default initialisation from the global RNG (seed it for reproducibility).
    """
    if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"out_features must be a positive whole number, got {out_features!r}")
    name = find_head(model) if name is None else name
    old = get_module(model, name)
    if not isinstance(old, nn.Linear):
        raise ValueError(
            f"{name!r} is a {type(old).__name__}, not an nn.Linear; replace_head() swaps a Linear "
            f"head. Pass the name of the final Linear layer."
        )
    has_bias = old.bias is not None if bias is None else bias
    new = nn.Linear(old.in_features, out_features, bias=has_bias, device=old.weight.device, dtype=old.weight.dtype)
    new.train(old.training)
    _set_module(model, name, new)
    return name


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


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Split the model into blocks, input side first, head last; every parameter is in exactly
    one group.

    A model that brings its own grouping, timm's ``group_matcher()``, is grouped by it
    (:func:`matcher_groups`). Otherwise the rule: the root and every container
    (``Sequential`` / ``ModuleList`` / ``ModuleDict``) are opened; another module is opened
    only when it holds a stack of repeated blocks (e.g. a BERT encoder's layers). Parameters
    that an opened module holds itself (a ViT's ``cls_token`` / ``pos_embed``, torchvision's
    ``encoder.pos_embedding``) join the input side: the first group inside the root, the group
    before a module inside, as timm puts them in its stem group. Normalisation layers
    and parameter-free modules join the group before them; a layer whose parameters are all tied
    to earlier ones (GPT-2's ``lm_head``) is in no group, its weight being in the first. Examples: the bundled CNN gives one
    group per conv(+BN) and per Linear; a ResNet gives the stem, each residual block and ``fc``;
    a BERT classifier gives the embeddings, each encoder layer, the pooler and the classifier.
    """
    if callable(getattr(model, "group_matcher", None)):
        groups = matcher_groups(model)
        if groups:
            return groups
    return [LayerGroup(name=g[0] or "(model)", modules=tuple(g)) for g in recipe_freezing.layer_groups(model)]


_MATCH_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP: join the group before


def _matcher_key(rules: list[tuple[re.Pattern[str], float, Any]], name: str) -> tuple[float, ...]:
    for pattern, ordinal, suffix in rules:
        found = pattern.match(name)
        if found:
            numbers = [float(g) for g in found.groups() if g is not None]
            return (ordinal, *numbers, *(float(x) for x in (suffix or ())))
    return (math.inf,)  # unmatched (neck, head): last


def matcher_groups(model: nn.Module, coarse: bool = False) -> list[LayerGroup]:
    """Layer groups from the model's own ``group_matcher(coarse)`` (timm's convention).

    The matcher is a dict ``{group: regex or [(regex, suffix), ...]}`` over parameter names,
    or a callable ``name -> ordinal``; parameters with the same ordinal form a group, in
    ordinal order, unmatched ones (the head) last; an ordinal ending in 99999 joins the group
    before. Each group lists the fewest module / parameter names that cover exactly its
    parameters. Returns ``[]`` when the matcher is not of that shape.
    """
    spec = model.group_matcher(coarse=coarse)
    if isinstance(spec, dict):
        rules: list[tuple[re.Pattern[str], float, Any]] = []
        for ordinal, entry in enumerate(spec.values()):
            if entry is None:
                continue
            pairs = entry if isinstance(entry, (list, tuple)) else [(entry, None)]
            rules += [(re.compile(pattern), float(ordinal), suffix) for pattern, suffix in pairs]

        def key(name: str) -> tuple[float, ...]:
            return _matcher_key(rules, name)
    elif callable(spec):
        def key(name: str) -> tuple[float, ...]:
            k = spec(name)
            return tuple(float(x) for x in k) if isinstance(k, Iterable) else (float(k),)
    else:
        return []
    by_key: dict[tuple[float, ...], set[int]] = {}
    for name, p in model.named_parameters():
        by_key.setdefault(key(name), set()).add(id(p))
    merged: list[set[int]] = []
    for k in sorted(by_key):
        if merged and k[-1] == _MATCH_PREVIOUS:
            merged[-1] |= by_key[k]
        else:
            merged.append(set(by_key[k]))
    groups = [cover(model, ids) for ids in merged]
    return [LayerGroup(name=g[0] or "(model)", modules=tuple(g)) for g in groups if g]


def cover(model: nn.Module, chosen: set[int]) -> list[str]:
    """The fewest names (modules, else held parameters) covering exactly the parameters whose
    ``id`` is in ``chosen``, in ``named_modules()`` order. ``[""]`` when that is all of them."""
    out: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if not params or not any(id(p) in chosen for p in params):
            return
        if all(id(p) in chosen for p in params):
            out.append(name)
            return
        out.extend(_join(name, n) for n, p in module.named_parameters(recurse=False) if id(p) in chosen)
        for child, m in module.named_children():
            visit(_join(name, child), m)

    visit("", model)
    return out


def freeze_all_but(model: nn.Module, keep: str | Iterable[str], train_bn: bool = False) -> list[str]:
    """Freeze every top-most module (and held parameter) outside ``keep`` (e.g.
    ``keep=find_head(model)``: head only).

    Returns the names frozen, suitable for ``RunConfig.frozen``.
    """
    names = frozen_complement(model, check_names(model, keep))
    freeze(model, names, train_bn=train_bn)
    return names


def frozen_complement(model: nn.Module, keep: list[str]) -> list[str]:
    """The fewest module / parameter names covering every parameter outside ``keep``,
    the parameters held directly by the root and other modules included."""
    keep_ids = {id(p) for k in keep for _, _, p in parameters_of(model, k)}
    return cover(model, {id(p) for p in model.parameters() if id(p) not in keep_ids})


def input_order(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """The tree's nodes in pre-order, a module's held parameters before its children: the
    order "up to here" follows (registration order, the forward order of sequential models,
    with a ViT's ``cls_token`` / ``pos_embed`` on the input side). Each node lists the
    parameters it holds itself (each parameter once)."""
    out: list[tuple[str, list[nn.Parameter]]] = []
    seen: set[int] = set()

    def visit(name: str, module: nn.Module) -> None:
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        if _is_holder(module):
            out.extend((_join(name, n), [p]) for n, p in own)
            out.append((name, []))
        else:
            out.append((name, [p for _, p in own]))
        for child, m in module.named_children():
            visit(_join(name, child), m)

    visit("", model)
    return out


def names_up_to(model: nn.Module, name: str) -> list[str]:
    """Module / parameter names that freeze everything from the input up to and including
    ``name`` (its whole subtree for a module), in :func:`input_order`.

    Returns the fewest names covering exactly those parameters.
    """
    parameters_of(model, name)
    order = input_order(model)
    chosen: set[int] = set()
    for node, params in order:
        chosen.update(id(p) for p in params)
        if node == name:
            break
    chosen.update(id(p) for _, _, p in parameters_of(model, name))
    return cover(model, chosen)
