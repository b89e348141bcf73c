"""The studio's setting tabs, one view each: Layers, Loss, Optimisation, Schedule.

Each is a thin view of a :class:`~retrain_widgets.headless.HeadlessStudio`: its controls write
the config through a :class:`~.binding.ConfigBinding`, ``show_config`` shows a config, and the
studio's topics (``work``, ``loss_check``, ``lr_find``, ``preview``) update the rest through
:func:`~.writes.write`.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
from torch.nn.modules.batchnorm import _BatchNorm

from ..core import losses, schedules
from ..core.config import OPTIMIZERS, RunConfig
from ..core.lora import lora_fields
from ..core.recipe.training import HEAD_INITS
from ..headless import STRATEGIES, HeadlessStudio
from ..loss_fixes import LossFix
from ..topics import LossVerdict, Preview, Topic
from .binding import ConfigBinding, css, message_html
from .params import ParamEditor
from .tree import LayerTreeView
from .writes import show, write

__all__ = ["LayersTab", "LossTab", "OptimisationTab", "ScheduleTab", "button"]

_STRATEGY_TIPS = ["the layers ticked in the tree stay frozen", "freeze everything but the head",
                  "train every layer", "unfreeze one layer group per stage, top-down"]


def _cache_text(text: str) -> str:
    """The cache's state as the Optimisation tab says it: a refusal as what happens instead."""
    prefix = "cache: refused: "
    return f"not cached (full passes every epoch): {text[len(prefix):]}" if text.startswith(prefix) else text


def _has_batchnorm(model: Any) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def button(description: str, css_class: str, style: str = "", tooltip: str = "", width: str = "auto") -> W.Button:
    return css(W.Button(description=description, button_style=style, tooltip=tooltip,
                        layout=W.Layout(width=width)), css_class)


def _row(*children: W.Widget) -> W.HBox:
    return W.HBox(list(children), layout=W.Layout(align_items="center"))


class LayersTab(W.VBox):
    """The layer tree (tick to freeze, toggle LoRA adapters), fastai's ``train_bn`` and ``frozen_eval``."""

    def __init__(self, studio: HeadlessStudio, binding: ConfigBinding) -> None:
        super().__init__()
        self.studio, self.binding = studio, binding
        self.tree = LayerTreeView(studio.work, on_change=lambda names: binding.set(frozen=names),
                                  on_lora=self._lora_chosen)
        self.train_bn = css(binding.field(W.Checkbox(
            value=studio.config.train_bn, description="train BatchNorm in frozen layers", indent=False,
            tooltip="fastai's train_bn: frozen layers' BatchNorm keeps training"), "train_bn"), "rw-train-bn")
        self.frozen_eval = css(binding.field(W.Checkbox(
            value=studio.config.frozen_eval, description="frozen layers in inference mode", indent=False,
            tooltip="frozen_eval: layers whose parameters are all frozen run in eval mode (no dropout, no "
                    "stochastic depth), as in feature extraction; lets the feature cache serve such backbones"),
            "frozen_eval"), "rw-frozen-eval")
        self.children = [self.tree, self.train_bn, self.frozen_eval]
        show(self.train_bn, _has_batchnorm(studio.work))  # offered only where there is BatchNorm to train
        studio.on(Topic.WORK, lambda p: self.show_work())

    def _lora_chosen(self, names: list[str]) -> None:
        before = self.studio.config
        self.binding.set(**lora_fields(names, before))
        if self.studio.config is before:  # refused: the tree shows the config's choice again
            self.tree.set_lora(before.lora_modules, before.lora_r)

    def show_work(self) -> None:
        """The working copy's tree, with the config's LoRA choice marked on it."""
        self.tree.set_model(self.studio.work)
        self.tree.set_lora(self.studio.config.lora_modules, self.studio.config.lora_r)
        show(self.train_bn, _has_batchnorm(self.studio.work))

    def show_config(self, cfg: RunConfig) -> None:
        self.train_bn.value = cfg.train_bn
        self.frozen_eval.value = cfg.frozen_eval


#: How a new head starts (``RunConfig.head_init``), as the Loss tab offers it.
HEAD_INIT_OPTIONS = tuple(({"default": "random (nn.Linear's)"}.get(name, name), name) for name in HEAD_INITS)


