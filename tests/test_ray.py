"""What-if grids on Ray (retrain_widgets.executors, retrain_widgets.distributed).

Every Ray test runs twice: on a two-node cluster on loopback
(``ray start --head`` plus ``ray start --address=...``, one CPU each, started and stopped here, with
token authentication on: a random token for the session), then on a local instance with 2 CPUs
(token authentication on by default, the token under ``~/.ray/``). Both
are module-scoped: one start-up each per session. Ray's start-up is slow on two cores (15-40 s),
so the timeouts are generous but bounded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch
from conftest import SlowLoader

from retrain_widgets import HeadlessStudio, RunStore, State, examples, run_grid
from retrain_widgets.core.events import Event
from retrain_widgets.distributed import RemoteRun
from retrain_widgets.distributed.worker import Chunk, Ended, GridInputs, Started, train_run
from retrain_widgets.executors import ThreadExecutor
from retrain_widgets.topics import Topic

ray = pytest.importorskip("ray")

from ray._private.authentication_test_utils import reset_auth_token_state  # noqa: E402 - Ray's own test helper

from retrain_widgets import RayExecutor  # noqa: E402 - after the skip

pytestmark = pytest.mark.timeout(600)

RAY_CLI = os.path.join(os.path.dirname(sys.executable), "ray")


@pytest.fixture(scope="module")
def task():
    return examples.task("is_seven")


@pytest.fixture(scope="module")
def model():
    return examples.pretrained_digits_cnn()


def short(task, **changes):
    return task.config.replace(epochs=1, **changes)


# ====================================================================== without a cluster
def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError, match=r"retrain_widgets\[ray\]"):
        RayExecutor()


def test_importing_the_package_imports_no_ray():
    code = ("import sys, retrain_widgets, retrain_widgets.executors, retrain_widgets.headless, "
            "retrain_widgets.distributed; retrain_widgets.RayExecutor; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("kwargs, word", [({"num_cpus": 0}, "num_cpus"), ({"gpus_per_run": -1}, "gpus_per_run"),
                                          ({"max_concurrent": 1.5}, "max_concurrent"), ({"address": 3}, "address")])
def test_bad_arguments_name_themselves(kwargs, word):
    with pytest.raises(ValueError, match=word):
        RayExecutor(**kwargs)


def test_the_worker_stream_replays_into_the_same_history(model, task):
    """train_run's chunks, replayed by a RemoteRun, give the thread runner's history and weights."""
    cfg = short(task)
    inputs = GridInputs(model, task.train, task.val, task.old_val, pretrained_id="p")
    remote = RemoteRun(model, cfg, "r")
    kinds = []
    for message in train_run(inputs, cfg, should_stop=lambda: False, every=0.0):
        kinds.append(type(message).__name__)
        if isinstance(message, Started):
            remote.begin(message)
        elif isinstance(message, Chunk):
            remote.apply(message)
        else:
            assert isinstance(message, Ended)
            remote.end(message)
    assert kinds[0] == "Started" and kinds[-1] == "Ended"
    slow = GridInputs(model, SlowLoader(task.train, 0.01), task.val, pretrained_id="p")  # ~0.3 s: it streams
    streamed = [type(m).__name__ for m in train_run(slow, cfg, should_stop=lambda: False, every=0.0)]
    assert streamed[0] == "Started" and streamed[-1] == "Ended" and "Chunk" in streamed[1:-1]
    local = ThreadExecutor().run_grid(GridInputs(model, task.train, task.val, task.old_val), [cfg], ["t"])[0]
    assert remote.state == State.FINISHED and remote.global_step == local.global_step
    assert remote.history.to_dict()["scalars"].keys() == local.history.to_dict()["scalars"].keys()
    for name in ("train_loss", "val_loss", "old_loss", "val_metric"):
        assert np.array_equal(remote.history.series(name)[1], local.history.series(name)[1]), name
    a, b = remote.model.state_dict(), local.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_what_if_builder_offers_ray_when_it_is_importable(model, task, tmp_path, monkeypatch):
    from retrain_widgets.widgets import whatif

    studio = HeadlessStudio(model, task.train, task.val, config=short(task), store=False)
    builder = whatif.WhatIfBuilder(studio)
    assert builder.where.layout.display is None and builder.executor() is None  # shown; this kernel by default
    builder.where.value = "ray"
    executor = builder.executor()
    assert isinstance(executor, RayExecutor) and builder.executor() is executor and not ray.is_initialized()
    monkeypatch.setattr(whatif, "ray_available", lambda: False)
    assert whatif.WhatIfBuilder(studio).where.layout.display == "none"


# ====================================================================== the clusters
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end(proc: subprocess.Popen) -> None:
    """End a `ray start --block` we started (it ends the processes it started), by its group id."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@contextlib.contextmanager
