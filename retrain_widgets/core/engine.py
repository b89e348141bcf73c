"""The training engine: a retraining loop in a background thread that any thread can steer.

``Retrainer`` trains a deep copy of the model it is given (the original is never modified),
in a background thread, so a notebook's kernel stays free: ``pause()``, ``resume()``,
``stop()``, ``freeze()``, ``unfreeze()`` and ``set_lr()`` are flags and queued changes that the
loop applies at the next step boundary. It records a bounded :class:`History` at almost no
cost (see :mod:`retrain_widgets.core.probes`) and fires typed events.

The loop, in :meth:`Retrainer._train`, reads top to bottom: for each epoch, for each batch:
apply queued changes, forward, loss (+ distillation), backward, L2-SP pull, clipping, probes,
optimizer step, scheduler step, publish every few steps; validation after each epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import losses as losses_mod
from . import metrics as metrics_mod
from . import schedules as schedules_mod
from .batches import Forward, batch_size, default_forward, logits_of, to_device
from .config import RunConfig
from .events import Event, EventInfo, State
from .feature_cache import FeatureCache
from .history import History
from .params import make_optimizer
from .probes import DriftProbe, StepProbes
from .tree import (
    _set_module,
    find_head_or_none,
    freeze,
    get_module,
    layer_groups,
    parameterised_layers,
    unfreeze,
)

__all__ = ["Retrainer", "TrainingFailed", "LRFinderResult", "resolve_device", "lr_find"]


class TrainingFailed(RuntimeError):
    """The run failed (non-finite loss, out of memory, ...); the message says why and what was kept."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; other names are checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("RunConfig.device is 'cuda' but CUDA is not available here; use device='auto' or 'cpu'")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("RunConfig.device is 'mps' but MPS is not available here; use device='auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class LRFinderResult:
    """The LR range test's curve: ``lrs[i]`` was used at step ``i`` which gave ``losses[i]``
    (smoothed: ``smoothed[i]``). ``suggestion`` is the LR of the steepest descent of the
    smoothed curve; ``min_lr_div10`` is fastai's other rule (the LR of the minimum / 10)."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggestion: float
    min_lr_div10: float
    diverged: bool


@contextlib.contextmanager
def _cpu_threads(device: torch.device) -> Iterator[None]:
    """On a small CPU keep one core for the kernel and the UI while training."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    want = max(1, min(before, cores - 1))
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Stop(Exception):
    """Internal: leave the loop at a step boundary."""


