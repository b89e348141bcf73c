"""Tests of retrain_widgets.core.schedules: shapes, per-group scaling, unfreezing, errors, speed."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as tls

from retrain_widgets.core import schedules
from retrain_widgets.core.registry import Param, Registry

# Any "stepped before optimizer.step()" warning from these tests is a failure.
pytestmark = pytest.mark.filterwarnings("error:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")

SHAPES = [
    "constant",
    "step",
    "multistep",
    "exponential",
    "cosine",
    "cosine_warm_restarts",
    "one_cycle",
    "cyclic",
    "warmup_cosine",
    "slanted_triangular",
    "reduce_on_plateau",
]
STEPPED = [name for name in SHAPES if name != "reduce_on_plateau"]


def approx(values: list[float]) -> Any:
    return pytest.approx(values, rel=1e-6, abs=1e-15)


def two_group_model(seed: int = 0) -> tuple[nn.Module, nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    body, head = nn.Linear(4, 8), nn.Linear(8, 2)
    return nn.Sequential(body, nn.Tanh(), head), body, head


def make_optimizer(kind: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(groups, weight_decay=0.1)
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=0.01)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def torch_lrs(factory: Callable[[torch.optim.Optimizer], Any], total: int, lr: float) -> list[float]:
    """LR in effect at each optimizer step for a torch scheduler stepped by hand."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    sched = factory(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: a no-op that keeps torch's step-order check quiet
        sched.step()
    return out


# --------------------------------------------------------------------------- registry
def test_all_shapes_registered_with_one_line_descriptions() -> None:
    assert schedules.available() == SHAPES
    for name in SHAPES:
        spec = schedules.get(name)
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
        assert all(isinstance(p, Param) for p in spec.params.values())
        assert spec.metric_driven == (name == "reduce_on_plateau")
    assert isinstance(schedules.REGISTRY, Registry) and schedules.REGISTRY.kind == "schedule"


def test_derived_defaults_are_documented_and_resolved() -> None:
    for name in SHAPES:
        spec = schedules.get(name)
        resolved = schedules.resolve_kwargs(name, 100)
        assert set(resolved) == set(spec.params)
        for key, param in spec.params.items():
            if param.default is None:
                assert "default:" in param.help, (name, key)
                assert resolved[key] is not None, (name, key)
    assert schedules.resolve_kwargs("step", 100) == {"step_size": 34, "gamma": 0.1}
    assert schedules.resolve_kwargs("multistep", 100)["milestones"] == [50, 75]
    assert schedules.resolve_kwargs("exponential", 100)["gamma"] == pytest.approx(0.01 ** (1 / 100))
    assert schedules.resolve_kwargs("cosine", 100)["T_max"] == 100
    assert schedules.resolve_kwargs("cosine_warm_restarts", 100)["T_0"] == 25
    assert schedules.resolve_kwargs("cosine_warm_restarts", 69)["T_0"] == 18  # 17 would restart on the last step
    lrs = schedules.preview("cosine_warm_restarts", 69, 1.0)
    assert lrs[-1] < 0.2 and lrs[-1] < lrs[-2]  # the run ends late in a cycle, not on a restart
    assert schedules.resolve_kwargs("cosine_warm_restarts", 3)["T_0"] == 1
    cyc = schedules.resolve_kwargs("cyclic", 100)
    assert (cyc["step_size_up"], cyc["step_size_down"]) == (12, 12)
    # explicit None means "use the default"; given values are kept and converted
    assert schedules.resolve_kwargs("step", 100, step_size=None, gamma=0.5) == {"step_size": 34, "gamma": 0.5}
    assert schedules.resolve_kwargs("multistep", 100, milestones=(80, 20))["milestones"] == [20, 80]
    assert schedules.resolve_kwargs("multistep", 100, milestones="20, 80")["milestones"] == [20, 80]
    # tiny runs still give usable defaults
    for name in STEPPED:
        assert len(schedules.preview(name, 1)) == 1
        assert len(schedules.preview(name, 3)) == 3


