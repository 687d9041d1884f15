"""The run record, the ledger written with the work, undo, and the operator's controls."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from runbook import Target
from runbook import options, preview, sweep
from runbook.db import ledger
from runbook.errors import (
    ConnectionLostError,
    LedgerUnavailableError,
    ParameterError,
    PreviewMismatchError,
    SweepInProgressError,
    TooManyCandidatesError,
    UnknownRunError,
)
from runbook.tools.runner import execute
from runbook.db.lock import target_lock
from runbook.ops.preview import fingerprint
from runbook.ops.undo import UndoResult, undo
from tests.rows import insert, sessions_left, state, statuses

LIVE = {"dry_run": False}
ROOT = Path(__file__).resolve().parent.parent


def ledger_batches(conn: psycopg.Connection, run_id: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for batch, object_id in conn.execute("SELECT batch, object_id FROM litellm_runbook.changes WHERE run_id = %s", [run_id]):
        out.setdefault(batch, set()).add(object_id)
    return out


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


def test_approved_preview_is_executed_exactly_or_not_at_all(conn: psycopg.Connection) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(5)]
    approved = preview(conn, Target(), options(batch_size=2))
    cutoff = approved.cutoff_utc.isoformat() + "Z"
    insert(conn, status="queued", age_days=40)  # a new oldest row appears after the approval
    before = state(conn)
    with pytest.raises(PreviewMismatchError, match=f"not the approved {approved.fingerprint}"):
        sweep(conn, Target(), options(batch_size=2, cutoff=cutoff, expect_fingerprint=approved.fingerprint, **LIVE), run_id="mismatch")
    assert state(conn) == before
    refused = conn.execute(
        "SELECT stop_reason, finished_at IS NOT NULL, outcome->>'stop_detail' FROM litellm_runbook.runs WHERE run_id = 'mismatch'"
    ).fetchone()
    assert refused is not None and refused[:2] == ("failed", True) and "PreviewMismatchError" in refused[2]
    assert conn.execute("SELECT count(*) FROM litellm_runbook.batches WHERE run_id = 'mismatch'").fetchone() == (0,)
    conn.execute('DELETE FROM "LiteLLM_ManagedObjectTable" WHERE id <> ALL(%s)', [ids])
    result = sweep(conn, Target(), options(batch_size=2, max_batches=1, cutoff=cutoff, expect_fingerprint=approved.fingerprint, **LIVE))
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == {r.id for r in approved.rows}
    assert result.changed == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_file_stops_at_the_next_batch_boundary(conn: psycopg.Connection, tmp_path: Path, workers: int) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(9)]  # ids[0] oldest
    stop = tmp_path / "STOP"
    result = sweep(
        conn, Target(), options(batch_size=2, stop_file=str(stop), workers=workers, **LIVE), on_batch=lambda r, b: stop.touch()
    )
    # The round in flight (one batch per worker) finishes; nothing more is started.
    assert result.stop_reason == "stop_file" and len(result.batches) == workers and result.changed == 2 * workers
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(ids[: 2 * workers]), "oldest first"


def test_max_seconds_stops_between_batches(conn: psycopg.Connection) -> None:
    for i in range(10):
        insert(conn, status="queued", age_days=10 + i)
    result = sweep(conn, Target(), options(batch_size=1, max_seconds=1, pause_s=0.4, **LIVE))
    assert result.stop_reason == "max_seconds"
    assert 1 <= len(result.batches) < 10 and result.changed == len(result.batches)


@pytest.fixture
def interactive_sigint() -> Iterator[None]:
    """SIGINT as in a terminal or a kernel (KeyboardInterrupt), whatever this process
    inherited: started in the background (``cmd &``, nohup), SIGINT arrives ignored."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("workers", [1, 2])
def test_first_interrupt_lets_the_batch_commit_then_stops(conn: psycopg.Connection, interactive_sigint: None, workers: int) -> None:
    for i in range(6):
        insert(conn, status="queued", age_days=10 + i)
    result = sweep(
        conn, Target(), options(batch_size=2, workers=workers, **LIVE), run_id="sigint",
        on_batch=lambda r, b: os.kill(os.getpid(), signal.SIGINT),
    )  # fmt: skip
    assert result.stop_reason == "interrupted" and result.changed == 2 * workers
    assert sum(v == "stale_expired" for v in statuses(conn).values()) == 2 * workers
    assert conn.execute("SELECT stop_reason FROM litellm_runbook.runs WHERE run_id = 'sigint'").fetchone() == ("interrupted",)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the sweep puts the previous handler back"


