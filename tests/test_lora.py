"""LoRA adapters as a strategy (peft): config, targets, training, restore, export, peft models."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import zoo
from conftest import assert_same_state, state_copy
from torch import nn

from retrain_widgets import Retrainer, RunConfig
from retrain_widgets.core.comparison import grid_variants
from retrain_widgets.core.lora import (
    adapter_counts,
    adapter_size,
    add_lora_adapters,
    attention_projections,
    is_adapted,
    lora_target_names,
)
from retrain_widgets.core.store import RunStore
from retrain_widgets.core.tree import layer_groups, layer_tree, trainable_count

pytest.importorskip("peft", reason="LoRA needs peft: pip install 'retrain_widgets[peft]'")

BERT_QKV = [f"bert.encoder.layer.{i}.attention.{part}" for i in range(2)
            for part in ("self.query", "self.key", "self.value", "output.dense")]


def _base(model: nn.Module, head: str) -> dict[str, torch.Tensor]:
    """Every non-adapter, non-head parameter, by its pretrained name."""
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()
            if "lora_" not in n and not n.startswith(head + ".")}


# ----------------------------------------------------------------------------- config
def test_config_fields_validate_and_round_trip():
    cfg = RunConfig(lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_modules=["*.query", "bert.encoder.layer.1"])
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert RunConfig().lora_r is None and RunConfig().lora_modules == []
    for bad, match in [({"lora_r": 0}, "lora_r must be >= 1"), ({"lora_r": 2.5}, "lora_r must be a whole"),
                       ({"lora_r": 4, "lora_dropout": 1.0}, "lora_dropout must be <="),
                       ({"lora_r": 4, "lora_alpha": 0}, "lora_alpha must be >"),
                       ({"lora_modules": "query"}, "lora_modules must be a list"),
                       ({"lora_r": 4, "gradual": True}, "exclude each other")]:
        with pytest.raises(ValueError, match=match):
            RunConfig(**bad)


def test_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(ImportError, match=r'pip install "retrain_widgets\[peft\]"'):
        Retrainer(zoo.build("bert"), RunConfig(lora_r=2, device="cpu"), zoo.loader("bert"))


# ----------------------------------------------------------------------------- targets
@pytest.mark.parametrize("kind, expected", [
    ("bert", BERT_QKV),
    ("distilbert", [f"distilbert.transformer.layer.{i}.attention.{p}" for i in range(2)
                    for p in ("q_lin", "k_lin", "v_lin", "out_lin")]),
    ("gpt2", [f"transformer.h.{i}.attn.{p}" for i in range(2) for p in ("c_attn", "c_proj")]),
    ("timm_like_vit", [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv", "proj")]),
])
def test_all_attention_projections(kind, expected):
    model = zoo.build(kind)
    assert attention_projections(model) == expected
    assert lora_target_names(model, []) == expected


def test_targets_by_name_glob_and_block_and_errors():
    model = zoo.build("bert")
    assert lora_target_names(model, ["*.query"]) == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)]
    block = lora_target_names(model, ["bert.encoder.layer.1"])
    assert block[0] == "bert.encoder.layer.1.attention.self.query" and len(block) == 6  # q k v o + 2 MLP
    assert lora_target_names(model, ["bert.embeddings.word_embeddings"]) == ["bert.embeddings.word_embeddings"]
    assert "classifier" not in lora_target_names(model, ["*"], head="classifier")
    with pytest.raises(ValueError, match=r"'\*\.qurey' matches no nn.Linear"):
        lora_target_names(model, ["*.qurey"])
    with pytest.raises(ValueError, match="outside the head"):
        lora_target_names(model, ["classifier"], head="classifier")
    with pytest.raises(ValueError, match="has none"):
        lora_target_names(zoo.build("resnet"), [])


def test_multihead_attention_out_proj_is_refused_its_forward_never_calls_it():
    """nn.MultiheadAttention (torchvision's ViT) reads out_proj.weight itself: an adapter there
    would never run. Named, it is refused; in a block or a glob it is left out."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    model = nn.Sequential(Block(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"'0.attn.out_proj' is inside an nn.MultiheadAttention.*never run.*0.mlp.0"):
        lora_target_names(model, ["0.attn.out_proj"])
    with pytest.raises(ValueError, match="inside an nn.MultiheadAttention"):
        lora_target_names(model, ["*out_proj"])
    assert lora_target_names(model, ["0"]) == ["0.mlp.0", "0.mlp.2"]
    with pytest.raises(ValueError, match="has none"):
        lora_target_names(model, [])


@pytest.mark.parametrize("name", ["features.3", "classifier.0"])
def test_adapter_size_is_what_peft_adds(cnn, name):
    r = 3
    layer = cnn.get_submodule(name)
    expected = adapter_size(layer, r)
    add_lora_adapters(cnn, [name], r, 6.0, 0.0)
    assert adapter_counts(cnn) == {name: expected}


def test_adapter_size_for_embedding_and_conv1d():
    bert, gpt2 = zoo.build("bert"), zoo.build("gpt2")
    emb = "bert.embeddings.word_embeddings"
    sizes = {emb: adapter_size(bert.get_submodule(emb), 2)}
    add_lora_adapters(bert, [emb], 2, 2.0, 0.0)
    assert adapter_counts(bert) == sizes
    attn = "transformer.h.0.attn.c_attn"
    size = adapter_size(gpt2.get_submodule(attn), 2)
    add_lora_adapters(gpt2, [attn], 2, 2.0, 0.0)
    assert adapter_counts(gpt2) == {attn: size}


# ----------------------------------------------------------------------------- training
def test_lora_run_keeps_base_weights_and_trains_adapters_and_new_head():
    model = zoo.build("bert")
    pretrained = state_copy(model)
    old_val = zoo.loader("bert", seed=2)
    cfg = RunConfig(lora_r=4, head_out=4, lr=1e-2, epochs=1, max_steps=4, device="cpu",
                    distill={"alpha": 0.5, "temperature": 2.0})
    r = Retrainer(model, cfg, zoo.loader("bert"), val=zoo.loader("bert", seed=1), old_val=old_val)
    assert is_adapted(r.model) and not is_adapted(model)
    assert set(adapter_counts(r.model)) == set(BERT_QKV)
    trainable = {n for n, p in r.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("classifier.") for n in trainable)
    assert {"classifier.weight", "classifier.bias"} <= trainable
    base = _base(r.model, "classifier")
    adapters = {n: p.detach().clone() for n, p in r.model.named_parameters() if "lora_B" in n}
    head = r.model.classifier.weight.detach().clone()
    h = r.fit()
    assert all(torch.equal(p, base[n.replace(".base_layer", "")]) for n, p in r.model.named_parameters()
               if n.replace(".base_layer", "") in base), "a base weight moved"
    assert all(not torch.equal(p, adapters[n]) for n, p in r.model.named_parameters() if n in adapters)
    assert not torch.equal(r.model.classifier.weight, head)
    # the old task is measured through the adapted model with the original head; distillation ran
    assert len(h.series("old_metric")[1]) == 1 and len(h.series("val_metric")[1]) == 1
    assert_same_state(model, pretrained)  # the user's model is untouched


def test_lora_keeps_the_head_and_trains_it_when_not_replaced():
    model = zoo.build("distilbert")
    r = Retrainer(model, RunConfig(lora_r=2, lora_modules=["*.q_lin", "*.v_lin"], lr=1e-2, max_steps=2, epochs=1,
                                   device="cpu"), zoo.loader("distilbert"))
    before = r.model.classifier.weight.detach().clone()
    pre = r.model.pre_classifier.weight.detach().clone()
    r.fit()
    assert not torch.equal(r.model.classifier.weight, before)
    assert torch.equal(r.model.pre_classifier.weight, pre)  # not the head, not adapted: frozen


def test_lora_tree_and_groups_see_the_adapters():
    model = zoo.build("bert")
    r = Retrainer(model, RunConfig(lora_r=2, lora_modules=["*.query"], device="cpu"), zoo.loader("bert"))
    tree = layer_tree(r.model)
    q = "bert.encoder.layer.0.attention.self.query"
    assert tree[q].trainable_params == adapter_size(model.get_submodule(q), 2)
    trainable, _ = trainable_count(r.model)
    head = sum(p.numel() for p in r.model.classifier.parameters())
    assert trainable == head + 2 * adapter_size(model.get_submodule(q), 2)
    ids = [id(p) for g in layer_groups(r.model) for n in g.modules
           for p in (r.model.get_submodule(n).parameters() if n in dict(r.model.named_modules())
                     else [r.model.get_parameter(n)])]
    assert sorted(ids) == sorted({id(p) for p in r.model.parameters()})


def test_what_if_grid_varies_the_rank():
    base = RunConfig(lora_modules=["*.query"], max_steps=1, epochs=1, device="cpu")
    counts = []
    for changes in grid_variants({"lora_r": [None, 2, 4]}):
        r = Retrainer(zoo.build("bert"), base.replace(**changes), zoo.loader("bert"))
        r.fit()
        counts.append(sum(adapter_counts(r.model).values()))
    assert counts[0] == 0 and counts[2] == 2 * counts[1] > 0


def test_restore_gives_the_adapted_model(tmp_path):
    model = zoo.build("bert")
    data = zoo.loader("bert")
    with RunStore(tmp_path) as store:
        r = Retrainer(model, RunConfig(lora_r=2, head_out=4, lr=1e-2, max_steps=2, epochs=1, device="cpu"), data)
        run_id = store.record(r, save_every=0)
        r.fit()
        r.join(10)
        back = store.restore(run_id, model)
    assert is_adapted(back) and not is_adapted(model)
    x = next(iter(data))[0]
    r.model.eval()
    back.eval()
    with torch.no_grad():
        assert torch.equal(back(x).logits, r.model(x).logits)


def test_the_run_builder_adds_the_adapters_and_the_studio_working_copy_marks_them():
    """build_model adds the adapters (the engine and anything asking for "the model this config
    trains"); the studio's working copy stays the model as it is, the chosen layers marked."""
    from retrain_widgets.core.builder import build_model
    from retrain_widgets.headless import HeadlessStudio

    model = zoo.build("bert")
    cfg = RunConfig(lora_r=2, lora_modules=["*.query"], device="cpu")
    built = build_model(model, cfg)
    assert set(adapter_counts(built.model)) == {f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)}
    assert not is_adapted(build_model(model, cfg, adapters=False).model) and not is_adapted(model)
    studio = HeadlessStudio(model, zoo.loader("bert"), config=cfg, store=False)
    assert not is_adapted(studio.work)