class LossTab(W.VBox):
    """The loss, its parameters, the check on one batch, and the head (replace / restore)."""

    def __init__(self, studio: HeadlessStudio, binding: ConfigBinding) -> None:
        super().__init__()
        self.studio, self.binding = studio, binding
        self.loss_picker = css(W.Dropdown(options=self._options(studio.config), description="loss",
                                          layout=W.Layout(width="280px")), "rw-loss")
        self.loss_picker.observe(self._picked, names="value")
        self.loss_params = W.VBox()
        self.loss_check = css(W.HTML(), "rw-loss-check")
        self.loss_choice = css(W.HTML(), "rw-loss-choice")  # what the studio chose at open, and why
        self.replace_head_button = button("Replace head", "rw-replace-head", "warning")
        self.fix: LossFix | None = None  # what the button does: the current check's fix (it ends in a fit)
        self.replace_head_button.on_click(lambda _: binding.set(**self.fix.changes) if self.fix else None)
        self.restore_head_button = button("Restore original head", "rw-restore-head")
        self.restore_head_button.on_click(lambda _: binding.set(head_out=None))
        self.head_label = css(W.HTML(), "rw-head")
        self.head_init = binding.field(css(W.Dropdown(options=HEAD_INIT_OPTIONS, description="starts at",
                                                      layout=W.Layout(width="240px")), "rw-head-init"), "head_init")
        self.children = [self.loss_picker, self.loss_params, self.loss_check, self.loss_choice,
                         _row(self.head_label, self.replace_head_button, self.restore_head_button, self.head_init)]
        studio.on(Topic.LOSS_CHECK, self.show_verdict)
        studio.on(Topic.WORK, lambda p: self.show_head())

    @staticmethod
    def _options(cfg: RunConfig) -> list[str]:
        names = losses.available()
        return names if isinstance(cfg.loss, str) else [*names, "custom"]

    def _picked(self, change: dict[str, Any]) -> None:
        if change["new"] != "custom":
            self.binding.set(loss=change["new"], loss_kwargs={})

    def show_config(self, cfg: RunConfig) -> None:
        self.loss_picker.options = self._options(cfg)
        self.loss_picker.value = cfg.loss if isinstance(cfg.loss, str) else "custom"
        spec = losses.get(cfg.loss) if isinstance(cfg.loss, str) else None
        self.loss_params.children = [ParamEditor(spec.params if spec else {}, cfg.loss_kwargs,
                                                 lambda v: self.binding.set(loss_kwargs=v), css="rw-loss-param")]
        mismatch = self.studio.mismatch
        show(self.replace_head_button, mismatch is not None and self.fix is not None)
        show(self.restore_head_button, cfg.head_out is not None)
        self.head_init.value = cfg.head_init
        show(self.head_init, cfg.head_out is not None)  # only a new head has a start to choose
        choice = self.studio.loss_choice
        kept = choice is not None and (cfg.loss, cfg.head_out) == (choice.loss, choice.head_out)
        write(self.loss_choice, value=f"<i>{html.escape(choice.note, quote=False)}</i>" if kept and choice else "")
        show(self.loss_choice, kept)

    def show_verdict(self, verdict: LossVerdict) -> None:
        mark = "✓" if verdict.ok else "✗"
        colour = "#1a7f37" if verdict.ok else "#cf222e"
        write(self.loss_check,
              value=f"<span style='color:{colour}'>{mark} {html.escape(verdict.text, quote=False)}</span>")
        self.fix = verdict.action
        write(self.replace_head_button, description=self.fix.label if self.fix else "Replace head")
        show(self.replace_head_button, self.fix is not None)

    def show_head(self) -> None:
        head = self.studio.head_name()
        replaced = " (replaced)" if self.studio.config.head_out is not None else " (pretrained)"
        n = self.studio.head_outputs()
        write(self.head_label, value=f"head <code>{html.escape(str(head))}</code>: "
                                     f"{n} output{'' if n == 1 else 's'}{replaced}")


