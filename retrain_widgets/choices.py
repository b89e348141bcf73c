"""Choices that are never lost.

A change of freezing is tried on the working copy before the studio takes it: when it cannot
apply (it would leave nothing trainable, a name that does not exist), the working copy gets its
previous freezing back and the ``ValueError`` says why, so the config, the tree and the strategy
buttons stay as they were. The strategy buttons remember the custom freezing
(:class:`Strategies`) and give it back when "custom" is chosen again. And the layer tree offers
"freeze up to here" only where it can succeed (:func:`up_to_everything`).

Plain Python and torch: no widget is imported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from .core.config import RunConfig
from .core.tree import freeze, input_order, unfreeze

__all__ = ["Strategies", "apply_freezing", "try_freezing", "up_to_everything"]


def apply_freezing(model: nn.Module, cfg: RunConfig) -> None:
    """``model`` (a working copy) frozen as ``cfg`` says, and nothing else; a ``ValueError`` when
    that cannot be (see :func:`~retrain_widgets.core.tree.freeze`)."""
    unfreeze(model)
    if cfg.frozen:
        freeze(model, cfg.frozen, train_bn=cfg.train_bn)


def try_freezing(model: nn.Module, old: RunConfig, new: RunConfig) -> None:
    """Apply ``new``'s freezing to ``model``; when it is refused, ``old``'s is put back before the
    ``ValueError`` goes on (nothing the user chose is lost)."""
    try:
        apply_freezing(model, new)
    except ValueError:
        apply_freezing(model, old)
        raise


def up_to_everything(model: nn.Module) -> set[str]:
    """Names of the nodes where "freeze up to here" would freeze every parameter (the head, the
    module that holds it and the model itself): the tree does not offer it there."""
    order = input_order(model)
    last = max((i for i, (_, params) in enumerate(order) if params), default=-1)
    if last < 0:
        return {name for name, _ in order}
    end = order[last][0]
    ancestors = {end.rsplit(".", k)[0] for k in range(1, end.count(".") + 1)} | {""}
    return {name for name, _ in order[last:]} | ancestors


@dataclass
class Strategies:
    """What the training-strategy buttons last picked (``picked``; ``None``: nothing yet, or a
    config assigned as a whole) and the latest custom freezing (``custom``), which "custom" gives
    back after "head only", "full" or "gradual"."""

    picked: str | None = None
    custom: list[str] | None = None

    def remember(self, strategy: str, cfg: RunConfig) -> None:
        """Keep ``cfg``'s freezing when it is a custom one (``strategy``: what it amounts to)."""
        if strategy == "custom":
            self.custom = list(cfg.frozen)

    @contextmanager
    def picking(self, strategy: str | None) -> Iterator[None]:
        """``picked`` is ``strategy`` from now on, unless the change made inside is refused
        (``ValueError``)."""
        was, self.picked = self.picked, strategy
        try:
            yield
        except ValueError:
            self.picked = was
            raise

    def custom_changes(self, cfg: RunConfig) -> dict[str, object]:
        """The config changes that pick "custom": the remembered freezing (or ``cfg``'s own)."""
        return {"frozen": list(cfg.frozen if self.custom is None else self.custom), "gradual": False}
