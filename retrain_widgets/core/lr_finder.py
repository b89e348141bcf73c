"""fastai's LR range test on a run's model, optimizer settings and loss, with the run's own
training step (:class:`~retrain_widgets.core.step.TrainingStep`: clipping, L2-SP and the loss
scaler included)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .batches import to_device
from .device import cpu_threads
from .errors import TrainingFailed
from .step import TrainingStep

if TYPE_CHECKING:
    from .engine import Retrainer

__all__ = ["LRFinderResult", "run_lr_finder"]


@dataclass(frozen=True)
class LRFinderResult:
    """The LR range test's curve: ``lrs[i]`` was used at step ``i`` which gave ``losses[i]``
    (smoothed: ``smoothed[i]``). ``suggestion`` is the LR of the steepest descent of the
    smoothed curve; ``min_lr_div10`` is fastai's other rule (the LR of the minimum / 10)."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestion: float
    min_lr_div10: float
    diverged: bool


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training loader yields no batches")


def _sweep(run: Retrainer, start_lr: float, mult: float, num_steps: int, diverge: float,
           beta: float) -> tuple[list[float], list[float], list[float], bool]:
    """The test's steps: (lrs, raw losses, smoothed losses, diverged)."""
    opt = run.optimizer
    top = opt.param_groups[-1]["lr"]
    ratios = [g["lr"] / top for g in opt.param_groups]
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best = 0.0, math.inf
    batches = _cycle(run.train_loader)
    step = TrainingStep(opt, run.batch_loss, scaler=run.train_step.scaler, l2sp=run.train_step.l2sp,
                        grad_clip=run.train_step.grad_clip)  # the run's step, without its telemetry
    for i in range(num_steps):
        lr = start_lr * mult**i
        for g, r in zip(opt.param_groups, ratios):
            g["lr"] = lr * r
        loss = step(to_device(next(batches), run.device))
        value = float(loss.detach())
        if not math.isfinite(value):
            return lrs, raw, smooth, True
        avg = beta * avg + (1 - beta) * value
        s = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        raw.append(value)
        smooth.append(s)
        best = min(best, s)
        if i > 5 and s > diverge * best:
            return lrs, raw, smooth, True
    return lrs, raw, smooth, False


def run_lr_finder(run: Retrainer, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
                  diverge: float = 4.0, beta: float = 0.98) -> LRFinderResult:
    """The LR range test on ``run`` (see :meth:`Retrainer.lr_find`); weights, BatchNorm
    statistics, optimizer state and torch's RNG are restored afterwards."""
    if run.state.active:
        raise RuntimeError("the LR finder cannot run while training; pause is not enough, stop() first")
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps!r}")
    if not run.checked:
        run.check()
    net, opt = run.model, run.optimizer
    saved_model = copy.deepcopy(net.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    saved_rng = torch.get_rng_state()
    base = [g["lr"] for g in opt.param_groups]
    mult = (end_lr / start_lr) ** (1 / (num_steps - 1))
    net.train()
    try:
        with cpu_threads(run.device):
            lrs, raw, smooth, diverged = _sweep(run, start_lr, mult, num_steps, diverge, beta)
    finally:
        net.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b
        opt.zero_grad(set_to_none=True)
        torch.set_rng_state(saved_rng)
    if len(lrs) < 3:
        raise TrainingFailed(
            f"the LR finder diverged after {len(lrs)} steps from start_lr={start_lr:g}; use a smaller start_lr"
        )
    slope = np.gradient(np.asarray(smooth), np.log10(lrs))
    cut = max(1, len(lrs) // 10)
    i_best = int(np.argmin(slope[cut:-1] if len(slope) > cut + 1 else slope)) + (cut if len(slope) > cut + 1 else 0)
    i_min = int(np.argmin(smooth))
    return LRFinderResult(tuple(lrs), tuple(raw), tuple(smooth), float(lrs[i_best]), float(lrs[i_min] / 10),
                          diverged)
