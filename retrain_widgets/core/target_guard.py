"""Late bad targets: a class id out of range, or a binary target outside [0, 1], in any training batch.

The loss check before training sees one batch; a bad label later used to surface as a raw
``IndexError`` from cross entropy (naming no step), a device-side assert on CUDA, or a run that
"finished" with a negative BCE loss. :class:`TargetGuard` stands between the training step and its
loss (:meth:`Retrainer.batch_loss <retrain_widgets.core.engine.Retrainer.batch_loss>` calls it
instead of the loss) and stops the run with :class:`BadTargets`, naming the step, the offending value
and the fix.

Cost: on the CPU, class ids cost nothing per step: every multiclass loss of the registry indexes
by them and raises on one out of range there, and only then are the targets read (the raise becomes
:class:`BadTargets`, or goes on as it was when the targets are fine); binary targets (which no loss
refuses) take one ``aminmax``, read at once (a host read is free there). On CUDA (and MPS) nothing is read per step: the targets' min and max go into a device buffer, a row per step,
that :meth:`check` reads when the publisher flushes the probes (one copy per publish); cross
entropy's targets out of range are replaced by ``ignore_index`` on the device meanwhile, so its
kernel does not assert before the publish reports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .engine import Retrainer

__all__ = ["BadTargets", "TargetGuard"]


class BadTargets(ValueError):
    """A training batch holds targets the loss cannot use; the message names the step and the value."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class TargetGuard:
    """The training loss of ``run``, with its targets checked (see the module)."""

    def __init__(self, run: Retrainer) -> None:
        self.run = run
        fn = run.loss_fn
        self.task = getattr(fn, "task", None) if hasattr(fn, "align") else None  # a CheckedLoss of a known task
        self.ignore_index = int(getattr(fn, "ignore_index", -100))
        self.name = getattr(fn, "name", "the loss")
        self.host = run.device.type == "cpu"  # read at once (free); on CUDA / MPS at the publish (no sync)
        self.capacity = run.publish_every
        self.rows = torch.zeros(self.capacity, 3, device=run.device, dtype=torch.float64) if not self.host else None
        self.steps = np.zeros(self.capacity, dtype=np.int64)
        self.n = 0

    def __call__(self, outputs: Tensor, targets: Any) -> Tensor:
        if self.host and self.task == "multiclass":  # the loss's own indexing is the check (see the module)
            try:
                return self.run.loss_fn(outputs, targets)
            except (IndexError, RuntimeError) as exc:
                self.run_check(outputs, targets, exc)
                raise
        return self.run.loss_fn(outputs, self.screen(outputs, targets))

    def run_check(self, outputs: Tensor, targets: Any, exc: BaseException) -> None:
        """The loss raised ``exc`` on the CPU: :class:`BadTargets` from it when the targets are the cause."""
        try:
            self.screen(outputs, targets, force=True)
        except BadTargets as bad:
            raise bad from exc

    def screen(self, outputs: Tensor, targets: Any, force: bool = False) -> Any:
        """``targets`` (made safe for the loss on CUDA); raises :class:`BadTargets` on the CPU (class ids
        there only when ``force``d: see :meth:`__call__`)."""
        if self.task not in ("multiclass", "binary") or not isinstance(targets, Tensor) or not targets.numel() \
                or not isinstance(outputs, Tensor) or outputs.dim() < 1:
            return targets
        if self.host and self.task == "multiclass" and not force:
            return targets
        t = targets.detach()
        if self.task == "multiclass":
            if t.dtype.is_floating_point or t.dtype == torch.bool or outputs.dim() < 2:
                return targets  # class probabilities, or a shape the loss's own check refuses
            n_classes = outputs.shape[1]
            lo, hi = torch.aminmax(t)
            if not self.host or float(lo) < 0:  # ignored samples (-100) do not count
                lo, hi = torch.aminmax(torch.where(t == self.ignore_index, 0, t))
        else:
            n_classes = 0
            lo, hi = torch.aminmax(t.float())
        if self.host:
            lo_v, hi_v = float(lo), float(hi)
            if self._bad(lo_v, hi_v, n_classes):
                raise self.error(self.run.step, lo_v, hi_v, n_classes)
            return targets
        if self.n < self.capacity:  # rows beyond (an LR finder's steps before training) are not read
            torch.stack([lo.double(), hi.double(), torch.full((), float(n_classes), dtype=torch.float64,
                                                              device=t.device)], out=self.rows[self.n])
            self.steps[self.n] = self.run.step
            self.n += 1
        if self.task == "multiclass":  # out of range: ignored by the loss until the publish stops the run
            return torch.where((targets < 0) | (targets >= n_classes), self.ignore_index, targets)
        return targets

    @staticmethod
    def _bad(lo: float, hi: float, n_classes: int) -> bool:
        top = n_classes - 1 if n_classes else 1
        return not (0 <= lo and hi <= top)

    def check(self) -> BadTargets | None:
        """The rows recorded since the last check (one host copy): the error of the first bad step, or None."""
        n, self.n = self.n, 0
        if self.host or n == 0:
            return None
        rows = self.rows[:n].cpu().numpy()
        for step, (lo, hi, n_classes) in zip(self.steps[:n], rows):
            if self._bad(float(lo), float(hi), int(n_classes)):
                return self.error(int(step), float(lo), float(hi), int(n_classes))
        return None

    def error(self, step: int, lo: float, hi: float, n_classes: int) -> BadTargets:
        """The message: the step, the offending value and the fix."""
        where = f"the training batch of step {step} (epoch {self.run.epoch + 1})"
        if n_classes:
            value = lo if lo < 0 else hi
            return BadTargets(
                f"{where} holds the class id {value:g}, outside 0..{n_classes - 1} for the model's {n_classes} "
                f"outputs ({self.name!r} needs class ids in [0, {n_classes})). Fix that batch's labels, give the "
                f"head {int(hi) + 1} outputs with RunConfig(head_out={int(hi) + 1}) if the task has that many "
                f"classes, or mark samples to skip with {self.ignore_index}", step)
        value = lo if not 0 <= lo else hi
        return BadTargets(
            f"{where} holds the target {value:g}, outside [0, 1] ({self.name!r} needs 0/1 labels or "
            f"probabilities). Fix that batch's labels, or pick a loss for this task (e.g. 'ce' for class ids, "
            f"'mse' or 'huber' for values)", step)
