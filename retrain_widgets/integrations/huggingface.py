"""A Hugging Face ``Trainer`` run, watched: ``Trainer(..., callbacks=[RetrainCallback()])``.

::

    cb = RetrainCallback(old_val=old_val, store=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[cb])
    trainer.train()
    cb.history.series("train_loss")          # one point per optimizer step
    cb.stop()                                # from any thread

What the run records, and where it comes from:

* **Gradient norms**, one row per optimizer step (gradient accumulation included), taken by a
  pre-hook on the torch optimizer's ``step`` (inside accelerate's wrapper): after clipping, the
  gradients the step uses.
* **The loss of each optimizer step**: the mean of the ``loss`` the model returned for the step's
  micro-batches (a forward hook on the model, in training mode; device operations only, no host
  sync). That is what the Trainer logs when the loss is the model's own. When the model returns
  no loss (the Trainer computes it: ``compute_loss_func``, label smoothing, a subclass's
  ``compute_loss``) the step's loss is the Trainer's logged ``loss``: exact at each step the
  Trainer logs (the callback makes it log the first step too), the last logged value between
  logs; ``logging_steps=1`` makes every step exact.
* **Evaluation metrics** (``on_evaluate``): ``eval_loss`` as ``val_loss``, ``eval_<name>`` as
  ``val_<name>``, ``args.metric_for_best_model`` also as ``val_metric``; an evaluation at an
  epoch's end goes in with that epoch (where the old task is measured on ``old_val``), others at
  their step.
* **Steering**: :meth:`stop` sets ``control.should_training_stop`` at the next step end; the
  Trainer has no pause, so :meth:`pause` waits in ``on_step_end`` (a step boundary) until
  :meth:`resume` or :meth:`stop`.

Steps are counted from the start of this ``train()`` call. If ``train()`` raises, call
``cb.finish(error)`` to mark the run failed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..core.names import Meta, Series
from . import WatchingCallback, missing_extra

try:
    from transformers import TrainerCallback
except ImportError as exc:  # the optional dependency
    raise missing_extra("Hugging Face transformers", "hf", exc) from exc

__all__ = ["RetrainCallback"]

_NOT_METRICS = ("epoch", "runtime", "samples_per_second", "steps_per_second")


def val_metrics(metrics: Mapping[str, Any], best: str | None) -> dict[str, float]:
    """The history's names of a Trainer evaluation's metrics: ``eval_loss`` → ``val_loss``,
    ``eval_x`` → ``val_x``, and ``best`` (``metric_for_best_model``) also as ``val_metric``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = key[len("eval_"):] if key.startswith("eval_") else key
        if name in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"val_{name}"] = float(value)
        if best is not None and best != "loss" and name == best.removeprefix("eval_"):
            out[Series.VAL_METRIC] = float(value)
    return out


class RetrainCallback(WatchingCallback, TrainerCallback):
    """A ``transformers.TrainerCallback`` that makes the Trainer's run a
    :class:`~retrain_widgets.core.watch.WatchedRun` (see the module's notes).

    Parameters
    ----------
    store
        ``True``: recorded in ``RunStore()`` (``.retrain_runs`` in the working directory);
        ``False``/``None`` (default): not recorded; a ``RunStore`` or a folder's path.
    options
        The :class:`WatchedRun`'s options (``old_val``, ``old_train``, ``old_loss``, ``forward``,
        ``metric``, ``name``, ``loss``, ``alignment_every``, ...). The model, optimizer,
        scheduler, ``total_steps`` (``state.max_steps``) and ``epochs`` come from the Trainer.

    Attributes
    ----------
    run, history, run_id
        The run (made at ``on_train_begin``), its history, its id in the store.
    """

    framework = "huggingface"

    def __init__(self, store: Any = None, **options: Any) -> None:
        super().__init__(store, **options)
        self._forward_hook: Any = None
        self._loss_sum: torch.Tensor | float | None = None
        self._micro = 0
        self._logged: float | None = None  # the Trainer's last logged loss
        self._step_waits = False  # this step's loss comes with the Trainer's log (no model loss)
        self._warned = False
        self._epoch_ended = False  # an epoch ended at this step; its evaluation may follow

    # ------------------------------------------------------------------ training begins and ends
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's
        epochs = state.num_train_epochs or args.num_train_epochs
        self._start(model, optimizer, scheduler=lr_scheduler, total_steps=int(state.max_steps or 0),
                    epochs=int(math.ceil(epochs)) if epochs else None)
        best = args.metric_for_best_model
        if best is not None and best.removeprefix("eval_") != "loss":
            self.run.history.meta[Meta.METRIC] = best.removeprefix("eval_")
            self.run.history.meta[Meta.HIGHER_IS_BETTER] = bool(args.greater_is_better)
        self._loss_sum, self._micro, self._logged, self._step_waits = None, 0, None, False
        self._epoch_ended = False
        self._forward_hook = model.register_forward_hook(self._forward_done)
        if self.run.should_stop:
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_epoch()
        if self._forward_hook is not None:
            self._forward_hook.remove()
            self._forward_hook = None
        self.finish()

    # ------------------------------------------------------------------ each optimizer step
    def _forward_done(self, module: Any, args: Any, output: Any) -> None:
        """The model's ``loss`` of a training micro-batch, kept on its device."""
        if not (module.training and torch.is_grad_enabled()) or not isinstance(output, Mapping):
            return  # an evaluation's, or the alignment probe's (it runs the model in eval mode)
        loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            # on the CPU a number (reading it is free there), else a device tensor (no host sync)
            loss = loss.item() if loss.is_cpu else loss.detach().reshape(())
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._micro += 1

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_epoch()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._loss_sum is not None:
            loss, self._loss_sum, n = self._loss_sum, None, self._micro
            self._micro = 0
            self._step(loss / n if n > 1 else loss, control)
        elif control.should_log or self._logged is None:
            self._warn_no_model_loss()
            control.should_log = True  # the Trainer logs this step's loss now: on_log takes it
            self._step_waits = True
        else:
            self._step(self._logged, control)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs and isinstance(logs.get("loss"), (int, float)):
            self._logged = float(logs["loss"])
            if self._step_waits:
                self._step_waits = False
                self._step(self._logged, control)

    def _step(self, loss: torch.Tensor | float, control: Any) -> None:
        run = self.run
        if run is None or run.state.final:
            return
        run.step(loss)  # waits here while paused
        if run.should_stop:
            control.should_training_stop = True

    def _warn_no_model_loss(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn("the model returned no loss (the Trainer computes it): the watched run's loss is the "
                          "Trainer's logged loss, exact only at the steps it logs (logging_steps=1: every step)",
                          stacklevel=3)

    # ------------------------------------------------------------------ epochs and evaluations
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_ended = True  # its evaluation, if any, comes next (on_evaluate)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_epoch()

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> None:
        run = self.run
        if run is None or run.state.final:
            return
        values = val_metrics(metrics or {}, args.metric_for_best_model)
        if Series.VAL_LOSS in values or Series.VAL_METRIC in values:
            run.history.meta[Meta.HAS_VAL] = True
        if self._epoch_ended:
            self._end_epoch(values)
        else:  # an evaluation within the epoch (eval_strategy="steps"): at its step
            for name, value in values.items():
                run.history.append(name, [run.global_step], [value])

    def _end_epoch(self, metrics: Mapping[str, float] | None = None) -> None:
        if self._epoch_ended and self.run is not None and not self.run.state.final:
            self._epoch_ended = False
            self.run.epoch_end(**(metrics or {}))
