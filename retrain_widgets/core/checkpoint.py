"""The NaN guard's checkpoint (the last weights whose losses were all finite, kept on the device)
and the per-layer drift, measured together within a time budget."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .probes import DriftProbe

__all__ = ["Checkpoint", "HeavyProbes"]


class Checkpoint:
    """A copy of every trainable parameter and every buffer of ``model``, refreshed with
    :meth:`save` and put back with :meth:`restore` (fused copies, no host transfer).

    A frozen parameter does not move, so it is neither copied nor put back (a frozen backbone
    costs nothing here); :meth:`follow` adds the parameters unfreezing makes trainable."""

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())
        self.sources: list[torch.Tensor] = list(model.buffers())
        self.saved = [t.detach().clone() for t in self.sources]
        self._followed: set[int] = set()
        self.follow()
        self.step = 0

    def follow(self) -> None:
        """Keep every parameter trainable now (call after unfreezing, before a step: its copy is
        its value at the last checkpoint, which it has kept while frozen)."""
        for p in self.params:
            if p.requires_grad and id(p) not in self._followed:
                self._followed.add(id(p))
                self.sources.append(p)
                self.saved.append(p.detach().clone())

    @torch.no_grad()
    def save(self, step: int) -> None:
        torch._foreach_copy_(self.saved, [t.detach() for t in self.sources])
        self.step = step

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_([t.data for t in self.sources], self.saved)


class HeavyProbes:
    """Drift ``||w - w0|| / ||w0||`` per layer and the NaN guard's checkpoint: both read every
    weight, so they run when a share ``budget`` of wall time allows (a ResNet-18 on a CPU pays
    ~40 ms for both; the bundled CNN ~0.2 ms), or when forced."""

    def __init__(self, model: nn.Module, layers: list[tuple[str, list[nn.Parameter]]], budget: float) -> None:
        self.drift = DriftProbe(layers)
        self.checkpoint = Checkpoint(model)
        self.budget = budget
        self._at = 0.0
        self._cost = 0.0

    def follow(self) -> None:
        """After the trainable set changed: follow the parameters that can move now."""
        self.drift.follow()
        self.checkpoint.follow()

    def measure(self, step: int, now: float, force: bool = False) -> np.ndarray | None:
        """The drift of each layer (and a checkpoint at ``step``) when due, else None."""
        if not (force or (now - self._at) * self.budget >= self._cost):
            return None
        t0 = time.perf_counter()
        drift = self.drift.to_layers(self.drift.measure_device().cpu().numpy())
        self.checkpoint.save(step)
        self._at = time.perf_counter()
        self._cost = self._at - t0
        return drift
