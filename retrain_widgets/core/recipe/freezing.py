"""Freezing, the BatchNorm lock, frozen layers in inference mode and gradual unfreezing, in plain PyTorch.

The engine calls these functions and the exported script contains their source; nothing here
imports the package, so each function reads (and runs) on its own.
"""

from __future__ import annotations

from torch import nn

#: Norm layers with running statistics (BatchNorm, InstanceNorm): they behave differently in
#: train and eval mode.
STAT_NORMS = nn.modules.batchnorm._NormBase
#: Every normalisation layer: no weight decay on them, and with train_bn they keep training.
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


class LockedEval:
    """Installed as a norm layer's ``train`` method: ``model.train()`` calls ``.train()`` on every
    submodule, and this one stays in eval mode whatever it is asked (an instance attribute
    shadows the method; an object rather than a closure, so that a deep copy locks the copy)."""

    def __init__(self, norm):
        self.norm = norm

    def __call__(self, mode=True):
        nn.Module.train(self.norm, False)
        return self.norm


def lock_eval(norm):
    """Keep a norm layer in eval mode, even after ``model.train()``."""
    norm.train = LockedEval(norm)
    nn.Module.train(norm, False)


class FrozenEval:
    """Installed as a model's ``train`` method by :func:`eval_frozen` (``RunConfig.frozen_eval``):
    after ``model.train()`` the layers whose parameters are all frozen run in inference mode
    (dropout, stochastic depth, BatchNorm), as feature extraction runs a frozen backbone. An
    object rather than a closure, so that a deep copy of the model holds its own."""

    def __init__(self, model):
        self.model = model

    def __call__(self, mode=True):
        nn.Module.train(self.model, mode)
        if mode:
            frozen_to_eval(self.model)
        return self.model


def frozen_to_eval(module):
    """Put in eval mode the children of ``module`` (recursively) whose parameters are all frozen.
    A layer without parameters goes with the next layer of its parent that has some: a Dropout
    just before the head trains with the head, one before a frozen block is in inference mode."""
    follows = None  # whether the next child with parameters (scanning backwards) is frozen
    for child in reversed(list(module.children())):
        params = list(child.parameters())
        if params:
            follows = not any(p.requires_grad for p in params)
            if follows:
                child.train(False)
            else:
                frozen_to_eval(child)
        elif follows:
            child.train(False)


def eval_frozen(model):
    """From now on ``model.train()`` keeps the layers whose parameters are all frozen in inference
    mode (see :class:`FrozenEval`); freezing and unfreezing move layers in and out of it at once."""
    model.train = FrozenEval(model)
    model.train(model.training)
    return model


def follow_frozen(model):
    """After a freezing change: with :func:`eval_frozen`, the layers' modes follow it now (the
    engine calls it at once; the exported script's next ``model.train()`` does the same)."""
    if isinstance(vars(model).get("train"), FrozenEval) and model.training:
        model.train(True)


def covered(model, name):
    """What the dotted ``name`` covers, as ``(module, [(parameter name, parameter), ...])`` pairs:
    every module of a module's subtree with the parameters it holds itself or, for the name of a
    parameter that a module holds next to its children (a ViT's ``cls_token``, CLIP's
    ``logit_scale``), that parameter alone, with the module ``None``."""
    try:
        module = model.get_submodule(name)
    except AttributeError:  # not a module: a parameter's dotted name
        return [(None, [(name.rpartition(".")[2], model.get_parameter(name))])]
    return [(m, list(m.named_parameters(recurse=False))) for m in module.modules()]


def freeze_parameters(params):
    """The parameters ``(name, parameter)`` stop training. They get no gradient at all (None, not
    zeros), so AdamW's weight decay and SGD's momentum cannot move them either."""
    for _, p in params:
        p.requires_grad_(False)
        p.grad = None


def freeze(model, names):
    """Freeze the modules ``names`` (dotted names) and everything inside them, and the parameters
    named in ``names`` that a module holds itself (``"cls_token"``).

    BatchNorm inside frozen modules is locked in eval mode: in train mode it would normalise
    with batch statistics and overwrite its running ones, changing the frozen layers' outputs
    though no weight moves."""
    for name in names:
        for m, params in covered(model, name):
            if isinstance(m, STAT_NORMS):
                lock_eval(m)
            freeze_parameters(params)


