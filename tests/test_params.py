from __future__ import annotations

import pytest
import torch
from torch import nn

from retrain_widgets import RunConfig, freeze, layer_groups, make_optimizer, param_groups, schedules, unfreeze
from retrain_widgets.core.params import group_lrs


def test_every_parameter_once_frozen_included(cnn):
    freeze(cnn, ["features"])
    groups = param_groups(cnn, RunConfig())
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(cnn.parameters()))


def test_no_decay_for_bias_and_norms(cnn):
    groups = param_groups(cnn, RunConfig(weight_decay=0.05))
    bn = cnn.features[1]
    for g in groups:
        ids = {id(p) for p in g["params"]}
        if id(bn.weight) in ids or id(cnn.classifier[3].bias) in ids:
            assert g["weight_decay"] == 0.0
        if id(cnn.features[0].weight) in ids:
            assert g["weight_decay"] == 0.05


def test_discriminative_lrs(cnn):
    cfg = RunConfig(lr=1e-2, lr_decay=0.5)
    lrs = group_lrs(make_optimizer(cnn, cfg))
    names = [g.name for g in layer_groups(cnn)]
    assert list(lrs) == names
    n = len(names)
    for i, name in enumerate(names):
        assert lrs[name] == pytest.approx(1e-2 * 0.5 ** (n - 1 - i))


@pytest.mark.parametrize("opt", ["adamw", "adam", "sgd"])
def test_optimizers(cnn, opt):
    o = make_optimizer(cnn, RunConfig(optimizer=opt, momentum=0.5))
    assert type(o).__name__.lower() == opt
    if opt == "sgd":
        assert o.param_groups[0]["momentum"] == 0.5


@pytest.mark.parametrize("shape", [s for s in schedules.available() if not schedules.get(s).metric_driven])
def test_unfreeze_mid_schedule_follows_the_schedule(cnn, shape):
    """Unfreezing never adds a group, so every scheduler keeps working and the newly
    unfrozen parameters follow the LR the schedule has reached."""
    total = 40
    cfg = RunConfig(lr=1e-2, lr_decay=0.5, schedule=shape, frozen=["features"])
    freeze(cnn, cfg.frozen)
    opt = make_optimizer(cnn, cfg)
    sched = schedules.make(shape, opt, total, **cfg.schedule_kwargs)
    n_groups = len(opt.param_groups)
    conv = cnn.features[0].weight
    conv_group = next(gr for gr in opt.param_groups if any(p is conv for p in gr["params"]))
    ratio = conv_group["initial_lr"] / opt.param_groups[-1]["initial_lr"]
    assert ratio < 1  # discriminative: the conv's group learns slower than the head
    top_lr = cfg.lr
    expected_top = schedules.preview(shape, total, lr=top_lr, **cfg.schedule_kwargs)
    g = torch.Generator().manual_seed(0)
    before = conv.detach().clone()
    cnn.train()
    for step in range(total):
        if step == total // 2:
            assert torch.equal(conv, before), "frozen conv moved before unfreezing"
            unfreeze(cnn, ["features"])
        x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(cnn(x), y).backward()
        assert opt.param_groups[-1]["lr"] == pytest.approx(expected_top[step], rel=1e-6, abs=1e-12)
        assert conv_group["lr"] == pytest.approx(ratio * expected_top[step], rel=1e-6, abs=1e-12)
        opt.step()
        sched.step()
    assert len(opt.param_groups) == n_groups
    assert not torch.equal(conv, before), "unfrozen conv did not follow the schedule"