class Retrainer:
    """Retrain a copy of a pretrained model with a new loss, in a background thread.

    Parameters
    ----------
    model
        The pretrained model. It is deep-copied: ``model`` itself is never modified. The copy
        is :attr:`model`.
    config
        A :class:`~retrain_widgets.core.config.RunConfig` (defaults when ``None``).
    train, val, old_val
        Loaders (any re-iterable of batches; ``DataLoader`` typically). ``val`` measures the
        new task after each epoch; ``old_val`` measures the original task (through the
        original head when the head is replaced): forgetting shows there.
    forward
        ``forward(model, batch) -> (outputs, targets)`` for batches or outputs that are neither
        ``(inputs, targets)`` / ``{"labels": ...}`` nor tensors / ``.logits``. Receives the
        batch already on the training device.
    teacher
        Teacher model for distillation; by default a frozen copy of the original ``model``.
    publish_every, publish_seconds
        Probes reach the history (one host copy) every ``publish_every`` steps or
        ``publish_seconds``, whichever comes first.

    Examples
    --------
    >>> r = Retrainer(model, RunConfig(loss="focal", head_out=1, frozen=["features"]), train, val)
    >>> r.start()          # returns at once
    >>> r.pause(); r.resume(); r.stop()
    >>> history = r.wait()
    """

    HEAVY_BUDGET = 0.005  # share of wall time for drift + checkpoint

    def __init__(self, model: nn.Module, config: RunConfig | None = None, train: Iterable[Any] | None = None,
                 val: Iterable[Any] | None = None, old_val: Iterable[Any] | None = None, *,
                 forward: Forward | None = None, teacher: nn.Module | None = None,
                 publish_every: int = 50, publish_seconds: float = 0.25) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if train is None:
            raise ValueError("Retrainer needs a training loader: Retrainer(model, config, train, val)")
        cfg = copy.copy(config) if config is not None else RunConfig()
        cfg.validate()
        self.config = cfg
        self.pretrained = model
        self.train_loader, self.val_loader, self.old_val_loader = train, val, old_val
        self.forward: Forward = forward or default_forward
        self.device = resolve_device(cfg.device)
        self.publish_every = max(1, int(publish_every))
        self.publish_seconds = float(publish_seconds)

        # ---- the model to train: a copy, with its new head and freezing
        torch.manual_seed(cfg.seed)
        net = copy.deepcopy(model).to(self.device)
        self.model = net
        self.head_name = cfg.head or find_head_or_none(net)
        self.original_head: nn.Module | None = None
        if cfg.head_out is not None:
            if self.head_name is None:
                raise ValueError("RunConfig.head_out is set but the model has no nn.Linear head; set RunConfig.head")
            old = get_module(net, self.head_name)
            if not isinstance(old, nn.Linear):
                raise ValueError(f"RunConfig.head {self.head_name!r} is a {type(old).__name__}, not an nn.Linear")
            if old.out_features != cfg.head_out:
                self.original_head = copy.deepcopy(old).eval().requires_grad_(False)
                new = nn.Linear(old.in_features, cfg.head_out, bias=old.bias is not None,
                                device=old.weight.device, dtype=old.weight.dtype)
                _set_module(net, self.head_name, new)
        self.groups = layer_groups(net)
        if cfg.frozen:
            freeze(net, cfg.frozen, train_bn=cfg.train_bn)
        self.stage = 0
        self.n_stages = len(self.groups) if cfg.gradual else 1
        if cfg.gradual:
            self._apply_stage(0)

        # ---- optimizer over all parameters (frozen included), schedule, loss
        self.optimizer = make_optimizer(net, cfg, self.groups)
        self.total_steps = self._count_steps()
        self.scheduler = schedules_mod.make(cfg.schedule, self.optimizer, self.total_steps, **cfg.schedule_kwargs)
        self._metric_driven = schedules_mod.get(cfg.schedule).metric_driven
        self.loss_fn, self.loss_spec = losses_mod.resolve(cfg.loss, **cfg.loss_kwargs)
        self.task = losses_mod.task_of(self.loss_spec.name if self.loss_spec else cfg.loss)
        self.teacher: nn.Module | None = None
        if cfg.distill is not None:
            self.teacher = copy.deepcopy(teacher if teacher is not None else model).to(self.device)
            self.teacher.eval().requires_grad_(False)
        self._features: torch.Tensor | None = None
        if self.original_head is not None and (cfg.distill is not None):
            get_module(net, self.head_name).register_forward_pre_hook(self._capture_features)

        # ---- AMP
        self.amp_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")

        # ---- probes and history
        layers = parameterised_layers(net)
        self.layer_names = tuple(name for name, _ in layers)
        first_of_group: dict[str, dict[str, Any]] = {}
        for g in self.optimizer.param_groups:
            first_of_group.setdefault(g.get("layer_group", g.get("name", str(len(first_of_group)))), g)
        self.lr_group_names = tuple(first_of_group)
        self.probes = StepProbes(layers, self.publish_every, self.device, lr_groups=list(first_of_group.values()))
        self.drift = DriftProbe(layers)
        self._l2sp: tuple[list[nn.Parameter], list[torch.Tensor]] | None = None
        if cfg.l2sp > 0:
            head_ids = {id(p) for p in get_module(net, self.head_name).parameters()} if self.head_name else set()
            pairs = [(p, w0) for p, w0 in zip(self.drift.params, self.drift.start) if id(p) not in head_ids]
            self._l2sp = ([p for p, _ in pairs], [w0 for _, w0 in pairs])
        self._ckpt_src = [*net.parameters(), *net.buffers()]
        self._ckpt = [t.detach().clone() for t in self._ckpt_src]
        self._ckpt_step = 0
        self._heavy_at = 0.0
        self._heavy_cost = 0.0
        self.history = History()
        self.history.meta.update({
            "config": _config_meta(cfg), "device": str(self.device), "total_steps": self.total_steps,
            "layers": list(self.layer_names), "groups": [g.name for g in self.groups],
            "head": self.head_name, "head_replaced": self.original_head is not None,
            "loss": self.loss_spec.name if self.loss_spec else getattr(cfg.loss, "__name__", "custom"),
            "has_val": val is not None, "has_old_val": old_val is not None,
        })
        self.feature_cache = FeatureCache(net, cfg.cache_features, self.forward, self.device, autocast=self._autocast,
                                          teacher=self.teacher, pretrained=model, max_mb=cfg.cache_max_mb,
                                          meta=self.history.meta, stop=lambda: self._stop_flag.is_set())
        self.forward = self.feature_cache.forward
        if cfg.amp and self.device.type != "cuda":
            self.history.meta["note"] = f"amp=True has no effect on {self.device.type}; training in float32"

        # ---- run state
        self.step = 0
        self.epoch = 0
        self.state = State.IDLE
        self.error: BaseException | None = None
        self.message = ""
        self.handler_errors: list[str] = []
        self._handlers: dict[Event, list[Callable[[EventInfo], Any]]] = {e: [] for e in Event}
        self._lock = threading.Lock()
        self._pending: list[Callable[[], None]] = []
        self._stop_flag = threading.Event()
        self._resume_flag = threading.Event()
        self._resume_flag.set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = False
        self._sync_check = False  # benchmarks/gpu_check.py: fail on any host sync between publishes
        self._t_start = 0.0
        self._last_pub = (0, 0.0)
        self.steps_per_second = 0.0
        self.metric_name: str | None = None
        self._val_metric: metrics_mod.Metric | None = None
        self._old: tuple[Callable[..., torch.Tensor], metrics_mod.Metric] | None = None

    # ================================================================== public control
    def on(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> Callable[[EventInfo], Any]:
        """Call ``handler(info)`` on ``event`` (from the training thread). Returns ``handler``.

        A handler that raises is reported in :attr:`handler_errors` and with a warning; the run
        goes on.
        """
        self._handlers[Event(event)].append(handler)
        return handler

    def off(self, event: Event | str, handler: Callable[[EventInfo], Any]) -> None:
        with contextlib.suppress(ValueError):
            self._handlers[Event(event)].remove(handler)

    def check(self) -> None:
        """Run one batch through the model and the loss before training.

        Raises :class:`~retrain_widgets.core.losses.LossMismatchError` when outputs, targets
        and loss do not fit, ``ValueError`` for an empty loader or teacher/student outputs of
        different shapes. Nothing is trained and the model's state is unchanged.
        """
        batch = self.feature_cache.first_batch(self.train_loader, "train")
        net = self.model
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), self._autocast():
                outputs, targets = self.forward(net, batch)
                logits = logits_of(outputs)
                losses_mod.check_compatibility(logits, targets, self.loss_spec.name if self.loss_spec else
                                               self.loss_fn, **(self.config.loss_kwargs if self.loss_spec else {}))
                if self.val_loader is not None:
                    self._eval_fns(logits.float(), targets, old=False)  # names the metric before training
                if self.teacher is not None:
                    t_logits = logits_of(self.forward(self.teacher, batch)[0])
                    s_old = self.original_head(self._features) if self.original_head is not None else logits
                    if tuple(t_logits.shape) != tuple(s_old.shape):
                        raise ValueError(
                            f"distillation needs teacher and student outputs of the same shape: the teacher gives "
                            f"{tuple(t_logits.shape)}, the student {tuple(s_old.shape)}. Give a teacher whose "
                            f"outputs match, or turn distillation off"
                        )
        finally:
            net.train(was_training)
            self._features = None
        if self.old_val_loader is not None and self._old is None:
            self._check_old_task()
        self._checked = True

    @torch.no_grad()
    def _check_old_task(self) -> None:
        """One ``old_val`` batch through the original head: a broken old-task loader fails now,
        not after the first epoch, and the old metric is named before training."""
        batch = self.feature_cache.first_batch(self.old_val_loader, "old_val")
        net = self.model
        was_training = net.training
        net.eval()
        swapped = None
        if self.original_head is not None:
            assert self.head_name is not None
            swapped = get_module(net, self.head_name)
            _set_module(net, self.head_name, self.original_head)
        try:
            with self._autocast():
                outputs, targets = self.forward(net, batch)
            logits = logits_of(outputs).float()
            try:
                loss_fn, metric = self._eval_fns(logits, targets, old=True)
                loss_fn(logits, targets)
                metric.fn(logits, targets)
            except ValueError as exc:
                self._old = None
                head = "the original head" if self.original_head is not None else f"the head {self.head_name!r}"
                raise ValueError(
                    f"old_val cannot be measured through {head}: it gives {tuple(logits.shape)} outputs for targets "
                    f"{tuple(targets.shape)} {targets.dtype} ({exc}). The old task is measured through the head "
                    f"the model had for it: pass the model that still has that head, with RunConfig.head_out "
                    f"for the new task (the engine keeps the original head), or old_val=None"
                ) from exc
        finally:
            if swapped is not None:
                _set_module(net, self.head_name or "", swapped)
            net.train(was_training)
            self._features = None

    def start(self) -> Retrainer:
        """Check the first batch, then train in a background thread; returns at once."""
        if self.state.active:
            raise RuntimeError(f"this run is already {self.state.value}; stop() it or wait() for it first")
        if self.state.final:
            raise RuntimeError(
                f"this run has ended ({self.state.value}); make a new Retrainer to train again from the "
                f"pretrained weights (its trained model is kept in .model)"
            )
        self.check()
        self._stop_flag.clear()
        self._resume_flag.set()
        self._done.clear()
        self._set_state(State.RUNNING)
        self._thread = threading.Thread(target=self._run, name="retrain_widgets-train", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Pause at the next step boundary (the model is consistent while paused)."""
        if self.state == State.RUNNING:
            self._resume_flag.clear()

    def resume(self) -> None:
        """Continue a paused run."""
        self._resume_flag.set()

    def stop(self) -> None:
        """Stop at the next step boundary; returns at once (use :meth:`wait` to wait)."""
        self._stop_flag.set()
        self._resume_flag.set()

    def wait(self, timeout: float | None = None) -> History:
        """Block until the run ends; return the history or re-raise what made it fail.

        Raises
        ------
        TimeoutError
            When ``timeout`` seconds pass first (the run goes on).
        KeyboardInterrupt
            On an interrupt: the run is stopped first; model and history are kept.
        """
        if self._thread is None:
            raise RuntimeError("the run has not started: call start() (or fit())")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # short waits, so an interrupt is handled at once
            while not (done := self._done.wait(0.1)):
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except KeyboardInterrupt:
            self.stop()
            self._done.wait()
            raise KeyboardInterrupt(
                f"interrupted: training stopped at step {self.step} of {self.total_steps}; the trained model "
                f"(.model) and the history (.history) are kept"
            ) from None
        if not done:
            raise TimeoutError(f"the run is still {self.state.value} after {timeout} s (step {self.step})")
        if self.error is not None:
            raise self.error
        return self.history

    def fit(self) -> History:
        """Train to the end in the background thread and wait for it (``start()`` + ``wait()``)."""
        self.start()
        return self.wait()

    @property
    def thread(self) -> threading.Thread | None:
        """The training thread of the last :meth:`start` (``None`` before the first)."""
        return self._thread

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the run's last event handlers (the final frame) have run."""
        return self._thread is not None and not self._done.is_set()

    @property
    def started_at(self) -> float:
        """``time.perf_counter()`` when training began (0.0 before)."""
        return self._t_start

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the thread to end, without raising; True when it has."""
        return self._done.wait(timeout) if self._thread is not None else True

    def freeze(self, names: str | Iterable[str]) -> None:
        """Freeze modules now (idle) or at the next step boundary (running)."""
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            get_module(self.model, n)
        self._change(lambda: freeze(self.model, names, train_bn=self.config.train_bn), f"froze {', '.join(names)}")

    def unfreeze(self, names: str | Iterable[str] | None = None) -> None:
        """Unfreeze modules (all when ``None``) now or at the next step boundary."""
        names_l = None if names is None else ([names] if isinstance(names, str) else list(names))
        for n in names_l or []:
            get_module(self.model, n)
        self._change(lambda: unfreeze(self.model, names_l), f"unfroze {', '.join(names_l or ['everything'])}")

    def set_lr(self, lr: float) -> None:
        """Scale every group's LR (and the schedule) so the top group's LR is ``lr`` now."""
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self._change(lambda: self._scale_lr(float(lr)), f"lr set to {lr:g}", trainable_changes=False)

    def snapshot(self) -> Any:
        """An immutable snapshot of the history (see :class:`~retrain_widgets.core.history.History`)."""
        return self.history.snapshot()

    @property
    def progress(self) -> dict[str, Any]:
        """Step, total, epoch, steps/s and ETA in seconds (plain numbers, cheap)."""
        sps = self.steps_per_second
        left = max(0, self.total_steps - self.step)
        return {"step": self.step, "total": self.total_steps, "epoch": self.epoch, "epochs": self.config.epochs,
                "steps_per_second": sps, "eta": left / sps if sps > 0 else None, "state": self.state.value,
                "stage": self.stage, "stages": self.n_stages}

    # ================================================================== LR finder
    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
                diverge: float = 4.0, beta: float = 0.98) -> LRFinderResult:
        """fastai's LR range test on this run's model, optimizer settings and loss.

        The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps`` steps;
        the test stops early when the smoothed loss exceeds ``diverge`` times its minimum.
        Weights, BatchNorm statistics and optimizer state are restored afterwards. Runs on
        the calling thread and only when the run is not active.
        """
        if self.state.active:
            raise RuntimeError("the LR finder cannot run while training; pause is not enough, stop() first")
        if not 0 < start_lr < end_lr:
            raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}")
        if num_steps < 2:
            raise ValueError(f"num_steps must be at least 2, got {num_steps!r}")
        if not self._checked:
            self.check()
        net = self.model
        saved_model = copy.deepcopy(net.state_dict())
        saved_opt = copy.deepcopy(self.optimizer.state_dict())
        saved_rng = torch.get_rng_state()
        base = [g["lr"] for g in self.optimizer.param_groups]
        top = self.optimizer.param_groups[-1]["lr"]
        ratios = [b / top for b in base]
        lrs: list[float] = []
        raw: list[float] = []
        smooth: list[float] = []
        avg, best, diverged = 0.0, math.inf, False
        mult = (end_lr / start_lr) ** (1 / (num_steps - 1))
        net.train()
        try:
            with _cpu_threads(self.device):
                batches = _cycle(self.train_loader)
                for i in range(num_steps):
                    lr = start_lr * mult**i
                    for g, r in zip(self.optimizer.param_groups, ratios):
                        g["lr"] = lr * r
                    batch = to_device(next(batches), self.device)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss = self._loss(batch)
                    loss.backward()
                    self.optimizer.step()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        diverged = True
                        break
                    avg = beta * avg + (1 - beta) * value
                    s = avg / (1 - beta ** (i + 1))
                    lrs.append(lr)
                    raw.append(value)
                    smooth.append(s)
                    best = min(best, s)
                    if i > 5 and s > diverge * best:
                        diverged = True
                        break
        finally:
            net.load_state_dict(saved_model)
            self.optimizer.load_state_dict(saved_opt)
            for g, b in zip(self.optimizer.param_groups, base):
                g["lr"] = b
            self.optimizer.zero_grad(set_to_none=True)
            torch.set_rng_state(saved_rng)
        if len(lrs) < 3:
            raise TrainingFailed(
                f"the LR finder diverged after {len(lrs)} steps from start_lr={start_lr:g}; use a smaller start_lr"
            )
        log_lr = np.log10(lrs)
        slope = np.gradient(np.asarray(smooth), log_lr)
        cut = max(1, len(lrs) // 10)
        i_best = int(np.argmin(slope[cut:-1] if len(slope) > cut + 1 else slope)) + (cut if len(slope) > cut + 1 else 0)
        i_min = int(np.argmin(smooth))
        return LRFinderResult(tuple(lrs), tuple(raw), tuple(smooth), float(lrs[i_best]), float(lrs[i_min] / 10),
                              diverged)

    # ================================================================== the thread
    def _run(self) -> None:
        try:
            self._run_guarded()
        finally:
            self._sync_guard("default")

    def _seed_run(self) -> None:
        """The run's randomness starts here, the same on every rerun: dropout and the order of the
        training batches (the loader's generator, when it has one) come from ``config.seed``, whatever
        was drawn since the Retrainer was made (the check, other runs sharing the loader)."""
        torch.manual_seed(self.config.seed)
        for gen in _loader_generators(self.train_loader):
            gen.manual_seed(self.config.seed)

    def _run_guarded(self) -> None:
        try:
            if self.step == 0:
                self._seed_run()
            with _cpu_threads(self.device):
                self._t_start = time.perf_counter()
                self._last_pub = (self.step, self._t_start)
                self._train()
            self._publish(force=True)
            self._finish(State.STOPPED if self._stop_flag.is_set() and self.step < self.total_steps
                         else State.FINISHED)
        except _Stop:
            self._publish(force=True)
            self._finish(State.STOPPED)
        except TrainingFailed as exc:
            self._fail(exc)
        except torch.OutOfMemoryError as exc:
            self._restore_checkpoint()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._fail(TrainingFailed(
                f"out of memory at step {self.step} on {self.device}: lower the batch size, set amp=True, or "
                f"freeze more layers. Weights restored to step {self._ckpt_step}."), cause=exc)
        except BaseException as exc:  # noqa: BLE001 - user code: recorded and re-raised by wait()
            with contextlib.suppress(Exception):
                self._publish()
            self._fail(exc)

    def _train(self) -> None:
        cfg, net, opt = self.config, self.model, self.optimizer
        net.train()
        while self.epoch < cfg.epochs and self.step < self.total_steps:
            if cfg.gradual:
                self._maybe_next_stage()
            n_batches = 0
            self._sync_guard("error")
            for batch in self.feature_cache.batches(self.train_loader, "train"):
                self._boundary()
                batch = to_device(batch, self.device, non_blocking=True)
                loss = self._loss(batch)
                opt.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(opt)
                else:
                    loss.backward()
                if self._l2sp is not None:
                    self._pull_to_pretrained()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]
                                                    if p.grad is not None], cfg.grad_clip, foreach=True)
                self.probes.record(self.step, loss)
                if self.device.type == "cpu" and not math.isfinite(float(loss.detach())):
                    self._diverged(self.step)  # free on the CPU; on CUDA checked at publish (no sync)
                if self.scaler is not None:
                    self.scaler.step(opt)
                    self.scaler.update()
                else:
                    opt.step()
                self.step += 1
                n_batches += 1
                if not self._metric_driven and self.step < self.total_steps:
                    self.scheduler.step()
                self._fire(Event.STEP_END)
                if self.probes.full or time.perf_counter() - self._last_pub[1] > self.publish_seconds:
                    self._publish()
                if self.step >= self.total_steps:
                    break
            self._sync_guard("default")
            if n_batches == 0:
                raise ValueError("the training loader yielded no batches: check the dataset and batch size")
            self.epoch += 1
            self._publish(force=True)
            self._validate()
        if self.step == 0:
            raise ValueError("no training steps were run: check epochs, max_steps and the loader")

    # ================================================================== one step's pieces
    def _loss(self, batch: Any) -> torch.Tensor:
        cfg = self.config
        with self._autocast():
            outputs, targets = self.forward(self.model, batch)
            logits = logits_of(outputs)
            loss = self.loss_fn(logits.float() if self.amp_dtype else logits, targets)
            if self.teacher is not None:
                assert cfg.distill is not None
                with torch.no_grad():
                    t_logits = logits_of(self.forward(self.teacher, batch)[0])
                s_old = self.original_head(self._features) if self.original_head is not None else logits
                self._features = None
                kd = losses_mod.distillation_loss(s_old.float(), t_logits.float(), cfg.distill["temperature"])
                loss = cfg.distill["alpha"] * loss + (1 - cfg.distill["alpha"]) * kd
        return loss

    def _capture_features(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._features = args[0]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def _pull_to_pretrained(self) -> None:
        """L2-SP: add ``l2sp * (w - w0)`` to the gradient of every trainable non-head parameter
        (the gradient of ``l2sp / 2 * ||w - w0||^2``)."""
        assert self._l2sp is not None
        pairs = [(p, w0) for p, w0 in zip(*self._l2sp) if p.grad is not None]
        if pairs:
            params, starts = zip(*pairs)
            diffs = torch._foreach_sub([p.detach() for p in params], list(starts))
            torch._foreach_add_([p.grad for p in params], diffs, alpha=self.config.l2sp)

    # ================================================================== boundaries
    def _boundary(self) -> None:
        """Apply queued changes; honour pause and stop. Called before every step."""
        if self._pending:
            self._apply_pending()
        if not self._resume_flag.is_set() and not self._stop_flag.is_set():
            self._publish()
            self._set_state(State.PAUSED)
            while not self._resume_flag.wait(0.05):
                if self._pending:
                    self._apply_pending()
            self._last_pub = (self.step, time.perf_counter())
            if not self._stop_flag.is_set():
                self._set_state(State.RUNNING)
        if self._stop_flag.is_set():
            raise _Stop

    def _change(self, action: Callable[[], None], text: str, trainable_changes: bool = True) -> None:
        def apply() -> None:
            if trainable_changes:
                self._flush_probes()
            action()
            if trainable_changes:
                self.probes.refresh()
            self.history.mark(self.step, "change", text)

        if self.state.active:
            with self._lock:
                self._pending.append(apply)
        else:
            apply()

    def _apply_pending(self) -> None:
        with self._lock:
            todo, self._pending = self._pending, []
        for action in todo:
            action()

    def _scale_lr(self, lr: float) -> None:
        top = self.optimizer.param_groups[-1]["lr"]
        f = lr / top if top > 0 else 1.0
        for g in self.optimizer.param_groups:
            g["lr"] *= f
            for key in ("initial_lr", "max_lr", "min_lr"):
                if key in g:
                    g[key] *= f
        for attr in ("base_lrs", "max_lrs", "min_lrs"):
            values = getattr(self.scheduler, attr, None)
            if isinstance(values, list):
                setattr(self.scheduler, attr, [v * f for v in values])

    # ================================================================== gradual unfreezing
    def _apply_stage(self, stage: int) -> None:
        """Stage ``s``: the top ``s + 1`` layer groups are trainable (minus ``config.frozen``)."""
        n = len(self.groups)
        cfg = self.config
        below = [m for g in self.groups[: max(0, n - 1 - stage)] for m in g.modules]
        unfreeze(self.model, [m if m != "(model)" else "" for g in self.groups[n - 1 - stage:] for m in g.modules])
        names = below + [f for f in cfg.frozen if f not in below]
        if names:
            freeze(self.model, names, train_bn=cfg.train_bn)
        self.stage = stage

    def _maybe_next_stage(self) -> None:
        stage = min(self.epoch // self.config.unfreeze_every, len(self.groups) - 1)
        if stage == self.stage:
            return
        self._flush_probes()
        self._apply_stage(stage)
        self.probes.refresh()
        group = self.groups[len(self.groups) - 1 - stage].name
        self.history.mark(self.step, "stage", f"stage {stage}: unfroze {group}")
        self._fire(Event.STAGE_CHANGE, stage=stage, group=group)

    # ================================================================== publishing
    def _flush_probes(self) -> None:
        if self.probes.n:
            self._publish()

    def _publish(self, force: bool = False) -> None:
        """Move the buffered probes to the history (one host copy); check for divergence.

        Drift and the checkpoint are measured when their time budget allows, or ``force``."""
        mode = self._sync_guard("default")
        steps, loss, layer_norms, lrs = self.probes.flush()
        now = time.perf_counter()
        if len(steps):
            bad = ~np.isfinite(loss)
            if bad.any():
                first = int(steps[np.argmax(bad)])
                n_ok = int(np.argmax(bad))
                self._record_chunk(steps[:n_ok], loss[:n_ok], layer_norms[:n_ok], lrs[:n_ok])
                self._diverged(first)
            self._record_chunk(steps, loss, layer_norms, lrs)
            last_step, last_t = self._last_pub
            if now > last_t and self.step > last_step:
                rate = (self.step - last_step) / (now - last_t)
                self.steps_per_second = rate if self.steps_per_second == 0 else 0.7 * self.steps_per_second + 0.3 * rate
            self._last_pub = (self.step, now)
            # Drift and the NaN-guard checkpoint read every weight: keep them under ~0.5 % of
            # wall time (a ResNet-18 on a CPU pays ~40 ms for both; the bundled CNN ~0.2 ms).
            if force or (now - self._heavy_at) * self.HEAVY_BUDGET >= self._heavy_cost:
                t0 = time.perf_counter()
                drift = self.drift.to_layers(self.drift.measure_device().cpu().numpy())
                self.history.append_layers("drift", [self.step], self.layer_names, drift[None, :])
                self._save_checkpoint()
                self._heavy_at = time.perf_counter()
                self._heavy_cost = self._heavy_at - t0
            self._fire(Event.PUBLISH)
        self._sync_guard(mode)

    def _sync_guard(self, mode: str | int | None) -> str | int | None:
        """With ``_sync_check`` on CUDA: set the sync debug mode (``"error"`` makes any host sync
        raise); return the previous one. Used by ``benchmarks/gpu_check.py``."""
        if not (self._sync_check and self.device.type == "cuda") or mode is None:
            return None
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(mode)
        return previous

    def _record_chunk(self, steps: np.ndarray, loss: np.ndarray, layer_norms: np.ndarray,
                      lrs: np.ndarray) -> None:
        if not len(steps):
            return
        self.history.append("train_loss", steps, loss)
        self.history.append("lr", steps, lrs[:, -1])  # the top (head) group's LR
        self.history.append_layers("group_lr", steps, self.lr_group_names, lrs)
        self.history.append_layers("grad_norm", steps, self.layer_names, layer_norms)

    @torch.no_grad()
    def _save_checkpoint(self) -> None:
        torch._foreach_copy_(self._ckpt, [t.detach() for t in self._ckpt_src])
        self._ckpt_step = self.step

    @torch.no_grad()
    def _restore_checkpoint(self) -> None:
        torch._foreach_copy_([t.data for t in self._ckpt_src], self._ckpt)

    def _diverged(self, step: int) -> None:
        self._restore_checkpoint()
        self.probes.n = 0
        raise TrainingFailed(
            f"the loss became NaN or infinite at step {step} (epoch {self.epoch + 1}); training stopped and the "
            f"weights were restored to step {self._ckpt_step}, the last whose losses were all finite. Lower the "
            f"learning rate, add grad_clip, or check the data and the loss"
        )

    # ================================================================== validation
    def _validate(self) -> None:
        data: dict[str, float] = {}
        if self.val_loader is not None:
            vloss, vmetric = self._evaluate(self.val_loader, old=False)
            data.update(val_loss=vloss, val_metric=vmetric)
        if self.old_val_loader is not None:
            oloss, ometric = self._evaluate(self.old_val_loader, old=True)
            data.update(old_loss=oloss, old_metric=ometric)
        for name, value in data.items():
            self.history.append(name, [self.step], [value])
        if self._metric_driven:
            self.scheduler.step(data.get("val_loss", float(self.history.series("train_loss")[1][-1])))
        if self.config.gradual:
            stages = self.history.meta.setdefault("stages", [])
            stages.append({"stage": self.stage, "epoch": self.epoch, "step": self.step,
                           "group": self.groups[len(self.groups) - 1 - self.stage].name, **data})
        self._fire(Event.EPOCH_END, **data)

    @torch.no_grad()
    def _evaluate(self, loader: Iterable[Any], old: bool) -> tuple[float, float]:
        # measuring must not change training: iterating a loader without a generator of its own
        # draws a seed from the global RNG, which would shift every later dropout mask
        rng = torch.get_rng_state()
        try:
            return self._evaluate_batches(loader, old)
        finally:
            torch.set_rng_state(rng)

    def _evaluate_batches(self, loader: Iterable[Any], old: bool) -> tuple[float, float]:
        net = self.model
        was_training = net.training
        net.eval()
        swapped = None
        if old and self.original_head is not None:
            assert self.head_name is not None
            swapped = get_module(net, self.head_name)
            _set_module(net, self.head_name, self.original_head)
        loss_sum = torch.zeros((), device=self.device)
        metric_sum = torch.zeros((), device=self.device)
        n = count = 0
        try:
            for batch in self.feature_cache.batches(loader, "old_val" if old else "val"):
                batch = to_device(batch, self.device, non_blocking=True)
                with self._autocast():
                    outputs, targets = self.forward(net, batch)
                logits = logits_of(outputs).float()
                self._features = None
                loss_fn, metric = self._eval_fns(logits, targets, old)
                bs = batch_size(targets)
                loss_sum += loss_fn(logits, targets).float() * bs
                s, c = metric.fn(logits, targets)
                metric_sum += s
                n += bs
                count += c
        finally:
            if swapped is not None:
                _set_module(net, self.head_name or "", swapped)
            net.train(was_training)
        if n == 0:
            raise ValueError(f"the {'old_val' if old else 'val'} loader yielded no batches")
        return float(loss_sum / n), float(metric_sum / max(count, 1))

    def _eval_fns(self, logits: torch.Tensor, targets: Any, old: bool) -> tuple[Callable[..., torch.Tensor],
                                                                               metrics_mod.Metric]:
        if old:
            if self._old is None:
                task = metrics_mod.infer_task(logits, targets)
                loss_name = {"multiclass": "ce", "binary": "bce", "regression": "mse"}[task]
                self._old = (losses_mod.make(loss_name), metrics_mod.for_task(task, logits, targets))
                self.history.meta["old_metric"] = self._old[1].name
            return self._old
        if self._val_metric is None:
            self._val_metric = metrics_mod.select(self.config.metric, self.task, logits, targets)
            self.metric_name = self._val_metric.name
            self.history.meta["metric"] = self._val_metric.name
            self.history.meta["higher_is_better"] = self._val_metric.higher_is_better
        return self.loss_fn, self._val_metric

    # ================================================================== state and events
    def _set_state(self, state: State) -> None:
        self.state = state
        self._fire(Event.STATE_CHANGE, state=state)

    def _finish(self, state: State) -> None:
        self.history.mark(self.step, "state", state.value)
        self._set_state(state)
        self._done.set()

    def _fail(self, exc: BaseException, cause: BaseException | None = None) -> None:
        if cause is not None:
            exc.__cause__ = cause
        self.error = exc
        self.message = f"{type(exc).__name__}: {exc}"
        self.history.meta["error"] = self.message
        self.history.meta["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.history.mark(self.step, "state", f"failed: {self.message}")
        self._set_state(State.FAILED)
        self._done.set()

    def _fire(self, event: Event, **data: Any) -> None:
        handlers = self._handlers[event]
        if not handlers:
            return
        info = EventInfo(event, self.step, self.epoch, data)
        for handler in list(handlers):
            try:
                handler(info)
            except Exception as exc:  # noqa: BLE001 - a handler must not kill the run
                text = f"{event.value} handler {getattr(handler, '__name__', handler)!r} raised {type(exc).__name__}: {exc}"
                self.handler_errors.append(text)
                warnings.warn(text, RuntimeWarning, stacklevel=2)

    # ================================================================== helpers
    def _count_steps(self) -> int:
        cfg = self.config
        try:
            per_epoch = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:
            per_epoch = None
        if per_epoch == 0:
            raise ValueError("the training loader is empty (len 0): check the dataset and the batch size")
        if per_epoch is None:
            if cfg.max_steps is None:
                raise ValueError("the training loader has no len(): set RunConfig.max_steps")
            return cfg.max_steps
        total = per_epoch * cfg.epochs
        return min(total, cfg.max_steps) if cfg.max_steps else total

    def __repr__(self) -> str:
        return (f"Retrainer(state={self.state.value}, step={self.step}/{self.total_steps}, "
                f"loss={self.history.meta.get('loss')!r}, device={self.device})")


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch generators that decide a loader's order (its own, its sampler's), each once."""
    found: dict[int, torch.Generator] = {}
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator):
            found[id(gen)] = gen
    return list(found.values())


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training loader yields no batches")


def _config_meta(cfg: RunConfig) -> dict[str, Any]:
    try:
        return cfg.to_dict()
    except ValueError:
        return {"loss": getattr(cfg.loss, "__name__", "custom")}


def lr_find(model: nn.Module, config: RunConfig, train: Iterable[Any], **kwargs: Any) -> LRFinderResult:
    """Run the LR range test on a copy of ``model`` (see :meth:`Retrainer.lr_find`)."""
    forward = kwargs.pop("forward", None)
    return Retrainer(model, config, train, forward=forward).lr_find(**kwargs)
