"""Running a loss once on one batch, for :func:`~retrain_widgets.core.losses.check_compatibility`:
the loss must not broadcast the outputs against the targets, and must return a finite 0-d float
tensor that has a gradient when the outputs have one.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import Tensor

from .errors import note_user_error
from .loss_checks import LossMismatchError, _error
from .loss_registry import LossFn

_BROADCAST_WARNING = re.compile(r"broadcast|target size", re.IGNORECASE)


def _run_once(fn: LossFn, outputs: Tensor, targets: Any, name: str | None, label: str,
              user_code: bool = False) -> Tensor:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.enable_grad():
                result = fn(outputs, targets)
        except LossMismatchError:
            raise
        except Exception as exc:
            if user_code:  # the user's own bug, not a mismatch: their exception, with a note
                note_user_error(exc, f"the loss {label}", outputs=outputs, targets=targets)
                raise
            raise _error(f"{label} raised {type(exc).__name__} on these outputs and targets: {exc}",
                         name, outputs, targets) from exc
    bad = [w for w in caught if issubclass(w.category, UserWarning) and _BROADCAST_WARNING.search(str(w.message))]
    for w in caught:
        if w not in bad:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if bad:
        raise _error(
            f"{label} broadcasts the outputs against the targets instead of pairing them (PyTorch warned: "
            f"{bad[0].message}); make the outputs and the targets the same shape, e.g. outputs.squeeze(1) "
            f"for a 1-unit head, or use a registered loss, which aligns (N, 1) with (N,)",
            name, outputs, targets, head_out=_one_per_target(outputs, targets),
        )
    return result


def _one_per_target(outputs: Any, targets: Any) -> int | None:
    if isinstance(outputs, Tensor) and isinstance(targets, Tensor) and outputs.dim() == 2 and targets.dim() == 1:
        return 1
    return None


def _check_result(result: Any, outputs: Tensor, targets: Any, name: str | None, label: str) -> None:
    if not isinstance(result, Tensor):
        raise _error(
            f"{label} returned a {type(result).__name__} ({result!r}); a loss must return a 0-d tensor computed "
            f"from the outputs (no .item(), float() or numpy)", name, outputs, targets)
    if result.dim() != 0:
        raise _error(
            f"{label} returned a tensor of shape {tuple(result.shape)}; a loss must return one number (a 0-d "
            f"tensor): reduce it with .mean() or .sum()", name, outputs, targets)
    if not (result.is_floating_point() or result.is_complex()):
        raise _error(f"{label} returned a {result.dtype} tensor; a loss must return a float tensor",
                     name, outputs, targets)
    if not bool(torch.isfinite(result.detach())):
        raise _error(f"{label} returned {result.item()} on this batch; a loss must be finite",
                     name, outputs, targets)
    if outputs.requires_grad and not result.requires_grad:
        raise _error(
            f"{label} returned a tensor without a gradient (requires_grad=False) although the outputs have one: "
            f"it does not depend on the outputs (a .detach(), .item(), numpy or torch.no_grad inside?)",
            name, outputs, targets)


def _probe_broadcast(fn: LossFn, result: Tensor, outputs: Tensor, targets: Any, name: str | None,
                     label: str) -> None:
    """A custom loss on (N, 1) against (N,) must give what it gives on (N,) against (N,)."""
    if not (isinstance(targets, Tensor) and outputs.dim() == 2 and outputs.shape[1] == 1
            and targets.dim() == 1 and targets.shape[0] > 1):
        return
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            other = fn(outputs.squeeze(1), targets)
    except Exception:
        return
    if not isinstance(other, Tensor) or other.shape != result.shape:
        return
    a, b = result.detach().double(), other.detach().double()
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-6):
        raise _error(
            f"{label} gives {a.item():.6g} on outputs of shape {tuple(outputs.shape)} but {b.item():.6g} on the "
            f"same outputs squeezed to {(outputs.shape[0],)}: it probably broadcasts (N, 1) against the targets "
            f"(N,) into (N, N). Squeeze the outputs inside the loss (outputs.squeeze(1)) or use a registered loss",
            name, outputs, targets, head_out=None,
        )

