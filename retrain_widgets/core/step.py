"""One training step, in the one order every loop of the package takes it.

:class:`TrainingStep` is the step the engine's loop takes and the LR finder's sweep takes, and
:meth:`TrainingStep.script` writes the same pieces, in the same order, as the exported script's
lines: drop the last gradients, the loss (distillation included), backward (unscaled with a loss
scaler), the L2-SP pull, clipping, what the loop does with this step's gradients (the engine's
telemetry), the optimizer step. The pieces themselves are the recipe's
(:mod:`retrain_widgets.core.recipe.training`), so the script holds their source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .recipe import training as recipe

__all__ = ["TrainingStep"]


class TrainingStep:
    """``step(batch) -> loss``: one optimizer step on a batch already on the device.

    Parameters
    ----------
    optimizer
        The run's optimizer.
    loss_of
        ``loss_of(batch) -> loss``: the training loss of a batch (the recipe's ``training_loss``
        with the run's model, forward, loss, mixed precision and distillation).
    scaler
        fp16's loss scaler, or ``None``.
    l2sp
        ``(params, pretrained values, strength)`` of the L2-SP pull, or ``None``.
    grad_clip
        The global gradient norm's bound, or ``None``.
    after_backward
        ``after_backward(loss)``, called when the gradients are final and before the optimizer
        step (the engine's telemetry: probes, the alignment probe, the NaN guard).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, loss_of: Callable[[Any], torch.Tensor], *,
                 scaler: Any = None, l2sp: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor], float] | None = None,
                 grad_clip: float | None = None, after_backward: Callable[[torch.Tensor], None] | None = None) -> None:
        self.optimizer, self.loss_of, self.scaler = optimizer, loss_of, scaler
        self.l2sp, self.grad_clip, self.after_backward = l2sp, grad_clip, after_backward

    def __call__(self, batch: Any) -> torch.Tensor:
        opt = self.optimizer
        recipe.clear_gradients(opt)
        loss = self.loss_of(batch)
        recipe.backward(loss, opt, self.scaler)
        if self.l2sp is not None:
            recipe.pull_to_pretrained(*self.l2sp)
        if self.grad_clip is not None:
            recipe.clip_gradients(opt, self.grad_clip)
        if self.after_backward is not None:
            self.after_backward(loss)
        recipe.optimizer_step(opt, self.scaler)
        return loss

    @staticmethod
    def script(loss_call: str, *, scaler: bool, l2sp: bool, grad_clip: bool) -> list[str]:
        """The same step as the exported script's lines (the order of :meth:`__call__`); the
        script's names: ``optimizer``, ``scaler``, ``l2sp_params``, ``l2sp_start``, ``L2SP``,
        ``GRAD_CLIP``; ``loss_call`` computes the loss."""
        scale = ", scaler" if scaler else ""
        lines = ["clear_gradients(optimizer)", f"loss = {loss_call}", f"backward(loss, optimizer{scale})"]
        if l2sp:
            lines.append("pull_to_pretrained(l2sp_params, l2sp_start, L2SP)")
        if grad_clip:
            lines.append("clip_gradients(optimizer, GRAD_CLIP)")
        lines.append(f"optimizer_step(optimizer{scale})")
        return lines
