"""Frame-cost benchmark of :class:`LiveFigure` on a long synthetic history."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.names import Meta, Series
from .live import LiveFigure

if TYPE_CHECKING:
    from ..core.history import History

__all__ = ["frame_times", "synthetic_history"]

_PARTS = ("conv1", "bn1", "conv2", "bn2")


def _layer_names(n: int) -> list[str]:
    names = ["stem.conv"] + [f"blocks.{i // 4}.{_PARTS[i % 4]}" for i in range(max(0, n - 2))] + ["head.fc"]
    return names[:n]


class _Run:
    """A deterministic fake run: a decaying noisy loss, per-layer gradient norms spanning three
    decades (the lower 30 % of layers frozen for the first half), a cosine LR with three groups,
    weight drift, validation every ``val_every`` steps and, every ``alignment_every`` steps (``None``:
    off), the alignment with the old task (drifting from +0.3 to negative in the top layers) and an
    old-task batch loss."""

    def __init__(self, history: History, layers: int, planned: int, seed: int = 0, val_every: int = 5000,
                 alignment_every: int | None = 20) -> None:
        self.h = history
        self.rng = np.random.default_rng(seed)
        self.names = _layer_names(layers)
        self.layers = layers
        self.planned = planned
        self.val_every = val_every
        self.scale = 10.0 ** np.linspace(-3, 0, layers)
        self.n_frozen = int(0.3 * layers)
        self.step = 0
        self.alignment_every = alignment_every
        if alignment_every:
            history.meta[Meta.ALIGNMENT] = {"every": alignment_every, "budget": 0.015}
        history.meta.update({Meta.METRIC: "accuracy", Meta.HIGHER_IS_BETTER: True, Meta.OLD_METRIC: "accuracy",
                             Meta.LAYERS: list(self.names), Meta.GROUPS: ["body", "blocks", "head"], Meta.LOSS: "ce"})

    def advance(self, n: int) -> None:
        rng, h = self.rng, self.h
        steps = np.arange(self.step + 1, self.step + n + 1, dtype=np.float64)
        t = steps / self.planned
        loss = (2.3 * np.exp(-6 * t) + 0.08) * rng.lognormal(0, 0.25, n)
        grads = (self.scale[None, :] * rng.lognormal(0, 0.4, (n, self.layers)) * (1 + 3 * np.exp(-8 * t))[:, None])
        half = self.planned // 2
        if self.step < half:
            frozen_rows = steps <= half
            grads[frozen_rows, : self.n_frozen] = np.nan
            if steps[-1] >= half:
                h.mark(half, "stage", "stage 1: unfroze blocks")
        lr = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, float(t[-1]))))
        h.append(Series.TRAIN_LOSS, steps, loss)
        h.append(Series.LR, steps[-1:], [lr])
        h.append_layers(Series.GROUP_LR, steps[-1:], ["body", "blocks", "head"], np.array([[lr / 6.76, lr / 2.6, lr]]))
        h.append_layers(Series.GRAD_NORM, steps, self.names, grads)
        drift = 0.05 * math.sqrt(float(t[-1])) * self.scale ** -0.3 * rng.lognormal(0, 0.1, self.layers)
        if self.step < half:
            drift[: self.n_frozen] = 0.0
        h.append_layers(Series.DRIFT, steps[-1:], self.names, drift[None, :])
        for s in steps[steps % self.val_every == 0]:
            tt = s / self.planned
            h.append(Series.VAL_LOSS, [s], [2.3 * math.exp(-6 * tt) + 0.12])
            h.append(Series.VAL_METRIC, [s], [0.97 - 0.85 * math.exp(-5 * tt)])
            h.append(Series.OLD_METRIC, [s], [0.95 - 0.25 * (1 - math.exp(-4 * tt))])
        if self.alignment_every:
            self._alignment(steps[steps % self.alignment_every == 0], grads)
        if self.step // 20000 != (self.step + n) // 20000:
            h.mark((self.step + n) // 20000 * 20000, "change", "lr x0.5")
        self.step += n


    def _alignment(self, steps: np.ndarray, grads: np.ndarray) -> None:
        if not len(steps):
            return
        t = (steps / self.planned)[:, None]
        depth = np.linspace(0, 1, self.layers)[None, :]
        cos = 0.3 - 0.7 * depth * (1 - np.exp(-4 * t)) + self.rng.normal(0, 0.12, (len(steps), self.layers))
        cos[np.isnan(grads[(steps - self.step - 1).astype(int)])] = np.nan
        self.h.append_layers(Series.GRAD_ALIGNMENT, steps, self.names, np.clip(cos, -1, 1))
        self.h.append(Series.OLD_BATCH_LOSS, steps, 0.2 + 0.6 * (1 - np.exp(-3 * t[:, 0])) * self.rng.lognormal(0, 0.1, len(steps)))


def synthetic_history(layers: int = 100, steps: int = 100_000, chunk: int = 500,
                      seed: int = 0) -> tuple[History, Any]:
    """A :class:`History` filled in chunks of ``chunk`` steps; returns it and the fake run
    (``run.advance(n)`` appends ``n`` more steps)."""
    from ..core.history import History

    h = History()
    run = _Run(h, layers, planned=int(steps * 1.2), seed=seed)
    while run.step < steps:
        run.advance(min(chunk, steps - run.step))
    return h, run


def frame_times(layers: int = 100, steps: int = 100_000, frames: int = 30, new_steps: int = 50,
                **figure_kwargs: Any) -> dict[str, float]:
    """Time ``frames`` successive :meth:`LiveFigure.render` calls on a history of ``layers`` x
    ``steps`` (``new_steps`` appended between frames, as in a live run).

    Returns seconds ``median`` and ``p95`` of ``render``'s wall time (drawing + PNG),
    ``full_redraws`` among the timed frames, ``png_bytes`` of the last frame, and for
    information ``cpu_median`` / ``cpu_p95`` (the rendering thread's CPU time: what the frames
    cost without other processes competing for the cores), ``first_frame`` (the untimed first
    render: a full redraw of a fresh figure) and ``snapshot_median`` (``History.snapshot()``,
    paid by the caller)."""
    history, run = synthetic_history(layers, steps)
    fig = LiveFigure(**figure_kwargs)
    t0 = time.perf_counter()
    fig.render(history.snapshot())
    first = time.perf_counter() - t0
    redraws0 = fig.full_redraws
    times, cpu, snaps = [], [], []
    png = b""
    for _ in range(frames):
        run.advance(new_steps)
        t0 = time.perf_counter()
        snap = history.snapshot()
        t1 = time.perf_counter()
        c1 = time.thread_time()
        png = fig.render(snap)
        cpu.append(time.thread_time() - c1)
        times.append(time.perf_counter() - t1)
        snaps.append(t1 - t0)
    return {
        "median": float(np.median(times)),
        "p95": float(np.percentile(times, 95)),
        "full_redraws": fig.full_redraws - redraws0,
        "png_bytes": len(png),
        "cpu_median": float(np.median(cpu)),
        "cpu_p95": float(np.percentile(cpu, 95)),
        "first_frame": first,
        "snapshot_median": float(np.median(snaps)),
    }
