"""Errors raised by the user's own code keep their identity.

A loss or a ``forward`` that raises during the check before training is a bug in that code,
not a mismatch between model, targets and loss: the exception goes on as the user's own (same
type, same object, same traceback), with a note that says where it happened and on which
shapes. Only what this package decides is wrapped in its own error classes.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["describe", "note_user_error", "code_label", "TrainingFailed"]

_PACKAGE = pathlib.Path(__file__).resolve().parents[1]


class TrainingFailed(RuntimeError):
    """The run failed (non-finite loss, out of memory, ...); the message says why and what was kept."""


def describe(obj: Any, depth: int = 0) -> str:
    """A short description of a batch, outputs or targets: shapes and dtypes of the tensors."""
    if isinstance(obj, torch.Tensor):
        return f"{tuple(obj.shape)} {str(obj.dtype).removeprefix('torch.')}"
    if depth > 2:
        return type(obj).__name__
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in list(obj.items())[:8]) + "}"
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(describe(v, depth + 1) for v in obj[:8])
        return f"({inner})" if isinstance(obj, tuple) else f"[{inner}]"
    logits = getattr(obj, "logits", None)
    if isinstance(logits, torch.Tensor):
        return f"{type(obj).__name__}(logits={describe(logits)})"
    return type(obj).__name__


def code_label(fn: Callable[..., Any], default: str) -> str:
    """How a note names the user's function: ``default`` for this package's own (e.g. the default
    forward, which calls the model's), else ``"forward 'name'"``-style."""
    if getattr(fn, "__module__", "").startswith("retrain_widgets."):
        return default
    return f"the forward {getattr(fn, '__qualname__', type(fn).__name__)!r}"


def _raised_here(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and pathlib.Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def note_user_error(exc: BaseException, where: str, **data: Any) -> BaseException:
    """Add a note to ``exc`` saying that ``where`` (e.g. "the loss 'my_loss'") raised it during
    the check before training, on ``data`` (described by :func:`describe`); return ``exc``, to
    be re-raised as it is. An error this package raised itself (its innermost frame is in the
    package: a batch layout it cannot read, say) gets no note."""
    if _raised_here(exc):
        return exc
    shapes = ", ".join(f"{k} {describe(v)}" for k, v in data.items())
    exc.add_note(
        f"retrain_widgets: raised by {where} in the check before training, on one batch"
        f"{': ' + shapes if shapes else ''}. The error comes from that code, not from retrain_widgets."
    )
    return exc
