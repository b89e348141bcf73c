"""Parameter groups, one training step, the seed, the new head's start, the head swap and L2-SP, in plain PyTorch.

The engine's loop calls these functions between its probes and controls; an exported script
contains their source and calls them from its own short loop.
"""

from __future__ import annotations

import torch

from .freezing import NORMS, covered
from .losses import distillation_loss


def param_groups(model, groups, lr, lr_decay, weight_decay):
    """Optimizer groups for EVERY parameter, frozen ones included, one per layer group and decay
    setting, input side first.

    Frozen parameters have no gradient, so the optimizer skips them, and unfreezing later only
    flips requires_grad: the optimizer and the schedule never change mid-run. Discriminative
    learning rates (ULMFiT): the top group gets ``lr``, each group below ``lr_decay`` x the LR of
    the one above. No weight decay on biases and norm layers: pulling them toward 0 does not
    regularise, it just hurts; nor on the parameters the model names in its own
    ``no_weight_decay()`` (timm's convention: a ViT's ``pos_embed`` and ``cls_token``).
    ``groups`` are lists of module names, or names of parameters a module holds itself."""
    told = set(model.no_weight_decay() or ()) if callable(getattr(model, "no_weight_decay", None)) else set()
    told = {id(p) for n, p in model.named_parameters() if n in told}
    out, seen = [], set()
    for i, names in enumerate(groups):
        group_lr = lr * lr_decay ** (len(groups) - 1 - i)
        decay, no_decay = [], []
        for name in names:
            for m, params in covered(model, name):
                for pname, p in params:
                    if id(p) in seen:  # a shared (tied) weight is listed once
                        continue
                    seen.add(id(p))
                    plain = p.ndim < 2 or pname == "bias" or isinstance(m, NORMS) or id(p) in told
                    (no_decay if plain else decay).append(p)
        label = names[0] or "(model)"
        if decay:
            out.append({"params": decay, "lr": group_lr, "weight_decay": weight_decay, "name": label,
                        "layer_group": label})
        if no_decay:
            out.append({"params": no_decay, "lr": group_lr, "weight_decay": 0.0, "name": f"{label} (no decay)",
                        "layer_group": label})
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:  # only with groups given by hand that miss some: the top group's LR
        out.append({"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "(other)",
                    "layer_group": "(other)"})
    return out


