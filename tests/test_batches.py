from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from retrain_widgets import default_forward, logits_of, split_batch
from retrain_widgets.core.batches import to_device


def test_tuple_and_dict_batches():
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    assert split_batch((x, y)) == ((x,), {}, y)
    assert split_batch([x, y])[2] is y
    args, kwargs, t = split_batch({"input_ids": x, "attention_mask": x, "labels": y})
    assert args == () and set(kwargs) == {"input_ids", "attention_mask"} and t is y


def test_bad_batches_explain_forward():
    with pytest.raises(ValueError, match="under 'labels'.*forward="):
        split_batch({"x": 1, "y": 2})
    with pytest.raises(ValueError, match="3 elements.*forward="):
        split_batch((1, 2, 3))
    with pytest.raises(ValueError, match="type int"):
        split_batch(5)


def test_logits_of_variants():
    t = torch.randn(2, 3)
    assert logits_of(t) is t
    assert logits_of(SimpleNamespace(logits=t)) is t
    assert logits_of({"logits": t, "loss": None}) is t
    assert logits_of((t, "hidden")) is t
    with pytest.raises(ValueError, match="cannot find the predictions"):
        logits_of("nope")


def test_default_forward_with_kwargs_model():
    class M(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=input_ids.float() * attention_mask)

    out, t = default_forward(M(), {"input_ids": torch.ones(2, 3), "attention_mask": torch.ones(2, 3), "labels": 7})
    assert out.shape == (2, 3) and t == 7


def test_to_device_nested():
    b = {"a": (torch.ones(1), [torch.zeros(1)]), "n": 3}
    out = to_device(b, "cpu")
    assert out["n"] == 3 and isinstance(out["a"], tuple) and isinstance(out["a"][1], list)
