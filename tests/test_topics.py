"""The studio's topics are typed: one ``Topic`` each, one frozen payload with named fields; a topic's
plain name still works, with the payload's fields as positional arguments."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

import retrain_widgets
from retrain_widgets import RunConfig, examples
from retrain_widgets import topics as T
from retrain_widgets.core.losses import LossMismatchError
from retrain_widgets.headless import HeadlessStudio
from retrain_widgets.topics import Topic

pytestmark = pytest.mark.usefixtures("runs_in_tmp")

PAYLOADS = {Topic.CONFIG: T.ConfigChanged, Topic.WORK: T.WorkChanged, Topic.LOSS_CHECK: T.LossVerdict,
            Topic.PREVIEW: T.Preview, Topic.LR_FIND: T.LrFound, Topic.STATUS: T.StatusLine, Topic.ERROR: T.ErrorShown,
            Topic.RUN: T.RunMade, Topic.RUN_FAILED: T.RunFailed, Topic.STATE: T.StateShown, Topic.PLOT: T.PlotDrawn,
            Topic.RESET: T.ResetDone, Topic.QUEUE: T.QueueProgress, Topic.QUEUE_DONE: T.QueueDone,
            Topic.FOCUS: T.Focus, Topic.CACHE: T.CacheState}


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def test_every_topic_has_one_frozen_payload_class():
    assert set(PAYLOADS) == set(Topic) and len(Topic) == 16
    for topic, cls in PAYLOADS.items():
        assert cls.topic is topic and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert T.topic_of(topic.value) is topic and Topic(topic.value) is topic and str(topic) == topic.value


def _session(studio):
    """Every kind of change the studio announces, once or more."""
    studio.set(schedule="cosine", frozen=["features"])  # config, work, preview, status
    studio.find_lr(num_steps=10)  # lr_find
    studio.start()  # run, error (cleared), cache
    studio.wait(60)
    studio.reset()  # reset, plot, state
    studio.set(loss="ce")  # the loss check refuses: Start fails
    studio.start()  # run_failed, error, focus
    studio.set(loss="bce")
    studio.what_if({"lr": [1e-3]}, wait=True)  # queue, queue_done, focus


def test_a_listener_gets_one_typed_payload_on_every_topic(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=RunConfig(loss="bce", head_out=1, max_steps=4), store=False)
    heard: dict[Topic, list] = {t: [] for t in Topic}
    for topic in Topic:
        s.on(topic, heard[topic].append)
    _session(s)
    for topic, payloads in heard.items():
        assert payloads, f"nothing announced on {topic}"
        assert all(type(p) is PAYLOADS[topic] for p in payloads), topic
    config = heard[Topic.CONFIG][0]
    assert config.old.schedule == "constant" and config.new.schedule == "cosine"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.new = config.old  # type: ignore[misc]
    assert heard[Topic.RUN_FAILED][-1].run is not None and heard[Topic.FOCUS][0].where == "loss"
    assert any(isinstance(p.error, LossMismatchError) for p in heard[Topic.ERROR]) and heard[Topic.ERROR][0].error is None
    assert heard[Topic.FOCUS][-1].where == "runs" and len(heard[Topic.QUEUE_DONE][-1].keys) == 1
    assert heard[Topic.LR_FIND][0].png[:4] == b"\x89PNG" and heard[Topic.PLOT][0].png[:4] == b"\x89PNG"
    assert any(p.run is None for p in heard[Topic.STATE]) and heard[Topic.CACHE][-1].text == s.cache_state()


def test_a_plain_name_still_gets_the_fields_as_arguments(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=RunConfig(loss="bce", head_out=1, max_steps=4), store=False)
    typed: list = []
    plain: list = []
    for topic in Topic:
        s.on(topic, typed.append)
        s.on(topic.value, lambda *args, t=topic: plain.append((t, args)))
    _session(s)
    assert [(p.topic, p.args()) for p in typed] == plain
    by_name = dict(plain)
    assert by_name[Topic.WORK] == () and by_name[Topic.RESET] == ()
    assert isinstance(by_name[Topic.LOSS_CHECK][0], T.LossVerdict) and isinstance(by_name[Topic.PREVIEW][0], T.Preview)
    old, new = next(args for t, args in plain if t is Topic.CONFIG)
    assert (old.schedule, new.schedule) == ("constant", "cosine")
    text, error = next(args for t, args in plain if t is Topic.STATUS)
    assert isinstance(text, str) and error in (True, False)


def test_emit_takes_a_payload_or_a_topic_and_its_fields(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, config=RunConfig(loss="bce", head_out=1), store=False)
    got: list = []
    s.on(Topic.STATUS, got.append)
    s.emit(T.StatusLine("typed", True))
    s.emit("status", "by name", False)
    s.emit(Topic.STATUS, "by topic")
    assert got == [T.StatusLine("typed", True), T.StatusLine("by name", False), T.StatusLine("by topic", False)]
    verdicts: list = []
    s.on(Topic.LOSS_CHECK, verdicts.append)
    verdict = T.LossVerdict(True, "fits")
    s.emit("loss_check", verdict)  # as the plain name's listeners get it: the verdict itself
    assert verdicts == [verdict] and verdicts[0] is verdict
    s.emit(T.ErrorShown(KeyError("x")))
    assert isinstance(s.shown_error, KeyError)


@pytest.mark.parametrize("topic", ["nope", "Config", 42, None])
def test_an_unknown_topic_is_a_clear_value_error(cnn, seven, topic):
    s = HeadlessStudio(cnn, seven.train, config=RunConfig(loss="bce", head_out=1), store=False)
    with pytest.raises(ValueError, match=r"unknown studio topic .*known: config, work, loss_check"):
        s.on(topic, print)
    with pytest.raises(ValueError, match="unknown studio topic"):
        s.emit(topic)


def _string_topic_calls(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("on", "emit")
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(f"{path.name}:{node.lineno}: {node.func.attr}({node.args[0].value!r})")
    return found


def test_every_emitter_and_view_uses_the_enum():
    package = pathlib.Path(retrain_widgets.__file__).parent
    calls = [c for p in sorted(package.rglob("*.py")) for c in _string_topic_calls(p)]
    assert calls == []
