from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, state_copy
from torch import nn

from retrain_widgets import (
    find_head,
    freeze,
    freeze_all_but,
    frozen_names,
    layer_groups,
    layer_tree,
    replace_head,
    trainable_count,
    unfreeze,
)
from retrain_widgets.core.tree import is_locked_norm


def _batches(n: int, n_in: int = 6, n_out: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(16, n_in, generator=g) * 3 + 1, torch.randint(0, n_out, (16,), generator=g)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, set_to_none: bool = True) -> None:
    model.train()
    for x, y in _batches(steps):
        opt.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# ----------------------------------------------------------------------------- tree


def test_layer_tree_counts(bnnet):
    tree = layer_tree(bnnet)
    total = sum(p.numel() for p in bnnet.parameters())
    assert tree[""].total_params == total
    assert tree[""].trainable_params == total
    assert tree["body.0"].type == "Linear"
    assert tree["body.0"].own_params == 6 * 16 + 16
    assert tree["body"].own_params == 0
    assert tree["body"].children[:2] == ("body.0", "body.1")
    assert tree["body.1"].depth == 2
    freeze(bnnet, ["body"])
    tree = layer_tree(bnnet)
    assert tree["body"].trainable_params == 0
    assert tree["body"].frozen_params == tree["body"].total_params
    assert tree[""].trainable_params == tree["head"].total_params


def test_tied_weights_counted_once():
    emb = nn.Embedding(10, 4)
    model = nn.Sequential(emb, nn.Linear(4, 10, bias=False))
    model[1].weight = emb.weight
    assert layer_tree(model)[""].total_params == 40
    assert trainable_count(model) == (40, 0)


# ----------------------------------------------------------------------------- freeze errors


def test_freeze_typo_suggests_names(bnnet):
    with pytest.raises(ValueError, match=r"no module named 'bodi'.*'body'"):
        freeze(bnnet, ["bodi"])
    with pytest.raises(ValueError, match=r"'body\.1'"):
        freeze(bnnet, "bdy.1")
    assert trainable_count(bnnet)[1] == 0  # nothing frozen by a failed call


def test_freeze_everything_is_an_error(bnnet):
    with pytest.raises(ValueError, match="no trainable parameter.*'head'"):
        freeze(bnnet, ["body", "head"])
    with pytest.raises(ValueError, match="no trainable parameter"):
        freeze(bnnet, [""])
    assert trainable_count(bnnet)[1] == 0


def test_frozen_names_and_unfreeze(bnnet):
    assert frozen_names(bnnet) == []
    freeze(bnnet, ["body.0", "body.3"])
    assert frozen_names(bnnet) == ["body.0", "body.3"]
    freeze(bnnet, "body")
    assert frozen_names(bnnet) == ["body"]
    unfreeze(bnnet, "body.3")
    assert frozen_names(bnnet) == ["body.0", "body.1", "body.4"]
    unfreeze(bnnet)
    assert frozen_names(bnnet) == []
    assert not any(is_locked_norm(m) for m in bnnet.modules())


def test_freeze_all_but_head(bnnet):
    names = freeze_all_but(bnnet, find_head(bnnet))
    assert names == ["body"]
    assert [p.requires_grad for p in bnnet.head.parameters()] == [True, True]
    assert frozen_names(bnnet) == ["body"]


# ----------------------------------------------------------------------------- frozen weights do not move


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=0.1),
    ],
    ids=["adamw", "sgd-momentum", "adam"],
)
def test_frozen_bit_identical_when_frozen_after_optimizer_has_state(bnnet, make_opt):
    opt = make_opt(bnnet.parameters())
    _train(bnnet, opt, 5)  # every parameter now has optimizer state (momentum, Adam moments)
    freeze(bnnet, ["body"])
    before = state_copy(bnnet.body)
    head_before = state_copy(bnnet.head)
    _train(bnnet, opt, 10)
    assert_same_state(bnnet.body, before)  # weights, BN affine, running stats, num_batches_tracked
    assert any(not torch.equal(head_before[k], v) for k, v in bnnet.head.state_dict().items())


def test_the_trap_exists_without_freeze_dropping_grads(bnnet):
    """Control: zeroed (not None) gradients let AdamW's decay move "frozen" weights."""
    opt = torch.optim.AdamW(bnnet.parameters(), lr=0.05, weight_decay=0.1)
    _train(bnnet, opt, 5)
    for p in bnnet.body.parameters():
        p.requires_grad_(False)  # the naive freeze: grads stay as zero tensors
    before = state_copy(bnnet.body)
    _train(bnnet, opt, 3, set_to_none=False)
    with pytest.raises(AssertionError):
        assert_same_state(bnnet.body, before)


