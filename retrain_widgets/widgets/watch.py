"""The live dashboard of a watched loop (a plain loop, HF ``Trainer``, Lightning): loss, old task,
LR, the per-layer gradient heatmap, alignment and drift (the engine's live figure, through the
same :class:`~.bridge.Bridge` and drawing budget), progress when the length is known, Pause /
Resume / Stop, the Layers tab and the store's runs.

The user's loop usually runs in the cell that shows the dashboard, so the kernel cannot handle a
click until that cell ends. The dashboard therefore handles the kernel's widget messages itself
at the loop's step boundaries (the run's ``STEP_END``, and while paused), at most every
``poll_interval`` seconds and only on the kernel's thread: Stop and Pause work while the cell is
blocked. Other messages (the next cells' ``execute_request`` after Run All) go back to the kernel
at once, in order, to run after the cell (:mod:`~.uipoll`).
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as W
from torch import nn

from ..comparison import table_html
from ..core.comparison import summarize, table
from ..core.events import Event, EventInfo, State
from ..core.store import RunStore
from ..core.tree import freeze, parameters_of, unfreeze
from ..core.watch import WatchedRun
from ..plots import LiveFigure
from .binding import css, message_html
from .bridge import Bridge
from .controls import error_html, last_metrics
from .reopen import WATCH_NOTE, display_with_note
from .tabs import button
from .tree import LayerTreeView
from .uipoll import ui_events
from .writes import show, write

__all__ = ["WatchDashboard", "DashboardSlot"]


class WatchDashboard(W.VBox):
    """The dashboard of one :class:`~retrain_widgets.core.watch.WatchedRun`.

    Parameters
    ----------
    run
        The watched run.
    store
        The store the run is recorded in (its Runs tab lists the store's runs), or ``None``.
    poll_interval
        Seconds between two looks at the kernel's widget messages from the loop's thread.
    """

    def __init__(self, run: WatchedRun, store: RunStore | None = None, poll_interval: float = 0.1) -> None:
        super().__init__()
        self.add_class("rw-watch")
        self.run, self.store, self.poll_interval = run, store, poll_interval
        self.pause_button = button("Pause", "rw-pause", "", "pause the loop at its next step", "90px")
        self.stop_button = button("Stop", "rw-stop", "danger", "ask the loop to stop at its next step", "90px")
        self.pause_button.on_click(lambda _: self.toggle_pause())
        self.stop_button.on_click(lambda _: self.run.stop())
        self.progress = css(W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="260px")), "rw-progress")
        self.progress_label = css(W.Label(), "rw-progress-label")
        self.status = css(W.HTML(), "rw-status")
        self.error = css(W.HTML(), "rw-error")
        self.plot = css(W.Image(format="png", layout=W.Layout(width="100%", max_width="1000px")), "rw-plot")
        self.tree = LayerTreeView(run.model, self.set_frozen)
        self.tree_message = css(W.HTML(), "rw-tree-message")
        self.runs_table = css(W.HTML(), "rw-runs-table")
        tabs = W.Tab(children=[W.VBox([self.tree_message, self.tree]), self.runs_table])
        for i, title in enumerate(("Layers", "Runs")):
            tabs.set_title(i, title)
        self.tabs = tabs
        self.children = [W.HBox([self.pause_button, self.stop_button, self.progress, self.progress_label],
                                layout=W.Layout(align_items="center")), self.status, self.error, self.plot, tabs]
        self.bridge = Bridge(self, run, LiveFigure())
        self._ui: Any = None
        self._next_poll = 0.0
        self._home, self._tree_stale = threading.current_thread(), False  # the kernel's thread makes widgets
        run.on(Event.STEP_END, self._on_step)
        run.control.while_paused.append(self.poll)
        self.show_state(run)
        self.show_runs()

    def _ipython_display_(self) -> None:
        display_with_note(self, "watch", WATCH_NOTE)  # the note a notebook reopened without widget state shows

    # ------------------------------------------------------------------ steering
    def toggle_pause(self) -> None:
        if self.run.state == State.PAUSED:
            self.run.resume()
        else:
            self.run.pause()

    def set_frozen(self, names: list[str]) -> None:
        """The Layers tab's choice: freeze ``names``, unfreeze the rest, at the loop's next step.
        Unfreezing needs the loop's optimizer to hold the parameters; where it cannot, say why."""
        run, model = self.run, self.run.model
        # from what the tree shows: the model's freezing, or a change still waiting for the loop's next step
        to_unfreeze = [n for n in self.tree.frozen if not _covered(n, names)]
        problem = _cannot_unfreeze(run, model, to_unfreeze, names) or _nothing_left(model, names)
        if problem:
            write(self.tree_message, value=message_html(problem, error=True))
            self.tree.refresh()  # the tree shows what is (or is about to be), not the refused choice
            return

        def apply() -> None:  # at the loop's step boundary, after the changes queued before it
            if to_unfreeze:
                unfreeze(model, to_unfreeze)
            if names:
                freeze(model, names)
                for n in names:  # no gradient left: momentum and weight decay cannot move them
                    for *_, p in parameters_of(model, n):
                        p.grad = None
            self._tree_stale = True

        text = f"froze {', '.join(names) or 'nothing'}" + (f"; unfroze {', '.join(to_unfreeze)}" if to_unfreeze else "")
        run.change(apply, text)
        self.tree.show_frozen(names if run.state.active else None)  # a tick stays ticked until the loop takes it
        when = "at the loop's next step" if run.state.active else "now"
        write(self.tree_message, value=message_html(f"{text} ({when})."))

    # ------------------------------------------------------------------ UI events from the loop's thread
    def _on_step(self, info: EventInfo) -> None:
        if self._tree_stale and threading.current_thread() is self._home:  # the tree is the kernel thread's
            self._tree_stale = False
            self.tree.show_frozen(None)  # the loop took the change: the model's own counts again
        now = time.perf_counter()
        if now >= self._next_poll:
            self._next_poll = now + self.poll_interval
            self.poll()

    def poll(self) -> None:
        """Handle the kernel's pending widget messages now (a no-op off the kernel's thread)."""
        if self._ui is None:
            self._ui = ui_events()
        self._ui.poll(10)
        replay = getattr(self._ui, "replay", None)
        if replay is not None:
            replay()  # the next cells' requests go back to the kernel at once, in order

    # ------------------------------------------------------------------ the RunView interface (Bridge)
    def frozen_layers(self, model: nn.Module) -> list[str]:
        return self.run.frozen()

    def show_progress(self, step: int, total: int, text: str) -> None:
        if total:
            write(self.progress, max=max(1, total), value=min(step, total))
        write(self.progress_label, value=text)

    def show_frame(self, png: bytes) -> None:
        write(self.plot, value=png)

    def show_state(self, run: Any) -> None:
        state = self.run.state
        write(self.pause_button, disabled=not state.active, description="Resume" if state == State.PAUSED else "Pause")
        write(self.stop_button, disabled=state.final)
        show(self.progress, bool(self.run.total_steps))  # a bar only when the length is known
        text = {State.IDLE: ": waiting for the loop's first step.", State.RUNNING: " · training…",
                State.PAUSED: ": the loop waits in its next step; Resume to continue, or Stop.",
                State.STOPPED: f" at step {self.run.global_step:,}.",
                State.FINISHED: f" after {self.run.global_step:,} steps.", State.FAILED: " (see below)."}[state]
        metrics = last_metrics(self.run)
        text += f" {metrics}" if metrics else ""
        if self.run.should_stop and state.active:
            text += " · stop asked: the loop ends at its next check of should_stop"
        write(self.status, value=f"<span style='color:#333'><b>{html.escape(self.run.framework)} "
                                 f"{state.value}</b>{html.escape(text, quote=False)}</span>")
        if self.run.error is not None:
            write(self.error, value=error_html(self.run.error))

    def run_ended(self, run: Any, png: bytes) -> None:
        if threading.current_thread() is self._home:
            self.tree.show_frozen(None)  # a change the loop never reached is not shown as taken
        self.show_state(run)
        self.show_runs()

    # ------------------------------------------------------------------ the Runs tab
    def show_runs(self) -> None:
        """The store's runs of this notebook (engine runs and watched loops alike), or this run."""
        if self.store is None:
            summaries = [summarize(self.run)]
        else:
            records = [r for r in self.store.runs() if r.notebook == getattr(self.run, "notebook", None)]
            summaries = [summarize(r, self.store) for r in records] or [summarize(self.run)]
        columns, rows = table(summaries)
        write(self.runs_table, value=table_html(columns, rows))


def _covered(layer: str, names: list[str]) -> bool:
    return any(layer == n or layer.startswith(n + ".") for n in names)


def _nothing_left(model: nn.Module, names: list[str]) -> str:
    """Why freezing ``names`` is refused ("" when it is not): nothing would be left to train."""
    frozen = {id(p) for n in names for *_, p in parameters_of(model, n)}
    if names and all(id(p) in frozen for p in model.parameters()):
        return "cannot freeze everything: nothing would be left to learn the new loss. Leave at least the head trainable"
    return ""


def _cannot_unfreeze(run: WatchedRun, model: nn.Module, layers: list[str], names: list[str]) -> str:
    """Why ``layers`` cannot be unfrozen from here, with ``names`` frozen ("" when they can)."""
    if not layers:
        return ""
    if run.optimizer is None:
        return ("cannot unfreeze from here: watch() was given no optimizer, so it cannot tell whether the loop's "
                "optimizer holds these parameters. Pass the optimizer to watch(model, optimizer)")
    held = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    held |= {id(p) for n in names for *_, p in parameters_of(model, n)}  # frozen again at once
    missing = [n for n in layers if any(id(p) not in held for *_, p in parameters_of(model, n))]
    if missing:
        return (f"cannot unfreeze {', '.join(missing)}: the loop's optimizer does not hold its parameters, so they "
                f"would not train. Build the optimizer over model.parameters() (frozen ones included) to unfreeze "
                f"from here")
    return ""


class DashboardSlot(W.VBox):
    """Where a run's dashboard goes when it is shown before the run exists (a framework's callback
    displayed before ``trainer.train()``): a line saying so, then the dashboard once :meth:`attach`
    gives the run (from the loop's thread: the cell that trains)."""

    def __init__(self, text: str = "waiting for training to begin: the dashboard appears with its first step.") -> None:
        super().__init__()
        self.add_class("rw-watch-slot")
        self.dashboard: WatchDashboard | None = None
        self.children = [css(W.HTML(message_html(text)), "rw-status")]

    def _ipython_display_(self) -> None:
        display_with_note(self, "watch", WATCH_NOTE)

    def attach(self, run: WatchedRun, store: RunStore | None = None) -> WatchDashboard:
        """Show ``run``'s dashboard here (made once per run)."""
        if self.dashboard is None or self.dashboard.run is not run:
            self.dashboard = WatchDashboard(run, store)
            self.children = [self.dashboard]
        return self.dashboard