class OptimisationTab(W.VBox):
    """Optimizer, LR, weight decay, discriminative LRs, the training strategy, distillation, L2-SP
    and the LR finder."""

    def __init__(self, studio: HeadlessStudio, binding: ConfigBinding) -> None:
        super().__init__()
        self.studio, self.binding = studio, binding
        cfg, field = studio.config, binding.field
        self.optimizer_picker = css(field(W.Dropdown(options=list(OPTIMIZERS), description="optimizer",
                                                     layout=W.Layout(width="220px")), "optimizer"), "rw-optimizer")
        self.lr = css(field(W.FloatLogSlider(
            value=cfg.lr, base=10, min=-6, max=0, step=0.05, description="LR", readout_format=".2e",
            continuous_update=False, layout=W.Layout(width="420px")), "lr", float), "rw-lr")
        self.weight_decay = field(W.BoundedFloatText(value=cfg.weight_decay, min=0, max=10, step=0.01,
                                                     description="weight decay", layout=W.Layout(width="220px"),
                                                     style={"description_width": "initial"}),
                                  "weight_decay", float)
        self.lr_decay = field(W.FloatSlider(
            value=cfg.lr_decay, min=0.05, max=1.0, step=0.05, description="LR decay",
            tooltip="discriminative LRs: each layer group below the top gets this times the LR of the one above "
                    "(1 = off; ULMFiT: 0.38)",
            continuous_update=False, readout_format=".2f", layout=W.Layout(width="420px")), "lr_decay", float)
        self.strategy = css(W.ToggleButtons(options=list(STRATEGIES), description="training",
                                            tooltips=_STRATEGY_TIPS), "rw-strategy")
        self.strategy.observe(lambda c: binding.call(studio.choose_strategy, c["new"]), names="value")
        self.unfreeze_every = field(W.BoundedIntText(value=cfg.unfreeze_every, min=1, max=1000,
                                                     description="stage (epochs)", layout=W.Layout(width="200px"),
                                                     style={"description_width": "initial"}),
                                    "unfreeze_every", int)
        self._build_regularisers(cfg)
        self._build_lr_finder()
        self.cache = css(field(W.ToggleButtons(
            options=[("auto", "auto"), ("on", True), ("off", False)], value=cfg.cache_features,
            description="cache frozen features", style={"description_width": "initial"},
            tooltips=["when it is safe (the reason shows when not)", "also past dropout or augmentation (warns)",
                      "full passes every epoch"]), "cache_features"), "rw-cache")
        # below the toggle, small and grey: a long reason never squeezes auto / on / off into a column,
        # and a refusal reads as information (the run trains without the cache), not as an error
        self.cache_state = css(W.HTML(_cache_text(studio.cache_state()),
                                      style={"text_color": "#57606a", "font_size": "12px"}), "rw-cache-state")
        self.children = [
            W.HBox([self.optimizer_picker, self.weight_decay]), self.lr, self.lr_decay,
            _row(self.strategy, self.unfreeze_every),
            _row(self.distill, self.distill_alpha, self.distill_t),
            self.l2sp, W.VBox([self.cache, self.cache_state]),
            W.HBox([self.lr_find_button, self.use_lr_button]), self.lr_find_plot,
        ]
        studio.on(Topic.LR_FIND, lambda p: self.show_lr_find(p.result, p.png))
        studio.on(Topic.CACHE, lambda p: self.show_cache_state(p.text))

    def _build_regularisers(self, cfg: RunConfig) -> None:
        distill = cfg.distill or {}
        self.distill = css(W.Checkbox(value=cfg.distill is not None, description="distill from the original model",
                                      indent=False), "rw-distill")
        self.distill_alpha = W.FloatSlider(value=distill.get("alpha", 0.5), min=0, max=1, step=0.05,
                                           description="α (new loss)", continuous_update=False)
        self.distill_t = W.FloatSlider(value=distill.get("temperature", 2.0), min=0.5, max=10, step=0.5,
                                       description="T", continuous_update=False)
        for w in (self.distill, self.distill_alpha, self.distill_t):
            w.observe(lambda _: self.binding.set(distill=self._distill_value()), names="value")
        self.l2sp = css(self.binding.field(W.BoundedFloatText(
            value=cfg.l2sp, min=0, max=100, step=0.01, description="L2-SP",
            tooltip="pull toward the pretrained weights (0 = off)", layout=W.Layout(width="200px")),
            "l2sp", float), "rw-l2sp")

    def _build_lr_finder(self) -> None:
        self.lr_find_button = button("LR finder", "rw-lr-find", tooltip="fastai's LR range test")
        self.lr_find_button.on_click(lambda _: self.studio.find_lr())
        self.use_lr_button = button("use suggestion", "rw-use-lr")
        self.use_lr_button.layout.display = "none"
        self.use_lr_button.on_click(lambda _: self.studio.use_lr_suggestion())
        self.lr_find_plot = W.Image(format="png", layout=W.Layout(display="none", width="420px"))

    def _distill_value(self) -> dict[str, float] | None:
        if not self.distill.value:
            return None
        return {"alpha": float(self.distill_alpha.value), "temperature": float(self.distill_t.value)}

    def show_config(self, cfg: RunConfig) -> None:
        self.optimizer_picker.value = cfg.optimizer
        self.lr.value = cfg.lr
        self.weight_decay.value = cfg.weight_decay
        self.lr_decay.value = cfg.lr_decay
        self.strategy.value = self.studio.strategy_of(cfg)
        self.unfreeze_every.value = cfg.unfreeze_every
        show(self.unfreeze_every, cfg.gradual)
        self.distill.value = cfg.distill is not None
        for w in (self.distill_alpha, self.distill_t):
            show(w, cfg.distill is not None)
        if cfg.distill is not None:
            self.distill_alpha.value = cfg.distill["alpha"]
            self.distill_t.value = cfg.distill["temperature"]
        self.l2sp.value = cfg.l2sp
        self.cache.value = cfg.cache_features

    def show_cache_state(self, text: str) -> None:
        """The current run's feature cache (any thread)."""
        write(self.cache_state, value=html.escape(_cache_text(text)))

    def show_lr_find(self, result: Any, png: bytes) -> None:
        write(self.lr_find_plot, value=png)
        show(self.lr_find_plot, True)
        write(self.use_lr_button, description=f"use {result.suggestion:.2e}")
        show(self.use_lr_button, True)


