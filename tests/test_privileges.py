"""Each notebook runs with exactly the documented grants, and not with less."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from runbook import Target, ledger
from runbook.execute import execute
from runbook.grants import grants_sql, owner_setup_sql
from tests.rows import insert, state, statuses

ROLES = ("rb_owner", "rb_reader", "rb_sweeper")


@pytest.fixture
def roles(conn: psycopg.Connection, dsn: str) -> dict[str, str]:
    """Three login roles with nothing but the documented grants; PUBLIC's defaults revoked."""
    db = conn.info.dbname
    for role in ROLES:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
    for stmt in owner_setup_sql(db, "rb_owner"):
        conn.execute(stmt)
    with psycopg.connect(conninfo.make_conninfo(dsn, user="rb_owner"), autocommit=True) as owner:
        ledger.ensure(owner)
    for stmt in grants_sql(Target(), db, "rb_reader", "rb_sweeper"):
        conn.execute(stmt)
    yield {role: conninfo.make_conninfo(dsn, user=role) for role in ROLES}
    for role in ROLES:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


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
    conn: psycopg.Connection, roles: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(5)]
    conn.execute("ALTER ROLE rb_sweeper CONNECTION LIMIT 1")
    from runbook import options, sweep

    with psycopg.connect(roles["rb_sweeper"], autocommit=True) as c:
        result = sweep(c, Target(), options(batch_size=2, workers=2, dry_run=False))
    assert result.stop_reason == "done" and [b.selected for b in result.batches] == [2, 2, 1]
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(ids)
    out = capsys.readouterr().out
    assert "could not open writing connection 2 (" in out and "too many connections for role" in out
    assert "writing 1 batch(es) at a time" in out
