"""Which way ``uipoll`` waits, per kernel (the ways themselves are tested in a browser: tests/browser)."""

from __future__ import annotations

import time

from retrain_widgets.widgets import uipoll


class Ipykernel6Like:
    def do_one_iteration(self):
        pass


def test_outside_a_kernel_it_is_a_plain_wait():
    with uipoll.ui_events() as poll:
        assert isinstance(poll, uipoll.UIEvents) and poll.kernel is None and poll(10) == 0
    t0 = time.monotonic()
    assert uipoll.wait_while(lambda: time.monotonic() - t0 < 0.2) is True
    assert uipoll.wait_while(lambda: True, timeout=0.1) is False


def test_ipykernel_6_uses_jupyter_ui_poll_when_installed(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(uipoll, "_jupyter_ui_poll", lambda: sentinel)
    assert uipoll.ui_events(Ipykernel6Like()) is sentinel
    monkeypatch.setattr(uipoll, "_jupyter_ui_poll", lambda: None)  # not installed: nothing to poll with
    events = uipoll.ui_events(Ipykernel6Like())
    assert isinstance(events, uipoll.UIEvents) and events.kernel is None


def test_ipykernel_7_does_not_use_jupyter_ui_poll(monkeypatch):
    class Ipykernel7Like(Ipykernel6Like):  # a kernel with both: shell_main says ipykernel 7
        shell_main = None

    monkeypatch.setattr(uipoll, "_jupyter_ui_poll", lambda: object())
    made = []
    monkeypatch.setattr(uipoll, "UIEvents", lambda kernel: made.append(kernel) or "uievents")
    kernel = Ipykernel7Like()
    assert uipoll.ui_events(kernel) == "uievents" and made == [kernel]
