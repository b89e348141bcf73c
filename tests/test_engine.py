from __future__ import annotations

import math
import re
import signal
import threading
import time

import numpy as np
import pytest
import torch
from conftest import SlowLoader, assert_same_state, state_copy
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from retrain_widgets import Event, Retrainer, RunConfig, State, TrainingFailed, examples, losses, schedules
from retrain_widgets.core.tree import is_locked_norm


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


@pytest.fixture(scope="module")
def loaders():
    return examples.digits_loaders(batch_size=64)


# ----------------------------------------------------------------------------- states


def test_fit_finishes_and_records(cnn, loaders):
    train, val = loaders
    r = Retrainer(cnn, RunConfig(epochs=1, lr=1e-3), train, val, old_val=val)
    assert r.state == State.IDLE
    seen = []
    r.on(Event.STATE_CHANGE, lambda info: seen.append(info.data["state"]))
    h = r.fit()
    assert r.state == State.FINISHED and seen == [State.RUNNING, State.FINISHED]
    steps, loss = h.series("train_loss")
    assert steps.tolist() == list(range(len(train)))
    assert np.all(np.isfinite(loss))
    vs, vm = h.series("val_metric")
    assert vs.tolist() == [len(train)] and vm[0] > 0.9
    assert h.series("old_metric")[1][0] == pytest.approx(vm[0])  # same head, same task
    gs, cols, g = h.layer_series("grad_norm")
    assert cols == r.layer_names and g.shape == (len(train), len(cols)) and np.all(g > 0)
    ds, _, d = h.layer_series("drift")
    assert np.all(d[-1] > 0)
    with pytest.raises(RuntimeError, match="has ended"):
        r.start()


def test_start_twice_is_an_error(cnn, loaders):
    r = Retrainer(cnn, RunConfig(epochs=3), SlowLoader(loaders[0]))
    r.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            r.start()
    finally:
        r.stop()
        r.join(10)
    assert r.state == State.STOPPED


def test_pause_resume_stop_from_another_thread(cnn, loaders):
    train = SlowLoader(loaders[0], delay=0.005)
    r = Retrainer(cnn, RunConfig(epochs=5), train)
    reached = threading.Event()
    r.on(Event.STEP_END, lambda info: info.step >= 5 and reached.set())
    r.start()
    assert reached.wait(10)
    controller = threading.Thread(target=r.pause)
    controller.start()
    controller.join(1)
    deadline = time.time() + 5
    while r.state != State.PAUSED and time.time() < deadline:
        time.sleep(0.01)
    assert r.state == State.PAUSED
    step = r.step
    before = state_copy(r.model)
    time.sleep(0.3)
    assert r.step == step  # nothing moves while paused
    assert_same_state(r.model, before)
    r.resume()
    deadline = time.time() + 5
    while r.step <= step and time.time() < deadline:
        time.sleep(0.01)
    assert r.step > step and r.state == State.RUNNING
    stopper = threading.Thread(target=r.stop)
    stopper.start()
    stopper.join(1)
    assert r.join(timeout=5), "stop() did not end the run within 5 s"
    assert r.state == State.STOPPED and r.step < r.total_steps
    history = r.wait()
    assert history.series("train_loss")[0][-1] == r.step - 1  # every completed step was published


def test_wait_timeout_and_keyboard_interrupt(cnn, loaders):
    import _thread

    # Python's own SIGINT handler, as in a terminal or a kernel: a process started as a background
    # job of a script inherits SIGINT ignored, and interrupt_main() then does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r = Retrainer(cnn, RunConfig(epochs=20), SlowLoader(loaders[0]))
        r.start()
        with pytest.raises(TimeoutError, match="still running"):
            r.wait(timeout=0.2)
        threading.Timer(0.2, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt, match="training stopped at step"):
            r.wait()
        assert r.state == State.STOPPED
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- the original is untouched


