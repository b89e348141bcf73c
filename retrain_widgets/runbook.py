"""The studio's runs: :class:`RunBook` (this kernel's runs, their names and store ids, the store)
and :class:`WhatIfQueue` (configs run one after another in a thread of their own). Both serve
the studio, and take what they need of it; neither imports a widget."""

from __future__ import annotations

import contextlib
import copy
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from torch import nn

from .core.comparison import RunSummary, summarize
from .core.config import RunConfig
from .core.engine import Retrainer
from .core.events import Event
from .core.history import History
from .core.store import RunStore, fingerprint
from .core.store.faults import NotRecorded
from .executors import run_in_book
from .naming import next_number, numbered
from .notebook import kernel_notebook, notebook_key
from .topics import ErrorShown, Focus, Payload, QueueDone, QueueProgress

__all__ = ["RunBook", "WhatIfQueue"]


class RunBook:
    """The runs started from one pretrained model: in this kernel (oldest first) and, with a
    ``store``, across kernels. A run is found by its store id or by its name.

    Each stored run records :attr:`notebook`: this kernel's notebook (see
    :mod:`retrain_widgets.notebook`), relative to the folder that holds the store, or ``None``
    outside a notebook. :meth:`summaries` lists this notebook's runs, or with ``every=True``
    every run of the pretrained model in the store."""

    def __init__(self, store: RunStore | None, pretrained: nn.Module) -> None:
        if store is not None and store.read_only:  # runs are recorded: say so now, not at the first Start
            raise ValueError(store.read_only)
        self.store, self.pretrained = store, pretrained
        self.notebook = notebook_key(kernel_notebook(), store.path if store is not None else None)
        self.runs: list[Retrainer] = []
        self._ids: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._pretrained_id: str | None = None

    @property
    def pretrained_id(self) -> str:
        """Fingerprint of the pretrained weights: the store groups runs by it."""
        if self._pretrained_id is None:
            self._pretrained_id = fingerprint(self.pretrained)
        return self._pretrained_id

    def name(self, run: Retrainer, name: str) -> None:
        self._names[id(run)] = name

    def next_number(self) -> int:
        """The next run's number: one above the highest ``#N`` of this notebook's runs of this
        model, in the store (across kernel restarts) and in this kernel."""
        names = [self._names.get(id(r), "") for r in self.runs]
        if self.store is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):  # a damaged store: said when the run is recorded
                names += [r.name for r in self.store.runs(pretrained_id=self.pretrained_id, notebook=self.notebook)]
        return next_number(names)

    def numbered(self, label: str) -> str:
        """``label`` with the next run's number: ``#7 bce · full · lr 0.001 · constant`` (reserved in the
        store: unique across the processes sharing it)."""
        number = self.next_number()
        if self.store is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):  # a read-only or damaged store: this kernel's
                number = self.store.reserve_number(f"{self.pretrained_id}:{self.notebook}", number)
        return numbered(number, label)

    def add(self, run: Retrainer, on_fault: Callable[[BaseException], Any] | None = None) -> BaseException | None:
        """A run that started: kept, and recorded in the store under its name and notebook. Returns ``None``,
        or why the store could not record it (a damaged database...): the run trains on, in memory.
        ``on_fault(exc)``: the recording failed later (a full disk), from the training thread."""
        self.runs.append(run)
        if self.store is None:
            return None
        try:
            self._ids[id(run)] = self.store.record(run, name=self._names.get(id(run)), notebook=self.notebook)
        except (sqlite3.Error, OSError, ValueError) as exc:
            fault = NotRecorded(f"this run is not recorded: the run store {self.store.db_path} failed "
                                f"({type(exc).__name__}: {exc}); it trains on in memory. A damaged runs.sqlite: "
                                f"move it away; or pass store=False")
            fault.__cause__ = exc
            return fault
        if on_fault is not None:
            seen = [len(run.handler_errors)]

            def store_faults(_info: Any) -> None:  # the recorder's errors (StoreFull...): shown, not only warned
                new, seen[0] = run.handler_errors[seen[0]:], len(run.handler_errors)
                for text in new:
                    if "StoreFull" in text or "run store" in text:
                        on_fault(NotRecorded(text))

            for event in (Event.PUBLISH, Event.STATE_CHANGE):
                run.on(event, store_faults)
        return None

    def name_of(self, run: Retrainer) -> str | None:
        return self._names.get(id(run))

    def key_of(self, run: Retrainer) -> str | None:
        """The run's store id, else its name."""
        return self._ids.get(id(run), self._names.get(id(run)))

    def find(self, key: str) -> Retrainer | None:
        """The run of this kernel with store id or name ``key``."""
        for r in self.runs:
            if key in (self._ids.get(id(r)), self._names.get(id(r))):
                return r
        return None

    def summaries(self, every: bool = False) -> list[RunSummary]:
        """The runs from these pretrained weights made in this notebook (``every``: in any
        notebook): the store's, or this kernel's."""
        if self.store is not None:
            notebook = ... if every else self.notebook
            records = self.store.runs(pretrained_id=self.pretrained_id, notebook=notebook)
            return [summarize(r, self.store) for r in records]
        return [summarize(r, name=self.name_of(r)) for r in self.runs]

    def name_for(self, key: str) -> str:
        """The name of the run with store id or name ``key``."""
        live = self.find(key)
        if live is not None:
            return self._names.get(id(live), key)
        if self.store is not None:
            try:
                return self.store.get(key).name
            except KeyError:
                pass
        return key

    def _idle(self, key: str, doing: str) -> tuple[Retrainer | None, str]:
        live = self.find(key)
        if live is not None and live.state.active:
            raise ValueError(f"that run is still training: stop it before {doing} it")
        return live, (self._ids.get(id(live), key) if live is not None else key)

    def load(self, key: str) -> tuple[nn.Module, History, RunConfig | None]:
        """A run's trained model (a copy), history and config (``None`` when the stored config has
        a custom loss that is not registered)."""
        live, run_id = self._idle(key, "restoring")
        if self.store is not None and (live is None or id(live) in self._ids):
            model = self.store.restore(run_id, self.pretrained)
            try:
                config: RunConfig | None = self.store.get(run_id).config_obj()
            except ValueError:  # a custom loss that was not registered: keep the current config
                config = None
            return model, self.store.history(run_id), config
        if live is not None:
            return copy.deepcopy(live.model), live.history, live.config
        raise ValueError(f"no run {key!r} in this studio")

    def delete(self, key: str) -> None:
        """Delete a stored run, and forget it in this kernel."""
        live, run_id = self._idle(key, "deleting")
        if self.store is not None:
            self.store.delete(run_id)
        if live is not None:
            self.runs.remove(live)

    def config_of(self, key: str) -> RunConfig:
        live = self.find(key)
        config = live.config if live is not None else self.store.get(key).config_obj() if self.store else None
        if config is None:
            raise ValueError(f"no run {key!r} in this studio")
        return config


