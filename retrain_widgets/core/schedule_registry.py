"""The schedule registry: :class:`ScheduleSpec` and :func:`register` / :func:`get` /
:func:`available`.

The built-in shapes register themselves in :mod:`retrain_widgets.core.schedule_shapes`;
:mod:`retrain_widgets.core.schedules` builds and previews schedulers by name and re-exports
everything public here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .registry import Param, Registry


@dataclass(frozen=True)
class ScheduleSpec:
    """One named schedule shape.

    Parameters
    ----------
    name
        Registry name, e.g. ``"cosine"``.
    description
        One line, shown in a picker.
    params
        Keyword parameters with their defaults and ranges (for the UI and for validation). A
        default of ``None`` means "derived from ``total_steps``"; the parameter's ``help``
        says how.
    build
        ``build(optimizer, total_steps, **kwargs) -> scheduler``. It receives the kwargs
        returned by :func:`resolve_kwargs` (every parameter present, derived ones filled).
    metric_driven
        ``True`` when the scheduler is stepped with a validation metric
        (``sched.step(metric)``) rather than once per optimizer step.
    resolve
        Optional ``resolve(total_steps, kwargs) -> kwargs``: fills the ``None`` defaults from
        ``total_steps`` and checks what :class:`~retrain_widgets.core.registry.Param` cannot
        (open bounds, rules involving ``total_steps``), raising ``ValueError``.
    """

    name: str
    description: str
    params: dict[str, Param]
    build: Callable[..., Any]
    metric_driven: bool = False
    resolve: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None


REGISTRY: Registry[ScheduleSpec] = Registry(kind="schedule")


def available() -> list[str]:
    """Names of the registered schedule shapes, in registration order."""
    return REGISTRY.available()


def get(name: str) -> ScheduleSpec:
    """Return the :class:`ScheduleSpec` called ``name``.

    Raises
    ------
    ValueError
        If no schedule has that name (the message suggests the closest names).
    """
    return REGISTRY.get(name)


def register(
    name: str,
    build: Callable[..., Any],
    *,
    params: Mapping[str, Param] | None = None,
    description: str = "",
    metric_driven: bool = False,
    overwrite: bool = False,
    resolve: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> ScheduleSpec:
    """Register a schedule shape and return its :class:`ScheduleSpec`.

    Parameters
    ----------
    name
        Registry name.
    build
        ``build(optimizer, total_steps, **kwargs) -> scheduler``; it should scale each param
        group relative to that group's own learning rate.
    params
        Keyword parameters of ``build`` (name -> :class:`Param`).
    description
        One line for the picker.
    metric_driven
        ``True`` if the scheduler is stepped with a validation metric.
    overwrite
        Replace an existing entry of the same name instead of raising ``ValueError``.
    resolve
        Optional hook filling derived defaults and checking values, see :class:`ScheduleSpec`.
    """
    if not callable(build):
        raise ValueError(f"schedule {name!r}: build must be callable, got {build!r}")
    params = dict(params or {})
    for key, param in params.items():
        if not isinstance(param, Param):
            raise ValueError(
                f"schedule {name!r}: parameter {key!r} must be described by a Param, got {param!r}"
            )
    spec = ScheduleSpec(
        name=name,
        description=description,
        params=params,
        build=build,
        metric_driven=bool(metric_driven),
        resolve=resolve,
    )
    return REGISTRY.register(name, spec, overwrite=overwrite)
