"""``RayExecutor``: the runs of a what-if grid as Ray tasks, streamed back into this process.

Each run is one Ray task (:func:`~retrain_widgets.distributed.ray_tasks.remote_train`) that trains a
:class:`~retrain_widgets.core.engine.Retrainer` in a worker and streams its history back in
chunks (a streaming generator: each ``yield`` reaches the driver before the task ends); here a
:class:`~retrain_widgets.distributed.remote_run.RemoteRun` replays them, so the store (whose only
writer stays this process), comparisons and the studio's views see it as any run. The pretrained
model and the loaders are shipped once per grid (one ``ray.put``); each run gets its config. A
finished run's weights come back as the delta against the pretrained weights.

Stop: runs not begun are dropped (never submitted, or cancelled before they began), running ones
are told through a small actor (:class:`~retrain_widgets.distributed.ray_tasks.StopBoard`) and stop
at their next step boundary, keeping what they did. A worker that dies fails its run with the
reason; the other runs go on.

This module imports no ray; a ``RayExecutor`` imports it when made (a clear ``ImportError`` naming
``retrain_widgets[ray]`` when it is missing).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..core.config import RunConfig
from ..core.run import Run
from ..core.store import fingerprint
from .remote_run import RemoteRun
from .worker import Chunk, Ended, GridInputs, Started

__all__ = ["RayExecutor", "require_ray", "RAY_EXTRA"]

RAY_EXTRA = 'pip install "retrain_widgets[ray]"'


def require_ray() -> Any:
    """The ``ray`` module, or an ``ImportError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"RayExecutor needs Ray, which is not installed here: {RAY_EXTRA} "
                          f"(the retrain_widgets[ray] extra; {exc})") from exc
    return ray


def _count(name: str, value: Any, *, minimum: float, number: type = int, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (number is int and value != int(value)) \
            or value < minimum:
        kind = "a whole number" if number is int else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum:g}{' or None' if optional else ''}, got {value!r}")
    return number(value)


