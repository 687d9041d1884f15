"""A sweep works through the candidates in bounded batches until done: oldest first, within
max_batches, nothing written by a dry run, two workers in whole rounds, batch sizes paced by
time and by the WAL budget."""

from __future__ import annotations

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.rules.pacing import next_batch_size
from runbook.tools.demo import load_demo_rows
from tests.rows import insert, production_candidates, sessions_left, standard_mix, state, statuses
from tests.runs import LIVE


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


def test_max_batches_bounds_the_work(conn: psycopg.Connection) -> None:
    for i in range(10):
        insert(conn, status="queued", age_days=8 + i)
    result = sweep(conn, Target(), options(batch_size=2, max_batches=3, **LIVE))
    assert [b.changed for b in result.batches] == [2, 2, 2]
    assert result.stop_reason == "max_batches"
    assert sum(v == "stale_expired" for v in statuses(conn).values()) == 6


def test_dry_run_changes_nothing(conn: psycopg.Connection) -> None:
    standard_mix(conn)
    before = state(conn)
    result = sweep(conn, Target(), options(batch_size=2))
    assert state(conn) == before
    assert result.dry_run and result.stop_reason == "dry_run" and result.changed == 0
    assert result.candidates_at_start == 4 and result.would_change == 4 and result.would_batches == 2


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


# -- batch sizes -------------------------------------------------------------------------


def test_batches_shrink_to_the_wal_budget_and_still_change_every_candidate_once(conn: psycopg.Connection, dsn: str) -> None:
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


def test_batch_size_halves_after_a_slow_batch_and_grows_back() -> None:
    opts = options(batch_size=1000, target_batch_ms=100)
    assert next_batch_size(opts, 1000, 1000, 0.09) == 1000  # on target: unchanged
    assert next_batch_size(opts, 1000, 1000, 0.26) == 500  # a checkpoint's page images: halve
    assert next_batch_size(opts, 500, 500, 0.12) == 500  # still slow per row: stay
    assert next_batch_size(opts, 500, 500, 0.045) == 1000  # cheap again: back to batch_size, never above
    assert next_batch_size(opts, 60, 60, 10.0) == 50  # never below 50 rows
    assert next_batch_size(options(batch_size=1000, target_batch_ms=0), 1000, 1000, 5.0) == 1000  # 0: fixed


