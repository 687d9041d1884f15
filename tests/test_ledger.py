"""What the ledger records: each batch's rows, written with the work; who ran it (database roles
beside the OS user); a ledger left by an older version, upgraded once; and the run record a
command-line run of sweep and undo leaves."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from runbook import Target, options, sweep
from runbook.audit.record import read_record
from runbook.db import ledger
from runbook.errors import LedgerUnavailableError, ParameterError
from runbook.ops.undo import undo
from runbook.tools.runner import execute
from tests.rows import insert, state, statuses
from tests.runs import LIVE, ledger_batches

ROOT = Path(__file__).resolve().parent.parent


def test_ledger_matches_the_rows_changed_batch_by_batch(conn: psycopg.Connection) -> None:
    ids = [insert(conn, status=("queued", "in_progress", "incomplete")[i % 3], age_days=30 - i) for i in range(8)]
    before = statuses(conn)
    changed_per_batch: list[set[str]] = []
    seen = dict(before)

    def watch(result: object, batch: object) -> None:
        now = statuses(conn)
        changed_per_batch.append({k for k in now if now[k] != seen[k]})
        seen.update(now)

    # One batch at a time, so that each batch's changes can be seen alone between batches.
    result = sweep(conn, Target(), options(batch_size=3, workers=1, **LIVE), run_id="ledger-1", on_batch=watch)
    assert result.run_id == "ledger-1" and [b.number for b in result.batches] == [1, 2, 3]
    assert ledger_batches(conn, "ledger-1") == {1: changed_per_batch[0], 2: changed_per_batch[1], 3: changed_per_batch[2]}
    assert changed_per_batch[0] == set(ids[:3])  # oldest first
    previous = dict(conn.execute("SELECT object_id, previous_status FROM litellm_runbook.changes WHERE run_id = 'ledger-1'").fetchall())
    assert previous == before
    assert conn.execute("SELECT batch, rows_changed FROM litellm_runbook.batches WHERE run_id = 'ledger-1' ORDER BY batch").fetchall() == [(1, 3), (2, 3), (3, 2)]
    assert conn.execute("SELECT kind, stop_reason, rows_changed FROM litellm_runbook.runs WHERE run_id = 'ledger-1'").fetchone() == ("sweep", "done", 8)


def test_the_ledger_records_the_database_roles_beside_the_os_user(conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    insert(conn, status="queued", age_days=30)
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    ledger.ensure(conn)  # owned by postgres, as in the set-up the README describes
    conn.execute("DROP ROLE IF EXISTS rb_acting")
    conn.execute("CREATE ROLE rb_acting SUPERUSER NOLOGIN")
    try:
        conn.execute("SET ROLE rb_acting")
        sweep(conn, Target(), options(workers=1, **LIVE), run_id="who")
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP OWNED BY rb_acting")  # the session's candidate snapshot
        conn.execute("DROP ROLE rb_acting")
    who = conn.execute("SELECT operator, identity FROM litellm_runbook.runs WHERE run_id = 'who'").fetchone()
    assert who is not None
    os_user = pwd.getpwuid(os.geteuid()).pw_name
    assert who[0] == {
        "os_user": os_user, "jupyterhub_user": "alice", "host": socket.gethostname(),
        "session_user": "postgres", "current_user": "rb_acting",
    }  # fmt: skip
    assert (who[1]["session_user"], who[1]["current_user"], who[1]["os_user"]) == ("postgres", "rb_acting", os_user)


# -- a ledger made by an older version ---------------------------------------------------


OLD_LEDGER = """
CREATE SCHEMA litellm_runbook;
CREATE TABLE litellm_runbook.runs (run_id text PRIMARY KEY, kind text NOT NULL, target text NOT NULL, undoes_run_id text,
  started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz, operator jsonb, parameters jsonb,
  stop_reason text, rows_changed bigint, outcome jsonb);
CREATE TABLE litellm_runbook.batches (run_id text NOT NULL REFERENCES litellm_runbook.runs (run_id), batch integer NOT NULL,
  rows_changed integer NOT NULL, committed_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (run_id, batch));
CREATE TABLE litellm_runbook.changes (run_id text NOT NULL, batch integer NOT NULL, object_id text NOT NULL,
  previous_status text, new_status text NOT NULL, PRIMARY KEY (run_id, batch, object_id));
