"""Which database the runbook talks to, and that no password ever leaves the environment."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
import pytest
from IPython.lib.pretty import pretty
from psycopg import conninfo

import runbook.notebook.run as rb
from runbook.db.connect import Database, connect, redact, resolve
from runbook.errors import DatabaseConfigError


def test_database_url_wins_and_prisma_parameters_are_stripped() -> None:
    db = resolve({"DATABASE_URL": "postgresql://llm:pw@db.internal:6432/litellm?schema=public&connection_limit=5&sslmode=require", "PGHOST": "other"})
    assert db.source == "DATABASE_URL"
    assert "schema=" not in db.dsn and "connection_limit" not in db.dsn and "sslmode=require" in db.dsn
    assert db.describe() == "llm@db.internal:6432/litellm, schema public (DATABASE_URL)"
    assert "pw" not in db.describe()
    assert (db.schema, db.pgbouncer) == ("public", False)


def test_prisma_schema_and_pgbouncer_options_are_kept_apart_from_the_dsn() -> None:
    db = resolve({"DATABASE_URL": "postgresql://llm@db:5432/litellm?schema=tenant2&pgbouncer=true&sslmode=require"})
    assert (db.schema, db.pgbouncer) == ("tenant2", True)
    assert db.dsn == "postgresql://llm@db:5432/litellm?sslmode=require"
    assert db.describe() == "llm@db:5432/litellm, schema tenant2, through PgBouncer (pgbouncer=true) (DATABASE_URL)"
    assert resolve({"DATABASE_URL": "postgresql://llm@db/litellm?schema="}).schema == "public"
    socket = resolve({"DATABASE_URL": "postgresql:///litellm?host=%2Frun%2Fpg&schema=tenant2"})
    assert (socket.dsn, socket.schema) == ("postgresql:///litellm?host=%2Frun%2Fpg", "tenant2")
    assert resolve({"DATABASE_URL": "postgresql://llm@db/litellm?pgbouncer=false"}).pgbouncer is False


@pytest.mark.parametrize("schema", ["tenant-2", "a;b", "x" * 64, "2fast", "t%C3%A9"])
def test_a_schema_option_that_is_not_a_plain_sql_name_is_refused(schema: str) -> None:
    with pytest.raises(DatabaseConfigError) as err:
        resolve({"DATABASE_URL": f"postgresql://llm@db/litellm?schema={schema}"})
    shown = schema.replace("%C3%A9", "\xe9")
    assert str(err.value) == (
        f"DATABASE_URL's schema option '{shown}' is not allowed: "
        "a SQL name of 1-63 ASCII letters, digits or '_', not starting with a digit"
    )


def test_pg_environment_is_used_when_no_database_url() -> None:
    assert resolve({"PGHOST": "db", "PGDATABASE": "litellm"}) == Database("", "PG* environment")


def test_redact_drops_password_from_dsn_and_url() -> None:
    assert redact("host=h port=1 user=u password=secret dbname=d") == "u@h:1/d"
    assert "secret" not in redact("postgresql://u:secret@h/d")


def test_unreachable_server_error_names_it_without_password() -> None:
    db = Database("host=127.0.0.1 port=9 user=u password=topsecret dbname=d connect_timeout=2", "DATABASE_URL")
    with pytest.raises(DatabaseConfigError) as err:
        connect(db)
    assert "u@127.0.0.1:9/d" in str(err.value) and "topsecret" not in str(err.value)


def test_invalid_database_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseConfigError, match="DATABASE_URL is not a valid PostgreSQL URL"):
        resolve({"DATABASE_URL": "postgresql://u:p@h/d?bogus_option=1"})


def test_connections_pin_search_path_and_keep_the_dsns_own_options(dsn: str) -> None:
    from runbook.db.workers import Workers

    db = Database(conninfo.make_conninfo(dsn, options="-c statement_timeout=7s"), "DATABASE_URL")
    with connect(db) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,pg_temp",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("7s",)
        with Workers[None](conn, 2) as pool:
            assert pool.capacity() == 2
            helper = pool._helpers[0]  # the writing connection copies the caller's settings
            assert helper.execute("SHOW search_path").fetchone() == ("pg_catalog,pg_temp",)


def test_pgbouncer_url_pins_search_path_in_each_read_only_transaction(dsn: str) -> None:
    from runbook.db.transactions import read_only

    db = Database(dsn, "DATABASE_URL", pgbouncer=True)  # PgBouncer refuses startup options
    with connect(db) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        with read_only(conn):
            assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog, pg_temp",)


HOSTILE = [
    # Better matches than pg_catalog's hashtextextended(text, bigint) and pg_has_role(name,
    # name, text) for calls the runbook writes unqualified (the ledger's creation lock, the
    # health visibility check): on a default search_path they win.
    "CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION 'hijacked: public.hashtextextended'; END $$",
    "CREATE FUNCTION public.pg_has_role(name, text, text) RETURNS boolean LANGUAGE plpgsql"
    " AS $$ BEGIN RAISE EXCEPTION 'hijacked: public.pg_has_role'; END $$",
]


def test_functions_planted_in_public_are_never_called(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    from runbook.tools.runner import execute
    from tests.rows import insert, statuses

    for statement in HOSTILE:
        conn.execute(statement)
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(3)]
    # The trap is armed: a session with the default search_path calls them.
    with psycopg.connect(dsn, autocommit=True) as plain:
        with pytest.raises(psycopg.errors.RaiseException, match="hijacked: public.hashtextextended"):
            plain.execute("SELECT hashtextextended(%s, 0)", ["x"])
        with pytest.raises(psycopg.errors.RaiseException, match="hijacked: public.pg_has_role"):
            plain.execute("SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")
    env = {**os.environ, "DATABASE_URL": dsn}
    swept = execute("sweep", {"dry_run": False, "run_id": "pinned"}, tmp_path, env=env)  # creates the ledger
    assert swept.ok, swept.error
    assert statuses(conn) == {k: "stale_expired" for k in ids}
    undone = execute("undo", {"dry_run": False, "run_id": "pinned"}, tmp_path, env=env)
    assert undone.ok, undone.error
    assert statuses(conn) == {k: "queued" for k in ids}


def url(dsn: str, **query: str) -> str:
    """``dsn`` as the postgresql:// URL LiteLLM's DATABASE_URL is, with Prisma's options."""
    info = conninfo.conninfo_to_dict(dsn)
    host = quote(str(info["host"]), safe="")  # a socket folder, percent-encoded as libpq reads it
    return f"postgresql://{info['user']}@{host}:{info['port']}/{info['dbname']}" + (f"?{urlencode(query)}" if query else "")


