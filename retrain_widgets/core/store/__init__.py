"""An embedded store of runs: what each run was, how it went, and its trained weights.

A store is a folder (``.retrain_runs`` by default), created when missing::

    <folder>/runs.sqlite        one row per run and its history (SQLite)
    <folder>/weights/<id>.pt    the trained weights of a run: ``torch.save(state_dict)``

:meth:`RunStore.record` subscribes to the events of a :class:`~retrain_widgets.core.run.Run` (the
engine's :class:`~retrain_widgets.core.engine.Retrainer`, or any other loop's run): while the run trains its history, state and step are saved at most every
``save_every`` seconds, and when it ends its final history, metrics and weights are saved.
A store survives the kernel: reopen the folder to list, compare, restore or delete runs.

One module per concern:

* :mod:`.schema` — the tables, the schema version (``PRAGMA user_version``) and the ordered
  migration steps; stores of every earlier version open (migrated in place), a newer one is
  refused;
* :mod:`.liveness` — whether the process that writes a run is still alive;
* :mod:`.recorder` — saving one run from its events (:func:`run_metrics`, the history codec);
* :mod:`.files` — one SQLite connection per thread, and the weights files;
* :mod:`.records` — :class:`RunRecord`, :class:`UnknownRun`, run ids;
* :mod:`retrain_widgets.core.fingerprints` — :func:`fingerprint` of pretrained weights;
* :mod:`.store` — :class:`RunStore` itself.

Storage
-------
* SQLite in WAL mode with a 10 s ``busy_timeout``: several processes (notebooks, scripts)
  may write to one store at once. Every write is one ``BEGIN IMMEDIATE`` transaction.
  sqlite3 connections never cross threads: each thread (the training thread of each run,
  the caller's thread, the heartbeat thread) uses its own.
* Tables: ``meta``, ``runs`` (one row per run: state, times, config and metrics as JSON text,
  the writing process's pid / host, the last saved step ...), ``histories``
  (``History.to_json()`` compressed with zlib; the ``codec`` column says so: ``"zlib+json"``).
* Weights are written to a temporary file, then moved into place with ``os.replace``
  (atomic), and read only with ``torch.load(..., weights_only=True, map_location="cpu")``.
  Their path is derived from the validated run id, never read from the database.

Runs whose process died
-----------------------
A run still ``idle``, ``running`` or ``paused`` in the database whose writing process is gone
(same host and its pid no longer exists, or, from another host, no heartbeat for
:attr:`RunStore.DEAD_AFTER` seconds) is marked ``"interrupted"`` by :meth:`RunStore.runs` and
:meth:`RunStore.get`; its history holds what was saved before the process ended.
"""

from __future__ import annotations

from .. import fingerprints  # noqa: F401 - the module, under its old name here
from ..fingerprints import fingerprint
from .recorder import run_metrics
from .records import RunRecord, UnknownRun
from .schema import SCHEMA_VERSION
from .store import DEFAULT_DIR, RunStore, open_store

__all__ = ["SCHEMA_VERSION", "DEFAULT_DIR", "RunRecord", "RunStore", "UnknownRun", "fingerprint", "run_metrics",
           "open_store"]
