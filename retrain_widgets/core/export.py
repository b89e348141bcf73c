"""Export a run as a standalone, readable PyTorch training script.

:func:`export_script` turns a :class:`~retrain_widgets.core.config.RunConfig` into the source
of one Python file that trains the way :class:`~retrain_widgets.core.engine.Retrainer` does,
top to bottom, with plain PyTorch only: seed, new head, freezing (BatchNorm included),
parameter groups, the loss, the schedule, gradual unfreezing, distillation, L2-SP, clipping,
validation. It runs as it is with ``python train.py`` and under
``torchrun --nproc_per_node=N train.py`` (DistributedDataParallel).

Only what the configuration uses is written out: one loss, one schedule, and the code of
the strategies that are switched on.
"""

from __future__ import annotations

import copy
import json
import re
import textwrap
from typing import Any

from . import losses as losses_mod
from . import schedules as schedules_mod
from .config import RunConfig
from .feature_cache import EXPORT_NOTE

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


# ============================================================================== losses
_ALIGN = _block('''
    def align(outputs, targets):
        """A one-unit head gives outputs (N, 1) against targets (N,): squeeze them to (N,), or
        F.mse_loss and friends would broadcast the pair to (N, N) and train on nonsense."""
        return outputs.squeeze(-1) if outputs.shape != targets.shape else outputs
''')


def _loss_code(name: str, kw: dict[str, Any]) -> str:
    if name == "ce":
        return _block('''
            def loss_fn(logits, targets):
                """Cross entropy: one logit per class, integer class ids."""
                return F.cross_entropy(logits, targets)
        ''')
    if name == "label_smoothing":
        return _block(f'''
            def loss_fn(logits, targets):
                """Cross entropy with label smoothing: the target keeps 1 - {kw["smoothing"]!r} of its weight,
                the rest is spread over all classes (an over-confident model pays for it)."""
                return F.cross_entropy(logits, targets, label_smoothing={kw["smoothing"]!r})
        ''')
    if name == "focal_multiclass":
        return _block(f'''
            def loss_fn(logits, targets, gamma={kw["gamma"]!r}):
                """Softmax focal loss: -(1 - p_t) ** gamma * log(p_t). Samples the model already gets
                right (p_t near 1) count little, so the rare and hard ones drive the training."""
                log_p = F.log_softmax(logits, dim=1)
                if targets.is_floating_point():  # class probabilities
                    return (-(targets * (1 - log_p.exp()) ** gamma * log_p).sum(dim=1)).mean()
                valid = targets != -100  # cross entropy's ignore_index
                ids = torch.where(valid, targets, torch.zeros_like(targets))
                log_pt = log_p.gather(1, ids.unsqueeze(1)).squeeze(1)
                loss = -((1 - log_pt.exp()) ** gamma) * log_pt * valid
                return loss.sum() / valid.sum().clamp(min=1)
        ''')
    if name == "bce":
        if kw.get("pos_weight") is None:
            return _block('''
                def loss_fn(logits, targets):
                    """Binary cross entropy on logits (float 0/1 targets)."""
                    return F.binary_cross_entropy_with_logits(align(logits, targets), targets)
            ''')
        return _block(f'''
            def loss_fn(logits, targets, pos_weight={kw["pos_weight"]!r}):
                """Binary cross entropy on logits with positive targets weighted by pos_weight (what
                BCEWithLogitsLoss(pos_weight=...) computes): softplus(-x) = -log(sigmoid(x))."""
                x = align(logits, targets)
                return (pos_weight * targets * F.softplus(-x) + (1 - targets) * F.softplus(x)).mean()
        ''')
    if name == "focal":
        head = _block(f'''
            def loss_fn(logits, targets, alpha={kw["alpha"]!r}, gamma={kw["gamma"]!r}):
                """Sigmoid focal loss (Lin et al. 2017; torchvision.ops.sigmoid_focal_loss's formula,
                averaged): BCE scaled by (1 - p_t) ** gamma, so the many easy negatives of an imbalanced
                task stop drowning the few positives."""
                x = align(logits, targets)
                p = torch.sigmoid(x)
                ce = F.binary_cross_entropy_with_logits(x, targets, reduction="none")
                p_t = p * targets + (1 - p) * (1 - targets)  # the probability given to the right answer
                loss = ce * ((1 - p_t) ** gamma)
        ''')
        weight = _block('''
                alpha_t = alpha * targets + (1 - alpha) * (1 - targets)  # positives weigh alpha, negatives 1 - alpha
                loss = alpha_t * loss
        ''')
        return head + "\n" + (_indent(weight, 4) + "\n" if kw["alpha"] >= 0 else "") + "    return loss.mean()"
    if name == "mse":
        return _block('''
            def loss_fn(outputs, targets):
                """Mean squared error."""
                return F.mse_loss(align(outputs, targets), targets)
        ''')
    if name == "huber":
        return _block(f'''
            def loss_fn(outputs, targets):
                """Huber loss: squared below delta={kw["delta"]!r}, linear beyond (outliers pull less)."""
                return F.huber_loss(align(outputs, targets), targets, delta={kw["delta"]!r})
        ''')
    if name == "smooth_l1":
        return _block(f'''
            def loss_fn(outputs, targets):
                """Smooth L1 loss: the Huber loss divided by beta={kw["beta"]!r}."""
                return F.smooth_l1_loss(align(outputs, targets), targets, beta={kw["beta"]!r})
        ''')
    if name == "l1":
        return _block('''
            def loss_fn(outputs, targets):
                """Mean absolute error."""
                return F.l1_loss(align(outputs, targets), targets)
        ''')
    raise AssertionError(name)  # pragma: no cover - guarded by SUPPORTED_LOSSES


