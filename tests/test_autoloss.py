"""The short form opens ready to start: a fitting loss chosen at open when no config was given."""

from __future__ import annotations

import pytest
import torch

from retrain_widgets import RetrainStudio, RunConfig, examples
from retrain_widgets.autoloss import LossChoice, choose_loss
from retrain_widgets.headless import HeadlessStudio

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


def test_choose_loss_by_the_targets():
    ten = torch.zeros(8, 10)
    binary = choose_loss(ten, torch.tensor([0.0, 1.0] * 4), "ce")
    assert (binary.loss, binary.head_out) == ("bce", 1) and "binary" in binary.reason
    regression = choose_loss(ten, torch.arange(8, dtype=torch.float32) * 1.5, "ce")
    assert (regression.loss, regression.head_out) == ("mse", 1) and "regression" in regression.reason
    ids = choose_loss(ten, torch.tensor([0, 3, 12, 1, 0, 0, 0, 0]), "ce")
    assert (ids.loss, ids.head_out) == ("ce", 13) and "up to 12" in ids.reason
    multi = choose_loss(ten, torch.zeros(8, 4), "ce")
    assert (multi.loss, multi.head_out) == ("bce", 4)
    assert choose_loss(torch.zeros(8, 1), torch.tensor([0.0, 1.0] * 4), "ce").head_out is None  # head fits
    assert choose_loss(ten, torch.tensor([0, 3, 9, 1, 0, 0, 0, 0]), "ce") is None  # 'ce' fits
    assert choose_loss(ten, ["not", "a", "tensor"] * 3, "ce") is None
    note = LossChoice("bce", 1, "why").note
    assert note.startswith("Chosen at open: 'bce' with a new head of 1 output, because why.")


@pytest.mark.parametrize(("name", "loss"), [("is_seven", "bce"), ("digit_value", "mse")])
def test_the_short_form_opens_with_a_fitting_loss_and_starts(cnn, name, loss):
    task = examples.task(name)
    s = HeadlessStudio(cnn, task.train, task.val, task.old_val, store=False)
    assert (s.config.loss, s.config.head_out, s.mismatch) == (loss, 1, None)
    assert s.loss_choice is not None and s.loss_choice.loss == loss and "'ce' does not fit" in s.loss_choice.note
    verdicts = []
    s.on("loss_check", verdicts.append)
    s.check_loss()
    assert verdicts[-1].ok and verdicts[-1].text.startswith(f"'{loss}' fits: outputs (64, 1)")
    s.set(max_steps=2)
    run = s.start()
    assert run is not None
    run.join(60)
    assert run.state.value == "finished" and s.runs == [run]


def test_the_default_loss_is_kept_when_it_fits(cnn):
    task = examples.task("loops")
    s = HeadlessStudio(cnn, task.train, task.val, task.old_val, store=False)
    assert (s.config.loss, s.config.head_out, s.loss_choice, s.mismatch) == ("ce", None, None, None)


def test_an_explicit_config_is_kept_and_checked(cnn):
    task = examples.task("is_seven")
    s = HeadlessStudio(cnn, task.train, task.val, task.old_val, config=RunConfig(), store=False)
    assert (s.config.loss, s.config.head_out, s.loss_choice) == ("ce", None, None)
    assert s.check_loss() is not None  # the mismatch stays red for an explicit bad config


def test_the_loss_tab_says_what_was_chosen_and_why(cnn):
    task = examples.task("is_seven")
    studio = RetrainStudio(cnn, task.train, task.val, task.old_val, store=False)
    note = studio.loss_tab.loss_choice
    assert studio.loss_tab.loss_picker.value == "bce" and studio.loss_choice.loss == "bce"
    assert "Chosen at open: 'bce'" in note.value and note.layout.display != "none"
    assert "✓ 'bce' fits" in studio.loss_tab.loss_check.value
    studio.set(loss="focal")  # the user's own choice: the note no longer describes the config
    assert note.layout.display == "none"
    explicit = RetrainStudio(cnn, task.train, task.val, task.old_val, config=RunConfig(), store=False)
    assert explicit.loss_tab.loss_choice.layout.display == "none"
    assert "✗" in explicit.loss_tab.loss_check.value
