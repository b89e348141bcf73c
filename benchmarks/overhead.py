"""Engine overhead: a bare PyTorch loop against ``Retrainer`` with every probe on.

Both train the same model on the same in-memory batches, interleaved in one process
(bare, engine, engine, bare, ...: see ``benchmarks/paired.py``) in short blocks (~0.6 s for the
CNN, ~2 s for the ResNet), many repeats; each block times the steps between the first and the
last step of a run (set-up excluded), by the wall clock and by the training thread's CPU time.
On a shared 2-core machine the same loop's speed varies by +-40 % from block to block, CPU time
included (the neighbours slow the core itself). The headline ratio is the median of the paired
ratios; the best-blocks ratio (best bare rate / best engine rate: noise only ever slows a block
down) is printed on its own line. Both use the thread count the engine uses on this machine (it
keeps one core for the notebook kernel), so the ratio measures the engine itself: background
thread, per-step loss and gradient-norm probes, LR per group, drift and checkpoints at each
publish, history, events.

Ends with two lines per model::

    overhead ratio <model>: <median of the paired ratios bare steps/s / engine steps/s>
    best-runs ratio <model>: <best bare steps/s / best engine steps/s>

Target: <= 1.02 on the bundled CNN and on a ResNet-18-shaped model (CPU). Not a timed test.

The alignment probe is measured on its own: the engine without it against the engine with it at the
default cadence (``RunConfig().alignment_every`` steps within ``alignment_budget`` of the wall
time), interleaved the same way, on the bundled CNN in blocks long enough (~300 steps, ~2.5 s) to
hold the probe's steady state: its budget spaces the samples by their cost / budget (~1.6 s here),
so a block of the engine benchmark's length (~0.6 s) would hold none. Each block is timed from the
start of its first step, so the free samples (``AlignmentProbe.FREE_SAMPLES``, every
``alignment_every`` steps from the first, before the budget can space them) count in full: over a long
run their share is smaller than here. The ResNet-18-shaped
model is not used here: one sample of it costs ~0.3 s, so at the default budget its samples are a
minute apart, longer than a block can be. Ends with::

    alignment probe overhead ratio: <median of the paired ratios probe off / probe on>
    alignment probe best-runs ratio: <best probe-off steps/s / best probe-on steps/s>

and the samples per timed block.

Target: <= 1.02.

``--gradient-order`` measures one choice of the engine's step instead: the bare loop dropping the last
step's gradients before the forward pass (as the engine does) against dropping them after it (as the
engine did before), ending with ``gradient order ratio <model>: X`` (before's steps/s / after's; above 1:
dropping them first is faster) and its best-runs line.

``--watch`` measures a user's own loop instead: the bare loop against the same loop under
:class:`~retrain_widgets.core.watch.WatchedRun` with every probe on (gradient norms at the optimizer
step, LRs, drift and checkpoints, the alignment probe at its default cadence and budget with old-task
batches), on the bundled CNN in blocks of ~300 steps (as the probe's own measurement, long enough to hold
its steady state), ending with ``watch overhead ratio: X`` and
``watch best-runs ratio: Y``. Target: <= 1.02. ``--watch --breakdown`` first measures the same loop watched
without the alignment probe (``watch overhead ratio without the alignment probe``), which splits the probe's
budgeted share from the rest, then times one watched run piece by piece (``pieces of one watched loop run``: each
piece's time a step and share of a step: the gradient norms, the alignment samples, ``run.step``, publishing);
``--hf --breakdown`` does that for one callback run (with the forward hook that takes the step's loss).

``--hf`` measures the Hugging Face callback: ``transformers.Trainer`` on a tiny random BERT without
against with ``integrations.huggingface.RetrainCallback()`` (default options: no old task, no store),
timed from the end of the first optimizer step to the end of the last (a callback stamps both, in both
runs), ending with ``hf callback overhead ratio: X`` and ``hf callback best-runs ratio: Y``. Target: <= 1.03.
``--hf --hf-model bert-tiny`` does the same on the shape of the smallest published BERT (hidden 128, its
full vocabulary, 128 tokens a text: ~20x the toy's step, the same 41 parameter tensors), ending with
``hf callback overhead ratio bert-tiny: X`` and its best-runs line: the callback's cost on a model
someone fine-tunes, against the toy's worst case.

Run: ``.venv/bin/python benchmarks/overhead.py [--repeats 7] [--quick] [--probe-only | --engine-only | --gradient-order
| --watch [--breakdown] | --hf [--hf-model bert-tiny] [--breakdown]]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paired import interleave, ratios  # noqa: E402
from pieces import timed  # noqa: E402

from retrain_widgets import Event, Retrainer, RunConfig, examples  # noqa: E402
from retrain_widgets.core.alignment import AlignmentProbe  # noqa: E402
from retrain_widgets.core.checkpoint import HeavyProbes  # noqa: E402
from retrain_widgets.core.params import make_optimizer  # noqa: E402
from retrain_widgets.core.probes import StepProbes  # noqa: E402
from retrain_widgets.core.telemetry import Telemetry  # noqa: E402
from retrain_widgets.core.watch import WatchedRun  # noqa: E402


def bare_loop(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device) -> tuple[float, float]:
    """(steps/s, steps per CPU second) of the loop a user would write: zero_grad, forward, CE,
    backward, AdamW step, scheduler step."""
    model = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss_fn = nn.CrossEntropyLoss()
    t0 = c0 = 0.0
    for i, (x, y) in enumerate(batches):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.thread_time()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    n = len(batches) - 1
    return n / (time.perf_counter() - t0), n / (time.thread_time() - c0)


def gradient_order_loop(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device,
                        late: bool) -> tuple[float, float]:
    """(steps/s, steps per CPU second) of the bare loop with the last gradients dropped before the
    forward pass (``late=False``: as the engine does) or after it, just before backward."""
    model = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss()
    t0 = c0 = 0.0
    for i, (x, y) in enumerate(batches):
        if i == 1:
            t0, c0 = time.perf_counter(), time.thread_time()
        if not late:
            opt.zero_grad(set_to_none=True)
        out = model(x.to(device))
        if late:
            opt.zero_grad(set_to_none=True)
        loss_fn(out, y.to(device)).backward()
        opt.step()
    n = len(batches) - 1
    return n / (time.perf_counter() - t0), n / (time.thread_time() - c0)


def engine_loop(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device,
                sync_check: bool = False, old_train: list | None = None,
                samples: list | None = None, first: int = 1) -> tuple[float, float]:
    """(steps/s, steps per CPU second of the training thread) of Retrainer with every probe on
    (grad norms, LR per group, drift, checkpoints, history, events; with ``old_train`` and
    ``cfg.alignment_every`` the alignment probe too; ``samples`` gets its number of samples within
    the timed steps). Timed from the end of step ``first`` (0: from the start of the first step)."""
    stamps: dict[int, tuple[float, float]] = {}
    r = Retrainer(model, cfg.replace(max_steps=len(batches), epochs=1), _Stamped(batches, stamps, first == 0),
                  old_train=old_train)
    r.telemetry.sync_check = sync_check

    def stamp(info):
        if info.step in (first, len(batches)) and info.step:
            stamps[info.step] = (time.perf_counter(), time.thread_time())

    r.on(Event.STEP_END, stamp)
    r.fit()
    assert r.history.total_points("train_loss") == len(batches)
    assert r.history.total_points("grad_norm") == len(batches)
    (t0, c0), (t1, c1) = stamps[first], stamps[len(batches)]
    if samples is not None and r.alignment is not None:
        steps, _ = r.history.series("old_batch_loss")
        samples.append(int(((steps >= first) & (steps < len(batches))).sum()))
    n = len(batches) - first
    return n / (t1 - t0), n / (c1 - c0)


def user_loop(model: nn.Module, batches: list, cfg: RunConfig, device: torch.device,
              old_train: list | None = None, watched: bool | None = None) -> tuple[float, float]:
    """(steps/s, steps per CPU second) of :func:`bare_loop`'s loop, under a :class:`WatchedRun` with
    every probe on when ``old_train`` is given (the alignment probe samples it), bare otherwise
    (``watched=True`` without ``old_train``: watched, every probe but the alignment probe). Timed
    from the end of the first step, as :func:`bare_loop`; the run's set-up and finish are not."""
    model = copy.deepcopy(model).to(device).train()
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    watched = old_train is not None if watched is None else watched
    run = WatchedRun(model, opt, scheduler=sched, old_train=old_train) if watched else None
    loss_fn = nn.CrossEntropyLoss()
    t0 = c0 = 0.0
    for i, (x, y) in enumerate(batches):
        if i == 1:
            t0, c0 = time.perf_counter(), time.thread_time()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        if run is not None:
            run.step(loss)
    t1, c1 = time.perf_counter(), time.thread_time()
    if run is not None:
        run.finish()
        assert run.history.total_points("grad_norm") == len(batches)
        assert old_train is None or (run.alignment is not None and len(run.history.series("old_batch_loss")[0]) >= 1)
    n = len(batches) - 1
    return n / (t1 - t0), n / (c1 - c0)


