"""Sweep and undo pause while the database is unhealthy: replication lag, sessions waiting on the
table, a running VACUUM (not an autovacuum the sweep itself started); as superuser and as the
least-privilege sweeper."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.db.embedded import EmbeddedServer
from runbook.ops.undo import undo
from runbook.tools.demo import load_demo_rows
from tests.roles import create_roles, drop_roles
from tests.rows import TABLE, insert, many, statuses
from tests.runs import LIVE


@pytest.fixture
def sweeper_role(conn: psycopg.Connection, dsn: str) -> Iterator[str]:
    """The DSN of the least-privilege sweeper role, with exactly its documented grants."""
    yield create_roles(conn, dsn)["rb_sweeper"]
    drop_roles(conn)


def _as(role: str, dsn: str, request: pytest.FixtureRequest) -> str:
    """The DSN to sweep with: the superuser's, or the least-privilege sweeper's."""
    return dsn if role == "superuser" else str(request.getfixturevalue("sweeper_role"))


# -- replication lag ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ["superuser", "sweeper"])
def test_replication_lag_pauses_the_sweep(
    conn: psycopg.Connection, dsn: str, standby: EmbeddedServer, role: str, request: pytest.FixtureRequest
) -> None:
    many(conn, 6)
    worker = psycopg.connect(_as(role, dsn, request), autocommit=True)
    with psycopg.connect(standby.dsn(), autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        resumer = threading.Timer(2.0, lambda: psycopg.connect(standby.dsn(), autocommit=True).execute("SELECT pg_wal_replay_resume()"))
        resumer.start()
        try:
            result = sweep(worker, Target(), options(batch_size=2, max_replication_lag_bytes=1, health_pause_s=0.2, **LIVE))
        finally:
            resumer.join()
            replica.execute("SELECT pg_wal_replay_resume()")
            worker.close()
    assert result.stop_reason == "done" and result.changed == 6 and result.health_blind == []
    assert result.pauses and "replication lag" in result.pauses[0]["reasons"][0]
    assert sum(p["seconds"] for p in result.pauses) >= 0.5
    assert result.signals["replication_lag_bytes_max"] > 1


# -- sessions waiting on the table -------------------------------------------------------


def test_sessions_waiting_on_the_table_pause_the_sweep(conn: psycopg.Connection, dsn: str) -> None:
    many(conn, 4)
    done_row = insert(conn, status="completed", age_days=30)
    holder = psycopg.connect(dsn)
    holder.execute(f"UPDATE {TABLE} SET updated_at = updated_at WHERE id = %s", [done_row])
    waiter = threading.Thread(
        target=lambda: psycopg.connect(dsn, autocommit=True).execute(f"UPDATE {TABLE} SET updated_at = updated_at WHERE id = %s", [done_row])
    )
    waiter.start()
    time.sleep(0.3)
    threading.Timer(1.0, holder.commit).start()
    result = sweep(conn, Target(), options(batch_size=2, health_pause_s=0.2, **LIVE))
    waiter.join(10)
    holder.close()
    assert result.stop_reason == "done" and result.changed == 4
    assert result.pauses and "waiting on locks on the table" in result.pauses[0]["reasons"][0]
    assert result.pauses[0]["seconds"] >= 0.4
    # The record says what the sweep saw of the foreground, and the result's text too.
    assert result.signals["lock_waiters_max"] >= 1 and result.signals["health_checks"] >= 2
    assert result.signals["last"]["lock_waiters"] == 0
    from runbook.notebook.render import sweep_result

    assert "lock waiters max" in sweep_result(result).plain and "paused 1x" in sweep_result(result).plain


def test_sessions_waiting_on_the_table_pause_an_undo(conn: psycopg.Connection, dsn: str) -> None:
    ids = many(conn, 4)
    sweep(conn, Target(), options(**LIVE), run_id="swept")
    done_row = insert(conn, status="completed", age_days=30)
    holder = psycopg.connect(dsn)
    holder.execute(f"UPDATE {TABLE} SET updated_at = updated_at WHERE id = %s", [done_row])
    waiter = threading.Thread(
        target=lambda: psycopg.connect(dsn, autocommit=True).execute(f"UPDATE {TABLE} SET updated_at = updated_at WHERE id = %s", [done_row])
    )
    waiter.start()
    time.sleep(0.3)
    threading.Timer(1.0, holder.commit).start()
    result = undo(conn, Target(), options(batch_size=2, health_pause_s=0.2, **LIVE), of_run_id="swept")
    waiter.join(10)
    holder.close()
    assert result.stop_reason == "done" and result.restored == 4
    assert result.pauses and result.pauses[0]["before_batch"] == 1 and result.pauses[0]["seconds"] >= 0.4
    assert result.pauses[0]["reasons"] == ["1 session(s) waiting on locks on the table > 0"]
    assert statuses(conn) == {**{k: "queued" for k in ids}, done_row: "completed"}


# -- VACUUM ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["superuser", "sweeper", "blind sweeper"])
def test_a_running_vacuum_pauses_the_sweep(conn: psycopg.Connection, dsn: str, role: str, request: pytest.FixtureRequest) -> None:
    worker_dsn = _as(role, dsn, request)
    if role == "blind sweeper":  # without pg_read_all_stats: allowed blind, it sees no VACUUM
        conn.execute("REVOKE pg_read_all_stats FROM rb_sweeper")
    load_demo_rows(dsn, 3000)
    vacuum = psycopg.connect(dsn, autocommit=True)
    vacuum.execute("SET vacuum_cost_delay = '20ms'")
    vacuum.execute("SET vacuum_cost_limit = 1")
    pid = vacuum.info.backend_pid
    threading.Thread(target=lambda: _quietly(lambda: vacuum.execute(f"VACUUM {TABLE}"))).start()
    deadline = time.monotonic() + 10
    while not conn.execute("SELECT count(*) FROM pg_stat_progress_vacuum WHERE pid = %s", [pid]).fetchone()[0]:  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    canceller = threading.Timer(1.0, lambda: psycopg.connect(dsn, autocommit=True).execute("SELECT pg_cancel_backend(%s)", [pid]))
    canceller.start()
    with psycopg.connect(worker_dsn, autocommit=True) as worker:
        result = sweep(worker, Target(), options(batch_size=500, health_pause_s=0.2, allow_blind_health=role == "blind sweeper", **LIVE))
    canceller.join()
    vacuum.close()
    assert result.stop_reason == "done" and result.changed == result.candidates_at_start > 0
    if role == "blind sweeper":
        assert result.pauses == [] and len(result.health_blind) == 1 and "VACUUM (pg_stat_progress_vacuum.relid is NULL" in result.health_blind[0]
        return
    assert result.health_blind == []
    assert result.pauses and result.pauses[0]["reasons"] == ["a VACUUM of the table is running"]
    assert result.pauses[0]["before_batch"] == 1 and result.pauses[0]["seconds"] >= 0.5


@pytest.fixture
def slow_autovacuum(conn: psycopg.Connection, admin_dsn: str) -> Iterator[None]:
    """Autovacuum that wakes every second and vacuums the table very slowly, as soon as it
    has one dead row (never for inserts alone); the server's settings are put back after."""
    conn.execute(
        f"ALTER TABLE {TABLE} SET (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,"
        " autovacuum_vacuum_insert_threshold = 2000000000, autovacuum_analyze_threshold = 2000000000,"
        " autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1)"
    )
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        admin.execute("SELECT pg_reload_conf()")
        try:
            yield
        finally:
            admin.execute("ALTER SYSTEM RESET autovacuum_naptime")
            admin.execute("SELECT pg_reload_conf()")


