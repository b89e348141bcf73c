"""Names are text: run, layer, model and loss names with ``$`` are shown as they are in every figure
(never read as mathtext, which fails on ``$\\undefinedmacro$`` and eats the ``$`` of "50$ and $5")."""

from __future__ import annotations

import pytest
import torch
from matplotlib.text import Text
from torch import nn

from retrain_widgets import RunConfig, compare
from retrain_widgets.core.engine import Retrainer
from retrain_widgets.plots import LiveFigure
from retrain_widgets.plots.comparison import comparison_figure

NAMES = (r"$\undefinedmacro$", "50$ and $5")


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module(NAMES[0], nn.Linear(4, 8))
    net.add_module("act", nn.ReLU())
    net.add_module("50$ and $5", nn.Linear(8, 3))
    return net


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


@pytest.fixture(scope="module")
def runs():
    out = []
    for lr in (1e-3, 1e-2):
        r = Retrainer(_model(), RunConfig(lr=lr, epochs=2, alignment_every=None, cache_features=False), _loader(),
                      _loader())
        r.start()
        r.freeze([NAMES[0]])  # a change marker that names a layer
        r.wait()
        out.append(r)
    return out


def _shown(fig) -> list[str]:
    """The strings the figure's texts show (as matplotlib reads them: math or not)."""
    shown = []
    for t in fig.findobj(Text):
        if r"\mathdefault" in t.get_text():  # matplotlib's own log-axis tick labels
            continue
        text, math = t._preprocess_math(t.get_text())
        assert not math, f"{t.get_text()!r} is read as mathtext"
        shown.append(text)
    return shown


def test_run_and_layer_names_in_the_comparison_are_literal(runs):
    comparison = compare(runs, names=list(NAMES))
    assert comparison.plot()[:4] == b"\x89PNG"
    assert "<img" in comparison._repr_html_()
    from retrain_widgets.core.comparison import summarize

    fig = comparison_figure([summarize(r, name=n) for r, n in zip(runs, NAMES)])
    shown = _shown(fig)
    for name in NAMES:
        assert name in shown  # the legend
    assert any(NAMES[1] in s for s in shown)  # the layer row (tick label)


def test_model_loss_and_layer_names_in_the_live_figure_are_literal(runs):
    fig = LiveFigure(title=NAMES[1])
    png = fig.render_final(runs[0].history.snapshot())
    assert png[:4] == b"\x89PNG"
    shown = _shown(fig.fig)
    assert any(s.startswith(NAMES[1]) for s in shown)  # the title, as it is
    fig = LiveFigure(title=NAMES[0])
    assert fig.render_final(runs[1].history.snapshot())[:4] == b"\x89PNG"
    assert any(NAMES[0] in s for s in _shown(fig.fig))