def test_original_model_bit_identical_after_any_run(cnn, seven):
    before = state_copy(cnn)
    modes = [m.training for m in cnn.modules()]
    cfg = RunConfig(loss="focal", head_out=1, frozen=["features.0"], gradual=True, epochs=2,
                    distill={"alpha": 0.5, "temperature": 2.0}, l2sp=0.01, lr=1e-2)
    r = Retrainer(cnn, cfg, seven.train, seven.val, seven.old_val)
    r.fit()
    assert_same_state(cnn, before)
    assert [m.training for m in cnn.modules()] == modes
    assert cnn.classifier[3].out_features == 10
    assert all(p.requires_grad for p in cnn.parameters())
    assert not any(is_locked_norm(m) for m in cnn.modules())


def test_frozen_bn_untouched_across_a_run(cnn, loaders):
    train, val = loaders
    r = Retrainer(cnn, RunConfig(frozen=["features"], epochs=2, weight_decay=0.1, lr=1e-2), train, val)
    before = state_copy(r.model.features)
    r.fit()
    assert_same_state(r.model.features, before)
    grads = r.history.layer_series("grad_norm")
    frozen_cols = [i for i, n in enumerate(grads[1]) if n.startswith("features")]
    assert np.all(np.isnan(grads[2][:, frozen_cols]))  # frozen layers have no gradient
    drift = r.history.layer_series("drift")[2][-1]
    assert np.all(drift[frozen_cols] == 0)


def test_old_task_through_the_original_head(cnn, seven):
    """Head replaced and backbone frozen: the old task is measured through the original head
    and cannot have changed."""
    cfg = RunConfig(loss="bce", head_out=1, frozen=["features", "classifier.0"], epochs=1, lr=1e-2)
    r = Retrainer(cnn, cfg, seven.train, seven.val, seven.old_val)
    r.fit()
    assert r.model.classifier[3].out_features == 1
    old = r.history.series("old_metric")[1][0]
    cnn.eval()
    with torch.no_grad():
        correct = sum((cnn(x).argmax(1) == y).sum().item() for x, y in seven.old_val)
    assert old == pytest.approx(correct / len(seven.old_val.dataset))
    assert r.history.meta["old_metric"] == "accuracy" and r.history.meta["metric"] == "accuracy"


# ----------------------------------------------------------------------------- strategies


def test_gradual_unfreezing_stages(cnn, loaders):
    train, val = loaders
    cfg = RunConfig(gradual=True, epochs=3, unfreeze_every=1, lr=1e-2)
    r = Retrainer(cnn, cfg, train, val)
    groups = r.groups
    assert [p.requires_grad for p in r.model.parameters()].count(True) == 2  # the head only
    changes = []
    r.on(Event.STAGE_CHANGE, lambda info: changes.append((info.step, info.data["group"])))
    low = state_copy(r.model.features)
    r.fit()
    assert [g for _, g in changes] == [groups[-2].name, groups[-3].name]
    assert [s["stage"] for s in r.history.meta["stages"]] == [0, 1, 2]
    assert all("val_metric" in s for s in r.history.meta["stages"])
    # features.0 (the lowest group) was never unfrozen within 3 stages
    assert torch.equal(r.model.features[0].weight, low["0.weight"])
    assert not torch.equal(r.model.features[8].weight, low["8.weight"])
    kinds = [m[1] for m in r.history.markers]
    assert kinds.count("stage") == 2


def test_distillation_loss_matches_formula(cnn, loaders):
    train, _ = loaders
    alpha, T = 0.3, 3.0
    r = Retrainer(cnn, RunConfig(distill={"alpha": alpha, "temperature": T}), train)
    x, y = next(iter(train))
    r.model.train()
    torch.manual_seed(0)
    got = r._loss((x, y))
    torch.manual_seed(0)
    student = r.model(x)
    with torch.no_grad():
        teacher = cnn.eval()(x)
    p_t = F.softmax(teacher / T, 1)
    kl = (p_t * (F.log_softmax(teacher / T, 1) - F.log_softmax(student / T, 1))).sum(1).mean()
    want = alpha * F.cross_entropy(student, y) + (1 - alpha) * T * T * kl
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_distillation_shape_mismatch_is_clear(cnn, loaders):
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    r = Retrainer(cnn, RunConfig(distill={"alpha": 0.5, "temperature": 2.0}), loaders[0], teacher=teacher)
    with pytest.raises(ValueError, match=r"teacher gives \(64, 4\), the student \(64, 10\)"):
        r.start()
    assert r.state == State.IDLE


