"""The studio's run controls and outputs: Start / Pause / Stop / Reset, progress, status, errors
and the live plot. A thin view of a :class:`~retrain_widgets.headless.HeadlessStudio`; it is
the :class:`~.bridge.RunView` a run's :class:`~.bridge.Bridge` writes to, from the training
thread, through :func:`~.writes.write`."""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable

import ipywidgets as W
from torch import nn

from ..core.engine import Retrainer
from ..core.events import State
from ..core.names import Meta, Series
from ..headless import HeadlessStudio
from ..one_run import refused_quietly
from ..topics import LossVerdict, Topic
from .binding import css, message_html
from .tabs import button
from .writes import write

__all__ = ["ControlsView", "error_html", "last_metrics", "check_status"]

# what follows the state's name in the status line (the name is said once)
_STATE_TEXT = {
    State.RUNNING: " · training…",
    State.PAUSED: ": Resume to continue, or Stop.",
    State.FINISHED: " after {step:,} steps.",
    State.STOPPED: " at step {step:,} of {total:,}.",
    State.FAILED: " (see below).",
}


def error_html(exc: BaseException) -> str:
    """An exception as a red box with its traceback folded."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (
        f"<div style='border-left:4px solid #cf222e;padding:4px 8px;background:#fff5f5'>"
        f"<b>{html.escape(type(exc).__name__)}</b>: {html.escape(str(exc), quote=False)}"
        f"<details><summary>traceback</summary><pre style='font-size:11px'>{html.escape(tb)}</pre></details></div>"
    )


def check_status(verdict: LossVerdict) -> str:
    """The status line while the loss check fails: what is wrong, and the fix the Loss tab offers."""
    what = verdict.text.rsplit(" (outputs ", 1)[0].split(": ")[0].rstrip(".")
    fix = f"the Loss tab offers \"{verdict.action.label}\"" if verdict.action else "change the loss (Loss tab)"
    return f"not ready: the loss does not fit: {what}. Start waits for a loss that fits: {fix}."


def last_metrics(run: Retrainer) -> str:
    """The run's latest validation and old-task metrics, as text."""
    parts = []
    for name, label in ((Series.VAL_METRIC, run.history.meta.get(Meta.METRIC, "metric")),
                        (Series.OLD_METRIC, f"old-task {run.history.meta.get('old_metric', 'metric')}")):
        _, values = run.history.series(name)
        if len(values):
            parts.append(f"{label} {values[-1]:.3f}")
    return " · ".join(parts)


class ControlsView(W.VBox):
    """Buttons and progress in a row, then the status line, the error box and the plot.

    ``on_final(png)``, when set, gets the final figure of each run."""

    def __init__(self, studio: HeadlessStudio) -> None:
        super().__init__()
        self.studio = studio
        self.on_final: Callable[[bytes], None] | None = None  # keeps a run's final figure (set by the studio)
        self.start_button = button("Start", "rw-start", "success", "train a copy of the pretrained model", "90px")
        self.pause_button = button("Pause", "rw-pause", "", "pause at the next step", "90px")
        self.stop_button = button("Stop", "rw-stop", "danger", "stop at the next step", "90px")
        self.reset_button = button("Reset", "rw-reset", "", "back to the pretrained weights", "90px")
        self.start_button.on_click(lambda _: refused_quietly(studio.start)())
        self.pause_button.on_click(lambda _: studio.toggle_pause())
        self.stop_button.on_click(lambda _: studio.stop())
        self.reset_button.on_click(lambda _: studio.reset())
        self.progress = css(W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="260px")), "rw-progress")
        self.progress_label = css(W.Label(layout=W.Layout(width="auto", flex="0 0 auto")), "rw-progress-label")
        self.status = css(W.HTML(), "rw-status")
        self.error = css(W.HTML(), "rw-error")
        self.plot = css(W.Image(format="png", layout=W.Layout(width="100%", max_width="1000px", margin="2px 0")), "rw-plot")
        self.buttons = W.HBox([self.start_button, self.pause_button, self.stop_button, self.reset_button,
                               self.progress, self.progress_label], layout=W.Layout(align_items="center"))
        self.children = [self.buttons, self.status, self.error, self.plot]
        studio.on(Topic.STATUS, lambda p: self.show_status(p.text, p.error))
        studio.on(Topic.ERROR, lambda p: self.show_error(p.error))
        studio.on(Topic.STATE, lambda p: self.show_state(p.run))
        studio.on(Topic.PLOT, lambda p: self.show_frame(p.png))
        studio.on(Topic.RESET, lambda p: self.reset())
        studio.on(Topic.LOSS_CHECK, self.show_check)
        studio.on(Topic.QUEUE_DONE, lambda p: self.queue_ended())
        studio.on(Topic.QUEUE, lambda p: self.queue_ended() if p.error else None)  # the queue failed
        self.check: LossVerdict | None = None  # the current loss check: Start waits for it to pass

    # ------------------------------------------------------------------ the RunView interface
    def frozen_layers(self, model: nn.Module) -> list[str]:
        return self.studio.frozen_layers(model)

    def show_progress(self, step: int, total: int, text: str) -> None:
        write(self.progress, max=max(1, total), value=min(step, total))
        write(self.progress_label, value=text)

    def show_frame(self, png: bytes) -> None:
        write(self.plot, value=png)

    def show_state(self, run: Retrainer | None) -> None:
        state = run.state if run is not None else State.IDLE
        active = state.active
        blocked = self.check is not None and not self.check.ok
        write(self.start_button, disabled=active or blocked,
              tooltip="the loss does not fit: see the status line" if blocked else "train a copy of the pretrained model")
        write(self.pause_button, disabled=not active, description="Resume" if state == State.PAUSED else "Pause")
        write(self.stop_button, disabled=not (active or self.studio.queue.alive()))  # Stop ends what-ifs too
        write(self.reset_button, disabled=active)
        if blocked and not active:
            self.show_status(check_status(self.check), error=True)
            return
        if run is None:
            self.show_status("ready: pick what to freeze, a loss and a schedule, then Start.")
            return
        text = _STATE_TEXT.get(state, "").format(step=run.step, total=run.total_steps)
        metrics = last_metrics(run)
        text += f" {metrics}" if metrics else ""
        write(self.status, value=f"<span style='color:#333'><b>{state.value}</b>"
                                 f"{html.escape(text, quote=False)}</span>")
        if state == State.FAILED and run.error is not None:
            self.show_error(run.error)

    def queue_ended(self) -> None:
        """The what-ifs ended (their thread is about to): Stop follows the current run alone again."""
        run = self.studio.run
        write(self.stop_button, disabled=not (run is not None and run.state.active))

    def run_ended(self, run: Retrainer, png: bytes) -> None:
        if self.on_final is not None:
            self.on_final(png)

    # ------------------------------------------------------------------ topics
    def show_status(self, text: str, error: bool = False) -> None:
        write(self.status, value=message_html(text, error))

    def show_check(self, verdict: LossVerdict) -> None:
        """A new loss check: Start and the status line follow it (not while a run is going)."""
        was, self.check = self.check, verdict
        run = self.studio.run
        if not (run is not None and run.state.active) and (not verdict.ok or (was is not None and not was.ok)):
            self.show_state(run)

    def show_error(self, exc: BaseException | None) -> None:
        write(self.error, value="" if exc is None else error_html(exc))

    def reset(self) -> None:
        """Progress back to zero (after the studio's reset)."""
        write(self.progress, value=0)
        write(self.progress_label, value="")
