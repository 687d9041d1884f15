"""What every writing run (sweep, undo) shares: the checks before the first write, the
target lock, stop conditions between batches, per-batch session settings, and closing
the run's ledger row.

    with live_run(conn, target, opts, kind="sweep", run_id=..., parameters=...) as run:
        ... batches numbered from run.first_batch, stopping when run.stopper.reason(n) ...
        close_run(conn, run_id, stop_reason, record)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any, Protocol

import psycopg
from psycopg import conninfo

from ..db import ledger
from ..sql import statements
from ..errors import ReadOnlyError, SweepInProgressError
from ..db.connect import refuse_transaction_pooler
from ..db.health import HealthLimits, check_health
from ..db.lock import target_lock
from ..audit.metrics import write_metrics
from ..rules.params import Options
from ..audit.record import operator
from ..db.transactions import Conn
from ..rules.target import Target

__all__ = [
    "BatchResult", "LiveRun", "Stopper", "check_writable", "close_run", "interrupt_guard", "live_run",
    "publish_metrics", "reconcile", "run_identity", "set_batch_settings", "utc_now", "wait_until_healthy",
]  # fmt: skip


@dataclass(frozen=True)
class BatchResult:
    number: int
    selected: int  # snapshot entries this batch looked at
    changed: int  # rows it set (fewer when rows were locked or turned terminal)
    seconds: float
    committed_at: str
    retries: int = 0
    wal_bytes: int = 0  # WAL the server wrote during the batch (all sessions), before its commit


def check_writable(conn: Conn, target: Target) -> None:
    """ReadOnlyError unless this session can UPDATE the table on a primary."""
    table = statements.table(target).as_string(conn)
    row = conn.execute(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
        " has_column_privilege(%s, %s, 'UPDATE'), current_user,"
        " has_database_privilege(current_database(), 'TEMPORARY')",
        [table, target.status_column],
    ).fetchone()
    assert row is not None
    if row[0]:
        raise ReadOnlyError("the server is a read-only standby (pg_is_in_recovery() is true): refused, nothing written")
    if row[1] == "on":
        raise ReadOnlyError("default_transaction_read_only is on for this session: refused, nothing written")
    if not row[2]:
        raise ReadOnlyError(
            f"role {row[3]} may not UPDATE {table}.{target.status_column}: refused, nothing written "
            f"(GRANT SELECT, UPDATE ({target.status_column}) ON {table} TO {row[3]}; or run inspect/preview only)"
        )
    if not row[4]:
        raise ReadOnlyError(
            f"role {row[3]} may not create temporary tables (the candidate snapshot): refused, nothing written "
            f"(GRANT TEMPORARY ON DATABASE {conn.info.dbname} TO {row[3]})"
        )


@contextmanager
def interrupt_guard() -> Iterator[Callable[[], bool]]:
    """While active, the first SIGINT only raises a flag; a second one interrupts at once.

    Yields a function telling whether SIGINT arrived. Outside the main thread signals
    cannot be handled, and KeyboardInterrupt keeps its usual meaning.
    """
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: flag["hit"]
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True
        print("interrupt: stopping after the batches in flight (interrupt again to abort them)", flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["hit"]
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Stopper:
    """Decides, between batches (rounds of batches, with several workers), whether to stop and why."""

    opts: Options
    started: float
    interrupted: Callable[[], bool]
    should_stop: Callable[[], bool] | None = None

    def reason(self, batches_done: int) -> str | None:
        if self.interrupted():
            return "interrupted"
        if self.opts.stop_file and os.path.exists(self.opts.stop_file):
            return "stop_file"
        if batches_done >= self.opts.max_batches:
            return "max_batches"
        if time.monotonic() - self.started >= self.opts.max_seconds:
            return "max_seconds"
        if self.should_stop is not None and self.should_stop():
            return "stop_requested"
        return None


def utc_now(timespec: str = "milliseconds") -> str:
    """Now, as ISO 8601 UTC with a Z: the form every record and ledger row uses."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def set_batch_settings(conn: Conn, opts: Options, factor: float = 1.0) -> str:
    """Set this transaction's timeouts and asynchronous commit; return the server's WAL
    insert position (a ``pg_lsn``: ``statements.batch_update`` reports the WAL written since)."""
    # synchronous_commit off: a batch and its ledger rows are one statement, so a server
    # crash can only lose whole batches of the last moment, whose rows are then still
    # candidates; in exchange each commit stops waiting for a WAL flush (6 ms -> 1 ms).
    row = conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
        " set_config('synchronous_commit', 'off', true), pg_current_wal_insert_lsn()",
        [f"{int(opts.lock_timeout_s * 1000)}ms", f"{int(opts.statement_timeout_s * 1000 * factor)}ms"],
    ).fetchone()
    return str(row[3]) if row else ""


