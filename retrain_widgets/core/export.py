"""Export a run as a standalone, readable PyTorch training script made of the engine's own code.

:func:`export_script` turns a :class:`~retrain_widgets.core.config.RunConfig` into the source
of one Python file that trains the way :class:`~retrain_widgets.core.engine.Retrainer` does.
Every piece of the recipe in it (freezing with the BatchNorm lock, parameter groups, the loss,
the schedule, one training step, evaluation, the old task through the original head) is the
source of the very function the engine calls, taken from :mod:`retrain_widgets.core.recipe`
with :func:`inspect.getsource` (see :mod:`retrain_widgets.core.recipe_source`), with only what
the configuration uses. What is written here is the glue: settings, processes and devices
(``torchrun`` and DistributedDataParallel), data sharding, loading the model and the new head,
the layer groups, and a main loop that reads top to bottom.
"""

from __future__ import annotations

import copy
import json
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import lora as lora_mod
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import recipe_source
from . import schedules as schedules_mod
from .config import RunConfig
from .feature_cache import EXPORT_NOTE
from .recipe.training import HEAD_INITS, default_init
from .step import TrainingStep

__all__ = [
    "export_script",
    "SUPPORTED_LOSSES",
    "SUPPORTED_SCHEDULES",
    "MODEL_CODE_BEGIN",
    "MODEL_CODE_END",
    "DATA_CODE_BEGIN",
    "DATA_CODE_END",
]

#: Markers around the model and data code in an exported script.
MODEL_CODE_BEGIN = "# ===== model code: load_pretrained_model() ====="
MODEL_CODE_END = "# ===== end of model code ====="
DATA_CODE_BEGIN = "# ===== data code: make_loaders() ====="
DATA_CODE_END = "# ===== end of data code ====="

_RULE = "# " + "-" * 98


