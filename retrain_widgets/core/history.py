"""A thread-safe, memory-bounded record of a training run.

The training thread appends plain numbers in chunks (numpy arrays); readers take immutable
snapshots. Memory stays bounded however long the run: each series keeps its most recent
points at full resolution and folds older ones into buckets, doubling the bucket width when
the bucket store is full.

Memory budget (float64 steps, float32 values; ``R = recent``, ``C = coarse``):

* a scalar series (``train_loss``, ``lr``, ``val_loss`` ...) keeps between ``R`` and ``2R``
  recent points and at most ``C`` buckets, each remembering its minimum and maximum and the
  steps where they occurred: at most ``2R * 12 + C * 24`` bytes, 192 KiB with the defaults
  (R = 4096, C = 2048);
* a layer series (``grad_norm``, ``drift``: steps x layers) keeps ``R_L`` to ``2 R_L`` recent
  rows and ``C_L`` buckets of per-layer mean, min and max: at most
  ``2 R_L (8 + 4L) + C_L (16 + 16L)`` bytes, about 2.4 MiB for 100 layers with the defaults
  (R_L = C_L = 1024).

A 1,000,000-step run with 100 layers (grad_norm and drift) therefore holds under 6 MiB of history
(``tests/test_history.py`` checks it with a simulated run). The extreme values of every
scalar series survive decimation, so a loss spike never disappears from a plot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .names import Series

__all__ = ["History", "HistorySnapshot", "SCALAR_SERIES", "LAYER_SERIES"]

SCALAR_SERIES = Series.SCALAR
LAYER_SERIES = Series.LAYER


def _pow2_at_most(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


class _Series:
    """One series: recent points at full resolution, older ones in buckets.

    ``width=None`` holds scalars (buckets keep min / max and where they occurred);
    ``width=L`` holds rows of ``L`` values (buckets keep mean / min / max per column).
    """

    def __init__(self, width: int | None, recent: int, coarse: int) -> None:
        self.width = width
        self.recent = _pow2_at_most(recent)
        self.coarse = max(2, int(coarse))
        self.bucket = max(1, _pow2_at_most(self.recent // self.coarse * 2 or 1))
        shape = (2 * self.recent,) if width is None else (2 * self.recent, width)
        self.r_steps = np.empty(2 * self.recent, dtype=np.float64)
        self.r_vals = np.empty(shape, dtype=np.float32)
        self.n = 0
        self.nc = 0
        if width is None:
            self.c_lo_step = np.empty(self.coarse, np.float64)
            self.c_lo = np.empty(self.coarse, np.float32)
            self.c_hi_step = np.empty(self.coarse, np.float64)
            self.c_hi = np.empty(self.coarse, np.float32)
        else:
            self.c_step = np.empty(self.coarse, np.float64)
            self.c_rows = np.empty(self.coarse, np.float64)
            self.c_sum = np.empty((self.coarse, width), np.float32)
            self.c_cnt = np.empty((self.coarse, width), np.float32)
            self.c_min = np.empty((self.coarse, width), np.float32)
            self.c_max = np.empty((self.coarse, width), np.float32)
        self.total = 0  # points ever appended

    # ------------------------------------------------------------------ writing
    def append(self, steps: np.ndarray, values: np.ndarray) -> None:
        k = len(steps)
        if k == 0:
            return
        start = 0
        while start < k:
            room = 2 * self.recent - self.n
            if room == 0:
                self._spill()
                continue
            take = min(room, k - start)
            self.r_steps[self.n:self.n + take] = steps[start:start + take]
            self.r_vals[self.n:self.n + take] = values[start:start + take]
            self.n += take
            start += take
        self.total += k

    def _spill(self) -> None:
        """Fold the oldest ``recent`` points into buckets."""
        r = self.recent
        nb = max(1, r // self.bucket)
        while self.nc + nb > self.coarse:
            self._merge()
            nb = max(1, r // self.bucket)
        b = r // nb  # once buckets are wider than a spill, a spill makes one bucket
        steps = self.r_steps[:r].reshape(nb, b)
        vals = self.r_vals[:r]
        i0, i1 = self.nc, self.nc + nb
        if self.width is None:
            v = vals.reshape(nb, b)
            lo = np.where(np.isnan(v), np.inf, v)
            hi = np.where(np.isnan(v), -np.inf, v)
            ilo, ihi = lo.argmin(1), hi.argmax(1)
            rows = np.arange(nb)
            self.c_lo[i0:i1] = v[rows, ilo]
            self.c_lo_step[i0:i1] = steps[rows, ilo]
            self.c_hi[i0:i1] = v[rows, ihi]
            self.c_hi_step[i0:i1] = steps[rows, ihi]
        else:
            v = vals.reshape(nb, b, self.width)
            finite = ~np.isnan(v)
            self.c_step[i0:i1] = steps.mean(1)
            self.c_rows[i0:i1] = b
            self.c_sum[i0:i1] = np.where(finite, v, 0).sum(1)
            self.c_cnt[i0:i1] = finite.sum(1)
            with np.errstate(invalid="ignore"), _quiet():
                self.c_min[i0:i1] = np.nanmin(v, axis=1)
                self.c_max[i0:i1] = np.nanmax(v, axis=1)
        self.nc = i1
        rest = self.n - r
        self.r_steps[:rest] = self.r_steps[r:self.n]
        self.r_vals[:rest] = self.r_vals[r:self.n]
        self.n = rest

    def _merge(self) -> None:
        """Halve the number of buckets by merging neighbours (bucket width doubles)."""
        m = self.nc // 2
        odd = self.nc % 2
        a, b = slice(0, 2 * m, 2), slice(1, 2 * m, 2)
        if self.width is None:
            lo_a, lo_b = self.c_lo[a], self.c_lo[b]
            take_b = (lo_b < lo_a) | np.isnan(lo_a)
            new_lo = np.where(take_b, lo_b, lo_a)
            new_lo_step = np.where(take_b, self.c_lo_step[b], self.c_lo_step[a])
            hi_a, hi_b = self.c_hi[a], self.c_hi[b]
            take_b = (hi_b > hi_a) | np.isnan(hi_a)
            new_hi = np.where(take_b, hi_b, hi_a)
            new_hi_step = np.where(take_b, self.c_hi_step[b], self.c_hi_step[a])
            for arr, new in ((self.c_lo, new_lo), (self.c_lo_step, new_lo_step), (self.c_hi, new_hi),
                             (self.c_hi_step, new_hi_step)):
                last = arr[self.nc - 1] if odd else None
                arr[:m] = new
                if odd:
                    arr[m] = last
        else:
            rows_a, rows_b = self.c_rows[a], self.c_rows[b]
            new_rows = rows_a + rows_b
            new_step = (self.c_step[a] * rows_a + self.c_step[b] * rows_b) / new_rows
            new_sum = self.c_sum[a] + self.c_sum[b]
            new_cnt = self.c_cnt[a] + self.c_cnt[b]
            new_min = np.fmin(self.c_min[a], self.c_min[b])
            new_max = np.fmax(self.c_max[a], self.c_max[b])
            for arr, new in ((self.c_step, new_step), (self.c_rows, new_rows), (self.c_sum, new_sum), (self.c_cnt, new_cnt),
                             (self.c_min, new_min), (self.c_max, new_max)):
                last = arr[self.nc - 1].copy() if odd else None
                arr[:m] = new
                if odd:
                    arr[m] = last
        self.nc = m + odd
        self.bucket *= 2

    # ------------------------------------------------------------------ reading
    def scalar(self) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values: bucket extremes (in step order) then the recent points."""
        lo_s, lo = self.c_lo_step[:self.nc], self.c_lo[:self.nc]
        hi_s, hi = self.c_hi_step[:self.nc], self.c_hi[:self.nc]
        first = lo_s <= hi_s
        s1, v1 = np.where(first, lo_s, hi_s), np.where(first, lo, hi)
        s2, v2 = np.where(first, hi_s, lo_s), np.where(first, hi, lo)
        same = lo_s == hi_s
        cs = np.stack([s1, s2], 1).reshape(-1)
        cv = np.stack([v1, v2], 1).reshape(-1)
        keep = np.ones(len(cs), bool)
        keep[1::2] = ~same
        steps = np.concatenate([cs[keep], self.r_steps[:self.n]])
        values = np.concatenate([cv[keep], self.r_vals[:self.n]])
        return steps, values

    def matrix(self, reduce: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        if reduce == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                coarse = np.where(self.c_cnt[:self.nc] > 0, self.c_sum[:self.nc] / np.maximum(self.c_cnt[:self.nc], 1),
                                  np.nan)
        elif reduce == "min":
            coarse = self.c_min[:self.nc]
        elif reduce == "max":
            coarse = self.c_max[:self.nc]
        else:
            raise ValueError(f"reduce must be 'mean', 'min' or 'max', got {reduce!r}")
        steps = np.concatenate([self.c_step[:self.nc], self.r_steps[:self.n]])
        values = np.concatenate([coarse.astype(np.float32), self.r_vals[:self.n]])
        return steps, values

    def nbytes(self) -> int:
        arrays = [self.r_steps, self.r_vals]
        if self.width is None:
            arrays += [self.c_lo_step, self.c_lo, self.c_hi_step, self.c_hi]
        else:
            arrays += [self.c_step, self.c_rows, self.c_sum, self.c_cnt, self.c_min, self.c_max]
        return sum(a.nbytes for a in arrays)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"width": self.width, "recent": self.recent, "coarse": self.coarse,
                             "bucket": self.bucket, "total": self.total,
                             "r_steps": _list(self.r_steps[:self.n]), "r_vals": _list(self.r_vals[:self.n])}
        for name in _coarse_names(self.width):
            d[name] = _list(getattr(self, name)[:self.nc])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Series:
        s = cls(d["width"], d["recent"], d["coarse"])
        s.bucket, s.total = int(d["bucket"]), int(d["total"])
        r_steps = _array(d["r_steps"], np.float64)
        s.n = len(r_steps)
        s.r_steps[:s.n] = r_steps
        if s.n:
            s.r_vals[:s.n] = _array(d["r_vals"], np.float32)
        for name in _coarse_names(s.width):
            arr = _array(d[name], getattr(s, name).dtype)
            s.nc = len(arr)
            if s.nc:
                getattr(s, name)[:s.nc] = arr
        return s


