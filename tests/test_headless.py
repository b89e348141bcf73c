"""The headless studio in plain Python: no widgets, no kernel; its topics are what the views show."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from conftest import until as _until

from retrain_widgets import RunConfig, State, examples
from retrain_widgets.headless import HeadlessStudio, LossVerdict, Preview

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


class Recorder:
    """Every topic the studio announces, in order."""

    def __init__(self, studio: HeadlessStudio) -> None:
        self.seen: list[tuple] = []
        for topic in ("config", "work", "loss_check", "preview", "lr_find", "status", "error", "run", "run_failed",
                      "state", "plot", "reset", "queue", "queue_done", "focus"):
            studio.on(topic, lambda *args, t=topic: self.seen.append((t, *args)))

    def topics(self) -> list[str]:
        return [s[0] for s in self.seen]

    def last(self, topic: str) -> tuple:
        return next(s for s in reversed(self.seen) if s[0] == topic)[1:]


def _short(**kw):
    return RunConfig(**{"head_out": 1, "max_steps": 12, "loss": "bce", **kw})


def test_imports_no_widgets_and_no_ipython():
    code = ("import sys, retrain_widgets.headless; "
            "bad = [m for m in ('ipywidgets', 'IPython', 'traitlets', 'retrain_widgets.widgets') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_config_changes_rerun_the_checks(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=_short(), store=False)
    rec = Recorder(s)
    s.set(schedule="cosine")
    assert rec.topics() == ["config", "preview"]
    old, new = rec.last("config")
    assert old.schedule == "constant" and new.schedule == "cosine" and s.config is new
    preview = rec.last("preview")[0]
    assert isinstance(preview, Preview) and preview.png[:4] == b"\x89PNG" and "peak" in preview.note
    s.set(loss="focal")
    verdict = rec.last("loss_check")[0]
    assert isinstance(verdict, LossVerdict) and verdict.ok and "'focal' fits" in verdict.text
    with pytest.raises(ValueError, match="lr"):
        s.set(lr=-1)
    assert s.config.lr == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="RunConfig"):
        s.config = {"lr": 1e-2}
    with pytest.raises(ValueError, match="unknown studio topic"):
        s.on("nope", print)


def test_loss_mismatch_and_the_head_fix(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=RunConfig(), store=False)  # explicit: kept as given
    rec = Recorder(s)
    assert s.set(loss="focal").loss == "focal"
    verdict = rec.last("loss_check")[0]
    assert not verdict.ok and verdict.fix == 1 and "10" in verdict.text
    assert s.mismatch is not None and s.head_outputs() == 10
    s.replace_head()
    assert s.config.head_out == 1 and s.mismatch is None and rec.last("loss_check")[0].ok
    assert s.head_outputs() == 1 and "work" in rec.topics()
    assert cnn.classifier[3].out_features == 10  # the pretrained model is untouched


def test_strategies(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=_short(), store=False)
    assert s.strategy_of() == "full"
    s.set(**s.strategy_changes("head only"))
    assert s.config.frozen == ["features", "classifier.0"] and s.strategy_of() == "head only"
    assert not any(p.requires_grad for p in s.work.features.parameters())
    s.set(**s.strategy_changes("gradual"))
    assert s.config.gradual and s.strategy_of() == "gradual"
    s.set(**s.strategy_changes("full"))
    assert s.config.frozen == [] and not s.config.gradual
    with pytest.raises(ValueError, match="strategy"):
        s.strategy_changes("most")


def test_old_train_feeds_the_runs_alignment_probe(cnn, seven):
    old_train = [next(iter(seven.old_val))]  # not old_val itself: the probe must take this one
    s = HeadlessStudio(cnn, seven.train, seven.val, seven.old_val, old_train=old_train, store=False,
                       config=_short(alignment_every=4, alignment_budget=1.0))
    run = s.start()
    s.wait(60)
    assert run.state == State.FINISHED and s.old_train_loader is old_train
    assert run.alignment is not None and run.alignment.loader is old_train and run.alignment.error is None
    steps, losses = run.history.series("old_batch_loss")
    assert list(steps) == [0, 4, 8] and all(loss > 0 for loss in losses)


def test_start_wait_reset(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(), store=False)
    rec = Recorder(s)
    announced = []
    s.on("run", lambda run: announced.append(run.state))
    run = s.start()
    assert announced == [State.IDLE]  # views attach before the run starts
    history = s.wait(60)
    assert run.state == State.FINISHED and history is run.history and s.model is run.model
    assert s.runs == [run] and s.book.name_of(run).startswith("#1 bce") and s.book.key_of(run) == s.book.name_of(run)
    assert s.frozen_layers(run.model) == []
    s.reset()
    assert s.run is None and s.model is cnn
    assert rec.topics()[-6:] == ["reset", "plot", "error", "work", "state", "status"]
    assert rec.last("state") == (None,) and rec.last("error") == (None,)
    assert "reset" in rec.last("status")[0]


def test_changes_reach_a_running_run(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=_short(max_steps=None, epochs=100), store=False)
    rec = Recorder(s)
    run = s.start()
    try:
        s.set(frozen=["features"], lr=3e-3, epochs=5)
        text = rec.last("status")[0]
        assert "applied to the running run: freezing, learning rate" in text and "epochs: takes effect" in text
        deadline = time.time() + 20
        while run.model.features[0].weight.requires_grad and time.time() < deadline:
            time.sleep(0.01)
        assert not run.model.features[0].weight.requires_grad
    finally:
        s.stop()
        run.join(10)
    assert run.state == State.STOPPED and not s.busy()


def test_lr_finder_topics(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=_short(), store=False)
    rec = Recorder(s)
    result = s.find_lr(num_steps=20)
    found, png = rec.last("lr_find")
    assert found is result and png[:4] == b"\x89PNG" and s.lr_suggestion == result.suggestion
    s.use_lr_suggestion()
    assert s.config.lr == pytest.approx(min(1.0, result.suggestion))
    assert "LR finder" in rec.last("status")[0]


def test_a_refused_start_is_announced(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=RunConfig(), store=False)  # 'ce' on float 0/1 targets
    rec = Recorder(s)
    assert s.start() is None and s.run is None
    assert {"run", "run_failed", "error", "focus"} <= set(rec.topics())
    assert type(rec.last("error")[0]).__name__ == "LossMismatchError" and rec.last("focus") == ("loss",)


def test_what_if_queue_topics(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=_short(), store=False)
    rec = Recorder(s)
    configs = s.what_if({"loss": ["bce", "focal"]}, wait=True)
    assert [c.loss for c in configs] == ["bce", "focal"] and len(s.runs) == 2
    done = rec.topics().index("queue_done")
    assert rec.seen[done][1] == [s.book.key_of(r) for r in s.runs]
    assert rec.topics()[done:] == ["queue_done", "queue", "focus"]
    assert "done: 2 of 2" in rec.last("queue")[0] and rec.last("focus") == ("runs",)
    with pytest.raises(ValueError, match="needs a list"):
        s.what_if({"loss": "bce"})


def test_restore_delete_and_code_without_a_store(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=_short(lr=1e-2), store=False)
    run = s.start()
    s.wait(60)
    name = s.book.name_of(run)
    s.set(lr=1e-3)
    model = s.restore(name)
    assert s.model is model and model is not run.model and s.config.lr == pytest.approx(1e-2)
    x = next(iter(seven.val))[0]
    run.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), run.model(x))
    assert "import torch" in s.code(name) and "import torch" in s.code()
    [summary] = s.run_summaries()
    assert summary.name == name
    s.delete_run(name)
    assert s.runs == [] and s.run_summaries() == []
    with pytest.raises(ValueError, match="no run 'nope'"):
        s.restore("nope")


def test_a_new_studio_from_the_same_cell_stops_the_old_run(cnn, seven):
    a = HeadlessStudio(cnn, seven.train, config=_short(max_steps=None, epochs=100), store=False, cell="cell-1")
    run = a.start()
    other = examples.pretrained_digits_cnn()  # another model: only the cell is the same
    HeadlessStudio(other, seven.train, config=_short(), store=False, cell="cell-1")
    assert run.state == State.STOPPED


def test_a_new_studio_from_the_same_cell_stops_the_old_studios_what_ifs(cnn, seven):
    a = HeadlessStudio(cnn, seven.train, config=_short(max_steps=None, epochs=100), store=False, cell="cell-2")
    a.what_if({"lr": [1e-3, 2e-3, 3e-3]})
    assert _until(lambda: a.run is not None and a.run.step > 0)
    HeadlessStudio(examples.pretrained_digits_cnn(), seven.train, config=_short(), store=False, cell="cell-2")
    assert not a.busy() and len(a.runs) == 1 and a.runs[0].state == State.STOPPED  # no next what-if started


def test_reset_between_what_ifs_ends_the_queue_and_a_config_change_leaves_the_what_ifs_alone(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=_short(max_steps=None, epochs=100), store=False)
    rec = Recorder(s)
    s.what_if({"lr": [1e-3, 2e-3, 3e-3]})
    assert _until(lambda: s.run is not None and s.run.step > 0)
    run = s.run
    s.set(lr=5e-2, frozen=["features"])  # the studio's config: the what-if keeps its own
    assert "what-ifs are running" in rec.last("status")[0]
    time.sleep(0.3)
    assert run.optimizer.param_groups[-1]["lr"] == pytest.approx(1e-3)
    assert all(p.requires_grad for p in run.model.parameters())
    s.reset()
    assert not s.busy() and s.run is None and len(s.runs) == 1 and run.state == State.STOPPED
    time.sleep(0.3)
    assert len(s.runs) == 1 and s.run is None  # the queue's next run was never started


def test_a_new_working_copy_moves_no_random_generator(cnn, seven):
    """A seed, head or Reset makes a new working copy with the config's seed: not the process's generator,
    which the user's cells and a training run's dropout draw from."""
    s = HeadlessStudio(cnn, seven.train, config=_short(), store=False)
    state = torch.get_rng_state()
    s.set(seed=5)
    s.set(head_out=2)
    s.reset()
    assert torch.equal(torch.get_rng_state(), state)


def test_the_lr_finder_is_refused_while_a_run_trains(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=_short(max_steps=None, epochs=100), store=False)
    rec = Recorder(s)
    run = s.start()
    assert _until(lambda: run.step > 0)
    assert s.find_lr(num_steps=5) is None and "lr_find" not in rec.topics()
    assert "not while a run or what-ifs go" in rec.last("status")[0] and rec.last("status")[1]
    assert run.state == State.RUNNING
    s.stop()
    assert run.join(10)


def test_restore_is_refused_while_a_run_trains_and_works_right_after_stop(cnn, seven, tmp_path, monkeypatch):
    s = HeadlessStudio(cnn, seven.train, config=_short(max_steps=None, epochs=100), store=tmp_path / "runs")
    first = s.start()
    assert _until(lambda: first.step > 2)
    first.stop()
    assert first.join(10)
    from retrain_widgets.core.store.recorder import Recorder as StoreRecorder

    real_final = StoreRecorder.save_final  # made on the training thread after the state became "stopped"
    monkeypatch.setattr(StoreRecorder, "save_final", lambda self: (time.sleep(0.5), real_final(self))[1])
    run = s.start()
    assert _until(lambda: run.step > 2)
    lr = run.optimizer.param_groups[-1]["lr"]
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="Stop them first, then restore"):
        s.restore(s.book.key_of(first))
    assert time.monotonic() - t0 < 1.0 and s.run is run and run.state.active  # at once; nothing changed
    assert s.model is run.model and run.optimizer.param_groups[-1]["lr"] == lr
    run.stop()
    assert _until(lambda: run.state == State.STOPPED)  # its final frame and record are still being made
    model = s.restore(s.book.key_of(run))  # waits for them: its weights are stored by then
    assert s.model is model and model is not run.model


def test_the_feature_cache_state_is_announced_built_reused_off_and_refused(cnn, seven):
    from retrain_widgets.core import feature_cache

    feature_cache.clear()
    s = HeadlessStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(frozen=["features"]), store=False)
    seen: list[str] = []
    s.on("cache", seen.append)
    s.start()
    s.wait(60)
    info = s.run.history.meta["feature_cache"]
    assert info["state"] == "built" and seen[-1] == f"cache: built, {info['mb']:.1f} MB" == s.cache_state()
    s.start()
    s.wait(60)
    assert seen[-1].startswith("cache: reused, ") and seen[-1].endswith(" MB")
    s.set(cache_features=False)
    s.start()
    s.wait(60)
    assert seen[-1] == "cache: off"
    s.set(cache_features="auto", frozen=[])  # everything trains: nothing is frozen to cache
    s.start()
    s.wait(60)
    reason = s.run.history.meta["feature_cache"]["reason"]
    assert reason and seen[-1] == f"cache: refused: {reason}"
    s.reset()
    assert seen[-1] == "" and s.cache_state() == ""