@dataclass(frozen=True)
class LiveRun:
    """A registered live run: the number its next batch gets, and when to stop."""

    first_batch: int
    stopper: Stopper


def run_identity(conn: Conn, target: Target, opts: Options, kind: str, undoes_run_id: str | None) -> dict[str, Any]:
    """What a resume of a run id must match (``ledger.IDENTITY_KEYS``). Reads only."""
    who = operator(conn)
    sweep_rule = kind == "sweep"
    return {
        "kind": kind,
        "target": f"{target.schema}.{target.table}",
        "cutoff": opts.cutoff.isoformat() + "Z" if sweep_rule and opts.cutoff else None,
        "stale_after_days": opts.stale_after_days if sweep_rule and not opts.cutoff else None,
        "undoes_run_id": undoes_run_id,
        "session_user": who.get("session_user"),
        "current_user": who.get("current_user"),
        "os_user": who.get("os_user"),
    }


@contextmanager
def live_run(
    conn: Conn, target: Target, opts: Options, *, kind: str, run_id: str, parameters: dict[str, Any],
    undoes_run_id: str | None = None, should_stop: Callable[[], bool] | None = None,
) -> Iterator[LiveRun]:  # fmt: skip
    """Check, lock and register a writing run; the block runs its batches.

    Writes the ledger's runs row (and creates the ledger on first use). Raises, before any
    write to the table: ReadOnlyError, LedgerUnavailableError, SweepInProgressError,
    ParameterError (``run_id`` names a run of another identity, ``ledger.start_run``).
    """
    started = time.monotonic()
    # First: through a transaction pooler nothing below may run (its search_path is only
    # pinned per read-only transaction, and the ledger's creation would not be refused).
    refuse_transaction_pooler(conn, f"a live sweep or undo of {target.schema}.{target.table}")
    check_writable(conn, target)
    ledger.ensure(conn)
    with target_lock(conn, target), interrupt_guard() as interrupted:
        first = ledger.start_run(
            conn, run_id=run_id, kind=kind, target=f"{target.schema}.{target.table}", operator=operator(conn),
            parameters=parameters, identity=run_identity(conn, target, opts, kind, undoes_run_id),
            undoes_run_id=undoes_run_id,
        )  # fmt: skip
        yield LiveRun(first, Stopper(opts, started, interrupted, should_stop))


def publish_metrics(directory: str, warnings: list[str], **values: Any) -> str | None:
    """Write the run's metrics file (``metrics.write_metrics``) when ``directory`` is set;
    return its path. A file that cannot be written is a warning (appended to
    ``warnings`` and printed), never the run's failure: metrics only watch the run."""
    if not directory:
        return None
    try:
        return str(write_metrics(directory, **values))
    except Exception as exc:  # noqa: BLE001 - whatever broke the file, the run goes on
        note = f"metrics file not written to metrics_dir={directory!r}: {type(exc).__name__}: {exc}"
        if note not in warnings:
            warnings.append(note)
            print(f"warning: {note}", flush=True)
        return None