def test_metrics_file(conn: psycopg.Connection, tmp_path: Path) -> None:
    for i in range(5):
        insert(conn, status="queued", age_days=10 + i)
    result = sweep(conn, Target(), options(batch_size=2, metrics_dir=str(tmp_path), **LIVE), run_id="metrics-1")
    text = (tmp_path / "litellm_runbook_metrics-1.prom").read_text()
    labels = '{run_id="metrics-1",kind="sweep",table="public.LiteLLM_ManagedObjectTable"}'
    assert f"litellm_runbook_rows_changed_total{labels} 5" in text
    assert f"litellm_runbook_rows_remaining{labels} 0" in text
    assert f"litellm_runbook_batches_total{labels} 3" in text
    assert 'litellm_runbook_run_outcome{run_id="metrics-1",kind="sweep",table="public.LiteLLM_ManagedObjectTable",outcome="done"} 1' in text
    assert result.metrics_file == str(tmp_path / "litellm_runbook_metrics-1.prom")


@pytest.mark.parametrize("workers", [1, 2])
def test_second_interrupt_aborts_the_round_in_flight_and_rolls_it_back(
    conn: psycopg.Connection, interactive_sigint: None, workers: int
) -> None:
    for i in range(4):
        insert(conn, status="queued", age_days=10 + i)
    before = state(conn)
    # Every UPDATE of the table takes 3 s: both SIGINTs arrive while the first round runs.
    conn.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$")
    conn.execute('CREATE TRIGGER slow BEFORE UPDATE ON "LiteLLM_ManagedObjectTable" FOR EACH STATEMENT EXECUTE FUNCTION slow()')
    timers = [threading.Timer(t, os.kill, [os.getpid(), signal.SIGINT]) for t in (0.6, 0.9)]
    for timer in timers:
        timer.start()
    result = sweep(conn, Target(), options(batch_size=2, workers=workers, **LIVE), run_id="abort")
    for timer in timers:
        timer.join()
    assert result.stop_reason == "interrupted" and result.changed == 0 and result.batches == []
    assert state(conn) == before, "every batch in flight rolled back"
    assert conn.execute("SELECT count(*) FROM litellm_runbook.batches WHERE run_id = 'abort'").fetchone() == (0,)
    left = sessions_left(conn, "(application_name LIKE '%%/worker-%%' OR state = 'active')")
    assert left == 0, "no statement of the sweep is left running, and its helper connection is closed"


def test_undo_restores_exactly_the_runs_rows_and_leaves_rows_changed_since_or_by_a_later_run(conn: psycopg.Connection) -> None:
    ids = [insert(conn, status=("queued", "incomplete", "requires_action")[i % 3], age_days=10 + i) for i in range(7)]
    other = insert(conn, status="stale_expired", age_days=50)  # expired before, by LiteLLM itself
    original = state(conn)
    sweep(conn, Target(), options(batch_size=3, **LIVE), run_id="to-undo")
    # ids[0]: completed by LiteLLM since (no run involved). ids[1]: back to in_progress,
    # then marked again by a second sweep: its latest change is that run's, not to-undo's.
    conn.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["completed", ids[0]])
    conn.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["in_progress", ids[1]])
    later = sweep(conn, Target(), options(**LIVE), run_id="later-sweep")
    assert later.changed == 1 and statuses(conn)[ids[1]] == "stale_expired"

    dry = undo(conn, Target(), options(batch_size=2), of_run_id="to-undo")
    assert (dry.rows_in_ledger, dry.restorable, dry.changed_since, dry.later_run, dry.already_undone, dry.restored) == (7, 5, 1, 1, 0, 0)
    assert statuses(conn)[ids[2]] == "stale_expired"

    done = undo(conn, Target(), options(batch_size=2, **LIVE), of_run_id="to-undo", run_id="undo-1")
    assert (done.restored, done.changed_since, done.later_run, done.already_undone, done.stop_reason) == (5, 1, 1, 0, "done")
    after = state(conn)
    for key in ids[2:] + [other]:
        assert after[key] == original[key]
    assert statuses(conn)[ids[0]] == "completed"
    assert statuses(conn)[ids[1]] == "stale_expired", "the later sweep's change is not undone by the earlier run's undo"
    assert conn.execute("SELECT undoes_run_id, rows_changed FROM litellm_runbook.runs WHERE run_id = 'undo-1'").fetchone() == ("to-undo", 5)
    assert conn.execute(
        "SELECT outcome->>'restored', outcome->>'changed_since', outcome->>'later_run' FROM litellm_runbook.runs WHERE run_id = 'undo-1'"
    ).fetchone() == ("5", "1", "1")
    assert conn.execute("SELECT count(*) FROM litellm_runbook.changes WHERE run_id = 'undo-1' AND object_id = ANY(%s)", [ids[:2]]).fetchone() == (0,)

    again = undo(conn, Target(), options(**LIVE), of_run_id="to-undo")
    assert (again.restored, again.already_undone, again.changed_since, again.later_run) == (0, 5, 1, 1)
    assert state(conn) == after

    # The later run's own undo puts back what it found: in_progress.
    mine = undo(conn, Target(), options(**LIVE), of_run_id="later-sweep")
    assert (mine.restored, mine.changed_since, mine.later_run, mine.already_undone) == (1, 0, 0, 0)
    assert statuses(conn)[ids[1]] == "in_progress"


