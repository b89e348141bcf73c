"""The exported script's sections that depend on the config: settings, imports, the recipe
functions used, model, freezing, optimizer, loss, evaluation and the training loop."""

from __future__ import annotations

import json
from typing import Any

from . import recipe_source
from .config import RunConfig
from .export_plan import _Plan
from .export_templates import (
    _DDP_NOTE,
    _DDP_NOTE_GRADUAL,
    _DDP_WRAP,
    _LOOP,
    _NEW_HEAD,
    _NEXT_STAGE,
    _PLATEAU,
    _RUN,
    _STEP_END,
    _block,
    _indent,
    _join,
    _section,
)
from .feature_cache import EXPORT_NOTE
from .recipe.training import HEAD_INITS, default_init
from .step import TrainingStep


def _settings(cfg: RunConfig, head: bool, groups: bool) -> str:
    rows: list[tuple[str, Any, str]] = [
        ("SEED", cfg.seed, "the same on every rank and every rerun"),
        ("DEVICE", cfg.device, '"auto": cuda, then mps, then cpu'),
        ("EPOCHS", cfg.epochs, ""),
    ]
    if cfg.max_steps is not None:
        rows.append(("MAX_STEPS", cfg.max_steps, "the run stops after this many optimizer steps"))
    rows.append(("LR", cfg.lr, "learning rate of the top (head) layer group" if groups else "learning rate"))
    if groups:
        rows.append(("LR_DECAY", cfg.lr_decay, "each layer group gets LR_DECAY x the LR of the one above"))
    rows.append(("WEIGHT_DECAY", cfg.weight_decay, "on weight matrices and kernels, not on biases and norm layers"))
    if cfg.optimizer == "sgd":
        rows.append(("MOMENTUM", cfg.momentum, ""))
    if head:
        rows.append(("HEAD", cfg.head, "the head layer; None: the model's last nn.Linear"))
    if cfg.head_out is not None:
        rows.append(("HEAD_OUT", cfg.head_out, "outputs of the new head"))
    if cfg.frozen or cfg.gradual:
        rows.append(("FROZEN", list(cfg.frozen), "modules frozen for the whole run"))
    if cfg.gradual:
        rows.append(("UNFREEZE_EVERY", cfg.unfreeze_every, "epochs between two unfreezing stages"))
    if cfg.distill is not None:
        rows.append(("DISTILL_ALPHA", cfg.distill["alpha"], "loss = alpha * new loss + (1 - alpha) * distillation"))
        rows.append(("TEMPERATURE", cfg.distill["temperature"], "softens both distributions"))
    if cfg.l2sp > 0:
        rows.append(("L2SP", cfg.l2sp, "strength of the pull toward the pretrained weights"))
    if cfg.grad_clip is not None:
        rows.append(("GRAD_CLIP", cfg.grad_clip, "largest global gradient norm"))
    if cfg.amp:
        rows.append(("AMP", True, "mixed precision on CUDA"))
    texts = [f"{k} = {json.dumps(v) if isinstance(v, (str, list)) else repr(v)}" for k, v, _ in rows]
    width = max(len(t) for t in texts)
    lines = [f"{t:<{width + 2}}# {note}" if note else t for t, (_, _, note) in zip(texts, rows)]
    return "\n".join(lines)


# ============================================================================== the script's sections
def _imports(futures: set[str]) -> str:
    return "\n".join(sorted(futures) + ([""] if futures else []) + [
        "import copy", "import gc", "import math", "import os", "",
        "import torch",
        "import torch.distributed as dist",
        "import torch.nn.functional as F",
        "from torch import nn",
        "from torch.nn.parallel import DistributedDataParallel",
        "from torch.utils.data import DataLoader, DistributedSampler, Subset",
    ])


def _recipe_sections(code: str) -> list[str]:
    """The recipe functions ``code`` uses (and what they use), their source as the engine runs it."""
    out = []
    for module, sources in recipe_source.sections(code):
        summary = (module.__doc__ or "").strip().splitlines()[0].rstrip(".").replace(", in plain PyTorch", "")
        name = module.__name__.rsplit(".", 1)[-1]
        out.append(_section(f"recipe/{name}.py: {summary[0].lower()}{summary[1:]}", *sources))
    return out


def _model_section(plan: _Plan) -> str:
    lines = ["model = load_pretrained_model().to(device)"]
    if plan.distill:
        lines[0] += ("\n# distillation's teacher: the original model, frozen"
                     "\nteacher = copy.deepcopy(model).eval().requires_grad_(False)")
    lines.append(_block('''
        # Seed after loading (building a model draws random numbers for its initial weights): from here on
        # every rerun and every rank draws the same ones, for the new head and for dropout.
        torch.manual_seed(SEED)
    '''))
    if plan.need_head:
        lines.append("head_name = HEAD or [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]")
    if plan.new_head:
        keeps = "the original task (old_metric) and distillation" if plan.distill else "the original task (old_metric)"
        init = HEAD_INITS[plan.cfg.head_init]
        start = "" if init is default_init else f"\n    {init.__name__}(new_head)  # RunConfig.head_init={plan.cfg.head_init!r}"
        lines.append(_NEW_HEAD.replace("@KEEPS@", keeps).replace("@INIT@", start))
    else:
        lines.append("original_head = None  # the head is kept: the old task is measured through it")
    if plan.distill:
        head = "head_name" if plan.new_head else "None"
        lines.append(f"distill = Distillation(model, {head}, original_head, teacher, DISTILL_ALPHA, TEMPERATURE)")
    return _section("model", *lines)


