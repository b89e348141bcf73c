"""The bundled offline example: shipped weights, the digits split, the new tasks, the build script."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from retrain_widgets.examples import (
    LOOPS_OF_DIGIT,
    NOISE_SEED,
    TRAIN_LABEL_NOISE,
    WEIGHTS_PATH,
    DigitsCNN,
    Task,
    digits_arrays,
    digits_loaders,
    noisy_train_digits,
    pretrained_digits_cnn,
    task,
    tasks,
)
from retrain_widgets.examples.build_weights import accuracy, build, save_weights

N_TRAIN, N_VAL = 1437, 360


def _concat(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


# ----------------------------------------------------------------------------- model and weights


def test_shipped_weights_file_is_small_and_safe_to_load():
    assert WEIGHTS_PATH.name == "digits_cnn.pt"
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size < 200_000
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert set(state) == set(DigitsCNN().state_dict())
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    bn_stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert len(bn_stats) == 6
    # running stats were actually learned (not the init values 0 / 1)
    assert all(not torch.equal(state[k], torch.zeros_like(state[k])) for k in bn_stats if "mean" in k)
    assert all(int(state[k]) > 0 for k in state if k.endswith("num_batches_tracked"))


def test_pretrained_model_accuracy_and_mode():
    model = pretrained_digits_cnn()
    assert isinstance(model, DigitsCNN)
    assert not model.training
    assert isinstance(model.features, nn.Sequential) and isinstance(model.classifier, nn.Sequential)
    assert model.classifier[-1].out_features == 10
    assert sum(p.numel() for p in model.parameters()) < 50_000
    data = digits_arrays()
    assert accuracy(model, data["x_val"], data["y_val"]) >= 0.95
    # a fresh instance each call
    other = pretrained_digits_cnn()
    assert other is not model
    with torch.no_grad():
        other.classifier[-1].bias.add_(1.0)
    assert not torch.equal(other.classifier[-1].bias, model.classifier[-1].bias)


def test_model_shapes():
    model = DigitsCNN().eval()
    with torch.no_grad():
        assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)
        assert DigitsCNN(num_classes=3).eval()(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="num_classes"):
        DigitsCNN(num_classes=0)


# ----------------------------------------------------------------------------- data


def test_digits_arrays_split():
    data = digits_arrays()
    assert set(data) == {"x_train", "y_train", "x_val", "y_val"}
    assert data["x_train"].shape == (N_TRAIN, 1, 8, 8) and data["x_val"].shape == (N_VAL, 1, 8, 8)
    assert data["y_train"].shape == (N_TRAIN,) and data["y_val"].shape == (N_VAL,)
    assert data["x_train"].dtype == torch.float32 and data["y_train"].dtype == torch.int64
    assert 0.0 <= float(data["x_train"].min()) and float(data["x_train"].max()) <= 1.0
    # stratified: every class in both splits, in similar proportions
    for key in ("y_train", "y_val"):
        counts = torch.bincount(data[key], minlength=10).float()
        assert counts.min() > 0
        assert (counts / counts.sum() - 0.1).abs().max() < 0.02
    # cached, but callers get copies
    data["x_train"].zero_()
    assert float(digits_arrays()["x_train"].max()) > 0


def test_digits_loaders_shapes_and_reproducibility():
    train, val = digits_loaders(batch_size=32, seed=3)
    x, y = next(iter(train))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    xv, yv = _concat(val)
    assert torch.equal(yv, digits_arrays()["y_val"])  # val is not shuffled
    assert torch.equal(xv, digits_arrays()["x_val"])
    fresh = digits_loaders(batch_size=32, seed=3)[0]
    _, y1 = _concat(fresh)
    _, y2 = _concat(digits_loaders(batch_size=32, seed=3)[0])
    _, y3 = _concat(digits_loaders(batch_size=32, seed=4)[0])
    assert len(y1) == N_TRAIN
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)
    # the next epoch reshuffles from the loader's own generator; the global RNG plays no part
    torch.manual_seed(123)
    _, y1b = _concat(fresh)
    assert not torch.equal(y1, y1b)
    fresh2 = digits_loaders(batch_size=32, seed=3)[0]
    _concat(fresh2)
    torch.manual_seed(456)
    assert torch.equal(_concat(fresh2)[1], y1b)


def test_no_single_sample_training_batch():
    train, _ = digits_loaders(batch_size=4)  # 1437 = 4 * 359 + 1
    assert min(len(y) for _, y in train) > 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        digits_loaders(batch_size=bad)
    with pytest.raises(ValueError, match="batch_size"):
        task("loops", batch_size=bad)


# ----------------------------------------------------------------------------- tasks


def test_tasks_listed():
    assert tasks() == ["is_seven", "digit_value", "loops"]


def test_unknown_task_names_the_available_ones():
    with pytest.raises(ValueError) as info:
        task("is_eight")
    msg = str(info.value)
    assert "is_eight" in msg
    for name in tasks():
        assert name in msg


def _check_common(t: Task, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    assert t.name == name and t.title and t.description
    y_val_orig = digits_arrays()["y_val"]
    xo, yo = _concat(t.old_val)
    assert yo.dtype == torch.int64 and torch.equal(yo, y_val_orig)
    xv, tv = _concat(t.val)
    assert torch.equal(xv, xo)  # same images, same order
    x, ttr = _concat(t.train)
    assert x.shape == (N_TRAIN, 1, 8, 8) and x.dtype == torch.float32
    assert tv.shape == (N_VAL,) and ttr.shape == (N_TRAIN,)
    return ttr, tv


def test_task_is_seven():
    t = task("is_seven")
    assert (t.kind, t.head_out, t.losses) == ("binary", 1, ("focal", "bce"))
    ttr, tv = _check_common(t, "is_seven")
    for targets in (ttr, tv):
        assert targets.dtype == torch.float32
        assert set(targets.unique().tolist()) == {0.0, 1.0}
        assert 0.05 <= float(targets.mean()) <= 0.15
    assert torch.equal(tv, (digits_arrays()["y_val"] == 7).float())


def test_task_digit_value():
    t = task("digit_value")
    assert (t.kind, t.head_out, t.losses) == ("regression", 1, ("mse", "huber", "smooth_l1"))
    ttr, tv = _check_common(t, "digit_value")
    for targets in (ttr, tv):
        assert targets.dtype == torch.float32
        assert float(targets.min()) == 0.0 and float(targets.max()) == 9.0
    assert torch.equal(tv, digits_arrays()["y_val"].float())
    assert "0" in t.description and "9" in t.description


def test_task_loops():
    t = task("loops")
    assert (t.kind, t.head_out, t.losses) == ("multiclass", 3, ("ce", "label_smoothing", "focal_multiclass"))
    ttr, tv = _check_common(t, "loops")
    for targets in (ttr, tv):
        assert targets.dtype == torch.int64
        assert set(targets.unique().tolist()) == {0, 1, 2}
    y = digits_arrays()["y_val"]
    expected = {1: 0, 2: 0, 3: 0, 5: 0, 7: 0, 0: 1, 4: 1, 6: 1, 9: 1, 8: 2}
    assert dict(enumerate(LOOPS_OF_DIGIT)) == expected
    assert torch.equal(tv, torch.tensor([expected[int(d)] for d in y]))


def test_task_loaders_reproducible_and_frozen():
    a, b = task("loops", batch_size=50, seed=7), task("loops", batch_size=50, seed=7)
    assert torch.equal(_concat(a.train)[1], _concat(b.train)[1])
    assert len(next(iter(a.train))[0]) == 50
    with pytest.raises(AttributeError):
        a.kind = "binary"  # type: ignore[misc]


# ----------------------------------------------------------------------------- build script


def test_build_short_run_beats_chance(tmp_path):
    rng_before = torch.get_rng_state()
    threads_before = torch.get_num_threads()
    det_before = torch.are_deterministic_algorithms_enabled()
    model, val_acc = build(epochs=2, seed=0)
    assert isinstance(model, DigitsCNN) and not model.training
    assert 0.5 < val_acc <= 1.0  # chance is 0.1
    # global state left as it was
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    assert torch.are_deterministic_algorithms_enabled() == det_before
    # saved weights round-trip through the safe loader
    path = save_weights(model, tmp_path / "w.pt")
    fresh = DigitsCNN()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    data = digits_arrays()
    assert accuracy(fresh, data["x_val"], data["y_val"]) == pytest.approx(val_acc)


def test_build_rejects_bad_epochs():
    with pytest.raises(ValueError, match="epochs"):
        build(epochs=0)


def test_task_losses_are_registered():
    from retrain_widgets import losses

    for name in tasks():
        assert set(task(name).losses) <= set(losses.available())


def test_task_kinds_are_metric_tasks_and_match_their_losses():
    from retrain_widgets import losses
    from retrain_widgets.core import metrics

    for name in tasks():
        t = task(name)
        assert t.kind in metrics.TASKS
        assert {losses.get(loss).task for loss in t.losses} == {t.kind}, name


# ----------------------------------------------------------------------------- calibration: the choices matter


def test_training_labels_are_noisy_fixed_and_validation_clean():
    clean, noisy = digits_arrays()["y_train"], noisy_train_digits()
    wrong = noisy != clean
    assert abs(float(wrong.float().mean()) - TRAIN_LABEL_NOISE) < 0.03
    assert set(noisy.unique().tolist()) == set(range(10))
    assert torch.equal(noisy, noisy_train_digits())  # fixed: the same images, the same wrong digits
    noisy[0] = -1
    assert int(noisy_train_digits()[0]) != -1  # callers get a copy
    assert NOISE_SEED == 0
    # every task's training targets are made from the noisy digits, whatever the loader's seed
    for seed in (0, 5):
        ttr = _concat(task("is_seven", seed=seed).train)[1]
        assert float(ttr.sum()) == float((noisy_train_digits() == 7).sum())
        loops = _concat(task("loops", seed=seed).train)[1]
        expected = torch.tensor(LOOPS_OF_DIGIT)[noisy_train_digits()]
        assert torch.equal(torch.bincount(loops, minlength=3), torch.bincount(expected, minlength=3))
    assert float(_concat(task("digit_value").train)[1].sum()) == float(noisy_train_digits().sum())


def test_noisy_targets_do_not_solve_the_task():
    # read as predictions of the clean labels, the training targets miss many sevens: a model that
    # copied them would be far from solving the validation set
    from retrain_widgets.core import metrics

    clean = (digits_arrays()["y_train"] == 7).float()
    copied = (noisy_train_digits() == 7).float() * 2 - 1  # logits: +1 for "a seven"
    assert metrics.balanced_accuracy(copied, clean) < 0.9
    assert metrics.f1(copied, clean) < 0.8


@pytest.mark.parametrize("name", ["is_seven", "digit_value", "loops"])
def test_task_config_fits_the_task(name):
    from retrain_widgets import RunConfig, check_compatibility, losses, replace_head

    t = task(name)
    cfg = t.config
    assert isinstance(cfg, RunConfig)
    assert cfg.loss in t.losses and losses.get(cfg.loss).task == t.kind
    assert cfg.head_out == t.head_out
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert task(name).config is not cfg  # a fresh copy each call
    model = pretrained_digits_cnn()
    replace_head(model, cfg.head_out)
    x, y = next(iter(t.train))
    with torch.no_grad():
        check_compatibility(model(x), y, cfg.loss)  # raises when the loss and the head do not fit


def test_is_seven_choice_of_loss_shows():
    # the quickstart's what-if: BCE against focal from the suggested config, one seed; on clean labels
    # both reached accuracy 1.0, on the noisy ones the balanced accuracy tells them apart
    from retrain_widgets import Retrainer
    from retrain_widgets.core import metrics

    torch.set_num_threads(1)
    model = pretrained_digits_cnn()
    scores = {}
    for loss in ("bce", "focal"):
        t = task("is_seven")
        run = Retrainer(model, t.config.replace(loss=loss), t.train, t.val)
        run.fit()
        scores[loss] = metrics.balanced_accuracy(*metrics.collect(run.model, t.val))
    assert scores["bce"] - scores["focal"] > 0.1, scores
    assert scores["bce"] < 1.0 or scores["focal"] < 1.0


def test_label_noise_can_be_turned_down_and_is_checked():
    from retrain_widgets.examples import code

    clean = digits_arrays()["y_train"]
    assert torch.equal(noisy_train_digits(0.0), clean)
    assert float(_concat(task("is_seven", label_noise=0.0).train)[1].sum()) == float((clean == 7).sum())
    # a lower rate mislabels a subset of the images a higher one does
    low, high = noisy_train_digits(0.1) != clean, noisy_train_digits() != clean
    assert bool((low <= high).all()) and 0 < int(low.sum()) < int(high.sum())
    assert "label_noise=0.0" in code("is_seven", label_noise=0.0)["data_code"]
    assert "label_noise" not in code("is_seven")["data_code"]
    for bad in (-0.1, 1.0, "0.3", True):
        with pytest.raises(ValueError, match="label_noise"):
            task("loops", label_noise=bad)


def test_the_shipped_split_is_scikit_learns_and_loading_it_needs_no_scikit_learn():
    from retrain_widgets.examples import data

    shipped = torch.load(data.SPLIT_PATH, weights_only=True)
    made = data.split_from_sklearn()
    assert list(shipped) == list(made)
    for name, tensor in made.items():
        assert shipped[name].dtype == tensor.dtype and torch.equal(shipped[name], tensor), name
    code = ("import sys; from retrain_widgets import examples; t = examples.task('is_seven'); "
            "next(iter(t.train)); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
