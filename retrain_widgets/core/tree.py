"""The module tree of a model: freezing, BatchNorm handling, heads and layer groups.

Everything is keyed by dotted ``named_modules()`` names (``"features.0"``,
``"bert.encoder.layer.1"``); the root module is ``""``. Parameters are matched by
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

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .recipe import freezing as recipe_freezing
from .registry import closest

__all__ = [
    "LayerInfo",
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
]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
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
        Dotted names of the direct children.
    """

    name: str
    type: str
    depth: int
    own_params: int
    total_params: int
    trainable_params: int
    children: tuple[str, ...]

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


def layer_tree(model: nn.Module) -> dict[str, LayerInfo]:
    """Describe every module of ``model``, in ``named_modules()`` order.

    Parameters
    ----------
    model
        Any ``nn.Module``.

    Returns
    -------
    dict
        Dotted name -> :class:`LayerInfo`. The root is under ``""``.
    """
    out: dict[str, LayerInfo] = {}
    for name, module in model.named_modules():
        params = _unique_params(module)
        own = _unique_params(module, recurse=False)
        children = tuple(_join(name, child) for child, m in module.named_children() if m is not None)
        out[name] = LayerInfo(
            name=name,
            type=type(module).__name__,
            depth=0 if not name else name.count(".") + 1,
            own_params=sum(p.numel() for p in own.values()),
            total_params=sum(p.numel() for p in params.values()),
            trainable_params=sum(p.numel() for p in params.values() if p.requires_grad),
            children=children,
        )
    # named_modules() skips repeated modules; keep child lists consistent with it.
    for name, info in list(out.items()):
        kept = tuple(c for c in info.children if c in out)
        if kept != info.children:
            out[name] = LayerInfo(**{**info.__dict__, "children": kept})
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
        Dotted module names. A name that does not exist raises a ``ValueError`` that
        suggests the closest names.
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
    modules = {n: get_module(model, n) for n in wanted}
    to_freeze: dict[int, nn.Parameter] = {}
    norms: list[nn.Module] = []
    for module in modules.values():
        for sub in module.modules():
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
    return wanted


def unfreeze(model: nn.Module, names: str | Iterable[str] | None = None) -> list[str]:
    """Make the modules called ``names`` trainable again (all modules when ``names`` is None).

    Normalisation layers inside them leave inference mode and follow ``model.training``.
    Returns the names that were unfrozen.
    """
    wanted = [""] if names is None else _as_names(names)
    for name in wanted:
        get_module(model, name)
    recipe_freezing.unfreeze(model, wanted)
    return wanted


def frozen_names(model: nn.Module) -> list[str]:
    """Top-most modules whose parameters are all frozen (modules without parameters are skipped).

    A child of a listed module is not listed again.
    """
    out: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f + ".") or f == "" for f in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
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


def _is_stack(module: nn.Module) -> bool:
    """A container holding two or more non-leaf parameterised blocks of the same class."""
    if not isinstance(module, _CONTAINERS):
        return False
    kinds: dict[type, int] = {}
    for child in module.children():
        if any(True for _ in child.children()) and any(True for _ in child.parameters()):
            kinds[type(child)] = kinds.get(type(child), 0) + 1
    return any(n >= 2 for n in kinds.values())


def _contains_stack(module: nn.Module) -> bool:
    return any(_is_stack(m) for m in module.modules())


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Split the model into blocks, input side first, head last.

    The rule: the root and every container (``Sequential`` / ``ModuleList`` / ``ModuleDict``)
    are opened; another module is opened only when it holds a stack of repeated blocks
    (e.g. a BERT encoder's layers). Normalisation layers and parameter-free modules join the
    group before them. Examples: the bundled CNN gives one group per conv(+BN) and per
    Linear; a ResNet gives the stem, each residual block and ``fc``; a BERT classifier gives
    the embeddings, each encoder layer, the pooler and the classifier.
    """
    leaves: list[tuple[str, nn.Module]] = []

    def visit(name: str, module: nn.Module) -> None:
        children = [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]
        opened = not name or isinstance(module, _CONTAINERS) or _contains_stack(module)
        if children and opened and not any(True for _ in module.parameters(recurse=False)):
            for child, m in children:
                visit(_join(name, child), m)
        else:
            leaves.append((name, module))

    visit("", model)
    groups: list[list[str]] = []
    for name, module in leaves:
        if groups and (is_norm_layer(module) or not any(True for _ in module.parameters())):
            groups[-1].append(name)
        else:
            groups.append([name])
    return [LayerGroup(name=g[0] or "(model)", modules=tuple(g)) for g in groups]


def freeze_all_but(model: nn.Module, keep: str | Iterable[str], train_bn: bool = False) -> list[str]:
    """Freeze every top-most module outside ``keep`` (e.g. ``keep=find_head(model)``: head only).

    Returns the names frozen, suitable for ``RunConfig.frozen``.
    """
    keep_names = _as_names(keep)
    for k in keep_names:
        get_module(model, k)
    names = frozen_complement(model, keep_names)
    freeze(model, names, train_bn=train_bn)
    return names


def frozen_complement(model: nn.Module, keep: list[str]) -> list[str]:
    """The smallest set of module names covering every parameter outside the ``keep`` modules."""
    keep_ids = {id(p) for k in keep for p in get_module(model, k).parameters()}
    out: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if not params:
            return
        if not any(id(p) in keep_ids for p in params):
            out.append(name)
            return
        for child, m in module.named_children():
            visit(_join(name, child), m)

    for child, m in model.named_children():
        visit(child, m)
    return out


def names_up_to(model: nn.Module, name: str) -> list[str]:
    """Module names that freeze everything from the input up to and including ``name``.

    "Up to" follows registration (``named_modules()``) order, which is the forward order for
    sequential models. Returns the smallest set of modules covering exactly those parameters.
    """
    target = get_module(model, name)
    order = list(model.named_modules())
    end = next(i for i, (n, m) in enumerate(order) if n == name) + sum(1 for _ in target.modules())
    chosen: set[int] = set()
    for n, m in order[:end]:
        if not n:
            continue
        chosen.update(id(p) for p in m.parameters(recurse=False))
    chosen.update(id(p) for p in target.parameters())
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if not params:
            return
        if all(id(p) in chosen for p in params):
            out.append(prefix)
            return
        if any(id(p) in chosen for p in params):
            for child, m in module.named_children():
                visit(_join(prefix, child), m)

    for child, m in model.named_children():
        visit(child, m)
    return out