def _token_auth(token: str):
    """This process uses token authentication with ``token`` inside the block; the environment and
    Ray's state as before after it. Ray reads the mode when imported and caches the token, so both are
    refreshed (Config, then the token cache: ``reset_auth_token_state``), on the way in and out."""
    saved = {name: os.environ.get(name) for name in AUTH_VARS}
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    reset_auth_token_state()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_auth_token_state()


def _two_node_cluster(tmp: str):
    """`ray start --head` and one more node, on loopback; yields the address. Token authentication is
    on: both nodes and this process (the driver) get a random token for the cluster's lifetime."""
    port = _free_port()
    token = secrets.token_hex(32)
    env = {**{k: v for k, v in os.environ.items() if k not in AUTH_VARS}, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    log = open(os.path.join(tmp, "ray-cluster.log"), "w")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([RAY_CLI, "start", "--head", f"--port={port}", "--include-dashboard=false",
                               f"--temp-dir={tmp}", *common], stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)]
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the head node did not start within 120 s"
                time.sleep(0.5)
        address = f"127.0.0.1:{port}"
        procs.append(subprocess.Popen([RAY_CLI, "start", f"--address={address}", *common], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True))
        with _token_auth(token):
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
                while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                    assert time.monotonic() < deadline, "the second node did not join within 120 s"
                    time.sleep(0.5)
                yield address
            finally:
                if ray.is_initialized():
                    ray.shutdown()
    finally:
        for proc in reversed(procs):
            _end(proc)
        log.close()


@pytest.fixture(scope="module", params=["two-node", "local"])
def cluster(request, tmp_path_factory):
    """Makes RayExecutors on a two-node loopback cluster (1 CPU each), then on a local instance (2 CPUs).

    In this order: after a local instance was shut down in the same process, actors made on the
    loopback cluster die before they run (Ray 2.60, reproduced with a bare actor); the other way
    round works."""
    if request.param == "local":
        first = RayExecutor(num_cpus=2)
        first.connect()
        try:
            yield lambda **kw: RayExecutor(num_cpus=2, **kw)
        finally:
            first.shutdown()
    else:
        # a short folder: Ray's AF_UNIX socket paths under it must stay within 107 bytes (pytest's own
        # temporary folders under xdist are too deep)
        tmp = tempfile.mkdtemp(prefix="rwray", dir="/tmp")
        try:
            for address in _two_node_cluster(tmp):
                yield lambda address=address, **kw: RayExecutor(address=address, **kw)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


JOIN = """
import sys
from retrain_widgets import RayExecutor
try:
    RayExecutor(address=sys.argv[1]).connect()
except Exception as exc:
    print(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
else:
    print("joined")
"""


