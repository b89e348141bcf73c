"""Run names that tell runs apart: ``#7 bce · head only · lr 0.00159 · cosine``.

A run's name is its number and what it is. Numbers continue across kernel restarts: the next
one is one above the highest ``#N`` among the runs already stored for the same notebook and
pretrained model (:meth:`~retrain_widgets.runbook.RunBook.next_number`). Numbers (the LR,
L2-SP, any float) are written with 3 significant digits. A what-if run is named by the values
its grid varies (``#8 focal · lr 0.01``), not by its place in the queue.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["numbered", "number_of", "next_number", "run_label", "variant_label", "value_text"]

_NUMBER = re.compile(r"^#(\d+)(?:\s|$)")


def numbered(number: int, label: str) -> str:
    return f"#{number} {label}"


def number_of(name: str) -> int | None:
    """The ``N`` of a name that starts with ``#N``; ``None`` for other names."""
    match = _NUMBER.match(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def next_number(names: Iterable[str]) -> int:
    """One above the highest ``#N`` among ``names`` (1 when there is none)."""
    return max((n for n in map(number_of, names) if n is not None), default=0) + 1


def value_text(value: Any) -> str:
    """A config value, short: floats to 3 significant digits, lists joined, a callable by name."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {value_text(v)}" for k, v in value.items()) if value else "none"
    if callable(value):
        return getattr(value, "__name__", "custom")
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _frozen(value: Any) -> str:
    return f"frozen {value_text(value)}" if value else "nothing frozen"


#: How one field and its value read in a name (other fields: ``"<field> <value>"``).
FIELD_TEXT: dict[str, Callable[[Any], str]] = {
    "loss": value_text,
    "schedule": value_text,
    "strategy": value_text,
    "frozen": _frozen,
    "gradual": lambda v: "gradual" if v else "not gradual",
    "frozen_eval": lambda v: "frozen in eval mode" if v else "frozen in train mode",
    "distill": lambda v: f"distill {value_text(v)}" if v else "no distill",
}


def field_text(field: str, value: Any) -> str:
    fn = FIELD_TEXT.get(field)
    return fn(value) if fn is not None else f"{field} {value_text(value)}"


def run_label(cfg: Any, strategy: str) -> str:
    """``bce · head only · lr 0.00159 · cosine`` (+ ``distill``, ``l2sp …``) for a
    :class:`~retrain_widgets.core.config.RunConfig` and its freezing strategy."""
    if strategy == "custom":
        strategy = _frozen(cfg.frozen) if cfg.frozen else "full"
    extras = [x for x, on in (("distill", cfg.distill is not None), (f"l2sp {value_text(float(cfg.l2sp))}",
                                                                      cfg.l2sp > 0)) if on]
    return " · ".join([value_text(cfg.loss), strategy, f"lr {value_text(float(cfg.lr))}", cfg.schedule, *extras])


def variant_label(variant: dict[str, Any], variants: Sequence[dict[str, Any]]) -> str:
    """A what-if run by the values it varies: the fields whose value differs among ``variants``
    (all of its fields when none does)."""
    varied = [k for k in variant if len({repr(v.get(k)) for v in variants}) > 1] or list(variant)
    return " · ".join(field_text(k, variant[k]) for k in varied)