def _block(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _ends_with_def(text: str) -> bool:
    """Whether the last top-level statement of ``text`` is a function or class definition."""
    for line in reversed(text.splitlines()):
        if line and not line[0].isspace() and not line.startswith((")", "]", "}", "#")):
            return line.startswith(("def ", "class ", "@"))
    return False


def _join(parts: list[str] | tuple[str, ...]) -> str:
    """Paragraphs of code: two blank lines around a function, one between statements."""
    out = ""
    for part in (p.strip("\n") for p in parts):
        if not part.strip():
            continue
        if out:
            around_def = part.startswith(("def ", "@", "class ")) or _ends_with_def(out)
            out += "\n\n\n" if around_def else "\n\n"
        out += part
    return out


def _section(title: str, *parts: str) -> str:
    return f"{_RULE}\n# {title}\n{_join(parts)}"


def _indent(text: str, n: int) -> str:
    return textwrap.indent(text, " " * n)


# ============================================================================== the script's fixed text
_DOCSTRING = '''"""@HEAD_LINE@

A standalone PyTorch training script that reproduces the retrain_widgets run of this RunConfig:

@CONFIG_JSON@

It is made of the functions the notebook's run calls (the recipe sections, copied from
retrain_widgets/core/recipe/), then a short main part that reads top to bottom. Run it with

    python train.py                                        # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=2 train.py      # DistributedDataParallel, 2 processes
"""'''

_PROCESSES = _block('''
        # torchrun starts one process per GPU (or CPU slot) and sets WORLD_SIZE, RANK and LOCAL_RANK; a plain
        # `python` run has none of them and does not touch torch.distributed
        WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))
        RANK = int(os.environ.get("RANK", "0"))
        DDP = WORLD_SIZE > 1


        def log(*args):
            if RANK == 0:  # every rank computes the same numbers: print them once
                print(*args, flush=True)


        if DEVICE == "auto":
            mps = torch.backends.mps.is_available()
            DEVICE = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
        device = torch.device(DEVICE)
        if DDP:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
                torch.cuda.set_device(device)
            # NCCL between GPUs, gloo between CPU processes
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ''')

_DATA = _block('''
        # Under DDP each process gets 1/WORLD_SIZE of every batch: the global batch, and so the learning
        # rate that suits it, stays what it is in one process.
        train, val, old_val = make_loaders(batch_size_divisor=WORLD_SIZE)


        def shard(loader):
            """This rank's part of a validation loader: every WORLD_SIZE-th sample from RANK on, so the
            ranks split the set exactly (no sample twice, none left out)."""
            if loader is None:
                return None
            part = Subset(loader.dataset, range(RANK, len(loader.dataset), WORLD_SIZE))
            return DataLoader(part, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                              num_workers=loader.num_workers)


        if DDP and not isinstance(train, DataLoader):
            raise TypeError("under DDP make_loaders() must return a DataLoader for train: its sampler is replaced")
        if DDP:
            # Each rank trains on its own shard of every epoch: DistributedSampler shuffles with the same
            # seed on every rank and deals the samples out. A DataLoader's sampler cannot be swapped, hence
            # a new loader over the same dataset.
            sampler = DistributedSampler(train.dataset, shuffle=True, seed=SEED)
            # (drop_last: a last batch of one sample would make BatchNorm fail in train mode)
            train = DataLoader(train.dataset, batch_size=train.batch_size, sampler=sampler,
                               collate_fn=train.collate_fn, num_workers=train.num_workers,
                               pin_memory=train.pin_memory,
                               drop_last=train.drop_last or len(sampler) % train.batch_size == 1)
            val, old_val = shard(val), shard(old_val)
    ''')

_NEW_HEAD = _block('''
    def set_head(module):
        parent, _, child = head_name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)


    # The new head: a fresh nn.Linear with HEAD_OUT outputs on the same layer. The original head is kept
    # for @KEEPS@.
    old_head = model.get_submodule(head_name)
    if not isinstance(old_head, nn.Linear):
        raise TypeError(f"the head {head_name!r} is a {type(old_head).__name__}, not an nn.Linear: set HEAD")
    original_head = None
    if old_head.out_features != HEAD_OUT:
        original_head = copy.deepcopy(old_head).eval().requires_grad_(False)
        new_head = nn.Linear(old_head.in_features, HEAD_OUT, bias=old_head.bias is not None,
                             device=old_head.weight.device, dtype=old_head.weight.dtype)
        new_head.train(old_head.training)@INIT@
        set_head(new_head)
''')

_DDP_NOTE_GRADUAL = _block('''
    # DDP averages, during backward, the gradients of the parameters that require grad NOW. Gradual
    # unfreezing turns more on later, so the model is wrapped while every parameter that will ever train
    # is trainable; find_unused_parameters lets DDP skip the ones a stage keeps frozen (their gradients
    # stay None).
''')
_DDP_NOTE = _block('''
    # DDP averages the gradients across ranks during backward. It is built after freezing: it syncs only
    # the parameters that require grad when it is built.
''')
_DDP_WRAP = _block('''
    train_model = model  # what the training loop calls; validation uses the plain model
    if DDP:
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids@UNUSED@)
''')

_RUN = _block('''
    def run(net, batch):
        """(logits, targets) of a batch: (inputs, targets) tuples, or dicts with the targets under
        "labels" and the rest passed as keyword arguments (Hugging Face style)."""
        if isinstance(batch, dict):
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = batch.pop("labels")
            out = net(**batch)
        else:
            inputs, targets = (t.to(device) for t in batch)
            out = net(inputs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return getattr(out, "logits", out), targets
''')

_CHECK = _block('''
    # A head of the wrong size or targets of the wrong dtype or shape fail here, in seconds, not after an
    # epoch. It also draws one shuffle from the training loader, as the notebook's run does before it
    # starts, so both see the same batches.
    model.eval()
    with torch.no_grad():
        loss_fn(*run(model, next(iter(train))))

    # The run's own randomness starts here, the same on every rerun: dropout, and the order of the
    # training batches (the loader's generator, when it has one; under DDP the sampler's seed).
    seed_run(SEED, train)
''')

_STEP_END = _block('''
    loss_sum += loss.detach()
    n_steps += 1
    if step >= total_steps:
        break
''')

_NEXT_STAGE = _block('''
    next_stage = min(epoch // UNFREEZE_EVERY, len(groups) - 1)
    if next_stage != stage:  # the next group down starts training
        stage = next_stage
        apply_stage(model, groups, stage, FROZEN, @FREEZE@, unfreeze)
        log(f"stage {stage}: unfroze {groups[len(groups) - 1 - stage][0]}")
''')

_PLATEAU = _block('''
    # reduce_on_plateau: stepped with the validation loss (no validation set: the last step's loss)
    if val is not None:
        scheduler.step(results["val_loss"])
    else:
        last_loss = loss.detach().clone()
        if DDP:
            dist.all_reduce(last_loss)
            last_loss /= WORLD_SIZE
        scheduler.step(last_loss.item())
''')

_LOOP = '''log(f"{total_steps} optimizer steps ({EPOCHS} epochs of {steps_per_epoch}), "
    f"{WORLD_SIZE} process(es) on {device}; val_metric: @METRIC_NAME@")
step = 0
for epoch in range(EPOCHS):
    if step >= total_steps:
        break
@STAGE@    if DDP:
        train.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
    model.train()  # dropout on; trainable BatchNorm on batch statistics (locked ones stay in eval)
    loss_sum = torch.zeros((), device=device)
    n_steps = 0
    for batch in train:
@STEP@
    train_loss = loss_sum / n_steps
    if DDP:
        dist.all_reduce(train_loss)
        train_loss /= WORLD_SIZE
    results = {"train_loss": train_loss.item()}
    if not math.isfinite(results["train_loss"]):
        raise FloatingPointError(f"training loss {results['train_loss']} in epoch {epoch + 1}: lower LR, "
                                 f"set GRAD_CLIP, or check the data and the loss")
    if DDP:  # BatchNorm's running statistics differ per rank (each saw its own batches): use rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    if val is not None:
        results["val_loss"], results["val_metric"] = evaluate(val)
    if old_val is not None:
        results["old_loss"], results["old_metric"] = evaluate(old_val, old=True)
@PLATEAU@    numbers = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
    log(f"epoch {epoch + 1}/{EPOCHS}, step {step}: {numbers}")

# the last validation, on one line that is easy to parse
final = {k: results[k] for k in ("val_loss", "val_metric", "old_metric") if k in results}
log("final: " + " ".join(f"{k}={v:.8g}" for k, v in final.items()))
if DDP:
    dist.destroy_process_group()'''


# ============================================================================== the given code
_STUB_MODEL = _block('''
    def load_pretrained_model():
        """Return the pretrained model (a torch.nn.Module) with its weights loaded."""
        raise NotImplementedError(
            "load_pretrained_model() is a stub: write code here that builds the model and loads its "
            "pretrained weights, for example\\n"
            "    model = MyNet()\\n"
            "    model.load_state_dict(torch.load('pretrained.pt', map_location='cpu', weights_only=True))\\n"
            "    return model\\n"
            "or export the script with model_code=... (a source that defines load_pretrained_model())"
        )
''')

_STUB_DATA = _block('''
    def make_loaders(batch_size_divisor=1):
        """Return (train, val, old_val) DataLoaders; val and old_val may be None.

        Batches are (inputs, targets) tuples or dicts with the targets under "labels". old_val holds
        the ORIGINAL task's data, to measure what the model forgets. Under DDP the script passes
        batch_size_divisor=world size: build the loaders with batch_size // batch_size_divisor.
        """
        raise NotImplementedError(
            "make_loaders() is a stub: write code here that returns (train, val, old_val) DataLoaders "
            "(val and old_val may be None), with batch_size // batch_size_divisor samples per batch, e.g.\\n"
            "    train = DataLoader(train_set, batch_size=64 // batch_size_divisor, shuffle=True,\\n"
            "                       generator=torch.Generator().manual_seed(0))\\n"
            "    return train, DataLoader(val_set, batch_size=64 // batch_size_divisor), None\\n"
            "or export the script with data_code=... (a source that defines make_loaders())"
        )
''')

_FUTURE = re.compile(r"^from __future__ import [^\n]*\n?", re.MULTILINE)


def _user_block(code: str | None, stub: str, begin: str, end: str, futures: set[str]) -> str:
    if code is None:
        body = stub
    else:
        for m in _FUTURE.finditer(code):
            futures.add(m.group(0).strip())
        body = _FUTURE.sub("", textwrap.dedent(code)).strip("\n")
    return f"{begin}\n{body}\n{end}"


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


# ============================================================================== what the config uses
#: The losses :func:`export_script` can write out (the built-in ones).
SUPPORTED_LOSSES = ("ce", "label_smoothing", "focal_multiclass", "bce", "focal", "mse", "huber", "smooth_l1", "l1")
#: The schedules :func:`export_script` can write out (the built-in ones).
SUPPORTED_SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "cosine_warm_restarts",
                       "one_cycle", "cyclic", "warmup_cosine", "slanted_triangular", "reduce_on_plateau")