def test_register_custom_shape_and_overwrite() -> None:
    def build(optimizer: torch.optim.Optimizer, total_steps: int, *, half: float) -> tls.LambdaLR:
        return tls.LambdaLR(optimizer, lambda t: half if t >= total_steps // 2 else 1.0)

    name = "test_half_way"
    try:
        spec = schedules.register(
            name, build, params={"half": Param(0.5, low=0.0, high=1.0)}, description="x"
        )
        assert schedules.get(name) is spec
        assert schedules.preview(name, 4, lr=1.0) == [1.0, 1.0, 0.5, 0.5]
        with pytest.raises(ValueError, match="already registered"):
            schedules.register(name, build)
        schedules.register(name, build, params={"half": Param(0.25)}, overwrite=True)
        assert schedules.preview(name, 2, lr=1.0) == [1.0, 0.25]
    finally:
        schedules.REGISTRY._entries.pop(name, None)


# --------------------------------------------------------------------------- requirement 1
@pytest.mark.parametrize("opt_kind", ["adamw", "sgd"])
@pytest.mark.parametrize("name", STEPPED)
def test_each_group_scaled_relative_to_its_own_lr(name: str, opt_kind: str) -> None:
    torch.manual_seed(0)
    a, b, frozen = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
    for p in frozen.parameters():
        p.requires_grad_(False)
    lrs = [1e-2, 2.6e-3, 1e-4]
    opt = make_optimizer(
        opt_kind,
        [
            {"params": list(a.parameters()), "lr": lrs[0]},
            {"params": list(b.parameters()), "lr": lrs[1]},
            {"params": list(frozen.parameters()), "lr": lrs[2]},
        ],
    )
    frozen_before = [p.detach().clone() for p in frozen.parameters()]
    total = 30
    sched = schedules.make(name, opt, total)
    seen: list[list[float]] = [[] for _ in lrs]
    x = torch.randn(8, 3)
    for _ in range(total):
        for g, group in enumerate(opt.param_groups):
            seen[g].append(group["lr"])
        opt.zero_grad(set_to_none=True)
        (a(x).square().mean() + b(x).square().mean() + frozen(x).sum()).backward()
        opt.step()
        sched.step()
    for g, lr in enumerate(lrs):
        assert seen[g] == approx(schedules.preview(name, total, lr=lr)), g
        assert [v / lr for v in seen[g]] == approx([v / lrs[0] for v in seen[0]])
    assert all(p.grad is None for p in frozen.parameters())
    assert all(torch.equal(p, q) for p, q in zip(frozen.parameters(), frozen_before, strict=True))


# --------------------------------------------------------------------------- requirement 2
UNFREEZE_KWARGS: dict[str, dict[str, Any]] = {
    "cyclic": {"mode": "triangular2"},
    "cosine": {"eta_min_frac": 0.05},
    "multistep": {"milestones": [10, 30]},
}


@pytest.mark.parametrize("opt_kind", ["adamw", "sgd"])
@pytest.mark.parametrize("name", STEPPED)
def test_unfreezing_mid_schedule_follows_schedule(name: str, opt_kind: str) -> None:
    model, body, head = two_group_model()
    for p in body.parameters():
        p.requires_grad_(False)
    lrs = [1e-3, 1e-2]  # body (frozen at first), head
    opt = make_optimizer(
        opt_kind,
        [
            {"params": list(body.parameters()), "lr": lrs[0]},
            {"params": list(head.parameters()), "lr": lrs[1]},
        ],
    )
    kwargs = UNFREEZE_KWARGS.get(name, {})
    total, half = 40, 20
    sched = schedules.make(name, opt, total, **kwargs)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    body0 = [p.detach().clone() for p in body.parameters()]
    seen: list[list[float]] = [[], []]
    for step in range(total):
        if step == half:
            assert all(torch.equal(p, q) for p, q in zip(body.parameters(), body0, strict=True))
            for p in body.parameters():
                p.requires_grad_(True)
            body_half = [p.detach().clone() for p in body.parameters()]
        for g, group in enumerate(opt.param_groups):
            seen[g].append(group["lr"])
        train_step(model, opt, x, y)
        sched.step()
    assert len(opt.param_groups) == 2
    assert all(not torch.equal(p, q) for p, q in zip(body.parameters(), body_half, strict=True))
    for g in range(2):
        assert seen[g] == approx(schedules.preview(name, total, lr=lrs[g], **kwargs)), g


@pytest.mark.parametrize("opt_kind", ["adamw", "sgd"])
def test_unfreezing_with_reduce_on_plateau(opt_kind: str) -> None:
    model, body, head = two_group_model()
    for p in body.parameters():
        p.requires_grad_(False)
    lrs = [1e-3, 1e-2]
    opt = make_optimizer(
        opt_kind,
        [
            {"params": list(body.parameters()), "lr": lrs[0]},
            {"params": list(head.parameters()), "lr": lrs[1]},
        ],
    )
    total, half, val_every = 40, 20, 4
    sched = schedules.make("reduce_on_plateau", opt, total)  # patience 2, factor 0.1
    assert schedules.preview("reduce_on_plateau", total, lr=0.5) == [0.5] * total
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    body0 = [p.detach().clone() for p in body.parameters()]
    seen: list[list[float]] = [[], []]
    for step in range(total):
        if step == half:
            assert all(torch.equal(p, q) for p, q in zip(body.parameters(), body0, strict=True))
            for p in body.parameters():
                p.requires_grad_(True)
            body_half = [p.detach().clone() for p in body.parameters()]
        for g, group in enumerate(opt.param_groups):
            seen[g].append(group["lr"])
        train_step(model, opt, x, y)
        if (step + 1) % val_every == 0:
            sched.step(1.0)  # a validation loss that never improves
    assert all(not torch.equal(p, q) for p, q in zip(body.parameters(), body_half, strict=True))
    # validation calls 1..10: the first sets the best, calls 2-3 are within patience, call 4
    # drops the LR (3 bad > patience 2), then every third call after it drops again.
    drops_after_call = [4, 7, 10]
    for g, lr in enumerate(lrs):
        expected = []
        for step in range(total):
            calls_done = step // val_every
            expected.append(lr * 0.1 ** sum(c <= calls_done for c in drops_after_call))
        assert seen[g] == approx(expected), g


# --------------------------------------------------------------------------- requirement 3
T, LR = 97, 3e-3
TORCH_CASES: list[tuple[str, dict[str, Any], Callable[[torch.optim.Optimizer], Any]]] = [
    ("step", {}, lambda o: tls.StepLR(o, step_size=33, gamma=0.1)),
    ("step", {"step_size": 10, "gamma": 0.5}, lambda o: tls.StepLR(o, step_size=10, gamma=0.5)),
    ("multistep", {}, lambda o: tls.MultiStepLR(o, milestones=[48, 72], gamma=0.1)),
    ("multistep", {"milestones": [5, 60], "gamma": 0.3}, lambda o: tls.MultiStepLR(o, [5, 60], gamma=0.3)),
    ("exponential", {}, lambda o: tls.ExponentialLR(o, gamma=0.01 ** (1 / T))),
    ("exponential", {"gamma": 0.9}, lambda o: tls.ExponentialLR(o, gamma=0.9)),
    ("cosine", {}, lambda o: tls.CosineAnnealingLR(o, T_max=T)),
    ("cosine", {"T_max": 40}, lambda o: tls.CosineAnnealingLR(o, T_max=40)),
    ("cosine", {"eta_min_frac": 0.1}, lambda o: tls.CosineAnnealingLR(o, T_max=T, eta_min=0.1 * LR)),
    ("cosine_warm_restarts", {}, lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=25)),  # ceil(97 / 4)
    ("cosine_warm_restarts", {"T_0": 7, "T_mult": 2}, lambda o: tls.CosineAnnealingWarmRestarts(o, 7, 2)),
    (
        "cosine_warm_restarts",
        {"T_0": 10, "eta_min_frac": 0.2},
        lambda o: tls.CosineAnnealingWarmRestarts(o, 10, eta_min=0.2 * LR),
    ),
    ("one_cycle", {}, lambda o: tls.OneCycleLR(o, max_lr=LR, total_steps=T)),
    (
        "one_cycle",
        {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0, "anneal_strategy": "linear"},
        lambda o: tls.OneCycleLR(
            o,
            LR,
            total_steps=T,
            pct_start=0.25,
            div_factor=10.0,
            final_div_factor=100.0,
            anneal_strategy="linear",
        ),
    ),
    (
        "cyclic",
        {},
        lambda o: tls.CyclicLR(o, base_lr=0.1 * LR, max_lr=LR, step_size_up=12, cycle_momentum=False),
    ),
    (
        "cyclic",
        {"mode": "triangular2", "step_size_up": 5, "step_size_down": 9},
        lambda o: tls.CyclicLR(
            o, 0.1 * LR, LR, step_size_up=5, step_size_down=9, mode="triangular2", cycle_momentum=False
        ),
    ),
    (
        "cyclic",
        {"mode": "exp_range", "gamma": 0.97, "base_frac": 0.25},
        lambda o: tls.CyclicLR(
            o, 0.25 * LR, LR, step_size_up=12, mode="exp_range", gamma=0.97, cycle_momentum=False
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "factory"),
    TORCH_CASES,
    ids=[f"{n}-{'-'.join(map(str, k.values())) or 'defaults'}" for n, k, _ in TORCH_CASES],
)
def test_preview_matches_torch_stepped_by_hand(name: str, kwargs: dict[str, Any], factory: Callable) -> None:
    got = schedules.preview(name, T, lr=LR, **kwargs)
    assert len(got) == T
    assert all(isinstance(v, float) for v in got)
    assert got == approx(torch_lrs(factory, T, LR))


@pytest.mark.parametrize(
    ("total", "cut_frac", "ratio"), [(1000, 0.1, 32.0), (105, 0.1, 32.0), (50, 0.3, 8.0)]
)
def test_slanted_triangular_matches_ulmfit_formula(total: int, cut_frac: float, ratio: float) -> None:
    lr = 0.01
    got = schedules.preview("slanted_triangular", total, lr=lr, cut_frac=cut_frac, ratio=ratio)
    cut = math.floor(total * cut_frac)
    expected = []
    for t in range(total):
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
        expected.append(lr * (1 + max(p, 0.0) * (ratio - 1)) / ratio)
    assert got == approx(expected)
    assert got[0] == pytest.approx(lr / ratio)
    assert got[cut] == pytest.approx(lr)
    assert max(got) == pytest.approx(lr)
    # with cut = floor(T * cut_frac) the decay can overshoot the end: it is floored at lr / ratio
    assert min(got) >= lr / ratio * (1 - 1e-9)


def test_warmup_cosine_and_constant_shapes() -> None:
    lr, total = 0.02, 200
    got = schedules.preview("warmup_cosine", total, lr=lr)  # warmup_frac 0.05 -> 10 steps
    w = 10
    assert got[:w] == approx([lr * (t + 1) / (w + 1) for t in range(w)])
    assert got[w] == pytest.approx(lr)
    tail = [lr * 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w))) for t in range(w, total)]
    assert got[w:] == approx(tail)
    floored = schedules.preview("warmup_cosine", total, lr=lr, warmup_frac=0.0, eta_min_frac=0.1)
    assert floored[0] == pytest.approx(lr)
    assert min(floored) >= 0.1 * lr
    assert schedules.preview("constant", 5, lr=0.3) == [0.3] * 5


