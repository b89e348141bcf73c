"""Batches in, logits out: the shapes of data the engine accepts.

Batches
    ``(inputs, targets)`` tuples or lists, or dicts with the targets under ``"labels"`` and
    every other entry passed to the model as a keyword argument (Hugging Face style).
Outputs
    A tensor, an object with ``.logits`` (``ModelOutput``), a dict with ``"logits"``, or a
    tuple / list (its first element).
Anything else
    Pass ``forward(model, batch) -> (outputs, targets)``; it receives the batch already moved
    to the training device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["split_batch", "logits_of", "default_forward", "to_device", "first_batch", "Forward", "batch_size",
           "loader_generators"]

Forward = Callable[[nn.Module, Any], tuple[Any, torch.Tensor]]


def split_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """Return ``(args, kwargs, targets)`` for a batch.

    Raises
    ------
    ValueError
        For a layout the engine cannot read, saying how to pass a ``forward`` instead.
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError(
                f"a dict batch needs its targets under 'labels'; this one has keys {sorted(batch)}. "
                f"Rename the key, or pass forward=lambda model, batch: (model(...), batch[...])"
            )
        kwargs = {k: v for k, v in batch.items() if k != "labels"}
        return (), kwargs, batch["labels"]
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(
                f"a batch tuple must be (inputs, targets); this one has {len(batch)} elements. "
                f"Pass forward=lambda model, batch: (model(batch[0], ...), batch[-1]) for other layouts"
            )
        return (batch[0],), {}, batch[1]
    raise ValueError(
        f"cannot read a batch of type {type(batch).__name__}: use (inputs, targets) tuples, dicts with "
        f"'labels', or pass forward=lambda model, batch: (outputs, targets)"
    )


def logits_of(outputs: Any) -> torch.Tensor:
    """The tensor of predictions inside a model's outputs."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ValueError(
        f"cannot find the predictions in the model's output of type {type(outputs).__name__}: return a "
        f"tensor, an object with .logits, a dict with 'logits' or a tuple, or pass "
        f"forward=lambda model, batch: (outputs_tensor, targets)"
    )


def to_device(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``obj`` (tuples, lists, dicts) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_device(v, device, non_blocking) for v in obj)
    if isinstance(obj, list):
        return [to_device(v, device, non_blocking) for v in obj]
    return obj


def default_forward(model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
    """Run ``model`` on a batch; return ``(logits, targets)``."""
    args, kwargs, targets = split_batch(batch)
    return logits_of(model(*args, **kwargs)), targets


def first_batch(loader: Any, device: torch.device | str, name: str = "training") -> Any:
    """The loader's first batch on ``device``; a ``ValueError`` that says so for an empty loader."""
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(f"the {name} loader yields no batches: check the dataset and the batch size") from None
    return to_device(batch, device)


def batch_size(targets: Any) -> int:
    """Number of samples in a batch, from its targets."""
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0]) if targets.ndim else 1
    try:
        return len(targets)
    except TypeError:
        return 1


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch generators that decide a loader's order (its own, its sampler's), each once."""
    found: dict[int, torch.Generator] = {}
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator):
            found[id(gen)] = gen
    return list(found.values())
