"""No choice is lost, no message outlives its state, and the wording and plots say things right
(the headless studio, the widgets without a browser, and the overlay renderer)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from torch import nn

from retrain_widgets import RetrainStudio, RunConfig, State, examples
from retrain_widgets.choices import up_to_everything
from retrain_widgets.core.history import History
from retrain_widgets.headless import HeadlessStudio
from retrain_widgets.plots.comparison import comparison_figure, gradient_rows

pytestmark = pytest.mark.usefixtures("runs_in_tmp")

CUSTOM = ["features.0", "features.1", "features.3", "features.4"]
EVERYTHING = ["features", "classifier"]


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def _grads(model: nn.Module) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


@pytest.fixture
def studio(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, store=False,
                      config=RunConfig(loss="bce", head_out=1, max_steps=12, frozen=CUSTOM))
    yield s
    if s.run is not None and s.run.state.active:
        s.run.stop()
        s.run.join(10)


# ---------------------------------------------------------------------------- 1. no choice is lost
def test_a_refused_freeze_changes_nothing_and_says_why(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=RunConfig(loss="bce", head_out=1, frozen=CUSTOM), store=False)
    before, grads = s.config, _grads(s.work)
    seen = []
    s.on("config", lambda old, new: seen.append("config"))
    s.on("work", lambda: seen.append("work"))
    with pytest.raises(ValueError, match="no trainable parameter"):
        s.set(frozen=EVERYTHING)
    with pytest.raises(ValueError, match="no_such_layer"):
        s.set(frozen=["no_such_layer"])
    with pytest.raises(ValueError, match="no trainable parameter"):  # with a new head too
        s.set(frozen=EVERYTHING, head_out=3)
    assert s.config is before and _grads(s.work) == grads and s.head_outputs() == 1 and seen == []
    assert s.strategy_of() == "custom"


def test_strategies_keep_the_custom_freezing(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=RunConfig(loss="bce", head_out=1, frozen=CUSTOM), store=False)
    for strategy, frozen in (("head only", ["features", "classifier.0"]), ("full", []), ("custom", CUSTOM),
                             ("gradual", CUSTOM), ("full", []), ("custom", CUSTOM)):
        s.choose_strategy(strategy)
        assert s.strategy_of() == strategy and s.config.frozen == frozen, strategy
        assert s.config.gradual == (strategy == "gradual")
    s.set(frozen=["features"])  # a new custom choice is the one given back
    s.choose_strategy("head only")
    s.choose_strategy("custom")
    assert s.config.frozen == ["features"]
    s.set(frozen=[])  # "custom" picked: it stays custom with nothing ticked, no jump to "full"
    assert s.strategy_of() == "custom"
    s.config = RunConfig(loss="bce", head_out=1)  # a whole config: the buttons show what it amounts to
    assert s.strategy_of() == "full"


def test_a_strategy_that_cannot_apply_is_refused(seven):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())  # no Linear head: "head only" would freeze all
    s = HeadlessStudio(model, seven.train, config=RunConfig(loss="mse"), store=False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        s.choose_strategy("head only")
    assert s.config.frozen == [] and s.strategy_of() == "full" and s.strategies.picked is None
    assert all(_grads(s.work))


def test_up_to_here_is_not_offered_where_it_would_freeze_everything(cnn):
    assert up_to_everything(cnn) == {"", "classifier", "classifier.3"}
    flat = nn.Linear(2, 2)
    assert up_to_everything(flat) == {""}


def test_the_tree_offers_only_what_can_succeed_and_a_refusal_keeps_the_boxes(studio):
    tree = studio.tree
    assert tree.row("classifier.3").upto.layout.display == "none"
    assert tree.row("classifier").upto.layout.display == "none"
    assert tree.row("classifier.0").upto.layout.display is None
    assert tree.row("features.3").upto.layout.display is None
    head_only = studio.headless.strategy_changes("head only")["frozen"]
    studio.strategy.value = "head only"
    assert studio.config.frozen == head_only
    assert tree.row("classifier.3").check.disabled  # ticking the head would leave nothing to train
    assert "no trainable" in tree.row("classifier.3").check.tooltip
    studio.strategy.value = "custom"
    assert studio.config.frozen == CUSTOM and studio.strategy.value == "custom"
    assert not tree.row("classifier").check.disabled
    tree.row("features").check.value = True
    assert studio.config.frozen == ["features"]
    assert tree.row("classifier").check.disabled and not tree.row("classifier").check.value
    totals = tree.totals.value
    tree.row("classifier").check.value = True  # what a stale front end could still send: refused
    assert studio.config.frozen == ["features"] and not tree.row("classifier").check.value
    assert tree.totals.value == totals and studio.strategy.value == "custom"
    assert "no trainable parameter" in studio.status.value and "#cf222e" in studio.status.value
    tree.unfreeze_all.click()  # a change taken: the red status goes
    assert studio.config.frozen == [] and "#cf222e" not in studio.status.value
    assert "ready" in studio.status.value


def test_a_refused_lora_toggle_goes_back(studio):
    studio.strategy.value = "gradual"
    row = studio.tree.row("features.0")
    row.lora.value = True  # LoRA and gradual unfreezing exclude each other
    assert studio.config.lora_r is None and not row.lora.value and "LoRA" not in studio.tree.totals.value
    assert "gradual" in studio.status.value and studio.strategy.value == "gradual"
    studio.strategy.value = "custom"
    row.lora.value = True
    assert studio.config.lora_modules == ["features.0"] and row.lora.value


def test_a_bad_value_keeps_the_previous_one(studio):
    studio.schedule_picker.value = "step"
    editor = studio.schedule_params.children[0]
    editor.control("step_size").value = "-3"
    assert studio.config.schedule_kwargs == {} and "step_size" in studio.status.value
    studio.lr.value = 3e-3  # the next change taken clears the refusal
    assert "#cf222e" not in studio.status.value


# ---------------------------------------------------------------------------- 2. messages belong to a state
def test_the_mismatch_panel_goes_when_the_loss_fits(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, store=False, config=RunConfig(loss="focal", max_steps=5))
    assert s.start() is None
    assert "LossMismatchError" in s.error.value and s.tabs.selected_index == 1
    s.set(lr=3e-3)  # the mismatch still holds: it stays
    assert "LossMismatchError" in s.error.value
    s.replace_head_button.click()
    assert s.error.value == "" and "✓" in s.loss_check.value
    assert "1 output (replaced)" in s.head_label.value


def test_no_eta_once_a_run_ended_and_the_state_is_said_once(studio):
    studio.start()
    studio.wait(60)
    assert studio.run.state == State.FINISHED
    assert "ETA" not in studio.progress_label.value and "step 12 / 12" in studio.progress_label.value
    assert "<b>finished</b> after 12 steps." in studio.status.value and "finished." not in studio.status.value
    studio.set(max_steps=2000)
    run = studio.start()
    run.stop()
    run.join(30)
    studio.controls.show_state(run)
    assert "ETA" not in studio.progress_label.value
    assert f"<b>stopped</b> at step {run.step:,} of" in studio.status.value
    paused = SimpleNamespace(state=State.PAUSED, step=3, total_steps=9, history=History(), error=None)
    studio.controls.show_state(paused)
    assert "<b>paused</b>: Resume to continue, or Stop." in studio.status.value


def test_show_code_and_the_overlay_are_one_view_at_a_time(studio):
    studio.start()
    studio.wait(60)
    panel = studio.runs_panel
    panel.refresh()
    panel.select.value = tuple(k for _, k in panel.select.options)
    panel.code_button.click()
    assert panel.code.layout.display != "none" and panel.figure.layout.display == "none"
    panel.overlay_button.click()
    assert panel.figure.layout.display != "none" and panel.code.layout.display == "none"
    panel.code_button.click()
    assert panel.code.layout.display != "none" and panel.figure.layout.display == "none"


# ---------------------------------------------------------------------------- 8. wording and the overlay
def _summary(name: str, frozen: int, n: int = 4) -> SimpleNamespace:
    g = np.random.default_rng(0).random((5, n)) + 0.1
    g[:, :frozen] = np.nan  # frozen layers: no gradient at all
    history = SimpleNamespace(layer_series=lambda _: (np.arange(5), [f"layer{i}" for i in range(n)], g),
                              series=lambda _: (np.arange(5), np.linspace(1, 0.5, 5)))
    return SimpleNamespace(name=name, metrics={"metric": "accuracy"}, history=history)


def test_the_gradient_panel_lists_only_layers_with_data():
    a, b = _summary("frozen two", frozen=2), _summary("frozen one", frozen=1)
    names, grads = gradient_rows([a, b])
    assert names == ["layer1", "layer2", "layer3"] and "layer1" not in grads[0] and "layer1" in grads[1]
    fig = comparison_figure([a, b])
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert labels == ["layer1", "layer2", "layer3"]


@pytest.mark.parametrize("runs", [2, 7])
def test_overlay_legends_fit_the_figure(runs):
    names = [f"#{i} focal_multiclass · frozen features.0, features.1, features.3 · lr 0.00159 · cosine_warmup"
             for i in range(runs)]
    fig = comparison_figure([_summary(n, frozen=1) for n in names])
    renderer = fig.canvas.get_renderer()
    box = fig.legends[0].get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    assert max(t.y1 for t in titles) <= box.y0 + 1  # the panels' titles are under the legend


def test_weight_decay_label_is_not_cut(studio):
    assert studio.weight_decay.style.description_width == "initial"