def measure_watch(model: nn.Module, batches: list, cfg: RunConfig, repeats: int,
                  device: torch.device) -> tuple[float, float]:
    """(median of the paired ratios, ratio of the best blocks): the bare loop against the same loop
    watched, old-task batches from the training batches."""
    old = batches[: max(1, len(batches) // 4)]
    user_loop(model, batches[:5], cfg, device)  # warm-up both paths once
    user_loop(model, batches[:5], cfg, device, old_train=old)
    return compare("digits_cnn (watched loop)", ("bare", "watched"), lambda: user_loop(model, batches, cfg, device),
                   lambda: user_loop(model, batches, cfg, device, old_train=old), repeats)


def measure_watch_without_probe(model: nn.Module, batches: list, cfg: RunConfig, repeats: int,
                                device: torch.device) -> tuple[float, float]:
    """``--breakdown``: the same, watched without the alignment probe (no old-task batches), so that
    the probe's share (its own budget) and the rest (per-step probes, ``run.step``) read apart."""
    user_loop(model, batches[:5], cfg, device, watched=True)
    return compare("digits_cnn (watched loop, no alignment probe)", ("bare", "watched"),
                   lambda: user_loop(model, batches, cfg, device),
                   lambda: user_loop(model, batches, cfg, device, watched=True), repeats)


#: ``--hf-model``: (BertConfig options, tokens a text). ``toy``: hidden size 32, 16 tokens (~4 ms a step
#: here: the callback's fixed per-step cost at its largest share); ``bert-tiny``: the shape of the
#: smallest published BERT (google/bert_uncased_L-2_H-128_A-2: 2 layers, hidden 128, its 30,522-token
#: vocabulary), 128 tokens a text. Both have 41 parameter tensors, so the callback's per-step work
#: (one gradient norm each) is the same.
HF_MODELS = {
    "toy": (dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64), 16),
    "bert-tiny": (dict(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=512), 128),
}


#: (class, method, label) of a watched loop's pieces; an indented one is inside the one above it
_STEP = "run.step(loss): loss, NaN check, publish when due, steering"
_WATCH_PIECES = (
    (WatchedRun, "_before_optimizer_step", "at the optimizer step (pre-hook)"),
    (StepProbes, "record_gradients", "  gradient norms (one per parameter tensor) and LRs"),
    (AlignmentProbe, "sample", "  alignment probe samples"),
    (WatchedRun, "step", _STEP),
    (Telemetry, "publish", "publish (in run.step when due, and at the end): host copy, history"),
    (HeavyProbes, "measure", "  drift + NaN-guard checkpoint (within their budget)"),
)


def pieces(name: str, run_once: Callable[[], tuple[float, float]], extra: tuple = ()) -> None:
    """``--breakdown``: one more run (``run_once``) with a timer around each piece of a watched loop,
    printed as time a step and share of a step (the timers' own ~1 us a call included)."""
    table = _WATCH_PIECES + tuple(extra)
    with timed(table) as (totals, calls):
        rate, _ = run_once()
    steps, step_us = max(1, calls[_STEP]), 1e6 / rate
    print(f"pieces of one {name} run ({rate:.1f} steps/s, {step_us:.0f} us a step; {steps} steps):")
    for _, _, label in table:
        if calls[label]:
            us = 1e6 * totals[label] / steps
            print(f"  {label:64s} {us:8.1f} us a step {100 * us / step_us:5.2f} %  ({calls[label]} calls)")


def hf_case(quick: bool, size: str = "toy") -> tuple[Callable[[], nn.Module], list]:
    """A random BERT of the ``HF_MODELS`` shape ``size`` (built fresh by the returned function, same
    seed) and ~100 steps of texts."""
    from transformers import BertConfig, BertForSequenceClassification

    options, tokens = HF_MODELS[size]

    def model() -> nn.Module:
        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(**options, num_labels=2))

    g = torch.Generator().manual_seed(0)
    vocab = options["vocab_size"]
    texts = [{"input_ids": torch.randint(0, vocab, (tokens,), generator=g), "labels": i % 2}
             for i in range(40 if quick else 400)]
    return model, texts


