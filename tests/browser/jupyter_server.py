"""The Jupyter server of the browser tests: ``jupyter lab`` (or ``jupyter notebook``) on 127.0.0.1 with a random
port and token, its own config, runtime and data folders (no user settings), widget state saved with notebooks
(as ``./dev lab`` sets it), and the kernelspecs of the tests. Used through ``browser_harness.py``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "browser"
JUPYTER = Path(sys.executable).parent / "jupyter"
# Seconds the server waits for a kernel it shuts down: half for the shutdown request, then SIGTERM,
# half again, then SIGKILL (jupyter_client's default is 5 s, i.e. 2.5 s before SIGTERM).
KERNEL_SHUTDOWN_WAIT = 1.0
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
# A second ipykernel major for the kernels of the browser tests: a folder that holds ipykernel 6 (made
# with `pip install --no-deps --target DIR "ipykernel<7" nest_asyncio`); it goes first on the kernel's
# PYTHONPATH, so the venv's other packages serve it. Unset: the tests on that kernel are skipped.
IPYKERNEL6_DIR = os.environ.get("RETRAIN_WIDGETS_IPYKERNEL6", "")
IPYKERNEL6 = "python3-ipykernel6"


def write_kernelspecs(data_dir: Path) -> None:
    """The ipykernel-6 kernelspec (when ``IPYKERNEL6_DIR`` is set) under ``data_dir/kernels``."""
    if not IPYKERNEL6_DIR:
        return
    spec = data_dir / "kernels" / IPYKERNEL6
    spec.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (IPYKERNEL6_DIR, os.environ.get("PYTHONPATH", "")) if p)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel 6)", "language": "python", "env": {"PYTHONPATH": path},
    }))

# JupyterLab's news pop-up and update check (also written by ./dev): they cover widgets, need network.
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}
}


# ---------------------------------------------------------------------------------------------
# Jupyter server
# ---------------------------------------------------------------------------------------------


def ensure_lab_overrides() -> Path:
    """Make sure ``<venv>/share/jupyter/lab/settings/overrides.json`` turns the news pop-up off."""
    path = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    key = "@jupyterlab/apputils-extension:notification"
    if data.get(key, {}) != {**data.get(key, {}), **LAB_OVERRIDES[key]}:
        data.setdefault(key, {}).update(LAB_OVERRIDES[key])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[Any]:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


@dataclass
class JupyterServer:
    """A ``jupyter lab`` (or ``jupyter notebook``) server on 127.0.0.1 serving ``root_dir``."""

    root_dir: Path
    app: str = "lab"
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    state_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, **query: str | None) -> str:
        """URL of ``path`` with the token; ``query`` values of None become bare flags (``?reset``)."""
        parts = [k if v is None else f"{k}={v}" for k, v in query.items()]
        parts.append(f"token={self.token}")
        return f"{self.base_url}/{path.lstrip('/')}?{'&'.join(parts)}"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> JupyterServer:
        if not JUPYTER.exists():
            pytest.fail(f"browser tests: no jupyter executable at {JUPYTER} (install the 'test' extra)")
        ensure_lab_overrides()
        state = self.state_dir = Path(tempfile.mkdtemp(prefix=f"rw-jupyter-{self.app}-state-"))
        write_kernelspecs(state / "data")
        # widget state saved with the notebook, as ./dev lab sets it (there in the venv's overrides.json)
        widgets = state / "config" / "lab" / "user-settings" / "@jupyter-widgets" / "jupyterlab-manager"
        widgets.mkdir(parents=True, exist_ok=True)
        (widgets / "plugin.jupyterlab-settings").write_text('{"saveState": true}\n')
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(state / "config"),  # no user config, settings or workspaces
            JUPYTER_RUNTIME_DIR=str(state / "runtime"),
            IPYTHONDIR=str(state / "ipython"),  # no user startup files in the kernels
            JUPYTER_PLATFORM_DIRS="1",
            JUPYTER_PATH=str(state / "data"),  # kernelspecs of the tests (write_kernelspecs)
            PYTHONUNBUFFERED="1",
        )
        cmd = [
            str(JUPYTER), self.app, "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}", "--allow-root",
            f"--ServerApp.root_dir={self.root_dir}",
            # a kernel still busy when its test ends (a training thread, torch's exit) is ended after
            # 0.5 s instead of 2.5 s: the tests never need a kernel's own graceful exit
            f"--KernelManager.shutdown_wait_time={KERNEL_SHUTDOWN_WAIT}",
        ]  # fmt: skip
        worker = os.environ.get("PYTEST_XDIST_WORKER")  # each xdist worker's server a log of its own
        self.log_path = self.log_path or ARTIFACTS_DIR / f"jupyter-{self.app}-server{'-' + worker if worker else ''}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root_dir, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter {self.app} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "api/status", timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"jupyter {self.app} did not answer /api/status in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """Shut down kernels, then stop the server's process group; kill whatever survives."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.shutdown_all_kernels()
            except Exception:
                pass
        children = _descendants(self.proc.pid)  # kernels run in their own sessions: track them by PID
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        for child in children:
            try:
                if child.is_running():
                    child.kill()
            except Exception:
                pass
        self.proc = None
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- REST ------------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base_url}/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    def delete_all_sessions(self) -> None:
        for s in self.api("GET", "api/sessions"):
            self.api("DELETE", f"api/sessions/{s['id']}", timeout=30)

    def delete_all_workspaces(self) -> None:
        """Forget saved JupyterLab workspaces, so that no page restores an earlier test's layout."""
        for ws in self.api("GET", "lab/api/workspaces")["workspaces"]["ids"]:
            self.api("DELETE", f"lab/api/workspaces/{ws}")

    def reset_lab_tree_path(self) -> None:
        """Work around a server-side leak from JupyterLab pages into Notebook 7 pages.

        jupyterlab_server's ``LabHandler.get`` writes ``treePath`` (and ``mode``, ``workspace``) into
        the server-wide ``settings["page_config_data"]`` dict, which Notebook 7's handler copies into
        its own page config. After ``/lab/tree/NB.ipynb`` was served, every Notebook 7 page inherits
        ``treePath="NB.ipynb"``; its file browser then runs ``filebrowser:open-path``, which the
        notebook page does not register: a page error "Command 'filebrowser:open-path' not
        registered" (related: jupyterlab/jupyterlab_server#434). Serving ``/lab`` once sets
        ``treePath`` back to "" (no browser involved).
        """
        if self.app != "lab":
            return
        with urllib.request.urlopen(self.url("lab"), timeout=30) as resp:
            resp.read()

    def start_session(self, notebook: str) -> None:
        """Start the kernel of ``notebook`` (its kernelspec) before a page opens it: the page then
        connects to that session's kernel, which boots while the front end loads."""
        import nbformat

        kernel = nbformat.read(str(self.root_dir / notebook), as_version=4).metadata["kernelspec"]["name"]
        self.api("POST", "api/sessions", {"path": notebook, "name": Path(notebook).name, "type": "notebook",
                                          "kernel": {"name": kernel}}, timeout=60)

    def shutdown_all_kernels(self) -> None:
        self.delete_all_sessions()
        for k in self.api("GET", "api/kernels"):
            self.api("DELETE", f"api/kernels/{k['id']}", timeout=30)

    def serves_notebook7(self) -> bool:
        """True if this server also serves the Notebook 7 front end (``notebook`` installed)."""
        req = urllib.request.Request(self.url("tree"))
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return '"appName": "Jupyter Notebook"' in resp.read().decode(errors="replace")
        except (OSError, urllib.error.URLError):
            return False
