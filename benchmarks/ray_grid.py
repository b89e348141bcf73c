"""A 4-run what-if grid: the thread runner (one run after another in this process) against
``RayExecutor`` with 2 workers on a local Ray instance.

The bundled example ("is_seven", the whole CNN trained: no frozen layers, so no feature cache makes
the runs trivial), a grid of 2 losses x 2 learning rates, ``--epochs`` epochs each. torch uses one
thread in this process and in each worker. Ray's start-up is measured once and printed on its own
line; it is not in the grid times (a kernel starts Ray once, then runs many grids).

Printed lines::

    ray start-up: X s
    ray grid speedup (4 runs): X          median of paired ratios, thread time / Ray time (ABBA order)
    ray grid best-runs speedup (4 runs): Y
    thread grid: ... s   ray grid: ... s   (each repeat)

Run: ``python benchmarks/ray_grid.py [--repeats 3] [--epochs 6]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from paired import interleave, ratios  # noqa: E402 - the benchmarks' own helper, beside this file

from retrain_widgets import RayExecutor, ThreadExecutor, examples, run_grid  # noqa: E402
from retrain_widgets.core.events import State  # noqa: E402

GRID = {"loss": ["bce", "focal"], "lr": [1e-3, 3e-3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = examples.task("is_seven")
    model = examples.pretrained_digits_cnn()
    config = task.config.replace(frozen=[], epochs=args.epochs, alignment_every=None)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")

    ray_executor = RayExecutor(num_cpus=2)
    t0 = time.perf_counter()
    ray_executor.connect()
    print(f"ray start-up: {time.perf_counter() - t0:.1f} s")

    def grid(executor) -> float:
        t = time.perf_counter()
        runs = run_grid(model, GRID, task.train, task.val, task.old_val, config=config, executor=executor)
        took = time.perf_counter() - t
        bad = [r.message for r in runs if r.state != State.FINISHED]
        if len(runs) != 4 or bad:
            raise SystemExit(f"the grid did not finish: {len(runs)} runs, {bad}")
        return took

    steps = None
    try:
        grid(ray_executor)  # warm-up: workers started, the task's code imported
        pairs = interleave(lambda: grid(ThreadExecutor()), lambda: grid(ray_executor), args.repeats)
        steps = sum(r.total_steps for r in run_grid(model, {"loss": ["bce"]}, task.train, config=config.replace(
            epochs=1)))
    finally:
        ray_executor.shutdown()
    for thread_s, ray_s in pairs:
        print(f"thread grid: {thread_s:.1f} s   ray grid: {ray_s:.1f} s")
    median, best = ratios([(1 / ray_s, 1 / thread_s) for thread_s, ray_s in pairs])
    print(f"ray grid speedup (4 runs): {median:.2f}")
    print(f"ray grid best-runs speedup (4 runs): {best:.2f}")
    print(f"({args.epochs} epochs x {steps} steps a run, {args.repeats} paired repeats; load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
