"""Layer groups: the blocks of a model for discriminative LRs and gradual unfreezing, from
the model's own ``group_matcher()`` (timm) when it has one, else by our rule."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .dotted_names import cover
from .recipe import freezing as recipe_freezing

__all__ = ["LayerGroup", "layer_groups", "matcher_groups"]


@dataclass(frozen=True)
class LayerGroup:
    """A block of the model used for discriminative LRs and gradual unfreezing.

    ``name`` is the first member's dotted name; ``modules`` are the dotted names of its
    member modules, bottom (input side) first.
    """

    name: str
    modules: tuple[str, ...]


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Split the model into blocks, input side first, head last; every parameter is in exactly
    one group.

    A model that brings its own grouping, timm's ``group_matcher()``, is grouped by it
    (:func:`matcher_groups`). Otherwise the rule: the root and every container
    (``Sequential`` / ``ModuleList`` / ``ModuleDict``) are opened; another module is opened
    only when it holds a stack of repeated blocks (e.g. a BERT encoder's layers). Parameters
    that an opened module holds itself (a ViT's ``cls_token`` / ``pos_embed``, torchvision's
    ``encoder.pos_embedding``) join the input side: the first group inside the root, the group
    before a module inside, as timm puts them in its stem group. Normalisation layers
    and parameter-free modules join the group before them; a layer whose parameters are all tied
    to earlier ones (GPT-2's ``lm_head``) is in no group, its weight being in the first. Examples: the bundled CNN gives one
    group per conv(+BN) and per Linear; a ResNet gives the stem, each residual block and ``fc``;
    a BERT classifier gives the embeddings, each encoder layer, the pooler and the classifier.
    """
    if callable(getattr(model, "group_matcher", None)):
        groups = matcher_groups(model)
        if groups:
            return groups
    return [LayerGroup(name=g[0] or "(model)", modules=tuple(g)) for g in recipe_freezing.layer_groups(model)]


_MATCH_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP: join the group before


def _matcher_key(rules: list[tuple[re.Pattern[str], float, Any]], name: str) -> tuple[float, ...]:
    for pattern, ordinal, suffix in rules:
        found = pattern.match(name)
        if found:
            numbers = [float(g) for g in found.groups() if g is not None]
            return (ordinal, *numbers, *(float(x) for x in (suffix or ())))
    return (math.inf,)  # unmatched (neck, head): last


def matcher_groups(model: nn.Module, coarse: bool = False) -> list[LayerGroup]:
    """Layer groups from the model's own ``group_matcher(coarse)`` (timm's convention).

    The matcher is a dict ``{group: regex or [(regex, suffix), ...]}`` over parameter names,
    or a callable ``name -> ordinal``; parameters with the same ordinal form a group, in
    ordinal order, unmatched ones (the head) last; an ordinal ending in 99999 joins the group
    before. Each group lists the fewest module / parameter names that cover exactly its
    parameters. Returns ``[]`` when the matcher is not of that shape.
    """
    spec = model.group_matcher(coarse=coarse)
    if isinstance(spec, dict):
        rules: list[tuple[re.Pattern[str], float, Any]] = []
        for ordinal, entry in enumerate(spec.values()):
            if entry is None:
                continue
            pairs = entry if isinstance(entry, (list, tuple)) else [(entry, None)]
            rules += [(re.compile(pattern), float(ordinal), suffix) for pattern, suffix in pairs]

        def key(name: str) -> tuple[float, ...]:
            return _matcher_key(rules, name)
    elif callable(spec):
        def key(name: str) -> tuple[float, ...]:
            k = spec(name)
            return tuple(float(x) for x in k) if isinstance(k, Iterable) else (float(k),)
    else:
        return []
    by_key: dict[tuple[float, ...], set[int]] = {}
    for name, p in model.named_parameters():
        by_key.setdefault(key(name), set()).add(id(p))
    merged: list[set[int]] = []
    for k in sorted(by_key):
        if merged and k[-1] == _MATCH_PREVIOUS:
            merged[-1] |= by_key[k]
        else:
            merged.append(set(by_key[k]))
    groups = [cover(model, ids) for ids in merged]
    return [LayerGroup(name=g[0] or "(model)", modules=tuple(g)) for g in groups if g]
