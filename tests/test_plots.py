"""The plots: valid PNG frames, determinism, decimation, blitting bookkeeping, thread use."""

from __future__ import annotations

import ast
import dataclasses
import io
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from retrain_widgets.core.engine import LRFinderResult
from retrain_widgets.core.history import History
from retrain_widgets.plots import LiveFigure, frame_times, lr_finder_png, lr_preview_png

PLOTS = pathlib.Path(__file__).resolve().parents[1] / "retrain_widgets" / "plots"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["conv1", "bn1", "layer1.conv", "layer2.conv", "layer3.conv", "fc"]


def decode(png: bytes, size: tuple[int, int] = (1000, 560)) -> np.ndarray:
    assert isinstance(png, bytes) and png.startswith(PNG_SIGNATURE)
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.size == size
    return np.asarray(img.convert("RGB"))


def fill(h: History, start: int, n: int, *, frozen_until: int = 0, seed: int = 0, spike: float | None = None) -> None:
    """Append ``n`` steps after ``start`` the way the engine does (chunks of 50)."""
    rng = np.random.default_rng(seed + start)
    for a in range(start, start + n, 50):
        steps = np.arange(a + 1, min(a + 51, start + n + 1), dtype=np.float64)
        k = len(steps)
        loss = 2.0 * np.exp(-steps / 400) + 0.1 + 0.05 * rng.random(k)
        if spike is not None:
            loss[-1] = spike
        grads = 10.0 ** np.linspace(-3, 0, len(NAMES))[None, :] * rng.lognormal(0, 0.3, (k, len(NAMES)))
        grads[steps <= frozen_until, :2] = np.nan
        h.append("train_loss", steps, loss)
        h.append("lr", steps[-1:], [1e-3])
        h.append_layers("group_lr", steps[-1:], ["body", "head"], np.array([[1e-4, 1e-3]]))
        h.append_layers("grad_norm", steps, NAMES, grads)
        drift = np.full(len(NAMES), 0.01 * steps[-1] / 1000)
        if steps[-1] <= frozen_until:
            drift[:2] = 0.0
        h.append_layers("drift", steps[-1:], NAMES, drift[None, :])
        if steps[-1] % 200 == 0:
            h.append("val_loss", steps[-1:], [2.0 * np.exp(-steps[-1] / 400) + 0.15])
            h.append("val_metric", steps[-1:], [0.9 - 0.5 * np.exp(-steps[-1] / 400)])
            h.append("old_metric", steps[-1:], [0.9 - 0.1 * steps[-1] / 1000])


def small_history(steps: int = 600, frozen_until: int = 0, total: int = 1000) -> History:
    h = History()
    h.meta.update(metric="accuracy", higher_is_better=True, old_metric="accuracy", total_steps=total,
                  layers=list(NAMES), loss="ce")
    fill(h, 0, steps, frozen_until=frozen_until)
    return h


@pytest.fixture(scope="module")
def fig() -> LiveFigure:
    return LiveFigure(title="test")


def test_empty_snapshot_renders_a_waiting_frame(fig):
    fig.reset()
    decode(fig.render(History().snapshot()))
    assert fig.waiting_text.get_visible()
    h = History()
    h.meta.update(total_steps=500, layers=list(NAMES))  # a run that has not published yet
    decode(fig.render(h.snapshot()))


def test_small_run_renders(fig):
    fig.reset()
    decode(fig.render(small_history().snapshot()))
    assert not fig.waiting_text.get_visible()
    assert fig.last_frame_seconds > 0
    assert fig.ax_loss.get_xlim() == (0.0, 1000.0)  # the run's planned length
    assert len(fig.val_loss_line.get_xdata()) == 3
    assert "step 600 / 1,000" in fig.status


def test_frozen_layers_and_markers(fig):
    fig.reset()
    h = small_history(steps=400, frozen_until=400)
    h.mark(200, "change", "lr -> 5e-4")
    h.mark(400, "stage", "stage 1: unfroze layer1")
    frame = decode(fig.render(h.snapshot(), frozen=["layer1.conv"]))
    labels = {row: (text, frozen) for row, text, frozen in fig.row_labels}
    assert [labels[i][1] for i in range(len(NAMES))] == [True, True, True, False, False, False]
    assert sum("❄" in text for text, _ in labels.values()) == 3  # two without gradients + one named frozen
    rgba = fig.heatmap.get_array()
    grey = fig.layers.bad
    assert (rgba[:2] == grey).all()  # frozen rows (no gradient) are flat grey
    assert not (rgba[2:] == grey).all(axis=-1).any()
    segs = fig._stage_lines[fig.ax_loss].get_segments()
    assert [s[0][0] for s in segs] == [400.0]
    assert len(fig._change_lines[fig.ax_loss].get_segments()) == 1
    assert any("stage 1" in t.get_text() for t in fig._marker_texts)
    # frozen rows carry a hatched band behind both bar panels
    assert len(fig.layers.frozen_gbar.get_paths()) == 3
    assert frame.std() > 0


