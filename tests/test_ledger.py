"""The run record, the ledger written with the work, undo, and the operator's controls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from runbook import Target, options, preview, sweep
from runbook.errors import (
    LedgerUnavailableError,
    PreviewMismatchError,
    SweepInProgressError,
    TooManyCandidatesError,
    UnknownRunError,
)
from runbook.execute import execute
from runbook.locking import target_lock
from runbook.undo import undo
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
        sweep(conn, Target(), options(batch_size=2, cutoff=cutoff, expect_fingerprint=approved.fingerprint, **LIVE))
    assert state(conn) == before
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


def test_undo_restores_exactly_the_runs_rows_and_leaves_changed_ones(conn: psycopg.Connection) -> None:
    ids = [insert(conn, status=("queued", "incomplete", "requires_action")[i % 3], age_days=10 + i) for i in range(7)]
    other = insert(conn, status="stale_expired", age_days=50)  # expired before, by LiteLLM itself
    original = state(conn)
    sweep(conn, Target(), options(batch_size=3, **LIVE), run_id="to-undo")
    conn.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["completed", ids[0]])

    dry = undo(conn, Target(), options(batch_size=2), of_run_id="to-undo")
    assert (dry.rows_in_ledger, dry.restorable, dry.left_alone, dry.restored) == (7, 6, 1, 0)
    assert statuses(conn)[ids[1]] == "stale_expired"

    done = undo(conn, Target(), options(batch_size=2, **LIVE), of_run_id="to-undo", run_id="undo-1")
    assert (done.restored, done.left_alone, done.stop_reason) == (6, 1, "done")
    after = state(conn)
    for key in ids[1:] + [other]:
        assert after[key] == original[key]
    assert statuses(conn)[ids[0]] == "completed"
    assert conn.execute("SELECT undoes_run_id, rows_changed FROM litellm_runbook.runs WHERE run_id = 'undo-1'").fetchone() == ("to-undo", 6)

    again = undo(conn, Target(), options(**LIVE), of_run_id="to-undo")
    assert (again.restored, again.already_undone) == (0, 6)
    assert state(conn) == after


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
    assert (second.restored, second.left_alone, second.already_undone, second.stop_reason) == (4, 0, 2, "done")
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
    assert (done.restored, done.left_alone) == (1, 1)
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
                sweep(sweeper, Target(), options(**LIVE))
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
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, dsn], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    while int(proc.stdout.readline().strip() or 0) < 3:
        pass
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
    from runbook.record import read_record

    record = read_record(path)
    assert record is not None
    assert record["run_id"] == "cli-sweep" and record["outcome"]["status"] == "succeeded"
    assert record["parameters"]["batch_size"] == 3 and record["parameters"]["dry_run"] is False
    assert record["operator"]["os_user"] and record["operator"]["host"]
    assert record["runbook_version"] and record["database"]["server_version"].startswith("16")
    assert record["database"]["system_identifier"] and record["database"]["database"] == conninfo.conninfo_to_dict(dsn)["dbname"]
    assert record["outcome"]["sweep"]["stop_reason"] == "done"
    assert [b["changed"] for b in record["outcome"]["sweep"]["batches"]] == [3, 1]
    assert set(statuses(conn).values()) == {"stale_expired"}

    undone = execute("undo", {"run_id": "cli-sweep", "dry_run": False, "undo_run_id": "cli-undo"}, tmp_path, env=env)
    assert undone.ok, undone.error
    assert undone.path.name.endswith("_04_undo_cli-undo.ipynb")
    assert undone.record is not None and undone.record["outcome"]["undo"]["restored"] == 4
    assert statuses(conn) == {k: "queued" for k in ids}
