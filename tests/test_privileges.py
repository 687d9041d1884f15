"""Each notebook runs with exactly the documented grants, and not with less."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from runbook import Target
from runbook.tools.runner import execute
from tests.roles import create_roles, drop_roles
from tests.rows import insert, state, statuses


@pytest.fixture
def roles(conn: psycopg.Connection, dsn: str) -> Iterator[dict[str, str]]:
    """Three login roles with nothing but the documented grants; PUBLIC's defaults revoked."""
    yield create_roles(conn, dsn)
    drop_roles(conn)


def test_each_notebook_with_exactly_its_grants(conn: psycopg.Connection, roles: dict[str, str], tmp_path: Path) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(5)]
    fresh = insert(conn, status="queued", age_days=1)

    def run(name: str, role: str, **params: object) -> object:
        return execute(name, params, tmp_path, env={**os.environ, "DATABASE_URL": roles[role]})

    for name in ("inspect", "preview"):
        done = run(name, "rb_reader")
        assert done.ok, done.error  # type: ignore[attr-defined]
    dry = run("sweep", "rb_reader")
    assert dry.ok and dry.record["outcome"]["sweep"]["stop_reason"] == "dry_run"  # type: ignore[attr-defined]

    before = state(conn)
    refused = run("sweep", "rb_reader", dry_run=False)
    assert not refused.ok and "ReadOnlyError: role rb_reader may not UPDATE" in refused.error  # type: ignore[attr-defined]
    assert state(conn) == before

    swept = run("sweep", "rb_sweeper", dry_run=False, batch_size=2, run_id="least-priv")
    assert swept.ok, swept.error  # type: ignore[attr-defined]
    assert statuses(conn) == {**{k: "stale_expired" for k in ids}, fresh: "queued"}
    assert conn.execute("SELECT count(*) FROM litellm_runbook.changes WHERE run_id = 'least-priv'").fetchone() == (5,)
    # The sealed notebook's checksum reached the ledger, under row security too.
    sealed = conn.execute("SELECT sha256 FROM litellm_runbook.records WHERE run_id = 'least-priv'").fetchone()
    assert sealed == (swept.sha256,)  # type: ignore[attr-defined]

    undo_dry = run("undo", "rb_reader", run_id="least-priv")
    assert undo_dry.ok, undo_dry.error  # type: ignore[attr-defined]
    assert undo_dry.record["outcome"]["undo"]["restorable"] == 5  # type: ignore[attr-defined]
    undone = run("undo", "rb_sweeper", run_id="least-priv", dry_run=False)
    assert undone.ok, undone.error  # type: ignore[attr-defined]
    assert set(statuses(conn).values()) == {"queued"}


def test_sweeper_without_temp_privilege_is_told_what_to_grant(conn: psycopg.Connection, roles: dict[str, str]) -> None:
    insert(conn, status="queued", age_days=10)
    conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM rb_sweeper").format(sql.Identifier(conn.info.dbname)))
    from runbook import options, sweep
    from runbook.errors import ReadOnlyError

    before = state(conn)
    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
        with pytest.raises(ReadOnlyError, match=r"may not create temporary tables .* \(GRANT TEMPORARY ON DATABASE"):
            sweep(c, Target(), options(dry_run=False))
    assert state(conn) == before


def test_sweeper_allowed_one_connection_writes_one_batch_at_a_time(
    conn: psycopg.Connection, roles: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(5)]
    conn.execute("ALTER ROLE rb_sweeper CONNECTION LIMIT 1")
    from runbook import options, sweep

    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
        result = sweep(c, Target(), options(batch_size=2, workers=2, dry_run=False))
    assert result.stop_reason == "done" and [b.selected for b in result.batches] == [2, 2, 1]
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(ids)
    out = caplog.text
    assert "could not open writing connection 2 (" in out and "too many connections for role" in out
    assert "writing 1 batch(es) at a time" in out


TABLE = '"LiteLLM_ManagedObjectTable"'


