"""The studio's checks before any run: the working copy (what the layer tree and the loss check look
at), the loss on one batch, the LR preview and the LR finder.

:class:`StudioChecks` is a part of :class:`~retrain_widgets.HeadlessStudio` (its base class): it
reads the studio's config, model and loaders, keeps :attr:`~StudioChecks.mismatch` and
:attr:`~StudioChecks.lr_suggestion`, and announces what it finds on the studio's topics
(:mod:`retrain_widgets.topics`). :func:`loss_verdict` is the loss check itself, as a function.
Plain Python and torch: no widget is imported here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .choices import apply_freezing
from .core import losses, lr_preview, schedules
from .core.batches import Forward, first_batch, logits_of
from .core.builder import build_model, count_steps
from .core.config import RunConfig
from .core.engine import Retrainer
from .core.losses import LossMismatchError
from .core.tree import find_head_or_none, get_module
from .loss_fixes import next_fix
from .plots import lr_finder_png, lr_preview_png
from .topics import ErrorShown, LossVerdict, LrFound, Payload, Preview, WorkChanged

__all__ = ["StudioChecks", "loss_verdict"]


def loss_verdict(forward: Forward, model: nn.Module, batch: Callable[[], Any], cfg: RunConfig) -> LossVerdict:
    """Run ``cfg``'s loss on one batch (``batch()``) through ``model`` (in eval mode, without
    gradients)."""
    was = model.training
    model.eval()
    kwargs = cfg.loss_kwargs if isinstance(cfg.loss, str) else {}
    try:
        with torch.no_grad():
            outputs, targets = forward(model, batch())
            logits = logits_of(outputs)
            losses.check_compatibility(logits, targets, cfg.loss, **kwargs)
    except LossMismatchError as exc:
        action = next_fix(logits, targets, cfg.loss, kwargs, exc)
        return LossVerdict(False, str(exc), action.head_out if action else None, exc, action)
    except Exception as exc:  # noqa: BLE001 - user model/forward code: shown, not raised
        return LossVerdict(False, f"could not run one batch: {type(exc).__name__}: {exc}")
    finally:
        model.train(was)
    is_tensor = isinstance(targets, torch.Tensor)
    shape_t = tuple(targets.shape) if is_tensor else "?"
    dtype_t = str(targets.dtype).replace("torch.", "") if is_tensor else ""
    name = cfg.loss if isinstance(cfg.loss, str) else "custom loss"
    return LossVerdict(True, f"'{name}' fits: outputs {tuple(logits.shape)}, targets {shape_t} {dtype_t}")


class StudioChecks:
    """The checks of a studio's config on its working copy (see the module). The studio provides
    the attributes annotated here."""

    pretrained: nn.Module
    train_loader: Iterable[Any]
    forward: Forward
    work: nn.Module
    mismatch: LossMismatchError | None
    lr_suggestion: float | None
    shown_error: BaseException | None
    _config: RunConfig
    _probe_batch: Any
    emit: Callable[[Payload], None]
    status: Callable[..., None]
    set: Callable[..., RunConfig]
    busy: Callable[[], bool]

    # ================================================================== the working copy
    def working_copy(self, cfg: RunConfig | None = None) -> nn.Module:
        """A copy of the pretrained model with the head of ``cfg`` (default: the config), for the
        tree and the checks (:func:`~retrain_widgets.core.builder.build_model`, freezing left to
        :meth:`refresh_work`; no LoRA adapters: the tree marks the chosen layers on the model as it is)."""
        cfg = cfg or self._config
        with torch.random.fork_rng(devices=[]):  # the head's seed moves neither the user's RNG nor a run's
            try:
                return build_model(self.pretrained, cfg, apply_freezing=False, adapters=False).model
            except ValueError as exc:  # head_out on a model without a Linear head: shown, the model kept
                self.status(f"✗ {exc}", error=True)
                return copy.deepcopy(self.pretrained)

    def refresh_work(self) -> None:
        """Apply the config's freezing to the working copy."""
        try:
            apply_freezing(self.work, self._config)
        except ValueError as exc:
            self.status(f"✗ {exc}", error=True)
        self.emit(WorkChanged())

    def head_name(self) -> str | None:
        return self._config.head or find_head_or_none(self.work)

    def head_outputs(self) -> Any:
        """Outputs of the working copy's head (``"?"`` when there is no head to read)."""
        head = self.head_name()
        return getattr(get_module(self.work, head), "out_features", "?") if head else "?"

    # ================================================================== loss check
    def probe_batch(self) -> Any:
        """The first training batch (read once), for the loss check."""
        if self._probe_batch is None:
            device = next((p.device for p in self.pretrained.parameters()), torch.device("cpu"))
            self._probe_batch = first_batch(self.train_loader, device)
        return self._probe_batch

    def check_loss(self) -> LossMismatchError | None:
        """Run the loss on one batch through the working model; announce the verdict.

        Returns the mismatch (also kept in :attr:`mismatch`), or ``None`` when it fits.
        """
        verdict = loss_verdict(self.forward, self.work, self.probe_batch, self._config)
        self.mismatch = verdict.mismatch
        self.emit(verdict)
        if isinstance(self.shown_error, LossMismatchError):
            self.emit(ErrorShown(None))  # the refused Start's mismatch: the check's own verdict replaces it
        return self.mismatch

    def replace_head(self) -> None:
        """Take the head size the loss check asks for."""
        if self.mismatch is not None and self.mismatch.head_out is not None:
            self.set(head_out=self.mismatch.head_out)

    # ================================================================== schedule preview, LR finder
    def total_steps(self) -> int:
        """Optimizer steps of a run with the current config (:func:`~retrain_widgets.core.builder.count_steps`;
        ``max_steps`` or 1 for a loader that cannot tell)."""
        try:
            return count_steps(self.train_loader, self._config)
        except ValueError:
            return self._config.max_steps or 1

    def update_preview(self) -> Preview:
        """Redraw the LR preview of the chosen schedule over the run's steps."""
        cfg = self._config
        total = self.total_steps()
        try:
            steps, lrs = lr_preview.sampled(cfg.schedule, total, cfg.lr, **cfg.schedule_kwargs)  # bounded cost
        except ValueError as exc:
            preview = Preview(None, str(exc), error=True)
        else:
            note = f"LR from {lrs[0]:.2e} to {lrs[-1]:.2e}, peak {max(lrs):.2e}."
            if schedules.get(cfg.schedule).metric_driven:
                note += (" Metric-driven: the LR drops when the validation loss stops improving, so the "
                         "preview is flat.")
            preview = Preview(lr_preview_png(lrs, steps=steps, title=f"{cfg.schedule}: LR over {total:,} steps"),
                              note)
        self.emit(preview)
        return preview

    def find_lr(self, **kwargs: Any) -> Any:
        """Run the LR range test on a copy of the model with the current config. Refused (``None``, said
        on the status line) while a run or what-ifs go: it trains too, on the kernel's thread, with the
        same loader and the process's random generator that the run's batches and dropout draw from."""
        if self.busy():
            self.status("✗ the LR finder trains a copy of the model: not while a run or what-ifs go (one at a "
                        "time). Use it before Start, or Stop first.", error=True)
            return None
        self.status("running the LR finder…")
        try:
            r = Retrainer(self.pretrained, self._config, self.train_loader, forward=self.forward)
            result = r.lr_find(**kwargs)
        except Exception as exc:  # noqa: BLE001 - shown in the views
            self.emit(ErrorShown(exc))
            return None
        self.lr_suggestion = result.suggestion
        self.emit(LrFound(result, lr_finder_png(result)))
        self.status(f"LR finder: steepest descent at {result.suggestion:.2e} (minimum / 10: "
                    f"{result.min_lr_div10:.2e}).")
        return result

    def use_lr_suggestion(self) -> None:
        if self.lr_suggestion is not None:
            self.set(lr=min(1.0, self.lr_suggestion))
