"""RetrainStudio without a browser: set values, click buttons, assert on traits, config and engine."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import SlowLoader
from conftest import until as _until

from retrain_widgets import RetrainStudio, RunConfig, State, examples

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


@pytest.fixture
def studio(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=RunConfig(loss="bce", head_out=1, epochs=2))
    yield s
    if s.run is not None:  # a stopped run's thread may still draw its final frame: not into the next test
        s.run.stop()
        s.run.join(10)


def test_controls_mirror_the_config(studio):
    assert studio.loss_picker.value == "bce"
    assert studio.lr.value == pytest.approx(1e-3)
    studio.lr.value = 3e-3
    assert studio.config.lr == pytest.approx(3e-3)
    studio.schedule_picker.value = "cosine"
    assert studio.config.schedule == "cosine" and studio.config.schedule_kwargs == {}
    studio.epochs.value = 4
    assert studio.config.epochs == 4
    studio.config = RunConfig(loss="focal", loss_kwargs={"gamma": 3.0}, lr=1e-2, schedule="one_cycle",
                              optimizer="sgd", head_out=1, frozen=["features"])
    assert studio.loss_picker.value == "focal"
    assert studio.loss_params.children[0].control("gamma").value == 3.0
    assert studio.optimizer_picker.value == "sgd" and studio.schedule_picker.value == "one_cycle"
    assert studio.tree.row("features").check.value is True
    assert studio.strategy.value == "custom"


def test_loss_param_controls_update_config(studio):
    studio.loss_picker.value = "focal"
    studio.loss_params.children[0].control("gamma").value = 4.0
    assert studio.config.loss == "focal" and studio.config.loss_kwargs == {"gamma": 4.0}
    studio.loss_picker.value = "bce"
    assert studio.config.loss_kwargs == {}


def test_bad_control_value_is_a_message_not_an_exception(studio):
    editor = studio.schedule_params.children[0]
    studio.schedule_picker.value = "step"
    editor = studio.schedule_params.children[0]
    editor.control("step_size").value = "-3"
    assert "step_size" in studio.status.value and studio.config.schedule_kwargs == {}


def test_tree_freezing_reaches_the_model(studio):
    row = studio.tree.row("features")
    row.check.value = True
    assert studio.config.frozen == ["features"]
    assert studio.tree.row("features.0").check.disabled  # children follow their parent
    assert "frozen" in studio.tree.totals.value
    run = studio.start()
    assert run is not None
    run.join(30)
    assert all(not p.requires_grad for p in run.model.features.parameters())
    assert torch.equal(run.model.features[0].weight, studio.pretrained.features[0].weight)


def test_freeze_up_to_here(studio):
    studio.tree.row("features.3").upto.click()
    assert studio.config.frozen == ["features.0", "features.1", "features.3"]


def test_strategy_buttons(studio):
    studio.strategy.value = "head only"
    assert studio.config.frozen == ["features", "classifier.0"]
    studio.strategy.value = "full"
    assert studio.config.frozen == []
    studio.strategy.value = "gradual"
    assert studio.config.gradual and studio.unfreeze_every.layout.display == ""


def test_focal_on_ten_logits_shows_mismatch_and_replace_head_fixes_it(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=RunConfig())  # explicit: kept as given
    s.loss_picker.value = "focal"
    assert s.mismatch is not None and s.mismatch.head_out == 1
    assert "10" in s.loss_check.value and "✗" in s.loss_check.value
    assert s.replace_head_button.layout.display == "" and "1 output" in s.replace_head_button.description
    s.replace_head_button.click()
    assert s.config.head_out == 1 and s.mismatch is None
    assert "✓" in s.loss_check.value
    assert s.replace_head_button.layout.display == "none"
    assert "(replaced)" in s.head_label.value
    assert cnn.classifier[3].out_features == 10  # the pretrained model is untouched
    s.restore_head_button.click()
    assert s.config.head_out is None and s.mismatch is not None


def test_the_new_heads_start_is_a_choice_of_the_loss_tab(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=seven.config)
    assert s.config.head_init == "zeros" and s.head_init.value == "zeros"  # the task's suggestion
    assert s.head_init.layout.display != "none"
    head = s.headless.work.get_submodule(s.headless.head_name())
    assert not head.weight.any()  # the working copy's new head starts at zero too
    s.head_init.value = "default"
    assert s.config.head_init == "default"
    assert s.headless.work.get_submodule(s.headless.head_name()).weight.any()
    s.restore_head_button.click()  # the pretrained head: nothing to start
    assert s.head_init.layout.display == "none"
    assert cnn.classifier[3].out_features == 10 and cnn.classifier[3].weight.any()


def test_old_train_is_forwarded_to_the_headless_studio(cnn, seven):
    old_train = [next(iter(seven.old_val))]
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, old_train=old_train, store=False)
    assert s.old_train_loader is old_train and s.headless.old_train_loader is old_train


def test_schedule_preview_redraws(studio):
    before = studio.preview.value
    studio.schedule_picker.value = "cosine"
    cosine = studio.preview.value
    assert cosine != before and cosine[:8] == b"\x89PNG\r\n\x1a\n"
    studio.schedule_picker.value = "reduce_on_plateau"
    assert "Metric-driven" in studio.preview_note.value
    studio.schedule_picker.value = "cosine"
    studio.epochs.value = 5
    assert studio.preview.value != cosine


def test_start_stop_reset(studio):
    studio.epochs.value = 50
    studio.start_button.click()
    run = studio.run
    assert run is not None and run.state == State.RUNNING
    assert studio.start_button.disabled and not studio.stop_button.disabled and studio.reset_button.disabled
    assert _until(lambda: run.step > 5)
    studio.pause_button.click()
    assert _until(lambda: run.state == State.PAUSED)
    # the training thread sets the state, then fires the event the dashboard draws from: the button follows
    assert _until(lambda: studio.pause_button.description == "Resume", 5.0)
    studio.pause_button.click()
    assert _until(lambda: run.state == State.RUNNING)
    t0 = time.time()
    studio.stop_button.click()
    assert _until(lambda: run.state == State.STOPPED, 2.0), "Stop took more than 2 s"
    assert time.time() - t0 < 2.0
    assert _until(lambda: not studio.start_button.disabled)
    assert _until(lambda: "stopped" in studio.status.value)  # written just after the buttons, same thread
    assert 0 < studio.progress.value < studio.progress.max
    assert studio.plot.value[:8] == b"\x89PNG\r\n\x1a\n"
    trained = studio.model
    assert trained is run.model
    studio.reset_button.click()
    assert studio.run is None and studio.model is studio.pretrained and studio.progress.value == 0


def test_reset_start_and_restore_right_after_stop_wait_for_the_final_frame(studio, monkeypatch):
    """Stop enables Reset and Start before the training thread has drawn the final frame on the studio's
    one figure: a click then waits for that frame, never drawing on the figure at the same time."""
    figure, calls, inside = studio.headless.figure, [], []

    def watched(name, method, pause=0.0):
        def call(*args, **kwargs):
            calls.append((name, len(inside)))  # how many figure calls were going on at this one's start
            inside.append(name)
            try:
                time.sleep(pause)
                return method(*args, **kwargs)
            finally:
                inside.remove(name)
        return call

    monkeypatch.setattr(figure, "render_final", watched("final", figure.render_final, 0.5))
    monkeypatch.setattr(figure, "reset", watched("reset", figure.reset))
    monkeypatch.setattr(figure, "render", watched("render", figure.render))
    studio.epochs.value = 50
    def restore_the_first():
        studio.headless.restore(studio.headless.run_summaries()[0].name)

    for click in (studio.reset_button.click, studio.start_button.click, restore_the_first):
        studio.start_button.click()
        run = studio.run
        assert _until(lambda run=run: run.step > 2)
        studio.stop_button.click()
        assert _until(lambda: not studio.start_button.disabled)  # Reset and Start are enabled: click at once
        calls.clear()
        click()
        assert calls and all(n == 0 for _, n in calls), calls  # nothing drawn while the final frame was
        studio.stop_button.click()
        assert studio.run is None or studio.run.join(10)


def test_an_executors_what_ifs_enable_stop_and_stop_ends_them(studio):
    """An executor announces each run once it has begun (a Ray worker's, a ThreadExecutor's): the controls
    show it going, Stop stays enabled from one of the grid's runs to the next, and ends the grid."""
    from retrain_widgets.executors import ThreadExecutor

    studio.epochs.value = 50
    studio.what_if({"lr": [1e-3, 2e-3, 3e-3]}, executor=ThreadExecutor())
    assert _until(lambda: studio.bridge is not None and studio.bridge.run.state == State.RUNNING)
    first = studio.bridge
    assert _until(lambda: not studio.stop_button.disabled, 5.0), "Stop is enabled while the grid's run trains"
    assert "running" in studio.status.value and studio.start_button.disabled
    first.run.stop()  # this variant only: the grid goes on with the next
    assert _until(lambda: studio.bridge is not first and studio.bridge.run.state == State.RUNNING)
    assert not studio.stop_button.disabled
    studio.stop_button.click()  # the grid: the running variant and the one still queued
    studio.wait(30)
    assert _until(lambda: not studio.headless.busy()) and _until(lambda: studio.stop_button.disabled, 5.0)
    assert len(studio.headless.runs) == 2 and all(r.state == State.STOPPED for r in studio.headless.runs)


