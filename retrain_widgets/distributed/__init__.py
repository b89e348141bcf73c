"""What-if grids past one machine: runs on Ray workers, streamed back into this process.

- :mod:`.worker` -- what a worker runs: one run of a grid, as a stream of messages (no ray).
- :mod:`.remote_run` -- :class:`RemoteRun`, that stream as a :class:`~retrain_widgets.core.run.Run`.
- :mod:`.ray_executor` -- :class:`RayExecutor`, the executor (imports ray when one is made).
- :mod:`.ray_tasks` -- the Ray task and the stop actor (imports ray).

``import retrain_widgets.distributed`` does not import ray.
"""

from __future__ import annotations

from .ray_executor import RAY_EXTRA, RayExecutor, require_ray
from .remote_run import RemoteRun, RunLost
from .worker import GridInputs

__all__ = ["RayExecutor", "RemoteRun", "RunLost", "GridInputs", "require_ray", "RAY_EXTRA"]
