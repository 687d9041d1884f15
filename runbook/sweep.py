"""Sweep: mark stale rows in bounded batches, each batch its own short transaction.

What it writes: ``status = new_status`` on candidate rows, at most ``batch_size`` per
transaction, oldest first, and for each batch its ledger rows in the same statement
(``runbook.ledger``); nothing else. With ``dry_run=True`` (the default) it writes nothing
and reports what it would do.

How (see ``statements``): one scan snapshots the candidates into a temp table; batches
walk it by keyset, lock rows by primary key with SKIP LOCKED and re-check the whole
predicate at update time, so a concurrent completion always wins. When the snapshot is
used up, one count over the real table decides: nothing left (``done``), or another pass
over what is left (rows that were locked, or became candidates, meanwhile).

Before the first write: the server must be writable, the role must hold UPDATE, the
ledger must be writable, the target's advisory lock must be free, the candidates must
not exceed ``max_rows`` and, if given, the first batch must match ``expect_fingerprint``.

Stops only between batches: ``max_batches``, ``max_seconds``, the stop file appearing, a
kernel interrupt (the first SIGINT lets the batch in flight commit; a second one aborts
it, rolled back), or ``should_stop()``. A batch that hits lock_timeout or
statement_timeout rolls back and is retried smaller after a pause, ``max_retries`` times.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import psycopg

from . import ledger, statements
from .errors import ConnectionLostError, PreviewMismatchError, ReadOnlyError, TooManyCandidatesError
from .health import HealthLimits, check_health
from .locking import target_lock
from .metrics import write_metrics
from .params import Options
from .preview import fingerprint
from .record import new_run_id, operator
from .session import Conn, check_target, read_only, resolve_cutoff
from .target import Target

__all__ = ["BatchResult", "SweepResult", "sweep", "STOP_REASONS", "check_writable", "interrupt_guard", "Stopper"]

STOP_REASONS = (
    "done", "dry_run", "max_batches", "max_seconds", "stop_file", "interrupted", "stop_requested",
    "remaining_locked", "gave_up",
)  # fmt: skip
_MAX_PASSES = 5
_RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled, psycopg.errors.DeadlockDetected)


@dataclass(frozen=True)
class BatchResult:
    number: int
    selected: int  # snapshot entries this batch looked at
    changed: int  # rows it set (fewer when rows were locked or turned terminal)
    seconds: float
    committed_at: str
    retries: int = 0


@dataclass
class SweepResult:
    """The outcome of one sweep; ``to_dict()`` is the machine-readable record."""

    target: dict[str, Any]
    options: dict[str, Any]
    cutoff_utc: datetime
    dry_run: bool
    candidates_at_start: int
    run_id: str | None = None
    changed: int = 0
    batches: list[BatchResult] = field(default_factory=list)
    stop_reason: str = ""
    stop_detail: str = ""
    seconds: float = 0.0
    remaining: int | None = None  # counted at the end when cheap to know, else None
    would_change: int = 0  # dry run: rows the real sweep would change, at most
    would_batches: int = 0
    first_batch_fingerprint: str = ""
    retries: list[str] = field(default_factory=list)
    pauses: list[dict[str, Any]] = field(default_factory=list)
    metrics_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutoff_utc"] = self.cutoff_utc.isoformat() + "Z"
        return out


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
        print("interrupt: stopping after the batch in flight (interrupt again to abort it)", flush=True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["hit"]
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Stopper:
    """Decides, between batches, whether to stop and why."""

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


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _set_timeouts(conn: Conn, opts: Options, factor: float = 1.0) -> None:
    # synchronous_commit off: a batch and its ledger rows are one statement, so a server
    # crash can only lose whole batches of the last moment, whose rows are then still
    # candidates; in exchange each commit stops waiting for a WAL flush (6 ms -> 1 ms).
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
        " set_config('synchronous_commit', 'off', true)",
        [f"{int(opts.lock_timeout_s * 1000)}ms", f"{int(opts.statement_timeout_s * 1000 * factor)}ms"],
    )


def next_batch_size(opts: Options, planned: int, used: int, seconds: float) -> int:
    """The size of the next batch, given how long the last one (``used`` rows) took.

    A batch slower than 1.5x ``target_batch_ms`` halves the next one (after a checkpoint
    every first touch of a page writes a full-page image, and batches slow down for a
    while); once rows get cheap again, batches grow back to ``batch_size``.
    """
    if not opts.target_batch_ms or used == 0:
        return planned
    ms = seconds * 1000
    if ms > 1.5 * opts.target_batch_ms:
        return max(min(opts.batch_size, 50), planned // 2)
    if planned < opts.batch_size:
        fit = int(opts.target_batch_ms / (ms / used)) if ms > 0 else opts.batch_size
        return max(planned, min(opts.batch_size, fit, planned * 2))
    return planned


def sweep(
    conn: Conn,
    target: Target,
    opts: Options,
    *,
    run_id: str | None = None,
    parameters: dict[str, Any] | None = None,
    on_batch: Callable[[SweepResult, BatchResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepResult:
    """Run the bounded sweep (or its dry run) and return what happened.

    Raises, before any write: TargetNotFoundError, ReadOnlyError, LedgerUnavailableError,
    SweepInProgressError, TooManyCandidatesError, PreviewMismatchError. A batch that fails
    otherwise raises its psycopg error; that batch rolled back, earlier ones stay committed
    with their ledger, and the run's ledger row records the failure.
    """
    started = time.monotonic()
    check_target(conn, target)
    with read_only(conn):
        cutoff = resolve_cutoff(conn, opts.stale_after_days, opts.cutoff)
    params: dict[str, Any] = {**target.predicate_params(), "cutoff": cutoff, "new_status": target.new_status}

    if opts.dry_run:
        with read_only(conn):
            row = conn.execute(statements.candidate_count(target), params).fetchone()
        count = int(row[0]) if row else 0
        if count > opts.max_rows:
            raise TooManyCandidatesError(
                f"{count:,} candidates exceed max_rows={opts.max_rows:,}: a live sweep would refuse to start"
            )
        return SweepResult(
            target=target.describe(), options=opts.to_dict(), cutoff_utc=cutoff, dry_run=True,
            candidates_at_start=count, stop_reason="dry_run", seconds=time.monotonic() - started, remaining=count,
            would_change=min(count, opts.batch_size * opts.max_batches),
            would_batches=min(math.ceil(count / opts.batch_size), opts.max_batches),
        )  # fmt: skip

    run_id = run_id or new_run_id()
    check_writable(conn, target)
    ledger.ensure(conn)
    result = SweepResult(
        target=target.describe(), options=opts.to_dict(), cutoff_utc=cutoff, dry_run=False,
        candidates_at_start=0, run_id=run_id,
    )  # fmt: skip
    table_name = f"{target.schema}.{target.table}"

    def publish(outcome: str, finished: bool) -> None:
        if not opts.metrics_dir:
            return
        remaining = result.remaining if finished else max(result.candidates_at_start - result.changed, 0)
        path = write_metrics(
            opts.metrics_dir, run_id=run_id, kind="sweep", table=table_name, rows_changed=result.changed,
            rows_remaining=remaining, batch_seconds=[b.seconds for b in result.batches], outcome=outcome,
            run_seconds=time.monotonic() - started, finished=finished,
        )  # fmt: skip
        result.metrics_file = str(path)

    with target_lock(conn, target), interrupt_guard() as interrupted:
        next_batch = ledger.start_run(
            conn, run_id=run_id, kind="sweep", target=table_name, operator=operator(),
            parameters=parameters or opts.to_dict(),
        )  # fmt: skip
        stopper = Stopper(opts, started, interrupted, should_stop)
        try:
            _run_passes(conn, target, opts, params, result, stopper, next_batch, on_batch, publish)
        except BaseException as exc:
            result.stop_reason = result.stop_reason or ("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            result.stop_detail = f"{type(exc).__name__}: {exc}"
            result.seconds = round(time.monotonic() - started, 4)
            publish(result.stop_reason, True)
            if not conn.broken and not conn.closed:
                ledger.finish_run(conn, run_id, result.stop_reason, result.to_dict())
            if isinstance(exc, KeyboardInterrupt):
                # The batch in flight rolled back; every earlier one stands with its ledger.
                return result
            if isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed):
                done = len(result.batches)
                raise ConnectionLostError(
                    f"the connection to the database was lost during batch {done + 1 if done else 'setup'} of run "
                    f"{run_id} ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}): that "
                    f"batch rolled back; the {done} batch(es) before it are committed with their ledger. "
                    f"Run again with run_id={run_id} to finish."
                ) from exc
            raise
        result.seconds = round(time.monotonic() - started, 4)
        publish(result.stop_reason, True)
        ledger.finish_run(conn, run_id, result.stop_reason, result.to_dict())
    return result


def _snapshot(conn: Conn, target: Target, opts: Options, params: dict[str, Any]) -> int:
    with conn.transaction():
        # One full scan of the table: allow it ten batches' worth of statement time.
        _set_timeouts(conn, opts, factor=10)
        stmts = statements.snapshot(target)
        count = 0
        for stmt in stmts:
            cur = conn.execute(stmt, params)
            if stmt is stmts[1]:
                count = cur.rowcount
    return count


def _with_retries(work: Callable[[], int], opts: Options, result: SweepResult, what: str) -> int | None:
    """Run ``work``; on a lock or statement timeout retry after a growing pause. None: gave up."""
    attempt = 0
    while True:
        try:
            return work()
        except _RETRYABLE as exc:
            attempt += 1
            note = f"{what} try {attempt}: {type(exc).__name__}: {exc.diag.message_primary}"
            result.retries.append(note)
            if attempt > opts.max_retries:
                result.stop_reason, result.stop_detail = "gave_up", note
                return None
            print(f"{note}; retrying", flush=True)
            time.sleep(min(0.25 * 2**attempt, 5.0))


def _wait_until_healthy(
    conn: Conn, target: Target, opts: Options, limits: HealthLimits, stopper: Stopper, result: SweepResult, batch: int
) -> str | None:
    """Pause while the database is unhealthy; record each pause. Returns a stop reason, if any."""
    paused_at: float | None = None
    reasons: list[str] = []
    while problems := check_health(conn, target).problems(limits):
        if paused_at is None:
            paused_at = time.monotonic()
            print(f"pausing before batch {batch}: {'; '.join(problems)}", flush=True)
        reasons = sorted(set(reasons) | set(problems))
        time.sleep(opts.health_pause_s)
        stop = stopper.reason(len(result.batches))
        if stop:
            result.pauses.append({"before_batch": batch, "reasons": reasons, "seconds": round(time.monotonic() - paused_at, 3)})
            return stop
    if paused_at is not None:
        result.pauses.append({"before_batch": batch, "reasons": reasons, "seconds": round(time.monotonic() - paused_at, 3)})
    return None


def _run_passes(
    conn: Conn,
    target: Target,
    opts: Options,
    params: dict[str, Any],
    result: SweepResult,
    stopper: Stopper,
    next_batch: int,
    on_batch: Callable[[SweepResult, BatchResult], None] | None,
    publish: Callable[[str, bool], None],
) -> None:
    run_id = result.run_id
    for pass_number in range(_MAX_PASSES):
        in_snapshot = _with_retries(lambda: _snapshot(conn, target, opts, params), opts, result, "snapshot")
        if in_snapshot is None:
            return
        if pass_number == 0:
            result.candidates_at_start = in_snapshot
            if in_snapshot > opts.max_rows:
                raise TooManyCandidatesError(
                    f"{in_snapshot:,} candidates exceed max_rows={opts.max_rows:,}: refused before the first batch, "
                    "nothing written. Check inspect, then raise max_rows if this is expected."
                )
            # The first batch as a preview would show it (same order, same size): its
            # fingerprint goes into the record and is checked against an approved one.
            first = conn.execute(
                statements.snapshot_next(), {"after_t": datetime.min, "after_k": "", "batch_size": opts.batch_size}
            ).fetchall()
            seen = fingerprint([str(r[1]) for r in first])
            result.first_batch_fingerprint = seen
            if opts.expect_fingerprint:
                if seen != opts.expect_fingerprint:
                    raise PreviewMismatchError(
                        f"the first batch now has fingerprint {seen}, not the approved {opts.expect_fingerprint}: "
                        "rows changed since the preview (or cutoff/batch_size differ). Nothing written; preview again."
                    )
        publish("running", False)
        limits = HealthLimits(opts.max_replication_lag_bytes, opts.max_lock_waiters, opts.pause_during_vacuum)
        changed_this_pass = 0
        after: tuple[Any, str] = (datetime.min, "")
        planned = opts.batch_size
        while True:
            reason = stopper.reason(len(result.batches))
            if reason:
                result.stop_reason = reason
                return
            reason = _wait_until_healthy(conn, target, opts, limits, stopper, result, next_batch)
            if reason:
                result.stop_reason = reason
                return
            size = planned
            attempt = 0
            while True:
                t0 = time.monotonic()
                try:
                    with conn.transaction():
                        _set_timeouts(conn, opts)
                        step = conn.execute(
                            statements.snapshot_next(),
                            {"after_t": after[0], "after_k": after[1], "batch_size": size},
                        ).fetchall()
                        if not step:
                            break
                        ids = [str(r[1]) for r in step]
                        row = conn.execute(
                            statements.batch_update(target), {**params, "ids": ids, "run_id": run_id, "batch": next_batch}
                        ).fetchone()
                        changed = int(row[0]) if row else 0
                    break
                except _RETRYABLE as exc:
                    attempt += 1
                    note = f"batch {next_batch} try {attempt}: {type(exc).__name__}: {exc.diag.message_primary}"
                    result.retries.append(note)
                    if attempt > opts.max_retries:
                        result.stop_reason = "gave_up"
                        result.stop_detail = note
                        return
                    print(f"{note}; retrying with {max(1, size // 2):,} rows", flush=True)
                    size = max(1, size // 2)
                    time.sleep(min(0.25 * 2**attempt, 5.0))
            if not step:
                break
            batch = BatchResult(next_batch, len(ids), changed, round(time.monotonic() - t0, 4), _utc_now(), attempt)
            planned = next_batch_size(opts, planned, len(ids), batch.seconds)
            next_batch += 1
            after = (step[-1][0], ids[-1])
            result.batches.append(batch)
            result.changed += changed
            changed_this_pass += changed
            publish("running", False)
            if on_batch is not None:
                on_batch(result, batch)
            if opts.pause_s:
                time.sleep(opts.pause_s)
        if changed_this_pass == in_snapshot:
            # Every candidate of the snapshot was changed. A row can only become a
            # candidate later by getting an older created_at or leaving a terminal status,
            # which LiteLLM never does; so skip the second full scan of the table.
            result.remaining = 0
            result.stop_reason = "done"
            return
        with read_only(conn):
            row = conn.execute(statements.candidate_count(target), params).fetchone()
        result.remaining = int(row[0]) if row else 0
        if result.remaining == 0:
            result.stop_reason = "done"
            return
        if changed_this_pass == 0:
            # What is left is locked by other sessions or keeps changing under us:
            # stop rather than spin; a later run picks it up.
            result.stop_reason = "remaining_locked"
            return
    result.stop_reason = "remaining_locked"
