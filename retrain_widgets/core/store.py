"""An embedded store of runs: what each run was, how it went, and its trained weights.

A store is a folder (``.retrain_runs`` by default), created when missing::

    <folder>/runs.sqlite        one row per run, its history and the schema version (SQLite)
    <folder>/weights/<id>.pt    the trained weights of a run: ``torch.save(state_dict)``

:meth:`RunStore.record` subscribes to a :class:`~retrain_widgets.core.engine.Retrainer`'s
events: while the run trains its history, state and step are saved at most every
``save_every`` seconds, and when it ends its final history, metrics and weights are saved.
A store survives the kernel: reopen the folder to list, compare, restore or delete runs.

Storage
-------
* SQLite in WAL mode with a 10 s ``busy_timeout``: several processes (notebooks, scripts)
  may write to one store at once. Every write is one ``BEGIN IMMEDIATE`` transaction.
  sqlite3 connections never cross threads: each thread (the training thread of each run,
  the caller's thread, the heartbeat thread) uses its own.
* Tables: ``meta`` (``schema_version``), ``runs`` (one row per run: state, times, config
  and metrics as JSON text, the writing process's pid / host, the last saved step ...),
  ``histories`` (``History.to_json()`` compressed with zlib; the ``codec`` column says so:
  ``"zlib+json"``).
* Weights are written to a temporary file, then moved into place with ``os.replace``
  (atomic), and read only with ``torch.load(..., weights_only=True, map_location="cpu")``.
  Their path is derived from the validated run id, never read from the database.
* The schema version lives in ``meta``. A store written by a newer retrain_widgets is refused
  (upgrade to open it); an older one is migrated in place, one version at a time, by the
  functions in ``_MIGRATIONS``, inside one transaction.

Runs whose process died
-----------------------
A run still ``idle``, ``running`` or ``paused`` in the database whose writing process is gone
(same host and its pid no longer exists, or, from another host, no heartbeat for
:attr:`RunStore.DEAD_AFTER` seconds) is marked ``"interrupted"`` by :meth:`RunStore.runs` and
:meth:`RunStore.get`; its history holds what was saved before the process ended.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .events import Event, EventInfo, State
from .history import History
from .tree import find_head_or_none, replace_head
from .weights_delta import save_weights

if TYPE_CHECKING:
    from .engine import Retrainer

__all__ = ["SCHEMA_VERSION", "DEFAULT_DIR", "RunRecord", "RunStore", "UnknownRun", "fingerprint"]

#: Version of the database layout written by this retrain_widgets.
SCHEMA_VERSION = 1
#: Folder used by ``RunStore()`` without a path.
DEFAULT_DIR = ".retrain_runs"

DB_NAME = "runs.sqlite"
WEIGHTS_DIR = "weights"
BUSY_TIMEOUT_S = 10.0
HISTORY_CODEC = "zlib+json"
ACTIVE_STATES = (State.IDLE.value, State.RUNNING.value, State.PAUSED.value)
INTERRUPTED = "interrupted"

_SQLITE_HEADER = b"SQLite format 3\x00"
_ID_RE = re.compile(r"^[0-9a-z][0-9a-z-]{0,63}$")  # no dot, no slash: safe as a file name
_ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in ACTIVE_STATES) + ")"

#: Layout of schema version 1 (a new store is created at version 1, then migrated up).
_SCHEMA_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        saved REAL,
        heartbeat REAL,
        pid INTEGER,
        host TEXT,
        proc TEXT,
        step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER,
        config TEXT NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}',
        pretrained_id TEXT,
        head TEXT,
        head_out INTEGER,
        has_weights INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX runs_by_created ON runs (created)",
    "CREATE INDEX runs_by_pretrained ON runs (pretrained_id)",
    """CREATE TABLE histories (
        run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
        codec TEXT NOT NULL,
        data BLOB NOT NULL
    )""",
)

#: ``_MIGRATIONS[v](conn)`` turns a version-``v`` store into a version-``v + 1`` one. It runs
#: inside the opening transaction (no COMMIT, no ``executescript``); the version is updated
#: after the last one.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

_RECORD_COLUMNS = ("id, name, state, message, created, started, ended, config, metrics, pretrained_id, "
                   "has_weights")


# ====================================================================== records
@dataclass(frozen=True)
class RunRecord:
    """One run as stored.

    Attributes
    ----------
    id, name
        The run's id (short, sortable by creation time) and its editable name.
    state, message
        ``idle``, ``running``, ``paused``, ``stopped``, ``finished``, ``failed`` or
        ``interrupted`` (its process ended while it trained); the message says why it ended
        and notes what could not be stored.
    created, started, ended
        Unix times (``started`` / ``ended`` are ``None`` until they happen).
    config
        ``RunConfig.to_dict()``, or ``{"loss": "<name>"}`` when the loss is an unregistered
        callable (the message says so).
    metrics
        ``steps``, ``total_steps``, ``train_loss`` (mean over the last 10 % of steps),
        ``val_loss``, ``val_metric``, ``old_loss``, ``old_metric``, ``metric`` (its name),
        ``old_metric_name``, ``higher_is_better``; those not measured are absent. Saved with
        every save, final when the run has ended.
    pretrained_id
        :func:`fingerprint` of the pretrained weights: runs from the same pretrained model
        share it.
    has_weights
        Whether the trained weights were saved (when the run ended).
    """

    id: str
    name: str
    state: str
    message: str
    created: float
    started: float | None
    ended: float | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    pretrained_id: str | None
    has_weights: bool

    def config_obj(self) -> RunConfig:
        """The run's :class:`RunConfig` (``RunConfig.from_dict(self.config)``)."""
        try:
            return RunConfig.from_dict(self.config)
        except ValueError as exc:
            raise ValueError(f"the config of run {self.id} cannot be rebuilt: {exc}"
                             + (f" (stored note: {self.message})" if self.message else "")) from exc


