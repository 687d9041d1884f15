"""Faults injected into a running sweep, on a real server: the runbook keeps its promises.

For every fault: each changed row was a candidate, each committed batch is complete and
in the ledger, nothing else changed, and a re-run finishes the job.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.tools.demo import load_demo_rows
from runbook.db.embedded import EmbeddedServer
from runbook.errors import ConnectionLostError, ReadOnlyError, SweepInProgressError
from runbook.tools.runner import execute
from tests.fix_db import track
from tests.roles import create_roles, drop_roles
from tests.rows import insert, state, statuses

LIVE = {"dry_run": False}
ROOT = Path(__file__).resolve().parent.parent
TABLE = '"LiteLLM_ManagedObjectTable"'


def assert_consistent(conn: psycopg.Connection, before: dict[str, tuple[Any, ...]], candidates: set[str]) -> set[str]:
    """Every changed row was a candidate, changed only in status, and is in the ledger once."""
    after = state(conn)
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= candidates
    for key in changed:
        assert after[key][9] == "stale_expired"
        assert after[key][:9] + after[key][10:] == before[key][:9] + before[key][10:]
    logged = conn.execute("SELECT object_id, previous_status FROM litellm_runbook.changes").fetchall()
    assert len(logged) == len({k for k, _ in logged})  # no row changed twice
    assert {k for k, _ in logged} == changed
    assert all(prev == before[k][9] for k, prev in logged)
    per_batch = conn.execute(
        "SELECT b.rows_changed, count(c.object_id) FROM litellm_runbook.batches b"
        " LEFT JOIN litellm_runbook.changes c USING (run_id, batch) GROUP BY b.run_id, b.batch, b.rows_changed"
    ).fetchall()
    assert all(declared == found for declared, found in per_batch)
    return changed


def candidates_of(conn: psycopg.Connection) -> set[str]:
    return {r.id for r in __import__("runbook").preview(conn, Target(), options(batch_size=100_000)).rows}


def many(conn: psycopg.Connection, n: int, *, status: str = "queued") -> list[str]:
    return [insert(conn, status=status, age_days=8 + i / 100) for i in range(n)]


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


def _hold_table_lock(dsn: str, seconds: float, ready: threading.Event, mode: str = "ACCESS EXCLUSIVE") -> None:
    """Lock the table for ``seconds``. SHARE: reads go on, writes wait, as a long report or a
    DDL in flight would make them."""
    with psycopg.connect(dsn) as holder:
        holder.execute(f"LOCK TABLE {TABLE} IN {mode} MODE")
        ready.set()
        time.sleep(seconds)
        holder.rollback()


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


def _poller(dsn: str, stop: threading.Event, completed: set[str], latencies: list[float]) -> None:
    """LiteLLM's poller: claim the 50 oldest queued/in_progress responses, complete some."""
    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            with c.transaction():
                claimed = [
                    r[0]
                    for r in c.execute(
                        f"SELECT id FROM {TABLE} WHERE file_purpose = 'response' AND status IN ('queued', 'in_progress')"
                        " ORDER BY created_at LIMIT 50 FOR UPDATE"
                    )
                ]
                done = [k for k in claimed if rng.random() < 0.3]
                c.execute(f"UPDATE {TABLE} SET status = 'completed' WHERE id = ANY(%s)", [done])
            completed.update(done)
            latencies.append(time.monotonic() - t0)


def test_concurrent_poller_completions_are_never_overwritten(
    conn: psycopg.Connection, dsn: str, record_property: Any
) -> None:
    load_demo_rows(dsn, 6000)
    before, cands = state(conn), candidates_of(conn)
    stop, completed, latencies = threading.Event(), set(), []  # type: ignore[var-annotated]
    poller = threading.Thread(target=_poller, args=(dsn, stop, completed, latencies))
    poller.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as worker:
            result = sweep(worker, Target(), options(batch_size=50, pause_s=0.01, **LIVE))
    finally:
        stop.set()
        poller.join(30)
    final = statuses(conn)
    assert completed and all(final[k] == "completed" for k in completed)
    assert result.stop_reason == "done"
    after = state(conn)
    changed = {k for k in before if after[k] != before[k]} - completed
    assert changed <= cands
    logged = {r[0] for r in conn.execute("SELECT object_id FROM litellm_runbook.changes")}
    assert logged == {k for k in changed if final[k] == "stale_expired"} and not logged & completed
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 2 else max(latencies)
    record_property("poller_p99_ms", round(p99 * 1000, 1))
    print(f"poller: {len(latencies)} cycles, p99 {p99 * 1000:.1f} ms; completed {len(completed)} rows during the sweep")
    assert p99 < 5.0  # the poller never waited out a lock_timeout-sized stall: no deadlock, no long block


