"""The training engine: a retraining loop in a background thread that any thread can steer.

``Retrainer`` trains a deep copy of the model it is given (the original is never modified),
in a background thread, so a notebook's kernel stays free: ``pause()``, ``resume()``,
``stop()``, ``freeze()``, ``unfreeze()`` and ``set_lr()`` are flags and queued changes that the
loop applies at the next step boundary. It records a bounded :class:`History` at almost no
cost (see :mod:`retrain_widgets.core.probes`; :mod:`retrain_widgets.core.telemetry` moves the probes
to it) and fires typed events.

The loop, in :meth:`Retrainer._train`, reads top to bottom: for each epoch, for each batch:
apply queued changes, drop the last step's gradients, forward, loss (+ distillation), backward,
L2-SP pull, clipping, the telemetry (probes, the ``BACKWARD_END`` handlers: the alignment probe),
optimizer step (one :class:`~retrain_widgets.core.step.TrainingStep`), scheduler step, the
telemetry again (publish every few steps); validation after each epoch. The engine is one client
of :class:`~retrain_widgets.core.telemetry.Telemetry`, which imports no engine.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .batches import Forward, default_forward, logits_of, to_device
from .builder import apply_stage, build_run
from .config import RunConfig
from .control import Control
from .device import cpu_threads, resolve_device
from .engine_parts import (
    alignment_probe,
    config_record,
    describe,
    new_feature_cache,
    progress_of,
    start_refusal,
    validate,
)
from .errors import TrainingFailed
from .events import Event, EventInfo, State
from .history import History
from .lr_finder import LRFinderResult, run_lr_finder
from .params import scale_lrs
from .recipe import training as recipe
from .runslot import RunBusy, RunSlot
from .step import TrainingStep
from .target_guard import TargetGuard
from .telemetry import Telemetry
from .tree import check_names, freeze, unfreeze
from .validation import Validation

__all__ = ["Retrainer", "RunBusy", "TrainingFailed", "LRFinderResult", "resolve_device", "lr_find"]


class _Stop(Exception):
    """Internal: leave the loop at a step boundary."""


class Retrainer:
    """Retrain a copy of a pretrained model with a new loss, in a background thread.

    Parameters
    ----------
    model
        The pretrained model. It is deep-copied: ``model`` itself is never modified. The copy
        is :attr:`model`.
    config
        A :class:`~retrain_widgets.core.config.RunConfig` (defaults when ``None``).
    train, val, old_val
        Loaders (any re-iterable of batches; ``DataLoader`` typically). ``val`` measures the
        new task after each epoch; ``old_val`` measures the original task (through the
        original head when the head is replaced): forgetting shows there.
    old_train
        Old-task batches for the alignment probe (:mod:`~retrain_widgets.core.alignment`,
        ``RunConfig.alignment_every``); ``old_val`` is used when none is given.
    forward
        ``forward(model, batch) -> (outputs, targets)`` for batches or outputs that are neither
        ``(inputs, targets)`` / ``{"labels": ...}`` nor tensors / ``.logits``. Receives the
        batch already on the training device.
    teacher
        Teacher model for distillation; by default a frozen copy of the original ``model``.
    publish_every, publish_seconds
        Probes reach the history (one host copy) every ``publish_every`` steps or
        ``publish_seconds``, whichever comes first.

    Examples
    --------
    >>> r = Retrainer(model, RunConfig(loss="focal", head_out=1, frozen=["features"]), train, val)
    >>> r.start()          # returns at once
    >>> r.pause(); r.resume(); r.stop()
    >>> history = r.wait()
    """

    HEAVY_BUDGET = Telemetry.HEAVY_BUDGET  # share of wall time for drift + checkpoint

    def __init__(self, model: nn.Module, config: RunConfig | None = None, train: Iterable[Any] | None = None,
                 val: Iterable[Any] | None = None, old_val: Iterable[Any] | None = None, *,
                 old_train: Iterable[Any] | None = None, forward: Forward | None = None, teacher: nn.Module | None = None,
                 publish_every: int = 50, publish_seconds: float = 0.25) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if train is None:
            raise ValueError("Retrainer needs a training loader: Retrainer(model, config, train, val)")
        cfg = copy.copy(config) if config is not None else RunConfig()
        cfg.validate()
        self.config = cfg
        self.pretrained = model
        self.train_loader, self.val_loader, self.old_val_loader = train, val, old_val
        self.forward: Forward = forward or default_forward
        self.device = resolve_device(cfg.device)
        self.name: str | None = None  # a name for comparisons and the store (the studio names its runs)

        # the model to train (a copy, its new head, freezing), optimizer, schedule, loss, teacher
        parts = build_run(model, cfg, train, self.device, teacher=teacher)
        self.built = parts.built
        self.model, self.head_name = parts.built.model, parts.built.head_name
        self.original_head, self.groups = parts.built.original_head, parts.built.groups
        self.stage = 0
        self.n_stages = len(self.groups) if cfg.gradual else 1
        self.optimizer, self.total_steps, self.scheduler = parts.optimizer, parts.total_steps, parts.scheduler
        self._metric_driven = parts.metric_driven
        self.loss_fn, self.loss_spec, self.task = parts.loss_fn, parts.loss_spec, parts.task
        self.amp_dtype, self.scaler, self.distillation = parts.amp_dtype, parts.scaler, parts.distillation
        self.teacher = self.distillation.teacher if self.distillation is not None else None
        self._init_telemetry(publish_every, publish_seconds)
        self._init_state()
        self.feature_cache = new_feature_cache(self, model)
        self.forward = self.feature_cache.forward
        self.telemetry.on(Event.TRAINABLE_CHANGE, self.feature_cache.follow)
        self.validation = Validation(self)
        l2sp = recipe.pretrained_reference(self.model, self.head_name) if cfg.l2sp > 0 else None
        self.train_step = TrainingStep(self.optimizer, self.batch_loss, scaler=self.scaler, grad_clip=cfg.grad_clip,
                                       l2sp=(*l2sp, cfg.l2sp) if l2sp is not None else None,
                                       after_backward=self._backward_end)
        old_batches = old_train if old_train is not None else old_val  # the alignment probe's old task
        self.alignment = (alignment_probe(self, old_batches)
                          if cfg.alignment_every is not None and old_batches is not None else None)

    def _init_telemetry(self, publish_every: int, publish_seconds: float) -> None:
        """Per-step probes, drift, the NaN guard's checkpoint, the history and the events: the
        run's :class:`Telemetry` (the names below are the telemetry's, kept for readers of the run)."""
        tel = self.telemetry = Telemetry(self.model, device=self.device, param_groups=self.optimizer.param_groups,
                                         publish_every=publish_every, publish_seconds=publish_seconds,
                                         heavy_budget=self.HEAVY_BUDGET)
        self.layer_names, self.lr_group_names = tel.layer_names, tel.lr_group_names
        self.publish_every, self.publish_seconds = tel.publish_every, tel.publish_seconds
        self.probes, self.heavy, self.history, self.handlers = tel.probes, tel.heavy, tel.history, tel.handlers
        self.drift, self.checkpoint = self.heavy.drift, self.heavy.checkpoint
        describe(self)
        self.target_guard = TargetGuard(self)  # the training loss, its targets checked (late bad labels)
        tel.guards.append(self.target_guard.check)  # on CUDA read with the probes, at each publish

    def _init_state(self) -> None:
        self.step = 0
        self.epoch = 0
        self.state = State.IDLE
        self.error: BaseException | None = None
        self.message = ""
        self.handler_errors = self.handlers.errors
        self.control = Control()  # stop, pause, resume and queued changes, applied at step boundaries
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = False
        self._slot = RunSlot("this run")
        self._t_start = 0.0

    # ================================================================== public control
    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Callable[[EventInfo], Any]:
        """Call ``handler(info)`` on ``event`` (from the training thread). Returns ``handler``.

        A handler that raises is reported in :attr:`handler_errors` and with a warning; the run
        goes on.
        """
        return self.telemetry.on(event, handler)

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None:
        self.telemetry.off(event, handler)

    def check(self) -> None:
        """Run one batch through the model and the loss before training.

        Raises :class:`~retrain_widgets.core.losses.LossMismatchError` when outputs, targets
        and loss do not fit, ``ValueError`` for an empty loader or teacher/student outputs of
        different shapes. An exception from the user's own forward, model or loss is re-raised
        as it is, with a note saying where and on which shapes. Nothing is trained and the
        model's state is unchanged.
        """
        self.validation.check()
        self._checked = True

    @property
    def checked(self) -> bool:
        """Whether :meth:`check` has passed."""
        return self._checked

    @property
    def metric_name(self) -> str | None:
        """The validation metric's name, once chosen (by :meth:`check` or the first validation)."""
        return self.validation.metric.name if self.validation.metric is not None else None

    def start(self) -> Retrainer:
        """Check the first batch, then train in a background thread; returns at once. One start at a
        time: from another thread meanwhile, or once started, :class:`RunBusy` (a ``ValueError``)."""
        with self._slot.claim(lambda: start_refusal(self)):
            self.check()
            self.control.reset()
            self._done.clear()
            self._set_state(State.RUNNING)
            self._thread = threading.Thread(target=self._run, name="retrain_widgets-train", daemon=True)
            self._thread.start()
        return self

    def pause(self) -> None:
        """Pause at the next step boundary (the model is consistent while paused)."""
        if self.state == State.RUNNING:
            self.control.pause()

    def resume(self) -> None:
        """Continue a paused run."""
        self.control.resume()

    def stop(self) -> None:
        """Stop at the next step boundary; returns at once (use :meth:`wait` to wait)."""
        self.control.stop()

    def wait(self, timeout: float | None = None) -> History:
        """Block until the run ends; return the history or re-raise what made it fail.

        Raises
        ------
        TimeoutError
            When ``timeout`` seconds pass first (the run goes on).
        KeyboardInterrupt
            On an interrupt: the run is stopped first; model and history are kept.
        """
        if self._thread is None:
            raise RuntimeError("the run has not started: call start() (or fit())")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # short waits, so an interrupt is handled at once
            while not (done := self._done.wait(0.1)):
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except KeyboardInterrupt:
            self.stop()
            self._done.wait()
            raise KeyboardInterrupt(
                f"interrupted: training stopped at step {self.step} of {self.total_steps}; the trained model "
                f"(.model) and the history (.history) are kept"
            ) from None
        if not done:
            raise TimeoutError(f"the run is still {self.state.value} after {timeout} s (step {self.step})")
        if self.error is not None:
            raise self.error
        return self.history

    def fit(self) -> History:
        """Train to the end in the background thread and wait for it (``start()`` + ``wait()``)."""
        self.start()
        return self.wait()

    @property
    def thread(self) -> threading.Thread | None:
        """The training thread of the last :meth:`start` (``None`` before the first)."""
        return self._thread

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the run's last event handlers (the final frame) have run."""
        return self._thread is not None and not self._done.is_set()

    @property
    def started_at(self) -> float:
        """``time.perf_counter()`` when training began (0.0 before)."""
        return self._t_start

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the thread to end, without raising; True when it has."""
        return self._done.wait(timeout) if self._thread is not None else True

    def freeze(self, names: str | Iterable[str]) -> None:
        """Freeze modules now (idle) or at the next step boundary (running)."""
        names = check_names(self.model, names)
        self._change(lambda: freeze(self.model, names, train_bn=self.config.train_bn), f"froze {', '.join(names)}")

    def unfreeze(self, names: str | Iterable[str] | None = None) -> None:
        """Unfreeze modules (all when ``None``) now or at the next step boundary."""
        names_l = None if names is None else check_names(self.model, names)
        self._change(lambda: unfreeze(self.model, names_l), f"unfroze {', '.join(names_l or ['everything'])}")

    def set_lr(self, lr: float) -> None:
        """Scale every group's LR (and the schedule) so the top group's LR is ``lr`` now."""
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self._change(lambda: scale_lrs(self.optimizer, self.scheduler, float(lr)), f"lr set to {lr:g}", trainable_changes=False)

    def snapshot(self) -> Any:
        """An immutable snapshot of the history (see :class:`~retrain_widgets.core.history.History`)."""
        return self.history.snapshot()

    @property
    def steps_per_second(self) -> float:
        """Training speed, measured at each publish (smoothed; 0.0 before the first)."""
        return self.telemetry.steps_per_second

    @property
    def progress(self) -> dict[str, Any]:
        """Step, total, epoch, steps/s and ETA in seconds, state and stage (plain numbers, cheap)."""
        return progress_of(self)

    # ================================================================== what the store and comparisons read
    @property
    def global_step(self) -> int:
        """The optimizer steps done (:attr:`step`; the name the :class:`~retrain_widgets.core.run.Run`
        protocol reads)."""
        return self.step

    @property
    def head_out(self) -> int | None:
        """The new head's outputs (``None`` when the model's own head was kept)."""
        return self.config.head_out if self.original_head is not None else None

    def config_record(self) -> tuple[dict[str, Any], str]:
        """(the config as a dict, a note saying what could not be stored)."""
        return config_record(self.config)

    # ================================================================== LR finder
    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
                diverge: float = 4.0, beta: float = 0.98) -> LRFinderResult:
        """fastai's LR range test on this run's model, optimizer settings and loss.

        The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps`` steps;
        the test stops early when the smoothed loss exceeds ``diverge`` times its minimum.
        Weights, BatchNorm statistics and optimizer state are restored afterwards. Runs on
        the calling thread and only when the run is not active (see
        :mod:`retrain_widgets.core.lr_finder`).
        """
        return run_lr_finder(self, start_lr, end_lr, num_steps, diverge, beta)

    # ================================================================== the thread
    def _run(self) -> None:
        try:
            self._run_guarded()
        finally:
            self.telemetry.sync_guard("default")

    def _run_guarded(self) -> None:
        try:
            if self.step == 0:
                # the run's randomness starts here, the same on every rerun, whatever was drawn since
                # the Retrainer was made (the check, other runs sharing the loader)
                recipe.seed_run(self.config.seed, self.train_loader)
            with cpu_threads(self.device):
                self._t_start = time.perf_counter()
                self.telemetry.restart(self.step, self._t_start)
                self._train()
            self._finish(State.STOPPED if self.control.should_stop and self.step < self.total_steps
                         else State.FINISHED)
        except _Stop:
            self._finish(State.STOPPED)
        except TrainingFailed as exc:
            self._fail(exc)
        except torch.OutOfMemoryError as exc:
            self._fail(self.telemetry.out_of_memory(self.step), cause=exc)
        except BaseException as exc:  # noqa: BLE001 - user code: recorded and re-raised by wait()
            with contextlib.suppress(Exception):
                self.telemetry.publish()
            self._fail(exc)

    def _train(self) -> None:
        cfg, tel = self.config, self.telemetry
        self.model.train()
        while self.epoch < cfg.epochs and self.step < self.total_steps:
            if cfg.gradual:
                self._maybe_next_stage()
            n_batches = 0
            tel.sync_guard("error")
            for batch in self.feature_cache.batches(self.train_loader, "train"):
                self._boundary()
                batch = to_device(batch, self.device, non_blocking=True)
                self.train_step(batch)  # its gradients reach the telemetry before the optimizer step
                self.step += 1
                n_batches += 1
                if not self._metric_driven and self.step < self.total_steps:
                    self.scheduler.step()
                tel.step_end(self.step)
                if self.step >= self.total_steps:
                    break
            tel.sync_guard("default")
            if n_batches == 0:
                raise ValueError("the training loader yielded no batches: check the dataset and batch size")
            self.epoch += 1
            self._validate()
        if self.step == 0:
            raise ValueError("no training steps were run: check epochs, max_steps and the loader")

    def _backward_end(self, loss: torch.Tensor) -> None:
        """The step's gradients are final: the telemetry's probes, handlers and NaN guard."""
        self.telemetry.backward_end(self.step, loss)

    # ================================================================== one step's pieces
    def batch_loss(self, batch: Any) -> torch.Tensor:
        """The training loss of one batch (already on the device), distillation included, as the
        training step computes it (:func:`retrain_widgets.core.recipe.training.training_loss`)."""
        return recipe.training_loss(self.model, batch, self.run_batch, self.target_guard, self.amp_dtype,
                                    self.distillation)

    _loss = batch_loss

    def run_batch(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """``(logits, targets)`` of a batch already on the device, through this run's ``forward``."""
        outputs, targets = self.forward(net, batch)
        return logits_of(outputs), targets

    # ================================================================== boundaries
    def _boundary(self) -> None:
        """Apply queued changes; honour pause and stop. Called before every step."""
        if self.control.boundary(self._paused, self._resumed):
            raise _Stop

    def _paused(self) -> None:
        self.telemetry.publish()
        self._set_state(State.PAUSED)

    def _resumed(self) -> None:
        self.telemetry.restart(self.step)
        if not self.control.should_stop:
            self._set_state(State.RUNNING)

    def _change(self, action: Callable[[], None], text: str, trainable_changes: bool = True) -> None:
        apply = functools.partial(self.telemetry.change, action, "change", text, trainable_changes)
        if self.state.active:
            self.control.queue(apply)
        else:
            apply()

    # ================================================================== gradual unfreezing
    def _maybe_next_stage(self) -> None:
        stage = min(self.epoch // self.config.unfreeze_every, len(self.groups) - 1)
        if stage == self.stage:
            return
        group = self.groups[len(self.groups) - 1 - stage].name
        self.telemetry.change(lambda: apply_stage(self.model, self.groups, stage, self.config), "stage",
                              f"stage {stage}: unfroze {group}")
        self.stage = stage
        self._fire(Event.STAGE_CHANGE, stage=stage, group=group)

    @property
    def _ckpt_step(self) -> int:
        return self.checkpoint.step

    # ================================================================== validation
    def _validate(self) -> None:
        """The epoch's measurements into the telemetry (:func:`~.engine_parts.validate`)."""
        validate(self)

    # ================================================================== state and events
    def _set_state(self, state: State) -> None:
        self.state = state
        self._fire(Event.STATE_CHANGE, state=state)

    def _finish(self, state: State) -> None:
        self.telemetry.finish(self.step, state.value)
        self._set_state(state)
        self._done.set()

    def _fail(self, exc: BaseException, cause: BaseException | None = None) -> None:
        if cause is not None:
            exc.__cause__ = cause
        self.error = exc
        self.message = f"{type(exc).__name__}: {exc}"
        self.telemetry.fail(self.step, exc, self.message)
        self._set_state(State.FAILED)
        self._done.set()

    def _fire(self, event: Event, **data: Any) -> None:
        self.telemetry.step, self.telemetry.epoch = self.step, self.epoch
        self.telemetry.fire(event, **data)

    # ================================================================== helpers
    def __repr__(self) -> str:
        return (f"Retrainer(state={self.state.value}, step={self.step}/{self.total_steps}, "
                f"loss={self.history.meta.get('loss')!r}, device={self.device})")


def lr_find(model: nn.Module, config: RunConfig, train: Iterable[Any], **kwargs: Any) -> LRFinderResult:
    """Run the LR range test on a copy of ``model`` (see :meth:`Retrainer.lr_find`)."""
    forward = kwargs.pop("forward", None)
    return Retrainer(model, config, train, forward=forward).lr_find(**kwargs)