def _autovacuum_pids(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [r[0] for r in c.execute(
            "SELECT v.pid FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a USING (pid)"
            f" WHERE v.relid = '{TABLE}'::regclass AND a.backend_type = 'autovacuum worker'"
        )]  # fmt: skip


def test_an_autovacuum_the_sweep_started_does_not_pause_it(conn: psycopg.Connection, dsn: str, slow_autovacuum: None) -> None:
    load_demo_rows(dsn, 3000)
    seen_during_sweep: list[int] = []
    sweeping = threading.Event()

    def watch() -> None:
        while sweeping.is_set():
            seen_during_sweep.extend(_autovacuum_pids(dsn))
            time.sleep(0.1)

    sweeping.set()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # Batches of 20 with 0.3 s between them: ~10 s, in which autovacuum (1 s naptime)
        # starts on the dead rows of the first batches and is still crawling at the end.
        result = sweep(conn, Target(), options(batch_size=20, pause_s=0.3, health_pause_s=0.2, max_seconds=30, **LIVE))
    finally:
        sweeping.clear()
        watcher.join()
    assert seen_during_sweep, "autovacuum never started on the table during the sweep"
    assert result.stop_reason == "done" and result.changed == result.candidates_at_start > 0
    assert result.pauses == []


def test_an_autovacuum_running_before_the_sweep_pauses_it(conn: psycopg.Connection, dsn: str, slow_autovacuum: None) -> None:
    load_demo_rows(dsn, 3000)
    conn.execute(f"UPDATE {TABLE} SET updated_at = updated_at WHERE status = 'completed'")  # dead rows
    deadline = time.monotonic() + 20
    while not (pids := _autovacuum_pids(dsn)):
        assert time.monotonic() < deadline, "autovacuum never started on the table"
        time.sleep(0.1)
    cancel = threading.Timer(1.0, lambda: psycopg.connect(dsn, autocommit=True).execute("SELECT pg_cancel_backend(%s)", [pids[0]]))
    cancel.start()
    result = sweep(conn, Target(), options(batch_size=500, health_pause_s=0.2, **LIVE))
    cancel.join()
    assert result.stop_reason == "done" and result.changed == result.candidates_at_start > 0
    assert result.pauses and result.pauses[0]["reasons"] == ["a VACUUM of the table is running"]
    assert result.pauses[0]["before_batch"] == 1 and result.pauses[0]["seconds"] >= 0.5


def _quietly(work: Any) -> None:
    try:
        work()
    except psycopg.Error:
        pass
