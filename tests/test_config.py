from __future__ import annotations

import json

import pytest
import torch

from retrain_widgets import RunConfig, losses


def test_defaults_round_trip_through_json():
    cfg = RunConfig()
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg


def test_full_config_round_trip():
    cfg = RunConfig(loss="focal", loss_kwargs={"gamma": 3.0, "alpha": 0.5}, frozen=["features"], train_bn=True,
                    optimizer="sgd", lr=0.01, weight_decay=0.0, momentum=0.8, lr_decay=1 / 2.6,
                    schedule="one_cycle", schedule_kwargs={"pct_start": 0.2}, epochs=4, max_steps=100, seed=3,
                    device="cpu", head="classifier.3", head_out=1, gradual=True, unfreeze_every=2,
                    distill={"alpha": 0.7, "temperature": 3.0}, l2sp=0.01, amp=True, grad_clip=1.0,
                    metric="accuracy")
    text = json.dumps(cfg.to_dict())
    assert RunConfig.from_dict(json.loads(text)) == cfg


def test_unknown_key_names_it():
    with pytest.raises(ValueError, match=r"no field 'lerning_rate'"):
        RunConfig.from_dict({"lerning_rate": 0.1})
    with pytest.raises(ValueError, match=r"'epoch'.*did you mean 'epochs'"):
        RunConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    "field,value,pattern",
    [
        ("lr", -1.0, r"RunConfig.lr must be > 0"),
        ("lr", "fast", r"RunConfig.lr must be a number"),
        ("epochs", 0, r"RunConfig.epochs must be >= 1"),
        ("epochs", 2.5, r"whole number"),
        ("optimizer", "adamm", r"did you mean 'adam"),
        ("device", "tpu", r"RunConfig.device must be one of"),
        ("loss", "focall", r"unknown loss 'focall'.*'focal'"),
        ("schedule", "cosin", r"unknown schedule 'cosin'.*'cosine'"),
        ("lr_decay", 1.5, r"lr_decay must be <= 1"),
        ("frozen", "features", r"list of dotted module names"),
        ("distill", {"alpha": 2.0}, r"distill\['alpha'\] must be <= 1"),
        ("distill", {"beta": 1}, r"unknown keys \['beta'\]"),
        ("head_out", 0, r"head_out must be >= 1"),
    ],
)
def test_bad_values_name_the_field(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        RunConfig(**{field: value})


def test_loss_and_schedule_kwargs_are_checked():
    with pytest.raises(ValueError, match="gama"):
        RunConfig(loss="focal", loss_kwargs={"gama": 2})
    with pytest.raises(ValueError, match="step_sise|step_size"):
        RunConfig(schedule="step", schedule_kwargs={"step_sise": 3})


def test_custom_callable_loss_needs_registering_for_json():
    def my_loss(out, target):
        return (out.sum() - target.sum()) ** 2

    cfg = RunConfig(loss=my_loss)
    with pytest.raises(ValueError, match="register it with retrain_widgets.losses.register"):
        cfg.to_dict()
    losses.register("my_test_loss", my_loss, task="regression", overwrite=True)
    assert RunConfig.from_dict(RunConfig(loss="my_test_loss").to_dict()).loss == "my_test_loss"


def test_replace_validates_and_diff():
    cfg = RunConfig()
    other = cfg.replace(lr=0.1, loss="mse")
    assert cfg.diff(other) == {"lr": (0.001, 0.1), "loss": ("ce", "mse")}
    with pytest.raises(ValueError, match="no field 'lrr'"):
        cfg.replace(lrr=1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        cfg.replace(lr=0)


def test_name_lists_come_from_their_registries():
    """The optimizer and metric names a RunConfig accepts are those of the registries, once."""
    from retrain_widgets.core import config, metrics
    from retrain_widgets.core.params import OPTIMIZER_REGISTRY

    assert config.OPTIMIZERS == tuple(OPTIMIZER_REGISTRY) == ("adamw", "adam", "sgd")
    OPTIMIZER_REGISTRY.register("test_rmsprop", lambda groups, c: torch.optim.RMSprop(groups, lr=c.lr))
    try:
        assert RunConfig(optimizer="test_rmsprop").optimizer == "test_rmsprop"
        assert "test_rmsprop" in config.OPTIMIZERS
    finally:
        OPTIMIZER_REGISTRY.remove("test_rmsprop")
    assert "test_rmsprop" not in config.OPTIMIZERS
    for name in metrics.NAMES:
        assert RunConfig(metric=name).metric == name
    with pytest.raises(ValueError, match=r"metric must be one of \['auto', 'accuracy', 'mae'\]"):
        RunConfig(metric="f1")
    with pytest.raises(ValueError, match=r"unknown metric 'f1'.*'auto', 'accuracy', 'mae'"):
        metrics.select("f1")
