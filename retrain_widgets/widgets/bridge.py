"""The one place that turns a run's history into widget updates while it trains.

The training thread publishes plain numbers to the lock-guarded history; the bridge, called
from the engine's events *between steps*, turns snapshots into widget values and frames.
Drawing happens in the training thread on purpose: on a 2-core machine a separate render
thread slowed a small CNN's training about 3x at 5 frames/s (GIL hand-offs), while drawing
between steps within a time budget cost nothing measurable (``../shared/README.md``).

Budget: drawing may take at most ``budget`` (2 %) of the wall time since the run started,
amortised: after frames that took ``D`` seconds in all, the next one waits until ``D / budget``
seconds have passed since the start, and at least ``min_interval`` after the last frame. A
cheap blitted frame (~20 ms) thus allows about one frame a second; an occasional full redraw
(~0.3 s, when the axes must grow) delays the next frames instead of halting the plot for
``0.3 / budget`` seconds. The first frame of a run (a full redraw that sets up the axes) is
not held against the budget, so the plot comes alive at once; over a run of a minute it adds
about 0.5 %. And the plot never stays still longer than ``max_interval`` (4 s): when full
redraws come often (a stage change every epoch of gradual unfreezing on a fast model), drawing
may then take more than the budget. Progress text and bar are cheap trait updates, throttled to ~5 per second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..core.events import Event, EventInfo, State
from ..core.run import Run

if TYPE_CHECKING:
    from torch import nn

    from ..core.history import HistorySnapshot

__all__ = ["Bridge", "RunView", "Figure"]


class RunView(Protocol):
    """What the bridge needs of the dashboard (``RetrainStudio`` is one)."""

    def frozen_layers(self, model: nn.Module) -> list[str]: ...

    def show_progress(self, step: int, total: int, text: str) -> None: ...

    def show_frame(self, png: bytes) -> None: ...

    def show_state(self, run: Run | None) -> None: ...

    def run_ended(self, run: Run, png: bytes) -> None: ...


class Figure(Protocol):
    """What the bridge needs of the live figure (``plots.LiveFigure`` is one)."""

    def render(self, snapshot: HistorySnapshot, frozen: Any = ...) -> bytes: ...

    def render_final(self, snapshot: HistorySnapshot, frozen: Any = ...) -> bytes: ...


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


class Bridge:
    """Connects one run (a :class:`~retrain_widgets.core.run.Run`: the engine's, a watched loop) to a
    dashboard view for the length of a run.

    Parameters
    ----------
    view
        The dashboard it shows the run in (progress, state, frames): a :class:`RunView`.
    run
        The retrainer to follow.
    figure
        The reused live figure.
    budget
        Share of wall time that drawing may take (2 %; the first frame of a run adds ~1 % to it on a
        run of ~15 s; ``benchmarks/dashboard.py`` measures the dashboard as a whole against a bare loop
        and prints the drawing's share).
    min_interval
        Seconds between frames at the least (caps the frame rate at 1 / min_interval).
    max_interval
        Seconds between frames at the most, whatever the budget says.
    clock
        The wall clock (``time.perf_counter``); tests pass a fake one.
    """

    def __init__(self, view: RunView, run: Run, figure: Figure, budget: float = 0.02,
                 min_interval: float = 0.25, max_interval: float = 4.0, progress_interval: float = 0.2,
                 on_end: Callable[[Run], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.view, self.run, self.figure = view, run, figure
        self.clock = clock
        self.budget, self.min_interval, self.progress_interval = budget, min_interval, progress_interval
        self.max_interval = max_interval
        self.first_frame_seconds = 0.0
        self.on_end = on_end
        self.frames = 0
        self.draw_seconds = 0.0
        self.frame_seconds: list[float] = []
        self.step_times = [0.0, 0.0]  # wall clock at step 1 and at the latest step
        self.step_cpu_times = [0.0, 0.0]  # the training thread's CPU time, likewise
        self.t0 = clock()
        self._next_frame = 0.0
        self._next_progress = 0.0
        self._lock = threading.Lock()
        self._version = -1
        self._handlers: list[tuple[Event, Callable[[EventInfo], Any]]] = [
            (Event.STEP_END, self._on_step),
            (Event.PUBLISH, self._on_publish),
            (Event.EPOCH_END, self._on_epoch),
            (Event.STAGE_CHANGE, self._on_epoch),
            (Event.STATE_CHANGE, self._on_state),
        ]
        for event, handler in self._handlers:
            run.on(event, handler)

    def detach(self) -> None:
        for event, handler in self._handlers:
            self.run.off(event, handler)

    # ------------------------------------------------------------------ numbers
    def steps_per_second(self, cpu: bool = False) -> float:
        """Training speed between step 1 and the latest step: per wall-clock second (what the user
        experiences) or, with ``cpu``, per CPU second of the training thread (frames included)."""
        first, last = self.step_cpu_times if cpu else self.step_times
        return (self.run.progress["step"] - 1) / (last - first) if last > first else 0.0

    @property
    def draw_share(self) -> float:
        """Share of wall time spent drawing since the run started."""
        wall = self.clock() - self.t0
        return self.draw_seconds / wall if wall > 0 else 0.0

    def progress_text(self) -> str:
        p = self.run.progress
        parts = [f"step {p['step']:,} / {p['total']:,}" if p["total"] else f"step {p['step']:,}"]
        if p["epochs"]:  # a watched loop may not say how many
            parts.append(f"epoch {min(p['epoch'] + 1, p['epochs'])} / {p['epochs']}")
        elif p["epoch"]:
            parts.append(f"{p['epoch']} epoch{'s' if p['epoch'] > 1 else ''} done")
        if p["stages"] > 1:
            parts.append(f"stage {p['stage'] + 1} / {p['stages']}")
        if p["steps_per_second"]:
            parts.append(f"{p['steps_per_second']:.0f} steps/s")
            if self.run.state == State.RUNNING:  # no time left to tell once paused, stopped or done
                parts.append(f"ETA {_clock(p['eta'])}")
        return " · ".join(parts)

    # ------------------------------------------------------------------ event handlers (training thread)
    def _on_step(self, info: EventInfo) -> None:
        now = self.clock()
        i = 0 if info.step == 1 else 1
        self.step_times[i] = now
        self.step_cpu_times[i] = time.thread_time()
        if now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            self.update_progress()

    def _on_publish(self, info: EventInfo) -> None:
        if self.clock() >= self._next_frame:
            self.frame()

    def _on_epoch(self, info: EventInfo) -> None:
        self.update_progress()
        self.frame()  # within the budget like any frame: short epochs must not flood the drawing

    def _on_state(self, info: EventInfo) -> None:
        state: State = info.data["state"]
        self.update_progress()
        self.view.show_state(self.run)
        if state == State.PAUSED:
            self.frame(force=True)
        if state.final:
            self.final()

    # ------------------------------------------------------------------ drawing
    def update_progress(self) -> None:
        p = self.run.progress
        self.view.show_progress(p["step"], p["total"], self.progress_text())

    def frame(self, force: bool = False) -> None:
        """Draw one frame if the budget allows (or ``force``) and new data arrived."""
        now = self.clock()
        if not force and now < self._next_frame:
            return
        with self._lock:
            if not force and self.run.history.version == self._version:
                return
            t0 = self.clock()
            snap = self.run.history.snapshot()
            png = self.figure.render(snap, frozen=self.view.frozen_layers(self.run.model))
            self.view.show_frame(png)
            cost = self.clock() - t0
            self._version = snap.version
            self.frames += 1
            self.draw_seconds += cost
            self.frame_seconds.append(cost)
            if self.frames == 1:
                self.first_frame_seconds = cost
            owed = self.draw_seconds - self.first_frame_seconds
            wait = max(self.min_interval, self.t0 + owed / self.budget - t0)
            self._next_frame = t0 + min(wait, self.max_interval)

    def final(self) -> None:
        """The end of the run: a careful last frame, kept as a static output too."""
        with self._lock:
            snap = self.run.history.snapshot()
            png = self.figure.render_final(snap, frozen=self.view.frozen_layers(self.run.model))
            self.view.show_frame(png)
        self.detach()
        self.view.run_ended(self.run, png)
        if self.on_end is not None:
            self.on_end(self.run)
