"""LoRA adapters (Hu et al., 2021) as a retraining strategy, added with ``peft``.

A LoRA adapter leaves a layer's weight ``W`` as it is and learns a low-rank update:
``W x + (alpha / r) * B A x`` with ``A`` (r x in) and ``B`` (out x r, zeros at first, so the
adapted model starts as the pretrained one). Only ``A``, ``B`` and the head train: the base
weights stay bit-identical, which limits forgetting, and few parameters train.

``RunConfig(lora_r=8, lora_modules=[...])`` turns it on. :func:`apply_lora` is what the engine
and the store call; :func:`lora_target_names` and :func:`add_lora_adapters` are plain PyTorch +
peft, self-contained, and are written into the exported script as they are
(:func:`export_section`), so the script builds the same adapters.

``peft`` is an optional dependency: ``pip install "retrain_widgets[peft]"``. It is imported
only when adapters are added.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from .config_values import number as _number

__all__ = [
    "PEFT_EXTRA",
    "lora_target_names",
    "attention_projections",
    "add_lora_adapters",
    "apply_lora",
    "CONFIG_FIELDS",
    "is_adaptable",
    "is_adapted",
    "adapter_size",
    "adapter_counts",
    "check_lora",
    "lora_fields",
    "export_section",
]

#: The RunConfig fields that describe a run's adapters (what the store's restore rebuilds).
CONFIG_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_modules")

#: How to install what LoRA needs.
PEFT_EXTRA = 'pip install "retrain_widgets[peft]"'


def lora_target_names(model, patterns, head=None):
    """Dotted names of the modules to adapt: nn.Linear, nn.Conv1d/2d/3d, nn.Embedding and
    Hugging Face's Conv1D (GPT-2). `patterns` are dotted names or glob patterns
    ("*.attention.self.query"); the name of a block stands for the adaptable layers inside it.
    Empty `patterns`: every attention projection (query / key / value and the attention's output).
    The head is never adapted: it trains in full."""
    import fnmatch

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
    qkv = {"query", "key", "value", "qkv", "q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin", "c_attn"}
    in_attention = {"q", "k", "v", "proj", "out_proj", "o_proj", "out_lin", "c_proj", "dense"}
    modules = dict(model.named_modules())

    def adaptable(m):
        return isinstance(m, kinds) or type(m).__name__ == "Conv1D"

    def in_head(n):
        return head is not None and (n == head or n.startswith(head + "."))

    # nn.MultiheadAttention (torchvision's ViT) reads its out_proj's weight itself: an adapter there would never run
    in_mha = {f"{n}.{c}" if n else c for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)
              for c, _ in m.named_children()}
    candidates = [n for n, m in modules.items() if n and adaptable(m) and not in_head(n)
                  and "lora_" not in n and not n.endswith("base_layer") and n not in in_mha]
    if not patterns:
        def attention(n):
            *path, last = n.split(".")
            return last in qkv or (last in in_attention and any("att" in part.lower() for part in path))

        chosen = [n for n in candidates if attention(n)]
        if not chosen:
            raise ValueError(
                f"RunConfig.lora_modules is empty, which means every attention projection, but this model has none "
                f"(no query / key / value layers); name the layers to adapt, e.g. lora_modules={candidates[:2]}"
            )
        return chosen
    chosen = []
    for pattern in patterns:
        if pattern in modules and not adaptable(modules[pattern]):
            found = [n for n in candidates if pattern == "" or n.startswith(pattern + ".")]
        else:
            found = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not found and any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in in_mha):
            raise ValueError(
                f"RunConfig.lora_modules: {pattern!r} is inside an nn.MultiheadAttention, whose forward reads its "
                f"out_proj weight directly (F.multi_head_attention_forward): an adapter there would never run. "
                f"Adapt the MLP layers instead, e.g. {[n for n in candidates if '.mlp.' in n][:2] or candidates[:2]}"
            )
        if not found:
            raise ValueError(
                f"RunConfig.lora_modules: {pattern!r} matches no nn.Linear / Conv / Embedding layer of the model "
                f"outside the head ({head!r}, which trains in full); adaptable layers are e.g. {candidates[:3]}"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def add_lora_adapters(model, targets, r, alpha, dropout, head=None):
    """Add peft's LoRA adapters to the modules named `targets`, in place (no wrapper: every other
    name stays what it was). peft freezes every base weight; the head, when given, trains."""
    import re

    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ImportError('LoRA adapters need the peft package: pip install "retrain_widgets[peft]" '
                          '(or pip install peft)') from exc
    conv1d = any(type(model.get_submodule(n)).__name__ == "Conv1D" for n in targets)  # GPT-2's (in, out) weights
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, fan_in_fan_out=conv1d,
                        target_modules="^(" + "|".join(re.escape(n) for n in targets) + ")$")
    model = inject_adapter_in_model(config, model)
    if head is not None:
        model.get_submodule(head).requires_grad_(True)
    return model


def attention_projections(model: nn.Module, head: str | None = None) -> list[str]:
    """The layers "all attention projections" adapts (``lora_modules=[]``); ``[]`` when none."""
    try:
        return lora_target_names(model, [], head)
    except ValueError:
        return []


def is_adaptable(module: nn.Module) -> bool:
    """Whether LoRA can adapt this layer (Linear, Conv, Embedding, Hugging Face's Conv1D)."""
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)) or \
        type(module).__name__ == "Conv1D"


