"""One sweep or undo per table at a time: the sweep holds its lock while it writes, and a second
one stops at once naming the holder, looked up in this database only, even by a role without
pg_read_all_stats."""

from __future__ import annotations

import time

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.db.lock import holder, lock_key, target_lock
from runbook.errors import SweepInProgressError
from tests.roles import create_roles, drop_roles
from tests.rows import insert, state, statuses
from tests.runs import LIVE


def test_a_held_lock_stops_a_second_sweep_at_once_naming_the_holder(conn: psycopg.Connection, dsn: str) -> None:
    insert(conn, status="queued", age_days=10)
    before = state(conn)
    with psycopg.connect(dsn, autocommit=True, application_name="litellm-runbook/sweep/other-run") as holder:
        with target_lock(holder, Target()):
            pid = holder.info.backend_pid
            started = time.monotonic()
            with pytest.raises(SweepInProgressError) as err:
                sweep(conn, Target(), options(**LIVE))
            assert time.monotonic() - started < 2
    assert f"pid {pid} (litellm-runbook/sweep/other-run, user postgres" in str(err.value)
    assert state(conn) == before


def test_the_sweep_holds_its_target_lock_while_it_writes(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(6)]
    key = lock_key(Target())
    refusals: list[str] = []
    free: list[bool] = []

    def another_sweep_meanwhile(result: object, batch: object) -> None:
        with psycopg.connect(dsn, autocommit=True) as other:
            free.append(bool(other.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]))  # type: ignore[index]
            other.execute("SELECT pg_advisory_unlock_all()")
            try:
                sweep(other, Target(), options(**LIVE))
            except SweepInProgressError as exc:
                refusals.append(str(exc))

    with psycopg.connect(dsn, autocommit=True, application_name="first-sweep") as first:
        pid = first.info.backend_pid
        result = sweep(first, Target(), options(batch_size=2, workers=1, **LIVE), run_id="holder", on_batch=another_sweep_meanwhile)
    assert result.stop_reason == "done" and result.changed == 6
    assert free == [False, False, False]
    assert len(refusals) == 3 and all(
        m.startswith(f"another sweep or undo of public.LiteLLM_ManagedObjectTable is running: pid {pid} (first-sweep, user postgres, from local, connected since ")
        and m.endswith("Nothing was written; wait for it to finish or stop it.") for m in refusals
    )
    assert statuses(conn) == {k: "stale_expired" for k in ids}
    assert conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone() == (True,)  # released at the end
    conn.execute("SELECT pg_advisory_unlock_all()")


def test_lock_holder_is_looked_up_in_this_database_only(conn: psycopg.Connection, admin_dsn: str) -> None:
    key = lock_key(Target())
    ids = [insert(conn, status="queued", age_days=10)]
    with psycopg.connect(admin_dsn, autocommit=True) as elsewhere:  # the same key, in database postgres
        elsewhere.execute("SELECT pg_advisory_lock(%s)", [key])
        assert holder(conn, key) == "a session that has just finished"
        assert sweep(conn, Target(), options(**LIVE)).changed == 1  # advisory locks are per database
    assert statuses(conn) == {ids[0]: "stale_expired"}


def test_lock_holder_seen_by_a_role_without_pg_read_all_stats(conn: psycopg.Connection, dsn: str) -> None:
    roles = create_roles(conn, dsn)
    try:
        conn.execute("REVOKE pg_read_all_stats, pg_monitor FROM rb_sweeper")  # (older grants gave pg_monitor)
        insert(conn, status="queued", age_days=10)
        before = state(conn)
        with psycopg.connect(dsn, autocommit=True, application_name="dba-sweep") as other, target_lock(other, Target()):
            named = f"pid {other.info.backend_pid} (dba-sweep, user postgres, from unknown (not visible to this role), connected since unknown)"
            with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
                assert holder(c, lock_key(Target())) == named
                with pytest.raises(SweepInProgressError) as err:
                    sweep(c, Target(), options(allow_blind_health=True, **LIVE))
        assert str(err.value) == (
            f"another sweep or undo of public.LiteLLM_ManagedObjectTable is running: {named}. "
            "Nothing was written; wait for it to finish or stop it."
        )
        assert state(conn) == before
    finally:
        drop_roles(conn)
