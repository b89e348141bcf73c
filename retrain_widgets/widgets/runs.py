"""The studio's "Runs" tab: every run from the same pretrained weights, compared and restorable.

A thin view of a :class:`~retrain_widgets.headless.HeadlessStudio`; the what-if queue's topics
(``queue``, ``queue_done``) reach it from the queue's thread, so it writes through
:func:`~.writes.write`. The table fills live: it is redrawn when a run is first recorded (its
first publish) and when its state changes, from the thread that trains or reads that run."""

from __future__ import annotations

import ast
import threading
from typing import Any

import ipywidgets as W

from ..comparison import table_html
from ..core.comparison import METRIC_COLUMNS, RunSummary, table
from ..core.events import Event
from ..core.names import Series
from ..headless import HeadlessStudio
from ..plots.comparison import comparison_png
from ..topics import Topic
from .binding import message_html
from .whatif import WhatIfBuilder
from .writes import show, together, write

__all__ = ["RunsPanel"]

_GRID_HINT = '{"loss": ["bce", "focal"], "frozen": [["features"], []]}'


class RunsPanel(W.VBox):
    """Table of runs (config fields that differ, final metrics), overlay, restore, delete,
    export as a script, and the what-if grid."""

    def __init__(self, studio: HeadlessStudio) -> None:
        super().__init__()
        self.studio = studio
        self.add_class("rw-runs")
        self.refresh_button = W.Button(description="Refresh", layout=W.Layout(width="auto"))
        self.refresh_button.add_class("rw-runs-refresh")
        self.sort_by = W.Dropdown(options=[Series.VAL_METRIC], description="sort by", layout=W.Layout(width="240px"))
        self.descending = W.ToggleButton(value=True, description="best first", layout=W.Layout(width="auto"))
        self.scope = scope_switch(studio)
        self.scope.observe(lambda _: self.refresh(), names="value")
        self.table = W.HTML()
        self.table.add_class("rw-runs-table")
        self.select = W.SelectMultiple(options=[], rows=6, description="runs", layout=W.Layout(width="520px"))
        self.select.add_class("rw-runs-select")
        self.overlay_button = W.Button(description="Overlay selected", button_style="info",
                                       layout=W.Layout(width="auto"))
        self.overlay_button.add_class("rw-runs-overlay")
        self.restore_button = W.Button(description="Restore", layout=W.Layout(width="auto"),
                                       tooltip="load the selected run's weights (studio.model) and config")
        self.restore_button.add_class("rw-runs-restore")
        self.delete_button = W.Button(description="Delete", button_style="danger", layout=W.Layout(width="auto"))
        self.delete_button.add_class("rw-runs-delete")
        self.code_button = W.Button(description="Show code", layout=W.Layout(width="auto"),
                                    tooltip="the selected run (or the current config) as a plain PyTorch script")
        self.code_button.add_class("rw-runs-code")
        self.figure = W.Image(format="png", layout=W.Layout(width="100%", max_width="1000px", display="none",
                                                             margin="2px 0"))
        self.figure.add_class("rw-runs-figure")
        self.code = W.Textarea(layout=W.Layout(width="100%", height="320px", display="none", margin="2px 0"))
        self.code.add_class("rw-runs-code-text")
        self.grid = W.Textarea(placeholder=_GRID_HINT, layout=W.Layout(width="520px", height="60px"))
        self.grid.add_class("rw-whatif-grid")
        self.grid_button = W.Button(description="Run what-ifs", button_style="success", layout=W.Layout(width="auto"))
        self.grid_button.add_class("rw-whatif-run")
        self.message = W.HTML()
        self.message.add_class("rw-runs-message")
        self.builder = WhatIfBuilder(studio, say=self.say)
        self.refresh_button.on_click(lambda _: self.refresh())
        self._refreshing = False
        self.sort_by.observe(lambda _: None if self._refreshing else self.refresh(), names="value")
        self.descending.observe(lambda _: self.refresh(), names="value")
        self.overlay_button.on_click(lambda _: self.overlay())
        self.restore_button.on_click(lambda _: self._restore())
        self.delete_button.on_click(lambda _: self._delete())
        self.code_button.on_click(lambda _: self._show_code())
        self.grid_button.on_click(lambda _: self._what_if())
        self.children = [
            W.HBox([self.refresh_button, self.sort_by, self.descending, self.scope],
                   layout=W.Layout(align_items="center", flex_flow="row wrap")),
            self.table,
            W.HBox([self.select, W.VBox([self.overlay_button, self.restore_button, self.code_button,
                                         self.delete_button])]),
            W.HTML("<b>What if…</b> tick the fields to vary and their values; every combination runs from the same "
                   "pretrained weights, one after another."),
            self.builder,
            W.HTML(f"<i>Advanced:</i> the grid as a dict of any config fields, e.g. <code>{_GRID_HINT}</code>"),
            W.HBox([self.grid, self.grid_button], layout=W.Layout(align_items="center")),
            self.message, self.figure, self.code,
        ]
        self._summaries: list[RunSummary] = []
        self._order = threading.Lock()  # numbers the refreshes' reads
        self._reads = self._drawn = 0
        studio.on(Topic.QUEUE, lambda p: self.say(p.text, p.error))
        studio.on(Topic.QUEUE_DONE, lambda p: self.show_queued(p.keys))
        studio.on(Topic.RUN, lambda p: self._follow(p.run))

    def _follow(self, run: Any) -> None:
        """Redraw the table at ``run``'s first publish (the studio records a run right after it
        announced it) and, from then on, when its state changes (the store's handler, added
        before, has recorded the new state by then)."""
        first = [True]

        def published(_info: Any) -> None:
            if first[0]:
                first[0] = False
                run.on(Event.STATE_CHANGE, lambda _i: self.refresh())
                self.refresh()

        run.on(Event.PUBLISH, published)

    def say(self, text: str, error: bool = False) -> None:
        """A message under the what-if grid (plain text, ```code``` spans)."""
        write(self.message, value=message_html(text, error))

    def show_queued(self, keys: list[str]) -> None:
        """The what-if queue ended: its runs selected, and overlaid when there are any."""
        if keys:
            self.overlay(keys)
        else:
            self.refresh(select=keys)

    # ------------------------------------------------------------------ data
    def summaries(self) -> list[RunSummary]:
        return self.studio.run_summaries(every=bool(self.scope.value))

    def refresh(self, select: list[str] | None = None) -> None:
        """Re-read the runs and redraw the table. From the kernel's thread and the runs' threads: the
        store is read outside the dashboard's write lock (other views keep drawing meanwhile), the
        table drawn under it, and a read that a later one overtook is not drawn over it."""
        with self._order:
            self._reads += 1
            read = self._reads
        try:
            summaries, error = self.summaries(), None
        except Exception as exc:  # noqa: BLE001 - a damaged or unreadable store: said here, not in a log
            summaries, error = [], exc
        with together():
            if read < self._drawn:
                return
            self._drawn = read
            if error is not None:
                self.say(f"✗ the runs could not be listed: {type(error).__name__}: {error}", error=True)
                return
            self._summaries = summaries
            self._draw(select)

    def _draw(self, select: list[str] | None) -> None:
        damaged = [s.name for s in self._summaries if "damaged" in s.state]
        if damaged:
            self.say(f"✗ damaged in the store: {', '.join(damaged)} (listed; delete to remove).", error=True)
        if not self._summaries:
            write(self.table, value="<i>no runs yet: press Start, or run what-ifs below.</i>")
            write(self.select, options=())
            return
        columns, _ = table(self._summaries)
        sortable = [c for c in columns if c != "state"]
        current = self.sort_by.value if self.sort_by.value in sortable else (
            Series.VAL_METRIC if Series.VAL_METRIC in sortable else sortable[0])
        self._refreshing = True
        try:
            write(self.sort_by, options=tuple(sortable))
            write(self.sort_by, value=current)
        finally:
            self._refreshing = False
        descending = self.descending.value if current in (Series.VAL_METRIC, Series.OLD_METRIC) else not self.descending.value
        if current not in METRIC_COLUMNS:
            descending = False
        columns, rows = table(self._summaries, current, descending)
        write(self.table, value=table_html(columns, rows))
        keys = [self._key(s) for s in self._summaries]
        by_key = {self._key(s): s for s in self._summaries}
        ordered = [next(k for k in keys if by_key[k].name == r["run"] and (by_key[k].id == r["id"])) for r in rows]
        options = [(f"{by_key[k].name} · {by_key[k].state}", k) for k in ordered]
        keep = [k for k in (select if select is not None else self.select.value) if k in keys]
        write(self.select, options=tuple(options))
        write(self.select, value=tuple(keep))

    @staticmethod
    def _key(s: RunSummary) -> str:
        return s.id if s.id is not None else s.name

    def _selected(self) -> list[RunSummary]:
        chosen = set(self.select.value)
        return [s for s in self._summaries if self._key(s) in chosen]

    # ------------------------------------------------------------------ actions
    def overlay(self, keys: list[str] | None = None) -> bytes | None:
        """Overlay the selected runs (or ``keys``) in one figure, re-read first: a run still going
        shows what the store holds of it (saved every few seconds), and the table its state now."""
        self.refresh(select=keys)
        chosen = self._selected()
        if not chosen:
            self.say("select one or more runs to overlay.")
            return None
        png = comparison_png(chosen)
        write(self.figure, value=png)
        show(self.figure, True)
        show(self.code, False)  # one view at a time: the newer one
        self.say(f"overlay of {len(chosen)} run{'s' if len(chosen) > 1 else ''}.")
        return png

    def _restore(self) -> None:
        chosen = self._selected()
        if len(chosen) != 1:
            self.say("select exactly one run to restore.")
            return
        try:
            self.studio.restore(self._key(chosen[0]))
        except Exception as exc:  # noqa: BLE001 - a missing or damaged file, a model that does not fit: shown here
            self.say(f"✗ could not restore {chosen[0].name}: {exc}", error=True)
            return
        self.say(f"restored {chosen[0].name}: its weights are `studio.model`, its config is the studio's.")

    def _delete(self) -> None:
        chosen = self._selected()
        if not chosen:
            self.say("select the runs to delete.")
            return
        for s in chosen:
            self.studio.delete_run(self._key(s))
        self.say(f"deleted {len(chosen)} run{'s' if len(chosen) > 1 else ''}.")
        self.refresh()

    def _show_code(self) -> None:
        chosen = self._selected()
        key = self._key(chosen[0]) if len(chosen) == 1 else None
        try:
            write(self.code, value=self.studio.code(key))
        except ValueError as exc:
            self.say(f"✗ {exc}", error=True)
            return
        show(self.code, True)
        show(self.figure, False)
        what = chosen[0].name if key else "the current config"
        self.say(f"{what} as a standalone PyTorch script (also runs under `torchrun --nproc_per_node=N`).")

    def _what_if(self) -> None:
        text = self.grid.value.strip() or _GRID_HINT
        try:
            grid: Any = ast.literal_eval(text)
            self.studio.what_if(grid)
        except (ValueError, SyntaxError) as exc:
            self.say(f"✗ what-if grid: {exc}", error=True)


def scope_switch(studio: HeadlessStudio) -> W.ToggleButtons:
    """This notebook's runs (the default), or every run of the same pretrained model in the store's
    folder (hidden without a store)."""
    notebook = studio.book.notebook
    here = "this notebook" if notebook is not None else "outside notebooks"
    switch = W.ToggleButtons(options=[(here, False), ("every notebook", True)], value=False,
                             tooltips=[f"runs made in {notebook or 'no notebook (scripts, consoles)'}",
                                       "every run of this pretrained model in the store's folder"],
                             style={"button_width": "auto"}, layout=W.Layout(width="auto"))
    switch.add_class("rw-runs-scope")
    show(switch, studio.store is not None)
    return switch
