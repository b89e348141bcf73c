"""The Ray side of :class:`~retrain_widgets.distributed.ray_executor.RayExecutor`: the task that
trains one run (a streaming generator over :func:`~retrain_widgets.distributed.worker.train_run`)
and the small actor that tells running tasks to stop. Imported only once ray is known to be there.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import ray

from ..core.config import RunConfig
from .worker import GridInputs, train_run

__all__ = ["StopBoard", "remote_train", "StopPoll", "remote_parts"]


class StopBoard:
    """Which runs of the grid should stop: all of them (:meth:`stop` with no index) or some."""

    def __init__(self) -> None:
        self.everything = False
        self.some: set[int] = set()

    def reset(self) -> bool:
        self.everything, self.some = False, set()
        return True

    def stop(self, index: int | None = None) -> None:
        if index is None:
            self.everything = True
        else:
            self.some.add(index)

    def stopped(self, index: int) -> bool:
        return self.everything or index in self.some


class StopPoll:
    """``should_stop()`` for one run: asks the board at most every ``every`` seconds, never waiting
    for the answer (the next call reads it)."""

    def __init__(self, board: Any, index: int, every: float = 0.1) -> None:
        self.board, self.index, self.every = board, index, every
        self.value = bool(ray.get(board.stopped.remote(index), timeout=60))
        self._ref: Any = None
        self._last = time.monotonic()

    def __call__(self) -> bool:
        if self.value:
            return True
        if self._ref is not None:
            ready, _ = ray.wait([self._ref], timeout=0)
            if ready:
                self.value, self._ref = bool(ray.get(self._ref)), None
        now = time.monotonic()
        if self._ref is None and now - self._last >= self.every:
            self._ref, self._last = self.board.stopped.remote(self.index), now
        return self.value


def remote_train(inputs: GridInputs, config: RunConfig, board: Any, index: int, every: float, publish_every: int,
                 threads: int) -> Iterator[Any]:
    """One run of a grid on this worker: what :func:`train_run` yields, streamed to the driver."""
    host = f"{socket.gethostname()}:{os.getpid()}:{ray.get_runtime_context().get_node_id()[:12]}"
    yield from train_run(inputs, config, should_stop=StopPoll(board, index), every=every,
                         publish_every=publish_every, threads=threads, host=host)


def remote_parts() -> tuple[Any, Any]:
    """(the stop board's actor class, the training task), made when a grid starts: importing this
    module registers nothing with Ray."""
    return ray.remote(num_cpus=0)(StopBoard), ray.remote(max_retries=0)(remote_train)
