"""The alignment probe: cos(∇new, ∇old) per layer and the old-task loss, at no effect on the run."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import BNNet
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from retrain_widgets import History, Retrainer, RunConfig, examples
from retrain_widgets.core.alignment import (
    AlignmentProbe,
    OldTask,
    alignment_summary,
    kept_rng,
    old_task_mode,
    pulling_against,
)
from retrain_widgets.core.comparison import summarize, table
from retrain_widgets.core.events import Event, EventInfo, State
from retrain_widgets.core.store import RunStore
from retrain_widgets.core.tree import parameterised_layers


class DropNet(BNNet):
    """BatchNorm and dropout: both would show a probe that touched modes, statistics or the RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.body.append(nn.Dropout(0.3))


def loaders(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(192, 6, generator=g)
    y = (x[:, 0] > 0).float()
    y_old = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    # shuffled from torch's global RNG (no generator of its own): drawing from it would show
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    old_train = DataLoader(TensorDataset(x, y_old), batch_size=48, shuffle=True)
    old_val = DataLoader(TensorDataset(x[:96], y_old[:96]), batch_size=48)
    return train, old_train, old_val


def run(config: RunConfig, *, old_train: bool = True, **kwargs) -> Retrainer:
    torch.manual_seed(0)
    model = DropNet()
    train, old_tr, old_val = loaders()
    r = Retrainer(model, config, train, None, old_val, old_train=old_tr if old_train else None, **kwargs)
    r.fit()
    return r


def full_state(r: Retrainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in r.model.state_dict().items()}
    for i, state in r.optimizer.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)})
    return out


@pytest.mark.parametrize("changes", [
    dict(loss="bce", head_out=1),
    dict(loss="bce", head_out=1, frozen=["body.0"], optimizer="sgd", momentum=0.9, grad_clip=0.5),
    dict(loss="focal", head_out=1, distill={"alpha": 0.5, "temperature": 2.0}, l2sp=0.01),
])
def test_a_run_with_the_probe_trains_bit_identically(changes):
    base = RunConfig(epochs=2, alignment_budget=1.0, device="cpu", **changes)
    off = run(base.replace(alignment_every=None))
    on = run(base.replace(alignment_every=1))
    assert off.alignment is None and on.alignment is not None and on.alignment.samples == on.step
    np.testing.assert_array_equal(off.history.series("train_loss")[1], on.history.series("train_loss")[1])
    np.testing.assert_array_equal(off.history.layer_series("grad_norm")[2], on.history.layer_series("grad_norm")[2])
    a, b = full_state(off), full_state(on)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert torch.equal(torch.get_rng_state(), torch.get_rng_state())  # (the runs reseed; compared above)
    steps, names, cos = on.history.layer_series("grad_alignment")
    assert len(steps) == on.step and names == on.layer_names
    assert np.all(np.isnan(cos[:, names.index("head")]))  # the new head: the old task does not use it
    finite = cos[np.isfinite(cos)]
    assert finite.size and np.all(np.abs(finite) <= 1)
    if "frozen" in changes:
        assert np.all(np.isnan(cos[:, names.index("body.0")]))
    _, old_losses = on.history.series("old_batch_loss")
    assert len(old_losses) == on.step and np.all(np.isfinite(old_losses))
    assert on.history.series("old_loss")[1].size == 2  # the per-epoch old_val loss stays what it was


def manual_cosines(model: nn.Module, names: tuple[str, ...], new: dict[str, torch.Tensor], old_loss: torch.Tensor):
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    grads = dict(zip(trainable, torch.autograd.grad(old_loss, [params[n] for n in trainable], allow_unused=True)))
    out = []
    for layer in names:
        keys = [n for n in trainable if n.rpartition(".")[0] == layer]
        if not keys:
            out.append(math.nan)
            continue
        a = torch.cat([new[k].flatten() for k in keys]).double()
        b = torch.cat([(grads[k] if grads[k] is not None else torch.zeros_like(new[k])).flatten() for k in keys]).double()
        denom = float(a.norm() * b.norm())
        out.append(float(a @ b) / denom if denom > 0 else math.nan)
    return np.array(out)


