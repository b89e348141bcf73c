"""A bug in the user's own loss or forward surfaces as the user's exception, with a note."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from retrain_widgets import Retrainer, RunConfig, losses
from retrain_widgets.core.losses import LossMismatchError, check_compatibility


class ColumnError(KeyError):
    """An exception class of the user's own."""


def _loader():
    return DataLoader(TensorDataset(torch.randn(8, 6), torch.randint(0, 3, (8,))), batch_size=4)


def _notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def test_a_custom_loss_that_raises_keeps_its_exception():
    raised = []

    def exploding(o, y):
        raised.append(RuntimeError("boom"))
        raise raised[-1]

    with pytest.raises(RuntimeError, match="boom") as info:
        check_compatibility(torch.randn(8, 3, requires_grad=True), torch.randint(0, 3, (8,)), exploding)
    assert info.value is raised[0] and not isinstance(info.value, LossMismatchError)
    notes = _notes(info.value)
    assert "'exploding'" in notes and "(8, 3) float32" in notes and "(8,) int64" in notes
    assert any(frame.name == "exploding" for frame in info.traceback)


def test_a_registered_user_loss_keeps_its_exception_but_built_ins_are_mismatches():
    def picky(o, y):
        raise ColumnError("needs a 'weights' column")

    losses.register("picky_for_test", picky, overwrite=True)
    with pytest.raises(ColumnError, match="weights") as info:
        check_compatibility(torch.randn(8, 3, requires_grad=True), torch.randint(0, 3, (8,)), "picky_for_test")
    assert "the loss 'picky_for_test'" in _notes(info.value)
    # a built-in loss on unfit data is still a mismatch
    with pytest.raises(LossMismatchError):
        check_compatibility(torch.randn(8, 3, requires_grad=True), torch.randint(0, 9, (8,)), "ce")


def test_retrainer_check_surfaces_the_users_loss_and_forward_errors():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def broken_loss(o, y):
        raise ColumnError("no 'pixels'")

    r = Retrainer(model, RunConfig(loss=broken_loss, device="cpu"), _loader())
    with pytest.raises(ColumnError) as info:
        r.start()
    assert "broken_loss" in _notes(info.value) and "(4, 3) float32" in _notes(info.value)
    assert r.state.value == "idle" and r.step == 0

    def my_forward(model, batch):
        x, y = batch
        return model(x.view(4, 2, 3)), y  # a shape bug in the user's forward

    r = Retrainer(model, RunConfig(device="cpu"), _loader(), forward=my_forward)
    with pytest.raises(RuntimeError) as info:
        r.check()
    notes = _notes(info.value)
    assert "my_forward" in notes and "(4, 6) float32" in notes and "retrain_widgets" in notes


def test_the_models_own_forward_error_is_noted_and_ours_are_not():
    class Picky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            raise ColumnError("this model wants a dict")

    r = Retrainer(Picky(), RunConfig(device="cpu"), _loader())
    with pytest.raises(ColumnError) as info:
        r.check()
    assert "the model's forward" in _notes(info.value)
    # a batch layout the package cannot read is the package's own clear error, without that note
    bad = [(torch.randn(4, 6), torch.zeros(4, dtype=torch.long), torch.zeros(4))]
    r = Retrainer(nn.Linear(6, 3), RunConfig(device="cpu"), bad)
    with pytest.raises(ValueError, match="must be \\(inputs, targets\\)") as info:
        r.check()
    assert not _notes(info.value)