#: The losses :func:`export_script` can write out (the built-in ones).
SUPPORTED_LOSSES = ("ce", "label_smoothing", "focal_multiclass", "bce", "focal", "mse", "huber", "smooth_l1", "l1")

_METRICS = _block('''
    def multiclass_accuracy(logits, targets):
        """(right answers, samples): the top logit against the class id."""
        if targets.is_floating_point():  # class probabilities: their top class
            targets = targets.argmax(dim=1)
        hits = logits.argmax(dim=1) == targets
        return hits.sum(dtype=torch.float32), hits.numel()


    def binary_accuracy(logits, targets):
        """(right answers, targets): a logit > 0 means 1."""
        hits = (align(logits, targets) > 0) == (targets > 0.5)
        return hits.sum(dtype=torch.float32), hits.numel()


    def mean_absolute_error(outputs, targets):
        """(sum of |error|, targets)."""
        err = (align(outputs, targets).float() - targets.float()).abs()
        return err.sum(), err.numel()
''')


def _metric_choice(cfg: RunConfig, task: str) -> tuple[str, str]:
    """(function name in the script, metric name) of the validation metric."""
    if cfg.metric == "mae" or (cfg.metric == "auto" and task == "regression"):
        return "mean_absolute_error", "mae"
    if task == "regression":
        raise ValueError("RunConfig.metric='accuracy' needs a classification loss; a regression loss is "
                         "measured with metric='mae' (or 'auto')")
    return ("binary_accuracy" if task == "binary" else "multiclass_accuracy"), "accuracy"


# ============================================================================== schedules
#: The schedules :func:`export_script` can write out (the built-in ones).
SUPPORTED_SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "cosine_warm_restarts",
                       "one_cycle", "cyclic", "warmup_cosine", "slanted_triangular", "reduce_on_plateau")

_SCHED = "torch.optim.lr_scheduler"
_BUILTIN_SCHEDULES = {name: schedules_mod.get(name) for name in SUPPORTED_SCHEDULES}


