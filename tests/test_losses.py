from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retrain_widgets.core import losses
from retrain_widgets.core.losses import LossMismatchError, check_compatibility
from retrain_widgets.core.registry import Param

N = 8


def _torchvision_focal(x: torch.Tensor, t: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss's formula, with reduction='mean'."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
    return loss.mean()


def _class_ids(n: int = N, classes: int = 10) -> torch.Tensor:
    ids = torch.randint(0, classes, (n,))
    ids[0] = classes - 1
    return ids


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.0, 2.0), (0.5, 0.0), (0.9, 1.5), (-1.0, 2.0), (-1.0, 0.0)])
def test_focal_matches_torchvision_formula(alpha: float, gamma: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(N, 3) * 3
    t = torch.randint(0, 2, (N, 3)).float()
    expected = _torchvision_focal(x, t, alpha, gamma)
    assert torch.allclose(losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma), expected, atol=1e-6)
    made = losses.make("focal", alpha=alpha, gamma=gamma)
    assert torch.allclose(made(x, t), expected, atol=1e-6)
    none = losses.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
    assert none.shape == x.shape


def test_focal_defaults_are_torchvisions() -> None:
    torch.manual_seed(1)
    x, t = torch.randn(N), torch.randint(0, 2, (N,)).float()
    assert torch.allclose(losses.make("focal")(x, t), _torchvision_focal(x, t, 0.25, 2.0), atol=1e-6)
    assert torch.allclose(losses.sigmoid_focal_loss(x, t), _torchvision_focal(x, t, 0.25, 2.0), atol=1e-6)


def test_softmax_focal_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(2)
    x, y = torch.randn(N, 5), torch.randint(0, 5, (N,))
    assert torch.allclose(losses.softmax_focal_loss(x, y, gamma=0.0), F.cross_entropy(x, y), atol=1e-6)
    assert torch.allclose(losses.make("focal_multiclass", gamma=0.0)(x, y), F.cross_entropy(x, y), atol=1e-6)
    y[:3] = -100  # ignored like cross entropy's ignore_index
    assert torch.allclose(losses.softmax_focal_loss(x, y, gamma=0.0), F.cross_entropy(x, y), atol=1e-6)
    # segmentation-shaped and class-probability targets
    xs, ys = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    assert torch.allclose(losses.softmax_focal_loss(xs, ys, gamma=0.0), F.cross_entropy(xs, ys), atol=1e-6)
    soft = torch.softmax(torch.randn(N, 5), dim=1)
    assert torch.allclose(losses.softmax_focal_loss(x, soft, gamma=0.0), F.cross_entropy(x, soft), atol=1e-6)
    # gamma > 0 down-weights: never above cross entropy
    assert losses.softmax_focal_loss(x, soft, gamma=2.0) < F.cross_entropy(x, soft)


def test_softmax_focal_by_hand() -> None:
    x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    alpha = [0.2, 0.3, 0.5]
    p = torch.softmax(x, dim=1)
    p_t = p[torch.arange(2), y]
    expected = (-torch.tensor([0.2, 0.3]) * (1 - p_t) ** 2 * p_t.log()).mean()
    assert torch.allclose(losses.softmax_focal_loss(x, y, gamma=2.0, alpha=alpha), expected, atol=1e-6)


def test_label_smoothing_matches_torch() -> None:
    torch.manual_seed(3)
    x, y = torch.randn(N, 6), torch.randint(0, 6, (N,))
    for s in (0.0, 0.1, 0.35):
        assert torch.allclose(losses.make("label_smoothing", smoothing=s)(x, y),
                              F.cross_entropy(x, y, label_smoothing=s), atol=1e-6)
    assert torch.allclose(losses.make("label_smoothing")(x, y), F.cross_entropy(x, y, label_smoothing=0.1))
    assert torch.allclose(losses.make("ce")(x, y), F.cross_entropy(x, y))


def test_bce_pos_weight_matches_torch() -> None:
    torch.manual_seed(4)
    x, t = torch.randn(N) * 4, torch.rand(N)
    assert torch.allclose(losses.make("bce")(x, t), F.binary_cross_entropy_with_logits(x, t))
    assert torch.allclose(losses.make("bce", pos_weight=3.0)(x, t),
                          F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(3.0)), atol=1e-6)