# --------------------------------------------------------------------------- requirement 4
def test_unknown_schedule_name_suggests_closest() -> None:
    with pytest.raises(ValueError, match=r"unknown schedule 'cosin'.*did you mean 'cosine'"):
        schedules.get("cosin")
    for call in (
        lambda: schedules.make("onecycle", torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 10),
        lambda: schedules.preview("onecycle", 10),
        lambda: schedules.resolve_kwargs("onecycle", 10),
    ):
        with pytest.raises(ValueError, match="did you mean 'one_cycle'"):
            call()


@pytest.mark.parametrize(
    ("name", "total", "kwargs", "pattern"),
    [
        ("step", 100, {"gama": 0.5}, r"no parameter 'gama'.*did you mean 'gamma'"),
        ("step", 100, {"gamma": 0.0}, r"'gamma' must be > 0, got 0\.0"),
        ("step", 100, {"gamma": -0.5}, r"'gamma' must be >= 0.*got -0\.5"),
        ("step", 100, {"step_size": 0}, r"'step_size' must be >= 1.*got 0"),
        ("step", 100, {"step_size": 2.5}, r"'step_size' must be a whole number, got 2\.5"),
        ("multistep", 100, {"gamma": 0}, r"'gamma' must be > 0, got 0"),
        (
            "multistep",
            100,
            {"milestones": [10, 100]},
            r"'milestones' must be steps between 1 and .*99.*\[10, 100\]",
        ),
        ("multistep", 100, {"milestones": [10, 10]}, r"'milestones' must be distinct.*\[10, 10\]"),
        ("multistep", 100, {"milestones": "ten"}, r"'milestones' must be a list of whole numbers, got 'ten'"),
        ("exponential", 100, {"gamma": 0.0}, r"'gamma' must be > 0, got 0\.0"),
        ("exponential", 100, {"gamma": "0.9"}, r"'gamma' must be a number, got '0\.9'"),
        ("cosine", 100, {"T_max": 0}, r"'T_max' must be >= 1.*got 0"),
        ("cosine", 100, {"eta_min_frac": 1.5}, r"'eta_min_frac' must be <= 1.*got 1\.5"),
        ("cosine_warm_restarts", 100, {"T_mult": 0}, r"'T_mult' must be >= 1.*got 0"),
        ("one_cycle", 100, {"pct_start": 0.0}, r"'pct_start' must be strictly between 0 and 1, got 0\.0"),
        ("one_cycle", 100, {"pct_start": 1.0}, r"'pct_start' must be strictly between 0 and 1, got 1\.0"),
        ("one_cycle", 10, {"pct_start": 0.1}, r"'pct_start' must be such that .*total_steps=10.*got 0\.1"),
        ("one_cycle", 100, {"div_factor": 0}, r"'div_factor' must be > 0, got 0"),
        ("one_cycle", 100, {"anneal_strategy": "cosine"}, r"'anneal_strategy' must be one of .*got 'cosine'"),
        ("cyclic", 100, {"mode": "sine"}, r"'mode' must be one of .*got 'sine'"),
        ("cyclic", 100, {"base_frac": 0.0}, r"'base_frac' must be in \(0, 1\], got 0\.0"),
        ("cyclic", 100, {"gamma": 0.0}, r"'gamma' must be in \(0, 1\], got 0\.0"),
        ("warmup_cosine", 100, {"warmup_frac": 1.0}, r"'warmup_frac' must be in \[0, 1\), got 1\.0"),
        (
            "slanted_triangular",
            100,
            {"cut_frac": 0.0},
            r"'cut_frac' must be strictly between 0 and 1, got 0\.0",
        ),
        (
            "slanted_triangular",
            100,
            {"cut_frac": 1.0},
            r"'cut_frac' must be strictly between 0 and 1, got 1\.0",
        ),
        ("slanted_triangular", 100, {"ratio": 0.5}, r"'ratio' must be >= 1.*got 0\.5"),
        ("reduce_on_plateau", 100, {"factor": 1.0}, r"'factor' must be strictly between 0 and 1, got 1\.0"),
        ("reduce_on_plateau", 100, {"patience": -1}, r"'patience' must be >= 0.*got -1"),
        ("cosine", 0, {}, r"total_steps must be >= 1, got 0"),
        ("cosine", -5, {}, r"total_steps must be >= 1, got -5"),
        ("cosine", 10.0, {}, r"total_steps must be a whole number >= 1, got 10\.0"),
    ],
)
def test_bad_kwargs_name_parameter_and_value(
    name: str, total: Any, kwargs: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        schedules.resolve_kwargs(name, total, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        schedules.preview(name, total, **kwargs)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=pattern):
        schedules.make(name, opt, total, **kwargs)
    assert opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), "1e-3"])
