"""Other trainers, watched: a Hugging Face ``Trainer`` and a Lightning ``Trainer`` with a
``RetrainCallback`` record one gradient row and one loss per optimizer step, their evaluations,
stop and pause when asked, and are stored and restored like any run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from retrain_widgets import Event, State, examples
from retrain_widgets.core.names import Series
from retrain_widgets.core.run import Run
from retrain_widgets.core.store import RunStore
from retrain_widgets.core.watch import WatchedRun

transformers = pytest.importorskip("transformers")
pl = pytest.importorskip("pytorch_lightning")

from retrain_widgets.integrations import huggingface as hf_integration  # noqa: E402
from retrain_widgets.integrations import lightning as pl_integration  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _layer_norm(module: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in module.parameters()])).item()


# ====================================================================== Hugging Face
def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def _texts(n: int = 40, seed: int = 0) -> list[dict[str, torch.Tensor | int]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 100, (8,), generator=g), "labels": int(i % 2)} for i in range(n)]


def _hf_args(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path / "hf"), use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
                   per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-3, logging_steps=1000)
    options.update(overrides)
    return transformers.TrainingArguments(**options)


class _MicroBatchLosses(transformers.TrainerCallback):
    """What the test knows independently: each training micro-batch's model loss, and at each
    optimizer step (``on_pre_optimizer_step``) the classifier's gradient norm."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.classifier_norms: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def keep(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                self.losses.append(output.loss.item())
        model.register_forward_hook(keep)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.classifier_norms.append(_layer_norm(model.classifier))


def test_hf_trainer_records_one_row_and_the_mean_loss_per_optimizer_step_with_accumulation(tmp_path):
    seen = _MicroBatchLosses()
    cb = hf_integration.RetrainCallback(alignment_every=None, name="bert")
    args = _hf_args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=2, eval_strategy="epoch", logging_steps=1)
    trainer = transformers.Trainer(model=_bert(), args=args, train_dataset=_texts(40), eval_dataset=_texts(8, seed=1),
                                   callbacks=[seen, cb])
    trainer.train()
    steps = trainer.state.global_step
    assert steps == 10 and len(seen.losses) == 20  # 40 texts, 4 a batch, 2 batches a step, 2 epochs
    run = cb.run
    assert isinstance(run, Run) and run.state == State.FINISHED and run.global_step == steps
    h = cb.history
    grad_steps, cols, norms = h.layer_series(Series.GRAD_NORM)
    assert grad_steps.tolist() == list(range(steps)) and norms.shape == (steps, len(run.layer_names))
    assert np.allclose(norms[:, cols.index("classifier")], seen.classifier_norms, rtol=1e-5)
    loss_steps, losses = h.series(Series.TRAIN_LOSS)
    assert loss_steps.tolist() == list(range(steps))
    assert np.allclose(losses, np.asarray(seen.losses).reshape(steps, 2).mean(1), rtol=1e-5)
    eval_losses = [log["eval_loss"] for log in trainer.state.log_history if "eval_loss" in log]
    val_steps, val = h.series(Series.VAL_LOSS)
    assert val_steps.tolist() == [5, 10] and np.allclose(val, eval_losses, rtol=1e-6)
    config, _ = run.config_record()
    assert config["framework"] == "huggingface" and config["optimizer"] == "adamw" and config["scheduler"] == "LambdaLR"
    assert run.total_steps == 10 and run.epochs == 2


