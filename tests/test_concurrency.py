"""LiteLLM keeps working during a sweep: its completions are never overwritten, rows its poller
holds are skipped, and sweeps started at once never change a row twice."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.errors import SweepInProgressError
from runbook.notebook.render import sweep_result
from runbook.tools.demo import load_demo_rows
from tests.rows import TABLE, insert, many, state, statuses
from tests.runs import LIVE, assert_consistent, candidates_of

# -- LiteLLM's poller --------------------------------------------------------------------


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


@contextmanager
def held(dsn: str, key: str, for_s: float | None = None) -> Iterator[None]:
    """LiteLLM's poller claiming one row from another connection: FOR UPDATE from entry until
    ``for_s`` seconds later (or the end of the block), then let go unchanged."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as holder:
            holder.execute(f"SELECT 1 FROM {TABLE} WHERE id = %s FOR UPDATE", [key])
            locked.set()
            release.wait(60)
            holder.rollback()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    if for_s is not None:
        threading.Timer(for_s, release.set).start()
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def test_a_row_held_for_a_moment_is_taken_by_a_later_pass_after_a_wait_not_left_behind(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(4)]
    with held(dsn, ids[3], for_s=1.5):  # the oldest row; a poller's claim ends; the sweep's first wait is 1 s
        result = sweep(conn, Target(), options(batch_size=10, **LIVE))
    assert result.stop_reason == "done" and result.changed == 4 and result.remaining == 0
    assert statuses(conn) == {k: "stale_expired" for k in ids}
    assert [b.changed for b in result.batches if b.changed] == [3, 1]  # the passes that found it held changed nothing
    assert result.signals["held_rows_waits_seconds"] >= 1.0
    assert "s for rows others held" in sweep_result(result).plain


def test_a_row_held_for_good_ends_remaining_locked_after_waits_of_1_2_and_4_s(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(3)]
    with held(dsn, ids[0]):
        started = time.monotonic()
        result = sweep(conn, Target(), options(batch_size=10, **LIVE))
        took = time.monotonic() - started
    assert result.stop_reason == "remaining_locked" and result.changed == 2 and result.remaining == 1
    assert result.signals["held_rows_waits_seconds"] == pytest.approx(7.0, abs=0.3)
    assert 7.0 <= took < 30
    assert statuses(conn) == {ids[0]: "queued", ids[1]: "stale_expired", ids[2]: "stale_expired"}


def test_a_stop_during_the_wait_for_held_rows_ends_the_run_at_once(conn: psycopg.Connection, dsn: str) -> None:
    ids = [insert(conn, status="queued", age_days=10 + i) for i in range(3)]
    asked = time.monotonic() + 1.5  # during the second wait (1 s, then 2 s)
    with held(dsn, ids[0]):
        result = sweep(conn, Target(), options(batch_size=10, **LIVE), should_stop=lambda: time.monotonic() >= asked)
        late = time.monotonic() - asked
    assert result.stop_reason == "stop_requested" and result.changed == 2
    assert 0 <= late < 1.0, f"the stop came {late:.2f} s after it was asked"
    assert statuses(conn)[ids[0]] == "queued"


def _poller(dsn: str, stop: threading.Event, completed: set[str], latencies: list[float]) -> None:
    """LiteLLM's poller: claim the 50 oldest queued/in_progress responses, complete some."""
    rng = random.Random(7)
    with psycopg.connect(dsn, autocommit=True) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            with c.transaction():
                claimed = [
                    r[0]
                    for r in c.execute(
                        f"SELECT id FROM {TABLE} WHERE file_purpose = 'response' AND status IN ('queued', 'in_progress')"
                        " ORDER BY created_at LIMIT 50 FOR UPDATE"
                    )
                ]
                done = [k for k in claimed if rng.random() < 0.3]
                c.execute(f"UPDATE {TABLE} SET status = 'completed' WHERE id = ANY(%s)", [done])
            completed.update(done)
            latencies.append(time.monotonic() - t0)
            time.sleep(0.01)  # LiteLLM's poller runs on a schedule (every few seconds), not flat out


def test_concurrent_poller_completions_are_never_overwritten(
    conn: psycopg.Connection, dsn: str, record_property: Any
) -> None:
    load_demo_rows(dsn, 6000)
    before, cands = state(conn), candidates_of(conn)
    stop, completed, latencies = threading.Event(), set(), []  # type: ignore[var-annotated]
    poller = threading.Thread(target=_poller, args=(dsn, stop, completed, latencies))
    poller.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as worker:
            result = sweep(worker, Target(), options(batch_size=50, pause_s=0.01, **LIVE))
    finally:
        stop.set()
        poller.join(30)
    # Every pass may find the oldest rows in the poller's hands on a loaded machine: then the
    # sweep says so (never waits on them), and they go once the poller has let go.
    assert result.stop_reason in ("done", "remaining_locked")
    if result.stop_reason == "remaining_locked":
        assert sweep(conn, Target(), options(batch_size=50, **LIVE)).stop_reason == "done"
    final = statuses(conn)
    assert completed and all(final[k] == "completed" for k in completed)
    after = state(conn)
    changed = {k for k in before if after[k] != before[k]} - completed
    assert changed <= cands
    logged = {r[0] for r in conn.execute("SELECT object_id FROM litellm_runbook.changes")}
    assert logged == {k for k in changed if final[k] == "stale_expired"} and not logged & completed
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 2 else max(latencies)
    record_property("poller_p99_ms", round(p99 * 1000, 1))
    print(f"poller: {len(latencies)} cycles, p99 {p99 * 1000:.1f} ms; completed {len(completed)} rows during the sweep")
    assert p99 < 5.0  # the poller never waited out a lock_timeout-sized stall: no deadlock, no long block


# -- sweeps started at once --------------------------------------------------------------


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
    # test_lock.py::test_the_sweep_holds_its_target_lock_while_it_writes shows the lock.
    assert len(results) + len(refused) == 4 and len(results) >= 1
    assert sum(r.changed for r in results) == 300  # type: ignore[attr-defined]
    assert set(statuses(conn).values()) == {"stale_expired"}
    # the ledger holds each row exactly once
    counted = conn.execute("SELECT count(*), count(DISTINCT object_id) FROM litellm_runbook.changes").fetchone()
    assert counted == (300, 300)


@pytest.mark.parametrize("sweeps", [2, 4])
def test_sweeps_started_together_one_works_the_others_stop(conn: psycopg.Connection, dsn: str, sweeps: int) -> None:
    many(conn, 40)
    before, cands = state(conn), candidates_of(conn)
    barrier = threading.Barrier(sweeps)
    results: list[Any] = []
    refused: list[str] = []

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            barrier.wait()
            try:
                results.append(sweep(c, Target(), options(batch_size=5, pause_s=0.1, **LIVE)))
            except SweepInProgressError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(sweeps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 1 and len(refused) == sweeps - 1
    assert results[0].changed == 40
    assert all("is running: pid " in m and "Nothing was written" in m for m in refused)
    assert assert_consistent(conn, before, cands) == cands