def test_preview_rejects_bad_lr(lr: Any) -> None:
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
        schedules.preview("cosine", 10, lr=lr)


# --------------------------------------------------------------------------- requirement 5
def test_preview_of_10000_steps_is_fast() -> None:
    schedules.preview("cosine", 10)  # warm up torch's lazy imports
    for name in SHAPES:
        start = time.thread_time()  # this thread's CPU time: not the time it waited for a busy core
        out = schedules.preview(name, 10_000, lr=1e-3)
        elapsed = time.thread_time() - start
        assert len(out) == 10_000
        assert elapsed < 0.5, f"{name}: {elapsed:.3f} s"


def test_no_step_order_warning_leaks() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in SHAPES:
            schedules.preview(name, 20)
    assert [str(w.message) for w in caught] == []
    # and preview leaves the caller's warning filters as they were
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        filters = list(warnings.filters)
        schedules.preview("one_cycle", 20)
        assert warnings.filters == filters


# --------------------------------------------------------------------------- requirement 6
@pytest.mark.parametrize("opt_kind", ["adamw", "sgd"])
@pytest.mark.parametrize("name", SHAPES)
def test_make_needs_no_initial_lr_and_works_with_adamw_and_sgd(name: str, opt_kind: str) -> None:
    model, body, head = two_group_model()
    opt = make_optimizer(
        opt_kind,
        [{"params": list(body.parameters()), "lr": 1e-3}, {"params": list(head.parameters()), "lr": 1e-2}],
    )
    assert all("initial_lr" not in g for g in opt.param_groups)
    momentum_before = [(g.get("momentum"), g.get("betas")) for g in opt.param_groups]
    sched = schedules.make(name, opt, 10)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(10):
            train_step(model, opt, x, y)
            if schedules.get(name).metric_driven:
                sched.step(1.0)
            else:
                sched.step()
    # the optimizer's own momentum / betas are left alone
    assert [(g.get("momentum"), g.get("betas")) for g in opt.param_groups] == momentum_before


def test_make_uses_current_lr_not_a_stale_initial_lr() -> None:
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.5)
    opt.param_groups[0]["initial_lr"] = 123.0  # left over from an earlier scheduler
    schedules.make("cosine", opt, 10)
    assert opt.param_groups[0]["lr"] == 0.5
    assert opt.param_groups[0]["initial_lr"] == 0.5


def test_one_cycle_momentum_cycling_is_opt_in() -> None:
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = schedules.make("one_cycle", opt, 20, cycle_momentum=True)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["momentum"] < 0.95


@pytest.mark.parametrize("name", ["warmup_cosine", "slanted_triangular", "cosine", "one_cycle"])
def test_scheduler_state_dict_round_trip(name: str) -> None:
    def fresh() -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        return opt, schedules.make(name, opt, 50)

    opt, sched = fresh()
    for _ in range(17):
        opt.step()
        sched.step()
    state = copy.deepcopy(sched.state_dict())
    opt2, sched2 = fresh()
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    for _ in range(10):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
