"""A loss that fits the task, chosen when the studio opens without a config.

``RetrainStudio(model, task.train, task.val, task.old_val)`` starts from ``RunConfig()``, whose
``"ce"`` fits a classifier's head and class-id targets. When the first training batch says the
task is another one, :func:`choose_loss` names a loss (and a head size) that fits it:

================================= ========================================================
targets of the first batch        choice
================================= ========================================================
floats (or bools) that are 0 / 1  ``"bce"`` with one output per target column (1 for ``(N,)``)
other real values                 ``"mse"`` with one output per target column
class ids beyond the head         ``"ce"`` with a new head of ``max id + 1`` outputs
================================= ========================================================

The choice is checked with the loss check itself
(:func:`~retrain_widgets.core.losses.check_compatibility`) before it is offered, and
:func:`open_ready` keeps it only when the studio's check then passes through the model with
the new head. A config given explicitly is never replaced (the studio checks it as it is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .core.batches import Forward, logits_of
from .core.config import RunConfig
from .core.losses import LossMismatchError, check_compatibility

__all__ = ["LossChoice", "choose_loss", "open_ready"]


@dataclass(frozen=True)
class LossChoice:
    """A loss chosen for the task: its name, the head size (``None``: the head as it is) and why."""

    loss: str
    head_out: int | None
    reason: str

    def changes(self) -> dict[str, Any]:
        """The config changes that make this choice."""
        return {"loss": self.loss, "loss_kwargs": {}, "head_out": self.head_out}

    @property
    def note(self) -> str:
        """One line for the Loss tab: what was chosen and why."""
        head = "" if self.head_out is None else \
            f" with a new head of {self.head_out} output{'s' if self.head_out != 1 else ''}"
        return (f"Chosen at open: '{self.loss}'{head}, because {self.reason}. Pick another loss to change it; "
                f"a config passed as config=RunConfig(...) is kept as given.")


def choose_loss(outputs: torch.Tensor, targets: Any, loss: Any, **loss_kwargs: Any) -> LossChoice | None:
    """A loss that fits ``outputs`` and ``targets`` (one batch) when ``loss`` does not, else ``None``
    (``loss`` fits, or no registered loss and head size would)."""
    try:
        check_compatibility(outputs, targets, loss, **loss_kwargs)
        return None
    except LossMismatchError as exc:
        mismatch = exc
    choice = _candidate(outputs, targets, mismatch)
    if choice is None:
        return None
    width = choice.head_out if choice.head_out is not None else (outputs.shape[-1] if outputs.dim() > 1 else 1)
    probe = torch.zeros((outputs.shape[0], width), dtype=torch.float32)
    try:
        check_compatibility(probe, targets, choice.loss)
    except (LossMismatchError, ValueError):
        return None
    return choice


def _candidate(outputs: torch.Tensor, targets: Any, mismatch: LossMismatchError) -> LossChoice | None:
    if not isinstance(targets, torch.Tensor) or targets.dim() == 0 or outputs.dim() == 0:
        return None
    columns = 1 if targets.dim() == 1 else int(targets.shape[-1])
    n_out = int(outputs.shape[-1]) if outputs.dim() > 1 else 1
    head_out = None if columns == n_out else columns
    name = f"'{mismatch.loss}'" if mismatch.loss else "the configured loss"
    kind = str(targets.dtype).replace("torch.", "")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        values = targets.detach().float()
        values = values[torch.isfinite(values)]
        if values.numel() and bool(((values == 0) | (values == 1)).all()):
            return LossChoice("bce", head_out, f"the targets are {kind} 0/1 values (a binary task) and {name} "
                                               f"does not fit them")
        return LossChoice("mse", head_out, f"the targets are real values ({kind}: a regression task) and {name} "
                                           f"does not fit them")
    if targets.dim() == 1 and mismatch.head_out is not None and mismatch.head_out > n_out:
        return LossChoice("ce", mismatch.head_out, f"the targets hold class ids up to {mismatch.head_out - 1}, "
                                                   f"beyond the head's {n_out} outputs")
    return None


def open_ready(model: nn.Module, forward: Forward, batch: Callable[[], Any], config: RunConfig, *,
               change: Callable[..., Any], fits: Callable[[], bool]) -> LossChoice | None:
    """Give a studio opened without a config a loss that fits its task when ``config``'s does not.

    ``batch()`` (the first training batch) goes through ``model`` (the working copy, in eval mode)
    with ``forward``. A choice is taken with ``change(**fields)`` (the studio's ``set``: it rebuilds
    the working copy and reruns the loss check) and kept only when ``fits()`` (that check passed)
    then; else ``change`` puts ``config``'s fields back. Returns the choice kept, or ``None``.
    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs, targets = forward(model, batch())
            choice = choose_loss(logits_of(outputs), targets, config.loss, **config.loss_kwargs)
    except Exception:  # noqa: BLE001 - the user's model or data: the loss check shows the error
        return None
    finally:
        model.train(was)
    if choice is None:
        return None
    changes = choice.changes()
    before = {name: getattr(config, name) for name in changes}
    change(**changes)
    if not fits():
        change(**before)
        return None
    return choice
