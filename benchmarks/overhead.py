"""Engine overhead: a bare PyTorch loop against ``Retrainer`` with every probe on.

Both train the same model on the same in-memory batches, interleaved in one process
(bare, engine, bare, engine, ...), several repeats; each repeat times the steps between the
first and the last step of a run (set-up excluded). Both use the thread count the engine uses
on this machine (it keeps one core for the notebook kernel), so the ratio measures the
engine itself: background thread, per-step loss and gradient-norm probes, LR per group,
drift and checkpoints at each publish, history, events.

Ends with one line per model::

    overhead ratio <model>: <bare steps/s / engine steps/s>

Target: <= 1.03 on the bundled CNN and on a ResNet-18-shaped model (CPU). Not a timed test.
Run: ``.venv/bin/python benchmarks/overhead.py [--repeats 7] [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrain_widgets import Event, Retrainer, RunConfig, examples  # noqa: E402
from retrain_widgets.core.params import make_optimizer  # noqa: E402


def bare_loop(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device) -> float:
    """Steps/s of the loop a user would write: zero_grad, forward, CE, backward, AdamW step."""
    model = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss_fn = nn.CrossEntropyLoss()
    t0 = 0.0
    for i, (x, y) in enumerate(batches):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (len(batches) - 1) / (time.perf_counter() - t0)


def engine_loop(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device,
                sync_check: bool = False) -> float:
    """Steps/s of Retrainer with every probe on (grad norms, drift, LR per group, history)."""
    r = Retrainer(model, cfg.replace(max_steps=len(batches), epochs=1), batches)
    r._sync_check = sync_check
    stamps: list[float] = []
    r.on(Event.STEP_END, lambda info: stamps.append(time.perf_counter()) if info.step in (1, len(batches)) else None)
    r.fit()
    assert r.history.total_points("train_loss") == len(batches)
    assert r.history.total_points("grad_norm") == len(batches)
    return (len(batches) - 1) / (stamps[-1] - stamps[0])


def measure(name: str, model: nn.Module, batches: list, cfg: RunConfig, repeats: int,
            device: torch.device) -> float:
    ratios, bare_rates, engine_rates = [], [], []
    bare_loop(model, batches[:5], cfg, device)  # warm-up both paths once
    engine_loop(model, batches[:5], cfg, device)
    for _ in range(repeats):
        b = bare_loop(model, batches, cfg, device)
        e = engine_loop(model, batches, cfg, device)
        bare_rates.append(b)
        engine_rates.append(e)
        ratios.append(b / e)
    print(f"{name}: bare {statistics.median(bare_rates):.1f} steps/s, engine {statistics.median(engine_rates):.1f} "
          f"steps/s, ratios {', '.join(f'{r:.3f}' for r in ratios)}")
    return statistics.median(ratios)


def cnn_case(quick: bool) -> tuple[nn.Module, list]:
    train, _ = examples.digits_loaders(batch_size=64)
    batches = [b for b in train] * (1 if quick else 3)
    return examples.pretrained_digits_cnn(), batches


def resnet_case(quick: bool) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = examples.resnet18_shaped(num_classes=10)
    g = torch.Generator().manual_seed(0)
    n = 8 if quick else 25
    batches = [(torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]
    return model, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    device = torch.device("cpu")
    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {threads} torch thread(s), device {device}, "
          f"{repeats} interleaved repeats")
    cfg = RunConfig(loss="ce", optimizer="adamw", lr=1e-3, schedule="constant", device="cpu")
    results = {}
    for name, case in (("digits_cnn", cnn_case), ("resnet18_shaped", resnet_case)):
        model, batches = case(args.quick)
        results[name] = measure(name, model, batches, cfg, repeats, device)
    for name, ratio in results.items():
        print(f"overhead ratio {name}: {ratio:.3f}")


if __name__ == "__main__":
    main()
