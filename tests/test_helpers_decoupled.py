"""The studio's helpers take what they need, not the studio: ``autoloss.open_ready`` gets a model, a
forward, a batch, a config and two callables; ``WhatIfQueue`` gets a run book, a start and an emit.
Neither module refers to ``retrain_widgets.headless``."""

from __future__ import annotations

import ast
import pathlib
import threading

import pytest
import torch
from torch import nn

import retrain_widgets
from retrain_widgets import RunConfig
from retrain_widgets.autoloss import open_ready
from retrain_widgets.core.batches import default_forward
from retrain_widgets.runbook import RunBook, WhatIfQueue
from retrain_widgets.topics import ErrorShown, Focus, QueueDone, QueueProgress

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


@pytest.mark.parametrize("module", ["autoloss.py", "runbook.py"])
def test_the_helper_modules_never_refer_to_the_headless_studio(module):
    source = (pathlib.Path(retrain_widgets.__file__).parent / module).read_text()
    imported = [n for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
                for n in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])]
    assert not [n for n in imported if "headless" in n]
    assert "headless" not in source.lower() and "HeadlessStudio" not in source


class FakeStudio:
    """Only what open_ready is handed: a config, and a loss check that fits when told so."""

    def __init__(self, fits_with_choice: bool) -> None:
        self.config = RunConfig()  # 'ce'
        self.fits_with_choice = fits_with_choice
        self.changes: list[dict] = []

    def change(self, **fields):
        self.changes.append(fields)
        self.config = self.config.replace(**fields)

    def fits(self) -> bool:
        return self.fits_with_choice and self.config.loss == "bce"


def _binary_batch():
    return torch.randn(8, 4), torch.tensor([0.0, 1.0] * 4)


@pytest.mark.parametrize("fits", [True, False])
def test_open_ready_takes_the_choice_through_change_and_puts_it_back_when_it_does_not_fit(fits):
    fake = FakeStudio(fits)
    model = nn.Linear(4, 3)
    choice = open_ready(model, default_forward, _binary_batch, fake.config, change=fake.change, fits=fake.fits)
    assert fake.changes[0] == {"loss": "bce", "loss_kwargs": {}, "head_out": 1}
    if fits:
        assert choice is not None and (choice.loss, choice.head_out) == ("bce", 1) and len(fake.changes) == 1
        assert (fake.config.loss, fake.config.head_out) == ("bce", 1)
    else:
        assert choice is None and fake.changes[1] == {"loss": "ce", "loss_kwargs": {}, "head_out": None}
        assert fake.config == RunConfig()
    assert model.training  # the model's mode is given back


def test_open_ready_leaves_a_fitting_loss_and_a_broken_forward_alone():
    fake = FakeStudio(True)
    ten = nn.Linear(4, 10)
    ids = lambda: (torch.randn(8, 4), torch.tensor([0, 3, 9, 1, 0, 0, 0, 0]))  # noqa: E731 - 'ce' fits
    assert open_ready(ten, default_forward, ids, fake.config, change=fake.change, fits=fake.fits) is None

    def broken(model, batch):
        raise RuntimeError("the user's forward")

    assert open_ready(ten, broken, ids, fake.config, change=fake.change, fits=fake.fits) is None
    assert fake.changes == []


class FakeRun:
    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def join(self, timeout=None) -> None:
        pass


def test_the_what_if_queue_runs_through_the_start_and_emit_it_is_given():
    book = RunBook(None, nn.Linear(2, 2))
    started: list[tuple[RunConfig, str]] = []
    heard: list = []

    def start(cfg: RunConfig, name: str) -> FakeRun:
        run = FakeRun(cfg)
        book.name(run, name)
        book.add(run)
        started.append((cfg, name))
        return run

    queue = WhatIfQueue(book, start=start, emit=heard.append)
    configs = [RunConfig(lr=1e-3), RunConfig(lr=2e-3)]
    queue.start(configs, ["lr 0.001", "lr 0.002"])
    queue.thread.join(10)
    assert [c for c, _ in started] == configs and [n for _, n in started] == ["#1 lr 0.001", "#2 lr 0.002"]
    assert heard[-3:] == [QueueDone(["#1 lr 0.001", "#2 lr 0.002"]),
                          QueueProgress("what-ifs done: 2 of 2 runs; overlaid below.", False), Focus("runs")]
    assert heard[0] == QueueProgress("what-if 1 of 2: lr 0.001", False)


def test_the_what_if_queue_stops_after_the_current_run_and_after_a_refused_start():
    book = RunBook(None, nn.Linear(2, 2))
    gate, heard = threading.Event(), []

    def start(cfg: RunConfig, name: str):
        gate.wait(10)
        return None  # refused: the queue ends

    queue = WhatIfQueue(book, start=start, emit=heard.append)
    queue.start([RunConfig(), RunConfig()], ["a", "b"])
    queue.stop()
    gate.set()
    queue.thread.join(10)
    assert heard[-3] == QueueDone([]) and "0 of 2" in heard[-2].text and not queue.alive() and queue.used


class NoLinearHead(nn.Module):
    """Ten outputs from a bare parameter: no Linear head that ``head_out`` could replace."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 10) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def test_a_studio_puts_its_config_back_when_the_choice_does_not_fit_the_model():
    from retrain_widgets import examples
    from retrain_widgets.headless import HeadlessStudio

    task = examples.task("is_seven")
    s = HeadlessStudio(NoLinearHead(), task.train, task.val, store=False)  # 'bce' needs a 1-output head
    assert s.loss_choice is None and s.config == RunConfig() and s.mismatch is not None


def test_the_what_if_queue_announces_an_error_of_its_start():
    book, heard, boom = RunBook(None, nn.Linear(2, 2)), [], RuntimeError("boom")

    def start(cfg: RunConfig, name: str):
        raise boom

    queue = WhatIfQueue(book, start=start, emit=heard.append)
    queue.start([RunConfig()], ["a"])
    queue.thread.join(10)
    assert heard == [QueueProgress("what-if 1 of 1: a", False), ErrorShown(boom), QueueProgress("✗ what-ifs: boom", True)]