def test_wait_returns_history_and_plots_update(studio):
    studio.start()
    first = studio.plot.value
    history = studio.wait(60)
    assert studio.run.state == State.FINISHED
    assert len(history.series("train_loss")[0]) == studio.run.total_steps
    assert studio.plot.value != first
    assert studio.bridge.frames >= 1
    assert studio.progress.value == studio.progress.max
    assert "finished" in studio.status.value and "accuracy" in studio.status.value


def test_live_freeze_during_a_run(studio):
    studio.epochs.value = 50
    run = studio.start()
    assert _until(lambda: run.step > 3)
    studio.tree.row("features").check.value = True
    assert _until(lambda: not run.model.features[0].weight.requires_grad)
    w = run.model.features[0].weight.detach().clone()
    step = run.step
    assert _until(lambda: run.step > step + 5)
    studio.stop()
    run.join(10)
    assert torch.equal(run.model.features[0].weight, w)
    assert "applied to the running run" in studio.status.value or "froze" in str(run.history.markers)


def test_training_errors_show_in_the_widget(cnn, seven):
    def broken(model, batch):
        x, y = batch
        if model.training:
            raise RuntimeError("the data went missing")
        return model(x), y

    s = RetrainStudio(cnn, seven.train, seven.val, config=RunConfig(loss="bce", head_out=1), forward=broken)
    s.start()
    s.wait(30)
    assert s.run.state == State.FAILED
    assert "the data went missing" in s.error.value and "traceback" in s.error.value
    assert "failed" in s.status.value


