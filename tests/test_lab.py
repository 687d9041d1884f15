"""JupyterLab for on-call, against a real database: one session folder per incident, sealed
when ``lab`` stops, notebooks/ never touched; ``session new`` and ``kernel install`` for a hub."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from runbook.db.connect import Database
from runbook.tools.lab import new_session, seal_session
from runbook.tools.runner import execute
from tests.rows import many

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runbook", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=120)  # fmt: skip


def test_session_new_copies_the_notebooks_clean_into_a_private_folder_named_for_the_incident(tmp_path: Path) -> None:
    done = _cli("session", "new", "--label", "INC-1234", env={"RUNBOOK_RUN_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.parent == tmp_path and folder.name.endswith("_INC-1234")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(p.name for p in folder.glob("*.ipynb"))
    assert names == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for path in folder.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert all(c.get("outputs", []) == [] for c in nb["cells"])
    refused = _cli("session", "new", "--label", "../escape", env={"RUNBOOK_RUN_DIR": str(tmp_path)})
    assert refused.returncode == 2 and "parameter label='../escape' is not allowed" in refused.stderr


def test_sealing_a_session_makes_every_notebook_read_only_and_writes_who_when_which_database_and_runs(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    many(conn, 12)
    started = datetime.now(timezone.utc)
    folder = new_session("INC-7", root=tmp_path)
    env = {"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}
    swept = execute("sweep", {"dry_run": False, "batch_size": 5, "run_id": "session-sweep"}, folder, env=env)
    assert swept.ok, swept.error
    assert "NOT the demo database" in swept.path.read_text()  # the header says which database...
    assert "#f8d7da" in swept.path.read_text()  # ...in red
    database = Database(dsn, "DATABASE_URL")
    summary = seal_session(folder, database, started, ["database: the test database"])
    text = summary.read_text()
    assert f"# Session {folder.name}" in text and "the test database" in text
    assert "| session-sweep | sweep | stale_responses | 12 | done |" in text
    for path in folder.glob("*.ipynb"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
        assert (folder / (path.name + ".sha256")).exists(), path
        assert path.name in text
    sealed = conn.execute("SELECT record_file FROM litellm_runbook.records WHERE run_id = 'session-sweep'").fetchall()
    assert (swept.path.name,) in sealed


def test_a_copy_a_live_action_sealed_stays_as_sealed_and_session_md_names_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The panel's Execute seals a copy of the notebook as saved, under the panel's run id;
    sealing the session at Ctrl-C must neither rewrite it nor file it under another run."""
    from runbook.audit import sealing

    folder = new_session("INC-8", root=tmp_path)
    monkeypatch.setattr(sealing, "open_notebook", lambda: folder / "03_sweep.ipynb")
    copy = sealing.seal_notebook_copy(folder, run_id="panel_run_1", conn=None)
    assert copy is not None
    sealed_bytes = copy.read_bytes()
    summary = seal_session(folder, None, datetime.now(timezone.utc), []).read_text()
    assert f"- {copy.name}: sha256 {hashlib.sha256(sealed_bytes).hexdigest()}, run panel_run_1" in summary, summary
    assert "- 03_sweep.ipynb: sha256" in summary and copy.read_bytes() == sealed_bytes
    assert stat.S_IMODE(copy.stat().st_mode) == 0o444


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("wait_s", "interrupts"), [(3, 1), (3, 2), (0, 1)], ids=["ctrl-c", "ctrl-c-twice", "ctrl-c-the-moment-the-folder-exists"]
)
def test_lab_on_a_real_database_opens_a_session_folder_says_which_database_and_seals_it_on_ctrl_c(
    dsn: str, tmp_path: Path, wait_s: float, interrupts: int
) -> None:
    before = subprocess.run(["git", "status", "--porcelain", "notebooks"], cwd=ROOT, capture_output=True, text=True).stdout
    env = {**os.environ, "DATABASE_URL": dsn, "RUNBOOK_RUN_DIR": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    lab = subprocess.Popen([sys.executable, "-m", "runbook", "lab", "--label", "INC-9", "--port", str(_free_port())],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("*_INC-9")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(wait_s)  # JupyterLab starting (0: not yet started)
    finally:
        lab.send_signal(signal.SIGINT)
        if interrupts == 2:  # the impatient engineer: a second Ctrl-C while JupyterLab stops
            time.sleep(0.5)
            lab.send_signal(signal.SIGINT)
        out, _ = lab.communicate(timeout=120)
    assert lab.returncode == 0, out
    assert "NOT the demo: a real database" in out and "system identifier" in out, out
    (folder,) = tmp_path.glob("*_INC-9")
    assert f"session folder {folder}" in out
    assert (folder / "SESSION.md").exists(), out
    assert "NOT the demo" in (folder / "SESSION.md").read_text()
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in folder.glob("*.ipynb"))
    after = subprocess.run(["git", "status", "--porcelain", "notebooks"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # notebooks/ untouched


def test_kernel_install_user_points_the_kernel_at_this_python(tmp_path: Path) -> None:
    done = _cli("kernel", "install", "--user", env={"HOME": str(tmp_path), "JUPYTER_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "data" / "kernels" / "litellm-runbook" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == "LiteLLM runbook"


def _in_jupyterlab(stem: str, dsn: str, tmp_path: Path, monkeypatch: "pytest.MonkeyPatch") -> Path:
    """What a kernel JupyterLab started for notebook ``stem`` sees: the saved notebook in its
    folder (returned), the session's name, the database, the session folder ``tmp_path/session``."""
    notebook = tmp_path / f"{stem}.ipynb"
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JPY_SESSION_NAME", notebook.name)
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("RUNBOOK_RUN_DIR", str(tmp_path / "session"))
    return notebook


def test_a_live_undo_from_a_jupyterlab_cell_seals_its_record_and_the_notebook_as_saved_at_once(
    conn: psycopg.Connection, dsn: str, tmp_path: Path, monkeypatch: "pytest.MonkeyPatch"
) -> None:
    import runbook.notebook.run as rb
    from runbook import Target, options, sweep

    many(conn, 6)
    sweep(conn, Target(), options(dry_run=False), run_id="to-undo")
    notebook = _in_jupyterlab("04_undo", dsn, tmp_path, monkeypatch)
    run = rb.start("undo", run_id="to-undo", undo_run_id="cell-undo", dry_run=False)
    try:
        result = run.undo()
    finally:
        run.conn.close()
    assert result is not None and result.restored == 6
    (record,) = (tmp_path / "session").glob("*_panel_undo_cell-undo.json")
    (copy,) = (tmp_path / "session").glob("*_04_undo_cell-undo.ipynb")
    assert stat.S_IMODE(record.stat().st_mode) == 0o444 and stat.S_IMODE(copy.stat().st_mode) == 0o444
    assert json.loads(record.read_text())
    files = {r[0] for r in conn.execute("SELECT record_file FROM litellm_runbook.records WHERE run_id = 'cell-undo'")}
    assert files == {record.name, copy.name}


def test_a_live_index_build_from_a_jupyterlab_cell_seals_its_record_and_the_notebook_as_saved_at_once(
    conn: psycopg.Connection, dsn: str, tmp_path: Path, monkeypatch: "pytest.MonkeyPatch"
) -> None:
    import runbook.notebook.run as rb

    many(conn, 3)
    notebook = _in_jupyterlab("05_create_index", dsn, tmp_path, monkeypatch)
    run = rb.start("index", run_id="cell-index", dry_run=False)
    try:
        result = run.create_index()
    finally:
        run.conn.close()
    assert result.created
    (record,) = (tmp_path / "session").glob("*_panel_index_cell-index.json")
    (copy,) = (tmp_path / "session").glob("*_05_create_index_cell-index.ipynb")
    assert stat.S_IMODE(record.stat().st_mode) == 0o444 and stat.S_IMODE(copy.stat().st_mode) == 0o444
    assert copy.read_bytes() == notebook.read_bytes()
