"""Waiting without freezing the widgets: the one module that touches ipykernel's internals.

A cell that blocks (``thread.join()``) queues every click until it ends, so a Stop button does
nothing while a notebook waits for a run. :func:`ui_events` (``jupyter_ui_poll``'s API) and
:func:`wait_while` keep handling the kernel's widget (comm) messages while the cell waits.
:func:`ui_events` picks the technique for the kernel at hand:

- **ipykernel 6** (``kernel.do_one_iteration`` exists): ``jupyter_ui_poll`` when installed. It
  runs one iteration of the kernel's shell loop per poll, holds back ``execute_request``
  messages and replays them when the cell ends. Without it the wait simply waits.
- **ipykernel >= 7** (``kernel.shell_main`` exists): :class:`UIEvents`, below. ``jupyter_ui_poll``
  1.1.0 (re-checked; its ipykernel-7 change only disables the kernel's ``_main_asyncio_lock``) still
  calls ``kernel.do_one_iteration()``, which ipykernel 7 removed (shell messages now arrive through
  a ZMQ stream fed by a "Shell channel" thread), and swallows the ``AttributeError``: its
  ``poll()`` silently does nothing there, and a click waits for the cell to end
  (``tests/browser/test_ui_poll.py`` shows both).
- **no kernel**, or headless (nbclient, nbval: nothing sends comm messages): a plain wait.

An async alternative needs none of this: ``await studio.wait_async()`` lets ipykernel 7 handle
clicks while the cell awaits.

:class:`UIEvents` on ipykernel >= 7:

1. Read the main shell's pending messages straight from its socket
   (``ipykernel.eventloops.get_shell_stream(kernel).socket``, non-blocking). The kernel's event
   loop is blocked by the running cell, so nothing else reads that socket meanwhile; draining it
   until ``zmq.Again`` leaves no message stranded behind the socket's edge-triggered descriptor.
2. Peek at each header (``session.deserialize(..., content=False)``, which does not record the
   HMAC signature). Comm messages (``comm_open`` / ``comm_msg`` / ``comm_close``) are
   deserialized fully and handed to the kernel's own handler now, with the shell parent set to
   that message and restored to the cell's afterwards, so the cell's output stays in the cell.
3. Every other message (``execute_request`` of the next cells after *Run All*, completions, ...)
   is kept in arrival order and given back to the kernel with
   ``kernel.io_loop.add_callback(shell_main, frames)`` when the wait ends; they queue on the main
   shell's lock, still held by the running cell, so they run after it, in order.

ipykernel names this module uses (public ones, then private ones, which may change in any
release; the browser test runs it on each supported ipykernel major):

- public: ``kernel.shell_main``, ``kernel.shell_handlers``, ``kernel.session``,
  ``kernel.set_parent`` / ``get_parent``, ``kernel.io_loop``, ``kernel.shell_stream``,
  ``kernel.shell_channel_thread.manager.get_subshell_to_shell_channel_socket``,
  ``ipykernel.eventloops.get_shell_stream``;
- private: ``kernel._supports_kernel_subshells`` (where to send replies),
  ``kernel._parent_ident`` (the cell's shell parent, restored after each comm message) and
  ``ipykernel.utils._async_in_context`` (how the kernel itself schedules ``shell_main``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from ..one_run import plain_wait_while

__all__ = ["UIEvents", "ui_events", "wait_while"]

COMM_MSG_TYPES = frozenset({"comm_open", "comm_msg", "comm_close"})


def _current_kernel() -> Any | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None)


class UIEvents:
    """Process comm (widget) messages while the calling cell blocks; replay the rest afterwards.

    Use as a context manager; the object is callable: ``poll(n)`` handles up to ``n`` pending comm
    messages (all when ``n`` is None) and returns how many it handled.
    """

    def __init__(self, kernel: Any | None = None) -> None:
        self.kernel = kernel if kernel is not None else _current_kernel()
        self._stream = None
        self._reply_stream = None
        self._pending: list[list[Any]] = []  # raw frames, arrival order
        self.handled = 0
        self._thread = threading.current_thread()
        if self.kernel is None or not hasattr(self.kernel, "shell_main"):
            # not in an ipykernel >= 7 kernel: nothing to poll
            self.kernel = None
            return
        from ipykernel.eventloops import get_shell_stream

        self._stream = get_shell_stream(self.kernel)
        if self.kernel._supports_kernel_subshells:
            manager = self.kernel.shell_channel_thread.manager
            self._reply_stream = manager.get_subshell_to_shell_channel_socket(None)
        else:
            self._reply_stream = self.kernel.shell_stream

    # -- polling ---------------------------------------------------------------------------------
    def _drain(self) -> None:
        import zmq

        sock = self._stream.socket
        while True:
            try:
                self._pending.append(sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                return

    def _msg_type(self, frames: list[Any]) -> str | None:
        session = self.kernel.session
        try:
            _, rest = session.feed_identities(frames, copy=False)
            header = session.deserialize(rest, content=False, copy=False)["header"]
        except Exception:
            return None
        return header.get("msg_type")

    def _dispatch_comm(self, frames: list[Any]) -> None:
        kernel = self.kernel
        session = kernel.session
        try:
            idents, rest = session.feed_identities(frames, copy=False)
            msg = session.deserialize(rest, content=True, copy=False)
        except Exception:
            kernel.log.error("ui poll: invalid message", exc_info=True)
            return
        handler = kernel.shell_handlers.get(msg["header"]["msg_type"])
        if handler is None:
            return
        saved_ident = kernel._parent_ident["shell"]
        saved_parent = kernel.get_parent("shell")
        kernel.set_parent(idents, msg, channel="shell")
        try:
            result = handler(self._reply_stream, idents, msg)
            if hasattr(result, "__await__"):  # not so for ipykernel's comm handlers; run it later
                import asyncio

                asyncio.ensure_future(result)
        except Exception:
            kernel.log.error("ui poll: exception in comm handler", exc_info=True)
        finally:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            kernel.set_parent(saved_ident, saved_parent, channel="shell")

    def poll(self, n: int | None = None) -> int:
        """Handle up to ``n`` pending comm messages now (all when None); keep the others for later.

        Only from the thread that runs the cell (the kernel's main thread); elsewhere a no-op.
        """
        if self.kernel is None or threading.current_thread() is not self._thread:
            return 0
        self._drain()
        done = 0
        keep: list[list[Any]] = []
        for i, frames in enumerate(self._pending):
            if n is not None and done >= n:
                keep.extend(self._pending[i:])
                break
            if self._msg_type(frames) in COMM_MSG_TYPES:
                self._dispatch_comm(frames)
                done += 1
            else:
                keep.append(frames)
        self._pending = keep
        self.handled += done
        return done

    __call__ = poll

    def replay(self) -> None:
        """Give every message not handled here back to the kernel, in arrival order."""
        if self.kernel is None or threading.current_thread() is not self._thread:
            return
        self._drain()
        from ipykernel.utils import _async_in_context

        callback = _async_in_context(partial(self.kernel.shell_main, None))
        pending, self._pending = self._pending, []
        for frames in pending:
            self.kernel.io_loop.add_callback(callback, frames)

    def __enter__(self) -> UIEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.replay()


def ui_events(kernel: Any | None = None) -> Any:
    """``with ui_events() as poll: while busy: poll(10); time.sleep(0.05)``: jupyter_ui_poll's API,
    with the technique that works on this kernel (see the module's text)."""
    kernel = kernel if kernel is not None else _current_kernel()
    if kernel is not None and not hasattr(kernel, "shell_main") and hasattr(kernel, "do_one_iteration"):
        legacy = _jupyter_ui_poll()
        if legacy is not None:
            return legacy
    return UIEvents(kernel)


def _jupyter_ui_poll() -> Any | None:
    """jupyter_ui_poll's context, when it is installed (ipykernel 6)."""
    try:
        from jupyter_ui_poll import ui_events as legacy
    except ImportError:
        return None
    return legacy()


def wait_while(busy: Callable[[], bool], timeout: float | None = None, interval: float = 0.05) -> bool:
    """Wait while ``busy()`` is true, handling widget events; True when it became false in time."""
    with ui_events() as poll:
        return plain_wait_while(busy, timeout, interval, poll=lambda: poll(10))
