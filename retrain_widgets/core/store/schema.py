"""The store's database: its layout, its version and the migrations between versions.

The version is SQLite's ``PRAGMA user_version``. ``MIGRATIONS[v](conn)`` turns a version-``v``
database into a version-``v + 1`` one; step 0 lays out an empty database, so a new store and a
migrated one are alike, and :data:`SCHEMA_VERSION` is ``len(MIGRATIONS)``. Opening a store runs
the missing steps in order inside the opening transaction: a step that fails leaves the store
as it was. A store written by a newer retrain_widgets (a higher version) is refused.

retrain_widgets 0.1.0 wrote the version into the ``meta`` table only (``user_version`` 0):
such a store is read at that version. ``meta``'s ``schema_version`` is still written alongside,
so that those releases refuse a newer store rather than misread it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import NoReturn

__all__ = ["SCHEMA_VERSION", "MIGRATIONS", "migrate", "check_sqlite_file", "is_not_a_database"]

_SQLITE_HEADER = b"SQLite format 3\x00"

_LAYOUT_1 = (
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


def _lay_out(conn: sqlite3.Connection) -> None:
    """Version 0 -> 1: the tables ``meta``, ``runs`` (one row per run) and ``histories``."""
    for statement in _LAYOUT_1:
        conn.execute(statement)
    conn.execute("INSERT INTO meta (key, value) VALUES ('created', ?)", (repr(time.time()),))


def _add_notebook(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: ``runs.notebook``, the notebook each run was made in (``NULL``: none, or a
    run stored before version 2)."""
    conn.execute("ALTER TABLE runs ADD COLUMN notebook TEXT")
    conn.execute("CREATE INDEX runs_by_notebook ON runs (pretrained_id, notebook)")


#: The ordered migration steps: ``MIGRATIONS[v]`` takes version ``v`` to ``v + 1``. Each runs
#: inside the opening transaction (no COMMIT, no ``executescript``).
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_lay_out, _add_notebook]

#: Version of the database layout written by this retrain_widgets.
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str, writable: bool = True) -> int:
    """Bring the database of the store ``path`` to the current version, inside the transaction
    the caller opened; return that version. ``ValueError`` for a database that is not a run
    store, or one written by a newer retrain_widgets (or an older one, not ``writable``)."""
    target = len(MIGRATIONS)
    version, empty = _version(conn, path)
    if not writable and version != target:
        raise ValueError(f"the run store {path} is read-only and has schema version {version}, not {target}: it "
                         f"cannot be migrated in place; copy the folder somewhere writable and open the copy")
    if version > target:
        raise ValueError(
            f"the run store {path} has schema version {version}, newer than this retrain_widgets reads "
            f"(schema version {target}): upgrade retrain_widgets (pip install -U retrain-widgets) to open it")
    if version < (0 if empty else 1):
        raise ValueError(f"the run store {path} has schema version {version}, older than any known version "
                         f"(1 to {target}); it cannot be read")
    for step in MIGRATIONS[version:]:
        step(conn)
    if version != target or conn.execute("PRAGMA user_version").fetchone()[0] != target:
        conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(target),))
    return target


def _version(conn: sqlite3.Connection, path: str) -> tuple[int, bool]:
    """(the database's version, whether it is empty): ``user_version``, or the ``meta`` table's
    version for a store of retrain_widgets 0.1.0."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return (0, True) if version == 0 else _not_a_store(path, f"a database without tables at user_version "
                                                                 f"{version}")
    if "meta" not in tables:
        return _not_a_store(path, f"a SQLite database without a meta table (tables: {sorted(tables)})")
    if version:
        return version, False
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]), False
    except (TypeError, ValueError):
        return _not_a_store(path, f"a database with no readable schema version "
                                  f"({row[0] if row else 'missing'!r})")


def _not_a_store(path: str, what: str) -> NoReturn:
    raise ValueError(f"{os.path.join(path, 'runs.sqlite')} is {what}, so not a retrain_widgets run store; "
                     f"move it away or open another folder")


def check_sqlite_file(path: str) -> None:
    """Refuse a file that is not a SQLite database before SQLite touches it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    if head and head != _SQLITE_HEADER:
        raise ValueError(f"{path} is not a SQLite database (it starts with {head[:16]!r}), so not a "
                         f"retrain_widgets run store; move it away or open another folder")


def is_not_a_database(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite's error says the file is no database (or a damaged one)."""
    name = getattr(exc, "sqlite_errorname", "")
    return name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in str(exc) or "malformed" in str(exc)