def loader_generators(loader):
    """The torch generators that decide a loader's order (its own, its sampler's), each once."""
    found = {}
    for owner in (loader, getattr(loader, "sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator):
            found[id(generator)] = generator
    return list(found.values())


def seed_run(seed, loader):
    """The run's own randomness starts here, the same on every rerun: dropout, and the order of
    the training batches (the loader's generator, and its sampler's, when it has one)."""
    torch.manual_seed(seed)
    for generator in loader_generators(loader):
        generator.manual_seed(seed)


class FullPrecision:
    """A context that changes nothing: float32 as it is (cheaper than a disabled torch.autocast)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def autocast(amp_dtype):
    """Mixed precision on CUDA when ``amp_dtype`` is set (bf16, or fp16 with a loss scaler);
    float32 as it is otherwise."""
    return FullPrecision() if amp_dtype is None else torch.autocast("cuda", dtype=amp_dtype)


def mixed_precision(amp, device):
    """(autocast dtype, loss scaler) of mixed precision on ``device``: on CUDA bf16 where the GPU
    has it, else fp16 with a GradScaler (small fp16 gradients underflow to 0 without loss
    scaling); (None, None), float32, elsewhere or when ``amp`` is off."""
    if not (amp and device.type == "cuda"):
        return None, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dtype, torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def default_init(head):
    """Keep the new head's own initialisation (``nn.Linear``'s, drawn from the seeded RNG)."""


def zero_init(head):
    """Start the new head at zero, weights and bias. Its first step then sends no gradient into
    the pretrained layers (a random head's gradients are noise they would follow), and the seed no
    longer draws the head: it sets the batch order and dropout only. The head's own gradient is
    not zero (features x error), so it learns from the first step."""
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


#: How a new head starts (``RunConfig.head_init``). The head is always drawn first, so that every
#: choice leaves the RNG where the default leaves it.
HEAD_INITS = {"default": default_init, "zeros": zero_init}


class HeadSwap:
    """``with HeadSwap(model, head_name, original_head):`` runs the block with the original head
    in the new head's place (the old task is measured through the head that was trained for it),
    and puts the new head back after. ``original_head=None``: nothing is swapped."""

    def __init__(self, model, head_name, original_head):
        self.model, self.head_name, self.head = model, head_name, original_head
        self.kept = None

    def _put(self, module):
        parent, _, child = self.head_name.rpartition(".")
        owner = self.model.get_submodule(parent)
        previous = getattr(owner, child)
        setattr(owner, child, module)
        return previous

    def __enter__(self):
        if self.head is not None:
            self.kept = self._put(self.head)
        return self

    def __exit__(self, *exc):
        if self.kept is not None:
            self._put(self.kept)
            self.kept = None
            if "train" in vars(self.model) and self.model.training:  # modes set by what is frozen
                self.model.train()  # (RunConfig.frozen_eval): decided again with the new head back
        return False


class Distillation:
    """Distillation from the original model (Hinton et al. 2015): learn the new task and keep the
    answers to the old one close to the teacher's, ``alpha * loss + (1 - alpha) * T^2 * KL``.

    The student's answer to the OLD task: with a new head, the original head applied to the
    features the new head receives (a forward pre-hook catches them); with the original head,
    the logits themselves."""

    def __init__(self, model, head_name, original_head, teacher, alpha, temperature):
        self.original_head, self.teacher = original_head, teacher
        self.alpha, self.temperature = alpha, temperature
        self.features = None
        if original_head is not None:
            model.get_submodule(head_name).register_forward_pre_hook(self.catch)

    def catch(self, module, args):
        self.features = args[0]

    def old_answer(self, logits):
        if self.original_head is None:
            return logits
        features, self.features = self.features, None
        return self.original_head(features)

    def __call__(self, loss, logits, batch, run):
        with torch.no_grad():
            teacher_logits, _ = run(self.teacher, batch)
        kd = distillation_loss(self.old_answer(logits).float(), teacher_logits.float(), self.temperature)
        return self.alpha * loss + (1 - self.alpha) * kd


def training_loss(model, batch, run, loss_fn, amp_dtype=None, distill=None):
    """The loss of one training batch. ``run(model, batch) -> (logits, targets)``; ``distill``:
    a Distillation, or None. With mixed precision the loss is computed in float32."""
    with autocast(amp_dtype):
        logits, targets = run(model, batch)
        loss = loss_fn(logits.float() if amp_dtype is not None else logits, targets)
        if distill is not None:
            loss = distill(loss, logits, batch, run)
    return loss


def clear_gradients(optimizer):
    """Drop the last step's gradients before this step's forward pass (set to None, not zeroed):
    their memory is free again for the forward's activations, and backward writes the new
    gradients instead of adding them to zeros. Until then they stay readable between steps."""
    optimizer.zero_grad(set_to_none=True)


def backward(loss, optimizer, scaler=None):
    """Gradients of ``loss`` (under DDP also averaged across ranks), into parameters whose
    gradients :func:`clear_gradients` dropped; with a loss scaler (fp16) unscaled again, so that
    L2-SP and clipping see the true gradients."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()


def pretrained_reference(model, head_name):
    """L2-SP's reference (Li et al. 2018): every parameter but the head's, with a copy of its
    pretrained value (a new head has no pretrained value to return to)."""
    head = {id(p) for p in model.get_submodule(head_name).parameters()} if head_name else set()
    params = [p for p in model.parameters() if id(p) not in head]
    return params, [p.detach().clone() for p in params]


@torch.no_grad()
def pull_to_pretrained(params, pretrained, strength):
    """L2-SP: add strength * (w - w0), the gradient of strength / 2 * ||w - w0||^2, to the
    gradient of every parameter that trains now (has a gradient)."""
    pairs = [(p, w0) for p, w0 in zip(params, pretrained) if p.grad is not None]
    if pairs:
        ps, starts = zip(*pairs)
        diffs = torch._foreach_sub([p.detach() for p in ps], list(starts))
        torch._foreach_add_([p.grad for p in ps], diffs, alpha=strength)


def clip_gradients(optimizer, max_norm):
    """Clip the global gradient norm: one bad batch cannot throw the pretrained weights far away."""
    trainable = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(trainable, max_norm, foreach=True)


def optimizer_step(optimizer, scaler=None):
    """One optimizer step (with a loss scaler: skipped when fp16 gradients overflowed). Groups
    where no parameter has a gradient (frozen layers) sit the step out: torch would not change
    them either, and a frozen backbone's many groups would cost time on every step."""
    groups = optimizer.param_groups
    optimizer.param_groups = [g for g in groups if any(p.grad is not None for p in g["params"])]
    try:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    finally:
        optimizer.param_groups = groups
