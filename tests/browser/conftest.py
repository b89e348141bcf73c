"""Fixtures for real-browser tests: a Jupyter server, headless Chromium, notebook pages.

These tests never skip: a missing browser or a server that does not start is a failure, since CI
installs Chromium and requires them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser_harness import (
    ARTIFACTS_DIR,
    CHROMIUM,
    CHROMIUM_ARGS,
    JupyterServer,
    NotebookPage,
    write_notebook,
)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test-artifacts/browser/`` at the repo root (screenshots, console logs, server logs),
    emptied once per test run that uses the browser fixtures: by the first of pytest-xdist's workers
    to get here (the other must not delete what the first one kept)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    ARTIFACTS_DIR.parent.mkdir(parents=True, exist_ok=True)
    claim = ARTIFACTS_DIR.parent / f".browser-run-{run}"
    if run:
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # another worker of this run emptied it
            ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
            return ARTIFACTS_DIR
    for old in ARTIFACTS_DIR.parent.glob(".browser-run-*"):
        if old != claim:
            old.unlink(missing_ok=True)
    shutil.rmtree(ARTIFACTS_DIR, ignore_errors=True)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def jupyter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's root dir: tests write their notebooks (and helper modules) here."""
    return tmp_path_factory.mktemp("jupyter-root")


@pytest.fixture(scope="session")
def jupyter_server(jupyter_root: Path, artifacts_dir: Path) -> Iterator[JupyterServer]:
    """A ``jupyter lab`` server (random port and token) for the whole session."""
    server = JupyterServer(jupyter_root, app="lab").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def notebook7_server(jupyter_server: JupyterServer, jupyter_root: Path) -> Iterator[JupyterServer]:
    """The server for Notebook 7: the lab server when it serves ``/notebooks/`` too (``notebook``
    installed), else a separate ``jupyter notebook`` on the same root dir."""
    if jupyter_server.serves_notebook7():
        yield jupyter_server
        return
    server = JupyterServer(jupyter_root, app="notebook").start()
    try:
        if not server.serves_notebook7():
            pytest.fail(f"jupyter notebook does not serve Notebook 7:\n{server.log_tail()}")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser(artifacts_dir: Path) -> Iterator[Any]:
    """Headless Chromium (the system's, not Playwright's download) for the whole session."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"browser tests need the playwright package: {exc}")
    pw = sync_playwright().start()
    try:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.fail(f"could not launch {CHROMIUM}: {exc}")
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture
def notebook_file(jupyter_root: Path, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``notebook_file(cells, name=None, extra_files=(), kernel="python3")`` writes a notebook into the
    server root and returns its name (relative path). ``extra_files`` are copied next to it (e.g. a
    helper module)."""

    def make(cells: Iterable[str], name: str | None = None, extra_files: Iterable[Path] = (),
             kernel: str = "python3") -> str:
        if name is None:
            name = "".join(c if c.isalnum() else "_" for c in request.node.name) + ".ipynb"
        write_notebook(jupyter_root / name, cells, kernel=kernel)
        for f in extra_files:
            shutil.copy(f, jupyter_root / Path(f).name)
        return name

    return make


@pytest.fixture
def open_notebook(
    browser: Any,
    jupyter_server: JupyterServer,
    notebook7_server: JupyterServer,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., NotebookPage]]:
    """``open_notebook(name, frontend="lab"|"notebook7")`` opens it in a fresh browser context and
    returns a :class:`NotebookPage` once the kernel is idle. On teardown: a final screenshot if the
    test failed, then the contexts close and all kernels are shut down."""
    opened: list[tuple[Any, NotebookPage]] = []

    def open_(name: str, frontend: str = "lab", timeout: float = 60.0) -> NotebookPage:
        server = jupyter_server if frontend == "lab" else notebook7_server
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        test_name = request.node.name if frontend in request.node.name else f"{request.node.name}-{frontend}"
        nb = NotebookPage(page, server, frontend, test_name)
        opened.append((context, nb))
        return nb.open(name, timeout=timeout)

    yield open_

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for context, nb in opened:
        try:
            nb.save_console()
        except Exception:
            pass
        if failed:
            try:
                nb.screenshot("failed")
            except Exception:
                pass
        context.close()
    for server in {id(s): s for s in (jupyter_server, notebook7_server)}.values():
        try:
            server.shutdown_all_kernels()
        except Exception:
            pass


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Expose each phase's report as ``item.rep_<phase>`` (used for the failure screenshot)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
