"""``RetrainStudio``: the notebook dashboard.

Standard ipywidgets 8 only (no custom JavaScript), so it renders wherever widgets do:
JupyterLab, Notebook 7, VS Code. Its whole state is one :class:`RunConfig`
(``studio.config``); every control mirrors a field, and setting the config from Python
updates the controls.
"""

from __future__ import annotations

import copy
import html
import os
import threading
import time
import traceback
import weakref
from collections.abc import Iterable
from typing import Any, ClassVar

import ipywidgets as W
import torch
from torch import nn

from ..core import losses, schedules
from ..core.batches import Forward, default_forward, first_batch, logits_of
from ..core.compare import RunSummary, grid_variants, summarize
from ..core.config import OPTIMIZERS, RunConfig
from ..core.engine import Retrainer
from ..core.events import State
from ..core.history import History
from ..core.losses import LossMismatchError
from ..core.store import RunStore, fingerprint
from ..core.tree import (
    find_head_or_none,
    freeze,
    frozen_complement,
    get_module,
    parameterised_layers,
    replace_head,
    unfreeze,
)
from ..plots import LiveFigure, lr_finder_png, lr_preview_png
from .bridge import Bridge
from .params import ParamEditor
from .runs import RunsPanel
from .tree import LayerTreeView
from .uipoll import wait_while

__all__ = ["RetrainStudio"]

_STRATEGIES = ("custom", "head only", "full", "gradual")


def _box(title: str, *children: W.Widget, css: str = "") -> W.VBox:
    box = W.VBox([W.HTML(f"<b>{html.escape(title)}</b>"), *children], layout=W.Layout(padding="6px"))
    if css:
        box.add_class(css)
    return box


