"""The frozen-feature cache: same results as full passes, same sample order, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from retrain_widgets.core import Event, Retrainer, RunConfig
from retrain_widgets.core import feature_cache as fc
from retrain_widgets.examples import resnet18_shaped, task

SERIES = ("train_loss", "val_loss", "val_metric", "old_loss", "old_metric")


@pytest.fixture(autouse=True)
def _fresh_registry():
    fc.clear()
    yield
    fc.clear()


def _fit(model, cfg, train, val=None, old_val=None, **kwargs):
    run = Retrainer(model, cfg, train, val, old_val, **kwargs)
    return run, run.fit()


def _series(history):
    return {k: history.series(k)[1] for k in SERIES if len(history.series(k)[1])}


def _compare(cfg, make_model, make_loaders, rtol=0.0, **kwargs):
    """Run uncached then cached; return both histories after checking that their numbers agree."""
    out = []
    for mode in (False, "auto"):
        loaders = make_loaders()
        out.append(_fit(make_model(), cfg.replace(cache_features=mode), *loaders, **kwargs)[1])
    plain, cached = (_series(h) for h in out)
    assert plain.keys() == cached.keys() and "train_loss" in plain
    for name in plain:
        if rtol == 0.0:
            np.testing.assert_array_equal(cached[name], plain[name], err_msg=name)
        else:
            np.testing.assert_allclose(cached[name], plain[name], rtol=rtol, atol=1e-7, err_msg=name)
    return out


def _cnn():
    from retrain_widgets.examples import pretrained_digits_cnn

    return pretrained_digits_cnn()


def _digits():
    t = task("is_seven", batch_size=32)
    return t.train, t.val, t.old_val


CNN_HEAD = RunConfig(loss="bce", head_out=1, frozen=["features"], epochs=2, device="cpu")


# ====================================================================== same results
def test_bundled_cnn_cached_equals_uncached_bit_for_bit_with_old_task():
    plain, cached = _compare(CNN_HEAD, _cnn, _digits)
    assert plain.meta["feature_cache"]["state"] == "off"
    info = cached.meta["feature_cache"]
    assert info["state"] == "built", info
    assert info["trainable_part"] == ["classifier.0", "classifier.1", "classifier.2", "classifier.3"]
    assert set(info["loaders"]) == {"train", "val", "old_val"}
    assert info["mb"] > 0


def test_cached_run_sees_the_samples_in_the_loaders_order():
    seen: dict[object, list[list[int]]] = {}

    def make(mode):
        order: list[list[int]] = []

        def loss(logits, targets):
            order.append(targets.tolist())
            return nn.functional.cross_entropy(logits, targets % 3)

        seen[mode] = order
        return loss

    x = torch.rand(90, 1, 8, 8)
    ids = torch.arange(90)
    for mode in (False, True):
        train = DataLoader(TensorDataset(x, ids), batch_size=16, shuffle=True,
                           generator=torch.Generator().manual_seed(5))
        cfg = RunConfig(loss=make(mode), head_out=3, frozen=["features"], epochs=3, device="cpu",
                        cache_features=mode)
        _, h = _fit(_cnn(), cfg, train)
        assert h.meta["feature_cache"]["state"] == ("built" if mode else "off")
    assert seen[True] == seen[False] and len(seen[True]) == 1 + 18  # check() + 3 epochs of 6 batches
    assert sorted(sum(seen[True][1:7], [])) == list(range(90))
    assert seen[True][1] != seen[True][7]  # each epoch draws a new shuffle


def test_batchnorm_resnet_head_only_same_results():
    torch.manual_seed(0)
    base = resnet18_shaped(num_classes=5, width=8, small_input=True)
    x, y = torch.rand(48, 3, 16, 16), torch.randint(0, 3, (48,))

    def loaders():
        gen = torch.Generator().manual_seed(1)
        return (DataLoader(TensorDataset(x, y), batch_size=12, shuffle=True, generator=gen),
                DataLoader(TensorDataset(x, y), batch_size=16))

    names = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    cfg = RunConfig(head_out=3, frozen=names, epochs=2, device="cpu", optimizer="sgd", lr=0.05)
    _, cached = _compare(cfg, lambda: base, loaders, rtol=1e-6)
    assert cached.meta["feature_cache"]["trainable_part"] == ["fc"]


def _tiny_bert(dropout):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=2, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout, classifier_dropout=None)
    return BertForSequenceClassification(cfg)


class _TokenSet(Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(1, 50, (n, 8), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def _bert_loaders():
    data = _TokenSet()
    return (DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(2)),
            DataLoader(data, batch_size=8))


def test_tiny_hf_bert_dict_batches_same_results():
    cfg = RunConfig(head_out=3, frozen=["bert"], epochs=2, device="cpu")
    _, cached = _compare(cfg, lambda: _tiny_bert(0.0), _bert_loaders, rtol=1e-6)
    assert cached.meta["feature_cache"]["state"] == "built"
    assert cached.meta["feature_cache"]["trainable_part"] == ["classifier"]


def test_distillation_teacher_logits_cached_same_results():
    cfg = CNN_HEAD.replace(distill={"alpha": 0.5, "temperature": 2.0})
    _, cached = _compare(cfg, _cnn, _digits)
    assert cached.meta["feature_cache"]["state"] == "built"


def test_gradual_unfreezing_drops_the_cache_and_matches_full_passes():
    cfg = RunConfig(loss="bce", head_out=1, epochs=3, device="cpu", gradual=True)
    _, cached = _compare(cfg, _cnn, _digits)
    info = cached.meta["feature_cache"]
    assert info["state"] == "dropped" and "unfreezing" in info["reason"]


def test_live_unfreeze_mid_epoch_drops_the_cache_and_matches_full_passes():
    def unfreeze_at_step_3(run):
        run.on(Event.STEP_END, lambda info: run.unfreeze("features.7") if info.step == 3 else None)

    histories = []
    for mode in (False, "auto"):
        run = Retrainer(_cnn(), CNN_HEAD.replace(cache_features=mode), *_digits())
        unfreeze_at_step_3(run)
        histories.append(run.fit())
    plain, cached = (_series(h) for h in histories)
    for name in plain:
        np.testing.assert_array_equal(cached[name], plain[name], err_msg=name)
    assert histories[1].meta["feature_cache"]["state"] == "dropped"


def test_grid_runs_reuse_one_cache():
    loaders = _digits()  # a what-if grid's runs share the studio's loaders
    first, _ = _fit(_cnn(), CNN_HEAD, *loaders)
    second, h = _fit(_cnn(), CNN_HEAD.replace(lr=3e-3, seed=4, loss="focal"), *loaders)
    assert first.history.meta["feature_cache"]["state"] == "built"
    assert h.meta["feature_cache"]["state"] == "reused"
    assert {v["state"] for v in h.meta["feature_cache"]["loaders"].values()} == {"reused"}
    assert fc.cached_mb() == pytest.approx(first.history.meta["feature_cache"]["mb"], rel=1e-3)


def test_two_tensor_datasets_over_the_same_tensors_share_a_cache_until_a_tensor_changes():
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 2, (64,)).float()[:, None]
    cfg = CNN_HEAD.replace(epochs=1)
    _, h1 = _fit(_cnn(), cfg, DataLoader(TensorDataset(x, y), batch_size=16))
    _, h2 = _fit(_cnn(), cfg, DataLoader(TensorDataset(x, y), batch_size=16))
    x.mul_(0.5)  # changed in place: its version moves
    _, h3 = _fit(_cnn(), cfg, DataLoader(TensorDataset(x, y), batch_size=16))
    assert [h.meta["feature_cache"]["state"] for h in (h1, h2, h3)] == ["built", "reused", "built"]


def test_different_frozen_weights_build_their_own_cache():
    _fit(_cnn(), CNN_HEAD, *_digits())
    other = _cnn()
    with torch.no_grad():
        other.features[0].weight.add_(0.01)
    _, h = _fit(other, CNN_HEAD, *_digits())
    assert h.meta["feature_cache"]["state"] == "built"


# ====================================================================== refusals
def _refused(h, *words):
    info = h.meta["feature_cache"]
    assert info["state"] == "refused", info
    for w in words:
        assert w in info["reason"], info["reason"]
    return info


def _cnn_with_frozen_dropout():
    """The bundled CNN with a Dropout between two of its convs (inside the frozen part)."""
    model = _cnn()
    layers = list(model.features)
    model.features = nn.Sequential(*layers[:3], nn.Dropout(0.2), *layers[3:])
    return model


def test_active_dropout_in_the_frozen_part_is_refused_and_forced_with_a_warning():
    cfg = RunConfig(loss="bce", head="classifier.3", head_out=1, frozen=["features", "classifier.0"], epochs=1,
                    device="cpu")
    _, h = _fit(_cnn_with_frozen_dropout(), cfg, *_digits())
    info = _refused(h, "dropout", "features.3", "frozen_eval=True")
    assert info["loaders"]["val"]["state"] == "built"  # evaluation has no dropout: it is cached
    with pytest.warns(UserWarning, match="dropout"):
        _, h = _fit(_cnn_with_frozen_dropout(), cfg.replace(cache_features=True), *_digits())
    assert h.meta["feature_cache"]["state"] == "built"
    assert "dropout" in h.meta["feature_cache"]["warnings"][0]
    # in inference mode the frozen part's dropout is off: cached, with the same numbers as full passes
    _, cached = _compare(cfg.replace(frozen_eval=True), _cnn_with_frozen_dropout, _digits)
    assert cached.meta["feature_cache"]["state"] == "built"


def test_parameterless_layers_before_the_head_train_with_it_and_are_cached():
    """The bundled CNN's classifier is Linear, ReLU(inplace), Dropout, Linear: head only on
    classifier.3 leaves the ReLU and the Dropout between the frozen part and the head (as
    torchvision's MobileNetV3 and EfficientNet do); they run on the cached features in train
    mode, so the run caches without frozen_eval and its numbers are the full passes' ones."""
    cfg = RunConfig(loss="bce", head="classifier.3", head_out=1, frozen=["features", "classifier.0"], epochs=2,
                    device="cpu")
    plain, cached = _compare(cfg, _cnn, _digits)
    info = cached.meta["feature_cache"]
    assert info["state"] == "built", info
    assert info["trainable_part"] == ["classifier.1", "classifier.2", "classifier.3"]
    # the dropout did act in training: a run without it gives other losses
    model = _cnn()
    model.classifier[2].p = 0.0
    _, off = _fit(model, cfg.replace(cache_features=False), *_digits())
    assert not np.array_equal(off.series("train_loss")[1], plain.series("train_loss")[1])


def test_tiny_bert_with_dropout_is_refused():
    _, h = _fit(_tiny_bert(0.1), RunConfig(head_out=3, frozen=["bert"], epochs=1, device="cpu"), _bert_loaders()[0])
    _refused(h, "dropout")


class _Augmented(TensorDataset):
    def __init__(self, *tensors, transform=None):
        super().__init__(*tensors)
        self.transform = transform

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return (self.transform(x) if self.transform else x), y


def test_dataset_with_a_transform_is_refused_and_forced_with_a_warning():
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 2, (64,)).float()[:, None]
    train = DataLoader(_Augmented(x, y, transform=lambda t: t.flip(-1)), batch_size=16)
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1), train)
    _refused(h, "transform", "augment")
    with pytest.warns(UserWarning, match="transform"):
        _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1, cache_features=True), train)
    assert h.meta["feature_cache"]["state"] == "built"


