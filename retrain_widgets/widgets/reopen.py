"""What a dashboard's cell shows in a notebook reopened without its kernel and without widget state.

JupyterLab and Notebook 7 do not save widget state by default. A notebook saved that way and reopened
has no widget model for a dashboard's output: the front end writes "Error displaying widget: model not
found" where the dashboard was. A dashboard is therefore displayed with a second, invisible output right
after its widget output (:func:`display_with_note`): an HTML ``<style>`` rule (it applies in trusted
outputs, which a notebook the user saved is) that replaces that error text, in this cell only, by a
note of ours. The rule matches only the widget output directly before its own output, and only while it
shows the front end's error (class ``jupyter-widgets``, text and no element): a live dashboard, another
library's widget and other cells are left alone. Its own output takes no space.
"""

from __future__ import annotations

import html
from typing import Any

__all__ = ["note_bundle", "display_with_note", "STUDIO_NOTE", "STUDIO_NOTE_FIGURE", "WATCH_NOTE"]

STUDIO_NOTE = "The live dashboard ended with its kernel. Run this cell again to get it back."
STUDIO_NOTE_FIGURE = ("The live dashboard ended with its kernel; the last run's figure is below. "
                      "Run this cell again to get the dashboard back.")
WATCH_NOTE = ("The live dashboard of this training loop ended with its kernel. "
              "Run the loop again to watch a new run.")

# the widget renderer's output node once it gave up (it has no data-mime-type attribute in JupyterLab 4.5 or
# Notebook 7.5); a live one holds the widget's element and no class jupyter-widgets
_WIDGET_OUTPUT = ".jp-OutputArea-output.jupyter-widgets"
_CHILD = ".jp-OutputArea-child"


def _css_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def note_bundle(name: str, note: str, with_figure: str | None = None) -> dict[str, str]:
    """The mimebundle of the output that follows a dashboard's widget output: ``note`` replaces the
    front end's "model not found" text of that widget output, ``with_figure`` (when given) instead when
    an image output follows this one. ``name`` makes the marker class (``rw-reopen-<name>``)."""
    marker = f"rw-reopen-{name}"
    error = f"{_CHILD}:has(+ {_CHILD} .{marker}) > {_WIDGET_OUTPUT}:not(:has(*))"
    rules = [
        f"{_CHILD}:has(.{marker}) {{ display: none; }}",  # this output: no space, live or not
        # the front end's own text: hidden, no space (and not in the page's innerText)
        f"{error} {{ visibility: hidden; font-size: 0; line-height: 0; }}",
        f"{error}::after {{ content: {_css_string(note)}; visibility: visible; display: block; padding: 4px 0; "
        "font-size: var(--jp-content-font-size1, 14px); line-height: var(--jp-content-line-height, 1.6); "
        "font-style: italic; color: var(--jp-ui-font-color2, #616161); }",
    ]
    if with_figure is not None:
        image_next = f"{_CHILD}:has(+ {_CHILD} .{marker}):has(+ {_CHILD} + {_CHILD} .jp-RenderedImage)"
        rules.append(f"{image_next} > {_WIDGET_OUTPUT}:not(:has(*))::after {{ content: {_css_string(with_figure)}; }}")
    css = "\n".join(rules)
    return {"text/html": f'<style>\n{css}\n</style><div class="{html.escape(marker)}" hidden></div>',
            "text/plain": ""}


def display_with_note(widget: Any, name: str, note: str, with_figure: str | None = None) -> None:
    """Display ``widget``, then its :func:`note_bundle` (see the module's docstring)."""
    from IPython.display import display

    display(widget._repr_mimebundle_(), raw=True)
    display(note_bundle(name, note, with_figure), raw=True)
