"""Sweep: mark stale rows in bounded batches, each batch its own short transaction.

What it writes: ``status = new_status`` on candidate rows, at most ``batch_size`` per
transaction, oldest first, and for each batch its ledger rows in the same statement
(``runbook.ledger``); nothing else. With ``dry_run=True`` (the default) it writes nothing
and reports what it would do.

How (see ``statements``): one scan snapshots the candidates into a temp table; batches
walk it by keyset, lock rows by primary key with SKIP LOCKED and re-check the whole
predicate at update time, so a concurrent completion always wins. Each batch measures
the WAL it wrote; the next one is sized to a WAL budget (``next_batch_size``). When the snapshot is
used up, one count over the real table decides: nothing left (``done``), or another pass
over what is left (rows that were locked, or became candidates, meanwhile).

Before the first write: the server must be writable, the role must hold UPDATE, the
ledger must be writable, the target's advisory lock must be free, the candidates must
not exceed ``max_rows`` and, if given, the first batch must match ``expect_fingerprint``.

Writes ``workers`` batches at once (``runbook.rounds``): a round takes that many
consecutive slices of the snapshot, oldest first, one per connection, and ends when all
have committed or rolled back. The next round is sized from what the last one measured.

Stops only between rounds: ``max_batches``, ``max_seconds``, the stop file appearing, a
kernel interrupt (the first SIGINT lets the batches in flight commit; a second one aborts
them, rolled back), or ``should_stop()``. A batch that hits lock_timeout or
statement_timeout rolls back and is retried smaller after a pause, ``max_retries`` times.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ..sql import statements
from ..errors import ConnectionLostError, PreviewMismatchError, TooManyCandidatesError
from ..db.health import HealthLimits, blind_signals, refuse_blind
from .live import (
    BatchResult,
    Stopper,
    check_writable,
    close_run,
    live_run,
    publish_metrics,
    reconcile,
    set_batch_settings,
    wait_until_healthy,
)
from ..rules.params import Options
from .preview import fingerprint
from ..audit.record import new_run_id
from .rounds import BatchFailed, Cancelled, Outcome, cancelled_by_request, run_round, with_retries
from ..db.transactions import Conn, check_target, read_only, resolve_cutoff
from ..sql.statements import LEDGER_SCHEMA as LEDGER
from ..rules.target import Target
from ..db.workers import Workers

__all__ = ["BatchResult", "SweepResult", "sweep", "STOP_REASONS", "FAILED_STOP_REASONS", "next_batch_size"]

STOP_REASONS = (
    "done", "dry_run", "max_batches", "max_seconds", "stop_file", "interrupted", "stop_requested",
    "remaining_locked", "gave_up", "cancelled",
)  # fmt: skip
# A run that stopped for one of these did not do what it was asked: its record says
# "failed" and `python -m runbook run` exits non-zero, so automation notices. A DBA's
# cancel is one: somebody else ended the run, the operator must look.
FAILED_STOP_REASONS = ("gave_up", "failed", "cancelled")
_MAX_PASSES = 5
_START: tuple[Any, str] = (datetime.min, "")  # a keyset before every snapshot entry
_METRICS_EVERY_S = 1.0  # rewrite the metrics file at most this often while running


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
    warnings: list[str] = field(default_factory=list)  # e.g. a metrics file that could not be written
    health_blind: list[str] = field(default_factory=list)  # health signals the role cannot see

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cutoff_utc"] = self.cutoff_utc.isoformat() + "Z"
        return out


def next_batch_size(opts: Options, planned: int, used: int, seconds: float, wal_bytes: int = 0, wal_budget: int = 0) -> int:
    """The size of the next batch, given the last one's ``used`` rows, time and WAL.

    Never above ``batch_size``, never below 50 rows (or ``batch_size`` when smaller).

    WAL: when a batch wrote more than ``wal_budget`` bytes (the server's ``wal_buffers``
    divided by ``workers``, by default), the next one takes as many rows as fit in the budget at the last batch's
    WAL per row; it grows back by 5% a batch. ``wal_bytes`` counts every session's WAL
    during the batch, so with two workers it includes the round partner's, and the pair
    together is sized to the budget (about half the rows each). Why: a transaction that writes more WAL
    than the WAL buffers hold makes its own backend write and fsync WAL segments
    mid-statement, and those waits are the slowest batches (measured: bench/RESULTS.md).
    Rows cost most WAL right after a checkpoint (a full-page image per first-touched
    page); growing back slowly keeps batches near the size that fits that worst case,
    so batch times stay even instead of see-sawing with each checkpoint.

    Time (opt-in, ``target_batch_ms``): a batch slower than 1.5x the target halves the
    next one; once rows get cheap again, batches grow back.
    """
    if used == 0:
        return planned
    floor = min(opts.batch_size, 50)
    by_wal = by_time = opts.batch_size
    if wal_budget and wal_bytes:
        by_wal = max(floor, min(opts.batch_size, int(wal_budget * used / wal_bytes), planned + max(1, planned // 20)))
    elif wal_budget:
        by_wal = planned  # nothing measured: keep the size rather than jump back to batch_size
    if opts.target_batch_ms:
        ms = seconds * 1000
        if ms > 1.5 * opts.target_batch_ms:
            by_time = max(floor, planned // 2)
        elif planned < opts.batch_size and ms > 0:
            by_time = max(planned, min(opts.batch_size, int(opts.target_batch_ms / (ms / used)), planned * 2))
        else:
            by_time = planned
    return min(by_wal, by_time)


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

    Raises, before any write: TargetNotFoundError, BlindHealthError (a health signal the role
    cannot see, unless ``allow_blind_health``), ReadOnlyError, PoolerError,
    LedgerUnavailableError, SweepInProgressError, TooManyCandidatesError,
    PreviewMismatchError. A statement canceled by request (``pg_cancel_backend()``) stops
    the sweep at once: ``cancelled``, with what was canceled in ``stop_detail``. A batch that fails
    otherwise raises its psycopg error (ConnectionLostError when the server went away);
    that batch rolled back; every batch that committed (earlier ones, and its round
    partner when that one succeeded) stays, with its ledger and in the result, and the
    run's ledger row records the failure when the connection still works.
    """
    started = time.monotonic()
    check_target(conn, target)
    with read_only(conn):
        cutoff = resolve_cutoff(conn, opts.stale_after_days, opts.cutoff)
    params: dict[str, Any] = {**target.predicate_params(), "cutoff": cutoff, "new_status": target.new_status}
    limits = HealthLimits(opts.max_replication_lag_bytes, opts.max_lock_waiters, opts.pause_during_vacuum)
    if not opts.dry_run:
        check_writable(conn, target)  # may it write at all: said before what it cannot see
    role, blind = blind_signals(conn, limits)
    if blind:
        blind = [refuse_blind(role, blind, live=not opts.dry_run, allow=opts.allow_blind_health)]
        print(blind[0], flush=True)

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
            would_batches=min(math.ceil(count / opts.batch_size), opts.max_batches), health_blind=blind,
        )  # fmt: skip

    rid = run_id or new_run_id()
    result = SweepResult(
        target=target.describe(), options=opts.to_dict(), cutoff_utc=cutoff, dry_run=False,
        candidates_at_start=0, run_id=rid, health_blind=blind,
    )  # fmt: skip
    table_name = f"{target.schema}.{target.table}"
    last_published = [0.0]

    def publish(outcome: str, finished: bool) -> None:
        now = time.monotonic()
        if not opts.metrics_dir or (not finished and now - last_published[0] < _METRICS_EVERY_S):
            return
        last_published[0] = now
        remaining = result.remaining if finished else max(result.candidates_at_start - result.changed, 0)
        path = publish_metrics(
            opts.metrics_dir, result.warnings, run_id=rid, kind="sweep", table=table_name, rows_changed=result.changed,
            rows_remaining=remaining, batch_seconds=[b.seconds for b in result.batches], outcome=outcome,
            run_seconds=now - started, finished=finished,
        )  # fmt: skip
        result.metrics_file = path or result.metrics_file

    with live_run(
        conn, target, opts, kind="sweep", run_id=rid, parameters=parameters or opts.to_dict(), should_stop=should_stop
    ) as run:
        failure: BaseException | None = None
        lost: int | None = None  # the batch whose connection was lost
        try:
            with Workers[Outcome](conn, opts.workers) as pool:
                _run_passes(conn, pool, target, opts, params, result, run.stopper, run.first_batch, on_batch, publish)
        except BaseException as exc:
            failure = exc
            if isinstance(exc, BatchFailed):
                failure, lost = exc.error, exc.number if exc.connection_lost else None
            result.stop_reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            result.stop_detail = f"{type(failure).__name__}: {failure}"  # the batch's own error, not its wrapper
            if cancelled_by_request(failure) and not isinstance(exc, BatchFailed):
                failure = Cancelled("a statement of the sweep", failure)  # type: ignore[arg-type]
            if isinstance(failure, Cancelled):
                # Someone (a DBA) means the sweep to stop: stop, do not retry, record who/what.
                result.stop_reason, result.stop_detail = "cancelled", str(failure)
                print(f"stopped: {failure}", flush=True)
                failure = None
        result.seconds = round(time.monotonic() - started, 4)
        connection_lost = isinstance(failure, psycopg.OperationalError) and (lost is not None or conn.broken or conn.closed)
        if connection_lost:
            lost = lost or (result.batches[-1].number + 1 if result.batches else run.first_batch)
            survived = _reconcile(conn, target, result, run.first_batch)  # closes the runs row on a new connection
        publish(result.stop_reason, True)
        if not connection_lost:
            close_run(conn, rid, result.stop_reason, result.to_dict())
    if failure is None or isinstance(failure, KeyboardInterrupt):
        # Interrupted: the batch in flight rolled back; every earlier one stands with its ledger.
        return result
    if connection_lost:
        first_line = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        raise ConnectionLostError(
            f"the connection to the database was lost during batch {lost} of run {rid} ({first_line}): that "
            f"batch rolled back; {survived} Run again with run_id={rid} to finish."
        ) from failure
    raise failure


