"""The feature cache's trainable suffix: where it starts, how far it runs, and running it.

:func:`lead_in`: layers without parameters or buffers just before the trainable part in its
``nn.Sequential`` (torchvision's ``classifier`` Dropout before the head of MobileNetV3 and
EfficientNet) belong to the trained part: the cache stores their input, and they run (in train
mode, as without the cache) on the cached features. :func:`random_layer_hint` names
``RunConfig(frozen_eval=True)`` when the frozen part is random because it runs in train mode.
:func:`run_suffix` runs the suffix on its input; the private helpers find the module that holds
every trainable parameter and follow the enclosing ``nn.Sequential`` s up to the predictions,
raising ``_Refused`` when the model has no such suffix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .recipe.freezing import FrozenEval

__all__ = ["FROZEN_EVAL_HINT", "dropout_hint", "lead_in", "random_layer_hint", "run_suffix"]

#: What a refusal for a random frozen part suggests.
FROZEN_EVAL_HINT = "RunConfig(frozen_eval=True) runs the frozen part in inference mode, which allows the cache"


def _bare(module: nn.Module) -> bool:
    return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


def lead_in(model: nn.Module, steps: list[str]) -> list[str]:
    """``steps`` (dotted names of the trainable suffix, in order) with the layers without
    parameters or buffers that come just before its first step in the same plain ``nn.Sequential``."""
    parent, _, first = steps[0].rpartition(".")
    container = model.get_submodule(parent)
    if not (isinstance(container, nn.Sequential) and type(container).forward is nn.Sequential.forward):
        return steps
    names = [n for n, _ in container.named_children()]
    k = start = names.index(first)
    while k > 0 and _bare(container.get_submodule(names[k - 1])):
        k -= 1
    return [f"{parent}.{n}" if parent else n for n in names[k:start]] + steps


def _frozen_eval_on(model: nn.Module) -> bool:
    return isinstance(vars(model).get("train"), FrozenEval)


def random_layer_hint(model: nn.Module) -> str:
    """For "the frozen part gives different outputs on two passes": the likely cause and the
    setting that allows the cache, unless the model already runs its frozen part in inference mode."""
    return "" if _frozen_eval_on(model) else f" (a random layer in train mode: dropout, stochastic depth): " \
                                             f"{FROZEN_EVAL_HINT}"


def dropout_hint(model: nn.Module) -> str:
    """For "the frozen part has active dropout": the setting that allows the cache (a sentence)."""
    return "" if _frozen_eval_on(model) else f"{FROZEN_EVAL_HINT}. "


class _Refused(Exception):
    """Internal: caching does not apply; the message says why."""


class _Captured(BaseException):
    """Internal: the trainable part's input was captured; stop the forward pass there."""


def _resolve(model: nn.Module, name: str) -> nn.Module:
    for part in name.split(".") if name else ():
        model = getattr(model, part)
    return model


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _owner(model: nn.Module, trainable: set[int]) -> str:
    """The deepest module that holds every trainable parameter."""
    name, module = "", model
    while True:
        for child_name, child in module.named_children():
            if trainable <= {id(p) for p in child.parameters()}:
                name, module = _join(name, child_name), child
                break
        else:
            return name


def _first_steps(model: nn.Module, owner: str, trainable: set[int]) -> list[str]:
    module = _resolve(model, owner)
    if _plain_sequential(module):
        kids = list(module.named_children())
        k = next(i for i, (_, c) in enumerate(kids) if any(id(p) in trainable for p in c.parameters()))
        return [_join(owner, n) for n, _ in kids[k:]]
    if owner == "":
        raise _Refused("the trainable parameters are spread over the model's own forward (no single module "
                       "holds them all, and the model is not an nn.Sequential): there is no trainable suffix")
    return [owner]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def _extend_to_output(model: nn.Module, owner: str, steps: list[str], outputs: dict[str, Any],
                      logits: torch.Tensor) -> list[str]:
    """Follow the owner's enclosing Sequentials until the module whose output is the logits."""
    level = owner
    while outputs.get(level) is not logits:
        if level == "":
            raise _Refused(f"the model's predictions are not the output of its trainable part {owner!r}: "
                           f"the model computes something after it")
        parent = level.rsplit(".", 1)[0] if "." in level else ""
        module = _resolve(model, parent)
        if not _plain_sequential(module):
            raise _Refused(f"after its trainable part {level!r} the model's forward ({type(module).__name__}) "
                           f"computes more than an nn.Sequential's remaining layers")
        names = [n for n, _ in module.named_children()]
        child = level.rsplit(".", 1)[-1]
        steps = steps + [_join(parent, n) for n in names[names.index(child) + 1:]]
        level = parent
    return steps


def run_suffix(model: nn.Module, steps: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
    """The trainable suffix of ``model`` on its input ``x`` (the modules named ``steps`` in order)."""
    for name in steps:
        x = _resolve(model, name)(x)
    return x


def _frozen_modules(model: nn.Module, steps: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    inside = {id(m) for s in steps for m in _resolve(model, s).modules()}
    return [(n, m) for n, m in model.named_modules() if id(m) not in inside]


@contextlib.contextmanager
def _train_modes(model: nn.Module, train: bool) -> Iterator[None]:
    """The modes the model will have in that pass (``train()`` keeps locked BatchNorm in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
