"""Architectures no one here wrote: Hugging Face vision and text classes from tiny configs, and
models shaped like timm's / torchvision's ViT and CLIP, whose root (or encoder) holds parameters.
The real torchvision and timm classes are tested in tests/vision/ (their own venv: see ./dev)."""

from __future__ import annotations

import pytest
import torch
import zoo
from conftest import assert_same_state, state_copy
from torch import nn

from retrain_widgets import Retrainer, RunConfig
from retrain_widgets.core.params import param_groups
from retrain_widgets.core.tree import (
    find_head,
    freeze,
    freeze_all_but,
    frozen_complement,
    frozen_names,
    held_parameters,
    layer_groups,
    layer_tree,
    matcher_groups,
    names_up_to,
    parameters_of,
    trainable_count,
    unfreeze,
)

HEADS = {"resnet": "classifier.1", "convnext": "classifier", "mobilenet_v2": "classifier", "swin": "classifier",
         "vit": "classifier", "bert": "classifier", "distilbert": "classifier", "roberta": "classifier.out_proj",
         "gpt2": "score", "gpt2_lm": "lm_head", "timm_like_vit": "head", "plain_vit": "head",
         "torchvision_like_vit": "heads.head", "clip_like": "head"}


@pytest.fixture(scope="module", params=zoo.ALL)
def family(request):
    return request.param, zoo.build(request.param)


def _group_ids(model: nn.Module) -> list[list[int]]:
    return [[id(p) for n in g.modules for _, _, p in parameters_of(model, "" if n == "(model)" else n)]
            for g in layer_groups(model)]


def test_layer_groups_cover_every_parameter_exactly_once(family):
    kind, model = family
    ids = [i for group in _group_ids(model) for i in group]
    assert sorted(ids) == sorted({id(p) for p in model.parameters()}), kind
    assert len(ids) == len(set(ids)), f"{kind}: a parameter is in two groups"
    groups = layer_groups(model)
    assert len(groups) >= 3, f"{kind}: {[g.name for g in groups]}"
    # the optimizer's groups follow them: nothing lands in a catch-all
    names = {g["layer_group"] for g in param_groups(model, RunConfig())}
    assert "(other)" not in names and names == {g.name for g in groups}


def test_head_is_found_and_head_only_freezes_everything_else(family):
    kind, model = family
    head = find_head(model)
    assert head == HEADS[kind]
    work = _copy(model)
    names = freeze_all_but(work, head)
    head_ids = {id(p) for p in work.get_submodule(head).parameters()}
    trainable = [p for p in work.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == head_ids, f"{kind}: trainable outside the head"
    for name in zoo.held_by_hand(kind):
        assert not work.get_parameter(name).requires_grad
    assert frozen_names(work) == names or set(frozen_names(work)) >= set(names)
    assert trainable_count(work)[0] == sum(p.numel() for p in trainable)


def test_held_parameters_are_tree_nodes_with_counts(family):
    kind, model = family
    tree = layer_tree(model)
    held = held_parameters(model)
    assert set(zoo.held_by_hand(kind)) <= set(held)
    for name in held:
        p = model.get_parameter(name)
        info = tree[name]
        assert info.kind == "parameter" and info.total_params == p.numel() and info.shape == tuple(p.shape)
        parent = name.rpartition(".")[0]
        assert name in tree[parent].children
        assert tree[parent].children.index(name) < len(held) or True
    # the root's counts still add up (held parameters are in their holder's totals once)
    assert tree[""].total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["timm_like_vit", "plain_vit", "torchvision_like_vit", "clip_like", "vit"])
def test_held_parameters_freeze_and_unfreeze_by_name(kind):
    model = zoo.build(kind)
    names = zoo.held_by_hand(kind)
    freeze(model, names)
    assert all(not model.get_parameter(n).requires_grad for n in names)
    assert set(names) <= set(frozen_names(model))
    tree = layer_tree(model)
    assert all(tree[n].trainable_params == 0 for n in names)
    unfreeze(model, names)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"no module named 'cls_tokn'.*'cls_token'"):
        freeze(zoo.build("timm_like_vit"), ["cls_tokn"])