def test_cosines_and_old_loss_match_a_direct_computation():
    torch.manual_seed(0)
    model = BNNet()
    model.body[0].requires_grad_(False)  # a frozen layer
    train, old_train, _ = loaders()
    x, y = next(iter(train))
    xo, yo = next(iter(old_train))
    model.train()
    new_loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
    new_loss.backward()
    new = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    layers = parameterised_layers(model)
    h = History()
    task = OldTask(model, lambda m, b: (m(b[0]), b[1]), lambda o, t: F.cross_entropy)
    probe = AlignmentProbe(layers, task, [(xo, yo)], h, every=1, budget=1.0)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    probe.sample(0)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, new[n]) for n, p in model.named_parameters() if p.grad is not None)
    probe.publish()
    _, names, cos = h.layer_series("grad_alignment")
    model.eval()
    old_loss = F.cross_entropy(model(xo), yo)
    want = manual_cosines(model, names, new, old_loss)
    assert np.isnan(cos[0, names.index("body.0")]) and np.isnan(want[names.index("body.0")])
    np.testing.assert_allclose(cos[0], want, rtol=0, atol=2e-5, equal_nan=True)
    np.testing.assert_allclose(h.series("old_batch_loss")[1], [float(old_loss.detach())], rtol=1e-6)


def test_probe_history_round_trips_and_the_store_keeps_it(tmp_path):
    r = run(RunConfig(loss="bce", head_out=1, epochs=1, alignment_every=2, alignment_budget=1.0, device="cpu"))
    again = History.from_json(r.history.to_json())
    for name in ("grad_alignment",):
        a, b = r.history.layer_series(name), again.layer_series(name)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
        np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(r.history.series("old_batch_loss")[1], again.series("old_batch_loss")[1])
    assert again.meta["alignment"] == {"every": 2, "budget": 1.0}
    with RunStore(tmp_path) as store:
        torch.manual_seed(0)
        train, old_tr, old_val = loaders()
        rec = Retrainer(DropNet(), r.config, train, None, old_val, old_train=old_tr)
        run_id = store.record(rec, save_every=0)
        rec.fit()
        stored = store.history(run_id)
        np.testing.assert_array_equal(stored.layer_series("grad_alignment")[2], rec.history.layer_series("grad_alignment")[2])
        summary = summarize(run_id, store)
        assert summary.metrics["mean_alignment"] == pytest.approx(alignment_summary(rec.history)["mean_alignment"])
        columns, rows = table([summary, summarize(rec, name="live")])
        assert "mean_alignment" in columns and rows[0]["mean_alignment"] == pytest.approx(rows[1]["mean_alignment"])


def test_probe_is_off_without_an_old_task_and_by_config():
    assert run(RunConfig(loss="bce", head_out=1, epochs=1, device="cpu"), old_train=False).alignment is not None  # old_val
    torch.manual_seed(0)
    train, _, _ = loaders()
    assert Retrainer(DropNet(), RunConfig(loss="bce", head_out=1), train).alignment is None
    cfg = RunConfig(alignment_every=None)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert RunConfig.from_json(RunConfig(alignment_every=7, alignment_budget=0.05).to_json()).alignment_every == 7
    for bad in (dict(alignment_every=0), dict(alignment_every=1.5), dict(alignment_budget=0.0),
                dict(alignment_budget=2.0), dict(alignment_every="often")):
        with pytest.raises(ValueError, match="alignment_"):
            RunConfig(**bad)


def test_budget_and_cadence_limit_the_samples():
    r = run(RunConfig(loss="bce", head_out=1, epochs=2, alignment_every=4, alignment_budget=1.0, device="cpu"))
    steps = r.history.layer_series("grad_alignment")[0]
    assert list(steps) == list(range(0, r.step, 4))
    tight = run(RunConfig(loss="bce", head_out=1, epochs=2, alignment_every=1, alignment_budget=1e-6, device="cpu"))
    # the first FREE_SAMPLES samples are outside the budget (as the prime pass is); the next one's
    # price is counted before it is taken, and no training time in this run pays for it
    assert tight.alignment.samples == AlignmentProbe.FREE_SAMPLES


def test_a_broken_old_loader_stops_the_probe_not_the_run():
    torch.manual_seed(0)
    train, _, old_val = loaders()
    wrong = [(torch.randn(8, 6), torch.randn(8, 5))]  # targets the old head cannot fit
    r = Retrainer(DropNet(), RunConfig(loss="bce", head_out=1, epochs=1, device="cpu"), train, None, None,
                  old_train=wrong)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r.fit()
    assert r.step == len(train) and r.alignment.error
    assert len(r.handler_errors) == 1 and "alignment_every=None" in r.handler_errors[0]
    assert "alignment_error" in r.history.meta


