"""Why the feature cache refuses a run's loader: a loader it cannot follow, augmentation in the
dataset, a frozen part that does not give the same output twice. Each function returns the
reason as a sentence for ``history.meta["feature_cache"]``, or ``None`` when there is none."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from .deterministic_transforms import undetermined
from .feature_suffix import _frozen_modules, dropout_hint

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _nondeterminism(model: nn.Module, steps: tuple[str, ...]) -> str | None:
    """Why the frozen part would not give the same output twice (``None``: it would)."""
    for name, m in _frozen_modules(model, steps):
        if isinstance(m, _DROPOUTS) and m.training and m.p > 0:
            return (f"the frozen part has active dropout ({name!r}, p={m.p}): its outputs differ on every pass. "
                    f"{dropout_hint(model)}Set its p to 0 or force with cache_features=True")
        if m.training and getattr(m, "running_mean", None) is not None:
            return (f"the frozen part's normalisation layer {name!r} is in training mode (train_bn=True): "
                    f"its statistics move with every batch")
    return None


def _augmentation(dataset: Any) -> str | None:
    seen: set[int] = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        for attr in ("transform", "transforms", "target_transform"):
            unknown = undetermined(getattr(dataset, attr, None))  # torchvision's Resize, ToTensor, ... are known
            if unknown:
                return (f"the dataset ({type(dataset).__name__}) has a {attr} ({', '.join(unknown)}) not known to be "
                        f"deterministic: augmented samples differ between passes, so cached features would "
                        f"freeze one draw of the augmentation")
        dataset = getattr(dataset, "dataset", None)
    return None


def _loader_problem(loader: Any) -> str | None:
    """Why the cache cannot follow this loader (``None``: it can)."""
    if not isinstance(loader, DataLoader):
        kind = "an iterator (one pass only)" if hasattr(loader, "__next__") else f"a {type(loader).__name__}"
        return (f"the loader is {kind}, not a torch DataLoader: the cache follows a DataLoader's sampler "
                f"to keep the sample order")
    if isinstance(loader.dataset, IterableDataset):
        return "the loader reads an IterableDataset: its samples cannot be read again by index"
    if loader.batch_sampler is None:
        return "the loader has batch_size=None (no batches to follow)"
    try:
        len(loader.dataset)
    except TypeError:
        return "the loader's dataset has no len()"
    return None
