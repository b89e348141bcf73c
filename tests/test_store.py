from __future__ import annotations

import copy
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import assert_same_state, state_copy
from torch.nn import functional as F

from retrain_widgets import Retrainer, RunConfig, State, examples
from retrain_widgets.core.store import SCHEMA_VERSION, RunStore, UnknownRun, fingerprint, fingerprints, schema

ROOT = pathlib.Path(__file__).resolve().parents[1]
HELPER = pathlib.Path(__file__).resolve().parent / "store_helpers" / "record_runs.py"


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


@pytest.fixture(scope="module")
def pretrained():
    return examples.pretrained_digits_cnn()


def short_config(**changes):
    return RunConfig(**{"loss": "bce", "head_out": 1, "max_steps": 30, "device": "cpu", **changes})


def make_run(pretrained, seven, config=None):
    return Retrainer(pretrained, config or short_config(), seven.train, seven.val, seven.old_val, publish_every=5)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, pretrained, seven):
    """A finished run recorded (before start) into a store, saved at every publish."""
    folder = tmp_path_factory.mktemp("store")
    store = RunStore(folder)
    run = make_run(pretrained, seven)
    run_id = store.record(run, name="first", save_every=0)
    run.fit()
    yield store, run, run_id
    store.close()


def helper(folder, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, str(HELPER), str(folder), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def db_rows(folder, sql, args=()):
    with sqlite3.connect(pathlib.Path(folder) / "runs.sqlite", timeout=10) as conn:
        return conn.execute(sql, args).fetchall()


# ----------------------------------------------------------------------------- a finished run


def test_finished_run_is_recorded_with_config_metrics_and_history(finished):
    store, run, run_id = finished
    rec = store.get(run_id)
    assert rec.state == "finished" and rec.name == "first" and rec.has_weights
    assert rec.created <= rec.started <= rec.ended
    assert rec.config_obj() == run.config
    h = run.history
    m = rec.metrics
    assert m["steps"] == run.step == 30 and m["total_steps"] == 30
    for name in ("val_loss", "val_metric", "old_loss", "old_metric"):
        assert m[name] == float(h.series(name)[1][-1])
    steps, values = h.series("train_loss")
    assert m["train_loss"] == pytest.approx(float(np.mean(values[steps > steps[-1] - 3])))
    assert m["metric"] == h.meta["metric"] and m["old_metric_name"] == h.meta["old_metric"]
    assert m["higher_is_better"] is True
    assert rec.pretrained_id == fingerprint(run.pretrained)

    saved = store.history(run_id)
    scalars, layers = h.names()
    assert saved.names() == (scalars, layers) and "val_metric" in scalars and "grad_norm" in layers
    for name in scalars:
        np.testing.assert_array_equal(saved.series(name), h.series(name))
    for name in layers:
        s1, c1, v1 = saved.layer_series(name)
        s2, c2, v2 = h.layer_series(name)
        assert c1 == c2
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(v1, v2)
    assert saved.markers == h.markers and saved.meta["loss"] == "bce"


def test_restore_gives_the_trained_model_and_leaves_the_pretrained_one(finished, seven):
    store, run, run_id = finished
    fresh = examples.pretrained_digits_cnn()
    before = state_copy(fresh)
    rng = torch.get_rng_state()
    restored = store.restore(run_id, fresh)
    assert restored is not fresh
    assert_same_state(fresh, before)
    assert torch.equal(torch.get_rng_state(), rng)
    x = next(iter(seven.val))[0]
    restored.eval()
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(restored(x), run.model(x))
        assert fresh.eval()(x).shape[1] == 10  # the original head is still there
    weights = store.load_weights(run_id, fresh)
    assert set(weights) == set(run.model.state_dict()) and all(w.device.type == "cpu" for w in weights.values())


def test_runs_survive_reopening_and_filter_by_pretrained(finished):
    store, run, run_id = finished
    with RunStore(store.path) as again:
        recs = again.runs()
        assert [r.id for r in recs] == [run_id]
        assert recs[0] == store.get(run_id)
        assert again.runs(pretrained_id=fingerprint(run.pretrained))[0].id == run_id
        assert again.runs(pretrained_id="0" * 32) == []
        np.testing.assert_array_equal(again.history(run_id).series("val_loss"), run.history.series("val_loss"))


def test_unknown_ids_are_key_errors_listing_ids(finished):
    store, _, run_id = finished
    with pytest.raises(KeyError, match=r"no run 'nope-1' in the store .*latest ids: " + run_id):
        store.get("nope-1")
    for bad in ("../../etc/passwd", "x.pt", "", "A/B"):
        for call in (store.get, store.history, store.load_weights, store.delete):
            with pytest.raises(UnknownRun):
                call(bad)
    with pytest.raises(KeyError, match="no run 'abc'"):
        store.rename("abc", "x")


# ----------------------------------------------------------------------------- stopped / failed / editing


def test_stopped_run_recorded_while_running(tmp_path, pretrained, seven):
    run = make_run(pretrained, seven, RunConfig(loss="bce", head_out=1, epochs=50, device="cpu"))
    run.start()
    deadline = time.monotonic() + 20
    while run.step < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    with RunStore(tmp_path) as store:
        run_id = store.record(run, save_every=0)
        assert store.record(run) == run_id  # recording twice: the same id
        assert store.get(run_id).state == "running" and store.get(run_id).started is not None
        run.stop()
        run.wait(30)
        rec = store.get(run_id)
        assert rec.state == "stopped" and run.state == State.STOPPED
        assert f"stopped at step {run.step} of {run.total_steps}" in rec.message
        assert rec.metrics["steps"] == run.step and rec.has_weights
        assert store.history(run_id).series("train_loss")[0][-1] == run.step - 1


def test_failed_run_with_custom_loss_is_recorded(tmp_path, pretrained, seven):
    calls = {"n": 0}

    def nan_loss(out, target):
        calls["n"] += 1
        loss = F.binary_cross_entropy_with_logits(out.squeeze(1), target)
        return loss * float("nan") if calls["n"] == 8 else loss  # a few steps in (check() calls it too)

    run = make_run(pretrained, seven, RunConfig(loss=nan_loss, head_out=1, max_steps=30, device="cpu"))
    with RunStore(tmp_path) as store:
        run_id = store.record(run, name="nan", save_every=0)
        with pytest.raises(Exception, match="NaN"):
            run.fit()
        rec = store.get(run_id)
    assert rec.state == "failed" and run.state == State.FAILED
    assert rec.message.startswith(run.message) and "NaN or infinite at step" in run.message
    assert "custom callable (nan_loss)" in rec.message and "restored to step" in rec.message
    assert rec.config == {"loss": "nan_loss"} and rec.has_weights and rec.metrics["steps"] == run.step > 0
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        rec.config_obj()
    assert not run.handler_errors


def test_delete_and_rename(tmp_path, pretrained, seven):
    with RunStore(tmp_path) as store:
        ids = []
        for _ in range(2):
            run = make_run(pretrained, seven, short_config(max_steps=5))
            ids.append(store.record(run))
            run.fit()
        weights = tmp_path / "weights" / f"{ids[0]}.pt"
        assert weights.exists() and ids == sorted(ids)
        store.rename(ids[1], "kept")
        store.delete(ids[0])
        assert not weights.exists()
        assert [r.id for r in store.runs()] == [ids[1]]
        assert db_rows(tmp_path, "SELECT count(*) FROM histories WHERE run_id = ?", (ids[0],)) == [(0,)]
        with pytest.raises(KeyError, match=ids[1]):
            store.get(ids[0])
        with pytest.raises(ValueError, match="non-empty"):
            store.rename(ids[1], "")
    with RunStore(tmp_path) as again:
        assert again.get(ids[1]).name == "kept"
    again.close()
    with pytest.raises(ValueError, match="closed"):
        again.runs()


def test_reading_while_the_training_thread_saves(tmp_path, pretrained, seven):
    run = make_run(pretrained, seven, short_config(max_steps=40))
    with RunStore(tmp_path) as store:
        run_id = store.record(run, save_every=0)
        run.start()
        reads = 0
        while not run.join(0):
            assert store.runs()[0].id == run_id
            store.history(run_id)
            reads += 1
            time.sleep(0.005)
        run.wait()
        assert reads > 5 and store.get(run_id).state == "finished" and not run.handler_errors
        assert db_rows(tmp_path, "PRAGMA journal_mode") == [("wal",)]


# ----------------------------------------------------------------------------- processes


def test_two_processes_and_this_one_write_at_once(tmp_path, pretrained, seven):
    go = tmp_path / "go"
    procs = [helper(tmp_path, "--runs", 3, "--steps", 10, "--go", go, "--tag", tag) for tag in ("a", "b")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        go.touch()
        with RunStore(tmp_path) as store:
            for _ in range(2):
                run = make_run(pretrained, seven, short_config(max_steps=10))
                store.record(run, name="main", save_every=0)
                run.fit()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Warning" not in err, err
    with RunStore(tmp_path) as store:
        recs = store.runs()
        assert sorted(r.name for r in recs) == ["a 0", "a 1", "a 2", "b 0", "b 1", "b 2", "main", "main"]
        assert all(r.state == "finished" and r.has_weights and r.metrics["steps"] == 10 for r in recs)
        assert all(len(store.history(r.id).series("train_loss")[0]) == 10 for r in recs)
        assert all(r.pretrained_id == fingerprint(pretrained) for r in recs)
    assert db_rows(tmp_path, "PRAGMA integrity_check") == [("ok",)]


def test_run_of_a_killed_process_is_interrupted(tmp_path):
    proc = helper(tmp_path, "--long", "--save-every", 0.2)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        run_id = proc.stdout.readline().strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = db_rows(tmp_path, "SELECT step, state FROM runs WHERE id = ?", (run_id,))
            if rows[0][0] > 0:
                break
            time.sleep(0.05)
        assert rows[0] == (rows[0][0], "running") and rows[0][0] > 0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    step, total, saved = db_rows(tmp_path, "SELECT step, total_steps, saved FROM runs WHERE id = ?", (run_id,))[0]
    with RunStore(tmp_path) as store:
        rec = store.get(run_id)
        assert rec.state == "interrupted"
        assert f"process that ran it ended (kernel restarted or killed?) at step {step} of {total}" in rec.message
        assert "recorded up to its last save at" in rec.message
        assert rec.ended == saved and rec.metrics["steps"] == step
        steps = store.history(run_id).series("train_loss")[0]
        assert 0 < len(steps) and steps[-1] < step
        with pytest.raises(ValueError, match="no saved weights"):
            store.load_weights(run_id)
        assert [r.state for r in store.runs()] == ["interrupted"]


def test_dead_run_rules(tmp_path, pretrained, seven):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(done.stdout)
    with RunStore(tmp_path) as store:
        ids = [store.record(make_run(pretrained, seven)) for _ in range(4)]
        now = time.time()
        with sqlite3.connect(store.db_path) as conn:
            conn.execute("UPDATE runs SET pid = ?, proc = NULL WHERE id = ?", (gone_pid, ids[0]))
            conn.execute("UPDATE runs SET host = 'elsewhere', heartbeat = ? WHERE id = ?", (now - 3600, ids[1]))
            conn.execute("UPDATE runs SET host = 'elsewhere', heartbeat = ? WHERE id = ?", (now - 5, ids[2]))
        states = {r.id: (r.state, r.message) for r in store.runs()}
        assert states[ids[0]][0] == "interrupted" and "process that ran it ended" in states[ids[0]][1]
        assert states[ids[1]][0] == "interrupted" and "on host elsewhere" in states[ids[1]][1]
        assert states[ids[2]] == ("idle", "") and states[ids[3]] == ("idle", "")  # alive: left as they are


def test_paused_run_is_saved_and_keeps_a_heartbeat(tmp_path, monkeypatch, pretrained, seven):
    monkeypatch.setattr(RunStore, "HEARTBEAT_EVERY", 0.05)
    run = make_run(pretrained, seven, RunConfig(loss="bce", head_out=1, epochs=50, device="cpu"))
    with RunStore(tmp_path) as store:
        run_id = store.record(run, save_every=60)
        run.start()
        deadline = time.monotonic() + 20
        while run.step < 12 and time.monotonic() < deadline:  # past the first save (at the first publish)
            time.sleep(0.01)
        run.pause()
        deadline = time.monotonic() + 20
        while run.state != State.PAUSED and time.monotonic() < deadline:
            time.sleep(0.01)
        while True:  # the training thread sets the state, then its handlers save the row: wait for the save
            (state, step, beat), = db_rows(tmp_path, "SELECT state, step, heartbeat FROM runs WHERE id = ?", (run_id,))
            if state == "paused" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert state == "paused" and step == run.step > 0  # saved on pause despite save_every=60
        assert len(store.history(run_id).series("train_loss")[0]) == step
        time.sleep(0.3)
        assert db_rows(tmp_path, "SELECT heartbeat FROM runs WHERE id = ?", (run_id,))[0][0] > beat
        run.stop()
        run.wait(30)
        assert store.get(run_id).state == "stopped"


# ----------------------------------------------------------------------------- schema


def test_newer_schema_is_refused(tmp_path):
    RunStore(tmp_path).close()
    assert db_rows(tmp_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    with sqlite3.connect(tmp_path / "runs.sqlite") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ValueError, match=rf"schema version 99, newer .*schema version {SCHEMA_VERSION}.*upgrade"):
        RunStore(tmp_path)


def test_newer_schema_of_the_meta_table_is_refused(tmp_path):
    """A store as retrain_widgets 0.1.0 wrote it (user_version 0) is read at meta's version."""
    RunStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "runs.sqlite") as conn:
        conn.execute("PRAGMA user_version = 0")
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ValueError, match=rf"schema version 99, newer .*schema version {SCHEMA_VERSION}.*upgrade"):
        RunStore(tmp_path)