def freeze_keep_norms(model, names):
    """Freeze the modules ``names`` but their normalisation layers (``train_bn``, fastai's
    meaning): the norms' affine weights keep learning and BatchNorm keeps normalising with, and
    tracking, the new data's statistics."""
    for name in names:
        for m, params in covered(model, name):
            if isinstance(m, NORMS):
                m.requires_grad_(True)
            else:
                freeze_parameters(params)


def unfreeze(model, names):
    """Make the modules (or held parameters) ``names`` trainable again; a locked norm layer inside
    them follows ``model.train()`` / ``model.eval()`` again."""
    for name in names:
        for m, params in covered(model, name):
            for _, p in params:
                p.requires_grad_(True)
            if m is not None and isinstance(vars(m).get("train"), LockedEval):
                del m.train
                m.train(model.training)


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def has_params(m):
    return any(True for _ in m.parameters())


def is_stack(m):
    """A container of two or more parameterised blocks of one class (e.g. transformer layers)."""
    if not isinstance(m, CONTAINERS):
        return False
    kinds = [type(c) for c in m.children() if any(True for _ in c.children()) and has_params(c)]
    return any(kinds.count(k) >= 2 for k in kinds)


def layer_leaves(model):
    """The blocks layer groups are made of, input side first: ``(name, module)``, the module
    ``None`` for a parameter that an opened module holds itself (a ViT's ``cls_token``). The root
    and every container are opened, another module only when it holds a stack of repeated blocks."""
    leaves = []

    def visit(name, module):
        children = [(f"{name}.{c}" if name else c, m) for c, m in module.named_children() if has_params(m)]
        opened = not name or isinstance(module, CONTAINERS) or any(is_stack(m) for m in module.modules())
        if children and opened:
            leaves.extend((f"{name}.{p}" if name else p, None) for p, _ in module.named_parameters(recurse=False))
            for child, m in children:
                visit(child, m)
        else:
            leaves.append((name, module))

    visit("", model)
    return leaves


def layer_groups(model):
    """The model's blocks, input side first, head last: lists of module names, every parameter
    in exactly one group. Norm layers and parameter-free modules join the group before them;
    parameters the root holds itself (``cls_token``, ``pos_embed``) join the next group, and those
    an opened module inside holds (torchvision's ``encoder.pos_embedding``) the group before it:
    the input side, as timm's stem group; a layer whose parameters are all tied to earlier ones (GPT-2's ``lm_head``)
    is in no group, its weight being in an earlier one. For a CNN: one group per conv
    (+ BatchNorm) and per Linear."""
    groups, pending, seen = [], [], set()
    for name, module in layer_leaves(model):
        if module is None:  # a held parameter: joins the group before its holder, else waits for the next layer
            if "." in name and groups:
                groups[-1].append(name)
            else:
                pending.append(name)
            continue
        ids = {id(p) for p in module.parameters()}
        if ids and ids <= seen:
            continue
        seen |= ids
        if groups and (isinstance(module, NORMS) or not ids):
            groups[-1] += [*pending, name]
        else:
            groups.append([*pending, name])
        pending = []
    if pending:
        if groups:
            groups[-1] += pending
        else:
            groups.append(pending)
    return groups


def apply_stage(model, groups, stage, frozen, freeze, unfreeze):
    """Gradual unfreezing (ULMFiT), stage ``stage``: the top ``stage + 1`` layer groups train,
    the groups below are frozen, and the modules ``frozen`` stay frozen throughout.

    ``groups`` are lists of module names, input side first; ``freeze`` / ``unfreeze`` are the
    functions above (``freeze_keep_norms`` with ``train_bn``)."""
    cut = len(groups) - 1 - stage
    unfreeze(model, [name for group in groups[cut:] for name in group])
    below = [name for group in groups[:cut] for name in group]
    names = below + [name for name in frozen if name not in below]
    if names:
        freeze(model, names)