# ----------------------------------------------------------------------------- a model wrapped by peft
def test_a_model_wrapped_by_peft_keeps_working():
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(zoo.build("bert"), LoraConfig(r=2, target_modules=["query", "value"],
                                                           modules_to_save=["classifier"]))
    frozen = {n: p.detach().clone() for n, p in wrapped.named_parameters() if not p.requires_grad}
    r = Retrainer(wrapped, RunConfig(lr=1e-2, max_steps=2, epochs=1, device="cpu"), zoo.loader("bert"))
    assert r.head_name.endswith("classifier.modules_to_save.default")
    r.fit()
    after = dict(r.model.named_parameters())
    assert all(torch.equal(after[n], v) and not after[n].requires_grad for n, v in frozen.items())
    assert any("lora_B" in n and not torch.equal(p, torch.zeros_like(p)) for n, p in after.items())
    with pytest.raises(ValueError, match="already holds LoRA adapters"):
        Retrainer(copy.deepcopy(wrapped), RunConfig(lora_r=2, device="cpu"), zoo.loader("bert"))


# ----------------------------------------------------------------------------- the exported script
def test_exported_script_builds_the_same_adapters(cnn):
    from test_export import SMALL_DATA_CODE, assert_same, engine_run, script_in_process

    from retrain_widgets.core.export import export_script
    from retrain_widgets.examples import code

    cfg = RunConfig(loss="ce", head_out=3, lr=3e-3, lora_r=4, lora_modules=["features.7", "classifier.0"],
                    lora_dropout=0.1, epochs=3, max_steps=10)
    data_code = SMALL_DATA_CODE.format(task_name="loops", seed=cfg.seed)
    src = export_script(cfg, model_code=code()["model_code"], data_code=data_code)
    assert "def add_lora_adapters(" in src and "def lora_target_names(" in src
    script, namespace = script_in_process(src)
    assert_same(engine_run(cfg, data_code), script)
    assert set(adapter_counts(namespace["model"])) == {"features.7", "classifier.0"}


