"""``python -m runbook lab`` on a real (non-demo) database, driven in headless Chromium as the
on-call engineer would (issue 16).

The test database (not the demo) holds known stale candidates and rows that are not; the
session's own demo-data database (``litellm_nbval``, what DATABASE_URL named before the test
set it) and every other database of the test server hold candidates too. ``lab`` starts with
DATABASE_URL set to the test database, a scratch HOME and Jupyter folders, and its run folder
under tmp_path. In Chromium the test opens inspect, preview and sweep from the session folder
(JupyterLab's root), runs their cells and saves them; in the sweep's panel it presses Preview,
types the candidate count and the database's name, and presses Execute. Then:

- PostgreSQL: exactly the previewed rows of the test database are ``stale_expired``, every
  other row of it is as it was, and no other database on the server changed at all;
- the red header naming the database (``test-artifacts/lab-non-demo-header.png``);
- Ctrl-C (SIGINT to lab's process group, as a terminal sends it; no terminal here) stops
  lab: JupyterLab shuts its kernels down before lab seals the session (none is left running
  while it is sealed), notebooks/ is untouched, every notebook in the session folder is
  read-only with its ``.sha256``, the executed ones' records (and the copy Execute sealed)
  name the database, SESSION.md names the database and the panel's run, and no demo server
  was started.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from runbook.audit.record import read_record
from tests.browser import (
    ALL_CELLS_RAN,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    ERRORS,
    NOTEBOOK_IDLE,
    ROOT,
    browser_or_skip,
    candidates_shown,
    dismiss_dialogs,
    free_port,
    kill_mentioning,
    processes_mentioning,
    scratch_jupyter,
    set_fields,
    tail,
    wait_for_jupyter,
)
from tests.rows import TABLE, insert, state

SHOT = ARTIFACTS / "lab-non-demo-header.png"
FAILURE_SHOT = ARTIFACTS / "lab-non-demo-failure.png"  # the page when the browser part fails
LABEL = "INC-TEST"
# The three notebooks an on-call engineer runs, in order; the sweep's panel does the writing.
NOTEBOOKS = ("01_inspect.ipynb", "02_preview.ipynb", "03_sweep.ipynb")

_CURRENT_IS = """(path) => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    return !!(w && w.context && w.context.path === path);
}"""
_HEADER_RED = """(cell) => {
    const red = [...cell.querySelectorAll('.jp-OutputArea-output div')]
        .filter(d => getComputedStyle(d).backgroundColor === 'rgb(248, 215, 218)');
    return red.map(d => d.textContent);
}"""


def _other_databases(admin_dsn: str, mine: str) -> dict[str, str]:
    """Every other database on the test server with LiteLLM's table: the md5 of all its rows
    (every column), so any write to any of them shows."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        names = [str(r[0]) for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND datname <> %s ORDER BY datname", [mine])]  # fmt: skip
    found = {}
    for name in names:
        with psycopg.connect(conninfo.make_conninfo(admin_dsn, dbname=name), autocommit=True) as c:
            if c.execute(f"SELECT to_regclass('public.{TABLE}')").fetchone() == (None,):
                continue
            row = c.execute(f"SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {TABLE} t").fetchone()
            assert row is not None
            found[name] = str(row[0])
    return found


def _notebook_hashes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ROOT / "notebooks").iterdir()) if p.is_file()}


