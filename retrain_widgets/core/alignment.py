"""The alignment probe: does the new loss pull with the old task or against it, layer by layer?

After a step's backward pass every trainable parameter holds ``∇new``, the gradient the optimizer
is about to follow (the new loss, with distillation and L2-SP when they are on). Every ``every``
steps at most, and only while its time stays within ``budget`` of the run's training time so far
(measured over the run, pauses left out, the first ``FREE_SAMPLES`` samples not counted: the price of a
panel at all, so that a short run draws one, while a long one spends no more than its share), the probe takes one batch of the old task, runs it through the model as the
old-task evaluation does (inference mode, the original head in place, the old task's own loss:
cross-entropy, BCE or MSE as the evaluation infers it) and takes that loss's gradient ``∇old``
with ``torch.autograd.grad`` (so no ``.grad`` is touched). For every parameterised layer it keeps

    cos(∇new, ∇old) = <∇new, ∇old> / (‖∇new‖ ‖∇old‖)      over the layer's trainable parameters,

+1 when a step of the new loss also lowers the old task's loss, −1 when it raises it as fast as it
can. A frozen layer (no trainable parameter), a layer the old task does not reach (a new head) or a
zero gradient gets NaN: no value. The first sample waits for a direction: while no layer the old
task reaches has a non-zero ``∇new`` (a new head that starts at zero passes no gradient down on its
first step) no sample is taken. The batch's old-task loss is kept too: forgetting at step
resolution, between the per-epoch ``old_val`` evaluations.

Cost and side effects: per sample one forward and one backward of the old batch (through the
trainable part only when the run's feature cache holds the frozen part's outputs for ``old_val``:
:attr:`OldTask.batches`), then fused
``torch._foreach_*`` kernels (the dot products by polarisation, ``4<a, b> = ‖a + b‖² − ‖a − b‖²``)
into a small device tensor; the host reads the samples once per publish, like the other probes, so
a CUDA queue never waits between publishes. The run is left exactly as it was: gradients
(``autograd.grad``), weights, BatchNorm statistics and every module's mode (inference mode,
restored module by module), the optimizer (not used) and the RNG (torch's, the device's and the old
loader's generators: restored after each sample).

History: ``layer_series(Series.GRAD_ALIGNMENT)`` (steps x layers) and ``series(Series.OLD_BATCH_LOSS)``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .batches import Forward, logits_of, to_device
from .events import Event, EventInfo, State
from .history import History
from .names import Meta, Series
from .recipe.training import HeadSwap
from .rng import kept_rng


class Events(Protocol):
    """What fires a run's events (a telemetry, a run)."""

    def on(self, event: Event, handler: Callable[[EventInfo], Any]) -> Any: ...

__all__ = ["OldTask", "AlignmentProbe", "old_task_mode", "kept_rng", "alignment_summary", "pulling_against"]

_TRAIN, _SETATTR = nn.Module.train, nn.Module.__setattr__

SERIES = Series.GRAD_ALIGNMENT
LOSS_SERIES = Series.OLD_BATCH_LOSS


@dataclass(frozen=True)
class OldTask:
    """How a run measures its old task: what the probe borrows from it.

    ``loss_of(logits, targets)`` returns the old task's loss function (the run's old-task
    evaluation decides it from the first batch); ``original_head`` goes in place of the layer
    ``head_name`` while the old task is measured (``None``: the head was kept). ``batches(loader)``
    gives one pass over an old-task loader (the run's feature cache, whose batches ``forward``
    understands; ``None``: the loader itself).
    """

    model: nn.Module
    forward: Forward
    loss_of: Callable[[torch.Tensor, Any], Callable[..., torch.Tensor]]
    head_name: str | None = None
    original_head: nn.Module | None = None
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = field(default=contextlib.nullcontext)
    batches: Callable[[Iterable[Any]], Iterable[Any]] | None = None


@contextlib.contextmanager
def old_task_mode(task: OldTask) -> Iterator[nn.Module]:
    """The model as the old-task evaluation sees it: inference mode, the original head in place.

    Afterwards every module has the mode it had (set back module by module, so a module the user
    keeps in inference mode inside a training model stays so) and the current head is back."""
    net = task.model
    modes = [(m, m.training) for m in net.modules()]
    # plain modules (nn.Module's own train() and __setattr__, as almost all are): the flag is written
    # directly, which is what both do for it (a sample's mode switches were a third of its time);
    # any module with its own (a scripted module, a user's train()) goes through them
    plain = all(type(m).train is _TRAIN and type(m).__setattr__ is _SETATTR for m, _ in modes)
    if plain:
        for module, _ in modes:
            module.__dict__["training"] = False
    else:
        net.eval()
    try:
        with HeadSwap(net, task.head_name or "", task.original_head if task.head_name else None):
            yield net
    finally:
        for module, mode in modes:
            if plain:
                module.__dict__["training"] = mode
            else:
                module.training = mode


