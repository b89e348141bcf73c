"""Device policy: which device a run trains on, and how many CPU threads it takes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .recipe.training import mixed_precision

__all__ = ["resolve_device", "cpu_threads", "amp_settings"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; other names are checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("RunConfig.device is 'cuda' but CUDA is not available here; use device='auto' or 'cpu'")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("RunConfig.device is 'mps' but MPS is not available here; use device='auto' or 'cpu'")
    return torch.device(name)


@contextlib.contextmanager
def cpu_threads(device: torch.device) -> Iterator[None]:
    """On a small CPU keep one core for the kernel and the UI while training."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    want = max(1, min(before, cores - 1))
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def amp_settings(amp: bool, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """``(autocast dtype, grad scaler)`` of ``RunConfig.amp`` on ``device`` (see
    :func:`retrain_widgets.core.recipe.training.mixed_precision`)."""
    return mixed_precision(amp, device)