def test_hf_stop_asked_from_a_hook_after_three_steps_ends_training_there(tmp_path):
    class StopAtThree(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                cb.stop()

    cb = hf_integration.RetrainCallback(alignment_every=None)
    trainer = transformers.Trainer(model=_bert(), args=_hf_args(tmp_path), train_dataset=_texts(40),
                                   callbacks=[StopAtThree(), cb])
    trainer.train()
    assert trainer.state.global_step == 3 < trainer.state.max_steps == 10
    assert cb.run.state == State.STOPPED and cb.history.layer_series(Series.GRAD_NORM)[2].shape[0] == 3


def _wait_for(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _steer(cb) -> tuple[threading.Thread, dict[str, int], list[State]]:
    """A thread that pauses the run after 3 steps, checks it waits, resumes it, then stops it."""
    states: list[State] = []
    seen: dict[str, int] = {}

    def steer() -> None:
        try:
            _wait_for(lambda: cb.run is not None and cb.run.global_step >= 3, 60)  # the trainer's start-up too
            cb.run.on(Event.STATE_CHANGE, lambda info: states.append(info.data["state"]))
            cb.pause()
            _wait_for(lambda: cb.run.state == State.PAUSED)
            seen["paused"] = cb.run.global_step
            time.sleep(0.3)
            seen["still"] = cb.run.global_step  # waiting in the step-end hook
            cb.resume()
            _wait_for(lambda: cb.run.global_step > seen["paused"])
            seen["resumed"] = cb.run.global_step
        finally:
            cb.stop()  # also when a wait timed out: the trainer must end

    thread = threading.Thread(target=steer)
    thread.start()
    return thread, seen, states


def test_hf_pause_waits_in_the_step_and_stop_from_another_thread(tmp_path):
    cb = hf_integration.RetrainCallback(alignment_every=None)
    trainer = transformers.Trainer(model=_bert(), args=_hf_args(tmp_path, max_steps=100_000), train_dataset=_texts(40),
                                   callbacks=[cb])
    thread, seen, states = _steer(cb)
    trainer.train()
    thread.join()
    assert seen["paused"] == seen["still"] < seen["resumed"]
    assert states[:2] == [State.PAUSED, State.RUNNING] and states[-1] == State.STOPPED
    assert cb.run.state == State.STOPPED and trainer.state.global_step == cb.run.global_step < 100_000


def test_hf_loss_computed_by_the_trainer_comes_from_its_log(tmp_path):
    def halved(outputs, labels, num_items_in_batch=None):
        return F.cross_entropy(outputs.logits, labels) * 0.5

    cb = hf_integration.RetrainCallback(alignment_every=None)
    trainer = transformers.Trainer(model=_bert(), args=_hf_args(tmp_path, logging_steps=1), train_dataset=_texts(24),
                                   callbacks=[cb], compute_loss_func=halved)
    with pytest.warns(UserWarning, match="logged loss"):
        trainer.train()
    logged = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    steps, losses = cb.history.series(Series.TRAIN_LOSS)
    assert steps.tolist() == list(range(6)) and np.allclose(losses, logged, rtol=1e-6)
    assert np.all(losses < 0.5)  # halved cross-entropy of 2 classes (~0.35), not the model's own loss


def test_hf_old_task_and_alignment_probe_do_not_leak_into_the_step_loss(tmp_path):
    old = [transformers.default_data_collator(_texts(8, seed=2)[i:i + 4]) for i in (0, 4)]
    cb = hf_integration.RetrainCallback(old_val=old, old_train=old, alignment_every=1, alignment_budget=1.0,
                                        forward=lambda model, batch: (model(**batch), batch["labels"]))  # with its loss
    trainer = transformers.Trainer(model=_bert(), args=_hf_args(tmp_path, logging_steps=1, num_train_epochs=2),
                                   train_dataset=_texts(24), callbacks=[cb])
    trainer.train()
    h = cb.history
    assert len(h.series(Series.OLD_BATCH_LOSS)[0]) >= 6 and h.series(Series.OLD_METRIC)[0].tolist() == [6, 12]
    logged = [log["loss"] for log in trainer.state.log_history if "loss" in log]  # no accumulation: the model's loss
    assert np.allclose(h.series(Series.TRAIN_LOSS)[1], logged, rtol=1e-5)


def test_hf_run_is_stored_and_restores_bit_identically(tmp_path):
    model = _bert()
    cb = hf_integration.RetrainCallback(alignment_every=None, name="bert stored", store=tmp_path / "runs")
    transformers.Trainer(model=model, args=_hf_args(tmp_path, num_train_epochs=1), train_dataset=_texts(16),
                         callbacks=[cb]).train()
    store = RunStore(tmp_path / "runs")
    record = store.get(cb.run_id)
    assert record.state == "finished" and record.name == "bert stored" and record.config["framework"] == "huggingface"
    restored = store.restore(cb.run_id, _bert())
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in restored.state_dict().items())
    assert not all(torch.equal(v, trained[k]) for k, v in _bert().state_dict().items())  # it did train
    store.close()
    cb.store.close()


def test_hf_evaluations_within_an_epoch_are_recorded_at_their_step_and_the_best_metric_named(tmp_path):
    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    cb = hf_integration.RetrainCallback(alignment_every=None)
    args = _hf_args(tmp_path, eval_strategy="steps", eval_steps=4, metric_for_best_model="accuracy")
    transformers.Trainer(model=_bert(), args=args, train_dataset=_texts(40), eval_dataset=_texts(8, seed=1),
                         compute_metrics=accuracy, callbacks=[cb]).train()
    h = cb.history
    assert h.series(Series.VAL_LOSS)[0].tolist() == [4, 8, 10]  # the Trainer evaluates at its last step too
    steps, acc = h.series(Series.VAL_METRIC)
    assert steps.tolist() == [4, 8, 10] and np.array_equal(acc, h.series("val_accuracy")[1])
    assert h.meta["metric"] == "accuracy" and h.meta["higher_is_better"] is True and cb.run.epoch == 1


# ====================================================================== Lightning
class _Digits(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = examples.pretrained_digits_cnn().train()
        self.step_losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.step_losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 5), "interval": "step"}}


