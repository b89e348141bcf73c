"""``studio.config`` is read-only: an in-place edit is refused with an error naming ``studio.set(...)``
and changes nothing; ``set`` and assigning a whole config still work (both studios)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from retrain_widgets import RetrainStudio, RunConfig, examples
from retrain_widgets.config_view import ReadOnlyConfigError, read_only
from retrain_widgets.headless import HeadlessStudio
from retrain_widgets.topics import Topic

pytestmark = pytest.mark.usefixtures("runs_in_tmp")

EDITS = {  # an in-place edit -> the fix the error names
    "cfg.lr = -1.0": r"studio\.set\(lr=-1\.0\)",
    "cfg.frozen = ['features']": r"studio\.set\(frozen=\['features'\]\)",
    "cfg.frozen.append('features')": r"studio\.set\(frozen=",
    "cfg.frozen += ['features']": r"studio\.set\(frozen=",
    "cfg.frozen[:] = ['features']": r"studio\.set\(frozen=",
    "cfg.loss_kwargs['gamma'] = 5.0": r"studio\.set\(loss_kwargs=",
    "cfg.loss_kwargs.update(gamma=5.0)": r"studio\.set\(loss_kwargs=",
    "del cfg.lr": r"studio\.set\(lr=",
}


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def _config():
    return RunConfig(loss="focal", loss_kwargs={"gamma": 2.0}, head_out=1, max_steps=12)


def _trainable(studio):
    return [p.requires_grad for p in studio.work.parameters()]


@pytest.mark.parametrize("edit", list(EDITS))
def test_headless_refuses_an_in_place_edit_and_changes_nothing(cnn, seven, edit):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=_config(), store=False)
    heard = []
    for topic in Topic:
        s.on(topic, heard.append)
    before, trainable = copy.deepcopy(s.config), _trainable(s)
    with pytest.raises(ReadOnlyConfigError, match=EDITS[edit]):
        exec(edit, {"cfg": s.config})
    assert s.config == before and s.config.lr == pytest.approx(1e-3) and s.config.frozen == []
    assert s.config.loss_kwargs == {"gamma": 2.0} and _trainable(s) == trainable and all(trainable)
    assert heard == []  # nothing was announced: nothing changed
    assert isinstance(ReadOnlyConfigError("x"), AttributeError)


def test_headless_changes_go_through_set_and_whole_configs(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=_config(), store=False)
    heard = []
    s.on(Topic.CONFIG, heard.append)
    new = s.set(frozen=["features"])
    assert s.config is new and new.frozen == ["features"] and heard[-1].new is new
    with pytest.raises(ReadOnlyConfigError):
        heard[-1].new.frozen.clear()  # what a listener gets is read-only too
    assert not all(_trainable(s))  # the working copy shows the freezing
    editable = copy.copy(s.config)  # a copy is a plain, editable RunConfig
    editable.lr = 3e-3
    s.config = editable
    assert s.config.lr == pytest.approx(3e-3) and editable is not s.config
    editable.lr = 5e-3  # the studio keeps its own copy
    assert s.config.lr == pytest.approx(3e-3)
    s.config = s.config  # a read-only config assigned back (as autoloss did) is taken
    s.config = s.config.replace(lr=2e-3)
    assert s.config.lr == pytest.approx(2e-3) and type(s.config.replace(lr=1e-3).frozen) is list
    with pytest.raises(ValueError, match="lr"):
        s.set(lr=-1.0)
    assert s.config.lr == pytest.approx(2e-3)


def test_a_read_only_config_compares_copies_and_pickles_as_a_run_config():
    plain = _config()
    view = read_only(plain)
    assert view == plain and plain == view and isinstance(view, RunConfig)
    assert repr(view) == repr(plain) and view.to_dict() == plain.to_dict() and view.diff(plain) == {}
    for twin in (copy.copy(view), copy.deepcopy(view), pickle.loads(pickle.dumps(view))):
        assert type(twin) is RunConfig and twin == plain and type(twin.loss_kwargs) is dict
        twin.frozen.append("features")  # editable
    assert view.frozen == [] and read_only(view) is view
    for field in (view.frozen, view.loss_kwargs):  # a field copied alone is plain and editable too
        assert type(copy.copy(field)) in (list, dict) and type(pickle.loads(pickle.dumps(field))) in (list, dict)
    copy.deepcopy(view.loss_kwargs)["gamma"] = 1.0
    assert view.validate() is view and view != "a config" and view.loss_kwargs == {"gamma": 2.0}
    replaced = dataclasses.replace(view, lr=2e-3)  # made by the class: a plain, validated RunConfig
    assert type(replaced) is RunConfig and replaced.lr == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="lr"):
        dataclasses.replace(view, lr=-1.0)
    plain.lr = 0.5  # the view does not follow the object it was made from
    assert view.lr == pytest.approx(1e-3)


def test_the_dashboard_refuses_an_in_place_edit_and_its_controls_stay(cnn, seven):
    s = RetrainStudio(cnn, seven.train, seven.val, config=_config(), store=False)
    shown = (s.lr.value, s.loss_picker.value, sorted(s.tree.frozen), s.tree.row("features").check.value)
    for edit, fix in EDITS.items():
        with pytest.raises(ReadOnlyConfigError, match=fix):
            exec(edit, {"cfg": s.config})
    assert s.config == _config() and s.config is s.headless.config
    assert (s.lr.value, s.loss_picker.value, sorted(s.tree.frozen), s.tree.row("features").check.value) == shown
    assert shown[2:] == ([], False)
    s.set(lr=3e-3)
    assert s.lr.value == pytest.approx(3e-3)
    s.config = s.config.replace(lr=4e-3)
    assert s.lr.value == pytest.approx(4e-3) and s.config.lr == pytest.approx(4e-3)
