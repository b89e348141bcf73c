"""What the studio announces: one :class:`Topic` per kind of change, one frozen payload class per topic.

Views subscribe with ``studio.on(Topic.X, fn)``; ``fn`` gets one payload object (named fields), and
may be called from the what-if queue's thread or a run's:

=================== ================== ================================ ==============================================
topic               payload            fields                           when
=================== ================== ================================ ==============================================
``CONFIG``          ``ConfigChanged``  ``old, new`` (RunConfig)         the config changed (before the checks rerun)
``WORK``            ``WorkChanged``    (none)                           the working copy or its freezing changed
``LOSS_CHECK``      ``LossVerdict``    ``ok, text, fix, mismatch``      the loss was checked on one batch
``PREVIEW``         ``Preview``        ``png, note, error``             the LR preview was redrawn (or refused)
``LR_FIND``         ``LrFound``        ``result, png``                  the LR finder ran
``STATUS``          ``StatusLine``     ``text, error``                  a one-line message (plain text, ```code```)
``ERROR``           ``ErrorShown``     ``error`` (exception or None)    a run or an action failed (None: clear it)
``RUN``             ``RunMade``        ``run``                          a run was made and is about to start
``RUN_FAILED``      ``RunFailed``      ``run``                          that run refused to start
``STATE``           ``StateShown``     ``run`` (or None: idle)          show this run's state
``PLOT``            ``PlotDrawn``      ``png``                          the main figure was redrawn (reset, restore)
``RESET``           ``ResetDone``      (none)                           back to the pretrained weights (no progress)
``QUEUE``           ``QueueProgress``  ``text, error``                  what-if progress
``QUEUE_DONE``      ``QueueDone``      ``keys``                         the what-if queue ended; keys of its runs
``FOCUS``           ``Focus``          ``where`` (``"loss"``/``"runs"``) the part of the dashboard to look at now
``CACHE``           ``CacheState``     ``text`` (``cache_state()``)     the current run's feature cache changed
=================== ================== ================================ ==============================================

A topic's plain name (``studio.on("status", fn)``) is still accepted, for code written before the
enum: such an ``fn`` gets the payload's fields as positional arguments (:meth:`Payload.args`), as it
did then. An unknown topic is a ``ValueError`` either way. Plain Python: no widget is imported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from .core.config import RunConfig
    from .core.engine import Retrainer
    from .core.losses import LossMismatchError
    from .loss_fixes import LossFix

__all__ = ["CacheState", "ConfigChanged", "ErrorShown", "Focus", "LossVerdict", "LrFound", "Payload", "PlotDrawn",
           "Preview", "QueueDone", "QueueProgress", "ResetDone", "RunFailed", "RunMade", "StateShown", "StatusLine",
           "Topic", "WorkChanged", "payload_of", "topic_of"]


class Topic(str, Enum):
    """The studio's topics (see the module's table)."""

    CONFIG = "config"
    WORK = "work"
    LOSS_CHECK = "loss_check"
    PREVIEW = "preview"
    LR_FIND = "lr_find"
    STATUS = "status"
    ERROR = "error"
    RUN = "run"
    RUN_FAILED = "run_failed"
    STATE = "state"
    PLOT = "plot"
    RESET = "reset"
    QUEUE = "queue"
    QUEUE_DONE = "queue_done"
    FOCUS = "focus"
    CACHE = "cache"

    def __str__(self) -> str:
        return self.value


class Payload:
    """What one topic carries; each subclass is a frozen dataclass and names its :attr:`topic`."""

    topic: ClassVar[Topic]

    def args(self) -> tuple[Any, ...]:
        """The positional arguments that a listener subscribed by the topic's plain name gets."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ConfigChanged(Payload):
    topic: ClassVar[Topic] = Topic.CONFIG
    old: RunConfig
    new: RunConfig


@dataclass(frozen=True)
class WorkChanged(Payload):
    topic: ClassVar[Topic] = Topic.WORK


