"""The run builder: a run's parts made from ``(model, config)``, in one place.

:func:`build_model` makes the model a run trains (a copy, the new head with the original one
kept, freezing); :func:`build_run` adds the optimizer, the schedule, the loss, the teacher and
mixed precision. :class:`~retrain_widgets.core.engine.Retrainer` is built from
:func:`build_run`; anything that needs "the model this config would train" (a preview tree,
a restored run) calls :func:`build_model`. :func:`count_steps` is the one step count.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import losses as losses_mod
from . import schedules as schedules_mod
from .cloning import clone_module
from .config import RunConfig
from .device import amp_settings
from .lora import apply_lora
from .params import make_optimizer, module_names
from .recipe import freezing as recipe_freezing
from .recipe.training import HEAD_INITS, Distillation, HeadSwap
from .tree import LayerGroup, find_head_or_none, freeze, get_module, layer_groups, replace_head, unfreeze

__all__ = ["BuiltModel", "RunParts", "build_model", "build_run", "count_steps", "apply_stage"]


@dataclass
class BuiltModel:
    """The model a run trains, and what the run needs to know about its head.

    Attributes
    ----------
    model
        A deep copy of the pretrained model, with the new head, the LoRA adapters and freezing
        applied.
    head_name
        Dotted name of the head (``None`` when the model has no ``nn.Linear``).
    original_head
        The pretrained head, frozen, when ``config.head_out`` replaced it; else ``None``.
    groups
        :func:`~retrain_widgets.core.tree.layer_groups` of the model.
    """

    model: nn.Module
    head_name: str | None
    original_head: nn.Module | None
    groups: list[LayerGroup]

    def original_head_in(self) -> HeadSwap:
        """``with built.original_head_in():`` the original head answers in the block (the old
        task), the new one is back after; nothing is swapped when the head was kept."""
        return HeadSwap(self.model, self.head_name or "", self.original_head)


@dataclass
class RunParts:
    """Everything :func:`build_run` makes for a run besides its model (see :class:`BuiltModel`)."""

    built: BuiltModel
    optimizer: torch.optim.Optimizer
    total_steps: int
    scheduler: Any
    metric_driven: bool
    loss_fn: Callable[..., torch.Tensor]
    loss_spec: losses_mod.LossSpec | None
    task: str | None
    distillation: Distillation | None
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None


def count_steps(train: Iterable[Any], config: RunConfig) -> int:
    """Optimizer steps of a run of ``config`` on the loader ``train``: ``len(train) * epochs``,
    capped at ``max_steps``. ``ValueError`` for an empty loader, or one without ``len()`` when
    ``max_steps`` is not set."""
    try:
        per_epoch = len(train)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch == 0:
        raise ValueError("the training loader is empty (len 0): check the dataset and the batch size")
    if per_epoch is None:
        if config.max_steps is None:
            raise ValueError("the training loader has no len(): set RunConfig.max_steps")
        return config.max_steps
    total = per_epoch * config.epochs
    return min(total, config.max_steps) if config.max_steps else total


def _new_head(net: nn.Module, config: RunConfig) -> tuple[str | None, nn.Module | None]:
    """Replace the head as ``config.head_out`` asks; return its name and the original head (or None)."""
    head_name = config.head or find_head_or_none(net)
    if config.head_out is None:
        return head_name, None
    if head_name is None:
        raise ValueError("RunConfig.head_out is set but the model has no nn.Linear head; set RunConfig.head")
    old = get_module(net, head_name)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"RunConfig.head {head_name!r} is a {type(old).__name__}, not an nn.Linear")
    if old.out_features == config.head_out:
        return head_name, None
    original = copy.deepcopy(old).eval().requires_grad_(False)
    replace_head(net, config.head_out, head_name)
    HEAD_INITS[config.head_init](get_module(net, head_name))
    return head_name, original


def build_model(model: nn.Module, config: RunConfig, device: torch.device | str | None = None, *,
                apply_freezing: bool = True, adapters: bool = True) -> BuiltModel:
    """The model ``config`` trains: a deep copy of ``model`` (on ``device``), torch seeded with
    ``config.seed`` before the new head is drawn, the head replaced when ``config.head_out``
    asks (the original head kept, frozen, in :attr:`BuiltModel.original_head`), the LoRA
    adapters of ``config.lora_r`` added (:func:`~retrain_widgets.core.lora.apply_lora`;
    ``adapters=False``: not), ``config.frozen`` frozen (``apply_freezing=False``: not) and, with
    ``config.frozen_eval``, the frozen layers kept in inference mode.
    ``model`` is not modified; torch's global RNG is (wrap the call in
    ``torch.random.fork_rng()`` to keep it)."""
    torch.manual_seed(config.seed)
    net = clone_module(model)
    if device is not None:
        net = net.to(device)
    head_name, original_head = _new_head(net, config)
    if adapters:
        net = apply_lora(net, config, head=head_name)
    groups = layer_groups(net)
    if apply_freezing and config.frozen:
        freeze(net, config.frozen, train_bn=config.train_bn)
    if config.frozen_eval:
        recipe_freezing.eval_frozen(net)
    return BuiltModel(net, head_name, original_head, groups)


def apply_stage(model: nn.Module, groups: list[LayerGroup], stage: int, config: RunConfig) -> None:
    """Gradual unfreezing's stage ``stage`` (see :func:`retrain_widgets.core.recipe.freezing.apply_stage`)."""
    recipe_freezing.apply_stage(model, module_names(groups), stage, list(config.frozen),
                                lambda m, names: freeze(m, names, train_bn=config.train_bn), unfreeze)


def build_run(model: nn.Module, config: RunConfig, train: Iterable[Any], device: torch.device, *,
              teacher: nn.Module | None = None) -> RunParts:
    """Every part of a run of ``config`` (validated) on the loader ``train``: :func:`build_model`
    (with gradual unfreezing's first stage), the optimizer over all parameters (frozen included),
    the schedule over :func:`count_steps` steps, the loss, the teacher (a frozen copy of
    ``teacher``, by default of ``model``, when distilling) and mixed-precision settings."""
    built = build_model(model, config, device)
    if config.gradual:
        apply_stage(built.model, built.groups, 0, config)
    optimizer = make_optimizer(built.model, config, built.groups)
    total_steps = count_steps(train, config)
    scheduler = schedules_mod.make(config.schedule, optimizer, total_steps, **config.schedule_kwargs)
    loss_fn, loss_spec = losses_mod.resolve(config.loss, **config.loss_kwargs)
    distillation = None
    if config.distill is not None:
        copy_teacher = clone_module(teacher if teacher is not None else model).to(device)
        copy_teacher.eval().requires_grad_(False)
        distillation = Distillation(built.model, built.head_name or "", built.original_head, copy_teacher,
                                    config.distill["alpha"], config.distill["temperature"])
    amp_dtype, scaler = amp_settings(config.amp, device)
    return RunParts(
        built=built, optimizer=optimizer, total_steps=total_steps, scheduler=scheduler,
        metric_driven=schedules_mod.get(config.schedule).metric_driven, loss_fn=loss_fn, loss_spec=loss_spec,
        task=losses_mod.task_of(loss_spec.name if loss_spec else config.loss), distillation=distillation,
        amp_dtype=amp_dtype, scaler=scaler)
