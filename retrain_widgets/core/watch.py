"""A loop the user already has, watched: the same telemetry, history, steering and store as the
engine's runs, around the user's own model, optimizer and loop.

::

    run = WatchedRun(model, optimizer, old_val=old_val)
    for epoch in range(3):
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            run.step(loss)                  # after each optimizer step; waits here while paused
            if run.should_stop:
                break
        run.epoch_end(val_acc=...)          # the metrics given, and the old task on old_val
    run.finish()

With the optimizer given, the per-layer gradient norms are taken at the optimizer step (a hook on
``optimizer.step``), so ``zero_grad`` may come before or after ``step``: one row per optimizer
step. Drift is measured against the weights at watch time; the alignment probe runs when an
old-task batch source is known. The user's model is the one trained: it is their loop.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .alignment import AlignmentProbe, OldTask
from .batches import Forward, default_forward, logits_of, to_device
from .control import Control
from .errors import TrainingFailed
from .events import Event, EventInfo, State
from .metrics import select
from .names import Meta, Series
from .recipe import evaluation as recipe_eval
from .telemetry import Telemetry
from .tree import parameterised_layers

__all__ = ["WatchedRun", "describe_optimizer"]

_HYPER = ("lr", "weight_decay", "momentum", "betas", "eps", "dampening", "nesterov", "alpha")


def describe_optimizer(optimizer: torch.optim.Optimizer | None, scheduler: Any = None) -> dict[str, Any]:
    """What is known of a loop's config from its optimizer and scheduler: class names and the first
    group's hyper-parameters (JSON-able)."""
    out: dict[str, Any] = {}
    if optimizer is not None:
        out["optimizer"] = type(optimizer).__name__.lower()
        group = optimizer.param_groups[0]
        for key in _HYPER:
            value = group.get(key)
            if isinstance(value, (int, float, bool)) or (isinstance(value, tuple) and
                                                         all(isinstance(v, (int, float)) for v in value)):
                out[key] = list(value) if isinstance(value, tuple) else value
        if len(optimizer.param_groups) > 1:
            out["param_groups"] = len(optimizer.param_groups)
    if scheduler is not None:
        out["scheduler"] = type(scheduler).__name__
    return out


