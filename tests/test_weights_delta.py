"""Runs stored as what they changed against the pretrained weights, restored bit for bit."""

from __future__ import annotations

import pytest
import torch

from retrain_widgets.core import Retrainer, RunConfig, fingerprint
from retrain_widgets.core.weights_delta import (
    delta_state,
    is_delta,
    load_weights,
    restore_state,
    save_weights,
)
from retrain_widgets.examples import pretrained_digits_cnn, task


def _bits(state):
    return {k: (v.dtype, tuple(v.shape), v.reshape(-1).contiguous().view(torch.uint8).tolist()
                if v.dtype != torch.bool and v.numel() else v.tolist()) for k, v in state.items()}


@pytest.fixture(scope="module")
def head_run():
    t = task("is_seven", batch_size=64)
    run = Retrainer(pretrained_digits_cnn(), RunConfig(loss="bce", head_out=1, frozen=["features"], epochs=1,
                                                       device="cpu"), t.train)
    run.fit()
    return run


def test_head_only_run_stores_only_the_head_and_restores_bit_for_bit(head_run, tmp_path):
    pretrained = head_run.pretrained
    delta = delta_state(head_run.model, pretrained, fingerprint(pretrained))
    assert is_delta(delta)
    assert set(delta["changed"]) == {"classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                                     "classifier.3.bias"}
    full = save_weights(tmp_path / "full.pt", head_run.model)
    small = save_weights(tmp_path / "delta.pt", head_run.model, pretrained)
    assert small < full / 3
    restored = load_weights(tmp_path / "delta.pt", pretrained)
    assert list(restored) == list(head_run.model.state_dict())
    assert _bits(restored) == _bits(head_run.model.state_dict())
    assert _bits(load_weights(tmp_path / "full.pt")) == _bits(head_run.model.state_dict())
    restored["features.0.weight"].add_(1.0)  # a copy: the pretrained model is untouched
    assert not torch.equal(restored["features.0.weight"], pretrained.state_dict()["features.0.weight"])


def test_sign_of_zero_and_nan_payloads_are_kept():
    base = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([float("nan"), 2.0]), "n": torch.tensor(3)}
    trained = {"a": torch.tensor([-0.0, 1.0]), "b": torch.tensor([float("nan"), 2.0]), "n": torch.tensor(3),
               "new": torch.ones(2, dtype=torch.bool)}
    delta = delta_state(trained, base, "fp")
    assert set(delta["changed"]) == {"a", "new"}  # -0.0 differs by its bits; the same NaN does not
    assert _bits(restore_state(delta, base, "fp")) == _bits(trained)


def test_delta_needs_the_pretrained_model_it_was_made_against(head_run, tmp_path):
    path = tmp_path / "delta.pt"
    save_weights(path, head_run.model, head_run.pretrained)
    with pytest.raises(ValueError, match="pass that model"):
        load_weights(path)
    other = pretrained_digits_cnn()
    with torch.no_grad():
        other.features[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="stored against the pretrained model"):
        load_weights(path, other)
    with pytest.raises(ValueError, match="lacks"):
        restore_state(delta_state(head_run.model, head_run.pretrained, "x"), {})
