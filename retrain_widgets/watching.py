"""``watch()``: the dashboard, the run store and steering on the loop the user already has.

::

    run = retrain_widgets.watch(model, optimizer, old_val=old_val)
    run                                  # the cell's last expression: the live dashboard
    for epoch in range(3):
        for x, y in train:
            ...; optimizer.step()
            run.step(loss)               # Pause waits here; Stop sets run.should_stop
            if run.should_stop:
                break
        run.epoch_end(val_acc=acc)
    run.finish()

The run is a :class:`~retrain_widgets.core.watch.WatchedRun` (its history, steering, the
telemetry) that a notebook shows as :class:`~retrain_widgets.widgets.watch.WatchDashboard`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .core.batches import Forward
from .core.store import RunStore, open_store
from .core.watch import WatchedRun
from .notebook import kernel_notebook, notebook_key

__all__ = ["watch", "WatchedLoop"]


class WatchedLoop(WatchedRun):
    """A :class:`~retrain_widgets.core.watch.WatchedRun` recorded in a store and shown, in a
    notebook, as its live dashboard (the cell's last expression, or ``run.dashboard()``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 store: bool | str | os.PathLike[str] | RunStore | None = True, **options: Any) -> None:
        super().__init__(model, optimizer, **options)
        self.store = open_store(store)
        self.notebook = notebook_key(kernel_notebook(), self.store.path if self.store is not None else None)
        self.id = self.store.record(self, name=self.name, notebook=self.notebook) if self.store is not None else None
        self._dashboard: Any = None

    def dashboard(self) -> Any:
        """The live dashboard (made once): loss, old task, LR, per-layer gradients, alignment, drift,
        progress; Pause / Resume / Stop; the Layers and Runs tabs."""
        if self._dashboard is None:
            from .widgets.watch import WatchDashboard

            self._dashboard = WatchDashboard(self, self.store)
        return self._dashboard

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.dashboard())


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
          old_val: Iterable[Any] | None = None, old_train: Iterable[Any] | None = None,
          old_loss: Callable[..., torch.Tensor] | None = None, forward: Forward | None = None,
          metric: str | Callable[..., Any] | None = None, store: bool | str | os.PathLike[str] | RunStore | None = True,
          name: str | None = None, **options: Any) -> WatchedLoop:
    """Watch the loop that trains ``model``: call ``run.step(loss)`` after each optimizer step,
    ``run.epoch_end(**metrics)`` at an epoch's end and ``run.finish()`` at the end (or use
    ``with watch(...) as run:``). Shown in a notebook, ``run`` is the live dashboard.

    Parameters
    ----------
    model, optimizer
        What the loop trains, and with what: with the optimizer, per-layer gradient norms are taken
        at its step (whatever the order of ``zero_grad``), LRs come from its groups, and the
        Layers tab can unfreeze what it holds.
    old_val, old_train, old_loss, forward, metric
        The old task: ``old_val`` is measured at each ``epoch_end``; the alignment probe samples
        ``old_train`` (or ``old_val``); see :class:`~retrain_widgets.core.watch.WatchedRun`.
    store
        Where the run is recorded (``True``: ``.retrain_runs`` here; ``False``: nowhere).
    name
        The run's name in the store and the Runs tab.
    options
        More of :class:`~retrain_widgets.core.watch.WatchedRun`'s options (``loss``,
        ``scheduler``, ``total_steps``, ``epochs``, ``alignment_every``, ...).
    """
    return WatchedLoop(model, optimizer, old_val=old_val, old_train=old_train, old_loss=old_loss, forward=forward,
                       metric=metric, store=store, name=name, **options)
