"""Undo puts back exactly what a run changed and is still in place, newest batch first, resumed
or not, and says why it left every other row alone."""

from __future__ import annotations

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.errors import UnknownRunError
from runbook.notebook.render import undo_summary
from runbook.ops.undo import UndoResult, undo
from tests.rows import insert, state, statuses
from tests.runs import LIVE


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


def test_undo_restores_an_object_changed_twice_by_the_run_to_before_its_latest_change(conn: psycopg.Connection) -> None:
    key = insert(conn, status="queued", age_days=10)
    sweep(conn, Target(), options(**LIVE), run_id="twice")
    conn.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["in_progress", key])
    sweep(conn, Target(), options(**LIVE), run_id="twice")  # same run continued: a second change of the object
    assert conn.execute("SELECT count(*) FROM litellm_runbook.changes WHERE run_id = 'twice'").fetchone() == (2,)
    done = undo(conn, Target(), options(**LIVE), of_run_id="twice")
    assert (done.rows_in_ledger, done.restored, done.changed_since) == (1, 1, 0)
    assert statuses(conn)[key] == "in_progress"


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


def test_undo_of_an_unknown_run_is_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(UnknownRunError, match="run_id='nope' is not a sweep run in the ledger"):
        undo(conn, Target(), options(), of_run_id="nope")


def test_the_undo_text_names_every_reason_a_row_was_left_alone() -> None:
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
