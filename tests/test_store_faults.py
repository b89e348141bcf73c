"""Store faults are messages naming the run and the file: damaged or missing weights, a damaged
history row (the other runs still listed), an oversized history (decompression bounded), and the
files a killed process left behind (cleaned when the store opens)."""

from __future__ import annotations

import os
import sqlite3
import tracemalloc
import zlib

import pytest

from retrain_widgets import Retrainer, RunConfig, compare, examples
from retrain_widgets.core.store import RunStore
from retrain_widgets.core.store.faults import DamagedRun

pytestmark = pytest.mark.usefixtures("runs_in_tmp")


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


@pytest.fixture(scope="module")
def pretrained():
    return examples.pretrained_digits_cnn()


def _record(store, pretrained, seven, n=2):
    ids = []
    for i in range(n):
        run = Retrainer(pretrained, RunConfig(loss="bce", head_out=1, max_steps=4, lr=1e-3 * (i + 1),
                                              alignment_every=None), seven.train, seven.val)
        ids.append(store.record(run, name=f"run {i}", save_every=0))
        run.fit()
    return ids


@pytest.fixture
def store(tmp_path, pretrained, seven):
    s = RunStore(tmp_path / "runs")
    ids = _record(s, pretrained, seven)
    yield s, ids
    s.close()


@pytest.mark.parametrize("damage", [b"", b"garbage, not a zip", "truncated"])
def test_damaged_weights_file_names_the_run_and_the_file(store, pretrained, damage):
    s, ids = store
    path = os.path.join(s.weights_dir, f"{ids[0]}.pt")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncated" else damage)
    with pytest.raises(DamagedRun) as info:
        s.restore(ids[0], pretrained)
    assert ids[0] in str(info.value) and path in str(info.value) and "Delete" in str(info.value)


def test_missing_weights_file_names_the_run_and_the_file(store, pretrained):
    s, ids = store
    path = os.path.join(s.weights_dir, f"{ids[1]}.pt")
    os.remove(path)
    with pytest.raises(FileNotFoundError) as info:
        s.restore(ids[1], pretrained)
    assert ids[1] in str(info.value) and path in str(info.value)


def test_restore_in_the_runs_tab_shows_the_error(tmp_path, pretrained, seven):
    from retrain_widgets import RetrainStudio

    studio = RetrainStudio(pretrained, seven.train, seven.val, config=RunConfig(loss="bce", head_out=1, max_steps=3,
                                                                                  alignment_every=None),
                           store=tmp_path / "runs")
    studio.start()
    studio.wait(60)
    run_id = studio.store.runs()[0].id
    with open(os.path.join(studio.store.weights_dir, f"{run_id}.pt"), "wb") as f:
        f.write(b"damaged")
    panel = studio.runs_panel
    panel.refresh(select=[run_id])
    panel._restore()
    assert "could not restore" in panel.message.value and run_id in panel.message.value
    studio.close()


def test_one_damaged_history_row_leaves_the_others_listed(store):
    s, ids = store
    with sqlite3.connect(s.db_path) as conn:
        conn.execute("UPDATE histories SET data = ? WHERE run_id = ?", (b"\x78\x9cnot zlib at all", ids[0]))
    with pytest.raises(DamagedRun, match=ids[0]):
        s.history(ids[0])
    comparison = compare(s.runs(), store=s)
    states = {row["id"]: row["state"] for row in comparison.rows}
    assert set(states) == set(ids)
    assert "damaged" in states[ids[0]] and "damaged" not in states[ids[1]]
    assert comparison.plot()[:4] == b"\x89PNG"


