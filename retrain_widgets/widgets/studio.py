"""``RetrainStudio``: the notebook dashboard.

Standard ipywidgets 8 only (no custom JavaScript), so it renders wherever widgets do:
JupyterLab, Notebook 7, VS Code. Its whole state is one :class:`RunConfig`
(``studio.config``); every control mirrors a field, and setting the config from Python
updates the controls.

The dashboard is a set of thin views (one per tab, and the run controls) bound to a
:class:`~retrain_widgets.headless.HeadlessStudio` (``studio.headless``), which holds the state
and does the work; the studio's Python API forwards to it.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Iterable
from typing import Any

import ipywidgets as W
from torch import nn

from ..core.batches import Forward
from ..core.config import RunConfig
from ..core.engine import Retrainer
from ..core.store import RunStore
from ..headless import HeadlessStudio
from ..topics import Topic
from .binding import ConfigBinding, css
from .bridge import Bridge
from .controls import ControlsView
from .reopen import STUDIO_NOTE, STUDIO_NOTE_FIGURE, display_with_note
from .runs import RunsPanel
from .tabs import LayersTab, LossTab, OptimisationTab, ScheduleTab
from .uipoll import wait_while
from .writes import show, together, write

__all__ = ["RetrainStudio"]

_TABS = {"Layers": "layers_tab", "Loss": "loss_tab", "Optimisation": "optimisation_tab",
         "Schedule": "schedule_tab", "Runs": "runs_panel"}
_FOCUS = {"loss": 1, "runs": 4}

# the views' widgets, also reachable as studio.<name> (studio.lr, studio.start_button, ...)
_VIEW_WIDGETS = {
    "layers_tab": ("tree", "train_bn", "frozen_eval"),
    "loss_tab": ("loss_picker", "loss_params", "loss_check", "replace_head_button", "restore_head_button",
                 "head_label", "head_init"),
    "optimisation_tab": ("optimizer_picker", "lr", "weight_decay", "lr_decay", "strategy", "unfreeze_every",
                         "distill", "distill_alpha", "distill_t", "l2sp", "lr_find_button", "use_lr_button",
                         "lr_find_plot", "cache", "cache_state"),
    "schedule_tab": ("schedule_picker", "schedule_params", "epochs", "max_steps", "preview", "preview_note"),
    "controls": ("start_button", "pause_button", "stop_button", "reset_button", "progress", "progress_label",
                 "status", "error", "plot"),
}


def _forward(name: str, settable: bool = False) -> property:
    """``studio.<name>`` is ``studio.headless.<name>`` (a method, or an attribute)."""
    doc = getattr(getattr(HeadlessStudio, name, None), "__doc__", None) or f"``studio.headless.{name}``"
    setter = (lambda self, value: setattr(self.headless, name, value)) if settable else None
    return property(lambda self: getattr(self.headless, name), setter, doc=doc)


class RetrainStudio(W.VBox):
    """Retrain a pretrained model with a new loss, with a mouse.

    Parameters
    ----------
    model
        The pretrained model; never modified (runs train deep copies).
    train, val, old_val
        Loaders of the new task (``train``, ``val``) and of the original one (``old_val``,
        to watch forgetting).
    old_train
        Old-task batches for the alignment probe (``old_val`` when none is given).
    config
        Initial :class:`RunConfig`.
    forward, teacher
        As for :class:`~retrain_widgets.core.engine.Retrainer`.
    store
        Where runs are recorded: a :class:`~retrain_widgets.core.store.RunStore` or a folder;
        ``None`` (default) uses ``.retrain_runs/`` in the working directory (beside the
        notebook); ``False`` keeps runs in memory only.
    code
        ``{"model_code": ..., "data_code": ...}`` for "Show code" (see
        :func:`~retrain_widgets.core.export.export_script`); found automatically for the
        bundled example's loaders.

    Attributes
    ----------
    config : RunConfig
        The whole state of the dashboard; settable as a whole, read-only in place (change a field
        with ``studio.set(lr=...)``).
    run : Retrainer or None
        The current (or last) run; ``run.model`` is its trained copy.
    runs : list of Retrainer
        Every run started from this studio, oldest first.
    headless : HeadlessStudio
        The state and behaviour behind the views.

    Examples
    --------
    >>> studio = RetrainStudio(model, task.train, task.val, task.old_val)
    >>> studio                       # last in a cell: shows the dashboard
    >>> studio.start(); studio.wait()
    """

    def __init__(self, model: nn.Module, train: Iterable[Any], val: Iterable[Any] | None = None,
                 old_val: Iterable[Any] | None = None, *, old_train: Iterable[Any] | None = None,
                 config: RunConfig | None = None, forward: Forward | None = None, teacher: nn.Module | None = None,
                 title: str | None = None, store: RunStore | str | os.PathLike[str] | None | bool = None,
                 code: dict[str, str] | None = None) -> None:
        super().__init__()
        self.headless = HeadlessStudio(model, train, val, old_val, old_train=old_train, config=config,
                                       forward=forward, teacher=teacher, title=title, store=store, code=code,
                                       cell=_cell_id())
        self.headless.wait_while = wait_while  # waiting handles clicks (Stop) in a kernel
        self.add_class("rw-studio")
        self.bridge: Bridge | None = None
        self.display_id: str | None = None
        self.binding = ConfigBinding(self.headless)
        self._build()
        self.binding.sync()
        self.headless.refresh()

    def _build(self) -> None:
        h, b = self.headless, self.binding
        n_params = sum(p.numel() for p in h.pretrained.parameters())
        self.header = W.HTML(f"<div style='font-size:1.25em'><b>RetrainStudio</b> · {html.escape(h.title)} · "
                             f"{n_params:,} parameters</div>")
        self.layers_tab = b.add(LayersTab(h, b))
        self.loss_tab = b.add(LossTab(h, b))
        self.optimisation_tab = b.add(OptimisationTab(h, b))
        self.schedule_tab = b.add(ScheduleTab(h, b))
        self.runs_panel = RunsPanel(h)
        self.controls = ControlsView(h)
        self.controls.on_final = self._keep_final
        for view, names in _VIEW_WIDGETS.items():
            for name in names:
                setattr(self, name, getattr(getattr(self, view), name))
        self.tabs = css(W.Tab(children=[getattr(self, v) for v in _TABS.values()]), "rw-tabs")
        self.tabs.titles = tuple(_TABS)
        self.tabs.observe(lambda c: self.runs_panel.refresh() if c["new"] == _FOCUS["runs"] else None,
                          names="selected_index")
        self.children = [self.header, self.tabs, self.controls]
        h.on(Topic.CONFIG, lambda p: b.sync())
        h.on(Topic.FOCUS, lambda p: write(self.tabs, selected_index=_FOCUS[p.where]))
        h.on(Topic.RUN, lambda p: self._attach(p.run))
        h.on(Topic.PLOT, lambda p: self._live_again())
        h.on(Topic.RUN_FAILED, lambda p: self.bridge.detach() if self.bridge is not None else None)

    def _attach(self, run: Retrainer) -> None:
        self._live_again()
        if self.bridge is not None:
            self.bridge.detach()  # one run drawn at a time, the newest (a grid's runs may train side by side)
        self.bridge = Bridge(self.controls, run, self.headless.figure)
        if run.state.active:  # an executor's run is announced once it has begun: its RUNNING came before
            self.bridge.update_progress()
            self.controls.show_state(run)

    # ================================================================== the Python API (see HeadlessStudio)
    config = _forward("config", settable=True)
    figure = _forward("figure", settable=True)
    set = _forward("set")
    start = _forward("start")
    pause = _forward("pause")
    resume = _forward("resume")
    stop = _forward("stop")
    reset = _forward("reset")
    wait = _forward("wait")
    wait_async = _forward("wait_async")
    what_if = _forward("what_if")
    restore = _forward("restore")
    delete_run = _forward("delete_run")
    code = _forward("code")
    check_loss = _forward("check_loss")
    update_preview = _forward("update_preview")
    find_lr = _forward("find_lr")
    total_steps = _forward("total_steps")
    run_summaries = _forward("run_summaries")
    model = _forward("model")
    history = _forward("history")
    run = _forward("run")
    runs = _forward("runs")
    mismatch = _forward("mismatch")
    loss_choice = _forward("loss_choice")
    lr_suggestion = _forward("lr_suggestion")
    pretrained = _forward("pretrained")
    pretrained_id = _forward("pretrained_id")
    store = _forward("store")
    title = _forward("title")
    train_loader = _forward("train_loader")
    val_loader = _forward("val_loader")
    old_val_loader = _forward("old_val_loader")
    old_train_loader = _forward("old_train_loader")
    forward = _forward("forward")
    teacher = _forward("teacher")
    code_hints = _forward("code_hints", settable=True)

    # ================================================================== closing
    def close(self, timeout: float = 30.0) -> None:
        """Stop any run and queued what-ifs, then close every widget of the dashboard.

        ipywidgets keeps a widget alive until it is closed, and with it all it refers to: here the
        runs, their trained models and the figure. A notebook that builds a new studio each time a
        cell runs can close the old one to give that memory back. What the store recorded stays
        there; ``runs`` and ``history`` stay readable; the dashboard cannot be shown again.

        Raises
        ------
        TimeoutError
            When the run has not ended ``timeout`` seconds after being stopped; nothing is closed
            then (its thread still writes to the dashboard): call ``close()`` again.
        """
        h = getattr(self, "headless", None)
        if h is None:  # __init__ failed before the studio was made (Widget.__del__ closes it)
            super().close()
            return
        h.stop()
        deadline = time.monotonic() + timeout
        threads = []
        for thread_of in (lambda: h.queue.thread, lambda: h.run.thread if h.run is not None else None):
            thread = thread_of()  # the run's after the queue's: the queue may have started it
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))  # its last handlers (the final frame) too
                threads.append(thread)
        if any(t.is_alive() for t in threads):
            raise TimeoutError(f"the run did not end within {timeout} s of being stopped; nothing was closed: "
                               "call close() again")
        if self.bridge is not None:
            self.bridge.detach()
        for widget in widget_tree(self):
            if widget is not self:
                widget.close()
        super().close()

    # ================================================================== display
    def _ipython_display_(self) -> None:
        from IPython.display import display

        # the dashboard, then (its own output, which the final figure's updates leave alone) the note a
        # notebook reopened without widget state shows in its place
        display_with_note(self, "studio", STUDIO_NOTE, with_figure=STUDIO_NOTE_FIGURE)
        if self.display_id is None:
            self.display_id = f"retrain-studio-final-{id(self)}-{time.time_ns()}"
            display({"text/plain": ""}, raw=True, display_id=self.display_id)

    def _keep_final(self, png: bytes) -> None:
        """A run ended: its final figure becomes a static output (it outlives the widgets: a notebook
        saved and reopened without a kernel shows it) and replaces the live plot, so that one figure
        is on screen (the live plot comes back, and the static one goes, at the next frame)."""
        with together():  # one step against _live_again: a grid's next run may begin on another thread
            if self.display_id is not None:
                show(self.plot, False)  # hidden first: never two figures, not even for a moment
                if not self._update_final(png):
                    show(self.plot, True)

    def _live_again(self) -> None:
        """The live plot shows again (a run starts, a reset or a restore drew it): no static copy."""
        with together():
            if self.display_id is not None and self.plot.layout.display == "none":
                self._update_final(None)
                show(self.plot, True)

    def _update_final(self, png: bytes | None) -> bool:
        try:
            from IPython.display import Image, update_display

            if png is None:
                update_display({"text/plain": ""}, display_id=self.display_id, raw=True)
            else:
                update_display(Image(data=png, format="png"), display_id=self.display_id)
        except Exception:  # noqa: BLE001 - no IPython display here: nothing to keep
            return False
        return True


def widget_tree(root: W.Widget) -> list[W.Widget]:
    """``root`` and every widget its synced traits reach (children, layouts, styles...), once each."""
    seen: dict[int, W.Widget] = {}
    stack = [root]
    while stack:
        widget = stack.pop()
        if id(widget) in seen:
            continue
        seen[id(widget)] = widget
        for name in widget.keys:
            value = getattr(widget, name, None)
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, W.Widget):
                    stack.append(item)
    return list(seen.values())


def _cell_id() -> str | None:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        parent = ip.kernel.get_parent() if ip is not None and hasattr(ip, "kernel") else None
        return (parent or {}).get("metadata", {}).get("cellId")
    except Exception:  # noqa: BLE001 - outside a kernel
        return None
