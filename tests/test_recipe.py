"""Each piece of the recipe exists once: the engine calls the functions of core/recipe, and the
exported script holds their very source.

* the registries' entries (losses, schedules, metrics) are the recipe's functions;
* the engine's run (freezing, the step, evaluation) goes through them;
* ``export_script`` writes ``inspect.getsource`` of exactly the functions the engine calls for
  a config, and the recipe modules import nothing of the package.
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import numpy as np
import pytest
import torch

from retrain_widgets.core import losses, metrics, recipe, schedules
from retrain_widgets.core.builder import BuiltModel, build_model, build_run, count_steps
from retrain_widgets.core.config import RunConfig
from retrain_widgets.core.engine import Retrainer
from retrain_widgets.core.export import SUPPORTED_LOSSES, SUPPORTED_SCHEDULES, export_script
from retrain_widgets.core.recipe_source import RECIPE_MODULES, free_names, needed
from retrain_widgets.core.tree import freeze, is_locked_norm
from retrain_widgets.examples import code, pretrained_digits_cnn, task

RECIPE_DIR = pathlib.Path(recipe.__file__).parent


def formula_of(loss_name: str, **kwargs):
    fn = losses.make(loss_name, **kwargs).fn
    return getattr(fn, "func", fn)


def test_recipe_modules_import_only_torch_and_each_other():
    for path in RECIPE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in {"torch", "math"} for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1 or (node.module or "").split(".")[0] in {"__future__", "torch", "math"}, path


@pytest.mark.parametrize("name", SUPPORTED_LOSSES)
def test_every_builtin_loss_is_a_recipe_function_and_the_script_holds_its_source(name):
    fn = formula_of(name)
    assert inspect.getmodule(fn) is recipe.losses
    cfg = RunConfig(loss=name, head_out=3 if losses.get(name).task == "multiclass" else 1)
    src = export_script(cfg)
    assert inspect.getsource(fn) in src
    assert f"return {fn.__name__}(outputs, targets" in src  # loss_fn calls it, with the config's settings


def test_loss_settings_reach_the_same_function_in_engine_and_script():
    made = losses.make("focal", alpha=0.5, gamma=1.5).fn
    assert made.func is recipe.losses.sigmoid_focal_loss and made.keywords == {"alpha": 0.5, "gamma": 1.5}
    src = export_script(RunConfig(loss="focal", loss_kwargs={"alpha": 0.5, "gamma": 1.5}, head_out=1))
    assert "return sigmoid_focal_loss(outputs, targets, alpha=0.5, gamma=1.5)" in src
    assert losses.sigmoid_focal_loss is recipe.losses.sigmoid_focal_loss
    assert losses.softmax_focal_loss is recipe.losses.softmax_focal_loss


@pytest.mark.parametrize("name", SUPPORTED_SCHEDULES)
def test_every_builtin_schedule_is_built_by_a_recipe_function_the_script_holds(name):
    build = schedules.get(name).build
    assert inspect.getmodule(build) is recipe.schedules
    src = export_script(RunConfig(loss="ce", head_out=3, schedule=name))
    assert inspect.getsource(build) in src
    assert f"scheduler = {build.__name__}(optimizer, total_steps" in src


def test_relative_cosine_shapes_are_lambda_lr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    for name in ("cosine", "cosine_warm_restarts", "warmup_cosine", "slanted_triangular", "constant"):
        assert isinstance(schedules.make(name, opt, 20), torch.optim.lr_scheduler.LambdaLR), name


def test_metrics_are_the_recipes():
    assert metrics.MULTICLASS_ACCURACY.fn is recipe.evaluation.multiclass_accuracy
    assert metrics.BINARY_ACCURACY.fn is recipe.evaluation.binary_accuracy
    assert metrics.MAE.fn is recipe.evaluation.absolute_error
    # the old task's losses are the recipe's old-task formulas, inside the registry's checks
    for task_name, (loss_fn, metric_fn) in recipe.evaluation.OLD_TASK.items():
        assert metrics.for_task(task_name).fn is metric_fn
        assert formula_of({"multiclass": "ce", "binary": "bce", "regression": "mse"}[task_name]) is loss_fn


@pytest.mark.parametrize("train_bn", [False, True])
def test_freezing_is_the_recipes_and_the_script_holds_it(train_bn, monkeypatch):
    calls = []
    name = "freeze_keep_norms" if train_bn else "freeze"
    real = getattr(recipe.freezing, name)
    monkeypatch.setattr(recipe.freezing, name, lambda model, names: calls.append(names) or real(model, names))
    model = pretrained_digits_cnn()
    freeze(model, ["features"], train_bn=train_bn)
    assert calls == [["features"]]
    assert any(is_locked_norm(m) for m in model.modules()) is not train_bn
    src = export_script(RunConfig(loss="focal", head_out=1, frozen=["features"], train_bn=train_bn))
    assert inspect.getsource(real) in src and f"\n{name}(model, FROZEN)" in src
    other = recipe.freezing.freeze if train_bn else recipe.freezing.freeze_keep_norms
    assert inspect.getsource(other) not in src  # only what the config uses


def test_the_engines_step_pieces_are_in_the_script(monkeypatch):
    cfg = RunConfig(loss="bce", head_out=1, frozen=["features.0"], max_steps=2, l2sp=0.1, grad_clip=1.0,
                    gradual=True, distill={"alpha": 0.5, "temperature": 2.0})
    used = set()
    for fn_name in ("training_loss", "backward", "pull_to_pretrained", "clip_gradients", "optimizer_step",
                    "seed_run", "param_groups"):
        real = getattr(recipe.training, fn_name)

        def spy(*args, _real=real, _name=fn_name, **kwargs):
            used.add(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(recipe.training, fn_name, spy)
    real_sums = recipe.evaluation.evaluation_sums
    monkeypatch.setattr(recipe.evaluation, "evaluation_sums",
                        lambda *a, **k: used.add("evaluation_sums") or real_sums(*a, **k))
    t = task("is_seven")
    Retrainer(pretrained_digits_cnn(), cfg, t.train, t.val, t.old_val).fit()
    assert used == {"training_loss", "backward", "pull_to_pretrained", "clip_gradients", "optimizer_step",
                    "seed_run", "param_groups", "evaluation_sums"}
    monkeypatch.undo()
    src = export_script(cfg)
    for fn_name in used | {"apply_stage", "unfreeze", "HeadSwap", "Distillation", "old_task", "means"}:
        obj = getattr(recipe.training, fn_name, None) or getattr(recipe.evaluation, fn_name, None) \
            or getattr(recipe.freezing, fn_name)
        assert inspect.getsource(obj) in src, fn_name


def test_the_script_defines_what_it_uses_once_and_nothing_else_of_the_recipe():
    cfg = RunConfig(loss="mse", head_out=1, schedule="step")
    src = export_script(cfg, **code("digit_value"))
    tree = ast.parse(src)
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert len(defined) == len(set(defined))
    recipe_names = {name for module in RECIPE_MODULES for name in vars(module)
                    if inspect.getmodule(getattr(module, name)) is module}
    assert "lock_eval" not in src and "distillation_loss" not in src and "clip_grad_norm_" not in src
    assert {"mean_squared_error", "step_decay", "training_loss"} <= set(defined) & recipe_names
    assert needed("step_decay(optimizer, 10)") == ["step_decay"]
    assert free_names("def f(freeze):\n    return freeze(x)") == {"x"}


def test_build_model_gives_the_run_model_without_an_optimizer():
    pretrained = pretrained_digits_cnn()
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    cfg = RunConfig(loss="focal", head_out=1, frozen=["features"])
    built = build_model(pretrained, cfg)
    assert isinstance(built, BuiltModel) and built.head_name == "classifier.3"
    assert built.model.classifier[3].out_features == 1 and built.original_head.out_features == 10
    assert not any(p.requires_grad for p in built.model.features.parameters())
    assert all(torch.equal(before[k], v) for k, v in pretrained.state_dict().items())
    x = torch.randn(2, 1, 8, 8)
    with built.original_head_in():
        assert built.model(x).shape == (2, 10)
    assert built.model(x).shape == (2, 1)
    # the engine's model is build_model's: same head weights from the same seed
    t = task("is_seven")
    run = Retrainer(pretrained, cfg, t.train)
    assert torch.equal(run.model.classifier[3].weight, built.model.classifier[3].weight)
    assert build_model(pretrained, cfg, apply_freezing=False).model.features[0].weight.requires_grad
    parts = build_run(pretrained, cfg, t.train, torch.device("cpu"))
    assert parts.total_steps == count_steps(t.train, cfg) == run.total_steps == len(t.train) * cfg.epochs


def test_a_zero_head_starts_at_zero_learns_and_leaves_the_rng_where_the_default_does():
    model = pretrained_digits_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RunConfig(loss="bce", head_out=1, seed=3, lr=3e-3)
    default = build_model(model, cfg)
    rng_default = torch.random.get_rng_state()
    zero = build_model(model, cfg.replace(head_init="zeros"))
    assert torch.equal(torch.random.get_rng_state(), rng_default)  # dropout draws the same numbers
    head = zero.model.get_submodule(zero.head_name)
    assert not head.weight.any() and not head.bias.any()
    assert default.model.get_submodule(default.head_name).weight.abs().sum() > 0
    assert zero.original_head is not None and zero.original_head.out_features == 10
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model
    # the first step's gradient stops at the head; the head itself learns
    x, y = next(iter(task("is_seven").train))
    zero.model.train()
    losses.make("bce")(zero.model(x), y).backward()
    assert head.weight.grad.abs().sum() > 0
    assert all(not p.grad.any() for n, p in zero.model.named_parameters() if not n.startswith(zero.head_name))
    with pytest.raises(ValueError, match="head_init.*did you mean 'zeros'"):
        RunConfig(head_init="zero")
    assert RunConfig.from_json(cfg.replace(head_init="zeros").to_json()).head_init == "zeros"


def test_a_zero_head_trains_in_the_engine_with_every_probe():
    t = task("is_seven")
    cfg = t.config.replace(head_init="zeros", epochs=1, max_steps=30, alignment_every=1, alignment_budget=1.0)
    run = Retrainer(pretrained_digits_cnn(), cfg, t.train, t.val, t.old_val)
    run.fit()
    assert run.state.value == "finished"
    steps, names, cos = run.history.layer_series("grad_alignment")
    hidden = np.asarray(cos)[:, list(names).index("classifier.0")]
    # step 0: the zero head passes no gradient down, so no direction: the probe waits for one
    assert steps[0] == 1 and list(steps) == list(range(1, run.step))
    assert np.isfinite(hidden).all()  # from then on every sample has a value
    assert run.history.series("val_metric")[1][-1] > 0