def _coarse_names(width: int | None) -> tuple[str, ...]:
    if width is None:
        return ("c_lo_step", "c_lo", "c_hi_step", "c_hi")
    return ("c_step", "c_rows", "c_sum", "c_cnt", "c_min", "c_max")


class _quiet:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def _list(a: np.ndarray) -> list[Any]:
    return np.where(np.isnan(a), None, a.astype(object)).tolist() if a.dtype.kind == "f" else a.tolist()


def _array(values: Any, dtype: Any) -> np.ndarray:
    return np.array(values, dtype=object).astype(dtype) if len(values) else np.empty(0, dtype)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class HistorySnapshot:
    """An immutable copy of a :class:`History` at one moment (arrays are read-only)."""

    version: int
    scalars: Mapping[str, tuple[np.ndarray, np.ndarray]]
    layers: Mapping[str, tuple[np.ndarray, tuple[str, ...], np.ndarray]]
    markers: tuple[tuple[float, str, str], ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of a scalar series (empty arrays when nothing was recorded)."""
        if name in self.scalars:
            return self.scalars[name]
        if name in self.layers or (name not in SCALAR_SERIES and self.scalars):
            _unknown(name, list(self.scalars), list(self.layers))
        return _EMPTY, _EMPTY

    def layer_series(self, name: str) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
        """``(steps, layer names, values[steps x layers])`` of a layer series."""
        if name in self.layers:
            return self.layers[name]
        if name not in LAYER_SERIES:
            _unknown(name, list(self.scalars), list(self.layers))
        return _EMPTY, (), np.empty((0, 0), np.float32)

    @property
    def last_step(self) -> int:
        steps = self.scalars.get(Series.TRAIN_LOSS, (_EMPTY, _EMPTY))[0]
        return int(steps[-1]) if len(steps) else -1


_EMPTY = _frozen(np.empty(0))


def _unknown(name: str, scalars: list[str], layers: list[str]) -> None:
    raise ValueError(
        f"history has no series {name!r}: scalar series {scalars or list(SCALAR_SERIES)}, "
        f"layer series {layers or list(LAYER_SERIES)} (use layer_series() for those)"
    )


class History:
    """Thread-safe record of one run, bounded in memory (see the module docstring).

    Parameters
    ----------
    recent, coarse
        Full-resolution points and buckets kept per scalar series.
    layer_recent, layer_coarse
        The same for layer series (steps x layers).
    """

    def __init__(self, recent: int = 4096, coarse: int = 2048, layer_recent: int = 1024,
                 layer_coarse: int = 1024) -> None:
        self._lock = threading.Lock()
        self._sizes = (recent, coarse, layer_recent, layer_coarse)
        self._scalars: dict[str, _Series] = {}
        self._layers: dict[str, _Series] = {}
        self._columns: dict[str, tuple[str, ...]] = {}
        self._markers: list[tuple[float, str, str]] = []
        self.meta: dict[str, Any] = {}
        self._version = 0

    # ------------------------------------------------------------------ writing
    def append(self, name: str, steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> None:
        """Append points to the scalar series ``name``."""
        steps_a = np.asarray(steps, np.float64).reshape(-1)
        values_a = np.asarray(values, np.float32).reshape(-1)
        if len(steps_a) != len(values_a):
            raise ValueError(f"{name}: {len(steps_a)} steps but {len(values_a)} values")
        with self._lock:
            series = self._scalars.get(name)
            if series is None:
                series = self._scalars[name] = _Series(None, self._sizes[0], self._sizes[1])
            series.append(steps_a, values_a)
            self._version += 1

    def append_layers(self, name: str, steps: Sequence[float] | np.ndarray, columns: Sequence[str],
                      values: np.ndarray) -> None:
        """Append rows to the layer series ``name`` (``values``: steps x len(columns))."""
        steps_a = np.asarray(steps, np.float64).reshape(-1)
        values_a = np.asarray(values, np.float32).reshape(len(steps_a), len(columns))
        cols = tuple(columns)
        with self._lock:
            series = self._layers.get(name)
            if series is None or self._columns[name] != cols:
                if series is not None:
                    raise ValueError(f"{name}: columns changed during the run")
                series = self._layers[name] = _Series(len(cols), self._sizes[2], self._sizes[3])
                self._columns[name] = cols
            series.append(steps_a, values_a)
            self._version += 1

    def mark(self, step: float, kind: str, text: str) -> None:
        """Record an event at ``step`` (stage change, unfreeze, LR change, failure ...)."""
        with self._lock:
            self._markers.append((float(step), kind, text))
            self._version += 1

    # ------------------------------------------------------------------ reading
    @property
    def version(self) -> int:
        """Increases with every write: a reader can skip work when it has not changed."""
        return self._version

    def snapshot(self) -> HistorySnapshot:
        """An immutable copy of everything recorded so far."""
        with self._lock:
            scalars = {k: tuple(_frozen(a) for a in s.scalar()) for k, s in self._scalars.items()}
            layers = {}
            for k, s in self._layers.items():
                steps, vals = s.matrix()
                layers[k] = (_frozen(steps), self._columns[k], _frozen(vals))
            return HistorySnapshot(self._version, scalars, layers, tuple(self._markers), dict(self.meta))

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of a scalar series: ``train_loss``, ``lr``, ``val_loss``,
        ``val_metric``, ``old_loss``, ``old_metric``, ``old_batch_loss`` (or any other recorded name)."""
        with self._lock:
            s = self._scalars.get(name)
            if s is not None:
                steps, values = s.scalar()
                return _frozen(steps), _frozen(values)
            known_scalars, known_layers = list(self._scalars), list(self._layers)
        if name in known_layers or name not in SCALAR_SERIES:
            _unknown(name, known_scalars, known_layers)
        return _EMPTY, _EMPTY

    def layer_series(self, name: str, reduce: str = "mean") -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
        """``(steps, layer names, values[steps x layers])`` for ``grad_norm``, ``drift``, ``grad_alignment`` or
        ``group_lr``. Decimated rows hold the bucket's ``reduce`` ("mean", "min", "max")."""
        with self._lock:
            s = self._layers.get(name)
            if s is not None:
                steps, values = s.matrix(reduce)
                return _frozen(steps), self._columns[name], _frozen(values)
            known_scalars, known_layers = list(self._scalars), list(self._layers)
        if name not in LAYER_SERIES:
            _unknown(name, known_scalars, known_layers)
        return _EMPTY, (), np.empty((0, 0), np.float32)

    @property
    def markers(self) -> list[tuple[float, str, str]]:
        with self._lock:
            return list(self._markers)

    def names(self) -> tuple[list[str], list[str]]:
        with self._lock:
            return list(self._scalars), list(self._layers)

    def nbytes(self) -> int:
        """Memory held by the recorded arrays."""
        with self._lock:
            return sum(s.nbytes() for s in (*self._scalars.values(), *self._layers.values()))

    def total_points(self, name: str) -> int:
        with self._lock:
            s = self._scalars.get(name) or self._layers.get(name)
            return s.total if s is not None else 0

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON-ready lists (NaN written as ``null``)."""
        with self._lock:
            return {
                "format": 1,
                "sizes": list(self._sizes),
                "scalars": {k: s.to_dict() for k, s in self._scalars.items()},
                "layers": {k: {"columns": list(self._columns[k]), **s.to_dict()} for k, s in self._layers.items()},
                "markers": [list(m) for m in self._markers],
                "meta": json.loads(json.dumps(self.meta, default=str)),
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        if data.get("format") != 1:
            raise ValueError(f"unsupported history format {data.get('format')!r} (this version reads format 1)")
        h = cls(*data["sizes"])
        for k, d in data["scalars"].items():
            h._scalars[k] = _Series.from_dict(d)
        for k, d in data["layers"].items():
            h._columns[k] = tuple(d["columns"])
            h._layers[k] = _Series.from_dict(d)
        h._markers = [(float(s), str(kind), str(text)) for s, kind, text in data["markers"]]
        h.meta = dict(data.get("meta", {}))
        h._version = 1
        return h

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> History:
        return cls.from_dict(json.loads(text))

    def to_dataframe(self, layers: bool = False) -> Any:
        """A pandas DataFrame indexed by step: one column per scalar series, or with
        ``layers=True`` one column per ``(series, layer)``. Needs pandas."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("History.to_dataframe() needs pandas: pip install pandas") from exc
        snap = self.snapshot()
        frames = []
        if not layers:
            for name, (steps, values) in snap.scalars.items():
                s = pd.Series(values, index=pd.Index(steps, name="step"), name=name)
                frames.append(s[~s.index.duplicated(keep="last")])
        else:
            for name, (steps, cols, values) in snap.layers.items():
                df = pd.DataFrame(values, index=pd.Index(steps, name="step"),
                                  columns=pd.MultiIndex.from_product([[name], cols]))
                frames.append(df[~df.index.duplicated(keep="last")])
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, axis=1).sort_index()
