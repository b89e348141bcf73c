"""One loader's feature cache: the cached tensors, and passes over them in the loader's own
sample order (the same draws from the loader's generators as iterating it)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from .batches import to_device

if TYPE_CHECKING:
    from .feature_cache import FeatureCache

__all__ = ["CachedBatch"]


@dataclass
class CachedBatch:
    """One batch of a cached pass: the trainable part's ``inputs`` for the samples ``indices``
    (in the loader's order), their ``targets`` and, with distillation, the teacher's logits."""

    indices: list[int]
    inputs: torch.Tensor
    targets: torch.Tensor
    teacher: torch.Tensor | None
    source: _LoaderCache

    def raw(self) -> Any:
        """The batch the loader itself would have given (read again from the dataset)."""
        return self.source.collate(self.indices)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


# ====================================================================== one loader's cache
class _LoaderCache:
    """The cached tensors of one loader and its passes in the loader's own sample order."""

    def __init__(self, loader: DataLoader, tensors: dict[str, torch.Tensor]) -> None:
        self.loader = loader
        self.tensors = tensors
        self.passes = 0

    def collate(self, indices: list[int]) -> Any:
        return _collate(self.loader, indices)

    def epoch(self, cache: FeatureCache) -> Iterator[Any]:
        """One pass: the same draws from the loader's generators as iterating the loader."""
        loader = self.loader
        order = iter(loader.batch_sampler)
        if not (loader.persistent_workers and loader.num_workers > 0 and self.passes > 0):
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # the loader's base seed
        self.passes += 1
        for indices in order:
            if not cache.active:
                yield to_device(self.collate(list(indices)), cache.device)
                continue
            yield self.batch(list(indices))

    def batch(self, indices: list[int]) -> CachedBatch:
        tensors = self.tensors
        i = torch.as_tensor(indices, dtype=torch.long, device=tensors["inputs"].device)
        teacher = tensors.get("teacher")
        return CachedBatch(indices, tensors["inputs"][i], tensors["targets"][i],
                           None if teacher is None else teacher[i], self)


def _chunk(loader: DataLoader) -> int:
    return int(loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 32)


def _collate(loader: DataLoader, indices: list[int]) -> Any:
    dataset = loader.dataset
    return loader.collate_fn([dataset[i] for i in indices])


def _standard_order(loader: Any) -> bool:
    """A DataLoader whose order comes from torch's own samplers (their draws can be replayed)."""
    return (isinstance(loader, DataLoader) and type(loader.batch_sampler) is BatchSampler
            and type(loader.sampler) in (RandomSampler, SequentialSampler))


def _first_indices(loader: DataLoader) -> list[int]:
    """The sample indices of the batch iterating ``loader`` would give first (it draws as that does)."""
    order = iter(loader.batch_sampler)
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    return list(next(order))
