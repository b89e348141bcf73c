"""Other trainers, watched: callbacks that make a Hugging Face ``Trainer`` or a Lightning
``Trainer`` run a :class:`~retrain_widgets.core.watch.WatchedRun` (the same telemetry, history,
steering and store as the engine's runs).

::

    from retrain_widgets.integrations.huggingface import RetrainCallback   # pip install retrain_widgets[hf]
    cb = RetrainCallback(old_val=old_val, name="bert focal", store=True)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
    cb.history.layer_series("grad_norm")     # one row per optimizer step
    cb.stop()                                # from any thread: the Trainer stops at its next step end

    from retrain_widgets.integrations.lightning import RetrainCallback     # pip install retrain_widgets[lightning]

Each module imports its framework when it is imported; this package imports neither, and
``import retrain_widgets`` imports neither.
"""

from __future__ import annotations

from typing import Any

from ..core.store import open_store
from ..core.watch import WatchedRun
from ..notebook import kernel_notebook, notebook_key

__all__ = ["WatchingCallback", "missing_extra"]


def missing_extra(framework: str, extra: str, error: ImportError) -> ImportError:
    """The ``ImportError`` raised when ``framework`` is not installed: it names the extra."""
    return ImportError(f"retrain_widgets' {framework} callback needs {framework}, which is not installed: "
                       f"pip install 'retrain_widgets[{extra}]' ({error})")


class WatchingCallback:
    """What the framework callbacks share: the options of the :class:`WatchedRun` made when training
    begins, the store it is recorded in, and steering (``stop``/``pause``/``resume`` from any thread,
    also before training begins).

    Parameters
    ----------
    store
        Where the run is recorded when training begins (see :func:`open_store`); ``run_id`` is its id.
    options
        :class:`WatchedRun`'s keyword options: ``old_val``, ``old_train``, ``old_loss``, ``forward``,
        ``metric``, ``name``, ``loss``, ``alignment_every``, ``alignment_budget``, ``publish_every``,
        ``publish_seconds``. The model, optimizer, scheduler, length and framework come from the trainer.
    """

    framework = "loop"
    _FROM_TRAINER = ("model", "optimizer", "scheduler", "framework", "total_steps", "epochs", "hook_optimizer")

    def __init__(self, store: Any = None, **options: Any) -> None:
        taken = sorted(set(options) & set(self._FROM_TRAINER))
        if taken:
            raise ValueError(f"{', '.join(taken)} come(s) from the trainer: RetrainCallback does not take them")
        self.options = options
        self.store = open_store(store)
        self.run: WatchedRun | None = None
        self.run_id: str | None = None
        self._asked: str | None = None  # "stop" or "pause", asked before training began
        self._slot: Any = None  # the dashboard's place, when shown before training began

    # ------------------------------------------------------------------ the dashboard
    def dashboard(self) -> Any:
        """The live dashboard (:class:`~retrain_widgets.widgets.watch.WatchDashboard`): shown before
        training begins, it says so and fills with the run's dashboard at its start."""
        if self._slot is None:
            from ..widgets.watch import DashboardSlot

            self._slot = DashboardSlot()
            if self.run is not None:
                self._slot.attach(self.run, self.store)
        return self._slot

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.dashboard())

    # ------------------------------------------------------------------ steering (any thread)
    def stop(self) -> None:
        """Stop at the next step end (the trainer's own stop flag is set there)."""
        if self._live:
            self.run.stop()
        else:
            self._asked = "stop"

    def pause(self) -> None:
        """Wait at the next step end until :meth:`resume` or :meth:`stop`."""
        if self._live:
            self.run.control.pause()  # also before the first step: it waits there
        else:
            self._asked = self._asked or "pause"

    def resume(self) -> None:
        if self._asked == "pause":
            self._asked = None
        if self.run is not None:
            self.run.resume()

    @property
    def should_stop(self) -> bool:
        return self.run.should_stop if self._live else self._asked == "stop"

    @property
    def _live(self) -> bool:
        return self.run is not None and not self.run.state.final

    @property
    def history(self) -> Any:
        """The run's :class:`~retrain_widgets.core.history.History` (``None`` before training begins)."""
        return self.run.history if self.run is not None else None

    def finish(self, error: BaseException | None = None) -> None:
        """End the run (stopped, failed with ``error``, or finished): the trainer's end calls it; call
        it with the exception when the trainer raised."""
        if self.run is not None:
            self.run.finish(error)

    # ------------------------------------------------------------------ the framework callbacks
    def _start(self, model: Any, optimizer: Any, **trainer_options: Any) -> WatchedRun:
        if self.run is not None and not self.run.state.final:
            self.run.finish()
        run = WatchedRun(model, optimizer, framework=self.framework, **trainer_options, **self.options)
        self.run = run
        if self._asked == "stop":
            run.stop()
        elif self._asked == "pause":
            run.control.pause()
        self._asked = None
        if self.store is not None:
            run.notebook = notebook_key(kernel_notebook(), self.store.path)
            self.run_id = self.store.record(run, notebook=run.notebook)
        if self._slot is not None:
            self._slot.attach(run, self.store)
        return run