def test_undo_after_the_run_was_resumed_restores_what_the_resumed_run_changed_again(conn: psycopg.Connection) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(3)]
    sweep(conn, Target(), options(**LIVE), run_id="run-r")
    first = undo(conn, Target(), options(**LIVE), of_run_id="run-r", run_id="undo-u1")
    assert (first.restored, set(statuses(conn).values())) == (3, {"queued"})
    resumed = sweep(conn, Target(), options(**LIVE), run_id="run-r")  # same run id, same identity: continued
    assert resumed.changed == 3 and resumed.batches[0].number == 2
    assert set(statuses(conn).values()) == {"stale_expired"}

    dry = undo(conn, Target(), options(), of_run_id="run-r")
    assert (dry.rows_in_ledger, dry.restorable, dry.already_undone, dry.changed_since, dry.later_run) == (3, 3, 0, 0, 0)
    second = undo(conn, Target(), options(**LIVE), of_run_id="run-r", run_id="undo-u2")
    assert statuses(conn) == {k: "queued" for k in ids}
    assert (second.restored, second.already_undone, second.changed_since, second.later_run) == (3, 0, 0, 0)
    assert conn.execute(
        "SELECT object_id, previous_status, new_status FROM litellm_runbook.changes WHERE run_id = 'undo-u2' ORDER BY object_id"
    ).fetchall() == sorted((k, "stale_expired", "queued") for k in ids)

    third = undo(conn, Target(), options(**LIVE), of_run_id="run-r", run_id="undo-u3")
    assert (third.restored, third.already_undone, third.changed_since, third.later_run) == (0, 3, 0, 0)
    assert statuses(conn) == {k: "queued" for k in ids}


@pytest.mark.parametrize("second_id", ["undo-a2", "undo-a1"])  # a new undo run, or the same one continued
def test_undo_resumed_restores_newest_batches_first_and_skips_what_an_earlier_undo_restored(
    conn: psycopg.Connection, second_id: str
) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(6)]  # ids[0] oldest
    sweep(conn, Target(), options(batch_size=2, **LIVE), run_id="sweep-a")  # batches 1-3, two rows each
    first = undo(conn, Target(), options(batch_size=2, max_batches=1, **LIVE), of_run_id="sweep-a", run_id="undo-a1")
    assert (first.restored, first.stop_reason) == (2, "max_batches")
    assert statuses(conn) == {**{k: "stale_expired" for k in ids[:4]}, **{k: "queued" for k in ids[4:]}}, "newest batch first"
    # The two restored rows are swept again by another run; undoing sweep-a again must not touch them.
    sweep(conn, Target(), options(batch_size=2, **LIVE), run_id="sweep-b")
    second = undo(conn, Target(), options(batch_size=3, **LIVE), of_run_id="sweep-a", run_id=second_id)
    assert (second.restored, second.changed_since, second.later_run, second.already_undone, second.stop_reason) == (4, 0, 2, 0, "done")
    assert statuses(conn) == {**{k: "queued" for k in ids[:4]}, **{k: "stale_expired" for k in ids[4:]}}