_BUILTIN_SCHEDULES = {name: schedules_mod.get(name) for name in SUPPORTED_SCHEDULES}


@dataclass(frozen=True)
class _Plan:
    """What a config's script contains: the engine's own functions and their settings."""

    cfg: RunConfig
    loss_call: str  # the loss formula called with the config's settings
    metric: Callable[..., Any]  # the validation metric's recipe function
    metric_name: str
    schedule_call: str  # the schedule builder called with the config's settings
    plateau: bool

    @property
    def gradual(self) -> bool:
        return self.cfg.gradual

    @property
    def distill(self) -> bool:
        return self.cfg.distill is not None

    @property
    def new_head(self) -> bool:
        return self.cfg.head_out is not None

    @property
    def need_head(self) -> bool:
        return self.new_head or self.cfg.l2sp > 0 or self.cfg.lora_r is not None

    @property
    def groups(self) -> bool:
        # Layer groups: for discriminative LRs and gradual unfreezing, and for clipping, whose global norm
        # sums the parameters in the optimizer's order: the same order as the notebook's run gives the same
        # bits, and a run amplifies a last-bit difference.
        return self.gradual or self.cfg.lr_decay < 1 or self.cfg.grad_clip is not None

    @property
    def freeze_fn(self) -> str:
        return "freeze_keep_norms" if self.cfg.train_bn else "freeze"


