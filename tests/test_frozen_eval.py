"""RunConfig(frozen_eval=True): layers whose parameters are all frozen run in inference mode,
whatever model.train() says; in the engine (stages and live changes included), the exported
script, the Layers tab, the JSON round trip and what-if grids."""

from __future__ import annotations

import copy

import pytest
import torch
from test_export import SMALL_DATA_CODE, _small, assert_same, script_in_process
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from retrain_widgets.core import Event, Retrainer, RunConfig
from retrain_widgets.core import feature_cache as fc
from retrain_widgets.core.cloning import clone_module
from retrain_widgets.core.export import export_script
from retrain_widgets.core.recipe.freezing import FrozenEval, eval_frozen


class Net(nn.Module):
    """A frozen-able body with dropout between two layers, a parameterless Dropout just before
    the head in a Sequential (torchvision's classifier), and BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(16, 16), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _loader(n: int = 64, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


HEAD_ONLY = RunConfig(frozen=["body", "classifier.0"], epochs=2, device="cpu", lr=1e-2, cache_features=False)


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules() if name}


def test_config_field_round_trips_and_is_validated():
    cfg = RunConfig(frozen_eval=True, frozen=["body"])
    assert RunConfig.from_json(cfg.to_json()) == cfg and RunConfig.from_json(cfg.to_json()).frozen_eval is True
    assert RunConfig().frozen_eval is False
    with pytest.raises(ValueError, match=r"RunConfig.frozen_eval must be True or False, got 'yes'"):
        RunConfig(frozen_eval="yes")


@pytest.mark.parametrize("on", [False, True])
def test_frozen_layers_stay_in_inference_mode_through_training_and_validation(on):
    run = Retrainer(_net(), HEAD_ONLY.replace(frozen_eval=on), _loader(), _loader(32, seed=1))
    seen: list[dict[str, bool]] = []
    run.on(Event.STEP_END, lambda info: seen.append(_modes(run.model)))
    run.fit()
    assert len(seen) == 8  # 2 epochs of 4 steps: the second after a validation pass (eval, then train again)
    for modes in seen:
        assert modes["classifier"] and modes["classifier.2"]  # the head trains
        assert modes["classifier.1"]  # the Dropout just before the head goes with it
        assert modes["body.3"] is (not on)  # the frozen part's dropout: off with frozen_eval
        assert modes["body"] is (not on) and modes["classifier.0"] is (not on) and modes["body.4"] is (not on)
        assert not modes["body.1"]  # frozen BatchNorm is locked in eval mode either way


def test_a_new_head_keeps_its_modes_after_the_old_task_is_measured_through_the_original_one():
    """The old task is measured with the original (frozen) head swapped in: the modes are decided
    again once the new head is back, so the Dropout before it trains in the next epoch."""
    train = DataLoader(TensorDataset(torch.randn(64, 6), torch.randint(0, 2, (64,))), batch_size=16)
    run = Retrainer(_net(), HEAD_ONLY.replace(frozen_eval=True, head_out=2), train, None, _loader(32, seed=1))
    seen: list[dict[str, bool]] = []
    run.on(Event.STEP_END, lambda info: seen.append(_modes(run.model)))
    run.fit()
    assert run.original_head is not None and len(seen) == 8
    assert all(m["classifier.1"] and m["classifier.2"] and not m["body.3"] for m in seen)


def test_freezing_changes_move_layers_in_and_out_of_inference_mode_at_once():
    run = Retrainer(_net(), HEAD_ONLY.replace(frozen_eval=True), _loader())
    net = run.model
    net.train()
    assert not net.body.training and not net.body[3].training
    run.unfreeze(["body"])  # idle: applied now
    assert net.body.training and net.body[3].training and net.body[0].training
    assert not net.classifier[0].training  # still frozen
    run.freeze(["body"])
    assert not net.body.training and not net.body[3].training
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert net.classifier[2].training and not net.body.training


def test_gradual_stages_leave_inference_mode_when_their_group_unfreezes():
    cfg = RunConfig(gradual=True, unfreeze_every=1, epochs=4, device="cpu", frozen_eval=True, cache_features=False)
    run = Retrainer(_net(), cfg, _loader())
    first: dict[int, dict[str, bool]] = {}
    run.on(Event.STEP_END, lambda info: first.setdefault(run.stage, _modes(run.model)))
    run.fit()
    groups = [g.name for g in run.groups]
    assert groups == ["body.0", "body.4", "classifier.0", "classifier.2"]
    assert first[0]["classifier.2"] and not first[0]["classifier.0"] and not first[0]["body.3"]
    assert first[1]["classifier.0"] and first[1]["classifier.1"] and not first[1]["body.4"]
    # stage 2 unfreezes body.4: the body has trainable parameters, the Dropout before body.4 follows it
    assert first[2]["body.4"] and first[2]["body.3"] and not first[2]["body.0"]
    assert all(first[3].values())


def test_a_deep_copy_keeps_its_own_inference_mode():
    net = _net()
    for p in net.body.parameters():
        p.requires_grad_(False)
    eval_frozen(net)
    clone = clone_module(net)  # the engine's copies (what-ifs, restore)
    assert vars(clone)["train"].model is clone
    twin = copy.deepcopy(net)
    assert isinstance(vars(twin)["train"], FrozenEval) and vars(twin)["train"].model is twin
    twin.train()
    assert twin.training and not twin.body.training and twin.classifier.training
    net.eval()
    twin.train()
    assert twin.classifier.training and not net.classifier.training


def test_frozen_part_is_deterministic_and_bit_identical():
    run = Retrainer(_net(), HEAD_ONLY.replace(frozen_eval=True), _loader())
    body = {k: v.clone() for k, v in run.model.body.state_dict().items()}
    run.fit()
    assert all(torch.equal(v, run.model.body.state_dict()[k]) for k, v in body.items())
    x = torch.randn(8, 6)
    run.model.train()
    assert torch.equal(run.model.body(x), run.model.body(x))


# ------------------------------------------------------------------ the exported script
#: The bundled CNN with a Dropout inside its features: frozen_eval changes the numbers.
DROPOUT_CNN_CODE = '''\
from torch import nn
from retrain_widgets.examples import pretrained_digits_cnn


def load_pretrained_model():
    model = pretrained_digits_cnn()
    layers = list(model.features)
    model.features = nn.Sequential(*layers[:3], nn.Dropout(0.3), *layers[3:])
    return model
'''


@pytest.mark.parametrize("gradual", [False, True])
def test_exported_script_runs_the_frozen_part_in_inference_mode_as_the_engine(gradual):
    cfg = _small(RunConfig(loss="ce", head_out=3, frozen=["features"], lr=3e-3, frozen_eval=True, gradual=gradual,
                           cache_features=False))
    data_code = SMALL_DATA_CODE.format(task_name="loops", seed=cfg.seed)
    models: dict = {}
    exec(DROPOUT_CNN_CODE, models)
    data: dict = {}
    exec(data_code, data)
    results = {}
    for on in (False, True):
        history = Retrainer(models["load_pretrained_model"](), cfg.replace(frozen_eval=on),
                            *data["make_loaders"]()).fit()
        results[on] = {name: float(history.series(name)[1][-1]) for name in ("val_loss", "val_metric", "old_metric")}
    assert results[True]["val_loss"] != results[False]["val_loss"]  # the setting matters on this model
    src = export_script(cfg, model_code=DROPOUT_CNN_CODE, data_code=data_code)
    assert "eval_frozen(model)" in src and "class FrozenEval" in src
    script, namespace = script_in_process(src)
    assert_same(results[True], script)
    assert "eval_frozen(model)" not in export_script(cfg.replace(frozen_eval=False))


# ------------------------------------------------------------------ the studio
def test_layers_tab_checkbox_sets_and_shows_the_field(runs_in_tmp):
    from retrain_widgets.widgets.studio import RetrainStudio

    s = RetrainStudio(_net(), _loader(), _loader(32, seed=1), store=False)
    assert s.frozen_eval.value is False
    s.frozen_eval.value = True
    assert s.config.frozen_eval is True
    s.set(frozen_eval=False)
    assert s.frozen_eval.value is False
    assert s.frozen_eval in s.layers_tab.children


def test_what_if_grid_over_frozen_eval_caches_the_runs_that_allow_it():
    from retrain_widgets.headless import HeadlessStudio

    fc.clear()
    cfg = HEAD_ONLY.replace(cache_features="auto", epochs=1)
    s = HeadlessStudio(_net(), _loader(), _loader(32, seed=1), config=cfg, store=False)
    configs = s.what_if({"frozen_eval": [False, True]}, wait=True)
    assert [c.frozen_eval for c in configs] == [False, True]
    assert [s.book.name_of(r) for r in s.runs] == ["#1 frozen in train mode", "#2 frozen in eval mode"]
    plain, inference = (r.history.meta["feature_cache"] for r in s.runs)
    assert plain["state"] == "refused" and "frozen_eval=True" in plain["reason"], plain
    assert inference["state"] == "built", inference
    assert inference["trainable_part"] == ["classifier.1", "classifier.2"]
    fc.clear()
