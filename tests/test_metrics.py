from __future__ import annotations

import pytest
import torch

from retrain_widgets.core import metrics


def test_multiclass_accuracy_by_hand() -> None:
    out = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 2])
    m = metrics.for_task("multiclass")
    assert m.name == "accuracy" and m.higher_is_better
    total, count = m.fn(out, y)
    assert total.dim() == 0 and float(total) == 2.0 and count == 4
    # class probabilities as targets: compared by argmax
    soft = torch.nn.functional.one_hot(y, 3).float()
    assert float(m.fn(out, soft)[0]) == 2.0
    # segmentation-shaped
    seg_total, seg_count = m.fn(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    assert seg_count == 32 and 0 <= float(seg_total) <= 32


def test_binary_accuracy_and_one_unit_alignment() -> None:
    logits = torch.tensor([1.5, -0.2, 0.3, -4.0, 2.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    m = metrics.for_task("binary")
    assert m.name == "accuracy" and m.higher_is_better
    total, count = m.fn(logits, y)
    assert float(total) == 3.0 and count == 5
    total1, count1 = m.fn(logits.unsqueeze(1), y)  # (N, 1) head against (N,)
    assert float(total1) == 3.0 and count1 == 5  # not a 5 x 5 broadcast
    multi_total, multi_count = m.fn(torch.tensor([[1.0, -1.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert float(multi_total) == 3.0 and multi_count == 4
    with pytest.raises(ValueError, match="do not match"):
        m.fn(torch.randn(5, 3), y)


def test_mae_and_one_unit_alignment() -> None:
    out = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([1.5, 2.0, 1.0, 5.0])
    m = metrics.for_task("regression")
    assert m.name == "mae" and not m.higher_is_better
    total, count = m.fn(out, y)
    assert float(total) == pytest.approx(3.5) and count == 4
    total1, count1 = m.fn(out.unsqueeze(1), y)
    assert float(total1) == pytest.approx(3.5) and count1 == 4  # a broadcast would give 24 over 16
    with pytest.raises(ValueError, match="do not match"):
        m.fn(torch.randn(4, 2), y)


def test_sums_stay_on_the_tensors_device() -> None:
    # the meta device has no data: a sum that reached the host would fail or change device
    cases = [
        ("multiclass", torch.randn(6, 4, device="meta"), torch.zeros(6, dtype=torch.long, device="meta")),
        ("binary", torch.randn(6, 1, device="meta"), torch.zeros(6, device="meta")),
        ("regression", torch.randn(6, 1, device="meta"), torch.zeros(6, device="meta")),
    ]
    for task, out, y in cases:
        total, count = metrics.for_task(task).fn(out, y)
        assert total.device == out.device and total.dim() == 0 and count == 6
        assert total.dtype == torch.float32
    cpu_total, _ = metrics.for_task("regression").fn(torch.randn(3), torch.randn(3))
    assert cpu_total.device.type == "cpu"


def test_accumulates_over_batches() -> None:
    torch.manual_seed(0)
    out, y = torch.randn(20, 5), torch.randint(0, 5, (20,))
    m = metrics.for_task("multiclass")
    total, count = torch.zeros(()), 0
    for i in range(0, 20, 6):
        s, c = m.fn(out[i:i + 6], y[i:i + 6])
        total, count = total + s, count + c
    assert count == 20
    assert float(total) / count == pytest.approx(float((out.argmax(1) == y).float().mean()))


def test_for_task_infers_from_a_batch() -> None:
    ids = torch.tensor([0, 2, 1, 1])
    assert metrics.for_task(None, torch.randn(4, 3), ids) is metrics.MULTICLASS_ACCURACY
    soft = torch.softmax(torch.randn(4, 3), 1)
    assert metrics.for_task(None, torch.randn(4, 3), soft) is metrics.MULTICLASS_ACCURACY
    assert metrics.for_task(None, torch.randn(4, 1), torch.tensor([0.0, 1.0, 1.0, 0.0])) is metrics.BINARY_ACCURACY
    assert metrics.for_task("any", torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()) is metrics.BINARY_ACCURACY
    assert metrics.for_task(None, torch.randn(4, 1), torch.randn(4)) is metrics.MAE
    assert metrics.for_task(None, torch.randn(4), torch.tensor([3.0, 0.0, 7.0, 1.0])) is metrics.MAE
    with pytest.raises(ValueError, match="task="):
        metrics.for_task(None, torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ValueError, match="batch"):
        metrics.for_task(None)
    with pytest.raises(ValueError, match="did you mean 'binary'"):
        metrics.for_task("binar")


def test_select_by_config_name() -> None:
    assert metrics.select("auto", "regression") is metrics.MAE
    assert metrics.select("mae", "multiclass") is metrics.MAE
    assert metrics.select("accuracy", "binary") is metrics.BINARY_ACCURACY
    assert metrics.select("accuracy", "multiclass") is metrics.MULTICLASS_ACCURACY
    with pytest.raises(ValueError, match="mae"):
        metrics.select("accuracy", "regression")
    with pytest.raises(ValueError, match="did you mean 'accuracy'"):
        metrics.select("acuracy")


# ----------------------------------------------------------------------------- whole-set scores


def test_balanced_accuracy_sees_a_missed_rare_class() -> None:
    y = torch.tensor([0.0] * 9 + [1.0])
    always_no = torch.full((10, 1), -3.0)  # accuracy 0.9, the positive never found
    assert metrics.balanced_accuracy(always_no, y) == pytest.approx(0.5)
    logits = torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 2.0, 2.0, 2.0])  # 2 false positives, TP 1
    assert metrics.balanced_accuracy(logits, y) == pytest.approx((7 / 9 + 1.0) / 2)
    assert metrics.balanced_accuracy(logits.unsqueeze(1), y) == pytest.approx((7 / 9 + 1.0) / 2)
    # multi-class: the mean of the per-class recalls, over the classes present
    out = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])
    ids = torch.tensor([0, 0, 1, 1])
    assert metrics.balanced_accuracy(out, ids) == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError, match="do not match"):
        metrics.balanced_accuracy(torch.randn(10, 3), y)


def test_f1_by_hand() -> None:
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    logits = torch.tensor([2.0, 1.0, -1.0, 3.0, -2.0, -2.0])  # TP 2, FN 1, FP 1
    assert metrics.f1(logits, y) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.f1(torch.full((6,), -1.0), y) == 0.0
    assert metrics.f1(torch.full((6, 1), 1.0), y) == pytest.approx(2 * 3 / (2 * 3 + 3))


def test_auroc_by_hand_with_ties() -> None:
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert metrics.auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), y) == pytest.approx(1.0)
    assert metrics.auroc(torch.tensor([0.4, 0.3, 0.2, 0.1]), y) == pytest.approx(0.0)
    # pairs (pos, neg): 0.3 > 0.1, 0.3 = 0.3 (half), 0.5 > both: (1 + 0.5 + 2) / 4
    assert metrics.auroc(torch.tensor([[0.1], [0.3], [0.3], [0.5]]), y) == pytest.approx(3.5 / 4)
    assert metrics.auroc(torch.zeros(4), y) == pytest.approx(0.5)
    # the same as counting every pair on random data
    torch.manual_seed(0)
    scores, labels = torch.randn(50).round(decimals=1), (torch.rand(50) < 0.3).float()
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    assert metrics.auroc(scores, labels) == pytest.approx(float(pairs.mean()))
    with pytest.raises(ValueError, match="both classes"):
        metrics.auroc(torch.randn(3), torch.ones(3))


def test_collect_keeps_mode_and_rng() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5)).train()
    x, y = torch.randn(10, 2), torch.rand(10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=True)
    state = torch.get_rng_state()
    outputs, targets = metrics.collect(net, loader)
    assert net.training and torch.equal(torch.get_rng_state(), state)
    assert outputs.shape == (10, 1) and targets.shape == (10,)
    order = torch.argsort(targets)
    with torch.no_grad():
        expected = net.eval()(x)[torch.argsort(y)]
    assert torch.allclose(outputs[order], expected)
    with pytest.raises(ValueError, match="no batch"):
        metrics.collect(net, [])
