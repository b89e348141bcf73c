"""A what-if grid on Ray, clicked in JupyterLab 4 (issue 24): the Runs tab fills live and overlays work
while the grid runs.

The notebook opens a ``RetrainStudio`` on the bundled "is it a seven?" example (its store in the
notebook's folder) and starts a local Ray instance with 2 CPUs (``RayExecutor(num_cpus=2).connect()``).
In the Runs tab's what-if builder the test ticks LR, types two values, picks "on Ray (local)" and
runs them. While a run is still running, the runs table shows both of the grid's runs (running)
without a click on Refresh, and two selected runs overlay in one figure. At the end both runs are
finished, in the table and in the store, and shutting the kernel down ends the Ray instance (no
process of it left). Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import re
import time

import psutil
import pytest

pytestmark = pytest.mark.browser

# every layer trains (no feature cache): 150 × 23 steps a run, ~30 s on Ray here (2 runs on 2 cores),
# long enough to look at the Runs tab meanwhile on a faster machine too
EPOCHS = 150

CELLS = [
    f"""\
import psutil
import torch
import ipywidgets as W
torch.set_num_threads(1)
from retrain_widgets import RayExecutor, RetrainStudio, examples

model = examples.pretrained_digits_cnn()
task = examples.task("is_seven")
studio = RetrainStudio(model, task.train, task.val, task.old_val, config=task.config.replace(frozen=[], epochs={EPOCHS}))
# the what-if builder's "on Ray (local)" joins the instance this process runs: 2 CPUs, 2 runs at once
RayExecutor(num_cpus=2).connect()
# the Ray instance's processes (read by the test, which checks they end with the kernel)
ray_pids = W.HTML(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)))
ray_pids.add_class("t-ray-pids")
display(ray_pids)
studio""",
]


def _rows(nb) -> dict[str, list[str]]:
    """The runs table's rows: run name -> [state, steps] (its "state" and "steps" columns)."""
    return nb.page.evaluate("""() => {
        const table = document.querySelector('.rw-runs-table table');
        if (!table) return {};
        const heads = [...table.querySelectorAll('thead th, tr:first-child th')].map(th => th.innerText.trim());
        const run = heads.indexOf('run'), state = heads.indexOf('state'), steps = heads.indexOf('steps');
        const rows = {};
        for (const tr of table.querySelectorAll('tbody tr')) {
            const cells = [...tr.querySelectorAll('td')].map(td => td.innerText.trim());
            if (cells.length > Math.max(run, state, steps)) rows[cells[run]] = [cells[state], cells[steps]];
        }
        return rows;
    }""")


def _wait_rows(nb, want, timeout: float, what: str) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _rows(nb)
        if want(rows):
            return rows
        if time.monotonic() > deadline:
            nb.screenshot(f"timeout-{what}")
            pytest.fail(f"the runs table did not show {what} within {timeout:.0f} s: {rows}")
        time.sleep(0.1)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_ray_grid_fills_the_runs_tab_live(notebook_file, open_notebook, jupyter_root, jupyter_server):
    folder = jupyter_root / "ray_grid_lab"
    folder.mkdir(exist_ok=True)
    nb = open_notebook(notebook_file(CELLS, name="ray_grid_lab/grid.ipynb"), "lab")
    nb.run_all()
    nb.wait_widget("rw-studio", timeout=180)  # Ray's start-up first: 5-40 s on two cores
    nb.wait_all_cells_done(timeout=60)
    pids = [int(p) for p in nb.widget_text("t-ray-pids").split()]
    assert len(pids) >= 2, pids  # at least the GCS server and the raylet

    nb.page.locator(".rw-tabs .lm-TabBar-tab", has_text=re.compile(r"^\s*Runs\s*$")).first.click()
    nb.wait_widget_text("rw-runs-table", r"no runs yet", timeout=10)
    nb.page.locator(".rw-whatif-vary-lr input[type=checkbox]").check()
    nb.page.locator(".rw-whatif-values-lr input").fill("1e-3, 3e-3")
    nb.page.locator(".rw-whatif-values-lr input").press("Enter")
    nb.wait_widget_text("rw-whatif-build-run", r"^Run 2 what-ifs$", timeout=10)
    nb.page.locator(".rw-whatif-where select").select_option(label="on Ray (local)")
    nb.screenshot("builder-on-ray", css_class="rw-whatif-builder")
    nb.click_widget("rw-whatif-build-run")

    # live: both runs in the table, running, with no click on Refresh
    # numbered as they begin: the two workers start together, so either may be #1
    both = ({"#1 lr 0.001", "#2 lr 0.003"}, {"#1 lr 0.003", "#2 lr 0.001"})
    rows = _wait_rows(nb, lambda r: set(r) in both and all(v[0] == "running" for v in r.values()), 120,
                      "both runs running")
    names = tuple(sorted(rows))
    nb.page.set_viewport_size({"width": 1280, "height": 2000})
    nb.page.locator(".rw-runs").first.scroll_into_view_if_needed()
    nb.screenshot("runs-tab-while-running", css_class="rw-runs")

    # an overlay of the two runs while they train: Overlay re-reads the runs (the store saves a running
    # run every 5 s), so pressed again it draws them with the steps they have done, shown in the table
    nb.page.locator(".rw-runs-select select").select_option(label=[f"{n} · running" for n in names])
    deadline = time.monotonic() + 60
    while True:
        nb.click_widget("rw-runs-overlay")
        nb.wait_widget_text("rw-runs-message", r"^overlay of 2 runs\.$", timeout=30)
        rows = _rows(nb)
        if all(rows[n][1].isdigit() and int(rows[n][1]) > 0 for n in names):
            break
        assert time.monotonic() < deadline, f"no steps of the runs within 60 s: {rows}"
        time.sleep(1)
    assert any(state == "running" for state, _ in rows.values()), f"the grid ended before the overlay: {rows}"
    width, _ = nb.wait_image_loaded("rw-runs-figure", timeout=30)
    assert width > 300 and nb.widget("rw-runs-figure").is_visible()
    nb.screenshot("overlay-while-running", css_class="rw-runs")

    # the end: both finished, in the table (it redraws as each run ends) and in the store
    nb.wait_widget_text("rw-runs-message", r"done: 2 of 2", timeout=300)
    rows = _wait_rows(nb, lambda r: all(r.get(n, [""])[0] == "finished" for n in names), 30, "both runs finished")
    assert set(rows) == set(names), rows
    nb.screenshot("runs-tab-done", css_class="rw-runs")
    nb.assert_no_console_errors()

    from retrain_widgets.core.store import RunStore

    with RunStore(folder / ".retrain_runs") as store:
        stored = {r.name: r for r in store.runs()}
    assert set(stored) == set(names), stored
    assert all(r.state == "finished" and r.has_weights for r in stored.values()), stored

    # the kernel's shutdown ends the Ray instance it started
    assert _alive(pids), "the Ray instance ended before the kernel"
    jupyter_server.shutdown_all_kernels()
    deadline = time.monotonic() + 60
    while _alive(pids):
        assert time.monotonic() < deadline, f"Ray's processes outlived the kernel by 60 s: {_alive(pids)}"
        time.sleep(0.5)
