"""The dashboard's notebook cell for browser tests, and what that cell shows on screen: its live
plot and its static final figure (issue 14, item 3: never both)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def studio_cells(epochs: int) -> list[str]:
    """One cell: a dashboard on the bundled "is it a seven?" task (BCE, features frozen), no store."""
    return [f"""\
import torch
torch.set_num_threads(1)
from retrain_widgets import RetrainStudio, RunConfig, examples

task = examples.task("is_seven")
studio = RetrainStudio(examples.pretrained_digits_cnn(), task.train, task.val, task.old_val, store=False,
                       config=RunConfig(loss="bce", head_out=1, frozen=["features"], epochs={epochs}))
studio"""]


_COUNT = """() => {
    const studio = document.querySelector('.rw-studio');
    if (!studio) return null;
    const cell = studio.closest('.jp-Cell');
    const seen = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
    return [[...cell.querySelectorAll('img.rw-plot')].filter(seen).length,
            [...cell.querySelectorAll('.jp-RenderedImage img')].filter(seen).length];
}"""


def figures_on_screen(nb) -> tuple[int, int]:
    """(live plots, static figures) shown in the dashboard's cell."""
    counts = nb.page.evaluate(_COUNT)
    if counts is None:
        pytest.fail("no dashboard (.rw-studio) on the page")
    return tuple(counts)


def watch_figures(nb, done: Callable[[], bool], timeout: float, every: float = 0.1) -> list[tuple[int, int]]:
    """Sample :func:`figures_on_screen` every ``every`` seconds until ``done()``; fails if any sample
    shows more than one figure, or when ``timeout`` passes first."""
    samples: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while not done():
        samples.append(figures_on_screen(nb))
        if sum(samples[-1]) > 1:
            nb.screenshot("two-figures")
            pytest.fail(f"two figures on screen at once: {samples[-1]} (live, static)")
        if time.monotonic() > deadline:
            pytest.fail(f"not done within {timeout:.0f} s; figures seen: {sorted(set(samples))}")
        time.sleep(every)
    return samples


def wait_static_final(nb, timeout: float = 15.0) -> None:
    """Wait until the cell shows the static final figure alone (the live plot hidden)."""
    deadline = time.monotonic() + timeout
    while figures_on_screen(nb) != (0, 1):
        if time.monotonic() > deadline:
            nb.screenshot("no-static-final")
            pytest.fail(f"the final figure did not replace the live plot: {figures_on_screen(nb)} (live, static)")
        time.sleep(0.1)
    nb.page.wait_for_function(
        """() => { const im = document.querySelector('.rw-studio').closest('.jp-Cell')
                                 .querySelector('.jp-RenderedImage img');
                   return !!im && im.complete && im.naturalWidth > 600; }""", timeout=timeout * 1000)


def dashboard_cell_shot(nb, step: str):
    """Screenshot of the dashboard's output area: the widget and the static final figure below it."""
    nb.page.locator(".jp-OutputArea", has=nb.page.locator(".rw-studio")).first.evaluate(
        "el => el.classList.add('rw-dashboard-cell')")
    return nb.screenshot(step, css_class="rw-dashboard-cell")
