"""The training engine: a retraining loop in a background thread that any thread can steer.

``Retrainer`` trains a deep copy of the model it is given (the original is never modified),
in a background thread, so a notebook's kernel stays free: ``pause()``, ``resume()``,
``stop()``, ``freeze()``, ``unfreeze()`` and ``set_lr()`` are flags and queued changes that the
loop applies at the next step boundary. It records a bounded :class:`History` at almost no
cost (see :mod:`retrain_widgets.core.probes`; :mod:`retrain_widgets.core.publisher` moves the probes
to it) and fires typed events.

The loop, in :meth:`Retrainer._train`, reads top to bottom: for each epoch, for each batch:
apply queued changes, drop the last step's gradients, forward, loss (+ distillation), backward,
L2-SP pull, clipping, the ``BACKWARD_END`` handlers (the alignment probe), probes, optimizer
step, scheduler step, publish every few steps; validation after each epoch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .alignment import AlignmentProbe
from .batches import Forward, default_forward, logits_of, to_device
from .builder import apply_stage, build_run
from .checkpoint import HeavyProbes
from .config import RunConfig
from .device import cpu_threads, resolve_device
from .events import Event, EventInfo, Handlers, State
from .feature_cache import FeatureCache
from .history import History
from .lr_finder import LRFinderResult, lr_find, run_lr_finder
from .params import scale_lrs
from .probes import StepProbes
from .publisher import Publisher
from .recipe import training as recipe
from .runslot import RunBusy, RunSlot
from .target_guard import TargetGuard
from .tree import check_names, freeze, parameterised_layers, unfreeze
from .validation import Validation

__all__ = ["Retrainer", "RunBusy", "TrainingFailed", "LRFinderResult", "resolve_device", "lr_find"]


class TrainingFailed(RuntimeError):
    """The run failed (non-finite loss, out of memory, ...); the message says why and what was kept."""


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

    HEAVY_BUDGET = 0.005  # share of wall time for drift + checkpoint

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
        self.publish_every = max(1, int(publish_every))
        self.publish_seconds = float(publish_seconds)

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
        self._init_probes()
        self.feature_cache = _new_feature_cache(self, model)
        self.forward = self.feature_cache.forward
        self._init_state()
        old_batches = old_train if old_train is not None else old_val  # the alignment probe's old task
        self.alignment = (AlignmentProbe.for_run(self, old_batches)
                          if cfg.alignment_every is not None and old_batches is not None else None)

    def _init_probes(self) -> None:
        """Per-step probes, drift, the L2-SP reference, the NaN guard's checkpoint and the history."""
        cfg, net = self.config, self.model
        layers = parameterised_layers(net)
        self.layer_names = tuple(name for name, _ in layers)
        first_of_group: dict[str, dict[str, Any]] = {}
        for g in self.optimizer.param_groups:
            first_of_group.setdefault(g.get("layer_group", g.get("name", str(len(first_of_group)))), g)
        self.lr_group_names = tuple(first_of_group)
        self.probes = StepProbes(layers, self.publish_every, self.device, lr_groups=list(first_of_group.values()))
        self.heavy = HeavyProbes(net, layers, self.HEAVY_BUDGET)
        self.drift, self.checkpoint = self.heavy.drift, self.heavy.checkpoint
        self._l2sp = recipe.pretrained_reference(net, self.head_name) if cfg.l2sp > 0 else None
        self.history = _new_history(self)
        self.target_guard = TargetGuard(self)  # the training loss, its targets checked (late bad labels)

    def _init_state(self) -> None:
        self.step = 0
        self.epoch = 0
        self.state = State.IDLE
        self.error: BaseException | None = None
        self.message = ""
        self.handlers = Handlers()
        self.handler_errors = self.handlers.errors
        self._lock = threading.Lock()
        self._pending: list[Callable[[], None]] = []
        self._stop_flag = threading.Event()
        self._resume_flag = threading.Event()
        self._resume_flag.set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = False
        self._slot = RunSlot("this run")
        self._t_start = 0.0
        self.publisher = Publisher(self)  # probes -> history, on the publish cadence
        self.validation = Validation(self)

    # ================================================================== public control
    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Callable[[EventInfo], Any]:
        """Call ``handler(info)`` on ``event`` (from the training thread). Returns ``handler``.

        A handler that raises is reported in :attr:`handler_errors` and with a warning; the run
        goes on.
        """
        return self.handlers.on(event, handler)

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None:
        self.handlers.off(event, handler)

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
        with self._slot.claim(self._busy):
            self.check()
            self._stop_flag.clear()
            self._resume_flag.set()
            self._done.clear()
            self._set_state(State.RUNNING)
            self._thread = threading.Thread(target=self._run, name="retrain_widgets-train", daemon=True)
            self._thread.start()
        return self

    def _busy(self) -> str:
        if self.state.active:
            return f"this run is already {self.state.value}; stop() it or wait() for it first"
        return (f"this run has ended ({self.state.value}); make a new Retrainer to train again from the "
                f"pretrained weights (its trained model is kept in .model)") if self.state.final else ""

    def pause(self) -> None:
        """Pause at the next step boundary (the model is consistent while paused)."""
        if self.state == State.RUNNING:
            self._resume_flag.clear()

    def resume(self) -> None:
        """Continue a paused run."""
        self._resume_flag.set()

    def stop(self) -> None:
        """Stop at the next step boundary; returns at once (use :meth:`wait` to wait)."""
        self._stop_flag.set()
        self._resume_flag.set()

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
        return self.publisher.steps_per_second

    @property
    def progress(self) -> dict[str, Any]:
        """Step, total, epoch, steps/s and ETA in seconds (plain numbers, cheap)."""
        return self.publisher.progress()

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
            self.publisher.sync_guard("default")

    def _run_guarded(self) -> None:
        try:
            if self.step == 0:
                # the run's randomness starts here, the same on every rerun, whatever was drawn since
                # the Retrainer was made (the check, other runs sharing the loader)
                recipe.seed_run(self.config.seed, self.train_loader)
            with cpu_threads(self.device):
                self._t_start = time.perf_counter()
                self.publisher.restart(self._t_start)
                self._train()
            self._finish(State.STOPPED if self._stop_flag.is_set() and self.step < self.total_steps
                         else State.FINISHED)
        except _Stop:
            self._finish(State.STOPPED)
        except TrainingFailed as exc:
            self._fail(exc)
        except torch.OutOfMemoryError as exc:
            self._fail(self.publisher.out_of_memory(), cause=exc)
        except BaseException as exc:  # noqa: BLE001 - user code: recorded and re-raised by wait()
            with contextlib.suppress(Exception):
                self.publisher.publish()
            self._fail(exc)

    def _train(self) -> None:
        cfg, net, opt = self.config, self.model, self.optimizer
        net.train()
        while self.epoch < cfg.epochs and self.step < self.total_steps:
            if cfg.gradual:
                self._maybe_next_stage()
            n_batches = 0
            self.publisher.sync_guard("error")
            for batch in self.feature_cache.batches(self.train_loader, "train"):
                self._boundary()
                batch = to_device(batch, self.device, non_blocking=True)
                recipe.clear_gradients(opt)
                loss = self.batch_loss(batch)
                recipe.backward(loss, opt, self.scaler)
                if self._l2sp is not None:
                    recipe.pull_to_pretrained(*self._l2sp, cfg.l2sp)
                if cfg.grad_clip is not None:
                    recipe.clip_gradients(opt, cfg.grad_clip)
                self._fire(Event.BACKWARD_END)
                self.probes.record(self.step, loss)
                if self.device.type == "cpu" and not math.isfinite(float(loss.detach())):
                    self.publisher.diverged(self.step)  # free on the CPU; on CUDA checked at publish (no sync)
                recipe.optimizer_step(opt, self.scaler)
                self.step += 1
                n_batches += 1
                if not self._metric_driven and self.step < self.total_steps:
                    self.scheduler.step()
                self._fire(Event.STEP_END)
                if self.publisher.due:
                    self.publisher.publish()
                if self.step >= self.total_steps:
                    break
            self.publisher.sync_guard("default")
            if n_batches == 0:
                raise ValueError("the training loader yielded no batches: check the dataset and batch size")
            self.epoch += 1
            self.publisher.publish(force=True)
            self._validate()
        if self.step == 0:
            raise ValueError("no training steps were run: check epochs, max_steps and the loader")

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
        if self._pending:
            self._apply_pending()
        if not self._resume_flag.is_set() and not self._stop_flag.is_set():
            self.publisher.publish()
            self._set_state(State.PAUSED)
            while not self._resume_flag.wait(0.05):
                if self._pending:
                    self._apply_pending()
            self.publisher.restart()
            if not self._stop_flag.is_set():
                self._set_state(State.RUNNING)
        if self._stop_flag.is_set():
            raise _Stop

    def _change(self, action: Callable[[], None], text: str, trainable_changes: bool = True) -> None:
        apply = functools.partial(self.publisher.change, action, "change", text, trainable_changes)
        if self.state.active:
            with self._lock:
                self._pending.append(apply)
        else:
            apply()

    def _apply_pending(self) -> None:
        with self._lock:
            todo, self._pending = self._pending, []
        for action in todo:
            action()

    # ================================================================== gradual unfreezing
    def _maybe_next_stage(self) -> None:
        stage = min(self.epoch // self.config.unfreeze_every, len(self.groups) - 1)
        if stage == self.stage:
            return
        group = self.groups[len(self.groups) - 1 - stage].name
        self.publisher.change(lambda: apply_stage(self.model, self.groups, stage, self.config), "stage",
                              f"stage {stage}: unfroze {group}")
        self.stage = stage
        self._fire(Event.STAGE_CHANGE, stage=stage, group=group)

    @property
    def _ckpt_step(self) -> int:
        return self.checkpoint.step

    # ================================================================== validation
    def _validate(self) -> None:
        data: dict[str, float] = {}
        if self.val_loader is not None:
            vloss, vmetric = self.validation.evaluate(self.val_loader, old=False)
            data.update(val_loss=vloss, val_metric=vmetric)
        if self.old_val_loader is not None:
            oloss, ometric = self.validation.evaluate(self.old_val_loader, old=True)
            data.update(old_loss=oloss, old_metric=ometric)
        if self._metric_driven:
            self.scheduler.step(data.get("val_loss", float(self.history.series("train_loss")[1][-1])))
        self.publisher.publish_epoch(data)

    # ================================================================== state and events
    def _set_state(self, state: State) -> None:
        self.state = state
        self._fire(Event.STATE_CHANGE, state=state)

    def _finish(self, state: State) -> None:
        self.publisher.publish(force=True)
        self.history.mark(self.step, "state", state.value)
        self._set_state(state)
        self._done.set()

    def _fail(self, exc: BaseException, cause: BaseException | None = None) -> None:
        if cause is not None:
            exc.__cause__ = cause
        self.error = exc
        self.message = f"{type(exc).__name__}: {exc}"
        self.publisher.publish_failure(exc)
        self._set_state(State.FAILED)
        self._done.set()

    def _fire(self, event: Event, **data: Any) -> None:
        self.handlers.fire(event, self.step, self.epoch, data)

    # ================================================================== helpers
    def __repr__(self) -> str:
        return (f"Retrainer(state={self.state.value}, step={self.step}/{self.total_steps}, "
                f"loss={self.history.meta.get('loss')!r}, device={self.device})")


def _new_history(run: Retrainer) -> History:
    """An empty history whose meta describe the run."""
    cfg, history = run.config, History()
    history.meta.update({
        "config": _config_meta(cfg), "device": str(run.device), "total_steps": run.total_steps,
        "layers": list(run.layer_names), "groups": [g.name for g in run.groups],
        "head": run.head_name, "head_replaced": run.original_head is not None,
        "loss": run.loss_spec.name if run.loss_spec else getattr(cfg.loss, "__name__", "custom"),
        "has_val": run.val_loader is not None, "has_old_val": run.old_val_loader is not None,
    })
    if cfg.amp and run.device.type != "cuda":
        history.meta["note"] = f"amp=True has no effect on {run.device.type}; training in float32"
    return history


def _new_feature_cache(run: Retrainer, pretrained: nn.Module) -> FeatureCache:
    """The run's frozen-feature cache: the frozen part's outputs computed once per sample when
    that is safe, its state in ``history.meta["feature_cache"]``; ``run.forward`` becomes its forward."""
    return FeatureCache(run.model, run.config.cache_features, run.forward, run.device,
                        autocast=lambda: recipe.autocast(run.amp_dtype), teacher=run.teacher, pretrained=pretrained,
                        max_mb=run.config.cache_max_mb, meta=run.history.meta, stop=lambda: run._stop_flag.is_set())


def _config_meta(cfg: RunConfig) -> dict[str, Any]:
    try:
        return cfg.to_dict()
    except ValueError:
        return {"loss": getattr(cfg.loss, "__name__", "custom")}
