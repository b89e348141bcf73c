"""The model's head: find its last ``nn.Linear``, or replace it with a fresh one."""

from __future__ import annotations

from torch import nn

from .dotted_names import get_module

__all__ = ["find_head", "find_head_or_none", "replace_head"]


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
