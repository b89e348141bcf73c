"""Dashboard overhead: a bare PyTorch loop against a live ``RetrainStudio``.

The bundled example (digits CNN, ``is_seven`` task with a 1-output head, focal loss) is trained
(about 1,750 steps, a ~15 s run) by a bare loop and by a ``RetrainStudio`` run with its live plots
rendering as in a notebook (headless: frames are drawn and PNG-encoded into the ``Image`` widget;
with no front end attached the widget messages go nowhere), interleaved in one process (ABBA order,
see ``benchmarks/paired.py``), several repeats; each times the steps between the first and the last
step (set-up and the final frame excluded), by the wall clock and by the training thread's CPU time
(frames are drawn in that thread). Each studio is closed after its run: ipywidgets would otherwise
keep every repeat's dashboard alive, and the garbage collector's full passes over them would land in
later runs. The headline ratio is the median of the paired ratios; the best-runs ratio (best bare
rate / best studio rate: the noise of a shared machine only ever slows a run down) is printed on its
own line, and so is the drawing's share of the wall time.
Both use the thread count the engine uses (one core kept for the kernel).

It also measures the frame time of the live figure at 100 layers x 100,000 steps of history.

Ends with::

    dashboard overhead ratio: <median of the paired ratios bare steps/s / studio steps/s>
    dashboard best-runs ratio: <best bare steps/s / best studio steps/s>
    drawing share: <median %> of wall time
    frame time at 100 layers x 100,000 steps: median <ms> ms, p95 <ms> ms

With ``--breakdown``, one more studio run with timers around each piece the training thread runs
for the dashboard (frames, progress writes, probes, drift and checkpoint, the alignment probe,
publishing) and around the garbage collector's passes, printed as shares of that run's wall time
(see ``benchmarks/README.md``).

Targets on a 2-core CPU: ratio <= 1.05 (median and best runs); median and p95 frame <= 50 ms. Not a timed test.
"""

from __future__ import annotations

import argparse
import collections
import copy
import gc
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paired import interleave, ratios  # noqa: E402
from pieces import timed  # noqa: E402

from retrain_widgets import RetrainStudio, RunConfig, examples, losses  # noqa: E402
from retrain_widgets.core.alignment import AlignmentProbe  # noqa: E402
from retrain_widgets.core.checkpoint import HeavyProbes  # noqa: E402
from retrain_widgets.core.history import History  # noqa: E402
from retrain_widgets.core.params import make_optimizer  # noqa: E402
from retrain_widgets.core.probes import StepProbes  # noqa: E402
from retrain_widgets.core.telemetry import Telemetry  # noqa: E402
from retrain_widgets.core.tree import replace_head  # noqa: E402
from retrain_widgets.plots.bench import frame_times  # noqa: E402
from retrain_widgets.plots.live import LiveFigure  # noqa: E402
from retrain_widgets.widgets.bridge import Bridge  # noqa: E402
from retrain_widgets.widgets.controls import ControlsView  # noqa: E402


def bare(model, batches, cfg) -> tuple[float, float]:
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(model)
    replace_head(model, 1)
    model.train()
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(batches))
    loss_fn = losses.make("focal")
    t0 = c0 = 0.0
    for i, (x, y) in enumerate(batches):
        if i == 1:
            t0, c0 = time.perf_counter(), time.thread_time()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    n = len(batches) - 1
    return n / (time.perf_counter() - t0), n / (time.thread_time() - c0)


def studio_run(model, batches, val, old_val, cfg) -> tuple[tuple[float, float], float, str]:
    studio = RetrainStudio(model, batches, val, old_val, config=cfg.replace(max_steps=len(batches), epochs=1),
                           store=False)
    fig = studio.headless.figure
    full, partial = fig.full_redraws, fig.partial_redraws  # the opening frame's
    studio.start()
    studio.wait()
    bridge = studio.bridge
    frames = (f"{bridge.frames} frames ({fig.full_redraws - full} full redraws, the final one included; "
              f"{fig.partial_redraws - partial} partial)")
    rates = bridge.steps_per_second(), bridge.steps_per_second(cpu=True)
    share = bridge.draw_share
    studio.close()  # else every repeat's dashboard stays alive and later runs pay for collecting them
    return rates, share, frames


