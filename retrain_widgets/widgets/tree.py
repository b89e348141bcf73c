"""The layer tree: a collapsible view of ``named_modules()`` with a freeze checkbox per node,
the parameters a module holds itself as nodes of their own, and a LoRA toggle per adaptable
layer (with "all attention projections" for transformers)."""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as W
from torch import nn

from ..choices import up_to_everything
from ..core.lora import adapter_counts, adapter_size, attention_projections, is_adaptable, lora_target_names
from ..core.tree import LayerInfo, find_head_or_none, frozen_names, layer_tree, names_up_to, parameters_of

__all__ = ["LayerTreeView"]


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    if n >= 10_000:
        return f"{n / 1e3:.0f} k"
    return f"{n:,}"


def _percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` in %, never rounded to 0 % or 100 % when it is not: 65 trainable of 28 k
    leaves "99.8 %" frozen, not "100 %"."""
    pct = 100 * part / max(whole, 1)
    if 0 < part < whole and (pct < 0.5 or pct >= 99.5):
        digits = 1
        while digits < 4 and round(pct, digits) in (0.0, 100.0):
            digits += 1
        return f"{pct:.{digits}f} %"
    return f"{pct:.0f} %"


def _kind(info: LayerInfo) -> str:
    return f"Parameter {list(info.shape)}" if info.kind == "parameter" else info.type


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
        self.lora = W.ToggleButton(value=False, description="LoRA", layout=W.Layout(width="auto"),
                                   tooltip=f"train a low-rank adapter on {info.name} (its weights stay frozen)")
        self.lora.add_class("rw-tree-lora")
        adaptable = view.on_lora is not None and info.kind == "module" and info.name != view.head and \
            is_adaptable(view.modules[info.name])
        self.lora.layout.display = None if adaptable else "none"
        self.box = W.HBox([self.toggle, self.check, self.label, self.upto, self.lora],
                          layout=W.Layout(align_items="center", min_height="28px"))
        self.box.add_class("rw-tree-row")
        self.toggle.on_click(lambda _: view._toggle(self.name))
        self.check.observe(lambda change: view._checked(self.name, change["new"]), names="value")
        self.upto.on_click(lambda _: view._up_to(self.name))
        self.lora.observe(lambda change: view._lora_toggled(self.name, change["new"]), names="value")


class LayerTreeView(W.VBox):
    """Collapsible module tree; ticking a node freezes it (children follow).

    Rows are built lazily: only the nodes of expanded branches exist as widgets, so a model
    with hundreds of modules opens at once. ``on_change(names)`` receives the new list of
    frozen module / parameter names. With ``on_lora``, each Linear / Conv / Embedding row but
    the head's has a LoRA toggle, and ``on_lora(names)`` receives the new list of layers to
    adapt (``[]``: LoRA off); :meth:`set_lora` shows a choice (names or glob patterns) and its
    rank. Adapter parameter counts are shown per row and in the totals.
    """

    def __init__(self, model: nn.Module, on_change: Callable[[list[str]], None], expand_depth: int = 1,
                 on_lora: Callable[[list[str]], None] | None = None, head: str | None = None) -> None:
        super().__init__()
        self.add_class("rw-tree")
        self._on_change = on_change
        self.on_lora = on_lora
        self.head = head
        self.lora_names: list[str] = []
        self.lora_r = 8
        self._rows: dict[str, _Row] = {}
        self._expanded: set[str] = {""}
        self._silent = False
        self._pending: tuple[list[str], set[int]] | None = None  # a freezing shown before the model takes it
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
        self.lora_attention = W.Button(description="LoRA: all attention projections", layout=W.Layout(width="auto"),
                                       tooltip="adapters on every query / key / value / output projection")
        self.lora_attention.add_class("rw-tree-lora-attention")
        self.lora_off = W.Button(description="no LoRA", layout=W.Layout(width="auto"))
        self.lora_attention.on_click(lambda _: self._lora_chosen(attention_projections(self.model, self.head)))
        self.lora_off.on_click(lambda _: self._lora_chosen([]))
        buttons = [self.totals, self.expand_all, self.collapse_all, self.unfreeze_all]
        if on_lora is not None:
            buttons += [self.lora_attention, self.lora_off]
        self.children = [W.HBox(buttons, layout=W.Layout(align_items="center", flex_flow="row wrap")), self.list]
        self.set_model(model)
        self._expand_to(expand_depth)

    # ------------------------------------------------------------------ public
    def set_model(self, model: nn.Module) -> None:
        """Show ``model`` (its freezing state is read from ``requires_grad``)."""
        self.model = model
        self.modules = dict(model.named_modules())
        self.head = self.head if self.head in self.modules else find_head_or_none(model)
        self.lora_attention.layout.display = None if attention_projections(model, self.head) else "none"
        self.tree = layer_tree(model)
        self.up_to_all = up_to_everything(model)  # "freeze up to here" would leave nothing to train
        stale = [n for n in self._rows if n not in self.tree]
        for n in stale:
            del self._rows[n]
        self.refresh()

    def show_frozen(self, names: list[str] | None) -> None:
        """Show ``names`` frozen, and everything else trainable, before the model is (a change a training
        loop takes at its next step); ``None``: the model's own freezing again."""
        self._pending = None if names is None else (
            list(names), {id(p) for n in names for *_, p in parameters_of(self.model, n)})
        self.refresh()

    def refresh(self) -> None:
        """Re-read parameter counts and freezing from the model (or the freezing it is about to take)."""
        pending = self._pending
        self.tree = layer_tree(self.model, None if pending is None else pending[1])
        self.frozen = frozen_names(self.model) if pending is None else list(pending[0])
        root = self.tree[""]
        adapters = sum(self._adapters().values())
        lora = (f" · LoRA r={self.lora_r} on {len(self.lora_names)} layer{'s' if len(self.lora_names) != 1 else ''}: "
                f"<b>+{_count(adapters)}</b> adapter parameters") if self.lora_names else ""
        self.totals.value = (
            f"<b>{_count(root.trainable_params)}</b> trainable · <b>{_count(root.frozen_params)}</b> frozen "
            f"({_percent(root.frozen_params, root.total_params)}) of {_count(root.total_params)} parameters{lora}"
        )
        self._render()

    def set_lora(self, patterns: list[str], r: int | None) -> None:
        """Show the LoRA choice of a config: ``patterns`` (names or glob patterns, ``[]`` with a rank:
        every attention projection) at rank ``r`` (``None``: LoRA off)."""
        self.lora_r = r or 8
        try:
            self.lora_names = lora_target_names(self.model, patterns, self.head) if r else []
        except ValueError:
            self.lora_names = []
        self.refresh()

    def _adapters(self) -> dict[str, int]:
        """Adapter parameters per layer: those the model holds (a peft model), else those the
        chosen layers will get at rank ``lora_r``."""
        held = adapter_counts(self.model)
        return held or {n: adapter_size(self.modules[n], self.lora_r) for n in self.lora_names if n in self.modules}

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
        trainable = self.tree[""].trainable_params
        try:
            boxes = []
            for name in self._visible():
                info = self.tree[name]
                row = self._rows.get(name)
                if row is None:
                    row = self._rows[name] = _Row(self, info)
                frozen_here = info.trainable_params == 0
                inside_frozen = any(name.startswith(f + ".") for f in self.frozen)
                # ticking it would leave nothing trainable: not offered (nor is "up to here" below)
                freezes_all = not frozen_here and info.trainable_params >= trainable
                row.check.value = frozen_here
                row.check.disabled = inside_frozen or freezes_all
                row.check.tooltip = (f"freezing {name} would leave no trainable parameter" if freezes_all
                                     else f"freeze {name}")
                row.upto.layout.display = "none" if name in self.up_to_all else None
                if row.toggle.description:
                    row.toggle.description = "▾" if name in self._expanded else "▸"
                state = ("frozen" if frozen_here else
                         "partly frozen" if info.frozen_params else "")
                colour = "#888" if frozen_here else "#222"
                tag = f" <span style='color:#b36b00'>({state})</span>" if state else ""
                if freezes_all:  # said on the row, not only in the greyed box's tooltip
                    tag += " <i class='rw-tree-kept' style='color:#777'>· not freezable: nothing would train</i>"
                row.lora.value = name in self.lora_names
                row.label.value = (
                    f"<span style='color:{colour}'><b>{html.escape(info.label)}</b> <span style='color:#777'>"
                    f"{html.escape(_kind(info))}</span> · {_count(info.total_params)} params · "
                    f"{_count(info.trainable_params)} trainable</span>{tag}{self._lora_tag(name)}"
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
        self._render()  # a refused change: the boxes show the model's freezing again

    def _up_to(self, name: str) -> None:
        self._on_change(names_up_to(self.model, name))
        self._render()

    def _lora_tag(self, name: str) -> str:
        count = sum(n for layer, n in self._adapters().items() if layer == name or layer.startswith(name + "."))
        return f" <span style='color:#1a7f37'>+{_count(count)} LoRA</span>" if count else ""

    def _lora_toggled(self, name: str, value: bool) -> None:
        if self._silent:
            return
        names = [n for n in self.lora_names if n != name] + ([name] if value else [])
        self._lora_chosen(names)

    def _lora_chosen(self, names: list[str]) -> None:
        self.lora_names = list(names)
        if self.on_lora is not None:
            self.on_lora(list(names))
        self.refresh()
