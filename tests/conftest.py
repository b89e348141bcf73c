from __future__ import annotations

import importlib.util
import os
import time

import pytest
import torch
from torch import nn

torch.set_num_threads(1)
# the quickstart's first run is for watching (about 25 s); kernels the tests start (Jupyter servers of the
# browser tests inherit it) run it for 2 epochs. ./dev test sets it for the notebooks (nbval) too.
os.environ.setdefault("RETRAIN_WIDGETS_SHORT_RUNS", "1")



def pytest_configure(config):
    """Before any test worker starts: Ray's default token (``~/.ray/auth_token``, which a local
    ``ray.init`` makes when it is missing, with token authentication on by default) is made once
    here, so that two workers' first local instances (test_ray.py's and a browser test's kernel)
    never both write it. Exclusive creation: an existing token is left as it is."""
    if hasattr(config, "workerinput") or importlib.util.find_spec("ray") is None:
        return
    import secrets
    from pathlib import Path

    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # a secret: the owner's only
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes


# tests/vision/ needs torchvision and timm beside the torch they were built for: ./dev test runs it in
# .venv-vision (where its conftest imports both, so it fails there rather than skip when one is missing)
collect_ignore = [] if importlib.util.find_spec("torchvision") else ["vision"]


class BNNet(nn.Module):
    """A small model with BatchNorm in a body and a Linear head."""

    def __init__(self, n_in: int = 6, n_out: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                                  nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture
def runs_in_tmp(tmp_path, monkeypatch):
    """Studios record runs in .retrain_runs/ of the working directory: keep it out of the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def bnnet() -> BNNet:
    torch.manual_seed(0)
    return BNNet()


@pytest.fixture
def cnn() -> nn.Module:
    from retrain_widgets.examples import pretrained_digits_cnn

    return pretrained_digits_cnn()


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"changed: {changed}"


def until(condition, timeout: float = 20.0) -> bool:
    """Wait for what another thread does: True once ``condition()`` holds, False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class SlowLoader:
    """A loader whose batches take a little time, so control calls land mid-epoch."""

    def __init__(self, loader, delay=0.01):
        self.loader, self.delay = loader, delay

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for b in self.loader:
            time.sleep(self.delay)
            yield b