def _schedule_code(name: str, kw: dict[str, Any]) -> str:
    """Code that builds ``scheduler`` (nothing for ``constant``); ``total_steps`` is known there.

    ``kw`` holds every parameter; ``None`` means "derived from total_steps", as in
    :mod:`retrain_widgets.core.schedules`.
    """
    def given(key: str, derived: str) -> str:
        return derived if kw[key] is None else repr(kw[key])

    if name == "constant":
        return ""
    if name == "step":
        return _block(f'''
            # step decay: every group's LR times {kw["gamma"]!r} every step_size optimizer steps
            step_size = {given("step_size", "max(1, math.ceil(total_steps / 3))")}
            scheduler = {_SCHED}.StepLR(optimizer, step_size=step_size, gamma={kw["gamma"]!r})
        ''')
    if name == "multistep":
        milestones = kw["milestones"]
        if milestones is None:
            expr = "[m for m in sorted({total_steps // 2, 3 * total_steps // 4}) if 1 <= m < total_steps]"
        else:
            expr = repr(sorted(schedules_mod._parse_milestones(milestones)))
        return _block(f'''
            # multi-step decay: every group's LR times {kw["gamma"]!r} at each milestone step{" (half and three quarters of the run)" if milestones is None else ""}
            milestones = {expr}
            scheduler = {_SCHED}.MultiStepLR(optimizer, milestones=milestones, gamma={kw["gamma"]!r})
        ''')
    if name == "exponential":
        return _block(f'''
            # exponential decay: every group's LR times gamma after each step{" (a 100x fall over the run)" if kw["gamma"] is None else ""}
            scheduler = {_SCHED}.ExponentialLR(optimizer, gamma={given("gamma", "0.01 ** (1.0 / total_steps)")})
        ''')
    if name == "cosine":
        return _block(f'''
            # Cosine annealing from each group's own LR down to {kw["eta_min_frac"]!r} of it. A LambdaLR scales
            # every group by the same factor, so discriminative LRs keep their ratios (CosineAnnealingLR's
            # eta_min is one absolute floor for all groups, which would raise a small group's LR).
            T_MAX = {given("T_max", "total_steps")}
            ETA_MIN_FRAC = {kw["eta_min_frac"]!r}


            def lr_factor(step):
                return ETA_MIN_FRAC + (1.0 - ETA_MIN_FRAC) * 0.5 * (1.0 + math.cos(math.pi * (step / T_MAX)))


            scheduler = {_SCHED}.LambdaLR(optimizer, lr_factor)
        ''')
    if name == "cosine_warm_restarts":
        return _block(f'''
            # Cosine annealing with warm restarts (SGDR): the cosine starts again every cycle, and each
            # cycle is T_MULT times longer than the one before. Relative to each group's own LR.
            T_0 = {given("T_0", "max(1, math.ceil(total_steps / 4))")}
            T_MULT = {kw["T_mult"]!r}
            ETA_MIN_FRAC = {kw["eta_min_frac"]!r}


            def lr_factor(step):
                t, cycle = step, T_0
                while t >= cycle:  # which cycle is this step in, and how far into it?
                    t, cycle = t - cycle, cycle * T_MULT
                return ETA_MIN_FRAC + (1.0 - ETA_MIN_FRAC) * 0.5 * (1.0 + math.cos(math.pi * (t / cycle)))


            scheduler = {_SCHED}.LambdaLR(optimizer, lr_factor)
        ''')
    if name == "one_cycle":
        return _block(f'''
            # One cycle (Smith): warm up to each group's own LR (max_lr per group keeps discriminative LRs),
            # then anneal far below it
            scheduler = {_SCHED}.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
                pct_start={kw["pct_start"]!r}, anneal_strategy={json.dumps(kw["anneal_strategy"])}, cycle_momentum={kw["cycle_momentum"]!r},
                div_factor={kw["div_factor"]!r}, final_div_factor={kw["final_div_factor"]!r},
            )
        ''')
    if name == "cyclic":
        up = given("step_size_up", "max(1, total_steps // 8)")
        down = "step_size_up" if kw["step_size_down"] is None else repr(kw["step_size_down"])
        return _block(f'''
            # Cyclical LR (Smith): triangles between {kw["base_frac"]!r} x each group's LR and the group's LR
            step_size_up = {up}
            scheduler = {_SCHED}.CyclicLR(
                optimizer, base_lr=[g["lr"] * {kw["base_frac"]!r} for g in optimizer.param_groups],
                max_lr=[g["lr"] for g in optimizer.param_groups], step_size_up=step_size_up,
                step_size_down={down}, mode={json.dumps(kw["mode"])}, gamma={kw["gamma"]!r}, cycle_momentum=False,
            )
        ''')
    if name == "warmup_cosine":
        return _block(f'''
            # Linear warm-up over the first {kw["warmup_frac"]!r} of the run (large early updates would wreck the
            # pretrained weights before the new head settles), then a cosine down to {kw["eta_min_frac"]!r} of each group's LR
            WARMUP = math.floor(total_steps * {kw["warmup_frac"]!r} + 1e-9)
            ETA_MIN_FRAC = {kw["eta_min_frac"]!r}


            def lr_factor(step):
                if step < WARMUP:
                    return (step + 1) / (WARMUP + 1)
                progress = min(1.0, (step - WARMUP) / max(1, total_steps - WARMUP))
                return ETA_MIN_FRAC + (1.0 - ETA_MIN_FRAC) * 0.5 * (1.0 + math.cos(math.pi * progress))


            scheduler = {_SCHED}.LambdaLR(optimizer, lr_factor)
        ''')
    if name == "slanted_triangular":
        return _block(f'''
            # ULMFiT's slanted triangular LR (Howard & Ruder 2018, eq. 3): a short linear rise over the
            # first {kw["cut_frac"]!r} of the run, then a long linear decay; the lowest LR is 1/{kw["ratio"]!r} of the peak
            CUT_FRAC, RATIO = {kw["cut_frac"]!r}, {kw["ratio"]!r}
            CUT = max(1, math.floor(total_steps * CUT_FRAC + 1e-9))


            def lr_factor(step):
                if step < CUT:
                    p = step / CUT
                else:
                    p = max(0.0, 1.0 - (step - CUT) / (CUT * (1.0 / CUT_FRAC - 1.0)))
                return (1.0 + p * (RATIO - 1.0)) / RATIO


            scheduler = {_SCHED}.LambdaLR(optimizer, lr_factor)
        ''')
    if name == "reduce_on_plateau":
        return _block(f'''
            # Reduce on plateau: every group's LR times {kw["factor"]!r} when the validation loss stops improving;
            # stepped after each validation, not after each optimizer step
            scheduler = {_SCHED}.ReduceLROnPlateau(
                optimizer, mode={json.dumps(kw["mode"])}, factor={kw["factor"]!r}, patience={kw["patience"]!r}, threshold={kw["threshold"]!r},
                cooldown={kw["cooldown"]!r}, min_lr=[g["lr"] * {kw["min_lr_frac"]!r} for g in optimizer.param_groups],
            )
        ''')
    raise AssertionError(name)  # pragma: no cover - guarded by SUPPORTED_SCHEDULES


