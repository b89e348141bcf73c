"""Telemetry any training loop can feed: step probes, drift and the NaN guard's checkpoint, the
history, publishing on its cadence, typed events and the NaN guard's detection.

A loop tells its :class:`Telemetry` where it is, and nothing else::

    tel = Telemetry(model, device=device, param_groups=optimizer.param_groups)
    tel.restart(step)                      # training starts (or resumes): time the next publish
    for batch in loader:
        loss = ...; loss.backward()
        tel.backward_end(step, loss)       # gradients are this step's: probes, BACKWARD_END handlers
        optimizer.step(); step += 1
        tel.step_end(step)                 # STEP_END handlers; publish when due
    tel.epoch_end(step, epoch, {"val_loss": ...})
    tel.change(lambda: freeze(...), "change", "froze features")   # the trainable set changed
    tel.finish(step, "finished")

It imports no engine: the built-in :class:`~retrain_widgets.core.engine.Retrainer` is one client,
a watched user loop or a framework's callback another. Cost: per step, the probes' device
operations (one fused norm, one stack: :class:`~retrain_widgets.core.probes.StepProbes`); per
publish, one host copy (every ``publish_every`` steps or ``publish_seconds``, whichever first);
drift and the checkpoint within ``heavy_budget`` of the wall time.

With :attr:`Telemetry.sync_check` on CUDA, the steps between publishes can run under
``torch.cuda.set_sync_debug_mode("error")`` (:meth:`Telemetry.sync_guard`): any host sync there
raises (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import HeavyProbes
from .errors import TrainingFailed
from .events import Event, EventInfo, Handlers
from .history import History
from .names import Meta, Series
from .probes import StepProbes
from .tree import parameterised_layers

__all__ = ["Telemetry", "lr_groups"]


def lr_groups(param_groups: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The first optimizer group of each layer group, by name (one LR column each)."""
    first: dict[str, Mapping[str, Any]] = {}
    for g in param_groups:
        first.setdefault(g.get("layer_group", g.get("name", str(len(first)))), g)
    return first