def test_regression_losses_match_torch() -> None:
    torch.manual_seed(5)
    x, t = torch.randn(N) * 3, torch.randn(N)
    assert torch.allclose(losses.make("mse")(x, t), F.mse_loss(x, t))
    assert torch.allclose(losses.make("huber", delta=0.5)(x, t), F.huber_loss(x, t, delta=0.5))
    assert torch.allclose(losses.make("smooth_l1", beta=0.3)(x, t), F.smooth_l1_loss(x, t, beta=0.3))
    assert torch.allclose(losses.make("l1")(x, t), F.l1_loss(x, t))


def test_distillation_by_hand() -> None:
    torch.manual_seed(6)
    s, t = torch.randn(N, 5), torch.randn(N, 5)
    for temp in (1.0, 2.0, 4.0):
        log_ps = torch.log_softmax(s / temp, dim=1)
        log_pt = torch.log_softmax(t / temp, dim=1)
        expected = temp**2 * (log_pt.exp() * (log_pt - log_ps)).sum() / N
        assert torch.allclose(losses.distillation_loss(s, t, temperature=temp), expected, atol=1e-6)
    assert losses.distillation_loss(t, t).abs() < 1e-6


def test_distillation_gradients_reach_the_student_only() -> None:
    torch.manual_seed(7)
    s = torch.randn(N, 4, requires_grad=True)
    t = torch.randn(N, 4, requires_grad=True)
    loss = losses.distillation_loss(s, t, temperature=3.0)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_distillation_shape_mismatch_raises() -> None:
    with pytest.raises(LossMismatchError, match=r"same shape.*\(8, 3\).*\(8, 10\)") as info:
        losses.distillation_loss(torch.randn(N, 3), torch.randn(N, 10))
    assert info.value.head_out == 10
    with pytest.raises(ValueError, match="temperature"):
        losses.distillation_loss(torch.randn(N, 3), torch.randn(N, 3), temperature=0)


# --------------------------------------------------------------------------- mismatches


def test_mse_on_one_unit_head_does_not_broadcast() -> None:
    torch.manual_seed(8)
    out, t = torch.randn(N, 1), torch.randn(N)
    reference = F.mse_loss(out.squeeze(1), t)
    mse = losses.make("mse")
    assert torch.allclose(mse(out, t), reference)
    assert torch.allclose(mse(out.squeeze(1), t), reference)
    check_compatibility(out, t, "mse")
    # a raw nn.MSELoss given as the loss: resolve() wraps it with the same alignment
    fn, spec = losses.resolve(nn.MSELoss())
    assert spec is not None and spec.name == "mse"
    assert torch.allclose(fn(out, t), reference)
    check_compatibility(out, t, nn.MSELoss())
    # for reference: what plain PyTorch would have computed (the (N, N) broadcast)
    with pytest.warns(UserWarning, match="broadcast"):
        assert not torch.allclose(nn.MSELoss()(out, t), reference)


def test_no_other_shape_difference_is_aligned() -> None:
    mse = losses.make("mse")
    with pytest.raises(LossMismatchError, match=r"squeeze\(1\)"):
        mse(torch.randn(N), torch.randn(N, 1))
    with pytest.raises(LossMismatchError):
        mse(torch.randn(N, 3), torch.randn(N, 2))


def test_a_signature_that_passed_is_not_checked_again_and_a_bad_one_always_raises(monkeypatch) -> None:
    ce = losses.make("ce")
    calls = []
    real = losses._task_problem
    monkeypatch.setattr(losses, "_task_problem", lambda *a, **k: calls.append(a[2].shape) or real(*a, **k))
    ids = _class_ids()
    for _ in range(3):
        ce(torch.randn(N, 10), ids)
    assert calls == [(N, 10)]  # checked once for these shapes and dtypes
    ce(torch.randn(N - 3, 10), ids[: N - 3])  # a last, smaller batch: a new signature, checked
    assert len(calls) == 2
    for _ in range(2):  # a mismatch is never remembered: it raises on every call
        with pytest.raises(LossMismatchError, match="1 output per sample"):
            ce(torch.randn(N, 1), ids)
    with pytest.raises(LossMismatchError, match="torch.float32"):
        ce(torch.randn(N, 10), ids.float())  # same shapes, other target dtype: checked, and raises
    before = len(calls)
    ce(torch.randn(N, 10), ids)  # the signatures that passed are still known
    ce(torch.randn(N - 3, 10), ids[: N - 3])
    assert len(calls) == before
    for n in range(1, 2 * ce.MAX_SIGNATURES):  # what it keeps stays bounded
        ce(torch.randn(n, 10), torch.zeros(n, dtype=torch.long))
    assert len(ce._passed) <= ce.MAX_SIGNATURES


