"""Small named registries with parameter descriptions.

Losses and scheduler shapes are looked up by name in a :class:`Registry`. Each entry
describes its keyword parameters with :class:`Param`, which is what the widgets use to
build their controls and what :class:`~retrain_widgets.core.config.RunConfig` uses to
validate ``loss_kwargs`` and ``schedule_kwargs``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Param", "Registry", "closest"]


def closest(name: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (for "did you mean" hints)."""
    hits = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if not hits:
        hits = [c for c in candidates if name and (name in c or c.endswith("." + name))][:n]
    return hits


@dataclass(frozen=True)
class Param:
    """Description of one keyword parameter of a loss or a schedule.

    Parameters
    ----------
    default
        Value used when the parameter is not given. ``None`` means "optional".
    kind
        ``"float"``, ``"log"`` (a float best shown on a log scale), ``"int"``, ``"bool"``,
        ``"choice"`` or ``"any"``.
    low, high
        Inclusive bounds for numeric kinds (``None``: unbounded).
    choices
        Allowed values for ``kind="choice"``.
    help
        One line shown next to the control.
    """

    default: Any = None
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    help: str = ""

    def validate(self, owner: str, name: str, value: Any) -> Any:
        """Return ``value`` converted to the parameter's kind, or raise ``ValueError``."""
        if value is None:
            return None
        where = f"{owner}: parameter {name!r}"
        if self.kind in ("float", "log"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where} must be a number, got {value!r}")
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):  # NaN, inf
                raise ValueError(f"{where} must be a finite number, got {value!r}")
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ValueError(f"{where} must be a whole number, got {value!r}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be True or False, got {value!r}")
        elif self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.kind in ("float", "log", "int"):
            if self.low is not None and value < self.low:
                raise ValueError(f"{where} must be >= {self.low}, got {value!r}")
            if self.high is not None and value > self.high:
                raise ValueError(f"{where} must be <= {self.high}, got {value!r}")
        return value


T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """A name -> entry mapping with helpful errors.

    Entries are expected to have a ``params`` attribute (a mapping of parameter name to
    :class:`Param`); :meth:`validate_kwargs` uses it.
    """

    kind: str
    _entries: dict[str, T] = field(default_factory=dict)

    def register(self, name: str, entry: T, *, overwrite: bool = False) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not overwrite:
            raise ValueError(f"a {self.kind} named {name!r} is already registered; pass overwrite=True to replace it")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Unregister ``name``; returns its entry."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            hint = closest(str(name), list(self._entries))
            extra = f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}{extra} Available: {', '.join(self._entries)}"
            ) from None

    def available(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def validate_kwargs(self, name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``kwargs`` against the entry's parameters; return them converted."""
        entry = self.get(name)
        params: Mapping[str, Param] = getattr(entry, "params", {})
        out: dict[str, Any] = {}
        for key, value in dict(kwargs).items():
            if key not in params:
                hint = closest(key, list(params))
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                known = ", ".join(params) or "none"
                raise ValueError(
                    f"{self.kind} {name!r} has no parameter {key!r}{extra} (its parameters: {known})"
                )
            out[key] = params[key].validate(f"{self.kind} {name!r}", key, value)
        return out
