"""``RunStore``: a folder of runs (their database and weights files) and their recording."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import zlib
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..builder import build_model
from ..config import RunConfig
from ..events import State
from ..fingerprints import fingerprint
from ..history import History
from ..lora import CONFIG_FIELDS
from ..names import Meta
from ..run import check_run
from . import schema
from .faults import DamagedRun, clean_weights_folder, read_only_reason
from .files import Connections, WeightsFolder
from .liveness import HOST, death_note, process_alive, process_token
from .recorder import HISTORY_CODEC, Recorder, decode_history, encode_history, run_metrics
from .records import RECORD_COLUMNS, RunRecord, UnknownRun, check_name, is_id, new_id, record_of_row

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["RunStore", "DEFAULT_DIR", "INTERRUPTED", "ACTIVE_STATES", "open_store"]

#: Folder used by ``RunStore()`` without a path.
DEFAULT_DIR = ".retrain_runs"
DB_NAME = "runs.sqlite"
WEIGHTS_DIR = "weights"
ACTIVE_STATES = (State.IDLE.value, State.RUNNING.value, State.PAUSED.value)
INTERRUPTED = "interrupted"

_ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in ACTIVE_STATES) + ")"


class RunStore:
    """An embedded store of runs in a folder (see :mod:`retrain_widgets.core.store`).

    Parameters
    ----------
    path
        The store's folder (``.retrain_runs`` by default): ``runs.sqlite`` and ``weights/``
        inside it are created when missing.

    Raises
    ------
    ValueError
        When ``runs.sqlite`` is not a SQLite database or not a run store, or was written by a
        newer retrain_widgets (schema version above
        :data:`~retrain_widgets.core.store.SCHEMA_VERSION`).

    Examples
    --------
    >>> store = RunStore()                      # ./.retrain_runs
    >>> run_id = store.record(run)              # before or after run.start()
    >>> run.fit()
    >>> [(r.name, r.state, r.metrics.get("val_metric")) for r in store.runs()]
    >>> model = store.restore(run_id, pretrained_model)

    ``close()`` ends the use of the store by the calling code; runs being recorded keep
    saving until they end, each through its own connection.
    """

    #: A run of another host without a heartbeat for this long (seconds) is interrupted.
    DEAD_AFTER = 600.0
    #: Seconds between heartbeats of runs recorded by this process (also while paused).
    HEARTBEAT_EVERY = 30.0

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_DIR) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"RunStore takes a folder, but {self.path} is a file")
        self.db_path = os.path.join(self.path, DB_NAME)
        self.weights_dir = os.path.join(self.path, WEIGHTS_DIR)
        #: Why this store cannot be written (a read-only folder): listing and restoring work, recording does not.
        self.read_only = read_only_reason(self.path, self.db_path)
        self._lock = threading.RLock()
        #: This process's connections to the database, one per thread.
        self.connections = Connections(self.db_path, self.read_only)
        self._weights = WeightsFolder(self.weights_dir)
        self._recorders: dict[str, Recorder] = {}
        self._heartbeat: threading.Thread | None = None
        self._closed = False
        schema.check_sqlite_file(self.db_path)
        try:
            with contextlib.nullcontext(self.connections.get()) if self.read_only else self.connections.tx() as conn:
                schema.migrate(conn, self.path, writable=not self.read_only)
        except sqlite3.DatabaseError as exc:
            self.close()
            if schema.is_not_a_database(exc):
                raise ValueError(f"{self.db_path} is not a SQLite database ({exc}), so not a retrain_widgets "
                                 f"run store; move it away or open another folder") from exc
            raise
        except BaseException:
            self.close()
            raise
        if not self.read_only:
            os.makedirs(self.weights_dir, exist_ok=True)
            with contextlib.suppress(OSError, sqlite3.Error):  # best effort
                self._tidy()

    def _tidy(self) -> None:
        """Files a killed process left: stale temporaries removed; a complete weights file whose run
        ended without its row saying so is adopted, one without a run removed (:mod:`.faults`)."""
        self._mark_dead()
        rows = {r[0]: (r[1], bool(r[2])) for r in self._conn().execute("SELECT id, state, has_weights FROM runs")}
        _, adopted, _ = clean_weights_folder(self.weights_dir, rows, ACTIVE_STATES, lambda pid: process_alive(pid, None))
        if adopted:
            with self.connections.tx() as conn:
                conn.executemany("UPDATE runs SET has_weights = 1 WHERE id = ? AND has_weights = 0",
                                 [(run_id,) for run_id in adopted])

    # ------------------------------------------------------------------ recording
    def record(self, run: Run, name: str | None = None, save_every: float = 5.0,
               notebook: str | None = None) -> str:
        """Store ``run`` (a :class:`~retrain_widgets.core.run.Run`: the engine's, a watched loop's, any)
        and keep it up to date as it trains; returns its id.

        ``notebook`` names the notebook the run is made in (:attr:`RunRecord.notebook`).

        Saves the run now (state, config, pretrained :func:`fingerprint`, pid and host), then
        from its events: history, state, step and metrics at most every ``save_every``
        seconds while it trains (and when it pauses; a slow save widens that interval so saving
        takes at most ~5 % of the training time), plus a heartbeat; the final history,
        metrics, message and trained weights when it ends. Works before ``run.start()``,
        while it runs, and after it ended. Recording the same run twice returns the same id.
        """
        self._check_open()
        if self.read_only:
            raise ValueError(self.read_only)
        check_run(run, "record()")
        if isinstance(save_every, bool) or not isinstance(save_every, (int, float)) or not save_every >= 0:
            raise ValueError(f"save_every must be a number of seconds >= 0, got {save_every!r}")
        if notebook is not None and not isinstance(notebook, str):
            raise ValueError(f"notebook must be a notebook's path (str) or None, got {type(notebook).__name__}")
        with self._lock:
            for rec in self._recorders.values():
                if rec.run is run:
                    return rec.id
        config, note = run.config_record()
        run_id = self._insert(run, name, config, note, notebook)
        rec = Recorder(self.connections, self._weights, run, run_id, float(save_every), note, self._forget)
        with self._lock:
            self._recorders[run_id] = rec
        rec.attach()
        self._start_heartbeat()
        if run.state.final:  # it ended before (or while) we subscribed
            rec.save_final()
        return run_id

    def _insert(self, run: Run, name: str | None, config: dict[str, Any], note: str,
                notebook: str | None) -> str:
        """Insert the run's row (and its history so far) under a new id; return the id."""
        loss_name = run.history.meta.get(Meta.LOSS) or config.get("loss", "run")
        if name is None and run.name is not None:
            name = run.name
        name = check_name(name) if name is not None else f"{loss_name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        head_out = run.head_out
        now = time.time()
        state = run.state
        started = None
        if state != State.IDLE:
            t_start = run.started_at
            started = now - (time.perf_counter() - t_start) if t_start else now
        blob = encode_history(run.history, 1) if run.global_step > 0 else None
        row = (name, state.value, "" if state.final else note, now, started, now if run.global_step > 0 else None, now,
               os.getpid(), HOST, process_token(os.getpid()), int(run.global_step), int(run.total_steps),
               json.dumps(config), json.dumps(run_metrics(run)), fingerprint(run.pretrained), run.head_name, head_out,
               notebook)
        for _ in range(20):
            run_id = new_id()
            try:
                with self.connections.tx() as conn:
                    conn.execute(
                        "INSERT INTO runs (id, name, state, message, created, started, saved, heartbeat, pid, host, "
                        "proc, step, total_steps, config, metrics, pretrained_id, head, head_out, notebook) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (run_id, *row))
                    if blob is not None:
                        conn.execute("INSERT INTO histories (run_id, codec, data) VALUES (?, ?, ?)",
                                     (run_id, HISTORY_CODEC, blob))
                return run_id
            except sqlite3.IntegrityError:
                continue  # the same id drawn in the same millisecond: draw again
        raise RuntimeError("could not draw a new run id")  # pragma: no cover - 20 collisions in a row

    def recording(self) -> list[str]:
        """Ids of the runs this store object is recording now."""
        with self._lock:
            return list(self._recorders)

    def _forget(self, rec: Recorder) -> None:
        with self._lock:
            if self._recorders.get(rec.id) is rec:
                del self._recorders[rec.id]

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is None and self._recorders:
                self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="retrain_widgets-store-heartbeat",
                                                   daemon=True)
                self._heartbeat.start()

    def _heartbeat_loop(self) -> None:
        """Tell other processes that this one's recorded runs are alive (also while paused)."""
        try:
            while True:
                time.sleep(self.HEARTBEAT_EVERY)
                with self._lock:
                    ids = [rid for rid, rec in self._recorders.items() if not rec.done]
                    if not ids:
                        self._heartbeat = None
                        return
                now = time.time()
                with contextlib.suppress(sqlite3.Error), self.connections.tx() as conn:
                    conn.executemany(f"UPDATE runs SET heartbeat = ? WHERE id = ? AND state IN {_ACTIVE_SQL}",
                                     [(now, rid) for rid in ids])
        finally:
            with self._lock:
                if self._heartbeat is threading.current_thread():
                    self._heartbeat = None
            self.connections.drop()

    # ------------------------------------------------------------------ reading
    def _conn(self) -> sqlite3.Connection:
        return self.connections.get()

    def runs(self, pretrained_id: str | None = None,
             notebook: str | None | EllipsisType = ...) -> list[RunRecord]:
        """All runs, oldest first (newest last); only those from the pretrained weights with
        this :func:`fingerprint` when ``pretrained_id`` is given, and only those made in
        ``notebook`` when it is given (``None``: the runs made outside any notebook). Runs whose
        process died are marked ``interrupted`` first."""
        self._check_open()
        self._mark_dead()
        where = [("pretrained_id = ?", pretrained_id)] if pretrained_id is not None else []
        if notebook is not ...:
            where.append(("notebook IS ?", notebook))
        sql = f"SELECT {RECORD_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(w for w, _ in where)
        rows = self._conn().execute(sql + " ORDER BY created, id", tuple(a for _, a in where)).fetchall()
        return [record_of_row(row) for row in rows]

    def get(self, run_id: str) -> RunRecord:
        """The run ``run_id``; ``KeyError`` (:class:`UnknownRun`) when there is none."""
        self._check_open()
        self._known(run_id)
        self._mark_dead()
        row = self._conn().execute(f"SELECT {RECORD_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._unknown(run_id)
        return record_of_row(row)

    def history(self, run_id: str) -> History:
        """The run's history as last saved (empty before its first save)."""
        self._check_open()
        self._known(run_id)
        row = self._conn().execute("SELECT codec, data FROM histories WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            self.get(run_id)  # unknown id -> KeyError
            return History()
        try:
            return decode_history(row[0], row[1], run_id)
        except DamagedRun:
            raise
        except (ValueError, zlib.error, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise DamagedRun(f"the history of run {run_id} cannot be read: {type(exc).__name__}: {exc} (in "
                             f"{self.db_path}); delete the run to remove it") from exc

    def load_weights(self, run_id: str, pretrained: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The run's trained weights (a full ``state_dict`` on the CPU), loaded with ``weights_only=True``.

        Runs are stored as the tensors they changed against the pretrained model: pass that model
        (``pretrained``, checked by its :func:`fingerprint`) to rebuild the rest bit for bit. Runs
        stored with their full weights need none."""
        rec = self.get(run_id)
        if not rec.has_weights:
            raise ValueError(f"run {run_id} ({rec.state}) has no saved weights: they are saved when a recorded "
                             f"run ends (finished, stopped or failed)")
        return self._weights.read(run_id, pretrained)

    def weights_size(self, run_id: str) -> int | None:
        """Bytes on disk of the run's weights (None when it has none); :meth:`delete` frees them."""
        self.get(run_id)  # unknown id -> KeyError
        return self._weights.size(run_id)

    def restore(self, run_id: str, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (the pretrained model the run started from) with the run's head
        replacement, its LoRA adapters and trained weights. ``model`` itself is not modified, nor torch's RNG."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"restore() takes the pretrained torch.nn.Module, got {type(model).__name__}")
        weights = self.load_weights(run_id, model)
        head, head_out = self._conn().execute("SELECT head, head_out FROM runs WHERE id = ?", (run_id,)).fetchone()
        stored = self.get(run_id).config
        lora = {key: stored[key] for key in CONFIG_FIELDS if key in stored}
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):  # the new head's init must not move the user's RNG
            try:
                net = build_model(model, RunConfig(head=head, head_out=head_out, **lora), apply_freezing=False).model
            except ValueError as exc:
                raise ValueError(f"run {run_id} cannot be rebuilt on this model: {exc}") from exc
        try:
            net.load_state_dict(weights)
        except RuntimeError as exc:
            raise ValueError(f"the weights of run {run_id} do not fit this model (is it the pretrained model the "
                             f"run started from? its fingerprint is {self.get(run_id).pretrained_id}): {exc}") from exc
        return net

    def reserve_number(self, key: str, at_least: int) -> int:
        """The next run number under ``key`` (a model in a notebook), unique across the processes sharing
        this store: at least ``at_least``, and above any number reserved in the last minute (a run named,
        its row not written yet). One write transaction, so two studios starting together differ."""
        self._check_open()
        meta_key = f"run_number:{key}"
        with self.connections.tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (meta_key,)).fetchone()
            last, at = json.loads(row[0]) if row else (0, 0.0)
            number = max(int(at_least), int(last) + 1 if time.time() - float(at) < 60 else 0)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (meta_key, json.dumps([number, time.time()])))
        return number

    # ------------------------------------------------------------------ editing
    def delete(self, run_id: str) -> None:
        """Remove the run: its row, history and weights file."""
        self._check_open()
        self._known(run_id)
        with self.connections.tx() as conn:
            conn.execute("DELETE FROM histories WHERE run_id = ?", (run_id,))
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise self._unknown(run_id)
        self._weights.remove(run_id)

    def rename(self, run_id: str, name: str) -> None:
        """Give the run a new name."""
        self._check_open()
        self._known(run_id)
        name = check_name(name)
        with self.connections.tx() as conn:
            if conn.execute("UPDATE runs SET name = ? WHERE id = ?", (name, run_id)).rowcount == 0:
                raise self._unknown(run_id)

    # ------------------------------------------------------------------ dead runs
    def _mark_dead(self) -> None:
        """Mark ``interrupted`` the active runs whose writing process is gone."""
        if self.read_only:
            return
        rows = self._conn().execute(
            f"SELECT id, pid, host, proc, heartbeat, saved, step, total_steps, message FROM runs "
            f"WHERE state IN {_ACTIVE_SQL}").fetchall()
        now = time.time()
        dead = []
        for run_id, pid, host, proc, heartbeat, saved, step, total, message in rows:
            where = f"at step {step} of {total if total is not None else '?'}; recorded up to its last save at " \
                    f"{_when(saved)}"
            text = death_note(host, pid, proc, heartbeat, now, self.DEAD_AFTER, where)
            if text is not None:
                dead.append((run_id, heartbeat, "; ".join([text, message]) if message else text,
                             saved if saved is not None else heartbeat))
        if not dead:
            return
        with self.connections.tx() as conn:
            for run_id, heartbeat, text, ended in dead:
                # unchanged heartbeat: a process that saved meanwhile is alive after all
                conn.execute(f"UPDATE runs SET state = '{INTERRUPTED}', message = ?, ended = COALESCE(?, created) "
                             f"WHERE id = ? AND state IN {_ACTIVE_SQL} AND heartbeat IS ?",
                             (text, ended, run_id, heartbeat))

    # ------------------------------------------------------------------ errors, life cycle
    def _known(self, run_id: str) -> None:
        if not is_id(run_id):
            raise self._unknown(run_id)

    def _unknown(self, run_id: Any) -> UnknownRun:
        ids = [r[0] for r in self._conn().execute("SELECT id FROM runs ORDER BY created DESC, id DESC LIMIT 5")]
        listing = f"latest ids: {', '.join(ids)}" if ids else "the store is empty"
        return UnknownRun(f"no run {run_id!r} in the store {self.path} ({listing})")

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"this RunStore ({self.path}) is closed; open it again: RunStore({self.path!r})")

    def close(self) -> None:
        """Close this store's connections. Runs being recorded go on saving until they end."""
        self._closed = True
        self.connections.close_idle()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({self.path!r}{', closed' if self._closed else ''})"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "(never saved)"


def open_store(store: RunStore | str | os.PathLike[str] | bool | None, *, none_is_default: bool = False) -> RunStore | None:
    """``store`` as a :class:`RunStore`: ``True`` the working directory's ``.retrain_runs``, a folder's
    path that folder, a store itself; ``False`` no store; ``None`` no store, or the default folder
    with ``none_is_default`` (the studios' default)."""
    if store is False or (store is None and not none_is_default):
        return None
    if store is True or store is None:
        return RunStore(DEFAULT_DIR)
    if isinstance(store, RunStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return RunStore(store)
    raise ValueError(f"store must be True, False, None, a RunStore or a folder's path, got {type(store).__name__}")