class _Noisy(TensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.rand_like(x), y


def test_samples_that_differ_between_passes_are_refused():
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 2, (64,)).float()[:, None]
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1), DataLoader(_Noisy(x, y), batch_size=16))
    _refused(h, "different samples")


def test_non_dataloader_and_one_pass_loaders_are_refused():
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 2, (32,)).float()[:, None]
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1), batches)
    _refused(h, "not a torch DataLoader")
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1, max_steps=3), iter(batches))
    _refused(h, "iterator")


def test_memory_bound_is_refused_and_configurable():
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1, cache_max_mb=0.001), *_digits())
    _refused(h, "memory bound", "cache_max_mb")
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1, cache_max_mb=50.0), *_digits())
    assert h.meta["feature_cache"]["state"] == "built"
    assert fc.memory_bound_mb(torch.device("cpu")) > 0


def test_custom_forward_and_whole_model_training_are_refused():
    fwd = lambda model, batch: (model(batch[0]), batch[1])  # noqa: E731
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1), *_digits(), forward=fwd)
    _refused(h, "custom forward")
    torch.manual_seed(0)
    net = resnet18_shaped(num_classes=3, width=8, small_input=True)
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 3, (16,))
    _, h = _fit(net, RunConfig(frozen=["conv1", "layer1"], epochs=1, device="cpu"),
                DataLoader(TensorDataset(x, y), batch_size=8))
    _refused(h, "no trainable suffix")