def test_l2sp_reduces_drift(cnn, loaders):
    train, _ = loaders

    def final_drift(strength):
        r = Retrainer(cnn, RunConfig(l2sp=strength, lr=1e-2, epochs=1, seed=1, loss="label_smoothing"), train)
        r.fit()
        _, cols, d = r.history.layer_series("drift")
        return d[-1][[i for i, c in enumerate(cols) if c.startswith("features")]].sum()

    assert final_drift(5.0) < 0.8 * final_drift(0.0)


def test_last_gradients_dropped_before_each_forward_and_readable_between_steps(cnn, loaders):
    train, _ = loaders
    r = Retrainer(cnn, RunConfig(epochs=1, max_steps=4, lr=1e-3), train)
    head = r.model.get_submodule(r.head_name)
    at_forward, at_backward_end, at_step_end = [], [], []

    def before_forward(module, args):
        if module.training and torch.is_grad_enabled():  # the training forward, not the check's
            at_forward.append(head.weight.grad is None)

    r.model.register_forward_pre_hook(before_forward)
    r.on(Event.BACKWARD_END, lambda info: at_backward_end.append(head.weight.grad is not None))
    r.on(Event.STEP_END, lambda info: at_step_end.append(head.weight.grad is not None))
    r.fit()
    assert at_forward == [True] * 4  # the forward pass runs without the last step's gradients
    assert at_backward_end == at_step_end == [True] * 4  # this step's stay until the next step begins
    assert head.weight.grad is not None  # and after the run


def test_set_lr_and_freeze_while_running(cnn, loaders):
    r = Retrainer(cnn, RunConfig(epochs=3, lr=1e-3), SlowLoader(loaders[0], 0.002))
    reached = threading.Event()
    r.on(Event.STEP_END, lambda info: info.step >= 3 and reached.set())
    r.start()
    assert reached.wait(10)
    r.set_lr(5e-3)
    r.freeze(["features"])
    deadline = time.monotonic() + 10  # queued: applied at the next step boundary
    while r.model.features[0].weight.requires_grad and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # past the boundary's step
    w = r.model.features[0].weight.detach().clone()
    time.sleep(0.2)
    r.stop()
    r.join(5)
    assert torch.equal(r.model.features[0].weight, w)
    assert r.optimizer.param_groups[-1]["lr"] == pytest.approx(5e-3)
    texts = [m[2] for m in r.history.markers]
    assert "lr set to 0.005" in texts and "froze features" in texts


def test_lr_finder_restores_weights(cnn, loaders):
    r = Retrainer(cnn, RunConfig(), loaders[0])
    before = state_copy(r.model)
    res = r.lr_find(num_steps=30, start_lr=1e-5, end_lr=10)
    assert_same_state(r.model, before)
    assert len(res.lrs) == len(res.losses) >= 10
    assert res.lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(res.lrs, res.lrs[1:]))
    assert res.lrs[0] <= res.suggestion <= res.lrs[-1]
    assert r.optimizer.state_dict()["state"] == {}


# ----------------------------------------------------------------------------- guards


def test_nan_guard_restores_last_finite_weights(cnn, loaders):
    calls = {"n": 0}

    def flaky(out, target):
        calls["n"] += 1
        loss = F.cross_entropy(out, target)
        return loss * float("nan") if calls["n"] == 13 else loss

    # publishes only every 5 steps (never on time), each with a checkpoint (no time budget): deterministic
    r = Retrainer(cnn, RunConfig(loss=flaky, epochs=2, lr=1e-2), loaders[0], publish_every=5, publish_seconds=math.inf)
    r.heavy.budget = math.inf
    saved = {}
    r.on(Event.PUBLISH, lambda info: saved.update({info.step: state_copy(r.model)}))
    r.start()
    with pytest.raises(TrainingFailed, match=r"NaN or infinite at step 11 .*restored to step (\d+)") as info:
        r.wait(30)
    assert r.state == State.FAILED and "step 11" in r.message
    # checkpoints are taken at publishes (steps 5 and 10 here): the last before step 11 is kept
    restored = int(re.search(r"restored to step (\d+)", str(info.value)).group(1))
    assert restored == 10 == r._ckpt_step
    assert_same_state(r.model, saved[restored])
    # calls: 1 from check() + 12 training steps succeed, the 13th call is step 11 (0-based)


