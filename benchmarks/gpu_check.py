"""GPU check: CUDA training with every probe on, AMP off and on, and no hidden per-step host sync.

For the bundled digits CNN and a ResNet-18-shaped model, on CUDA:

1. ``Retrainer`` trains with every probe on (and again with the alignment probe sampling every
   step) while ``torch.cuda.set_sync_debug_mode("error")`` is
   set around the steps between publishes: any host-device synchronisation there (an
   ``.item()``, a ``bool(tensor)``, a blocking copy) raises instead of silently stalling the
   GPU queue. Publishing (one copy per chunk of steps) runs with the mode back at default.
2. The same model and batches (already on the GPU) are trained by a bare CUDA loop and by
   ``Retrainer``, interleaved (ABBA order, see ``benchmarks/paired.py``), several repeats; it
   prints the median of the paired ratios of steps/s, and the best-runs ratio on its own line.

Without CUDA it says so and exits 0. ``--device cpu`` runs the same code path on the CPU as a
smoke test (the sync check is a no-op there). Ends with two lines per case::

    gpu overhead ratio <model> amp=<on|off>: <median of the paired ratios bare / engine steps/s>
    gpu best-runs ratio <model> amp=<on|off>: <best bare steps/s / best engine steps/s>
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paired import interleave, ratios  # noqa: E402

from retrain_widgets import Event, Retrainer, RunConfig, examples  # noqa: E402
from retrain_widgets.core.params import make_optimizer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device, amp: bool) -> float:
    model = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(model, cfg)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    loss_fn = nn.CrossEntropyLoss()
    t0 = 0.0
    for i, (x, y) in enumerate(batches):
        if i == 1:
            _sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp and device.type == "cuda"):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
    _sync(device)
    return (len(batches) - 1) / (time.perf_counter() - t0)


def engine(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device, amp: bool,
           sync_check: bool, old_train: list | None = None) -> tuple[float, Retrainer]:
    r = Retrainer(model, cfg.replace(amp=amp, max_steps=len(batches), epochs=1, device=device.type), batches,
                  old_train=old_train)
    r.telemetry.sync_check = sync_check
    stamps: dict[int, float] = {}

    def stamp(info):
        if info.step in (1, len(batches)):
            _sync(device) if not sync_check else None
            stamps[info.step] = time.perf_counter()

    r.on(Event.STEP_END, stamp)
    r.fit()
    _sync(device)
    end = time.perf_counter()
    n = r.history.total_points("train_loss")
    assert n == len(batches), f"history has {n} of {len(batches)} steps"
    return (len(batches) - 1) / (end - stamps[1]), r


def cases(device: torch.device, quick: bool) -> list[tuple[str, nn.Module, list]]:
    g = torch.Generator().manual_seed(0)
    train, _ = examples.digits_loaders(batch_size=256)
    cnn_batches = [(x.to(device), y.to(device)) for x, y in train] * (2 if quick else 20)
    torch.manual_seed(0)
    resnet = examples.resnet18_shaped(num_classes=10)
    n = 10 if quick else 60
    rn_batches = [(torch.randn(64, 3, 64, 64, generator=g).to(device),
                   torch.randint(0, 10, (64,), generator=g).to(device)) for _ in range(n)]
    return [("digits_cnn", examples.pretrained_digits_cnn(), cnn_batches),
            ("resnet18_shaped", resnet, rn_batches)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: the GPU check needs one (run it on a GPU machine). Nothing to do.")
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name})")
    cfg = RunConfig(loss="ce", lr=1e-3, schedule="cosine")
    results = []
    for model_name, model, batches in cases(device, args.quick):
        for amp in (False, True):
            # 1. the sync check: raises on any host sync between publishes
            _, r = engine(model, batches, cfg, device, amp, sync_check=True)
            print(f"{model_name} amp={'on' if amp else 'off'}: sync check passed ({r.step} steps, "
                  f"amp dtype {r.amp_dtype}, {len(r.layer_names)} probed layers)")
            # ... and with the alignment probe sampling every step (old-task batches: the first two)
            _, r = engine(model, batches, cfg.replace(alignment_every=1, alignment_budget=1.0), device, amp,
                          sync_check=True, old_train=batches[:2])
            assert r.alignment is not None and r.alignment.error is None and not r.handler_errors, r.handler_errors
            print(f"{model_name} amp={'on' if amp else 'off'}: sync check with the alignment probe passed "
                  f"({r.alignment.samples} samples)")
            # 2. overhead against a bare loop, interleaved
            bare(model, batches[:3], cfg, device, amp)
            runs = interleave(partial(bare, model, batches, cfg, device, amp),
                              partial(engine, model, batches, cfg, device, amp, sync_check=False), args.repeats)
            pairs = [(b, e) for b, (e, _) in runs]
            print(f"{model_name} amp={'on' if amp else 'off'}: bare {statistics.median(b for b, _ in pairs):.0f} "
                  f"steps/s, engine {statistics.median(e for _, e in pairs):.0f} steps/s")
            results.append((model_name, amp, *ratios(pairs)))
    for model_name, amp, median, best in results:
        case = f"{model_name} amp={'on' if amp else 'off'}"
        print(f"gpu overhead ratio {case}: {median:.3f}")
        print(f"gpu best-runs ratio {case}: {best:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
