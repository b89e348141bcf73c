"""``HeadlessStudio``: the studio's state and behaviour, without any widget.

Everything the dashboard does lives here, in plain Python (no ipywidgets, no IPython): the
run's :class:`RunConfig`, the working copy that the layer tree and the loss check look at, the
runs and the current one, the what-if queue, the run store, the loss check, the LR preview, the
LR finder, restore / delete / export, and waiting (the checks before a run: its base class,
:class:`~retrain_widgets.checks.StudioChecks`). :class:`~retrain_widgets.RetrainStudio` is a set of
thin views bound to one of these; scripts and tests can drive it directly.

Views learn of changes through typed topics: ``studio.on(Topic.X, fn)``, where ``fn`` gets one frozen
payload object (:mod:`retrain_widgets.topics` lists them), and may be called from the what-if
queue's thread.
"""

from __future__ import annotations

import copy
import os
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from torch import nn

from . import autoloss, naming
from .checks import StudioChecks
from .choices import Strategies, try_freezing
from .config_view import read_only
from .core import feature_cache
from .core.batches import Forward, default_forward
from .core.comparison import RunSummary, grid_variants
from .core.config import RunConfig
from .core.engine import Retrainer
from .core.events import Event, State
from .core.history import History
from .core.losses import LossMismatchError
from .core.names import Meta
from .core.runslot import RunSlot
from .core.store import RunStore, open_store
from .core.tree import frozen_complement, parameterised_layers
from .distributed.worker import GridInputs
from .one_run import one_start_at_a_time, plain_wait_while, quiesce, settle, start_refusal, wait_or_stop
from .plots import LiveFigure
from .runbook import RunBook, WhatIfQueue
from .topics import (
    CacheState,
    ConfigChanged,
    ErrorShown,
    Focus,
    LossVerdict,
    Payload,
    PlotDrawn,
    Preview,
    ResetDone,
    RunFailed,
    RunMade,
    StateShown,
    StatusLine,
    Topic,
    WorkChanged,
    listener,
    payload_of,
)

__all__ = ["HeadlessStudio", "LossVerdict", "Preview", "STRATEGIES", "plain_wait_while"]

STRATEGIES = ("custom", "head only", "full", "gradual")


