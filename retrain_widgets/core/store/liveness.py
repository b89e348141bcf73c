"""Whether the process that writes a run is still alive.

A run is written by one process, whose pid, host and *token* (boot id and start time, since
pids are reused) the store keeps. On the same host the process is looked up directly (/proc,
``os.kill(pid, 0)``, or the Windows API); a process of another host is alive while its
heartbeat is recent.
"""

from __future__ import annotations

import os
import socket

__all__ = ["HOST", "process_token", "process_alive", "death_note"]

#: This machine's host name, stored with each run.
HOST = socket.gethostname()


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT_ID = _read_boot_id()


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks since boot) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    fields = data.rsplit(b")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return fields[0].decode(errors="replace"), fields[19].decode(errors="replace")


def process_token(pid: int) -> str | None:
    """Identifies one process over time (pids are reused): boot id and start time."""
    stat = _proc_stat(pid)
    return f"{_BOOT_ID}:{stat[1]}" if stat is not None and _BOOT_ID else None


def process_alive(pid: int, token: str | None) -> bool:
    """Whether the process ``pid`` of this host (started as ``token`` describes) still runs."""
    if pid == os.getpid():
        return token is None or token == process_token(pid)
    if token and _BOOT_ID and token.split(":", 1)[0] != _BOOT_ID:
        return False  # the machine rebooted since
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):  # zombie: ended, not reaped yet
            return False
        return not token or ":" not in token or token.split(":", 1)[1] == start
    if os.name == "nt":
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists, owned by someone else
        return True
    return True


def _windows_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def death_note(host: str | None, pid: int | None, token: str | None, heartbeat: float | None, now: float,
               dead_after: float, where: str) -> str | None:
    """Why the writer of a run is taken for dead, or ``None`` while it is alive.

    ``where`` says how far the run got (it ends the message). A process of this host is
    looked up; one of another host is dead after ``dead_after`` seconds without a heartbeat.
    """
    if host == HOST and pid is not None:
        if process_alive(int(pid), token):
            return None
        return f"the process that ran it ended (kernel restarted or killed?) {where}"
    if heartbeat is not None and now - heartbeat < dead_after:
        return None
    quiet = f"{(now - heartbeat) / 60:.0f} min" if heartbeat is not None else "ever"
    return (f"the process that ran it on host {host} ended (kernel restarted or killed?): no sign of "
            f"life for {quiet}, {where}")