def test_identical_snapshots_give_identical_bytes():
    snap = small_history().snapshot()
    a = LiveFigure()
    first = a.render(snap)  # full redraw
    second = a.render(snap)  # blitted over the cached background
    assert a.full_redraws == 1
    assert first == second
    assert LiveFigure().render(snap) == first  # and any fresh figure agrees


def test_a_loss_spike_changes_the_frame(fig):
    fig.reset()
    h = small_history()
    before = fig.render(h.snapshot())
    fill(h, 600, 50, spike=1.5)  # a spike inside the current limits: blitted
    redraws = fig.full_redraws
    after = fig.render(h.snapshot())
    assert fig.full_redraws == redraws
    assert after != before
    assert np.isclose(fig.loss_line.get_ydata(), 1.5).any()


#: A change of each panel's own layout fields (``plots._regions.PANEL_FIELDS``).
PANEL_CHANGES = {
    "loss": {"loss_ylim": (1e-3, 50.0)},
    "metric": {"metric_ylim": (0.2, 1.02)},
    "lr": {"lr_ylim": (0.0, 0.02)},
    "norm": {"norm": (1e-5, 100.0)},
    "drift": {"drift_lim": (1e-3, 10.0)},
}


def _with_layout(fig: LiveFigure, monkeypatch, **change) -> None:
    """Make every later frame of ``fig`` use its computed layout with ``change`` applied."""
    compute = fig._compute

    def changed(snap, frozen, final):
        layout, data = compute(snap, frozen, final)
        return dataclasses.replace(layout, **change), data

    monkeypatch.setattr(fig, "_compute", changed)


@pytest.mark.parametrize("panel", sorted(PANEL_CHANGES))
def test_a_panel_whose_limits_change_is_redrawn_alone_with_a_full_redraws_pixels(panel, monkeypatch):
    f = LiveFigure(title="partial")
    snap = small_history(frozen_until=200).snapshot()
    f.render(snap, frozen=["layer1.conv"])
    _with_layout(f, monkeypatch, **PANEL_CHANGES[panel])
    frame = f.render(snap, frozen=["layer1.conv"])
    assert (f.full_redraws, f.partial_redraws) == (1, 1)
    assert f.render(snap, frozen=["layer1.conv"]) == frame  # and the new background is blitted
    f._background = None  # the same layout drawn from scratch
    assert f.render(snap, frozen=["layer1.conv"]) == frame
    assert f.full_redraws == 2


def test_two_panels_at_once_and_a_loss_spike_past_the_axis(monkeypatch):
    f = LiveFigure(title="spike")
    h = small_history()
    f.render(h.snapshot())
    fill(h, 600, 50, spike=80.0)
    snap = h.snapshot()
    frame = f.render(snap)
    assert (f.full_redraws, f.partial_redraws) == (1, 1)
    assert f.ax_loss.get_ylim()[1] >= 80
    f._background = None
    assert f.render(snap) == frame
    _with_layout(f, monkeypatch, **PANEL_CHANGES["metric"], **PANEL_CHANGES["lr"])  # neighbours
    frame = f.render(snap)
    assert (f.full_redraws, f.partial_redraws) == (2, 2)
    f._background = None
    assert f.render(snap) == frame


def test_a_change_outside_the_panels_or_near_the_layer_names_redraws_everything(monkeypatch):
    from matplotlib.transforms import Bbox

    from retrain_widgets.plots._regions import changed_panels

    f = LiveFigure()
    snap = small_history().snapshot()
    f.render(snap)
    layout = f._layout
    assert changed_panels(layout, dataclasses.replace(layout, loss_ylim=(0.0, 9.0), norm=(1e-6, 1.0))) == {
        "loss", "norm"}
    assert changed_panels(layout, dataclasses.replace(layout, xlim=(0.0, 5000.0))) is None
    assert changed_panels(layout, dataclasses.replace(layout, loss_ylim=(0.0, 9.0), title="x")) is None
    monkeypatch.setattr(f._regions, "extra", lambda _renderer: [Bbox.from_extents(0, 0, 1000, 560)])
    f._regions.stale = True
    _with_layout(f, monkeypatch, **PANEL_CHANGES["loss"])
    frame = f.render(snap)
    assert (f.full_redraws, f.partial_redraws) == (2, 0)  # refused: Pillow drew there
    f._background = None
    assert f.render(snap) == frame


