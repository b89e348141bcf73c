"""Where the feature cache's trainable suffix starts, and what its refusals suggest.

:func:`lead_in`: layers without parameters or buffers just before the trainable part in its
``nn.Sequential`` (torchvision's ``classifier`` Dropout before the head of MobileNetV3 and
EfficientNet) belong to the trained part: the cache stores their input, and they run (in train
mode, as without the cache) on the cached features. :func:`random_layer_hint` names
``RunConfig(frozen_eval=True)`` when the frozen part is random because it runs in train mode.
"""

from __future__ import annotations

from torch import nn

from .recipe.freezing import FrozenEval

__all__ = ["FROZEN_EVAL_HINT", "dropout_hint", "lead_in", "random_layer_hint"]

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
