"""One run at a time: concurrent starts of an engine or a studio, starts during what-ifs, stop and
close while a queued run is being built, and an interrupt while waiting."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from conftest import SlowLoader

from retrain_widgets import RunConfig, State, examples
from retrain_widgets.core.engine import Retrainer
from retrain_widgets.core.events import Event
from retrain_widgets.core.runslot import RunBusy
from retrain_widgets.headless import HeadlessStudio

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def _together(n, fn):
    """Call ``fn()`` from ``n`` threads released at once; their results or exceptions."""
    barrier, out = threading.Barrier(n), []

    def go():
        barrier.wait()
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            out.append(exc)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_fit_from_two_threads_trains_once_with_the_right_head(cnn, seven):
    for _ in range(3):
        r = Retrainer(cnn, RunConfig(loss="bce", head_out=1, max_steps=4), SlowLoader(seven.train, 0.05),
                      seven.val, seven.old_val)
        trainers = set()
        r.on(Event.STEP_END, lambda info, trainers=trainers: trainers.add(threading.get_ident()))
        out = _together(2, r.fit)
        errors = [x for x in out if isinstance(x, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], ValueError), out
        assert "one run at a time" in str(errors[0]) or "already running" in str(errors[0])
        assert len(trainers) == 1 and r.state == State.FINISHED
        assert r.model.get_submodule(r.head_name).out_features == 1


def _studio(cnn, seven, delay=0.05, **cfg):
    config = RunConfig(loss="bce", head_out=1, **{"max_steps": 6, **cfg})
    return HeadlessStudio(cnn, SlowLoader(seven.train, delay), seven.val, config=config, store=False)


def test_studio_start_from_two_threads_starts_one_run(cnn, seven):
    s = _studio(cnn, seven)
    said = []
    s.on("status", lambda text, error: said.append((text, error)))
    out = _together(2, s.start)
    try:
        started = [x for x in out if isinstance(x, Retrainer)]
        refused = [x for x in out if isinstance(x, ValueError)]
        assert len(started) == 1 and len(refused) == 1 and len(s.runs) == 1, out
        assert any(error and "one run at a time" in text for text, error in said), said
    finally:
        s.stop()
        s.wait(30)


def test_start_during_what_ifs_is_refused_and_the_queue_runs_to_its_end(cnn, seven):
    s = _studio(cnn, seven, delay=0.01, max_steps=3)
    done = []
    s.on("queue_done", done.append)
    s.what_if({"lr": [1e-3, 2e-3, 3e-3, 4e-3]})
    refused = extra = 0
    deadline = time.monotonic() + 60
    while s.queue.alive() and time.monotonic() < deadline:
        try:
            run = s.start()
        except RunBusy:
            refused += 1
            time.sleep(0.005)
            continue
        # started: only because the queue ended between the loop's check and this start
        assert not s.queue.alive() and run is not None
        extra = 1
        break
    s.wait(60)
    assert refused > 0
    assert len(done) == 1 and len(done[0]) == 4 and len(s.runs) == 4 + extra


def test_what_if_from_two_threads_queues_once(cnn, seven):
    s = _studio(cnn, seven, delay=0.01, max_steps=2)
    out = _together(2, lambda: s.what_if({"lr": [1e-3, 2e-3]}))
    s.wait(60)
    assert sum(isinstance(x, ValueError) for x in out) == 1 and len(s.runs) == 2, out


def test_stop_right_after_what_if_stops_the_run_being_built(cnn, seven):
    s = _studio(cnn, seven, delay=0.05, max_steps=40)
    s.what_if({"lr": [1e-3, 2e-3, 3e-3]})
    s.stop()
    s.wait(60)
    assert len(s.runs) <= 1
    assert all(r.state == State.STOPPED and r.step < r.total_steps for r in s.runs), [
        (r.state, r.step) for r in s.runs]


def test_close_right_after_what_if(cnn, seven):
    from retrain_widgets import RetrainStudio

    config = RunConfig(loss="bce", head_out=1, max_steps=200)
    studio = RetrainStudio(cnn, SlowLoader(seven.train, 0.05), seven.val, config=config, store=False)
    studio.what_if({"lr": [1e-3, 2e-3]})
    studio.close(timeout=20)  # stops the queue's first run, wherever it is: no TimeoutError
    assert all(r.state == State.STOPPED for r in studio.runs)


def test_keyboard_interrupt_in_studio_wait_stops_the_run(cnn, seven):
    import _thread

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        s = _studio(cnn, seven, delay=0.02, max_steps=500)
        run = s.start()
        assert run is not None
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt, match="training stopped at step"):
            s.wait()
        assert run.state == State.STOPPED and not run.running and run.step < run.total_steps
    finally:
        signal.signal(signal.SIGINT, previous)


def test_keyboard_interrupt_in_the_dashboards_wait_stops_the_run(cnn, seven):
    import _thread

    from retrain_widgets import RetrainStudio

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        studio = RetrainStudio(cnn, SlowLoader(seven.train, 0.02), seven.val, store=False,
                               config=RunConfig(loss="bce", head_out=1, max_steps=500))
        run = studio.start()
        assert run is not None
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt, match="training stopped at step"):
            studio.wait()
        assert run.state == State.STOPPED and not run.running and run.step < run.total_steps
        studio.close()
    finally:
        signal.signal(signal.SIGINT, previous)