"""


def test_an_older_ledger_is_upgraded_once_in_commit_order_and_undo_uses_that_order(conn: psycopg.Connection) -> None:
    x = insert(conn, status="stale_expired", age_days=30)
    conn.execute(OLD_LEDGER)
    # As the older version left them: run "old-b" marked x after run "old-a" (x went back to in_progress in between).
    # "old-b" sorts after "old-a" by name but is inserted first, so only commit time tells their order.
    for run_id, committed, previous in (("old-b", "2026-01-02", "in_progress"), ("old-a", "2026-01-01", "queued")):
        conn.execute("INSERT INTO litellm_runbook.runs (run_id, kind, target, stop_reason, rows_changed, finished_at)"
                     " VALUES (%s, 'sweep', 'public.LiteLLM_ManagedObjectTable', 'done', 1, now())", [run_id])  # fmt: skip
        conn.execute("INSERT INTO litellm_runbook.batches VALUES (%s, 1, 1, %s)", [run_id, committed])
        conn.execute("INSERT INTO litellm_runbook.changes VALUES (%s, 1, %s, %s, 'stale_expired')", [run_id, x, previous])
    with pytest.raises(LedgerUnavailableError, match=r"it lacks the order of changes \(changes\.seq\) undo needs .* "
                       r"Ask the ledger's owner to run: python -m runbook ledger init$"):  # fmt: skip
        undo(conn, Target(), options(), of_run_id="old-a")  # a dry run, as a reader would
    ledger.ensure(conn)
    ledger.ensure(conn)  # idempotent
    assert conn.execute("SELECT run_id, seq FROM litellm_runbook.changes ORDER BY seq").fetchall() == [("old-a", 1), ("old-b", 2)]
    assert conn.execute(
        "SELECT attidentity FROM pg_attribute WHERE attrelid = 'litellm_runbook.changes'::regclass AND attname = 'seq'"
    ).fetchone() == ("a",)
    dry = undo(conn, Target(), options(), of_run_id="old-a")
    assert (dry.restorable, dry.later_run) == (0, 1)
    done = undo(conn, Target(), options(**LIVE), of_run_id="old-b", run_id="undo-old-b")
    assert done.restored == 1 and statuses(conn) == {x: "in_progress"}
    assert conn.execute("SELECT seq FROM litellm_runbook.changes WHERE run_id = 'undo-old-b'").fetchone() == (3,)
    with pytest.raises(ParameterError, match="recorded by an older version of the runbook, without the identity"):
        sweep(conn, Target(), options(**LIVE), run_id="old-a")


def test_a_role_that_may_not_upgrade_an_older_ledger_is_told_who_must(conn: psycopg.Connection, dsn: str) -> None:
    insert(conn, status="queued", age_days=10)
    conn.execute(OLD_LEDGER)
    conn.execute("DROP ROLE IF EXISTS rb_sweeps")
    conn.execute("CREATE ROLE rb_sweeps LOGIN IN ROLE pg_read_all_stats")
    conn.execute('GRANT SELECT, UPDATE ON "LiteLLM_ManagedObjectTable" TO rb_sweeps')
    conn.execute(ledger.grants_for("rb_sweeps"))
    before = state(conn)
    try:
        with psycopg.connect(conninfo.make_conninfo(dsn, user="rb_sweeps"), autocommit=True) as sweeper:
            with pytest.raises(LedgerUnavailableError) as err:
                sweep(sweeper, Target(), options(allow_blind_health=True, **LIVE))
        assert str(err.value) == (
            "the ledger in schema litellm_runbook was created by an older version of the runbook and role rb_sweeps may not "
            "upgrade it (must be owner of table batches); a sweep never runs without its ledger. Ask the ledger's owner to run: "
            "python -m runbook ledger init"
        )
        assert state(conn) == before
    finally:
        conn.execute("DROP OWNED BY rb_sweeps")
        conn.execute("DROP ROLE rb_sweeps")


# -- the run record ----------------------------------------------------------------------


def test_run_record_and_cli_runs_of_sweep_and_undo(conn: psycopg.Connection, dsn: str, tmp_path: Path) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(4)]
    env = {**os.environ, "DATABASE_URL": dsn}
    done = subprocess.run(
        [sys.executable, "-m", "runbook", "run", "sweep", "-p", "dry_run", "False", "-p", "batch_size", "3",
         "-r", "run_id", "cli-sweep", "--run-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent == tmp_path and path.name.endswith("_03_sweep_cli-sweep.ipynb") and path.name[:8].isdigit()
    record = read_record(path)
    assert record is not None
    assert record["run_id"] == "cli-sweep" and record["outcome"]["status"] == "succeeded"
    assert record["parameters"]["batch_size"] == 3 and record["parameters"]["dry_run"] is False
    assert record["operator"]["os_user"] == pwd.getpwuid(os.geteuid()).pw_name and record["operator"]["host"]
    assert (record["operator"]["session_user"], record["operator"]["current_user"]) == ("postgres", "postgres")
    assert record["runbook_version"] and record["database"]["server_version"].startswith("16")
    assert record["database"]["system_identifier"] and record["database"]["database"] == conninfo.conninfo_to_dict(dsn)["dbname"]
    assert record["outcome"]["sweep"]["stop_reason"] == "done"
    assert [b["changed"] for b in record["outcome"]["sweep"]["batches"]] == [3, 1]
    assert set(statuses(conn).values()) == {"stale_expired"}

    undone = execute("undo", {"run_id": "cli-sweep", "dry_run": False, "undo_run_id": "cli-undo"}, tmp_path, env=env)
    assert undone.ok, undone.error
    assert undone.path.name.endswith("_04_undo_cli-undo.ipynb")
    assert undone.record is not None and undone.record["outcome"]["undo"]["restored"] == 4
    counts = {k: undone.record["outcome"]["undo"][k] for k in ("rows_in_ledger", "restorable", "changed_since", "later_run", "already_undone")}
    assert counts == {"rows_in_ledger": 4, "restorable": 4, "changed_since": 0, "later_run": 0, "already_undone": 0}
    assert statuses(conn) == {k: "queued" for k in ids}
