"""Frozen-feature cache: a head-only what-if on a ResNet-50-shaped model, without and with the cache.

The model is Hugging Face's ``ResNetForImageClassification`` with its default config (23.5 M
parameters, random weights; no download) and a new 3-way head; the data 512 random training
images of 64x64 with 3 classes, batch 32, 3 epochs, head only, no validation set (the setting
of issue 11's measurement: 15.3 s a run, 4.3 s one pass through the frozen backbone). A 4-run
what-if (4 losses/LRs) and a 12-run grid (3 losses x 4 LRs) are run with ``cache_features=False``
and with ``"auto"``, interleaved in one process in ABBA order (``benchmarks/paired.py``); each
cached grid starts from an empty cache, so its time includes building it once. The cached grids' training losses are checked against the
plain ones (within 1e-5 relative).

``--model efficientnet``: torchvision's EfficientNet-B0 (4.0 M parameters with a 3-way head,
random weights), head only with ``frozen_eval=True`` (its blocks' stochastic depth in inference mode,
the classifier's Dropout training with the head on the cached features), the same data but 128x128
(at 64x64 a pass through its backbone takes about 2 s here, and what every run costs besides it, the
model's copy and the first-batch check, about 0.5 s, bounds the 4-run speedup near 6); it needs
torchvision (``.venv-vision``, which ``./dev test`` and ``./dev bench`` make) and prints
``feature cache speedup (efficientnet, 4 runs): X`` (target >= 8).

Ends with::

    feature cache speedup (4 runs): X
    feature cache speedup (12 runs): Y
    feature cache best-runs speedup (12 runs): ...
    peak memory: ... MB (process), cache ... MB

X and Y are the medians of the paired ratios; the best-runs lines are best plain time / best
cached time. Targets: X >= 10, Y >= 25. Not a timed test; run it on a quiet machine:
``.venv/bin/python benchmarks/feature_cache.py [--repeats 1] [--runs 4 12] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paired import interleave, ratios  # noqa: E402  (the script's folder is on sys.path)

from retrain_widgets import Retrainer, RunConfig  # noqa: E402
from retrain_widgets.core import feature_cache  # noqa: E402
from retrain_widgets.core.tree import find_head, frozen_complement  # noqa: E402

LOSSES = ("ce", "focal_multiclass", "label_smoothing")
LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def _efficientnet() -> torch.nn.Module:
    try:
        import torchvision
    except ImportError as exc:
        raise SystemExit(f"--model efficientnet needs torchvision ({exc}): run it with .venv-vision/bin/python "
                         f"(./dev test or ./dev bench makes that venv)") from None
    return torchvision.models.efficientnet_b0()  # random weights: no download


def build(quick: bool, name: str = "resnet50") -> tuple[torch.nn.Module, DataLoader, RunConfig]:
    torch.manual_seed(0)
    if quick:
        n, side, batch, epochs = 32, 16, 8, 2
    else:
        n, side, batch, epochs = 512, 64, 32, 3
    if name == "efficientnet":
        model = _efficientnet().eval()
        side = side if quick else 128  # nearer its native 224; see the docstring
    else:
        from transformers import ResNetConfig, ResNetForImageClassification

        # quick: a tiny ResNet; else ResNet-50: 23.5 M parameters
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10) if quick \
            else ResNetConfig()
        model = ResNetForImageClassification(config).eval()
    x = torch.rand(n, 3, side, side)
    y = torch.randint(0, 3, (n,))
    train = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, generator=torch.Generator())
    head = find_head(model)
    cfg = RunConfig(head=head, head_out=3, frozen=frozen_complement(model, [head]), epochs=epochs, device="cpu",
                    frozen_eval=name == "efficientnet")
    return model, train, cfg


def grid(n_runs: int) -> list[dict]:
    changes = [{"loss": loss, "lr": lr} for loss in LOSSES for lr in LRS]
    if n_runs < 12:
        return [changes[0], changes[5], changes[10], changes[7]][:n_runs]
    return changes


def run_grid(model, train, cfg: RunConfig, changes: list[dict], cache: bool) -> tuple[float, list, float, list]:
    """Wall time of the grid, each run's training losses, the cache's size in MB, each run's time."""
    feature_cache.clear()
    t0 = time.perf_counter()
    losses, mb, times = [], 0.0, []
    for change in changes:
        t_run = time.perf_counter()
        run = Retrainer(model, cfg.replace(cache_features="auto" if cache else False, **change), train)
        history = run.fit()
        losses.append(history.series("train_loss")[1])
        info = history.meta["feature_cache"]
        if cache and info["state"] not in ("built", "reused"):
            raise SystemExit(f"the cache was not used: {info}")
        mb = max(mb, info["mb"])
        times.append(time.perf_counter() - t_run)
    return time.perf_counter() - t0, losses, mb, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="plain/cached pairs per grid size")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny ResNet, tiny data, grids of 2 and 3 runs (a smoke run)")
    parser.add_argument("--runs", type=int, nargs="+", choices=(4, 12), default=(4, 12),
                        help="the grid sizes to measure (default both; one at a time splits a long measurement)")
    parser.add_argument("--model", choices=("resnet50", "efficientnet"), default="resnet50",
                        help="efficientnet: torchvision's EfficientNet-B0 with frozen_eval=True (needs torchvision)")
    args = parser.parse_args()
    model, train, cfg = build(args.quick, args.model)
    label = "efficientnet, " if args.model == "efficientnet" else ""
    params = sum(p.numel() for p in model.parameters())
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s); "
          f"{type(model).__name__} {params / 1e6:.2f} M parameters, {len(train.dataset)} images, "
          f"batch {train.batch_size}, {cfg.epochs} epochs, head {cfg.head!r}", flush=True)
    cache_mb = 0.0
    for n_runs in (2, 3) if args.quick else args.runs:
        changes = grid(n_runs)
        pairs = interleave(lambda changes=changes: run_grid(model, train, cfg, changes, cache=True),
                           lambda changes=changes: run_grid(model, train, cfg, changes, cache=False), args.repeats)
        for (_, cached, mb, times), (_, plain, _, _) in pairs:
            print(f"  cached grid: first run {times[0]:.2f} s (builds the cache), the others "
                  f"{sum(times[1:]) / max(1, len(times) - 1):.2f} s each", flush=True)
            cache_mb = max(cache_mb, mb)
            for a, b in zip(plain, cached):
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
        # rates are grids per second: cached rate / plain rate is the speedup
        median, best = ratios([(1 / cached[0], 1 / plain[0]) for cached, plain in pairs])
        print(f"{n_runs} runs: without the cache {min(p[0] for _, p in pairs):.2f} s, with it "
              f"{min(c[0] for c, _ in pairs):.2f} s (best of {len(pairs)})", flush=True)
        print(f"feature cache speedup ({label}{n_runs} runs): {median:.1f}")
        print(f"feature cache best-runs speedup ({label}{n_runs} runs): {best:.1f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak memory: {rss:.0f} MB (process), cache {cache_mb:.1f} MB")


if __name__ == "__main__":
    main()