def test_mse_on_ten_outputs_raises_with_head_out_1() -> None:
    with pytest.raises(LossMismatchError, match=r"10 outputs per sample; 'mse' needs 1") as info:
        check_compatibility(torch.randn(N, 10), torch.randn(N), "mse")
    err = info.value
    assert err.head_out == 1
    assert err.loss == "mse"
    assert err.outputs_shape == (N, 10) and err.targets_shape == (N,)
    assert err.outputs_dtype == torch.float32 and err.targets_dtype == torch.float32
    # the made callable raises the same instead of broadcasting
    with pytest.raises(LossMismatchError):
        losses.make("mse")(torch.randn(N, 10), torch.randn(N))
    # class-id targets: 'ce' fits them as they are
    with pytest.raises(LossMismatchError, match="'ce'") as info:
        check_compatibility(torch.randn(N, 10), _class_ids(), "mse")
    assert info.value.head_out == 1
    assert "ce" in info.value.suggested_losses


def test_ce_on_one_unit_head_raises() -> None:
    ids = _class_ids(classes=10)
    with pytest.raises(LossMismatchError, match=r"1 output per sample.*'ce'.*10 outputs.*0\.\.9") as info:
        check_compatibility(torch.randn(N, 1, requires_grad=True), ids, "ce")
    assert info.value.head_out == int(ids.max()) + 1 == 10
    # zeros only: plain PyTorch gives a silent 0 loss here; the made loss raises
    zeros = torch.zeros(N, dtype=torch.long)
    assert F.cross_entropy(torch.randn(N, 1), zeros) == 0
    with pytest.raises(LossMismatchError, match="'ce'") as info:
        losses.make("ce")(torch.randn(N, 1), zeros)
    assert info.value.head_out == 2
    with pytest.raises(LossMismatchError, match="1 output per sample"):
        check_compatibility(torch.randn(N, 1), ids, nn.CrossEntropyLoss())


def test_ce_with_float_targets_raises() -> None:
    ids = _class_ids(classes=4)
    with pytest.raises(LossMismatchError, match=r"torch\.float32.*\.long\(\)"):
        check_compatibility(torch.randn(N, 4), ids.float(), "ce")
    with pytest.raises(LossMismatchError, match=r"'bce'.*'mse'"):
        check_compatibility(torch.randn(N, 4), torch.rand(N), "ce")
    with pytest.raises(LossMismatchError, match=r"\.long\(\)"):
        losses.make("ce")(torch.randn(N, 4), ids.float())
    # class probabilities of the outputs' shape are fine
    check_compatibility(torch.randn(N, 4), torch.softmax(torch.randn(N, 4), 1), "ce")


def test_ce_with_target_out_of_range_raises() -> None:
    ids = _class_ids(classes=6)  # ids up to 5: one past the last of 5 logits
    with pytest.raises(LossMismatchError, match=r"up to 5.*5 logits") as info:
        check_compatibility(torch.randn(N, 5), ids, "ce")
    assert info.value.head_out == 6
    with pytest.raises(LossMismatchError, match="negative class id"):
        check_compatibility(torch.randn(N, 5), torch.full((N,), -3), "ce")
    # -100 is cross entropy's ignore_index
    ids = torch.randint(0, 5, (N,))
    ids[:2] = -100
    check_compatibility(torch.randn(N, 5, requires_grad=True), ids, "ce")


def test_ce_segmentation_shapes() -> None:
    out, ids = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randint(0, 3, (2, 4, 4))
    check_compatibility(out, ids, "ce")
    assert torch.allclose(losses.make("ce")(out, ids), F.cross_entropy(out, ids))
    with pytest.raises(LossMismatchError, match=r"\(2, 4, 4\)"):
        check_compatibility(out, ids.view(2, 16), "ce")


def test_bce_on_ten_logits_raises() -> None:
    targets = torch.randint(0, 2, (N,)).float()
    with pytest.raises(LossMismatchError, match=r"10 logits per sample; 'bce' needs 1") as info:
        check_compatibility(torch.randn(N, 10), targets, "bce")
    assert info.value.head_out == 1
    assert info.value.suggested_losses == ()  # float 0/1 targets: only a new head helps
    with pytest.raises(LossMismatchError, match="10"):
        losses.make("bce")(torch.randn(N, 10), targets)


def test_bce_with_long_targets_suggests_float() -> None:
    with pytest.raises(LossMismatchError, match=r"torch\.int64.*targets\.float\(\)"):
        check_compatibility(torch.randn(N, 1), torch.randint(0, 2, (N,)), "bce")
    with pytest.raises(LossMismatchError, match=r"\.float\(\)"):
        losses.make("bce")(torch.randn(N), torch.randint(0, 2, (N,)))


