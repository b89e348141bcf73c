"""The NaN guard's checkpoint: the last weights whose losses were all finite, kept on the device."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Checkpoint"]


class Checkpoint:
    """A copy of every parameter and buffer of ``model``, refreshed with :meth:`save` and put
    back with :meth:`restore` (fused copies, no host transfer)."""

    def __init__(self, model: nn.Module) -> None:
        self.sources = [*model.parameters(), *model.buffers()]
        self.saved = [t.detach().clone() for t in self.sources]
        self.step = 0

    @torch.no_grad()
    def save(self, step: int) -> None:
        torch._foreach_copy_(self.saved, [t.detach() for t in self.sources])
        self.step = step

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_([t.data for t in self.sources], self.saved)
