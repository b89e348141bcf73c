"""``compare(...)``: several runs side by side, as a table and one overlaid figure.

Works on live :class:`~retrain_widgets.core.engine.Retrainer` objects and on runs kept in a
:class:`~retrain_widgets.core.store.RunStore` (by record or id). The table's content comes
from :mod:`retrain_widgets.core.comparison`, the figure from
:mod:`retrain_widgets.plots.comparison`; :func:`table_html` (here) writes the table as HTML
for notebooks and the Runs tab.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from .core.comparison import RunSummary, summarize, table
from .core.store import RunStore

__all__ = ["Comparison", "compare", "table_html"]


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return "–"
    if column == "frozen" and value == []:
        return "none"  # nothing frozen, said in words rather than as an empty list
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return html.escape(", ".join(f"{k}={v}" for k, v in value.items()) or "{}")
    if isinstance(value, list):
        return html.escape(", ".join(map(str, value)) or "[]")
    return html.escape(str(value))


def _head(column: str) -> str:
    """A column title that may break after ``_`` ("mean_<wbr>alignment"): long titles wrap, not the table."""
    return html.escape(column).replace("_", "_<wbr>")


def table_html(columns: Sequence[str], rows: Sequence[dict[str, Any]], highlight: str | None = None) -> str:
    """An HTML table (for notebooks and the Runs tab). Compact, with the run names at least 11em wide
    (no name wraps over four lines), and in a box that scrolls sideways on its own when the table is
    still wider than the page: the page never does, and no column is cut."""
    head = "".join(f"<th style='text-align:left;vertical-align:bottom;padding:2px 4px'>{_head(c)}</th>"
                   for c in columns)
    body = []
    for r in rows:
        style = " style='background:#f3f8ff'" if highlight is not None and r.get("id") == highlight else ""
        cells = "".join(f"<td style='padding:2px 4px{';min-width:11em' if c == 'run' else ''}'>{_cell(r.get(c), c)}"
                        f"</td>" for c in columns)
        body.append(f"<tr{style}>{cells}</tr>")
    return (f"<div style='max-width:100%;overflow-x:auto'><table style='border-collapse:collapse;font-size:11.5px'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


class Comparison:
    """The result of :func:`compare`: ``columns``/``rows`` (a sortable table), ``plot()`` (PNG).

    In a notebook it shows as the table followed by the figure.
    """

    def __init__(self, summaries: Sequence[RunSummary], sort_by: str | None = None,
                 descending: bool | None = None) -> None:
        self.summaries = list(summaries)
        self.columns, self.rows = table(self.summaries, sort_by, descending)

    def sort(self, by: str, descending: bool | None = None) -> Comparison:
        """A copy sorted by column ``by``."""
        return Comparison(self.summaries, by, descending)

    def plot(self, width_px: int = 1000, height_px: int = 560) -> bytes:
        """PNG bytes of the overlay figure (losses, metrics, old-task metric, gradients)."""
        from .plots.comparison import comparison_png

        return comparison_png(self.summaries, width_px=width_px, height_px=height_px)

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["id", *self.columns]).set_index("run")

    def html(self) -> str:
        return table_html(self.columns, self.rows)

    def _repr_html_(self) -> str:
        import base64

        png = base64.b64encode(self.plot()).decode()
        return f"{self.html()}<img src='data:image/png;base64,{png}' style='max-width:100%'/>"

    def __repr__(self) -> str:
        return f"Comparison({len(self.rows)} runs, columns={self.columns})"


def compare(runs: Iterable[Any], store: RunStore | None = None, names: Sequence[str] | None = None,
            sort_by: str | None = None, descending: bool | None = None) -> Comparison:
    """Compare runs: the config fields that differ, final metrics, and an overlay figure.

    Parameters
    ----------
    runs
        Runs (``Retrainer`` objects, or any :class:`~retrain_widgets.core.run.Run`: a watched loop, ...),
        stored runs (``RunRecord``) or run ids (with ``store``).
    names
        Labels for the runs (default: the stored names, or ``run@...``).
    sort_by, descending
        Table order (default: validation metric, best first).
    """
    runs = list(runs)
    if names is not None and len(names) != len(runs):
        raise ValueError(f"got {len(names)} names for {len(runs)} runs")
    summaries = [summarize(r, store, None if names is None else names[i]) for i, r in enumerate(runs)]
    return Comparison(summaries, sort_by, descending)
