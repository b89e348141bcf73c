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
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from .batches import Forward, default_forward, first_batch, logits_of, split_batch, to_device
from .deterministic_transforms import undetermined
from .feature_suffix import dropout_hint, lead_in, random_layer_hint
from .fingerprints import fingerprint, hash_state
from .rng import kept_rng
from .tree import frozen_complement

__all__ = ["FeatureCache", "CachedBatch", "MEMORY_FRACTION", "memory_bound_mb", "cached_mb", "clear",
           "EXPORT_NOTE", "describe"]

#: Default memory bound: this share of the free RAM (or free GPU memory on CUDA).
MEMORY_FRACTION = 0.5

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


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class _Refused(Exception):
    """Internal: caching does not apply; the message says why."""


class _Captured(BaseException):
    """Internal: the trainable part's input was captured; stop the forward pass there."""


@dataclass
class CachedBatch:
    """One batch of a cached pass: the trainable part's ``inputs`` for the samples ``indices``
    (in the loader's order), their ``targets`` and, with distillation, the teacher's logits."""

    indices: list[int]
    inputs: torch.Tensor
    targets: torch.Tensor
    teacher: torch.Tensor | None
    source: _LoaderCache

    def raw(self) -> Any:
        """The batch the loader itself would have given (read again from the dataset)."""
        return self.source.collate(self.indices)


# ====================================================================== the registry
@dataclass
class _Entry:
    tensors: dict[str, torch.Tensor]
    holds: list[Callable[[], Any]]  # what the data key names (weak references where they can be)

    def alive(self) -> bool:
        return all(ref() is not None for ref in self.holds)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class _Registry:
    """Process-wide caches, least recently used dropped first when over the memory bound."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> _Entry | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None:
                return None
            if not entry.alive():  # the data it was built from are gone: an id may have been reused
                del self.entries[key]
                return None
            self.entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], entry: _Entry, bound_bytes: float) -> None:
        with self.lock:
            self.entries.pop(key, None)
            while self.entries and sum(e.nbytes for e in self.entries.values()) + entry.nbytes > bound_bytes:
                self.entries.popitem(last=False)
            self.entries[key] = entry

    def nbytes(self) -> int:
        with self.lock:
            return sum(e.nbytes for e in self.entries.values())


_REGISTRY = _Registry()


def cached_mb() -> float:
    """Memory held by the process-wide feature caches, in MB."""
    return _REGISTRY.nbytes() / 2**20


def clear() -> None:
    """Drop every cached feature (after changing a dataset in place, or to free the memory)."""
    with _REGISTRY.lock:
        _REGISTRY.entries.clear()
        _PLANS.clear()


def _holder(obj: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _data_key(dataset: Any) -> tuple[tuple[Any, ...], list[Callable[[], Any]]]:
    """What identifies a dataset's samples, and references to the objects the key names.

    A ``TensorDataset`` is known by its tensors (two datasets over the same tensors share a
    cache), a ``Subset`` by its dataset and indices, anything else by the object itself."""
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        key = tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device)) for t in tensors)
        return ("tensors", key), [_holder(t) for t in tensors]
    if isinstance(dataset, Subset):
        inner, refs = _data_key(dataset.dataset)
        return ("subset", inner, tuple(int(i) for i in dataset.indices)), refs
    return ("object", type(dataset).__qualname__, id(dataset), len(dataset)), [_holder(dataset)]


def _available_ram() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        import os

        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return 2.0**31


def memory_bound_mb(device: torch.device, max_mb: float | None = None) -> float:
    """The cache's memory bound: ``max_mb``, else :data:`MEMORY_FRACTION` of what is free on
    ``device`` (GPU memory on CUDA, RAM otherwise)."""
    if max_mb is not None:
        return float(max_mb)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return MEMORY_FRACTION * free / 2**20
    return MEMORY_FRACTION * _available_ram() / 2**20


# ====================================================================== the model's trainable suffix
def _resolve(model: nn.Module, name: str) -> nn.Module:
    for part in name.split(".") if name else ():
        model = getattr(model, part)
    return model


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _owner(model: nn.Module, trainable: set[int]) -> str:
    """The deepest module that holds every trainable parameter."""
    name, module = "", model
    while True:
        for child_name, child in module.named_children():
            if trainable <= {id(p) for p in child.parameters()}:
                name, module = _join(name, child_name), child
                break
        else:
            return name


def _first_steps(model: nn.Module, owner: str, trainable: set[int]) -> list[str]:
    module = _resolve(model, owner)
    if _plain_sequential(module):
        kids = list(module.named_children())
        k = next(i for i, (_, c) in enumerate(kids) if any(id(p) in trainable for p in c.parameters()))
        return [_join(owner, n) for n, _ in kids[k:]]
    if owner == "":
        raise _Refused("the trainable parameters are spread over the model's own forward (no single module "
                       "holds them all, and the model is not an nn.Sequential): there is no trainable suffix")
    return [owner]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def _extend_to_output(model: nn.Module, owner: str, steps: list[str], outputs: dict[str, Any],
                      logits: torch.Tensor) -> list[str]:
    """Follow the owner's enclosing Sequentials until the module whose output is the logits."""
    level = owner
    while outputs.get(level) is not logits:
        if level == "":
            raise _Refused(f"the model's predictions are not the output of its trainable part {owner!r}: "
                           f"the model computes something after it")
        parent = level.rsplit(".", 1)[0] if "." in level else ""
        module = _resolve(model, parent)
        if not _plain_sequential(module):
            raise _Refused(f"after its trainable part {level!r} the model's forward ({type(module).__name__}) "
                           f"computes more than an nn.Sequential's remaining layers")
        names = [n for n, _ in module.named_children()]
        child = level.rsplit(".", 1)[-1]
        steps = steps + [_join(parent, n) for n in names[names.index(child) + 1:]]
        level = parent
    return steps