def test_history_decompression_is_bounded(store):
    s, ids = store
    packer = zlib.compressobj(9)
    chunk = b"0" * 2**20
    bomb = b"".join(packer.compress(chunk) for _ in range(400)) + packer.flush()  # 400 MB of zeros, ~0.4 MB
    assert len(bomb) < 2**20
    with sqlite3.connect(s.db_path) as conn:
        conn.execute("UPDATE histories SET data = ? WHERE run_id = ?", (bomb, ids[1]))
    tracemalloc.start()
    try:
        with pytest.raises(DamagedRun, match=f"{ids[1]} is larger than"):
            s.history(ids[1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150 * 2**20


def test_opening_cleans_what_a_killed_process_left(tmp_path, pretrained, seven):
    folder = tmp_path / "runs"
    s = RunStore(folder)
    ids = _record(s, pretrained, seven)
    s.close()
    weights = folder / "weights"
    stale = weights / f"{ids[0]}.pt.999999999-abcd1234.tmp"  # no such process
    stale.write_bytes(b"half a file")
    orphan = weights / "000000000-dead.pt"  # complete weights of no run
    orphan.write_bytes(b"x")
    os.utime(orphan, (1e9, 1e9))
    with sqlite3.connect(folder / "runs.sqlite") as conn:  # killed after the file was moved into place
        conn.execute("UPDATE runs SET has_weights = 0 WHERE id = ?", (ids[1],))
    s = RunStore(folder)
    try:
        assert not stale.exists() and not orphan.exists()
        assert s.get(ids[1]).has_weights and (weights / f"{ids[1]}.pt").exists()
        assert s.load_weights(ids[1], pretrained)
    finally:
        s.close()


@pytest.fixture
def read_only(monkeypatch):
    """A read-only folder (as root, chmod does not stop writes: the check is patched instead)."""
    from retrain_widgets.core.store import faults

    folders: list[str] = []
    real = faults.writable
    monkeypatch.setattr(faults, "writable", lambda path: real(path) and not any(
        os.path.abspath(path).startswith(os.path.abspath(f)) for f in folders))
    return folders


def test_a_read_only_store_lists_and_restores_but_does_not_record(tmp_path, pretrained, seven, read_only):
    folder = tmp_path / "runs"
    s = RunStore(folder)
    ids = _record(s, pretrained, seven)
    s.close()
    read_only.append(str(folder))
    s = RunStore(folder)
    try:
        assert s.read_only and [r.id for r in s.runs()] == ids
        assert s.restore(ids[0], pretrained) is not None and len(s.history(ids[0]).series("train_loss")[0])
        run = Retrainer(pretrained, RunConfig(loss="bce", head_out=1, max_steps=2), seven.train)
        with pytest.raises(ValueError, match="read-only.*store=False"):
            s.record(run)
        with pytest.raises(ValueError, match="read-only"):
            s.delete(ids[0])
    finally:
        s.close()
    from retrain_widgets.headless import HeadlessStudio

    with pytest.raises(ValueError, match="read-only.*store=False"):
        HeadlessStudio(pretrained, seven.train, config=RunConfig(loss="bce", head_out=1), store=folder)


def test_a_read_only_folder_without_a_store(tmp_path, pretrained, seven, read_only):
    folder = tmp_path / "empty"
    folder.mkdir()
    read_only.append(str(folder))
    with pytest.raises(ValueError, match=f"{folder}.*store=False"):
        RunStore(folder)


def test_a_damaged_database_at_start_is_said_and_the_run_trains(tmp_path, pretrained, seven):
    from retrain_widgets.headless import HeadlessStudio

    folder = tmp_path / "runs"
    s = RunStore(folder)
    _record(s, pretrained, seven, n=3)
    s.close()
    db = folder / "runs.sqlite"
    data = bytearray(db.read_bytes())
    data[4096:] = b"\x5a" * (len(data) - 4096)  # the data pages, not the header
    db.write_bytes(bytes(data))
    for name in os.listdir(folder):
        if name.endswith(("-wal", "-shm")):
            os.remove(folder / name)
    studio = HeadlessStudio(pretrained, seven.train, config=RunConfig(loss="bce", head_out=1, max_steps=3,
                                                                      alignment_every=None), store=folder)
    shown = []
    studio.on("error", shown.append)
    run = studio.start()
    assert run is not None
    studio.wait(60)
    assert run.step == 3
    assert any(exc is not None and "not recorded" in str(exc) and str(db) in str(exc) for exc in shown), shown


def test_two_studios_starting_together_get_different_numbers(tmp_path, pretrained, seven):
    import copy
    import threading

    from retrain_widgets.headless import HeadlessStudio

    config = RunConfig(loss="bce", head_out=1, max_steps=3, alignment_every=None)
    studios = [HeadlessStudio(copy.deepcopy(pretrained), seven.train, config=config, store=tmp_path / "runs")
               for _ in range(2)]
    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=lambda s=s: (barrier.wait(), s.start())) for s in studios]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in studios:
        s.wait(60)
    names = [r.name for r in RunStore(tmp_path / "runs").runs()]
    assert len(names) == 2 and len({n.split()[0] for n in names}) == 2, names


