"""The telemetry any loop feeds, and the Run protocol the store and comparisons read."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from retrain_widgets import Event, Retrainer, RunConfig, State, TrainingFailed, compare, examples
from retrain_widgets.core import recipe
from retrain_widgets.core.comparison import summarize
from retrain_widgets.core.events import EventInfo
from retrain_widgets.core.names import Meta, Series
from retrain_widgets.core.run import Run
from retrain_widgets.core.step import TrainingStep
from retrain_widgets.core.store import RunStore
from retrain_widgets.core.telemetry import Telemetry


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _data(n: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


def test_a_plain_loop_fed_into_the_telemetry_gives_what_the_loop_did():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 4, gamma=0.5)
    tel = Telemetry(net, device=torch.device("cpu"), param_groups=opt.param_groups, publish_every=5)
    events: list[str] = []
    for e in (Event.BACKWARD_END, Event.STEP_END, Event.PUBLISH, Event.EPOCH_END):
        tel.on(e, lambda info, e=e: events.append(e.value))
    losses, norms, lrs = [], [], []
    tel.restart(0)
    for step, (x, y) in enumerate(_data()):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        tel.backward_end(step, loss)
        losses.append(loss.item())
        norms.append([torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m.parameters()])).item()
                      for m in (net[0], net[2])])
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        tel.step_end(step + 1)
    tel.epoch_end(12, 1, {Series.VAL_LOSS: 0.5})
    h = tel.history
    steps, got = h.series(Series.TRAIN_LOSS)
    assert steps.tolist() == list(range(12)) and np.allclose(got, losses, rtol=1e-6)
    _, cols, g = h.layer_series(Series.GRAD_NORM)
    assert cols == ("0", "2") and np.allclose(g, norms, rtol=1e-5)
    assert np.allclose(h.series(Series.LR)[1], lrs)
    assert h.series(Series.VAL_LOSS)[1].tolist() == [0.5]
    assert h.layer_series(Series.DRIFT)[2].shape[1] == 2  # measured at the forced publish
    assert events.count("backward_end") == 12 and events.count("step_end") == 12 and events[-1] == "epoch_end"
    assert events.count("publish") >= 3  # every 5 steps, and the epoch's end


def test_the_telemetrys_nan_guard_restores_the_last_finite_weights():
    net = _net()
    tel = Telemetry(net, device=torch.device("cpu"), publish_every=2)
    tel.restart(0)
    tel.publish(force=True)  # a checkpoint of the starting weights
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    loss = torch.tensor(float("nan"))
    with pytest.raises(TrainingFailed, match=r"NaN or infinite at step 3 .*restored to step 0"):
        tel.backward_end(3, loss)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_trainable_change_is_one_event_that_probes_checkpoint_and_cache_follow():
    run = Retrainer(examples.pretrained_digits_cnn(), RunConfig(loss="bce", head_out=1, frozen=["features"],
                                                               epochs=1), examples.task("is_seven").train)
    seen: list[EventInfo] = []
    run.on(Event.TRAINABLE_CHANGE, seen.append)
    n_sources = len(run.checkpoint.sources)
    active = len(run.probes.active)
    run.unfreeze(["features"])
    assert len(seen) == 1
    assert len(run.probes.active) > active and len(run.checkpoint.sources) > n_sources
    run.freeze(["features"])
    assert len(seen) == 2 and len(run.probes.active) == active


def test_the_engines_step_takes_the_pieces_in_the_order_the_script_writes_them(monkeypatch):
    calls: list[str] = []
    for name in ("clear_gradients", "backward", "pull_to_pretrained", "clip_gradients", "optimizer_step"):
        real = getattr(recipe.training, name)
        monkeypatch.setattr(recipe.training, name,
                            lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
    cfg = RunConfig(loss="bce", head_out=1, frozen=["features.0"], max_steps=1, l2sp=0.1, grad_clip=1.0,
                    alignment_every=None)
    run = Retrainer(examples.pretrained_digits_cnn(), cfg, examples.task("is_seven").train)
    run.on(Event.BACKWARD_END, lambda info: calls.append("telemetry"))
    run.fit()
    script = TrainingStep.script("training_loss(...)", scaler=False, l2sp=True, grad_clip=True)
    written = [line.split("(")[0].split(" = ")[-1] for line in script]
    assert calls == ["clear_gradients", "backward", "pull_to_pretrained", "clip_gradients", "telemetry",
                     "optimizer_step"]
    assert [c for c in written if c != "training_loss"] == [c for c in calls if c != "telemetry"]


def test_the_lr_finder_takes_the_runs_own_step_clipping_included(monkeypatch):
    clipped: list[int] = []
    real = recipe.training.clip_gradients
    monkeypatch.setattr(recipe.training, "clip_gradients", lambda *a, **k: clipped.append(1) or real(*a, **k))
    run = Retrainer(examples.pretrained_digits_cnn(), RunConfig(loss="bce", head_out=1, grad_clip=0.5),
                    examples.task("is_seven").train)
    result = run.lr_find(num_steps=8)
    assert len(clipped) == len(result.lrs) == 8


class LoopRun:
    """A run that is not a Retrainer: a plain loop with its own telemetry."""

    def __init__(self, model: nn.Module, name: str | None = None) -> None:
        self.pretrained = model
        self.model = _net()
        self.model.load_state_dict(model.state_dict())
        self.name, self.head_name, self.message = name, None, ""
        self.state, self.global_step, self.total_steps = State.IDLE, 0, 12
        self.telemetry = Telemetry(self.model, device=torch.device("cpu"), publish_every=4)
        self.history = self.telemetry.history
        self.history.meta[Meta.LOSS] = "ce"
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    head_out = None

    @property
    def progress(self) -> dict:
        return {"step": self.global_step, "total": self.total_steps}

    @property
    def started_at(self) -> float:
        return self._t0

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def config_record(self) -> tuple[dict, str]:
        return {"loss": "ce", "optimizer": "sgd", "lr": 0.1}, ""

    def on(self, event, handler):
        return self.telemetry.on(event, handler)

    def off(self, event, handler):
        self.telemetry.off(event, handler)

    def _set(self, state: State) -> None:
        self.state = state
        self.telemetry.fire(Event.STATE_CHANGE, state=state)

    def train(self) -> None:
        opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self._t0 = time.perf_counter()
        self._set(State.RUNNING)
        for x, y in _data():
            opt.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.telemetry.backward_end(self.global_step, loss)
            opt.step()
            self.global_step += 1
            self.telemetry.step_end(self.global_step)
        self.telemetry.epoch_end(self.global_step, 1, {Series.VAL_METRIC: 0.75})
        self.telemetry.finish(self.global_step, "finished")
        self._set(State.FINISHED)


def test_a_run_that_is_not_a_retrainer_is_stored_restored_and_compared(tmp_path):
    pretrained = _net()
    run = LoopRun(pretrained, name="my loop")
    assert isinstance(run, Run)
    store = RunStore(tmp_path / "runs")
    run_id = store.record(run)
    run.train()
    rec = store.get(run_id)
    assert rec.name == "my loop" and rec.state == "finished" and rec.config["optimizer"] == "sgd"
    assert rec.metrics["val_metric"] == 0.75 and rec.metrics["steps"] == 12
    assert store.history(run_id).series(Series.TRAIN_LOSS)[0].tolist() == list(range(12))
    restored = store.restore(run_id, _net())
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), run.model.state_dict().values()))
    engine = Retrainer(examples.pretrained_digits_cnn(), RunConfig(loss="bce", head_out=1, epochs=1),
                       examples.task("is_seven").train)
    table = compare([run, engine, rec], store=store)
    names = [s.name for s in table.summaries]
    assert names[0] == "my loop" and len(names) == 3
    assert summarize(run).metrics["val_metric"] == 0.75
    store.close()


def test_the_store_refuses_what_is_not_a_run_naming_what_is_missing(tmp_path):
    store = RunStore(tmp_path / "runs")
    with pytest.raises(ValueError, match=r"record\(\) takes a run .*got object without name, history"):
        store.record(object())
    store.close()
