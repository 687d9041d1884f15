"""What every writing run (sweep, undo) shares: the checks before the first write, the
target lock, per-batch session settings, the metrics file, and how a run ends.

    with live_run(conn, target, opts, kind=Kind.SWEEP, run_id=..., parameters=...) as run:
        stop = ... batches numbered from run.first_batch, asking run.stopper between them ...
        error = end_run(conn, target, run, result, stop, metrics)
    if error: raise error

``end_run`` records the stop in the result, writes the last metrics and closes the run's
ledger row (after a lost connection: on a new connection, keeping only the batches the
ledger holds); it returns the error to raise once the target's lock is released.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, Protocol

import psycopg

from .. import logs
from ..audit.archive import archive_root
from ..audit.metrics import write_metrics
from ..audit.record import operator
from ..db import control, ledger
from ..db.connect import connect_like, refuse_transaction_pooler
from ..db.lock import target_lock
from ..db.transactions import Conn
from ..errors import ConnectionLostError, ReadOnlyError, SweepInProgressError
from ..rules.params import Options
from ..rules.states import Kind, StopReason
from ..rules.target import DEFAULT_TARGET, Target
from ..sql import candidates, catalog
from ..sql import ledger as ledger_sql
from .stops import Stop, Stopper, interrupt_guard

__all__ = [
    "BatchResult", "LiveRun", "MetricsFile", "RunResult", "check_writable", "end_run", "live_run", "run_identity",
    "set_batch_settings", "utc_now",
]  # fmt: skip

log = logs.get(__name__)
_METRICS_EVERY_S = 1.0  # rewrite the metrics file at most this often while running


@dataclass(frozen=True)
class BatchResult:
    number: int
    selected: int  # snapshot entries this batch looked at
    changed: int  # rows it set (fewer when rows were locked or turned terminal)
    seconds: float
    committed_at: str
    retries: int = 0
    wal_bytes: int = 0  # WAL the server wrote during the batch (all sessions), before its commit
    archive_bytes: int = 0  # delete and clear: the archive lines this batch wrote, before compression


def _needs(target: Target, restore: bool) -> list[tuple[str, str | None]]:
    """The privileges a live run of ``target`` needs: (privilege, column or None for the table).
    A sweep marks (UPDATE of the status), deletes, or clears (UPDATE of the payloads);
    delete and clear read whole rows into the archive; an undo of a delete inserts them back."""
    if target.marks:
        return [("UPDATE", target.status_column)]
    if restore:
        return [("INSERT", None)] if target.action == "delete" else [("UPDATE", c) for c in target.payload_columns]
    # A delete locks its rows first (FOR UPDATE), which PostgreSQL allows with UPDATE of one column.
    act = [("DELETE", None), ("UPDATE", target.key_column)] if target.action == "delete" else [
        ("UPDATE", c) for c in target.payload_columns]
    return [("SELECT", None), *act]


def check_writable(conn: Conn, target: Target, restore: bool = False) -> None:
    """ReadOnlyError unless this session can make the target's change on a primary (with
    ``restore``: undo it)."""
    table = candidates.table(target).as_string(conn)
    row = conn.execute(catalog.write_privileges(), {"table": table, "column": target.key_column}).fetchone()
    assert row is not None
    if row[0]:
        raise ReadOnlyError("the server is a read-only standby (pg_is_in_recovery() is true): refused, nothing written")
    if row[1] == "on":
        raise ReadOnlyError("default_transaction_read_only is on for this session: refused, nothing written")
    for privilege, column in _needs(target, restore):
        held = conn.execute(catalog.privilege(), {"table": table, "column": column, "privilege": privilege}).fetchone()
        if not (held and held[0]):
            what = f"{privilege} {table}" + (f".{column}" if column else "")
            grant = f"GRANT {privilege}" + (f" ({column})" if column else "") + f" ON {table} TO {row[3]}"
            raise ReadOnlyError(
                f"role {row[3]} may not {what}: refused, nothing written ({grant}; or run inspect/preview only)"
            )
    if not row[4]:
        raise ReadOnlyError(
            f"role {row[3]} may not create temporary tables (the candidate snapshot): refused, nothing written "
            f"(GRANT TEMPORARY ON DATABASE {conn.info.dbname} TO {row[3]})"
        )


def utc_now(timespec: str = "milliseconds") -> str:
    """Now, as ISO 8601 UTC with a Z: the form every record and ledger row uses."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def set_batch_settings(conn: Conn, opts: Options, factor: float = 1.0) -> str:
    """Set this transaction's timeouts and asynchronous commit; return the server's WAL
    insert position (a ``pg_lsn``: ``candidates.batch_update`` reports the WAL written since)."""
    # synchronous_commit off: a batch and its ledger rows are one statement, so a server
    # crash can only lose whole batches of the last moment, whose rows are then still
    # candidates; in exchange each commit stops waiting for a WAL flush (6 ms -> 1 ms).
    row = conn.execute(
        catalog.batch_settings(),
        {
            "lock_timeout": f"{int(opts.lock_timeout_s * 1000)}ms",
            "statement_timeout": f"{int(opts.statement_timeout_s * 1000 * factor)}ms",
        },
    ).fetchone()
    return str(row[3]) if row else ""


