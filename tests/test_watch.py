"""A plain PyTorch loop, watched: its history is what the loop did, it steers from any thread,
and it is stored, restored and compared like an engine run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import retrain_widgets as rw
from retrain_widgets import Retrainer, RunConfig, State, examples
from retrain_widgets.core.names import Series
from retrain_widgets.core.run import Run
from retrain_widgets.core.store import RunStore
from retrain_widgets.core.watch import WatchedRun


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _data(n: int = 12, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


def _layer_norms(net: nn.Module) -> list[float]:
    return [torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m.parameters()])).item()
            for m in (net[0], net[2])]


@pytest.mark.parametrize("zero_grad_first", [True, False])
def test_a_watched_loops_history_is_what_the_loop_did(zero_grad_first):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5)
    run = WatchedRun(net, opt, scheduler=sched, publish_every=4, alignment_every=None)
    losses, norms, lrs = [], [], []
    for x, y in _data():
        if zero_grad_first:
            opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        norms.append(_layer_norms(net))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if not zero_grad_first:
            opt.zero_grad()  # the gradients are gone before step(): the hook took them at the optimizer step
        sched.step()
        losses.append(loss.item())
        run.step(loss)
    run.epoch_end(val_loss=0.25)
    run.finish()
    h = run.history
    steps, got = h.series(Series.TRAIN_LOSS)
    assert steps.tolist() == list(range(12)) and np.allclose(got, losses, rtol=1e-6)
    _, cols, g = h.layer_series(Series.GRAD_NORM)
    assert cols == ("0", "2") and g.shape == (12, 2) and np.allclose(g, norms, rtol=1e-5)
    assert np.allclose(h.series(Series.LR)[1], lrs)
    assert h.series(Series.VAL_LOSS)[1].tolist() == [0.25]
    d = h.layer_series(Series.DRIFT)[2]
    assert d.shape[1] == 2 and np.all(d[-1] > 0)  # against the weights at watch time
    assert run.state == State.FINISHED and run.global_step == 12
    config, _ = run.config_record()
    assert config["optimizer"] == "sgd" and config["momentum"] == 0.9 and config["scheduler"] == "StepLR"


def test_a_trainable_layer_the_loss_does_not_reach_has_a_zero_gradient_norm():
    torch.manual_seed(0)
    net = nn.ModuleDict({"used": nn.Linear(4, 3), "unused": nn.Linear(4, 3)})  # trainable, never in forward
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    run = WatchedRun(net, opt, alignment_every=None, publish_every=2)
    for x, y in _data(3):
        opt.zero_grad()
        F.cross_entropy(net["used"](x), y).backward()
        opt.step()
        run.step(F.cross_entropy(net["used"](x), y))
    run.finish()
    _, cols, g = run.history.layer_series(Series.GRAD_NORM)
    assert cols == ("used", "unused") and g.shape == (3, 2)
    assert np.all(g[:, 0] > 0) and np.all(g[:, 1] == 0)


def test_stop_from_another_thread_and_pause_waiting_in_step():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    run = WatchedRun(net, opt, alignment_every=None)
    states: list[State] = []
    run.on(rw.Event.STATE_CHANGE, lambda info: states.append(info.data["state"]))
    data = _data(4)
    done = threading.Event()
    steps_at_pause: list[int] = []

    def loop() -> None:
        i = 0
        while not run.should_stop:
            x, y = data[i % 4]
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            run.step(loss)
            i += 1
            time.sleep(0.002)
        run.finish()
        done.set()

    t = threading.Thread(target=loop)
    t.start()
    _until(lambda: run.global_step >= 2)
    run.pause()
    _until(lambda: run.state == State.PAUSED)
    steps_at_pause.append(run.global_step)
    time.sleep(0.3)
    assert run.state == State.PAUSED and run.global_step == steps_at_pause[0]  # waiting inside step()
    run.resume()
    _until(lambda: run.global_step > steps_at_pause[0])
    t0 = time.perf_counter()
    run.stop()
    assert done.wait(5) and time.perf_counter() - t0 < 1.0
    t.join()
    assert run.state == State.STOPPED and states[:3] == [State.RUNNING, State.PAUSED, State.RUNNING]
    assert states[-1] == State.STOPPED


def test_a_nan_loss_sets_should_stop_and_says_at_which_step():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    run = WatchedRun(net, opt, alignment_every=None)
    for i, (x, y) in enumerate(_data(6)):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y) * (float("nan") if i == 4 else 1.0)
        loss.backward()
        opt.step()
        run.step(loss)
        if run.should_stop:
            break
    assert run.should_stop and i == 4
    assert "at step 4" in run.message
    run.finish()
    assert run.state == State.FAILED and "NaN or infinite at step 4" in run.history.meta["error"]


@pytest.mark.parametrize("form", ["number", "scalar tensor", "1-element tensor"])
def test_the_loss_may_be_a_number_or_a_one_element_tensor_and_a_nan_number_stops_too(form):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    run = WatchedRun(net, opt, alignment_every=None, publish_every=3)
    given = []
    for i, (x, y) in enumerate(_data(8)):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        value = float("nan") if i == 6 else loss.item()
        given.append(value)
        run.step({"number": value, "scalar tensor": torch.tensor(value),
                  "1-element tensor": torch.tensor([value])}[form])
        if run.should_stop:
            break
    assert i == 6 and "at step 6" in run.message
    run.finish()
    steps, recorded = run.history.series(Series.TRAIN_LOSS)
    np.testing.assert_array_equal(steps, np.arange(6))
    np.testing.assert_allclose(recorded, given[:6], rtol=1e-6)


def test_the_old_task_is_measured_at_each_epoch_and_the_alignment_probe_samples():
    seven = examples.task("is_seven")
    digits = examples.digits_loaders(batch_size=64)
    model = examples.pretrained_digits_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = WatchedRun(model, opt, old_val=digits[1], alignment_every=5, alignment_budget=1.0, name="loop")
    for _epoch in range(2):
        for x, y in seven.train:
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, (y > 0.5).long())
            loss.backward()
            opt.step()
            run.step(loss)
        run.epoch_end()
    run.finish()
    h = run.history
    old_steps, old_metric = h.series(Series.OLD_METRIC)
    assert len(old_steps) == 2 and 0 <= old_metric[-1] <= 1 and h.meta["old_metric"] == "multiclass_accuracy"
    a_steps, cols, a = h.layer_series(Series.GRAD_ALIGNMENT)
    assert len(a_steps) >= 3 and cols == run.layer_names and np.isfinite(a).any()


def test_a_watched_run_is_stored_restored_and_compared_with_an_engine_run(tmp_path):
    store = RunStore(tmp_path / "runs")
    net = _net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=0.05)
    with WatchedRun(net, opt, name="plain loop", loss="ce") as run:
        assert isinstance(run, Run)
        run_id = store.record(run)
        for x, y in _data():
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            run.step(loss)
    rec = store.get(run_id)
    assert rec.state == "finished" and rec.name == "plain loop"
    assert rec.config["framework"] == "loop" and rec.config["optimizer"] == "adamw" and rec.config["loss"] == "ce"
    fresh = _net()
    assert all(torch.equal(v, start[k]) for k, v in fresh.state_dict().items())
    restored = store.restore(run_id, fresh)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), net.state_dict().values()))
    engine = Retrainer(examples.pretrained_digits_cnn(), RunConfig(loss="bce", head_out=1, epochs=1),
                       examples.task("is_seven").train)
    engine.fit()
    engine_id = store.record(engine, name="engine")
    table = rw.compare([run_id, engine_id], store=store)
    assert {row["run"] for row in table.rows} == {"plain loop", "engine"}
    store.close()


def test_an_exception_in_the_loop_marks_the_run_failed():
    net = _net()
    with pytest.raises(KeyError):
        with WatchedRun(net, alignment_every=None) as run:
            run.step(torch.tensor(1.0))
            raise KeyError("boom")
    assert run.state == State.FAILED and "KeyError" in run.message


# ----------------------------------------------------------------------------- the dashboard (widgets, no browser)


def _until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _loop(run, net, opt, data, sleep=0.0):
    for x, y in data:
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        run.step(loss)
        if run.should_stop:
            break
        time.sleep(sleep)


def test_watch_records_in_the_store_and_its_dashboard_draws_and_steers(tmp_path):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    # a loop far longer than the test needs (Stop ends it): a starved test thread cannot see it finish first
    run = rw.watch(net, opt, store=tmp_path / "runs", name="my loop", total_steps=400, alignment_every=None)
    dash = run.dashboard()
    assert dash is run.dashboard() and run.id is not None
    assert dash.pause_button.disabled and dash.status.value.count("waiting for the loop")
    t = threading.Thread(target=_loop, args=(run, net, opt, _data(400), 0.01))
    t.start()
    _until(lambda: run.global_step >= 2)  # the first optimizer step may import torch._dynamo (seconds)
    dash.pause_button.click()  # what a click does (the kernel's thread handles it)
    _until(lambda: run.state == State.PAUSED)
    paused_at = run.global_step
    # the loop's thread sets the state, then fires the event the dashboard draws from: the button follows
    _until(lambda: dash.pause_button.description == "Resume", 5.0)
    time.sleep(0.2)
    assert run.global_step == paused_at
    dash.pause_button.click()
    _until(lambda: run.global_step > paused_at)
    dash.stop_button.click()
    t.join(5)
    run.finish()
    assert run.state == State.STOPPED and 0 < run.global_step < 400
    assert dash.plot.value[:4] == b"\x89PNG" and dash.progress.max == 400
    assert run.store.get(run.id).state == "stopped"
    assert "my loop" in dash.runs_table.value


def test_the_layers_tab_freezes_at_the_next_step_and_refuses_what_the_optimizer_does_not_hold(tmp_path):
    net = _net()
    opt = torch.optim.SGD(net[2].parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)  # the head only
    net[0].requires_grad_(False)
    run = rw.watch(net, opt, store=False, alignment_every=None)
    dash = run.dashboard()
    assert run.frozen() == ["0"]
    dash.set_frozen([])  # unfreeze "0": the optimizer does not hold it
    assert "does not hold its parameters" in dash.tree_message.value and run.frozen() == ["0"]
    _loop(run, net, opt, _data(3))
    dash.set_frozen(["0", "2"])
    assert "cannot freeze everything" in dash.tree_message.value and run.frozen() == ["0"]
    net0 = {k: v.clone() for k, v in net[0].state_dict().items()}
    dash.set_frozen([])  # refused above; now freeze nothing new while running, then the head's bias only
    dash.set_frozen(["0", "2.bias"])  # queued to the next step
    assert "next step" in dash.tree_message.value
    _loop(run, net, opt, _data(1))  # the change applies at this step's boundary, in run.step
    assert not net[2].bias.requires_grad and net[2].weight.requires_grad
    bias = net[2].bias.detach().clone()
    _loop(run, net, opt, _data(3))
    assert torch.equal(net[2].bias, bias)  # momentum and weight decay did not move it
    assert all(torch.equal(net0[k], v) for k, v in net[0].state_dict().items())
    run.finish()


def test_ticks_in_the_layers_tab_stay_ticked_until_the_loop_takes_them_and_build_on_each_other():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    run = rw.watch(net, opt, store=False, alignment_every=None)
    tree = run.dashboard().tree
    total = sum(p.numel() for p in net.parameters())
    tree.row("0").check.value = True  # idle: now
    assert not net[0].weight.requires_grad and tree.row("0").check.value and tree.frozen == ["0"]
    assert f"<b>{total - net[0].weight.numel() - net[0].bias.numel()}</b> trainable" in tree.totals.value
    tree.row("0").check.value = False
    assert net[0].weight.requires_grad and not tree.row("0").check.value
    _loop(run, net, opt, _data(2))  # running: ticks wait for the loop's next step
    tree.row("0").check.value = True
    assert net[0].weight.requires_grad and tree.row("0").check.value  # shown ticked, not yet taken
    assert "0 trainable" not in tree.totals.value and "frozen" in tree.totals.value
    tree.row("2").check.value = True  # the second tick keeps the first
    assert tree.frozen == ["0", "2"] and tree.row("0").check.value
    tree.row("2").check.value = False
    tree.row("0").check.value = False  # taken back before the loop took it
    tree.row("2").check.value = True
    _loop(run, net, opt, _data(1))
    assert net[0].weight.requires_grad and not net[2].weight.requires_grad and not net[2].bias.requires_grad
    assert tree.frozen == ["2"] and tree.row("2").check.value and not tree.row("0").check.value
    run.finish()


def test_a_layer_the_loop_froze_in_part_stays_as_it_is_when_another_is_ticked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    net[2].bias.requires_grad_(False)  # the loop's own choice; its optimizer holds only what trains
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    run = rw.watch(net, opt, store=False, alignment_every=None)
    dash = run.dashboard()
    assert dash.tree.frozen == [] and "partly frozen" in dash.tree.row("2").label.value
    dash.tree.row("0").check.value = True
    assert "cannot" not in dash.tree_message.value, dash.tree_message.value
    assert not net[0].weight.requires_grad and not net[2].bias.requires_grad and net[2].weight.requires_grad
    dash.tree.row("2").check.value = True
    assert not net[2].weight.requires_grad and dash.tree.frozen == ["0", "2"]
    dash.tree.row("2").check.value = False  # the whole layer: its optimizer does not hold the bias
    assert "cannot unfreeze 2" in dash.tree_message.value and dash.tree.row("2").check.value
    assert not net[2].weight.requires_grad and not net[2].bias.requires_grad
    run.finish()


def test_the_studios_runs_tab_lists_restores_and_overlays_a_watched_loop_beside_engine_runs(runs_in_tmp):
    from retrain_widgets import RetrainStudio

    pretrained = examples.pretrained_digits_cnn()
    seven = examples.task("is_seven")
    studio = RetrainStudio(pretrained, seven.train, seven.val, seven.old_val,
                           config=RunConfig(loss="bce", head_out=1, epochs=1), store=True)
    studio.start()
    studio.wait(60)
    model = examples.pretrained_digits_cnn()  # the user's own copy of the same pretrained weights
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with rw.watch(model, opt, name="my loop", alignment_every=None) as run:
        for x, y in seven.train:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), (y > 0.5).long())
            loss.backward()
            opt.step()
            run.step(loss)
    names = [s.name for s in studio.headless.run_summaries()]
    assert "my loop" in names and len(names) == 2
    panel = studio.runs_panel
    panel.refresh()
    png = panel.overlay([s.id for s in studio.headless.run_summaries()])
    assert png is not None and png[:4] == b"\x89PNG"
    restored = studio.headless.restore(run.id)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), model.state_dict().values()))
    studio.close()