@pytest.mark.parametrize("sweeps", [2, 4])
def test_sweeps_started_together_one_works_the_others_stop(conn: psycopg.Connection, dsn: str, sweeps: int) -> None:
    many(conn, 40)
    before, cands = state(conn), candidates_of(conn)
    barrier = threading.Barrier(sweeps)
    results: list[Any] = []
    refused: list[str] = []

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            barrier.wait()
            try:
                results.append(sweep(c, Target(), options(batch_size=5, pause_s=0.1, **LIVE)))
            except SweepInProgressError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(sweeps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 1 and len(refused) == sweeps - 1
    assert results[0].changed == 40
    assert all("is running: pid " in m and "Nothing was written" in m for m in refused)
    assert assert_consistent(conn, before, cands) == cands


@pytest.fixture(scope="module")
def standby(server: EmbeddedServer) -> Any:
    home = Path(tempfile.mkdtemp(prefix="litellm-runbook-standby-", dir="/var/tmp"))
    track(EmbeddedServer(home))  # a kill during the base backup still removes the folder
    replica = track(server.clone_standby(home))
    yield replica
    replica.destroy()


def _wait_replayed(dsn: str, standby: EmbeddedServer, dbname: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(standby.dsn(dbname), autocommit=True) as c:
                if c.execute("SELECT to_regclass('litellm_runbook.runs') IS NOT NULL OR true").fetchone():
                    return
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise AssertionError("standby did not replay the test database")


def test_read_only_standby_inspect_and_preview_work_sweep_refuses(
    conn: psycopg.Connection, dsn: str, standby: EmbeddedServer, tmp_path: Path
) -> None:
    many(conn, 3)
    dbname = conn.info.dbname
    _wait_replayed(dsn, standby, dbname)
    time.sleep(1.5)
    replica_dsn = standby.dsn(dbname)
    env = {**os.environ, "DATABASE_URL": replica_dsn}
    for name in ("inspect", "preview"):
        done = execute(name, {}, tmp_path, env=env)
        assert done.ok, done.error
    assert done.record is not None and len(done.record["outcome"]["preview"]["ids"]) == 3
    with psycopg.connect(replica_dsn, autocommit=True) as replica:
        with pytest.raises(ReadOnlyError, match="read-only standby"):
            sweep(replica, Target(), options(**LIVE))
    assert set(statuses(conn).values()) == {"queued"}


@pytest.fixture
def sweeper_role(conn: psycopg.Connection, dsn: str) -> Iterator[str]:
    """The DSN of the least-privilege sweeper role, with exactly its documented grants."""
    yield create_roles(conn, dsn)["rb_sweeper"]
    drop_roles(conn)


def _as(role: str, dsn: str, request: pytest.FixtureRequest) -> str:
    """The DSN to sweep with: the superuser's, or the least-privilege sweeper's."""
    return dsn if role == "superuser" else str(request.getfixturevalue("sweeper_role"))


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


def test_kernel_sigkilled_mid_sweep_then_rerun(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    many(conn, 60)
    before, cands = state(conn), candidates_of(conn)
    env = {**os.environ, "DATABASE_URL": dsn}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbook", "run", "sweep", "-p", "dry_run", "False", "-p", "batch_size", "4",
         "-r", "run_id", "kernel-killed", "--run-dir", str(tmp_path)],
        env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    # Slow the sweep down from outside: a short sleep per UPDATE statement.
    conn.execute("CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$")
    conn.execute(f"CREATE TRIGGER nap BEFORE UPDATE ON {TABLE} FOR EACH STATEMENT EXECUTE FUNCTION nap()")
    deadline = time.monotonic() + 60
    while conn.execute("SELECT count(*) FROM litellm_runbook.batches").fetchone()[0] < 3 if _ledger_exists(conn) else True:  # type: ignore[index]
        assert time.monotonic() < deadline, "the sweep never got going"
        time.sleep(0.05)
    kernels = [p for p in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert kernels
    for kernel in kernels:
        kernel.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode != 0
    conn.execute(f"DROP TRIGGER nap ON {TABLE}")
    time.sleep(0.3)
    swept = assert_consistent(conn, before, cands)
    assert 0 < len(swept) < 60
    result = sweep(conn, Target(), options(batch_size=4, **LIVE), run_id="kernel-killed")
    assert result.stop_reason == "done" and result.changed == 60 - len(swept)
    assert assert_consistent(conn, before, cands) == cands


def _ledger_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('litellm_runbook.batches') IS NOT NULL").fetchone() == (True,)


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
    from runbook.ops.undo import undo

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


def test_sessions_waiting_on_the_table_pause_an_undo(conn: psycopg.Connection, dsn: str) -> None:
    from runbook.ops.undo import undo

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


def test_a_dba_cancel_stops_an_undo_at_once(conn: psycopg.Connection, dsn: str) -> None:
    from runbook.ops.undo import undo

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