def test_bce_targets_outside_0_1_raise() -> None:
    with pytest.raises(LossMismatchError, match=r"\[0, 1\].*'ce'"):
        check_compatibility(torch.randn(N), _class_ids(classes=5).float(), "bce")


def test_bce_aligns_one_unit_head_and_multi_label() -> None:
    torch.manual_seed(9)
    out, t = torch.randn(N, 1, requires_grad=True), torch.randint(0, 2, (N,)).float()
    check_compatibility(out, t, "bce")
    assert torch.allclose(losses.make("bce")(out, t), F.binary_cross_entropy_with_logits(out.squeeze(1), t))
    multi, tm = torch.randn(N, 3, requires_grad=True), torch.randint(0, 2, (N, 3)).float()
    check_compatibility(multi, tm, "focal")
    check_compatibility(multi, tm, nn.BCEWithLogitsLoss())


def test_focal_on_ten_logits_with_binary_targets_raises() -> None:
    with pytest.raises(LossMismatchError, match="'focal'") as info:
        check_compatibility(torch.randn(N, 10), torch.randint(0, 2, (N,)).float(), "focal")
    assert info.value.head_out == 1


def test_regression_with_long_targets_suggests_float() -> None:
    with pytest.raises(LossMismatchError, match=r"targets\.float\(\)"):
        check_compatibility(torch.randn(N), torch.randint(0, 5, (N,)), "huber")


