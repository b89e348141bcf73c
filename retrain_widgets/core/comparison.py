"""Comparing runs: which config fields differ, and their final metrics, as a sortable table;
the what-if grid of variants.

The figure is :mod:`retrain_widgets.plots.comparison`, the notebook object (HTML table and
figure) :mod:`retrain_widgets.comparison`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .history import History
from .names import Meta, Series
from .run import Run
from .store import RunRecord, RunStore, run_metrics
from .store.faults import DamagedRun

__all__ = ["RunSummary", "summarize", "differing_fields", "table", "METRIC_COLUMNS", "DISK_COLUMN",
           "grid_variants"]

#: The table's column of each stored run's weights size on disk, in MB.
DISK_COLUMN = "disk MB"

METRIC_COLUMNS = (Series.VAL_METRIC, Series.OLD_METRIC, Series.VAL_LOSS, Series.OLD_LOSS, "mean_alignment",
                  Series.TRAIN_LOSS, "steps")


@dataclass(frozen=True)
class RunSummary:
    """What a comparison needs of one run, wherever it comes from (a live run or the store)."""

    id: str | None
    name: str
    state: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: History | None
    disk_mb: float | None = None  # a stored run's weights on disk (``RunStore.weights_size``)
    notebook: str | None = None  # the notebook a stored run was made in (``RunRecord.notebook``)


def summarize(run: Run | RunRecord | RunSummary | str, store: RunStore | None = None,
              name: str | None = None) -> RunSummary:
    """A :class:`RunSummary` of a live :class:`~retrain_widgets.core.run.Run` (the engine's
    ``Retrainer``, a watched loop, ...), a stored run (record or id) or a summary."""
    if isinstance(run, RunSummary):
        return run
    if isinstance(run, Run):
        config, _ = run.config_record()
        return RunSummary(None, name or run.name or f"run@{id(run):x}", run.state.value, config, run_metrics(run),
                          run.history)
    if isinstance(run, str):
        if store is None:
            raise ValueError(f"run id {run!r} given without a store: pass store=RunStore(...)")
        run = store.get(run)
    if isinstance(run, RunRecord):
        state = run.state
        try:
            history = store.history(run.id) if store is not None else None
        except DamagedRun:  # one damaged row: that run listed as damaged, the others as they are
            history, state = None, f"{run.state} (history damaged)"
        size = store.weights_size(run.id) if store is not None else None
        return RunSummary(run.id, name or run.name, state, dict(run.config), dict(run.metrics), history,
                          None if size is None else size / 1e6, run.notebook)
    raise ValueError(f"cannot compare a {type(run).__name__}: give runs (Retrainer objects, watched loops), "
                     f"stored runs or run ids")


def _canon(value: Any) -> str:
    return repr(value)


def differing_fields(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Config fields whose values are not the same in every config (in field order)."""
    if len(configs) < 2:
        return []
    keys: list[str] = []
    for c in configs:
        keys.extend(k for k in c if k not in keys)
    return [k for k in keys if len({_canon(c.get(k)) for c in configs}) > 1]


def _sort_key(value: Any, descending: bool) -> tuple[int, Any]:
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return (0, -value if descending else value)
    return (1, str(value))


def table(summaries: Sequence[RunSummary], sort_by: str | None = None,
          descending: bool | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows: run, ``notebook`` when the runs come from several notebooks, state, the
    config fields that differ, the final metrics, then ``disk MB`` (the weights' size on disk)
    when a run is stored.

    ``sort_by`` defaults to ``val_metric`` (best first, using the metric's direction), or the
    order given when no run has a validation metric.
    """
    diff = differing_fields([s.config for s in summaries])
    metric_cols = [m for m in METRIC_COLUMNS if any(m in s.metrics for s in summaries)]
    disk = [DISK_COLUMN] if any(s.disk_mb is not None for s in summaries) else []
    notebooks = ["notebook"] if len({s.notebook for s in summaries}) > 1 else []
    columns = ["run", *notebooks, "state", *diff, *metric_cols, *disk]
    rows = []
    for s in summaries:
        row: dict[str, Any] = {"run": s.name, "id": s.id, "state": s.state}
        if notebooks:
            row["notebook"] = s.notebook or "(no notebook)"
        for k in diff:
            row[k] = s.config.get(k)
        for m in metric_cols:
            row[m] = s.metrics.get(m)
        if disk:
            row[DISK_COLUMN] = s.disk_mb
        rows.append(row)
    if sort_by is None and Series.VAL_METRIC in metric_cols:
        sort_by = Series.VAL_METRIC
    if sort_by is not None:
        if sort_by not in columns:
            raise ValueError(f"cannot sort by {sort_by!r}: the columns are {columns}")
        if descending is None:
            higher = next((s.metrics.get(Meta.HIGHER_IS_BETTER) for s in summaries
                           if s.metrics.get(Meta.HIGHER_IS_BETTER) is not None), True)
            descending = bool(higher) if sort_by in (Series.VAL_METRIC, Series.OLD_METRIC) else False
        present = [r for r in rows if r.get(sort_by) is not None]
        absent = [r for r in rows if r.get(sort_by) is None]
        rows = sorted(present, key=lambda r: _sort_key(r[sort_by], bool(descending))) + absent
    return columns, rows


def grid_variants(grid: dict[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of a what-if grid: ``{"loss": ["bce", "focal"], "lr": [1e-3, 1e-2]}``
    gives four dicts of changes, in order (the last key varies fastest)."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"a what-if grid is a dict of field -> list of values, got {grid!r}")
    columns = []
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ValueError(f"what-if field {key!r} needs a list of values, got {values!r}")
        values = list(values)
        if not values:
            raise ValueError(f"what-if field {key!r} has an empty list of values")
        columns.append(values)
    return [dict(zip(grid, combo)) for combo in itertools.product(*columns)]
