"""Typed events fired by the training engine, and the run states."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "State", "EventInfo"]


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
    """

    BACKWARD_END = "backward_end"
    STEP_END = "step_end"
    PUBLISH = "publish"
    EPOCH_END = "epoch_end"
    STAGE_CHANGE = "stage_change"
    STATE_CHANGE = "state_change"


@dataclass(frozen=True)
class EventInfo:
    event: Event
    step: int
    epoch: int
    data: dict[str, Any] = field(default_factory=dict)