def test_decimation_bounds_points_and_columns():
    h = History()
    h.meta.update(layers=list(NAMES))
    fill(h, 0, 20_000)
    f = LiveFigure(max_points=300, max_columns=40)
    decode(f.render(h.snapshot()))
    assert len(f.loss_line.get_xdata()) <= 300 + 2
    assert len(f.loss_smooth_line.get_xdata()) <= 150 + 1
    assert len(f.lr_line.get_xdata()) <= 300 + 2
    img = f.heatmap.get_array()
    assert img.shape[0] == len(NAMES)
    assert img.shape[1] <= 40
    # the envelope keeps the extremes
    _, v = h.series("train_loss")
    assert np.nanmax(f.loss_line.get_ydata()) == pytest.approx(float(v.max()))
    assert np.nanmin(f.loss_line.get_ydata()) == pytest.approx(float(v.min()))


def test_limits_grow_only_when_data_leave_them():
    h = small_history(steps=300, total=0)  # no planned length: x grows with head-room
    f = LiveFigure()
    f.render(h.snapshot())
    x1 = f.ax_loss.get_xlim()[1]
    assert x1 >= 300 * 1.5
    redraws = f.full_redraws
    fill(h, 300, 50)
    f.render(h.snapshot())
    assert f.full_redraws == redraws  # inside the limits: blitted
    assert f.ax_loss.get_xlim()[1] == x1
    fill(h, 350, int(x1) - 350 + 100)  # past the right edge
    f.render(h.snapshot())
    assert f.full_redraws == redraws + 1
    assert f.ax_loss.get_xlim()[1] >= h.snapshot().last_step
    assert f.ax_heat.get_xlim() == f.ax_loss.get_xlim()


def test_new_run_and_final_frame():
    f = LiveFigure(title="final")
    h = small_history(steps=900)
    f.render(h.snapshot())
    final = decode(f.render_final(h.snapshot()))
    assert f.ax_loss.get_xlim()[1] == 900  # fitted to the data
    assert final.std() > 0
    redraws = f.full_redraws
    f.render(h.snapshot())
    assert f.full_redraws == redraws + 1  # live frames start afresh after the final one
    f.render(small_history(steps=100).snapshot())  # a shorter history: a new run
    assert f.ax_loss.get_xlim() == (0.0, 1000.0)


def test_render_from_a_worker_thread():
    snap = small_history(steps=400, frozen_until=200).snapshot()
    out: dict[str, object] = {}

    def work() -> None:
        try:
            out["png"] = LiveFigure(width_px=640, height_px=360).render(snap)
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert "error" not in out, out.get("error")
    png = out["png"]
    assert isinstance(png, bytes)
    decode(png, (640, 360))
    assert LiveFigure(width_px=640, height_px=360).render(snap) == png


def test_lr_preview_png():
    cosine = [1e-3 * 0.5 * (1 + np.cos(np.pi * i / 999)) for i in range(1000)]
    decode(lr_preview_png(cosine, title="cosine"), (420, 200))
    one_cycle = list(np.geomspace(4e-5, 1e-3, 300)) + list(np.geomspace(1e-3, 4e-9, 700))
    decode(lr_preview_png(one_cycle, marker_step=500, width_px=300, height_px=150), (300, 150))
    decode(lr_preview_png([1e-3] * 2_000_000), (420, 200))  # long runs are decimated
    decode(lr_preview_png([]), (420, 200))


def test_lr_finder_png():
    lrs = tuple(float(x) for x in np.geomspace(1e-7, 10, 100))
    losses = tuple(float(2.3 - 1.5 / (1 + np.exp(-(np.log10(x) + 3) * 2)) + (x > 1) * 10 * x) for x in lrs)
    result = LRFinderResult(lrs=lrs, losses=losses, smoothed=losses, suggestion=1e-3, min_lr_div10=3e-2,
                            diverged=True)
    decode(lr_finder_png(result), (420, 220))
    empty = LRFinderResult(lrs=(), losses=(), smoothed=(), suggestion=float("nan"), min_lr_div10=float("nan"),
                           diverged=False)
    decode(lr_finder_png(empty, width_px=300, height_px=160), (300, 160))


