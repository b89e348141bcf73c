"""How the dashboard's controls and a :class:`~retrain_widgets.headless.HeadlessStudio`'s config
stay in step: a control's change becomes ``studio.set(field=value)``; a new config is shown by
every view without echoing back."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import ipywidgets as W

from ..core.config import RunConfig
from ..headless import HeadlessStudio

__all__ = ["ConfigBinding", "ConfigView", "css", "message_html"]


class ConfigView(Protocol):
    def show_config(self, cfg: RunConfig) -> None: ...


def css(widget: W.Widget, *classes: str) -> W.Widget:
    """``widget`` with the CSS classes (the browser tests and the page's styles find it by them)."""
    for c in classes:
        widget.add_class(c)
    return widget


def message_html(text: str, error: bool = False) -> str:
    """A studio message (plain text, ```code``` spans) as HTML, red when it is an error."""
    body = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return f"<span style='color:{'#cf222e' if error else '#333'}'>{body}</span>"


class ConfigBinding:
    """Writes controls' changes into ``studio``'s config and shows its config in every view.

    While views show a config (:meth:`sync`), changes the controls report are ignored; a change
    the config refuses (``ValueError``) becomes an error message and the controls show the
    config again.
    """

    def __init__(self, studio: HeadlessStudio) -> None:
        self.studio = studio
        self.syncing = False
        self.views: list[ConfigView] = []

    def add(self, view: Any) -> Any:
        self.views.append(view)
        return view

    def set(self, **changes: Any) -> None:
        self.call(self.studio.set, **changes)

    def call(self, action: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run a studio action for a control: a refusal (``ValueError``) becomes a red status, and
        every view shows the config again (the studio kept it as it was)."""
        if self.syncing:
            return
        try:
            action(*args, **kwargs)
        except ValueError as exc:
            self.studio.status(f"✗ {exc}", error=True)
            self.sync()

    def field(self, widget: W.Widget, name: str, convert: Callable[[Any], Any] = lambda v: v) -> W.Widget:
        """Bind ``widget``'s value to config field ``name`` (through ``convert``); returns it."""
        widget.observe(lambda change: self.set(**{name: convert(change["new"])}), names="value")
        return widget

    @contextmanager
    def quiet(self) -> Iterator[None]:
        was, self.syncing = self.syncing, True
        try:
            yield
        finally:
            self.syncing = was

    def sync(self) -> None:
        """Every view shows the current config."""
        with self.quiet():
            for view in self.views:
                view.show_config(self.studio.config)