class WhatIfQueue:
    """Runs configs one after another through ``start(config, name)`` (the studio's: the run, or
    ``None`` when it refused to start), in a thread of its own; :meth:`stop` ends it after the
    current run. Names each run with ``book``'s next number and announces ``QueueProgress``,
    ``QueueDone`` and ``Focus`` through ``emit`` (see :mod:`retrain_widgets.topics`)."""

    def __init__(self, book: RunBook, *, start: Callable[[RunConfig, str], Retrainer | None],
                 emit: Callable[[Payload], None], ready: Callable[[], Any] = lambda: None) -> None:
        self.book, self._start_run, self.emit, self._ready = book, start, emit, ready
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.executor: Any = None  # an Executor (retrain_widgets.executors); None: the runs go through start()

    @property
    def used(self) -> bool:
        """A queue was started (it may have ended)."""
        return self.thread is not None

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self.executor is not None:
            self.executor.stop()

    def start(self, configs: list[RunConfig], names: list[str], executor: Any = None, inputs: Any = None) -> None:
        """Run ``configs`` in the queue's thread: through ``start`` one after another, or on
        ``executor`` with ``inputs`` (:mod:`retrain_widgets.executors`)."""
        self._stop.clear()
        self.executor, self._inputs = executor, inputs
        self.thread = threading.Thread(target=self._run, args=(configs, names), daemon=True,
                                       name="retrain_widgets-what-if")
        self.thread.start()

    def _run(self, configs: list[RunConfig], names: list[str]) -> None:
        emit = self.emit
        try:
            keys = self._run_each(configs, names)
        except Exception as exc:  # noqa: BLE001 - shown in the views, never lost in a thread
            emit(ErrorShown(exc))
            emit(QueueProgress(f"✗ what-ifs: {exc}", True))
            return
        stopped = self._stop.is_set()
        emit(QueueDone(keys))
        emit(QueueProgress(f"what-ifs {'stopped after' if stopped else 'done:'} {len(keys)} of {len(configs)} "
                           f"run{'s' if len(configs) > 1 else ''}; overlaid below.", False))
        emit(Focus("runs"))

    def _run_each(self, configs: list[RunConfig], names: list[str]) -> list[str]:
        self._ready()  # the studio's what_if() holds its slot until this thread has started
        if self.executor is not None:
            return run_in_book(self.executor, self._inputs, self.book, self.emit, configs, names)
        keys: list[str] = []
        for i, (cfg, name) in enumerate(zip(configs, names)):
            if self._stop.is_set():
                break
            self.emit(QueueProgress(f"what-if {i + 1} of {len(configs)}: {name}", False))
            run = self._start_run(cfg, self.book.numbered(name))
            if run is None:
                break
            keys.append(self.book.key_of(run) or "")
            run.join()
        return keys
