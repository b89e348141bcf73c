"""The layer tree: a collapsible view of ``named_modules()`` with a freeze checkbox per node."""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as W
from torch import nn

from ..core.tree import LayerInfo, frozen_names, layer_tree, names_up_to

__all__ = ["LayerTreeView"]


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 10_000:
        return f"{n / 1e3:.0f} k"
    return f"{n:,}"


class _Row:
    """Widgets of one node, made the first time the node becomes visible."""

    def __init__(self, view: LayerTreeView, info: LayerInfo) -> None:
        self.name = info.name
        indent = f"{14 * (info.depth - 1)}px"
        has_children = any(view.tree[c].total_params for c in info.children)
        self.toggle = W.Button(description="▸" if has_children else "", disabled=not has_children,
                               layout=W.Layout(width="28px", margin=f"0 0 0 {indent}"),
                               tooltip="expand / collapse")
        self.toggle.add_class("rw-tree-toggle")
        self.check = W.Checkbox(value=False, indent=False, layout=W.Layout(width="22px"),
                                tooltip=f"freeze {info.name}")
        self.check.add_class("rw-tree-check")
        self.check.add_class(f"rw-node-{info.name.replace('.', '-')}")
        self.label = W.HTML(layout=W.Layout(width="auto"))
        self.upto = W.Button(description="freeze up to here", layout=W.Layout(width="auto"),
                             tooltip=f"freeze everything from the input up to {info.name}")
        self.upto.add_class("rw-tree-upto")
        self.box = W.HBox([self.toggle, self.check, self.label, self.upto],
                          layout=W.Layout(align_items="center", min_height="28px"))
        self.box.add_class("rw-tree-row")
        self.toggle.on_click(lambda _: view._toggle(self.name))
        self.check.observe(lambda change: view._checked(self.name, change["new"]), names="value")
        self.upto.on_click(lambda _: view._up_to(self.name))


class LayerTreeView(W.VBox):
    """Collapsible module tree; ticking a node freezes it (children follow).

    Rows are built lazily: only the nodes of expanded branches exist as widgets, so a model
    with hundreds of modules opens at once. ``on_change(names)`` receives the new list of
    frozen module names.
    """

    def __init__(self, model: nn.Module, on_change: Callable[[list[str]], None], expand_depth: int = 1) -> None:
        super().__init__()
        self.add_class("rw-tree")
        self._on_change = on_change
        self._rows: dict[str, _Row] = {}
        self._expanded: set[str] = {""}
        self._silent = False
        self.totals = W.HTML()
        self.totals.add_class("rw-tree-totals")
        self.list = W.VBox(layout=W.Layout(max_height="360px", overflow="auto", border="1px solid #ddd",
                                           padding="4px"))
        self.expand_all = W.Button(description="expand all", layout=W.Layout(width="auto"))
        self.collapse_all = W.Button(description="collapse", layout=W.Layout(width="auto"))
        self.unfreeze_all = W.Button(description="unfreeze all", layout=W.Layout(width="auto"))
        self.unfreeze_all.add_class("rw-tree-unfreeze-all")
        self.expand_all.on_click(lambda _: self._expand_to(depth=99))
        self.collapse_all.on_click(lambda _: self._expand_to(depth=0))
        self.unfreeze_all.on_click(lambda _: self._on_change([]))
        self.children = [W.HBox([self.totals, self.expand_all, self.collapse_all, self.unfreeze_all],
                                layout=W.Layout(align_items="center")), self.list]
        self.set_model(model)
        self._expand_to(expand_depth)

    # ------------------------------------------------------------------ public
    def set_model(self, model: nn.Module) -> None:
        """Show ``model`` (its freezing state is read from ``requires_grad``)."""
        self.model = model
        self.tree = layer_tree(model)
        stale = [n for n in self._rows if n not in self.tree]
        for n in stale:
            del self._rows[n]
        self.refresh()

    def refresh(self) -> None:
        """Re-read parameter counts and freezing from the model."""
        self.tree = layer_tree(self.model)
        self.frozen = frozen_names(self.model)
        root = self.tree[""]
        pct = 100 * root.frozen_params / max(root.total_params, 1)
        self.totals.value = (
            f"<b>{_count(root.trainable_params)}</b> trainable · <b>{_count(root.frozen_params)}</b> frozen "
            f"({pct:.0f} %) of {_count(root.total_params)} parameters"
        )
        self._render()

    def row(self, name: str) -> _Row:
        """The row of ``name`` (expanding its ancestors so that it exists)."""
        parts = name.split(".")
        for i in range(len(parts)):
            self._expanded.add(".".join(parts[:i]))
        self._render()
        return self._rows[name]

    # ------------------------------------------------------------------ rendering
    def _visible(self) -> list[str]:
        out: list[str] = []

        def walk(name: str) -> None:
            for child in self.tree[name].children:
                if self.tree[child].total_params == 0:
                    continue
                out.append(child)
                if child in self._expanded:
                    walk(child)

        walk("")
        return out

    def _render(self) -> None:
        self._silent = True
        try:
            boxes = []
            for name in self._visible():
                info = self.tree[name]
                row = self._rows.get(name)
                if row is None:
                    row = self._rows[name] = _Row(self, info)
                frozen_here = info.trainable_params == 0
                inside_frozen = any(name.startswith(f + ".") for f in self.frozen)
                row.check.value = frozen_here
                row.check.disabled = inside_frozen
                if row.toggle.description:
                    row.toggle.description = "▾" if name in self._expanded else "▸"
                state = ("frozen" if frozen_here else
                         "partly frozen" if info.frozen_params else "")
                colour = "#888" if frozen_here else "#222"
                tag = f" <span style='color:#b36b00'>({state})</span>" if state else ""
                self_label = html.escape(info.label)
                row.label.value = (
                    f"<span style='color:{colour}'><b>{self_label}</b> <span style='color:#777'>"
                    f"{html.escape(info.type)}</span> · {_count(info.total_params)} params · "
                    f"{_count(info.trainable_params)} trainable</span>{tag}"
                )
                boxes.append(row.box)
            self.list.children = boxes
        finally:
            self._silent = False

    # ------------------------------------------------------------------ events
    def _toggle(self, name: str) -> None:
        self._expanded.symmetric_difference_update({name})
        self._render()

    def _expand_to(self, depth: int) -> None:
        self._expanded = {""} | {n for n, info in self.tree.items() if n and info.depth <= depth and info.children}
        self._render()

    def _checked(self, name: str, value: bool) -> None:
        if self._silent:
            return
        # ticking freezes the node (its children follow); unticking unfreezes it and everything
        # inside it (a node inside a frozen parent cannot be unticked: its box is disabled)
        frozen = [f for f in self.frozen if f != name and not f.startswith(name + ".")]
        if value:
            frozen.append(name)
        self._on_change(frozen)

    def _up_to(self, name: str) -> None:
        self._on_change(names_up_to(self.model, name))