def _denied(dsn: str, statement: str, params: list[object] | None = None) -> str:
    """The InsufficientPrivilege message ``statement`` gets as the role of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            c.execute(statement, params)
    return str(err.value.diag.message_primary)


def test_roles_cannot_read_payloads_or_write_other_columns(conn: psycopg.Connection, roles: dict[str, str]) -> None:
    key = insert(conn, status="queued", age_days=10)
    before = state(conn)
    for role in ("rb_reader", "rb_sweeper"):
        assert _denied(roles[role], f"SELECT file_object FROM {TABLE}") == "permission denied for table LiteLLM_ManagedObjectTable"
        assert _denied(roles[role], f"SELECT * FROM {TABLE}") == "permission denied for table LiteLLM_ManagedObjectTable"
        with psycopg.connect(roles[role], autocommit=True) as c:  # the four columns the rule reads
            assert c.execute(f"SELECT id, status, created_at, file_purpose FROM {TABLE}").fetchall() == [
                (key, "queued", before[key][5], "response")
            ]
    sweeper = roles["rb_sweeper"]
    assert _denied(sweeper, f"UPDATE {TABLE} SET file_purpose = 'batch'") == "permission denied for table LiteLLM_ManagedObjectTable"
    assert _denied(sweeper, f"DELETE FROM {TABLE}") == "permission denied for table LiteLLM_ManagedObjectTable"
    assert _denied(sweeper, f"INSERT INTO {TABLE} (id) VALUES ('x')") == "permission denied for table LiteLLM_ManagedObjectTable"
    assert _denied(roles["rb_reader"], f"UPDATE {TABLE} SET status = 'x'") == "permission denied for table LiteLLM_ManagedObjectTable"
    assert state(conn) == before
    memberships = conn.execute(
        "SELECT pg_has_role('rb_sweeper', 'pg_read_all_stats', 'MEMBER'), pg_has_role('rb_sweeper', 'pg_monitor', 'MEMBER'),"
        " pg_has_role('rb_reader', 'pg_read_all_stats', 'MEMBER')"
    ).fetchone()
    assert memberships == (True, False, False)


def test_sweeper_cannot_rewrite_other_runs_ledger_rows(conn: psycopg.Connection, roles: dict[str, str]) -> None:
    from runbook import options, sweep
    from runbook.db.lock import target_lock

    insert(conn, status="queued", age_days=10)
    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
        assert sweep(c, Target(), options(dry_run=False), run_id="earlier").stop_reason == "done"
    ledger_before = [
        conn.execute(f"SELECT * FROM litellm_runbook.{t} ORDER BY 1, 2").fetchall() for t in ("runs", "batches", "changes")
    ]
    assert ledger_before[0][0][0] == "earlier" and ledger_before[0][0][8] == "done"
    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
        # Row security: another run's row is not there to update, even while this session
        # holds a sweep lock (of another schema's table), nor without any lock.
        assert c.execute("UPDATE litellm_runbook.runs SET stop_reason = 'forged' WHERE run_id = 'earlier'").rowcount == 0
        with target_lock(c, Target(schema="elsewhere")):
            assert c.execute("UPDATE litellm_runbook.runs SET outcome = NULL").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='new row violates row-level security policy for table "runs"'):
            c.execute("INSERT INTO litellm_runbook.runs (run_id, kind, target) VALUES ('forged', 'sweep', 'public.LiteLLM_ManagedObjectTable')")
    sweeper = roles["rb_sweeper"]
    for table in ("batches", "changes", "records"):
        assert _denied(sweeper, f"UPDATE litellm_runbook.{table} SET run_id = 'forged'") == f"permission denied for table {table}"
        assert _denied(sweeper, f"DELETE FROM litellm_runbook.{table}") == f"permission denied for table {table}"
    assert _denied(sweeper, "DELETE FROM litellm_runbook.runs") == "permission denied for table runs"
    assert _denied(roles["rb_reader"], "UPDATE litellm_runbook.runs SET stop_reason = 'forged'") == "permission denied for table runs"
    assert [
        conn.execute(f"SELECT * FROM litellm_runbook.{t} ORDER BY 1, 2").fetchall() for t in ("runs", "batches", "changes")
    ] == ledger_before


BLIND = (
    "health: role rb_sweeper cannot see replication lag (pg_stat_replication.replay_lsn is NULL for other roles' "
    "walsenders: lag would read 0); VACUUM (pg_stat_progress_vacuum.relid is NULL for other roles' sessions, "
    "autovacuum's included: no VACUUM would pause the sweep). GRANT pg_read_all_stats TO rb_sweeper to see them"
)


def test_sweeper_blind_to_health_is_refused_unless_allowed_and_then_says_so(
    conn: psycopg.Connection, roles: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from runbook import options, sweep
    from runbook.errors import BlindHealthError

    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(3)]
    conn.execute("REVOKE pg_read_all_stats FROM rb_sweeper")
    before = state(conn)
    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
        with pytest.raises(BlindHealthError) as err:
            sweep(c, Target(), options(dry_run=False), run_id="blind")
        assert str(err.value) == (
            BLIND + ", or pass allow_blind_health=True to run without those pauses. Refused before the first batch: nothing written."
        )
        # Without pause_during_vacuum the VACUUM signal is not needed: only lag is blind.
        with pytest.raises(BlindHealthError, match=r"cannot see replication lag \(.*lag would read 0\)\. GRANT"):
            sweep(c, Target(), options(dry_run=False, pause_during_vacuum=False), run_id="blind")
        dry = sweep(c, Target(), options())
        assert dry.health_blind == [BLIND + "; a live run will refuse unless allow_blind_health=True."]
    assert state(conn) == before
    assert conn.execute("SELECT count(*) FROM litellm_runbook.runs").fetchone() == (0,)
    caplog.clear()

    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
        result = sweep(c, Target(), options(dry_run=False, allow_blind_health=True), run_id="blind-ok")
    said = BLIND + "; allow_blind_health=True: going on without those pauses."
    assert result.stop_reason == "done" and result.changed == 3 and result.health_blind == [said]
    assert said in caplog.messages
    assert conn.execute("SELECT outcome->'health_blind' FROM litellm_runbook.runs WHERE run_id = 'blind-ok'").fetchone() == ([said],)
    assert statuses(conn) == {k: "stale_expired" for k in ids}

    from runbook.ops.undo import undo

    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:  # undo checks the same, before its first batch
        with pytest.raises(BlindHealthError) as undo_err:
            undo(c, Target(), options(dry_run=False), of_run_id="blind-ok")
        assert str(undo_err.value) == str(err.value)
        assert statuses(conn) == {k: "stale_expired" for k in ids}
        undone = undo(c, Target(), options(dry_run=False, allow_blind_health=True), of_run_id="blind-ok")
    assert undone.stop_reason == "done" and undone.restored == 3 and undone.health_blind == [said]
    assert statuses(conn) == {k: "queued" for k in ids}

    # The notebook: refused, then allowed, and the record says which signals were blind.
    env = {**os.environ, "DATABASE_URL": roles["rb_sweeper"]}
    refused = execute("sweep", {"dry_run": False}, tmp_path, env=env)
    assert not refused.ok and refused.error == "BlindHealthError: " + str(err.value)
    allowed = execute("sweep", {"dry_run": False, "allow_blind_health": True}, tmp_path, env=env)
    assert allowed.ok, allowed.error
    assert allowed.record is not None and allowed.record["outcome"]["sweep"]["health_blind"] == [said]
    assert set(statuses(conn).values()) == {"stale_expired"}
    # The undo notebook takes the same health parameters: a blind role can undo too.
    swept_id = allowed.record["run_id"]
    refused_undo = execute("undo", {"run_id": swept_id, "dry_run": False}, tmp_path, env=env)
    assert not refused_undo.ok and refused_undo.error == "BlindHealthError: " + str(err.value)
    undone_nb = execute("undo", {"run_id": swept_id, "dry_run": False, "allow_blind_health": True}, tmp_path, env=env)
    assert undone_nb.ok, undone_nb.error
    assert set(statuses(conn).values()) == {"queued"}
