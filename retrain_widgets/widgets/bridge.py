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
from typing import TYPE_CHECKING, Any

from ..core.engine import Retrainer
from ..core.events import Event, EventInfo, State
from ..plots import LiveFigure

if TYPE_CHECKING:
    from .studio import RetrainStudio

__all__ = ["Bridge"]


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


class Bridge:
    """Connects one :class:`Retrainer` to the studio's widgets for the length of a run.

    Parameters
    ----------
    studio
        The studio whose widgets it writes (progress, status, plot image, controls).
    run
        The retrainer to follow.
    figure
        The reused live figure.
    budget
        Share of wall time that drawing may take (2 %: on a 2-core CPU the engine's own probes cost
        ~4 %, the first frame of a run ~1-2 % more, and the dashboard as a whole aims at 8 %, measured
        by ``benchmarks/dashboard.py``).
    min_interval
        Seconds between frames at the least (caps the frame rate at 1 / min_interval).
    max_interval
        Seconds between frames at the most, whatever the budget says.
    """

    def __init__(self, studio: RetrainStudio, run: Retrainer, figure: LiveFigure, budget: float = 0.02,
                 min_interval: float = 0.25, max_interval: float = 4.0, progress_interval: float = 0.2,
                 on_end: Callable[[Retrainer], None] | None = None) -> None:
        self.studio, self.run, self.figure = studio, run, figure
        self.budget, self.min_interval, self.progress_interval = budget, min_interval, progress_interval
        self.max_interval = max_interval
        self.first_frame_seconds = 0.0
        self.on_end = on_end
        self.frames = 0
        self.draw_seconds = 0.0
        self.frame_seconds: list[float] = []
        self.step_times = [0.0, 0.0]  # wall clock at step 1 and at the latest step
        self.step_cpu_times = [0.0, 0.0]  # the training thread's CPU time, likewise
        self._t0 = time.perf_counter()
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
        return (self.run.step - 1) / (last - first) if last > first else 0.0

    @property
    def draw_share(self) -> float:
        """Share of wall time spent drawing since the run started."""
        wall = time.perf_counter() - self._t0
        return self.draw_seconds / wall if wall > 0 else 0.0

    def progress_text(self) -> str:
        p = self.run.progress
        parts = [f"step {p['step']:,} / {p['total']:,}", f"epoch {min(p['epoch'] + 1, p['epochs'])} / {p['epochs']}"]
        if p["stages"] > 1:
            parts.append(f"stage {p['stage'] + 1} / {p['stages']}")
        if p["steps_per_second"]:
            parts.append(f"{p['steps_per_second']:.0f} steps/s")
            parts.append(f"ETA {_clock(p['eta'])}")
        return " · ".join(parts)

    # ------------------------------------------------------------------ event handlers (training thread)
    def _on_step(self, info: EventInfo) -> None:
        now = time.perf_counter()
        i = 0 if info.step == 1 else 1
        self.step_times[i] = now
        self.step_cpu_times[i] = time.thread_time()
        if now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            self.update_progress()

    def _on_publish(self, info: EventInfo) -> None:
        if time.perf_counter() >= self._next_frame:
            self.frame()

    def _on_epoch(self, info: EventInfo) -> None:
        self.update_progress()
        self.frame()  # within the budget like any frame: short epochs must not flood the drawing

    def _on_state(self, info: EventInfo) -> None:
        state: State = info.data["state"]
        self.update_progress()
        self.studio._show_state(self.run)
        if state == State.PAUSED:
            self.frame(force=True)
        if state.final:
            self.final()

    # ------------------------------------------------------------------ drawing
    def update_progress(self) -> None:
        s = self.studio
        s.progress.max = max(1, self.run.total_steps)
        s.progress.value = min(self.run.step, self.run.total_steps)
        s.progress_label.value = self.progress_text()

    def frame(self, force: bool = False) -> None:
        """Draw one frame if the budget allows (or ``force``) and new data arrived."""
        now = time.perf_counter()
        if not force and now < self._next_frame:
            return
        with self._lock:
            if not force and self.run.history.version == self._version:
                return
            t0 = time.perf_counter()
            snap = self.run.history.snapshot()
            png = self.figure.render(snap, frozen=self.studio._frozen_layers(self.run.model))
            self.studio.plot.value = png
            cost = time.perf_counter() - t0
            self._version = snap.version
            self.frames += 1
            self.draw_seconds += cost
            self.frame_seconds.append(cost)
            if self.frames == 1:
                self.first_frame_seconds = cost
            owed = self.draw_seconds - self.first_frame_seconds
            wait = max(self.min_interval, self._t0 + owed / self.budget - t0)
            self._next_frame = t0 + min(wait, self.max_interval)

    def final(self) -> None:
        """The end of the run: a careful last frame, kept as a static output too."""
        with self._lock:
            snap = self.run.history.snapshot()
            png = self.figure.render_final(snap, frozen=self.studio._frozen_layers(self.run.model))
            self.studio.plot.value = png
        self.detach()
        self.studio._run_ended(self.run, png)
        if self.on_end is not None:
            self.on_end(self.run)
