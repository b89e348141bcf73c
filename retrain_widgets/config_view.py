"""The studio's config, read-only: ``studio.config`` can be read, copied and compared, never edited.

``studio.config.lr = -1.0`` would skip the config's checks, and ``studio.config.frozen.append(...)``
would change the state without any view showing it. So the studio holds its config as a
:class:`ReadOnlyConfig`, a :class:`~retrain_widgets.core.config.RunConfig` whose fields (and the
lists and dicts in them) refuse every in-place edit with a :class:`ReadOnlyConfigError` that names
the way that works: ``studio.set(lr=...)`` (validated, and every view shows it), or a whole config
assigned to ``studio.config``.

Everything else a ``RunConfig`` does still works: it compares equal to a ``RunConfig`` with the
same fields, and :meth:`~ReadOnlyConfig.replace`, ``copy.copy``, ``copy.deepcopy`` and ``pickle``
give a plain, editable ``RunConfig``. Plain Python: no widget is imported here.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, NoReturn

from .core.config import RunConfig

__all__ = ["ReadOnlyConfig", "ReadOnlyConfigError", "read_only", "thawed"]


class ReadOnlyConfigError(AttributeError):
    """An in-place edit of the studio's config (``studio.config.lr = ...``), which is refused."""


def _refuse(what: str, how: str) -> NoReturn:
    raise ReadOnlyConfigError(
        f"studio.config is read-only, so {what} was refused (an in-place edit would skip the config's "
        f"checks and no view would show it): use studio.set({how}) instead (validated; every view shows it), "
        f"or assign a whole config: studio.config = studio.config.replace({how})")


class _Field:
    """What a read-only list or dict knows of itself: the config field that holds it."""

    _field: str = "a field"

    def _refused(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        _refuse(f"an edit of studio.config.{self._field}", f"{self._field}=...")


class ReadOnlyList(_Field, list):  # type: ignore[misc]
    """A list field of the studio's config: equal to a list, but every edit is refused."""

    append = extend = insert = remove = pop = clear = sort = reverse = _Field._refused
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _Field._refused

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:  # copies and pickles are plain lists
        return list, (list(self),)


class ReadOnlyDict(_Field, dict):  # type: ignore[misc]
    """A dict field of the studio's config: equal to a dict, but every edit is refused."""

    update = setdefault = pop = popitem = clear = _Field._refused
    __setitem__ = __delitem__ = __ior__ = _Field._refused

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:  # copies and pickles are plain dicts
        return dict, (dict(self),)


def _freeze(value: Any, name: str) -> Any:
    if isinstance(value, list):
        frozen: Any = ReadOnlyList(_freeze(v, name) for v in value)
    elif isinstance(value, dict):
        frozen = ReadOnlyDict((k, _freeze(v, name)) for k, v in value.items())
    else:
        return value
    object.__setattr__(frozen, "_field", name)
    return frozen


def _thaw(value: Any) -> Any:
    if isinstance(value, list):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    return value


class ReadOnlyConfig(RunConfig):
    """A validated :class:`RunConfig` that refuses in-place edits (see the module). Build one with
    :func:`read_only`."""

    def __new__(cls, *args: Any, **kwargs: Any) -> RunConfig:  # type: ignore[misc]
        """``ReadOnlyConfig(...)`` (``dataclasses.replace`` too) makes a plain, validated RunConfig;
        :func:`read_only` makes the read-only ones."""
        return RunConfig(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        _refuse(f"studio.config.{name} = {value!r}", f"{name}={value!r}")

    def __delattr__(self, name: str) -> NoReturn:
        _refuse(f"del studio.config.{name}", f"{name}=...")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunConfig):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(RunConfig))

    __hash__ = None  # type: ignore[assignment]  # as RunConfig's

    def __repr__(self) -> str:
        return repr(thawed(self))

    def validate(self) -> ReadOnlyConfig:
        """Already valid (it was checked before it became read-only)."""
        return self

    def replace(self, **changes: Any) -> RunConfig:
        """A validated, editable copy with ``changes`` applied."""
        return thawed(self).replace(**changes)

    def __copy__(self) -> RunConfig:
        return thawed(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> RunConfig:
        return copy.deepcopy(thawed(self), memo)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:  # a pickle holds a plain RunConfig
        return thawed, (thawed(self),)


def read_only(config: RunConfig) -> ReadOnlyConfig:
    """``config`` (already validated) as a :class:`ReadOnlyConfig`; one that is already read-only
    is returned as it is."""
    if isinstance(config, ReadOnlyConfig):
        return config
    view = object.__new__(ReadOnlyConfig)
    for f in dataclasses.fields(RunConfig):
        object.__setattr__(view, f.name, _freeze(getattr(config, f.name), f.name))
    return view


def thawed(config: RunConfig) -> RunConfig:
    """An editable :class:`RunConfig` with ``config``'s fields (lists and dicts copied), not validated
    again."""
    plain = object.__new__(RunConfig)
    for f in dataclasses.fields(RunConfig):
        setattr(plain, f.name, _thaw(getattr(config, f.name)))
    return plain