def close_run(conn: Conn, run_id: str, stop_reason: str, record: dict[str, Any]) -> bool:
    """Record how the run ended in the ledger; True when it did.

    On a broken connection, or when the write fails, the runs row stays open (its batches
    and their ledger rows are what count) and False is returned: closing never replaces
    the error the run is already ending with.
    """
    if conn.broken or conn.closed:
        return False
    try:
        ledger.finish_run(conn, run_id, stop_reason, record)
    except psycopg.Error as exc:
        print(f"warning: the ledger's runs row of {run_id} could not be closed: {type(exc).__name__}: {exc}", flush=True)
        return False
    return True


def _reconnect(conn: Conn, wait_s: float) -> Conn | None:
    """A new connection to the server ``conn`` (now broken) was connected to, trying for up to
    ``wait_s`` seconds (a crashed server recovers first); None if none could be made."""
    try:
        params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val is not None}
    except psycopg.Error:
        return None
    params.update(host=conn.info.host, port=str(conn.info.port), connect_timeout="5")
    app = params.get("application_name") or "litellm-runbook"
    params["application_name"] = f"{app}/reconcile"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return psycopg.connect(conninfo.make_conninfo(**params), autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)


def reconcile(
    conn: Conn, target: Target, run_id: str, first_batch: int, batches: list[BatchResult], stop_reason: str,
    record: Callable[[list[BatchResult], list[int]], dict[str, Any]], wait_s: float = 30.0,
) -> tuple[list[BatchResult], list[int]] | None:  # fmt: skip
    """After the connection was lost: the batches of ``batches`` the ledger really holds.

    A batch commits asynchronously (``set_batch_settings``): a server crash can lose the
    last ones although their commit was acknowledged. On a new connection, keeps the
    batches that ``litellm_runbook.batches`` has for this invocation (numbers from
    ``first_batch``), and closes the runs row with ``stop_reason`` and ``record(kept, lost)``
    while holding the target's lock (a sweeper role may update a runs row only then;
    another run holding it leaves the row open). Returns (kept, numbers of the lost
    batches), or None when no connection could be made within ``wait_s`` seconds (then
    nothing is known, and the runs row stays open).
    """
    fresh = _reconnect(conn, wait_s)
    if fresh is None:
        return None
    with fresh:
        rows = fresh.execute(statements.ledger_batches(), {"run_id": run_id, "first_batch": first_batch}).fetchall()
        there = {int(r[0]) for r in rows}
        kept = [b for b in batches if b.number in there]
        lost = [b.number for b in batches if b.number not in there]
        closing = record(kept, lost)
        try:
            with target_lock(fresh, target):
                close_run(fresh, run_id, stop_reason, closing)
        except SweepInProgressError as exc:
            print(f"warning: the ledger's runs row of {run_id} stays open: {exc}", flush=True)
    return kept, lost


class Paused(Protocol):
    """What ``wait_until_healthy`` records into: a SweepResult, an UndoResult."""

    pauses: list[dict[str, Any]]
    batches: list[Any]


def wait_until_healthy(
    conn: Conn, target: Target, opts: Options, stopper: Stopper, result: Paused, batch: int, since: datetime | None
) -> str | None:
    """Pause while the database is unhealthy, re-checking every ``health_pause_s``; append
    the pause to ``result.pauses``. Returns a stop reason when one came up meanwhile."""
    limits = HealthLimits(opts.max_replication_lag_bytes, opts.max_lock_waiters, opts.pause_during_vacuum)
    paused_at = time.monotonic()
    reasons: set[str] = set()
    stop: str | None = None
    while not stop and (problems := check_health(conn, target, since).problems(limits)):
        if not reasons:
            print(f"pausing before batch {batch}: {'; '.join(problems)}", flush=True)
        reasons.update(problems)
        time.sleep(opts.health_pause_s)
        stop = stopper.reason(len(result.batches))
    if reasons:
        result.pauses.append({"before_batch": batch, "reasons": sorted(reasons), "seconds": round(time.monotonic() - paused_at, 3)})
    return stop
