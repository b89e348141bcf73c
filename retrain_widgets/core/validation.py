"""Measuring a run: the check of one batch before training, the new task on ``val`` and the
old task on ``old_val`` through the original head (the recipe's evaluation, with the metric
and the old task's loss named for the history)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import losses as losses_mod
from . import metrics as metrics_mod
from .batches import logits_of, to_device
from .errors import code_label, note_user_error
from .names import Meta
from .recipe import evaluation as recipe_eval
from .recipe import training as recipe

if TYPE_CHECKING:
    from .engine import Retrainer

__all__ = ["Validation"]


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, in its own mode again after."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)

#: The registered loss the old task is measured with, per task (the recipe's
#: ``evaluation.OLD_TASK`` formulas, with their shape checks).
OLD_TASK_LOSS = {"multiclass": "ce", "binary": "bce", "regression": "mse"}


class Validation:
    """The checks and measurements of one :class:`~retrain_widgets.core.engine.Retrainer`."""

    def __init__(self, run: Retrainer) -> None:
        self.run = run
        self.metric: metrics_mod.Metric | None = None
        self.old: tuple[Callable[..., torch.Tensor], metrics_mod.Metric] | None = None

    # ------------------------------------------------------------------ before training
    def check(self) -> None:
        """One training batch through the model, the loss and (when distilling) the teacher,
        in eval mode; then one ``old_val`` batch through the original head."""
        run = self.run
        batch = run.feature_cache.first_batch(run.train_loader, "train")
        with _eval_mode(run.model), torch.no_grad(), recipe.autocast(run.amp_dtype):
            try:
                outputs, targets = run.forward(run.model, batch)
            except Exception as exc:  # the user's model or forward: their exception, with a note
                note_user_error(exc, code_label(run.feature_cache.user_forward, "the model's forward"), batch=batch)
                raise
            logits = logits_of(outputs)
            losses_mod.check_compatibility(logits, targets, run.loss_spec.name if run.loss_spec else
                                           run.loss_fn, **(run.config.loss_kwargs if run.loss_spec else {}))
            if run.val_loader is not None:
                self.fns(logits.float(), targets, old=False)  # names the metric before training
            if run.distillation is not None:
                self._check_teacher(run.run_batch(run.distillation.teacher, batch)[0],
                                    run.distillation.old_answer(logits))
        if run.old_val_loader is not None and self.old is None:
            self._check_old_task()

    @staticmethod
    def _check_teacher(t_logits: torch.Tensor, s_old: torch.Tensor) -> None:
        if tuple(t_logits.shape) != tuple(s_old.shape):
            raise ValueError(
                f"distillation needs teacher and student outputs of the same shape: the teacher gives "
                f"{tuple(t_logits.shape)}, the student {tuple(s_old.shape)}. Give a teacher whose "
                f"outputs match, or turn distillation off"
            )

    @torch.no_grad()
    def _check_old_task(self) -> None:
        """One ``old_val`` batch through the original head: a broken old-task loader fails now,
        not after the first epoch, and the old metric is named before training."""
        run = self.run
        batch = run.feature_cache.first_batch(run.old_val_loader, "old_val")
        with _eval_mode(run.model):
            with run.built.original_head_in(), recipe.autocast(run.amp_dtype):
                logits, targets = run.run_batch(run.model, batch)
            logits = logits.float()
            try:
                loss_fn, metric = self.fns(logits, targets, old=True)
                loss_fn(logits, targets)
                metric(logits, targets)
            except ValueError as exc:
                self.old = None
                head = "the original head" if run.original_head is not None else f"the head {run.head_name!r}"
                raise ValueError(
                    f"old_val cannot be measured through {head}: it gives {tuple(logits.shape)} outputs for targets "
                    f"{tuple(targets.shape)} {targets.dtype} ({exc}). The old task is measured through the head "
                    f"the model had for it: pass the model that still has that head, with RunConfig.head_out "
                    f"for the new task (the engine keeps the original head), or old_val=None"
                ) from exc

    # ------------------------------------------------------------------ measuring
    def evaluate(self, loader: Iterable[Any], old: bool) -> tuple[float, float]:
        """Mean loss and metric over ``loader``; ``old``: the original task, through the original head."""
        run = self.run
        with recipe.HeadSwap(run.model, run.head_name or "", run.original_head if old else None):
            passes = run.feature_cache.batches(loader, "old_val" if old else "val")
            totals = recipe_eval.evaluation_sums(run.model, passes, self._batch,
                                                 lambda logits, targets: self.fns(logits, targets, old),
                                                 run.device, run.amp_dtype)
        if float(totals[2]) == 0:
            raise ValueError(f"the {'old_val' if old else 'val'} loader yielded no batches")
        return recipe_eval.means(totals)

    def _batch(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        run = self.run
        logits, targets = run.run_batch(net, to_device(batch, run.device, non_blocking=True))
        if run.distillation is not None:
            run.distillation.features = None  # what the new head saw is not needed for measuring
        return logits, targets

    def fns(self, logits: torch.Tensor, targets: Any, old: bool) -> tuple[Callable[..., torch.Tensor],
                                                                          Callable[..., Any]]:
        """The loss and the metric of the new task (``old=False``) or the old one, chosen on the
        first batch and named in the run's history."""
        meta = self.run.history.meta
        if old:
            if self.old is None:
                task = metrics_mod.infer_task(logits, targets)
                self.old = (losses_mod.make(OLD_TASK_LOSS[task]), metrics_mod.for_task(task))
                meta[Meta.OLD_METRIC] = self.old[1].name
            return self.old
        if self.metric is None:
            self.metric = metrics_mod.select(self.run.config.metric, self.run.task, logits, targets)
            meta[Meta.METRIC] = self.metric.name
            meta[Meta.HIGHER_IS_BETTER] = self.metric.higher_is_better
        return self.run.loss_fn, self.metric