def test_start_with_a_mismatch_shows_it(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, config=RunConfig())  # 'ce' on float 0/1 targets, explicit
    assert s.start() is None
    assert s.run is None and "LossMismatchError" in s.error.value
    assert s.tabs.selected_index == 1


def test_lr_finder_button(studio):
    studio.lr_find_button.click()
    assert studio.lr_find_plot.layout.display == "" and studio.lr_find_plot.value[:4] == b"\x89PNG"
    assert studio.use_lr_button.layout.display == ""
    studio.use_lr_button.click()
    assert studio.config.lr == pytest.approx(min(1.0, studio.lr_suggestion))


def test_new_studio_on_the_same_model_stops_the_old_run(cnn, seven):
    a = RetrainStudio(cnn, seven.train, config=RunConfig(loss="bce", head_out=1, epochs=100))
    run = a.start()
    assert _until(lambda: run.step > 2)
    RetrainStudio(cnn, seven.train, config=RunConfig(loss="bce", head_out=1))
    assert run.state == State.STOPPED


def test_layer_tree_of_a_big_model_opens_lazily():
    import transformers

    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    bert = transformers.BertForSequenceClassification(cfg)
    from retrain_widgets import LayerTreeView

    t0 = time.perf_counter()
    view = LayerTreeView(bert, on_change=lambda names: None)
    elapsed = time.perf_counter() - t0
    n_modules = len(list(bert.named_modules()))
    assert n_modules > 200
    assert len(view._rows) < 10  # only the top level is built
    view.row("bert.encoder.layer.11.attention.self.query")
    assert len(view._rows) < 60
    assert elapsed < 5