class Telemetry:
    """Probes, history, publishing and events of one run, whatever its loop.

    Parameters
    ----------
    model
        The model being trained (its parameterised layers are the history's layers).
    device
        Where the probes' buffers live (the training device).
    param_groups
        The optimizer's groups: one LR column per layer group (``group_lr``), the last one's LR is
        ``lr``. Empty: no LR series.
    history
        The history to write (a new one when ``None``).
    publish_every, publish_seconds
        Probes reach the history (one host copy) every ``publish_every`` steps or
        ``publish_seconds``, whichever comes first.
    heavy_budget
        Share of wall time drift + checkpoint may take.
    """

    HEAVY_BUDGET = 0.005

    def __init__(self, model: nn.Module, *, device: torch.device, param_groups: Iterable[Mapping[str, Any]] = (),
                 history: History | None = None, publish_every: int = 50, publish_seconds: float = 0.25,
                 heavy_budget: float = HEAVY_BUDGET) -> None:
        layers = parameterised_layers(model)
        self.device = device
        self.layer_names = tuple(name for name, _ in layers)
        groups = lr_groups(param_groups)
        self.lr_group_names = tuple(groups)
        self.publish_every = max(1, int(publish_every))
        self.publish_seconds = float(publish_seconds)
        self.probes = StepProbes(layers, self.publish_every, device, lr_groups=list(groups.values()))
        self.heavy = HeavyProbes(model, layers, heavy_budget)
        self.history = history if history is not None else History()
        self.handlers = Handlers()
        self.step = 0
        self.epoch = 0
        self.sync_check = False  # fail on any host sync between publishes (CUDA only)
        # checks a loop defers to the publish (no host sync per step), read with the probes: each
        # returns None, or the exception (with its ``step``) that ends the run there
        self.guards: list[Callable[[], Any]] = []
        self.last = (0, 0.0)  # (step, perf_counter time) of the last publish
        self.steps_per_second = 0.0

    # ================================================================== events
    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Callable[[EventInfo], Any]:
        """Call ``handler(info)`` on ``event``; a handler that raises is recorded, the run goes on."""
        return self.handlers.on(event, handler)

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None:
        self.handlers.off(event, handler)

    def fire(self, event: Event, **data: Any) -> None:
        self.handlers.fire(event, self.step, self.epoch, data)

    # ================================================================== what a loop calls
    def restart(self, step: int, now: float | None = None) -> None:
        """Time the next publish (and the rate) from now: training starts or resumes at ``step``."""
        self.step = step
        self.last = (step, time.perf_counter() if now is None else now)

    def backward_end(self, step: int, loss: torch.Tensor) -> None:
        """This step's gradients are in ``.grad`` (after backward, clipping and the loop's own
        changes, before the optimizer step): the ``BACKWARD_END`` handlers (the alignment probe),
        then the step's loss and gradient norms into the probes' buffer (device operations only).

        On the CPU a non-finite loss is the NaN guard's at once (free there); on an accelerator it
        is found at the next publish, without a host sync per step."""
        self.step = step
        self.handlers.fire(Event.BACKWARD_END, step, self.epoch, {})
        self.probes.record(step, loss)
        if self.device.type == "cpu" and not math.isfinite(float(loss.detach())):
            self.diverged(step)

    def optimizer_step(self, step: int) -> None:
        """At the optimizer step (before it), for loops that report their loss only after it (see
        :meth:`loss`): the ``BACKWARD_END`` handlers and this step's gradient norms."""
        self.step = step
        self.handlers.fire(Event.BACKWARD_END, step, self.epoch, {})
        self.probes.record_gradients(step)

    def loss(self, step: int, loss: torch.Tensor | float) -> None:
        """The loss of the step :meth:`optimizer_step` began: a tensor, or a number. The NaN guard's
        check is immediate when the host holds the value (a number, or any loss on the CPU, where
        reading it is free); on an accelerator a tensor's waits for the next publish, as in
        :meth:`backward_end`."""
        if isinstance(loss, torch.Tensor) and not loss.is_cpu:
            self.probes.record_loss(loss)
            return
        value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        self.probes.record_loss_value(value)
        if not math.isfinite(value):
            self.diverged(step)

    def step_end(self, step: int) -> None:
        """After the optimizer step (``step`` counts the steps done): ``STEP_END`` handlers, and a
        publish when one is due."""
        self.step = step
        self.handlers.fire(Event.STEP_END, step, self.epoch, {})
        if self.due:
            self.publish()

    def epoch_end(self, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
        """An epoch ended (``epoch`` of them done): what the probes hold is published, ``metrics``
        (``val_loss``, ``old_metric``, ...) go into the history at ``step``; ``EPOCH_END`` fires."""
        self.step, self.epoch = step, epoch
        self.publish(force=True)
        for name, value in metrics.items():
            self.history.append(name, [step], [value])
        self.handlers.fire(Event.EPOCH_END, step, epoch, dict(metrics))

    def change(self, action: Callable[[], None], kind: str, text: str, trainable_changes: bool = True) -> None:
        """Apply a change between two steps, marked in the history as ``kind``; when it changes the
        trainable set, see :meth:`trainable_changed`."""
        if trainable_changes:
            self.flush()
        action()
        if trainable_changes:
            self.trainable_changed()
        self.history.mark(self.step, kind, text)

    def trainable_changed(self) -> None:
        """The trainable set changed (the probes' buffer must be empty: :meth:`flush` first): the
        probes, drift and the checkpoint follow the new set, then ``TRAINABLE_CHANGE`` handlers
        (the feature cache, the alignment probe) do."""
        self.probes.refresh()
        self.heavy.follow()  # drift and the checkpoint follow what can move now
        self.handlers.fire(Event.TRAINABLE_CHANGE, self.step, self.epoch, {})

    def finish(self, step: int, state: str) -> None:
        """The run ended in ``state``: the last probes published, the end marked."""
        self.step = step
        self.publish(force=True)
        self.history.mark(step, "state", state)

    def fail(self, step: int, exc: BaseException, message: str) -> None:
        """The run failed: ``message`` and the traceback into the history."""
        self.history.meta[Meta.ERROR] = message
        self.history.meta[Meta.TRACEBACK] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.history.mark(step, "state", f"failed: {message}")

    # ================================================================== publishing
    @property
    def due(self) -> bool:
        """Whether the probe buffer is full or ``publish_seconds`` have passed."""
        return self.probes.full or time.perf_counter() - self.last[1] > self.publish_seconds

    def flush(self) -> None:
        """Publish what the probes hold, if anything (before the trainable set changes)."""
        if self.probes.n:
            self.publish()

    def publish(self, force: bool = False) -> None:
        """Move the buffered probes to the history (one host copy); check for divergence.

        Drift and the checkpoint are measured when their time budget allows, or ``force``."""
        mode = self.sync_guard("default")
        steps, loss, layer_norms, lrs = self.probes.flush()
        for guard in self.guards:
            bad = guard()
            if bad is not None:  # the steps before the bad one are kept, the weights put back
                keep = steps < bad.step
                self.record(steps[keep], loss[keep], layer_norms[keep], lrs[keep])
                self.heavy.checkpoint.restore()
                raise bad
        now = time.perf_counter()
        if len(steps):
            bad = ~np.isfinite(loss)
            if bad.any():
                n_ok = int(np.argmax(bad))
                self.record(steps[:n_ok], loss[:n_ok], layer_norms[:n_ok], lrs[:n_ok])
                self.diverged(int(steps[n_ok]))
            self.record(steps, loss, layer_norms, lrs)
            last_step, last_t = self.last
            if now > last_t and self.step > last_step:
                rate = (self.step - last_step) / (now - last_t)
                self.steps_per_second = rate if self.steps_per_second == 0 else 0.7 * self.steps_per_second + 0.3 * rate
            self.last = (self.step, now)
            drift = self.heavy.measure(self.step, now, force)
            if drift is not None:
                self.history.append_layers(Series.DRIFT, [self.step], self.layer_names, drift[None, :])
            self.handlers.fire(Event.PUBLISH, self.step, self.epoch, {})
        self.sync_guard(mode)

    def record(self, steps: np.ndarray, loss: np.ndarray, layer_norms: np.ndarray, lrs: np.ndarray) -> None:
        """One published chunk of per-step probes into the history."""
        if not len(steps):
            return
        history = self.history
        history.append(Series.TRAIN_LOSS, steps, loss)
        if lrs.shape[1]:
            history.append(Series.LR, steps, lrs[:, -1])  # the top (head) group's LR
            history.append_layers(Series.GROUP_LR, steps, self.lr_group_names, lrs)
        history.append_layers(Series.GRAD_NORM, steps, self.layer_names, layer_norms)

    # ================================================================== the NaN guard
    def diverged(self, step: int) -> None:
        """The NaN guard: put back the checkpoint (the last weights whose losses were all finite,
        saved at a publish) and raise :class:`TrainingFailed`, saying so."""
        checkpoint = self.heavy.checkpoint
        checkpoint.restore()
        self.probes.n = 0
        raise TrainingFailed(
            f"the loss became NaN or infinite at step {step} (epoch {self.epoch + 1}); training stopped and the "
            f"weights were restored to step {checkpoint.step}, the last whose losses were all finite. Lower the "
            f"learning rate, add grad_clip, or check the data and the loss"
        )

    def out_of_memory(self, step: int) -> TrainingFailed:
        """After running out of memory: the checkpoint put back, the allocator's cache emptied;
        the :class:`TrainingFailed` that says what to do."""
        checkpoint = self.heavy.checkpoint
        checkpoint.restore()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return TrainingFailed(
            f"out of memory at step {step} on {self.device}: lower the batch size, set amp=True, or "
            f"freeze more layers. Weights restored to step {checkpoint.step}.")

    def sync_guard(self, mode: str | int | None) -> str | int | None:
        """With :attr:`sync_check` on CUDA: set the sync debug mode (``"error"`` makes any host
        sync raise); return the previous one. Otherwise nothing, and ``None``."""
        if mode is None or not (self.sync_check and self.device.type == "cuda"):
            return None
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(mode)
        return previous