class HeadlessStudio(StudioChecks):
    """The dashboard's model: the same parameters as :class:`~retrain_widgets.RetrainStudio`, plus
    ``cell`` (the notebook cell that made it: re-running that cell stops the older studio's run)."""

    _live: ClassVar[weakref.WeakSet[HeadlessStudio]] = weakref.WeakSet()

    def __init__(self, model: nn.Module, train: Iterable[Any], val: Iterable[Any] | None = None,
                 old_val: Iterable[Any] | None = None, *, old_train: Iterable[Any] | None = None,
                 config: RunConfig | None = None, forward: Forward | None = None, teacher: nn.Module | None = None,
                 title: str | None = None, store: RunStore | str | os.PathLike[str] | None | bool = None,
                 code: dict[str, str] | None = None, cell: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.cell = cell
        self.stop_older(model)
        HeadlessStudio._live.add(self)
        self.pretrained = model
        self.train_loader, self.val_loader, self.old_val_loader = train, val, old_val
        self.old_train_loader = old_train
        self.forward: Forward = forward or default_forward
        self.teacher = teacher
        self._config = read_only((copy.copy(config) if config is not None else RunConfig()).validate())
        self.run: Retrainer | None = None
        self.mismatch: LossMismatchError | None = None
        self.lr_suggestion: float | None = None
        self.book = RunBook(open_store(store, none_is_default=True), model)
        self.slot, self.stops = RunSlot("a run of this studio"), 0  # one start at a time; stop() calls
        self.queue = WhatIfQueue(self.book, start=self.start, emit=self.emit, ready=self.slot.wait_free)
        self.code_hints = code
        self.title = title or type(model).__name__
        self.figure = LiveFigure(title=self.title)
        self.wait_while: Callable[..., bool] = plain_wait_while
        self._listeners: dict[Topic, list[Callable[[Payload], Any]]] = {}
        self._probe_batch: Any = None
        self._layers: dict[int, list[tuple[str, list[nn.Parameter]]]] = {}
        self._restored: tuple[str, nn.Module] | None = None
        self.shown_error: BaseException | None = None  # on Topic.ERROR now
        self._red = False  # the last status was an error
        self.strategies = Strategies()
        self.work = self.working_copy()
        self.refresh_work()
        #: The loss chosen at open (no config given, and the default loss did not fit), else None.
        self.loss_choice = None if config is not None else autoloss.open_ready(
            self.work, self.forward, self.probe_batch, self._config, change=self.set, fits=lambda: self.mismatch is None)
        self.strategies.remember(self.strategy_of(), self._config)

    # ================================================================== topics
    def on(self, topic: Topic | str, fn: Callable[..., Any]) -> None:
        """Call ``fn(payload)`` on ``topic`` (:mod:`retrain_widgets.topics`); a topic's plain name
        (``"status"``) still works, ``fn`` then gets the payload's fields as positional arguments.
        An unknown topic is a ``ValueError``."""
        known, call = listener(topic, fn)
        self._listeners.setdefault(known, []).append(call)

    def emit(self, payload: Payload | Topic | str, *args: Any) -> None:
        """Announce ``payload`` on its topic (``emit(topic, *fields)`` makes the payload)."""
        if not isinstance(payload, Payload):
            payload = payload_of(payload, *args)
        if isinstance(payload, ErrorShown):
            self.shown_error = payload.error
        elif isinstance(payload, StatusLine):
            self._red = bool(payload.error)
        for fn in self._listeners.get(payload.topic, ()):
            fn(payload)

    def status(self, text: str, error: bool = False) -> None:
        self.emit(StatusLine(text, error))

    def refresh(self) -> None:
        """Re-announce everything views show: the working copy, the loss check, the preview, the plot."""
        self.refresh_work()
        self.check_loss()
        self.update_preview()
        self.emit(PlotDrawn(self.figure.render(History().snapshot())))
        self.emit(StateShown(None))
        self.emit(CacheState(self.cache_state()))

    # ================================================================== config
    @property
    def config(self) -> RunConfig:
        """The run's configuration, read-only (:mod:`retrain_widgets.config_view`): change it with
        :meth:`set`, or assign a whole one (validated); either updates every view."""
        return self._config

    @config.setter
    def config(self, value: RunConfig) -> None:
        if not isinstance(value, RunConfig):
            raise ValueError(f"studio.config must be a RunConfig, got {type(value).__name__}")
        value = copy.copy(value).validate()
        with self.strategies.picking(None):  # a whole config: the buttons show what it amounts to
            self._change(value)

    def set(self, **changes: Any) -> RunConfig:
        """Change config fields (validated), as the controls do. Returns the new config."""
        return self._change(self._config.replace(**changes))

    def _change(self, new: RunConfig) -> RunConfig:
        """Take ``new``; a freezing that cannot apply raises ``ValueError`` and changes nothing.
        A red status (a refusal) goes away with the next change taken."""
        new = read_only(new)
        diff, red, self._red = self._config.diff(new), self._red, False
        fresh = bool({"head", "head_out", "head_init", "seed"} & diff.keys())
        work = self.working_copy(new) if fresh else self.work
        if fresh or {"frozen", "train_bn"} & diff.keys():
            try:
                try_freezing(work, self._config, new)
            except ValueError:
                self._red = red
                raise
        (old, old_work), self._config, self.work = (self._config, self.work), new, work
        try:  # a check or a view that cannot take it: refused, the config as it was
            self.strategies.remember(self.strategy_of(), new)
            if red and not self._red:
                self.emit(StateShown(self.run))  # the state's own line replaces the refusal
            self.emit(ConfigChanged(old, new))
            if fresh or {"frozen", "train_bn", "lora_r", "lora_modules"} & diff.keys():
                self.emit(WorkChanged())
            if {"loss", "loss_kwargs", "head", "head_out"} & diff.keys():
                self.check_loss()
            if {"schedule", "schedule_kwargs", "epochs", "max_steps", "lr"} & diff.keys():
                self.update_preview()
        except BaseException:
            self._config, self.work = old, old_work
            self.emit(ConfigChanged(new, old))
            raise
        run = self.run
        if run is not None and run.state.active:
            if self.queue.alive():  # a what-if keeps its own config
                self.status("what-ifs are running, each with its own config: this change takes effect at the next "
                            "Start.")
            else:
                self.apply_live(run, old, new, diff)
        return new

    def apply_live(self, run: Retrainer, old: RunConfig, new: RunConfig, diff: dict[str, Any]) -> None:
        """Changes that a running run takes at its next step boundary: freezing and LR."""
        notes = []
        if "frozen" in diff:
            removed = [n for n in old.frozen if n not in new.frozen]
            added = [n for n in new.frozen if n not in old.frozen]
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
        self.status(text)

    def strategy_of(self, cfg: RunConfig | None = None) -> str:
        """Which of :data:`STRATEGIES` ``cfg`` (default: the config) amounts to; the studio's own
        config stays "custom" once the buttons picked it, whatever is ticked."""
        own = cfg is None or cfg is self._config
        cfg = cfg or self._config
        if cfg.gradual:
            return "gradual"
        if own and self.strategies.picked == "custom":
            return "custom"
        if not cfg.frozen:
            return "full"
        head = self.head_name()
        if head is not None and sorted(cfg.frozen) == sorted(frozen_complement(self.work, [head])):
            return "head only"
        return "custom"

    def strategy_changes(self, strategy: str) -> dict[str, Any]:
        """The config changes that pick ``strategy``."""
        if strategy == "full":
            return {"frozen": [], "gradual": False}
        if strategy == "head only":
            head = self.head_name()
            return {"frozen": frozen_complement(self.work, [head] if head else []), "gradual": False}
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown training strategy {strategy!r}; pick one of {', '.join(STRATEGIES)}")
        return self.strategies.custom_changes(self._config) if strategy == "custom" else {"gradual": True}

    def choose_strategy(self, strategy: str) -> RunConfig:
        """Pick ``strategy`` as the buttons do ("custom" gives back the last custom freezing); a
        strategy that cannot apply raises ``ValueError`` and changes nothing."""
        changes = self.strategy_changes(strategy)
        with self.strategies.picking(strategy):
            return self.set(**changes)

    # ================================================================== run control
    @one_start_at_a_time
    def start(self, config: RunConfig | None = None, name: str | None = None) -> Retrainer | None:
        """Start a run from the pretrained weights (returns at once).

        Uses the studio's config, or ``config`` for this run only (what-ifs); ``name`` labels
        it among the runs. Returns the run, or ``None`` when it could not start (the reason is
        announced on :attr:`Topic.ERROR`). While another start is under way, a run is going or
        what-ifs run: :class:`~retrain_widgets.core.runslot.RunBusy` (a ``ValueError``), said on the
        status line too.
        """
        self.emit(ErrorShown(None))
        cfg = self._config if config is None else config
        try:
            run = Retrainer(self.pretrained, cfg, self.train_loader, self.val_loader, self.old_val_loader,
                            old_train=self.old_train_loader, forward=self.forward, teacher=self.teacher)
        except Exception as exc:  # noqa: BLE001 - shown in the views
            self.emit(ErrorShown(exc))
            return None
        settle(self.run)
        self.figure.reset()
        self._layers = {id(run.model): parameterised_layers(run.model)}
        self.run, self._restored = run, None
        self.book.name(run, name or self.default_name(cfg))
        for event in (Event.EPOCH_END, Event.STAGE_CHANGE, Event.STATE_CHANGE):
            run.on(event, lambda _info, run=run: self.announce_cache(run))
        self.emit(RunMade(run))
        try:
            run.start()
        except Exception as exc:  # noqa: BLE001 - mismatches and bad loaders: shown in the views
            self.emit(RunFailed(run))
            self.run = self.runs[-1] if self.runs else None
            self.emit(ErrorShown(exc))
            if isinstance(exc, LossMismatchError):
                self.mismatch = exc
                self.emit(Focus("loss"))
            self.emit(StateShown(self.run))
            return None
        if (fault := self.book.add(run, on_fault=lambda exc: self.emit(ErrorShown(exc)))) is not None:
            self.emit(ErrorShown(fault))
        self.announce_cache(run)
        return run

    def cache_state(self, run: Retrainer | None = None) -> str:
        """The feature cache of ``run`` (default: the current run) in one line: built / reused,
        its size in MB, or refused and why (``history.meta[Meta.FEATURE_CACHE]``); ``""`` for none."""
        run = run if run is not None else self.run
        return feature_cache.describe(run.history.meta.get(Meta.FEATURE_CACHE) if run is not None else None)

    def announce_cache(self, run: Retrainer) -> None:
        """Announce ``run``'s cache state on :attr:`Topic.CACHE` while it is the current run (from any thread)."""
        if run is self.run:
            self.emit(CacheState(self.cache_state(run)))

    def default_name(self, cfg: RunConfig) -> str:
        """``#7 bce · head only · lr 0.00159 · cosine`` (:mod:`retrain_widgets.naming`)."""
        return self.book.numbered(naming.run_label(cfg, self.strategy_of(cfg)))

    def pause(self) -> None:
        if self.run is not None:
            self.run.pause()

    def resume(self) -> None:
        if self.run is not None:
            self.run.resume()

    def toggle_pause(self) -> None:
        """Pause a running run, resume a paused one."""
        if self.run is not None:
            (self.run.resume if self.run.state == State.PAUSED else self.run.pause)()

    def stop(self) -> None:
        """Stop the run at its next step boundary (and any queued what-ifs), or one being started."""
        self.stops += 1
        self.queue.stop()
        if self.run is not None:
            self.run.stop()

    def reset(self) -> None:
        """Back to the pretrained weights: stop any run (and queued what-ifs) and forget its trained model."""
        quiesce(self)
        self.run, self._restored = None, None
        self.emit(ResetDone())
        self.figure.reset()
        self.emit(PlotDrawn(self.figure.render(History().snapshot())))
        self.emit(ErrorShown(None))
        self.work = self.working_copy()
        self.refresh_work()
        self.emit(StateShown(None))
        self.emit(CacheState(""))
        self.status("reset: the next Start trains from the pretrained weights.")

    def busy(self) -> bool:
        """A run or the what-if queue is going."""
        run = self.run
        return self.queue.alive() or (run is not None and run.running)

    def wait(self, timeout: float | None = None) -> History | None:
        """Block until the current run (and any queued what-ifs) ends, through :attr:`wait_while`
        (the dashboard's handles clicks meanwhile). Returns the run's history (``None`` without a
        run); raises ``TimeoutError`` after ``timeout`` seconds."""
        if self.run is None and not self.queue.used:
            return None
        if not wait_or_stop(self, timeout):
            run = self.run
            raise TimeoutError(f"still running after {timeout} s" + (f" (step {run.step})" if run else ""))
        return self.history

    async def wait_async(self, timeout: float | None = None) -> History | None:
        """``await studio.wait_async()``: the same as :meth:`wait` for async cells."""
        import asyncio

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"still running after {timeout} s")
            await asyncio.sleep(0.05)
        return self.history

    @property
    def history(self) -> History | None:
        return self.run.history if self.run is not None else None

    @property
    def model(self) -> nn.Module:
        """The restored run's model (after :meth:`restore`), else the latest run's trained model,
        else the pretrained one."""
        if self._restored is not None:
            return self._restored[1]
        return self.run.model if self.run is not None else self.pretrained

    def frozen_layers(self, model: nn.Module) -> list[str]:
        """Names of ``model``'s parameterised layers that are wholly frozen now (for the plots)."""
        layers = self._layers.get(id(model)) or parameterised_layers(model)
        return [name for name, params in layers if not any(p.requires_grad for p in params)]

    def stop_older(self, model: nn.Module) -> None:
        """Re-running the cell that made a studio (or a new studio on the same model) stops the
        older studio's run first."""
        for other in list(HeadlessStudio._live):
            same_cell = self.cell is not None and other.cell == self.cell
            if (same_cell or other.pretrained is model) and other.busy():
                quiesce(other)  # its what-ifs too: not a grid left training in the background

    # ================================================================== runs: compare, restore, delete, code
    @property
    def runs(self) -> list[Retrainer]:
        """Every run started here, oldest first."""
        return self.book.runs

    @property
    def store(self) -> RunStore | None:
        return self.book.store

    @property
    def pretrained_id(self) -> str:
        """Fingerprint of the pretrained weights: the store groups runs by it."""
        return self.book.pretrained_id

    def run_summaries(self, every: bool = False) -> list[RunSummary]:
        """The runs from these pretrained weights made in this notebook, or with ``every`` in any
        notebook: the store's (across kernels) or these."""
        return self.book.summaries(every)

    def restore(self, key: str) -> nn.Module:
        """Load a run's weights (by store id or run name): returns the model, which becomes
        :attr:`model`; the config becomes the run's and its final plots are shown. Refused while
        a run or what-ifs are going (a ``ValueError``): it replaces the studio's model, config and plots."""
        if self.run is not None and self.run.state.final:
            settle(self.run)  # a run just stopped: its final frame and its stored record first
        if self.busy():
            raise ValueError("a run or what-ifs are going: Stop them first, then restore (restoring replaces "
                             "the studio's model, config and plots)")
        model, history, config = self.book.load(key)
        model.eval()
        self._restored = (key, model)
        if config is not None:
            self.config = config
        self.figure.reset()
        self.emit(PlotDrawn(self.figure.render_final(history.snapshot())))
        self.status(f"restored {self.book.name_for(key)}: `studio.model` holds its weights.")
        return model

    def delete_run(self, key: str) -> None:
        """Delete a stored run (and forget it here)."""
        self.book.delete(key)

    def code(self, key: str | None = None) -> str:
        """The current config (or a run's, by id or name) as a standalone PyTorch script."""
        from .core.export import export_script

        config = self._config if key is None else self.book.config_of(key)
        hints = self.code_hints or example_code(self.train_loader) or {}
        return export_script(config, title=f"{self.title}", **hints)

    # ================================================================== what-ifs
    def what_if(self, grid: dict[str, Any], wait: bool = False, executor: Any = None) -> list[RunConfig]:
        """Run every combination of ``grid`` from the same pretrained weights, one after another.

        ``grid`` maps config fields to lists of values, e.g. ``{"loss": ["bce", "focal"],
        "frozen": [["features"], []]}`` (``"strategy"``: names of :data:`STRATEGIES`, see
        :meth:`variant_changes`); the other fields come from the studio's config. Stop
        ends the queue cleanly. Returns the configs queued; ``wait=True`` blocks until they are
        done (Stop still works). ``executor``: where they train (:mod:`retrain_widgets.executors`,
        e.g. a ``RayExecutor``); by default one after another in this kernel.
        """
        with self.slot.claim(lambda: start_refusal(self, queue_too=True)):
            variants = grid_variants(grid)
            configs = [self._config.replace(**self.variant_changes(v)) for v in variants]
            names = [naming.variant_label(variant, variants) for variant in variants]
            inputs = None if executor is None else GridInputs(self.pretrained, self.train_loader, self.val_loader,
                                                              self.old_val_loader, self.old_train_loader, self.forward,
                                                              self.teacher)
            self.queue.start(configs, names, executor, inputs)
        if wait:
            self.wait()
        return configs

    def variant_changes(self, variant: dict[str, Any]) -> dict[str, Any]:
        """One what-if variant as config changes: a ``"strategy"`` becomes :meth:`strategy_changes`."""
        changes = dict(variant)
        return {**self.strategy_changes(changes.pop("strategy")), **changes} if "strategy" in changes else changes


def example_code(loader: Any) -> dict[str, str] | None:
    """Code hints for loaders made by ``retrain_widgets.examples.task(...)``."""
    tag = getattr(loader, "retrain_example", None)
    if not isinstance(tag, dict):
        return None
    from . import examples

    code = getattr(examples, "code", None)
    return code(tag.get("task"), batch_size=tag.get("batch_size", 64)) if code is not None else None