def test_the_cluster_refuses_a_driver_without_its_token(cluster):
    """Token authentication is on: another process joins with the cluster's token, not with a wrong
    one nor without one; RayExecutor then says what to set (Ray says only that it could not connect)."""
    address = cluster().address or ray.get_runtime_context().gcs_address
    clean = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    own = {"RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]} if "RAY_AUTH_TOKEN" in os.environ else {}  # else ~/.ray
    envs = {"own token": {**clean, "RAY_AUTH_MODE": "token", **own},
            "wrong token": {**clean, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
            "no token": clean}
    procs = {name: subprocess.Popen([sys.executable, "-c", JOIN, address], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True) for name, env in envs.items()}
    said = {name: proc.communicate(timeout=180)[0].strip().splitlines()[-1:] for name, proc in procs.items()}
    assert said["own token"] == ["joined"], said
    for name in ("wrong token", "no token"):
        text = said[name][0] if said[name] else ""
        assert text.startswith("builtins.ConnectionError: RayExecutor could not join the Ray cluster at "), said
        assert "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the token>" in text and "~/.ray/auth_token" in text, text
    assert "RAY_AUTH_MODE is not set here" in said["no token"][0]
    assert "which this cluster may not accept" in said["wrong token"][0]


def _studio(model, task, store):
    return HeadlessStudio(model, task.train, task.val, task.old_val, config=short(task), store=store)


def test_grid_results_stream_live_and_are_stored(cluster, model, task, tmp_path):
    """Same numbers as the thread runner; history streamed in order while it runs; recorded by this
    process; restore bit-identical; the pretrained model and loaders shipped once; cache in each worker."""
    grid = {"lr": [1e-3, 3e-3]}
    studio = _studio(model, task, tmp_path / "store")
    seen: dict[int, list[tuple[str, int, str]]] = {}

    def follow(payload):
        run = payload.run
        log = seen.setdefault(id(run), [])
        run.on(Event.PUBLISH, lambda i: log.append(("publish", i.step, run.state.value)))
        run.on(Event.EPOCH_END, lambda i: log.append(("epoch", i.step, run.state.value)))
        run.on(Event.STATE_CHANGE, lambda i: log.append(("state", i.step, i.data["state"].value)))

    studio.on(Topic.RUN, follow)
    said = []
    studio.on(Topic.QUEUE, lambda p: said.append(p.text))
    studio.on(Topic.ERROR, lambda p: said.append(repr(p.error)))
    executor = cluster()
    studio.what_if(grid, wait=True, executor=executor)
    remote = studio.runs
    assert [type(r) for r in remote] == [RemoteRun, RemoteRun] and executor.puts == 1, said
    assert all(r.state == State.FINISHED for r in remote), [r.message for r in remote]
    local = {r.name: r for r in run_grid(model, grid, task.train, task.val, task.old_val, config=short(task))}
    for run in remote:
        twin = local[run.name]
        for name in ("train_loss", "val_loss", "old_loss", "val_metric", "old_metric"):
            np.testing.assert_allclose(run.history.series(name)[1], twin.history.series(name)[1], rtol=1e-4,
                                       err_msg=name)
        assert run.history.meta["feature_cache"]["state"] == "built"  # built inside the worker
        log = seen[id(run)]
        publishes = [step for kind, step, state in log if kind == "publish"]
        assert len(publishes) >= 3 and publishes == sorted(publishes)
        assert any(state == "running" and 0 < step < run.total_steps for kind, step, state in log
                   if kind == "publish"), "no chunk arrived while the run was running"
        assert log[-1] == ("state", run.total_steps, "finished")
    store = RunStore(tmp_path / "store")
    records = {r.name: r for r in store.runs()}
    assert len(records) == 2
    for run in remote:
        key = studio.book.key_of(run)
        rec = store.get(key)
        assert rec.state == "finished" and rec.has_weights and rec.metrics["steps"] == run.total_steps
        restored = store.restore(key, model).state_dict()
        for name, tensor in run.model.state_dict().items():
            assert torch.equal(restored[name], tensor), name
        assert np.array_equal(store.history(key).series("train_loss")[1], run.history.series("train_loss")[1])
    executor.shutdown()


def test_two_nodes_share_the_grid(cluster, model, task):
    """Runs spread over the cluster's nodes (one CPU each on the two-node cluster). Before the stop and
    kill tests: after a worker is killed its node may take a while to offer its CPU again."""
    executor = cluster()
    runs = run_grid(model, {"lr": [1e-3, 3e-3]}, task.train, task.val, config=short(task), executor=executor)
    assert [r.state for r in runs] == [State.FINISHED, State.FINISHED]
    nodes = {r.host.split(":")[2] for r in runs}
    assert len(nodes) == len([n for n in ray.nodes() if n["Alive"]]), ([r.host for r in runs], ray.available_resources(),
                                                                       [(n["NodeID"][:12], n["Resources"]) for n in ray.nodes()])
    executor.shutdown()


def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.02)


def test_stop_cancels_the_grid_within_two_seconds(cluster, model, task, tmp_path):
    """Pending runs are dropped; running ones stop at a step boundary, stopped, with what they did kept."""
    studio = HeadlessStudio(model, task.train, task.val, task.old_val, config=task.config.replace(epochs=200),
                            store=tmp_path / "store")
    executor = cluster(max_concurrent=2)
    studio.what_if({"lr": [1e-3, 2e-3, 3e-3]}, executor=executor)
    _wait_for(lambda: len(studio.runs) == 2 and all(r.global_step > 5 for r in studio.runs), 180,
              "two runs began and trained")
    assert all(r.state == State.RUNNING for r in studio.runs)  # long runs: one that began late still finds the other running
    t0 = time.monotonic()
    studio.stop()
    _wait_for(lambda: all(r.state.final for r in studio.runs), 10, "both runs ended")
    took = time.monotonic() - t0
    print(f"stop took {took:.2f} s")  # shown with -s
    assert took < 2.0, f"stop took {took:.2f} s"
    studio.wait(30)
    assert len(studio.runs) == 2  # the third never began
    store = RunStore(tmp_path / "store")
    assert len(store.runs()) == 2
    for run in studio.runs:
        assert run.state == State.STOPPED and 0 < run.global_step < run.total_steps
        _, steps_loss = run.history.series("train_loss")
        assert len(steps_loss) == run.global_step  # every step it did is kept
        rec = store.get(studio.book.key_of(run))
        assert rec.state == "stopped" and rec.has_weights and rec.metrics["steps"] == run.global_step
        restored = store.restore(rec.id, model).state_dict()
        assert all(torch.equal(restored[k], v) for k, v in run.model.state_dict().items())
    executor.shutdown()


@pytest.mark.filterwarnings("ignore:state_change handler 'on_state' raised RunLost:RuntimeWarning")  # the store says it
def test_a_killed_worker_fails_its_run_and_the_others_finish(cluster, model, task, tmp_path):
    studio = HeadlessStudio(model, task.train, task.val, task.old_val, config=task.config, store=tmp_path / "store")
    executor = cluster(max_concurrent=2)
    studio.what_if({"epochs": [200, 3]}, executor=executor)  # the long one is killed
    _wait_for(lambda: len(studio.runs) == 2 and all(r.global_step > 2 for r in studio.runs), 180,
              "two runs began")
    victim, other = sorted(studio.runs, key=lambda r: -r.config.epochs)
    assert victim.state == State.RUNNING
    os.kill(int(victim.host.split(":")[1]), signal.SIGKILL)
    studio.wait(180)
    assert victim.state == State.FAILED and victim.global_step > 0
    assert "Worker" in victim.message or "died" in victim.message, victim.message
    assert other.state == State.FINISHED, other.message
    store = RunStore(tmp_path / "store")
    failed, done = store.get(studio.book.key_of(victim)), store.get(studio.book.key_of(other))
    assert failed.state == "failed" and not failed.has_weights and victim.message.split(":")[0] in failed.message
    assert len(store.history(failed.id).series("train_loss")[1]) > 0  # what arrived is kept
    assert done.state == "finished" and done.has_weights
    executor.shutdown()


def test_a_config_that_does_not_fit_fails_alone(cluster, model, task):
    """The first-batch check fails in the worker: that run failed with the reason, the other finishes."""
    said = []
    executor = cluster()
    inputs = GridInputs(model, task.train, task.val)
    configs = [short(task, loss="bce"), short(task, loss="ce")]  # cross-entropy on a 1-unit head does not fit
    runs = executor.run_grid(inputs, configs, ["fits", "does not fit"], say=said.append)
    by_name = {r.name: r for r in runs}
    assert by_name["fits"].state == State.FINISHED
    bad = by_name["does not fit"]
    assert bad.state == State.FAILED and bad.global_step == 0 and "LossMismatchError" in bad.message, bad.message
    assert any(text.startswith("✗ does not fit: ") for text in said), said
    executor.shutdown()


def test_gpus_the_cluster_does_not_have_are_refused_before_anything_is_shipped(cluster, model, task, tmp_path):
    """Ray would queue a task asking for a GPU a CPU-only cluster lacks forever: refused with a clear
    message, in the dashboard's place for it too (the what-if queue's error)."""
    executor = cluster(gpus_per_run=1)
    executor.connect()
    if ray.cluster_resources().get("GPU", 0) >= 1:
        pytest.skip("this cluster has a GPU")
    with pytest.raises(ValueError, match=r"gpus_per_run=1\): the Ray cluster has 0 GPU\(s\).*gpus_per_run=0"):
        executor.run_grid(GridInputs(model, task.train, task.val), [short(task)], ["on a GPU"])
    assert executor.puts == 0
    studio = _studio(model, task, tmp_path / "store")
    said = []
    studio.on(Topic.QUEUE, lambda p: said.append(p.text))
    studio.on(Topic.ERROR, lambda p: said.append(str(p.error)))
    studio.what_if({"lr": [1e-3]}, wait=True, executor=executor)
    assert studio.runs == [] and any("0 GPU(s)" in text for text in said), said
    executor.shutdown()
