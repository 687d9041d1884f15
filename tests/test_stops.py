"""How an operator stops a sweep without the panel: a stop file or max_seconds at the next batch
boundary; a first interrupt lets the batches in flight commit, a second rolls them back."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runbook import Target, options, sweep
from tests.rows import insert, sessions_left, state, statuses
from tests.runs import LIVE


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


# -- interrupts --------------------------------------------------------------------------


def test_interrupt_stops_at_batch_boundary(conn: psycopg.Connection) -> None:
    for i in range(9):
        insert(conn, status="queued", age_days=8 + i)

    def interrupt_after_second(result: object, batch: object) -> None:
        if batch.number == 2:  # type: ignore[attr-defined]
            raise KeyboardInterrupt

    result = sweep(conn, Target(), options(batch_size=3, **LIVE), on_batch=interrupt_after_second)
    assert result.stop_reason == "interrupted"
    assert sum(v == "stale_expired" for v in statuses(conn).values()) == 6 == result.changed


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


def test_a_rate_budget_holds_the_sweep_to_its_rows_per_second_and_the_record_says_how_long(conn: psycopg.Connection) -> None:
    import time

    from tests.rows import many

    many(conn, 120)
    started = time.monotonic()
    result = sweep(conn, Target(), options(batch_size=20, workers=1, max_rows_per_second=200, dry_run=False))
    elapsed = time.monotonic() - started
    assert result.stop_reason == "done" and result.changed == 120
    # 120 rows at 200 a second: the last round may only end after 0.6 s (a lower bound only).
    assert elapsed >= 0.5 and result.signals["budget_waits_seconds"] > 0.2
    assert options().max_rows_per_second == 0  # no budget unless asked
