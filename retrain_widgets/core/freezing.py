"""Freezing and unfreezing modules of a model, and what is frozen.

Names are dotted ``named_modules()`` names, or dotted names of parameters held directly by a
module (see :mod:`~retrain_widgets.core.dotted_names`). The pieces that the exported script also
runs are in :mod:`~retrain_widgets.core.recipe.freezing`; this module checks the names and speaks
to the user.

Two traps of the field are handled here:

* ``requires_grad=False`` alone does not freeze BatchNorm: in ``model.train()`` its running
  statistics still change, and ``bn.eval()`` is undone by the parent's next ``.train()``.
  :func:`freeze` locks the normalisation layers inside frozen modules in inference mode
  (unless ``train_bn=True``, fastai's meaning: their affine parameters keep training and
  their statistics keep updating).
* a frozen parameter must have no gradient at all (``None``, not zeros), or AdamW's weight
  decay and SGD's momentum keep moving it. :func:`freeze` drops existing gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .dotted_names import _as_names, _is_holder, _join, _unique_params, check_names, cover, parameters_of
from .heads import find_head_or_none
from .recipe import freezing as recipe_freezing

__all__ = ["freeze", "unfreeze", "frozen_names", "trainable_count", "is_norm_layer", "is_locked_norm",
           "freeze_all_but", "frozen_complement"]

_NORMS = (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def is_norm_layer(module: nn.Module) -> bool:
    """True for BatchNorm / InstanceNorm / LayerNorm / GroupNorm layers."""
    return isinstance(module, _NORMS)


def is_locked_norm(module: nn.Module) -> bool:
    """True when ``module`` is a normalisation layer locked in inference mode by :func:`freeze`."""
    return isinstance(module.__dict__.get("train"), recipe_freezing.LockedEval)


def _unlock_norm(module: nn.Module, mode: bool) -> None:
    if is_locked_norm(module):
        del module.__dict__["train"]
    module.train(mode)


def _stat_norm(module: nn.Module) -> bool:
    """Normalisation layers whose behaviour differs between train and eval (running stats)."""
    return isinstance(module, _NormBase)


def freeze(model: nn.Module, names: str | Iterable[str], train_bn: bool = False) -> list[str]:
    """Freeze the modules called ``names`` (and everything inside them).

    Parameters
    ----------
    model
        The model, changed in place.
    names
        Dotted module names, or dotted names of parameters held directly by a module
        (``"cls_token"``). A name that does not exist raises a ``ValueError`` that suggests the
        closest names.
    train_bn
        ``False`` (default): BatchNorm-like layers inside the frozen modules are frozen too
        and locked in inference mode, so neither their affine parameters nor their running
        statistics change, even after ``model.train()``. ``True`` (fastai's meaning): their
        affine parameters stay trainable and they keep normalising with batch statistics.

    Returns
    -------
    list of str
        The names that were frozen.

    Raises
    ------
    ValueError
        For unknown names, or when nothing trainable would be left.
    """
    wanted = _as_names(names)
    to_freeze: dict[int, nn.Parameter] = {}
    norms: list[nn.Module] = []
    modules = dict(model.named_modules())
    for name in wanted:
        if name not in modules:  # a directly held parameter: just that one
            to_freeze.update((id(p), p) for _, _, p in parameters_of(model, name))
            continue
        for sub in modules[name].modules():
            if _stat_norm(sub) or (train_bn and is_norm_layer(sub)):
                norms.append(sub)
                if train_bn:
                    continue
            for p in sub.parameters(recurse=False):
                to_freeze[id(p)] = p
    remaining = [p for p in model.parameters() if p.requires_grad and id(p) not in to_freeze]
    if not remaining and to_freeze:
        raise ValueError(
            f"freezing {wanted} would leave no trainable parameter in the model: nothing could learn "
            f"the new loss. Leave at least the head trainable (e.g. freeze everything but "
            f"{find_head_or_none(model)!r})."
        )
    if train_bn:
        recipe_freezing.freeze_keep_norms(model, wanted)
        for norm in norms:  # a norm locked before follows the model's mode again
            _unlock_norm(norm, model.training)
    else:
        recipe_freezing.freeze(model, wanted)
    recipe_freezing.follow_frozen(model)  # RunConfig.frozen_eval: the modes follow at once
    return wanted


def unfreeze(model: nn.Module, names: str | Iterable[str] | None = None) -> list[str]:
    """Make the modules (or held parameters) called ``names`` trainable again (all modules when
    ``names`` is None).

    Normalisation layers inside them leave inference mode and follow ``model.training``.
    Returns the names that were unfrozen.
    """
    wanted = [""] if names is None else check_names(model, names)
    recipe_freezing.unfreeze(model, wanted)
    recipe_freezing.follow_frozen(model)
    return wanted


def frozen_names(model: nn.Module) -> list[str]:
    """Top-most modules whose parameters are all frozen (modules without parameters are
    skipped), and the frozen parameters held directly by a module that is not (see
    :func:`held_parameters`). A child of a listed module is not listed again."""
    out: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f + ".") or f == "" for f in out):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
        elif _is_holder(module):
            out += [_join(name, n) for n, p in module.named_parameters(recurse=False) if not p.requires_grad]
    return out


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, frozen)`` parameter counts (tied weights counted once)."""
    params = _unique_params(model)
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in params.values()) - trainable


def freeze_all_but(model: nn.Module, keep: str | Iterable[str], train_bn: bool = False) -> list[str]:
    """Freeze every top-most module (and held parameter) outside ``keep`` (e.g.
    ``keep=find_head(model)``: head only).

    Returns the names frozen, suitable for ``RunConfig.frozen``.
    """
    names = frozen_complement(model, check_names(model, keep))
    freeze(model, names, train_bn=train_bn)
    return names


def frozen_complement(model: nn.Module, keep: list[str]) -> list[str]:
    """The fewest module / parameter names covering every parameter outside ``keep``,
    the parameters held directly by the root and other modules included."""
    keep_ids = {id(p) for k in keep for _, _, p in parameters_of(model, k)}
    return cover(model, {id(p) for p in model.parameters() if id(p) not in keep_ids})