def test_interrupted_round_keeps_the_batch_that_committed_and_rolls_back_the_other(
    conn: psycopg.Connection, interactive_sigint: None
) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(4)]  # ids[0] oldest
    # Only the second slice (ids[2:], on the helper connection) is slow.
    conn.execute(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.id = '{ids[3]}' THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$"
    )
    conn.execute('CREATE TRIGGER slow_row BEFORE UPDATE ON "LiteLLM_ManagedObjectTable" FOR EACH ROW EXECUTE FUNCTION slow_row()')
    timers = [threading.Timer(t, os.kill, [os.getpid(), signal.SIGINT]) for t in (0.6, 0.9)]
    for timer in timers:
        timer.start()
    result = sweep(conn, Target(), options(batch_size=2, workers=2, **LIVE), run_id="half")
    for timer in timers:
        timer.join()
    assert result.stop_reason == "interrupted"
    assert [(b.number, b.changed) for b in result.batches] == [(1, 2)] and result.changed == 2
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(ids[:2])
    assert conn.execute("SELECT rows_changed FROM litellm_runbook.runs WHERE run_id = 'half'").fetchone() == (2,)


def test_undo_restores_an_object_changed_twice_by_the_run_to_before_its_latest_change(conn: psycopg.Connection) -> None:
    key = insert(conn, status="queued", age_days=10)
    sweep(conn, Target(), options(**LIVE), run_id="twice")
    conn.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["in_progress", key])
    sweep(conn, Target(), options(**LIVE), run_id="twice")  # same run continued: a second change of the object
    assert conn.execute("SELECT count(*) FROM litellm_runbook.changes WHERE run_id = 'twice'").fetchone() == (2,)
    done = undo(conn, Target(), options(**LIVE), of_run_id="twice")
    assert (done.rows_in_ledger, done.restored, done.changed_since) == (1, 1, 0)
    assert statuses(conn)[key] == "in_progress"


def test_undo_of_an_unknown_run_is_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(UnknownRunError, match="run_id='nope' is not a sweep run in the ledger"):
        undo(conn, Target(), options(), of_run_id="nope")


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


KILLABLE = """
import sys, psycopg
from runbook import Target, options, sweep
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    sweep(conn, Target(), options(batch_size=5, pause_s=0.2, dry_run=False), run_id="killed",
          on_batch=lambda r, b: print(b.number, flush=True))
"""


def test_sigkill_mid_sweep_leaves_whole_batches_with_ledger_and_a_rerun_finishes(conn: psycopg.Connection, dsn: str) -> None:
    for i in range(60):
        insert(conn, status="queued", age_days=10 + i / 10)
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    while True:
        line = proc.stdout.readline()
        assert line, f"the sweep ended before its third batch: {proc.stderr.read()}"
        if int(line) >= 3:
            break
    proc.kill()
    proc.wait()
    time.sleep(0.3)  # the server notices the closed connection and releases the lock
    swept = {k for k, v in statuses(conn).items() if v == "stale_expired"}
    logged = ledger_batches(conn, "killed")
    assert 3 <= len(logged) < 12 and all(len(ids) == 5 for ids in logged.values())
    assert set().union(*logged.values()) == swept
    sums = conn.execute("SELECT sum(rows_changed) FROM litellm_runbook.batches WHERE run_id = 'killed'").fetchone()
    assert sums == (len(swept),)

    result = sweep(conn, Target(), options(batch_size=5, **LIVE), run_id="killed")
    assert result.stop_reason == "done" and result.changed == 60 - len(swept)
    assert result.batches[0].number == len(logged) + 1
    assert set(statuses(conn).values()) == {"stale_expired"}
    assert conn.execute("SELECT count(*), count(DISTINCT object_id) FROM litellm_runbook.changes").fetchone() == (60, 60)


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
    from runbook.audit.record import read_record

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


# -- a resumed run id must be the same run ---------------------------------------------


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


# -- the fingerprint binds the cutoff ---------------------------------------------------


def test_the_fingerprint_binds_the_cutoff_not_only_the_ids(conn: psycopg.Connection) -> None:
    old = [insert(conn, status="queued", age_days=40), insert(conn, status="queued", age_days=35)]
    recent = insert(conn, status="queued", age_days=10)  # a candidate at 1 day, not at 30
    approved = preview(conn, Target(), options(stale_after_days=30, batch_size=2))
    assert [r.id for r in approved.rows] == old and approved.candidates == 2
    assert re.fullmatch(r"[0-9a-f]{16}", approved.fingerprint)
    before = state(conn)
    # The sequence (-p stale_after_days 1 -p expect_fingerprint F) is refused as a parameter.
    with pytest.raises(ParameterError, match="expect_fingerprint"):
        options(stale_after_days=1, batch_size=2, expect_fingerprint=approved.fingerprint, **LIVE)
    one_day = (approved.cutoff_utc + timedelta(days=29)).isoformat() + "Z"  # the same rows 1-30 days old are in
    with pytest.raises(PreviewMismatchError) as err:
        sweep(conn, Target(), options(cutoff=one_day, batch_size=2, expect_fingerprint=approved.fingerprint, **LIVE))
    assert f"not the approved {approved.fingerprint}: the fingerprint binds the target, the rule, the cutoff" in str(err.value)
    assert state(conn) == before
    # With the preview's own cutoff the same fingerprint is accepted, and only the previewed rows change.
    cutoff = approved.cutoff_utc.isoformat() + "Z"
    done = sweep(conn, Target(), options(cutoff=cutoff, batch_size=2, expect_fingerprint=approved.fingerprint, **LIVE))
    assert done.first_batch_fingerprint == approved.fingerprint and done.changed == 2
    assert statuses(conn) == {old[0]: "stale_expired", old[1]: "stale_expired", recent: "queued"}


