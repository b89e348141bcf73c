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

The pieces: :mod:`~retrain_widgets.core.export_plan` (what the config uses, and whether it can be
written out), :mod:`~retrain_widgets.core.export_sections` (the sections that depend on it) and
:mod:`~retrain_widgets.core.export_templates` (the fixed text). Every name stays importable from here.
"""

from __future__ import annotations

import json
import re
import textwrap

from . import lora as lora_mod
from .config import RunConfig
from .export_plan import SUPPORTED_LOSSES, SUPPORTED_SCHEDULES, _plan
from .export_sections import (
    _evaluation_section,
    _freezing_sections,
    _imports,
    _loop_section,
    _loss_section,
    _model_section,
    _optimizer_section,
    _recipe_sections,
    _settings,
)
from .export_templates import (
    _CHECK,
    _DATA,
    _DOCSTRING,
    _PROCESSES,
    _RULE,
    _STUB_DATA,
    _STUB_MODEL,
    DATA_CODE_BEGIN,
    DATA_CODE_END,
    MODEL_CODE_BEGIN,
    MODEL_CODE_END,
    _section,
    _user_block,
)

__all__ = [
    "export_script",
    "SUPPORTED_LOSSES",
    "SUPPORTED_SCHEDULES",
    "MODEL_CODE_BEGIN",
    "MODEL_CODE_END",
    "DATA_CODE_BEGIN",
    "DATA_CODE_END",
]


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