def _reconcile(conn: Conn, target: Target, result: SweepResult, first_batch: int) -> str:
    """After a lost connection: keep in ``result`` only the batches the ledger holds, and close
    the runs row on a new connection (``liverun.reconcile``); return what stands, as a sentence."""

    def settle(kept: list[BatchResult], lost: list[int]) -> dict[str, Any]:
        result.batches = kept
        result.changed = sum(b.changed for b in kept)
        if lost:
            result.stop_detail += (
                f"; batch(es) {', '.join(map(str, lost))} were acknowledged but are not in the ledger after reconnecting: "
                "lost with the server's unflushed WAL (asynchronous commit), their rows are still candidates"
            )
        return result.to_dict()

    done = reconcile(conn, target, str(result.run_id), first_batch, result.batches, result.stop_reason, settle)
    if done is None:
        result.stop_detail += "; could not reconnect to check which acknowledged batches the ledger holds"
        return (
            f"{len(result.batches)} other batch(es) were acknowledged, but the server could not be reached again to check "
            f"that the ledger holds them (asynchronous commit: a crash loses the last ones); see {LEDGER}.batches."
        )
    kept, lost = done
    text = f"the {len(kept)} other batch(es) committed so far stand with their ledger ({result.changed:,} rows)."
    if lost:
        text += (
            f" Batch(es) {', '.join(map(str, lost))} were acknowledged but are not in the ledger after reconnecting: lost "
            "with the server's unflushed WAL (asynchronous commit); their rows are still candidates."
        )
    return text


