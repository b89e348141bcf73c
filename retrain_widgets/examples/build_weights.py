"""Rebuild the shipped example weights ``digits_cnn.pt``.

Usage::

    python -m retrain_widgets.examples.build_weights [--out PATH] [--epochs N] [--seed S]

Trains :class:`~retrain_widgets.examples.DigitsCNN` with cross-entropy (AdamW, linear
warm-up then cosine decay) on the training split of
:func:`~retrain_widgets.examples.digits_arrays`, prints train/validation accuracy and saves
the float32 ``state_dict`` with :func:`torch.save`. The run is deterministic for a given
seed, torch version and CPU: it seeds a forked RNG, turns on
``torch.use_deterministic_algorithms`` and uses one intra-op thread; the caller's global
RNG state, determinism flag and thread count are restored afterwards. Two runs give
bit-identical tensors (the files' bytes still differ: ``torch.save`` writes a random
serialization id).

The defaults (25 epochs, batch 64, AdamW lr 3e-3) reach about 99.7 % validation accuracy
in well under 30 s on two CPU cores.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .data import digits_arrays
from .model import WEIGHTS_PATH, DigitsCNN

__all__ = ["DEFAULT_EPOCHS", "accuracy", "build", "main", "save_weights"]

#: Epochs used for the shipped weights.
DEFAULT_EPOCHS = 25
_BATCH_SIZE = 64
_LR = 3e-3
_WEIGHT_DECAY = 1e-4
_WARMUP_FRACTION = 0.05


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Return the top-1 accuracy of ``model`` on ``(x, y)`` in evaluation mode.

    The model's training/evaluation mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(len(x), 1)


def build(epochs: int = DEFAULT_EPOCHS, seed: int = 0, verbose: bool = False) -> tuple[DigitsCNN, float]:
    """Train a :class:`DigitsCNN` from scratch on the digits training split.

    Parameters
    ----------
    epochs
        Passes over the 1437 training images (23 steps of 64 each).
    seed
        Seed for the initialisation, dropout and batch order.
    verbose
        Print the loss and accuracies every few epochs.

    Returns
    -------
    tuple
        ``(model, val_accuracy)``: the trained model in ``eval()`` mode and its top-1
        accuracy on the validation split.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")

    data = digits_arrays()
    x_train, y_train, x_val, y_val = data["x_train"], data["y_train"], data["x_val"], data["y_val"]
    n = len(x_train)
    steps_per_epoch = n // _BATCH_SIZE  # drop the ragged tail: equal batches, no size-1 batch
    total = epochs * steps_per_epoch
    warmup = max(1, int(_WARMUP_FRACTION * total))

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsCNN()
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
            loss_fn = nn.CrossEntropyLoss()
            model.train()
            for epoch in range(epochs):
                perm = torch.randperm(n, generator=gen)
                running = torch.zeros(())
                for b in range(steps_per_epoch):
                    idx = perm[b * _BATCH_SIZE : (b + 1) * _BATCH_SIZE]
                    loss = loss_fn(model(x_train[idx]), y_train[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    running += loss.detach()
                if verbose and (epoch % 10 == 9 or epoch == epochs - 1):
                    print(
                        f"epoch {epoch + 1:3d}/{epochs}  loss {float(running) / steps_per_epoch:.4f}  "
                        f"train acc {accuracy(model, x_train, y_train):.4f}  "
                        f"val acc {accuracy(model, x_val, y_val):.4f}"
                    )
            model.eval()
            val_acc = accuracy(model, x_val, y_val)
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_det_warn)
        torch.set_num_threads(old_threads)
    return model, val_acc


def save_weights(model: nn.Module, out: str | Path = WEIGHTS_PATH) -> Path:
    """Save ``model``'s state dict (floating tensors as float32, contiguous) to ``out``."""
    state = {
        k: (v.detach().to(torch.float32) if v.is_floating_point() else v.detach()).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m retrain_widgets.examples.build_weights",
        description="Train the example DigitsCNN on scikit-learn's digits and save its weights.",
    )
    parser.add_argument(
        "--out", type=Path, default=WEIGHTS_PATH, help=f"output file (default: {WEIGHTS_PATH})"
    )
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs (default: {DEFAULT_EPOCHS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")

    start = time.perf_counter()
    model, val_acc = build(epochs=args.epochs, seed=args.seed, verbose=True)
    elapsed = time.perf_counter() - start
    data = digits_arrays()
    train_acc = accuracy(model, data["x_train"], data["y_train"])
    path = save_weights(model, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}")
    print(f"train accuracy: {train_acc:.4f}")
    print(f"val accuracy:   {val_acc:.4f}")
    print(f"training time:  {elapsed:.1f} s")
    print(f"saved {path} ({path.stat().st_size / 1024:.1f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