def test_store_of_schema_1_opens_and_keeps_its_runs(tmp_path, seven):
    """tests/data/store_schema1 was written by retrain_widgets 0.1.0 (version in meta only)."""
    folder = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "store_schema1", folder)
    assert db_rows(folder, "PRAGMA user_version") == [(0,)]
    pretrained = examples.pretrained_digits_cnn()
    with RunStore(folder) as store:
        finished, idle = store.runs()
        assert (finished.name, finished.state, finished.has_weights) == ("made by schema 1", "finished", True)
        assert finished.config_obj() == RunConfig(loss="bce", head_out=1, max_steps=4, device="cpu")
        assert finished.metrics["steps"] == 4 and finished.metrics["val_metric"] == 0.28125
        assert finished.pretrained_id == idle.pretrained_id == fingerprint(pretrained)
        assert idle.name == "never started" and idle.state == "interrupted"  # its process is long gone
        assert finished.notebook is None and idle.notebook is None  # stored before runs knew their notebook
        assert store.runs(notebook=None) == store.runs() and store.runs(notebook="a.ipynb") == []
        assert len(store.history(finished.id).series("train_loss")[0]) == 4
        restored = store.restore(finished.id, pretrained)
        assert_same_state(restored, store.load_weights(finished.id))
        assert restored(next(iter(seven.val))[0]).shape[1] == 1
        run = make_run(pretrained, seven, short_config(max_steps=2))
        with pytest.raises(ValueError, match="notebook must be a notebook's path"):
            store.record(run, notebook=3)
        new_id = store.record(run, notebook="course/a.ipynb")
        run.fit()
        assert store.get(new_id).state == "finished" and len(store.runs()) == 3
        assert [r.id for r in store.runs(notebook="course/a.ipynb")] == [new_id]
        assert store.get(new_id).notebook == "course/a.ipynb"
    assert db_rows(folder, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert db_rows(folder, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]


def test_migration_is_applied_in_order_and_rolled_back_on_error(tmp_path, monkeypatch, pretrained, seven):
    with RunStore(tmp_path) as store:
        run = make_run(pretrained, seven, short_config(max_steps=5))
        run_id = store.record(run)
        run.fit()
    first = list(schema.MIGRATIONS)
    assert len(first) == SCHEMA_VERSION == 2

    def add_tags(conn):
        conn.execute("ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")

    def broken(conn):
        conn.execute("ALTER TABLE runs ADD COLUMN half TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(schema, "MIGRATIONS", [*first, add_tags, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        RunStore(tmp_path)
    assert db_rows(tmp_path, "PRAGMA user_version") == [(2,)]
    assert db_rows(tmp_path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert "tags" not in [c[1] for c in db_rows(tmp_path, "PRAGMA table_info(runs)")]

    monkeypatch.setattr(schema, "MIGRATIONS", [*first, add_tags])
    with RunStore(tmp_path) as migrated:
        assert migrated.get(run_id).state == "finished"
    assert db_rows(tmp_path, "PRAGMA user_version") == [(3,)]
    assert db_rows(tmp_path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]
    assert db_rows(tmp_path, "SELECT tags FROM runs") == [("[]",)]

    monkeypatch.setattr(schema, "MIGRATIONS", [*first, add_tags])
    with RunStore(tmp_path / "new") as new:  # a new store is laid out by the same steps
        assert new.runs() == []
    assert db_rows(tmp_path / "new", "PRAGMA user_version") == [(3,)]
    assert "tags" in [c[1] for c in db_rows(tmp_path / "new", "PRAGMA table_info(runs)")]

    monkeypatch.setattr(schema, "MIGRATIONS", first)
    with pytest.raises(ValueError, match="schema version 3, newer"):
        RunStore(tmp_path)


def test_files_that_are_not_run_stores_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "runs.sqlite").write_bytes(b"these are not the bytes of a database\n" * 20)
    with pytest.raises(ValueError, match="not a SQLite database"):
        RunStore(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with sqlite3.connect(tmp_path / "b" / "runs.sqlite") as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(ValueError, match="without a meta table"):
        RunStore(tmp_path / "b")
    (tmp_path / "c").write_text("a file")
    with pytest.raises(ValueError, match="takes a folder"):
        RunStore(tmp_path / "c")


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint(monkeypatch):
    model = examples.resnet18_shaped()
    first = fingerprint(model)
    assert len(first) == 32 and fingerprint(copy.deepcopy(model)) == first

    hashed = []
    real = fingerprints.hash_state
    monkeypatch.setattr(fingerprints, "hash_state", lambda state: hashed.append(1) or real(state))
    t0 = time.thread_time()  # CPU time: not the time a busy machine kept this thread waiting
    assert fingerprint(model) == first
    assert hashed == [] and time.thread_time() - t0 < 0.1  # cached: no bytes read

    old = model.fc.weight[0, 0].item()
    with torch.no_grad():
        model.fc.weight[0, 0] = old + 1.0
    changed = fingerprint(model)
    assert hashed == [1] and changed != first
    with torch.no_grad():
        model.fc.weight[0, 0] = old
    assert fingerprint(model) == first  # same bytes, same fingerprint


def test_store_threads_end(tmp_path, pretrained, seven):
    """The training thread closes its connection when the run ends; nothing else is left open."""
    before = set(threading.enumerate())
    with RunStore(tmp_path) as store:
        run = make_run(pretrained, seven, short_config(max_steps=5))
        store.record(run, save_every=0)
        run.fit()
        run.join(5)
        run.thread.join(5)  # join() returns when the run is over; the thread itself ends just after
        assert run.thread.ident not in store.connections.threads() and store.recording() == []
    assert {t.name for t in set(threading.enumerate()) - before} <= {"retrain_widgets-store-heartbeat"}


# ----------------------------------------------------------------------------- weights stored as what they changed


@pytest.fixture(scope="module")
def head_only(tmp_path_factory, pretrained, seven):
    """A finished run that trains the classifier only: its weights file holds the classifier's tensors."""
    store = RunStore(tmp_path_factory.mktemp("delta"))
    run = make_run(pretrained, seven, short_config(frozen=["features"]))
    run_id = store.record(run, save_every=0)
    run.fit()
    yield store, run, run_id
    store.close()


def test_a_classifier_only_run_is_stored_as_what_it_changed_and_restored_bit_for_bit(head_only, pretrained):
    from retrain_widgets.core import weights_delta

    store, run, run_id = head_only
    saved = torch.load(store._weights.path(run_id), weights_only=True)
    assert weights_delta.is_delta(saved) and saved["pretrained_id"] == fingerprint(pretrained)
    assert {f"{run.head_name}.weight", f"{run.head_name}.bias"} <= set(saved["changed"])
    assert all(name.startswith("classifier.") for name in saved["changed"])  # the frozen features are not there
    full = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    changed = sum(t.numel() * t.element_size() for t in saved["changed"].values())
    assert store.weights_size(run_id) < min(full / 3, changed + 12_000)  # the tensors it changed, and names
    restored = store.restore(run_id, examples.pretrained_digits_cnn())
    trained = run.model.state_dict()
    assert list(restored.state_dict()) == list(trained)
    for name, tensor in restored.state_dict().items():
        assert tensor.dtype == trained[name].dtype and torch.equal(tensor, trained[name].cpu()), name


def test_a_delta_needs_the_pretrained_model_it_was_stored_against(head_only, pretrained):
    store, _, run_id = head_only
    with pytest.raises(ValueError, match=fingerprint(pretrained)):
        store.load_weights(run_id)  # no model: the message names the one to pass
    other = examples.pretrained_digits_cnn()
    with torch.no_grad():
        other.features[0].weight.add_(1.0)
    with pytest.raises(ValueError, match="pass the model the run started from"):
        store.restore(run_id, other)


def test_full_weights_files_of_earlier_stores_and_runs_without_a_pretrained_model_stay_readable(
        tmp_path, pretrained, seven):
    with RunStore(tmp_path) as store:
        run = make_run(pretrained, seven, short_config(frozen=["features"], max_steps=5))
        run_id = store.record(run, save_every=0)
        run.fit()
        path = store._weights.path(run_id)
        torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, path)  # as stores wrote them
        for weights in (store.load_weights(run_id), store.load_weights(run_id, pretrained)):
            assert all(torch.equal(weights[k], v) for k, v in run.model.state_dict().items())
        store._weights.write(run_id, run.model)  # no pretrained model at hand: the full weights
        assert set(torch.load(path, weights_only=True)) == set(run.model.state_dict())
        restored = store.restore(run_id, pretrained)
        assert all(torch.equal(restored.state_dict()[k], v) for k, v in run.model.state_dict().items())


def test_deleting_a_run_frees_its_weights_on_disk(tmp_path, pretrained, seven):
    with RunStore(tmp_path) as store:
        run = make_run(pretrained, seven, short_config(frozen=["features"], max_steps=5))
        run_id = store.record(run, save_every=0)
        run.fit()
        path = store._weights.path(run_id)
        assert store.weights_size(run_id) == os.path.getsize(path) > 0
        store.delete(run_id)
        assert not os.path.exists(path)
        with pytest.raises(KeyError):
            store.weights_size(run_id)