@dataclass
class _Sample:
    step: int
    row: torch.Tensor  # [loss, ‖a‖ (k), ‖b‖ (m), ‖a + b‖ (m), ‖b − a‖ (m)] on the device
    active: np.ndarray  # indices (into the probe's parameters) of the k parameters with ∇new
    both: np.ndarray  # positions (into ``active``) of the m that also have ∇old


class AlignmentProbe:
    """cos(∇new, ∇old) per layer and the old-task loss of one old batch, sampled within a budget.

    Parameters
    ----------
    layers
        ``(layer name, parameters)`` pairs: the model's parameterised layers.
    task
        How the run measures the old task (:class:`OldTask`).
    loader
        Old-task batches (``old_train``, or ``old_val`` when no ``old_train`` is given); cycled.
    history
        Where samples go at each publish.
    every, budget
        At most one sample every ``every`` steps, and only while the probe's time so far (its first
        ``FREE_SAMPLES`` samples left out, like the prime pass: the price of a panel at all) stays
        within ``budget`` of the training time since the run started, pauses left out (``1.0``: no
        time limit) with the next sample, priced as the last one, counted in: over a run it spends
        at most ``budget`` of the time and the free samples, which a 92-step run on cached features
        notices (~1.2 ms of ~70 ms: 0.5 % of it is less than one sample) and a long one does not.
    """

    #: Samples outside the budget: a panel of three points is the least that reads as a picture.
    FREE_SAMPLES = 3

    def __init__(self, layers: Sequence[tuple[str, Sequence[nn.Parameter]]], task: OldTask, loader: Iterable[Any],
                 history: History, *, every: int = 20, budget: float = 0.005,
                 device: torch.device | None = None) -> None:
        self.layer_names = tuple(name for name, _ in layers)
        self.params: list[nn.Parameter] = [p for _, ps in layers for p in ps]
        self._owner = np.array([i for i, (_, ps) in enumerate(layers) for _ in ps], dtype=np.int64)
        self.task, self.loader, self.history = task, loader, history
        self.every, self.budget = max(1, int(every)), float(budget)
        self.device = device or (self.params[0].device if self.params else torch.device("cpu"))
        self._batches: Iterator[Any] | None = None
        self._ahead: Any = None  # the first sample's batch, read by prime (outside the budget)
        self._pending: list[_Sample] = []
        self._last_step = -math.inf
        self._t0: float | None = None  # when training began, moved on by each pause
        self._paused_at: float | None = None
        self._directed = False  # a layer the old task reaches had a non-zero ∇new
        self.samples = 0
        self.seconds = 0.0  # time spent sampling, for benchmarks
        self.last_seconds = 0.0  # the last sample's
        self.free_seconds = 0.0  # the first FREE_SAMPLES samples': outside the budget, as the prime pass is
        self._free_left = self.FREE_SAMPLES
        self.error: str | None = None
        self._primed = False

    # ------------------------------------------------------------------ wiring
    def attach(self, events: Events) -> AlignmentProbe:
        """Sample after the run's backward passes and publish with its other probes: ``events`` is
        whatever fires the run's events (its :class:`~retrain_widgets.core.telemetry.Telemetry`)."""
        events.on(Event.STATE_CHANGE, self.on_state)
        events.on(Event.BACKWARD_END, self.on_backward)
        events.on(Event.PUBLISH, self.on_publish)
        self.history.meta[Meta.ALIGNMENT] = {"every": self.every, "budget": self.budget}
        return self

    def due(self, step: int) -> bool:
        """``every`` steps since the last sample, and the budget allows one now (always at 1.0):
        the time spent sampling so far, the free samples left out, plus the next sample's (priced as
        the last one), within ``budget`` of the training time so far (so the probe never runs ahead
        of its share, and time without samples, at the start or between sparse ones, is credit for
        the next)."""
        if self.error is not None or step - self._last_step < self.every:
            return False
        if self.budget >= 1.0 or self._free_left > 0:
            return True
        return self.seconds - self.free_seconds + self.last_seconds <= self.budget * self.training_seconds()

    def training_seconds(self) -> float:
        """Wall time since training began (the first backward pass when no state change came),
        pauses left out, up to the end of the run."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        return (self._paused_at if self._paused_at is not None else now) - self._t0

    def on_backward(self, info: EventInfo) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if self.due(info.step) and (self._directed or self._has_direction()):
            self.sample(info.step)

    def _has_direction(self) -> bool:
        """Whether a layer the old task reaches has a non-zero ``∇new`` now (asked until one has:
        one host read of the gradient norms a step, on those steps only)."""
        head = self.task.head_name if self.task.original_head is not None else None
        grads = [p.grad for p, i in zip(self.params, self._owner)
                 if p.requires_grad and p.grad is not None
                 and not (head and (self.layer_names[i] == head or self.layer_names[i].startswith(head + ".")))]
        self._directed = bool(grads) and bool((torch.stack(torch._foreach_norm(grads)) > 0).any())
        return self._directed

    def on_publish(self, info: EventInfo | None = None) -> None:
        self.publish()

    def on_state(self, info: EventInfo) -> None:
        state, now = info.data.get("state"), time.perf_counter()
        if state == State.RUNNING:
            if self._t0 is None:
                self._t0 = now
            if self._paused_at is not None:  # a pause costs the budget nothing and earns it nothing
                self._t0 += now - self._paused_at
                self._paused_at = None
            if not self._primed:
                self.prime()
        elif (state == State.PAUSED or (state is not None and State(state).final)) and self._paused_at is None:
            self._paused_at = now  # the clock stops while paused, and at the end

    def prime(self) -> None:
        """Before training: one old batch through the old head, without gradients, so a broken
        loader fails before the first step and the old loss is chosen (on CUDA: the host syncs
        this needs happen here, not between publishes). With the feature cache this pass decides
        (or builds) the old-task cache the first ``old_val`` evaluation would build: outside the
        budget, as that evaluation is."""
        self._primed = True
        try:
            with kept_rng(self.device, self.loader), old_task_mode(self.task) as net, torch.no_grad():
                batch = to_device(self._next_batch(), self.device, non_blocking=True)
                with self.task.autocast():
                    outputs, targets = self.task.forward(net, batch)
                logits = logits_of(outputs).float()
                self.task.loss_of(logits, targets)(logits, targets)
        except Exception as exc:
            self._fail(0, exc)
        self._batches = None  # the first sample starts the loader afresh: its pass is opened here
        with contextlib.suppress(Exception), kept_rng(self.device, self.loader):
            self._ahead = self._next_batch()

    # ------------------------------------------------------------------ sampling (device only)
    def sample(self, step: int) -> None:
        """Measure now (the parameters' ``.grad`` must hold the step's gradient). Its cost is the
        training thread's CPU time (the time taken from training; a preemption by another process
        on a busy machine is not the probe's)."""
        t0 = time.thread_time()
        try:
            self._sample(step)
        except Exception as exc:
            self._fail(step, exc)
        finally:
            self._last_step = step
            self.last_seconds = time.thread_time() - t0
            if self._free_left > 0:
                self._free_left -= 1
                self.free_seconds += self.last_seconds
            self.seconds += self.last_seconds

    def _fail(self, step: int, exc: Exception) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        self.history.meta[Meta.ALIGNMENT_ERROR] = self.error
        raise ValueError(
            f"the alignment probe stopped at step {step}: {self.error}. It measures the old task on one "
            f"batch of old_train (or old_val) through the original head; fix that loader, or turn the probe "
            f"off with RunConfig(alignment_every=None). Training goes on"
        ) from exc

    def _sample(self, step: int) -> None:
        active = [i for i, p in enumerate(self.params) if p.requires_grad and p.grad is not None]
        if not active:
            return
        params = [self.params[i] for i in active]
        loss, old = self._old_gradients(params)
        new = [p.grad for p in params]
        both = [k for k, g in enumerate(old) if g is not None]
        tensors = list(new)
        if both:
            a, b = [new[k] for k in both], [old[k] for k in both]
            s = torch._foreach_add(a, b)
            d = torch._foreach_sub(b, a)
            tensors += [*b, *s, *d]
        # one fused norm call and one stack for the whole row (few kernel launches, few dispatches)
        norms = torch.stack(torch._foreach_norm(tensors)).float()
        row = torch.cat([loss.detach().float().reshape(1), norms])
        self._pending.append(_Sample(step, row, np.asarray(active), np.asarray(both, np.int64)))
        self.samples += 1

    def _old_gradients(self, params: list[nn.Parameter]) -> tuple[torch.Tensor, Sequence[torch.Tensor | None]]:
        """The old task's loss on the next old batch, and its gradient for ``params`` (None where
        the old task does not reach)."""
        task = self.task
        with kept_rng(self.device, self.loader), old_task_mode(task) as net, torch.enable_grad():
            batch = to_device(self._next_batch(), self.device, non_blocking=True)
            with task.autocast():
                outputs, targets = task.forward(net, batch)
            logits = logits_of(outputs).float()
            loss = task.loss_of(logits, targets)(logits, targets).float()
            if not loss.requires_grad:  # no trainable parameter on the old task's path
                return loss, [None] * len(params)
            return loss, torch.autograd.grad(loss, params, allow_unused=True)

    def _next_batch(self) -> Any:
        """The next old-task batch; a new pass over the loader when one ends."""
        if self._ahead is not None:
            batch, self._ahead = self._ahead, None
            return batch
        for _ in range(2):
            if self._batches is None:
                self._batches = iter(self.task.batches(self.loader) if self.task.batches else self.loader)
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None
        raise ValueError("the old-task loader yields no batches")

    # ------------------------------------------------------------------ publishing (one host copy)
    def publish(self) -> None:
        """Move the pending samples to the history (one device-to-host copy)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        host = torch.cat([s.row for s in pending]).cpu().numpy().astype(np.float64)
        L = len(self.layer_names)
        cos = np.full((len(pending), L), np.nan)
        losses = np.empty(len(pending))
        at = 0
        for j, s in enumerate(pending):
            v = host[at:at + s.row.shape[0]]
            at += s.row.shape[0]
            losses[j] = v[0]
            cos[j] = self._layer_cosines(v[1:], s.active, s.both)
        steps = [s.step for s in pending]
        self.history.append_layers(SERIES, steps, self.layer_names, cos)
        self.history.append(LOSS_SERIES, steps, losses)

    def _layer_cosines(self, v: np.ndarray, active: np.ndarray, both: np.ndarray) -> np.ndarray:
        k, m = len(active), len(both)
        na2 = v[:k] ** 2
        nb2, dot = np.zeros(k), np.zeros(k)
        nb2[both] = v[k:k + m] ** 2
        dot[both] = (v[k + m:k + 2 * m] ** 2 - v[k + 2 * m:k + 3 * m] ** 2) / 4
        L = len(self.layer_names)
        owner = self._owner[active]
        acc = np.zeros((3, L))
        for row, values in zip(acc, (na2, nb2, dot)):
            np.add.at(row, owner, values)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.sqrt(acc[0] * acc[1])
            cos = np.where(norm > 0, acc[2] / np.where(norm > 0, norm, 1), np.nan)
        return np.clip(cos, -1.0, 1.0)


# ====================================================================== reading the history
def alignment_summary(history: Any) -> dict[str, float]:
    """``mean_alignment`` (over the samples and the layers that have values) and the last
    ``old_batch_loss`` of a history or snapshot; keys absent when not measured."""
    out: dict[str, float] = {}
    _, _, values = history.layer_series(SERIES)
    finite = values[np.isfinite(values)] if values.size else values
    if finite.size:
        out["mean_alignment"] = float(np.mean(finite, dtype=np.float64))
    _, losses = history.series(LOSS_SERIES)
    if len(losses) and math.isfinite(float(losses[-1])):
        out[Series.OLD_BATCH_LOSS] = float(losses[-1])
    return out


def pulling_against(steps: np.ndarray, names: Sequence[str], values: np.ndarray, *, samples: int = 5,
                    below: float = -0.1) -> list[str]:
    """Layers whose alignment stayed below ``below`` in each of the last ``samples`` samples: the
    new loss keeps working against the old task there. A hint that freezing them may keep the old
    task (never applied by the engine)."""
    if values.ndim != 2 or values.shape[0] < samples or not len(names):
        return []
    tail = values[-samples:]
    with np.errstate(invalid="ignore"):
        against = np.all(np.isfinite(tail) & (tail < below), axis=0)
    return [str(n) for n, a in zip(names, against) if a]