def _call(fn: Callable[..., Any], args: str, kwargs: dict[str, Any], prefix: str = "", width: int = 100) -> str:
    """``prefix + fn(args, key=value, ...)`` as source, the arguments wrapped under the parenthesis."""
    items = [args, *(f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}" for k, v in kwargs.items())]
    lines, indent = [f"{prefix}{fn.__name__}("], " " * (len(prefix) + len(fn.__name__) + 1)
    for i, item in enumerate(items):
        text = item + (", " if i < len(items) - 1 else ")")
        if len(lines[-1]) + len(text.rstrip()) > width and lines[-1].strip():
            lines[-1] = lines[-1].rstrip()
            lines.append(indent)
        lines[-1] += text
    return "\n".join(lines)


def _plan(config: RunConfig) -> _Plan:
    """Check that ``config`` can be written out; find the functions the engine would call for it."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"export_script needs a RunConfig, got {type(config).__name__}")
    cfg = copy.copy(config).validate()
    if not isinstance(cfg.loss, str) or cfg.loss not in SUPPORTED_LOSSES or \
            losses_mod.get(cfg.loss) is not losses_mod._BUILTIN.get(cfg.loss):
        label = cfg.loss if isinstance(cfg.loss, str) else getattr(cfg.loss, "__name__", "a callable")
        raise ValueError(
            f"export_script writes out the built-in losses only ({', '.join(SUPPORTED_LOSSES)}); the loss "
            f"{label!r} is custom: export with a built-in loss and replace loss_fn() in the script by hand"
        )
    spec = schedules_mod.get(cfg.schedule)
    if spec is not _BUILTIN_SCHEDULES.get(cfg.schedule):
        raise ValueError(
            f"export_script writes out the built-in schedules only ({', '.join(SUPPORTED_SCHEDULES)}); "
            f"{cfg.schedule!r} is custom: export with one of those and replace the scheduler in the script"
        )
    loss = losses_mod.make(cfg.loss, **cfg.loss_kwargs).fn  # what the engine calls (inside its shape checks)
    formula = getattr(loss, "func", loss)
    try:
        metric = metrics_mod.select(cfg.metric, losses_mod.get(cfg.loss).task)
    except ValueError as exc:
        raise ValueError(f"RunConfig.metric={cfg.metric!r}: {exc}") from None
    given = {k: p.default for k, p in spec.params.items()}
    given.update({k: v for k, v in cfg.schedule_kwargs.items() if v is not None})
    if given.get("milestones") is not None:
        given["milestones"] = sorted(schedules_mod.parse_milestones(given["milestones"]))
    given = {k: v for k, v in given.items() if v is not None}  # None: derived from total_steps by the builder
    return _Plan(cfg, _call(formula, "outputs, targets", getattr(loss, "keywords", {})), metric.fn, metric.name,
                 _call(spec.build, "optimizer, total_steps", given, "scheduler = "), spec.metric_driven)


# ============================================================================== the script's sections
def _imports(futures: set[str]) -> str:
    return "\n".join(sorted(futures) + ([""] if futures else []) + [
        "import copy", "import math", "import os", "",
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


def export_script(config: RunConfig, *, model_code: str | None = None, data_code: str | None = None,
                  title: str = "") -> str:
    """Return the source of a standalone PyTorch script that reproduces the run of ``config``.

    The script is plain PyTorch, written top to bottom with short comments on why each step
    is there; it contains only what ``config`` uses (one loss, one schedule, the strategies
    switched on). It does what :class:`~retrain_widgets.core.engine.Retrainer` does: seeds
    torch after loading the model, replaces the head with a fresh ``nn.Linear`` on the same
    layer (keeping the original head for the old task and distillation), freezes modules with
    their BatchNorm locked in eval mode (unless ``train_bn``), builds the optimizer's groups
    for every parameter (layer groups with discriminative LRs, no weight decay on biases and
    norms), steps the schedule once per optimizer step, unfreezes gradually, distils, pulls
    toward the pretrained weights (L2-SP), clips, validates each epoch (loss and metric, and
    the original task through the original head) and prints
    ``final: val_loss=<x> val_metric=<x> old_metric=<x>`` (absent ones omitted).

    The same script runs under ``torchrun --nproc_per_node=N``: with ``WORLD_SIZE > 1`` it
    starts a process group (NCCL on CUDA, gloo on the CPU), wraps the model in
    ``DistributedDataParallel``, gives each rank ``batch // N`` samples of every batch through
    a ``DistributedSampler`` (the global batch is unchanged), splits the validation sets
    between the ranks and sums their results with ``all_reduce``, and prints on rank 0 only.

    Parameters
    ----------
    config
        The run. Its loss and schedule must be built-in ones (:data:`SUPPORTED_LOSSES`,
        :data:`SUPPORTED_SCHEDULES`); a custom callable or registered loss cannot be written
        out.
    model_code
        Source defining ``load_pretrained_model() -> nn.Module``. ``None``: the script holds a
        stub that raises ``NotImplementedError`` saying what to write.
    data_code
        Source defining ``make_loaders(batch_size_divisor: int = 1) -> (train, val, old_val)``
        (``val`` / ``old_val`` may be ``None``; ``train`` must be a ``DataLoader`` for DDP,
        whose sampler the script replaces). ``None``: a stub, as for ``model_code``.
        :func:`retrain_widgets.examples.code` gives both for the bundled example.
    title
        First line of the script's docstring.

    Returns
    -------
    str
        The script's source. It imports torch and whatever ``model_code`` / ``data_code``
        import, nothing else of this package.

    Raises
    ------
    ValueError
        For a custom loss or schedule, or ``metric='accuracy'`` with a regression loss.

    Notes
    -----
    Agreement with the in-notebook run (``Retrainer(...).fit()``) on the same data, measured on
    the CPU on the bundled example (``tests/test_export.py``). One process: the same numbers,
    bit for bit, because the script draws its random numbers in the engine's order (the seed
    after loading, the new head's initialisation, the one batch checked before training, which
    advances the training loader's generator, dropout, the validation loaders' iterations) and
    sums in the same order (with gradient clipping the parameter groups follow the layer groups
    for that reason). The tests allow 1e-4 relative on the losses and 1e-6 on the metrics. A
    different number of CPU threads changes reduction orders: about 1e-4 relative on the loss
    after two epochs. Under DDP (2 processes, gloo) the run differs as a new seed would: each
    rank sees other batches (``DistributedSampler``'s shuffle) and the BatchNorm layers that
    train normalise with per-rank half batches (validation uses rank 0's running statistics).
    Measured on the focal-loss example: val_loss 0.0011 -> 0.0016, val_metric 1.0 -> 1.0,
    old_metric 0.728 -> 0.758; the tests allow 0.005 on val_loss, 0.02 on val_metric and 0.1
    on old_metric (seeds 0 to 5 of the single-process run already spread old_metric over
    0.59 to 0.73).
    """
    plan = _plan(config)
    cfg = plan.cfg
    futures: set[str] = set()
    model_block = _user_block(model_code, _STUB_MODEL, MODEL_CODE_BEGIN, MODEL_CODE_END, futures)
    data_block = _user_block(data_code, _STUB_DATA, DATA_CODE_BEGIN, DATA_CODE_END, futures)
    head_line = (title or f"Retrain a pretrained model with the {cfg.loss!r} loss").replace("\\", "/").replace('"""', "'''")
    config_json = textwrap.indent(json.dumps(cfg.to_dict(), indent=4), "    ")
    main = [
        _section("processes and device", _PROCESSES),
        _section("data", _DATA),
        _model_section(plan),
        lora_mod.export_section(cfg, _RULE) if cfg.lora_r is not None else "",  # the engine's LoRA functions
        *_freezing_sections(plan),
        _optimizer_section(plan),
        _loss_section(plan),
        _evaluation_section(plan),
        _section("one batch before training", _CHECK),
        _loop_section(plan),
    ]
    parts = [
        _DOCSTRING.replace("@HEAD_LINE@", head_line).replace("@CONFIG_JSON@", config_json),
        _imports(futures),
        _section("settings (the RunConfig's values)", _settings(cfg, plan.need_head, plan.groups)),
        model_block,
        data_block,
        *_recipe_sections("\n".join(main)),
        *main,
    ]

    def tidy(part: str) -> str:
        if part in (model_block, data_block):  # the given code stays as it is
            return part.strip("\n")
        part = re.sub(r"[ \t]+\n", "\n", part)
        return re.sub(r"\n{4,}", "\n\n\n", part).strip("\n")

    return "\n\n\n".join(tidy(p) for p in parts if p.strip()) + "\n"
