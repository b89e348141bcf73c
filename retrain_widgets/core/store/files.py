"""The store's two kinds of files: the SQLite database (one connection per thread) and the
weights folder (one ``torch.save`` file per run, written atomically: the tensors it changed, or its full weights)."""

from __future__ import annotations

import contextlib
import glob
import os
import sqlite3
import threading
from collections.abc import Iterator
from urllib.request import pathname2url

import torch
from torch import nn

from ..weights_delta import load_weights, save_weights
from .faults import READ_ERRORS, weights_error
from .records import check_id

__all__ = ["Connections", "WeightsFolder", "BUSY_TIMEOUT_S"]

BUSY_TIMEOUT_S = 10.0


class Connections:
    """This process's connections to one database, one per thread (sqlite3 connections must not
    cross threads), in WAL mode with a busy timeout; :meth:`tx` is one write transaction."""

    def __init__(self, db_path: str, read_only: str = "") -> None:
        self.db_path = db_path
        self.read_only = read_only  # why the store cannot be written ("": it can): opened immutable
        self._lock = threading.Lock()
        self._conns: dict[tuple[int, int], sqlite3.Connection] = {}

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        key = (os.getpid(), threading.get_ident())
        with self._lock:
            conn = self._conns.get(key)
        if conn is not None:
            return conn
        if self.read_only:  # SQLite reads a database it cannot lock with immutable=1 (no -wal, no -shm)
            conn = sqlite3.connect(f"file:{pathname2url(self.db_path)}?immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
            with self._lock:
                self._conns[key] = conn
            return conn
        conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
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

    def threads(self) -> list[int]:
        """Idents of this process's threads that hold a connection."""
        with self._lock:
            return [key[1] for key in self._conns if key[0] == os.getpid()]

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

    def drop(self) -> None:
        """Close the calling thread's connection."""
        with self._lock:
            conn = self._conns.pop((os.getpid(), threading.get_ident()), None)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close_idle(self) -> None:
        """Close the calling thread's connection and those of threads that ended; other threads'
        (runs still recording) stay open."""
        me = threading.get_ident()
        alive = {t.ident for t in threading.enumerate()}
        with self._lock:
            for key in list(self._conns):
                if key[0] == os.getpid() and (key[1] == me or key[1] not in alive):
                    with contextlib.suppress(sqlite3.Error):
                        self._conns.pop(key).close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: waits up to the busy timeout for the lock)."""
        if self.read_only:
            raise ValueError(self.read_only)
        conn = self.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class WeightsFolder:
    """``<folder>/<run id>.pt`` files: written to a temporary file then moved into place
    (``os.replace``, atomic), read with ``weights_only=True`` on the CPU. A path is derived from
    the validated run id, never read from the database.

    A file holds what the run changed against the pretrained model (``weights_delta``) when that
    model is given, its full ``state_dict`` otherwise (and in stores written before deltas)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def path(self, run_id: str) -> str:
        return os.path.join(self.folder, f"{check_id(run_id)}.pt")

    def write(self, run_id: str, model: nn.Module, pretrained: nn.Module | None = None) -> int:
        """Write the run's weights (a delta against ``pretrained`` when given); returns the bytes on disk."""
        return save_weights(self.path(run_id), model, pretrained)

    def read(self, run_id: str, pretrained: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The full ``state_dict``; a delta file needs ``pretrained`` (the model the run started from)."""
        path = self.path(run_id)
        if not os.path.exists(path):
            raise FileNotFoundError(f"the weights file of run {run_id} is missing: {path}")
        try:
            return load_weights(path, pretrained)
        except READ_ERRORS as exc:  # truncated, garbage, torch's weights_only refusal...: named, with the fix
            raise weights_error(run_id, path, exc) from exc

    def size(self, run_id: str) -> int | None:
        """Bytes on disk of the run's weights file (None: there is none)."""
        try:
            return os.path.getsize(self.path(run_id))
        except FileNotFoundError:
            return None

    def remove(self, run_id: str) -> None:
        """The run's weights file, and any temporary file a killed save of it left."""
        path = self.path(run_id)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        for tmp in glob.glob(f"{glob.escape(path)}.*.tmp"):
            with contextlib.suppress(OSError):
                os.remove(tmp)
