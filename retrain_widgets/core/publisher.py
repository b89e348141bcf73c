"""Publishing: the run's buffered per-step probes reach its history, one host copy at a time.

A :class:`Publisher` is attached to a :class:`~retrain_widgets.core.engine.Retrainer`. The
training loop asks it after every step whether a publish is due: when the probe buffer is full
(every ``publish_every`` steps) or ``publish_seconds`` have passed, whichever comes first. A
publish copies the chunk to the host (the only sync), stops the run at the first non-finite
loss, updates the steps/s rate, measures drift and saves the NaN guard's checkpoint when their
time budget allows, and fires :attr:`~retrain_widgets.core.events.Event.PUBLISH`.

With :attr:`Publisher.sync_check` on CUDA, the steps between publishes run under
``torch.cuda.set_sync_debug_mode("error")``: any host sync there raises
(``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .events import Event

if TYPE_CHECKING:
    from .engine import Retrainer, TrainingFailed

__all__ = ["Publisher"]


class Publisher:
    """Publishes ``run``'s probes and validation results to ``run.history``; the NaN guard."""

    def __init__(self, run: Retrainer) -> None:
        self.run = run
        self.sync_check = False  # fail on any host sync between publishes (CUDA only)
        self.last = (0, 0.0)  # (step, perf_counter time) of the last publish
        self.steps_per_second = 0.0

    def restart(self, now: float | None = None) -> None:
        """Time the next publish (and the rate) from now, e.g. when training starts or resumes."""
        self.last = (self.run.step, time.perf_counter() if now is None else now)

    @property
    def due(self) -> bool:
        """Whether the probe buffer is full or ``run.publish_seconds`` have passed."""
        return self.run.probes.full or time.perf_counter() - self.last[1] > self.run.publish_seconds

    def flush(self) -> None:
        """Publish what the probes hold, if anything (before the trainable set changes)."""
        if self.run.probes.n:
            self.publish()

    def change(self, action: Callable[[], None], kind: str, text: str, trainable_changes: bool = True) -> None:
        """Apply a change between two steps, marked in the history as ``kind``: when it changes the
        trainable set, the probes' buffer is published first and follows the new set after."""
        if trainable_changes:
            self.flush()
        action()
        if trainable_changes:
            self.run.probes.refresh()
            self.run.heavy.follow()  # drift and the checkpoint follow what can move now
        self.run.history.mark(self.run.step, kind, text)

    def progress(self) -> dict[str, Any]:
        """Step, total, epoch, steps/s and ETA in seconds, state and stage (plain numbers, cheap)."""
        run, sps = self.run, self.steps_per_second
        left = max(0, run.total_steps - run.step)
        return {"step": run.step, "total": run.total_steps, "epoch": run.epoch, "epochs": run.config.epochs,
                "steps_per_second": sps, "eta": left / sps if sps > 0 else None, "state": run.state.value,
                "stage": run.stage, "stages": run.n_stages}

    def publish(self, force: bool = False) -> None:
        """Move the buffered probes to the history (one host copy); check for divergence.

        Drift and the checkpoint are measured when their time budget allows, or ``force``."""
        run = self.run
        mode = self.sync_guard("default")
        steps, loss, layer_norms, lrs = run.probes.flush()
        bad = run.target_guard.check()  # CUDA: the steps' targets, read with the probes
        if bad is not None:
            keep = steps < bad.step
            self.record(steps[keep], loss[keep], layer_norms[keep], lrs[keep])
            run.checkpoint.restore()
            raise bad
        now = time.perf_counter()
        if len(steps):
            bad = ~np.isfinite(loss)
            if bad.any():
                first = int(steps[np.argmax(bad)])
                n_ok = int(np.argmax(bad))
                self.record(steps[:n_ok], loss[:n_ok], layer_norms[:n_ok], lrs[:n_ok])
                self.diverged(first)
            self.record(steps, loss, layer_norms, lrs)
            last_step, last_t = self.last
            if now > last_t and run.step > last_step:
                rate = (run.step - last_step) / (now - last_t)
                self.steps_per_second = rate if self.steps_per_second == 0 else 0.7 * self.steps_per_second + 0.3 * rate
            self.last = (run.step, now)
            drift = run.heavy.measure(run.step, now, force)
            if drift is not None:
                run.history.append_layers("drift", [run.step], run.layer_names, drift[None, :])
            run.handlers.fire(Event.PUBLISH, run.step, run.epoch, {})
        self.sync_guard(mode)

    def publish_epoch(self, data: dict[str, float]) -> None:
        """The epoch's validation results into the history (and the stage's summary when
        unfreezing gradually); fires ``EPOCH_END``."""
        run = self.run
        for name, value in data.items():
            run.history.append(name, [run.step], [value])
        if run.config.gradual:
            stages = run.history.meta.setdefault("stages", [])
            stages.append({"stage": run.stage, "epoch": run.epoch, "step": run.step,
                           "group": run.groups[len(run.groups) - 1 - run.stage].name, **data})
        run.handlers.fire(Event.EPOCH_END, run.step, run.epoch, dict(data))

    def diverged(self, step: int) -> None:
        """The NaN guard: put back the checkpoint (the last weights whose losses were all finite,
        saved at a publish) and fail the run, saying so."""
        from .engine import TrainingFailed

        run = self.run
        run.checkpoint.restore()
        run.probes.n = 0
        raise TrainingFailed(
            f"the loss became NaN or infinite at step {step} (epoch {run.epoch + 1}); training stopped and the "
            f"weights were restored to step {run.checkpoint.step}, the last whose losses were all finite. Lower the "
            f"learning rate, add grad_clip, or check the data and the loss"
        )

    def out_of_memory(self) -> TrainingFailed:
        """After running out of memory: the checkpoint put back, the cache emptied; the
        :class:`~retrain_widgets.core.engine.TrainingFailed` that says what to do."""
        from .engine import TrainingFailed

        run = self.run
        run.checkpoint.restore()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        return TrainingFailed(
            f"out of memory at step {run.step} on {run.device}: lower the batch size, set amp=True, or "
            f"freeze more layers. Weights restored to step {run.checkpoint.step}.")

    def publish_failure(self, exc: BaseException) -> None:
        """A failed run's message (``run.message``) and traceback into the history."""
        run = self.run
        run.history.meta["error"] = run.message
        run.history.meta["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        run.history.mark(run.step, "state", f"failed: {run.message}")

    def record(self, steps: np.ndarray, loss: np.ndarray, layer_norms: np.ndarray, lrs: np.ndarray) -> None:
        """One published chunk of per-step probes into the history."""
        if not len(steps):
            return
        history = self.run.history
        history.append("train_loss", steps, loss)
        history.append("lr", steps, lrs[:, -1])  # the top (head) group's LR
        history.append_layers("group_lr", steps, self.run.lr_group_names, lrs)
        history.append_layers("grad_norm", steps, self.run.layer_names, layer_norms)

    def sync_guard(self, mode: str | int | None) -> str | int | None:
        """With :attr:`sync_check` on CUDA: set the sync debug mode (``"error"`` makes any host
        sync raise); return the previous one. Otherwise nothing, and ``None``."""
        if mode is None or not (self.sync_check and self.run.device.type == "cuda"):
            return None
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(mode)
        return previous
