"""Controls for the keyword parameters of a loss or a schedule, built from their ``Param`` specs."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as W

from ..core.registry import Param

__all__ = ["ParamEditor"]

def _parse(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class ParamEditor(W.VBox):
    """One row per parameter; ``on_change(values)`` gets the explicitly set values.

    Bounded floats with a default get a slider, choices a dropdown, booleans a checkbox;
    everything else (including parameters whose default is derived from the run length) a
    text box whose placeholder shows the default (``auto`` when derived).
    """

    def __init__(self, params: Mapping[str, Param], values: Mapping[str, Any],
                 on_change: Callable[[dict[str, Any]], None], css: str = "") -> None:
        super().__init__()
        self.params = dict(params)
        self._on_change = on_change
        self._controls: dict[str, W.Widget] = {}
        self._silent = False
        rows = []
        for name, p in self.params.items():
            control = self._make(name, p, values.get(name))
            control.add_class(f"rw-param-{name}")
            if css:
                control.add_class(css)
            self._controls[name] = control
            label = W.HTML(f"<code>{name}</code>", layout=W.Layout(width="140px"), tooltip=p.help)  # its own: a studio closes its widgets
            rows.append(W.HBox([label, control]))
        if not rows:
            rows.append(W.HTML("<i>no parameters</i>"))
        self.children = rows

    def _make(self, name: str, p: Param, value: Any) -> W.Widget:
        current = p.default if value is None else value
        if p.kind == "choice":
            w: W.Widget = W.Dropdown(options=list(p.choices), value=current, layout=W.Layout(width="180px"))
        elif p.kind == "bool":
            w = W.Checkbox(value=bool(current), indent=False)
        elif (p.kind == "float" and p.default is not None and p.low is not None and p.high is not None
              and p.high > p.low):
            w = W.FloatSlider(value=float(current), min=p.low, max=p.high, step=(p.high - p.low) / 100,
                              readout_format=".3g", continuous_update=False, layout=W.Layout(width="320px"))
        else:
            placeholder = "auto" if p.default is None else repr(p.default)
            w = W.Text(value="" if value is None else repr(value), placeholder=placeholder,
                       continuous_update=False, layout=W.Layout(width="180px"))
        w.observe(lambda change, n=name: self._changed(), names="value")
        return w

    @property
    def values(self) -> dict[str, Any]:
        """Values the user set (text boxes left empty mean "default")."""
        out: dict[str, Any] = {}
        for name, w in self._controls.items():
            p = self.params[name]
            v = _parse(w.value) if isinstance(w, W.Text) else w.value
            if v is None:
                continue
            if not isinstance(w, W.Text) and v == p.default:
                continue
            out[name] = v
        return out

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Show ``values`` without calling ``on_change``."""
        self._silent = True
        try:
            for name, w in self._controls.items():
                p = self.params[name]
                v = values.get(name)
                if isinstance(w, W.Text):
                    w.value = "" if v is None else repr(v)
                else:
                    w.value = p.default if v is None else v
        finally:
            self._silent = False

    def control(self, name: str) -> W.Widget:
        return self._controls[name]

    def _changed(self) -> None:
        if not self._silent:
            self._on_change(self.values)
