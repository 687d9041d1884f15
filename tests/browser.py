"""What the real-browser tests share: Debian's Chromium driven by Playwright, a JupyterLab with
a scratch configuration (no user state leaks in or out), and the JupyterLab/panel helpers.

``browser_or_skip`` skips when /usr/bin/chromium or playwright is missing, unless
RUNBOOK_REQUIRE_BROWSER=1 (CI), where a missing browser fails the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
# Loopback only: a proxy from the environment must not see these requests.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def browser_or_skip() -> Any:
    """playwright.sync_api.sync_playwright, or skip (fail under RUNBOOK_REQUIRE_BROWSER=1)."""
    required = os.environ.get("RUNBOOK_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("RUNBOOK_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright is not installed (pip install playwright; set RUNBOOK_REQUIRE_BROWSER=1 to fail instead)")
    if not os.access(CHROMIUM, os.X_OK):
        if required:
            pytest.fail(f"RUNBOOK_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; set RUNBOOK_REQUIRE_BROWSER=1 to fail instead)")
    return sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (the kernels of our scratch runtime dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_mentioning(text: str) -> None:
    """SIGKILL every process whose command line contains ``text``."""
    for pid in processes_mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def scratch_jupyter(scratch: Path, dsn: str, token: str) -> tuple[dict[str, Path], dict[str, str]]:
    """Folders and environment for a JupyterLab that reads and writes nothing of the user's:
    config, data, runtime, home, settings and workspaces under ``scratch``; kernels seeing
    ``dsn`` as DATABASE_URL. The configuration file itself sets loopback only, no port
    retries, the token, the app exposed to the page (``window.jupyterapp``), and no news or
    update check (both would fetch from the internet and pop up a toast), so a JupyterLab
    started by someone else's command line (``python -m runbook lab``) gets them too.
    Returns (folders, environment)."""
    dirs = {name: scratch / name for name in ("config", "data", "runtime", "home", "settings", "workspaces")}
    for path in dirs.values():
        path.mkdir(parents=True)
    (dirs["config"] / "jupyter_server_config.json").write_text(
        json.dumps({
            "ServerApp": {"ip": "127.0.0.1", "port_retries": 0},
            "IdentityProvider": {"token": token},
            "LabApp": {
                "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                "expose_app_in_browser": True, "user_settings_dir": str(dirs["settings"]),
                "workspaces_dir": str(dirs["workspaces"]),
            },
        })  # fmt: skip
    )
    notification = dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "HOME": str(dirs["home"]),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["home"] / ".ipython"),
        "MPLCONFIGDIR": str(dirs["home"] / ".matplotlib"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    return dirs, env


def wait_for_jupyter(base: str, token: str, server: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    """Return once JupyterLab at ``base`` answers; AssertionError (with the log's tail) when
    its process exits or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        if server.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {server.returncode}:\n{tail(log)}")
        try:
            with DIRECT.open(f"{base}/api/status?token={token}", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"jupyter lab did not answer in {seconds:g} s:\n{tail(log)}")
        time.sleep(0.2)


NOTEBOOK_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!(kernel && kernel.status === 'idle' && w.context.isReady);
}"""
ALL_CELLS_RAN = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const kernel = w.sessionContext.session.kernel;
    return kernel.status === 'idle'
        && w.content.widgets.every(c => c.model.type !== 'code' || c.model.executionCount !== null);
}"""
ERRORS = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .flatMap(c => c.model.type === 'code' ? c.model.outputs.toJSON() : [])
    .filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)"""


def dismiss_dialogs(page: Any) -> None:
    """Accept a dialog JupyterLab may raise on open (e.g. Select Kernel: the default is right)."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        dialog.locator(".jp-mod-accept").first.click()


def set_fields(panel: Any, **values: int) -> None:
    """Type into the panel's number fields; Tab commits each (IntText syncs on change)."""
    for name, value in values.items():
        field = panel.locator(f".runbook-{name.replace('_', '-')} input")
        field.fill(str(value))
        field.press("Tab")


def candidates_shown(panel: Any) -> int:
    found = re.search(r"([\d,]+) candidates older than", panel.locator(".runbook-preview").inner_text())
    assert found is not None, "the preview states the candidate count"
    return int(found.group(1).replace(",", ""))
