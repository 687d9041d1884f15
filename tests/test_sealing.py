"""Every run leaves a sealed record in the run folder, however it ends: a kernel killed
with SIGKILL mid-sweep, the operator's Ctrl-C on the runner, a file edited afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from runbook.audit.record import read_record
from runbook.audit.sealing import verify
from runbook.db.connect import Database
from runbook.tools.runner import NOTEBOOK_DIR, kernel_pids
from tests.rows import insert

ROOT = NOTEBOOK_DIR.parent


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _tcp_listening(pid: int) -> set[str]:
    """Inodes of the TCP sockets process ``pid`` listens on."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening.add(fields[9])
    return listening & _socket_inodes(pid)


def _unix_sockets(pid: int) -> set[str]:
    unix = {line.split()[6] for line in Path("/proc/net/unix").read_text().splitlines()[1:] if len(line.split()) > 6}
    return unix & _socket_inodes(pid)


def _batches(conn: psycopg.Connection, run_id: str) -> int:
    if conn.execute("SELECT to_regclass('litellm_runbook.batches')").fetchone() == (None,):
        return 0
    row = conn.execute("SELECT count(*) FROM litellm_runbook.batches WHERE run_id = %s", [run_id]).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _slow_sweep(conn: psycopg.Connection, dsn: str, runs: Path, run_id: str, batches: int) -> Iterator[subprocess.Popen[str]]:
    """A live sweep of 300 rows, 2 a batch, run by `python -m runbook run` in its own process
    group; yields once ``batches`` batches committed; whatever is left running is killed after."""
    for i in range(300):
        insert(conn, status="queued", age_days=10 + i / 100)
    runner = subprocess.Popen(
        [sys.executable, "-m", "runbook", "run", "sweep", "-p", "dry_run", "False", "-p", "batch_size", "2",
         "-p", "workers", "1", "-p", "pause_s", "0.05", "-p", "run_id", run_id, "--run-dir", str(runs)],
        env={**os.environ, "DATABASE_URL": dsn}, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while _batches(conn, run_id) < batches:
            assert runner.poll() is None, runner.communicate()
            assert time.monotonic() < deadline, "the sweep never committed its first batches"
            time.sleep(0.1)
        yield runner
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)


def _sealed(runs: Path, run_id: str) -> tuple[Path, dict]:
    (notebook,) = runs.glob(f"*_03_sweep_{run_id}.ipynb")
    assert oct(notebook.stat().st_mode)[-3:] == "444"
    digest = hashlib.sha256(notebook.read_bytes()).hexdigest()
    assert (runs / (notebook.name + ".sha256")).read_text() == f"{digest}  {notebook.name}\n"
    record = read_record(notebook)
    assert record is not None
    return notebook, record


