"""The sweep on LiteLLM's real schema: which rows change, in what batches, and what never does."""

from __future__ import annotations

import threading
from datetime import timedelta, timezone

import psycopg
import pytest

from runbook import Target, options, preview, sweep
from runbook.errors import ReadOnlyError, SweepInProgressError
from tests.rows import PRODUCTION_SQL, db_now, insert, production_candidates, sessions_left, standard_mix, state, statuses

LIVE = {"dry_run": False}


def test_production_e2e_five_stale_rows_batch_size_three(conn: psycopg.Connection) -> None:
    stale = [insert(conn, status="queued", age_days=8 + i) for i in range(5)]
    keep = insert(conn, status="queued", age_days=1)

    first = sweep(conn, Target(), options(batch_size=3, max_batches=1, **LIVE))
    assert [b.changed for b in first.batches] == [3]
    assert first.stop_reason == "max_batches"
    # oldest first: the three oldest of the five
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(stale[2:])

    second = sweep(conn, Target(), options(batch_size=3, max_batches=1, **LIVE))
    assert [b.changed for b in second.batches] == [2]

    third = sweep(conn, Target(), options(batch_size=3, **LIVE))
    assert third.changed == 0 and third.batches == [] and third.stop_reason == "done"
    assert statuses(conn) == {**{k: "stale_expired" for k in stale}, keep: "queued"}


def test_one_sweep_runs_batches_until_done(conn: psycopg.Connection) -> None:
    for i in range(7):
        insert(conn, status="in_progress", age_days=10 + i)
    result = sweep(conn, Target(), options(batch_size=3, **LIVE))
    assert [b.changed for b in result.batches] == [3, 3, 1]
    assert result.changed == 7 and result.candidates_at_start == 7
    assert result.stop_reason == "done" and result.remaining == 0


def test_batches_shrink_to_the_wal_budget_and_still_change_every_candidate_once(conn: psycopg.Connection, dsn: str) -> None:
    from runbook.tools.demo import load_demo_rows

    load_demo_rows(dsn, 3000)
    expected = production_candidates(conn, 7)
    before = state(conn)
    result = sweep(conn, Target(), options(batch_size=200, max_batch_wal_bytes=40_000, **LIVE))
    sizes = [b.selected for b in result.batches]
    assert sizes[:2] == [200, 200], "the first round (two workers) is batch_size: nothing measured yet"
    assert all(b.wal_bytes > 0 for b in result.batches)
    # 200 rows wrote far more than 40 KB of WAL: every later batch is smaller, >= 50 rows.
    assert all(50 <= n < 200 for n in sizes[2:-1]) and len(sizes) > len(expected) / 200 + 2
    after = state(conn)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == expected and result.changed == len(expected) and result.stop_reason == "done"
    ledger = conn.execute("SELECT count(*), count(DISTINCT object_id) FROM litellm_runbook.changes").fetchone()
    assert ledger == (len(expected), len(expected))


def test_default_predicate_selects_exactly_the_production_rows(conn: psycopg.Connection, dsn: str) -> None:
    rows = standard_mix(conn)
    rows["queued_7d_3h"] = insert(conn, status="queued", age_days=7 + 3 / 24)  # within 9 hours of the cutoff
    # The fixture server runs in UTC: compare in a session that does not, so a cutoff that
    # shifted with the session TimeZone (production's timestamptz trap) would show.
    with psycopg.connect(dsn, autocommit=True, options="-c TimeZone=America/Anchorage") as alaska:
        assert alaska.execute("SHOW TimeZone").fetchone() == ("America/Anchorage",)
        expected = production_candidates(alaska, 7)  # LiteLLM's statement as it means it: in UTC
        wanted = {rows[k] for k in ("queued_old", "in_progress_old", "incomplete_old", "requires_action_old", "queued_7d_3h")}
        assert expected == wanted
        # The trap is armed: production's statement in this session's TimeZone misses the row
        # 3 hours past the cutoff (its created_at is read as Alaska time, 9 hours later).
        try:
            with alaska.transaction():
                now = db_now(alaska)
                changed = alaska.execute(PRODUCTION_SQL, [(now - timedelta(days=7)).replace(tzinfo=timezone.utc), 10**9]).rowcount
                raise _Undo
        except _Undo:
            pass
        assert changed == len(wanted) - 1
        seen = preview(alaska, Target(), options(batch_size=1000))
        assert {r.id for r in seen.rows} == expected and seen.candidates == len(expected)
        sweep(alaska, Target(), options(batch_size=1000, **LIVE))
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} - {rows["stale_expired_old"]} == expected


