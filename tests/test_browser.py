"""The sweep notebook in a real JupyterLab, driven by headless Chromium (Debian's package).

JupyterLab runs on loopback with a scratch configuration, data, runtime and home folder
(no user state leaks in or out) and the test database in DATABASE_URL. The test runs all
cells, sets the panel's batch size, presses Preview, types the candidate count, presses
Execute, and then asks PostgreSQL which rows changed: exactly the previewed ones. The
screenshot of the notebook after the sweep is kept in test-artifacts/.

Skipped when /usr/bin/chromium or playwright is missing, unless RUNBOOK_REQUIRE_BROWSER=1
(CI), where a missing browser fails the test.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from tests.browser import (
    ALL_CELLS_RAN,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    DIRECT,
    ERRORS,
    NOTEBOOK_IDLE,
    ROOT,
    browser_or_skip,
    candidates_shown,
    dismiss_dialogs,
    free_port,
    kill_mentioning,
    scratch_jupyter,
    set_fields,
    wait_for_jupyter,
)
from tests.rows import SLOW_UPDATES, insert, statuses


@contextmanager
def jupyterlab(dsn: str, scratch: Path) -> Iterator[tuple[str, str]]:
    """JupyterLab on 127.0.0.1 serving notebooks/, kernels seeing ``dsn``; yields (base url, token).

    Everything it writes goes under ``scratch``. On exit it asks the server to shut down
    (which stops its kernels), then kills what is left of the server's process group and
    any kernel started from its runtime folder.
    """
    port, token = free_port(), secrets.token_hex(16)
    dirs, env = scratch_jupyter(scratch, dsn, token)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", f"--ServerApp.root_dir={ROOT / 'notebooks'}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (scratch / "jupyter.log").open("wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=scratch, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_jupyter(base, token, server, scratch / "jupyter.log")
        yield base, token
    finally:
        try:
            request = urllib.request.Request(f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
            DIRECT.open(request, timeout=5).close()
            server.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        kill_mentioning(str(dirs["runtime"]))
        log.close()


_RECORD_PROGRESS = """() => {
    window.runbookProgress = [];
    const box = document.querySelector('.runbook-progress-box');
    new MutationObserver(() => window.runbookProgress.push(box.textContent))
        .observe(box, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def _screenshot(page: Any, path: Path) -> None:
    page.evaluate("() => document.querySelector('.runbook-panel').scrollIntoView({block: 'start'})")
    page.screenshot(path=str(path))


def test_sweep_notebook_in_jupyterlab_previews_confirms_and_executes(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    stale = [insert(conn, status="queued", age_days=10 + i) for i in range(5)]  # oldest last
    insert(conn, status="queued", age_days=1)
    insert(conn, status="completed", age_days=30)
    insert(conn, status=None, age_days=30)
    before = statuses(conn)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-03_sweep.png"
    shot.unlink(missing_ok=True)

    with jupyterlab(dsn, tmp_path / "jupyter") as (base, token), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(30_000)
            page.goto(f"{base}/lab/tree/03_sweep.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            dismiss_dialogs(page)
            page.wait_for_function(NOTEBOOK_IDLE)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            panel = page.locator(".runbook-panel")
            expect(panel).to_be_visible()
            page.wait_for_function(ALL_CELLS_RAN)
            assert page.evaluate(ERRORS) == []
            assert statuses(conn) == before, "running the cells headlessly (dry run) wrote nothing"

            set_fields(panel, batch_size=3, max_batches=1)
            execute = panel.locator("button.runbook-execute-button")
            expect(execute).to_be_disabled()
            panel.locator("button.runbook-preview-button").click()
            expect(panel.locator(".runbook-preview tbody tr")).to_have_count(3)
            previewed = panel.locator(".runbook-preview tbody tr td:first-child").all_inner_texts()
            count = candidates_shown(panel)
            assert count == 5
            expect(execute).to_be_disabled()
            panel.locator(".runbook-confirm input").fill(str(count))
            # Not the demo database: Execute also wants its name typed.
            expect(execute).to_be_disabled()
            panel.locator(".runbook-confirm-db input").fill(conn.info.dbname)
            expect(execute).to_be_enabled()
            execute.click()
            result = panel.locator(".runbook-result")
            expect(result).to_contain_text("3 rows set to stale_expired in 1 batch,")
            expect(result).to_contain_text("Stopped: max_batches")
            expect(panel.locator(".runbook-progress")).to_contain_text("3 of 5 rows (60%)")
            expect(panel.locator("img.runbook-chart")).to_be_visible()
            expect(execute).to_be_disabled()

            assert previewed == [stale[4], stale[3], stale[2]], "the panel previewed the three oldest candidates"
            after = statuses(conn)
            assert {k for k in after if after[k] != before[k]} == set(previewed)
            assert {after[k] for k in previewed} == {"stale_expired"}
            _screenshot(page, shot)

            # The sweep runs in a thread of its own: the bar moves while it runs and Stop is
            # handled during it. Every row is slowed down to watch that happen.
            conn.execute(SLOW_UPDATES)
            more = [insert(conn, status="queued", age_days=20 + i) for i in range(28)]  # 30 candidates
            before_stop = statuses(conn)
            page.evaluate(_RECORD_PROGRESS)
            set_fields(panel, batch_size=1, max_batches=100)
            panel.locator("button.runbook-preview-button").click()
            expect(panel.locator(".runbook-preview tbody tr td:first-child")).to_have_text([more[-1]])
            assert candidates_shown(panel) == 30
            panel.locator(".runbook-confirm input").fill("30")
            panel.locator(".runbook-confirm-db input").fill(conn.info.dbname)
            execute.click()
            expect(panel.locator(".runbook-progress")).to_contain_text(re.compile(r"(?<!\d)([4-9]|1\d) of 30 rows"))
            panel.locator("button.runbook-stop-button").click()
            expect(result).to_contain_text("Stopped: stop_requested")
            stopped = re.search(r"(\d+) rows? set to stale_expired", result.inner_text())
            assert stopped is not None
            taken = int(stopped.group(1))
            assert 4 <= taken < 30
            seen = {int(m) for text in page.evaluate("() => window.runbookProgress") for m in re.findall(r"(\d+) of 30 rows", text)}
            assert len(seen - {taken}) >= 3, f"the bar moved during the sweep, not only at its end: saw {sorted(seen)}"
            expect(panel.locator("img.runbook-chart")).to_be_visible()
            expect(panel.locator("button.runbook-preview-button")).to_be_enabled()
            expect(panel.locator("button.runbook-stop-button")).to_be_disabled()
            _screenshot(page, ARTIFACTS / "browser-03_sweep-progress.png")
        finally:
            browser.close()

    # The stopped sweep took the oldest rows, one per batch, and not one other row.
    assert statuses(conn) == {**before_stop, **{k: "stale_expired" for k in more[::-1][:taken]}}
    assert shot.stat().st_size > 20_000
