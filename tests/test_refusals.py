"""A run that must not happen is refused before anything is written: a read-only session or
standby, more candidates than max_rows, no ledger, a run id that names another run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from runbook import Target, options, sweep
from runbook.db.embedded import EmbeddedServer
from runbook.errors import LedgerUnavailableError, ParameterError, ReadOnlyError, TooManyCandidatesError
from runbook.ops.undo import undo
from runbook.tools.runner import execute
from tests.rows import insert, many, state, statuses
from tests.runs import LIVE

# -- read-only ---------------------------------------------------------------------------


def test_sweep_refuses_on_read_only_session(conn: psycopg.Connection, dsn: str) -> None:
    insert(conn, status="queued", age_days=10)
    before = state(conn)
    with psycopg.connect(dsn, autocommit=True, options="-c default_transaction_read_only=on") as ro:
        with pytest.raises(ReadOnlyError, match="default_transaction_read_only is on"):
            sweep(ro, Target(), options(**LIVE))
        assert sweep(ro, Target(), options()).candidates_at_start == 1  # the dry run still works
    assert state(conn) == before


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


# -- too many candidates, no ledger ------------------------------------------------------


def test_max_rows_refuses_before_anything_is_written(conn: psycopg.Connection) -> None:
    for i in range(5):
        insert(conn, status="queued", age_days=10 + i)
    before = state(conn)
    with pytest.raises(TooManyCandidatesError, match="5 candidates exceed max_rows=4"):
        sweep(conn, Target(), options(max_rows=4, **LIVE), run_id="capped")
    with pytest.raises(TooManyCandidatesError):
        sweep(conn, Target(), options(max_rows=4))  # the dry run says so too
    assert state(conn) == before
    assert conn.execute("SELECT count(*) FROM litellm_runbook.batches").fetchone() == (0,)
    assert conn.execute("SELECT stop_reason FROM litellm_runbook.runs WHERE run_id = 'capped'").fetchone() == ("failed",)


def test_no_sweep_without_a_ledger(conn: psycopg.Connection, dsn: str) -> None:
    insert(conn, status="queued", age_days=10)
    conn.execute("DROP ROLE IF EXISTS runbook_sweeper")
    conn.execute("CREATE ROLE runbook_sweeper LOGIN")
    conn.execute('GRANT SELECT, UPDATE ON "LiteLLM_ManagedObjectTable" TO runbook_sweeper')
    conn.execute("REVOKE CREATE ON DATABASE {} FROM PUBLIC".format(conn.info.dbname))  # noqa: S608 - test set-up
    before = state(conn)
    try:
        with psycopg.connect(conninfo.make_conninfo(dsn, user="runbook_sweeper"), autocommit=True) as sweeper:
            with pytest.raises(LedgerUnavailableError) as err:
                sweep(sweeper, Target(), options(allow_blind_health=True, **LIVE))
        assert "role runbook_sweeper cannot create the ledger schema litellm_runbook" in str(err.value)
        assert "GRANT USAGE ON SCHEMA litellm_runbook TO runbook_sweeper" in str(err.value)
        assert state(conn) == before
    finally:
        conn.execute('REVOKE ALL ON "LiteLLM_ManagedObjectTable" FROM runbook_sweeper')
        conn.execute("DROP ROLE runbook_sweeper")


# -- a resumed run id must be the same run -----------------------------------------------


def runs_row(conn: psycopg.Connection, run_id: str) -> tuple[object, ...] | None:
    return conn.execute(
        "SELECT kind, undoes_run_id, parameters, operator, finished_at IS NOT NULL, stop_reason, rows_changed"
        " FROM litellm_runbook.runs WHERE run_id = %s",
        [run_id],
    ).fetchone()


@pytest.mark.parametrize(
    ("first", "second", "was", "now"),
    [
        ({"stale_after_days": 7}, {"stale_after_days": 30}, "stale_after_days=7.0", "stale_after_days=30.0"),
        ({"stale_after_days": 7}, {"cutoff": "2026-01-01T00:00:00Z"}, "cutoff=None, stale_after_days=7.0", "cutoff='2026-01-01T00:00:00Z', stale_after_days=None"),
    ],
)  # fmt: skip
def test_resuming_a_sweep_run_id_with_another_cutoff_is_refused_before_any_write(
    conn: psycopg.Connection, first: dict[str, object], second: dict[str, object], was: str, now: str
) -> None:
    insert(conn, status="queued", age_days=400)
    sweep(conn, Target(), options(**first, **LIVE), run_id="same-id")
    insert(conn, status="queued", age_days=500)
    before, ledger_before = state(conn), runs_row(conn, "same-id")
    with pytest.raises(ParameterError) as err:
        sweep(conn, Target(), options(**second, **LIVE), run_id="same-id")  # type: ignore[arg-type]
    assert str(err.value) == (
        "parameter run_id='same-id' is not allowed: a new id: it names a sweep run on public.LiteLLM_ManagedObjectTable "
        f"in the ledger with {was}, and this run has {now}; a run id is resumed only with the same kind, target, cutoff, "
        "undone run, database role and OS user"
    )
    assert state(conn) == before and runs_row(conn, "same-id") == ledger_before
    assert conn.execute("SELECT count(*) FROM litellm_runbook.batches WHERE run_id = 'same-id'").fetchone() == (1,)


def test_an_undo_run_id_reused_for_another_run_is_refused_and_records_stay_apart(conn: psycopg.Connection) -> None:
    a = insert(conn, status="queued", age_days=30)
    sweep(conn, Target(), options(**LIVE), run_id="run-a")
    b = insert(conn, status="in_progress", age_days=30)
    sweep(conn, Target(), options(**LIVE), run_id="run-b")
    done = undo(conn, Target(), options(**LIVE), of_run_id="run-a", run_id="undo-u")
    assert done.restored == 1
    before, ledger_before = state(conn), runs_row(conn, "undo-u")
    with pytest.raises(ParameterError, match=r"^parameter run_id='undo-u' is not allowed: a new id: it names a undo run on "
                       r"public\.LiteLLM_ManagedObjectTable in the ledger with undoes_run_id='run-a', and this run has "
                       r"undoes_run_id='run-b';"):  # fmt: skip
        undo(conn, Target(), options(**LIVE), of_run_id="run-b", run_id="undo-u")
    assert state(conn) == before and runs_row(conn, "undo-u") == ledger_before
    assert statuses(conn) == {a: "queued", b: "stale_expired"}
    # A sweep's run id is not an undo's either.
    with pytest.raises(ParameterError, match=r"with kind='sweep', stale_after_days=7\.0, undoes_run_id=None, "
                       r"and this run has kind='undo', stale_after_days=None, undoes_run_id='run-a';"):  # fmt: skip
        undo(conn, Target(), options(**LIVE), of_run_id="run-a", run_id="run-b")
    assert state(conn) == before


def test_resuming_as_another_database_role_is_refused(conn: psycopg.Connection) -> None:
    insert(conn, status="queued", age_days=30)
    sweep(conn, Target(), options(workers=1, **LIVE), run_id="by-role")
    insert(conn, status="queued", age_days=40)
    conn.execute("DROP ROLE IF EXISTS rb_other")
    conn.execute("CREATE ROLE rb_other SUPERUSER NOLOGIN")
    before = state(conn)
    try:
        conn.execute("SET ROLE rb_other")
        with pytest.raises(ParameterError, match=r"with current_user='postgres', and this run has current_user='rb_other';"):
            sweep(conn, Target(), options(workers=1, **LIVE), run_id="by-role")
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP OWNED BY rb_other")
        conn.execute("DROP ROLE rb_other")
    assert state(conn) == before
