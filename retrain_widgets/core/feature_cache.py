"""The frozen-feature cache: compute the frozen part of a model once per sample, train the rest on it.

A head-only what-if on a big backbone spends almost all of its time in the frozen backbone's
forward pass, the same every epoch of every run. When the trainable part of the model is a
*suffix* whose input is one tensor (the head, or the head and the top blocks of a Sequential)
and the frozen part is deterministic, :class:`FeatureCache` computes that input once per
sample and gives the engine, for each pass over a loader, batches of ``(cached inputs,
targets)`` in the loader's own sample order, and a forward that runs only the suffix.

``RunConfig.cache_features``: ``"auto"`` caches when it is safe and says why not otherwise;
``True`` forces it past the checks that are a matter of judgement (dropout or augmentation
in the frozen part, with a warning); ``False`` turns it off. Whatever the choice, the state
and the reason are in ``history.meta["feature_cache"]``::

    {"state": "built" | "reused" | "refused" | "dropped" | "off", "reason": "...", "mb": 12.5,
     "trainable_part": ["classifier.1"], "loaders": {"train": {...}, "val": {...}}}

Caches live in one process-wide registry (:func:`cached_mb`, :func:`clear`), keyed by a
fingerprint of the frozen weights (and buffers), the frozen set, the modules' modes and the
data (the dataset object, its length and collate function): every run of a what-if grid that
shares them reuses one cache. The registry holds at most the memory bound (default
:data:`MEMORY_FRACTION` of the free RAM, or of the free GPU memory when training on CUDA;
``RunConfig.cache_max_mb``); older caches are dropped first. A dataset changed in place
keeps its cache: call :func:`clear` after changing one.

When unfreezing reaches below the cached part (a gradual stage, a live ``unfreeze()``), the
cache is dropped for that run: the batch in hand is rebuilt from the dataset by its sample
indices and every later pass reads the loader itself.

The pieces: :mod:`~retrain_widgets.core.feature_registry` (the process-wide caches and plans, the
memory bound), :mod:`~retrain_widgets.core.feature_loader_cache` (one loader's cache and its
passes), :mod:`~retrain_widgets.core.feature_suffix` (the trainable suffix) and
:mod:`~retrain_widgets.core.feature_refusals` (why a loader is refused). This module holds
:class:`FeatureCache`, one run's view of them; every name stays importable from here.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .batches import Forward, default_forward, first_batch, logits_of, split_batch, to_device
from .feature_loader_cache import (
    CachedBatch,
    _chunk,
    _collate,
    _first_indices,
    _LoaderCache,
    _same,
    _standard_order,
)
from .feature_refusals import _augmentation, _loader_problem, _nondeterminism
from .feature_registry import (
    _PLANS,
    _REGISTRY,
    MEMORY_FRACTION,
    _data_key,
    _Entry,
    _frozen_key,
    _holder,
    cached_mb,
    clear,
    memory_bound_mb,
)
from .feature_suffix import (
    _ancestors,
    _Captured,
    _extend_to_output,
    _first_steps,
    _frozen_modules,
    _owner,
    _Refused,
    _resolve,
    _train_modes,
    lead_in,
    random_layer_hint,
    run_suffix,
)
from .fingerprints import fingerprint
from .names import Meta
from .rng import kept_rng

__all__ = ["FeatureCache", "CachedBatch", "MEMORY_FRACTION", "memory_bound_mb", "cached_mb", "clear",
           "EXPORT_NOTE", "describe"]

#: What the exported script says about the features (it recomputes them every epoch).
EXPORT_NOTE = ("# The frozen layers' outputs are recomputed every epoch here. In the notebook the engine computes\n"
               "# them once per sample and trains the trainable part on them (RunConfig.cache_features): the\n"
               "# same numbers up to float rounding, in less time.")


def describe(info: Mapping[str, Any] | None) -> str:
    """One line for a run's ``history.meta["feature_cache"]``: ``"cache: reused, 12.3 MB"``,
    ``"cache: refused: <reason>"``, ...; ``""`` for no run."""
    if not info:
        return ""
    state, reason, mb = info.get("state", ""), info.get("reason", ""), float(info.get("mb") or 0.0)
    if state in ("built", "reused"):
        warned = f" (forced although {'; '.join(info['warnings'])})" if info.get("warnings") else ""
        return f"cache: {state}, {mb:.1f} MB{warned}"
    if state == "pending":
        return "cache: not decided yet (on the first pass)"
    if state == "off":
        return "cache: off"
    return f"cache: {state}: {reason}" if reason else f"cache: {state}"


# ====================================================================== the per-run cache
class FeatureCache:
    """One run's view of the frozen-feature cache (see the module's docstring).

    Parameters
    ----------
    model
        The run's model (its trainable set decides the suffix).
    mode
        ``"auto"``, ``True`` or ``False`` (``RunConfig.cache_features``).
    forward
        The run's ``forward(model, batch)``; only the default forward is cached (it shows the targets).
    device
        The training device; caches live there.
    autocast
        A callable giving the run's autocast context (features are computed under it).
    teacher
        The distillation teacher, whose logits are cached too.
    pretrained
        The model the run copied (never modified): its frozen modules are fingerprinted instead
        of the copy's (the same weights), so the runs of a grid hash them once.
    max_mb
        The memory bound in MB (``None``: :func:`memory_bound_mb`'s default).
    meta
        The history's ``meta``: ``meta["feature_cache"]`` carries the state and the reason.
    stop
        ``stop() -> bool``: True when the run was asked to stop (the build gives up).
    """

    def __init__(self, model: nn.Module, mode: bool | str, forward: Forward, device: torch.device, *,
                 autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                 teacher: nn.Module | None = None, pretrained: nn.Module | None = None, max_mb: float | None = None,
                 meta: dict[str, Any] | None = None, stop: Callable[[], bool] = lambda: False) -> None:
        self.model, self.mode, self.user_forward = model, mode, forward
        self.device, self.autocast, self.teacher = device, autocast, teacher
        self.pretrained = pretrained
        self.max_mb, self.stop = max_mb, stop
        self.steps: tuple[str, ...] = ()
        self.active = mode is not False
        self.owned: frozenset[int] = frozenset()
        self._outside: list[nn.Parameter] = []
        # features seen once by the plan's probe: (id of the loader, sample indices, features); the
        # check's first batch (the batch, its loader, its indices); what the probe's forward gave
        self._seen: tuple[int, list[int], torch.Tensor] | None = None
        self._check: tuple[Any, Any, list[int]] | None = None
        self._probe_out: tuple[Any, Any] | None = None
        self._probe_inputs: torch.Tensor | None = None
        self.frozen_key: tuple[Any, ...] | None = None
        self.loaders: dict[tuple[int, str], _LoaderCache | None] = {}
        self._entry_mb: dict[int, float] = {}
        self.info: dict[str, Any] = {"state": "off" if mode is False else "pending",
                                     "reason": "RunConfig.cache_features=False" if mode is False else "",
                                     "mb": 0.0, "trainable_part": [], "loaders": {}}
        if meta is not None:
            meta[Meta.FEATURE_CACHE] = self.info

    # ------------------------------------------------------------------ what the engine calls
    def forward(self, model: nn.Module, batch: Any) -> tuple[Any, Any]:
        """The run's forward: the suffix on a :class:`CachedBatch`, the user's forward otherwise."""
        if not isinstance(batch, CachedBatch):
            if self._check is not None and batch is self._check[0] and model is self.model:
                return self._plan_on_check()
            return self.user_forward(model, batch)
        if model is self.teacher and batch.teacher is not None:
            return batch.teacher, batch.targets
        if not self.still_valid():
            return self.user_forward(model, to_device(batch.raw(), self.device, non_blocking=True))
        return run_suffix(model, self.steps, batch.inputs), batch.targets

    def batches(self, loader: Iterable[Any] | None, role: str) -> Iterable[Any]:
        """What to iterate for one pass over ``loader`` (``role``: "train", "val" or "old_val")."""
        if loader is None or self.mode is False:
            return loader  # type: ignore[return-value]
        return self._pass(loader, role)

    def first_batch(self, loader: Iterable[Any], role: str = "train") -> Any:
        """The loader's first batch for the run's check, on the device; as cached inputs when this
        loader's cache is already in the registry (another run of the grid built it), so the check
        costs no pass through the frozen part. It draws from the loader as reading its first
        batch does (the real first batch is read too)."""
        standard = _standard_order(loader)
        hit = self._registered(loader, role) if standard else None
        if hit is None and not (standard and role == "train" and not self.steps and self._eligible(loader)):
            return first_batch(loader, self.device, role)
        with kept_rng(self.device, loader):
            indices = _first_indices(loader)
        raw = first_batch(loader, self.device, role)
        if hit is None:  # the check's forward pass will be the plan's probe too
            self._check = (raw, loader, indices)
            return raw
        cached = _LoaderCache(loader, hit.tensors).batch(indices)
        with contextlib.suppress(ValueError):
            if _same(split_batch(raw)[2], cached.targets):
                return cached
        return raw

    def _eligible(self, loader: Any) -> bool:
        """Whether caching could apply to ``loader`` at all (what :meth:`_decide` checks first)."""
        return not (self.mode is False or not self.still_valid() or _loader_problem(loader) is not None
                    or self.user_forward is not default_forward
                    or (self.mode is not True and _augmentation(loader.dataset) is not None))

    def _plan_on_check(self) -> tuple[Any, Any]:
        """The check's forward pass on its first batch, which is the plan's probe too when no plan
        is known yet: the first run of a grid runs that batch through the model once."""
        assert self._check is not None
        batch, loader, indices = self._check
        self._check, self._probe_out = None, None
        with contextlib.suppress(_Refused), kept_rng(self.device):
            self._probe_inputs = None
            self._plan(batch)
            if self._probe_inputs is not None:
                self._seen = (id(loader), indices, self._probe_inputs)
        out, self._probe_out = self._probe_out, None
        return out if out is not None else self.user_forward(self.model, batch)

    def _registered(self, loader: Any, role: str) -> _Entry | None:
        """The registry's cache of ``loader`` for ``role`` when one is at hand, without building."""
        if not self._eligible(loader):
            return None
        try:
            with kept_rng(self.device), torch.no_grad(), self.autocast(), _train_modes(self.model, role == "train"):
                if not self.steps:
                    self._plan(None)
                if self.mode is not True and self.model.training and _nondeterminism(self.model, self.steps):
                    return None
                return _REGISTRY.get((*self._key(loader, role), _data_key(loader.dataset)[0]))
        except _Refused:
            return None

    def _pass(self, loader: Iterable[Any], role: str) -> Iterator[Any]:
        cache = self._cache_for(loader, role) if self.still_valid() else None
        if cache is None:
            yield from loader
            return
        yield from cache.epoch(self)

    def still_valid(self) -> bool:
        """False once unfreezing has reached into the cached part (the cache is then dropped)."""
        return self.active

    def follow(self, info: Any = None) -> None:
        """The trainable set changed (the run's ``TRAINABLE_CHANGE`` event): once unfreezing
        reaches into the cached part, the cache is dropped and the run goes on with full passes."""
        if self.active and self.owned and any(p.requires_grad for p in self._outside):
            self.active = False
            self.info.update(state="dropped", reason="unfreezing reached into the cached part: the run goes on "
                                                     "with full passes")

    # ------------------------------------------------------------------ deciding and building
    def _cache_for(self, loader: Any, role: str) -> _LoaderCache | None:
        key = (id(loader), role)
        if key not in self.loaders:
            try:
                self.loaders[key] = self._decide(loader, role)
            except _Refused as exc:
                self.loaders[key] = None
                self._report(role, "refused", str(exc), 0.0)
        return self.loaders[key]

    def _report(self, role: str, state: str, reason: str, mb: float, entry: _Entry | None = None) -> None:
        loaders = self.info["loaders"]
        loaders[role] = {"state": state, "reason": reason, "mb": round(mb, 3)}
        if entry is not None:
            self._entry_mb[id(entry)] = mb
        self.info["mb"] = round(sum(self._entry_mb.values()), 3)
        first = loaders.get("train") or next(iter(loaders.values()))
        self.info.update(state=first["state"], reason=first["reason"])

    def _judgement(self, reason: str | None) -> None:
        """A refusal ``True`` overrides (with a warning)."""
        if reason is None:
            return
        if self.mode is not True:
            raise _Refused(reason)
        warnings.warn(f"cache_features=True although {reason}", UserWarning, stacklevel=2)
        self.info.setdefault("warnings", []).append(reason)

    def _decide(self, loader: Any, role: str) -> _LoaderCache:
        problem = _loader_problem(loader)
        if problem is not None:
            raise _Refused(problem)
        if self.user_forward is not default_forward:
            raise _Refused("the run has a custom forward: the cache needs (inputs, targets) or {'labels': ...} "
                           "batches to know the targets")
        self._judgement(_augmentation(loader.dataset))
        with kept_rng(self.device), torch.no_grad(), self.autocast():
            first = list(range(min(len(loader.dataset), _chunk(loader))))
            if not first:
                raise _Refused("the loader's dataset is empty")
            if not self.steps:
                self._probe_inputs = None
                self._plan(to_device(_collate(loader, first), self.device))
                if self._probe_inputs is not None:
                    self._seen = (id(loader), first, self._probe_inputs)
                self._probe_out = None
            self._judgement(_nondeterminism(self.model, self.steps) if self.model.training else None)
            return self._lookup_or_build(loader, role)

    def _plan(self, batch: Any | None) -> None:
        """Find the trainable suffix; the first run on these frozen weights checks that it
        reproduces the model's predictions (later runs reuse what it found)."""
        model = self.model
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if not trainable:
            raise _Refused("nothing in the model is trainable")
        owner = _owner(model, trainable)
        steps = lead_in(model, _first_steps(model, owner, trainable))
        self.frozen_key = _frozen_key(model, owner, steps, self.pretrained)
        with _REGISTRY.lock:
            known = _PLANS.get(self.frozen_key)
        if known is None:
            if batch is None:
                raise _Refused("no plan yet")
            known = self._probe(owner, steps, batch)
            with _REGISTRY.lock:
                _PLANS[self.frozen_key] = known
                while len(_PLANS) > 64:
                    _PLANS.popitem(last=False)
        self.steps = known
        self.owned = frozenset(id(p) for s in self.steps for p in _resolve(model, s).parameters())
        self._outside = [p for p in model.parameters() if id(p) not in self.owned]
        self.info["trainable_part"] = list(self.steps)

    def _probe(self, owner: str, steps: list[str], batch: Any) -> tuple[str, ...]:
        """One forward pass in eval mode: the suffix's input, and the modules up to the predictions."""
        model = self.model
        outputs: dict[str, Any] = {}
        seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        handles = [_resolve(model, steps[0]).register_forward_pre_hook(
            lambda m, a, k: seen.append((tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in a), k)),
            with_kwargs=True)]  # a copy: the suffix may start with an in-place layer (ReLU(inplace=True))
        for name in {owner, *_ancestors(owner)}:
            handles.append(_resolve(model, name).register_forward_hook(
                lambda m, a, out, name=name: outputs.setdefault(name, out)))
        try:
            with _train_modes(model, False):
                self._probe_out = self.user_forward(model, batch)
                logits = logits_of(self._probe_out[0])
                if len(seen) != 1 or len(seen[0][0]) != 1 or seen[0][1] or not isinstance(seen[0][0][0], torch.Tensor):
                    raise _Refused(f"the trainable part {steps[0]!r} is not called once on one tensor")
                steps = _extend_to_output(model, owner, steps, outputs, logits)
                again = run_suffix(model, tuple(steps), seen[0][0][0])
                self._probe_inputs = seen[0][0][0].detach()  # these samples' features, seen once
        finally:
            for h in handles:
                h.remove()
        exact = torch.equal(again, logits) if self.device.type == "cpu" else torch.allclose(again, logits, 1e-5, 1e-6)
        if not exact:
            raise _Refused(f"running {steps} on their input does not reproduce the model's predictions")
        return tuple(steps)

    def _capture(self, batch: Any) -> torch.Tensor:
        box: list[torch.Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            box.append(args[0])
            raise _Captured

        handle = _resolve(self.model, self.steps[0]).register_forward_pre_hook(hook)
        try:
            self.user_forward(self.model, batch)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not box:
            raise _Refused(f"the model's forward did not reach its trainable part {self.steps[0]!r}")
        return box[0].detach()

    def _key(self, loader: DataLoader, role: str) -> tuple[Any, ...]:
        modes = tuple(m.training for _, m in _frozen_modules(self.model, self.steps))
        teacher = None
        if role == "train" and self.teacher is not None:
            teacher = fingerprint(self.teacher)
        dtype = torch.get_autocast_dtype(self.device.type) if torch.is_autocast_enabled(self.device.type) else None
        return (self.frozen_key, modes, teacher, str(self.device), str(dtype), id(loader.collate_fn))

    def _lookup_or_build(self, loader: DataLoader, role: str) -> _LoaderCache:
        data, refs = _data_key(loader.dataset)
        key = (*self._key(loader, role), data)
        bound = memory_bound_mb(self.device, self.max_mb)
        entry = _REGISTRY.get(key)
        state = "reused"
        if entry is None:
            entry = _Entry(self._build(loader, key[2] is not None, bound), refs + [_holder(loader.collate_fn)])
            _REGISTRY.put(key, entry, bound * 2**20)
            state = "built"
        self._report(role, state, "", entry.nbytes / 2**20, entry)
        return _LoaderCache(loader, entry.tensors)

    def _build(self, loader: DataLoader, with_teacher: bool, bound_mb: float) -> dict[str, torch.Tensor]:
        n, size = len(loader.dataset), _chunk(loader)
        parts: dict[str, list[torch.Tensor]] = {"inputs": [], "targets": []}
        if with_teacher:
            parts["teacher"] = []
        for start in range(0, n, size):
            if self.stop():
                raise _Refused("the run was stopped while the cache was being built")
            indices = list(range(start, min(n, start + size)))
            raw = _collate(loader, indices)
            batch = to_device(raw, self.device)
            targets = split_batch(batch)[2]
            if not isinstance(targets, torch.Tensor) or targets.ndim == 0 or len(targets) != len(indices):
                raise _Refused("the targets are not a tensor with one row per sample")
            inputs = self._capture(batch)
            if start == 0:
                self._check_first(loader, indices, raw, batch, inputs, targets, n, bound_mb)
            parts["inputs"].append(inputs)
            parts["targets"].append(targets)
            if with_teacher:
                assert self.teacher is not None
                parts["teacher"].append(logits_of(self.user_forward(self.teacher, batch)[0]).detach())
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        self._second_pass(loader, tensors["inputs"])
        return tensors

    def _check_first(self, loader: DataLoader, indices: list[int], raw: Any, batch: Any, inputs: torch.Tensor,
                     targets: torch.Tensor, n: int, bound_mb: float) -> None:
        """The memory bound, then two passes over the first batch: same samples, same features
        (when the plan's probe saw other samples of this loader, :meth:`_second_pass` compares)."""
        per_sample = (inputs.numel() * inputs.element_size() + targets.numel() * targets.element_size()) / len(indices)
        if self.teacher is not None:
            per_sample *= 1.1
        need = per_sample * n / 2**20
        if need > bound_mb:
            raise _Refused(f"the cache would take {need:.1f} MB, over the memory bound of {bound_mb:.1f} MB: raise "
                           f"RunConfig.cache_max_mb to cache anyway")
        if not _same(raw, _collate(loader, indices)):
            self._seen = None
            self._judgement("the dataset gives different samples for the same index on two passes (augmentation)")
        elif self._seen is None or self._seen[0] != id(loader) or self._seen[1] == indices:
            seen, self._seen = self._seen, None
            if not (seen is not None and seen[0] == id(loader) and torch.equal(inputs, seen[2])):
                self._same_twice(inputs, batch)

    def _second_pass(self, loader: DataLoader, inputs: torch.Tensor) -> None:
        """After the build: the samples the plan's probe saw (the check's first batch) have the
        same features; else the first chunk goes through the frozen part once more to compare."""
        seen, self._seen = self._seen, None
        if seen is None or seen[0] != id(loader):
            return
        rows = inputs[torch.as_tensor(seen[1], dtype=torch.long, device=inputs.device)]
        if not torch.equal(rows, seen[2]):
            first = list(range(min(len(inputs), _chunk(loader))))
            self._same_twice(inputs[: len(first)], to_device(_collate(loader, first), self.device))

    def _same_twice(self, inputs: torch.Tensor, batch: Any) -> None:
        if not torch.equal(inputs, self._capture(batch)):
            self._judgement(f"the frozen part gives different outputs for the same batch on two passes"
                            f"{random_layer_hint(self.model)}")
