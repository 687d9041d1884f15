"""Lock and statement timeouts are retried, smaller and after a pause, then given up with the
reason (sweep, snapshot, undo); a DBA's cancel stops the run at once and is never retried."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.ops.undo import undo
from tests.rows import TABLE, many, state, statuses
from tests.runs import LIVE


def _hold_table_lock(dsn: str, seconds: float, ready: threading.Event, mode: str = "ACCESS EXCLUSIVE") -> None:
    """Lock the table for ``seconds``. SHARE: reads go on, writes wait, as a long report or a
    DDL in flight would make them."""
    with psycopg.connect(dsn) as holder:
        holder.execute(f"LOCK TABLE {TABLE} IN {mode} MODE")
        ready.set()
        time.sleep(seconds)
        holder.rollback()


# -- timeouts ----------------------------------------------------------------------------


def test_transient_table_lock_is_retried_with_backoff(conn: psycopg.Connection, dsn: str) -> None:
    many(conn, 5)
    ready = threading.Event()
    holder = threading.Thread(target=_hold_table_lock, args=(dsn, 0.6, ready))
    holder.start()
    ready.wait(5)
    with psycopg.connect(dsn, autocommit=True) as worker:
        result = sweep(worker, Target(), options(lock_timeout_s=0.2, max_retries=4, **LIVE))
    holder.join()
    assert result.stop_reason == "done" and result.changed == 5
    assert result.retries and all("LockNotAvailable" in r for r in result.retries)


def test_table_lock_held_too_long_gives_up_with_the_reason_and_writes_nothing(conn: psycopg.Connection, dsn: str) -> None:
    many(conn, 5)
    before = state(conn)
    ready = threading.Event()
    holder = threading.Thread(target=_hold_table_lock, args=(dsn, 6, ready))
    holder.start()
    ready.wait(5)
    with psycopg.connect(dsn, autocommit=True) as worker:
        result = sweep(worker, Target(), options(lock_timeout_s=0.2, max_retries=2, **LIVE), run_id="locked-out")
    holder.join()
    assert result.stop_reason == "gave_up" and result.changed == 0
    assert "LockNotAvailable" in result.stop_detail and len(result.retries) == 3
    assert state(conn) == before
    assert conn.execute("SELECT stop_reason FROM litellm_runbook.runs WHERE run_id = 'locked-out'").fetchone() == ("gave_up",)
    assert sweep(conn, Target(), options(**LIVE)).changed == 5  # a re-run finishes


def test_statement_timeout_retries_smaller_then_gives_up(conn: psycopg.Connection) -> None:
    many(conn, 8)
    before = state(conn)
    # A slow trigger makes every UPDATE of the table outlast statement_timeout.
    conn.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$")
    conn.execute(f"CREATE TRIGGER slow BEFORE UPDATE ON {TABLE} FOR EACH STATEMENT EXECUTE FUNCTION slow()")
    result = sweep(conn, Target(), options(batch_size=4, statement_timeout_s=0.3, max_retries=2, **LIVE))
    assert result.stop_reason == "gave_up" and "QueryCanceled" in result.stop_detail
    # Two workers: the first round's two batches each retry, smaller, and give up.
    tries = sorted(r.split(":")[0] for r in result.retries)
    assert tries == [f"batch {b} try {t}" for b in (1, 2) for t in (1, 2, 3)]
    assert state(conn) == before
    conn.execute(f"DROP TRIGGER slow ON {TABLE}")
    assert sweep(conn, Target(), options(batch_size=4, **LIVE)).changed == 8


def test_a_snapshot_that_times_out_is_run_again_once_not_more(conn: psycopg.Connection, dsn: str) -> None:
    many(conn, 3)
    before = state(conn)
    ready = threading.Event()
    holder = threading.Thread(target=_hold_table_lock, args=(dsn, 6, ready))
    holder.start()
    ready.wait(5)
    # The snapshot gets ten batches' statement time (1 s here), and waits for the table lock.
    result = sweep(conn, Target(), options(statement_timeout_s=0.1, max_retries=3, **LIVE))
    holder.join()
    note = "snapshot try {}: QueryCanceled: canceling statement due to statement timeout"
    assert result.retries == [note.format(1), note.format(2)]
    assert result.stop_reason == "gave_up" and result.stop_detail == note.format(2)
    assert state(conn) == before


def test_undo_retries_a_lock_timeout_and_gives_up_like_the_sweep(conn: psycopg.Connection, dsn: str) -> None:
    ids = many(conn, 6)
    sweep(conn, Target(), options(**LIVE), run_id="swept")
    ready = threading.Event()
    holder = threading.Thread(target=_hold_table_lock, args=(dsn, 0.6, ready, "SHARE"))
    holder.start()
    ready.wait(5)
    result = undo(conn, Target(), options(lock_timeout_s=0.2, max_retries=4, **LIVE), of_run_id="swept", run_id="undo-retried")
    holder.join()
    assert result.stop_reason == "done" and result.restored == 6
    assert result.retries and all(r.startswith("batch 1 try ") and "LockNotAvailable" in r for r in result.retries)
    assert statuses(conn) == {k: "queued" for k in ids}

    sweep(conn, Target(), options(**LIVE), run_id="swept-again")
    ready = threading.Event()
    holder = threading.Thread(target=_hold_table_lock, args=(dsn, 4, ready, "SHARE"))
    holder.start()
    ready.wait(5)
    result = undo(conn, Target(), options(lock_timeout_s=0.2, max_retries=1, **LIVE), of_run_id="swept-again", run_id="undo-gave-up")
    holder.join()
    note = "batch 1 try {}: LockNotAvailable: canceling statement due to lock timeout"
    assert result.retries == [note.format(1), note.format(2)]
    assert result.stop_reason == "gave_up" and result.stop_detail == note.format(2) and result.restored == 0
    assert statuses(conn) == {k: "stale_expired" for k in ids}
    assert conn.execute("SELECT stop_reason FROM litellm_runbook.runs WHERE run_id = 'undo-gave-up'").fetchone() == ("gave_up",)


# -- a DBA's cancel ----------------------------------------------------------------------


CANCELLED = (
    "{what} was canceled by request (canceling statement due to user request: pg_cancel_backend() on the run's "
    "backend, from another session such as a DBA's, or a client's cancel); it rolled back and was not retried"
)


def _cancel_when_waiting(dsn: str, condition: str, cancelled: list[int]) -> None:
    """As a DBA would: pg_cancel_backend() on the backend matching ``condition`` (SQL over
    pg_stat_activity) once it waits for a lock."""
    with psycopg.connect(dsn, autocommit=True) as dba:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = dba.execute(f"SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND {condition}").fetchone()
            if row:
                assert dba.execute("SELECT pg_cancel_backend(%s)", [row[0]]).fetchone() == (True,)
                cancelled.append(row[0])
                return
            time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_dba_cancel_stops_the_sweep_at_once_and_is_recorded(conn: psycopg.Connection, dsn: str, workers: int) -> None:
    many(conn, 6)
    before = state(conn)
    holder = psycopg.connect(dsn)
    holder.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")  # the snapshot reads; every batch's UPDATE waits
    cancelled: list[int] = []
    with psycopg.connect(dsn, autocommit=True, application_name="swept") as worker:
        # One worker: the sweep's own backend; two: the helper's (its partner is canceled by the sweep).
        condition = f"pid = {worker.info.backend_pid}" if workers == 1 else "application_name = 'swept/worker-2'"
        dba = threading.Thread(target=_cancel_when_waiting, args=(dsn, condition, cancelled))
        dba.start()
        t0 = time.monotonic()
        result = sweep(worker, Target(), options(batch_size=3, workers=workers, lock_timeout_s=30, **LIVE), run_id="dba")
        elapsed = time.monotonic() - t0
        dba.join()
    holder.rollback()
    holder.close()
    assert len(cancelled) == 1 and elapsed < 10, "not stopped at once: a lock_timeout (30 s) or a retry ran"
    what = "batch 1" if workers == 1 else "batch 2"
    assert result.stop_reason == "cancelled" and result.stop_detail == CANCELLED.format(what=what)
    assert result.retries == [] and result.batches == [] and result.changed == 0
    assert state(conn) == before
    assert conn.execute("SELECT stop_reason, outcome->>'stop_detail', rows_changed FROM litellm_runbook.runs").fetchall() == [
        ("cancelled", CANCELLED.format(what=what), 0)
    ]
    assert sweep(conn, Target(), options(**LIVE)).changed == 6  # nothing left behind: a re-run finishes


def test_a_dba_cancel_of_the_snapshot_stops_the_sweep(conn: psycopg.Connection, dsn: str) -> None:
    many(conn, 3)
    before = state(conn)
    holder = psycopg.connect(dsn)
    holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
    cancelled: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as worker:
        dba = threading.Thread(target=_cancel_when_waiting, args=(dsn, f"pid = {worker.info.backend_pid}", cancelled))
        dba.start()
        result = sweep(worker, Target(), options(lock_timeout_s=30, **LIVE))
        dba.join()
    holder.rollback()
    holder.close()
    assert cancelled and result.stop_reason == "cancelled" and result.stop_detail == CANCELLED.format(what="snapshot")
    assert result.retries == [] and state(conn) == before


def test_a_dba_cancel_stops_an_undo_at_once(conn: psycopg.Connection, dsn: str) -> None:
    ids = many(conn, 4)
    sweep(conn, Target(), options(**LIVE), run_id="swept")
    holder = psycopg.connect(dsn)
    holder.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")
    cancelled: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as worker:
        dba = threading.Thread(target=_cancel_when_waiting, args=(dsn, f"pid = {worker.info.backend_pid}", cancelled))
        dba.start()
        result = undo(worker, Target(), options(lock_timeout_s=30, **LIVE), of_run_id="swept", run_id="undo-cancelled")
        dba.join()
    holder.rollback()
    holder.close()
    assert cancelled and result.stop_reason == "cancelled" and result.stop_detail == CANCELLED.format(what="batch 1")
    assert result.retries == [] and result.restored == 0
    assert statuses(conn) == {k: "stale_expired" for k in ids}
    assert conn.execute("SELECT stop_reason FROM litellm_runbook.runs WHERE run_id = 'undo-cancelled'").fetchone() == ("cancelled",)
