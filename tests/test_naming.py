"""Runs you can tell apart: numbered names that continue across kernel restarts, 3-digit LRs,
what-ifs named by what they vary, Restore by name, runs listed per notebook."""

from __future__ import annotations

import sys

import pytest

from retrain_widgets import RetrainStudio, RunConfig, examples, naming
from retrain_widgets.core.store import RunStore
from retrain_widgets.headless import HeadlessStudio
from retrain_widgets.notebook import kernel_notebook, notebook_key

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def _short(**kw):
    return RunConfig(**{"head_out": 1, "max_steps": 2, "loss": "bce", **kw})


def _studio(cnn, seven, store, notebook, monkeypatch, **kw):
    if notebook is None:
        monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    else:
        monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))
    return HeadlessStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(**kw), store=store)


def test_names_are_short_and_numbers_read_back():
    cfg = RunConfig(loss="bce", lr=0.00159228, frozen=["features"], l2sp=0.0123456)
    assert naming.run_label(cfg, "custom") == "bce · frozen features · lr 0.00159 · constant · l2sp 0.0123"
    assert naming.run_label(RunConfig(lr=0.01), "head only") == "ce · head only · lr 0.01 · constant"
    assert naming.number_of("#12 bce · full") == 12 and naming.number_of("my run #3") is None
    assert naming.next_number(["#2 a", "b", "#10 c", "#x"]) == 11 and naming.next_number([]) == 1
    variants = [{"loss": "bce", "lr": 0.00159228, "frozen": []}, {"loss": "focal", "lr": 0.00159228, "frozen": []}]
    assert [naming.variant_label(v, variants) for v in variants] == ["bce", "focal"]
    grid = [{"lr": 1e-3, "frozen": ["features"]}, {"lr": 1e-2, "frozen": []}]
    assert [naming.variant_label(v, grid) for v in grid] == ["lr 0.001 · frozen features", "lr 0.01 · nothing frozen"]
    assert naming.variant_label({"lr": 3e-4}, [{"lr": 3e-4}]) == "lr 0.0003"


def test_the_notebook_comes_from_the_kernel(monkeypatch, tmp_path):
    main = sys.modules["__main__"]
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delattr(main, "__session__", raising=False)
    monkeypatch.delattr(main, "__vsc_ipynb_file__", raising=False)
    assert kernel_notebook() is None and notebook_key(None, str(tmp_path)) is None
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "course" / "a.ipynb"))
    assert kernel_notebook() == str(tmp_path / "course" / "a.ipynb")
    monkeypatch.setattr(main, "__session__", "course/b.ipynb", raising=False)  # relative to the server's root
    monkeypatch.chdir(tmp_path)
    assert kernel_notebook() == str(tmp_path / "b.ipynb")  # the kernel runs in the notebook's folder
    store = tmp_path / "course" / ".retrain_runs"
    assert notebook_key(str(tmp_path / "course" / "a.ipynb"), str(store)) == "a.ipynb"
    assert notebook_key(str(tmp_path / "other" / "c.ipynb"), str(store)) == "../other/c.ipynb"


def test_numbers_continue_across_restarts_per_notebook(cnn, seven, tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    s = _studio(cnn, seven, RunStore(store_dir), a, monkeypatch, lr=0.00159228)
    assert s.book.notebook == "a.ipynb"
    s.start()
    s.wait(60)
    s.what_if({"loss": ["bce", "focal"]}, wait=True)
    assert [s.book.name_of(r) for r in s.runs] == ["#1 bce · full · lr 0.00159 · constant", "#2 bce", "#3 focal"]
    other = _studio(cnn, seven, RunStore(store_dir), b, monkeypatch)
    other.start()
    other.wait(60)
    assert other.book.name_of(other.runs[0]).startswith("#1 bce")  # another notebook counts its own runs
    again = _studio(cnn, seven, RunStore(store_dir), a, monkeypatch)  # notebook a after a kernel restart
    assert [r.name for r in again.run_summaries()] == ["#1 bce · full · lr 0.00159 · constant", "#2 bce", "#3 focal"]
    again.start()
    again.wait(60)
    assert again.book.name_of(again.runs[0]).startswith("#4 bce")
    every = again.run_summaries(every=True)
    assert len(every) == 5 and {r.notebook for r in every} == {"a.ipynb", "b.ipynb"}
    assert [r.notebook for r in RunStore(store_dir).runs(notebook="b.ipynb")] == ["b.ipynb"]
    script = _studio(cnn, seven, RunStore(store_dir), None, monkeypatch)
    assert script.book.notebook is None and script.run_summaries() == []  # outside a notebook: none of those
    statuses = []
    again.on("status", lambda text, error: statuses.append(text))
    again.restore(every[1].id)
    assert statuses[-1].startswith("restored #2 bce:") and every[1].id not in statuses[-1]


def test_the_runs_tab_switches_to_every_notebook(cnn, seven, tmp_path, monkeypatch):
    store_dir = tmp_path / "store"
    for notebook in ("a.ipynb", "b.ipynb"):
        s = _studio(cnn, seven, RunStore(store_dir), tmp_path / notebook, monkeypatch)
        s.start()
        s.wait(60)
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "a.ipynb"))
    studio = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(), store=RunStore(store_dir))
    panel = studio.runs_panel
    assert panel.scope.layout.display != "none" and panel.scope.value is False
    panel.refresh()
    assert len(panel.select.options) == 1 and ">notebook<" not in panel.table.value
    panel.scope.value = True
    assert len(panel.select.options) == 2
    assert ">notebook<" in panel.table.value and "b.ipynb" in panel.table.value
    no_store = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(), store=False)
    assert no_store.runs_panel.scope.layout.display == "none"