class ScheduleTab(W.VBox):
    """The LR schedule, its parameters, the run's length and the LR preview."""

    def __init__(self, studio: HeadlessStudio, binding: ConfigBinding) -> None:
        super().__init__()
        self.binding = binding
        cfg = studio.config
        self.schedule_picker = css(W.Dropdown(options=schedules.available(), description="schedule",
                                              layout=W.Layout(width="300px")), "rw-schedule")
        self.schedule_picker.observe(lambda c: binding.set(schedule=c["new"], schedule_kwargs={}), names="value")
        self.schedule_params = W.VBox()
        self.epochs = css(binding.field(W.BoundedIntText(value=cfg.epochs, min=1, max=100_000, description="epochs",
                                                         layout=W.Layout(width="200px")), "epochs", int), "rw-epochs")
        self.max_steps = binding.field(
            W.Text(value="" if cfg.max_steps is None else str(cfg.max_steps), placeholder="all",
                   description="max steps", continuous_update=False, layout=W.Layout(width="200px")),
            "max_steps", lambda text: int(text) if text.strip().isdigit() else None)
        self.preview = css(W.Image(format="png", layout=W.Layout(width="420px")), "rw-lr-preview")
        self.preview_note = W.HTML()
        self.children = [W.HBox([self.schedule_picker, self.epochs, self.max_steps]), self.schedule_params,
                         self.preview, self.preview_note]
        studio.on(Topic.PREVIEW, self.show_preview)

    def show_config(self, cfg: RunConfig) -> None:
        self.schedule_picker.value = cfg.schedule
        self.schedule_params.children = [ParamEditor(schedules.get(cfg.schedule).params, cfg.schedule_kwargs,
                                                     lambda v: self.binding.set(schedule_kwargs=v),
                                                     css="rw-schedule-param")]
        self.epochs.value = cfg.epochs
        self.max_steps.value = "" if cfg.max_steps is None else str(cfg.max_steps)

    def show_preview(self, preview: Preview) -> None:
        if preview.png is not None:
            write(self.preview, value=preview.png)
        note = message_html(f"✗ {preview.note}", error=True) if preview.error else preview.note
        write(self.preview_note, value=note)
