"""Trained weights stored as what they changed against the pretrained model.

A head-only run on a big backbone changes a few kilobytes of a model of hundreds of
megabytes. :func:`delta_state` keeps only the tensors whose bytes differ from the pretrained
``state_dict`` (plus those it lacks), with the pretrained model's fingerprint;
:func:`restore_state` rebuilds the full ``state_dict`` bit for bit from it and the pretrained
model. :func:`save_weights` writes a delta when the pretrained model is given and the full
weights otherwise; :func:`load_weights` reads either.

File layout (``torch.save``, read back with ``weights_only=True``)::

    {"format": "retrain_widgets.delta.1", "pretrained_id": "<fingerprint>",
     "order": [every name, in state_dict order], "changed": {name: tensor}}
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .fingerprints import fingerprint

__all__ = ["DELTA_FORMAT", "delta_state", "restore_state", "save_weights", "load_weights", "is_delta"]

DELTA_FORMAT = "retrain_widgets.delta.1"


def _state(model_or_state: nn.Module | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict()
    return model_or_state


def _same_bits(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if a.dtype != b.dtype or a.shape != b.shape or a.layout != torch.strided or b.layout != torch.strided:
        return False
    if a.is_quantized or b.is_quantized:
        return False
    flat_a = a.detach().cpu().reshape(-1).contiguous()
    flat_b = b.detach().cpu().reshape(-1).contiguous()
    if flat_a.dtype == torch.bool or not flat_a.numel():
        return torch.equal(flat_a, flat_b)
    return torch.equal(flat_a.view(torch.uint8), flat_b.view(torch.uint8))  # NaN and -0.0 by their bits


def delta_state(trained: nn.Module | Mapping[str, Any], pretrained: nn.Module | Mapping[str, Any],
                pretrained_id: str) -> dict[str, Any]:
    """The tensors of ``trained`` that differ (in bytes, dtype or shape) from ``pretrained``,
    or that it does not have, on the CPU; everything else is named only."""
    state, base = _state(trained), _state(pretrained)
    changed = {name: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v)
               for name, v in state.items() if name not in base or not _same_bits(v, base[name])}
    return {"format": DELTA_FORMAT, "pretrained_id": str(pretrained_id), "order": list(state), "changed": changed}


def is_delta(obj: Any) -> bool:
    """True for what :func:`delta_state` returns (or :func:`load_weights` read from a delta file)."""
    return isinstance(obj, Mapping) and obj.get("format") == DELTA_FORMAT


def restore_state(delta: Mapping[str, Any], pretrained: nn.Module | Mapping[str, Any],
                  pretrained_id: str | None = None) -> dict[str, Any]:
    """The full ``state_dict`` (CPU tensors) that :func:`delta_state` was given, bit for bit.

    ``pretrained_id`` (the pretrained model's fingerprint) is checked against the delta's
    when given: a delta applied to other weights is a ``ValueError``."""
    if not is_delta(delta):
        raise ValueError("restore_state() takes what delta_state() returns (a dict with format "
                         f"{DELTA_FORMAT!r})")
    if pretrained_id is not None and pretrained_id != delta["pretrained_id"]:
        raise ValueError(f"these weights were stored against the pretrained model {delta['pretrained_id']}, not "
                         f"{pretrained_id}: pass the model the run started from")
    base, changed = _state(pretrained), delta["changed"]
    missing = [n for n in delta["order"] if n not in changed and n not in base]
    if missing:
        raise ValueError(f"the pretrained model lacks {missing[:3]} that these weights need: pass the model the run "
                         f"started from ({delta['pretrained_id']})")
    return {n: changed[n] if n in changed else _copy(base[n]) for n in delta["order"]}


def _copy(value: Any) -> Any:
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


def save_weights(path: str | os.PathLike[str], trained: nn.Module | Mapping[str, Any],
                 pretrained: nn.Module | None = None, pretrained_id: str | None = None) -> int:
    """Write ``trained``'s weights to ``path`` atomically: a delta against ``pretrained`` when it
    is given (``pretrained_id`` defaults to its fingerprint), the full ``state_dict`` otherwise.
    Returns the file's size in bytes."""
    if pretrained is not None:
        if pretrained_id is None:
            pretrained_id = fingerprint(pretrained)
        payload: Any = delta_state(trained, pretrained, pretrained_id)
    else:
        payload = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in _state(trained).items()}
    final = os.fspath(path)
    tmp = f"{final}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return os.path.getsize(final)


def load_weights(path: str | os.PathLike[str], pretrained: nn.Module | None = None,
                 pretrained_id: str | None = None) -> dict[str, Any]:
    """The full ``state_dict`` stored at ``path`` (a delta needs ``pretrained``: the model the run
    started from; a ``ValueError`` names its fingerprint otherwise)."""
    obj = torch.load(os.fspath(path), weights_only=True, map_location="cpu")
    if not isinstance(obj, dict):
        raise ValueError(f"{os.fspath(path)} does not hold a state_dict (found {type(obj).__name__})")
    if not is_delta(obj):
        return obj
    if pretrained is None:
        raise ValueError(f"{os.fspath(path)} holds only what the run changed against the pretrained model "
                         f"{obj['pretrained_id']}: pass that model to restore the full weights")
    if pretrained_id is None:
        pretrained_id = fingerprint(pretrained)
    return restore_state(obj, pretrained, pretrained_id)
