"""``RunConfig``: one dataclass that describes a retraining run and round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config_values import number as _number
from .recipe.training import HEAD_INITS
from .registry import closest

__all__ = ["RunConfig", "OPTIMIZERS", "DEVICES"]  # noqa: F822 - OPTIMIZERS: module __getattr__

DEVICES = ("auto", "cpu", "cuda", "mps")


def __getattr__(name: str) -> Any:
    if name == "OPTIMIZERS":  # the optimizer registry's names (it imports this module: read late)
        from .params import OPTIMIZER_REGISTRY

        return tuple(OPTIMIZER_REGISTRY)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        hint = closest(str(value), list(choices))
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"RunConfig.{name} must be one of {list(choices)}, got {value!r}{extra}")
    return value


@dataclass
class RunConfig:
    """Everything that describes one retraining run.

    Attributes
    ----------
    loss
        Name of a registered loss (``retrain_widgets.losses.available()``) or any callable
        ``(outputs, targets) -> scalar``. Only a name can be written to JSON: register a custom
        callable with ``retrain_widgets.losses.register(name, fn)`` to save it.
    loss_kwargs
        Keyword arguments of the loss (e.g. ``{"gamma": 2.0}`` for ``"focal"``).
    frozen
        Dotted module names to freeze (``named_modules()`` names), or dotted names of
        parameters a module holds itself (``"cls_token"``, ``"encoder.pos_embedding"``).
    train_bn
        ``False``: BatchNorm inside frozen modules stays in inference mode with fixed
        statistics. ``True``: it keeps training (fastai's meaning).
    frozen_eval
        ``True``: layers whose parameters are all frozen run in inference mode (dropout,
        stochastic depth, BatchNorm) whatever ``model.train()`` says, the usual setting for
        feature extraction; a layer without parameters goes with the next layer beside it that
        has some (a Dropout just before the head trains with the head). It lets the feature
        cache serve backbones with stochastic depth or dropout (ConvNeXt, Swin, EfficientNet).
        The run's model keeps it (its ``train`` is a ``FrozenEval``, see ``recipe.freezing``).
    optimizer
        ``"adamw"``, ``"adam"`` or ``"sgd"``.
    lr, weight_decay, momentum
        Learning rate of the top layer group; weight decay (not applied to biases and
        normalisation layers); SGD momentum.
    lr_decay
        Discriminative learning rates: each layer group below the top gets ``lr_decay`` times
        the LR of the group above it (ULMFiT uses ``1 / 2.6``). ``1.0`` = off.
    schedule, schedule_kwargs
        Name of a scheduler shape (``retrain_widgets.schedules.available()``) and its
        parameters; stepped once per optimizer step.
    epochs, max_steps
        Length of the run: ``epochs`` passes over the training loader, cut at ``max_steps``
        optimizer steps when given.
    seed
        Seeds the new head's initialisation and, when training starts, torch's global RNG (dropout)
        and the training loader's generator (its batch order, when it has a generator): runs with
        the same seed see the same batches, whatever ran before. Evaluation never draws from them.
    device
        ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    head, head_out
        Replace the head before training: ``head_out`` outputs (e.g. 1 for BCE) on the layer
        named ``head`` (found automatically when ``None``). The original head is kept to
        measure the old task.
    head_init
        How a new head starts: ``"default"`` (``nn.Linear``'s initialisation, drawn with
        ``seed``) or ``"zeros"`` (weights and bias 0: no gradient reaches the pretrained layers
        until the head has learned something, and the seed no longer draws the head). Used only
        when ``head_out`` makes a new head.
    gradual, unfreeze_every
        Gradual unfreezing (ULMFiT): start with only the top layer group trainable and
        unfreeze the next group down every ``unfreeze_every`` epochs. Modules in ``frozen``
        stay frozen throughout.
    distill
        ``None`` or ``{"alpha": a, "temperature": T}``: loss = a * new loss + (1 - a) * T² *
        KL(teacher || student), the teacher being the original model.
    l2sp
        Strength of the L2-SP pull toward the pretrained weights (0 = off).
    amp
        Mixed precision on CUDA (bf16 where supported, else fp16 with a GradScaler).
    grad_clip
        Clip the global gradient norm to this value (``None`` = off).
    metric
        ``"auto"`` (accuracy for classification losses, MAE for regression), ``"accuracy"``
        or ``"mae"``.
    lora_r, lora_alpha, lora_dropout, lora_modules
        LoRA adapters (:mod:`~retrain_widgets.core.lora`, needs ``peft``): rank (``None`` = off),
        scale numerator (``None`` = ``lora_r``), dropout on the adapters' input, and the layers
        to adapt (dotted names or glob patterns; ``[]`` = every attention projection). The
        base weights stay frozen; the head trains in full. Not with ``gradual``.
    alignment_every, alignment_budget
        The alignment probe (:mod:`~retrain_widgets.core.alignment`): every ``alignment_every``
        steps at most, and within ``alignment_budget`` of the run's training time (over the run), the cosine between each
        trainable layer's gradient of the new loss and of the old task's loss (one old-task batch)
        and that batch's old-task loss (``alignment_budget=1.0``: no time limit; the default 0.5 %
        is the drift probe's). Needs an old-task loader; ``alignment_every=None`` turns it off.
    cache_features, cache_max_mb
        The frozen-feature cache (:mod:`retrain_widgets.core.feature_cache`): ``"auto"`` computes
        the frozen part's outputs once per sample when that gives the same results and says why
        not in ``history.meta["feature_cache"]`` otherwise; ``True`` forces it past dropout or
        augmentation in the frozen part (with a warning); ``False`` turns it off.
        ``cache_max_mb`` bounds its memory (``None``: half the free RAM or GPU memory).
    """

    loss: str | Callable[..., Any] = "ce"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    frozen: list[str] = field(default_factory=list)
    train_bn: bool = False
    frozen_eval: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    lr_decay: float = 1.0
    schedule: str = "constant"
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    head: str | None = None
    head_out: int | None = None
    head_init: str = "default"
    gradual: bool = False
    unfreeze_every: int = 1
    distill: dict[str, float] | None = None
    l2sp: float = 0.0
    amp: bool = False
    grad_clip: float | None = None
    metric: str = "auto"
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_modules: list[str] = field(default_factory=list)
    alignment_every: int | None = 20
    alignment_budget: float = 0.005
    cache_features: bool | str = "auto"
    cache_max_mb: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> RunConfig:
        """Check every field; raise ``ValueError`` naming the first bad one. Returns ``self``."""
        from . import lora, losses, metrics, params, schedules  # late: params imports this module

        if isinstance(self.loss, str):
            losses.get(self.loss)
            if not isinstance(self.loss_kwargs, Mapping):
                raise ValueError(f"RunConfig.loss_kwargs must be a dict, got {self.loss_kwargs!r}")
            self.loss_kwargs = losses.REGISTRY.validate_kwargs(self.loss, self.loss_kwargs)
        elif not callable(self.loss):
            raise ValueError(f"RunConfig.loss must be a loss name or a callable, got {self.loss!r}")
        else:
            self.loss_kwargs = dict(self.loss_kwargs or {})
        if isinstance(self.frozen, str) or not all(isinstance(n, str) for n in self.frozen):
            raise ValueError(f"RunConfig.frozen must be a list of dotted module names, got {self.frozen!r}")
        self.frozen = list(self.frozen)
        if not isinstance(self.train_bn, bool):
            raise ValueError(f"RunConfig.train_bn must be True or False, got {self.train_bn!r}")
        if not isinstance(self.frozen_eval, bool):
            raise ValueError(f"RunConfig.frozen_eval must be True or False, got {self.frozen_eval!r}")
        _choice("optimizer", self.optimizer, tuple(params.OPTIMIZER_REGISTRY))
        self.lr = _number("lr", self.lr, low=0.0, low_open=True, high=10.0)
        self.weight_decay = _number("weight_decay", self.weight_decay, low=0.0, high=10.0)
        self.momentum = _number("momentum", self.momentum, low=0.0, high=1.0)
        self.lr_decay = _number("lr_decay", self.lr_decay, low=0.0, low_open=True, high=1.0)
        if not isinstance(self.schedule, str):
            raise ValueError(f"RunConfig.schedule must be a schedule name, got {self.schedule!r}")
        schedules.get(self.schedule)
        if not isinstance(self.schedule_kwargs, Mapping):
            raise ValueError(f"RunConfig.schedule_kwargs must be a dict, got {self.schedule_kwargs!r}")
        self.schedule_kwargs = schedules.REGISTRY.validate_kwargs(self.schedule, self.schedule_kwargs)
        self.epochs = _number("epochs", self.epochs, low=1, whole=True)
        self.max_steps = _number("max_steps", self.max_steps, low=1, whole=True, optional=True)
        self.seed = _number("seed", self.seed, low=0, whole=True)
        _choice("device", self.device, DEVICES)
        if self.head is not None and not isinstance(self.head, str):
            raise ValueError(f"RunConfig.head must be a dotted module name or None, got {self.head!r}")
        self.head_out = _number("head_out", self.head_out, low=1, whole=True, optional=True)
        _choice("head_init", self.head_init, tuple(HEAD_INITS))
        if not isinstance(self.gradual, bool):
            raise ValueError(f"RunConfig.gradual must be True or False, got {self.gradual!r}")
        self.unfreeze_every = _number("unfreeze_every", self.unfreeze_every, low=1, whole=True)
        if self.distill is not None:
            if not isinstance(self.distill, Mapping):
                raise ValueError(
                    f"RunConfig.distill must be None or a dict like {{'alpha': 0.5, 'temperature': 2.0}}, "
                    f"got {self.distill!r}"
                )
            unknown = set(self.distill) - {"alpha", "temperature"}
            if unknown:
                raise ValueError(
                    f"RunConfig.distill has unknown keys {sorted(unknown)}; it takes 'alpha' and 'temperature'"
                )
            self.distill = {
                "alpha": _number("distill['alpha']", self.distill.get("alpha", 0.5), low=0.0, high=1.0),
                "temperature": _number(
                    "distill['temperature']", self.distill.get("temperature", 2.0), low=0.0, low_open=True, high=100.0
                ),
            }
        self.l2sp = _number("l2sp", self.l2sp, low=0.0)
        if not isinstance(self.amp, bool):
            raise ValueError(f"RunConfig.amp must be True or False, got {self.amp!r}")
        self.grad_clip = _number("grad_clip", self.grad_clip, low=0.0, low_open=True, optional=True)
        _choice("metric", self.metric, metrics.NAMES)
        self.alignment_every = _number("alignment_every", self.alignment_every, low=1, whole=True, optional=True)
        self.alignment_budget = _number("alignment_budget", self.alignment_budget, low=0.0, low_open=True, high=1.0)
        if not (isinstance(self.cache_features, bool) or self.cache_features == "auto"):
            raise ValueError(f"RunConfig.cache_features must be 'auto', True or False, got {self.cache_features!r}")
        self.cache_max_mb = _number("cache_max_mb", self.cache_max_mb, low=0.0, low_open=True, optional=True)
        lora.check_lora(self)
        return self

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict. A custom loss callable must be registered by name first."""
        if not isinstance(self.loss, str):
            raise ValueError(
                f"RunConfig.loss is a callable ({getattr(self.loss, '__name__', type(self.loss).__name__)}), "
                f"which JSON cannot hold: register it with retrain_widgets.losses.register('my_loss', fn) "
                f"and set loss='my_loss'"
            )
        out = dataclasses.asdict(self)
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build a config from :meth:`to_dict`'s output; unknown keys are a ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"RunConfig.from_dict expects a dict, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                hint = closest(str(key), names)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ValueError(f"RunConfig has no field {key!r}{extra}")
        return cls(**dict(data))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        """Return a validated copy with ``changes`` applied."""
        for key in changes:
            if key not in {f.name for f in dataclasses.fields(self)}:
                hint = closest(key, [f.name for f in dataclasses.fields(self)])
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ValueError(f"RunConfig has no field {key!r}{extra}")
        return dataclasses.replace(self, **changes)

    def diff(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: ``{name: (self's, other's)}``."""
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}
