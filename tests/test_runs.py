"""What-if comparisons: compare(), the Runs tab, restore, delete, the what-if queue."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from retrain_widgets import Retrainer, RetrainStudio, RunConfig, State, compare, examples
from retrain_widgets.core.comparison import differing_fields, grid_variants, table
from retrain_widgets.core.store import RunStore

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def _short(**kw):
    return RunConfig(**{"head_out": 1, "max_steps": 12, "loss": "bce", **kw})


def test_grid_variants():
    v = grid_variants({"loss": ["bce", "focal"], "lr": [1e-3, 1e-2]})
    assert v == [{"loss": "bce", "lr": 1e-3}, {"loss": "bce", "lr": 1e-2}, {"loss": "focal", "lr": 1e-3},
                 {"loss": "focal", "lr": 1e-2}]
    with pytest.raises(ValueError, match="needs a list"):
        grid_variants({"loss": "bce"})
    with pytest.raises(ValueError, match="empty list"):
        grid_variants({"loss": []})


def test_differing_fields_and_table_sorting():
    a, b, c = (RunConfig(loss=x).to_dict() for x in ("ce", "focal_multiclass", "ce"))
    assert differing_fields([a, b, c]) == ["loss"]
    assert differing_fields([a, c]) == []


def test_compare_live_runs(cnn, seven):
    runs = [Retrainer(cnn, _short(loss=loss), seven.train, seven.val, seven.old_val) for loss in ("bce", "focal")]
    for r in runs:
        r.fit()
    comp = compare(runs, names=["bce run", "focal run"])
    assert comp.columns[:3] == ["run", "state", "loss"]
    assert {"val_metric", "old_metric", "val_loss"} <= set(comp.columns)
    metrics = [row["val_metric"] for row in comp.rows]
    assert metrics == sorted(metrics, reverse=True)  # accuracy: best first
    by_loss = comp.sort("val_loss")
    assert [r["val_loss"] for r in by_loss.rows] == sorted(r["val_loss"] for r in comp.rows)
    png = comp.plot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    html = comp._repr_html_()
    assert "<table" in html and "focal run" in html and "data:image/png;base64" in html
    with pytest.raises(ValueError, match="cannot sort by 'nope'"):
        comp.sort("nope")


def test_studio_records_runs_and_the_runs_tab(cnn, seven, tmp_path):
    store = RunStore(tmp_path / "store")
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(), store=store)
    s.start()
    s.wait(60)
    s.set(loss="focal")
    s.start()
    s.wait(60)
    s.tabs.selected_index = 4  # opening the tab refreshes it
    panel = s.runs_panel
    assert len(panel.select.options) == 2
    assert "focal" in panel.table.value and "bce" in panel.table.value
    # each stored run's weights size on disk (what it changed against the pretrained model)
    assert "disk MB" in panel.table.value
    sizes = [summary.disk_mb for summary in s.run_summaries()]
    assert sizes == [store.weights_size(summary.id) / 1e6 for summary in s.run_summaries()] and all(sizes)
    panel.select.value = tuple(k for _, k in panel.select.options)
    panel.overlay_button.click()
    assert panel.figure.value[:4] == b"\x89PNG" and panel.figure.layout.display == ""
    # a new studio on the same store (a kernel restart) sees both runs
    again = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(), store=RunStore(tmp_path / "store"))
    assert len(again.run_summaries()) == 2


def test_restore_and_delete(cnn, seven, tmp_path):
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(lr=1e-2), store=tmp_path / "st")
    run = s.start()
    s.wait(60)
    s.reset()
    assert s.model is cnn
    key = s.run_summaries()[0].id
    s.set(loss="focal", lr=1e-3)
    model = s.restore(key)
    assert s.model is model and s.config.loss == "bce" and s.config.lr == pytest.approx(1e-2)
    x = next(iter(seven.val))[0]
    run.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), run.model(x))
    s.runs_panel.refresh()
    s.runs_panel.select.value = (key,)
    s.runs_panel.delete_button.click()
    assert s.run_summaries() == []
    assert not any((tmp_path / "st" / "weights").iterdir())


def test_what_if_grid_runs_each_variant(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(), store=False)
    configs = s.what_if({"loss": ["bce", "focal"], "frozen": [["features"], []]}, wait=True)
    assert [(c.loss, c.frozen) for c in configs] == [("bce", ["features"]), ("bce", []), ("focal", ["features"]),
                                                     ("focal", [])]
    assert len(s.runs) == 4 and all(r.state == State.FINISHED for r in s.runs)
    assert s.config.loss == "bce" and s.config.frozen == []  # the studio's own config is unchanged
    assert "done: 4 of 4" in s.runs_panel.message.value
    assert s.runs_panel.figure.value[:4] == b"\x89PNG" and len(s.runs_panel.select.value) == 4
    assert s.tabs.selected_index == 4
    frozen_run = s.runs[0]
    assert all(not p.requires_grad for p in frozen_run.model.features.parameters())


def test_stop_ends_the_what_if_queue(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, config=_short(max_steps=None, epochs=200), store=False)
    s.what_if({"lr": [1e-3, 2e-3, 3e-3]})
    deadline = time.time() + 20
    while (s.run is None or s.run.step < 3) and time.time() < deadline:
        time.sleep(0.01)
    s.stop_button.click()
    s.wait(20)
    assert len(s.runs) == 1 and s.runs[0].state == State.STOPPED
    assert "stopped after" in s.runs_panel.message.value


def test_what_if_from_the_control(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, config=_short(), store=False)
    s.runs_panel.grid.value = '{"lr": [0.001, 0.01]}'
    s.runs_panel.grid_button.click()
    s.wait(60)
    assert [r.config.lr for r in s.runs] == [0.001, 0.01]
    s.runs_panel.grid.value = '{"lr": 0.1}'
    s.runs_panel.grid_button.click()
    assert "needs a list" in s.runs_panel.message.value
    s.runs_panel.grid.value = '{"lrr": [1]}'
    s.runs_panel.grid_button.click()
    assert "no field 'lrr'" in s.runs_panel.message.value


def test_show_code_for_a_run(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, seven.old_val, config=_short(loss="focal"), store=False)
    s.start()
    s.wait(60)
    s.runs_panel.refresh()
    s.runs_panel.select.value = (s.runs_panel.select.options[0][1],)
    s.runs_panel.code_button.click()
    code = s.runs_panel.code.value
    assert s.runs_panel.code.layout.display == ""
    compile(code, "exported", "exec")
    assert "focal" in code and "import torch" in code


def test_table_without_metrics_keeps_order():
    from retrain_widgets.core.comparison import RunSummary

    a = RunSummary(None, "a", "stopped", {"loss": "ce"}, {"steps": 3}, None)
    b = RunSummary(None, "b", "stopped", {"loss": "mse"}, {"steps": 1}, None)
    cols, rows = table([a, b])
    assert cols == ["run", "state", "loss", "steps"] and [r["run"] for r in rows] == ["a", "b"]
    assert np.isfinite(rows[0]["steps"])


def test_comparison_modules_one_name_per_level():
    """One module per level is called comparison; HTML is built outside the core; the old names are gone."""
    import importlib

    import retrain_widgets.comparison as top
    import retrain_widgets.core.comparison as core
    import retrain_widgets.plots.comparison as plots

    assert callable(core.table) and callable(core.grid_variants) and callable(plots.comparison_png)
    assert not hasattr(core, "table_html")
    for old in ("retrain_widgets.core.compare", "retrain_widgets.plots.compare"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
    html = top.table_html(["run", "lr"], [{"run": "<a>", "id": "x", "lr": 0.001234567}], highlight="x")
    assert "&lt;a&gt;" in html and "0.001235" in html and "background:#f3f8ff" in html