def hf_train(make_model: Callable[[], nn.Module], texts: list, watched: bool, folder: str) -> tuple[float, float]:
    """(steps/s, steps per CPU second) of ``Trainer.train()`` (batches of 4), with or without the
    callback, from the end of the first optimizer step to the end of the last."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from retrain_widgets.integrations.huggingface import RetrainCallback

    stamps: list[tuple[float, float]] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (1, state.max_steps):
                stamps.append((time.perf_counter(), time.thread_time()))

    args = TrainingArguments(output_dir=folder, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
                             per_device_train_batch_size=4, num_train_epochs=1, logging_steps=10_000,
                             dataloader_num_workers=0)
    callbacks = [RetrainCallback(), Stamp()] if watched else [Stamp()]
    trainer = Trainer(model=make_model(), args=args, train_dataset=texts, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # its end-of-training print, in both
    trainer.train()
    if watched:
        assert callbacks[0].history.total_points("grad_norm") == trainer.state.global_step
    (t0, c0), (t1, c1) = stamps
    n = trainer.state.global_step - 1
    return n / (t1 - t0), n / (c1 - c0)


def measure_hf(quick: bool, repeats: int, size: str = "toy") -> tuple[float, float]:
    """(median of the paired ratios, ratio of the best blocks): the Trainer without against with the callback."""
    import tempfile

    import transformers

    transformers.logging.set_verbosity_error()
    make_model, texts = hf_case(quick, size)
    with tempfile.TemporaryDirectory() as folder:
        hf_train(make_model, texts[:12], False, folder)  # warm-up both paths once
        hf_train(make_model, texts[:12], True, folder)
        return compare(f"{size} BERT (Hugging Face Trainer)", ("plain", "callback"),
                       lambda: hf_train(make_model, texts, False, folder),
                       lambda: hf_train(make_model, texts, True, folder), repeats)


def hf_pieces(quick: bool, size: str) -> None:
    """``--hf --breakdown``: one more callback run, piece by piece (:func:`pieces`)."""
    import tempfile

    from retrain_widgets.integrations.huggingface import RetrainCallback

    make_model, texts = hf_case(quick, size)
    extra = ((RetrainCallback, "_forward_done", "the model's forward hook (the step's loss)"),
             (RetrainCallback, "on_step_end", "the callback's on_step_end (run.step inside)"))
    with tempfile.TemporaryDirectory() as folder:
        pieces(f"{size} BERT Trainer", lambda: hf_train(make_model, texts, True, folder), extra)


class _Stamped:
    """The batches, stamping the wall clock and the training thread's CPU clock (key 0) as the
    training thread takes the first one (``on``): the start of the first step."""

    def __init__(self, batches: list, stamps: dict[int, tuple[float, float]], on: bool) -> None:
        self.batches, self.stamps, self.on = batches, stamps, on

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i == 0 and self.on:
                self.stamps[0] = (time.perf_counter(), time.thread_time())
            yield batch


def compare(name: str, labels: tuple[str, str], run_a: Callable[[], tuple[float, float]],
            run_b: Callable[[], tuple[float, float]], repeats: int) -> tuple[float, float]:
    """(median of the paired ratios, ratio of the best blocks) of ``run_a`` (the reference) against
    ``run_b`` over interleaved repeats (ABBA order); prints the pairs' summary."""
    pairs = interleave(run_a, run_b, repeats)
    rates = [(a[0], b[0]) for a, b in pairs]
    median, best = ratios(rates)
    cpu, _ = ratios([(a[1], b[1]) for a, b in pairs])
    la, lb = labels
    print(f"{name}: {la} {statistics.median(r[0] for r in rates):.1f} steps/s, {lb} "
          f"{statistics.median(r[1] for r in rates):.1f} steps/s (medians); best blocks: {la} "
          f"{max(r[0] for r in rates):.1f}, {lb} {max(r[1] for r in rates):.1f} steps/s")
    print(f"  wall ratios {', '.join(f'{a / b:.3f}' for a, b in rates)}")
    print(f"  median wall ratio {median:.3f}, median cpu-time ratio {cpu:.3f}, ratio of the best blocks {best:.3f}")
    return median, best