@dataclass(frozen=True)
class LiveRun:
    """A registered live run: what it is, the number its next batch gets, and when to stop."""

    kind: Kind
    first_batch: int
    stopper: Stopper


def run_identity(conn: Conn, target: Target, opts: Options, kind: Kind, undoes_run_id: str | None) -> dict[str, Any]:
    """What a resume of a run id must match (``ledger.IDENTITY_KEYS``). Reads only."""
    who = operator(conn)
    sweep_rule = kind is Kind.SWEEP
    return {
        "kind": kind,
        "target": f"{target.schema}.{target.table}",
        # The catalogue's target on that table; None for the default one, as runs recorded
        # before the catalogue existed hold it.
        "rule": None if target.name == DEFAULT_TARGET else target.name,
        "cutoff": opts.cutoff.isoformat() + "Z" if sweep_rule and opts.cutoff else None,
        "stale_after_days": opts.stale_after_days if sweep_rule and not opts.cutoff else None,
        "undoes_run_id": undoes_run_id,
        # Where a delete or clear archives (None: archive=False): one run keeps one archive,
        # or its undo would find half of it. None for a mark target, as older runs hold it.
        "archive": (str(archive_root(opts.archive_dir)) if opts.archive else None) if sweep_rule and not target.marks else None,
        "session_user": who.get("session_user"),
        "current_user": who.get("current_user"),
        "os_user": who.get("os_user"),
    }