def test_drift_and_checkpoint_copy_only_what_can_move_and_follow_an_unfreeze(cnn, loaders):
    """A frozen backbone is neither copied nor put back by the NaN guard; a layer unfrozen
    mid-run is followed from then on: its drift shows, and the guard restores it too."""
    calls = {"n": 0}

    def flaky(out, target):
        calls["n"] += 1
        loss = F.cross_entropy(out, target)
        return loss * float("nan") if calls["n"] == 13 else loss

    r = Retrainer(cnn, RunConfig(loss=flaky, frozen=["features"], epochs=2, lr=1e-2), loaders[0], publish_every=5,
                  publish_seconds=math.inf)
    r.heavy.budget = math.inf
    assert not any(p is t for p in r.model.features.parameters() for t in r.checkpoint.sources)
    name = [n for n, m in r.model.features.named_children() if isinstance(m, nn.Conv2d)][-1]
    unfrozen = list(getattr(r.model.features, name).parameters())
    saved = {}
    r.on(Event.STEP_END, lambda info: r.unfreeze(f"features.{name}") if info.step == 2 else None)
    r.on(Event.PUBLISH, lambda info: saved.update({info.step: state_copy(r.model)}))
    r.start()
    with pytest.raises(TrainingFailed, match=r"restored to step (\d+)") as info:
        r.wait(30)
    restored = int(re.search(r"restored to step (\d+)", str(info.value)).group(1))
    assert restored > 2 and all(any(p is t for t in r.checkpoint.sources) for p in unfrozen)
    assert_same_state(r.model, saved[restored])  # the unfrozen layer put back as well
    _, cols, drift = r.history.layer_series("drift")
    col = {c: i for i, c in enumerate(cols)}
    assert drift[-1][col[f"features.{name}"]] > 0
    assert all(drift[-1][i] == 0 for c, i in col.items() if c.startswith("features.") and c != f"features.{name}")


def test_user_exception_is_reraised_with_traceback(cnn, loaders):
    def broken_forward(model, batch):
        x, y = batch
        if model.training:
            raise KeyError("no such column 'pixels'")
        return model(x), y

    r = Retrainer(cnn, RunConfig(), loaders[0], forward=broken_forward)
    r.start()
    with pytest.raises(KeyError, match="pixels") as info:
        r.wait(10)
    assert any(frame.name == "broken_forward" for frame in info.traceback)
    assert r.state == State.FAILED and "KeyError" in r.message


def test_empty_loader_is_clear(cnn):
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        Retrainer(cnn, RunConfig(), empty)
    with pytest.raises(ValueError, match="needs a training loader"):
        Retrainer(cnn, RunConfig())


def test_loss_mismatch_caught_before_training(cnn, seven):
    r = Retrainer(cnn, RunConfig(loss="bce"), seven.train)
    with pytest.raises(losses.LossMismatchError, match="10") as info:
        r.start()
    assert info.value.head_out == 1
    assert r.state == State.IDLE and r.step == 0


def test_handler_errors_are_reported_not_fatal(cnn, loaders):
    r = Retrainer(cnn, RunConfig(max_steps=5), loaders[0])

    def bad(info):
        raise ZeroDivisionError("oops")

    r.on(Event.STEP_END, bad)
    with pytest.warns(RuntimeWarning, match="oops"):
        r.fit()
    assert r.state == State.FINISHED and len(r.handler_errors) == 5


def test_max_steps_and_schedule(cnn, loaders):
    r = Retrainer(cnn, RunConfig(max_steps=30, schedule="cosine", lr=1e-2), loaders[0])
    h = r.fit()
    assert r.step == 30
    steps, lrs = h.series("lr")
    assert steps.tolist() == list(range(30))  # the LR of every step
    assert np.allclose(lrs, schedules.preview("cosine", 30, 1e-2), rtol=1e-5)
    gsteps, groups, glr = h.layer_series("group_lr")
    assert groups == tuple(g.name for g in r.groups) and glr.shape == (30, len(groups))
    assert r.progress["step"] == 30 and r.progress["state"] == "finished"