# ============================================================================== the script
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
    if schedules_mod.get(cfg.schedule) is not _BUILTIN_SCHEDULES.get(cfg.schedule):
        raise ValueError(
            f"export_script writes out the built-in schedules only ({', '.join(SUPPORTED_SCHEDULES)}); "
            f"{cfg.schedule!r} is custom: export with one of those and replace the scheduler in the script"
        )
    spec = losses_mod.get(cfg.loss)
    loss_kw = {k: p.default for k, p in spec.params.items()}
    loss_kw.update({k: v for k, v in cfg.loss_kwargs.items() if v is not None})
    sched_spec = schedules_mod.get(cfg.schedule)
    sched_kw = {k: p.default for k, p in sched_spec.params.items()}
    sched_kw.update({k: v for k, v in cfg.schedule_kwargs.items() if v is not None})
    metric_fn, metric_name = _metric_choice(cfg, spec.task)

    gradual = cfg.gradual
    distill = cfg.distill is not None
    l2sp = cfg.l2sp > 0
    clip = cfg.grad_clip is not None
    amp = cfg.amp
    plateau = sched_spec.metric_driven
    sched = cfg.schedule != "constant"
    # Layer groups: for discriminative LRs and gradual unfreezing, and for clipping, whose global norm
    # sums the parameters in the optimizer's order: the same order as the notebook's run gives the same
    # bits, and a run amplifies a last-bit difference.
    groups = gradual or cfg.lr_decay < 1 or cfg.grad_clip is not None
    freezing = bool(cfg.frozen) or gradual
    new_head = cfg.head_out is not None
    need_head = new_head or l2sp

    futures: set[str] = set()
    model_block = _user_block(model_code, _STUB_MODEL, MODEL_CODE_BEGIN, MODEL_CODE_END, futures)
    data_block = _user_block(data_code, _STUB_DATA, DATA_CODE_BEGIN, DATA_CODE_END, futures)

    parts: list[str] = []

    # ------------------------------------------------------------------ docstring and imports
    head_line = (title or f"Retrain a pretrained model with the {cfg.loss!r} loss").replace("\\", "/").replace('"""', "'''")
    config_json = textwrap.indent(json.dumps(cfg.to_dict(), indent=4), "    ")
    parts.append(f'''"""{head_line}

A standalone PyTorch training script that reproduces the retrain_widgets run of this RunConfig:

{config_json}

Run it with

    python train.py                                        # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=2 train.py      # DistributedDataParallel, 2 processes
"""''')
    imports = ["import copy", "import math", "import os"]
    if amp:
        imports.insert(0, "import contextlib")
    parts.append("\n".join(sorted(futures) + ([""] if futures else []) + imports + [
        "",
        "import torch",
        "import torch.distributed as dist",
        "import torch.nn.functional as F",
        "from torch import nn",
        "from torch.nn.parallel import DistributedDataParallel",
        "from torch.utils.data import DataLoader, DistributedSampler, Subset",
    ]))

    parts.append(_section("settings (the RunConfig's values)", _settings(cfg, need_head, groups)))
    parts.append(model_block)
    parts.append(data_block)

    # ------------------------------------------------------------------ processes and device
    parts.append(_section("processes and device", _block('''
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
    ''')))

    # ------------------------------------------------------------------ data
    parts.append(_section("data", _block('''
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
    ''')))

    # ------------------------------------------------------------------ model
    model_lines = ["model = load_pretrained_model().to(device)"]
    if distill:
        model_lines[0] += ("\n# distillation's teacher: the original model, frozen"
                           "\nteacher = copy.deepcopy(model).eval().requires_grad_(False)")
    model_lines.append(_block('''
        # Seed after loading (building a model draws random numbers for its initial weights): from here on
        # every rerun and every rank draws the same ones, for the new head and for dropout.
        torch.manual_seed(SEED)
    '''))
    if need_head:
        model_lines.append("head_name = HEAD or [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]")
    if new_head:
        model_lines.append(_block('''
            def set_head(module):
                parent, _, child = head_name.rpartition(".")
                setattr(model.get_submodule(parent), child, module)
        '''))
    if new_head:
        keeps = "the original task (old_metric) and distillation" if distill else "the original task (old_metric)"
        model_lines.append(_block(f'''
            # The new head: a fresh nn.Linear with HEAD_OUT outputs on the same layer. The original head is kept
            # for {keeps}.
            old_head = model.get_submodule(head_name)
            if not isinstance(old_head, nn.Linear):
                raise TypeError(f"the head {{head_name!r}} is a {{type(old_head).__name__}}, not an nn.Linear: set HEAD")
            original_head = None
            if old_head.out_features != HEAD_OUT:
                original_head = copy.deepcopy(old_head).eval().requires_grad_(False)
                set_head(nn.Linear(old_head.in_features, HEAD_OUT, bias=old_head.bias is not None,
                                   device=old_head.weight.device, dtype=old_head.weight.dtype))
        '''))
    else:
        model_lines.append("original_head = None  # the head is kept: the old task is measured through it")
    if distill and new_head:
        model_lines.append(_block('''

            # Distillation compares the teacher with the student's answer to the OLD task: the original head
            # applied to the features the new head receives, which a forward pre-hook catches.
            head_input = {}
            head = model.get_submodule(head_name)
            head.register_forward_pre_hook(lambda module, args: head_input.update(x=args[0]))
        '''))
    parts.append(_section("model", *model_lines))

    # ------------------------------------------------------------------ freezing, layer groups, DDP
    frz: list[str] = []
    if freezing:
        frz.append(_block('''
            NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # BatchNorm, InstanceNorm, ...
        ''') if cfg.train_bn else _block('''
            STAT_NORMS = nn.modules.batchnorm._NormBase  # BatchNorm and InstanceNorm: norms with running statistics


            def lock_eval(norm):
                """Keep a norm layer in eval mode: model.train() calls .train() on every submodule, and this
                one now ignores it (an instance attribute shadows the method)."""
                norm.eval()
                norm.train = lambda mode=True: norm
        '''))
        if cfg.train_bn:
            frz.append(_block('''


                def freeze(names):
                    """Freeze the modules `names` and everything inside them but their normalisation layers."""
                    for name in names:
                        for m in model.get_submodule(name).modules():
                            if isinstance(m, NORMS):
                                # train_bn: norm layers keep training (fastai's way): their affine weights learn
                                # and BatchNorm keeps normalising with (and tracking) the new data's statistics
                                m.requires_grad_(True)
                                continue
                            for p in m.parameters(recurse=False):
                                p.requires_grad_(False)
                                # frozen weights get no gradient at all (None, not zeros), so AdamW's weight
                                # decay and SGD's momentum cannot move them
                                p.grad = None
            '''))
        else:
            frz.append(_block('''


                def freeze(names):
                    """Freeze the modules `names` and everything inside them."""
                    for name in names:
                        for m in model.get_submodule(name).modules():
                            if isinstance(m, STAT_NORMS):
                                # BatchNorm inside frozen layers stays in eval mode, even after model.train():
                                # in train mode it would normalise with batch statistics and overwrite its
                                # running ones, changing the frozen layers' outputs though no weight moves
                                lock_eval(m)
                            for p in m.parameters(recurse=False):
                                p.requires_grad_(False)
                                # frozen weights get no gradient at all (None, not zeros), so AdamW's weight
                                # decay and SGD's momentum cannot move them
                                p.grad = None
            '''))
        if gradual:
            unfreeze = _block('''


                def unfreeze(names):
                    for name in names:
                        for m in model.get_submodule(name).modules():
                            for p in m.parameters(recurse=False):
                                p.requires_grad_(True)
            ''')
            if not cfg.train_bn:
                unfreeze += "\n" + _indent(_block('''
                    if "train" in vars(m):  # a norm locked by lock_eval(): it follows model.train() again
                        del m.train
                        m.train(model.training)
                '''), 12)
            frz.append(unfreeze)
    if groups:
        frz.append(_block('''


            CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


            def has_params(m):
                return any(True for _ in m.parameters())


            def is_stack(m):
                """A container of two or more parameterised blocks of one class (e.g. transformer layers)."""
                if not isinstance(m, CONTAINERS):
                    return False
                kinds = [type(c) for c in m.children() if any(True for _ in c.children()) and has_params(c)]
                return any(kinds.count(k) >= 2 for k in kinds)


            def layer_groups(model):
                """The model's blocks, input side first, head last: lists of module names. The root and every
                container are opened, another module only when it holds a stack of repeated blocks; norm
                layers join the group before them. For a CNN: one group per conv (+ BatchNorm) and per Linear."""
                leaves = []

                def visit(name, module):
                    children = [(f"{name}.{c}" if name else c, m)
                                for c, m in module.named_children() if has_params(m)]
                    opened = not name or isinstance(module, CONTAINERS) or any(is_stack(m) for m in module.modules())
                    if children and opened and not any(True for _ in module.parameters(recurse=False)):
                        for child, m in children:
                            visit(child, m)
                    else:
                        leaves.append((name, module))

                visit("", model)
                groups = []
                for name, module in leaves:
                    if groups and (isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
                                   or not has_params(module)):
                        groups[-1].append(name)
                    else:
                        groups.append([name])
                return groups


            groups = layer_groups(model)
        '''))
    if freezing:
        frz.append("freeze(FROZEN)" if cfg.frozen else "")
    frz_title = "freezing" + (" and layer groups" if groups else "") if freezing else "layer groups"
    if frz:
        parts.append(_section(frz_title, *[f for f in frz if f]))

    ddp_note = _block('''
        # DDP averages, during backward, the gradients of the parameters that require grad NOW. Gradual
        # unfreezing turns more on later, so the model is wrapped while every parameter that will ever train
        # is trainable; find_unused_parameters lets DDP skip the ones a stage keeps frozen (their gradients
        # stay None).
    ''') if gradual else _block('''
        # DDP averages the gradients across ranks during backward. It is built after freezing: it syncs only
        # the parameters that require grad when it is built.
    ''')
    unused = ",\n" + " " * 50 + "find_unused_parameters=True" if gradual else ""
    ids = "[device.index] if device.type == \"cuda\" else None"
    parts.append(_section("DistributedDataParallel", ddp_note + "\n" + _block(f'''
        train_model = model  # what the training loop calls; validation uses the plain model
        if DDP:
            device_ids = {ids}
            train_model = DistributedDataParallel(model, device_ids=device_ids{unused})
    ''')))

    if gradual:
        parts.append(_section("gradual unfreezing (ULMFiT)", _block('''
            def apply_stage(stage):
                """Stage s: the top s + 1 layer groups train, the groups below are frozen (FROZEN always is)."""
                top = [name for g in groups[len(groups) - 1 - stage:] for name in g]
                below = [name for g in groups[:len(groups) - 1 - stage] for name in g]
                unfreeze(top)
                freeze(below + [name for name in FROZEN if name not in below])


            stage = 0
            apply_stage(stage)  # only the head group trains at first
        ''')))

    # ------------------------------------------------------------------ optimizer
    norms_line = "NO_DECAY = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # norm layers\n"
    opt_parts: list[str] = []
    if groups:
        opt_parts.append(norms_line + _block('''
            # One group per layer group and decay setting, bottom first. Discriminative learning rates (ULMFiT):
            # the top group gets LR, each group below LR_DECAY x the LR of the one above. Every parameter is in
            # a group, frozen ones included: they have no gradient, so the optimizer skips them, and unfreezing
            # later only flips requires_grad, so the optimizer and the schedule never change mid-run. No weight
            # decay on biases and norm layers: pulling them toward 0 does not regularise, it just hurts.
            param_groups, seen = [], set()
            for i, names in enumerate(groups):
                lr = LR * LR_DECAY ** (len(groups) - 1 - i)
                decay, no_decay = [], []
                for name in names:
                    for m in model.get_submodule(name).modules():
                        for pname, p in m.named_parameters(recurse=False):
                            if id(p) in seen:  # a shared (tied) weight is listed once
                                continue
                            seen.add(id(p))
                            if p.ndim < 2 or pname == "bias" or isinstance(m, NO_DECAY):
                                no_decay.append(p)
                            else:
                                decay.append(p)
                param_groups += [{"params": decay, "lr": lr, "weight_decay": WEIGHT_DECAY},
                                 {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
            param_groups = [g for g in param_groups if g["params"]]
        '''))
    else:
        opt_parts.append(norms_line + _block('''
            # Every parameter, frozen ones included (they have no gradient, so the optimizer skips them). No
            # weight decay on biases and norm layers: pulling them toward 0 does not regularise, it just hurts.
            decay, no_decay, seen = [], [], set()
            for m in model.modules():
                for pname, p in m.named_parameters(recurse=False):
                    if id(p) in seen:  # a shared (tied) weight is listed once
                        continue
                    seen.add(id(p))
                    if p.ndim < 2 or pname == "bias" or isinstance(m, NO_DECAY):
                        no_decay.append(p)
                    else:
                        decay.append(p)
            param_groups = [g for g in ({"params": decay, "weight_decay": WEIGHT_DECAY},
                                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        '''))
    opt_parts.append({
        "adamw": "optimizer = torch.optim.AdamW(param_groups, lr=LR, weight_decay=WEIGHT_DECAY)",
        "adam": "optimizer = torch.optim.Adam(param_groups, lr=LR, weight_decay=WEIGHT_DECAY)",
        "sgd": "optimizer = torch.optim.SGD(param_groups, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)",
    }[cfg.optimizer])
    if l2sp:
        opt_parts.append(_block('''

            # L2-SP (Li et al. 2018): the pretrained weights are the reference that every trainable non-head
            # weight is pulled back toward (the new head has no pretrained value to return to)
            head_ids = {id(p) for p in model.get_submodule(head_name).parameters()}
            pretrained = [(p, p.detach().clone()) for p in model.parameters() if id(p) not in head_ids]
        '''))
    parts.append(_section("optimizer", *opt_parts))

    # ------------------------------------------------------------------ schedule
    steps = "total_steps = EPOCHS * steps_per_epoch"
    if cfg.max_steps is not None:
        steps = "total_steps = min(EPOCHS * steps_per_epoch, MAX_STEPS)"
    sched_text = _schedule_code(cfg.schedule, sched_kw)
    parts.append(_section(
        "learning-rate schedule" + ("" if sched else ": constant (every group keeps its own LR)"),
        "steps_per_epoch = len(train)\n" + steps,
        sched_text,
    ))

    # ------------------------------------------------------------------ AMP
    if amp:
        parts.append(_section("mixed precision", _block('''
            # On CUDA: bf16 where the GPU has it, else fp16 with a GradScaler (small fp16 gradients underflow to 0
            # without loss scaling). Elsewhere everything stays float32.
            amp_dtype = None
            if device.type == "cuda":
                amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None


            def autocast():
                return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        ''')))

    # ------------------------------------------------------------------ loss and metrics
    loss_parts = [_block('''
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
    '''), _ALIGN, _loss_code(cfg.loss, loss_kw), _METRICS,
        f"metric = {metric_fn}  # val_metric: {metric_name}"]
    if distill:
        loss_parts += [_block('''
            def distillation_loss(student_logits, teacher_logits, T):
                """Hinton et al. (2015): T^2 * KL(teacher || student) on temperature-softened distributions,
                summed over classes and averaged over the batch ("batchmean"); T^2 keeps the gradients' size
                independent of T."""
                kl = F.kl_div(F.log_softmax(student_logits / T, dim=1),
                              F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / T, dim=1),
                              reduction="batchmean", log_target=True)
                return kl * (T * T)
        ''')]
    parts.append(_section("loss and metric", *loss_parts))

    # ------------------------------------------------------------------ evaluation
    fwd = "with autocast():\n            logits, targets = run(model, batch)" if amp else "logits, targets = run(model, batch)"
    swap_in = swap_out = ""
    if new_head:
        swap_in = _indent(_block('''
            if old and original_head is not None:  # the old task through the original head
                new_head = model.get_submodule(head_name)
                set_head(original_head)
        '''), 4)
        swap_out = _indent(_block('''
            if old and original_head is not None:
                set_head(new_head)
        '''), 4)
    doc_old = "old=True measures the\n    original task, through the original head." if new_head else "old=True measures the\n    original task."
    evaluate = f'''@torch.no_grad()
def evaluate(loader, old=False):
    \"\"\"Mean loss and metric over `loader` in eval mode, all ranks together. {doc_old}\"\"\"
    model.eval()  # dropout off, BatchNorm on its running statistics
    rng = torch.get_rng_state()  # iterating a loader draws a seed: measuring must not change training
{swap_in}
    loss_sum = torch.zeros((), device=device)
    metric_sum = torch.zeros((), device=device)
    n = count = 0
    loss_of = metric_of = None
    for batch in loader:
        {fwd}
        logits = logits.float()
        if loss_of is None:  # chosen on the first batch
            loss_of, metric_of = old_task(logits, targets) if old else (loss_fn, metric)
        loss_sum += loss_of(logits, targets).float() * len(targets)
        batch_sum, batch_count = metric_of(logits, targets)
        metric_sum += batch_sum
        n += len(targets)
        count += batch_count
{swap_out}
    model.train()
    torch.set_rng_state(rng)
    totals = torch.stack([loss_sum, metric_sum, torch.tensor(float(n), device=device),
                          torch.tensor(float(count), device=device)])
    if DDP:
        dist.all_reduce(totals)  # the ranks' sums: the whole validation set
    return (totals[0] / totals[2]).item(), (totals[1] / totals[3]).item()'''
    evaluate = re.sub(r"\n\n+", "\n", evaluate)
    parts.append(_section("evaluation", _block('''
        def old_task(logits, targets):
            \"\"\"The original task's loss and metric, told from its outputs and targets: class ids (or class
            probabilities) -> cross entropy and accuracy; 0/1 targets -> BCE and accuracy; else MSE and MAE.\"\"\"
            if logits.dim() >= 2 and logits.shape[1] >= 2:
                if not targets.is_floating_point():
                    return F.cross_entropy, multiclass_accuracy
                rows = targets.sum(1) if targets.shape == logits.shape else None
                if rows is not None and (targets >= 0).all() and ((rows - 1).abs() <= 1e-4).all():
                    return F.cross_entropy, multiclass_accuracy  # class probabilities
            if ((targets == 0) | (targets == 1)).all():
                return (lambda o, t: F.binary_cross_entropy_with_logits(align(o, t), t)), binary_accuracy
            return (lambda o, t: F.mse_loss(align(o, t), t)), mean_absolute_error
    '''), evaluate))

    # ------------------------------------------------------------------ the check
    parts.append(_section("one batch before training", _block('''
        # A head of the wrong size or targets of the wrong dtype or shape fail here, in seconds, not after an
        # epoch. It also draws one shuffle from the training loader, as the notebook's run does before it
        # starts, so both see the same batches.
        model.eval()
        with torch.no_grad():
            loss_fn(*run(model, next(iter(train))))

        # The run's own randomness starts here, the same on every rerun: dropout, and the order of the
        # training batches (the loader's generator, when it has one; under DDP the sampler's seed).
        torch.manual_seed(SEED)
        for owner in (train, train.sampler, getattr(train.batch_sampler, "sampler", None)):
            if isinstance(getattr(owner, "generator", None), torch.Generator):
                owner.generator.manual_seed(SEED)
    ''')))

    # ------------------------------------------------------------------ the loop
    body: list[str] = []
    if amp:
        body.append(_block('''
            with autocast():
                logits, targets = run(train_model, batch)
                loss = loss_fn(logits.float(), targets)
        '''))
    else:
        body.append(_block('''
            logits, targets = run(train_model, batch)
            loss = loss_fn(logits, targets)
        '''))
    if distill:
        student_old = ("original_head(head_input[\"x\"]) if original_head is not None else logits"
                       if new_head else "logits  # the head is the original one")
        d = _block(f'''
            # distillation: learn the new task, keep the answers to the old one close to the teacher's
            with torch.no_grad():
                teacher_logits, _ = run(teacher, batch)
            student_old = {student_old}
            kd = distillation_loss(student_old.float(), teacher_logits.float(), TEMPERATURE)
            loss = DISTILL_ALPHA * loss + (1 - DISTILL_ALPHA) * kd
        ''')
        body.append(_indent(d, 4) if amp else d)
    if amp:
        body.append(_block('''
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # true gradients, for L2-SP and clipping
            else:
                loss.backward()  # under DDP this also averages the gradients across ranks
        '''))
    else:
        body.append(_block('''
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP this also averages the gradients across ranks
        '''))
    if l2sp:
        body.append(_block('''
            with torch.no_grad():  # L2-SP: the gradient of L2SP / 2 * ||w - w0||^2 is L2SP * (w - w0)
                for p, w0 in pretrained:
                    if p.grad is not None:  # trainable now
                        p.grad.add_(p - w0, alpha=L2SP)
        '''))
    if clip:
        body.append(_block('''
            # clip the global gradient norm: one bad batch cannot throw the pretrained weights far away
            trainable = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
        '''))
    if amp:
        body.append(_block('''
            if scaler is not None:
                scaler.step(optimizer)  # skipped when fp16 gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            step += 1
        '''))
    else:
        body.append("optimizer.step()\nstep += 1")
    if sched and not plateau:
        body.append(_block('''
            if step < total_steps:  # once per optimizer step (none after the last: no step needs its LR)
                scheduler.step()
        '''))
    body.append(_block('''
        loss_sum += loss.detach()
        n_steps += 1
        if step >= total_steps:
            break
    '''))
    loop_body = _indent("\n".join(body), 8)

    stage_text = ""
    if gradual:
        stage_text = _indent(_block('''
            next_stage = min(epoch // UNFREEZE_EVERY, len(groups) - 1)
            if next_stage != stage:  # the next group down starts training
                stage = next_stage
                apply_stage(stage)
                log(f"stage {stage}: unfroze {groups[len(groups) - 1 - stage][0]}")
        '''), 4) + "\n"
    plateau_text = ""
    if plateau:
        plateau_text = _indent(_block('''
            # reduce_on_plateau: stepped with the validation loss (no validation set: the last step's loss)
            if val is not None:
                scheduler.step(results["val_loss"])
            else:
                last_loss = loss.detach().clone()
                if DDP:
                    dist.all_reduce(last_loss)
                    last_loss /= WORLD_SIZE
                scheduler.step(last_loss.item())
        '''), 4) + "\n"
    loop = f'''log(f"{{total_steps}} optimizer steps ({{EPOCHS}} epochs of {{steps_per_epoch}}), "
    f"{{WORLD_SIZE}} process(es) on {{device}}; val_metric: {metric_name}")
step = 0
for epoch in range(EPOCHS):
    if step >= total_steps:
        break
{stage_text}    if DDP:
        train.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
    model.train()  # dropout on; trainable BatchNorm on batch statistics (locked ones stay in eval)
    loss_sum = torch.zeros((), device=device)
    n_steps = 0
    for batch in train:
{loop_body}
    train_loss = loss_sum / n_steps
    if DDP:
        dist.all_reduce(train_loss)
        train_loss /= WORLD_SIZE
    results = {{"train_loss": train_loss.item()}}
    if not math.isfinite(results["train_loss"]):
        raise FloatingPointError(f"training loss {{results['train_loss']}} in epoch {{epoch + 1}}: lower LR, "
                                 f"set GRAD_CLIP, or check the data and the loss")
    if DDP:  # BatchNorm's running statistics differ per rank (each saw its own batches): use rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    if val is not None:
        results["val_loss"], results["val_metric"] = evaluate(val)
    if old_val is not None:
        results["old_loss"], results["old_metric"] = evaluate(old_val, old=True)
{plateau_text}    numbers = "  ".join(f"{{k}} {{v:.4f}}" for k, v in results.items())
    log(f"epoch {{epoch + 1}}/{{EPOCHS}}, step {{step}}: {{numbers}}")

# the last validation, on one line that is easy to parse
final = {{k: results[k] for k in ("val_loss", "val_metric", "old_metric") if k in results}}
log("final: " + " ".join(f"{{k}}={{v:.8g}}" for k, v in final.items()))
if DDP:
    dist.destroy_process_group()'''
    parts.append(_section("training", *([EXPORT_NOTE] if cfg.cache_features is not False else []), loop))

    def tidy(part: str) -> str:
        if part in (model_block, data_block):  # the given code stays as it is
            return part.strip("\n")
        part = re.sub(r"[ \t]+\n", "\n", part)
        return re.sub(r"\n{4,}", "\n\n\n", part).strip("\n")

    return "\n\n\n".join(tidy(p) for p in parts if p.strip()) + "\n"
