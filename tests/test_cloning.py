"""clone_module makes the copy copy.deepcopy makes, for every layout the package meets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from retrain_widgets import examples
from retrain_widgets.core.cloning import clone_module


class Tied(nn.Module):
    """A shared weight, a module used twice and a plain attribute pointing at a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.embed.weight
        self.block = nn.Linear(6, 6)
        self.again = self.block
        object.__setattr__(self, "alias", self.block)  # outside _modules
        self.register_buffer("scale", torch.tensor(2.0))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.config = {"hidden": [6, 6], "name": "tied"}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.again(self.block(self.embed(ids))) * self.scale)


class OwnCopy(nn.Module):
    """A class that decides how it is copied."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.copies = 0

    def __deepcopy__(self, memo):
        new = OwnCopy()
        new.lin.load_state_dict(self.lin.state_dict())
        new.copies = self.copies + 1
        return new


def _hf_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg), {"input_ids": torch.randint(0, 40, (2, 8))}


def _hf_resnet():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    return transformers.ResNetForImageClassification(cfg).eval(), {"pixel_values": torch.rand(2, 3, 16, 16)}


def _weight_norm():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    nn.utils.parametrizations.weight_norm(net[0])
    return net, (torch.rand(3, 4),)


def _peft():
    pytest.importorskip("peft")
    from retrain_widgets.core.config import RunConfig
    from retrain_widgets.core.lora import apply_lora

    net, batch = _hf_bert()
    return apply_lora(net, RunConfig(lora_r=2, head_out=None), head="classifier"), batch


CASES = {
    "digits_cnn": lambda: (examples.pretrained_digits_cnn(), (torch.rand(2, 1, 8, 8),)),
    "resnet18_shaped": lambda: (examples.resnet18_shaped(num_classes=4, width=4, in_channels=1, small_input=True),
                                (torch.rand(2, 1, 8, 8),)),
    "tied": lambda: (Tied(), (torch.randint(0, 10, (2, 5)),)),
    "hf_bert": _hf_bert,
    "hf_resnet": _hf_resnet,
    "weight_norm": _weight_norm,
    "peft": _peft,
}


def _call(net, batch):
    with torch.no_grad():
        out = net(**batch) if isinstance(batch, dict) else net(*batch)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("case", list(CASES))
def test_the_clone_is_the_deepcopy(case):
    torch.manual_seed(0)
    net, batch = CASES[case]()
    net.train(False)
    net.get_submodule(next(n for n, m in net.named_modules() if n)).train(True)  # mixed modes are kept
    hook_calls = []
    net.register_forward_hook(lambda m, a, o: hook_calls.append(1))
    reference, clone = copy.deepcopy(net), clone_module(net)

    assert type(clone) is type(net)
    assert [(n, type(m), m.training) for n, m in clone.named_modules(remove_duplicate=False)] == \
        [(n, type(m), m.training) for n, m in reference.named_modules(remove_duplicate=False)]
    ref_state, state = reference.state_dict(keep_vars=True), clone.state_dict(keep_vars=True)
    assert list(state) == list(ref_state)
    originals = {id(t) for t in net.state_dict(keep_vars=True).values()}
    storages = {t.untyped_storage().data_ptr() for t in net.state_dict().values() if t.numel()}
    for key, tensor in state.items():
        assert type(tensor) is type(ref_state[key]) and tensor.dtype == ref_state[key].dtype
        assert torch.equal(tensor, ref_state[key]) and tensor.requires_grad == ref_state[key].requires_grad
        assert id(tensor) not in originals
        assert not tensor.numel() or tensor.untyped_storage().data_ptr() not in storages
    # sharing is kept: the same number of distinct parameters, hooks still fire
    assert len(list(clone.parameters())) == len(list(reference.parameters()))
    net.eval(), clone.eval(), reference.eval()  # no BatchNorm statistic moves in the calls below
    assert torch.equal(_call(clone, batch), _call(net, batch))
    assert len(hook_calls) == 2
    with torch.no_grad():  # the clone owns its weights: changing it leaves the original as it was
        for p in clone.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), reference.state_dict().values()))


def test_tied_weights_aliases_and_plain_attributes_stay_tied_in_the_clone():
    net = Tied()
    clone = clone_module(net)
    assert clone.out.weight is clone.embed.weight and clone.out.weight is not net.embed.weight
    assert clone.again is clone.block and clone.alias is clone.block and clone.alias is not net.block
    assert clone.config == net.config and clone.config is not net.config
    assert clone.config["hidden"] is not net.config["hidden"]
    assert "scratch" not in clone.state_dict() and torch.equal(clone.scratch, net.scratch)
    assert clone.scratch is not net.scratch


def test_a_class_with_its_own_deepcopy_is_copied_its_way():
    net = nn.Sequential(OwnCopy(), nn.Linear(3, 1))
    clone = clone_module(net)
    assert clone[0].copies == 1 and clone[1] is not net[1]
    assert torch.equal(clone[0].lin.weight, net[0].lin.weight)