def test_old_task_mode_and_kept_rng_restore_everything():
    torch.manual_seed(0)
    net = DropNet().train()
    net.body[1].eval()  # a module the user keeps in inference mode
    original = nn.Linear(16, 3).eval()  # the engine keeps it so
    current = net.head
    with old_task_mode(OldTask(net, lambda m, b: (m(b), None), lambda o, t: None, "head", original)) as m:
        assert m.head is original and not any(x.training for x in m.modules())
    assert net.head is current and net.training and not net.body[1].training and net.body[2].training
    g = torch.Generator().manual_seed(3)
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=2, shuffle=True, generator=g)
    before, gen_before = torch.get_rng_state(), g.get_state()
    with kept_rng(torch.device("cpu"), loader):
        next(iter(loader))
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(g.get_state(), gen_before)


def test_pulling_against_needs_a_lasting_negative_alignment():
    names = ("a", "b", "c")
    v = np.array([[-0.5, 0.2, -0.3]] * 5 + [[-0.4, -0.6, np.nan]], np.float32)
    steps = np.arange(len(v))
    assert pulling_against(steps, names, v, samples=5) == ["a"]
    assert pulling_against(steps, names, v[:3], samples=5) == []


def test_engine_probe_on_the_bundled_cnn_with_its_task():
    task = examples.task("is_seven", seed=0)
    r = Retrainer(examples.pretrained_digits_cnn(), RunConfig(loss="focal", head_out=1, max_steps=12, device="cpu",
                                                             alignment_every=3, alignment_budget=1.0),
                  task.train, task.val, task.old_val)
    r.fit()
    steps, names, cos = r.history.layer_series("grad_alignment")
    assert list(steps) == [0, 3, 6, 9]
    assert np.isfinite(cos[:, names.index("features.0")]).all()
    summary = alignment_summary(r.history)
    assert -1 <= summary["mean_alignment"] <= 1 and summary["old_batch_loss"] > 0