def test_regression_task_mae(cnn):
    t = examples.task("digit_value")
    r = Retrainer(cnn, RunConfig(loss="huber", head_out=1, epochs=1), t.train, t.val, t.old_val)
    h = r.fit()
    assert r.history.meta["metric"] == "mae"
    assert 0 < h.series("val_metric")[1][0] < 5
    assert math.isfinite(h.series("old_metric")[1][0])


# ----------------------------------------------------------------------------- a Hugging Face model


def test_bert_retrains_with_embeddings_frozen():
    import transformers

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (64, 8), generator=g)
    labels = (ids[:, 0] > 25).long()

    class Dicts:
        def __len__(self):
            return 8

        def __iter__(self):
            for i in range(0, 64, 8):
                yield {"input_ids": ids[i:i + 8], "attention_mask": torch.ones(8, 8, dtype=torch.long),
                       "labels": labels[i:i + 8]}

    r = Retrainer(bert, RunConfig(frozen=["bert.embeddings"], epochs=2, lr=1e-3), Dicts(), Dicts())
    emb = state_copy(r.model.bert.embeddings)
    h = r.fit()
    assert_same_state(r.model.bert.embeddings, emb)
    assert len(h.series("train_loss")[0]) == 16 and r.history.meta["metric"] == "accuracy"
    assert r.history.meta["groups"][0] == "bert.embeddings"


def test_out_of_memory_is_a_clear_failure(cnn, loaders):
    calls = {"n": 0}

    def hungry(model, batch):
        x, y = batch
        if model.training:
            calls["n"] += 1
            if calls["n"] == 8:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return model(x), y

    # publishes only every 5 steps (never on time), each with a checkpoint (no time budget): deterministic
    r = Retrainer(cnn, RunConfig(epochs=2, lr=1e-2), loaders[0], forward=hungry, publish_every=5,
                  publish_seconds=math.inf)
    r.heavy.budget = math.inf
    saved = {}
    r.on(Event.PUBLISH, lambda info: saved.update({info.step: state_copy(r.model)}))
    r.start()
    with pytest.raises(TrainingFailed, match=r"out of memory at step 7 .*lower the batch size.*restored to step \d"):
        r.wait(30)
    assert r.state == State.FAILED
    assert isinstance(r.error.__cause__, torch.OutOfMemoryError)
    assert r._ckpt_step == 5  # the publish at step 5, the last before step 7
    assert_same_state(r.model, saved[5])


def test_runs_are_reproducible_and_measuring_changes_nothing(cnn, seven):
    """Same seed, same loader object reused: same batches and dropout; old_val or not: same weights."""
    cfg = RunConfig(loss="bce", head_out=1, epochs=2, lr=1e-2)
    a = Retrainer(cnn, cfg, seven.train, seven.val, seven.old_val)
    a.fit()
    b = Retrainer(cnn, cfg, seven.train)  # the loader's generator has moved on since: reseeded at start
    b.fit()
    assert_same_state(b.model, state_copy(a.model))
    c = Retrainer(cnn, cfg.replace(seed=1), seven.train)
    c.fit()
    assert not torch.equal(c.model.classifier[3].weight, a.model.classifier[3].weight)


def test_old_task_through_a_head_that_does_not_fit_is_refused_early(cnn, seven):
    first = Retrainer(cnn, RunConfig(loss="bce", head_out=1, max_steps=5), seven.train)
    first.fit()
    # the trained model's head now has 1 output: the 10-class old task cannot be read through it
    second = Retrainer(first.model, RunConfig(loss="focal", max_steps=5), seven.train, seven.val, seven.old_val)
    with pytest.raises(ValueError, match=r"old_val cannot be measured through the head 'classifier.3'.*old_val=None"):
        second.start()
    assert second.state == State.IDLE and second.step == 0