@contextmanager
def live_run(
    conn: Conn, target: Target, opts: Options, *, kind: Kind, run_id: str, parameters: dict[str, Any],
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
    check_writable(conn, target, restore=kind is Kind.UNDO)
    ledger.ensure(conn)
    with target_lock(conn, target), interrupt_guard() as interrupted:
        # Before the runs row commits: `runbook stop` may ask the moment it does, and a
        # request dated before this clock would be taken for an earlier invocation's.
        since = conn.execute(catalog.clock()).fetchone()[0]  # type: ignore[index]
        first = ledger.start_run(
            conn, run_id=run_id, kind=kind, target=f"{target.schema}.{target.table}", operator=operator(conn),
            parameters=parameters, identity=run_identity(conn, target, opts, kind, undoes_run_id),
            undoes_run_id=undoes_run_id,
        )  # fmt: skip
        remote = partial(control.stop_requested, conn, run_id, since)
        yield LiveRun(kind, first, Stopper(opts, started, interrupted, should_stop, remote))


class MetricsFile:
    """The run's Prometheus textfile (``audit.metrics``), rewritten at most once a second
    while the run goes on and once at its end. Metrics only watch the run: a file that
    cannot be written is a warning (logged once, kept in the result's ``warnings``)."""

    def __init__(self, opts: Options, run_id: str, kind: Kind, target: Target, started: float) -> None:
        self.directory, self.run_id, self.kind = opts.metrics_dir, run_id, kind
        self.table, self.started = f"{target.schema}.{target.table}", started
        self.path: str | None = None
        self._last = 0.0

    def publish(self, result: RunResult, outcome: str, *, remaining: int | None, finished: bool = False) -> None:
        now = time.monotonic()
        if not self.directory or (not finished and now - self._last < _METRICS_EVERY_S):
            return
        self._last = now
        try:
            self.path = str(write_metrics(
                self.directory, run_id=self.run_id, kind=str(self.kind), table=self.table,
                rows_changed=result.rows_changed, rows_remaining=remaining,
                batch_seconds=[b.seconds for b in result.batches], outcome=outcome, run_seconds=now - self.started,
                finished=finished,
            ))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - whatever broke the file, the run goes on
            note = f"metrics file not written to metrics_dir={self.directory!r}: {type(exc).__name__}: {exc}"
            if note not in result.warnings:
                result.warnings.append(note)
                log.warning(f"warning: {note}")
        result.metrics_file = self.path or result.metrics_file


class RunResult(Protocol):
    """What ``end_run`` needs of a SweepResult or an UndoResult."""

    run_id: str | None
    batches: list[BatchResult]
    stop_reason: str
    stop_detail: str
    seconds: float
    warnings: list[str]
    metrics_file: str | None

    @property
    def rows_changed(self) -> int: ...

    def keep_batches(self, kept: list[BatchResult]) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...


def end_run(
    conn: Conn, target: Target, run: LiveRun, result: RunResult, stop: Stop, metrics: MetricsFile, started: float,
    remaining: int | None,
) -> BaseException | None:  # fmt: skip
    """Record how the run ended: ``stop`` in ``result``, the last metrics, the ledger's runs
    row closed (``close_run``). Call it while the target's lock is held. Returns the error
    the caller raises once the lock is released: None, the stop's error, or
    ConnectionLostError naming the batch that rolled back and what stands."""
    result.stop_reason, result.stop_detail = stop.reason, stop.detail
    if stop.reason is StopReason.CANCELLED:
        log.warning(f"stopped: {stop.detail}")
    result.seconds = round(time.monotonic() - started, 4)
    error = stop.error
    lost = isinstance(error, psycopg.OperationalError) and (stop.lost_batch is not None or conn.broken or conn.closed)
    if not lost:
        metrics.publish(result, result.stop_reason, remaining=remaining, finished=True)
        close_run(conn, str(result.run_id), result.stop_reason, result.to_dict())
        return error
    assert error is not None
    batch = stop.lost_batch or (result.batches[-1].number + 1 if result.batches else run.first_batch)
    stands = _reconcile(conn, target, result, run)  # closes the runs row on a new connection
    metrics.publish(result, result.stop_reason, remaining=remaining, finished=True)
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    kind, own_id = ("undo run", "undo_run_id") if run.kind is Kind.UNDO else ("run", "run_id")
    lost_error = ConnectionLostError(
        f"the connection to the database was lost during batch {batch} of {kind} {result.run_id} ({first_line}): that "
        f"batch rolled back; {stands} Run again with {own_id}={result.run_id} to finish."
    )
    lost_error.__cause__ = error
    return lost_error


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
        log.warning(f"warning: the ledger's runs row of {run_id} could not be closed: {type(exc).__name__}: {exc}")
        return False
    return True


def _reconcile(conn: Conn, target: Target, result: RunResult, run: LiveRun, wait_s: float = 30.0) -> str:
    """After the connection was lost: keep in ``result`` only the batches the ledger holds,
    close the runs row on a new connection, and say what stands, as a sentence.

    A batch commits asynchronously (``set_batch_settings``): a server crash can lose the
    last ones although their commit was acknowledged. On a new connection, keeps the
    batches that the ledger's ``batches`` table has for this invocation (numbers from
    ``run.first_batch``) and closes the runs row while holding the target's lock (a sweeper
    role may update a runs row only then; another run holding it leaves the row open).
    When no connection can be made within ``wait_s`` seconds nothing is known, and the
    runs row stays open.
    """
    try:
        fresh = connect_like(conn, "reconcile", wait_s=wait_s)
    except psycopg.OperationalError:
        result.stop_detail += "; could not reconnect to check which acknowledged batches the ledger holds"
        return (
            f"{len(result.batches)} other batch(es) were acknowledged, but the server could not be reached again to check "
            f"that the ledger holds them (asynchronous commit: a crash loses the last ones); see {ledger.SCHEMA}.batches."
        )
    with fresh:
        rows = fresh.execute(ledger_sql.ledger_batches(), {"run_id": result.run_id, "first_batch": run.first_batch}).fetchall()
        there = {int(r[0]) for r in rows}
        lost = [b.number for b in result.batches if b.number not in there]
        result.keep_batches([b for b in result.batches if b.number in there])
        gone = (
            f"atch(es) {', '.join(map(str, lost))} were acknowledged but are not in the ledger after reconnecting: "
            "lost with the server's unflushed WAL (asynchronous commit)"
        )
        if lost:
            result.stop_detail += f"; b{gone}, their rows are still candidates"
        try:
            with target_lock(fresh, target):
                close_run(fresh, str(result.run_id), result.stop_reason, result.to_dict())
        except SweepInProgressError as exc:
            log.warning(f"warning: the ledger's runs row of {result.run_id} stays open: {exc}")
    unit = "rows restored" if run.kind is Kind.UNDO else "rows"
    text = f"the {len(result.batches)} other batch(es) committed so far stand with their ledger ({result.rows_changed:,} {unit})."
    return text + (f" B{gone}; their rows are still candidates." if lost else "")
