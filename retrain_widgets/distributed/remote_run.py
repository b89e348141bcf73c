"""``RemoteRun``: a run trained elsewhere (a Ray worker), as the notebook's process sees it.

It implements the :class:`~retrain_widgets.core.run.Run` protocol, so the store records it
(:meth:`RunStore.record <retrain_widgets.core.store.RunStore.record>`), comparisons read it and
the studio's Runs tab and live figure follow it, unchanged. Its history fills from the worker's
chunks (:meth:`begin`, :meth:`apply`, :meth:`end`, :meth:`fail` are called by the executor's
thread that reads the worker's stream, which is :attr:`thread`), and it fires the same events
as a local run: ``PUBLISH``, ``EPOCH_END`` and ``STAGE_CHANGE`` as the worker fired them, then
``STATE_CHANGE``. When it ends, :attr:`model` holds the trained weights (the worker sent what
changed against the pretrained weights).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.builder import build_model
from ..core.config import RunConfig
from ..core.engine_parts import config_record
from ..core.events import Event, EventInfo, Handlers, State
from ..core.history import History
from ..core.names import Meta
from ..core.weights_delta import restore_state
from .worker import Chunk, Ended, Started, Tape

__all__ = ["RemoteRun", "RunLost", "LostWeights"]


class RunLost(RuntimeError):
    """The worker that trained a run died, or the run's task failed before it could report."""


class LostWeights(nn.Module):
    """The model of a run whose worker died: it has no weights to give (saving it raises, so the
    store records the run without weights and says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise RunLost(f"the trained weights are lost with the worker ({self.reason})")


class RemoteRun:
    """A run of ``config`` from ``pretrained``, trained by a remote worker (see the module docstring).

    ``stop`` is called by :meth:`stop` (the executor asks the worker to stop at a step boundary)."""

    def __init__(self, pretrained: nn.Module, config: RunConfig, name: str | None = None,
                 stop: Callable[[RemoteRun], None] | None = None) -> None:
        self.pretrained, self.config, self.name = pretrained, config, name
        self.history = History()
        self.state = State.IDLE
        self.total_steps = 0
        self.message = ""
        self.error: BaseException | None = None
        self.head_name: str | None = None
        self._head_out: int | None = None
        self.model: nn.Module = pretrained
        self.step = 0
        self.epoch = 0
        self.steps_per_second = 0.0
        self.host = ""  #: where it trains: "hostname:pid:node" of its worker (once it began)
        self.handlers = Handlers()
        self.handler_errors = self.handlers.errors
        self._stop = stop
        self._stop_asked = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._t_start = 0.0

    # ================================================================== the Run protocol
    @property
    def global_step(self) -> int:
        return self.step

    @property
    def head_out(self) -> int | None:
        return self._head_out

    @property
    def started_at(self) -> float:
        return self._t_start

    @property
    def thread(self) -> threading.Thread | None:
        """The driver's thread that reads the worker's stream (and fires this run's events)."""
        return self._thread

    @property
    def progress(self) -> dict[str, Any]:
        sps = self.steps_per_second
        left = max(0, self.total_steps - self.step)
        return {"step": self.step, "total": self.total_steps, "epoch": self.epoch, "epochs": self.config.epochs,
                "steps_per_second": sps, "eta": left / sps if sps > 0 else None, "state": self.state.value,
                "stage": 0, "stages": 1}

    def config_record(self) -> tuple[dict[str, Any], str]:
        return config_record(self.config)

    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Callable[[EventInfo], Any]:
        return self.handlers.on(event, handler)

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None:
        self.handlers.off(event, handler)

    # ================================================================== control, as a Retrainer's
    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def stop(self) -> None:
        """Ask the worker to stop at its next step boundary; returns at once."""
        self._stop_asked = True
        if self._stop is not None and not self.state.final:
            self._stop(self)

    def pause(self) -> None:
        """A remote run does not pause (Stop ends it, keeping what it did)."""

    def resume(self) -> None:
        """A remote run does not pause."""

    def join(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> History:
        """Block until the run ends; its history, or what made it fail raised (as :class:`RunLost`
        with the worker's reason)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the remote run is still {self.state.value} after {timeout} s (step {self.step})")
        if self.error is not None:
            raise self.error
        return self.history

    def snapshot(self) -> Any:
        return self.history.snapshot()

    # ================================================================== fed by the executor's reader thread
    def attach(self, thread: threading.Thread) -> None:
        self._thread = thread

    def begin(self, started: Started) -> None:
        """The worker began training: the plan, then ``RUNNING``."""
        self.total_steps, self.head_name, self._head_out = started.total_steps, started.head_name, started.head_out
        self.host = started.host
        self.history.meta.update(started.meta)
        devices = sorted({p.device.index or 0 for p in self.pretrained.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):  # the skeleton's new head must not move the user's RNG
            self.model = build_model(self.pretrained, self.config, device="cpu").model
        self._t_start = time.perf_counter()
        self._set_state(State.RUNNING)

    def apply(self, chunk: Chunk) -> None:
        """A chunk of the worker's history writes and events, replayed in order."""
        self.history.meta.update(chunk.meta)
        self.step, self.epoch, self.steps_per_second = chunk.step, chunk.epoch, chunk.steps_per_second
        Tape.replay(self.history, chunk.ops, self.handlers.fire)

    def end(self, ended: Ended) -> None:
        """The worker's run ended: its last chunk, its trained weights, its final state."""
        self.apply(ended.chunk)
        if ended.delta is not None:
            self.model.load_state_dict(restore_state(ended.delta, self.pretrained))
        self.message = ended.message
        state = State(ended.state)
        if state == State.FAILED:
            self.error = RunLost(ended.error or ended.message)
        self._finish(state)

    def fail(self, reason: str, started: bool = True) -> None:
        """The worker died or the task failed: the run failed with ``reason``; what arrived is kept,
        the weights are lost (the store records the run without them)."""
        if self.state.final:
            return
        self.error = RunLost(reason)
        self.message = f"RunLost: {reason}"
        self.history.meta[Meta.ERROR] = self.message
        self.history.mark(self.step, "state", f"failed: {self.message}")
        if started:
            self.model = LostWeights(reason)
        self._finish(State.FAILED)

    def drop(self) -> None:
        """The grid was stopped before this run began: it never ran."""
        self.message = "dropped: the grid was stopped before it began"
        self._finish(State.STOPPED)

    def _finish(self, state: State) -> None:
        self._set_state(state)
        self._done.set()

    def _set_state(self, state: State) -> None:
        self.state = state
        self.handlers.fire(Event.STATE_CHANGE, self.step, self.epoch, {"state": state})

    def __repr__(self) -> str:
        return f"RemoteRun(name={self.name!r}, state={self.state.value}, step={self.step}/{self.total_steps})"