# (class, method, what it is): nested pieces are also inside their callers' totals
_PIECES = (
    (Bridge, "frame", "frames (snapshot, draw, PNG, Image write)"),
    (LiveFigure, "render", "  draw + PNG encode"),
    (History, "snapshot", "  history snapshots"),
    (ControlsView, "show_frame", "  Image value write (comm message)"),
    (Bridge, "_on_step", "progress: step handler"),
    (ControlsView, "show_progress", "  progress bar + label writes"),
    (StepProbes, "record", "per-step probes (loss, grad norms, LRs)"),
    (Telemetry, "publish", "publish (host copy, history, drift, PUBLISH handlers)"),
    (StepProbes, "flush", "  probes to the host"),
    (Telemetry, "record", "  history appends"),
    (HeavyProbes, "measure", "  drift + NaN-guard checkpoint"),
    (AlignmentProbe, "sample", "alignment probe samples"),
)


_GC = "garbage collector passes"


def breakdown(model, batches, val, old_val, cfg) -> None:
    """One studio run with a timer around each piece of :data:`_PIECES` (training thread only)."""
    passes = collections.Counter()
    gc_started = [0.0]
    gc_totals: collections.Counter = collections.Counter()

    def collector(phase, info):  # the garbage collector's passes that fall in the training thread
        if threading.current_thread().name != "retrain_widgets-train":
            return
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_totals[_GC] += time.perf_counter() - gc_started[0]
            gc_totals[_GC + " calls"] += 1
            passes[info["generation"]] += 1

    gc.callbacks.append(collector)
    try:
        with timed(_PIECES, thread="retrain_widgets-train") as (totals, calls):
            t0 = time.perf_counter()
            (rate, _), share, frames = studio_run(model, batches, val, old_val, cfg)
            wall = time.perf_counter() - t0
    finally:
        gc.callbacks.remove(collector)
    totals[_GC], calls[_GC] = gc_totals[_GC], gc_totals[_GC + " calls"]
    print(f"breakdown of one studio run ({wall:.1f} s from start to end, {rate:.1f} steps/s, {frames}; "
          f"shares of that wall time):")
    for label in [label for _, _, label in _PIECES] + [_GC]:
        print(f"  {label:56s} {1000 * totals[label]:8.1f} ms {100 * totals[label] / wall:5.2f} %  "
              f"({calls[label]} calls)")
    print(f"  (garbage collector passes by generation: {dict(sorted(passes.items()))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="also time each piece of one studio run")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {threads} torch thread(s), {repeats} repeats")
    task = examples.task("is_seven", batch_size=64)
    batches = list(task.train) * (4 if args.quick else 80)  # ~1,750 steps: a ~15 s run
    model = examples.pretrained_digits_cnn()
    cfg = RunConfig(loss="focal", head_out=1, lr=3e-3, schedule="cosine", device="cpu")
    bare(model, batches[:5], cfg)
    studio_run(model, batches[:5], task.val, task.old_val, cfg)
    pairs = interleave(lambda: bare(model, batches, cfg),
                       lambda: studio_run(model, batches, task.val, task.old_val, cfg), repeats)
    for b, (s, share, n) in pairs:
        print(f"bare {b[0]:.1f} steps/s, studio {s[0]:.1f} steps/s (wall ratio {b[0] / s[0]:.3f}, cpu-time ratio "
              f"{b[1] / s[1]:.3f}); {n}, drawing {100 * share:.1f} % of wall time")
    if args.breakdown:
        breakdown(model, batches, task.val, task.old_val, cfg)
    ft = frame_times(layers=100, steps=100_000, frames=10 if args.quick else 40)
    median, best = ratios([(b[0], s[0]) for b, (s, _, _) in pairs])
    cpu, _ = ratios([(b[1], s[1]) for b, (s, _, _) in pairs])
    print(f"median cpu-time ratio {cpu:.3f}")
    print(f"dashboard overhead ratio: {median:.3f}")
    print(f"dashboard best-runs ratio: {best:.3f}")
    print(f"drawing share: {100 * statistics.median(share for _, (_, share, _) in pairs):.1f} % of wall time")
    print(f"frame time at 100 layers x 100,000 steps: median {1000 * ft['median']:.1f} ms, "
          f"p95 {1000 * ft['p95']:.1f} ms ({ft['full_redraws']} full redraws, {ft['png_bytes']:,} bytes a frame)")


if __name__ == "__main__":
    main()