def test_a_delete_batch_fits_the_archive_budget() -> None:
    from runbook.rules.pacing import ARCHIVE_BUDGET_BYTES as budget

    opts = options(batch_size=1000)
    assert next_batch_size(opts, 1000, 1000, 0.1, archive_bytes=budget // 2) == 1000  # within budget
    assert next_batch_size(opts, 1000, 1000, 0.3, archive_bytes=budget * 2) == 500  # 2x the budget: half the rows
    assert next_batch_size(opts, 500, 500, 0.1, archive_bytes=budget // 4) == 1000  # small rows again: back up
    assert next_batch_size(opts, 100, 100, 0.1, archive_bytes=budget * 100) == 50  # never below 50 rows


def test_batch_size_fits_the_wal_budget_and_grows_back_slowly() -> None:
    opts = options(batch_size=1000)
    mb = 1 << 20
    assert next_batch_size(opts, 1000, 1000, 0.08, 4 * mb, 8 * mb) == 1000  # within budget: batch_size
    assert next_batch_size(opts, 1000, 1000, 0.2, 18 * mb, 8 * mb) == 444  # 18 KB a row: 8 MB fits 444
    assert next_batch_size(opts, 444, 444, 0.04, 1 * mb, 8 * mb) == 466  # cheap again: grows back 5% a batch
    assert next_batch_size(opts, 990, 990, 0.04, 1 * mb, 8 * mb) == 1000  # never above batch_size
    assert next_batch_size(opts, 100, 100, 0.5, 100 * mb, 8 * mb) == 50  # never below 50 rows
    assert next_batch_size(options(batch_size=20), 20, 20, 0.5, 100 * mb, 8 * mb) == 20  # nor below a smaller batch_size
    assert next_batch_size(opts, 1000, 1000, 0.2, 18 * mb, 0) == 1000  # no budget: fixed
    assert next_batch_size(options(batch_size=1000, target_batch_ms=100), 1000, 1000, 0.26, 4 * mb, 8 * mb) == 500  # slower limit wins


def test_a_backlog_of_several_windows_without_an_index_is_warned_of_before_the_first_write_and_not_with_it(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each window costs a full scan of the table unless an index finds the candidates: the
    record says so (and how to build it); with the runbook's index, windows are index scans."""
    import runbook.ops.sweep as sweep_module
    from runbook import create_index
    from tests.rows import TABLE, many

    monkeypatch.setattr(sweep_module, "SNAPSHOT_WINDOW", 7)
    conn.execute(
        f"INSERT INTO {TABLE} (id, unified_object_id, model_object_id, file_object, file_purpose, created_at, updated_at, status)"
        " SELECT 'done-' || g, 'u-done-' || g, 'm-done-' || g, '{}', 'response', now() - interval '30 days', now(), 'completed'"
        " FROM generate_series(1, 5000) AS g"
    )  # terminal rows, so that an index on the candidates is worth using
    conn.execute(f"ANALYZE {TABLE}")
    many(conn, 23)
    dry = sweep(conn, Target(), options(batch_size=3))
    assert dry.warnings == []  # a dry run counts, and says nothing of windows
    at_first_batch: list[list[str]] = []
    unindexed = sweep(conn, Target(), options(batch_size=3, max_batches=1, **LIVE),
                      on_batch=lambda result, _: at_first_batch.append(list(result.warnings)))  # fmt: skip
    (note,) = [w for w in unindexed.warnings if "windows" in w]
    assert note in at_first_batch[0]  # said before the first batch was written
    assert note.startswith("23 candidates are 4 windows of 7 and no index finds them: this sweep reads the whole of "
                           "LiteLLM_ManagedObjectTable once per window (4 full scans). 05_create_index builds")  # fmt: skip
    assert "CREATE INDEX CONCURRENTLY" in note and unindexed.changed == 3
    assert create_index(conn, Target(), dry_run=False).valid
    conn.execute(f"ANALYZE {TABLE}")
    indexed = sweep(conn, Target(), options(batch_size=3, **LIVE))
    assert indexed.changed == 20 and indexed.stop_reason == "done"
    assert not [w for w in indexed.warnings if "windows" in w], indexed.warnings
    # The same index serves LiteLLM's poller's claim of the oldest queued responses (a full scan without it).
    poller = (
        f"EXPLAIN SELECT id FROM {TABLE} WHERE file_purpose = 'response' AND status IN ('queued', 'in_progress')"
        " ORDER BY created_at LIMIT 50 FOR UPDATE"
    )
    plan = "\n".join(str(r[0]) for r in conn.execute(poller))
    assert 'Index Scan using "LiteLLM_ManagedObjectTable_runbook_stale_idx"' in plan and "Seq Scan" not in plan, plan


def test_a_backlog_larger_than_the_snapshot_window_is_swept_window_by_window_oldest_first(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate snapshot holds at most SNAPSHOT_WINDOW entries (bounded temp space and
    sort memory whatever the backlog); the next window starts after the last one's end."""
    import runbook.ops.sweep as sweep_module
    from tests.rows import many

    monkeypatch.setattr(sweep_module, "SNAPSHOT_WINDOW", 7)
    ids = many(conn, 23)  # oldest first: each one a little older than the one before
    ordered = list(reversed(ids))
    result = sweep(conn, Target(), options(batch_size=3, workers=1, **LIVE), run_id="windows")
    assert (result.stop_reason, result.changed, result.candidates_at_start) == ("done", 23, 23)
    by_batch: dict[int, set[str]] = {}
    for batch, object_id in conn.execute("SELECT batch, object_id FROM litellm_runbook.changes WHERE run_id = 'windows'"):
        by_batch.setdefault(batch, set()).add(object_id)
    sizes = [b.selected for b in result.batches]
    assert sizes == [3, 3, 1] * 3 + [2]  # batches of 3 within each window of 7: 7 + 7 + 7 + 2
    at = 0
    for number, size in zip(sorted(by_batch), sizes):  # oldest first, across windows
        assert by_batch[number] == set(ordered[at : at + size])
        at += size