def test_held_parameters_join_the_input_side_group():
    plain = layer_groups(zoo.build("plain_vit"))
    assert plain[0].modules == ("cls_token", "pos_embed", "patch_embed")
    assert [g.name for g in plain[1:]] == ["blocks.0", "blocks.1", "head"]
    assert plain[-2].modules == ("blocks.1", "norm")
    tv = layer_groups(zoo.build("torchvision_like_vit"))
    assert tv[0].modules == ("class_token", "conv_proj", "encoder.pos_embedding")  # the input side, with the stem
    assert tv[1].modules == ("encoder.layers.0",)
    clip = layer_groups(zoo.build("clip_like"))  # held after the towers: still the input side
    assert clip[0].modules[0] == "logit_scale"


def test_timm_group_matcher_is_used():
    model = zoo.build("timm_like_vit")
    groups = layer_groups(model)
    assert groups == matcher_groups(model)
    # timm's stem, one group per block with the final norm joining the last (MATCH_PREV_GROUP), head last
    assert [g.modules for g in groups] == [("cls_token", "pos_embed", "patch_embed"), ("blocks.0",),
                                           ("blocks.1", "norm"), ("head",)]
    # its no_weight_decay() is honoured
    cfg = RunConfig(weight_decay=0.1)
    decayed = {id(p) for g in param_groups(model, cfg) if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.cls_token) not in decayed and id(model.pos_embed) not in decayed
    assert id(model.patch_embed.proj.weight) in decayed


