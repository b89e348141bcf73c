"""Drive JupyterLab 4 / Notebook 7 in headless Chromium for widget tests (Playwright sync API).

Used by ``tests/browser/conftest.py``; test modules import the helpers they need from here.
Widgets are found by the CSS classes tests give them with ``widget.add_class("...")``: ipywidgets 8
puts ``_dom_classes`` on the widget's root element (``button.widget-button``,
``div.widget-hprogress``, ``div.widget-label``, ``img.widget-image``, ...).
"""

from __future__ import annotations

import json
import os
import re
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("RETRAIN_WIDGETS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
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

# Console errors that are not failures: (front end or None for both, regex searched in
# "<type>: <text> @ <where>", reason). Only entries seen here, and shown not to come from widgets.
BENIGN_CONSOLE = [
    # Notebook 7.6's keyboard-shortcuts plugin reads registry.plugins[id].schema for a plugin that is
    # not loaded yet: an upstream race, https://github.com/jupyter/notebook/issues/7862. It is thrown
    # while the settings load, in every notebook (one without widgets too), inside notebook_core.
    (
        "notebook7",
        r"^pageerror: Cannot read properties of undefined \(reading 'schema'\) @ at \S*/static/notebook/notebook_core\.",
        "jupyter/notebook#7862 (shortcuts settings race)",
    ),
    # A Notebook 7 page showing widgets restored from saved state (no kernel models: each shows its
    # "disconnected" icon) asks for a font the test server refuses: "403 GET /static/notebook/<hash>.woff2:
    # ... is not in root static directory" in its log, though the file is in notebook/static/ and a plain
    # `jupyter lab` serves it (200). Seen only there (test_saved_state_browser); not the dashboard's.
    (
        "notebook7",
        r"^error: Failed to load resource: the server responded with a status of 403 \(Forbidden\) @ "
        r"\S*/static/notebook/[0-9a-f]+\.woff2$",
        "Notebook 7 font refused by the test server (restored widgets' icons)",
    ),
]

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
        self.log_path = self.log_path or ARTIFACTS_DIR / f"jupyter-{self.app}-server.log"
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


# ---------------------------------------------------------------------------------------------
# Notebooks
# ---------------------------------------------------------------------------------------------


def write_notebook(path: Path, cells: Iterable[str], kernel: str = "python3") -> Path:
    """Write a notebook of code ``cells`` with the ``kernel`` kernelspec (no kernel picker dialog)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {**KERNELSPEC, "name": kernel}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120]


# ---------------------------------------------------------------------------------------------
# Page helpers
# ---------------------------------------------------------------------------------------------


class NotebookPage:
    """A notebook open in JupyterLab (``frontend="lab"``) or Notebook 7 (``frontend="notebook7"``).

    Collects console errors and page errors from the moment it is created.
    """

    PROMPT = ".jp-InputArea-prompt"

    def __init__(self, page: Any, server: JupyterServer, frontend: str, test_name: str) -> None:
        assert frontend in ("lab", "notebook7"), frontend
        self.page = page
        self.server = server
        self.frontend = frontend
        self.name = _slug(test_name)
        self.console: list[str] = []
        self.errors: list[str] = []
        self.screenshots: list[Path] = []
        page.on("console", self._on_console)
        page.on("pageerror", self._on_pageerror)

    def _on_console(self, msg: Any) -> None:
        loc = msg.location or {}
        line = f"{msg.type}: {msg.text} @ {loc.get('url', '')}"
        self.console.append(line)
        if msg.type == "error":
            self.errors.append(line)

    def note(self, text: str) -> None:
        """Add a harness note to the console log (saved as ``<test>-console.log``)."""
        self.console.append(f"harness: {text}")

    def _on_pageerror(self, exc: Any) -> None:
        stack = getattr(exc, "stack", None) or ""
        frames = [ln.strip() for ln in stack.splitlines() if ln.strip().startswith("at ")]
        self.errors.append(f"pageerror: {getattr(exc, 'message', exc)} @ {frames[0] if frames else '?'}")
        self.console.append(f"pageerror stack: {stack}")

    # -- navigation ------------------------------------------------------------------------------
    def open(self, notebook: str, timeout: float = 60.0) -> NotebookPage:
        """Open ``notebook`` (a path under the server's root) and wait for its kernel to be idle."""
        self.server.delete_all_sessions()
        self.server.delete_all_workspaces()
        self.server.start_session(notebook)
        if self.frontend == "lab":
            url = self.server.url(f"lab/tree/{notebook}", reset=None)
        else:
            self.server.reset_lab_tree_path()
            url = self.server.url(f"notebooks/{notebook}")
        self.page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
        self.wait_kernel_idle(timeout)
        return self

    def wait_kernel_idle(self, timeout: float = 60.0) -> None:
        """Wait until the notebook's kernel is connected and idle.

        The execution indicator alone is not enough: JupyterLab shows ``data-status='idle'`` for a
        moment *before* the kernel starts (toolbar kernel name "No Kernel"), then initializing,
        connecting, unknown, idle. A Run All in that first window silently does nothing.
        """
        self.page.wait_for_function(
            """() => {
                const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
                const name = document.querySelector('.jp-Toolbar-kernelName');
                const label = name ? name.textContent.trim() : '';
                return !!ind && ind.dataset.status === 'idle' && label !== '' && !/no kernel/i.test(label);
            }""",
            timeout=timeout * 1000,
            polling=50,
        )

    def kernel_status(self) -> str | None:
        el = self.page.query_selector(".jp-Notebook-ExecutionIndicator")
        return None if el is None else el.get_attribute("data-status")

    def prompts(self) -> list[str]:
        """Input prompts of all cells, e.g. ``['[1]:', '[*]:', '[ ]:']``."""
        return [t.strip() for t in self.page.locator(f".jp-Notebook {self.PROMPT}").all_inner_texts()]

    def _run_started(self) -> bool:
        return any(re.search(r"\[(\*|\d+)\]", p) for p in self.prompts())

    def run_all(self, attempts: int = 3, started_within: float = 5.0) -> None:
        """Menu Run > Run All Cells; retried if no prompt shows ``[*]`` or ``[n]`` in ``started_within``.

        The front end marks queued cells ``[*]`` as soon as the command runs, before the kernel
        answers, so a few seconds without a mark means the command did nothing.
        """
        last = "no attempt"
        for attempt in range(1, attempts + 1):
            self.page.keyboard.press("Escape")  # close a menu left open by a failed attempt
            self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^\s*Run\s*$")).first.click()
            label = self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^\s*Run All Cells\s*$"))
            item = self.page.locator(".lm-Menu-item", has=label)
            try:
                item.wait_for(state="visible", timeout=5000)
            except Exception:
                last = f"attempt {attempt}: the Run menu did not show 'Run All Cells'"
                continue
            if "lm-mod-disabled" in (item.get_attribute("class") or ""):
                last = f"attempt {attempt}: 'Run All Cells' was disabled"
                self.page.keyboard.press("Escape")
                self.page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
                time.sleep(0.5)
                continue
            item.click()
            deadline = time.monotonic() + started_within
            while time.monotonic() < deadline:
                if self._run_started():
                    return
                time.sleep(0.1)
            last = f"attempt {attempt}: no prompt showed [*] or [n] within {started_within:.0f} s"
            self.note(f"run_all {last}; kernel {self.kernel_status()}")
            self.screenshot(f"run-all-attempt-{attempt}")
        self.screenshot("run-all-failed")
        pytest.fail(f"Run All Cells did not start ({last}); prompts: {self.prompts()}")

    def wait_all_cells_done(self, timeout: float = 60.0) -> None:
        """Wait until no prompt shows ``[*]`` and the kernel is idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            prompts = self.prompts()
            if prompts and not any("*" in p for p in prompts) and self.kernel_status() == "idle":
                return
            time.sleep(0.1)
        pytest.fail(f"cells still running after {timeout:.0f} s: {self.prompts()}")

    # -- widgets ---------------------------------------------------------------------------------
    def widget(self, css_class: str) -> Any:
        """Locator of the widget with DOM class ``css_class`` (set by ``add_class``).

        Playwright locators are strict: a widget displayed twice makes actions on it fail, on purpose.
        """
        return self.page.locator(f".{css_class}")

    def wait_widget(self, css_class: str, timeout: float = 30.0) -> Any:
        loc = self.widget(css_class)
        loc.wait_for(state="visible", timeout=timeout * 1000)
        return loc

    def click_widget(self, css_class: str, timeout: float = 10.0) -> float:
        """Click the widget; returns ``time.monotonic()`` right after the click."""
        self.widget(css_class).click(timeout=timeout * 1000)
        return time.monotonic()

    def widget_text(self, css_class: str) -> str:
        return self.widget(css_class).inner_text().strip()

    def progress_percent(self, css_class: str) -> float:
        """Width in % of the ``.progress-bar`` of an ``IntProgress``/``FloatProgress`` widget."""
        width = self.page.locator(f".{css_class} .progress-bar").evaluate("el => el.style.width")
        m = re.match(r"\s*([0-9.]+)%", width or "")
        return float(m.group(1)) if m else 0.0

    def wait_widget_text(self, css_class: str, pattern: str, timeout: float = 10.0) -> float:
        """Wait until the widget's text matches regex ``pattern``; returns ``time.monotonic()`` then."""
        deadline = time.monotonic() + timeout
        text = ""
        while True:
            text = self.widget_text(css_class)
            if re.search(pattern, text):
                return time.monotonic()
            if time.monotonic() >= deadline:
                self.screenshot(f"timeout-{css_class}")
                pytest.fail(f".{css_class} text {text!r} did not match {pattern!r} within {timeout} s")
            time.sleep(0.05)

    def wait_image_loaded(self, css_class: str, timeout: float = 10.0) -> tuple[int, int]:
        """Wait until an ``Image`` widget (``img.widget-image``) shows a decoded picture; its size."""
        sel = f"img.{css_class}"
        self.page.wait_for_function(
            "sel => { const im = document.querySelector(sel); return !!im && im.complete && im.naturalWidth > 0; }",
            arg=sel,
            timeout=timeout * 1000,
        )
        return tuple(self.page.locator(sel).evaluate("im => [im.naturalWidth, im.naturalHeight]"))

    def output_texts(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".jp-OutputArea-output").all_inner_texts()]

    def wait_output(self, pattern: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, t) for t in self.output_texts()):
            if time.monotonic() >= deadline:
                self.screenshot("timeout-output")
                pytest.fail(f"no cell output matched {pattern!r} within {timeout} s: {self.output_texts()}")
            time.sleep(0.05)

    # -- evidence --------------------------------------------------------------------------------
    def screenshot(self, step: str, css_class: str | None = None) -> Path:
        """Screenshot of the page, or of the whole widget with ``css_class`` (even beyond the viewport)."""
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS_DIR / f"{self.name}-{len(self.screenshots):02d}-{_slug(step)}.png"
        if css_class is None:
            self.page.screenshot(path=str(path))
        else:
            self.page.locator(f".{css_class}").first.screenshot(path=str(path))
        self.screenshots.append(path)
        return path

    def save_console(self) -> Path:
        """Write everything the console said (with page error stacks) to ``<test>-console.log``."""
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS_DIR / f"{self.name}-console.log"
        path.write_text("\n".join(self.console) + "\n")
        return path

    def unexpected_errors(self) -> list[str]:
        return [
            e
            for e in self.errors
            if not any(fe in (None, self.frontend) and re.search(p, e) for fe, p, _ in BENIGN_CONSOLE)
        ]

    def assert_no_console_errors(self) -> None:
        errors = self.unexpected_errors()
        if errors:
            log = self.save_console()
            raise AssertionError(f"browser console errors (full log: {log}):\n" + "\n".join(errors))