class _Undo(Exception):
    pass


def test_only_status_of_candidates_changes(conn: psycopg.Connection) -> None:
    rows = standard_mix(conn)
    before = state(conn)
    result = sweep(conn, Target(), options(batch_size=2, **LIVE))
    after = state(conn)
    changed = {k for k in before if before[k] != after[k]}
    candidates = {rows[k] for k in ("queued_old", "in_progress_old", "incomplete_old", "requires_action_old")}
    assert changed == candidates and result.changed == 4
    status_index = 9  # the 10th column of the real table is status
    for key in changed:
        assert after[key][status_index] == "stale_expired"
        assert after[key][:status_index] + after[key][status_index + 1 :] == before[key][:status_index] + before[key][status_index + 1 :]
    # the traps stay as production leaves them
    for label in ("null_old", "queued_recent", "queued_just_inside", "batch_old", "finetune_old", "completed_old"):
        assert after[rows[label]] == before[rows[label]], label


def test_preview_is_exactly_the_next_batch(conn: psycopg.Connection) -> None:
    for i in range(10):
        insert(conn, status="queued", age_days=8 + (i % 4))  # ties in created_at, broken by id
    batch = preview(conn, Target(), options(batch_size=4))
    before = statuses(conn)
    sweep(conn, Target(), options(batch_size=4, max_batches=1, **LIVE))
    after = statuses(conn)
    assert {k for k in before if before[k] != after[k]} == {r.id for r in batch.rows}
    assert len(batch.rows) == 4


def test_preview_order_is_oldest_first_ties_by_id(conn: psycopg.Connection) -> None:
    for i in range(6):
        insert(conn, status="queued", age_days=8 + (i % 2))
    rows = preview(conn, Target(), options(batch_size=6)).rows
    assert [(r.created_at, r.id) for r in rows] == sorted((r.created_at, r.id) for r in rows)


def test_dry_run_changes_nothing(conn: psycopg.Connection) -> None:
    standard_mix(conn)
    before = state(conn)
    result = sweep(conn, Target(), options(batch_size=2))
    assert state(conn) == before
    assert result.dry_run and result.stop_reason == "dry_run" and result.changed == 0
    assert result.candidates_at_start == 4 and result.would_change == 4 and result.would_batches == 2


def test_max_batches_bounds_the_work(conn: psycopg.Connection) -> None:
    for i in range(10):
        insert(conn, status="queued", age_days=8 + i)
    result = sweep(conn, Target(), options(batch_size=2, max_batches=3, **LIVE))
    assert [b.changed for b in result.batches] == [2, 2, 2]
    assert result.stop_reason == "max_batches"
    assert sum(v == "stale_expired" for v in statuses(conn).values()) == 6


def test_concurrent_completion_between_snapshot_and_batch_wins(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="queued", age_days=20 - i) for i in range(6)]  # ids[0] oldest
    late = ids[5]  # in the second batch

    def poller(result: object, batch: object) -> None:
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["completed", late])

    # One batch at a time: the poller's completion lands between batch 1 and batch 2.
    result = sweep(conn, Target(), options(batch_size=3, workers=1, **LIVE), on_batch=poller)
    assert statuses(conn)[late] == "completed"
    assert result.changed == 5 and [b.changed for b in result.batches] == [3, 2]


