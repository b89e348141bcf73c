"""Executors: where the runs of a what-if grid train.

An executor takes the grid's shared inputs (:class:`~retrain_widgets.distributed.worker.GridInputs`:
the pretrained model and the loaders), its configs and names, and trains them, calling
``adopt(run, name)`` for each run as it starts (the studio names it, shows it and records it in
its store) and ``say(text)`` with what it is doing; :meth:`Executor.stop` stops the grid.

- :class:`ThreadExecutor` (the default): one run after another in this process, each a
  :class:`~retrain_widgets.core.engine.Retrainer` in its thread. The studio's what-if queue does
  this itself when no executor is given; this class is the same for scripts.
- :class:`~retrain_widgets.distributed.ray_executor.RayExecutor`: each run a Ray task, on a local
  instance or a cluster (``pip install "retrain_widgets[ray]"``). Importing this module does not
  import ray; making a ``RayExecutor`` does.

:func:`run_grid` runs a grid from a plain script::

    runs = run_grid(model, {"loss": ["bce", "focal"]}, train, val, config=cfg,
                    executor=RayExecutor(), store="runs/")
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import nn

from .core.comparison import grid_variants
from .core.config import RunConfig
from .core.engine import Retrainer
from .core.run import Run
from .core.store import RunStore
from .distributed.ray_executor import RayExecutor
from .distributed.worker import GridInputs
from .naming import variant_label
from .topics import Payload, QueueProgress, RunMade

if TYPE_CHECKING:
    from .runbook import RunBook

__all__ = ["Executor", "ThreadExecutor", "GridInputs", "run_grid", "run_in_book", "RayExecutor", "ray_available"]

Adopt = Callable[[Run, str], None]


@runtime_checkable
class Executor(Protocol):
    """Trains the runs of a grid (see the module docstring)."""

    def run_grid(self, inputs: GridInputs, configs: Sequence[RunConfig], names: Sequence[str], *,
                 adopt: Adopt | None = None, say: Callable[[str], None] | None = None) -> list[Run]:
        """Train ``configs`` (named ``names``); return the runs that started, once all ended."""
        ...

    def stop(self) -> None:
        """Stop the grid: runs not begun are dropped, running ones stop at a step boundary."""
        ...


class ThreadExecutor:
    """One run after another, each a :class:`Retrainer` in a thread of this process."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._current: Retrainer | None = None

    def run_grid(self, inputs: GridInputs, configs: Sequence[RunConfig], names: Sequence[str], *,
                 adopt: Adopt | None = None, say: Callable[[str], None] | None = None) -> list[Run]:
        self._stop.clear()
        runs: list[Run] = []
        for i, (cfg, name) in enumerate(zip(configs, names)):
            if self._stop.is_set():
                break
            if say is not None:
                say(f"what-if {i + 1} of {len(configs)}: {name}")
            run = Retrainer(inputs.model, cfg, inputs.train, inputs.val, inputs.old_val, old_train=inputs.old_train,
                            forward=inputs.forward, teacher=inputs.teacher)
            run.name = name
            self._current = run
            run.start()
            if adopt is not None:
                adopt(run, name)
            runs.append(run)
            run.join()
        return runs

    def stop(self) -> None:
        self._stop.set()
        if self._current is not None:
            self._current.stop()


def run_grid(model: nn.Module, grid: dict[str, Iterable[Any]], train: Iterable[Any], val: Iterable[Any] | None = None,
             old_val: Iterable[Any] | None = None, *, config: RunConfig | None = None, executor: Executor | None = None,
             store: RunStore | str | os.PathLike[str] | None = None, old_train: Iterable[Any] | None = None,
             forward: Any = None, teacher: nn.Module | None = None) -> list[Run]:
    """Train every combination of ``grid`` (config fields -> lists of values; the other fields are
    ``config``'s) from ``model`` and wait for them: on ``executor`` (a :class:`ThreadExecutor` when
    ``None``), each run recorded in ``store`` (a folder or a :class:`RunStore`) when given.
    Returns the runs (:class:`~retrain_widgets.core.run.Run`\\ s), in the grid's order."""
    base = config if config is not None else RunConfig()
    variants = grid_variants(grid)
    configs = [base.replace(**v) for v in variants]
    names = [variant_label(v, variants) for v in variants]
    runs_store = RunStore(store) if store is not None and not isinstance(store, RunStore) else store

    def adopt(run: Run, name: str) -> None:
        if runs_store is not None:
            runs_store.record(run, name=name)

    inputs = GridInputs(model, train, val, old_val, old_train, forward, teacher)
    runs = (executor or ThreadExecutor()).run_grid(inputs, configs, names, adopt=adopt)
    order = {name: i for i, name in enumerate(names)}
    return sorted(runs, key=lambda r: order.get(r.name or "", len(order)))



def run_in_book(executor: Executor, inputs: GridInputs, book: RunBook, emit: Callable[[Payload], None],
                configs: Sequence[RunConfig], names: Sequence[str]) -> list[str]:
    """The studio's what-if queue on ``executor``: each run, as it begins, is numbered and named in
    ``book``, announced (``RunMade``: the views follow it) and recorded in the book's store by this
    process. Returns the runs' keys (store ids, else names)."""

    def adopt(run: Run, label: str) -> None:
        book.name(run, book.numbered(label))
        emit(RunMade(run))
        book.add(run)

    runs = executor.run_grid(inputs, configs, names, adopt=adopt, say=lambda text: emit(QueueProgress(text, False)))
    return [book.key_of(r) or "" for r in runs if book.key_of(r) is not None]


def ray_available() -> bool:
    """Whether ray can be imported here (the what-if builder then offers it)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None
