"""Values: every float of a config or a loss's parameters is finite or refused with the field's name;
the LR preview's cost does not grow with the run's length; a refused change leaves the config."""

from __future__ import annotations

import math
import re
import time

import pytest

from retrain_widgets import RunConfig, examples
from retrain_widgets.core import schedules
from retrain_widgets.core.export import export_script
from retrain_widgets.headless import HeadlessStudio

pytestmark = pytest.mark.usefixtures("runs_in_tmp")

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(("changes", "named"), [
    ({"l2sp": INF}, "l2sp"),
    ({"grad_clip": INF}, "grad_clip"),
    ({"lora_alpha": INF}, "lora_alpha"),
    ({"cache_max_mb": INF}, "cache_max_mb"),
    ({"loss": "huber", "loss_kwargs": {"delta": INF}}, "delta"),
    ({"loss": "focal", "loss_kwargs": {"gamma": NAN}}, "gamma"),
    ({"loss": "huber", "loss_kwargs": {"delta": NAN}}, "delta"),
    ({"schedule": "one_cycle", "schedule_kwargs": {"div_factor": INF}}, "div_factor"),
    ({"schedule": "one_cycle", "schedule_kwargs": {"final_div_factor": -INF}}, "final_div_factor"),
])
def test_non_finite_values_are_refused_with_the_fields_name(changes, named):
    with pytest.raises(ValueError, match=f"{named}.*finite") as info:
        RunConfig(**changes)
    assert "inf" in str(info.value) or "nan" in str(info.value)


def test_export_never_writes_a_bare_inf():
    with pytest.raises(ValueError, match="l2sp"):
        export_script(RunConfig(l2sp=INF))
    script = export_script(RunConfig(l2sp=1e-3, grad_clip=2.0))
    compile(script, "script.py", "exec")
    assert not re.search(r"(?<![\w.'\"])inf(?![\w'\"])", script)


@pytest.mark.parametrize("name", schedules.available())
def test_the_sampled_preview_is_the_stepped_one_at_its_points(name):
    from retrain_widgets.core import lr_preview

    for total in (5, 2_000, 12_345):
        steps, lrs = lr_preview.sampled(name, total, 1e-3)
        assert len(steps) <= lr_preview.MAX_POINTS and steps[0] == 0 and steps[-1] == total - 1
        full = schedules.preview(name, total, 1e-3)
        assert lrs == pytest.approx([full[i] for i in steps], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", schedules.available())
def test_a_billion_step_preview_is_cheap(name):
    from retrain_widgets.core import lr_preview

    t0 = time.thread_time()  # CPU time: not the time a busy machine kept this thread waiting
    steps, lrs = lr_preview.sampled(name, 10**9, 1e-3)
    assert time.thread_time() - t0 < 2.0
    assert len(steps) <= lr_preview.MAX_POINTS and steps[-1] == 10**9 - 1 and all(map(math.isfinite, lrs))


@pytest.fixture(scope="module")
def seven():
    return examples.task("is_seven", batch_size=64)


def test_a_studio_of_a_billion_epochs_opens_and_changes(cnn, seven):
    s = HeadlessStudio(cnn, seven.train, seven.val, config=RunConfig(loss="bce", head_out=1, epochs=10**9),
                       store=False)
    notes = []
    s.on("preview", notes.append)
    t0 = time.perf_counter()
    s.set(epochs=10**9 - 1)
    s.set(schedule="one_cycle")
    assert time.perf_counter() - t0 < 10
    assert s.config.epochs == 10**9 - 1 and s.config.schedule == "one_cycle"
    assert notes and not notes[-1].error and notes[-1].png is not None
    with pytest.raises(ValueError, match="grad_clip"):
        s.set(grad_clip=INF)
    assert s.config.grad_clip is None and s.config.schedule == "one_cycle"
    s.set(epochs=3)
    assert s.config.epochs == 3


def test_a_change_that_fails_after_its_checks_leaves_the_config(cnn, seven, monkeypatch):
    from retrain_widgets.core import lr_preview

    s = HeadlessStudio(cnn, seven.train, seven.val, config=RunConfig(loss="bce", head_out=1, epochs=3), store=False)
    configs = []
    s.on("config", lambda old, new: configs.append(new))
    real = lr_preview.sampled

    def out_of_memory(*args, **kwargs):
        raise MemoryError("the preview could not be drawn")

    monkeypatch.setattr(lr_preview, "sampled", out_of_memory)
    with pytest.raises(MemoryError):
        s.set(epochs=7)
    assert s.config.epochs == 3 and configs[-1].epochs == 3  # the views were told it is back
    monkeypatch.setattr(lr_preview, "sampled", real)
    assert s.set(epochs=8).epochs == 8 and s.config.epochs == 8
