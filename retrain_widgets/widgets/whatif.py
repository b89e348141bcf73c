"""The what-if builder of the Runs tab: pick the fields to vary and their values with widgets, see
how many runs that makes and about how long they take, and run them through
:meth:`~retrain_widgets.headless.HeadlessStudio.what_if` (the JSON box stays as the advanced form).

The headless part is plain Python: :data:`FIELDS` (the fields a builder offers),
:func:`grid_of` (the builder's choices as a what-if grid), :class:`RunTimer` (the studio's own
measure of seconds per step) and :func:`estimate` (runs, steps and time of a grid).
:class:`WhatIfBuilder` is the view. The estimate never guesses: with no finished run to measure,
it gives the runs and their steps and says that the time is unknown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as W

from ..core import losses, schedules
from ..core.builder import count_steps
from ..core.comparison import grid_variants
from ..core.config import RunConfig
from ..core.engine import Retrainer
from ..core.events import Event, State
from ..executors import RayExecutor, ray_available
from ..headless import STRATEGIES, HeadlessStudio
from ..topics import Topic
from .binding import css, message_html
from .writes import write

__all__ = ["FIELDS", "Estimate", "RunTimer", "WhatIfBuilder", "WhatIfField", "estimate", "grid_of"]


def _number(text: str, cfg: RunConfig) -> float:
    return float(text)


def _distill(text: str, cfg: RunConfig) -> dict[str, float] | None:
    """``off`` (no distillation) or the weight ``alpha`` of the new loss (the temperature is the
    config's, else 2)."""
    if text.lower() in ("off", "none", "no"):
        return None
    return {"alpha": float(text), "temperature": (cfg.distill or {}).get("temperature", 2.0)}


@dataclass(frozen=True)
class WhatIfField:
    """One field a builder can vary: picked from ``options`` (names), or typed as values that
    ``parse`` reads one by one (``hint`` shows the form; ``suggest`` gives starting values)."""

    label: str
    options: Callable[[], Sequence[str]] | None = None
    parse: Callable[[str, RunConfig], Any] | None = None
    hint: str = ""
    suggest: Callable[[RunConfig], str] | None = None


FIELDS: dict[str, WhatIfField] = {
    "loss": WhatIfField("loss", options=losses.available),
    "strategy": WhatIfField("freezing", options=lambda: STRATEGIES),
    "schedule": WhatIfField("schedule", options=schedules.available),
    "lr": WhatIfField("LR", parse=_number, hint="numbers, e.g. 1e-3, 3e-3",
                      suggest=lambda c: f"{c.lr / 3:.3g}, {c.lr:.3g}, {c.lr * 3:.3g}"),
    "lr_decay": WhatIfField("lr_decay", parse=_number, hint="numbers in (0, 1], e.g. 1, 0.38",
                            suggest=lambda c: "1, 0.38" if c.lr_decay == 1 else f"1, {c.lr_decay:.3g}"),
    "distill": WhatIfField("distillation", parse=_distill, hint="off or alphas, e.g. off, 0.5",
                           suggest=lambda c: "off, 0.5"),
    "l2sp": WhatIfField("L2-SP", parse=_number, hint="strengths, e.g. 0, 0.01",
                        suggest=lambda c: "0, 0.01" if c.l2sp == 0 else f"0, {c.l2sp:g}"),
}


def current_choice(name: str, studio: HeadlessStudio) -> tuple[str, ...]:
    """The studio's current value of a field picked from options (to start a selection from)."""
    value = studio.strategy_of() if name == "strategy" else getattr(studio.config, name)
    return (value,) if isinstance(value, str) and value in FIELDS[name].options() else ()


def grid_of(choices: Mapping[str, Any], config: RunConfig) -> dict[str, list[Any]]:
    """A what-if grid from a builder's choices: field -> the names picked (fields with ``options``)
    or a text of comma-separated values (the others). Raises ``ValueError`` naming the field and
    the value at fault."""
    grid: dict[str, list[Any]] = {}
    for name, chosen in choices.items():
        spec = FIELDS.get(name)
        if spec is None:
            raise ValueError(f"the what-if builder has no field {name!r}; it offers {', '.join(FIELDS)}")
        if spec.parse is None:
            values = [chosen] if isinstance(chosen, str) else list(chosen)
            unknown = [v for v in values if v not in spec.options()]
            if unknown:
                raise ValueError(f"{spec.label}: unknown {unknown[0]!r}; pick from {', '.join(spec.options())}")
        else:
            values = [_parsed(spec, part.strip(), config) for part in str(chosen).split(",") if part.strip()]
        if not values:
            raise ValueError(f"{spec.label}: pick at least one value, or untick it")
        grid[name] = list(dict.fromkeys(values)) if spec.parse is None else values
    if not grid:
        raise ValueError("tick at least one field to vary")
    return grid


def _parsed(spec: WhatIfField, text: str, config: RunConfig) -> Any:
    try:
        return spec.parse(text, config)  # type: ignore[misc]
    except ValueError:
        raise ValueError(f"{spec.label}: {text!r} is not a value; write {spec.hint}") from None


class RunTimer:
    """The studio's own measure of speed: the wall-clock seconds per step (validation included) of
    each run that ended with steps done (finished or stopped), newest last; ``on_change()`` is
    called after each new measure (from the training thread)."""

    def __init__(self, studio: HeadlessStudio, on_change: Callable[[], Any] | None = None) -> None:
        self.studio, self.on_change = studio, on_change
        self.measured: list[tuple[str, float]] = []  # (run name, seconds per step)
        self._lock = threading.Lock()
        studio.on(Topic.RUN, lambda p: self.watch(p.run))

    def watch(self, run: Retrainer) -> None:
        def ended(info: Any, run: Retrainer = run) -> None:
            state = info.data["state"]
            if state.final and state != State.FAILED and run.step > 0 and run.started_at > 0:
                per_step = (time.perf_counter() - run.started_at) / run.step
                with self._lock:
                    self.measured.append((self.studio.book.name_of(run) or "a run", per_step))
                if self.on_change is not None:
                    self.on_change()

        run.on(Event.STATE_CHANGE, ended)

    def latest(self) -> tuple[str, float] | None:
        with self._lock:
            return self.measured[-1] if self.measured else None


@dataclass(frozen=True)
class Estimate:
    """What a grid would run: ``runs``, their optimizer ``steps`` in all, ``seconds`` (``None``
    when nothing measured the speed yet) and a one-line ``text``."""

    runs: int
    steps: int
    seconds: float | None
    text: str


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{max(seconds, 0.1):.1f} s"  # "about 0.3 s in all", never "about under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def estimate(studio: HeadlessStudio, grid: dict[str, list[Any]], timer: RunTimer | None = None) -> Estimate:
    """Runs, steps and time of ``grid`` from ``studio``'s config: each variant's steps
    (:func:`~retrain_widgets.core.builder.count_steps`) times the seconds per step ``timer``
    measured on the latest run. Raises ``ValueError`` for a variant the config refuses."""
    configs = [studio.config.replace(**studio.variant_changes(v)) for v in grid_variants(grid)]
    steps = []
    for cfg in configs:
        try:
            steps.append(count_steps(studio.train_loader, cfg))
        except ValueError:  # a loader without a length: max_steps, or unknown
            steps.append(cfg.max_steps or 0)
    n, total = len(configs), sum(steps)
    each = f"{steps[0]:,} steps each" if len(set(steps)) == 1 else f"{total:,} steps in all"
    head = f"{n} run{'s' if n != 1 else ''} × {each}" if total else f"{n} run{'s' if n != 1 else ''}"
    measured = timer.latest() if timer is not None else None
    if measured is None or not total:
        why = "no run has ended in this studio yet" if measured is None else "the loader does not tell its length"
        return Estimate(n, total, None, f"{head}; no time estimate: {why} (a finished Start measures the speed).")
    name, per_step = measured
    seconds = per_step * total
    return Estimate(n, total, seconds, f"{head}: about {_duration(seconds)} in all, at {per_step * 1000:.3g} ms a "
                                      f"step as measured on {name!r} (freezing less trains slower).")


class WhatIfBuilder(W.VBox):
    """Per field a checkbox (vary it) and its values: a multi-select of names, or a text of values.
    Shows the number of runs and the estimate as the choices change; "Run" queues them.

    ``say(text, error)`` shows what the start of the queue said (the Runs tab's message line)."""

    def __init__(self, studio: HeadlessStudio, say: Callable[[str, bool], None] | None = None) -> None:
        super().__init__()
        self.studio = studio
        self.say = say or (lambda text, error=False: None)
        self.timer = RunTimer(studio, on_change=self.update)
        self.add_class("rw-whatif-builder")
        self.vary: dict[str, W.Checkbox] = {}
        self.values: dict[str, W.Widget] = {}
        for name, spec in FIELDS.items():
            self.vary[name] = css(W.Checkbox(value=False, description=spec.label, indent=False,
                                             layout=W.Layout(width="110px")), f"rw-whatif-vary-{name}")
            self.values[name] = css(self._values_widget(spec), f"rw-whatif-values-{name}")
            self.vary[name].observe(lambda c, name=name: self._ticked(name, c["new"]), names="value")
            self.values[name].observe(lambda _: self.update(), names="value")
        self.summary = css(W.HTML(), "rw-whatif-summary")
        self.run_button = css(W.Button(description="Run what-ifs", button_style="success", disabled=True,
                                       layout=W.Layout(width="auto", flex="0 0 auto")), "rw-whatif-build-run")
        self.run_button.on_click(lambda _: self.run())
        #: where the runs train: shown when ray is importable (``"ray"``: a local Ray instance, one run a CPU)
        self.where = css(W.Dropdown(options=[("in this kernel", "kernel"), ("on Ray (local)", "ray")],
                                    value="kernel", layout=W.Layout(width="150px",
                                                                    display=None if ray_available() else "none")),
                         "rw-whatif-where")
        self._ray: Any = None

        def column(names: Sequence[str]) -> W.VBox:
            return W.VBox([W.HBox([self.vary[n], self.values[n]]) for n in names])

        picked = [n for n, s in FIELDS.items() if s.parse is None]
        typed = [n for n, s in FIELDS.items() if s.parse is not None]
        self.children = [W.HBox([column(picked), column(typed)]),
                         W.HBox([self.run_button, self.where, self.summary], layout=W.Layout(align_items="center"))]
        self.update()

    @staticmethod
    def _values_widget(spec: WhatIfField) -> W.Widget:
        if spec.parse is None:
            return W.SelectMultiple(options=tuple(spec.options()), rows=3, disabled=True,
                                    layout=W.Layout(width="190px"))
        return W.Text(placeholder=spec.hint, disabled=True, layout=W.Layout(width="210px"))

    def _ticked(self, name: str, on: bool) -> None:
        widget, spec = self.values[name], FIELDS[name]
        if on and not widget.value:  # start from the current value (or suggested ones)
            cfg = self.studio.config
            widget.value = current_choice(name, self.studio) if spec.parse is None else spec.suggest(cfg)
        widget.disabled = not on
        self.update()

    def choices(self) -> dict[str, Any]:
        """The ticked fields and their values, as :func:`grid_of` takes them."""
        return {name: self.values[name].value for name, box in self.vary.items() if box.value}

    def grid(self) -> dict[str, list[Any]]:
        return grid_of(self.choices(), self.studio.config)

    def update(self) -> Estimate | None:
        """Redraw the number of runs and the estimate (or what is wrong with the choices)."""
        try:
            est = estimate(self.studio, self.grid(), self.timer)
        except ValueError as exc:
            write(self.summary, value=message_html(str(exc), error=bool(self.choices())))
            write(self.run_button, disabled=True, description="Run what-ifs")
            return None
        write(self.summary, value=message_html(est.text))
        write(self.run_button, disabled=False, description=f"Run {est.runs} what-if{'s' if est.runs != 1 else ''}")
        return est

    def run(self) -> list[RunConfig] | None:
        """Queue the chosen what-ifs (they run one after another, like the JSON box's)."""
        try:
            return self.studio.what_if(self.grid(), executor=self.executor())
        except (ValueError, ImportError) as exc:
            self.say(f"✗ what-ifs: {exc}", True)
            return None

    def executor(self) -> Any:
        """``None`` (this kernel's queue), or the builder's ``RayExecutor`` (made once) when "on Ray" is picked."""
        if self.where.value != "ray":
            return None
        if self._ray is None:
            self._ray = RayExecutor()
        return self._ray
