"""Store faults as messages: damaged or missing weights files, damaged history rows, oversized
histories, files a killed process left behind.

Every message names the run and the file, and says what to do. :class:`DamagedRun` is a
``ValueError``, so callers that show ``ValueError`` (the studio's Runs tab) show these too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import sqlite3
import time
import zipfile
import zlib
from collections.abc import Callable

__all__ = ["DamagedRun", "NotRecorded", "StoreFull", "HISTORY_MAX_BYTES", "bounded_decompress", "clean_weights_folder", "disk_full",
           "full_message", "read_only_reason", "stale_temporary_files", "weights_error", "writable"]

#: The most bytes a stored history may take uncompressed (a bounded history takes a few MB).
HISTORY_MAX_BYTES = 64 * 2**20

#: Exceptions that reading a damaged ``torch.save`` file raises (truncated, garbage, not a zip...).
READ_ERRORS = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
               AttributeError, IndexError, TypeError)

_TMP = re.compile(r"^(?P<id>[0-9a-z][0-9a-z-]{0,63})\.pt\.(?P<pid>\d+)-[0-9a-f]+\.tmp$")


class DamagedRun(ValueError):
    """A stored run's weights file or history cannot be read; the message names the run and the file."""


def weights_error(run_id: str, path: str, exc: BaseException) -> BaseException:
    """The error to raise for ``exc`` from reading the weights file ``path`` of ``run_id``: the same
    ``FileNotFoundError`` when it is missing (its message names both), else :class:`DamagedRun`."""
    if isinstance(exc, FileNotFoundError):
        return exc
    if isinstance(exc, ValueError) and "pass that model" in str(exc):
        return exc  # a delta file read without its pretrained model: not damage
    what = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return DamagedRun(
        f"the weights file of run {run_id} cannot be read: {path} is damaged or not a weights file ({what}). "
        f"Delete the run (store.delete({run_id!r}), or Delete in the Runs tab) and train it again; do not load "
        f"the file with weights_only=False unless you trust where it came from")


def bounded_decompress(data: bytes, run_id: str, limit: int = HISTORY_MAX_BYTES) -> bytes:
    """zlib-decompress a history, refusing (:class:`DamagedRun`) one larger than ``limit`` bytes
    uncompressed, before that memory is taken."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as exc:
        raise DamagedRun(f"the history of run {run_id} in the store's database is damaged ({exc}); the run's "
                         f"other records are kept: delete the run to remove it") from exc
    if d.unconsumed_tail:
        raise DamagedRun(f"the history of run {run_id} is larger than {limit // 2**20} MB uncompressed, more than "
                         f"any history retrain_widgets writes; it was not read (a damaged or foreign row): "
                         f"delete the run to remove it")
    return out


def stale_temporary_files(folder: str, alive: Callable[[int], bool]) -> list[str]:
    """Temporary weights files (``<id>.pt.<pid>-<hex>.tmp``) whose writing process is gone, or that
    are older than an hour (a writer on another host)."""
    out = []
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            m = _TMP.match(name)
            if m is None:
                continue
            path = os.path.join(folder, name)
            try:
                age = now - os.path.getmtime(path)
            except FileNotFoundError:
                continue
            if age > 3600 or not alive(int(m["pid"])):
                out.append(path)
    return out


def clean_weights_folder(folder: str, rows: dict[str, tuple[str, bool]], active: tuple[str, ...],
                         alive: Callable[[int], bool]) -> tuple[list[str], list[str], list[str]]:
    """Tidy the weights folder when a store opens: remove stale temporary files; of the complete
    ``<id>.pt`` files, adopt those whose run ended without its row saying it has weights (the
    process was killed after the file was moved into place) and remove those of runs that no
    longer exist. ``rows``: run id -> (state, has_weights). Returns (removed temporaries, adopted
    ids, removed orphans)."""
    removed = []
    for path in stale_temporary_files(folder, alive):
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
    adopted, orphans = [], []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(folder):
            if not name.endswith(".pt"):
                continue
            run_id = name[:-3]
            row = rows.get(run_id)
            if row is None:
                if time.time() - os.path.getmtime(os.path.join(folder, name)) > 60:  # not a run being inserted
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(folder, name))
                        orphans.append(run_id)
            elif not row[1] and row[0] not in active:
                adopted.append(run_id)
    return removed, adopted, orphans


def read_only_reason(folder: str, db_path: str) -> str:
    """Why a store in ``folder`` cannot be written (``""``: it can; the folder is created when missing).
    A read-only store is opened for reading (listing, restoring); the message says what to do to record."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the run store folder {folder}: {exc.strerror or exc}. Pass store=False to "
                         f"keep runs in memory only, or another folder") from exc
    if writable(folder) and (not os.path.exists(db_path) or writable(db_path)):
        return ""
    if not os.path.exists(db_path):
        raise ValueError(f"the folder {folder} is read-only and holds no run store: pass store=False to keep runs in "
                         f"memory only, or another folder")
    return (f"the run store {folder} is read-only (its folder or {os.path.basename(db_path)} cannot be written): its "
            f"runs can be listed and restored, not recorded. Pass store=False to keep new runs in memory only, or "
            f"another folder")


def writable(path: str) -> bool:
    """Whether ``path`` can be written by this process (a read-only file system included)."""
    return os.access(path, os.W_OK)


class NotRecorded(RuntimeError):
    """The store could not record a run (or stopped recording it); the run trains on in memory."""


class StoreFull(OSError):
    """The disk holding a store is full: the run's recording stopped (its row says so when it could be written)."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full: ``ENOSPC``, SQLite's ``SQLITE_FULL``, or torch's writer failing
    (``[enforce fail at inline_container.cc...] ... file write failed``)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)
    text = str(exc)
    return "No space left" in text or ("enforce fail" in text and "write" in text)


def full_message(run_id: str, folder: str, what: str, step: int) -> str:
    """Why recording stopped: the disk is full, where, and what to do."""
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return (f"the disk holding the run store {folder} is full ({free}): {what} of run {run_id} could not be written "
            f"at step {step}, so its recording stopped there (the trained model stays in memory: run.model). Free "
            f"some space, or pass store=False / another folder to the next studio")
