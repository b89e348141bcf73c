from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from retrain_widgets.core.history import History


def test_small_history_is_exact():
    h = History()
    h.append("train_loss", [0, 1, 2], [3.0, 2.0, 1.0])
    h.append("val_loss", [2], [1.5])
    steps, values = h.series("train_loss")
    assert steps.tolist() == [0, 1, 2] and values.tolist() == [3.0, 2.0, 1.0]
    assert h.series("val_metric")[0].size == 0  # known but not recorded yet
    with pytest.raises(ValueError, match="no series 'trian_loss'"):
        h.series("trian_loss")


def test_snapshot_is_immutable_and_detached():
    h = History()
    h.append("train_loss", [0, 1], [1.0, 2.0])
    h.append_layers("grad_norm", [0, 1], ["a", "b"], np.array([[1, 2], [3, 4]]))
    snap = h.snapshot()
    steps, values = snap.series("train_loss")
    with pytest.raises(ValueError):
        values[0] = 5
    with pytest.raises(ValueError):
        snap.layer_series("grad_norm")[2][0, 0] = 1
    h.append("train_loss", [2], [9.0])
    assert snap.series("train_loss")[1].tolist() == [1.0, 2.0]
    assert snap.version < h.version
    assert snap.last_step == 1


def test_layer_columns_fixed():
    h = History()
    h.append_layers("drift", [0], ["a", "b"], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="columns changed"):
        h.append_layers("drift", [1], ["a", "c"], np.zeros((1, 2)))


def test_decimation_keeps_extremes_and_order():
    h = History(recent=256, coarse=64)
    n = 20_000
    rng = np.random.default_rng(0)
    loss = rng.random(n).astype(np.float32)
    loss[1234] = 50.0  # a spike deep in the past
    loss[777] = -3.0
    for i in range(0, n, 50):
        h.append("train_loss", np.arange(i, i + 50), loss[i:i + 50])
    steps, values = h.series("train_loss")
    assert len(steps) <= 2 * 256 + 2 * 64
    assert np.all(np.diff(steps) >= 0)
    assert 50.0 in values and -3.0 in values
    assert steps[values.argmax()] == 1234 and steps[values.argmin()] == 777
    assert steps[-1] == n - 1 and values[-1] == loss[-1]  # the recent tail is exact
    tail = 256
    assert np.array_equal(values[-tail:], loss[-tail:])


def test_layer_decimation_mean_min_max():
    h = History(layer_recent=64, layer_coarse=16)
    n, L = 5000, 3
    vals = np.tile(np.arange(n, dtype=np.float32)[:, None], (1, L))
    vals[:, 2] = np.nan  # a frozen layer: no gradient
    h.append_layers("grad_norm", np.arange(n), ["a", "b", "c"], vals)
    steps, cols, mean = h.layer_series("grad_norm")
    _, _, mx = h.layer_series("grad_norm", reduce="max")
    _, _, mn = h.layer_series("grad_norm", reduce="min")
    assert cols == ("a", "b", "c")
    assert len(steps) <= 2 * 64 + 16
    assert np.all(np.isnan(mean[:, 2]))
    assert mx[:, 0].max() == n - 1 and mn[:, 0].min() == 0
    # bucket means sit at their bucket's centre step (values equal steps here)
    assert np.allclose(mean[:, 0], steps, atol=1e-3 * n)


def test_million_steps_hundred_layers_bounded():
    """A simulated 1,000,000-step, 100-layer run stays within the documented budget."""
    h = History()
    layers = [f"layer{i}" for i in range(100)]
    chunk = 500
    rng = np.random.default_rng(1)
    block = rng.random((chunk, 100)).astype(np.float32)
    losses = rng.random(chunk).astype(np.float32)
    t0 = time.perf_counter()
    for start in range(0, 1_000_000, chunk):
        steps = np.arange(start, start + chunk)
        h.append("train_loss", steps, losses)
        h.append("lr", steps, losses)
        h.append_layers("grad_norm", steps, layers, block)
        if start % 5000 == 0:
            h.append_layers("drift", steps[:1], layers, block[:1])
            h.append("val_loss", steps[:1], losses[:1])
    elapsed = time.perf_counter() - t0
    assert h.total_points("train_loss") == 1_000_000
    assert h.nbytes() < 6 * 2**20, h.nbytes()  # the budget stated in history.py
    steps, cols, vals = h.layer_series("grad_norm")
    assert vals.shape == (len(steps), 100) and len(steps) <= 3 * 1024
    assert steps[-1] == 999_999
    t1 = time.thread_time()  # CPU time: not the time a busy machine kept this thread waiting
    h.snapshot()
    assert time.thread_time() - t1 < 0.5
    assert elapsed < 60  # sanity only; speed targets live in benchmarks/


def test_json_round_trip_with_nan():
    h = History(recent=16, coarse=8, layer_recent=16, layer_coarse=8)
    h.append("train_loss", np.arange(100), np.linspace(1, 0, 100))
    h.append("val_metric", [10, 50], [0.5, float("nan")])
    vals = np.random.default_rng(0).random((100, 2))
    vals[:, 1] = np.nan
    h.append_layers("drift", np.arange(100), ["x", "y"], vals)
    h.mark(40, "stage", "unfroze features.0")
    h.meta["metric"] = "accuracy"
    text = h.to_json()
    again = History.from_json(text)
    for name in ("train_loss", "val_metric"):
        a, b = h.series(name), again.series(name)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1], equal_nan=True)
    a, b = h.layer_series("drift"), again.layer_series("drift")
    assert a[1] == b[1] and np.array_equal(a[2], b[2], equal_nan=True)
    assert again.markers == [(40.0, "stage", "unfroze features.0")]
    assert again.meta["metric"] == "accuracy"
    # keeps decimating the same way after a reload
    h.append("train_loss", np.arange(100, 200), np.zeros(100))
    again.append("train_loss", np.arange(100, 200), np.zeros(100))
    assert np.array_equal(h.series("train_loss")[1], again.series("train_loss")[1])


def test_to_dataframe():
    h = History()
    h.append("train_loss", [0, 1, 2], [3.0, 2.0, 1.0])
    h.append("val_loss", [2], [1.5])
    h.append_layers("grad_norm", [0, 1], ["a", "b"], np.ones((2, 2)))
    df = h.to_dataframe()
    assert list(df.columns) == ["train_loss", "val_loss"]
    assert df.loc[2.0, "val_loss"] == 1.5 and np.isnan(df.loc[0.0, "val_loss"])
    dfl = h.to_dataframe(layers=True)
    assert ("grad_norm", "b") in dfl.columns


def test_concurrent_writer_and_readers():
    h = History(recent=64, coarse=16, layer_recent=64, layer_coarse=16)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        for i in range(0, 20_000, 10):
            h.append("train_loss", np.arange(i, i + 10), np.ones(10))
            h.append_layers("grad_norm", np.arange(i, i + 10), ["a"], np.ones((10, 1)))
        stop.set()

    def reader():
        try:
            while not stop.is_set():
                snap = h.snapshot()
                s, v = snap.series("train_loss")
                assert len(s) == len(v)
                if len(s):
                    assert np.all(np.diff(s) >= 0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert h.total_points("train_loss") == 20_000