def _git_status_notebooks() -> str:
    return subprocess.run(["git", "status", "--porcelain", "notebooks/"], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _wait_for_line(log: Path, pattern: str, lab: subprocess.Popen[bytes], seconds: float) -> re.Match[str]:
    deadline = time.monotonic() + seconds
    while True:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if lab.poll() is not None:
            raise AssertionError(f"runbook lab exited with {lab.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"runbook lab did not print {pattern!r} in {seconds:g} s:\n{tail(log)}")
        time.sleep(0.2)


def _open_and_run(page: Any, name: str, save: bool = True) -> None:
    """Open ``name`` (a path from JupyterLab's root: the session folder), run all its cells,
    check none failed, and save it, as the engineer would (Ctrl-S), unless not ``save``."""
    page.evaluate("(path) => window.jupyterapp.commands.execute('docmanager:open', {path})", name)
    page.wait_for_function(_CURRENT_IS, arg=name)
    dismiss_dialogs(page)
    page.wait_for_function(NOTEBOOK_IDLE, timeout=90_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(ALL_CELLS_RAN, timeout=180_000)
    assert page.evaluate(ERRORS) == [], name
    if save:
        _save(page)


def _current(page: Any) -> Any:
    """The notebook open in the current tab (other tabs stay in the page, hidden)."""
    return page.locator(f"[id='{page.evaluate('() => window.jupyterapp.shell.currentWidget.id')}'] .jp-Notebook")


def _save(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")


def _sealed(path: Path) -> str:
    """Assert ``path`` is sealed (read-only, its .sha256 beside it and right); return its sha256."""
    assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (path.parent / (path.name + ".sha256")).read_text().split()[0] == digest, path
    return digest


def test_lab_on_a_non_demo_database_runs_inspect_preview_and_the_panels_sweep_of_that_database_only(
    conn: psycopg.Connection, dsn: str, admin_dsn: str, tmp_path: Path
) -> None:
    sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    dbname = conn.info.dbname
    stale = [insert(conn, status="queued", age_days=10 + i) for i in range(5)]  # oldest last
    keep = [
        insert(conn, status="queued", age_days=1),  # too young
        insert(conn, status="completed", age_days=30),  # terminal
        insert(conn, status=None, age_days=30),  # NULL status: LiteLLM's rule skips it
        insert(conn, status="queued", age_days=30, purpose="batch"),  # not a response
    ]
    before = state(conn)
    others = _other_databases(admin_dsn, dbname)
    # The session's demo-data database, what DATABASE_URL named until this test set its own,
    # holds stale candidates: a sweep of the wrong database would show there.
    demo_dsn = os.environ["DATABASE_URL"]
    demo_name = conninfo.conninfo_to_dict(demo_dsn)["dbname"]
    assert demo_name in others and demo_name != dbname
    with psycopg.connect(demo_dsn, autocommit=True) as demo:
        row = demo.execute(
            f"SELECT count(*) FROM {TABLE} WHERE file_purpose = 'response' AND created_at < now() - interval '7 days'"
            " AND status NOT IN ('completed', 'complete', 'failed', 'expired', 'cancelled', 'stale_expired')"
        ).fetchone()
        assert row is not None and int(str(row[0])) > 3
    notebooks_before, git_before = _notebook_hashes(), _git_status_notebooks()
    checkout_runs = {p.name for p in (ROOT / "runs").glob("*")} if (ROOT / "runs").is_dir() else set()
    no_demo_server = Path(os.environ["RUNBOOK_HOME"])  # lab on the demo would start a server there
    ARTIFACTS.mkdir(exist_ok=True)
    SHOT.unlink(missing_ok=True)
    FAILURE_SHOT.unlink(missing_ok=True)

    token, port = secrets.token_hex(16), free_port()
    dirs, env = scratch_jupyter(tmp_path / "jupyter", dsn, token)
    runs = tmp_path / "runs"
    env["RUNBOOK_RUN_DIR"] = str(runs)
    log_path = tmp_path / "lab.log"
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        # From the checkout, as `make lab` would; a session of its own, so that Ctrl-C can go
        # to lab and its JupyterLab together, as a terminal sends it.
        lab = subprocess.Popen(
            [sys.executable, "-u", "-m", "runbook", "lab", "--label", LABEL, "--port", str(port)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    panel_run = ""
    try:
        found = _wait_for_line(log_path, r"session folder (\S+) \(JupyterLab's root\)", lab, 120)
        folder = Path(found.group(1))
        said = log_path.read_text()
        assert "NOT the demo: a real database" in said and f"database {dbname} as role" in said, said
        assert folder.parent == runs and folder.name.endswith(f"_{LABEL}"), folder
        wait_for_jupyter(base, token, lab, log_path, 120)
        timings["lab up"] = time.monotonic() - t0

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                page.set_default_timeout(60_000)
                page.goto(f"{base}/lab?token={token}")
                page.wait_for_function("() => !!(window.jupyterapp && window.jupyterapp.shell)")
                expect(page.locator(".jp-DirListing-item")).to_have_count(len(list(folder.glob("*.ipynb"))))
                # JupyterLab's root is the session folder: its file browser lists the fresh copies.
                listed = set(page.locator(".jp-DirListing-item .jp-DirListing-itemText").all_inner_texts())
                assert listed == {p.name for p in folder.glob("*.ipynb")}, listed
                for name in NOTEBOOKS[:2]:
                    # The engineer forgets to save the inspect notebook: lab's autosave
                    # (every 5 s) must still put its outputs in the sealed file.
                    _open_and_run(page, name, save=name != NOTEBOOKS[0])
                    text = _current(page).text_content()
                    assert f"connected to database {dbname}" in text and "NOT the demo database" in text, name
                timings["inspect and preview"] = time.monotonic() - t0
                # 02_preview's next batch (batch size 1000): the five candidates and nothing else.
                shown = _current(page).locator(".runbook-preview-rows tbody tr td:first-child").all_text_contents()
                assert sorted(shown) == sorted(stale), shown
                assert state(conn) == before, "inspect and preview read only"

                _open_and_run(page, NOTEBOOKS[2])
                assert state(conn) == before, "running the sweep's cells (a dry run) wrote nothing"
                timings["sweep's cells"] = time.monotonic() - t0

                # The header: the start cell's output, its database line red and naming the database.
                start_cell = _current(page).locator(".jp-CodeCell", has_text='rb.start("sweep"').first
                start_cell.scroll_into_view_if_needed()
                red = start_cell.evaluate(_HEADER_RED)
                assert len(red) == 1 and f"connected to database {dbname} as role" in red[0], red
                assert red[0].endswith("NOT the demo database"), red
                start_cell.screenshot(path=str(SHOT))

                panel = page.locator(".runbook-panel")
                expect(panel).to_be_visible()
                title = panel.locator("span", has_text="NOT the demo")
                expect(title).to_have_text(f"database {dbname} (NOT the demo)")
                expect(title).to_have_css("background-color", "rgb(248, 215, 218)")
                set_fields(panel, batch_size=3, max_batches=1)
                execute = panel.locator("button.runbook-execute-button")
                panel.locator("button.runbook-preview-button").click()
                expect(panel.locator(".runbook-preview tbody tr")).to_have_count(3)
                previewed = panel.locator(".runbook-preview tbody tr td:first-child").all_inner_texts()
                count = candidates_shown(panel)
                assert count == 5
                panel.locator(".runbook-confirm input").fill(str(count))
                expect(execute).to_be_disabled()  # the count alone is not enough here
                confirm_db = panel.locator(".runbook-confirm-db input")
                expect(confirm_db).to_have_attribute("placeholder", f"type the database name: {dbname}")
                confirm_db.fill(demo_name)  # the wrong database's name
                expect(execute).to_be_disabled()
                confirm_db.fill(dbname)
                expect(execute).to_be_enabled()
                execute.click()
                result = panel.locator(".runbook-result")
                expect(result).to_contain_text("3 rows set to stale_expired in 1 batch,", timeout=120_000)
                expect(result).to_contain_text("Stopped: max_batches")
                _save(page)  # the panel's state, saved before Ctrl-C as the engineer would
                timings["Execute done"] = time.monotonic() - t0
            except BaseException:
                try:
                    page.screenshot(path=str(FAILURE_SHOT))
                except Exception:  # noqa: BLE001 - the first error is the one to see
                    pass
                raise
            finally:
                browser.close()

        # PostgreSQL: exactly the previewed rows of this database, the three oldest candidates.
        assert previewed == [stale[4], stale[3], stale[2]], "the panel previewed the three oldest candidates"
        after = state(conn)
        assert {k for k in after if after[k] != before[k]} == set(previewed)
        assert {after[k][9] for k in previewed} == {"stale_expired"}
        assert all(after[k] == before[k] for k in [*stale[:2], *keep])
        assert _other_databases(admin_dsn, dbname) == others, "no other database on the server changed"
        (json_record,) = folder.glob("*_panel_sweep_*.json")
        panel_run = re.sub(r"^.*_panel_sweep_(.+)\.json$", r"\1", json_record.name)
        ledgered = conn.execute("SELECT object_id FROM litellm_runbook.changes WHERE run_id = %s", [panel_run]).fetchall()
        assert {str(r[0]) for r in ledgered} == set(previewed)

        # Ctrl-C: lab seals the session and exits.
        os.killpg(lab.pid, signal.SIGINT)
        lab.wait(timeout=120)
        timings["lab stopped"] = time.monotonic() - t0
    finally:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(timeout=30)
        leftover = processes_mentioning(str(dirs["runtime"]))
        kill_mentioning(str(dirs["runtime"]))
    said = log_path.read_text(errors="replace")
    assert lab.returncode == 0, said
    assert leftover == [], f"kernels still running after lab stopped: {leftover}"
    assert f"sealed the session: {folder / 'SESSION.md'}" in said, said
    # JupyterLab shut its three kernels down itself, before lab sealed the session (not the
    # kernels noticing afterwards that their parent was gone).
    assert "Parent appears to have exited" not in said, said
    assert -1 < said.find("Shutting down 3 kernels") < said.index("sealed the session"), said

    # notebooks/ untouched; nothing written to the checkout's runs/; no demo server started.
    assert _notebook_hashes() == notebooks_before
    assert _git_status_notebooks() == git_before
    if not git_before:
        assert _git_status_notebooks() == ""
    assert not ({p.name for p in (ROOT / "runs").glob("*")} - checkout_runs if (ROOT / "runs").is_dir() else set())
    assert not no_demo_server.exists()

    # The session folder: every notebook sealed; the three executed ones and the copy the
    # panel's Execute sealed hold records naming this database.
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.glob("*.ipynb"):
        _sealed(path)
    (copy,) = folder.glob(f"*_03_sweep_{panel_run}.ipynb")
    _sealed(json_record)
    for path in [*(folder / name for name in NOTEBOOKS), copy]:
        record = read_record(path)
        assert record is not None, f"{path.name} holds no run record"
        assert record["database"]["database"] == dbname, path.name
        assert "NOT the demo database" in path.read_text(), path.name
    panel_record = json.loads(json_record.read_text())
    (inner,) = panel_record.values()
    assert inner["run_id"] == panel_run and inner["database"]["database"] == dbname
    assert inner["outcome"]["sweep"]["changed"] == 3

    session = (folder / "SESSION.md").read_text()
    assert f"# Session {folder.name}" in session
    assert "NOT the demo: a real database" in session and f"database {dbname} as role" in session
    assert f"| {panel_run} | sweep | stale_responses | 3 | max_batches |" in session, session
    for name in NOTEBOOKS:
        assert f"- {name}: sha256 {_sealed(folder / name)}, run " in session, name

    assert SHOT.stat().st_size > 5_000
    print("timings (s from lab's start): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