class _Clock:
    """A fake ``time.perf_counter`` for the probe: training steps and samples advance it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _clocked_probe(monkeypatch, budget: float, every: int, sample_cost: float):
    """A probe whose samples cost ``sample_cost`` seconds of the fake clock (and record their steps)."""
    from retrain_widgets.core import alignment as mod

    clock = _Clock()
    monkeypatch.setattr(mod.time, "perf_counter", clock)
    monkeypatch.setattr(mod.time, "thread_time", clock)  # the samples' cost: the thread's CPU time
    torch.manual_seed(0)
    model = BNNet()
    _, old_train, _ = loaders()
    probe = AlignmentProbe(parameterised_layers(model), OldTask(model, lambda m, b: (m(b[0]), b[1]),
                                                                lambda o, t: F.cross_entropy),
                           old_train, History(), every=every, budget=budget)
    taken: list[int] = []

    def fake_sample(step: int) -> None:
        taken.append(step)
        clock.now += sample_cost

    probe._sample = fake_sample  # noqa: SLF001 - the cost is the clock's
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    return probe, clock, taken


def _step(probe, clock, step: int, seconds: float) -> None:
    clock.now += seconds
    probe.on_backward(EventInfo(Event.BACKWARD_END, step, 0))


def test_the_budget_is_measured_over_the_run_so_a_short_run_gets_samples(monkeypatch):
    # the quickstart's what-if run: 92 steps of ~3 ms on cached features, samples of ~0.3 ms, 0.5 %
    probe, clock, taken = _clocked_probe(monkeypatch, budget=0.005, every=20, sample_cost=0.0003)
    probe.on_state(EventInfo(Event.STATE_CHANGE, 0, 0, {"state": State.RUNNING}))
    for step in range(92):
        _step(probe, clock, step, 0.003)
    assert len(taken) >= 3 and taken[0] == 0 and probe.free_seconds == pytest.approx(3 * 0.0003)
    assert probe.seconds - probe.free_seconds <= 0.005 * probe.training_seconds()  # never ahead of its share
    # a per-sample budget (the time since the last sample) would have allowed one: 0.3 ms needs 60 ms
    assert all(b - a >= 20 for a, b in zip(taken, taken[1:]))


def test_the_budget_holds_over_a_long_run_and_pauses_earn_nothing(monkeypatch):
    probe, clock, taken = _clocked_probe(monkeypatch, budget=0.005, every=1, sample_cost=0.002)
    probe.on_state(EventInfo(Event.STATE_CHANGE, 0, 0, {"state": State.RUNNING}))
    for step in range(2000):
        _step(probe, clock, step, 0.01)
        assert probe.seconds - probe.free_seconds <= 0.005 * probe.training_seconds()  # never ahead of its share
    n = len(taken)
    assert 0.005 * 20.0 / 0.002 * 0.8 <= n <= 0.005 * 20.0 / 0.002 + AlignmentProbe.FREE_SAMPLES  # ~50 in 20 s at 0.5 % (+ the free ones)
    probe.on_state(EventInfo(Event.STATE_CHANGE, 2000, 0, {"state": State.PAUSED}))
    clock.now += 600.0  # ten minutes paused
    probe.on_state(EventInfo(Event.STATE_CHANGE, 2000, 0, {"state": State.RUNNING}))
    for step in range(2000, 2010):
        _step(probe, clock, step, 0.01)
    assert len(taken) <= n + 1  # the pause bought no burst of samples


def test_the_first_sample_waits_for_a_direction_on_the_layers_the_old_task_reaches():
    torch.manual_seed(0)
    model = BNNet()
    _, old_train, _ = loaders()
    h = History()
    task = OldTask(model, lambda m, b: (m(b[0]), b[1]), lambda o, t: F.cross_entropy, "head", nn.Linear(16, 3))
    probe = AlignmentProbe(parameterised_layers(model), task, old_train, h, every=5, budget=1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.head.weight.grad = torch.ones_like(model.head.weight)  # only the new head moves: no direction
    probe.on_backward(EventInfo(Event.BACKWARD_END, 0, 0))
    assert probe.samples == 0
    model.body[0].weight.grad = torch.ones_like(model.body[0].weight)
    probe.on_backward(EventInfo(Event.BACKWARD_END, 1, 0))
    probe.publish()
    steps, names, cos = h.layer_series("grad_alignment")
    assert list(steps) == [1] and np.isfinite(cos[0, names.index("body.0")])


def test_with_the_feature_cache_the_probe_never_runs_the_frozen_part():
    # the quickstart's run: features frozen and cached; the probe's old batches come from the cache too
    task = examples.task("is_seven", seed=0)
    model = examples.pretrained_digits_cnn()
    cfg = task.config.replace(alignment_every=5, alignment_budget=1.0)
    Retrainer(model, cfg, task.train, task.val, task.old_val).fit()  # builds the caches
    calls = []
    model.features.register_forward_hook(lambda m, a, out: calls.append(len(out)))  # deep copies keep it
    r = Retrainer(model, cfg, task.train, task.val, task.old_val)
    r.fit()
    assert r.history.meta["feature_cache"]["state"] == "reused"
    assert r.alignment.samples >= 15 and r.alignment.error is None
    assert calls == []  # the probe's old-task batches were cached features, as the old_val evaluation's are
    steps, names, cos = r.history.layer_series("grad_alignment")
    assert steps[0] == 1 and np.isfinite(cos[:, names.index("classifier.0")]).all()


def test_the_quickstarts_short_runs_get_three_samples_with_data_in_the_dashboard(tmp_path, monkeypatch):
    # the issue: a 92-step run on cached features took one sample, at step 0, all NaN (the zero head
    # passed no direction down yet): a blank panel. Now: the first sample where the direction exists,
    # cached old batches, the budget over the run; still within 0.5 % (and one sample) of its time.
    from retrain_widgets import RetrainStudio

    monkeypatch.chdir(tmp_path)
    task = examples.task("is_seven")
    assert RunConfig().alignment_budget == 0.005 and task.config.alignment_budget == 0.005
    studio = RetrainStudio(examples.pretrained_digits_cnn(), task.train, task.val, task.old_val, config=task.config)
    studio.what_if({"seed": [0, 1]}, wait=True)
    for run in studio.runs:
        steps, names, cos = run.history.layer_series("grad_alignment")
        with_data = np.isfinite(cos).any(axis=1)
        assert run.step == 92 and steps[0] == 1 and with_data.all() and len(steps) >= 3, steps
        probe = run.alignment
        # within the budget over the run: every sample was taken while the time spent so far was
        assert probe.seconds - probe.last_seconds - probe.free_seconds <= 0.005 * probe.training_seconds()
        assert len(run.history.series("old_batch_loss")[0]) == len(steps)
