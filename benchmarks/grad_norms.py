"""Per-parameter gradient norms on the CPU: what a step's norms cost, and ways of taking them.

The watched loop, the HF and Lightning callbacks and the engine take one L2 norm per parameter
tensor at every optimizer step (``StepProbes``: one fused ``torch._foreach_norm`` and one ``stack``
into a buffer row). This times, on the gradients of the bundled CNN (16 tensors, 28 k values), a toy
BERT (41 tensors, 38 k) and BERT-Tiny's shape (41 tensors, 4.4 M), the median of many calls of:

* ``foreach``: ``torch.stack(torch._foreach_norm(grads), out=row)`` (what the probes do);
* ``segments``: every gradient copied into one flat buffer (``torch.cat(out=)``), squared, then
  ``torch.segment_reduce`` by tensor (one reduction instead of one per tensor);
* ``numpy``: ``np.dot(g, g)`` of each gradient's numpy view (no torch dispatch);

each warm (called twice in a row, the second timed) and *in situ*: called once per step of a bare
training loop on the CNN, between its backward pass and its optimizer step, where the caches hold the
step's kernels rather than this code. Ends with one line per model and way::

    grad norms <model> <way>: warm X us, in situ Y us

(in situ only for the CNN, whose loop this runs). Run: ``.venv/bin/python benchmarks/grad_norms.py``.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overhead import HF_MODELS  # noqa: E402

from retrain_widgets import RunConfig, examples  # noqa: E402
from retrain_widgets.core.params import make_optimizer  # noqa: E402


def ways(params: list[nn.Parameter]) -> dict:
    """The ways of taking every parameter's gradient norm, each a function of no arguments."""
    n = sum(p.numel() for p in params)
    row, flat = torch.empty(len(params)), torch.empty(n)
    lengths = torch.tensor([p.numel() for p in params])

    def foreach():
        torch.stack(torch._foreach_norm([p.grad for p in params]), out=row)

    def segments():
        torch.cat([p.grad.view(-1) for p in params], out=flat)
        torch.segment_reduce(flat.square_(), "sum", lengths=lengths)

    def numpy():
        return [float(np.dot(a, a)) for a in (p.grad.numpy().reshape(-1) for p in params)]

    return {"foreach": foreach, "segments": segments, "numpy": numpy}


def warm(fn, calls: int = 400) -> float:
    times = []
    for _ in range(calls):
        fn()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def in_situ(model: nn.Module, batches: list, rounds: int = 4) -> dict[str, float]:
    """Median µs of each way, called once a step between the backward pass and the optimizer step."""
    model = copy.deepcopy(model).train()
    opt = make_optimizer(model, RunConfig(loss="ce", optimizer="adamw", lr=1e-3, device="cpu"))
    params = list(model.parameters())
    table = ways(params)
    times: dict[str, list[float]] = {k: [] for k in table}
    names = list(table)
    for i, (x, y) in enumerate(batches * rounds):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        name = names[i % len(names)]
        t0 = time.perf_counter()
        table[name]()
        times[name].append(time.perf_counter() - t0)
        opt.step()
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def with_gradients(model: nn.Module) -> list[nn.Parameter]:
    torch.manual_seed(0)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 torch thread")
    cnn = examples.pretrained_digits_cnn()
    train, _ = examples.digits_loaders(batch_size=64)
    situ = in_situ(cnn, list(train))
    models = {"digits_cnn": cnn}
    try:
        from transformers import BertConfig, BertForSequenceClassification
        for size, (options, _) in HF_MODELS.items():
            models[f"{size} BERT"] = BertForSequenceClassification(BertConfig(**options, num_labels=2))
    except ImportError:
        print("(transformers is not installed: the CNN only)")
    for name, model in models.items():
        params = with_gradients(model)
        print(f"{name}: {len(params)} tensors, {sum(p.numel() for p in params):,} values")
        for way, fn in ways(params).items():
            line = f"grad norms {name} {way}: warm {warm(fn):.1f} us"
            if name == "digits_cnn":
                line += f", in situ {situ[way]:.1f} us"
            print(line)


if __name__ == "__main__":
    main()