def test_the_fingerprint_changes_with_each_thing_it_binds() -> None:
    target = Target().describe()
    cutoff = datetime(2026, 1, 1)
    base = fingerprint(target, cutoff, ["a", "b"])
    others = [
        fingerprint({**target, "table": "public.other"}, cutoff, ["a", "b"]),
        fingerprint({**target, "purpose": "batch"}, cutoff, ["a", "b"]),
        fingerprint({**target, "terminal_statuses": ["completed"]}, cutoff, ["a", "b"]),
        fingerprint(target, datetime(2026, 1, 1, 0, 0, 1), ["a", "b"]),
        fingerprint(target, cutoff, ["b", "a"]),
        fingerprint(target, cutoff, ["a"]),
    ]
    assert len({base, *others}) == 7 and all(re.fullmatch(r"[0-9a-f]{16}", f) for f in [base, *others])


# -- metrics are watchers: their failure never breaks or hides the run ------------------


def test_a_metrics_file_that_cannot_be_written_is_a_warning_and_the_run_is_closed(
    conn: psycopg.Connection, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(3)]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = sweep(conn, Target(), options(batch_size=2, metrics_dir=str(not_a_dir), **LIVE), run_id="no-metrics")
    assert (result.stop_reason, result.changed, result.metrics_file) == ("done", 3, None)
    assert len(result.warnings) == 1 and result.warnings[0].startswith(f"metrics file not written to metrics_dir='{not_a_dir}': ")
    warned = [r for r in caplog.records if "warning: metrics file not written" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING" and warned[0].name == "runbook.ops.live"
    assert set(statuses(conn).values()) == {"stale_expired"}
    row = conn.execute(
        "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, jsonb_array_length(outcome->'warnings')"
        " FROM litellm_runbook.runs WHERE run_id = 'no-metrics'"
    ).fetchone()
    assert row == (True, "done", 3, 1)

    undone = undo(conn, Target(), options(metrics_dir=str(not_a_dir), **LIVE), of_run_id="no-metrics", run_id="undo-nm")
    assert (undone.stop_reason, undone.restored, len(undone.warnings)) == ("done", 3, 1)
    assert statuses(conn) == {k: "queued" for k in ids}
    row = conn.execute("SELECT finished_at IS NOT NULL, stop_reason, rows_changed FROM litellm_runbook.runs WHERE run_id = 'undo-nm'").fetchone()
    assert row == (True, "done", 3)


def test_a_failing_batch_with_failing_metrics_raises_its_own_error_and_closes_the_run(conn: psycopg.Connection, tmp_path: Path) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(4)]  # ids[0] oldest
    conn.execute(
        "CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.id = '{ids[2]}' THEN RAISE EXCEPTION 'row % refused by a trigger', NEW.id; END IF; RETURN NEW; END $$"
    )
    conn.execute('CREATE TRIGGER refuse_row BEFORE UPDATE ON "LiteLLM_ManagedObjectTable" FOR EACH ROW EXECUTE FUNCTION refuse_row()')
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(psycopg.errors.RaiseException, match=f"row {ids[2]} refused by a trigger"):
        sweep(conn, Target(), options(batch_size=2, workers=1, metrics_dir=str(not_a_dir), **LIVE), run_id="fails")
    assert statuses(conn) == {**{k: "stale_expired" for k in ids[:2]}, **{k: "queued" for k in ids[2:]}}
    row = conn.execute(
        "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, outcome->>'stop_detail', jsonb_array_length(outcome->'warnings')"
        " FROM litellm_runbook.runs WHERE run_id = 'fails'"
    ).fetchone()
    assert row is not None and row[:3] == (True, "failed", 2) and row[4] == 1
    assert str(row[3]).startswith(f"RaiseException: row {ids[2]} refused by a trigger")


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
            "upgrade it (must be owner of table changes); a sweep never runs without its ledger. Ask the ledger's owner to run: "
            "python -m runbook ledger init"
        )
        assert state(conn) == before
    finally:
        conn.execute("DROP OWNED BY rb_sweeps")
        conn.execute("DROP ROLE rb_sweeps")