POOLER = (
    "PoolerError: a live sweep or undo of public.LiteLLM_ManagedObjectTable refused: DATABASE_URL has pgbouncer=true "
    "(PgBouncer in transaction mode), which breaks the session advisory lock (one sweep per table) and the session "
    "temp table (the candidate snapshot). Refused before its first batch: no row was changed. Connect directly to "
    "PostgreSQL, or through PgBouncer in session pooling mode (without pgbouncer=true), for a live sweep or undo; "
    "inspect, preview and dry runs work as they are."
)


def test_pgbouncer_url_refuses_live_sweep_and_undo_but_reads(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    from runbook.tools.runner import execute
    from tests.rows import insert, state, statuses

    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(2)]
    before = state(conn)
    pooled = {**os.environ, "DATABASE_URL": url(dsn, pgbouncer="true")}
    for name in ("inspect", "preview", "sweep"):
        done = execute(name, {}, tmp_path, env=pooled)
        assert done.ok, done.error
    assert done.record is not None and done.record["outcome"]["sweep"]["candidates_at_start"] == 2
    refused = execute("sweep", {"dry_run": False, "run_id": "pooled"}, tmp_path, env=pooled)
    assert not refused.ok and refused.error == POOLER
    assert state(conn) == before
    # Refused before anything: not even the ledger was created through the pooler.
    assert conn.execute("SELECT to_regnamespace('litellm_runbook')").fetchone() == (None,)

    direct = {**os.environ, "DATABASE_URL": url(dsn)}
    assert execute("sweep", {"dry_run": False, "run_id": "direct"}, tmp_path, env=direct).ok
    refused = execute("undo", {"dry_run": False, "run_id": "direct"}, tmp_path, env=pooled)
    assert not refused.ok and refused.error == POOLER
    assert statuses(conn) == {k: "stale_expired" for k in ids}


@pytest.mark.parametrize(
    "url",
    [
        "host=db password=hun ter2 dbname=litellm",  # libpq: missing "=" after "ter2"
        "postgresql://litellm:hun@ter2@127.0.0.1:1/litellm",  # an unescaped '@' in the password
    ],
)
def test_a_malformed_database_url_is_refused_without_showing_any_of_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(DatabaseConfigError) as err:
        resolve()
    assert "ter2" not in str(err.value) and "hun" not in str(err.value)


def test_a_password_with_an_unescaped_at_sign_never_shows_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://litellm:hun@ter2@127.0.0.1:1/litellm")
    with pytest.raises(DatabaseConfigError) as err:
        connect(resolve())
    assert "ter2" not in str(err.value) and "hun" not in str(err.value)
    assert "more than one '@'" in str(err.value)


def test_nothing_displayable_carries_the_database_password(conn: psycopg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conn.execute("ALTER ROLE postgres PASSWORD 'sup3r-s3cret'")  # the server trusts the socket: only carried
    try:
        monkeypatch.setenv("DATABASE_URL", conninfo.make_conninfo(dsn, password="sup3r-s3cret"))
        run = rb.start("inspect", run_id="t-display")
        try:
            shown = [repr(run), str(run.database), repr(run.database), pretty(run), pretty(run.database), repr(run.params)]
            assert all("sup3r-s3cret" not in text for text in shown), shown
            assert "user=postgres" not in repr(run.database) and "(DATABASE_URL)" in repr(run.database)
        finally:
            run.conn.close()
    finally:
        conn.execute("ALTER ROLE postgres PASSWORD NULL")
