"""A server crash on a server with durable settings: what the sweep reports is what the ledger holds.

Batches commit asynchronously (``synchronous_commit=off`` per batch): a crash can lose a
batch whose commit was already acknowledged. The sweep must reconcile its result with
``litellm_runbook.batches`` before it reports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbook import Target, options, sweep
from runbook.tools.demo import reset_database
from runbook.db.embedded import EmbeddedServer
from runbook.errors import ConnectionLostError
from tests.fix_db import track
from tests.rows import insert, statuses

# Durable, as a production server: fsync and synchronous commit on. The WAL writer waits
# its longest (10 s) between writes, so that an asynchronous commit acknowledged just
# before the crash is still only in the server's WAL buffers when it dies: the loss is
# certain instead of a race with a 200 ms timer. No autovacuum: nothing else writes WAL.
DURABLE = "-c fsync=on -c full_page_writes=on -c synchronous_commit=on -c wal_writer_delay=10000 -c autovacuum=off"


def _durable_options(server: EmbeddedServer) -> str:
    """The command line the server was started with (``postmaster.opts``), with DURABLE
    last (the last ``-c`` of a setting wins): the embedded server's own start options
    turn fsync off."""
    recorded = (server.pgdata / "postmaster.opts").read_text().strip()  # the binary, then its quoted arguments
    return f"{recorded.split(' ', 1)[1]} {DURABLE}"


def _start(server: EmbeddedServer, opts: str) -> None:
    server._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(server.pgdata), "-l", str(server.log), "-o", opts)


@pytest.fixture
def durable() -> Iterator[tuple[EmbeddedServer, str]]:
    """A server of its own, restarted with DURABLE settings; its start options with them."""
    home = Path(tempfile.mkdtemp(prefix="litellm-runbook-durable-", dir="/var/tmp"))
    server = track(EmbeddedServer(home))
    try:
        server.start()
        opts = _durable_options(server)
        server.stop()
        _start(server, opts)
        yield server, opts
    finally:
        server.destroy()


def test_batches_a_crash_lost_are_not_reported_and_the_run_is_closed(durable: tuple[EmbeddedServer, str]) -> None:
    server, opts = durable
    dsn = reset_database(server.dsn(), "litellm_durable")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')").fetchone() == ("on", "on")
        ids = [insert(conn, status="queued", age_days=20 - i / 10) for i in range(9)]  # ids[0] oldest

    def crash(result: object, batch: Any) -> None:
        if batch.number == 1:
            # A synchronous commit that wrote WAL, in another session, flushes the WAL so far:
            # batch 1 is durable.
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("CREATE TEMP TABLE flush_marker ()")
        if batch.number == 2:
            # Batch 2's commit was acknowledged, its WAL not yet written: lost with the server.
            server._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(server.pgdata))
            _start(server, opts)

    with psycopg.connect(dsn, autocommit=True) as worker:
        with pytest.raises(ConnectionLostError) as err:
            sweep(worker, Target(), options(batch_size=3, workers=1, dry_run=False), run_id="crashed", on_batch=crash)
    message = str(err.value)
    assert "lost during batch 3 of run crashed" in message
    assert (
        "that batch rolled back; the 1 other batch(es) committed so far stand with their ledger (3 rows). Batch(es) 2 "
        "were acknowledged but are not in the ledger after reconnecting: lost with the server's unflushed WAL "
        "(asynchronous commit); their rows are still candidates. Run again with run_id=crashed to finish."
    ) in message

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert statuses(conn) == {**{k: "stale_expired" for k in ids[:3]}, **{k: "queued" for k in ids[3:]}}
        assert conn.execute("SELECT batch, rows_changed FROM litellm_runbook.batches WHERE run_id = 'crashed'").fetchall() == [(1, 3)]
        row = conn.execute(
            "SELECT finished_at IS NOT NULL, stop_reason, rows_changed, (outcome->>'changed')::int,"
            " jsonb_path_query_array(outcome, '$.batches[*].number'), outcome->>'stop_detail'"
            " FROM litellm_runbook.runs WHERE run_id = 'crashed'"
        ).fetchone()
        assert row is not None and row[:5] == (True, "failed", 3, 3, [1])
        assert "batch(es) 2 were acknowledged but are not in the ledger after reconnecting" in str(row[5])

        again = sweep(conn, Target(), options(batch_size=3, workers=1, dry_run=False), run_id="crashed")
        assert (again.stop_reason, again.changed, again.batches[0].number) == ("done", 6, 2)
        assert set(statuses(conn).values()) == {"stale_expired"}