def test_frozen_bn_stays_in_inference_mode_after_train(bnnet):
    freeze(bnnet, ["body"])
    bnnet.train()
    assert bnnet.training and bnnet.head.training
    assert not bnnet.body[1].training and not bnnet.body[4].training
    before = state_copy(bnnet.body)
    opt = torch.optim.SGD(bnnet.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    _train(bnnet, opt, 5)
    bnnet.train(True)
    assert not bnnet.body[1].training
    assert_same_state(bnnet.body, before)
    # inference mode means the running stats are used: the output does not depend on the batch
    x = torch.randn(8, 6)
    assert torch.allclose(bnnet.body(x)[:2], bnnet.body(x[:2]), atol=1e-6)


def test_naive_freeze_lets_bn_drift(bnnet):
    """Control: requires_grad=False alone still updates BatchNorm running stats in train mode."""
    for p in bnnet.body.parameters():
        p.requires_grad_(False)
    before = state_copy(bnnet.body)
    _train(bnnet, torch.optim.SGD(bnnet.head.parameters(), lr=0.1), 2)
    with pytest.raises(AssertionError):
        assert_same_state(bnnet.body, before)


def test_train_bn_true_keeps_bn_training(bnnet):
    freeze(bnnet, ["body"], train_bn=True)
    bnnet.train()
    bn = bnnet.body[1]
    assert bn.training and bn.weight.requires_grad and not bnnet.body[0].weight.requires_grad
    lin_before = bnnet.body[0].weight.detach().clone()
    bn_before = state_copy(bn)
    _train(bnnet, torch.optim.AdamW(bnnet.parameters(), lr=0.05, weight_decay=0.1), 5)
    assert torch.equal(bnnet.body[0].weight, lin_before)
    assert not torch.equal(bn.weight, bn_before["weight"])
    assert not torch.equal(bn.running_mean, bn_before["running_mean"])
    assert frozen_names(bnnet) == ["body.0", "body.3"]


def test_unfreeze_releases_bn_to_the_parents_mode(bnnet):
    freeze(bnnet, ["body"])
    bnnet.train()
    unfreeze(bnnet, ["body"])
    assert bnnet.body[1].training
    bnnet.eval()
    assert not bnnet.body[1].training
    bnnet.train()
    assert bnnet.body[1].training


def test_lock_survives_deepcopy(bnnet):
    import copy

    freeze(bnnet, ["body"])
    clone = copy.deepcopy(bnnet)
    clone.train()
    assert not clone.body[1].training
    assert bnnet.body[1].training is False  # the original is untouched by the clone's train()
    unfreeze(clone)
    clone.train()
    assert clone.body[1].training and is_locked_norm(bnnet.body[1])


def test_cnn_features_frozen_whole_run(cnn):
    freeze(cnn, ["features"])
    before = state_copy(cnn.features)
    opt = torch.optim.AdamW(cnn.parameters(), lr=0.01, weight_decay=0.1)
    cnn.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(cnn(x), y).backward()
        opt.step()
    assert_same_state(cnn.features, before)


# ----------------------------------------------------------------------------- heads


def test_replace_head_auto_and_by_name(bnnet):
    freeze(bnnet, ["head"])
    name = replace_head(bnnet, 1)
    assert name == "head"
    assert bnnet.head.out_features == 1 and bnnet.head.weight.requires_grad
    assert bnnet(torch.randn(4, 6)).shape == (4, 1)
    name = replace_head(bnnet, 5, name="body.3")
    assert name == "body.3" and bnnet.body[3].out_features == 5


def test_replace_head_errors(bnnet):
    with pytest.raises(ValueError, match="BatchNorm1d, not an nn.Linear"):
        replace_head(bnnet, 2, name="body.1")
    with pytest.raises(ValueError, match="positive whole number"):
        replace_head(bnnet, 0)
    with pytest.raises(ValueError, match="no nn.Linear"):
        replace_head(nn.Sequential(nn.Conv2d(1, 2, 3)), 2)


def test_find_head_on_cnn(cnn):
    assert find_head(cnn) == "classifier.3"


# ----------------------------------------------------------------------------- layer groups


def test_layer_groups_bnnet(bnnet):
    groups = layer_groups(bnnet)
    assert [g.name for g in groups] == ["body.0", "body.3", "head"]
    assert groups[0].modules == ("body.0", "body.1")


def test_layer_groups_cnn(cnn):
    groups = layer_groups(cnn)
    assert groups[-1].name == "classifier.3"
    assert groups[0].modules[0] == "features.0"
    assert all(not any(isinstance(dict(cnn.named_modules())[m], nn.BatchNorm2d) for m in g.modules[:1])
               for g in groups)
    covered = {m for g in groups for m in g.modules}
    owners = {n for n, m in cnn.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert owners <= covered


def test_layer_groups_resnet_shaped():
    from retrain_widgets.examples import resnet18_shaped

    groups = layer_groups(resnet18_shaped(num_classes=10))
    names = [g.name for g in groups]
    assert names == ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                     "layer4.0", "layer4.1", "fc"]
    assert groups[0].modules == ("conv1", "bn1")


def test_layer_groups_bert():
    import transformers

    cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    names = [g.name for g in layer_groups(model)]
    assert names == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler",
                     "classifier"]


def test_names_up_to(cnn):
    from retrain_widgets.core.tree import names_up_to

    assert names_up_to(cnn, "features.4") == ["features.0", "features.1", "features.3", "features.4"]
    assert names_up_to(cnn, "features") == ["features"]
    assert names_up_to(cnn, "classifier.0") == ["features", "classifier.0"]
    with pytest.raises(ValueError, match="no module named"):
        names_up_to(cnn, "featurez")
