"""The fix the dashboard offers for a loss that does not fit ends in a loss that fits."""

from __future__ import annotations

import pytest
import torch

from retrain_widgets import RetrainStudio, RunConfig, examples, losses
from retrain_widgets.core.losses import LossMismatchError, check_compatibility
from retrain_widgets.loss_fixes import next_fix

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


def _targets(name: str) -> torch.Tensor:
    return next(iter(examples.task(name).train))[1]


@pytest.mark.parametrize("task", ["is_seven", "digit_value", "loops"])
@pytest.mark.parametrize("width", [1, 2, 10])
def test_every_fix_offered_ends_in_a_loss_that_fits(task, width):
    targets = _targets(task)
    outputs = torch.zeros(len(targets), width)
    offered = 0
    for loss in losses.available():
        try:
            check_compatibility(outputs, targets, loss)
            continue
        except LossMismatchError as exc:
            fix = next_fix(outputs, targets, loss, {}, exc)
        if fix is None:
            continue
        offered += 1
        new_loss = fix.changes.get("loss", loss)
        new_width = fix.changes.get("head_out", width)
        assert fix.head_out is None or fix.changes == {"head_out": fix.head_out}
        check_compatibility(torch.zeros(len(targets), new_width), targets, new_loss)  # no second error
    assert offered  # each task has losses that do not fit some head, and they get a fix


def test_ce_on_a_one_logit_head_with_float_targets_is_offered_bce_not_a_dead_end():
    # the issue's chain: 'ce' on the 1-logit head -> "Replace head with 2 outputs" -> "the targets are
    # torch.float32, but 'ce' needs integer class ids", with no button
    targets = _targets("is_seven")
    one = torch.zeros(len(targets), 1)
    with pytest.raises(LossMismatchError) as info:
        check_compatibility(one, targets, "ce")
    assert info.value.head_out == 2  # what the check alone asks for: a head that would not be enough
    fix = next_fix(one, targets, "ce", {}, info.value)
    assert fix is not None and fix.changes == {"loss": "bce", "loss_kwargs": {}} and fix.label == "Use 'bce'"
    two = torch.zeros(len(targets), 2)
    with pytest.raises(LossMismatchError) as info:
        check_compatibility(two, targets, "ce")
    fix = next_fix(two, targets, "ce", {}, info.value)
    assert fix is not None and fix.changes == {"loss": "bce", "loss_kwargs": {}, "head_out": 1}


def test_the_dashboard_follows_the_current_check_start_status_fix_and_error_box():
    t = examples.task("is_seven")
    s = RetrainStudio(examples.pretrained_digits_cnn(), t.train, t.val, t.old_val,
                      config=RunConfig(loss="ce", head_out=2), store=False)
    # the check fails: Start is off, the status says what is wrong (not "ready"), the fix is offered
    assert "✗" in s.loss_check.value and s.start_button.disabled
    assert "not ready" in s.status.value and "integer class ids" in s.status.value and "#cf222e" in s.status.value
    assert "ready: pick" not in s.status.value
    assert s.replace_head_button.layout.display != "none"
    assert s.replace_head_button.description == "Use 'bce' with a head of 1 output"
    assert s.start() is None and "LossMismatchError" in s.error.value  # the API still says why
    s.set(head_out=3)  # another failing check: the refused Start's box (about 2 outputs) goes
    assert s.error.value == "" and "✗" in s.loss_check.value and s.start_button.disabled
    s.replace_head_button.click()
    assert s.config.loss == "bce" and s.config.head_out == 1 and "✓" in s.loss_check.value
    assert not s.start_button.disabled and s.status.value.count("ready: pick") == 1
    assert s.replace_head_button.layout.display == "none" and s.error.value == ""
    s.loss_picker.value = "ce"  # and back to a failing loss: Start off again
    assert s.start_button.disabled and "not ready" in s.status.value