def test_freeze_up_to_here_covers_held_parameters():
    model = zoo.build("plain_vit")
    assert names_up_to(model, "blocks.0") == ["cls_token", "pos_embed", "patch_embed", "blocks.0"]
    assert names_up_to(model, "pos_embed") == ["cls_token", "pos_embed"]
    tv = zoo.build("torchvision_like_vit")
    assert names_up_to(tv, "encoder.layers.0") == ["class_token", "conv_proj", "encoder.pos_embedding",
                                                    "encoder.layers.0"]
    assert frozen_complement(tv, ["heads.head"]) == ["class_token", "conv_proj", "encoder"]


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize("kind", zoo.ALL)
def test_head_only_run_keeps_every_frozen_parameter_bit_identical(kind):
    model = zoo.build(kind)
    head = HEADS[kind]
    new_head = kind not in ("gpt2_lm",) and zoo.ALL.index(kind) % 2 == 0  # new head on half of them
    lm = kind == "gpt2_lm"
    cfg = RunConfig(frozen=frozen_complement(model, [head]), head_out=4 if new_head else None, lr=1e-2,
                    epochs=1, max_steps=2, device="cpu", loss="ce")
    data = zoo.loader(kind)
    forward = _lm_forward if lm else None
    r = Retrainer(model, cfg, data, forward=forward)
    head_ids = {id(p) for p in r.model.get_submodule(head).parameters()}
    before = {n: p.detach().clone() for n, p in r.model.named_parameters() if id(p) not in head_ids}
    start = {n: p.detach().clone() for n, p in r.model.named_parameters() if id(p) in head_ids}
    buffers = {n: b.clone() for n, b in r.model.named_buffers()}
    r.fit()
    moved = [n for n, p in r.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert not moved, f"{kind}: frozen parameters moved: {moved}"
    assert any(not torch.equal(p, start[n]) for n, p in r.model.named_parameters() if n in start), "head did not train"
    assert all(torch.equal(b, buffers[n]) for n, b in r.model.named_buffers()), f"{kind}: frozen BN drifted"


def _lm_forward(model: nn.Module, batch):
    """Next-token prediction: logits (N, L-1, V) -> (N, V, L-1) for cross entropy."""
    x, _ = batch
    return model(x[:, :-1]).logits.transpose(1, 2), x[:, 1:]


@pytest.mark.parametrize("kind", ["plain_vit", "timm_like_vit", "torchvision_like_vit", "vit", "bert"])
def test_gradual_unfreezing_reaches_the_held_parameters_last(kind):
    model = zoo.build(kind)
    n = len(layer_groups(model))
    cfg = RunConfig(gradual=True, unfreeze_every=1, epochs=n, max_steps=n, device="cpu")
    r = Retrainer(model, cfg, zoo.loader(kind, n=8))
    first = r.groups[0]
    held = [m for m in first.modules if m in held_parameters(r.model)] or list(zoo.held_by_hand(kind))
    assert all(not p.requires_grad for m in first.modules for _, _, p in parameters_of(r.model, m))
    top = {id(p) for m in r.groups[-1].modules for _, _, p in parameters_of(r.model, m)}
    assert {id(p) for p in r.model.parameters() if p.requires_grad} == top
    before = {name: r.model.get_parameter(name).detach().clone() for name in held}
    r.fit()
    assert r.stage == n - 1
    assert all(p.requires_grad for p in r.model.parameters())
    stages = r.history.meta["stages"]
    assert stages[-1]["group"] == first.name
    # the input-side group (the held parameters with it) trained only in the last stage
    if held and kind != "bert":
        assert any(not torch.equal(r.model.get_parameter(n), before[n]) for n in held)


def test_hand_frozen_parameters_stay_frozen_and_show_as_frozen():
    """requires_grad_(False) before passing: kept through a run, shown frozen in the tree."""
    from retrain_widgets.widgets.tree import LayerTreeView

    model = zoo.build("plain_vit")
    model.cls_token.requires_grad_(False)
    model.blocks[0].requires_grad_(False)
    assert frozen_names(model) == ["cls_token", "blocks.0"]
    view = LayerTreeView(model, on_change=lambda names: None)
    assert view.row("cls_token").check.value and view.row("blocks.0").check.value
    assert not view.row("pos_embed").check.value
    assert "frozen" in view.row("cls_token").label.value
    before = state_copy(model.blocks[0])
    token = model.cls_token.detach().clone()
    r = Retrainer(model, RunConfig(epochs=1, max_steps=3, lr=1e-2, device="cpu"), zoo.loader("plain_vit"))
    r.fit()
    assert not r.model.cls_token.requires_grad and torch.equal(r.model.cls_token, token)
    assert_same_state(r.model.blocks[0], before)
    assert not torch.equal(r.model.pos_embed, model.pos_embed)  # the rest trained
    assert frozen_names(r.model) == ["cls_token", "blocks.0"]


def test_tied_embedding_is_one_parameter_in_one_group():
    model = zoo.build("gpt2_lm")
    assert model.lm_head.weight is model.transformer.wte.weight
    groups = _group_ids(model)
    where = [i for i, g in enumerate(groups) if id(model.lm_head.weight) in g]
    assert len(where) == 1
    tree = layer_tree(model)
    assert tree[""].total_params == sum(p.numel() for p in model.parameters())


def test_studio_head_only_and_tree_rows_cover_held_parameters(runs_in_tmp):
    from retrain_widgets.widgets.studio import RetrainStudio

    s = RetrainStudio(zoo.build("plain_vit"), zoo.loader("plain_vit"), zoo.loader("plain_vit", seed=1), store=False)
    s.strategy.value = "head only"
    assert s.config.frozen == ["cls_token", "pos_embed", "patch_embed", "blocks", "norm"]
    s.strategy.value = "full"
    row = s.tree.row("cls_token")
    assert "Parameter [1, 1, 16]" in row.label.value and "16 params" in row.label.value
    row.check.value = True
    assert s.config.frozen == ["cls_token"]
    s.tree.row("blocks.0").upto.click()
    assert s.config.frozen == ["cls_token", "pos_embed", "patch_embed", "blocks.0"]
    run = s.start()
    run.join(60)
    assert not run.model.cls_token.requires_grad
    assert torch.equal(run.model.cls_token, s.pretrained.cls_token)