def test_batch_size_and_nan_checks() -> None:
    with pytest.raises(LossMismatchError, match="batch sizes"):
        check_compatibility(torch.randn(N, 3), torch.randint(0, 3, (N + 1,)), "ce")
    bad = torch.randn(N, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(LossMismatchError, match="NaN"):
        check_compatibility(bad, torch.randint(0, 3, (N,)), "ce")


def test_check_compatibility_leaves_inputs_alone() -> None:
    out, t = torch.randn(N, 1, requires_grad=True), torch.randn(N)
    before_o, before_t = out.detach().clone(), t.clone()
    check_compatibility(out, t, "mse")
    assert torch.equal(out.detach(), before_o) and torch.equal(t, before_t)
    assert out.shape == (N, 1) and out.grad is None


def test_custom_callable_that_broadcasts_raises() -> None:
    out, t = torch.randn(N, 1, requires_grad=True), torch.randn(N)
    with pytest.raises(LossMismatchError, match="broadcast") as info:
        check_compatibility(out, t, lambda o, y: F.mse_loss(o, y))  # torch warns
    assert info.value.head_out == 1

    def silent(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # no warning at all
        return ((o - y) ** 2).mean()

    with pytest.raises(LossMismatchError, match="broadcast"):
        check_compatibility(out, t, silent)


def test_custom_callable_bad_results_raise() -> None:
    out, t = torch.randn(N, requires_grad=True), torch.randn(N)
    with pytest.raises(LossMismatchError, match=r"shape \(8,\).*\.mean\(\)"):
        check_compatibility(out, t, lambda o, y: (o - y) ** 2)
    with pytest.raises(LossMismatchError, match="float"):
        check_compatibility(out, t, lambda o, y: ((o - y) ** 2).mean().detach().item())
    with pytest.raises(LossMismatchError, match="gradient"):
        check_compatibility(out, t, lambda o, y: ((o.detach() - y) ** 2).mean())
    with pytest.raises(LossMismatchError, match="finite"):
        check_compatibility(out, t, lambda o, y: (o - y).sum() * float("inf"))

    def exploding(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    # the user's own bug keeps its identity (tests/test_user_errors.py): their exception, with a note
    with pytest.raises(RuntimeError, match="boom") as info:
        check_compatibility(out, t, exploding)
    assert not isinstance(info.value, LossMismatchError)
    assert "'exploding'" in "".join(info.value.__notes__)


def test_good_custom_callable_passes() -> None:
    out, t = torch.randn(N, 1, requires_grad=True), torch.randn(N)

    def my_loss(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (o.squeeze(1) - y).abs().mean()

    check_compatibility(out, t, my_loss)
    fn, spec = losses.resolve(my_loss)
    assert fn is my_loss and spec is None
    assert losses.task_of(my_loss) is None
    # non-tensor targets are fine for a custom loss
    check_compatibility(torch.randn(N, 2, requires_grad=True), {"y": t},
                        lambda o, y: (o[:, 0] - y["y"]).pow(2).mean())


# --------------------------------------------------------------------------- registry


def test_registered_names_and_tasks() -> None:
    expected = {"ce": "multiclass", "label_smoothing": "multiclass", "focal_multiclass": "multiclass",
                "bce": "binary", "focal": "binary",
                "mse": "regression", "huber": "regression", "smooth_l1": "regression", "l1": "regression"}
    assert set(expected) <= set(losses.available())
    for name, task in expected.items():
        assert losses.get(name).task == task
        assert losses.task_of(name) == task
    assert losses.task_of(nn.CrossEntropyLoss()) == "multiclass"
    assert losses.task_of(nn.BCEWithLogitsLoss()) == "binary"
    assert losses.task_of(nn.SmoothL1Loss()) == "regression"
    assert losses.task_of(losses.make("huber")) == "regression"
    assert losses.task_of(lambda o, t: o.sum()) is None


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match=r"did you mean 'focal'"):
        losses.make("focla")
    with pytest.raises(ValueError, match=r"did you mean 'huber'"):
        check_compatibility(torch.randn(N), torch.randn(N), "hubber")


def test_unknown_kwarg_raises_naming_it() -> None:
    with pytest.raises(ValueError, match=r"no parameter 'gama'.*did you mean 'gamma'"):
        losses.make("focal", gama=2.0)
    with pytest.raises(ValueError, match="no parameter 'smoothing'"):
        losses.make("ce", smoothing=0.1)


@pytest.mark.parametrize("name,kwargs", [
    ("label_smoothing", {"smoothing": 1.5}),
    ("label_smoothing", {"smoothing": 1.0}),
    ("label_smoothing", {"smoothing": -0.1}),
    ("focal", {"gamma": -1}),
    ("focal_multiclass", {"gamma": -1}),
    ("focal", {"alpha": 1.5}),
    ("huber", {"delta": 0}),
    ("bce", {"pos_weight": 0}),
    ("focal", {"gamma": "two"}),
])
def test_out_of_range_kwarg_raises(name: str, kwargs: dict) -> None:
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=key):
        losses.make(name, **kwargs)


def test_resolve_forms() -> None:
    fn, spec = losses.resolve("focal", gamma=1.0)
    assert spec is losses.get("focal")
    fn2, spec2 = losses.resolve(losses.get("label_smoothing"), smoothing=0.2)
    assert spec2 is not None and spec2.name == "label_smoothing"
    x, y = torch.randn(N, 3), torch.randint(0, 3, (N,))
    assert torch.allclose(fn2(x, y), F.cross_entropy(x, y, label_smoothing=0.2))
    module = nn.CrossEntropyLoss(label_smoothing=0.3)
    fn3, spec3 = losses.resolve(module)
    assert spec3 is not None and spec3.name == "ce"
    assert torch.allclose(fn3(x, y), module(x, y))  # keeps the module's own settings
    with pytest.raises(ValueError, match="registered losses only"):
        losses.resolve(nn.MSELoss(), delta=1.0)
    with pytest.raises(ValueError, match="callable"):
        losses.resolve(42)


def test_register_custom_loss_and_make_it() -> None:
    def weighted_l1(o: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        return weight * (o - y).abs().mean()

    try:
        spec = losses.register("test_weighted_l1", weighted_l1, task="regression",
                               params={"weight": Param(1.0, "float", 0.0, 10.0)})
        assert spec.name == "test_weighted_l1" and "test_weighted_l1" in losses.available()
        o, y = torch.randn(N, 1), torch.randn(N)
        fn = losses.make("test_weighted_l1", weight=2.0)
        assert torch.allclose(fn(o, y), 2.0 * (o.squeeze(1) - y).abs().mean())  # regression alignment
        with pytest.raises(ValueError, match="weight"):
            losses.make("test_weighted_l1", weight=11.0)
        with pytest.raises(ValueError, match="already registered"):
            losses.register("test_weighted_l1", weighted_l1)
        check_compatibility(o.requires_grad_(), y, "test_weighted_l1", weight=0.5)

        # a factory (here a loss class) and a task-less plain callable
        losses.register("test_mse_class", nn.MSELoss, task="regression", overwrite=True)
        assert isinstance(losses.make("test_mse_class").fn, nn.MSELoss)
        losses.register("test_any", lambda o, t: (o - t).pow(2).mean())
        assert losses.task_of("test_any") is None
        assert torch.allclose(losses.make("test_any")(o.squeeze(1), y), F.mse_loss(o.squeeze(1), y))
        with pytest.raises(ValueError, match="task"):
            losses.register("test_bad", weighted_l1, task="classification")
    finally:
        for name in ("test_weighted_l1", "test_mse_class", "test_any"):
            losses.REGISTRY._entries.pop(name, None)
