"""A running sweep seen and stopped from anywhere: ``python -m runbook status`` and
``python -m runbook stop RUN_ID``, through the database, as the reader role."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.audit.record import read_record
from runbook.db import control, ledger
from tests.roles import create_roles, drop_roles
from tests.rows import insert, many, statuses
from tests.runs import LIVE

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, dsn: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn, "RUNBOOK_RUN_DIR": str(run_dir)}
    return subprocess.run([sys.executable, "-m", "runbook", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def _wait_for(conn: psycopg.Connection, query: str, params: list[object], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while not conn.execute(query, params).fetchone()[0]:  # type: ignore[index]
        assert time.monotonic() < deadline, query
        time.sleep(0.05)


def test_a_sweep_in_another_process_is_stopped_from_the_cli_by_run_id_within_one_batch_and_says_who(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    many(conn, 300)
    roles = create_roles(conn, dsn)  # the ledger, and a reader that may only read and ask
    try:
        env = {**os.environ, "DATABASE_URL": dsn, "RUNBOOK_RUN_DIR": str(tmp_path)}
        sweeping = subprocess.Popen(
            [sys.executable, "-m", "runbook", "run", "sweep", "-p", "dry_run", "False", "-p", "batch_size", "5",
             "-p", "workers", "1", "-p", "pause_s", "0.2", "-p", "run_id", "remote-1"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        _wait_for(conn, "SELECT count(*) FROM litellm_runbook.batches WHERE run_id = %s", ["remote-1"])
        status = _cli("status", dsn=roles["rb_reader"], run_dir=tmp_path)
        assert status.returncode == 0, status.stderr
        line = next(x for x in status.stdout.splitlines() if "remote-1" in x)
        assert "public.LiteLLM_ManagedObjectTable" in line and " of 300" in line and "pid " in line, status.stdout

        stopped = _cli("stop", "remote-1", "--wait", "60", dsn=roles["rb_reader"], run_dir=tmp_path)
        out, _ = sweeping.communicate(timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "remote-1 stopped: stop_requested" in stopped.stdout
        assert sweeping.returncode == 0, out  # a stop the operator asked for: exit 0
        run = conn.execute(
            "SELECT stop_reason, outcome->>'stop_detail', rows_changed FROM litellm_runbook.runs WHERE run_id = 'remote-1'"
        ).fetchone()
        assert run is not None and run[0] == "stop_requested"
        assert "stop requested by" in run[1] and "session_user rb_reader" in run[1]
        assert 0 < run[2] < 300
        after = conn.execute(
            "SELECT count(*) FROM litellm_runbook.batches WHERE run_id = 'remote-1' AND committed_at > "
            "(SELECT min(requested_at) FROM litellm_runbook.stop_requests WHERE run_id = 'remote-1')"
        ).fetchone()
        assert after is not None and after[0] <= 1  # within one batch
        (executed,) = tmp_path.glob("*_03_sweep_remote-1.ipynb")
        record = read_record(executed)
        assert record is not None and "session_user rb_reader" in record["outcome"]["sweep"]["stop_detail"]

        again = _cli("stop", "remote-1", dsn=roles["rb_reader"], run_dir=tmp_path)
        assert again.returncode == 2 and "already ended: stop_requested" in again.stdout
        idle = _cli("status", dsn=roles["rb_reader"], run_dir=tmp_path)
        assert idle.stdout.strip() == "no sweep or undo is running in this database"
    finally:
        drop_roles(conn)


def test_a_role_without_rights_on_the_ledger_is_told_what_to_grant(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    many(conn, 3)
    roles = create_roles(conn, dsn)
    conn.execute("DROP ROLE IF EXISTS rb_nobody")
    conn.execute("CREATE ROLE rb_nobody LOGIN")
    conn.execute(f"GRANT CONNECT ON DATABASE {conn.info.dbname} TO rb_nobody")
    try:
        nobody = psycopg.conninfo.make_conninfo(dsn, user="rb_nobody")
        refused = _cli("stop", "any-run", dsn=nobody, run_dir=tmp_path)
        assert refused.returncode == 2
        assert "role rb_nobody may not ask a run to stop" in refused.stderr
        assert 'GRANT INSERT (run_id, requested_by) ON "litellm_runbook"."stop_requests" TO "rb_nobody"' in refused.stderr
        unknown = _cli("stop", "no-such-run", dsn=roles["rb_reader"], run_dir=tmp_path)
        assert unknown.returncode == 2 and "not in the ledger of this database" in unknown.stdout
    finally:
        conn.execute("DROP OWNED BY rb_nobody")
        conn.execute("DROP ROLE rb_nobody")
        drop_roles(conn)


def test_an_old_stop_request_does_not_stop_the_run_when_it_is_resumed(conn: psycopg.Connection) -> None:
    from runbook import options, sweep
    from runbook.db.control import request_stop
    from runbook.rules.target import Target

    many(conn, 20)
    result = sweep(conn, Target(), options(batch_size=5, workers=1, max_batches=1, dry_run=False), run_id="resume-1")
    assert result.stop_reason == "max_batches"
    conn.execute("UPDATE litellm_runbook.runs SET finished_at = NULL WHERE run_id = 'resume-1'")  # as if still running
    assert request_stop(conn, "resume-1", {"os_user": "someone"}) is not None
    conn.execute("UPDATE litellm_runbook.runs SET finished_at = now() WHERE run_id = 'resume-1'")
    again = sweep(conn, Target(), options(batch_size=5, workers=1, dry_run=False), run_id="resume-1")
    assert again.stop_reason == "done" and again.changed == 15


def test_a_stop_request_cannot_be_dated_or_signed_by_the_requester(conn: psycopg.Connection, dsn: str) -> None:
    roles = create_roles(conn, dsn)
    try:
        with psycopg.connect(roles["rb_reader"], autocommit=True) as reader:
            for column, value in (("requested_at", "2100-01-01"), ("requested_role", "alice")):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    reader.execute(f"INSERT INTO litellm_runbook.stop_requests (run_id, {column}) VALUES ('x', %s)", [value])
    finally:
        drop_roles(conn)


def test_a_stop_asked_the_moment_the_run_opens_stops_it_before_its_first_batch(
    conn: psycopg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst moment for `runbook stop`: right after the run's row is committed (the
    first moment `stop` accepts the run id), before the sweep has read the clock it
    compares stop requests with. The request must still count."""
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(6)]
    before = statuses(conn)
    real_start_run = ledger.start_run

    def start_then_stop(*args: object, **kwargs: object) -> object:
        first = real_start_run(*args, **kwargs)  # type: ignore[arg-type]
        with psycopg.connect(dsn, autocommit=True) as other:
            assert control.request_stop(other, str(kwargs["run_id"]), {"os_user": "on-call"}) is not None
        return first

    monkeypatch.setattr(ledger, "start_run", start_then_stop)
    result = sweep(conn, Target(), options(batch_size=2, workers=1, **LIVE), run_id="stopped-at-once")
    assert result.stop_reason == "stop_requested" and result.changed == 0 and result.batches == []
    assert statuses(conn) == before and len(before) == len(ids)
