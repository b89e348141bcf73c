from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


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


# ---------------------------------------------------------------------------- order of the files
# `./dev test` runs `-n 2 --dist loadfile`: each worker takes the next whole file (a notebook, a browser
# module with its server) from one queue. The queue below hands out the long files first, so that only
# short ones are left for the end, and paces the browser modules (which wait on the page and leave CPU
# idle) against the CPU-bound files, so that the two mostly run side by side. test_export.py, which starts
# nine script processes at once, opens the run beside two notebooks, away from the browser modules' timed
# clicks. Seconds a file took in a full run on 2 cores (rounded); a file not listed counts 1 s.
_FIRST = ("tests/test_export.py", "notebooks/07_your_own_model.ipynb", "notebooks/04_schedules.ipynb")
_SECONDS = {
    "tests/browser/test_ui_poll.py": 96, "tests/browser/test_short_form_and_runs_browser.py": 95,
    "tests/browser/test_studio_browser.py": 85, "tests/browser/test_one_figure_browser.py": 83,
    "tests/browser/test_whatif_builder_browser.py": 80, "tests/browser/test_choices_browser.py": 76,
    "tests/browser/test_quickstart_walkthrough.py": 49, "tests/browser/test_dashboard_figure.py": 35,
    "tests/browser/test_toy_widgets.py": 31,
    "tests/test_export.py": 82, "notebooks/07_your_own_model.ipynb": 55, "notebooks/04_schedules.ipynb": 46,
    "notebooks/06_distillation.ipynb": 46, "notebooks/03_freezing.ipynb": 44,
    "notebooks/02_changing_the_loss.ipynb": 39, "notebooks/05_gradual_unfreezing.ipynb": 39,
    "tests/test_studio.py": 35, "notebooks/01_quickstart.ipynb": 34, "tests/test_store.py": 33,
    "tests/test_one_figure.py": 28, "tests/test_recipe.py": 28, "tests/test_engine.py": 28,
    "tests/test_benchmarks.py": 25, "tests/test_feature_cache.py": 18, "tests/test_runs.py": 18,
    "tests/test_plots.py": 16, "tests/test_model_families.py": 15, "tests/test_headless.py": 15,
    "tests/test_choices.py": 14, "tests/test_examples.py": 9, "tests/test_core_purity.py": 7,
}


def _file_order(files: list[str]) -> list[str]:
    """``files`` (in collection order) in the order the workers should take them."""
    cost = lambda f: _SECONDS.get(f, 1.0)  # noqa: E731
    first = [f for f in _FIRST if f in files]
    rest = [f for f in files if f not in first]
    browser = sorted((f for f in rest if f.startswith("tests/browser/")), key=cost, reverse=True)
    other = sorted((f for f in rest if not f.startswith("tests/browser/")), key=cost, reverse=True)
    total_b, total_o = sum(map(cost, browser)) or 1.0, sum(map(cost, first + other)) or 1.0
    order, done_b, done_o = list(first), 0.0, sum(map(cost, first))
    while browser or other:
        if browser and (not other or done_b / total_b <= done_o / total_o):
            order.append(browser.pop(0))
            done_b += cost(order[-1])
        else:
            order.append(other.pop(0))
            done_o += cost(order[-1])
    return order


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # xdist would sort the files by their number of tests


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    files = list(dict.fromkeys(item.nodeid.split("::")[0] for item in items))
    rank = {f: i for i, f in enumerate(_file_order(files))}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])  # stable: a file's tests keep their order


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"changed: {changed}"
