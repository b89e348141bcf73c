"""Real torchvision and timm classes (random weights): the head, the layer groups, head-only
runs, gradual unfreezing, the exported script, LoRA, and the feature cache with frozen_eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_export import assert_same, script_in_process
from vision_zoo import ALL, DATA_CODE, HELD, build, head, images, loaders, model_code

from retrain_widgets import Event, Retrainer, RunConfig
from retrain_widgets.core import feature_cache as fc
from retrain_widgets.core.builder import apply_stage
from retrain_widgets.core.export import export_script
from retrain_widgets.core.params import param_groups
from retrain_widgets.core.tree import find_head, frozen_complement, layer_groups, parameters_of


@pytest.fixture(scope="module", params=ALL)
def family(request):
    return request.param, build(request.param)


def _group_ids(model, groups) -> list[set[int]]:
    return [{id(p) for n in g.modules for _, _, p in parameters_of(model, "" if n == "(model)" else n)}
            for g in groups]


def test_head_and_groups_cover_every_parameter_once_input_side_first(family):
    name, model = family
    assert find_head(model) == head(name)
    groups = layer_groups(model)
    ids = _group_ids(model, groups)
    flat = [i for g in groups for n in g.modules for _, _, p in parameters_of(model, "" if n == "(model)" else n)
            for i in [id(p)]]
    assert sorted(flat) == sorted({id(p) for p in model.parameters()}), name
    assert len(flat) == len(set(flat)), f"{name}: a parameter is in two groups"
    assert len(groups) >= 3 and id(model.get_submodule(head(name)).weight) in ids[-1]
    for held in HELD.get(name, []):  # position embeddings and class tokens: the input-side group
        assert held in groups[0].modules, (name, [g.modules for g in groups[:2]])
    names = {g["layer_group"] for g in param_groups(model, RunConfig())}
    assert "(other)" not in names and names == {g.name for g in groups}


def test_head_only_run_keeps_every_frozen_parameter_and_buffer_bit_identical(family):
    name, model = family
    new_head = ALL.index(name) % 2 == 0
    cfg = RunConfig(frozen=frozen_complement(model, [head(name)]), head_out=3 if new_head else None, lr=1e-2,
                    epochs=1, device="cpu")
    run = Retrainer(model, cfg, images(8))
    head_ids = {id(p) for p in run.model.get_submodule(head(name)).parameters()}
    assert {id(p) for p in run.model.parameters() if p.requires_grad} == head_ids
    frozen = {n: p.detach().clone() for n, p in run.model.named_parameters() if id(p) not in head_ids}
    start = {n: p.detach().clone() for n, p in run.model.named_parameters() if id(p) in head_ids}
    buffers = {n: b.clone() for n, b in run.model.named_buffers()}
    run.fit()
    assert run.step == 2
    moved = [n for n, p in run.model.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
    assert not moved, f"{name}: frozen parameters moved: {moved[:5]}"
    drifted = [n for n, b in run.model.named_buffers() if not torch.equal(b, buffers[n])]
    assert not drifted, f"{name}: buffers changed: {drifted[:5]}"
    assert any(not torch.equal(p, start[n]) for n, p in run.model.named_parameters() if n in start)


def test_gradual_stages_reach_the_input_side_last(family):
    name, model = family
    run = Retrainer(model, RunConfig(gradual=True, device="cpu"), images(4))
    groups, ids = run.groups, _group_ids(run.model, run.groups)
    for stage in range(len(groups)):
        if stage:
            apply_stage(run.model, groups, stage, run.config)  # what the engine does at each stage
        trainable = {id(p) for p in run.model.parameters() if p.requires_grad}
        assert trainable == set().union(*ids[len(groups) - 1 - stage:]), (name, stage)
        assert bool(ids[0] & trainable) is (stage == len(groups) - 1)


@pytest.mark.parametrize("name", ["vit", "timm_vit", "timm_deit"])
def test_gradual_run_trains_position_embeddings_and_class_tokens_last(name):
    model = build(name)
    n = len(layer_groups(model))
    run = Retrainer(model, RunConfig(gradual=True, unfreeze_every=1, epochs=n, lr=1e-2, device="cpu"), images(4))
    before = {h: run.model.get_parameter(h).detach().clone() for h in HELD[name]}
    still: list[tuple[int, bool]] = []
    run.on(Event.STEP_END, lambda info: still.append(
        (run.stage, all(torch.equal(run.model.get_parameter(h), v) for h, v in before.items()))))
    run.fit()
    assert run.stage == n - 1 and run.history.meta["stages"][-1]["group"] == run.groups[0].name
    assert [s for s, _ in still] == list(range(n))
    assert all(same for stage, same in still if stage < n - 1) and not still[-1][1]


def test_exported_script_runs_and_matches_the_engine(family):
    name, model = family
    groups = layer_groups(model)
    frozen = [m for g in groups[: len(groups) // 2] for m in g.modules]  # the lower half: BN, dropout above it
    cfg = RunConfig(loss="ce", head_out=3, frozen=frozen, lr=1e-3, epochs=1, seed=0, cache_features=False)
    history = Retrainer(build(name), cfg, *loaders()).fit()
    engine = {k: float(history.series(k)[1][-1]) for k in ("val_loss", "val_metric")}
    script, namespace = script_in_process(export_script(cfg, model_code=model_code(name), data_code=DATA_CODE))
    assert namespace["step"] == 2
    assert_same(engine, script)


@pytest.mark.parametrize("name", ["efficientnet_b0", "swin_t"])
def test_exported_script_with_frozen_eval_matches_the_engine(name):
    """Stochastic depth in inference mode in the frozen lower half, in train mode above it."""
    groups = layer_groups(build(name))
    frozen = [m for g in groups[: len(groups) // 2] for m in g.modules]
    cfg = RunConfig(loss="ce", head_out=3, frozen=frozen, lr=1e-3, epochs=1, seed=0, frozen_eval=True,
                    cache_features=False)
    runs = {on: Retrainer(build(name), cfg.replace(frozen_eval=on), *loaders()).fit() for on in (False, True)}
    engine = {k: float(runs[True].series(k)[1][-1]) for k in ("val_loss", "val_metric")}
    assert engine["val_loss"] != float(runs[False].series("val_loss")[1][-1])  # it matters on this model
    src = export_script(cfg, model_code=model_code(name), data_code=DATA_CODE)
    assert "eval_frozen(model)" in src
    script, _ = script_in_process(src)
    assert_same(engine, script)


# ------------------------------------------------------------------ LoRA
def _lora_run(name, modules):
    run = Retrainer(build(name), RunConfig(lora_r=4, lora_modules=modules, head_out=3, lr=1e-2, epochs=1,
                                           device="cpu"), images(8))
    adapters = {n: p.detach().clone() for n, p in run.model.named_parameters() if "lora_B" in n}
    base = {n: p.detach().clone() for n, p in run.model.named_parameters() if not p.requires_grad}
    run.fit()
    now = dict(run.model.named_parameters())
    assert adapters and all(not torch.equal(now[n], v) for n, v in adapters.items()), "an adapter did not train"
    assert all(torch.equal(now[n], v) for n, v in base.items())
    return adapters


def test_lora_adapts_timm_packed_qkv():
    adapters = _lora_run("timm_vit", ["*.qkv"])
    assert sorted(adapters) == [f"blocks.{i}.attn.qkv.lora_B.default.weight" for i in range(2)]
    assert set(_lora_run("timm_deit", []).keys()) >= set(adapters)  # every attention projection: qkv among them


def test_lora_adapts_torchvision_vit_mlp_and_refuses_multihead_attention_out_proj():
    adapters = _lora_run("vit", ["*.mlp.0", "*.mlp.3"])
    assert len(adapters) == 4
    # nn.MultiheadAttention reads out_proj.weight itself: an adapter there would never run, so it is refused
    for modules in (["*.out_proj"], ["encoder.layers.encoder_layer_0.self_attention.out_proj"]):
        with pytest.raises(ValueError, match=r"inside an nn.MultiheadAttention.*never run.*mlp"):
            Retrainer(build("vit"), RunConfig(lora_r=4, lora_modules=modules, device="cpu"), images(4))
    with pytest.raises(ValueError, match="has none"):  # "every attention projection": none that can run
        Retrainer(build("vit"), RunConfig(lora_r=4, lora_modules=[], device="cpu"), images(4))


# ------------------------------------------------------------------ the feature cache on head-only runs
SERIES = ("train_loss", "val_loss", "val_metric")


def _head_only(name: str, **changes) -> RunConfig:
    return RunConfig(frozen=frozen_complement(build(name), [head(name)]), head_out=3, lr=1e-2, epochs=2,
                     device="cpu").replace(**changes)


def _cache_loaders():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 3, (24,), generator=g)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:16], y[:16]), batch_size=4, shuffle=True,
                                        generator=torch.Generator().manual_seed(4))
    return train, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[16:], y[16:]), batch_size=4)


def _cached_and_plain(name: str, cfg: RunConfig):
    fc.clear()
    out = {}
    for mode in (False, "auto"):
        history = Retrainer(build(name), cfg.replace(cache_features=mode), *_cache_loaders()).fit()
        out[mode] = history
    fc.clear()
    return out[False], out["auto"]


@pytest.mark.parametrize(("name", "frozen_eval", "part"), [
    ("mobilenet_v3_small", False, ["classifier.1", "classifier.2", "classifier.3"]),  # Hardswish, Dropout, head
    ("mobilenet_v3_small", True, ["classifier.1", "classifier.2", "classifier.3"]),
    ("efficientnet_b0", True, ["classifier.0", "classifier.1"]),  # Dropout, head
    ("convnext_tiny", True, ["classifier.1", "classifier.2"]),  # Flatten, head
    ("swin_t", True, ["head"]),
])
def test_head_only_runs_cache_with_the_same_losses_and_metrics(name, frozen_eval, part):
    plain, cached = _cached_and_plain(name, _head_only(name, frozen_eval=frozen_eval))
    info = cached.meta["feature_cache"]
    assert info["state"] == "built", info
    assert info["trainable_part"] == part
    assert set(info["loaders"]) == {"train", "val"}
    for series in SERIES:
        np.testing.assert_allclose(cached.series(series)[1], plain.series(series)[1], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: {series}")


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny", "swin_t"])
def test_stochastic_depth_is_refused_with_the_setting_that_allows_it(name):
    fc.clear()
    history = Retrainer(build(name), _head_only(name, epochs=1), *_cache_loaders()).fit()
    info = history.meta["feature_cache"]
    assert info["state"] == "refused", info
    assert "different outputs for the same batch on two passes" in info["reason"]
    assert "RunConfig(frozen_eval=True)" in info["reason"] and "stochastic depth" in info["reason"]
    fc.clear()