def test_row_locked_by_a_poller_is_skipped_and_its_completion_wins(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="in_progress", age_days=10 + i) for i in range(4)]
    with psycopg.connect(dsn) as poller:  # a transaction, as LiteLLM's poller holds one
        poller.execute('UPDATE "LiteLLM_ManagedObjectTable" SET status = %s WHERE id = %s', ["completed", ids[0]])
        outcome: dict[str, object] = {}
        worker = threading.Thread(
            target=lambda: outcome.setdefault("r", sweep(psycopg.connect(dsn, autocommit=True), Target(), options(batch_size=10, lock_timeout_s=0.5, **LIVE)))
        )
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "the sweep waited on a locked row instead of skipping it"
        poller.commit()
    result = outcome["r"]
    assert result.changed == 3  # type: ignore[attr-defined]
    assert statuses(conn) == {ids[0]: "completed", **{k: "stale_expired" for k in ids[1:]}}


def test_sweeps_started_at_once_never_change_a_row_twice(conn: psycopg.Connection, dsn: str) -> None:
    for i in range(300):
        insert(conn, status="queued", age_days=8 + i / 100)
    results: list[object] = []
    refused: list[str] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            barrier.wait()
            try:
                results.append(sweep(c, Target(), options(batch_size=7, **LIVE)))
            except SweepInProgressError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Row locks alone keep this true (whether the sweep lock let one or four run):
    # test_the_sweep_holds_its_target_lock_while_it_writes shows the lock.
    assert len(results) + len(refused) == 4 and len(results) >= 1
    assert sum(r.changed for r in results) == 300  # type: ignore[attr-defined]
    assert set(statuses(conn).values()) == {"stale_expired"}
    # the ledger holds each row exactly once
    counted = conn.execute("SELECT count(*), count(DISTINCT object_id) FROM litellm_runbook.changes").fetchone()
    assert counted == (300, 300)


def test_cutoff_does_not_shift_with_session_timezone(conn: psycopg.Connection, dsn: str) -> None:
    rows = {h: insert(conn, status="queued", age_days=7 + h / 24) for h in (-13, -11, -1, 1, 11, 13)}
    utc = {r.id for r in preview(conn, Target(), options(batch_size=100)).rows}
    assert utc == {rows[1], rows[11], rows[13]}
    for zone in ("Pacific/Kiritimati", "America/Anchorage"):
        with psycopg.connect(dsn, autocommit=True, options=f"-c TimeZone={zone}") as shifted:
            assert {r.id for r in preview(shifted, Target(), options(batch_size=100)).rows} == utc


def test_fixed_cutoff_selects_rows_older_than_it(conn: psycopg.Connection) -> None:
    old = insert(conn, status="queued", age_days=30)
    insert(conn, status="queued", age_days=10)
    from tests.rows import db_now
    from datetime import timedelta

    cutoff = (db_now(conn) - timedelta(days=20)).isoformat() + "Z"
    assert [r.id for r in preview(conn, Target(), options(cutoff=cutoff)).rows] == [old]


def test_sweep_refuses_on_read_only_session(conn: psycopg.Connection, dsn: str) -> None:
    insert(conn, status="queued", age_days=10)
    before = state(conn)
    with psycopg.connect(dsn, autocommit=True, options="-c default_transaction_read_only=on") as ro:
        with pytest.raises(ReadOnlyError, match="default_transaction_read_only is on"):
            sweep(ro, Target(), options(**LIVE))
        assert sweep(ro, Target(), options()).candidates_at_start == 1  # the dry run still works
    assert state(conn) == before


def test_interrupt_stops_at_batch_boundary(conn: psycopg.Connection) -> None:
    for i in range(9):
        insert(conn, status="queued", age_days=8 + i)

    def interrupt_after_second(result: object, batch: object) -> None:
        if batch.number == 2:  # type: ignore[attr-defined]
            raise KeyboardInterrupt

    result = sweep(conn, Target(), options(batch_size=3, **LIVE), on_batch=interrupt_after_second)
    assert result.stop_reason == "interrupted"
    assert sum(v == "stale_expired" for v in statuses(conn).values()) == 6 == result.changed


