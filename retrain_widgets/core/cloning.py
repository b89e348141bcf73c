"""``copy.deepcopy`` of a module tree, module by module.

A run trains a copy of the pretrained model, and a what-if grid makes one copy per run: on a
ResNet-50 ``copy.deepcopy`` spends about two thirds of its time walking the empty hook dicts
of every module in the generic way, not copying weights. :func:`clone_module` makes the same
copy as ``copy.deepcopy``: each module is rebuilt the way ``deepcopy`` rebuilds it (its class's
``__new__``, its ``__getstate__`` copied into ``__setstate__``), its parameters and buffers
through their own ``__deepcopy__``, every other attribute through ``copy.deepcopy``, all with
one memo, so a tied weight or a module used twice is copied once and stays shared. Only empty
containers and atomic values take a short cut (a fresh empty container, the value itself).
A module whose class changes how it is copied (``__deepcopy__``, ``__reduce_ex__``,
``__reduce__``, ``__getstate__``, ``__setstate__``, ``__slots__`` or a ``copyreg`` entry) is
copied by ``copy.deepcopy``, whole.
"""

from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Any, TypeVar

from torch import nn

__all__ = ["clone_module"]

M = TypeVar("M", bound=nn.Module)

_ATOMIC = frozenset({bool, int, float, complex, str, bytes, type(None)})
_EMPTY = frozenset({dict, OrderedDict, set, list, tuple})
_TENSOR_DICTS = ("_parameters", "_buffers")
_CLASS_OK: dict[type, bool] = {}


def clone_module(module: M) -> M:
    """A deep copy of ``module``, equal to ``copy.deepcopy(module)`` (see the module docstring)."""
    return _clone(module, {})


def _plain(cls: type) -> bool:
    """Whether ``cls`` is copied as ``nn.Module`` is: then the short cuts are exact."""
    ok = _CLASS_OK.get(cls)
    if ok is None:
        ok = (getattr(cls, "__deepcopy__", None) is None
              and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
              and cls.__getstate__ is nn.Module.__getstate__ and cls.__setstate__ is nn.Module.__setstate__
              and not copyreg._slotnames(cls) and cls not in copyreg.dispatch_table)
        _CLASS_OK[cls] = ok
    return ok


def _clone(module: Any, memo: dict[int, Any]) -> Any:
    found = memo.get(id(module))
    if found is not None:
        return found
    cls = type(module)
    if not _plain(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = module.__getstate__()
    new.__setstate__({key: _value(key, value, memo) for key, value in state.items()})
    return new


def _value(key: str, value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMIC:
        return value
    if key == "_modules" and kind is dict:
        return {name: None if child is None else _clone(child, memo) for name, child in value.items()}
    if key in _TENSOR_DICTS and kind is dict:
        return {name: copy.deepcopy(t, memo) for name, t in value.items()}
    if kind in _EMPTY and not value:
        return kind()
    return copy.deepcopy(value, memo)