class UnknownRun(KeyError):
    """No run with this id in the store (the message lists a few ids)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown run"


# ====================================================================== fingerprint
_FP_LOCK = threading.Lock()
_FP_CACHE: dict[int, tuple[weakref.ref[nn.Module], tuple[Any, ...], str]] = {}


def fingerprint(model: nn.Module) -> str:
    """A stable hash (blake2b, 32 hex digits) of ``model.state_dict()``: names, shapes, dtypes
    and bytes. Equal weights give equal fingerprints whatever the device or the object.

    The result is cached per model object together with each tensor's address, shape, dtype
    and version counter, so a repeated call on an unchanged model costs a walk over its
    ``state_dict`` only. In-place changes (optimizer steps, ``load_state_dict``,
    ``with torch.no_grad(): p += ...``) bump the version counter and are seen; writes through
    ``tensor.data`` are not (they bypass the version counter).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"fingerprint() takes a torch.nn.Module, got {type(model).__name__}")
    state = model.state_dict(keep_vars=True)
    check = _cheap_check(state)
    key = id(model)
    if check is not None:
        with _FP_LOCK:
            cached = _FP_CACHE.get(key)
        if cached is not None and cached[0]() is model and cached[1] == check:
            return cached[2]
    digest = _hash_state(state)
    if check is not None:
        def forget(ref: weakref.ref[nn.Module], key: int = key) -> None:
            with _FP_LOCK:
                entry = _FP_CACHE.get(key)
                if entry is not None and entry[0] is ref:
                    del _FP_CACHE[key]

        with _FP_LOCK:
            _FP_CACHE[key] = (weakref.ref(model, forget), check, digest)
    return digest


def _cheap_check(state: dict[str, Any]) -> tuple[Any, ...] | None:
    """What must be unchanged for a cached fingerprint to hold; ``None``: do not cache."""
    items: list[Any] = []
    try:
        for name, t in state.items():
            if isinstance(t, torch.Tensor):
                items.append((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device))
            else:
                return None  # extra state of unknown mutability: hash every time
    except (RuntimeError, NotImplementedError):  # inference, sparse or meta tensors
        return None
    return tuple(items)


