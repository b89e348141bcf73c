"""Record runs of the bundled pretrained CNN into a RunStore, from a separate process.

The data are random 8x8 images with binary labels: importing scikit-learn for the digits
would only slow the process's start.

Used by tests/test_store.py::

    python record_runs.py FOLDER --runs 3 --steps 30 [--go FILE] [--tag NAME]
    python record_runs.py FOLDER --long --save-every 0.2     # trains until killed

Prints ``ready`` once set up (then waits for ``--go FILE`` to exist when given), and each run
id as it is recorded.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from retrain_widgets import Retrainer, RunConfig, examples
from retrain_widgets.core.store import RunStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--save-every", type=float, default=0.0)
    parser.add_argument("--go", default=None)
    parser.add_argument("--tag", default=str(os.getpid()))
    parser.add_argument("--long", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = examples.pretrained_digits_cnn()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(320, 1, 8, 8, generator=gen)
    y = (torch.rand(320, generator=gen) < 0.2).float()
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=64)
    print("ready", flush=True)
    if args.go:
        deadline = time.monotonic() + 60
        while not os.path.exists(args.go) and time.monotonic() < deadline:
            time.sleep(0.02)
    with RunStore(args.folder) as store:
        if args.long:
            cfg = RunConfig(loss="bce", head_out=1, epochs=100_000, device="cpu")
            run = Retrainer(model, cfg, train, val, publish_every=5)
            print(store.record(run, name="long", save_every=args.save_every), flush=True)
            run.fit()
            return
        for i in range(args.runs):
            cfg = RunConfig(loss="bce", head_out=1, max_steps=args.steps, device="cpu", seed=i)
            run = Retrainer(model, cfg, train, val, publish_every=5)
            run_id = store.record(run, name=f"{args.tag} {i}", save_every=args.save_every)
            run.fit()
            print(run_id, flush=True)


if __name__ == "__main__":
    main()