class RayExecutor:
    """Runs each run of a what-if grid as a Ray task.

    Parameters
    ----------
    address
        ``None``: a local Ray instance, started on first use (dashboard off, worker logs kept out
        of the notebook) unless one is already running in this process; ``"auto"``: the cluster
        this machine is a node of; ``"ray://host:port"``: a cluster through Ray Client.
    num_cpus
        CPUs of the local instance (``None``: all); ignored when attaching to a cluster.
    gpus_per_run
        GPUs each run asks for (fractions share a GPU: ``0.5`` puts two runs on one).
    max_concurrent
        Runs at once (``None``: as many as the cluster's CPUs, and GPUs when ``gpus_per_run``, hold).
    cpus_per_run
        CPUs each run asks for; torch in the worker uses that many threads.
    chunk_seconds, publish_every
        How often a worker sends what its run recorded (seconds), and how many steps its probes
        buffer between publishes.
    runtime_env
        Ray's ``runtime_env`` for the tasks (e.g. ``{"pip": [...]}`` on a cluster without the package).

    Examples
    --------
    >>> studio.what_if({"loss": ["bce", "focal"], "lr": [1e-3, 3e-3]}, executor=RayExecutor())
    >>> RayExecutor(address="ray://head:10001", gpus_per_run=1)
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, gpus_per_run: float = 0,
                 max_concurrent: int | None = None, *, cpus_per_run: float = 1, chunk_seconds: float = 0.25,
                 publish_every: int = 10, runtime_env: dict[str, Any] | None = None) -> None:
        if address is not None and not isinstance(address, str):
            raise ValueError(f"address must be None, 'auto' or 'ray://host:port', got {address!r}")
        self.address = address
        self.num_cpus = _count("num_cpus", num_cpus, minimum=1)
        self.gpus_per_run = _count("gpus_per_run", gpus_per_run, minimum=0, number=float, optional=False)
        self.max_concurrent = _count("max_concurrent", max_concurrent, minimum=1)
        self.cpus_per_run = _count("cpus_per_run", cpus_per_run, minimum=0, number=float, optional=False)
        self.chunk_seconds = _count("chunk_seconds", chunk_seconds, minimum=0.01, number=float, optional=False)
        self.publish_every = _count("publish_every", publish_every, minimum=1, optional=False)
        self.runtime_env = runtime_env
        self.ray = require_ray()
        self.startup_seconds: float | None = None  #: how long starting (or joining) Ray took, once it did
        self.puts = 0  #: objects shipped with ray.put (one per grid: the model and the loaders)
        self.started_here = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._board: Any = None
        self._waiting: dict[int, Any] = {}  # index -> the task of a run that has not begun

    # ================================================================== the cluster
    def connect(self) -> None:
        """Start the local instance, or attach to the cluster, unless this process already is."""
        ray = self.ray
        with self._lock:
            if ray.is_initialized():
                return
            t0 = time.perf_counter()
            quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
            if self.address is None:
                ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, **quiet)
            else:
                try:
                    ray.init(address=self.address, **quiet)
                except ConnectionError as exc:
                    raise ConnectionError(_unreachable(self.address, exc)) from exc
            self.startup_seconds = time.perf_counter() - t0
            self.started_here = True

    def shutdown(self) -> None:
        """End this executor's stop actor; disconnect from Ray when this executor connected (a local
        instance started here ends)."""
        ray = self.ray
        if self._board is not None and ray.is_initialized():
            ray.kill(self._board)
        if self.started_here and ray.is_initialized():
            ray.shutdown()
        self.started_here, self._board = False, None

    def slots(self) -> int:
        """Runs at once: :attr:`max_concurrent`, else what the cluster's CPUs (and GPUs) hold. A run
        that asks for more GPUs than the cluster has is refused here: Ray would queue it forever."""
        res = self.ray.cluster_resources()
        if self.gpus_per_run > res.get("GPU", 0):
            raise ValueError(
                f"RayExecutor(gpus_per_run={self.gpus_per_run:g}): the Ray cluster has "
                f"{res.get('GPU', 0):g} GPU(s) ({res.get('CPU', 0):g} CPUs), so no run could start. "
                f"Use gpus_per_run=0 to train on its CPUs, or attach to a cluster with GPUs "
                f"(RayExecutor(address='auto' or 'ray://host:port', gpus_per_run=...))")
        if self.max_concurrent is not None:
            return self.max_concurrent
        fits = [int(res.get("CPU", 1) // self.cpus_per_run)] if self.cpus_per_run > 0 else []
        if self.gpus_per_run > 0:
            fits.append(int(res.get("GPU", 0) // self.gpus_per_run))
        return max(1, min(fits) if fits else 1)

    # ================================================================== a grid
    def run_grid(self, inputs: GridInputs, configs: Sequence[RunConfig], names: Sequence[str], *,
                 adopt: Callable[[Run, str], None] | None = None, say: Callable[[str], None] | None = None
                 ) -> list[Run]:
        """Train ``configs`` as Ray tasks, at most :meth:`slots` at once; ``adopt(run, name)`` as each
        begins (from its reader thread). Returns the runs that began, once all ended."""
        from .ray_tasks import remote_parts  # imports ray: only here, once it is known to be there

        ray, say = self.ray, say or (lambda text: None)
        self.connect()
        slots = self.slots()  # refuses GPUs the cluster does not have, before anything is shipped
        self._stopping.clear()
        board_class, remote_train = remote_parts()
        if self._board is None:
            self._board = board_class.remote()
        ray.get(self._board.reset.remote(), timeout=120)
        if not inputs.pretrained_id:
            inputs = dataclasses.replace(inputs, pretrained_id=fingerprint(inputs.model))
        shared = ray.put(inputs)  # the model and the loaders: once for the whole grid
        self.puts += 1
        task = remote_train.options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, scheduling_strategy="SPREAD",
                                    **({"runtime_env": self.runtime_env} if self.runtime_env else {}))
        threads = max(1, int(self.cpus_per_run))
        free = threading.Semaphore(slots)
        adopting = threading.Lock()
        runs: list[RemoteRun] = []
        readers: list[threading.Thread] = []
        for index, (cfg, name) in enumerate(zip(configs, names)):
            while not free.acquire(timeout=0.1):
                if self._stopping.is_set():
                    break
            if self._stopping.is_set():
                break
            say(f"what-if {index + 1} of {len(configs)} on Ray: {name}")
            run = RemoteRun(inputs.model, cfg, name, stop=lambda r, i=index: self._board.stop.remote(i))
            stream = task.remote(shared, cfg, self._board, index, self.chunk_seconds, self.publish_every, threads)
            self._waiting[index] = stream
            reader = threading.Thread(target=self._read, args=(index, run, stream, adopt, adopting, free, say),
                                      name=f"retrain_widgets-ray-{index}", daemon=True)
            run.attach(reader)
            runs.append(run)
            readers.append(reader)
            reader.start()
        for reader in readers:
            reader.join()
        return [r for r in runs if r.started_at > 0 or (r.state.final and r.error is not None)]

    def stop(self) -> None:
        """Stop the grid: runs not begun are dropped, running ones stop at their next step boundary."""
        self._stopping.set()
        for stream in list(self._waiting.values()):
            self.ray.cancel(stream)
        if self._board is not None:
            self._board.stop.remote()

    def _read(self, index: int, run: RemoteRun, stream: Any, adopt: Callable[[Run, str], None] | None,
              adopting: threading.Lock, free: threading.Semaphore, say: Callable[[str], None]) -> None:
        """Reads one run's stream into its :class:`RemoteRun` (this thread is the run's :attr:`~RemoteRun.thread`)."""
        ray = self.ray
        try:
            for ref in stream:
                message = ray.get(ref)
                if isinstance(message, Started):
                    self._waiting.pop(index, None)
                    run.begin(message)
                    if adopt is not None:
                        with adopting:
                            adopt(run, run.name or f"run {index + 1}")
                elif isinstance(message, Chunk):
                    run.apply(message)
                elif isinstance(message, Ended):
                    run.end(message)
            if not run.state.final:
                run.drop()
        except Exception as exc:  # noqa: BLE001 - a task error, a dead worker or node: the run failed, the grid goes on
            ray.cancel(stream)  # when the error was ours (a view's handler), the worker must not train on
            began = run.started_at > 0
            if not began and self._stopping.is_set():
                run.drop()
            else:
                run.fail(_reason(exc), started=began)
                if not began:
                    say(f"✗ {run.name}: {run.message}")
        finally:
            self._waiting.pop(index, None)
            free.release()


def _unreachable(address: str, exc: BaseException) -> str:
    """Why joining the cluster at ``address`` failed, and what to check: Ray says only that it could
    not connect, also when the cluster refused this process for a missing or wrong token."""
    mode = os.environ.get("RAY_AUTH_MODE")
    sends = "sends no token: RAY_AUTH_MODE is not set here" if mode is None else (
        f"sends no token: RAY_AUTH_MODE={mode} here" if mode.lower() != "token" else
        "sends the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, which this cluster may not accept")
    return (f"RayExecutor could not join the Ray cluster at {address!r} ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no reason given'}). Check that it "
            f"runs and is reachable from here. If it uses token authentication (Ray >= 2.59 turns it on by "
            f"default), this process must send the cluster's token, and it {sends}. Set RAY_AUTH_MODE=token "
            f"and RAY_AUTH_TOKEN=<the token> (or put the token in ~/.ray/auth_token) in the environment "
            f"before the kernel starts: Ray reads them when it is imported. `ray get-auth-token` on the head "
            f"node prints the token.")


def _reason(exc: BaseException) -> str:
    """What went wrong, in one line: the user's exception inside a task error, else Ray's error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and type(cause).__name__ != "TaskCancelledError":
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"[:500]