@dataclass(frozen=True)
class LossVerdict(Payload):
    """The loss check on one batch: ``ok``, a one-line ``text``, the head size that would fix it
    and the mismatch itself."""

    topic: ClassVar[Topic] = Topic.LOSS_CHECK
    ok: bool
    text: str
    fix: int | None = None
    mismatch: LossMismatchError | None = None
    action: LossFix | None = None  # the fix to offer: it ends in a loss that fits (loss_fixes.next_fix)

    def args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class Preview(Payload):
    """The LR preview: the PNG (``None`` when the schedule was refused) and a note under it."""

    topic: ClassVar[Topic] = Topic.PREVIEW
    png: bytes | None
    note: str
    error: bool = False

    def args(self) -> tuple[Any, ...]:
        return (self,)


@dataclass(frozen=True)
class LrFound(Payload):
    topic: ClassVar[Topic] = Topic.LR_FIND
    result: Any  # core.lr_finder's result
    png: bytes


@dataclass(frozen=True)
class StatusLine(Payload):
    topic: ClassVar[Topic] = Topic.STATUS
    text: str
    error: bool = False


@dataclass(frozen=True)
class ErrorShown(Payload):
    topic: ClassVar[Topic] = Topic.ERROR
    error: BaseException | None


@dataclass(frozen=True)
class RunMade(Payload):
    topic: ClassVar[Topic] = Topic.RUN
    run: Retrainer


@dataclass(frozen=True)
class RunFailed(Payload):
    topic: ClassVar[Topic] = Topic.RUN_FAILED
    run: Retrainer


@dataclass(frozen=True)
class StateShown(Payload):
    topic: ClassVar[Topic] = Topic.STATE
    run: Retrainer | None


@dataclass(frozen=True)
class PlotDrawn(Payload):
    topic: ClassVar[Topic] = Topic.PLOT
    png: bytes


@dataclass(frozen=True)
class ResetDone(Payload):
    topic: ClassVar[Topic] = Topic.RESET


@dataclass(frozen=True)
class QueueProgress(Payload):
    topic: ClassVar[Topic] = Topic.QUEUE
    text: str
    error: bool = False


@dataclass(frozen=True)
class QueueDone(Payload):
    topic: ClassVar[Topic] = Topic.QUEUE_DONE
    keys: list[str]


@dataclass(frozen=True)
class Focus(Payload):
    topic: ClassVar[Topic] = Topic.FOCUS
    where: Literal["loss", "runs"]


@dataclass(frozen=True)
class CacheState(Payload):
    topic: ClassVar[Topic] = Topic.CACHE
    text: str


_PAYLOADS: dict[Topic, type[Payload]] = {cls.topic: cls for cls in (
    ConfigChanged, WorkChanged, LossVerdict, Preview, LrFound, StatusLine, ErrorShown, RunMade, RunFailed,
    StateShown, PlotDrawn, ResetDone, QueueProgress, QueueDone, Focus, CacheState)}


def topic_of(topic: Topic | str) -> Topic:
    """``topic`` as a :class:`Topic` (a plain name too); an unknown one is a ``ValueError``."""
    try:
        return Topic(topic)
    except ValueError:
        known = ", ".join(t.value for t in Topic)
        raise ValueError(f"unknown studio topic {topic!r}; known: {known} (retrain_widgets.topics.Topic)") from None


def payload_of(topic: Topic | str, *args: Any) -> Payload:
    """The payload of ``topic`` made from positional ``args`` (as :meth:`Payload.args` gives them)."""
    cls = _PAYLOADS[topic_of(topic)]
    if cls in (LossVerdict, Preview) and len(args) == 1 and isinstance(args[0], cls):
        return args[0]
    return cls(*args)


def listener(topic: Topic | str, fn: Callable[..., Any]) -> tuple[Topic, Callable[[Payload], Any]]:
    """What ``studio.on(topic, fn)`` keeps: the topic, and ``fn`` called with the payload (a
    :class:`Topic`) or with its fields as positional arguments (the topic's plain name)."""
    known = topic_of(topic)
    if isinstance(topic, Topic):
        return known, fn
    return known, lambda payload: fn(*payload.args())