def test_small_pngs_from_threads():
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                decode(lr_preview_png([1e-3 * (i + 1)] * 100), (420, 200))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_frame_times_reports():
    r = frame_times(layers=8, steps=3000, frames=3, width_px=500, height_px=300)
    assert set(r) >= {"median", "p95", "full_redraws", "png_bytes"}
    assert r["median"] > 0 and r["p95"] >= r["median"] and r["png_bytes"] > 0


def test_plots_never_import_pyplot_or_widgets():
    forbidden = {"matplotlib.pyplot", "pylab", "ipywidgets", "IPython"}
    for path in PLOTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name}: {name}"
    code = ("import sys, retrain_widgets.plots as p; "
            "bad = [m for m in ('matplotlib.pyplot', 'ipywidgets', 'IPython') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_heatmap_pixels_match_matplotlib_nearest():
    f = LiveFigure()
    f.render(small_history(steps=500, frozen_until=250).snapshot())
    mine = np.asarray(f.canvas.buffer_rgba()).copy()
    f.canvas.restore_region(f._background)
    f.heatmap.draw(f.canvas.get_renderer())  # matplotlib's own drawing of the same image
    ref = np.asarray(f.canvas.buffer_rgba())
    box = f.ax_heat.bbox
    rows = slice(int(ref.shape[0] - box.y1) - 1, int(ref.shape[0] - box.y0) + 2)
    cols = slice(int(box.x0) - 1, int(box.x1) + 2)
    assert np.array_equal(mine[rows, cols], ref[rows, cols])


def test_incremental_pooling_matches_a_fresh_one():
    from retrain_widgets.plots._raster import Pooler
    from retrain_widgets.plots.bench import synthetic_history

    h, run = synthetic_history(layers=7, steps=2000)
    pooler = Pooler()
    for _ in range(80):  # the history folds old rows several times meanwhile
        run.advance(50)
        steps, _, values = h.snapshot().layer_series("grad_norm")
        got = pooler.pool(steps, values, 0.0, 40.0, 200)
        want = Pooler().pool(steps, values, 0.0, 40.0, 200)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12)


def test_alignment_cells_without_a_value_are_not_drawn_as_frozen_and_old_batch_losses_are_points():
    # the issue: a sample with no value was drawn grey over every layer, the grey that means "frozen",
    # and the old task's per-sample loss was a line through three points
    h = small_history(steps=400, frozen_until=400)  # conv1, bn1: frozen (no gradient)
    h.meta["alignment"] = {"every": 100, "budget": 0.005}
    steps = np.array([150.0, 250.0, 350.0])
    cos = np.tile(np.array([np.nan, np.nan, 0.5, -0.5, 0.2, np.nan]), (3, 1))  # fc: a new head, no value
    h.append_layers("grad_alignment", steps, NAMES, cos)
    h.append("old_batch_loss", steps, [0.5, 0.6, 0.7])
    f = LiveFigure()
    frame = np.asarray(Image.open(io.BytesIO(f.render(h.snapshot()))).convert("RGB")).astype(int)
    ax = f.layers.ax_align
    H = frame.shape[0]
    grey = np.array(f.layers.bad[:3], int)

    def block(step_a: float, step_b: float, row: int) -> np.ndarray:
        (x0, y0), (x1, y1) = ax.transData.transform([(step_a, row - 0.3), (step_b, row + 0.3)])
        return frame[int(H - y1) + 1:int(H - y0), int(x0) + 1:int(x1)].reshape(-1, 3)

    for row in (0, 1):  # frozen: solid grey, before the first sample too
        for a, b in ((20, 120), (200, 300)):
            assert (np.abs(block(a, b, row) - grey).max(axis=1) <= 2).all()
    for a, b in ((20, 120), (200, 300)):  # the new head: dots on white, never the frozen grey
        px = block(a, b, 5)
        assert (np.abs(px - 255).max(axis=1) <= 2).mean() > 0.5 and (px.std(axis=0) > 5).any()
        assert (np.abs(px - grey).max(axis=1) <= 2).mean() < 0.2
    px = block(20, 120, 2)  # a trainable layer before its first sample: dots too
    assert (np.abs(px - 255).max(axis=1) <= 2).mean() > 0.5
    blue = block(200, 300, 2)  # +0.5: blue
    assert blue[:, 2].mean() > blue[:, 0].mean() + 30
    line = f.old_batch_line
    assert line.get_linestyle() == "None" and line.get_marker() == "o" and len(line.get_xdata()) == 3
