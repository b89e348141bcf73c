"""What runs on a Ray worker: one run of a grid, as a streaming generator of messages.

:func:`train_run` builds a :class:`~retrain_widgets.core.engine.Retrainer` from the grid's
inputs (the pretrained model and the loaders, shipped once per grid with ``ray.put``) and one
:class:`~retrain_widgets.core.config.RunConfig`, trains it in the worker, and yields:

- one :class:`Started` (the run's plan: steps, head, the feature cache's state),
- :class:`Chunk`\\ s while it trains: every write to its history since the last chunk (in order, as
  :class:`Tape` recorded them) and the events it fired, at most every ``every`` seconds,
- one :class:`Ended`: the last chunk, the final state and message, and the trained weights as the
  delta against the pretrained ones (:func:`~retrain_widgets.core.weights_delta.delta_state`).

A driver that replays the chunks into a fresh :class:`~retrain_widgets.core.history.History`
(:meth:`Tape.replay`) holds the same history, bit for bit. Stop is asked through ``should_stop()``
(polled between chunks; the run then stops at its next step boundary and still yields its
:class:`Ended`). Nothing here imports ray: the executor wraps :func:`train_run` in a Ray task.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.config import RunConfig
from ..core.engine import Retrainer
from ..core.events import Event, EventInfo
from ..core.history import History
from ..core.weights_delta import delta_state

__all__ = ["GridInputs", "Started", "Chunk", "Ended", "Tape", "train_run"]

#: the events a driver re-fires, in the order the worker fired them
FORWARDED = (Event.PUBLISH, Event.EPOCH_END, Event.STAGE_CHANGE)


@dataclass
class GridInputs:
    """What every run of a grid shares: shipped to the cluster once (one ``ray.put``)."""

    model: torch.nn.Module
    train: Any
    val: Any = None
    old_val: Any = None
    old_train: Any = None
    forward: Any = None
    teacher: Any = None
    pretrained_id: str = ""


@dataclass
class Started:
    total_steps: int
    head_name: str | None
    head_out: int | None
    meta: dict[str, Any]
    host: str = ""


@dataclass
class Chunk:
    """History writes and events since the last chunk: ``ops`` in order, each
    ``("append", name, steps, values)``, ``("layers", name, steps, columns, values)``,
    ``("mark", step, kind, text)`` or ``("event", event, step, epoch, data)``."""

    ops: list[tuple[Any, ...]]
    meta: dict[str, Any]
    step: int
    epoch: int
    steps_per_second: float


@dataclass
class Ended:
    chunk: Chunk
    state: str
    message: str
    error: str = ""
    delta: dict[str, Any] | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Tape:
    """Records every write to ``history`` (and the events handed to :meth:`event`) until :meth:`take`."""

    def __init__(self, history: History) -> None:
        self._lock = threading.Lock()
        self._ops: list[tuple[Any, ...]] = []
        self.history = history
        append, layers, mark = history.append, history.append_layers, history.mark

        def rec_append(name: str, steps: Any, values: Any) -> None:
            append(name, steps, values)
            self._add(("append", name, _copy(steps), _copy(values)))

        def rec_layers(name: str, steps: Any, columns: Any, values: Any) -> None:
            layers(name, steps, columns, values)
            self._add(("layers", name, _copy(steps), tuple(columns), _copy(values)))

        def rec_mark(step: float, kind: str, text: str) -> None:
            mark(step, kind, text)
            self._add(("mark", step, kind, text))

        history.append, history.append_layers, history.mark = rec_append, rec_layers, rec_mark  # type: ignore[method-assign]

    def _add(self, op: tuple[Any, ...]) -> None:
        with self._lock:
            self._ops.append(op)

    def event(self, info: EventInfo) -> None:
        self._add(("event", info.event.value, info.step, info.epoch, dict(info.data)))

    @property
    def pending(self) -> int:
        return len(self._ops)

    def take(self) -> list[tuple[Any, ...]]:
        with self._lock:
            ops, self._ops = self._ops, []
        return ops

    @staticmethod
    def replay(history: History, ops: list[tuple[Any, ...]], fire: Callable[[Event, int, int, dict[str, Any]], None]
               ) -> None:
        """Apply ``ops`` to ``history`` in order; ``fire(event, step, epoch, data)`` for the events."""
        for op in ops:
            kind = op[0]
            if kind == "append":
                history.append(op[1], op[2], op[3])
            elif kind == "layers":
                history.append_layers(op[1], op[2], op[3], op[4])
            elif kind == "mark":
                history.mark(op[1], op[2], op[3])
            else:
                fire(Event(op[1]), op[2], op[3], op[4])


def _copy(a: Any) -> Any:
    return a.copy() if hasattr(a, "copy") else list(a)


def _chunk(run: Retrainer, tape: Tape) -> Chunk:
    return Chunk(tape.take(), copy.deepcopy(run.history.meta), run.step, run.epoch, run.steps_per_second)


def train_run(inputs: GridInputs, config: RunConfig, *, should_stop: Callable[[], bool], every: float = 0.25,
              publish_every: int = 10, threads: int = 1, host: str = "") -> Iterator[Started | Chunk | Ended]:
    """Train one run of a grid here, yielding :class:`Started`, :class:`Chunk`\\ s and :class:`Ended`.

    ``threads``: torch's intra-op threads in this worker (one per CPU the run was given)."""
    torch.set_num_threads(max(1, int(threads)))
    run = Retrainer(inputs.model, config, inputs.train, inputs.val, inputs.old_val, old_train=inputs.old_train,
                    forward=inputs.forward, teacher=inputs.teacher, publish_every=publish_every,
                    publish_seconds=every)
    tape = Tape(run.history)
    for event in FORWARDED:
        run.on(event, tape.event)
    t0 = time.perf_counter()
    if should_stop():
        return  # the grid was stopped before this run began: dropped
    run.start()  # the first batch is checked here: a mismatch raises, and the task fails with it
    yield Started(run.total_steps, run.head_name, run.head_out, copy.deepcopy(run.history.meta), host)
    try:
        last = time.monotonic()
        while not run.join(0.05):
            if should_stop():
                run.stop()
            if tape.pending and time.monotonic() - last >= every:
                yield _chunk(run, tape)
                last = time.monotonic()
    except BaseException:  # ray.cancel (KeyboardInterrupt) or a lost driver: leave at a step boundary
        run.stop()
        run.join(30)
        raise
    error = "" if run.error is None else f"{type(run.error).__name__}: {run.error}"
    delta = delta_state(run.model, inputs.model, inputs.pretrained_id) if run.step > 0 else None
    yield Ended(_chunk(run, tape), run.state.value, run.message, error, delta, time.perf_counter() - t0)
