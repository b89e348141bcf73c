"""Building each learning-rate schedule, in plain PyTorch.

Every schedule is stepped once per optimizer step and scales each parameter group relative
to the group's own learning rate, so discriminative learning rates keep their ratios. A
parameter given as ``None`` is derived from ``total_steps`` (the docstrings say how). The
engine builds its schedulers with these functions (``retrain_widgets.core.schedules``
registers them and checks their parameters) and an exported script contains their source.
"""

from __future__ import annotations

import math

import torch


def frac_floor(total_steps, frac):
    """floor(total_steps * frac), immune to 0.29 * 100 == 28.999999999999996."""
    return math.floor(total_steps * frac + 1e-9)


def cosine_factor(progress, eta_min_frac):
    """Half a cosine from 1 (progress 0) down to eta_min_frac (progress 1)."""
    return eta_min_frac + (1.0 - eta_min_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ConstantFactor:
    """LR factor 1 at every step. The factors are callable objects rather than lambdas, so that
    LambdaLR's state_dict() keeps them."""

    def __call__(self, step):
        return 1.0


class CosineFactor:
    """LR factor of cosine annealing over T_max steps, relative to each group's own LR (torch's
    CosineAnnealingLR has one absolute eta_min for all groups, which would raise the LR of a
    group whose LR is below it)."""

    def __init__(self, T_max, eta_min_frac):
        self.T_max, self.eta_min_frac = T_max, eta_min_frac

    def __call__(self, step):
        return cosine_factor(step / self.T_max, self.eta_min_frac)


class WarmRestartsFactor:
    """LR factor of cosine annealing with warm restarts (SGDR): the cosine starts again every
    cycle, and each cycle is T_mult times longer than the one before."""

    def __init__(self, T_0, T_mult, eta_min_frac):
        self.T_0, self.T_mult, self.eta_min_frac = T_0, T_mult, eta_min_frac

    def __call__(self, step):
        t, cycle = step, self.T_0
        while t >= cycle:  # which cycle is this step in, and how far into it?
            t, cycle = t - cycle, cycle * self.T_mult
        return cosine_factor(t / cycle, self.eta_min_frac)


class WarmupCosineFactor:
    """LR factor: a linear warm-up over warmup_steps, then a half cosine to eta_min_frac."""

    def __init__(self, warmup_steps, total_steps, eta_min_frac):
        self.warmup_steps, self.total_steps, self.eta_min_frac = warmup_steps, total_steps, eta_min_frac

    def __call__(self, step):
        w = self.warmup_steps
        if step < w:
            return (step + 1) / (w + 1)
        return cosine_factor(min(1.0, (step - w) / max(1, self.total_steps - w)), self.eta_min_frac)


class SlantedTriangularFactor:
    """LR factor of ULMFiT's slanted triangular schedule (Howard & Ruder 2018, eq. 3): a short
    linear rise over the first cut_frac of the run, then a long linear decay; the lowest LR is
    1/ratio of the peak."""

    def __init__(self, total_steps, cut_frac, ratio):
        self.total_steps, self.cut_frac, self.ratio = total_steps, cut_frac, ratio

    def __call__(self, step):
        cut = max(1, frac_floor(self.total_steps, self.cut_frac))
        if step < cut:
            p = step / cut
        else:
            p = max(0.0, 1.0 - (step - cut) / (cut * (1.0 / self.cut_frac - 1.0)))
        return (1.0 + p * (self.ratio - 1.0)) / self.ratio


def group_lrs(optimizer):
    return [float(group["lr"]) for group in optimizer.param_groups]


def constant_lr(optimizer, total_steps):
    """Every group keeps its own LR."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, ConstantFactor())


def step_decay(optimizer, total_steps, step_size=None, gamma=0.1):
    """Every group's LR times gamma every step_size optimizer steps (default: a third of the run)."""
    if step_size is None:
        step_size = max(1, math.ceil(total_steps / 3))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def multistep_decay(optimizer, total_steps, milestones=None, gamma=0.1):
    """Every group's LR times gamma at each milestone step (default: half and three quarters of the run)."""
    if milestones is None:
        milestones = sorted({m for m in (total_steps // 2, (3 * total_steps) // 4) if 1 <= m < total_steps})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


def exponential_decay(optimizer, total_steps, gamma=None):
    """Every group's LR times gamma after each step (default: a 100x fall over the run)."""
    if gamma is None:
        gamma = 0.01 ** (1.0 / total_steps)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def cosine(optimizer, total_steps, T_max=None, eta_min_frac=0.0):
    """Cosine annealing from each group's own LR down to eta_min_frac of it over T_max steps
    (default: the run)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineFactor(T_max or total_steps, eta_min_frac))


def cosine_warm_restarts(optimizer, total_steps, T_0=None, T_mult=1, eta_min_frac=0.0):
    """Cosine annealing with warm restarts, relative to each group's own LR. Default T_0: four
    cycles, ceil(total_steps / 4) (total_steps // 4 can put a restart, the peak LR, on the last step)."""
    if T_0 is None:
        T_0 = max(1, math.ceil(total_steps / 4))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmRestartsFactor(T_0, T_mult, eta_min_frac))


def one_cycle(optimizer, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4,
              anneal_strategy="cos", cycle_momentum=False):
    """One cycle (Smith): warm up to each group's own LR (max_lr per group keeps discriminative
    LRs), then anneal far below it."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=group_lrs(optimizer), total_steps=total_steps, pct_start=pct_start,
        anneal_strategy=anneal_strategy, cycle_momentum=cycle_momentum, div_factor=div_factor,
        final_div_factor=final_div_factor)


def cyclic(optimizer, total_steps, mode="triangular", base_frac=0.1, step_size_up=None, step_size_down=None,
           gamma=1.0):
    """Cyclical LR (Smith): triangles between base_frac x each group's LR and the group's LR.
    Default step_size_up: total_steps // 8; step_size_down: step_size_up."""
    if step_size_up is None:
        step_size_up = max(1, total_steps // 8)
    max_lrs = group_lrs(optimizer)
    return torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=[lr * base_frac for lr in max_lrs], max_lr=max_lrs, step_size_up=step_size_up,
        step_size_down=step_size_down or step_size_up, mode=mode, gamma=gamma, cycle_momentum=False)


def warmup_cosine(optimizer, total_steps, warmup_frac=0.05, eta_min_frac=0.0):
    """A linear warm-up over the first warmup_frac of the run (large early updates would wreck
    the pretrained weights before the new head settles), then a cosine to eta_min_frac of each
    group's LR."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosineFactor(frac_floor(total_steps, warmup_frac), total_steps, eta_min_frac))


def slanted_triangular(optimizer, total_steps, cut_frac=0.1, ratio=32.0):
    """ULMFiT's slanted triangular LR: a short rise, a long decay."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SlantedTriangularFactor(total_steps, cut_frac, ratio))


def reduce_on_plateau(optimizer, total_steps, mode="min", factor=0.1, patience=2, threshold=1e-4, cooldown=0,
                      min_lr_frac=0.0):
    """Every group's LR times factor when the validation loss stops improving; stepped after
    each validation with that loss, not after each optimizer step."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, threshold=threshold, cooldown=cooldown,
        min_lr=[lr * min_lr_frac for lr in group_lrs(optimizer)])
