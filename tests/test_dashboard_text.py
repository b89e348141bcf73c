"""Small text of the dashboard that a teacher reads aloud (issue 27, item 6)."""

from __future__ import annotations

import pytest
import torch
from conftest import BNNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from retrain_widgets import RetrainStudio, RunConfig, examples
from retrain_widgets.comparison import table_html
from retrain_widgets.widgets.tree import _percent

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


def test_a_share_is_never_rounded_to_all_or_nothing():
    assert _percent(28_000 - 65, 28_000) == "99.8 %"  # 65 trainable: not "100 %" frozen
    assert _percent(3, 28_000) == "0.01 %" and _percent(0, 28_000) == "0 %" and _percent(28_000, 28_000) == "100 %"
    assert _percent(1, 2) == "50 %"


def test_head_only_on_the_digits_cnn_does_not_say_everything_is_frozen():
    t = examples.task("is_seven")
    s = RetrainStudio(examples.pretrained_digits_cnn(), t.train, t.val, t.old_val, config=t.config, store=False)
    s.strategy.value = "head only"
    text = s.layers_tab.tree.totals.value
    assert "trainable" in text and "(100 %)" not in text and "(99." in text, text


def test_train_bn_is_offered_only_on_a_model_with_batchnorm():
    t = examples.task("is_seven")
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    s = RetrainStudio(plain, t.train, t.val, config=RunConfig(loss="bce", head_out=1), store=False)
    assert s.layers_tab.train_bn.layout.display == "none"
    x = torch.randn(32, 6)  # BNNet takes 6 features: a loader of its own
    bn = RetrainStudio(BNNet(), DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8), store=False)
    assert bn.layers_tab.train_bn.layout.display != "none"


def test_nothing_frozen_reads_none_in_the_runs_table_and_the_stage_field_is_not_cut():
    html = table_html(["run", "frozen"], [{"run": "a", "frozen": []}, {"run": "b", "frozen": ["features"]}])
    assert "[]" not in html and ">none<" in html and ">features<" in html
    t = examples.task("is_seven")
    s = RetrainStudio(examples.pretrained_digits_cnn(), t.train, t.val, config=t.config, store=False)
    assert s.optimisation_tab.unfreeze_every.style.description_width == "initial"  # "stage (epochs)" whole


def test_a_quick_grid_is_estimated_in_tenths_of_a_second():
    from retrain_widgets.widgets.whatif import _duration

    assert _duration(0.34) == "0.3 s" and _duration(0.01) == "0.1 s" and _duration(12) == "12 s"
    assert "under" not in _duration(0.5)


def test_the_runs_table_wraps_its_titles_and_scrolls_in_its_own_box():
    html = table_html(["run", "mean_alignment", "disk MB"], [{"run": "#7 bce · head only · lr 0.00159 · cosine"}])
    assert html.startswith("<div style='max-width:100%;overflow-x:auto'><table")  # never the page sideways
    assert "mean_<wbr>alignment" in html and "min-width:11em" in html


def test_the_overlay_labels_loss_decades_only_and_draws_gradients_as_points():
    from types import SimpleNamespace

    import numpy as np

    from retrain_widgets import History
    from retrain_widgets.plots.comparison import comparison_figure

    runs = []
    for i, scale in enumerate((1.0, 0.02)):  # two runs a factor 50 apart: a log loss axis
        h = History()
        steps = np.arange(1, 93, dtype=float)
        h.append("train_loss", steps, scale * (0.2 + np.exp(-steps / 20)))
        h.append_layers("grad_norm", steps, ["classifier.0", "classifier.3"], np.full((92, 2), 0.1 * (i + 1)))
        runs.append(SimpleNamespace(name=f"run {i}", metrics={}, history=h))
    fig = comparison_figure(runs)
    ax_loss, ax_grad = fig.axes[0], fig.axes[4]
    assert ax_loss.get_yscale() == "log"
    minor = [t.get_text() for t in ax_loss.yaxis.get_minorticklabels() if t.get_visible() and t.get_text()]
    assert minor == []  # no "5 × 10⁻¹" crowding the decades
    assert ax_grad.get_lines() and all(line.get_linestyle() == "None" for line in ax_grad.get_lines())


def test_the_caches_refusal_sits_below_its_toggle_and_reads_as_information():
    from ipywidgets import VBox

    from retrain_widgets.widgets.tabs import _cache_text

    assert _cache_text("cache: refused: the run has a custom forward") == (
        "not cached (full passes every epoch): the run has a custom forward")
    assert _cache_text("cache: built, 0.1 MB") == "cache: built, 0.1 MB"
    t = examples.task("is_seven")
    s = RetrainStudio(examples.pretrained_digits_cnn(), t.train, t.val, config=t.config, store=False)
    tab = s.optimisation_tab
    box = next(c for c in tab.children if tab.cache in getattr(c, "children", ()))
    assert isinstance(box, VBox) and list(box.children) == [tab.cache, tab.cache_state]  # not squeezed in a row
    assert tab.cache_state.style.text_color == "#57606a"


def test_a_layer_that_cannot_be_frozen_says_why_on_its_row():
    t = examples.task("is_seven")
    s = RetrainStudio(examples.pretrained_digits_cnn(), t.train, t.val, config=t.config, store=False)
    tree = s.layers_tab.tree
    tree._expanded.add("classifier")  # noqa: SLF001 - its rows made visible, as a click would
    tree._render()  # noqa: SLF001
    row = tree._rows["classifier"]  # noqa: SLF001 - the trainable part of a features-frozen model
    assert row.check.disabled and "not freezable: nothing would train" in row.label.value
    assert "not freezable" not in tree._rows["features"].label.value  # noqa: SLF001


def test_the_final_figure_counts_steps_done_and_keeps_the_log_loss_axis():
    from retrain_widgets import Retrainer
    from retrain_widgets.plots.live import LiveFigure

    t = examples.task("is_seven")
    run = Retrainer(examples.pretrained_digits_cnn(), t.config.replace(epochs=1), t.train, t.val, t.old_val)
    run.fit()
    fig = LiveFigure()
    fig.render(run.history.snapshot())
    live_scale = fig.ax_loss.get_yscale()
    fig.render_final(run.history.snapshot())
    assert f"step {run.step} / {run.step}" in fig.status  # as the progress bar says at the end
    assert live_scale == "log" and fig.ax_loss.get_yscale() == "log"
    fresh = LiveFigure()  # a final frame without a live one before it: the same scale
    fresh.render_final(run.history.snapshot())
    assert fresh.ax_loss.get_yscale() == "log"
