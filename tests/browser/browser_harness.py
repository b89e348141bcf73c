"""Drive JupyterLab 4 / Notebook 7 in headless Chromium for widget tests (Playwright sync API).

Used by ``tests/browser/conftest.py``; test modules import the helpers they need from here.
Widgets are found by the CSS classes tests give them with ``widget.add_class("...")``: ipywidgets 8
puts ``_dom_classes`` on the widget's root element (``button.widget-button``,
``div.widget-hprogress``, ``div.widget-label``, ``img.widget-image``, ...). The server they open
notebooks in: ``jupyter_server.py``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from .jupyter_server import (  # noqa: F401 - the harness's names, for the tests and conftest.py
    ARTIFACTS_DIR,
    IPYKERNEL6,
    IPYKERNEL6_DIR,
    JUPYTER,
    KERNEL_SHUTDOWN_WAIT,
    KERNELSPEC,
    LAB_OVERRIDES,
    REPO_ROOT,
    JupyterServer,
    ensure_lab_overrides,
    free_port,
    write_kernelspecs,
)

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
        self.path = ""  # the notebook's path under the server's root (set by open)
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
        self.path = notebook
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

    def last_modified(self) -> str:
        """When the server last wrote the notebook's file (its contents API)."""
        return self.server.api("GET", f"api/contents/{self.path}?content=0")["last_modified"]

    def save(self, timeout: float = 30.0) -> None:
        """Save as a user does, with Ctrl+S, and wait until the server wrote the file and nothing is left unsaved.

        The keys go to the notebook (a click in its left margin first, so that no widget holds the focus);
        pressed again every few seconds until the file's ``last_modified`` changes. JupyterLab then shows no
        dirty marker (``.jp-mod-dirty`` on the document's tab); Notebook 7 has no tab and no such marker (only
        its "Last Checkpoint" line, updated half a second after a save): there the file's time is the sign.
        """
        before = self.last_modified()
        deadline = time.monotonic() + timeout
        while True:
            self.page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
            self.page.keyboard.press("Control+s")
            retry = min(deadline, time.monotonic() + 5)
            while self.last_modified() == before and time.monotonic() < retry:
                time.sleep(0.2)
            if self.last_modified() != before:
                break
            if time.monotonic() >= deadline:
                self.screenshot("not-saved")
                pytest.fail(f"Ctrl+S did not save {self.path} within {timeout:.0f} s ({self.frontend})")
        if self.frontend == "lab":
            self.page.locator(".jp-mod-dirty").first.wait_for(state="detached", timeout=timeout * 1000)
        else:
            self.page.locator(".jp-NotebookCheckpoint", has_text="Last Checkpoint").first.wait_for(
                timeout=timeout * 1000)

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
