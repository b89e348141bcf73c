""":func:`fingerprint`: a stable hash of a model's weights, cached per model object."""

from __future__ import annotations

import hashlib
import threading
import weakref
from typing import Any

import torch
from torch import nn

__all__ = ["fingerprint"]

_FP_LOCK = threading.Lock()
_FP_CACHE: dict[int, tuple[weakref.ref[nn.Module], tuple[Any, ...], str]] = {}


def fingerprint(model: nn.Module) -> str:
    """A stable hash (blake2b, 32 hex digits) of ``model.state_dict()``: names, shapes, dtypes
    and bytes. Equal weights give equal fingerprints whatever the device or the object.

    The result is cached per model object together with each tensor's address, shape, dtype
    and version counter, so a repeated call on an unchanged model costs a walk over its
    ``state_dict`` only. In-place changes (optimizer steps, ``load_state_dict``,
    ``with torch.no_grad(): p += ...``) bump the version counter and are seen; writes through
    ``tensor.data`` are not (they bypass the version counter).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"fingerprint() takes a torch.nn.Module, got {type(model).__name__}")
    state = model.state_dict(keep_vars=True)
    check = _cheap_check(state)
    key = id(model)
    if check is not None:
        with _FP_LOCK:
            cached = _FP_CACHE.get(key)
        if cached is not None and cached[0]() is model and cached[1] == check:
            return cached[2]
    digest = hash_state(state)
    if check is not None:
        def forget(ref: weakref.ref[nn.Module], key: int = key) -> None:
            with _FP_LOCK:
                entry = _FP_CACHE.get(key)
                if entry is not None and entry[0] is ref:
                    del _FP_CACHE[key]

        with _FP_LOCK:
            _FP_CACHE[key] = (weakref.ref(model, forget), check, digest)
    return digest


def _cheap_check(state: dict[str, Any]) -> tuple[Any, ...] | None:
    """What must be unchanged for a cached fingerprint to hold; ``None``: do not cache."""
    items: list[Any] = []
    try:
        for name, t in state.items():
            if isinstance(t, torch.Tensor):
                items.append((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device))
            else:
                return None  # extra state of unknown mutability: hash every time
    except (RuntimeError, NotImplementedError):  # inference, sparse or meta tensors
        return None
    return tuple(items)


def hash_state(state: dict[str, Any]) -> str:
    """The hash of a ``state_dict`` (what :func:`fingerprint` returns), computed every time."""
    h = hashlib.blake2b(digest_size=16)
    h.update(b"retrain_widgets.fingerprint.1\0")
    for name, value in state.items():
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.layout != torch.strided:
                t = t.to_dense()
            if t.is_quantized:
                t = t.int_repr()
            h.update(f"{tuple(t.shape)}|{t.dtype}\0".encode())
            flat = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
            if flat.numel():
                h.update(flat.view(torch.uint8).numpy())
        else:
            h.update(repr(value).encode() + b"\0")
    return h.hexdigest()
