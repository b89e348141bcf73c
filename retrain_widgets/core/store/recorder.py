"""The recorder: saves one run into a store from the run's events, mostly in its training thread.

While the run trains, its history, state, step and metrics are saved at most every
``save_every`` seconds (a slow save widens that interval so that saving takes at most ~5 % of
the wall time); when it pauses, everything is saved; when it ends, the final history, metrics,
message and trained weights.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..alignment import alignment_summary
from ..events import Event, EventInfo, State
from ..history import History
from ..names import Meta, Series
from .faults import StoreFull, bounded_decompress, disk_full, full_message
from .files import Connections, WeightsFolder

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["Recorder", "run_metrics", "encode_history", "decode_history", "HISTORY_CODEC"]

HISTORY_CODEC = "zlib+json"

_UPSERT_HISTORY = "INSERT OR REPLACE INTO histories (run_id, codec, data) VALUES (?, ?, ?)"


def encode_history(history: History, level: int) -> bytes:
    """``history.to_json()`` compressed with zlib at ``level`` (codec :data:`HISTORY_CODEC`)."""
    try:
        text = history.to_json()
    except ValueError:  # an infinite value somewhere: JSON's Infinity, which from_json reads
        text = json.dumps(history.to_dict())
    return zlib.compress(text.encode(), level)


def decode_history(codec: str, data: bytes, run_id: str = "?") -> History:
    if codec != HISTORY_CODEC:
        raise ValueError(f"unknown history codec {codec!r} (this version reads {HISTORY_CODEC!r})")
    return History.from_json(bounded_decompress(data, run_id).decode())  # bounded: a bad row cannot take GBs


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def run_metrics(run: Run) -> dict[str, Any]:
    """The run's current metrics (see :class:`~retrain_widgets.core.store.RunRecord`); values not
    measured are absent."""
    h = run.history
    out: dict[str, Any] = {"steps": int(run.global_step), "total_steps": int(run.total_steps)}
    steps, values = h.series(Series.TRAIN_LOSS)
    if len(steps):
        last = float(steps[-1])
        window = max(1.0, round(0.1 * max(float(run.global_step), last + 1)))
        tail = values[(steps > last - window) & np.isfinite(values)]
        if len(tail):
            out["train_loss"] = float(np.mean(tail, dtype=np.float64))
    for name in Series.EPOCH:
        _, v = h.series(name)
        if len(v) and (value := _finite(v[-1])) is not None:
            out[name] = value
    out.update(alignment_summary(h))  # mean_alignment, old_batch_loss (the alignment probe)
    meta = h.meta
    if meta.get(Meta.METRIC) is not None:
        out["metric"] = str(meta[Meta.METRIC])
    if meta.get(Meta.OLD_METRIC) is not None:
        out["old_metric_name"] = str(meta[Meta.OLD_METRIC])
    if meta.get(Meta.HIGHER_IS_BETTER) is not None:
        out["higher_is_better"] = bool(meta[Meta.HIGHER_IS_BETTER])
    return out


def _final_message(run: Run, notes: list[str]) -> str:
    state = run.state
    text = run.message
    if not text:
        if state == State.STOPPED:
            text = f"stopped at step {run.global_step} of {run.total_steps}"
        elif state == State.FINISHED:
            text = f"finished: {run.global_step} steps"
        else:
            text = f"{state.value} at step {run.global_step} of {run.total_steps}"
    return "; ".join([text, *[n for n in notes if n]])


class Recorder:
    """Saves one run (row ``run_id``, already inserted) from its events.

    ``on_end(recorder)`` is called once when recording ends: the run ended, or its row was
    deleted meanwhile.
    """

    SAVE_BUDGET = 0.05  # progress saves take at most ~5 % of wall time, whatever save_every

    def __init__(self, db: Connections, weights: WeightsFolder, run: Run, run_id: str, save_every: float,
                 note: str, on_end: Callable[[Recorder], None]) -> None:
        self.db, self.weights, self.run, self.id = db, weights, run, run_id
        self.save_every = save_every
        self.note = note
        self.done = False
        self._on_end = on_end
        self._lock = threading.Lock()
        self._last = -math.inf
        self._cost = 0.0

    def _subscriptions(self) -> tuple[tuple[Event, Callable[[EventInfo], None]], ...]:
        return ((Event.PUBLISH, self.on_progress), (Event.EPOCH_END, self.on_progress),
                (Event.STATE_CHANGE, self.on_state))

    def attach(self) -> None:
        for event, handler in self._subscriptions():
            self.run.on(event, handler)

    def detach(self) -> None:
        for event, handler in self._subscriptions():
            self.run.off(event, handler)

    # ------------------------------------------------------------------ handlers
    def on_progress(self, info: EventInfo) -> None:
        if time.monotonic() - self._last >= max(self.save_every, self._cost / self.SAVE_BUDGET):
            with self._full("the history"):
                self.save_progress()

    def on_state(self, info: EventInfo) -> None:
        state = State(info.data.get("state", self.run.state))
        with self._full("the final record" if state.final else "the state"):
            if state.final:
                self.save_final()
            elif state == State.PAUSED:
                self.save_progress()
            else:
                self.save_state(state)

    @contextlib.contextmanager
    def _full(self, what: str) -> Iterator[None]:
        """A full disk: the row marked failed with the reason at once (when that small write fits), the
        recording ended, and :class:`~.faults.StoreFull` raised (a handler error: reported, the run goes on)."""
        try:
            yield
        except Exception as exc:
            if not disk_full(exc) or isinstance(exc, StoreFull):
                raise
            text = full_message(self.id, os.path.dirname(self.weights.folder), what, self.run.global_step)
            saved = self.done and not isinstance(exc, sqlite3.Error)  # the final row is written: only the weights
            with contextlib.suppress(Exception), self.db.tx() as conn:
                conn.execute("UPDATE runs SET state = 'failed', message = CASE WHEN ? THEN message ELSE ? END, "
                             "ended = ? WHERE id = ?", (int(saved), text, time.time(), self.id))
            if not self.done:
                self._gone()
            raise StoreFull(errno.ENOSPC, text) from exc

    # ------------------------------------------------------------------ saves
    def save_state(self, state: State) -> None:
        with self._lock:
            if self.done:
                return
            now = time.time()
            with self.db.tx() as conn:
                cur = conn.execute("UPDATE runs SET state = ?, step = ?, started = COALESCE(started, ?), "
                                   "heartbeat = ? WHERE id = ?", (state.value, int(self.run.global_step), now, now, self.id))
                gone = cur.rowcount == 0
            if gone:
                self._gone()

    def save_progress(self) -> None:
        with self._lock:
            if self.done or self.run.state.final:
                return  # the final save writes everything
            t0 = time.perf_counter()
            run = self.run
            blob = encode_history(run.history, 1)
            metrics = json.dumps(run_metrics(run))
            now = time.time()
            started = now if run.state != State.IDLE else None
            with self.db.tx() as conn:
                cur = conn.execute(
                    "UPDATE runs SET state = ?, step = ?, total_steps = ?, metrics = ?, saved = ?, heartbeat = ?, "
                    "started = COALESCE(started, ?) WHERE id = ?",
                    (run.state.value, int(run.global_step), int(run.total_steps), metrics, now, now, started, self.id))
                gone = cur.rowcount == 0
                if not gone:
                    conn.execute(_UPSERT_HISTORY, (self.id, HISTORY_CODEC, blob))
            self._last = time.monotonic()
            self._cost = time.perf_counter() - t0
            if gone:
                self._gone()

    def save_final(self) -> None:
        weights_error: BaseException | None = None
        try:
            with self._lock:
                if self.done:
                    return
                self.done = True
                weights_error = self._write_final()
        finally:
            if self.done:
                self._end()
        if weights_error is not None:
            raise weights_error  # the engine reports a failing handler with a warning

    def _write_final(self) -> BaseException | None:
        """The final save (weights, history, metrics, message); returns the weights' error, if any."""
        run = self.run
        notes = [self.note]
        weights_error: BaseException | None = None
        try:
            self.weights.write(self.id, run.model, run.pretrained)  # what it changed against the pretrained model
        except Exception as exc:  # noqa: BLE001 - recorded in the message, then re-raised
            weights_error = exc
            notes.append(full_message(self.id, os.path.dirname(self.weights.folder), "the weights file", run.global_step)
                         if disk_full(exc) else f"the weights could not be saved: {type(exc).__name__}: {exc}")
        blob = encode_history(run.history, 6)
        metrics = json.dumps(run_metrics(run))
        now = time.time()
        with self.db.tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET state = ?, message = ?, ended = ?, saved = ?, heartbeat = ?, step = ?, "
                "total_steps = ?, metrics = ?, has_weights = ?, started = COALESCE(started, ?) WHERE id = ?",
                (run.state.value, _final_message(run, notes), now, now, now, int(run.global_step),
                 int(run.total_steps), metrics, int(weights_error is None), now, self.id))
            gone = cur.rowcount == 0
            if not gone:
                conn.execute(_UPSERT_HISTORY, (self.id, HISTORY_CODEC, blob))
        if gone:  # deleted while it ran
            self.weights.remove(self.id)
        return weights_error

    def _gone(self) -> None:
        """The run's row was deleted: stop recording."""
        self.done = True
        self._end()

    def _end(self) -> None:
        self.detach()
        self._on_end(self)
        if threading.current_thread() is self.run.thread:
            self.db.drop()  # the training thread is about to end
