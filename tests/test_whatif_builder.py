"""The what-if builder (retrain_widgets/widgets/whatif.py): choices -> grid, the estimate, and the
widget in the Runs tab (issue 14, item 6). Its browser side: tests/browser/test_whatif_builder_browser.py."""

from __future__ import annotations

import pytest

from retrain_widgets import RetrainStudio, RunConfig, State, examples
from retrain_widgets.core.builder import count_steps
from retrain_widgets.headless import HeadlessStudio
from retrain_widgets.widgets.whatif import FIELDS, RunTimer, estimate, grid_of


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def _cfg(**kw):
    return RunConfig(**{"head_out": 1, "max_steps": 12, "loss": "bce", **kw})


def test_the_builder_offers_the_fields_of_the_issue():
    assert list(FIELDS) == ["loss", "strategy", "schedule", "lr", "lr_decay", "distill", "l2sp"]


def test_grid_from_choices():
    cfg = _cfg(distill={"alpha": 0.3, "temperature": 4.0})
    grid = grid_of({"loss": ("bce", "focal"), "strategy": ["head only", "full"], "lr": "1e-3, 3e-3",
                    "distill": "off, 0.5", "l2sp": " 0 ,0.01,", "lr_decay": "1", "schedule": "cosine"}, cfg)
    assert grid == {"loss": ["bce", "focal"], "strategy": ["head only", "full"], "lr": [1e-3, 3e-3],
                    "distill": [None, {"alpha": 0.5, "temperature": 4.0}], "l2sp": [0.0, 0.01],
                    "lr_decay": [1.0], "schedule": ["cosine"]}
    assert grid_of({"distill": "0.5"}, _cfg()) == {"distill": [{"alpha": 0.5, "temperature": 2.0}]}
    assert grid_of({"loss": ("bce", "bce")}, _cfg()) == {"loss": ["bce"]}


@pytest.mark.parametrize("choices,message", [
    ({}, "tick at least one field"),
    ({"lr": "1e-3, fast"}, r"LR: 'fast' is not a value; write numbers, e.g. 1e-3, 3e-3"),
    ({"lr": " , "}, "LR: pick at least one value"),
    ({"loss": ()}, "loss: pick at least one value"),
    ({"loss": ("bce", "nope")}, "loss: unknown 'nope'; pick from ce"),
    ({"optimizer": ("sgd",)}, "no field 'optimizer'; it offers loss, strategy"),
    ({"distill": "maybe"}, "distillation: 'maybe' is not a value"),
])
def test_bad_choices_name_the_field_and_the_fix(choices, message):
    with pytest.raises(ValueError, match=message):
        grid_of(choices, _cfg())


def test_strategy_variants_become_freezing_changes(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=_cfg(frozen=["features.0"]), store=False)
    assert s.variant_changes({"strategy": "full", "lr": 0.1}) == {"frozen": [], "gradual": False, "lr": 0.1}
    head_only = s.variant_changes({"strategy": "head only"})
    assert "classifier.3" not in head_only["frozen"] and "features" in head_only["frozen"]
    assert s.variant_changes({"strategy": "gradual"}) == {"gradual": True}  # the config's frozen kept
    custom = s.variant_changes({"strategy": "custom"})  # the custom freezing: here the config's own
    assert custom["gradual"] is False and custom.get("frozen", ["features.0"]) == ["features.0"]
    assert s.variant_changes({"loss": "focal"}) == {"loss": "focal"}
    with pytest.raises(ValueError, match="unknown training strategy 'some'"):
        s.variant_changes({"strategy": "some"})


def test_estimate_is_honest_before_any_run_and_measured_after(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=_cfg(max_steps=None, epochs=1), store=False)
    timer = RunTimer(s)
    grid = {"loss": ["bce", "focal"], "lr": [1e-3, 3e-3]}
    steps = count_steps(seven.train, s.config)
    est = estimate(s, grid, timer)
    assert (est.runs, est.steps, est.seconds) == (4, 4 * steps, None)
    assert est.text == (f"4 runs × {steps:,} steps each; no time estimate: no run has ended in this studio yet "
                        "(a finished Start measures the speed).")
    s.set(max_steps=5)
    s.start()
    s.wait(60)
    assert s.run.state == State.FINISHED
    (name, per_step), = timer.measured
    assert name == s.book.name_of(s.run) and 0 < per_step < 5
    s.set(max_steps=None)
    est = estimate(s, grid, timer)
    assert est.seconds == pytest.approx(per_step * 4 * steps)
    assert est.text.startswith(f"4 runs × {steps:,} steps each: about ") and "a step as measured on" in est.text
    with pytest.raises(ValueError, match="lr_decay"):
        estimate(s, {"lr_decay": [2.0]}, timer)  # the config refuses it before anything runs


def test_the_builder_in_the_runs_tab(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, config=_cfg(), store=False)
    b = s.runs_panel.builder
    assert b.run_button.disabled and "tick at least one field" in b.summary.value
    assert all(w.disabled for w in b.values.values())
    b.vary["loss"].value = True
    assert b.values["loss"].value == ("bce",) and not b.values["loss"].disabled  # starts from the config
    b.values["loss"].value = ("bce", "focal")
    b.vary["lr"].value = True
    assert b.values["lr"].value == "0.000333, 0.001, 0.003"
    b.values["lr"].value = "1e-3, x"
    assert b.run_button.disabled and "'x' is not a value" in b.summary.value and "#cf222e" in b.summary.value
    b.values["lr"].value = "1e-3, 2e-3"
    assert b.run_button.description == "Run 4 what-ifs" and not b.run_button.disabled
    assert "4 runs × 12 steps each; no time estimate" in b.summary.value
    b.vary["lr"].value = False
    assert b.run_button.description == "Run 2 what-ifs"
    b.run_button.click()
    s.wait(60)
    assert [r.config.loss for r in s.runs] == ["bce", "focal"]
    assert all(r.state == State.FINISHED for r in s.runs)
    assert "done: 2 of 2" in s.runs_panel.message.value
    assert "about" in b.summary.value and "a step as measured on" in b.summary.value  # measured now
    said = []
    b.say = lambda text, error=False: said.append((text, error))
    assert len(b.run()) == 2
    assert b.run() is None  # while the first queue runs: refused, and said
    assert said == [("✗ what-ifs: a run is going: stop it before starting what-ifs", True)]
    s.wait(60)
