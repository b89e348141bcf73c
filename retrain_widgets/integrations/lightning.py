"""A Lightning ``Trainer`` run, watched: ``Trainer(callbacks=[RetrainCallback()])``, with
``lightning.pytorch`` or ``pytorch_lightning``, whichever is installed.

::

    cb = RetrainCallback(old_val=old_val, store=True)
    pl.Trainer(max_epochs=3, callbacks=[cb]).fit(module, train_loader, val_loader)
    cb.history.layer_series("grad_norm")    # one row per optimizer step
    cb.stop()                               # from any thread

What the run records, and where it comes from:

* **Gradient norms**, one row per optimizer step (``accumulate_grad_batches`` included), taken in
  ``on_before_optimizer_step``: the gradients are final there and unscaled (mixed precision), before
  Lightning's clipping. Lightning steps the optimizer with a closure that runs the backward pass
  *inside* ``optimizer.step``, so a hook on ``optimizer.step`` would see the last step's gradients:
  the run is made with ``hook_optimizer=False``.
* **The loss of each optimizer step**: the mean of ``training_step``'s loss over the step's batches
  (``on_train_batch_end``'s outputs, which Lightning divides by ``accumulate_grad_batches``: the
  callback multiplies it back). With manual optimization, the loss ``training_step`` returns; a
  step whose batches returned none repeats the last step's loss (0 before any).
* **Validation metrics**: at ``on_validation_epoch_end`` (the sanity check excluded), the
  ``trainer.callback_metrics`` whose names start with ``val`` (``val_loss``, ``val_acc``, ...;
  ``monitor`` names one to record as ``val_metric`` too); the last validation of an epoch goes in
  with that epoch (where the old task is measured on ``old_val``), earlier ones at their step.
* **Steering**: :meth:`stop` sets ``trainer.should_stop`` at the next batch end after an optimizer
  step; :meth:`pause` waits there (a step boundary) until :meth:`resume` or :meth:`stop`. An
  exception in ``fit`` marks the run failed (``on_exception``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..core.names import Meta, Series
from . import WatchingCallback, missing_extra

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:  # the optional dependency
        raise missing_extra("Lightning", "lightning", exc) from exc

__all__ = ["RetrainCallback"]


def batch_loss(outputs: Any) -> torch.Tensor | None:
    """The loss in ``on_train_batch_end``'s outputs (a tensor, or a mapping's ``"loss"``)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss.detach().reshape(())
    return None


class RetrainCallback(WatchingCallback, Callback):
    """A Lightning ``Callback`` that makes the Trainer's run a
    :class:`~retrain_widgets.core.watch.WatchedRun` (see the module's notes).

    Parameters
    ----------
    store
        ``True``: recorded in ``RunStore()`` (``.retrain_runs`` in the working directory);
        ``False``/``None`` (default): not recorded; a ``RunStore`` or a folder's path.
    monitor
        The validation metric (a ``trainer.callback_metrics`` name) also recorded as ``val_metric``.
    higher_is_better
        Whether ``monitor`` is better higher (an accuracy) or lower (an error).
    options
        The :class:`WatchedRun`'s options (``old_val``, ``old_train``, ``old_loss``, ``forward``,
        ``metric``, ``name``, ``loss``, ``alignment_every``, ...). The model, optimizer, scheduler,
        ``total_steps`` and ``epochs`` come from the Trainer.

    Attributes
    ----------
    run, history, run_id
        The run (made at ``on_train_start``), its history, its id in the store.
    """

    framework = "lightning"

    def __init__(self, store: Any = None, monitor: str | None = None, higher_is_better: bool = True,
                 **options: Any) -> None:
        super().__init__(store, **options)
        self.monitor, self.higher_is_better = monitor, higher_is_better
        self._loss_sum: torch.Tensor | None = None
        self._batches = 0
        self._stepped = False
        self._last: torch.Tensor | float = 0.0  # the last step's loss (a step whose batches returned none)
        self._validation: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the last one

    # ------------------------------------------------------------------ training begins and ends
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside LightningOptimizer
        schedulers = trainer.lr_scheduler_configs
        total = trainer.estimated_stepping_batches
        epochs = trainer.max_epochs
        self._start(pl_module, optimizer, scheduler=schedulers[0].scheduler if schedulers else None,
                    total_steps=int(total) if math.isfinite(total) else 0,
                    epochs=epochs if epochs is not None and epochs > 0 else None, hook_optimizer=False)
        if self.monitor is not None:
            self.run.history.meta[Meta.METRIC] = self.monitor
            self.run.history.meta[Meta.HIGHER_IS_BETTER] = bool(self.higher_is_better)
        self._loss_sum, self._batches, self._stepped, self._validation = None, 0, False, None
        if self.run.should_stop:
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._validation is not None:  # a validation after the last epoch's end
            self._end_epoch()
        self.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.finish(exception if isinstance(exception, Exception) else None)

    # ------------------------------------------------------------------ each optimizer step
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        run = self.run
        if run is not None and not run.state.final and not self._stepped:
            run.gradients_ready()
            self._stepped = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = batch_loss(outputs)
        if loss is not None:
            if pl_module.automatic_optimization:
                loss = loss * trainer.accumulate_grad_batches  # Lightning divided it for the backward pass
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._batches += 1
        if not self._stepped:
            return  # gradients accumulate: the optimizer steps after a later batch
        self._stepped = False
        run = self.run
        if run is None or run.state.final:
            return
        total, n = self._loss_sum, self._batches
        self._loss_sum, self._batches = None, 0
        if total is not None:
            self._last = total / n if n > 1 else total
        run.step(self._last)
        if run.should_stop:
            trainer.should_stop = True

    # ------------------------------------------------------------------ epochs and validation
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        run = self.run
        if trainer.sanity_checking or run is None or run.state.final:
            return
        values: dict[str, float] = {}
        for name, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = float(value)
            if name.startswith("val") and isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name] = float(value)
                if name == self.monitor:
                    values[Series.VAL_METRIC] = float(value)
        if values:
            run.history.meta[Meta.HAS_VAL] = True
        if self._validation is not None:  # an earlier validation of this epoch: at its step
            step, earlier = self._validation
            for name, value in earlier.items():
                run.history.append(name, [step], [value])
        self._validation = (run.global_step, values)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_epoch()

    def _end_epoch(self) -> None:
        run = self.run
        if run is None or run.state.final:
            return
        metrics = self._validation[1] if self._validation is not None else {}
        self._validation = None
        run.epoch_end(**metrics)