def _hash_state(state: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(b"retrain_widgets.fingerprint.1\0")
    for name, value in state.items():
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.layout != torch.strided:
                t = t.to_dense()
            if t.is_quantized:
                t = t.int_repr()
            h.update(f"{tuple(t.shape)}|{t.dtype}\0".encode())
            flat = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
            if flat.numel():
                h.update(flat.view(torch.uint8).numpy())
        else:
            h.update(repr(value).encode() + b"\0")
    return h.hexdigest()


# ====================================================================== processes
def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT_ID = _read_boot_id()


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    fields = data.rsplit(b")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return fields[0].decode(errors="replace"), fields[19].decode(errors="replace")


def _proc_token(pid: int) -> str | None:
    """Identifies one process over time (pids are reused): boot id and start time."""
    stat = _proc_stat(pid)
    return f"{_BOOT_ID}:{stat[1]}" if stat is not None and _BOOT_ID else None


_HOST = socket.gethostname()


def _process_alive(pid: int, token: str | None) -> bool:
    """Whether the process ``pid`` of this host (started as ``token`` describes) still runs."""
    if pid == os.getpid():
        return token is None or token == _proc_token(pid)
    if token and _BOOT_ID and token.split(":", 1)[0] != _BOOT_ID:
        return False  # the machine rebooted since
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):  # zombie: ended, not reaped yet
            return False
        return not token or ":" not in token or token.split(":", 1)[1] == start
    if os.name == "nt":
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists, owned by someone else
        return True
    return True


def _windows_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# ====================================================================== helpers
def _new_id() -> str:
    """Milliseconds since 1970 in base 36 (9 characters: sortable) + 4 random hex digits."""
    ms = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while ms:
        ms, r = divmod(ms, 36)
        out = digits[r] + out
    return f"{out.rjust(9, '0')}-{secrets.token_hex(2)}"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "(never saved)"


def _encode_history(history: History, level: int) -> bytes:
    try:
        text = history.to_json()
    except ValueError:  # an infinite value somewhere: JSON's Infinity, which from_json reads
        text = json.dumps(history.to_dict())
    return zlib.compress(text.encode(), level)


def _decode_history(codec: str, data: bytes) -> History:
    if codec != HISTORY_CODEC:
        raise ValueError(f"unknown history codec {codec!r} (this version reads {HISTORY_CODEC!r})")
    return History.from_json(zlib.decompress(data).decode())


def _config_of(run: Retrainer) -> tuple[dict[str, Any], str]:
    """(config dict, note): the note says what could not be stored."""
    try:
        return run.config.to_dict(), ""
    except ValueError:
        name = getattr(run.config.loss, "__name__", type(run.config.loss).__name__)
        return {"loss": name}, (
            f"config not stored in full: the loss is a custom callable ({name}); register it with "
            f"retrain_widgets.losses.register(name, fn) and use its name to store the whole config")


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def run_metrics(run: Retrainer) -> dict[str, Any]:
    """The run's current metrics (see :class:`RunRecord`); values not measured are absent."""
    h = run.history
    out: dict[str, Any] = {"steps": int(run.step), "total_steps": int(run.total_steps)}
    steps, values = h.series("train_loss")
    if len(steps):
        last = float(steps[-1])
        window = max(1.0, round(0.1 * max(float(run.step), last + 1)))
        tail = values[(steps > last - window) & np.isfinite(values)]
        if len(tail):
            out["train_loss"] = float(np.mean(tail, dtype=np.float64))
    for name in ("val_loss", "val_metric", "old_loss", "old_metric"):
        _, v = h.series(name)
        if len(v) and (value := _finite(v[-1])) is not None:
            out[name] = value
    meta = h.meta
    if meta.get("metric") is not None:
        out["metric"] = str(meta["metric"])
    if meta.get("old_metric") is not None:
        out["old_metric_name"] = str(meta["old_metric"])
    if meta.get("higher_is_better") is not None:
        out["higher_is_better"] = bool(meta["higher_is_better"])
    return out


def _final_message(run: Retrainer, notes: list[str]) -> str:
    state = run.state
    text = run.message
    if not text:
        if state == State.STOPPED:
            text = f"stopped at step {run.step} of {run.total_steps}"
        elif state == State.FINISHED:
            text = f"finished: {run.step} steps"
        else:
            text = f"{state.value} at step {run.step} of {run.total_steps}"
    return "; ".join([text, *[n for n in notes if n]])


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a run's name must be a non-empty string, got {name!r}")
    return name


# ====================================================================== recorder
class _Recorder:
    """Saves one run into a store from the run's events (mostly in its training thread)."""

    SAVE_BUDGET = 0.05  # progress saves take at most ~5 % of wall time, whatever save_every

    def __init__(self, store: RunStore, run: Retrainer, run_id: str, save_every: float, note: str) -> None:
        self.store, self.run, self.id = store, run, run_id
        self.save_every = save_every
        self.note = note
        self.done = False
        self._lock = threading.Lock()
        self._last = -math.inf
        self._cost = 0.0

    def attach(self) -> None:
        self.run.on(Event.PUBLISH, self.on_progress)
        self.run.on(Event.EPOCH_END, self.on_progress)
        self.run.on(Event.STATE_CHANGE, self.on_state)

    def detach(self) -> None:
        self.run.off(Event.PUBLISH, self.on_progress)
        self.run.off(Event.EPOCH_END, self.on_progress)
        self.run.off(Event.STATE_CHANGE, self.on_state)

    # ------------------------------------------------------------------ handlers
    def on_progress(self, info: EventInfo) -> None:
        if time.monotonic() - self._last >= max(self.save_every, self._cost / self.SAVE_BUDGET):
            self.save_progress()

    def on_state(self, info: EventInfo) -> None:
        state = State(info.data.get("state", self.run.state))
        if state.final:
            self.save_final()
        elif state == State.PAUSED:
            self.save_progress()
        else:
            self.save_state(state)

    # ------------------------------------------------------------------ saves
    def save_state(self, state: State) -> None:
        with self._lock:
            if self.done:
                return
            now = time.time()
            with self.store._tx() as conn:
                cur = conn.execute("UPDATE runs SET state = ?, step = ?, started = COALESCE(started, ?), "
                                   "heartbeat = ? WHERE id = ?", (state.value, int(self.run.step), now, now, self.id))
                gone = cur.rowcount == 0
            if gone:
                self._gone()

    def save_progress(self) -> None:
        with self._lock:
            if self.done or self.run.state.final:
                return  # the final save writes everything
            t0 = time.perf_counter()
            run = self.run
            blob = _encode_history(run.history, 1)
            metrics = json.dumps(run_metrics(run))
            now = time.time()
            started = now if run.state != State.IDLE else None
            with self.store._tx() as conn:
                cur = conn.execute(
                    "UPDATE runs SET state = ?, step = ?, total_steps = ?, metrics = ?, saved = ?, heartbeat = ?, "
                    "started = COALESCE(started, ?) WHERE id = ?",
                    (run.state.value, int(run.step), int(run.total_steps), metrics, now, now, started, self.id))
                gone = cur.rowcount == 0
                if not gone:
                    conn.execute("INSERT OR REPLACE INTO histories (run_id, codec, data) VALUES (?, ?, ?)",
                                 (self.id, HISTORY_CODEC, blob))
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
                run = self.run
                notes = [self.note]
                try:
                    self.store._write_weights(self.id, run.model)
                    has_weights = True
                except Exception as exc:  # noqa: BLE001 - recorded in the message, then re-raised
                    weights_error = exc
                    has_weights = False
                    notes.append(f"the weights could not be saved: {type(exc).__name__}: {exc}")
                blob = _encode_history(run.history, 6)
                metrics = json.dumps(run_metrics(run))
                now = time.time()
                with self.store._tx() as conn:
                    cur = conn.execute(
                        "UPDATE runs SET state = ?, message = ?, ended = ?, saved = ?, heartbeat = ?, step = ?, "
                        "total_steps = ?, metrics = ?, has_weights = ?, started = COALESCE(started, ?) WHERE id = ?",
                        (run.state.value, _final_message(run, notes), now, now, now, int(run.step),
                         int(run.total_steps), metrics, int(has_weights), now, self.id))
                    gone = cur.rowcount == 0
                    if not gone:
                        conn.execute("INSERT OR REPLACE INTO histories (run_id, codec, data) VALUES (?, ?, ?)",
                                     (self.id, HISTORY_CODEC, blob))
                if gone:  # deleted while it ran
                    self.store._remove_weights(self.id)
        finally:
            if self.done:
                self._end()
        if weights_error is not None:
            raise weights_error  # the engine reports a failing handler with a warning

    def _gone(self) -> None:
        """The run's row was deleted: stop recording."""
        self.done = True
        self._end()

    def _end(self) -> None:
        self.detach()
        self.store._forget(self)
        if threading.current_thread() is self.run.thread:
            self.store._drop_conn()  # the training thread is about to end


# ====================================================================== the store
class RunStore:
    """An embedded store of runs in a folder (see the module docstring).

    Parameters
    ----------
    path
        The store's folder (``.retrain_runs`` by default): ``runs.sqlite`` and ``weights/``
        inside it are created when missing.

    Raises
    ------
    ValueError
        When ``runs.sqlite`` is not a SQLite database or not a run store, or was written by a
        newer retrain_widgets (schema version above :data:`SCHEMA_VERSION`), or is older than
        any known migration.

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
        os.makedirs(self.path, exist_ok=True)
        self._lock = threading.RLock()
        self._conns: dict[tuple[int, int], sqlite3.Connection] = {}
        self._recorders: dict[str, _Recorder] = {}
        self._heartbeat: threading.Thread | None = None
        self._closed = False
        _check_sqlite_file(self.db_path)
        try:
            self._open_schema()
        except sqlite3.DatabaseError as exc:
            self.close()
            if _is_not_a_database(exc):
                raise ValueError(f"{self.db_path} is not a SQLite database ({exc}), so not a retrain_widgets "
                                 f"run store; move it away or open another folder") from exc
            raise
        except BaseException:
            self.close()
            raise
        os.makedirs(self.weights_dir, exist_ok=True)

    # ------------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not cross threads)."""
        key = (os.getpid(), threading.get_ident())
        with self._lock:
            conn = self._conns.get(key)
        if conn is not None:
            return conn
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._prune()
            self._conns[key] = conn
        return conn

    def _prune(self) -> None:
        """Close connections of threads that ended; forget those of a parent process."""
        alive = {t.ident for t in threading.enumerate()}
        pid = os.getpid()
        for key in list(self._conns):
            if key[0] != pid:
                del self._conns[key]  # inherited through fork: never use or close it here
            elif key[1] not in alive:
                with contextlib.suppress(sqlite3.Error):
                    self._conns.pop(key).close()

    def _drop_conn(self) -> None:
        """Close the calling thread's connection."""
        with self._lock:
            conn = self._conns.pop((os.getpid(), threading.get_ident()), None)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: waits up to the busy timeout for the lock)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _open_schema(self) -> None:
        target = SCHEMA_VERSION
        with self._tx() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in _SCHEMA_V1:
                    conn.execute(statement)
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
                conn.execute("INSERT INTO meta (key, value) VALUES ('created', ?)", (repr(time.time()),))
                version = 1  # then migrated up like an old store: new and migrated stores are alike
            elif "meta" not in tables:
                raise ValueError(f"{self.db_path} is a SQLite database without a meta table, so not a "
                                 f"retrain_widgets run store (tables: {sorted(tables)}); open another folder")
            else:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                try:
                    version = int(row[0]) if row is not None else None
                except (TypeError, ValueError):
                    version = None
                if version is None:
                    raise ValueError(f"{self.db_path} has no readable schema version "
                                     f"({row[0] if row else 'missing'!r}): not a retrain_widgets run store")
            if version > target:
                raise ValueError(
                    f"the run store {self.path} has schema version {version}, newer than this retrain_widgets "
                    f"reads (schema version {target}): upgrade retrain_widgets (pip install -U "
                    f"retrain-widgets) to open it")
            if version < 1:
                raise ValueError(f"the run store {self.path} has schema version {version}, older than any "
                                 f"known version (1 to {target}); it cannot be read")
            if version == target:
                return
            while version < target:
                migrate = _MIGRATIONS.get(version)
                if migrate is None:
                    raise ValueError(
                        f"the run store {self.path} has schema version {version} and this retrain_widgets "
                        f"(schema version {target}) has no migration from it to version {version + 1}")
                migrate(conn)
                version += 1
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))

    # ------------------------------------------------------------------ recording
    def record(self, run: Retrainer, name: str | None = None, save_every: float = 5.0) -> str:
        """Store ``run`` and keep it up to date as it trains; returns its id.

        Saves the run now (state, config, pretrained :func:`fingerprint`, pid and host), then
        from its events: history, state, step and metrics at most every ``save_every``
        seconds while it trains (and when it pauses; a slow save widens that interval so saving
        takes at most ~5 % of the training time), plus a heartbeat; the final history,
        metrics, message and trained weights when it ends. Works before ``run.start()``,
        while it runs, and after it ended. Recording the same run twice returns the same id.
        """
        from .engine import Retrainer

        self._check_open()
        if not isinstance(run, Retrainer):
            raise ValueError(f"record() takes a Retrainer, got {type(run).__name__}")
        if isinstance(save_every, bool) or not isinstance(save_every, (int, float)) or not save_every >= 0:
            raise ValueError(f"save_every must be a number of seconds >= 0, got {save_every!r}")
        with self._lock:
            for rec in self._recorders.values():
                if rec.run is run:
                    return rec.id
        config, note = _config_of(run)
        loss_name = run.history.meta.get("loss") or config.get("loss", "run")
        name = _check_name(name) if name is not None else f"{loss_name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        pretrained_id = fingerprint(run.pretrained)
        head_out = run.config.head_out if getattr(run, "original_head", None) is not None else None
        now = time.time()
        state = run.state
        started = None
        if state != State.IDLE:
            t_start = run.started_at
            started = now - (time.perf_counter() - t_start) if t_start else now
        blob = _encode_history(run.history, 1) if run.step > 0 else None
        row = (name, state.value, "" if state.final else note, now, started, now if run.step > 0 else None, now,
               os.getpid(), _HOST, _proc_token(os.getpid()), int(run.step), int(run.total_steps), json.dumps(config),
               json.dumps(run_metrics(run)), pretrained_id, run.head_name, head_out)
        for _ in range(20):
            run_id = _new_id()
            try:
                with self._tx() as conn:
                    conn.execute(
                        "INSERT INTO runs (id, name, state, message, created, started, saved, heartbeat, pid, host, "
                        "proc, step, total_steps, config, metrics, pretrained_id, head, head_out) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (run_id, *row))
                    if blob is not None:
                        conn.execute("INSERT INTO histories (run_id, codec, data) VALUES (?, ?, ?)",
                                     (run_id, HISTORY_CODEC, blob))
                break
            except sqlite3.IntegrityError:
                continue  # the same id drawn in the same millisecond: draw again
        else:  # pragma: no cover - 20 collisions in a row
            raise RuntimeError("could not draw a new run id")
        rec = _Recorder(self, run, run_id, float(save_every), note)
        with self._lock:
            self._recorders[run_id] = rec
        rec.attach()
        self._start_heartbeat()
        if run.state.final:  # it ended before (or while) we subscribed
            rec.save_final()
        return run_id

    def _forget(self, rec: _Recorder) -> None:
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
                with contextlib.suppress(sqlite3.Error), self._tx() as conn:
                    conn.executemany(f"UPDATE runs SET heartbeat = ? WHERE id = ? AND state IN {_ACTIVE_SQL}",
                                     [(now, rid) for rid in ids])
        finally:
            with self._lock:
                if self._heartbeat is threading.current_thread():
                    self._heartbeat = None
            self._drop_conn()

    # ------------------------------------------------------------------ weights files
    def _weights_path(self, run_id: str) -> str:
        _check_id(run_id)
        return os.path.join(self.weights_dir, f"{run_id}.pt")

    def _write_weights(self, run_id: str, model: nn.Module) -> None:
        save_weights(self._weights_path(run_id), model)

    def _remove_weights(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._weights_path(run_id))

    # ------------------------------------------------------------------ reading
    def runs(self, pretrained_id: str | None = None) -> list[RunRecord]:
        """All runs, oldest first (newest last); only those from the pretrained weights with
        this :func:`fingerprint` when ``pretrained_id`` is given. Runs whose process died are
        marked ``interrupted`` first."""
        self._check_open()
        self._mark_dead()
        sql = f"SELECT {_RECORD_COLUMNS} FROM runs"
        args: tuple[Any, ...] = ()
        if pretrained_id is not None:
            sql += " WHERE pretrained_id = ?"
            args = (pretrained_id,)
        rows = self._conn().execute(sql + " ORDER BY created, id", args).fetchall()
        return [_record(row) for row in rows]

    def get(self, run_id: str) -> RunRecord:
        """The run ``run_id``; ``KeyError`` (:class:`UnknownRun`) when there is none."""
        self._check_open()
        self._known(run_id)
        self._mark_dead()
        row = self._conn().execute(f"SELECT {_RECORD_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise self._unknown(run_id)
        return _record(row)

    def history(self, run_id: str) -> History:
        """The run's history as last saved (empty before its first save)."""
        self._check_open()
        self._known(run_id)
        row = self._conn().execute("SELECT codec, data FROM histories WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            self.get(run_id)  # unknown id -> KeyError
            return History()
        try:
            return _decode_history(row[0], row[1])
        except (ValueError, zlib.error, KeyError, TypeError) as exc:
            raise ValueError(f"the history of run {run_id} cannot be read: {type(exc).__name__}: {exc}") from exc

    def load_weights(self, run_id: str) -> dict[str, torch.Tensor]:
        """The run's trained weights (a ``state_dict`` on the CPU), loaded with ``weights_only=True``."""
        rec = self.get(run_id)
        if not rec.has_weights:
            raise ValueError(f"run {run_id} ({rec.state}) has no saved weights: they are saved when a recorded "
                             f"run ends (finished, stopped or failed)")
        path = self._weights_path(run_id)
        if not os.path.exists(path):
            raise FileNotFoundError(f"the weights file of run {run_id} is missing: {path}")
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state_dict (found {type(state).__name__})")
        return state

    def restore(self, run_id: str, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (the pretrained model the run started from) with the run's head
        replacement and trained weights. ``model`` itself is not modified, nor torch's RNG."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"restore() takes the pretrained torch.nn.Module, got {type(model).__name__}")
        weights = self.load_weights(run_id)
        head, head_out = self._conn().execute("SELECT head, head_out FROM runs WHERE id = ?", (run_id,)).fetchone()
        net = copy.deepcopy(model)
        if head_out is not None:
            name = head or find_head_or_none(net)
            if name is None:
                raise ValueError(f"run {run_id} replaced the head ({head!r}) but this model has no nn.Linear head")
            devices = sorted({p.device.index or 0 for p in net.parameters() if p.device.type == "cuda"})
            with torch.random.fork_rng(devices=devices):  # the new head's init must not move the user's RNG
                replace_head(net, int(head_out), name, bias=f"{name}.bias" in weights)
        try:
            net.load_state_dict(weights)
        except RuntimeError as exc:
            raise ValueError(f"the weights of run {run_id} do not fit this model (is it the pretrained model the "
                             f"run started from? its fingerprint is {self.get(run_id).pretrained_id}): {exc}") from exc
        return net

    # ------------------------------------------------------------------ editing
    def delete(self, run_id: str) -> None:
        """Remove the run: its row, history and weights file."""
        self._check_open()
        self._known(run_id)
        with self._tx() as conn:
            conn.execute("DELETE FROM histories WHERE run_id = ?", (run_id,))
            if conn.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount == 0:
                raise self._unknown(run_id)
        self._remove_weights(run_id)

    def rename(self, run_id: str, name: str) -> None:
        """Give the run a new name."""
        self._check_open()
        self._known(run_id)
        name = _check_name(name)
        with self._tx() as conn:
            if conn.execute("UPDATE runs SET name = ? WHERE id = ?", (name, run_id)).rowcount == 0:
                raise self._unknown(run_id)

    # ------------------------------------------------------------------ dead runs
    def _mark_dead(self) -> None:
        """Mark ``interrupted`` the active runs whose writing process is gone."""
        rows = self._conn().execute(
            f"SELECT id, pid, host, proc, heartbeat, saved, step, total_steps, message FROM runs "
            f"WHERE state IN {_ACTIVE_SQL}").fetchall()
        now = time.time()
        dead = []
        for run_id, pid, host, proc, heartbeat, saved, step, total, message in rows:
            where = f"at step {step} of {total if total is not None else '?'}; recorded up to its last save at " \
                    f"{_when(saved)}"
            if host == _HOST and pid is not None:
                if _process_alive(int(pid), proc):
                    continue
                text = f"the process that ran it ended (kernel restarted or killed?) {where}"
            else:
                if heartbeat is not None and now - heartbeat < self.DEAD_AFTER:
                    continue
                quiet = f"{(now - heartbeat) / 60:.0f} min" if heartbeat is not None else "ever"
                text = (f"the process that ran it on host {host} ended (kernel restarted or killed?): no sign of "
                        f"life for {quiet}, {where}")
            dead.append((run_id, heartbeat, "; ".join([text, message]) if message else text,
                         saved if saved is not None else heartbeat))
        if not dead:
            return
        with self._tx() as conn:
            for run_id, heartbeat, text, ended in dead:
                # unchanged heartbeat: a process that saved meanwhile is alive after all
                conn.execute(f"UPDATE runs SET state = '{INTERRUPTED}', message = ?, ended = COALESCE(?, created) "
                             f"WHERE id = ? AND state IN {_ACTIVE_SQL} AND heartbeat IS ?",
                             (text, ended, run_id, heartbeat))

    # ------------------------------------------------------------------ errors, life cycle
    def _known(self, run_id: str) -> None:
        if not isinstance(run_id, str) or not _ID_RE.match(run_id):
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
        me = threading.get_ident()
        alive = {t.ident for t in threading.enumerate()}
        with self._lock:
            for key in list(self._conns):
                if key[0] == os.getpid() and (key[1] == me or key[1] not in alive):
                    with contextlib.suppress(sqlite3.Error):
                        self._conns.pop(key).close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({self.path!r}{', closed' if self._closed else ''})"


def _check_id(run_id: Any) -> None:
    if not isinstance(run_id, str) or not _ID_RE.match(run_id):
        raise UnknownRun(f"{run_id!r} is not a run id")


def _record(row: tuple[Any, ...]) -> RunRecord:
    run_id, name, state, message, created, started, ended, config, metrics, pretrained_id, has_weights = row
    return RunRecord(id=run_id, name=name, state=state, message=message, created=created, started=started,
                     ended=ended, config=json.loads(config), metrics=json.loads(metrics),
                     pretrained_id=pretrained_id, has_weights=bool(has_weights))


def _check_sqlite_file(path: str) -> None:
    """Refuse a file that is not a SQLite database before SQLite touches it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    if head and head != _SQLITE_HEADER:
        raise ValueError(f"{path} is not a SQLite database (it starts with {head[:16]!r}), so not a "
                         f"retrain_widgets run store; move it away or open another folder")


def _is_not_a_database(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in str(exc) or "malformed" in str(exc)
