"""Late bad targets: a class id out of range or a binary target outside [0, 1] in a later batch stops the
run with an error naming the step, the value and the fix (on the CPU at once; on CUDA at the publish,
the path forced here on the CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrain_widgets import RunConfig, State
from retrain_widgets.core.engine import Retrainer
from retrain_widgets.core.target_guard import BadTargets


def _net(n_out: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, n_out))


def _batches(bad_at: int, bad_value, binary: bool = False, n: int = 8):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(16, 5, generator=g)
        y = (torch.randint(0, 2, (16,), generator=g).float() if binary
             else torch.randint(0, 4, (16,), generator=g))
        if i == bad_at:
            y[5] = bad_value
        out.append((x, y))
    return out


def _cfg(**kw):
    return RunConfig(**{"epochs": 1, "alignment_every": None, "cache_features": False, **kw})


def _deferred(r: Retrainer) -> Retrainer:
    """The CUDA path on the CPU: rows kept on the "device", read at the publish."""
    g = r.target_guard
    g.host = False
    g.rows = torch.zeros(g.capacity, 3, dtype=torch.float64)
    return r


def test_class_id_out_of_range_in_a_late_batch_names_the_step_value_and_fix():
    r = Retrainer(_net(), _cfg(), _batches(5, 7))
    r.start()
    with pytest.raises(BadTargets) as info:
        r.wait()
    text = str(info.value)
    assert "step 5" in text and "class id 7" in text and "0..3" in text and "head_out=8" in text
    assert r.state == State.FAILED and r.step == 5
    assert len(r.history.series("train_loss")[0]) == 5  # the steps before it were kept


@pytest.mark.parametrize("loss", ["bce", "focal"])
@pytest.mark.parametrize("value", [3.0, -2.0])
def test_binary_target_outside_0_1_in_a_late_batch(loss, value):
    r = Retrainer(_net(1), _cfg(loss=loss), _batches(6, value, binary=True))
    r.start()
    with pytest.raises(BadTargets, match=rf"step 6 .*target {value:g}, outside \[0, 1\].*{loss}"):
        r.wait()
    assert r.state == State.FAILED and r.step == 6


def test_ignore_index_is_not_a_bad_target():
    r = Retrainer(_net(), _cfg(), _batches(3, -100))
    r.fit()
    assert r.state == State.FINISHED


def test_deferred_check_reports_at_the_publish_without_an_index_error():
    r = _deferred(Retrainer(_net(), _cfg(epochs=2), _batches(5, 9), publish_every=4, publish_seconds=60))
    r.start()
    with pytest.raises(BadTargets, match=r"step 5 .*class id 9"):
        r.wait()
    assert r.state == State.FAILED and r.step == 8  # found at the publish after step 7 (the buffer of 4)
    assert r.history.series("train_loss")[0].tolist() == [0, 1, 2, 3, 4]


def test_deferred_check_binary():
    r = _deferred(Retrainer(_net(1), _cfg(loss="bce"), _batches(2, 5.0, binary=True), publish_every=4,
                            publish_seconds=60))
    r.start()
    with pytest.raises(BadTargets, match=r"step 2 .*target 5"):
        r.wait()


def test_a_failed_studio_leaves_no_error_at_garbage_collection():
    import gc
    import sys

    from retrain_widgets import RetrainStudio

    seen = []
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with pytest.raises(ValueError, match="torch.nn.Module"):
            RetrainStudio("not a model", [])
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert not [u for u in seen if "headless" in str(u.exc_value)], [str(u.exc_value) for u in seen]


def test_on_the_cpu_the_losss_own_raise_is_the_check_and_other_raises_pass_unchanged():
    """Class ids cost no per-step read on the CPU: the loss's IndexError becomes BadTargets (its cause
    kept); a raise the targets did not cause goes on as it was."""
    r = Retrainer(_net(), _cfg(), _batches(9, 0))
    guard, out = r.target_guard, torch.randn(16, 4)
    fine, bad = torch.randint(0, 4, (16,)), torch.tensor([0] * 15 + [6])
    with pytest.raises(BadTargets, match="class id 6") as info:
        guard(out, bad)
    assert isinstance(info.value.__cause__, IndexError)

    def broken(outputs, targets):
        raise RuntimeError("not about the targets")

    r.loss_fn = broken
    with pytest.raises(RuntimeError, match="not about the targets"):
        guard(out, fine)
