"""A run killed or cut off mid-way leaves whole batches with their ledger, says which stand, and a
re-run with the same run_id finishes: SIGKILL, a server restart, an undo's lost connection, a
crash that loses batches already acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.db.embedded import EmbeddedServer
from runbook.errors import ConnectionLostError
from runbook.ops.undo import undo
from runbook.tools.demo import reset_database
from tests.fix_db import track
from tests.rows import TABLE, insert, many, sessions_left, state, statuses
from tests.runs import LIVE, assert_consistent, candidates_of, ledger_batches

ROOT = Path(__file__).resolve().parent.parent


def test_sigkill_mid_sweep_leaves_whole_batches_with_ledger_and_a_rerun_finishes(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    """The operator's live sweep (``python -m runbook run``: the runner, papermill, a kernel)
    SIGKILLed mid-sweep, runner and kernel both: nothing is left to close the run or end its
    sessions. The server alone frees them; every committed batch is whole and in the ledger;
    a re-run with the same run_id resumes the open run and finishes."""
    many(conn, 60)
    before, cands = state(conn), candidates_of(conn)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbook", "run", "sweep", "-p", "dry_run", "False", "-p", "batch_size", "4",
         "-r", "run_id", "kernel-killed", "--run-dir", str(tmp_path)],
        env={**os.environ, "DATABASE_URL": dsn, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT,
    )  # fmt: skip
    # Slow the sweep down from outside: a short sleep per UPDATE statement.
    conn.execute("CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$")
    conn.execute(f"CREATE TRIGGER nap BEFORE UPDATE ON {TABLE} FOR EACH STATEMENT EXECUTE FUNCTION nap()")
    deadline = time.monotonic() + 60
    while not _ledger_exists(conn) or conn.execute("SELECT count(*) FROM litellm_runbook.batches").fetchone()[0] < 3:  # type: ignore[index]
        assert proc.poll() is None, f"the sweep ended before its third batch: {proc.communicate()}"
        assert time.monotonic() < deadline, "the sweep never got going"
        time.sleep(0.05)
    kernels = [p for p in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert kernels
    proc.kill()  # the runner first, so that nothing closes the run when its kernel dies
    for kernel in kernels:
        kernel.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    conn.execute(f"DROP TRIGGER nap ON {TABLE}")
    assert sessions_left(conn, "application_name LIKE '%%/kernel-killed%%'") == 0, "the server ends the dead run's sessions"
    row = conn.execute("SELECT finished_at IS NULL, stop_reason FROM litellm_runbook.runs WHERE run_id = 'kernel-killed'").fetchone()
    assert row == (True, None), "nothing closed the run"
    swept = assert_consistent(conn, before, cands)
    assert 0 < len(swept) < 60
    logged = ledger_batches(conn, "kernel-killed")
    assert 3 <= len(logged) < 15 and all(len(ids) == 4 for ids in logged.values()), "whole batches, fewer than all 15"
    assert set().union(*logged.values()) == swept
    sums = conn.execute("SELECT sum(rows_changed) FROM litellm_runbook.batches WHERE run_id = 'kernel-killed'").fetchone()
    assert sums == (len(swept),)

    result = sweep(conn, Target(), options(batch_size=4, **LIVE), run_id="kernel-killed")
    assert result.stop_reason == "done" and result.changed == 60 - len(swept)
    assert result.batches[0].number == max(logged) + 1
    assert set(statuses(conn).values()) == {"stale_expired"}
    assert conn.execute("SELECT count(*), count(DISTINCT object_id) FROM litellm_runbook.changes").fetchone() == (60, 60)
    assert assert_consistent(conn, before, cands) == cands


def _ledger_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('litellm_runbook.batches') IS NOT NULL").fetchone() == (True,)


# -- a lost connection -------------------------------------------------------------------


def test_server_restart_mid_sweep_names_the_batch_and_a_rerun_finishes(
    conn: psycopg.Connection, dsn: str, server: EmbeddedServer
) -> None:
    many(conn, 12)
    before, cands = state(conn), candidates_of(conn)

    def restart_after_second(result: object, batch: Any) -> None:
        if batch.number == 2:
            server.stop()
            server.start()

    with psycopg.connect(dsn, autocommit=True) as worker:
        with pytest.raises(ConnectionLostError) as err:
            sweep(worker, Target(), options(batch_size=3, **LIVE), run_id="restarted", on_batch=restart_after_second)
    assert "lost during batch 3 of run restarted" in str(err.value)
    assert "the 2 other batch(es) committed so far stand with their ledger" in str(err.value)
    with psycopg.connect(dsn, autocommit=True) as fresh:
        assert len(assert_consistent(fresh, before, cands)) == 6
        result = sweep(fresh, Target(), options(batch_size=3, **LIVE), run_id="restarted")
        assert result.stop_reason == "done" and result.changed == 6 and result.batches[0].number == 3
        assert assert_consistent(fresh, before, cands) == cands


def test_an_undo_that_loses_its_connection_reports_what_the_ledger_holds_and_is_closed(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(4)]
    sweep(conn, Target(), options(workers=1, **LIVE), run_id="to-lose")
    newest_first = [r[0] for r in conn.execute("SELECT object_id FROM litellm_runbook.changes WHERE run_id = 'to-lose' ORDER BY seq DESC")]
    # Restoring the third object ends the undo's own session mid-statement (as a server crash would).
    conn.execute(
        "CREATE FUNCTION end_session() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.id = '{newest_first[2]}' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NEW; END $$"
    )
    conn.execute('CREATE TRIGGER end_session BEFORE UPDATE ON "LiteLLM_ManagedObjectTable" FOR EACH ROW EXECUTE FUNCTION end_session()')
    with psycopg.connect(dsn, autocommit=True) as undoer:
        with pytest.raises(ConnectionLostError) as err:
            undo(undoer, Target(), options(batch_size=1, **LIVE), of_run_id="to-lose", run_id="undo-lost")
    assert str(err.value).startswith("the connection to the database was lost during batch 3 of undo run undo-lost (")
    assert str(err.value).endswith(
        "that batch rolled back; the 2 other batch(es) committed so far stand with their ledger (2 rows restored). "
        "Run again with undo_run_id=undo-lost to finish."
    )
    assert statuses(conn) == {**{k: "queued" for k in newest_first[:2]}, **{k: "stale_expired" for k in newest_first[2:]}}
    assert set(newest_first) == set(ids)
    row = conn.execute(
        "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, (outcome->>'restored')::int FROM litellm_runbook.runs"
        " WHERE run_id = 'undo-lost'"
    ).fetchone()
    assert row == (True, "failed", 2, 2)
    conn.execute('DROP TRIGGER end_session ON "LiteLLM_ManagedObjectTable"')
    again = undo(conn, Target(), options(**LIVE), of_run_id="to-lose", run_id="undo-lost")
    assert (again.restored, again.already_undone, again.batches[0].number) == (2, 2, 3)
    assert set(statuses(conn).values()) == {"queued"}


# -- a crash that loses acknowledged batches ---------------------------------------------
#
# A server crash on a server with durable settings: what the sweep reports is what the ledger
# holds. Batches commit asynchronously (``synchronous_commit=off`` per batch): a crash can lose
# a batch whose commit was already acknowledged. The sweep must reconcile its result with
# ``litellm_runbook.batches`` before it reports.


# Durable, as a production server: fsync and synchronous commit on. The WAL writer waits
# its longest (10 s) between writes, so that an asynchronous commit acknowledged just
# before the crash is still only in the server's WAL buffers when it dies: the loss is
# certain instead of a race with a 200 ms timer. No autovacuum: nothing else writes WAL.
DURABLE = "-c fsync=on -c full_page_writes=on -c synchronous_commit=on -c wal_writer_delay=10000 -c autovacuum=off"


def _durable_options(server: EmbeddedServer) -> str:
    """The command line the server was started with (``postmaster.opts``), with DURABLE
    last (the last ``-c`` of a setting wins): the embedded server's own start options
    turn fsync off."""
    recorded = (server.pgdata / "postmaster.opts").read_text().strip()  # the binary, then its quoted arguments
    return f"{recorded.split(' ', 1)[1]} {DURABLE}"


def _start(server: EmbeddedServer, opts: str) -> None:
    server._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(server.pgdata), "-l", str(server.log), "-o", opts)


@pytest.fixture
def durable() -> Iterator[tuple[EmbeddedServer, str]]:
    """A server of its own, restarted with DURABLE settings; its start options with them."""
    home = Path(tempfile.mkdtemp(prefix="litellm-runbook-durable-", dir="/var/tmp"))
    server = track(EmbeddedServer(home))
    try:
        server.start()
        opts = _durable_options(server)
        server.stop()
        _start(server, opts)
        yield server, opts
    finally:
        server.destroy()


def test_batches_a_crash_lost_are_not_reported_and_the_run_is_closed(durable: tuple[EmbeddedServer, str]) -> None:
    server, opts = durable
    dsn = reset_database(server.dsn(), "litellm_durable")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')").fetchone() == ("on", "on")
        ids = [insert(conn, status="queued", age_days=20 - i / 10) for i in range(9)]  # ids[0] oldest

    def crash(result: object, batch: Any) -> None:
        if batch.number == 1:
            # A synchronous commit that wrote WAL, in another session, flushes the WAL so far:
            # batch 1 is durable.
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("CREATE TEMP TABLE flush_marker ()")
        if batch.number == 2:
            # Batch 2's commit was acknowledged, its WAL not yet written: lost with the server.
            server._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(server.pgdata))
            _start(server, opts)

    with psycopg.connect(dsn, autocommit=True) as worker:
        with pytest.raises(ConnectionLostError) as err:
            sweep(worker, Target(), options(batch_size=3, workers=1, dry_run=False), run_id="crashed", on_batch=crash)
    message = str(err.value)
    assert "lost during batch 3 of run crashed" in message
    assert (
        "that batch rolled back; the 1 other batch(es) committed so far stand with their ledger (3 rows). Batch(es) 2 "
        "were acknowledged but are not in the ledger after reconnecting: lost with the server's unflushed WAL "
        "(asynchronous commit); their rows are still candidates. Run again with run_id=crashed to finish."
    ) in message

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert statuses(conn) == {**{k: "stale_expired" for k in ids[:3]}, **{k: "queued" for k in ids[3:]}}
        assert conn.execute("SELECT batch, rows_changed FROM litellm_runbook.batches WHERE run_id = 'crashed'").fetchall() == [(1, 3)]
        row = conn.execute(
            "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, (outcome->>'changed')::int,"
            " jsonb_path_query_array(outcome, '$.batches[*].number'), outcome->>'stop_detail'"
            " FROM litellm_runbook.runs WHERE run_id = 'crashed'"
        ).fetchone()
        assert row is not None and row[:5] == (True, "failed", 3, 3, [1])
        assert "batch(es) 2 were acknowledged but are not in the ledger after reconnecting" in str(row[5])

        again = sweep(conn, Target(), options(batch_size=3, workers=1, dry_run=False), run_id="crashed")
        assert (again.stop_reason, again.changed, again.batches[0].number) == ("done", 6, 2)
        assert set(statuses(conn).values()) == {"stale_expired"}
