"""Thread races of issue 26, tried N times each: count double runs and wrong outcomes.

Races: ``Retrainer.fit()`` from two threads; ``studio.start()`` from two threads; ``start()`` while a
what-if queue runs; ``stop()`` and ``close()`` right after ``what_if()``. Each trial uses a loader whose
batches take a little time, so that the second caller lands while the first is checking its batch.

Run: ``.venv/bin/python scripts/race_trials.py [N]`` (N = 20 by default). Prints one line per race:
trials, double runs, other failures; exits 1 when any trial went wrong.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import SlowLoader  # noqa: E402

from retrain_widgets import RetrainStudio, RunConfig, State, examples  # noqa: E402
from retrain_widgets.core.engine import Retrainer  # noqa: E402
from retrain_widgets.core.events import Event  # noqa: E402
from retrain_widgets.core.runslot import RunBusy  # noqa: E402
from retrain_widgets.headless import HeadlessStudio  # noqa: E402


def together(n, fn):
    barrier, out = threading.Barrier(n), []

    def go():
        barrier.wait()
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - counted
            out.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def fit_twice(model, task):
    r = Retrainer(model, RunConfig(loss="bce", head_out=1, max_steps=3), SlowLoader(task.train, 0.02),
                  task.val, task.old_val)
    trainers: set[int] = set()
    r.on(Event.STEP_END, lambda info: trainers.add(threading.get_ident()))
    out = together(2, r.fit)
    errors = [x for x in out if isinstance(x, Exception)]
    head = r.model.get_submodule(r.head_name).out_features
    double = len(trainers) > 1
    wrong = (len(errors) != 1 or not isinstance(errors[0], ValueError) or head != 1
             or r.state != State.FINISHED)
    return double, wrong


def studio(model, task, **cfg):
    config = RunConfig(loss="bce", head_out=1, **{"max_steps": 3, **cfg})
    return HeadlessStudio(model, SlowLoader(task.train, 0.02), task.val, config=config, store=False)


def start_twice(model, task):
    s = studio(model, task)
    out = together(2, s.start)
    s.wait(60)
    started = [x for x in out if isinstance(x, Retrainer)]
    refused = [x for x in out if isinstance(x, RunBusy)]
    return len(started) > 1 or len(s.runs) > 1, len(started) != 1 or len(refused) != 1


def start_during_queue(model, task):
    s = studio(model, task, max_steps=2)
    done: list = []
    s.on("queue_done", done.append)
    s.what_if({"lr": [1e-3, 2e-3, 3e-3]})
    extra = 0
    while s.queue.alive():
        try:
            extra += s.start() is not None
        except RunBusy:
            pass
        time.sleep(0.005)
    s.wait(60)
    return extra > 0, len(done) != 1 or len(done[0]) != 3 or len(s.runs) != 3


def stop_after_what_if(model, task):
    s = studio(model, task, max_steps=50)
    s.what_if({"lr": [1e-3, 2e-3]})
    s.stop()
    s.wait(60)
    trained_on = any(r.state != State.STOPPED or r.step >= r.total_steps for r in s.runs)
    return len(s.runs) > 1, trained_on


def close_after_what_if(model, task):
    config = RunConfig(loss="bce", head_out=1, max_steps=200)
    st = RetrainStudio(model, SlowLoader(task.train, 0.02), task.val, config=config, store=False)
    st.what_if({"lr": [1e-3, 2e-3]})
    try:
        st.close(timeout=20)
    except TimeoutError:
        return False, True
    return len(st.runs) > 1, any(r.state != State.STOPPED for r in st.runs)


RACES = {"Retrainer.fit() from two threads": fit_twice, "studio.start() from two threads": start_twice,
         "studio.start() during what-ifs": start_during_queue, "stop() right after what_if()": stop_after_what_if,
         "close() right after what_if()": close_after_what_if}


def main(n: int = 20) -> int:
    torch.set_num_threads(1)
    task = examples.task("is_seven", batch_size=64)
    model = examples.pretrained_digits_cnn()
    bad = 0
    for title, race in RACES.items():
        doubles = wrongs = 0
        t0 = time.perf_counter()
        for _ in range(n):
            double, wrong = race(model, task)
            doubles += double
            wrongs += wrong
        bad += doubles + wrongs
        print(f"{title:36s} trials {n:3d}  double runs {doubles:2d}  other failures {wrongs:2d}  "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        import os

        os.chdir(folder)
        sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