def test_config_field_round_trips_and_validates():
    cfg = RunConfig(cache_features=True, cache_max_mb=64)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="cache_features"):
        RunConfig(cache_features="yes")
    with pytest.raises(ValueError, match="cache_max_mb"):
        RunConfig(cache_max_mb=0)
    _, h = _fit(_cnn(), CNN_HEAD.replace(epochs=1, cache_features=False), *_digits())
    assert h.meta["feature_cache"]["state"] == "off"


def test_exported_script_says_it_recomputes_the_features():
    from retrain_widgets.core import export_script

    assert "recomputed every epoch" in export_script(CNN_HEAD)
    assert "recomputed every epoch" not in export_script(CNN_HEAD.replace(cache_features=False))


def test_a_reusing_run_never_runs_the_frozen_part_not_even_for_its_check():
    # the alignment probe's old-task batches run the whole model (README: Limits), so it is off here
    model = _cnn()
    calls = []
    model.features.register_forward_hook(lambda m, a, out: calls.append(len(out)))  # deep copies keep it
    loaders = _digits()
    plain, h_plain = _fit(model, CNN_HEAD.replace(cache_features=False), *loaders)
    _fit(model, CNN_HEAD, *loaders)
    calls.clear()
    run = Retrainer(model, CNN_HEAD.replace(lr=3e-3, alignment_every=None), *loaders)
    h = run.fit()
    assert calls == [] and h.meta["feature_cache"]["state"] == "reused"
    assert h.meta["metric"] == h_plain.meta["metric"]


def test_the_first_run_passes_its_data_through_the_frozen_part_once_and_its_check_batch_once():
    # the check's forward is the plan's probe, and its features are the build's second pass
    model = _cnn()
    calls = []
    model.features.register_forward_hook(lambda m, a, out: calls.append(len(out)))
    train = _digits()[0]
    _, h = _fit(model, CNN_HEAD.replace(alignment_every=None), train)
    assert h.meta["feature_cache"]["state"] == "built"
    assert calls[0] == train.batch_size and sum(calls[1:]) == len(train.dataset), calls