def _button(description: str, css: str, style: str = "", tooltip: str = "", width: str = "auto") -> W.Button:
    b = W.Button(description=description, button_style=style, tooltip=tooltip, layout=W.Layout(width=width))
    b.add_class(css)
    return b


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
        The whole state of the dashboard; settable.
    run : Retrainer or None
        The current (or last) run; ``run.model`` is its trained copy.
    runs : list of Retrainer
        Every run started from this studio, oldest first.

    Examples
    --------
    >>> studio = RetrainStudio(model, task.train, task.val, task.old_val)
    >>> studio                       # last in a cell: shows the dashboard
    >>> studio.start(); studio.wait()
    """

    _live: ClassVar[weakref.WeakSet[RetrainStudio]] = weakref.WeakSet()

    def __init__(self, model: nn.Module, train: Iterable[Any], val: Iterable[Any] | None = None,
                 old_val: Iterable[Any] | None = None, *, old_train: Iterable[Any] | None = None,
                 config: RunConfig | None = None, forward: Forward | None = None, teacher: nn.Module | None = None, title: str | None = None,
                 store: RunStore | str | os.PathLike[str] | None | bool = None,
                 code: dict[str, str] | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._cell = _cell_id()
        self._stop_older(model)
        RetrainStudio._live.add(self)
        self.add_class("rw-studio")
        self.pretrained = model
        self.train_loader, self.val_loader, self.old_val_loader = train, val, old_val
        self.old_train_loader = old_train
        self.forward: Forward = forward or default_forward
        self.teacher = teacher
        self._config = copy.copy(config) if config is not None else RunConfig()
        self._config.validate()
        self.run: Retrainer | None = None
        self.runs: list[Retrainer] = []
        self.bridge: Bridge | None = None
        self.mismatch: LossMismatchError | None = None
        self._silent = False
        self._display_id: str | None = None
        self._probe_batch: Any = None
        self._lr_suggestion: float | None = None
        if store is False:
            self.store: RunStore | None = None
        elif isinstance(store, RunStore):
            self.store = store
        else:
            self.store = RunStore(".retrain_runs" if store is None or store is True else store)
        self.code_hints = code
        self._pretrained_id: str | None = None
        self._run_ids: dict[int, str] = {}
        self._run_names: dict[int, str] = {}
        self._restored: tuple[str, nn.Module] | None = None
        self._queue: threading.Thread | None = None
        self._queue_stop = threading.Event()
        self.title = title or type(model).__name__
        self.figure = LiveFigure(title=self.title)
        self._work = self._working_copy()
        self._build()
        self._sync_controls()
        self._refresh_work()
        self.check_loss()
        self.update_preview()
        self.plot.value = self.figure.render(History().snapshot())
        self._show_state(None)

    # ================================================================== config
    @property
    def config(self) -> RunConfig:
        """The run's configuration. Assigning a new one updates every control."""
        return self._config

    @config.setter
    def config(self, value: RunConfig) -> None:
        if not isinstance(value, RunConfig):
            raise ValueError(f"studio.config must be a RunConfig, got {type(value).__name__}")
        value = copy.copy(value).validate()
        old = self._config
        self._config = value
        self._sync_controls()
        self._after_change(old, value)

    def set(self, **changes: Any) -> RunConfig:
        """Change config fields (validated), as the controls do. Returns the new config."""
        old = self._config
        new = old.replace(**changes)
        self._config = new
        self._sync_controls()
        self._after_change(old, new)
        return new

    def _set_from_control(self, **changes: Any) -> None:
        if self._silent:
            return
        try:
            self.set(**changes)
        except ValueError as exc:
            self._status(f"✗ {exc}", error=True)
            self._sync_controls()

    def _after_change(self, old: RunConfig, new: RunConfig) -> None:
        diff = old.diff(new)
        if {"head", "head_out", "seed"} & diff.keys():
            self._work = self._working_copy()
            self._refresh_work()
        elif {"frozen", "train_bn"} & diff.keys():
            self._refresh_work()
        if {"loss", "loss_kwargs", "head", "head_out"} & diff.keys():
            self.check_loss()
        if {"schedule", "schedule_kwargs", "epochs", "max_steps", "lr"} & diff.keys():
            self.update_preview()
        run = self.run
        if run is not None and run.state.active:
            self._apply_live(run, old, new, diff)

    def _apply_live(self, run: Retrainer, old: RunConfig, new: RunConfig, diff: dict[str, Any]) -> None:
        """Changes that a running run takes at its next step boundary: freezing and LR."""
        notes = []
        if "frozen" in diff:
            added = [n for n in new.frozen if n not in old.frozen]
            removed = [n for n in old.frozen if n not in new.frozen]
            if removed:
                run.unfreeze(removed)
            if added:
                run.freeze(added)
            notes.append("freezing")
        if "lr" in diff:
            run.set_lr(new.lr)
            notes.append("learning rate")
        rest = set(diff) - {"frozen", "lr"}
        text = f"applied to the running run: {', '.join(notes)}. " if notes else ""
        if rest:
            text += f"{', '.join(sorted(rest))}: takes effect at the next Start."
        self._status(text)

    # ================================================================== the working copy
    def _working_copy(self) -> nn.Module:
        """A copy of the pretrained model with the config's head, for the tree and the checks."""
        cfg = self._config
        torch.manual_seed(cfg.seed)
        work = copy.deepcopy(self.pretrained)
        if cfg.head_out is not None:
            name = cfg.head or find_head_or_none(work)
            if name is not None and getattr(get_module(work, name), "out_features", None) != cfg.head_out:
                replace_head(work, cfg.head_out, name)
        return work

    def _refresh_work(self) -> None:
        unfreeze(self._work)
        if self._config.frozen:
            try:
                freeze(self._work, self._config.frozen, train_bn=self._config.train_bn)
            except ValueError as exc:
                self._status(f"✗ {exc}", error=True)
        self.tree.set_model(self._work)
        head = self._config.head or find_head_or_none(self._work)
        self.head_label.value = (
            f"head <code>{html.escape(str(head))}</code>: "
            f"{getattr(get_module(self._work, head), 'out_features', '?') if head else '?'} outputs"
            + (" (replaced)" if self._config.head_out is not None else " (pretrained)")
        )

    # ================================================================== building
    def _build(self) -> None:
        cfg = self._config
        n_params = sum(p.numel() for p in self.pretrained.parameters())
        self.header = W.HTML(
            f"<div style='font-size:1.25em'><b>RetrainStudio</b> · {html.escape(self.title)} · "
            f"{n_params:,} parameters</div>"
        )
        # ---- layers
        self.tree = LayerTreeView(self._work, on_change=lambda names: self._set_from_control(frozen=names))
        self.train_bn = W.Checkbox(value=cfg.train_bn, description="train BatchNorm in frozen layers",
                                   indent=False, tooltip="fastai's train_bn: frozen layers' BatchNorm keeps training")
        self.train_bn.add_class("rw-train-bn")
        self.train_bn.observe(lambda c: self._set_from_control(train_bn=c["new"]), names="value")
        layers_tab = W.VBox([self.tree, self.train_bn])

        # ---- loss
        self.loss_picker = W.Dropdown(options=self._loss_options(), description="loss",
                                      layout=W.Layout(width="280px"))
        self.loss_picker.add_class("rw-loss")
        self.loss_picker.observe(self._on_loss, names="value")
        self.loss_params = W.VBox()
        self.loss_check = W.HTML()
        self.loss_check.add_class("rw-loss-check")
        self.replace_head_button = _button("Replace head", "rw-replace-head", "warning")
        self.replace_head_button.on_click(lambda _: self._replace_head())
        self.restore_head_button = _button("Restore original head", "rw-restore-head")
        self.restore_head_button.on_click(lambda _: self._set_from_control(head_out=None))
        self.head_label = W.HTML()
        loss_tab = W.VBox([
            self.loss_picker, self.loss_params, self.loss_check,
            W.HBox([self.head_label, self.replace_head_button, self.restore_head_button],
                   layout=W.Layout(align_items="center")),
        ])

        # ---- optimisation
        self.optimizer_picker = W.Dropdown(options=list(OPTIMIZERS), description="optimizer",
                                           layout=W.Layout(width="220px"))
        self.optimizer_picker.add_class("rw-optimizer")
        self.optimizer_picker.observe(lambda c: self._set_from_control(optimizer=c["new"]), names="value")
        self.lr = W.FloatLogSlider(value=cfg.lr, base=10, min=-6, max=0, step=0.05, description="LR",
                                   readout_format=".2e", continuous_update=False, layout=W.Layout(width="420px"))
        self.lr.add_class("rw-lr")
        self.lr.observe(lambda c: self._set_from_control(lr=float(c["new"])), names="value")
        self.weight_decay = W.BoundedFloatText(value=cfg.weight_decay, min=0, max=10, step=0.01,
                                               description="weight decay", layout=W.Layout(width="220px"))
        self.weight_decay.observe(lambda c: self._set_from_control(weight_decay=float(c["new"])), names="value")
        self.lr_decay = W.FloatSlider(value=cfg.lr_decay, min=0.05, max=1.0, step=0.05, description="LR decay",
                                      tooltip="discriminative LRs: each layer group below the top gets this "
                                              "times the LR of the one above (1 = off; ULMFiT: 0.38)",
                                      continuous_update=False, readout_format=".2f", layout=W.Layout(width="420px"))
        self.lr_decay.observe(lambda c: self._set_from_control(lr_decay=float(c["new"])), names="value")
        self.strategy = W.ToggleButtons(options=list(_STRATEGIES), description="training",
                                        tooltips=["the layers ticked in the tree stay frozen",
                                                  "freeze everything but the head",
                                                  "train every layer",
                                                  "unfreeze one layer group per stage, top-down"])
        self.strategy.add_class("rw-strategy")
        self.strategy.observe(self._on_strategy, names="value")
        self.unfreeze_every = W.BoundedIntText(value=cfg.unfreeze_every, min=1, max=1000,
                                               description="stage (epochs)", layout=W.Layout(width="200px"))
        self.unfreeze_every.observe(lambda c: self._set_from_control(unfreeze_every=int(c["new"])), names="value")
        self.distill = W.Checkbox(value=cfg.distill is not None, description="distill from the original model",
                                  indent=False)
        self.distill.add_class("rw-distill")
        self.distill_alpha = W.FloatSlider(value=(cfg.distill or {}).get("alpha", 0.5), min=0, max=1, step=0.05,
                                           description="α (new loss)", continuous_update=False)
        self.distill_t = W.FloatSlider(value=(cfg.distill or {}).get("temperature", 2.0), min=0.5, max=10,
                                       step=0.5, description="T", continuous_update=False)
        for w in (self.distill, self.distill_alpha, self.distill_t):
            w.observe(lambda c: self._set_from_control(distill=self._distill_value()), names="value")
        self.l2sp = W.BoundedFloatText(value=cfg.l2sp, min=0, max=100, step=0.01, description="L2-SP",
                                       tooltip="pull toward the pretrained weights (0 = off)",
                                       layout=W.Layout(width="200px"))
        self.l2sp.add_class("rw-l2sp")
        self.l2sp.observe(lambda c: self._set_from_control(l2sp=float(c["new"])), names="value")
        self.lr_find_button = _button("LR finder", "rw-lr-find", tooltip="fastai's LR range test")
        self.lr_find_button.on_click(lambda _: self.find_lr())
        self.use_lr_button = _button("use suggestion", "rw-use-lr")
        self.use_lr_button.layout.display = "none"
        self.use_lr_button.on_click(lambda _: self._use_lr())
        self.lr_find_plot = W.Image(format="png", layout=W.Layout(display="none", width="420px"))
        optim_tab = W.VBox([
            W.HBox([self.optimizer_picker, self.weight_decay]), self.lr, self.lr_decay,
            W.HBox([self.strategy, self.unfreeze_every], layout=W.Layout(align_items="center")),
            W.HBox([self.distill, self.distill_alpha, self.distill_t], layout=W.Layout(align_items="center")),
            self.l2sp,
            W.HBox([self.lr_find_button, self.use_lr_button]), self.lr_find_plot,
        ])

        # ---- schedule
        self.schedule_picker = W.Dropdown(options=schedules.available(), description="schedule",
                                          layout=W.Layout(width="300px"))
        self.schedule_picker.add_class("rw-schedule")
        self.schedule_picker.observe(self._on_schedule, names="value")
        self.schedule_params = W.VBox()
        self.epochs = W.BoundedIntText(value=cfg.epochs, min=1, max=100_000, description="epochs",
                                       layout=W.Layout(width="200px"))
        self.epochs.add_class("rw-epochs")
        self.epochs.observe(lambda c: self._set_from_control(epochs=int(c["new"])), names="value")
        self.max_steps = W.Text(value="" if cfg.max_steps is None else str(cfg.max_steps), placeholder="all",
                                description="max steps", continuous_update=False, layout=W.Layout(width="200px"))
        self.max_steps.observe(lambda c: self._set_from_control(
            max_steps=int(c["new"]) if c["new"].strip().isdigit() else None), names="value")
        self.preview = W.Image(format="png", layout=W.Layout(width="420px"))
        self.preview.add_class("rw-lr-preview")
        self.preview_note = W.HTML()
        schedule_tab = W.VBox([W.HBox([self.schedule_picker, self.epochs, self.max_steps]), self.schedule_params,
                               self.preview, self.preview_note])

        self.runs_panel = RunsPanel(self)
        self.tabs = W.Tab(children=[layers_tab, loss_tab, optim_tab, schedule_tab, self.runs_panel])
        self.tabs.titles = ("Layers", "Loss", "Optimisation", "Schedule", "Runs")
        self.tabs.observe(lambda c: self.runs_panel.refresh() if c["new"] == 4 else None, names="selected_index")
        self.tabs.add_class("rw-tabs")

        # ---- controls
        self.start_button = _button("Start", "rw-start", "success", "train a copy of the pretrained model",
                                    width="90px")
        self.pause_button = _button("Pause", "rw-pause", "", "pause at the next step", width="90px")
        self.stop_button = _button("Stop", "rw-stop", "danger", "stop at the next step", width="90px")
        self.reset_button = _button("Reset", "rw-reset", "", "back to the pretrained weights", width="90px")
        self.start_button.on_click(lambda _: self.start())
        self.pause_button.on_click(lambda _: self._pause_resume())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="260px"))
        self.progress.add_class("rw-progress")
        self.progress_label = W.Label()
        self.progress_label.add_class("rw-progress-label")
        self.status = W.HTML()
        self.status.add_class("rw-status")
        self.error = W.HTML()
        self.error.add_class("rw-error")
        self.plot = W.Image(format="png", layout=W.Layout(width="100%", max_width="1000px"))
        self.plot.add_class("rw-plot")
        controls = W.HBox([self.start_button, self.pause_button, self.stop_button, self.reset_button,
                           self.progress, self.progress_label], layout=W.Layout(align_items="center"))
        self.children = [self.header, self.tabs, controls, self.status, self.error, self.plot]

    def _loss_options(self) -> list[str]:
        names = losses.available()
        if not isinstance(self._config.loss, str):
            names = [*names, "custom"]
        return names

    # ================================================================== controls <-> config
    def _sync_controls(self) -> None:
        cfg = self._config
        self._silent = True
        try:
            self.loss_picker.options = self._loss_options()
            self.loss_picker.value = cfg.loss if isinstance(cfg.loss, str) else "custom"
            spec = losses.get(cfg.loss) if isinstance(cfg.loss, str) else None
            params = spec.params if spec else {}
            editor = ParamEditor(params, cfg.loss_kwargs, lambda v: self._set_from_control(loss_kwargs=v),
                                 css="rw-loss-param")
            self.loss_params.children = [editor]
            self.optimizer_picker.value = cfg.optimizer
            self.lr.value = cfg.lr
            self.weight_decay.value = cfg.weight_decay
            self.lr_decay.value = cfg.lr_decay
            self.train_bn.value = cfg.train_bn
            self.strategy.value = self._strategy_of(cfg)
            self.unfreeze_every.value = cfg.unfreeze_every
            self.unfreeze_every.layout.display = "" if cfg.gradual else "none"
            self.distill.value = cfg.distill is not None
            for w in (self.distill_alpha, self.distill_t):
                w.layout.display = "" if cfg.distill is not None else "none"
            if cfg.distill is not None:
                self.distill_alpha.value = cfg.distill["alpha"]
                self.distill_t.value = cfg.distill["temperature"]
            self.l2sp.value = cfg.l2sp
            self.schedule_picker.value = cfg.schedule
            editor = ParamEditor(schedules.get(cfg.schedule).params, cfg.schedule_kwargs,
                                 lambda v: self._set_from_control(schedule_kwargs=v), css="rw-schedule-param")
            self.schedule_params.children = [editor]
            self.epochs.value = cfg.epochs
            self.max_steps.value = "" if cfg.max_steps is None else str(cfg.max_steps)
            self.replace_head_button.layout.display = "none" if self.mismatch is None or \
                self.mismatch.head_out is None else ""
            self.restore_head_button.layout.display = "" if cfg.head_out is not None else "none"
        finally:
            self._silent = False

    def _strategy_of(self, cfg: RunConfig) -> str:
        if cfg.gradual:
            return "gradual"
        if not cfg.frozen:
            return "full"
        head = cfg.head or find_head_or_none(self._work)
        if head is not None and sorted(cfg.frozen) == sorted(frozen_complement(self._work, [head])):
            return "head only"
        return "custom"

    def _on_loss(self, change: dict[str, Any]) -> None:
        if self._silent or change["new"] == "custom":
            return
        self._set_from_control(loss=change["new"], loss_kwargs={})

    def _on_schedule(self, change: dict[str, Any]) -> None:
        if not self._silent:
            self._set_from_control(schedule=change["new"], schedule_kwargs={})

    def _on_strategy(self, change: dict[str, Any]) -> None:
        if self._silent:
            return
        value = change["new"]
        if value == "full":
            self._set_from_control(frozen=[], gradual=False)
        elif value == "head only":
            head = self._config.head or find_head_or_none(self._work)
            keep = [head] if head else []
            self._set_from_control(frozen=frozen_complement(self._work, keep), gradual=False)
        elif value == "gradual":
            self._set_from_control(gradual=True)
        else:
            self._set_from_control(gradual=False)

    def _distill_value(self) -> dict[str, float] | None:
        if not self.distill.value:
            return None
        return {"alpha": float(self.distill_alpha.value), "temperature": float(self.distill_t.value)}

    # ================================================================== loss check and head
    def _first_batch(self) -> Any:
        if self._probe_batch is None:
            device = next((p.device for p in self.pretrained.parameters()), torch.device("cpu"))
            self._probe_batch = first_batch(self.train_loader, device)
        return self._probe_batch

    def check_loss(self) -> LossMismatchError | None:
        """Run the loss on one batch through the working model; show the verdict.

        Returns the mismatch (also kept in :attr:`mismatch`), or ``None`` when it fits.
        """
        cfg = self._config
        self.mismatch = None
        work = self._work
        was = work.training
        work.eval()
        try:
            batch = self._first_batch()
            with torch.no_grad():
                outputs, targets = self.forward(work, batch)
                logits = logits_of(outputs)
                loss = cfg.loss if isinstance(cfg.loss, str) else cfg.loss
                kwargs = cfg.loss_kwargs if isinstance(cfg.loss, str) else {}
                losses.check_compatibility(logits, targets, loss, **kwargs)
            shape_t = tuple(targets.shape) if isinstance(targets, torch.Tensor) else "?"
            dtype_t = str(targets.dtype).replace("torch.", "") if isinstance(targets, torch.Tensor) else ""
            name = cfg.loss if isinstance(cfg.loss, str) else "custom loss"
            self.loss_check.value = (
                f"<span style='color:#1a7f37'>✓ '{html.escape(name)}' fits: outputs {tuple(logits.shape)}, "
                f"targets {shape_t} {dtype_t}</span>"
            )
        except LossMismatchError as exc:
            self.mismatch = exc
            self.loss_check.value = f"<span style='color:#cf222e'>✗ {html.escape(str(exc), quote=False)}</span>"
        except Exception as exc:  # noqa: BLE001 - user model/forward code: shown, not raised
            self.loss_check.value = (f"<span style='color:#cf222e'>✗ could not run one batch: "
                                     f"{html.escape(type(exc).__name__)}: {html.escape(str(exc), quote=False)}</span>")
        finally:
            work.train(was)
        fix = self.mismatch.head_out if self.mismatch is not None else None
        self.replace_head_button.description = f"Replace head with {fix} output{'s' if fix != 1 else ''}" if fix else \
            "Replace head"
        self.replace_head_button.layout.display = "" if fix else "none"
        return self.mismatch

    def _replace_head(self) -> None:
        if self.mismatch is not None and self.mismatch.head_out is not None:
            self._set_from_control(head_out=self.mismatch.head_out)

    # ================================================================== schedule preview
    def total_steps(self) -> int:
        """Optimizer steps of a run with the current config."""
        cfg = self._config
        try:
            per_epoch = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            return cfg.max_steps or 1
        total = per_epoch * cfg.epochs
        return min(total, cfg.max_steps) if cfg.max_steps else total

    def update_preview(self) -> None:
        """Redraw the LR preview of the chosen schedule over the run's steps."""
        cfg = self._config
        total = self.total_steps()
        try:
            lrs = schedules.preview(cfg.schedule, total, cfg.lr, **cfg.schedule_kwargs)
        except ValueError as exc:
            self.preview_note.value = f"<span style='color:#cf222e'>✗ {html.escape(str(exc), quote=False)}</span>"
            return
        spec = schedules.get(cfg.schedule)
        self.preview.value = lr_preview_png(lrs, title=f"{cfg.schedule}: LR over {total:,} steps")
        note = f"LR from {lrs[0]:.2e} to {lrs[-1]:.2e}, peak {max(lrs):.2e}."
        if spec.metric_driven:
            note += " Metric-driven: the LR drops when the validation loss stops improving, so the preview is flat."
        self.preview_note.value = note

    # ================================================================== LR finder
    def find_lr(self, **kwargs: Any) -> Any:
        """Run the LR range test on a copy of the model with the current config; plot it."""
        self._status("running the LR finder…")
        try:
            r = Retrainer(self.pretrained, self._config, self.train_loader, forward=self.forward)
            result = r.lr_find(**kwargs)
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self._show_error(exc)
            return None
        self.lr_find_plot.value = lr_finder_png(result)
        self.lr_find_plot.layout.display = ""
        self._lr_suggestion = result.suggestion
        self.use_lr_button.description = f"use {result.suggestion:.2e}"
        self.use_lr_button.layout.display = ""
        self._status(f"LR finder: steepest descent at {result.suggestion:.2e} (minimum / 10: "
                     f"{result.min_lr_div10:.2e}).")
        return result

    def _use_lr(self) -> None:
        if self._lr_suggestion is not None:
            self._set_from_control(lr=min(1.0, self._lr_suggestion))

    # ================================================================== run control
    def start(self, config: RunConfig | None = None, name: str | None = None) -> Retrainer | None:
        """Start a run from the pretrained weights (returns at once).

        Uses the studio's config, or ``config`` for this run only (what-ifs); ``name`` labels
        it in the Runs tab. Returns the run, or ``None`` when it could not start (the reason
        is shown in the widget).
        """
        if self.run is not None and self.run.state.active:
            self._status("a run is already going: Stop it first.", error=True)
            return None
        self.error.value = ""
        cfg = self._config if config is None else config
        try:
            run = Retrainer(self.pretrained, cfg, self.train_loader, self.val_loader, self.old_val_loader,
                            old_train=self.old_train_loader, forward=self.forward, teacher=self.teacher)
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self._show_error(exc)
            return None
        self.figure.reset()
        self._layers = parameterised_layers(run.model)
        self.run = run
        self._restored = None
        self._run_names[id(run)] = name or self._default_name(cfg)
        self.bridge = Bridge(self, run, self.figure)
        try:
            run.start()
        except Exception as exc:  # noqa: BLE001 - mismatches and bad loaders: shown in the widget
            self.bridge.detach()
            self.run = self.runs[-1] if self.runs else None
            self._show_error(exc)
            if isinstance(exc, LossMismatchError):
                self.mismatch = exc
                self.tabs.selected_index = 1
            self._show_state(self.run)
            return None
        self.runs.append(run)
        if self.store is not None:
            self._run_ids[id(run)] = self.store.record(run, name=self._run_names[id(run)])
        return run

    def _default_name(self, cfg: RunConfig) -> str:
        strategy = self._strategy_of(cfg)
        if strategy == "custom":
            strategy = f"frozen {', '.join(cfg.frozen)}" if cfg.frozen else "full"
        loss = cfg.loss if isinstance(cfg.loss, str) else getattr(cfg.loss, "__name__", "custom")
        extras = [x for x, on in (("distill", cfg.distill is not None), (f"l2sp {cfg.l2sp:g}", cfg.l2sp > 0)) if on]
        return " · ".join([f"#{len(self.runs) + 1} {loss}", strategy, f"lr {cfg.lr:g}", cfg.schedule, *extras])

    def pause(self) -> None:
        if self.run is not None:
            self.run.pause()

    def resume(self) -> None:
        if self.run is not None:
            self.run.resume()

    def _pause_resume(self) -> None:
        if self.run is None:
            return
        if self.run.state == State.PAUSED:
            self.run.resume()
        else:
            self.run.pause()

    def stop(self) -> None:
        """Stop the run at its next step boundary (and any queued what-ifs)."""
        self._queue_stop.set()
        if self.run is not None:
            self.run.stop()

    def reset(self) -> None:
        """Back to the pretrained weights: stop any run and forget its trained model."""
        run = self.run
        if run is not None and run.state.active:
            run.stop()
            run.join(10)
        self.run = None
        self._restored = None
        self.figure.reset()
        self.plot.value = self.figure.render(History().snapshot())
        self.progress.value = 0
        self.progress_label.value = ""
        self.error.value = ""
        self._work = self._working_copy()
        self._refresh_work()
        self._show_state(None)
        self._status("reset: the next Start trains from the pretrained weights.")

    def _busy(self) -> bool:
        queue, run = self._queue, self.run
        return (queue is not None and queue.is_alive()) or (run is not None and run.running)

    def wait(self, timeout: float | None = None) -> History | None:
        """Block until the current run (and any queued what-ifs) ends, still handling clicks, so
        Stop works while a cell waits.

        Returns the run's history (``None`` without a run); raises ``TimeoutError`` after
        ``timeout`` seconds. Errors of the run are shown in the widget, not raised. Headless
        (nbclient, nbval) it simply waits.
        """
        if self.run is None and self._queue is None:
            return None
        if not wait_while(self._busy, timeout):
            run = self.run
            raise TimeoutError(f"still running after {timeout} s" + (f" (step {run.step})" if run else ""))
        return self.run.history if self.run is not None else None

    async def wait_async(self, timeout: float | None = None) -> History | None:
        """``await studio.wait_async()``: the same as :meth:`wait` for async cells, where the kernel
        handles clicks by itself while the cell awaits."""
        import asyncio

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._busy():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"still running after {timeout} s")
            await asyncio.sleep(0.05)
        return self.run.history if self.run is not None else None

    @property
    def model(self) -> nn.Module:
        """The restored run's model (after :meth:`restore`), else the latest run's trained model,
        else the pretrained one."""
        if self._restored is not None:
            return self._restored[1]
        return self.run.model if self.run is not None else self.pretrained

    # ================================================================== runs: compare, restore, what-if, code
    @property
    def pretrained_id(self) -> str:
        """Fingerprint of the pretrained weights: the store groups runs by it."""
        if self._pretrained_id is None:
            self._pretrained_id = fingerprint(self.pretrained)
        return self._pretrained_id

    def run_summaries(self) -> list[RunSummary]:
        """Every run from these pretrained weights: the store's (across sessions) or this session's."""
        if self.store is not None:
            return [summarize(r, self.store) for r in self.store.runs(pretrained_id=self.pretrained_id)]
        return [summarize(r, name=self._run_names.get(id(r))) for r in self.runs]

    def _find(self, key: str) -> Retrainer | None:
        for r in self.runs:
            if self._run_ids.get(id(r)) == key or self._run_names.get(id(r)) == key:
                return r
        return None

    def restore(self, key: str) -> nn.Module:
        """Load a run's weights (by store id or run name): returns the model, which becomes
        :attr:`model`; the studio's config becomes the run's and its plots are shown."""
        live = self._find(key)
        if live is not None and live.state.active:
            raise ValueError("that run is still training: stop it before restoring it")
        run_id = self._run_ids.get(id(live)) if live is not None else key
        if self.store is not None and run_id is not None:
            model = self.store.restore(run_id, self.pretrained)
            history = self.store.history(run_id)
            try:
                config: RunConfig | None = self.store.get(run_id).config_obj()
            except ValueError:  # a custom loss that was not registered: keep the current config
                config = None
        elif live is not None:
            model, history, config = copy.deepcopy(live.model), live.history, live.config
        else:
            raise ValueError(f"no run {key!r} in this studio")
        model.eval()
        self._restored = (key, model)
        if config is not None:
            self.config = config
        self.figure.reset()
        self.plot.value = self.figure.render_final(history.snapshot())
        self._status(f"restored run {html.escape(key)}: <code>studio.model</code> holds its weights.")
        return model

    def delete_run(self, key: str) -> None:
        """Delete a stored run (and forget it in this session)."""
        live = self._find(key)
        if live is not None and live.state.active:
            raise ValueError("that run is still training: stop it before deleting it")
        run_id = self._run_ids.get(id(live), key) if live is not None else key
        if self.store is not None:
            self.store.delete(run_id)
        if live is not None:
            self.runs.remove(live)

    def code(self, key: str | None = None) -> str:
        """The current config (or a run's, by id or name) as a standalone PyTorch script."""
        from ..core.export import export_script

        if key is None:
            config = self._config
        else:
            live = self._find(key)
            config = live.config if live is not None else self.store.get(key).config_obj() if self.store else None
            if config is None:
                raise ValueError(f"no run {key!r} in this studio")
        hints = self.code_hints or _example_code(self.train_loader) or {}
        return export_script(config, title=f"{self.title}", **hints)

    def what_if(self, grid: dict[str, Any], wait: bool = False) -> list[RunConfig]:
        """Run every combination of ``grid`` from the same pretrained weights, one after another.

        ``grid`` maps config fields to lists of values, e.g. ``{"loss": ["bce", "focal"],
        "frozen": [["features"], []]}``; the other fields come from the studio's config. Stop
        ends the queue cleanly. When the queue ends, the Runs tab shows the comparison.
        Returns the configs queued; ``wait=True`` blocks until they are done (Stop still works).
        """
        if (self.run is not None and self.run.state.active) or (self._queue is not None and self._queue.is_alive()):
            raise ValueError("a run is going: stop it before starting what-ifs")
        variants = grid_variants(grid)
        configs = [self._config.replace(**v) for v in variants]
        names = [" · ".join(f"{k}={_short(v)}" for k, v in variant.items()) for variant in variants]
        self._queue_stop.clear()
        self._queue = threading.Thread(target=self._run_queue, args=(configs, names), daemon=True,
                                       name="retrain_widgets-what-if")
        self._queue.start()
        if wait:
            self.wait()
        return configs

    def _run_queue(self, configs: list[RunConfig], names: list[str]) -> None:
        try:
            self._run_queue_inner(configs, names)
        except Exception as exc:  # noqa: BLE001 - shown in the widget, never lost in a thread
            self._show_error(exc)
            self.runs_panel.message.value = f"<span style='color:#cf222e'>✗ what-ifs: {html.escape(str(exc), quote=False)}</span>"

    def _run_queue_inner(self, configs: list[RunConfig], names: list[str]) -> None:
        keys: list[str] = []
        for i, (cfg, name) in enumerate(zip(configs, names)):
            if self._queue_stop.is_set():
                break
            self.runs_panel.message.value = f"what-if {i + 1} of {len(configs)}: {html.escape(name)}"
            run = self.start(cfg, name=f"what-if {i + 1}/{len(configs)}: {name}")
            if run is None:
                break
            keys.append(self._run_ids.get(id(run), self._run_names[id(run)]))
            run.join()
        done = len(keys)
        stopped = self._queue_stop.is_set()
        self.runs_panel.refresh(select=keys)
        if keys:
            self.runs_panel.overlay()
        self.runs_panel.message.value = (f"what-ifs {'stopped after' if stopped else 'done:'} {done} of "
                                         f"{len(configs)} run{'s' if len(configs) > 1 else ''}; overlaid below.")
        self.tabs.selected_index = 4

    @property
    def history(self) -> History | None:
        return self.run.history if self.run is not None else None

    # ================================================================== views of state (bridge + main thread)
    def _frozen_layers(self, model: nn.Module) -> list[str]:
        layers = getattr(self, "_layers", None) or parameterised_layers(model)
        return [name for name, params in layers if not any(p.requires_grad for p in params)]

    def _show_state(self, run: Retrainer | None) -> None:
        state = run.state if run is not None else State.IDLE
        active = state.active
        self.start_button.disabled = active
        self.pause_button.disabled = not active
        self.pause_button.description = "Resume" if state == State.PAUSED else "Pause"
        self.stop_button.disabled = not active
        self.reset_button.disabled = active
        if run is None:
            self._status("ready: pick what to freeze, a loss and a schedule, then Start.")
            return
        text = {
            State.RUNNING: "training…",
            State.PAUSED: "paused: Resume to continue, or Stop.",
            State.STOPPED: f"stopped at step {run.step:,} of {run.total_steps:,}.",
            State.FINISHED: "finished.",
            State.FAILED: "failed (see below).",
        }.get(state, state.value)
        metrics = _last_metrics(run)
        self._status(f"<b>{state.value}</b> · {text} {metrics}")
        if state == State.FAILED and run.error is not None:
            self._show_error(run.error)

    def _run_ended(self, run: Retrainer, png: bytes) -> None:
        """Called by the bridge when a run ends: keep the final figure as a static output."""
        if self._display_id is not None:
            try:
                from IPython.display import Image, update_display

                update_display(Image(data=png, format="png"), display_id=self._display_id)
            except Exception:  # noqa: BLE001 - no IPython display here: nothing to keep
                pass

    def _status(self, text: str, error: bool = False) -> None:
        colour = "#cf222e" if error else "#333"
        self.status.value = f"<span style='color:{colour}'>{text}</span>"

    def _show_error(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.error.value = (
            f"<div style='border-left:4px solid #cf222e;padding:4px 8px;background:#fff5f5'>"
            f"<b>{html.escape(type(exc).__name__)}</b>: {html.escape(str(exc), quote=False)}"
            f"<details><summary>traceback</summary><pre style='font-size:11px'>{html.escape(tb)}</pre></details></div>"
        )

    # ================================================================== display
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        if self._display_id is None:
            self._display_id = f"retrain-studio-final-{id(self)}-{time.time_ns()}"
            display({"text/plain": ""}, raw=True, display_id=self._display_id)

    # ================================================================== re-running a cell
    def _stop_older(self, model: nn.Module) -> None:
        """Re-running the cell that made a studio stops the old studio's run first."""
        for other in list(RetrainStudio._live):
            same_cell = self._cell is not None and other._cell == self._cell
            if (same_cell or other.pretrained is model) and other.run is not None and other.run.state.active:
                other.run.stop()
                other.run.join(10)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _example_code(loader: Any) -> dict[str, str] | None:
    """Code hints for loaders made by ``retrain_widgets.examples.task(...)``."""
    tag = getattr(loader, "retrain_example", None)
    if not isinstance(tag, dict):
        return None
    from .. import examples

    code = getattr(examples, "code", None)
    return code(tag.get("task"), batch_size=tag.get("batch_size", 64)) if code is not None else None


def _last_metrics(run: Retrainer) -> str:
    parts = []
    for name, label in (("val_metric", run.history.meta.get("metric", "metric")),
                        ("old_metric", f"old-task {run.history.meta.get('old_metric', 'metric')}")):
        steps, values = run.history.series(name)
        if len(values):
            parts.append(f"{label} {values[-1]:.3f}")
    return " · ".join(parts)


def _cell_id() -> str | None:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        parent = ip.kernel.get_parent() if ip is not None and hasattr(ip, "kernel") else None
        return (parent or {}).get("metadata", {}).get("cellId")
    except Exception:  # noqa: BLE001 - outside a kernel
        return None

