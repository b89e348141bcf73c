"""Typed events fired by the training engine, and the run states."""

from __future__ import annotations

import contextlib
import enum
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "State", "EventInfo", "Handlers"]


class State(str, enum.Enum):
    """Where a run is. ``stopped``, ``finished`` and ``failed`` are final."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (State.STOPPED, State.FINISHED, State.FAILED)

    @property
    def active(self) -> bool:
        return self in (State.RUNNING, State.PAUSED)


class Event(str, enum.Enum):
    """Events a handler can subscribe to with ``Retrainer.on(event, handler)``.

    All are fired from the training thread, between steps.

    ``BACKWARD_END``
        After the backward pass (and L2-SP, clipping), before the optimizer step: every
        trainable parameter's ``.grad`` holds this step's gradient (``info.step``). A handler
        must leave gradients, weights and RNG as it found them (the alignment probe does).
    ``STEP_END``
        After every optimizer step (``info.step``, ``info.epoch``). The loss is not on the
        host yet: read it from the history after ``PUBLISH``.
    ``PUBLISH``
        A chunk of steps reached the history (every ``publish_every`` steps or ~0.25 s).
    ``EPOCH_END``
        After each epoch's validation (``info.data`` holds ``val_loss``, ``val_metric``,
        ``old_metric`` ...).
    ``STAGE_CHANGE``
        Gradual unfreezing moved to a new stage (``info.data["stage"]``, ``["group"]``).
    ``STATE_CHANGE``
        The run's state changed (``info.data["state"]``, a :class:`State`).
    ``TRAINABLE_CHANGE``
        The trainable set changed between two steps (freezing, unfreezing, a new stage): the
        probes, drift and the checkpoint have followed it; the feature cache and the alignment
        probe follow it here.
    """

    BACKWARD_END = "backward_end"
    STEP_END = "step_end"
    PUBLISH = "publish"
    EPOCH_END = "epoch_end"
    STAGE_CHANGE = "stage_change"
    STATE_CHANGE = "state_change"
    TRAINABLE_CHANGE = "trainable_change"


@dataclass(frozen=True)
class EventInfo:
    event: Event
    step: int
    epoch: int
    data: dict[str, Any] = field(default_factory=dict)


class Handlers:
    """Event handlers of a run: ``on`` / ``off`` from any thread, ``fire`` from the training thread.

    A handler that raises is recorded in :attr:`errors` and warned about; the run goes on.
    """

    def __init__(self) -> None:
        self._handlers: dict[Event, list[Callable[[EventInfo], Any]]] = {e: [] for e in Event}
        self.errors: list[str] = []

    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Callable[[EventInfo], Any]:
        self._handlers[Event(event)].append(handler)
        return handler

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._handlers[Event(event)].remove(handler)

    def fire(self, event: Event, step: int, epoch: int, data: dict[str, Any]) -> None:
        handlers = self._handlers[event]
        if not handlers:
            return
        info = EventInfo(event, step, epoch, data)
        for handler in list(handlers):
            try:
                handler(info)
            except Exception as exc:  # noqa: BLE001 - a handler must not kill the run
                text = f"{event.value} handler {getattr(handler, '__name__', handler)!r} raised {type(exc).__name__}: {exc}"
                self.errors.append(text)
                warnings.warn(text, RuntimeWarning, stacklevel=3)
