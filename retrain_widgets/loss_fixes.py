"""The fix the dashboard offers when the loss check fails: one that ends in a loss that fits.

The loss check (:func:`~retrain_widgets.core.losses.check_compatibility`) names the head size
that would fit the loss and the targets (``LossMismatchError.head_out``). That head is only
offered when the loss then really fits: ``'ce'`` on a 1-logit head with float 0/1 targets asks
for 2 outputs, and with 2 outputs would still refuse the float targets, so a "Replace head"
button there led to a second error with no button. :func:`next_fix` checks each candidate on
zeros of the new head's shape before offering it:

1. the head the check asks for, when the configured loss fits it;
2. else the loss that fits the task (:func:`~retrain_widgets.autoloss.choose_loss`: ``'bce'``
   for 0/1 targets, ``'mse'`` for real values, ``'ce'`` for class ids beyond the head), with
   the head size it needs;
3. else the first registered loss that fits the outputs and targets as they are (``'ce'`` for
   class ids on a classifier's head, when ``'bce'`` was asked of it).

So every fix the dashboard offers leads to a loss check that passes (tested for each registered
loss against the bundled tasks' targets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .autoloss import choose_loss
from .core.losses import LossMismatchError, check_compatibility

__all__ = ["LossFix", "next_fix"]


@dataclass(frozen=True)
class LossFix:
    """A fix: the button's ``label``, the config ``changes`` it makes, and ``head_out`` when it is
    a head replacement alone (``None`` when it changes the loss)."""

    label: str
    changes: dict[str, Any] = field(default_factory=dict)
    head_out: int | None = None


def _outputs(n: int) -> str:
    return f"{n} output{'s' if n != 1 else ''}"


def fits_with_head(outputs: torch.Tensor, targets: Any, loss: Any, loss_kwargs: dict[str, Any], width: int) -> bool:
    """Whether ``loss`` fits ``targets`` once the head gives ``width`` outputs (checked on zeros of
    the outputs' shape with that width)."""
    if not isinstance(outputs, torch.Tensor) or outputs.dim() == 0 or width < 1:
        return False
    shape = (outputs.shape[0], width, *outputs.shape[2:])
    try:
        check_compatibility(torch.zeros(shape, dtype=torch.float32), targets, loss, **loss_kwargs)
    except (LossMismatchError, ValueError):
        return False
    except Exception:  # noqa: BLE001 - a user's own loss that fails on zeros: no fix to offer from here
        return False
    return True


def width_of(outputs: torch.Tensor) -> int:
    """The head's width as the outputs show it (1 for ``(N,)``)."""
    return int(outputs.shape[1]) if outputs.dim() >= 2 else 1


def next_fix(outputs: torch.Tensor, targets: Any, loss: Any, loss_kwargs: dict[str, Any],
             mismatch: LossMismatchError) -> LossFix | None:
    """The fix to offer for ``mismatch`` (``loss`` on ``outputs`` and ``targets``, one batch), or
    ``None`` when neither a head nor a registered loss would make the check pass."""
    k = mismatch.head_out
    if k is not None and fits_with_head(outputs, targets, loss, loss_kwargs, k):
        return LossFix(f"Replace head with {_outputs(k)}", {"head_out": k}, head_out=k)
    try:
        choice = choose_loss(outputs, targets, loss, **loss_kwargs)
    except Exception:  # noqa: BLE001 - the user's loss or data: the check's own message stands
        return None
    if choice is None:
        fitting = [name for name in mismatch.suggested_losses if fits_with_head(outputs, targets, name, {}, width_of(outputs))]
        return LossFix(f"Use '{fitting[0]}'", {"loss": fitting[0], "loss_kwargs": {}}) if fitting else None
    changes: dict[str, Any] = {"loss": choice.loss, "loss_kwargs": {}}
    label = f"Use '{choice.loss}'"
    if choice.head_out is not None:  # None: the head as it is (config head_out=None would restore the original)
        changes["head_out"] = choice.head_out
        label += f" with a head of {_outputs(choice.head_out)}"
    return LossFix(label, changes)