def _snapshot(conn: Conn, target: Target, opts: Options, params: dict[str, Any]) -> int:
    with conn.transaction():
        # One full scan of the table: allow it ten batches' worth of statement time.
        set_batch_settings(conn, opts, factor=10)
        stmts = statements.snapshot(target)
        count = 0
        for stmt in stmts:
            cur = conn.execute(stmt, params)
            if stmt is stmts[1]:
                count = cur.rowcount
    return count


def _next_keys(conn: Conn, after: tuple[Any, str], size: int) -> list[tuple[Any, Any]]:
    """The next ``size`` snapshot entries (time, key) after ``after``; none: pass done.
    Reads the session's temp table, so only on the connection that made the snapshot."""
    return conn.execute(statements.snapshot_next(), {"after_t": after[0], "after_k": after[1], "batch_size": size}).fetchall()


def _run_passes(
    conn: Conn,
    pool: Workers[Outcome],
    target: Target,
    opts: Options,
    params: dict[str, Any],
    result: SweepResult,
    stopper: Stopper,
    next_batch: int,
    on_batch: Callable[[SweepResult, BatchResult], None] | None,
    publish: Callable[[str, bool], None],
) -> None:
    run_id = str(result.run_id)
    row = conn.execute(statements.run_start()).fetchone()
    began: datetime = row[0] if row else datetime.min
    # Two writers fill the WAL buffers twice as fast: each round gets 1/workers of them
    # (measured: with the whole buffers, p99 119-166 ms; with half, 55-94 ms; bench/RESULTS.md).
    wal_budget = opts.max_batch_wal_bytes or (int(row[1]) // opts.workers if row else 0)
    for pass_number in range(_MAX_PASSES):
        # A snapshot is a full scan: after one statement timeout it is tried once more, no more.
        in_snapshot = with_retries(lambda _: _snapshot(conn, target, opts, params), opts, result, "snapshot", max_timeouts=1)
        if in_snapshot is None:
            return
        if pass_number == 0:
            _check_first_pass(conn, opts, result, in_snapshot)
        if in_snapshot == 0:
            # Nothing to write: no reason to wait for the database to be healthy.
            result.remaining, result.stop_reason = 0, "done"
            return
        publish("running", False)
        changed_this_pass = 0
        after = _START
        planned = opts.batch_size
        while True:
            reason = stopper.reason(len(result.batches)) or wait_until_healthy(
                conn, target, opts, stopper, result, next_batch, began
            )
            if reason:
                result.stop_reason = reason
                return
            # A round: up to `workers` consecutive slices of the snapshot, written at once.
            chunks: list[tuple[int, list[tuple[Any, Any]]]] = []
            for _ in range(min(pool.capacity(), opts.max_batches - len(result.batches))):
                keys = _next_keys(conn, after, planned)
                if not keys:
                    break
                chunks.append((next_batch + len(chunks), keys))
                after = (keys[-1][0], str(keys[-1][1]))
            if not chunks:
                break

            kept = run_round(pool, chunks, target=target, opts=opts, params=params, run_id=run_id, result=result, on_batch=on_batch)
            next_batch += len(chunks)
            if kept is None:
                return  # a batch gave up after its retries
            changed_this_pass += sum(batch.changed for batch, _ in kept)
            # The last slice may have been retried smaller: go on right after what it took.
            # (A smaller retry of an earlier slice leaves the rest of it to the next pass.)
            last = kept[-1][1][-1]
            after = (last[0], str(last[1]))
            planned = min(next_batch_size(opts, planned, b.selected, b.seconds, b.wal_bytes, wal_budget) for b, _ in kept)
            publish("running", False)
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


def _check_first_pass(conn: Conn, opts: Options, result: SweepResult, in_snapshot: int) -> None:
    """Refuse, before any write, too many candidates or a first batch unlike the approved one."""
    result.candidates_at_start = in_snapshot
    if in_snapshot > opts.max_rows:
        raise TooManyCandidatesError(
            f"{in_snapshot:,} candidates exceed max_rows={opts.max_rows:,}: refused before the first batch, "
            "nothing written. Check inspect, then raise max_rows if this is expected."
        )
    # The first batch as a preview shows it (same order, same size): its fingerprint goes
    # into the record and is checked against an approved one.
    first = _next_keys(conn, _START, opts.batch_size)
    result.first_batch_fingerprint = fingerprint(result.target, result.cutoff_utc, [str(r[1]) for r in first])
    if opts.expect_fingerprint and result.first_batch_fingerprint != opts.expect_fingerprint:
        raise PreviewMismatchError(
            f"the first batch now has fingerprint {result.first_batch_fingerprint}, not the approved "
            f"{opts.expect_fingerprint}: the fingerprint binds the target, the rule, the cutoff "
            f"({result.cutoff_utc.isoformat()}Z here) and the batch's ids, so the preview's cutoff, batch_size or rows "
            "differ (give the preview's cutoff as cutoff). Nothing written; preview again."
        )
