"""Randomness kept as it was: a measurement or a cache build draws nothing the run would see."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .recipe.training import loader_generators

__all__ = ["kept_rng"]


@contextlib.contextmanager
def kept_rng(device: torch.device, loader: Any = None) -> Iterator[None]:
    """Restore torch's RNG, ``device``'s (CUDA) and ``loader``'s own generators afterwards: whatever
    is drawn inside (a loader's shuffle or worker seed, a dropout mask) changes nothing outside."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    gens = [(g, g.get_state()) for g in loader_generators(loader)] if loader is not None else []
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        for g, state in gens:
            g.set_state(state)