def test_two_workers_write_whole_rounds_oldest_first_within_max_batches(conn: psycopg.Connection) -> None:
    ids = [insert(conn, status="queued", age_days=30 - i) for i in range(10)]  # ids[0] oldest
    helpers: list[int] = []
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%%/worker-2'"
    result = sweep(
        conn, Target(), options(batch_size=2, max_batches=3, workers=2, **LIVE), run_id="rounds",
        on_batch=lambda r, b: helpers.append(conn.execute(count).fetchone()[0]),  # type: ignore[index]
    )  # fmt: skip
    assert helpers == [1, 1, 1], "a second connection wrote while the sweep ran"
    assert [(b.number, b.selected, b.changed) for b in result.batches] == [(1, 2, 2), (2, 2, 2), (3, 2, 2)]
    assert result.stop_reason == "max_batches"
    assert {k for k, v in statuses(conn).items() if v == "stale_expired"} == set(ids[:6])
    ledger = conn.execute("SELECT batch, array_agg(object_id ORDER BY object_id) FROM litellm_runbook.changes WHERE run_id = 'rounds' GROUP BY batch ORDER BY batch")
    assert [(b, set(objs)) for b, objs in ledger] == [(1, set(ids[0:2])), (2, set(ids[2:4])), (3, set(ids[4:6]))]
    assert sessions_left(conn, "application_name LIKE '%%/worker-%%'") == 0, "the helper connection is closed when the sweep returns"


def test_the_sweep_holds_its_target_lock_while_it_writes(conn: psycopg.Connection, dsn: str) -> None:
    from runbook.db.lock import lock_key

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
    from runbook.db.lock import holder, lock_key

    key = lock_key(Target())
    ids = [insert(conn, status="queued", age_days=10)]
    with psycopg.connect(admin_dsn, autocommit=True) as elsewhere:  # the same key, in database postgres
        elsewhere.execute("SELECT pg_advisory_lock(%s)", [key])
        assert holder(conn, key) == "a session that has just finished"
        assert sweep(conn, Target(), options(**LIVE)).changed == 1  # advisory locks are per database
    assert statuses(conn) == {ids[0]: "stale_expired"}


def test_lock_holder_seen_by_a_role_without_pg_read_all_stats(conn: psycopg.Connection, dsn: str) -> None:
    from runbook.db.lock import holder, lock_key, target_lock
    from tests.roles import create_roles, drop_roles

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


def test_inspect_names_every_status_it_has_not_seen_before(conn: psycopg.Connection) -> None:
    from runbook import inspect
    from runbook.ops.inspection import Count

    standard_mix(conn)  # every status LiteLLM is known to write, and NULL
    quiet = inspect(conn, Target(), options())
    assert quiet.unknown_statuses == [] and not any("not seen before" in w for w in quiet.warnings)
    old_new = insert(conn, status="archived", age_days=10)  # a status a newer LiteLLM might write
    insert(conn, status="archived", age_days=1)
    insert(conn, status="paused", age_days=9, purpose="batch")
    report = inspect(conn, Target(), options())
    assert report.unknown_statuses == [Count("archived", 2, 1), Count("paused", 1, 0)]
    assert (
        "2 status(es) this runbook has not seen before: 'archived' (2 rows, 1 candidates), 'paused' (1 rows, 0 candidates). "
        "The rule leaves out only the terminal statuses ['completed', 'complete', 'failed', 'expired', 'cancelled', "
        "'stale_expired'], so a stale 'response' row with any other status is swept: find out what LiteLLM means by "
        "these before a live sweep."
    ) in report.warnings
    assert report.to_dict()["unknown_statuses"] == [
        {"label": "archived", "rows": 2, "candidates": 1}, {"label": "paused", "rows": 1, "candidates": 0}
    ]
    assert old_new in {r.id for r in preview(conn, Target(), options(batch_size=100)).rows}