def is_adapted(model: nn.Module) -> bool:
    """Whether the model already holds LoRA adapters (peft's ``lora_A`` / ``lora_B``)."""
    return any("lora_A" in name or "lora_embedding_A" in name for name, _ in model.named_parameters())


def adapter_size(module: nn.Module, r: int) -> int:
    """Parameters a rank-``r`` adapter adds to ``module`` (peft's shapes), 0 when not adaptable."""
    if isinstance(module, nn.Embedding):
        return r * (module.num_embeddings + module.embedding_dim)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return r * module.in_channels // module.groups * kernel + module.out_channels * r
    if isinstance(module, nn.Linear):
        return r * (module.in_features + module.out_features)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None and weight.dim() == 2:
        return r * (weight.shape[0] + weight.shape[1])
    return 0


def adapter_counts(model: nn.Module) -> dict[str, int]:
    """Adapter parameters per adapted module (dotted name of the adapted layer -> count)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B."):
            if marker in name:
                layer = name.split(marker)[0]
                out[layer] = out.get(layer, 0) + p.numel()
    return out


def _alpha(r: int, alpha: float | None) -> float:
    return float(r if alpha is None else alpha)


def apply_lora(model: nn.Module, config: Any, head: str | None = None) -> nn.Module:
    """Add the adapters ``config`` asks for (a :class:`RunConfig` or its dict); no-op when
    ``lora_r`` is None. Returns the model (changed in place). ``head`` keeps training."""
    get = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
    r = get("lora_r")
    if r is None:
        return model
    if is_adapted(model):
        raise ValueError(
            "RunConfig.lora_r is set but the model already holds LoRA adapters (it was wrapped by peft): "
            "leave lora_r=None to train its adapters as they are"
        )
    targets = lora_target_names(model, list(get("lora_modules") or []), head)
    return add_lora_adapters(model, targets, int(r), _alpha(r, get("lora_alpha")), float(get("lora_dropout") or 0.0),
                             head)


def check_lora(config: Any) -> None:
    """Validate and normalise the ``lora_*`` fields of a :class:`RunConfig` (called by its
    ``validate()``); raise ``ValueError`` naming the field and the fix. ``lora_r=None`` turns
    LoRA off whatever ``lora_modules`` holds, so a what-if grid can vary ``lora_r`` over
    ``[None, 4, 16]`` on one choice of layers."""
    config.lora_r = _number("lora_r", config.lora_r, low=1, whole=True, optional=True)
    config.lora_alpha = _number("lora_alpha", config.lora_alpha, low=0.0, low_open=True, optional=True)
    config.lora_dropout = _number("lora_dropout", config.lora_dropout, low=0.0, high=0.99)
    modules = config.lora_modules
    if isinstance(modules, str) or not all(isinstance(n, str) for n in modules):
        raise ValueError(f"RunConfig.lora_modules must be a list of dotted module names or glob patterns, "
                         f"got {modules!r}")
    config.lora_modules = list(modules)
    if config.lora_r is not None and config.gradual:
        raise ValueError("RunConfig.lora_r and gradual=True exclude each other: gradual unfreezing would unfreeze "
                         "the base weights that LoRA keeps fixed; choose one")


def lora_fields(modules: list[str], config: Any) -> dict[str, Any]:
    """The config changes of a LoRA choice in the layer tree: ``modules`` adapted (rank 8 unless
    one is set); no modules and no "all attention projections" -> LoRA off."""
    if not modules:
        return {"lora_modules": [], "lora_r": None}
    return {"lora_modules": list(modules), "lora_r": config.lora_r or 8}


def export_section(config: Any, rule: str) -> str:
    """The exported script's LoRA section: this module's two functions, as they are, and the
    call that adds the same adapters as the engine (after the new head, before freezing)."""
    r = config.lora_r
    sources = [inspect.getsource(fn) for fn in (lora_target_names, add_lora_adapters)]
    call = (
        f"LORA_R, LORA_ALPHA, LORA_DROPOUT = {r!r}, {_alpha(r, config.lora_alpha)!r}, {config.lora_dropout!r}\n"
        f"LORA_MODULES = {json.dumps(config.lora_modules)}  # dotted names or glob patterns; [] = attention "
        f"projections\n"
        "# Only the adapters and the head train: the base weights keep their pretrained values bit for bit.\n"
        "lora_targets = lora_target_names(model, LORA_MODULES, head=head_name)\n"
        "model = add_lora_adapters(model, lora_targets, LORA_R, LORA_ALPHA, LORA_DROPOUT, head=head_name)"
    )
    return f"{rule}\n# LoRA adapters (peft): W x + (alpha / r) B A x, with B = 0 at first\n" + \
        "\n\n\n".join(s.strip("\n") for s in sources) + "\n\n\n" + call
