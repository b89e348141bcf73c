"""Which dataset transforms give the same sample on every pass (the feature cache may cache them).

A folder of images read through torchvision's ``Resize``, ``CenterCrop``, ``ToTensor`` and
``Normalize`` gives the same tensor for an index every time: its frozen features can be cached.
Random augmentation (``RandomResizedCrop``, ``ColorJitter``, ...) and any callable not known here
(a ``lambda``, a user's class) are not: :func:`undetermined` names them, and the cache refuses
with those names. torchvision is recognised by its classes' module and name (it is not imported:
the core stays plain PyTorch); ``Compose`` and datasets' ``StandardTransform`` are looked into.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DETERMINISTIC", "undetermined"]

#: torchvision transforms (``torchvision.transforms`` and ``.v2``) that give the same output for the same input.
DETERMINISTIC = frozenset({
    "CenterCrop", "ConvertImageDtype", "FiveCrop", "Grayscale", "Identity", "LinearTransformation", "Normalize",
    "Pad", "PILToTensor", "Resize", "RGB", "TenCrop", "ToDtype", "ToImage", "ToPILImage", "ToPureTensor", "ToTensor",
})


def undetermined(transform: Any) -> list[str]:
    """The parts of ``transform`` not known to give the same output on every call (``[]``: none)."""
    if transform is None:
        return []
    cls = type(transform)
    torchvision = cls.__module__.startswith(("torchvision.transforms", "torchvision.datasets"))
    if torchvision and cls.__name__ == "Compose" and isinstance(getattr(transform, "transforms", None), (list, tuple)):
        return [name for part in transform.transforms for name in undetermined(part)]
    if torchvision and cls.__name__ == "StandardTransform":  # a torchvision dataset's (transform, target_transform)
        return undetermined(transform.transform) + undetermined(getattr(transform, "target_transform", None))
    if torchvision and cls.__name__ in DETERMINISTIC:
        return []
    return [getattr(transform, "__name__", None) or cls.__name__]
