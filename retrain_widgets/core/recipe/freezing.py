"""Freezing, the BatchNorm lock and gradual unfreezing, in plain PyTorch.

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


def freeze_parameters(module):
    """The module's own parameters stop training. They get no gradient at all (None, not zeros),
    so AdamW's weight decay and SGD's momentum cannot move them either."""
    for p in module.parameters(recurse=False):
        p.requires_grad_(False)
        p.grad = None


def freeze(model, names):
    """Freeze the modules ``names`` (dotted names) and everything inside them.

    BatchNorm inside frozen modules is locked in eval mode: in train mode it would normalise
    with batch statistics and overwrite its running ones, changing the frozen layers' outputs
    though no weight moves."""
    for name in names:
        for m in model.get_submodule(name).modules():
            if isinstance(m, STAT_NORMS):
                lock_eval(m)
            freeze_parameters(m)


def freeze_keep_norms(model, names):
    """Freeze the modules ``names`` but their normalisation layers (``train_bn``, fastai's
    meaning): the norms' affine weights keep learning and BatchNorm keeps normalising with, and
    tracking, the new data's statistics."""
    for name in names:
        for m in model.get_submodule(name).modules():
            if isinstance(m, NORMS):
                m.requires_grad_(True)
            else:
                freeze_parameters(m)


def unfreeze(model, names):
    """Make the modules ``names`` trainable again; a locked norm layer inside them follows
    ``model.train()`` / ``model.eval()`` again."""
    for name in names:
        for m in model.get_submodule(name).modules():
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
            if isinstance(vars(m).get("train"), LockedEval):
                del m.train
                m.train(model.training)


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