def run_suffix(model: nn.Module, steps: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
    """The trainable suffix of ``model`` on its input ``x`` (the modules named ``steps`` in order)."""
    for name in steps:
        x = _resolve(model, name)(x)
    return x


def _frozen_modules(model: nn.Module, steps: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    inside = {id(m) for s in steps for m in _resolve(model, s).modules()}
    return [(n, m) for n, m in model.named_modules() if id(m) not in inside]


def _nondeterminism(model: nn.Module, steps: tuple[str, ...]) -> str | None:
    """Why the frozen part would not give the same output twice (``None``: it would)."""
    for name, m in _frozen_modules(model, steps):
        if isinstance(m, _DROPOUTS) and m.training and m.p > 0:
            return (f"the frozen part has active dropout ({name!r}, p={m.p}): its outputs differ on every pass. "
                    f"{dropout_hint(model)}Set its p to 0 or force with cache_features=True")
        if m.training and getattr(m, "running_mean", None) is not None:
            return (f"the frozen part's normalisation layer {name!r} is in training mode (train_bn=True): "
                    f"its statistics move with every batch")
    return None


def _augmentation(dataset: Any) -> str | None:
    seen: set[int] = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        for attr in ("transform", "transforms", "target_transform"):
            unknown = undetermined(getattr(dataset, attr, None))  # torchvision's Resize, ToTensor, ... are known
            if unknown:
                return (f"the dataset ({type(dataset).__name__}) has a {attr} ({', '.join(unknown)}) not known to be "
                        f"deterministic: augmented samples differ between passes, so cached features would "
                        f"freeze one draw of the augmentation")
        dataset = getattr(dataset, "dataset", None)
    return None


def _loader_problem(loader: Any) -> str | None:
    """Why the cache cannot follow this loader (``None``: it can)."""
    if not isinstance(loader, DataLoader):
        kind = "an iterator (one pass only)" if hasattr(loader, "__next__") else f"a {type(loader).__name__}"
        return (f"the loader is {kind}, not a torch DataLoader: the cache follows a DataLoader's sampler "
                f"to keep the sample order")
    if isinstance(loader.dataset, IterableDataset):
        return "the loader reads an IterableDataset: its samples cannot be read again by index"
    if loader.batch_sampler is None:
        return "the loader has batch_size=None (no batches to follow)"
    try:
        len(loader.dataset)
    except TypeError:
        return "the loader's dataset has no len()"
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


# ====================================================================== one loader's cache
class _LoaderCache:
    """The cached tensors of one loader and its passes in the loader's own sample order."""

    def __init__(self, loader: DataLoader, tensors: dict[str, torch.Tensor]) -> None:
        self.loader = loader
        self.tensors = tensors
        self.passes = 0

    def collate(self, indices: list[int]) -> Any:
        return _collate(self.loader, indices)

    def epoch(self, cache: FeatureCache) -> Iterator[Any]:
        """One pass: the same draws from the loader's generators as iterating the loader."""
        loader = self.loader
        order = iter(loader.batch_sampler)
        if not (loader.persistent_workers and loader.num_workers > 0 and self.passes > 0):
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)  # the loader's base seed
        self.passes += 1
        for indices in order:
            if not cache.active:
                yield to_device(self.collate(list(indices)), cache.device)
                continue
            yield self.batch(list(indices))

    def batch(self, indices: list[int]) -> CachedBatch:
        tensors = self.tensors
        i = torch.as_tensor(indices, dtype=torch.long, device=tensors["inputs"].device)
        teacher = tensors.get("teacher")
        return CachedBatch(indices, tensors["inputs"][i], tensors["targets"][i],
                           None if teacher is None else teacher[i], self)


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
            meta["feature_cache"] = self.info

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


_PLANS: OrderedDict[tuple[Any, ...], tuple[str, ...]] = OrderedDict()


def _frozen_key(model: nn.Module, owner: str, steps: list[str], pretrained: nn.Module | None) -> tuple[Any, ...]:
    """The model's class, its trainable set and a fingerprint of every weight outside it (read
    from ``pretrained``'s module of the same name and shapes when there is one: frozen weights
    have not moved, and the fingerprint of an unchanged module is remembered)."""

    def frozen_part(name: str) -> nn.Module | torch.Tensor:
        """The frozen module (or parameter held by a module) called ``name``, taken from the
        pretrained model when it has it unchanged in shape."""
        part = _resolve(model, name)
        with contextlib.suppress(AttributeError):
            original = _resolve(pretrained, name) if pretrained is not None else None
            if original is not None and _shapes(original) == _shapes(part):
                return original
        return part

    def frozen_fingerprint(name: str) -> str:
        part = frozen_part(name)
        return fingerprint(part) if isinstance(part, nn.Module) else hash_state({name: part.detach()})

    trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    frozen = tuple((n, frozen_fingerprint(n)) for n in frozen_complement(model, steps))
    return type(model).__module__, type(model).__qualname__, owner, tuple(steps), trainable, frozen


def _shapes(part: nn.Module | torch.Tensor) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    state = part.state_dict() if isinstance(part, nn.Module) else {"": part}
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items() if isinstance(v, torch.Tensor)]


@contextlib.contextmanager
def _train_modes(model: nn.Module, train: bool) -> Iterator[None]:
    """The modes the model will have in that pass (``train()`` keeps locked BatchNorm in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode



def _chunk(loader: DataLoader) -> int:
    return int(loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 32)


def _collate(loader: DataLoader, indices: list[int]) -> Any:
    dataset = loader.dataset
    return loader.collate_fn([dataset[i] for i in indices])


def _standard_order(loader: Any) -> bool:
    """A DataLoader whose order comes from torch's own samplers (their draws can be replayed)."""
    return (isinstance(loader, DataLoader) and type(loader.batch_sampler) is BatchSampler
            and type(loader.sampler) in (RandomSampler, SequentialSampler))


def _first_indices(loader: DataLoader) -> list[int]:
    """The sample indices of the batch iterating ``loader`` would give first (it draws as that does)."""
    order = iter(loader.batch_sampler)
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    return list(next(order))