class _GradientsAtStep(pl.Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.norms.append(_layer_norm(pl_module.net))


def _pl_trainer(callbacks, **options) -> pl.Trainer:
    settings = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    settings.update(options)
    return pl.Trainer(callbacks=callbacks, **settings)


@pytest.fixture(scope="module")
def digits():
    return examples.digits_loaders(batch_size=64)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_records_one_row_and_the_mean_loss_per_optimizer_step(digits, accumulate):
    train, val = digits
    probe = _GradientsAtStep()
    cb = pl_integration.RetrainCallback(alignment_every=None, monitor="val_acc")
    module = _Digits()
    trainer = _pl_trainer([probe, cb], max_epochs=2, accumulate_grad_batches=accumulate, num_sanity_val_steps=1)
    trainer.fit(module, train, val)
    batches = len(train)  # 23: with 2 a step, the epoch's last step has one batch
    per_epoch = -(-batches // accumulate)
    steps = trainer.global_step
    assert steps == 2 * per_epoch and cb.run.state == State.FINISHED and cb.run.global_step == steps
    h = cb.history
    grad_steps, cols, norms = h.layer_series(Series.GRAD_NORM)
    assert grad_steps.tolist() == list(range(steps)) and norms.shape == (steps, len(cb.run.layer_names))
    assert np.allclose(np.sqrt((norms**2).sum(1)), probe.norms, rtol=1e-5)  # this step's gradients, not the last's
    epochs = [module.step_losses[e * batches:(e + 1) * batches] for e in range(2)]
    expected = [np.mean(epoch[i:i + accumulate]) for epoch in epochs for i in range(0, batches, accumulate)]
    loss_steps, losses = h.series(Series.TRAIN_LOSS)
    assert loss_steps.tolist() == list(range(steps)) and np.allclose(losses, expected, rtol=1e-5)
    val_steps, val_loss = h.series(Series.VAL_LOSS)
    assert val_steps.tolist() == [per_epoch, 2 * per_epoch]  # the sanity check is not recorded
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(val_loss[-1])
    assert np.array_equal(h.series(Series.VAL_METRIC)[1], h.series("val_acc")[1]) and h.meta["metric"] == "val_acc"
    assert np.allclose(h.series(Series.LR)[1][:5], 0.05) and np.allclose(h.series(Series.LR)[1][5:10], 0.005)
    config, _ = cb.run.config_record()
    assert config["framework"] == "lightning" and config["optimizer"] == "sgd" and config["scheduler"] == "StepLR"


def test_lightning_stop_asked_after_four_steps_ends_training_there(digits):
    class StopAtFour(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 4:
                cb.stop()

    cb = pl_integration.RetrainCallback(alignment_every=None)
    trainer = _pl_trainer([StopAtFour(), cb], max_epochs=3)
    trainer.fit(_Digits(), digits[0])
    assert trainer.global_step == 4 and cb.run.state == State.STOPPED
    assert cb.history.layer_series(Series.GRAD_NORM)[2].shape[0] == 4


def test_lightning_pause_waits_at_the_batch_end_and_stop_from_another_thread(digits):
    cb = pl_integration.RetrainCallback(alignment_every=None)
    trainer = _pl_trainer([cb], max_epochs=1000)
    thread, seen, states = _steer(cb)
    trainer.fit(_Digits(), digits[0])
    thread.join()
    assert seen["paused"] == seen["still"] < seen["resumed"]
    assert states[:2] == [State.PAUSED, State.RUNNING] and states[-1] == State.STOPPED
    assert cb.run.state == State.STOPPED and trainer.global_step == cb.run.global_step < 1000 * len(digits[0])


def test_lightning_old_task_alignment_store_and_bit_identical_restore(digits, tmp_path):
    train, val = digits
    module = _Digits()
    cb = pl_integration.RetrainCallback(old_val=val, alignment_every=5, alignment_budget=1.0, name="cnn",
                                        store=RunStore(tmp_path / "runs"))
    _pl_trainer([cb], max_epochs=2).fit(module, train)
    h = cb.history
    assert len(h.series(Series.OLD_METRIC)[0]) == 2 and len(h.layer_series(Series.GRAD_ALIGNMENT)[0]) >= 2
    store = cb.store
    record = store.get(cb.run_id)
    assert record.state == "finished" and record.name == "cnn" and record.config["framework"] == "lightning"
    restored = store.restore(cb.run_id, _Digits())  # the module as it was built: the pretrained weights
    trained = module.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in restored.state_dict().items())
    store.close()


def test_lightning_exception_marks_the_run_failed(digits):
    class Boom(_Digits):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise KeyError("boom")
            return super().training_step(batch, batch_idx)

    cb = pl_integration.RetrainCallback(alignment_every=None)
    with pytest.raises(KeyError):
        _pl_trainer([cb]).fit(Boom(), digits[0])
    assert cb.run.state == State.FAILED and "KeyError" in cb.run.message and cb.run.global_step == 2


# ====================================================================== shared
def _closure_loop(hooked: bool) -> tuple[list[float], list[float]]:
    """(the run's gradient norms, the true ones) of 3 steps of ``optimizer.step(closure)``."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    run = WatchedRun(model, opt, alignment_every=None, hook_optimizer=hooked)
    true_norms: list[float] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        true_norms.append(_layer_norm(model))
        if not hooked:
            run.gradients_ready()
        return loss

    for _ in range(3):
        run.step(opt.step(closure))
    run.finish()
    return run.history.layer_series(Series.GRAD_NORM)[2][:, 0].tolist(), true_norms


def test_a_closure_optimizer_needs_gradients_ready_not_the_step_hook():
    """Lightning's case in a plain loop: the backward pass runs inside ``optimizer.step(closure)``."""
    got, true = _closure_loop(hooked=False)
    assert np.allclose(got, true, rtol=1e-5)
    got, true = _closure_loop(hooked=True)
    assert got[0] == 0 and np.allclose(got[1:], true[:-1], rtol=1e-5)  # the hook ran before the closure's backward


def test_steering_before_training_begins_and_options_the_trainer_owns(tmp_path):
    cb = hf_integration.RetrainCallback(alignment_every=None)
    cb.stop()
    assert cb.should_stop and cb.history is None
    trainer = transformers.Trainer(model=_bert(), args=_hf_args(tmp_path), train_dataset=_texts(40), callbacks=[cb])
    trainer.train()
    assert trainer.state.global_step == 1 and cb.run.state == State.STOPPED
    with pytest.raises(ValueError, match="optimizer come"):
        hf_integration.RetrainCallback(optimizer=None)
    with pytest.raises(ValueError, match="store must be"):
        pl_integration.RetrainCallback(store=3)


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("retrain_widgets.integrations.huggingface", ["transformers"], "retrain_widgets[hf]"),
    ("retrain_widgets.integrations.lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"],
     "retrain_widgets[lightning]"),
])
def test_a_missing_framework_says_which_extra_to_install(module, blocked, extra):
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            "import retrain_widgets, retrain_widgets.integrations\n"
            f"try:\n    from {module} import RetrainCallback\nexcept ImportError as e:\n    print('ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERROR") and extra in out.stdout


def test_importing_the_package_imports_no_framework():
    code = ("import sys, retrain_widgets, retrain_widgets.integrations\n"
            "print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_warning_when_the_model_returns_its_loss(tmp_path):
    cb = hf_integration.RetrainCallback(alignment_every=None)
    trainer = transformers.Trainer(model=_bert(), args=_hf_args(tmp_path), train_dataset=_texts(8), callbacks=[cb])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*logged loss.*")
        trainer.train()
    assert cb.history.series(Series.TRAIN_LOSS)[0].tolist() == [0, 1]