def _freezing_sections(plan: _Plan) -> list[str]:
    cfg, out = plan.cfg, []
    frz = ["groups = layer_groups(model)"] if plan.groups else []
    if cfg.frozen:
        frz.append(f"{plan.freeze_fn}(model, FROZEN)")
    if cfg.frozen_eval:
        frz.append("eval_frozen(model)  # RunConfig.frozen_eval: layers whose parameters are all frozen run in eval mode")
    if frz:
        title = ("freezing and layer groups" if cfg.frozen else "layer groups") if plan.groups else "freezing"
        out.append(_section(title, *frz))
    note = _DDP_NOTE_GRADUAL if plan.gradual else _DDP_NOTE
    unused = ",\n" + " " * 42 + "find_unused_parameters=True" if plan.gradual else ""
    out.append(_section("DistributedDataParallel", note + "\n" + _DDP_WRAP.replace("@UNUSED@", unused)))
    if plan.gradual:
        out.append(_section("gradual unfreezing (ULMFiT)", f"stage = 0\napply_stage(model, groups, stage, FROZEN, "
                            f"{plan.freeze_fn}, unfreeze)  # only the head group trains at first"))
    return out


def _optimizer_section(plan: _Plan) -> str:
    cfg = plan.cfg
    groups = "param_groups(model, groups, LR, LR_DECAY, WEIGHT_DECAY)" if plan.groups else \
        "param_groups(model, [[\"\"]], LR, 1.0, WEIGHT_DECAY)  # one group: the whole model"
    lines = [f"optimizer_groups = {groups}", {
        "adamw": "optimizer = torch.optim.AdamW(optimizer_groups, lr=LR, weight_decay=WEIGHT_DECAY)",
        "adam": "optimizer = torch.optim.Adam(optimizer_groups, lr=LR, weight_decay=WEIGHT_DECAY)",
        "sgd": "optimizer = torch.optim.SGD(optimizer_groups, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)",
    }[cfg.optimizer]]
    if cfg.l2sp > 0:
        lines.append("l2sp_params, l2sp_start = pretrained_reference(model, head_name)  # L2SP's reference")
    steps = "min(EPOCHS * steps_per_epoch, MAX_STEPS)" if cfg.max_steps is not None else "EPOCHS * steps_per_epoch"
    sched = [f"steps_per_epoch = len(train)\ntotal_steps = {steps}", plan.schedule_call]
    if cfg.amp:
        sched.append("amp_dtype, scaler = mixed_precision(AMP, device)")
    return _section("optimizer and schedule", _join(lines), *sched)


def _loss_section(plan: _Plan) -> str:
    loss = _block(f'''
        def loss_fn(outputs, targets):
            """The run's loss, {plan.cfg.loss!r}, with its settings."""
            return {plan.loss_call}
    ''')
    return _section("loss and metric", _RUN, loss, f"metric = {plan.metric.__name__}  # val_metric: {plan.metric_name}")


def _evaluation_section(plan: _Plan) -> str:
    amp = ", amp_dtype" if plan.cfg.amp else ""
    body = f"totals = evaluation_sums(model, loader, run, choose, device{amp})"
    if plan.new_head:
        body = f"with HeadSwap(model, head_name, original_head if old else None):\n        {body}"
    doc = ("old=True: the original\n    task, through the original head." if plan.new_head
           else "old=True: the original\n    task.")
    return _section("evaluation", f'''def evaluate(loader, old=False):
    """Mean loss and metric over `loader`, all ranks together. {doc}"""
    choose = old_task if old else (lambda logits, targets: (loss_fn, metric))
    {body}
    if DDP:
        dist.all_reduce(totals)  # the ranks' sums: the whole validation set
    return means(totals)''')


def _step(plan: _Plan) -> str:
    """One training step: the engine's pieces, in the engine's order."""
    cfg = plan.cfg
    amp = ", amp_dtype" if cfg.amp else ""
    loss_args = f"train_model, batch, run, loss_fn{amp}" + (", distill=distill" if plan.distill else "")
    lines = TrainingStep.script(f"training_loss({loss_args})", scaler=cfg.amp, l2sp=cfg.l2sp > 0,
                                grad_clip=cfg.grad_clip is not None)
    lines.append("step += 1")
    if not plan.plateau:
        lines.append("if step < total_steps:  # once per optimizer step (none after the last: no step needs its LR)"
                     "\n    scheduler.step()")
    return "\n".join(lines) + "\n" + _STEP_END


def _loop_section(plan: _Plan) -> str:
    stage = _indent(_NEXT_STAGE.replace("@FREEZE@", plan.freeze_fn), 4) + "\n" if plan.gradual else ""
    plateau = _indent(_PLATEAU, 4) + "\n" if plan.plateau else ""
    loop = (_LOOP.replace("@METRIC_NAME@", plan.metric_name).replace("@STAGE@", stage)
            .replace("@STEP@", _indent(_step(plan), 8)).replace("@PLATEAU@", plateau))
    return _section("training", *([EXPORT_NOTE] if plan.cfg.cache_features is not False else []), loop)