class WatchedRun:
    """The user's own loop as a run (:class:`~retrain_widgets.core.run.Run`): telemetry, steering
    from any thread, and what the store and comparisons read.

    Parameters
    ----------
    model
        The model the loop trains (trained in place: it is the user's loop).
    optimizer
        The loop's optimizer: gradients are read at its step, LRs from its groups.
    old_val, old_train
        Old-task batches: ``old_val`` is measured (loss and metric) at each :meth:`epoch_end`, and
        the alignment probe samples ``old_train`` (or ``old_val``).
    old_loss
        ``old_loss(logits, targets)`` of the old task; by default told from its first batch
        (cross-entropy, BCE or MSE, as the engine's old-task evaluation).
    forward
        ``forward(model, batch) -> (outputs, targets)`` for the old task's batches.
    metric
        The old task's metric: a name (``"accuracy"``, ``"mae"``) or a function ``(logits,
        targets) -> (sum, count)``; by default told from its first batch.
    name, loss, scheduler, framework
        What the store and comparisons show: the run's name, the loss's name, the scheduler,
        and what trains it (``"loop"``, ``"huggingface"``, ``"lightning"``).
    total_steps, epochs
        The planned length, when known (progress and ETA).
    alignment_every, alignment_budget
        The alignment probe's cadence and cost budget (``None``: off).
    hook_optimizer
        Take the gradients at ``optimizer.step`` (a pre-hook). ``False`` for loops whose optimizer
        step runs the backward pass itself (a closure, as Lightning's): they call
        :meth:`gradients_ready` where the gradients are final.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 old_val: Iterable[Any] | None = None, old_train: Iterable[Any] | None = None,
                 old_loss: Callable[..., torch.Tensor] | None = None, forward: Forward | None = None,
                 metric: str | Callable[..., Any] | None = None, name: str | None = None, loss: str | None = None,
                 scheduler: Any = None, framework: str = "loop", total_steps: int | None = None,
                 epochs: int | None = None, alignment_every: int | None = 10, alignment_budget: float = 0.005,
                 publish_every: int = 50, publish_seconds: float = 0.25, hook_optimizer: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"watch() takes the torch.nn.Module the loop trains, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer (or None), got {type(optimizer).__name__}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.name, self.loss_name, self.framework = name, loss, framework
        self.old_val_loader, self.forward = old_val, forward or default_forward
        self._old_loss, self._metric = old_loss, metric
        params = list(model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        # the weights at watch time: drift's and the store's reference (a copy on the CPU)
        self.pretrained = copy.deepcopy(model).to("cpu")
        self.head_name: str | None = None
        self.head_out: int | None = None
        self.total_steps, self.epochs = int(total_steps or 0), epochs
        self.global_step = self.epoch = 0
        self.state, self.message, self.error = State.IDLE, "", None
        self.control = Control()
        self.telemetry = Telemetry(model, device=self.device,
                                   param_groups=optimizer.param_groups if optimizer is not None else (),
                                   publish_every=publish_every, publish_seconds=publish_seconds)
        self.history, self.layer_names = self.telemetry.history, self.telemetry.layer_names
        self.handler_errors = self.telemetry.handlers.errors
        self._describe()
        self._t_start = 0.0
        self._thread: threading.Thread | None = None
        self._grads_at: int | None = None  # the step whose gradients the optimizer hook took
        hook = optimizer is not None and hook_optimizer
        self._hook = optimizer.register_step_pre_hook(self._before_optimizer_step) if hook else None
        old_batches = old_train if old_train is not None else old_val
        self.alignment = self._alignment(old_batches, alignment_every, alignment_budget)

    def _describe(self) -> None:
        meta = self.history.meta
        meta.update({Meta.CONFIG: self.config_record()[0], Meta.DEVICE: str(self.device),
                     Meta.TOTAL_STEPS: self.total_steps, Meta.LAYERS: list(self.layer_names),
                     Meta.LOSS: self.loss_name or "your loop's", Meta.HAS_VAL: False,
                     Meta.HAS_OLD_VAL: self.old_val_loader is not None, Meta.SOURCE: self.framework})

    def _alignment(self, loader: Iterable[Any] | None, every: int | None, budget: float) -> AlignmentProbe | None:
        if loader is None or every is None:
            return None
        task = OldTask(self.model, self.forward, lambda o, t: self._old_fns(o, t)[0])
        probe = AlignmentProbe(parameterised_layers(self.model), task, loader, self.history, every=every,
                               budget=budget, device=self.device)
        return probe.attach(self.telemetry)

    # ================================================================== what the loop calls
    def step(self, loss: torch.Tensor | float) -> None:
        """After each optimizer step: the loss it took (a tensor, or a number). Applies queued
        changes and waits here while paused. A NaN/Inf loss sets :attr:`should_stop`."""
        if self.state is not State.RUNNING:
            if self.state.final:
                raise RuntimeError(f"this watched run has ended ({self.state.value}); watch() the loop again")
            if self.state == State.IDLE:
                self._begin()
        tel = self.telemetry
        try:
            if self._grads_at == self.global_step:
                tel.loss(self.global_step, loss)  # a tensor or a number, as it came
            else:  # no optimizer hook this step: the gradients as they are now
                tel.backward_end(self.global_step, loss.detach() if isinstance(loss, torch.Tensor)
                                 else torch.tensor(float(loss), device=self.device))
            self._grads_at = None
            self.global_step += 1
            tel.step_end(self.global_step)
        except TrainingFailed as exc:
            self._diverged(exc)
            return
        self.control.boundary(self._paused, self._resumed)

    def gradients_ready(self) -> None:
        """This optimizer step's gradients are in ``.grad`` now: take them (what the hook on
        ``optimizer.step`` does; for loops built with ``hook_optimizer=False``)."""
        self._before_optimizer_step(self.optimizer, (), {})

    def epoch_end(self, **metrics: float) -> None:
        """An epoch ended: ``metrics`` (``val_loss=...``, any name) recorded at this step, and the
        old task measured on ``old_val`` (``old_loss``, ``old_metric``)."""
        data = {k: float(v) for k, v in metrics.items()}
        if self.old_val_loader is not None:
            data[Series.OLD_LOSS], data[Series.OLD_METRIC] = self.measure_old()
        self.epoch += 1
        try:
            self.telemetry.epoch_end(self.global_step, self.epoch, data)
        except TrainingFailed as exc:
            self._diverged(exc)

    def finish(self, error: BaseException | None = None) -> None:
        """The loop ended (``error``: what ended it): stopped when a stop was asked for, failed
        with ``error``, finished otherwise. Saved to the store, if any. Safe to call twice."""
        if self.state.final:
            return
        if self._hook is not None:
            self._hook.remove()
        error = error if error is not None else self.error  # the NaN guard's
        if error is not None:
            self._fail(error)
            return
        state = State.STOPPED if self.control.should_stop else State.FINISHED
        self.telemetry.finish(self.global_step, state.value)
        self._set_state(state)

    def __enter__(self) -> WatchedRun:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.finish(exc if isinstance(exc, Exception) else None)

    # ================================================================== steering (any thread)
    def stop(self) -> None:
        """Ask the loop to stop: :attr:`should_stop` becomes True (a paused loop goes on to see it)."""
        self.control.stop()

    def pause(self) -> None:
        """The loop waits in its next :meth:`step` until :meth:`resume` or :meth:`stop`."""
        if self.state == State.RUNNING:
            self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    @property
    def should_stop(self) -> bool:
        """True once a stop was asked for (or the loss became NaN/Inf): the loop should end."""
        return self.control.should_stop

    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Callable[[EventInfo], Any]:
        return self.telemetry.on(event, handler)

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None:
        self.telemetry.off(event, handler)

    def change(self, action: Callable[[], None], text: str) -> None:
        """Apply a change of the trainable set at the next step boundary (now, before the first)."""
        apply = lambda: self.telemetry.change(action, "change", text)  # noqa: E731
        if self.state.active:
            self.control.queue(apply)
        else:
            apply()

    # ================================================================== measuring the old task
    def _old_fns(self, logits: torch.Tensor, targets: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
        if not hasattr(self, "_fns"):
            loss, metric = recipe_eval.old_task(logits, targets)
            if isinstance(self._metric, str):
                metric = select(self._metric, None, logits, targets)
            elif self._metric is not None:
                metric = self._metric
            self._fns = (self._old_loss or loss, metric)
            self.history.meta[Meta.OLD_METRIC] = getattr(metric, "name", getattr(metric, "__name__", "metric"))
        return self._fns

    def measure_old(self) -> tuple[float, float]:
        """(mean loss, mean metric) of the old task on ``old_val``, in eval mode (the model's mode
        and torch's RNG are as they were afterwards)."""
        def run(net: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
            outputs, targets = self.forward(net, to_device(batch, self.device, non_blocking=True))
            return logits_of(outputs), targets

        totals = recipe_eval.evaluation_sums(self.model, self.old_val_loader, run, self._old_fns, self.device)
        if float(totals[2]) == 0:
            raise ValueError("the old_val loader yielded no batches")
        return recipe_eval.means(totals)

    # ================================================================== what the store and views read
    @property
    def started_at(self) -> float:
        return self._t_start

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @property
    def progress(self) -> dict[str, Any]:
        sps = self.telemetry.steps_per_second
        total = self.total_steps
        left = max(0, total - self.global_step) if total else None
        return {"step": self.global_step, "total": total, "epoch": self.epoch, "epochs": self.epochs or 0,
                "steps_per_second": sps, "eta": left / sps if left is not None and sps > 0 else None,
                "state": self.state.value, "stage": 0, "stages": 1}

    def frozen(self) -> list[str]:
        """The parameterised layers whose parameters are all frozen (``requires_grad=False``)."""
        return [name for name, ps in parameterised_layers(self.model) if not any(p.requires_grad for p in ps)]

    def config_record(self) -> tuple[dict[str, Any], str]:
        """What is known of the loop's config: the framework, the optimizer and its first group's
        hyper-parameters, the scheduler, the frozen layers, the loss's name when given."""
        out: dict[str, Any] = {"framework": self.framework}
        if self.loss_name:
            out["loss"] = self.loss_name
        out.update(describe_optimizer(self.optimizer, self.scheduler))
        out["frozen"] = self.frozen()
        return out, ""

    # ================================================================== internals
    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.state == State.IDLE:
            self._begin()
        if self._grads_at == self.global_step:
            return  # a second optimizer step before step(loss): its loss is the one reported next
        self._grads_at = self.global_step
        self.telemetry.optimizer_step(self.global_step)

    def _begin(self) -> None:
        self._t_start = time.perf_counter()
        self._thread = threading.current_thread()
        self.telemetry.restart(self.global_step, self._t_start)
        self._set_state(State.RUNNING)

    def _paused(self) -> None:
        self.telemetry.publish()
        self._set_state(State.PAUSED)

    def _resumed(self) -> None:
        self.telemetry.restart(self.global_step)
        if not self.control.should_stop:
            self._set_state(State.RUNNING)

    def _set_state(self, state: State) -> None:
        self.state = state
        self.telemetry.step, self.telemetry.epoch = self.global_step, self.epoch
        self.telemetry.fire(Event.STATE_CHANGE, state=state)

    def _diverged(self, exc: TrainingFailed) -> None:
        self.error, self.message = exc, str(exc)
        self.history.meta[Meta.ERROR] = self.message
        self.control.stop()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.message = str(exc) if isinstance(exc, TrainingFailed) else f"{type(exc).__name__}: {exc}"
        self.telemetry.fail(self.global_step, exc, self.message)
        self._set_state(State.FAILED)

    def __repr__(self) -> str:
        return f"WatchedRun(name={self.name!r}, state={self.state.value}, step={self.global_step}, framework={self.framework!r})"
