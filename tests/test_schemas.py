"""One database, LiteLLM's schema migrated twice (``public`` and ``tenant2``), as deployments
sharing a database do with Prisma's ``?schema=``: the runbook works on the named schema only."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import nbformat
import psycopg
import pytest
from psycopg import conninfo, sql

from runbook import Target, options, sweep
from runbook.db.embedded import bundled_bin
from runbook.db.lock import lock_key, target_lock
from runbook.errors import SweepInProgressError, UnknownRunError
from runbook.ops.undo import undo
from runbook.tools.migrations import apply_migrations
from runbook.tools.runner import execute
from tests.fix_db import TEMPLATE
from tests.rows import insert, state, statuses

TENANT = "tenant2"


@pytest.fixture(scope="module")
def two_schemas(admin_dsn: str) -> Iterator[str]:
    """A template database with LiteLLM's migrations applied in public and in tenant2.

    LiteLLM's migrations look constraints up by name in the whole database, so they cannot
    run twice in one: tenant2 is migrated alone in a scratch database, then copied over
    (pg_dump -n tenant2) into a copy of the tests' template (public, migrated)."""
    name, scratch = f"two_schemas_{os.getpid()}", f"tenant2_only_{os.getpid()}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    dsn, scratch_dsn = (conninfo.make_conninfo(admin_dsn, dbname=n) for n in (name, scratch))
    with psycopg.connect(scratch_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(TENANT)))
    apply_migrations(conninfo.make_conninfo(scratch_dsn, options=f"-c search_path={TENANT}"))
    dump = subprocess.run(
        [str(bundled_bin() / "pg_dump"), "-n", TENANT, "--no-owner", "-d", scratch_dsn], capture_output=True, text=True, check=True
    ).stdout
    subprocess.run(
        [str(bundled_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn], input=dump, capture_output=True, text=True, check=True
    )
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(scratch)))
    yield name
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db(admin_dsn: str, two_schemas: str, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"{two_schemas}_{request.node.name[:20].lower()}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(two_schemas)))
    yield conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def in_schema(dsn: str, schema: str) -> psycopg.Connection:
    """A connection whose unqualified names (the test helpers') are the tables of ``schema``."""
    return psycopg.connect(conninfo.make_conninfo(dsn, options=f"-c search_path={schema}"), autocommit=True)


def url(dsn: str, **query: str) -> str:
    """``dsn`` as the postgresql:// URL LiteLLM's DATABASE_URL is, with Prisma's options."""
    info = conninfo.conninfo_to_dict(dsn)
    host = quote(str(info["host"]), safe="")  # a socket folder, percent-encoded as libpq reads it
    return f"postgresql://{info['user']}@{host}:{info['port']}/{info['dbname']}" + (f"?{urlencode(query)}" if query else "")


def first_output_line(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain")
            if text:
                return str(text).splitlines()[0]
    raise AssertionError("no output")


def test_schema_option_sweeps_and_undoes_that_schema_only(db: str, tmp_path: Path) -> None:
    with in_schema(db, "public") as pub, in_schema(db, TENANT) as ten, psycopg.connect(db, autocommit=True) as admin:
        public_ids = [insert(pub, status="queued", age_days=10 + i) for i in range(4)]
        tenant_ids = [insert(ten, status="in_progress", age_days=20 + i) for i in range(5)]
        fresh = insert(ten, status="queued", age_days=1)
        public_before = state(pub)
        env = {**os.environ, "DATABASE_URL": url(db, schema=TENANT)}

        seen = execute("inspect", {}, tmp_path, env=env)
        assert seen.ok, seen.error
        assert seen.record is not None and seen.record["outcome"]["inspect"]["candidates"] == 5
        assert "schema tenant2" in first_output_line(seen.path)

        # The public table's sweep lock is held: a tenant2 sweep does not wait for it.
        with psycopg.connect(db, autocommit=True) as other, target_lock(other, Target()):
            done = execute("sweep", {"dry_run": False, "batch_size": 2, "run_id": "t2"}, tmp_path, env=env)
        assert done.ok, done.error
        assert first_output_line(done.path).startswith("run t2 · sweep · database ")
        assert ", schema tenant2 (DATABASE_URL)" in first_output_line(done.path)
        assert done.record is not None and done.record["target"]["schema"] == TENANT
        assert done.record["target"]["table"] == "tenant2.LiteLLM_ManagedObjectTable"
        assert done.record["outcome"]["sweep"]["changed"] == 5
        assert state(pub) == public_before  # byte for byte, every column
        assert statuses(ten) == {**{k: "stale_expired" for k in tenant_ids}, fresh: "queued"}
        assert admin.execute("SELECT run_id, kind, target FROM litellm_runbook.runs").fetchall() == [
            ("t2", "sweep", "tenant2.LiteLLM_ManagedObjectTable")
        ]
        logged = admin.execute("SELECT object_id FROM litellm_runbook.changes WHERE run_id = 't2'").fetchall()
        assert sorted(r[0] for r in logged) == sorted(tenant_ids)

        undone = execute("undo", {"dry_run": False, "run_id": "t2"}, tmp_path, env=env)
        assert undone.ok, undone.error
        assert statuses(ten) == {**{k: "in_progress" for k in tenant_ids}, fresh: "queued"}
        assert state(pub) == public_before
        assert set(public_ids) <= set(public_before)


def test_the_lock_and_undo_belong_to_the_schema(db: str, tmp_path: Path) -> None:
    tenant = Target(schema=TENANT)
    assert lock_key(tenant) != lock_key(Target())
    with in_schema(db, TENANT) as ten, psycopg.connect(db, autocommit=True) as conn:
        ids = [insert(ten, status="queued", age_days=10 + i) for i in range(2)]
        before = state(ten)
        env = {**os.environ, "DATABASE_URL": url(db, schema=TENANT)}
        with psycopg.connect(db, autocommit=True) as other, target_lock(other, tenant):
            refused = execute("sweep", {"dry_run": False}, tmp_path, env=env)
            with pytest.raises(SweepInProgressError, match=r"^another sweep or undo of tenant2\.LiteLLM_ManagedObjectTable is running: pid "):
                sweep(conn, tenant, options(dry_run=False))
        assert not refused.ok and refused.error is not None
        assert refused.error.startswith("SweepInProgressError: another sweep or undo of tenant2.LiteLLM_ManagedObjectTable is running")
        assert state(ten) == before

        sweep(conn, tenant, options(dry_run=False), run_id="t2-run")
        assert statuses(ten) == {k: "stale_expired" for k in ids}
        with pytest.raises(UnknownRunError) as err:
            undo(conn, Target(), options(dry_run=False), of_run_id="t2-run")
        assert str(err.value) == (
            "run_id='t2-run' swept tenant2.LiteLLM_ManagedObjectTable, not public.LiteLLM_ManagedObjectTable: "
            "undo it on the schema it swept (DATABASE_URL's ?schema= option)"
        )
        assert statuses(ten) == {k: "stale_expired" for k in ids}