def measure(name: str, model: nn.Module, batches: list, cfg: RunConfig, repeats: int,
            device: torch.device) -> tuple[float, float]:
    """(median of the paired ratios, ratio of the best blocks): the bare loop against the engine."""
    bare_loop(model, batches[:5], cfg, device)  # warm-up both paths once
    engine_loop(model, batches[:5], cfg, device)
    return compare(name, ("bare", "engine"), lambda: bare_loop(model, batches, cfg, device),
                   lambda: engine_loop(model, batches, cfg, device), repeats)


def measure_order(name: str, model: nn.Module, batches: list, cfg: RunConfig, repeats: int,
                  device: torch.device) -> tuple[float, float]:
    """(median of the paired ratios, ratio of the best blocks): gradients dropped before the forward
    pass against after it, in the bare loop."""
    return compare(f"{name} (gradients dropped)", ("before forward", "after forward"),
                   lambda: gradient_order_loop(model, batches, cfg, device, late=False),
                   lambda: gradient_order_loop(model, batches, cfg, device, late=True), repeats)


def measure_probe(name: str, model: nn.Module, batches: list, cfg: RunConfig, repeats: int,
                  device: torch.device) -> tuple[float, float]:
    """(median of the paired ratios, ratio of the best blocks): the engine without the alignment
    probe against the engine with it at the default cadence (``RunConfig()``'s ``alignment_every``
    and ``alignment_budget``), old-task batches from the training batches."""
    default = RunConfig()
    on = cfg.replace(alignment_every=default.alignment_every, alignment_budget=default.alignment_budget)
    off = cfg.replace(alignment_every=None)
    old = batches[: max(1, len(batches) // 4)]
    counts: list[int] = []
    engine_loop(model, batches[:5], on, device, old_train=old)  # warm-up
    result = compare(f"{name} (alignment probe)", ("probe off", "probe on"),
                     lambda: engine_loop(model, batches, off, device, old_train=old, first=0),
                     lambda: engine_loop(model, batches, on, device, old_train=old, samples=counts, first=0),
                     repeats)
    print(f"  {len(batches)} timed steps a block; probe samples in them: median "
          f"{statistics.median(counts):g} (min {min(counts)}, max {max(counts)}); budget "
          f"{default.alignment_budget:g}, every {default.alignment_every} steps")
    return result


def cnn_case(quick: bool, epochs: int = 3) -> tuple[nn.Module, list]:
    train, _ = examples.digits_loaders(batch_size=64)
    batches = [b for b in train] * (1 if quick else epochs)  # ~70 steps: short blocks pair well in time
    return examples.pretrained_digits_cnn(), batches


def resnet_case(quick: bool) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = examples.resnet18_shaped(num_classes=10)
    g = torch.Generator().manual_seed(0)
    n = 4 if quick else 8
    batches = [(torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]
    return model, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    parser.add_argument("--probe-only", action="store_true", help="only the alignment probe's own cost")
    parser.add_argument("--engine-only", action="store_true", help="only the bare loop against the engine")
    parser.add_argument("--gradient-order", action="store_true",
                        help="only the bare loop dropping the last gradients before the forward against after it")
    parser.add_argument("--watch", action="store_true", help="only the bare loop against the same loop watched")
    parser.add_argument("--hf", action="store_true", help="only the Hugging Face Trainer without against with the callback")
    parser.add_argument("--hf-model", choices=sorted(HF_MODELS), default="toy",
                        help="with --hf: the BERT's shape (default toy; bert-tiny: the smallest published BERT's)")
    parser.add_argument("--breakdown", action="store_true",
                        help="with --watch: also the watched loop without the alignment probe; with --watch or "
                             "--hf: one more run timed piece by piece")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    device = torch.device("cpu")
    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {threads} torch thread(s), device {device}, "
          f"{repeats} interleaved repeats")
    cfg = RunConfig(loss="ce", optimizer="adamw", lr=1e-3, schedule="constant", device="cpu")
    results, probe = {}, {}
    if args.watch:
        model, batches = cnn_case(args.quick, epochs=13)  # ~300 steps: the alignment probe's steady state
        median, best = measure_watch(model, batches, cfg, repeats, device)
        if args.breakdown:
            bare_median, bare_best = measure_watch_without_probe(model, batches, cfg, repeats, device)
            pieces("watched loop", lambda: user_loop(model, batches, cfg, device,
                                                     old_train=batches[: max(1, len(batches) // 4)]))
            print(f"watch overhead ratio without the alignment probe: {bare_median:.3f}")
            print(f"watch best-runs ratio without the alignment probe: {bare_best:.3f}")
        print(f"watch overhead ratio: {median:.3f}")
        print(f"watch best-runs ratio: {best:.3f}")
        return
    if args.hf:
        median, best = measure_hf(args.quick, repeats, args.hf_model)
        if args.breakdown:
            hf_pieces(args.quick, args.hf_model)
        which = "" if args.hf_model == "toy" else f" {args.hf_model}"
        print(f"hf callback overhead ratio{which}: {median:.3f}")
        print(f"hf callback best-runs ratio{which}: {best:.3f}")
        return
    if args.gradient_order:
        for name, case in (("digits_cnn", cnn_case), ("resnet18_shaped", resnet_case)):
            model, batches = case(args.quick)
            median, best = measure_order(name, model, batches, cfg, repeats, device)
            print(f"gradient order ratio {name}: {median:.3f}")
            print(f"gradient order best-runs ratio {name}: {best:.3f}")
        return
    if not args.probe_only:
        for name, case in (("digits_cnn", cnn_case), ("resnet18_shaped", resnet_case)):
            model, batches = case(args.quick)
            results[name] = measure(name, model, batches, cfg, repeats, device)
    if not args.engine_only:
        model, batches = cnn_case(args.quick, epochs=13)  # ~300 steps: the probe's steady state
        probe["digits_cnn"] = measure_probe("digits_cnn", model, batches, cfg, repeats, device)
    for name, (median, best) in results.items():
        print(f"overhead ratio {name}: {median:.3f}")
        print(f"best-runs ratio {name}: {best:.3f}")
    for name, (median, best) in probe.items():
        print(f"alignment probe {name}: median paired ratio {median:.3f}, best-runs ratio {best:.3f}")
    if probe:
        print(f"alignment probe overhead ratio: {max(m for m, _ in probe.values()):.3f}")
        print(f"alignment probe best-runs ratio: {max(b for _, b in probe.values()):.3f}")


if __name__ == "__main__":
    main()
