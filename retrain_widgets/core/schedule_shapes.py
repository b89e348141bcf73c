"""The built-in schedule shapes: for each, the recipe's scheduler, its parameters and the
``resolve`` hook that fills their defaults from ``total_steps`` and checks their values.

Importing this module registers the shapes, in the order that
:func:`~retrain_widgets.core.schedules.available` lists them; :mod:`retrain_widgets.core.schedules`
imports it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from .recipe import schedules as recipe
from .registry import Param
from .schedule_registry import register


# --------------------------------------------------------------------------- helpers
def _fail(name: str, key: str, value: Any, must: str) -> NoReturn:
    raise ValueError(f"schedule {name!r}: parameter {key!r} must be {must}, got {value!r}")


def _positive(name: str, kw: Mapping[str, Any], key: str) -> None:
    if not kw[key] > 0:
        _fail(name, key, kw[key], "> 0")


def _open_unit(name: str, kw: Mapping[str, Any], key: str) -> None:
    if not 0 < kw[key] < 1:
        _fail(name, key, kw[key], "strictly between 0 and 1")


def _eta_min_frac_param() -> Param:
    return Param(0.0, "float", low=0.0, high=1.0, help="floor of the LR, as a fraction of each group's LR")


# --------------------------------------------------------------------------- constant
register("constant", recipe.constant_lr, description="Constant: every group keeps its own LR.")


# --------------------------------------------------------------------------- step
def _resolve_step(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    if kw["step_size"] is None:
        kw["step_size"] = max(1, math.ceil(total / 3))
    _positive("step", kw, "gamma")
    return kw


register(
    "step",
    recipe.step_decay,
    description="Step decay: multiply the LR by gamma every step_size steps.",
    params={
        "step_size": Param(None, "int", low=1, help="steps between drops (default: ceil(total_steps / 3))"),
        "gamma": Param(0.1, "float", low=0.0, high=1.0, help="LR multiplier at each drop (> 0)"),
    },
    resolve=_resolve_step,
)


# --------------------------------------------------------------------------- multistep
def parse_milestones(value: Any) -> list[int]:
    """Milestones given as a list, a number or a string ("20, 80") as a list of ints."""
    if isinstance(value, str):
        parts = [part for part in re.split(r"[\s,;]+", value.strip().strip("[]()")) if part]
        try:
            return [int(part) for part in parts]
        except ValueError:
            _fail("multistep", "milestones", value, "a list of whole numbers")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)]
    if not isinstance(value, (list, tuple)):
        _fail("multistep", "milestones", value, "a list of whole numbers")
    out: list[int] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, numbers.Real) or int(item) != item:
            _fail("multistep", "milestones", value, "a list of whole numbers")
        out.append(int(item))
    return out


def _resolve_multistep(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    if kw["milestones"] is None:
        kw["milestones"] = sorted({m for m in (total // 2, (3 * total) // 4) if 1 <= m < total})
    else:
        milestones = parse_milestones(kw["milestones"])
        if any(not 1 <= m < total for m in milestones):
            _fail(
                "multistep",
                "milestones",
                kw["milestones"],
                f"steps between 1 and total_steps - 1 = {total - 1}",
            )
        if len(set(milestones)) != len(milestones):
            _fail("multistep", "milestones", kw["milestones"], "distinct steps")
        kw["milestones"] = sorted(milestones)
    _positive("multistep", kw, "gamma")
    return kw


register(
    "multistep",
    recipe.multistep_decay,
    description="Multi-step decay: multiply the LR by gamma at each milestone step.",
    params={
        "milestones": Param(
            None,
            "any",
            help="steps where the LR drops, a list of ints (default: 50% and 75% of total_steps)",
        ),
        "gamma": Param(0.1, "float", low=0.0, high=1.0, help="LR multiplier at each milestone (> 0)"),
    },
    resolve=_resolve_multistep,
)


# --------------------------------------------------------------------------- exponential
def _resolve_exponential(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    if kw["gamma"] is None:
        kw["gamma"] = 0.01 ** (1.0 / total)
    _positive("exponential", kw, "gamma")
    return kw


register(
    "exponential",
    recipe.exponential_decay,
    description="Exponential decay: multiply the LR by gamma every step.",
    params={
        "gamma": Param(
            None,
            "float",
            low=0.0,
            high=1.0,
            help="LR multiplier per step, > 0 (default: 0.01 ** (1 / total_steps), a 100x fall over the run)",
        ),
    },
    resolve=_resolve_exponential,
)


# --------------------------------------------------------------------------- cosine
def _resolve_cosine(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    if kw["T_max"] is None:
        kw["T_max"] = total
    return kw


register(
    "cosine",
    recipe.cosine,
    description="Cosine annealing from each group's LR down to eta_min_frac of it.",
    params={
        "T_max": Param(None, "int", low=1, help="steps of the half cosine (default: total_steps)"),
        "eta_min_frac": _eta_min_frac_param(),
    },
    resolve=_resolve_cosine,
)


# --------------------------------------------------------------------------- cosine_warm_restarts
def _resolve_warm_restarts(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    if kw["T_0"] is None:
        kw["T_0"] = max(1, math.ceil(total / 4))  # four cycles; total // 4 can put a restart (the peak LR) on the last step
    return kw


register(
    "cosine_warm_restarts",
    recipe.cosine_warm_restarts,
    description="Cosine annealing with warm restarts (SGDR): the cosine restarts every T_0 steps.",
    params={
        "T_0": Param(None, "int", low=1, help="steps of the first cycle (default: ceil(total_steps / 4), four cycles)"),
        "T_mult": Param(1, "int", low=1, help="each cycle is T_mult times longer than the one before"),
        "eta_min_frac": _eta_min_frac_param(),
    },
    resolve=_resolve_warm_restarts,
)


# --------------------------------------------------------------------------- one_cycle
def _resolve_one_cycle(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    _open_unit("one_cycle", kw, "pct_start")
    if kw["pct_start"] * total == 1.0:
        # torch's OneCycleLR divides by zero when its warm-up phase ends at step 0
        _fail(
            "one_cycle",
            "pct_start",
            kw["pct_start"],
            f"such that pct_start * total_steps != 1 (total_steps={total})",
        )
    _positive("one_cycle", kw, "div_factor")
    _positive("one_cycle", kw, "final_div_factor")
    return kw


register(
    "one_cycle",
    recipe.one_cycle,
    description="One cycle (Smith): warm up to each group's LR, then anneal far below it.",
    params={
        "pct_start": Param(
            0.3, "float", low=0.0, high=1.0, help="fraction of the run spent warming up, in (0, 1)"
        ),
        "div_factor": Param(25.0, "log", low=0.0, help="start LR = group LR / div_factor"),
        "final_div_factor": Param(1e4, "log", low=0.0, help="final LR = start LR / final_div_factor"),
        "anneal_strategy": Param("cos", "choice", choices=("cos", "linear"), help="shape of both phases"),
        "cycle_momentum": Param(
            False,
            "bool",
            help="also cycle momentum / Adam beta1 between 0.95 and 0.85 (changes the optimizer's momentum)",
        ),
    },
    resolve=_resolve_one_cycle,
)


# --------------------------------------------------------------------------- cyclic
def _resolve_cyclic(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    if kw["step_size_up"] is None:
        kw["step_size_up"] = max(1, total // 8)
    if kw["step_size_down"] is None:
        kw["step_size_down"] = kw["step_size_up"]
    if not 0 < kw["base_frac"] <= 1:
        _fail("cyclic", "base_frac", kw["base_frac"], "in (0, 1]")
    if not 0 < kw["gamma"] <= 1:
        _fail("cyclic", "gamma", kw["gamma"], "in (0, 1]")
    return kw


register(
    "cyclic",
    recipe.cyclic,
    description="Cyclical LR (Smith): triangles between base_frac x LR and each group's LR.",
    params={
        "mode": Param(
            "triangular",
            "choice",
            choices=("triangular", "triangular2", "exp_range"),
            help="triangular2 halves the amplitude each cycle; exp_range scales it by gamma**step",
        ),
        "base_frac": Param(
            0.1, "float", low=0.0, high=1.0, help="bottom of the cycle, as a fraction of each group's LR"
        ),
        "step_size_up": Param(
            None, "int", low=1, help="steps from bottom to top (default: max(1, total_steps // 8))"
        ),
        "step_size_down": Param(None, "int", low=1, help="steps from top to bottom (default: step_size_up)"),
        "gamma": Param(
            1.0, "float", low=0.0, high=1.0, help="amplitude decay per step in exp_range mode, in (0, 1]"
        ),
    },
    resolve=_resolve_cyclic,
)


# --------------------------------------------------------------------------- warmup_cosine
def _resolve_warmup_cosine(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    if not 0 <= kw["warmup_frac"] < 1:
        _fail("warmup_cosine", "warmup_frac", kw["warmup_frac"], "in [0, 1)")
    return kw


register(
    "warmup_cosine",
    recipe.warmup_cosine,
    description="Linear warm-up from ~0 to each group's LR, then cosine decay.",
    params={
        "warmup_frac": Param(
            0.05, "float", low=0.0, high=1.0, help="fraction of the run spent warming up, in [0, 1)"
        ),
        "eta_min_frac": _eta_min_frac_param(),
    },
    resolve=_resolve_warmup_cosine,
)


# --------------------------------------------------------------------------- slanted_triangular
def _resolve_slanted(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    _open_unit("slanted_triangular", kw, "cut_frac")
    return kw


register(
    "slanted_triangular",
    recipe.slanted_triangular,
    description="ULMFiT slanted triangular: short linear rise to each group's LR, long linear decay.",
    params={
        "cut_frac": Param(
            0.1, "float", low=0.0, high=1.0, help="fraction of the run spent rising, in (0, 1)"
        ),
        "ratio": Param(32.0, "float", low=1.0, help="how much smaller the lowest LR is than the peak"),
    },
    resolve=_resolve_slanted,
)


# --------------------------------------------------------------------------- reduce_on_plateau
def _resolve_plateau(total: int, kw: dict[str, Any]) -> dict[str, Any]:
    _open_unit("reduce_on_plateau", kw, "factor")
    return kw


register(
    "reduce_on_plateau",
    recipe.reduce_on_plateau,
    description="Reduce on plateau: multiply the LR by factor when the validation metric stalls.",
    params={
        "mode": Param("min", "choice", choices=("min", "max"), help="min for a loss, max for an accuracy"),
        "factor": Param(0.1, "float", low=0.0, high=1.0, help="LR multiplier at each drop, in (0, 1)"),
        "patience": Param(2, "int", low=0, help="validations without improvement before a drop"),
        "threshold": Param(1e-4, "log", low=0.0, help="relative change that counts as an improvement"),
        "cooldown": Param(0, "int", low=0, help="validations to wait after a drop"),
        "min_lr_frac": Param(
            0.0, "float", low=0.0, high=1.0, help="lowest LR, as a fraction of each group's LR"
        ),
    },
    metric_driven=True,
    resolve=_resolve_plateau,
)
