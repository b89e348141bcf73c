"""The feature cache's process-wide state: the caches (least recently used dropped first over
the memory bound), the suffixes already planned per frozen weights, and their keys.

:func:`cached_mb` and :func:`clear` are re-exported by :mod:`~retrain_widgets.core.feature_cache`:
there is one registry per process."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from .feature_suffix import _resolve
from .fingerprints import fingerprint, hash_state
from .freezing import frozen_complement

__all__ = ["MEMORY_FRACTION", "memory_bound_mb", "cached_mb", "clear"]

#: Default memory bound: this share of the free RAM (or free GPU memory on CUDA).
MEMORY_FRACTION = 0.5


@dataclass
class _Entry:
    tensors: dict[str, torch.Tensor]
    holds: list[Callable[[], Any]]  # what the data key names (weak references where they can be)

    def alive(self) -> bool:
        return all(ref() is not None for ref in self.holds)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class _Registry:
    """Process-wide caches, least recently used dropped first when over the memory bound."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> _Entry | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            if not entry.alive():  # the data it was built from are gone: an id may have been reused
                del self.entries[key]
                return None
            self.entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], entry: _Entry, bound_bytes: float) -> None:
        with self.lock:
            self.entries.pop(key, None)
            while self.entries and sum(e.nbytes for e in self.entries.values()) + entry.nbytes > bound_bytes:
                self.entries.popitem(last=False)
            self.entries[key] = entry

    def nbytes(self) -> int:
        with self.lock:
            return sum(e.nbytes for e in self.entries.values())


_REGISTRY = _Registry()
_PLANS: OrderedDict[tuple[Any, ...], tuple[str, ...]] = OrderedDict()


def cached_mb() -> float:
    """Memory held by the process-wide feature caches, in MB."""
    return _REGISTRY.nbytes() / 2**20


def clear() -> None:
    """Drop every cached feature (after changing a dataset in place, or to free the memory)."""
    with _REGISTRY.lock:
        _REGISTRY.entries.clear()
        _PLANS.clear()


def _holder(obj: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _data_key(dataset: Any) -> tuple[tuple[Any, ...], list[Callable[[], Any]]]:
    """What identifies a dataset's samples, and references to the objects the key names.

    A ``TensorDataset`` is known by its tensors (two datasets over the same tensors share a
    cache), a ``Subset`` by its dataset and indices, anything else by the object itself."""
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        key = tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
        return ("tensors", key), [_holder(t) for t in tensors]
    if isinstance(dataset, Subset):
        inner, refs = _data_key(dataset.dataset)
        return ("subset", inner, tuple(int(i) for i in dataset.indices)), refs
    return ("object", type(dataset).__qualname__, id(dataset), len(dataset)), [_holder(dataset)]


def _available_ram() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        import os

        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return 2.0**31


def memory_bound_mb(device: torch.device, max_mb: float | None = None) -> float:
    """The cache's memory bound: ``max_mb``, else :data:`MEMORY_FRACTION` of what is free on
    ``device`` (GPU memory on CUDA, RAM otherwise)."""
    if max_mb is not None:
        return float(max_mb)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return MEMORY_FRACTION * free / 2**20
    return MEMORY_FRACTION * _available_ram() / 2**20


def _frozen_key(model: nn.Module, owner: str, steps: list[str], pretrained: nn.Module | None) -> tuple[Any, ...]:
    """The model's class, its trainable set and a fingerprint of every weight outside it (read
    from ``pretrained``'s module of the same name and shapes when there is one: frozen weights
    have not moved, and the fingerprint of an unchanged module is remembered)."""

    def frozen_part(name: str) -> nn.Module | torch.Tensor:
        """The frozen module (or parameter held by a module) called ``name``, taken from the
        pretrained model when it has it unchanged in shape."""
        part = _resolve(model, name)
        with contextlib.suppress(AttributeError):
            original = _resolve(pretrained, name) if pretrained is not None else None
            if original is not None and _shapes(original) == _shapes(part):
                return original
        return part

    def frozen_fingerprint(name: str) -> str:
        part = frozen_part(name)
        return fingerprint(part) if isinstance(part, nn.Module) else hash_state({name: part.detach()})

    trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    frozen = tuple((n, frozen_fingerprint(n)) for n in frozen_complement(model, steps))
    return type(model).__module__, type(model).__qualname__, owner, tuple(steps), trainable, frozen


def _shapes(part: nn.Module | torch.Tensor) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    state = part.state_dict() if isinstance(part, nn.Module) else {"": part}
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items() if isinstance(v, torch.Tensor)]
