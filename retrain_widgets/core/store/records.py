"""What the store hands out: :class:`RunRecord`, :class:`UnknownRun`, and the run ids."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig

__all__ = ["RunRecord", "UnknownRun", "RECORD_COLUMNS", "record_of_row", "new_id", "is_id", "check_id",
           "check_name"]

_ID_RE = re.compile(r"^[0-9a-z][0-9a-z-]{0,63}$")  # no dot, no slash: safe as a file name

#: The ``runs`` columns a :class:`RunRecord` is made of, in :func:`record_of_row`'s order.
RECORD_COLUMNS = ("id, name, state, message, created, started, ended, config, metrics, pretrained_id, "
                  "has_weights, notebook")


@dataclass(frozen=True)
class RunRecord:
    """One run as stored.

    Attributes
    ----------
    id, name
        The run's id (short, sortable by creation time) and its editable name.
    state, message
        ``idle``, ``running``, ``paused``, ``stopped``, ``finished``, ``failed`` or
        ``interrupted`` (its process ended while it trained); the message says why it ended
        and notes what could not be stored.
    created, started, ended
        Unix times (``started`` / ``ended`` are ``None`` until they happen).
    config
        ``RunConfig.to_dict()``, or ``{"loss": "<name>"}`` when the loss is an unregistered
        callable (the message says so).
    metrics
        ``steps``, ``total_steps``, ``train_loss`` (mean over the last 10 % of steps),
        ``val_loss``, ``val_metric``, ``old_loss``, ``old_metric``, ``metric`` (its name),
        ``old_metric_name``, ``higher_is_better``, ``mean_alignment`` and ``old_batch_loss`` (the
        alignment probe); those not measured are absent. Saved with
        every save, final when the run has ended.
    pretrained_id
        :func:`~retrain_widgets.core.store.fingerprint` of the pretrained weights: runs from
        the same pretrained model share it.
    has_weights
        Whether the trained weights were saved (when the run ended).
    notebook
        The notebook the run was made in, relative to the folder that holds the store
        (:func:`~retrain_widgets.notebook.notebook_key`); ``None`` outside a notebook and for
        runs stored before schema version 2.
    """

    id: str
    name: str
    state: str
    message: str
    created: float
    started: float | None
    ended: float | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    pretrained_id: str | None
    has_weights: bool
    notebook: str | None = None

    def config_obj(self) -> RunConfig:
        """The run's :class:`RunConfig` (``RunConfig.from_dict(self.config)``)."""
        try:
            return RunConfig.from_dict(self.config)
        except ValueError as exc:
            raise ValueError(f"the config of run {self.id} cannot be rebuilt: {exc}"
                             + (f" (stored note: {self.message})" if self.message else "")) from exc


class UnknownRun(KeyError):
    """No run with this id in the store (the message lists a few ids)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown run"


def record_of_row(row: tuple[Any, ...]) -> RunRecord:
    """The :class:`RunRecord` of a row of :data:`RECORD_COLUMNS`."""
    run_id, name, state, message, created, started, ended, config, metrics, pretrained_id, has_weights, notebook = row
    return RunRecord(id=run_id, name=name, state=state, message=message, created=created, started=started,
                     ended=ended, config=json.loads(config), metrics=json.loads(metrics),
                     pretrained_id=pretrained_id, has_weights=bool(has_weights), notebook=notebook)


def new_id() -> str:
    """Milliseconds since 1970 in base 36 (9 characters: sortable) + 4 random hex digits."""
    ms = int(time.time() * 1000)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while ms:
        ms, r = divmod(ms, 36)
        out = digits[r] + out
    return f"{out.rjust(9, '0')}-{secrets.token_hex(2)}"


def is_id(run_id: Any) -> bool:
    """Whether ``run_id`` has the shape of a run id (and so is safe as a file name)."""
    return isinstance(run_id, str) and bool(_ID_RE.match(run_id))


def check_id(run_id: Any) -> str:
    """``run_id`` when it has the shape of a run id, else :class:`UnknownRun`."""
    if not is_id(run_id):
        raise UnknownRun(f"{run_id!r} is not a run id")
    return run_id


def check_name(name: Any) -> str:
    """A run's name: a non-empty string."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a run's name must be a non-empty string, got {name!r}")
    return name