def test_the_undo_text_names_every_reason_a_row_was_left_alone() -> None:
    from runbook.notebook.render import undo_summary

    dry = UndoResult("sweep-1", None, True, 10, 6, changed_since=2, later_run=1, already_undone=1)
    assert undo_summary(dry) == (
        "DRY RUN, nothing written: run sweep-1 changed 10 rows; 6 can be restored (its change is their latest in the "
        "ledger and still in place); left alone: 2 changed since, 1 changed by a later run, 1 already undone."
    )
    live = UndoResult("sweep-1", "undo-1", False, 10, 6, restored=5, changed_since=3, later_run=1, already_undone=1,
                      stop_reason="done", warnings=["metrics file not written"])  # fmt: skip
    assert undo_summary(live) == (
        "Undo undo-1 of run sweep-1: 5 rows restored in 0 batches; left alone: 3 changed since, 1 changed by a later run, "
        "1 already undone. Stopped: done. Warning: metrics file not written."
    )


def test_an_undo_that_loses_its_connection_reports_what_the_ledger_holds_and_is_closed(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(4)]
    sweep(conn, Target(), options(workers=1, **LIVE), run_id="to-lose")
    newest_first = [r[0] for r in conn.execute("SELECT object_id FROM litellm_runbook.changes WHERE run_id = 'to-lose' ORDER BY seq DESC")]
    # Restoring the third object ends the undo's own session mid-statement (as a server crash would).
    conn.execute(
        "CREATE FUNCTION end_session() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.id = '{newest_first[2]}' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NEW; END $$"
    )
    conn.execute('CREATE TRIGGER end_session BEFORE UPDATE ON "LiteLLM_ManagedObjectTable" FOR EACH ROW EXECUTE FUNCTION end_session()')
    with psycopg.connect(dsn, autocommit=True) as undoer:
        with pytest.raises(ConnectionLostError) as err:
            undo(undoer, Target(), options(batch_size=1, **LIVE), of_run_id="to-lose", run_id="undo-lost")
    assert str(err.value).startswith("the connection to the database was lost during batch 3 of undo run undo-lost (")
    assert str(err.value).endswith(
        "that batch rolled back; the 2 other batch(es) committed so far stand with their ledger (2 rows restored). "
        "Run again with undo_run_id=undo-lost to finish."
    )
    assert statuses(conn) == {**{k: "queued" for k in newest_first[:2]}, **{k: "stale_expired" for k in newest_first[2:]}}
    assert set(newest_first) == set(ids)
    row = conn.execute(
        "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, (outcome->>'restored')::int FROM litellm_runbook.runs"
        " WHERE run_id = 'undo-lost'"
    ).fetchone()
    assert row == (True, "failed", 2, 2)
    conn.execute('DROP TRIGGER end_session ON "LiteLLM_ManagedObjectTable"')
    again = undo(conn, Target(), options(**LIVE), of_run_id="to-lose", run_id="undo-lost")
    assert (again.restored, again.already_undone, again.batches[0].number) == (2, 2, 3)
    assert set(statuses(conn).values()) == {"queued"}


def test_the_preview_prints_the_cutoff_and_fingerprint_ready_to_pass_back(
    conn: psycopg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    from runbook.notebook.render import show_preview

    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(3)]  # ids[0] oldest
    report = preview(conn, Target(), options(batch_size=2))
    show_preview(report)
    printed = re.search(r"To sweep exactly these rows: -p cutoff (\S+) -p batch_size (\d+) -p expect_fingerprint ([0-9a-f]{16})", capsys.readouterr().out)
    assert printed is not None and printed.group(3) == report.fingerprint and printed.group(2) == "2"
    assert report.cutoff_utc.microsecond == 0
    insert(conn, status="queued", age_days=20 - 2.5)  # newer than the batch: not in it, still a candidate
    done = sweep(
        conn, Target(), options(cutoff=printed.group(1), batch_size=int(printed.group(2)), expect_fingerprint=printed.group(3),
                                max_batches=1, workers=1, **LIVE),
    )  # fmt: skip
    assert done.changed == 2 and {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(ids[:2])
