"""Dotted names of a model's modules and parameters: lookup, checks, the input order and the
fewest names that cover a set of parameters.

Everything is keyed by dotted ``named_modules()`` names (``"features.0"``); the root module is
``""``. A parameter that a module holds itself next to parameterised children (timm's
``cls_token`` / ``pos_embed`` on the root) is addressed by its dotted ``named_parameters()`` name,
wherever a module name is accepted. Parameters are matched by identity.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .registry import closest

__all__ = ["held_parameters", "get_module", "parameters_of", "check_names", "cover", "input_order", "names_up_to"]


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