def test_final_figure_kept_as_static_output(studio, monkeypatch):
    updates = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "update_display", lambda obj, display_id: updates.append((obj, display_id)))
    studio.display_id = "test-id"
    studio.start()
    studio.wait(60)
    assert updates and updates[-1][1] == "test-id"
    assert updates[-1][0].data[:4] == b"\x89PNG"


def _run_coroutine(coro):
    """asyncio.run in a thread of its own: this thread may already run an event loop (Playwright's)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_wait_async(studio):
    studio.start()
    history = _run_coroutine(studio.wait_async(60))
    assert studio.run.state == State.FINISHED and history is studio.run.history
    studio.epochs.value = 100
    studio.start()
    try:
        with pytest.raises(TimeoutError):
            _run_coroutine(studio.wait_async(0.2))
    finally:
        studio.stop()
        studio.wait(10)


class _FakeRun:
    """What a Bridge reads of a Retrainer, stepped by hand."""

    def __init__(self):
        from types import SimpleNamespace

        self.handlers, self.step, self.total_steps, self.model = {}, 0, 100_000, None
        self.history = SimpleNamespace(version=0)
        self.history.snapshot = lambda: SimpleNamespace(version=self.history.version)

    def on(self, event, fn):
        self.handlers.setdefault(event, []).append(fn)

    def off(self, event, fn):
        self.handlers[event].remove(fn)

    @property
    def progress(self):
        return {"step": self.step, "total": self.total_steps, "epoch": 0, "epochs": 1, "steps_per_second": 0,
                "eta": None, "stage": 0, "stages": 1}

    def advance(self):
        from retrain_widgets.core.events import Event, EventInfo

        self.step += 1
        self.history.version += 1
        for event in (Event.STEP_END, Event.PUBLISH):
            for fn in list(self.handlers.get(event, ())):
                fn(EventInfo(event, self.step, 0))


class _FakeView:
    def __init__(self):
        self.frames = []

    def frozen_layers(self, model):
        return []

    def show_progress(self, step, total, text):
        pass

    def show_frame(self, png):
        self.frames.append(png)

    def show_state(self, run):
        pass

    def run_ended(self, run, png):
        pass


@pytest.mark.parametrize("budget,max_interval,bound", [(0.02, 4.0, "budget"), (0.001, 1.0, "max_interval")])
def test_drawing_stays_within_its_budget(budget, max_interval, bound):
    """On a fake clock (deterministic): steps of 10 ms for 4 s, each frame costs 50 ms. The first frame
    comes at once; after it, frames are spaced so drawing stays within the budget, and never further
    apart than ``max_interval`` (which wins over a tiny budget)."""
    from retrain_widgets.widgets.bridge import Bridge

    now = [0.0]

    class SlowFigure:
        def render(self, snapshot, frozen=()):
            now[0] += 0.05
            return b"png %d" % snapshot.version

        render_final = render

    run, view = _FakeRun(), _FakeView()
    b = Bridge(view, run, SlowFigure(), budget=budget, max_interval=max_interval, clock=lambda: now[0])
    drawn_at = []
    for _ in range(400):
        now[0] += 0.01
        frames = b.frames
        run.advance()
        if b.frames > frames:
            drawn_at.append(now[0])
    wall = now[0] - b.t0
    assert drawn_at[0] == pytest.approx(0.06)  # the first frame at the first publish
    assert b.frames == len(view.frames) >= 3  # live, not only the first frame
    owed = b.draw_seconds - b.first_frame_seconds
    if bound == "budget":
        assert owed <= budget * wall + 0.05 + 1e-9  # at most one frame of slack
    else:
        assert owed > budget * wall + 0.05  # the plot may not stay still longer than max_interval
    gaps = [later - earlier for earlier, later in zip(drawn_at, drawn_at[1:])]
    assert min(gaps) >= b.min_interval and max(gaps) <= max_interval + 0.05 + 0.01 + 1e-9
    assert wall - drawn_at[-1] <= max_interval + 0.01 + 1e-9


def test_cache_control_is_bound_to_the_config_and_shows_the_runs_cache(cnn, seven):
    from retrain_widgets.core import feature_cache

    feature_cache.clear()
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val,
                      config=RunConfig(loss="bce", head_out=1, max_steps=12, frozen=["features"]))
    assert s.cache.value == "auto" and s.cache_state.value == ""
    s.cache.value = False
    assert s.config.cache_features is False
    s.set(cache_features=True)
    assert s.cache.value is True
    s.cache.value = "auto"
    s.start()
    s.wait(60)
    assert _until(lambda: s.cache_state.value.startswith("cache: built, ")), s.cache_state.value
    assert s.cache_state.value.endswith(" MB")
    s.reset()
    assert s.cache_state.value == ""


def test_close_stops_the_run_and_gives_the_dashboard_back(cnn, seven):
    import gc
    import weakref

    from ipywidgets.widgets.widget import _instances

    from retrain_widgets.widgets.studio import widget_tree

    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val,
                      config=RunConfig(loss="bce", head_out=1, epochs=20), store=False)
    run = s.start()
    assert _until(lambda: run.step > 2)
    run_model, history = run.model, s.history
    ids = {w.model_id for w in widget_tree(s)}
    assert len(ids) > 100 and ids <= set(_instances)
    freed = [weakref.ref(o) for o in (s, s.headless, s.headless.figure)]
    s.close()
    assert run.state == State.STOPPED and not s.headless.busy()
    s = run = None  # the run's handlers would keep the studio
    gc.collect()
    assert [ref() for ref in freed] == [None, None, None]  # nothing keeps the dashboard alive
    assert not ids & set(_instances)
    # what the user took from it is still theirs
    assert len(history.snapshot().series("train_loss")[0]) > 2
    x, _ = next(iter(seven.val))
    assert run_model(x).shape == (len(x), 1)
    # and a studio built after it works: nothing it closed was shared
    again = RetrainStudio(cnn, seven.train, seven.val, seven.old_val,
                          config=RunConfig(loss="focal", head_out=1, max_steps=3), store=False)
    again.start()
    assert again.wait().meta["total_steps"] == 3 and again.run.state == State.FINISHED
    again.close()


def test_close_refuses_while_the_run_is_still_stopping(cnn, seven):
    from ipywidgets.widgets.widget import _instances

    s = RetrainStudio(cnn, SlowLoader(seven.train, 1.0), seven.val, seven.old_val,
                      config=RunConfig(loss="bce", head_out=1, epochs=1), store=False)
    run = s.start()
    assert _until(lambda: run.step >= 1)
    with pytest.raises(TimeoutError, match="nothing was closed: call close"):
        s.close(timeout=0.05)
    assert s.model_id in _instances and s.controls.stop_button.model_id in _instances
    s.close()
    assert run.state == State.STOPPED and s.comm is None