def _ledger(conn: psycopg.Connection, run_id: str) -> tuple:
    row = conn.execute(
        "SELECT r.stop_reason, r.finished_at IS NOT NULL, r.rows_changed,"
        " (SELECT x.sha256 FROM litellm_runbook.records x WHERE x.run_id = r.run_id ORDER BY x.seq LIMIT 1),"
        " (SELECT count(*) FROM litellm_runbook.batches b WHERE b.run_id = r.run_id),"
        " (SELECT count(*) FROM litellm_runbook.changes c WHERE c.run_id = r.run_id)"
        " FROM litellm_runbook.runs r WHERE r.run_id = %s",
        [run_id],
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_kernel_killed_mid_sweep_leaves_a_sealed_record_that_matches_the_ledger(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    with _slow_sweep(conn, dsn, runs, "t-killed", 3) as runner:
        (kernel,) = kernel_pids(runner.pid)
        # The kernel's channels are Unix sockets in a folder only this user can enter, not TCP
        # on 127.0.0.1, where any local user could subscribe to its outputs. (ipykernel's
        # pipe for forked children stays TCP: it only takes messages carrying a random id.)
        args = (Path(f"/proc/{kernel}/cmdline").read_bytes().split(b"\0"))
        connection = json.loads(Path(args[args.index(b"-f") + 1].decode()).read_text())
        assert connection["transport"] == "ipc"
        assert oct(Path(connection["ip"]).parent.stat().st_mode)[-3:] == "700"
        assert len(_tcp_listening(kernel)) <= 1 and len(_unix_sockets(kernel)) >= 5
        os.kill(kernel, signal.SIGKILL)
        out, err = runner.communicate(timeout=120)
    assert runner.returncode == 1, err
    notebook, record = _sealed(runs, "t-killed")
    assert record["written_by"] == "runner" and record["outcome"]["status"] == "killed"
    stop_reason, finished, rows_changed, stored_sha, batches, changes = _ledger(conn, "t-killed")
    # Whatever committed is whole and counted; nothing claimed that the ledger lacks.
    stale = conn.execute("SELECT count(*) FROM \"LiteLLM_ManagedObjectTable\" WHERE status = 'stale_expired'").fetchone()
    assert stale is not None and stale[0] == changes == rows_changed
    assert (stop_reason, finished) == ("killed", True)
    assert record["ledger"]["batches"] == batches >= 3 and record["ledger"]["rows_changed"] == rows_changed
    assert stored_sha == hashlib.sha256(notebook.read_bytes()).hexdigest()
    # No session of the dead kernel is left to commit anything later.
    left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%%/t-killed%%'").fetchone()
    assert left == (0,)


def test_ctrl_c_on_the_runner_stops_the_sweep_like_the_kernels_interrupt_and_seals_it(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    with _slow_sweep(conn, dsn, runs, "t-ctrl-c", 2) as runner:
        os.kill(runner.pid, signal.SIGINT)
        out, err = runner.communicate(timeout=120)
    assert "interrupt passed to the kernel" in out  # a log line: python -m runbook shows them on stdout
    notebook, record = _sealed(runs, "t-ctrl-c")
    sweep = record["outcome"]["sweep"]
    assert sweep["stop_reason"] == "interrupted"
    stop_reason, finished, rows_changed, stored_sha, batches, changes = _ledger(conn, "t-ctrl-c")
    assert (stop_reason, finished) == ("interrupted", True)
    assert sweep["changed"] == rows_changed == changes and len(sweep["batches"]) == batches
    assert stored_sha == hashlib.sha256(notebook.read_bytes()).hexdigest()
    assert runner.returncode == 0


def test_a_sealed_record_edited_later_no_longer_matches_the_ledger(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    from runbook.tools.runner import execute

    insert(conn, status="queued", age_days=10)
    done = execute("sweep", {"dry_run": False, "run_id": "t-verify"}, tmp_path, env={**os.environ, "DATABASE_URL": dsn})
    assert done.ok, done.error
    database = Database(dsn, "DATABASE_URL")
    assert verify(done.path, database).ok
    done.path.chmod(0o644)
    done.path.write_text(done.path.read_text().replace('"changed": 1', '"changed": 0'))
    (tmp_path / (done.path.name + ".sha256")).write_text(hashlib.sha256(done.path.read_bytes()).hexdigest() + f"  {done.path.name}\n")
    checked = verify(done.path, database)
    assert not checked.ok and checked.beside_sha256 == checked.sha256 != checked.ledger_sha256 == done.sha256
    # A later checksum row for the same file (the sweeper may add rows) does not replace the seal.
    conn.execute(
        "INSERT INTO litellm_runbook.records (record_file, run_id, sha256) VALUES (%s, 't-verify', %s)",
        [done.path.name, checked.sha256],
    )
    assert not verify(done.path, database).ok
    # Nor does pointing the record at a run the ledger does not know: the file's name is the key.
    done.path.write_text(done.path.read_text().replace('"t-verify"', '"t-nowhere"'))
    (tmp_path / (done.path.name + ".sha256")).write_text(hashlib.sha256(done.path.read_bytes()).hexdigest() + f"  {done.path.name}\n")
    assert not verify(done.path, database).ok
    cli = subprocess.run(
        [sys.executable, "-m", "runbook", "verify", str(done.path)], env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 1 and "does NOT match" in cli.stdout


@pytest.mark.parametrize("kind", ["inspect", "preview"])
def test_read_only_runs_are_sealed_too(kind: str, dsn: str, tmp_path: Path) -> None:
    from runbook.tools.runner import execute

    done = execute(kind, {}, tmp_path, env={**os.environ, "DATABASE_URL": dsn})
    assert done.ok and oct(done.path.stat().st_mode)[-3:] == "444"
    assert kernel_pids() == [], "the kernel is shut down when the run ends"
    assert (tmp_path / (done.path.name + ".sha256")).read_text().split()[0] == done.sha256


def test_each_execute_of_the_panel_leaves_its_own_sealed_record_in_the_run_folder(
    conn: psycopg.Connection, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import runbook.notebook.run as rb
    from runbook.notebook.panel import SweepPanel

    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(4)]
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("RUNBOOK_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    run = rb.start("sweep", run_id="t-panel-seal")
    try:
        panel = SweepPanel(run)
        panel.batch_size.value = 2
        panel.preview_button.click()
        panel.confirm.value = "4"
        panel.confirm_db.value = conn.info.dbname  # not the demo: the database's name too
        panel.execute_button.click()
        result = panel.wait(30)
    finally:
        run.conn.close()
    assert result is not None and result.changed == 4
    [entry] = run.outcome["panel_runs"]
    (sealed,) = tmp_path.glob(f"*_panel_sweep_{entry['run_id']}.json")
    assert str(sealed) == entry["record_file"] and oct(sealed.stat().st_mode)[-3:] == "444"
    digest = hashlib.sha256(sealed.read_bytes()).hexdigest()
    assert (tmp_path / (sealed.name + ".sha256")).read_text() == f"{digest}  {sealed.name}\n"
    record = json.loads(sealed.read_text())["litellm_runbook"]
    assert record["run_id"] == entry["run_id"] and record["notebook_run_id"] == "t-panel-seal"
    assert record["outcome"]["sweep"]["changed"] == 4 and record["parameters"]["batch_size"] == 2
    stored = conn.execute("SELECT sha256 FROM litellm_runbook.records WHERE run_id = %s", [entry["run_id"]]).fetchone()
    assert stored == (digest,)
    assert verify(sealed, Database(dsn, "DATABASE_URL")).ok
    assert sorted(ids) == sorted(r[0] for r in conn.execute("SELECT object_id FROM litellm_runbook.changes WHERE run_id = %s", [entry["run_id"]]))


def test_a_run_that_gave_up_exits_non_zero_with_its_reason(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    import threading

    insert(conn, status="queued", age_days=10)
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as holder:
            holder.execute('LOCK TABLE "LiteLLM_ManagedObjectTable" IN ACCESS EXCLUSIVE MODE')
            ready.set()
            release.wait(60)
            holder.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        ready.wait(10)
        done = subprocess.run(
            [sys.executable, "-m", "runbook", "run", "sweep", "-p", "dry_run", "False", "-p", "lock_timeout_s", "0.2",
             "-p", "max_retries", "0", "-p", "run_id", "t-gave-up", "--run-dir", str(tmp_path)],
            env={**os.environ, "DATABASE_URL": dsn}, cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        release.set()
        holder.join()
    assert done.returncode == 1, done.stderr
    assert "run failed: run t-gave-up stopped: gave_up" in done.stderr and "LockNotAvailable" in done.stderr
    (notebook,) = tmp_path.glob("*_03_sweep_t-gave-up.ipynb")
    record = read_record(notebook)
    assert record is not None and record["outcome"]["status"] == "failed"