def test_a_full_disk_marks_the_run_failed_at_once_with_the_reason(tmp_path, pretrained, seven, monkeypatch):
    import time as _time

    from conftest import SlowLoader

    from retrain_widgets.core.store import recorder

    real = recorder.encode_history

    def full(history, level):
        if level == 1:  # the progress saves: the disk filled up while the run trained
            raise sqlite3.OperationalError("database or disk is full")
        return real(history, level)

    monkeypatch.setattr(recorder, "encode_history", full)
    s = RunStore(tmp_path / "runs")
    run = Retrainer(pretrained, RunConfig(loss="bce", head_out=1, max_steps=400, alignment_every=None),
                    SlowLoader(seven.train, 0.05), publish_every=2)
    run_id = s.record(run, save_every=0)
    with pytest.warns(RuntimeWarning, match="is full"):
        run.start()
        deadline = _time.monotonic() + 30
        while s.get(run_id).state != "failed" and _time.monotonic() < deadline:
            _time.sleep(0.05)
        rec = s.get(run_id)
        assert run.state.active, "the row is marked while the run still trains"  # (20 s of steps: Stop ends them)
        run.stop()
        run.wait()
    assert rec.state == "failed" and "is full" in rec.message and run_id in rec.message
    assert "store=False" in rec.message
    s.close()


def test_weights_that_do_not_fit_are_said_plainly(tmp_path, pretrained, seven, monkeypatch):
    from retrain_widgets.core.store.files import WeightsFolder

    def full(self, run_id, model, pretrained=None):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(WeightsFolder, "write", full)
    s = RunStore(tmp_path / "runs")
    run = Retrainer(pretrained, RunConfig(loss="bce", head_out=1, max_steps=3, alignment_every=None), seven.train)
    run_id = s.record(run, save_every=0)
    with pytest.warns(RuntimeWarning, match="is full"):
        run.fit()
    rec = s.get(run_id)
    assert rec.state == "failed" and not rec.has_weights
    assert "is full" in rec.message and "the weights file" in rec.message and "enforce fail" not in rec.message
    s.close()


def test_a_full_disk_while_a_studio_trains_is_shown(tmp_path, pretrained, seven, monkeypatch):
    from conftest import SlowLoader

    from retrain_widgets.core.store import recorder
    from retrain_widgets.headless import HeadlessStudio

    def full(history, level):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(recorder, "encode_history", full)
    studio = HeadlessStudio(pretrained, SlowLoader(seven.train, 0.02), config=RunConfig(
        loss="bce", head_out=1, max_steps=6, alignment_every=None), store=tmp_path / "runs")
    shown = []
    studio.on("error", shown.append)
    with pytest.warns(RuntimeWarning, match="is full"):
        studio.start()
        studio.wait(60)
    assert any(exc is not None and "is full" in str(exc) for exc in shown), shown


def test_delete_removes_the_temporary_files_of_a_killed_save(store):
    s, ids = store
    tmp = os.path.join(s.weights_dir, f"{ids[0]}.pt.{os.getpid()}-0123abcd.tmp")  # a live writer: kept at open
    with open(tmp, "wb") as f:
        f.write(b"half")
    s.delete(ids[0])
    assert not os.path.exists(tmp) and not os.path.exists(os.path.join(s.weights_dir, f"{ids[0]}.pt"))
    assert [r.id for r in s.runs()] == [ids[1]]