# ----------------------------------------------------------------------------- the layer tree
def test_layer_tree_offers_lora_per_layer_and_all_attention_projections():
    from retrain_widgets.widgets.tree import LayerTreeView

    model = zoo.build("bert")
    chosen = []
    view = LayerTreeView(model, on_change=lambda names: None, on_lora=chosen.append)
    q = "bert.encoder.layer.0.attention.self.query"
    assert view.row(q).lora.layout.display is None  # a Linear: LoRA offered
    assert view.row("classifier").lora.layout.display == "none"  # the head trains in full
    assert view.row("bert.encoder").lora.layout.display == "none"
    view.lora_attention.click()
    assert chosen[-1] == BERT_QKV
    per_layer = adapter_size(model.get_submodule(q), 8)
    assert f"+{per_layer:,} LoRA" in view.row(q).label.value
    assert "LoRA r=8 on 8 layers" in view.totals.value
    view.row(q).lora.value = False
    assert q not in chosen[-1] and len(chosen[-1]) == 7
    view.set_lora(["*.query"], 2)  # what a config says: glob patterns, rank 2
    assert view.row(q).lora.value and not view.row(q.replace("query", "key")).lora.value
    assert f"+{adapter_size(model.get_submodule(q), 2)} LoRA" in view.row(q).label.value
    view.lora_off.click()
    assert chosen[-1] == [] and "LoRA" not in view.totals.value


def test_studio_lora_choice_goes_to_the_config(runs_in_tmp):
    from retrain_widgets.widgets.studio import RetrainStudio

    s = RetrainStudio(zoo.build("bert"), zoo.loader("bert"), zoo.loader("bert", seed=1), store=False)
    s.tree.lora_attention.click()
    assert s.config.lora_r == 8 and s.config.lora_modules == BERT_QKV
    assert "LoRA r=8" in s.tree.totals.value
    s.tree.lora_off.click()
    assert s.config.lora_r is None and s.config.lora_modules == []


def test_a_peft_model_shows_its_adapter_counts_in_the_tree():
    from peft import LoraConfig, get_peft_model

    from retrain_widgets.widgets.tree import LayerTreeView

    wrapped = get_peft_model(zoo.build("bert"), LoraConfig(r=2, target_modules=["query"]))
    view = LayerTreeView(wrapped, on_change=lambda names: None)
    name = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert "+64 LoRA" in view.row(name).label.value  # r * (16 + 16)
    assert view.row(name + ".base_layer").check.value  # its weight: frozen by peft, shown frozen
